//! Test harness: each test spawns its own engine on a random port against the real Redis, MariaDB and
//! Kafka, with its own database, Redis key prefix and Kafka topics, so tests run in parallel.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

pub mod cluster;
pub mod haproxy;
pub mod kafka;
pub mod pipeline;
pub mod proxy;
pub mod redis;

use flashsale::app::Application;
use flashsale::config::{
    ConnectionSettings, HotPathKind, IdSettings, RelaySettings, ServeSettings,
};
use flashsale::keys::Keys;
use flashsale::state::AppState;
use fred::prelude::*;
use serde_json::{json, Value};

pub const ADMIN_KEY: &str = "test-admin-key";
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Tests that stop and restart a server of their own (a private broker, a private redis-server) and
/// count what survives take this lock, so two of them never share the two cores: they used to run alone
/// in their own test binaries.
/// (A tokio mutex: the guard is held across awaits, and a failed test does not poison it.)
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    EXCLUSIVE.lock().await
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The MySQL server URL without a database (tests create their own).
pub fn mysql_server_url() -> String {
    let url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    // Drop a database path if one was given.
    match url
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| url[start..].find('/').map(|j| start + j))
    {
        Some(slash) => url[..slash].to_string(),
        None => url,
    }
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Connection settings of a fresh, isolated deployment.
pub fn isolated_connections() -> ConnectionSettings {
    let id = unique("t");
    ConnectionSettings {
        redis_url: redis_url(),
        database_url: format!("{}/fs_{id}", mysql_server_url()),
        kafka_brokers: kafka_brokers(),
        kafka_topic: format!("fs-{id}.events"),
        kafka_dlq_topic: format!("fs-{id}.events.dlq"),
        kafka_group: format!("fs-{id}-sink"),
        kafka_partitions: 3,
        kafka_replication_factor: 1,
        kafka_min_insync_replicas: 1,
        key_prefix: id,
        redis_pool_size: 4,
        database_pool_size: 8,
        // The deployment's own rule: WAIT 1 on a cluster, nothing on one node.
        redis_wait_replicas: None,
        redis_wait_timeout_ms: 500,
    }
}

pub fn serve_settings(connections: ConnectionSettings) -> ServeSettings {
    ServeSettings {
        connections,
        listen_addr: "127.0.0.1:0".parse().expect("valid address"),
        admin_api_key: ADMIN_KEY.into(),
        jwt_secret: Some(JWT_SECRET.into()),
        jwt_ttl_secs: 3600,
        reservation_ttl_secs: 600,
        expiry_interval_ms: 100,
        popular_cache_ms: 0,
        sale_window_cache: true,
        sold_out_markers: true,
        sold_out_marker_ttl_ms: 1_000,
        run_relay: false,
        hot_path: HotPathKind::Redis,
        request_timeout_ms: 30_000,
        body_limit_bytes: 16 * 1024,
        auth_rate_per_sec: 100_000,
        auth_account_rate_per_min: 1_000_000,
        trusted_proxies: Vec::new(),
        hash_concurrency: 4,
        hash_queue: 1_000,
        header_read_timeout_ms: 10_000,
        body_read_timeout_ms: 5_000,
        relay: RelaySettings {
            relay_batch: 256,
            relay_claim_idle_ms: 2_000,
            relay_consumer: None,
            relay_retry_base_ms: 100,
            relay_retry_max_ms: 2_000,
            relay_linger_ms: 50,
        },
        ids: IdSettings::default(),
        env: std::env::var("FLASHSALE_ENV").unwrap_or_else(|_| "dev".into()),
    }
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    pub keys: Keys,
    pub redis: Pool,
    pub settings: ServeSettings,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut ServeSettings)) -> TestApp {
    let mut settings = serve_settings(isolated_connections());
    configure(&mut settings);
    spawn_with_settings(settings).await
}

/// The engine's errors (an internal error's cause above all) in the test's captured
/// output, which a failing test prints. RUST_LOG overrides the level.
fn trace_to_test_output() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("error,librdkafka=off,rdkafka=off")
        });
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

pub async fn spawn_with_settings(settings: ServeSettings) -> TestApp {
    trace_to_test_output();
    let app = Application::build(settings.clone())
        .await
        .expect("engine starts");
    let addr = app.local_addr();
    let state = app.state();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    let redis = flashsale::app::connect_redis(&settings.connections)
        .await
        .expect("redis");
    TestApp {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .build()
            .expect("client"),
        keys: Keys::new(settings.connections.key_prefix.clone()),
        state,
        redis,
        settings,
        shutdown: Some(tx),
        task: Some(task),
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

impl TestApp {
    /// Stops the engine gracefully and removes what the test created (database, keys, topics).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
        cleanup(&self.settings.connections, &self.redis).await;
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        idempotency_key: Option<&str>,
        body: Option<String>,
    ) -> Reply {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(k) = idempotency_key {
            rb = rb.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b);
        }
        if path.starts_with("/api/v1/admin") {
            rb = rb.header("X-Admin-Key", ADMIN_KEY);
        }
        let response = rb.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Reply {
            status,
            headers,
            text,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.request(reqwest::Method::GET, path, token, None, None)
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Value,
    ) -> Reply {
        self.request(
            reqwest::Method::POST,
            path,
            token,
            key,
            Some(body.to_string()),
        )
        .await
    }

    pub async fn create_product(&self, price: i64, stock: i64) -> i64 {
        let r = self
            .post(
                "/api/v1/admin/products",
                None,
                None,
                json!({"name": "Widget", "price": price, "stock": stock}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.json()["id"].as_i64().expect("product id")
    }

    pub async fn create_coupon(&self, kind: &str, value: i64, quantity: i64) -> i64 {
        let r = self
            .post(
                "/api/v1/admin/coupons",
                None,
                None,
                json!({"name": "Sale", "discount_type": kind, "discount_value": value, "total_quantity": quantity,
                       "valid_until": "2099-01-01T00:00:00Z"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.json()["id"].as_i64().expect("coupon id")
    }

    /// Members with tokens through the admin seeding path (one argon2 hash for all).
    pub async fn seed_members(&self, count: usize, balance: i64) -> Vec<(i64, String)> {
        let prefix = unique("m");
        let r = self
            .post(
                "/api/v1/admin/seed/members",
                None,
                None,
                json!({"count": count, "balance": balance, "email_prefix": prefix}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.json()["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| {
                (
                    m["id"].as_i64().expect("id"),
                    m["access_token"].as_str().expect("token").to_string(),
                )
            })
            .collect()
    }

    pub async fn member(&self, balance: i64) -> (i64, String) {
        self.seed_members(1, balance).await.remove(0)
    }

    pub async fn balance(&self, token: &str) -> i64 {
        self.get("/api/v1/me/points", Some(token)).await.json()["balance"]
            .as_i64()
            .expect("balance")
    }

    pub async fn stock(&self, product: i64) -> i64 {
        self.get(&format!("/api/v1/products/{product}"), None)
            .await
            .json()["stock"]
            .as_i64()
            .expect("stock")
    }

    pub async fn order(&self, token: &str, items: Value) -> Reply {
        self.post(
            "/api/v1/orders",
            Some(token),
            Some(&unique("k")),
            json!({ "items": items }),
        )
        .await
    }

    pub async fn pay(&self, token: &str, order: i64, coupon: Option<i64>) -> Reply {
        let body = match coupon {
            Some(c) => json!({ "coupon_id": c }),
            None => json!({}),
        };
        self.post(
            &format!("/api/v1/orders/{order}/pay"),
            Some(token),
            Some(&unique("k")),
            body,
        )
        .await
    }

    /// Outbox entries by event type, every partition (the relay is off in these tests, so nothing is
    /// trimmed).
    pub async fn outbox_counts(&self) -> HashMap<String, usize> {
        let mut entries: Vec<(String, HashMap<String, String>)> = Vec::new();
        for p in flashsale::partition::Partition::all() {
            let part: Vec<(String, HashMap<String, String>)> = self
                .redis
                .xrange(self.keys.outbox(p), "-", "+", None)
                .await
                .expect("xrange");
            entries.extend(part);
        }
        let mut counts = HashMap::new();
        for (_, fields) in entries {
            *counts
                .entry(fields.get("type").cloned().unwrap_or_default())
                .or_insert(0) += 1;
        }
        counts
    }

    pub async fn outbox_count(&self, event_type: &str) -> usize {
        self.outbox_counts()
            .await
            .get(event_type)
            .copied()
            .unwrap_or(0)
    }
}

/// Deletes every Redis key of the deployment (every primary of a cluster).
pub async fn cleanup_redis_keys(c: &ConnectionSettings, redis: &Pool) {
    let pattern = format!("{}:*", c.key_prefix);
    let _ = flashsale::keyspace::unlink_all(redis.next(), &pattern).await;
}

/// Drops the test's database, Redis keys and Kafka topics.
pub async fn cleanup(c: &ConnectionSettings, redis: &Pool) {
    if let Some(database) = c.database_url.rsplit('/').next() {
        if let Ok(mut conn) = server_connection().await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
                .execute(&mut conn)
                .await;
        }
    }
    cleanup_redis_keys(c, redis).await;
    let admin: Result<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>, _> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &c.kafka_brokers)
            .create();
    if let Ok(admin) = admin {
        let _ = admin
            .delete_topics(
                &[c.kafka_topic.as_str(), c.kafka_dlq_topic.as_str()],
                &rdkafka::admin::AdminOptions::new(),
            )
            .await;
    }
}

pub async fn server_connection() -> Result<sqlx::MySqlConnection, sqlx::Error> {
    use sqlx::ConnectOptions;
    mysql_server_url()
        .parse::<sqlx::mysql::MySqlConnectOptions>()?
        .connect()
        .await
}
