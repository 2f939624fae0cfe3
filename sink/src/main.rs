//! `flashsale-sink`: `run` (default), `mock-platform`, `replay-deliveries`.

use clap::{Args, Parser, Subcommand};
use flashsale_sink::{MockPlatformConfig, SinkConfig};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "flashsale-sink",
    version,
    about = "Kafka -> MySQL sink and data platform delivery of flashsale"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Consume events into MySQL and deliver paid orders (the default).
    Run(RunArgs),
    /// Serve a mock of the external data platform.
    MockPlatform(MockArgs),
    /// Put DEAD data platform deliveries back to PENDING.
    ReplayDeliveries(ReplayArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "mysql://root@127.0.0.1:3306/flashsale"
    )]
    database_url: String,
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    #[arg(long, env = "KAFKA_TOPIC", default_value = "flashsale.events")]
    kafka_topic: String,
    #[arg(long, env = "KAFKA_DLQ_TOPIC", default_value = "flashsale.events.dlq")]
    kafka_dlq_topic: String,
    #[arg(long, env = "KAFKA_GROUP", default_value = "flashsale-sink")]
    kafka_group: String,
    #[arg(
        long,
        env = "DATA_PLATFORM_URL",
        default_value = "http://127.0.0.1:8082/events"
    )]
    data_platform_url: String,
    /// `/healthz` and `/metrics`.
    #[arg(long, env = "SINK_LISTEN_ADDR", default_value = "127.0.0.1:8081")]
    listen_addr: SocketAddr,
    /// Most messages applied in one transaction.
    #[arg(long, env = "SINK_BATCH_MAX", default_value_t = 2_000)]
    batch_max: usize,
    /// A batch closes after this long without a new message...
    #[arg(long, env = "SINK_BATCH_IDLE_MS", default_value_t = 20)]
    batch_idle_ms: u64,
    /// ...or this long after its first message, whichever comes first.
    #[arg(long, env = "SINK_BATCH_MAX_WAIT_MS", default_value_t = 250)]
    batch_max_wait_ms: u64,
    /// First retry delay of a failed delivery (doubles per attempt, with jitter).
    #[arg(long, env = "DELIVERY_BACKOFF_BASE_MS", default_value_t = 200)]
    delivery_backoff_base_ms: u64,
    /// Largest retry delay of a failed delivery (deliveries are retried until delivered).
    #[arg(long, env = "DELIVERY_BACKOFF_CAP_MS", default_value_t = 30_000)]
    delivery_backoff_cap_ms: u64,
    /// First retry delay of an event stalled on an integrity-constraint error.
    #[arg(long, env = "SINK_STALL_BACKOFF_BASE_MS", default_value_t = 1_000)]
    stall_backoff_base_ms: u64,
    /// Largest retry delay of a stalled event.
    #[arg(long, env = "SINK_STALL_BACKOFF_CAP_MS", default_value_t = 30_000)]
    stall_backoff_cap_ms: u64,
    /// How often the consumer lag and delivery gauges are refreshed.
    #[arg(long, env = "SINK_GAUGES_INTERVAL_MS", default_value_t = 5_000)]
    gauges_interval_ms: u64,
    #[arg(long, env = "DELIVERY_CONCURRENCY", default_value_t = 16)]
    delivery_concurrency: usize,
    /// Do not run the delivery worker in this process.
    #[arg(long, env = "SINK_NO_DELIVERY", default_value_t = false)]
    no_delivery: bool,
    /// Do not run migrations at start.
    #[arg(long, env = "SINK_NO_MIGRATE", default_value_t = false)]
    no_migrate: bool,
    /// Fault injection (crash tests only): abort the process at this point...
    #[arg(long, env = "SINK_CRASH_POINT", value_enum)]
    crash_point: Option<flashsale_sink::crash::CrashPoint>,
    /// ...of the batch after this many batches passed it.
    #[arg(long, env = "SINK_CRASH_AFTER_BATCHES", default_value_t = 0)]
    crash_after_batches: u32,
}

#[derive(Args)]
struct MockArgs {
    #[arg(
        long,
        env = "MOCK_PLATFORM_LISTEN_ADDR",
        default_value = "127.0.0.1:8082"
    )]
    listen_addr: SocketAddr,
    /// Share of requests answered 503 (0.0..1.0).
    #[arg(long, env = "MOCK_FAIL_RATE", default_value_t = 0.0)]
    fail_rate: f64,
    /// Delay before every answer.
    #[arg(long, env = "MOCK_DELAY_MS", default_value_t = 0)]
    delay_ms: u64,
    /// HTTP status of the failed answers (e.g. 400 to test permanent refusals).
    #[arg(long, env = "MOCK_FAIL_STATUS", default_value_t = 503)]
    fail_status: u16,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct ReplayTarget {
    /// Replay one delivery.
    #[arg(long)]
    event_id: Option<String>,
    /// Replay every DEAD delivery.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
struct ReplayArgs {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "mysql://root@127.0.0.1:3306/flashsale"
    )]
    database_url: String,
    #[command(flatten)]
    target: ReplayTarget,
}

impl RunArgs {
    fn config(self) -> SinkConfig {
        SinkConfig {
            database_url: self.database_url,
            kafka_brokers: self.kafka_brokers,
            topic: self.kafka_topic,
            dlq_topic: self.kafka_dlq_topic,
            group_id: self.kafka_group,
            data_platform_url: self.data_platform_url,
            listen_addr: Some(self.listen_addr),
            batch_max: self.batch_max.max(1),
            batch_idle: Duration::from_millis(self.batch_idle_ms),
            batch_max_wait: Duration::from_millis(self.batch_max_wait_ms),
            delivery_backoff_base: Duration::from_millis(self.delivery_backoff_base_ms.max(1)),
            delivery_backoff_cap: Duration::from_millis(self.delivery_backoff_cap_ms.max(1)),
            stall_backoff_base: Duration::from_millis(self.stall_backoff_base_ms.max(1)),
            stall_backoff_cap: Duration::from_millis(self.stall_backoff_cap_ms.max(1)),
            gauges_interval: Duration::from_millis(self.gauges_interval_ms.max(100)),
            delivery_concurrency: self.delivery_concurrency,
            run_delivery_worker: !self.no_delivery,
            run_migrations: !self.no_migrate,
            crash: self
                .crash_point
                .map(|point| flashsale_sink::crash::CrashPlan {
                    point,
                    after_batches: self.crash_after_batches,
                }),
            ..SinkConfig::default()
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    flashsale_sink::telemetry::init_logging();
    match cli.command {
        None => flashsale_sink::run_sink(cli.run.config(), shutdown_signal()).await,
        Some(Command::Run(args)) => {
            flashsale_sink::run_sink(args.config(), shutdown_signal()).await
        }
        Some(Command::MockPlatform(a)) => {
            let cfg = MockPlatformConfig {
                fail_rate: a.fail_rate.clamp(0.0, 1.0),
                delay: Duration::from_millis(a.delay_ms),
            };
            let (addr, handle) =
                flashsale_sink::spawn_mock_platform_with(a.listen_addr, cfg).await?;
            handle.set_failure_status(a.fail_status);
            println!("mock data platform on http://{addr}/events");
            shutdown_signal().await;
            handle.stop();
            Ok(())
        }
        Some(Command::ReplayDeliveries(a)) => {
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(1)
                .connect(&a.database_url)
                .await?;
            let n =
                flashsale_sink::replay_dead_deliveries(&pool, a.target.event_id.as_deref()).await?;
            println!("{n} dead deliveries reset to PENDING");
            pool.close().await;
            Ok(())
        }
    }
}
