//! flashsale-sink: applies the engine's domain events from Kafka to MySQL, once per event id, and
//! delivers every paid order to the external data platform.
//!
//! One module per job:
//! - [`config`]: the sink's settings ([`SinkConfig`]).
//! - [`event`]: decoding and validating the Kafka event JSON.
//! - [`apply`]: the SQL effects of each event type inside a transaction.
//! - [`writes`]: a batch's row changes, gathered and written with few multi-row statements.
//! - [`db`]: connecting, migrating, classifying database errors.
//! - [`consumer`]: the batch loop (fetch, apply in one transaction, dead-letter, commit offsets).
//! - [`dlq`]: producing poison messages to the dead-letter topic.
//! - [`lag`]: consumer lag per partition.
//! - [`state`]: this sink's partitions (lag, stalls) and its rebalance callbacks.
//! - [`delivery`]: the data platform delivery worker.
//! - [`backoff`]: exponential backoff with jitter.
//! - [`mock_platform`]: a mock of the data platform, for local runs and tests.
//! - [`replay`]: putting DEAD deliveries back to PENDING.
//! - [`telemetry`]: metric names, the Prometheus recorder, logging.
//! - [`ops`]: the `/healthz` and `/metrics` HTTP server.
//! - [`sink`]: wiring it all together ([`run_sink`]).

pub mod apply;
pub mod backoff;
pub mod config;
pub mod consumer;
pub mod crash;
pub mod db;
pub mod delivery;
pub mod dlq;
pub mod event;
pub mod lag;
pub mod mock_platform;
pub mod ops;
pub mod replay;
pub mod sink;
pub mod state;
pub mod telemetry;
pub mod writes;

pub use config::SinkConfig;
pub use mock_platform::{
    spawn_mock_platform, spawn_mock_platform_with, MockPlatformConfig, MockPlatformHandle,
    MockPlatformStats,
};
pub use replay::replay_dead_deliveries;
pub use sink::run_sink;
