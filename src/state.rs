//! Shared state handed explicitly to every handler.

use std::ops::Deref;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use fred::prelude::Pool;
use rdkafka::producer::FutureProducer;
use sqlx::MySqlPool;

use crate::auth::Tokens;
use crate::config::ServeSettings;
use crate::ids::IdAllocator;
use crate::keys::Keys;
use crate::scripts::Scripts;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub redis: Pool,
    pub db: MySqlPool,
    pub scripts: Scripts,
    pub keys: Keys,
    pub ids: IdAllocator,
    pub tokens: Tokens,
    pub settings: ServeSettings,
    /// Redis scripts or the MySQL row-lock baseline, chosen once at start (`HOT_PATH`).
    pub hot_path: std::sync::Arc<dyn crate::hot_path::HotPath>,
    pub producer: FutureProducer,
    pub auth_guard: crate::abuse::AuthGuard,
    /// Last probe of Kafka, MySQL and Redis (reported by /readyz; only Redis decides readiness).
    pub dependencies: crate::dependencies::DependencyStatus,
    /// Merged popular rankings, kept `popular_cache_ms` (src/popular.rs).
    pub popular: crate::popular::PopularCache,
    /// What Redis refused with (sale windows, sold-out items), to refuse the same without a call;
    /// kept honest by the invalidation channel (src/invalidations.rs).
    pub caches: crate::invalidations::LocalCaches,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    /// What the order sagas run against (src/orders.rs).
    pub fn store(&self) -> crate::orders::Store<'_> {
        crate::orders::Store {
            redis: &self.redis,
            scripts: &self.scripts,
            keys: &self.keys,
            sold_out: Some(&self.caches.sold_out),
        }
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// One reading of the clock, in the two forms the scripts take.
#[derive(Debug, Clone)]
pub struct Now {
    pub at: DateTime<Utc>,
}

/// Test hook: shifts this process's engine clock (ms) to show that no expiry or validity decision
/// depends on it (the scripts decide by Redis time). Zero in production; nothing else sets it.
static CLOCK_SKEW_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

#[doc(hidden)]
pub fn skew_engine_clock_for_tests(ms: i64) {
    CLOCK_SKEW_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

impl Now {
    pub fn read() -> Self {
        let skew = CLOCK_SKEW_MS.load(std::sync::atomic::Ordering::Relaxed);
        Self {
            at: Utc::now() + chrono::Duration::milliseconds(skew),
        }
    }
    pub fn ms(&self) -> i64 {
        self.at.timestamp_millis()
    }
    pub fn rfc3339(&self) -> String {
        rfc3339(self.at)
    }
    /// UTC day, YYYYMMDD: the popular-ranking bucket.
    pub fn day(&self) -> String {
        self.at.format("%Y%m%d").to_string()
    }
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `rfc3339` of Unix ms (a sale rule's instant as the scripts keep it).
pub fn rfc3339_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(rfc3339)
        .unwrap_or_default()
}

pub fn event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
