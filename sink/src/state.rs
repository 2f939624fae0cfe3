//! What one sink knows about its own partitions: their consumer lag and which of them are stalled on a
//! conflict. Kept per sink (not in the process-wide metrics recorder) so that a partition a rebalance
//! takes away disappears from this sink's `/metrics` at once: two sinks of one group then never both
//! report the same partition.

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// A topic partition.
pub type Tp = (String, i32);

/// A partition whose next event the database refused with an integrity-constraint error. Its offset
/// is not committed and nothing after it is applied; the event is retried with backoff until it applies.
#[derive(Debug, Clone)]
pub struct Stall {
    /// Offset of the refused event (the partition's committed offset stays at or before it).
    pub offset: i64,
    pub event_id: String,
    pub error: String,
    /// First refusal of this event.
    pub since: Instant,
    /// Refusals so far.
    pub attempts: u32,
    /// When the partition is resumed and the event tried again.
    pub retry_at: Instant,
    /// Paused on the consumer (waiting for `retry_at`); false once resumed for a retry.
    pub paused: bool,
}

#[derive(Default)]
pub struct SinkState {
    lags: Mutex<BTreeMap<Tp, i64>>,
    stalls: Mutex<BTreeMap<Tp, Stall>>,
    rebalances: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SinkState {
    /// Replaces the lag of every partition this sink holds (partitions not listed are dropped).
    pub fn set_lags(&self, lags: impl IntoIterator<Item = (Tp, i64)>) {
        *lock(&self.lags) = lags.into_iter().collect();
    }

    pub fn lags(&self) -> BTreeMap<Tp, i64> {
        lock(&self.lags).clone()
    }

    pub fn stalls(&self) -> MutexGuard<'_, BTreeMap<Tp, Stall>> {
        lock(&self.stalls)
    }

    /// Incremented on every revocation and assignment; the apply loop then resumes what it holds.
    pub fn rebalance_count(&self) -> u64 {
        self.rebalances.load(Ordering::Acquire)
    }

    fn forget(&self, partitions: &rdkafka::TopicPartitionList) {
        let mut lags = lock(&self.lags);
        let mut stalls = lock(&self.stalls);
        for e in partitions.elements() {
            let tp = (e.topic().to_string(), e.partition());
            lags.remove(&tp);
            if let Some(s) = stalls.remove(&tp) {
                tracing::warn!(topic = %tp.0, partition = tp.1, offset = s.offset, event_id = %s.event_id, "stalled partition revoked; its new owner retries the event");
            }
        }
    }

    /// Prometheus text of the lag and stall gauges.
    pub fn render(&self) -> String {
        use crate::telemetry as m;
        let mut s = String::new();
        let lags = self.lags();
        let _ = writeln!(
            s,
            "# HELP {} High watermark minus committed offset, per partition held by this sink",
            m::SINK_CONSUMER_LAG
        );
        let _ = writeln!(s, "# TYPE {} gauge", m::SINK_CONSUMER_LAG);
        for ((_, partition), lag) in &lags {
            let _ = writeln!(
                s,
                "{}{{partition=\"{partition}\"}} {lag}",
                m::SINK_CONSUMER_LAG
            );
        }
        let stalls = self.stalls().clone();
        let _ = writeln!(
            s,
            "# HELP {} Partitions stalled on an event the database refuses (integrity constraint)",
            m::SINK_STALLED_PARTITIONS
        );
        let _ = writeln!(s, "# TYPE {} gauge", m::SINK_STALLED_PARTITIONS);
        let _ = writeln!(s, "{} {}", m::SINK_STALLED_PARTITIONS, stalls.len());
        let _ = writeln!(
            s,
            "# HELP {} Seconds since the stalled partition's event was first refused",
            m::SINK_STALLED_SECONDS
        );
        let _ = writeln!(s, "# TYPE {} gauge", m::SINK_STALLED_SECONDS);
        for ((_, partition), st) in &stalls {
            let _ = writeln!(
                s,
                "{}{{partition=\"{partition}\"}} {:.3}",
                m::SINK_STALLED_SECONDS,
                st.since.elapsed().as_secs_f64()
            );
        }
        s
    }
}

/// Consumer context: drops a revoked partition's lag and stall before the partition goes.
pub struct SinkContext {
    pub state: std::sync::Arc<SinkState>,
}

impl ClientContext for SinkContext {}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.state.forget(tpl);
            self.state.rebalances.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.state.rebalances.fetch_add(1, Ordering::AcqRel);
        }
    }
}
