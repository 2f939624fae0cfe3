//! The `flashsale` command: the engine (`serve`, default), a standalone relay, and the operator tools.

use clap::{Parser, Subcommand};

// glibc malloc showed up as ~15% of the engine's CPU under a coupon rush; mimalloc is much cheaper for
// the many small short-lived allocations of a request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use flashsale::app::{connect_mysql, connect_redis, shutdown_signal, Application};
use flashsale::config::{ConnectionSettings, LogFormat, RelaySettings, ServeSettings};
use flashsale::keys::Keys;

#[derive(Parser)]
#[command(name = "flashsale", version, about = "Redis-first flash-sale engine")]
struct Cli {
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Parser)]
struct ServeOnly {
    #[command(flatten)]
    settings: ServeSettings,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (with the expiry task and, unless RUN_RELAY=false, the outbox relay).
    Serve(Box<ServeSettings>),
    /// Run only the outbox relay (Redis stream -> Kafka).
    Relay {
        #[command(flatten)]
        connections: ConnectionSettings,
        #[command(flatten)]
        relay: RelaySettings,
        /// Where the standalone relay serves /metrics (outbox backlog, publish rate, errors, latency).
        #[arg(long, env = "RELAY_METRICS_ADDR", default_value = "127.0.0.1:8083")]
        metrics_addr: std::net::SocketAddr,
    },
    /// Compare Redis with MySQL and print the report as JSON; exits 1 when not in sync.
    Reconcile {
        #[command(flatten)]
        connections: ConnectionSettings,
    },
    /// Rebuild Redis from MySQL (after a Redis loss). Refuses while events are in flight unless --force.
    RebuildRedis {
        #[command(flatten)]
        connections: ConnectionSettings,
        #[arg(long)]
        force: bool,
    },
    /// Print the OpenAPI document (the one served at /openapi.json).
    Openapi,
    /// Apply the database migrations and exit.
    Migrate {
        #[command(flatten)]
        connections: ConnectionSettings,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    flashsale::telemetry::init_logs(cli.log_format);
    let command = match cli.command {
        Some(c) => c,
        // No subcommand: serve with settings from the environment.
        None => Command::Serve(Box::new(ServeOnly::parse_from(["flashsale"]).settings)),
    };
    match command {
        Command::Serve(settings) => {
            let app = Application::build(*settings).await?;
            println!("flashsale listening on http://{}", app.local_addr());
            app.run_until(shutdown_signal()).await
        }
        Command::Relay {
            connections,
            relay,
            metrics_addr,
        } => {
            flashsale::telemetry::metrics_handle();
            let redis = connect_redis(&connections).await?;
            let keys = Keys::new(connections.key_prefix.clone());
            flashsale::app::ensure_outbox_group(&redis, &keys).await?;
            let producer = flashsale::pipeline::kafka::producer(
                &connections.kafka_brokers,
                relay.relay_linger_ms,
            )?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(flashsale::pipeline::relay::Relay::run_all(
                connections.clone(),
                relay,
                producer,
                stop_rx.clone(),
            ));
            let gauges = tokio::spawn(flashsale::pipeline::relay::sample_backlog(
                redis, keys, stop_rx,
            ));
            let listener = tokio::net::TcpListener::bind(metrics_addr).await?;
            let router = axum::Router::new().route(
                "/metrics",
                axum::routing::get(flashsale::routes::ops::metrics),
            );
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
            let _ = stop_tx.send(true);
            task.await??;
            gauges.await?;
            Ok(())
        }
        Command::Reconcile { connections } => {
            let redis = connect_redis(&connections).await?;
            let db = connect_mysql(&connections).await?;
            let keys = Keys::new(connections.key_prefix.clone());
            let report =
                flashsale::pipeline::reconcile::reconcile(&redis, &db, &keys, &connections).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.in_sync {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::RebuildRedis { connections, force } => {
            let redis = connect_redis(&connections).await?;
            let db = connect_mysql(&connections).await?;
            let keys = Keys::new(connections.key_prefix.clone());
            let r = flashsale::pipeline::rebuild::rebuild(&redis, &db, &keys, &connections, force)
                .await?;
            println!(
                "rebuilt Redis from MySQL: {} members, {} products, {} coupons, {} orders",
                r.members, r.products, r.coupons, r.orders
            );
            Ok(())
        }
        Command::Openapi => {
            use utoipa::OpenApi;
            println!(
                "{}",
                flashsale::openapi::ApiDoc::openapi().to_pretty_json()?
            );
            Ok(())
        }
        Command::Migrate { connections } => {
            connect_mysql(&connections).await?;
            println!("migrations applied");
            Ok(())
        }
    }
}
