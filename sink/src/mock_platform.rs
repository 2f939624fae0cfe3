//! A mock of the external data platform: `POST /events` records each body by `Idempotency-Key`,
//! fails a share of requests (with 503, or the status set by `set_failure_status`) and answers after a
//! delay; `GET /stats`; `POST /reset`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Failure share (0.0..=1.0) and delay before every answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct MockPlatformConfig {
    pub fail_rate: f64,
    pub delay: Duration,
}

/// `GET /stats`. `requests` counts every POST; `accepted` those answered 2xx; `distinct_event_ids`
/// the distinct Idempotency-Keys accepted; `duplicates` accepted requests whose key was accepted before;
/// `order_ids` the order id of each distinct accepted event, in arrival order.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct MockPlatformStats {
    pub requests: u64,
    pub accepted: u64,
    pub failed: u64,
    pub distinct_event_ids: u64,
    pub duplicates: u64,
    pub order_ids: Vec<i64>,
}

#[derive(Default)]
struct Inner {
    cfg: MockPlatformConfig,
    /// Status of the failed answers; `None`: 503.
    failure_status: Option<StatusCode>,
    stats: MockPlatformStats,
    bodies: HashMap<String, Value>,
}

type Shared = Arc<Mutex<Inner>>;

/// A running mock; dropping it does not stop it, call [`MockPlatformHandle::stop`].
#[derive(Clone)]
pub struct MockPlatformHandle {
    inner: Shared,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl MockPlatformHandle {
    pub fn stats(&self) -> MockPlatformStats {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .stats
            .clone()
    }
    /// The body first accepted under this Idempotency-Key.
    pub fn body(&self, key: &str) -> Option<Value> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .bodies
            .get(key)
            .cloned()
    }
    pub fn set_config(&self, cfg: MockPlatformConfig) {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .cfg = cfg;
    }
    /// The status failed requests get (503 by default); e.g. 400 for a permanent refusal, 429.
    pub fn set_failure_status(&self, status: u16) {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .failure_status = StatusCode::from_u16(status).ok();
    }
    pub fn reset(&self) {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        g.stats = MockPlatformStats::default();
        g.bodies.clear();
    }
    pub fn stop(&self) {
        if let Some(t) = self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            t.abort();
        }
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/events", post(receive))
        .route("/stats", get(stats))
        .route("/reset", post(reset))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

async fn receive(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let (cfg, failure_status) = {
        let mut g = s.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        g.stats.requests += 1;
        (
            g.cfg,
            g.failure_status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        )
    };
    if !cfg.delay.is_zero() {
        tokio::time::sleep(cfg.delay).await;
    }
    let key = match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        Some(k) if !k.is_empty() => k.to_string(),
        _ => return (StatusCode::BAD_REQUEST, "Idempotency-Key required\n".into()),
    };
    let value: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("invalid JSON: {e}\n")),
    };
    let fail = cfg.fail_rate > 0.0 && rand::thread_rng().gen_bool(cfg.fail_rate.clamp(0.0, 1.0));
    let mut g = s.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if fail {
        g.stats.failed += 1;
        return (failure_status, "refused by the mock\n".into());
    }
    g.stats.accepted += 1;
    if g.bodies.contains_key(&key) {
        g.stats.duplicates += 1;
    } else {
        g.stats.distinct_event_ids += 1;
        if let Some(id) = value.get("order_id").and_then(Value::as_i64) {
            g.stats.order_ids.push(id);
        }
        g.bodies.insert(key, value);
    }
    (StatusCode::OK, "{\"status\":\"accepted\"}".into())
}

async fn stats(State(s): State<Shared>) -> Json<MockPlatformStats> {
    Json(
        s.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .stats
            .clone(),
    )
}

async fn reset(State(s): State<Shared>) -> StatusCode {
    let mut g = s.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    g.stats = MockPlatformStats::default();
    g.bodies.clear();
    StatusCode::NO_CONTENT
}

/// Starts the mock on `addr` (port 0 picks one) with no failures and no delay.
pub async fn spawn_mock_platform(
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, MockPlatformHandle)> {
    spawn_mock_platform_with(addr, MockPlatformConfig::default()).await
}

/// Starts the mock on `addr` with the given failure share and delay.
pub async fn spawn_mock_platform_with(
    addr: SocketAddr,
    cfg: MockPlatformConfig,
) -> anyhow::Result<(SocketAddr, MockPlatformHandle)> {
    let inner: Shared = Arc::new(Mutex::new(Inner {
        cfg,
        ..Default::default()
    }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(inner.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "mock platform failed");
        }
    });
    tracing::info!(%bound, fail_rate = cfg.fail_rate, delay_ms = cfg.delay.as_millis() as u64, "mock data platform listening");
    Ok((
        bound,
        MockPlatformHandle {
            inner,
            task: Arc::new(Mutex::new(Some(task))),
        },
    ))
}
