//! Start-up and shutdown: connect, migrate, lease an id node, load scripts, serve, and run the background
//! tasks (expiry, relay, gauges, id lease) until a shutdown signal; in-flight requests finish first.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::routing::{get, patch, post};
use axum::Router;
use fred::prelude::*;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, MySqlPool};
use tokio::net::TcpListener;
use tokio::sync::watch;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::Tokens;
use crate::config::{ConnectionSettings, ServeSettings};
use crate::error::ApiError;
use crate::ids::IdAllocator;
use crate::keys::Keys;
use crate::openapi::ApiDoc;
use crate::routes::{coupons, members, ops, orders, points, products};
use crate::scripts::Scripts;
use crate::state::{AppState, Inner};

pub const RELAY_GROUP: &str = "relay";

/// Redis client pool with reconnects; commands interrupted by a reconnect are resent, which is why every
/// script must be safe to run twice.
pub async fn connect_redis(settings: &ConnectionSettings) -> anyhow::Result<Pool> {
    let config = Config::from_url(&settings.redis_url).context("REDIS_URL")?;
    let pool = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build_pool(settings.redis_pool_size.max(1))
        .context("building the Redis pool")?;
    pool.init().await.context("connecting to Redis")?;
    Ok(pool)
}

/// The longest a background worker's Redis command may take; longer than any BLOCK they use.
pub const WORKER_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes a replaced client in the background: QUIT on a wedged connection may never be answered.
pub fn retire_redis_client(client: Client) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
    });
}

/// A single Redis client (for blocking reads such as XREADGROUP ... BLOCK).
pub async fn connect_redis_client(settings: &ConnectionSettings) -> anyhow::Result<Client> {
    let config = Config::from_url(&settings.redis_url).context("REDIS_URL")?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.internal_command_timeout = Duration::from_secs(5);
        })
        // Background workers (relay, sagas) must never wait forever on one command: a command
        // queued across a server restart fails after this and the worker replaces the client.
        .with_performance_config(|p| p.default_command_timeout = WORKER_COMMAND_TIMEOUT)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()
        .context("building the Redis client")?;
    client.init().await.context("connecting to Redis")?;
    Ok(client)
}

/// Connects to MySQL, creating the database when missing, and applies the migrations.
pub async fn connect_mysql(settings: &ConnectionSettings) -> anyhow::Result<MySqlPool> {
    let options: MySqlConnectOptions = settings.database_url.parse().context("DATABASE_URL")?;
    let options = options.log_statements(tracing::log::LevelFilter::Debug);
    if let Some(database) = options.get_database().map(str::to_string) {
        let server = options.clone().database("");
        let mut conn = server.connect().await.context("connecting to MySQL")?;
        sqlx::query(&format!(
            "CREATE DATABASE IF NOT EXISTS `{}`",
            database.replace('`', "")
        ))
        .execute(&mut conn)
        .await
        .context("creating the database")?;
    }
    let pool = MySqlPoolOptions::new()
        .max_connections(settings.database_pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("connecting to MySQL")?;
    apply_migrations(&pool).await?;
    Ok(pool)
}

/// Applies the migrations under a named lock. The sink runs the same ones at its start, and MariaDB
/// does not honour sqlx's own migration lock (GET_LOCK with a negative timeout), so two processes on a
/// fresh database would both apply them.
async fn apply_migrations(pool: &MySqlPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await.context("connecting to MySQL")?;
    let locked: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(CONCAT('flashsale_migrate_', DATABASE()), 120)")
            .fetch_one(&mut *conn)
            .await
            .context("taking the migration lock")?;
    anyhow::ensure!(
        locked == Some(1),
        "timed out waiting for the migration lock"
    );
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_locking(false);
    migrator.set_ignore_missing(true);
    let result = migrator
        .run_direct(&mut *conn)
        .await
        .context("applying migrations");
    let _ = sqlx::query("SELECT RELEASE_LOCK(CONCAT('flashsale_migrate_', DATABASE()))")
        .execute(&mut *conn)
        .await;
    result
}

/// Owners map to partitions by `partition::PARTITIONS`; data written with another count would put
/// every owner's keys under tags this build never reads. The first start records the count, every later
/// start (engine, relay, rebuild) compares and refuses a mismatch: changing it is an explicit migration.
pub async fn ensure_partition_layout(redis: &Pool, keys: &Keys) -> anyhow::Result<()> {
    let ours = crate::partition::PARTITIONS.to_string();
    let key = keys.layout();
    let _: Option<String> = redis
        .set(&key, ours.as_str(), None, Some(SetOptions::NX), false)
        .await
        .context("recording the partition layout")?;
    let stored: Option<String> = redis
        .get(&key)
        .await
        .context("reading the partition layout")?;
    match stored {
        Some(stored) if stored == ours => Ok(()),
        stored => anyhow::bail!(
            "the data under this KEY_PREFIX was written with {} partitions ({key}); this build uses {ours}. \
             Moving owners between partitions is an explicit migration, not a restart",
            stored.as_deref().unwrap_or("an unknown number of")
        ),
    }
}

/// Creates the consumer groups (the relay's and the saga workers') on every partition's outbox stream
/// (and the streams) when missing.
pub async fn ensure_outbox_group(redis: &Pool, keys: &Keys) -> anyhow::Result<()> {
    ensure_partition_layout(redis, keys).await?;
    let groups = [RELAY_GROUP, crate::pipeline::saga::SAGA_GROUP];
    futures::future::try_join_all(crate::partition::Partition::all().flat_map(|p| {
        groups.map(|group| async move {
            let result: Result<(), fred::error::Error> = redis
                .next()
                .xgroup_create(keys.outbox(p), group, "0", true)
                .await;
            match result {
                Err(e) if !e.details().contains("BUSYGROUP") => {
                    Err(e).with_context(|| format!("creating the {group} group"))
                }
                _ => Ok(()),
            }
        })
    }))
    .await?;
    Ok(())
}

/// The token signing secret. Outside `FLASHSALE_ENV=dev` the engine refuses to start with a generated
/// secret or the development admin key; a generated secret is never logged (it signs every token).
pub fn signing_secret(settings: &ServeSettings) -> anyhow::Result<Vec<u8>> {
    if settings.admin_api_key == crate::config::DEV_ADMIN_KEY {
        anyhow::ensure!(
            settings.is_dev(),
            "ADMIN_API_KEY is the development key {:?}: set a real key (or FLASHSALE_ENV=dev for development)",
            crate::config::DEV_ADMIN_KEY
        );
        tracing::warn!("using the development admin key (FLASHSALE_ENV=dev)");
    }
    match &settings.jwt_secret {
        Some(s) if s.len() >= 32 => Ok(s.clone().into_bytes()),
        Some(_) => anyhow::bail!("JWT_SECRET must be at least 32 bytes"),
        None => {
            anyhow::ensure!(
                settings.is_dev(),
                "JWT_SECRET is not set: set one of at least 32 bytes (or FLASHSALE_ENV=dev to generate one)"
            );
            tracing::warn!(
                "JWT_SECRET not set: generated one for development (not logged; tokens die with the process)"
            );
            Ok((0..48)
                .map(|_| format!("{:x}", rand::random::<u8>() % 16))
                .collect::<String>()
                .into_bytes())
        }
    }
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    router: Router,
}

impl Application {
    pub async fn build(settings: ServeSettings) -> anyhow::Result<Self> {
        // First: a production engine with development secrets must not even connect.
        let secret = signing_secret(&settings)?;
        let c = &settings.connections;
        settings.ids.validate()?;
        let redis = connect_redis(c).await?;
        let db = connect_mysql(c).await?;
        // Creation needs a node lease; without one the engine still starts (sales, reads, payments need
        // only Redis) and creation answers 503 until the lease task gets one.
        let ids = IdAllocator::new(settings.ids.clone());
        match ids.claim(&db).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::error!("every id node is held; creation answers 503 until one frees")
            }
            Err(e) => {
                tracing::error!(error = %e, "no id node yet; creation answers 503 until one is leased")
            }
        }
        // Sales need only Redis: without Kafka the engine starts anyway and the relay creates the
        // topics once a broker answers (bounded here so a dead broker does not delay the start long).
        let kafka_up = match tokio::time::timeout(
            Duration::from_secs(5),
            crate::pipeline::kafka::ensure_topics(&settings.connections),
        )
        .await
        {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Kafka topics not created yet; the relay retries");
                false
            }
            Err(_) => {
                tracing::warn!("Kafka does not answer; starting without it, the relay retries");
                false
            }
        };
        let producer =
            crate::pipeline::kafka::producer(&c.kafka_brokers, settings.relay.relay_linger_ms)?;
        let scripts = Scripts::load(&redis, settings.connections.durability())
            .await
            .context("loading Lua scripts")?;
        let keys = Keys::new(c.key_prefix.clone());
        ensure_outbox_group(&redis, &keys).await?;

        let listener = TcpListener::bind(settings.listen_addr)
            .await
            .context("binding LISTEN_ADDR")?;
        crate::telemetry::metrics_handle();
        let state = AppState::new(Inner {
            redis,
            db,
            scripts,
            keys,
            ids,
            tokens: Tokens::new(&secret, settings.jwt_ttl_secs),
            auth_guard: crate::abuse::AuthGuard::new(&settings),
            hot_path: crate::hot_path::choose(settings.hot_path),
            producer,
            dependencies: crate::dependencies::DependencyStatus::new(kafka_up),
            popular: Default::default(),
            caches: crate::invalidations::LocalCaches {
                windows: std::sync::Arc::new(crate::sale_windows::SaleWindows::new(
                    settings.sale_window_cache,
                )),
                sold_out: std::sync::Arc::new(crate::sold_out::SoldOutMarkers::new(
                    settings.sold_out_markers,
                    std::time::Duration::from_millis(settings.sold_out_marker_ttl_ms),
                )),
            },
            settings,
        });
        let router = router(state.clone());
        Ok(Self {
            listener,
            state,
            router,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.settings.listen_addr)
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish and stops the tasks.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(crate::pipeline::expiry::run(
            self.state.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(crate::pipeline::saga::run_all(
            self.state.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(crate::gauges::run(self.state.clone(), stop_rx.clone()));
        if self.state.settings.sale_window_cache || self.state.settings.sold_out_markers {
            tasks.spawn(crate::invalidations::run(
                self.state.settings.connections.redis_url.clone(),
                self.state.keys.invalidations(),
                self.state.caches.clone(),
                stop_rx.clone(),
            ));
        }
        tasks.spawn(crate::abuse::prune_periodically(
            self.state.clone(),
            stop_rx.clone(),
        ));
        tasks.spawn(crate::dependencies::run(
            self.state.clone(),
            stop_rx.clone(),
        ));
        // Stops after the HTTP drain, then releases the node for the next engine.
        tasks.spawn(
            self.state
                .ids
                .clone()
                .run(self.state.db.clone(), stop_rx.clone()),
        );
        if self.state.settings.run_relay {
            let relay = crate::pipeline::relay::Relay::run_all(
                self.state.settings.connections.clone(),
                self.state.settings.relay.clone(),
                self.state.producer.clone(),
                stop_rx.clone(),
            );
            tasks.spawn(async move {
                if let Err(e) = relay.await {
                    tracing::error!(error = %e, "the relay could not start");
                }
            });
        }
        tracing::info!(addr = %self.local_addr(), "serving");
        let header_read_timeout = Duration::from_millis(self.state.settings.header_read_timeout_ms);
        crate::http::serve(self.listener, self.router, header_read_timeout, shutdown)
            .await
            .context("serving HTTP")?;
        tracing::info!("HTTP drained; stopping background tasks");
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/members", post(members::signup))
        .route("/api/v1/auth/login", post(members::login))
        .route("/api/v1/me/points", get(points::balance))
        .route("/api/v1/me/points/charge", post(points::charge))
        .route("/api/v1/me/points/history", get(points::history))
        .route("/api/v1/me/coupons", get(coupons::mine))
        .route("/api/v1/products", get(products::list))
        .route("/api/v1/products/popular", get(products::popular))
        .route("/api/v1/products/{id}", get(products::get))
        .route("/api/v1/coupons/{id}", get(coupons::get))
        .route("/api/v1/coupons/{id}/issue", post(coupons::issue))
        .route("/api/v1/orders", post(orders::create))
        .route("/api/v1/orders/{id}", get(orders::get))
        .route("/api/v1/orders/{id}/pay", post(orders::pay))
        .route("/api/v1/orders/{id}/cancel", post(orders::cancel))
        .route("/api/v1/admin/products", post(products::create))
        .route("/api/v1/admin/products/{id}", patch(products::set_rules))
        .route(
            "/api/v1/admin/products/{id}/stock",
            post(products::add_stock),
        )
        .route("/api/v1/admin/coupons", post(coupons::create))
        .route(
            "/api/v1/admin/coupons/{id}/quantity",
            post(coupons::add_quantity),
        )
        .route("/api/v1/admin/seed/members", post(members::seed_members))
        .route("/api/v1/admin/reconcile", get(ops::reconcile))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));
    let routes = Router::new()
        .merge(api)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .fallback(not_found)
        .with_state(state.clone());
    crate::http::with_http_layers(routes, &state.settings)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
