//! Reservation expiry: finds orders whose reservation is due (one sorted set by expiry time per
//! partition; every engine sweeps every partition) and runs order_expire.lua for each. A pay racing the expiry has exactly one winner: both scripts check the
//! status and the expiry time atomically.

use std::time::Duration;

use fred::prelude::*;
use tokio::sync::watch;

use crate::partition::Partition;
use crate::routes::orders::read_order_keys;
use crate::scripts::calls::OrderExpire;
use crate::state::{event_id, AppState};

const BATCH: i64 = 200;

pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let interval = Duration::from_millis(state.settings.expiry_interval_ms.max(10));
    while !*stop.borrow() {
        match expire_due(&state).await {
            Ok(n) if n >= BATCH as usize => continue, // more may be due: no pause
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "expiry sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
    }
}

/// How long a reservation the sweep could not expire waits before it is tried again: long enough not
/// to flood the log, short enough that a fixed order is released soon after.
const RETRY_FAILED_AFTER_MS: i64 = 60_000;

/// Expires what is due now in every partition; returns the most due reservations one partition had
/// (the sweep goes again at once when a partition filled its batch).
pub async fn expire_due(state: &AppState) -> anyhow::Result<usize> {
    let swept = futures::future::join_all(Partition::all().map(|p| expire_due_in(state, p))).await;
    let mut most = 0;
    for result in swept {
        most = most.max(result?);
    }
    Ok(most)
}

/// Redis's clock in ms (the scripts decide by it too), not this engine's, which may be skewed.
async fn redis_now_ms(state: &AppState) -> anyhow::Result<i64> {
    let time: Vec<i64> = state
        .redis
        .next()
        .custom(
            fred::types::CustomCommand::new_static("TIME", fred::types::ClusterHash::Random, false),
            Vec::<String>::new(),
        )
        .await?;
    Ok(time.first().copied().unwrap_or_default() * 1000
        + time.get(1).copied().unwrap_or_default() / 1000)
}

/// One partition's due reservations. One order that cannot be expired (unparsable, or its script
/// fails) is logged, counted and retried later; the others go on.
async fn expire_due_in(state: &AppState, partition: Partition) -> anyhow::Result<usize> {
    let now_ms = redis_now_ms(state).await?;
    let reservations = state.keys.reservations(partition);
    let due: Vec<i64> = state
        .redis
        .zrangebyscore(&reservations, "-inf", now_ms, false, Some((0, BATCH)))
        .await?;
    for order_id in &due {
        if let Err(e) = expire_one(state, partition, *order_id).await {
            tracing::error!(order_id, error = %e, "cannot expire this order; skipped, retried later");
            metrics::counter!("flashsale_expiry_skipped_total").increment(1);
            // Moved back in the queue (only if still there) so that it neither blocks the orders due
            // after it nor is retried on every sweep.
            let _: Result<i64, _> = state
                .redis
                .zadd(
                    &reservations,
                    Some(SetOptions::XX),
                    None,
                    false,
                    false,
                    (
                        (now_ms + RETRY_FAILED_AFTER_MS) as f64,
                        order_id.to_string(),
                    ),
                )
                .await;
        }
    }
    Ok(due.len())
}

async fn expire_one(state: &AppState, partition: Partition, order_id: i64) -> anyhow::Result<()> {
    for _ in 0..3 {
        let products = read_order_keys(state, partition, order_id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .map(|v| v.product_ids)
            .unwrap_or_default();
        let call = OrderExpire {
            partition,
            order_id,
            product_ids: products,
            event_id: event_id(),
        };
        let outcome: String = state
            .scripts
            .run_call(&state.redis, &state.keys, &call)
            .await?
            .as_string()
            .unwrap_or_default();
        metrics::counter!("flashsale_script_outcomes_total", "script" => "order_expire", "outcome" => outcome.clone())
            .increment(1);
        if outcome == "expired" {
            metrics::counter!("flashsale_orders_total", "status" => "EXPIRED").increment(1);
        }
        if outcome != "stale" {
            return Ok(());
        }
    }
    Ok(())
}
