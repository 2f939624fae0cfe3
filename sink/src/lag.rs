//! Consumer lag per partition: high watermark minus the committed offset (or minus the low watermark
//! when the group has committed nothing yet), refreshed every few seconds into this sink's state
//! (only the partitions it holds; a revoked partition is dropped by the rebalance callback).

use crate::state::{SinkContext, SinkState};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Offset;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Measures the lag of the partitions currently assigned to `consumer`.
pub fn measure(
    consumer: &StreamConsumer<SinkContext>,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, i32, i64)>> {
    let assignment = consumer.assignment()?;
    if assignment.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = consumer.committed_offsets(assignment, timeout)?;
    let mut out = Vec::new();
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let from = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        out.push((e.topic().to_string(), e.partition(), (high - from).max(0)));
    }
    Ok(out)
}

pub async fn run(
    consumer: Arc<StreamConsumer<SinkContext>>,
    state: Arc<SinkState>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let c = consumer.clone();
        let before = state.rebalance_count();
        match tokio::task::spawn_blocking(move || measure(&c, Duration::from_secs(5))).await {
            // A rebalance during the measurement may have revoked what was measured: skip this round.
            Ok(Ok(lags)) if state.rebalance_count() == before => state.set_lags(
                lags.into_iter()
                    .map(|(topic, partition, lag)| ((topic, partition), lag)),
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "consumer lag not measured"),
            Err(e) => tracing::debug!(error = %e, "consumer lag task failed"),
        }
        if crate::sink::sleep_or_shutdown(every, &mut shutdown).await {
            return;
        }
    }
}
