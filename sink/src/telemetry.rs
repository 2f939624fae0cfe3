//! Metric names (docs/architecture.md, sink section), the Prometheus recorder, process metrics, logs.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const SINK_EVENTS_APPLIED: &str = "flashsale_sink_events_applied_total";
pub const SINK_EVENTS_SKIPPED: &str = "flashsale_sink_events_duplicate_total";
pub const SINK_APPLY_DURATION: &str = "flashsale_sink_apply_duration_seconds";
pub const SINK_BATCH_SIZE: &str = "flashsale_sink_batch_size";
pub const SINK_CONSUMER_LAG: &str = "flashsale_sink_consumer_lag";
pub const SINK_DEAD_LETTERS: &str = "flashsale_sink_dead_letters_total";
pub const SINK_ERRORS: &str = "flashsale_sink_errors_total";
pub const SINK_LOCK_CONFLICTS: &str = "flashsale_sink_lock_conflicts_total";
pub const DELIVERIES: &str = "flashsale_data_platform_deliveries_total";
pub const DELIVERIES_PENDING: &str = "flashsale_data_platform_pending";
pub const DELIVERIES_DEAD: &str = "flashsale_data_platform_dead";
pub const DELIVERIES_OLDEST_PENDING_AGE: &str =
    "flashsale_data_platform_oldest_pending_age_seconds";
/// Rendered from the sink's own state (crate::state), not the recorder.
pub const SINK_STALLED_PARTITIONS: &str = "flashsale_sink_stalled_partitions";
pub const SINK_STALLED_SECONDS: &str = "flashsale_sink_stalled_seconds";
pub const SINK_CONFLICTS: &str = "flashsale_sink_conflicts_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use. If another recorder is installed
/// already (e.g. the sink runs inside another program's tests), a private one is used instead.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        Matcher::Full(SINK_APPLY_DURATION.into()),
                        &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                    )
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            Matcher::Full(SINK_BATCH_SIZE.into()),
                            &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0],
                        )
                    })
                    .expect("non-empty buckets")
            };
            let handle = match builder().install_recorder() {
                Ok(h) => {
                    describe();
                    h
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is installed already; /metrics shows a private one");
                    builder().build_recorder().handle()
                }
            };
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .ok();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(SINK_EVENTS_APPLIED, "Events applied to MySQL, by type");
    describe_counter!(
        SINK_EVENTS_SKIPPED,
        "Redelivered events skipped (event id already processed)"
    );
    describe_histogram!(
        SINK_APPLY_DURATION,
        Unit::Seconds,
        "Time to apply one batch"
    );
    describe_histogram!(SINK_BATCH_SIZE, "Messages per batch");
    describe_counter!(
        SINK_CONFLICTS,
        "Events the database refused with an integrity-constraint error (their partition stalls)"
    );
    describe_counter!(
        SINK_DEAD_LETTERS,
        "Messages produced to the dead-letter topic"
    );
    describe_counter!(SINK_ERRORS, "Errors met by the sink (retried or not)");
    describe_counter!(
        SINK_LOCK_CONFLICTS,
        "Batches rolled back by a lock conflict with another sink (deadlock victim, lock wait timeout) and retried"
    );
    describe_counter!(DELIVERIES, "Data platform delivery attempts by result");
    describe_gauge!(DELIVERIES_PENDING, "Deliveries waiting to be sent");
    describe_gauge!(
        DELIVERIES_DEAD,
        "Deliveries the data platform refused for good (see replay-deliveries)"
    );
    describe_gauge!(
        DELIVERIES_OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest paid order not yet delivered (0 when none)"
    );
}

/// Prometheus text: the recorder's metrics, this sink's partition gauges (lag, stalls) and the usual
/// process_* metrics (Linux /proc).
pub fn render(state: &crate::state::SinkState) -> String {
    let mut out = prometheus().render();
    out.push_str(&state.render());
    out.push_str(&process_metrics());
    out
}

fn process_metrics() -> String {
    let mut s = String::new();
    // /proc/self/stat: fields after the ")" of the command name; utime, stime are 14 and 15 (1-based).
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // rest starts at field 3 (state).
            let get = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
            if let (Some(u), Some(st)) = (get(14), get(15)) {
                let ticks = 100.0; // USER_HZ on Linux
                s.push_str("# TYPE process_cpu_seconds_total counter\n");
                s.push_str(&format!("process_cpu_seconds_total {}\n", (u + st) / ticks));
            }
            if let Some(threads) = get(20) {
                s.push_str("# TYPE process_threads gauge\n");
                s.push_str(&format!("process_threads {threads}\n"));
            }
        }
    }
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let f: Vec<u64> = statm
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() >= 2 {
            s.push_str("# TYPE process_virtual_memory_bytes gauge\n");
            s.push_str(&format!("process_virtual_memory_bytes {}\n", f[0] * 4096));
            s.push_str("# TYPE process_resident_memory_bytes gauge\n");
            s.push_str(&format!("process_resident_memory_bytes {}\n", f[1] * 4096));
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        s.push_str("# TYPE process_open_fds gauge\n");
        s.push_str(&format!("process_open_fds {}\n", dir.count()));
    }
    s
}

/// Logs to stderr: text by default, JSON with `LOG_FORMAT=json`; level from `RUST_LOG` (default info).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,rdkafka=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = b.json().with_current_span(false).try_init();
    } else {
        let _ = b.try_init();
    }
}
