//! Typed configuration: every setting comes from a flag or its environment variable (the contract's
//! names), parsed and validated once at start.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HotPathKind {
    /// Redis Lua scripts (the product).
    Redis,
    /// MySQL transactions with `SELECT ... FOR UPDATE` (the baseline this project replaces; benchmarks only).
    DbLock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the shared services are.
#[derive(Debug, Clone, Args)]
pub struct ConnectionSettings {
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "mysql://root@127.0.0.1:3306/flashsale"
    )]
    pub database_url: String,
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    #[arg(long, env = "KAFKA_TOPIC", default_value = "flashsale.events")]
    pub kafka_topic: String,
    #[arg(long, env = "KAFKA_DLQ_TOPIC", default_value = "flashsale.events.dlq")]
    pub kafka_dlq_topic: String,
    /// Consumer group of the sink, read by reconcile to count events not yet applied.
    #[arg(long, env = "KAFKA_GROUP", default_value = "flashsale-sink")]
    pub kafka_group: String,
    /// Partitions of the events topic when the engine creates it.
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = 6)]
    pub kafka_partitions: i32,
    /// Replication factor of the topics when the engine creates them (production: 3; locally 1).
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub kafka_replication_factor: i32,
    /// `min.insync.replicas` of the topics when the engine creates them (production: 2; locally 1).
    #[arg(long, env = "KAFKA_MIN_INSYNC_REPLICAS", default_value_t = 1)]
    pub kafka_min_insync_replicas: i32,
    /// Prefix of every Redis key; tests give each app its own.
    #[arg(long, env = "KEY_PREFIX", default_value = "fs")]
    pub key_prefix: String,
    /// Few connections pipeline more commands per write: measured cheaper than 8 under a coupon rush.
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 2)]
    pub redis_pool_size: usize,
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: u32,
    /// Replicas that must have a mutating script's writes before the client gets its answer (`WAIT`).
    /// Unset: 1 on a Redis Cluster (an acknowledged write survives a primary failover), 0 on one node.
    #[arg(long, env = "REDIS_WAIT_REPLICAS")]
    pub redis_wait_replicas: Option<u32>,
    /// How long a request waits for those replicas; past it the answer is 503 with Retry-After (the
    /// write stands on the primary, and the client's retry with its Idempotency-Key replays it).
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 500)]
    pub redis_wait_timeout_ms: u64,
}

impl ConnectionSettings {
    /// True when REDIS_URL names a cluster (`redis-cluster://...`).
    pub fn redis_is_cluster(&self) -> bool {
        self.redis_url.starts_with("redis-cluster://")
            || self.redis_url.starts_with("rediss-cluster://")
    }

    /// The `WAIT` after each mutating script (see `redis_wait_replicas`).
    pub fn durability(&self) -> crate::scripts::Durability {
        let default = u32::from(self.redis_is_cluster());
        crate::scripts::Durability {
            replicas: self.redis_wait_replicas.unwrap_or(default),
            timeout_ms: self.redis_wait_timeout_ms.max(1),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    #[command(flatten)]
    pub connections: ConnectionSettings,
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,
    /// The `X-Admin-Key` value. Defaults to a fixed development key, printed at start.
    #[arg(long, env = "ADMIN_API_KEY", default_value = "dev-admin-key")]
    pub admin_api_key: String,
    /// Token signing secret (>= 32 bytes). Generated (and printed) when not given.
    #[arg(long, env = "JWT_SECRET")]
    pub jwt_secret: Option<String>,
    #[arg(long, env = "JWT_TTL_SECS", default_value_t = 3600)]
    pub jwt_ttl_secs: u64,
    #[arg(long, env = "RESERVATION_TTL_SECS", default_value_t = 600)]
    pub reservation_ttl_secs: u64,
    /// How often the expiry task looks for due reservations.
    #[arg(long, env = "EXPIRY_INTERVAL_MS", default_value_t = 1000)]
    pub expiry_interval_ms: u64,
    /// How long the popular-products union is cached (0 = not cached).
    #[arg(long, env = "POPULAR_CACHE_MS", default_value_t = 1000)]
    pub popular_cache_ms: u64,
    /// Refuse orders for a product whose sale has not opened (or has closed) from the engine's copy of
    /// the window Redis last answered with, without a Redis call (src/sale_windows.rs).
    #[arg(long, env = "SALE_WINDOW_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub sale_window_cache: bool,
    /// Answer COUPON_SOLD_OUT / OUT_OF_STOCK for an item Redis last refused as gone, without a Redis
    /// call, until it comes back (src/sold_out.rs).
    #[arg(long, env = "SOLD_OUT_MARKERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub sold_out_markers: bool,
    /// How long a marker answers without hearing that its item came back: the staleness bound when
    /// the invalidation message is lost.
    #[arg(long, env = "SOLD_OUT_MARKER_TTL_MS", default_value_t = 1000)]
    pub sold_out_marker_ttl_ms: u64,
    /// Run the outbox relay inside the engine.
    #[arg(long, env = "RUN_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_relay: bool,
    #[arg(long, env = "HOT_PATH", value_enum, default_value = "redis")]
    pub hot_path: HotPathKind,
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = 16 * 1024)]
    pub body_limit_bytes: usize,
    /// Requests per second allowed per client address on signup and login (brute-force guard).
    #[arg(long, env = "AUTH_RATE_PER_SEC", default_value_t = 10)]
    pub auth_rate_per_sec: u32,
    /// Sign-up and login attempts per minute allowed per account (email), whatever the client address.
    #[arg(long, env = "AUTH_ACCOUNT_RATE_PER_MIN", default_value_t = 10)]
    pub auth_account_rate_per_min: u32,
    /// Proxies (CIDR list, comma separated) whose `X-Forwarded-For` names the client; from any other peer
    /// the header is ignored and the peer address is the client.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::abuse::parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Password hashes (argon2, 19 MiB each) computed at once; more wait in a queue.
    #[arg(long, env = "HASH_CONCURRENCY", default_value_t = 4)]
    pub hash_concurrency: usize,
    /// Password hashes allowed to wait; beyond that sign-up and login answer 503 with Retry-After.
    #[arg(long, env = "HASH_QUEUE", default_value_t = 64)]
    pub hash_queue: usize,
    /// A request head not complete after this long is closed (slowloris guard).
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// A request body not complete after this long is answered 408 REQUEST_TIMEOUT.
    #[arg(long, env = "BODY_READ_TIMEOUT_MS", default_value_t = 5_000)]
    pub body_read_timeout_ms: u64,
    #[command(flatten)]
    pub relay: RelaySettings,
    #[command(flatten)]
    pub ids: IdSettings,
    /// Deployment kind: only `dev` may start with the dev admin key or a generated JWT secret.
    #[arg(long, env = "FLASHSALE_ENV", default_value = "production")]
    pub env: String,
}

impl ServeSettings {
    /// `FLASHSALE_ENV=dev` (make up, the tests): development defaults are allowed.
    pub fn is_dev(&self) -> bool {
        self.env.eq_ignore_ascii_case("dev")
    }
}

/// The development admin key; refused outside `FLASHSALE_ENV=dev`.
pub const DEV_ADMIN_KEY: &str = "dev-admin-key";

/// Id allocation (src/ids.rs): the node lease each engine holds in MySQL `engine_id_leases`.
#[derive(Debug, Clone, Args)]
pub struct IdSettings {
    /// A node lease not renewed for this long is free for another engine; the engine also mints at
    /// most this far past the high-water mark it last recorded, so a MySQL outage shorter than this
    /// leaves order, sign-up and product/coupon creation untouched.
    #[arg(long, env = "ID_LEASE_TTL_MS", default_value_t = IdSettings::DEFAULT_TTL_MS)]
    pub id_lease_ttl_ms: u64,
    /// How often the lease is renewed (at most half the TTL, so one failed renewal costs nothing).
    #[arg(long, env = "ID_LEASE_RENEW_MS", default_value_t = IdSettings::DEFAULT_RENEW_MS)]
    pub id_lease_renew_ms: u64,
    /// How far the id clock may run ahead of the wall clock when more than 64 ids of one kind are
    /// taken in a millisecond; beyond it, creation waits for the clock.
    #[arg(long, env = "ID_MAX_AHEAD_MS", default_value_t = IdSettings::DEFAULT_MAX_AHEAD_MS)]
    pub id_max_ahead_ms: u64,
}

impl IdSettings {
    pub const DEFAULT_TTL_MS: u64 = 60_000;
    pub const DEFAULT_RENEW_MS: u64 = 10_000;
    pub const DEFAULT_MAX_AHEAD_MS: u64 = 1_000;

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.id_lease_renew_ms > 0
                && self.id_lease_renew_ms.saturating_mul(2) <= self.id_lease_ttl_ms,
            "ID_LEASE_RENEW_MS must be positive and at most half of ID_LEASE_TTL_MS"
        );
        anyhow::ensure!(
            self.id_max_ahead_ms < self.id_lease_ttl_ms,
            "ID_MAX_AHEAD_MS must be below ID_LEASE_TTL_MS"
        );
        Ok(())
    }
}

impl Default for IdSettings {
    fn default() -> Self {
        Self {
            id_lease_ttl_ms: Self::DEFAULT_TTL_MS,
            id_lease_renew_ms: Self::DEFAULT_RENEW_MS,
            id_max_ahead_ms: Self::DEFAULT_MAX_AHEAD_MS,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RelaySettings {
    /// Entries read per XREADGROUP.
    #[arg(long, env = "RELAY_BATCH", default_value_t = 512)]
    pub relay_batch: usize,
    /// Pending entries idle this long belong to a crashed relay and are claimed.
    #[arg(long, env = "RELAY_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub relay_claim_idle_ms: u64,
    /// Consumer name of this relay in the `relay` group (default: host name and pid).
    #[arg(long, env = "RELAY_CONSUMER")]
    pub relay_consumer: Option<String>,
    /// First retry delay of an entry Kafka did not acknowledge; doubles per attempt up to the max.
    #[arg(long, env = "RELAY_RETRY_BASE_MS", default_value_t = 200)]
    pub relay_retry_base_ms: u64,
    /// Longest retry delay of one entry (also caps the wait for Kafka at start).
    #[arg(long, env = "RELAY_RETRY_MAX_MS", default_value_t = 10_000)]
    pub relay_retry_max_ms: u64,
    /// How long the producer gathers events into one batch per Kafka partition (`linger.ms`):
    /// longer means fewer, larger requests (less broker CPU per event) and that much more latency.
    #[arg(long, env = "RELAY_LINGER_MS", default_value_t = 50)]
    pub relay_linger_ms: u64,
}

impl RelaySettings {
    pub fn consumer_name(&self) -> String {
        self.relay_consumer.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "host".into());
            format!("{}-{}", host.trim(), std::process::id())
        })
    }
}
