//! Data platform delivery worker: sends each PENDING row of data_platform_deliveries to
//! `DATA_PLATFORM_URL` with `Idempotency-Key: <event_id>`, retried with capped exponential backoff
//! and jitter until delivered: a platform outage of any length delays orders, it never loses them. A
//! row becomes DEAD only on a permanent refusal (a 4xx other than 408/409/425/429), which a retry of
//! the same request cannot fix.
//!
//! Claiming: a short transaction selects due rows `FOR UPDATE SKIP LOCKED` (MySQL 8 and MariaDB 10.6+)
//! and pushes their `next_attempt_at` one lease ahead, so no HTTP call runs inside a transaction and
//! several workers (or sinks) never send the same row at once. If a worker dies mid-send the lease
//! runs out and the row is sent again; the Idempotency-Key makes that harmless.

use crate::backoff;
use crate::config::SinkConfig;
use crate::telemetry as m;
use futures::StreamExt;
use sqlx::MySqlPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How long a claimed row is left alone before it may be claimed again.
const LEASE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub url: String,
    pub concurrency: usize,
    pub batch: u32,
    pub poll_interval: Duration,
    pub timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl From<&SinkConfig> for DeliveryConfig {
    fn from(c: &SinkConfig) -> Self {
        Self {
            url: c.data_platform_url.clone(),
            concurrency: c.delivery_concurrency.max(1),
            batch: c.delivery_batch.max(1),
            poll_interval: c.delivery_poll_interval,
            timeout: c.delivery_timeout,
            backoff_base: c.delivery_backoff_base,
            backoff_cap: c.delivery_backoff_cap,
        }
    }
}

struct Claimed {
    event_id: String,
    payload: String,
    attempts: i32,
}

/// Runs until shutdown; the requests in flight are finished first.
pub async fn run(
    pool: MySqlPool,
    cfg: DeliveryConfig,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let http = match reqwest::Client::builder().timeout(cfg.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; deliveries stopped");
            return;
        }
    };
    tracing::info!(url = %cfg.url, "delivery worker started");
    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut full = false;
        match claim(&pool, cfg.batch).await {
            Ok(rows) => {
                full = rows.len() as u32 >= cfg.batch;
                let delivered: Vec<String> = futures::stream::iter(rows)
                    .map(|row| deliver(&pool, &http, &cfg, row))
                    .buffer_unordered(cfg.concurrency)
                    .filter_map(|delivered| async move { delivered })
                    .collect()
                    .await;
                mark_delivered(&pool, &delivered).await;
            }
            Err(e) => {
                metrics::counter!(m::SINK_ERRORS).increment(1);
                tracing::warn!(error = %e, "claiming deliveries failed");
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = wake.notified() => {}
            _ = tokio::time::sleep(cfg.poll_interval) => {}
        }
    }
    tracing::info!("delivery worker stopped");
}

async fn claim(pool: &MySqlPool, limit: u32) -> Result<Vec<Claimed>, sqlx::Error> {
    let now = crate::db::now();
    let mut tx = pool.begin().await?;
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT event_id, payload, attempts FROM data_platform_deliveries \
         WHERE status = 'PENDING' AND next_attempt_at <= ? \
         ORDER BY next_attempt_at LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if !rows.is_empty() {
        let marks = vec!["?"; rows.len()].join(",");
        let sql = format!(
            "UPDATE data_platform_deliveries SET next_attempt_at = ? WHERE event_id IN ({marks})"
        );
        let lease_until = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
        let mut q = sqlx::query(&sql).bind(lease_until);
        for (id, _, _) in &rows {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|(event_id, payload, attempts)| Claimed {
            event_id,
            payload,
            attempts,
        })
        .collect())
}

/// Records the delivered rows of a claim with one statement (not one commit per order). If it fails,
/// the lease runs out and the rows are sent again under the same Idempotency-Key.
async fn mark_delivered(pool: &MySqlPool, event_ids: &[String]) {
    for chunk in event_ids.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let sql = format!(
            "UPDATE data_platform_deliveries SET status = 'DELIVERED', attempts = attempts + 1, \
             delivered_at = ?, last_error = NULL WHERE status = 'PENDING' AND event_id IN ({marks})"
        );
        let mut q = sqlx::query(&sql).bind(crate::db::now());
        for id in chunk {
            q = q.bind(id);
        }
        if let Err(e) = q.execute(pool).await {
            metrics::counter!(m::SINK_ERRORS).increment(1);
            tracing::warn!(rows = chunk.len(), error = %e, "recording deliveries failed; they are sent again after the lease");
        }
    }
}

/// Sends one row. Returns its event id when the platform took it (recorded by [`mark_delivered`]);
/// a failure or a refusal is recorded here.
async fn deliver(
    pool: &MySqlPool,
    http: &reqwest::Client,
    cfg: &DeliveryConfig,
    row: Claimed,
) -> Option<String> {
    let result = http
        .post(&cfg.url)
        .header("Idempotency-Key", &row.event_id)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(row.payload.clone())
        .send()
        .await;
    // (error, permanent)
    let (error, permanent) = match result {
        Ok(resp) if resp.status().is_success() => (None, false),
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            (
                Some(format!(
                    "HTTP {status}: {}",
                    body.chars().take(200).collect::<String>()
                )),
                is_permanent_refusal(status),
            )
        }
        Err(e) => (Some(format!("request failed: {e}")), false),
    };
    let attempts = row.attempts + 1;
    let now = crate::db::now();
    let (sql_result, label) = match &error {
        None => {
            metrics::counter!(m::DELIVERIES, "result" => "delivered").increment(1);
            return Some(row.event_id);
        }
        Some(err) if permanent => {
            tracing::error!(event_id = %row.event_id, attempts, error = %err, "delivery refused for good: DEAD");
            (
                sqlx::query(
                    "UPDATE data_platform_deliveries SET status = 'DEAD', attempts = ?, last_error = ? \
                     WHERE event_id = ? AND status = 'PENDING'",
                )
                .bind(attempts)
                .bind(truncate(err, 500))
                .bind(&row.event_id)
                .execute(pool)
                .await,
                "dead",
            )
        }
        Some(err) => {
            let wait = backoff::delay(attempts as u32, cfg.backoff_base, cfg.backoff_cap);
            tracing::debug!(event_id = %row.event_id, attempts, ?wait, error = %err, "delivery failed; will retry");
            let at = now + chrono::Duration::from_std(wait).unwrap_or_default();
            (
                sqlx::query(
                    "UPDATE data_platform_deliveries SET attempts = ?, next_attempt_at = ?, last_error = ? \
                     WHERE event_id = ? AND status = 'PENDING'",
                )
                .bind(attempts)
                .bind(at)
                .bind(truncate(err, 500))
                .bind(&row.event_id)
                .execute(pool)
                .await,
                "failed",
            )
        }
    };
    metrics::counter!(m::DELIVERIES, "result" => label).increment(1);
    if let Err(e) = sql_result {
        // The lease runs out and the row is sent again under the same Idempotency-Key.
        metrics::counter!(m::SINK_ERRORS).increment(1);
        tracing::warn!(event_id = %row.event_id, error = %e, "recording the delivery result failed");
    }
    None
}

/// A refusal that repeating the same request cannot change: a 4xx other than 408 Request Timeout,
/// 409 Conflict, 425 Too Early and 429 Too Many Requests. Everything else (5xx, network errors,
/// timeouts) is retried until delivered.
pub fn is_permanent_refusal(status: reqwest::StatusCode) -> bool {
    status.is_client_error() && !matches!(status.as_u16(), 408 | 409 | 425 | 429)
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// Refreshes the pending / dead / oldest-pending-age gauges until shutdown.
pub async fn gauges(pool: MySqlPool, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        let r: Result<Vec<(String, i64, Option<chrono::NaiveDateTime>)>, _> = sqlx::query_as(
            "SELECT status, COUNT(*), MIN(created_at) FROM data_platform_deliveries \
             WHERE status IN ('PENDING', 'DEAD') GROUP BY status",
        )
        .fetch_all(&pool)
        .await;
        match r {
            Ok(rows) => {
                let get = |s: &str| rows.iter().find(|(k, _, _)| k == s);
                let pending = get("PENDING");
                metrics::gauge!(m::DELIVERIES_PENDING).set(pending.map_or(0, |r| r.1) as f64);
                metrics::gauge!(m::DELIVERIES_DEAD).set(get("DEAD").map_or(0, |r| r.1) as f64);
                let oldest_age = pending.and_then(|r| r.2).map_or(0.0, |created| {
                    (crate::db::now() - created).num_milliseconds().max(0) as f64 / 1000.0
                });
                metrics::gauge!(m::DELIVERIES_OLDEST_PENDING_AGE).set(oldest_age);
            }
            Err(e) => tracing::debug!(error = %e, "delivery gauges not refreshed"),
        }
        if crate::sink::sleep_or_shutdown(every, &mut shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_permanent_refusal;
    use reqwest::StatusCode;

    #[test]
    fn only_a_final_4xx_is_permanent() {
        for code in [400, 401, 403, 404, 410, 413, 415, 422] {
            assert!(
                is_permanent_refusal(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [200, 301, 307, 408, 409, 425, 429, 500, 502, 503, 504, 507] {
            assert!(
                !is_permanent_refusal(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }
}
