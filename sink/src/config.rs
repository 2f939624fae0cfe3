//! Settings of a sink process. `Default` gives the local defaults of docs/architecture.md.

use std::net::SocketAddr;
use std::time::Duration;

/// Everything `run_sink` needs. Tests build one with their own database and topic names.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// MySQL / MariaDB URL including the database name.
    pub database_url: String,
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
    /// Topic of the domain events.
    pub topic: String,
    /// Dead-letter topic for poison messages.
    pub dlq_topic: String,
    /// Consumer group id.
    pub group_id: String,
    /// Where paid orders are POSTed.
    pub data_platform_url: String,
    /// `/healthz` + `/metrics` listen address; `None` serves nothing.
    pub listen_addr: Option<SocketAddr>,
    /// Most messages applied in one transaction.
    pub batch_max: usize,
    /// A batch closes after this long without a new message...
    pub batch_idle: Duration,
    /// ...or this long after its first message (bounds the lag a full batch adds).
    pub batch_max_wait: Duration,
    /// Attempts of an event that fails alone with a non-transient error before it is dead-lettered
    /// (integrity-constraint errors excepted: they stall the partition instead).
    pub poison_attempts: u32,
    /// First retry delay of an event stalled on an integrity-constraint error (doubles, with jitter).
    pub stall_backoff_base: Duration,
    /// Largest retry delay of a stalled event.
    pub stall_backoff_cap: Duration,
    /// Run `sqlx::migrate!` at start.
    pub run_migrations: bool,
    /// Run the data platform delivery worker in this process.
    pub run_delivery_worker: bool,
    /// Requests to the data platform in flight at once.
    pub delivery_concurrency: usize,
    /// Rows claimed per poll.
    pub delivery_batch: u32,
    /// Poll interval of the delivery worker when idle.
    pub delivery_poll_interval: Duration,
    /// HTTP timeout of one delivery.
    pub delivery_timeout: Duration,
    /// First retry delay of a delivery (doubles per attempt, with jitter). A delivery is retried
    /// until delivered; only a permanent refusal (a 4xx other than 408/409/425/429) makes it DEAD.
    pub delivery_backoff_base: Duration,
    /// Largest retry delay of a delivery.
    pub delivery_backoff_cap: Duration,
    /// How often consumer lag and delivery gauges are refreshed.
    pub gauges_interval: Duration,
    /// Test hook: stop right after the first MySQL commit, before dead-lettering and before committing
    /// offsets, as if the process had been killed there.
    pub exit_after_db_commit: bool,
    /// Fault injection for crash tests: abort the process at a point of a later batch.
    pub crash: Option<crate::crash::CrashPlan>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            database_url: "mysql://root@127.0.0.1:3306/flashsale".into(),
            kafka_brokers: "127.0.0.1:9092".into(),
            topic: "flashsale.events".into(),
            dlq_topic: "flashsale.events.dlq".into(),
            group_id: "flashsale-sink".into(),
            data_platform_url: "http://127.0.0.1:8082/events".into(),
            listen_addr: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            batch_max: 2_000,
            batch_idle: Duration::from_millis(20),
            batch_max_wait: Duration::from_millis(250),
            poison_attempts: 3,
            stall_backoff_base: Duration::from_secs(1),
            stall_backoff_cap: Duration::from_secs(30),
            run_migrations: true,
            run_delivery_worker: true,
            delivery_concurrency: 16,
            delivery_batch: 64,
            delivery_poll_interval: Duration::from_millis(250),
            delivery_timeout: Duration::from_secs(5),
            delivery_backoff_base: Duration::from_millis(200),
            delivery_backoff_cap: Duration::from_secs(30),
            gauges_interval: Duration::from_secs(5),
            exit_after_db_commit: false,
            crash: None,
        }
    }
}
