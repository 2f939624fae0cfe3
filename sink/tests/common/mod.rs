//! Test helpers: a database and topics of the test's own on the real MariaDB/MySQL and Kafka,
//! an in-process sink, hand-built events exactly as docs/architecture.md describes them.
#![allow(dead_code)]

use flashsale_sink::SinkConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The server part of DATABASE_URL (any database name in it is dropped).
pub fn server_url() -> String {
    let url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let (scheme, rest) = url.split_once("://").unwrap_or(("mysql", url.as_str()));
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let host = authority.split('/').next().unwrap_or(authority);
    match query {
        Some(q) => format!("{scheme}://{host}/?{q}"),
        None => format!("{scheme}://{host}"),
    }
}

/// Sink logs in the test output (shown for failing tests, or all with --nocapture).
pub fn init_test_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("flashsale_sink=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

fn with_db(server: &str, db: &str) -> String {
    match server.split_once("/?") {
        Some((h, q)) => format!("{h}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

/// A database and a pair of topics owned by one test; dropped on `cleanup` (or on drop as a fallback).
pub struct TestEnv {
    pub name: String,
    pub db_name: String,
    pub db_url: String,
    pub topic: String,
    pub dlq: String,
    pub group: String,
    pub pool: MySqlPool,
    cleaned: bool,
}

impl TestEnv {
    pub async fn new(partitions: i32) -> TestEnv {
        init_test_logging();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let short = &id[..12];
        let db_name = format!("sink_test_{id}");
        let server = server_url();
        let admin = MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&server)
            .await
            .expect("MariaDB/MySQL must run (scripts/services.sh up)");
        sqlx::query(&format!("CREATE DATABASE `{db_name}`"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let db_url = with_db(&server, &db_name);
        let topic = format!("sink-test-{short}");
        let dlq = format!("sink-test-{short}.dlq");
        create_topics(&[(&topic, partitions), (&dlq, 1)]).await;
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .connect(&db_url)
            .await
            .unwrap();
        TestEnv {
            name: short.to_string(),
            db_name,
            db_url,
            group: format!("sink-test-{short}"),
            topic,
            dlq,
            pool,
            cleaned: false,
        }
    }

    pub fn config(&self) -> SinkConfig {
        SinkConfig {
            database_url: self.db_url.clone(),
            kafka_brokers: brokers(),
            topic: self.topic.clone(),
            dlq_topic: self.dlq.clone(),
            group_id: self.group.clone(),
            data_platform_url: "http://127.0.0.1:9/events".into(),
            listen_addr: None,
            run_delivery_worker: false,
            gauges_interval: Duration::from_secs(1),
            ..SinkConfig::default()
        }
    }

    pub async fn cleanup(mut self) {
        self.pool.close().await;
        drop_database(&self.db_name).await;
        delete_topics(&[&self.topic, &self.dlq]).await;
        self.cleaned = true;
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until the schema exists and `sql` returns `want`.
    pub async fn wait_count(&self, sql: &str, want: i64, timeout: Duration) {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < timeout {
            match sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&self.pool)
                .await
            {
                Ok(n) if n == want => return,
                Ok(n) => last = Some(Ok(n)),
                Err(e) => last = Some(Err(e.to_string())),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for `{sql}` = {want}; last: {last:?}");
    }

    /// The group's committed offset per partition of the events topic (None: nothing committed).
    pub fn committed(&self) -> Vec<Option<i64>> {
        committed_offsets(&self.group, &self.topic)
    }

    /// Waits until the group has committed up to the end of every partition.
    pub async fn wait_committed_to_end(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let ends = high_watermarks(&self.topic);
            let committed = self.committed();
            let done = ends
                .iter()
                .zip(&committed)
                .all(|(h, c)| *h == 0 || *c == Some(*h));
            if done {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "offsets not committed to the end: ends {ends:?}, committed {committed:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A failed test: clean up anyway, on a thread of its own (no async drop).
        let db = self.db_name.clone();
        let topics = [self.topic.clone(), self.dlq.clone()];
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                drop_database(&db).await;
                delete_topics(&[&topics[0], &topics[1]]).await;
            });
        })
        .join();
    }
}

async fn drop_database(db: &str) {
    if let Ok(admin) = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&server_url())
        .await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{db}`"))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap()
}

pub async fn create_topics(topics: &[(&str, i32)]) {
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let res = admin()
        .create_topics(&new, &opts)
        .await
        .expect("Kafka must run (scripts/services.sh up)");
    for r in res {
        r.expect("topic created");
    }
    // Wait until the metadata shows every partition with a leader.
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for (t, p) in topics {
        let start = Instant::now();
        loop {
            let ok = probe
                .fetch_metadata(Some(t), Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    md.topics().first().map(|mt| {
                        mt.error().is_none()
                            && mt.partitions().len() == *p as usize
                            && mt.partitions().iter().all(|pp| pp.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "topic {t} not ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub async fn delete_topics(topics: &[&str]) {
    let _ = admin().delete_topics(topics, &AdminOptions::new()).await;
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap()
}

/// Produces `value` with `key` (the aggregate, as the relay does) and waits for the ack.
pub async fn produce(p: &FutureProducer, topic: &str, key: &str, value: &[u8]) -> (i32, i64) {
    p.send(
        FutureRecord::to(topic).key(key).payload(value),
        Timeout::After(Duration::from_secs(30)),
    )
    .await
    .map(|d| (d.partition, d.offset))
    .map_err(|(e, _)| e)
    .expect("produced")
}

/// Produces an event (key = its aggregate).
pub async fn produce_event(p: &FutureProducer, topic: &str, ev: &Value) -> (i32, i64) {
    let key = ev["aggregate"].as_str().unwrap().to_string();
    produce(p, topic, &key, ev.to_string().as_bytes()).await
}

pub fn committed_offsets(group: &str, topic: &str) -> Vec<Option<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let n = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..n)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

pub fn high_watermarks(topic: &str) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let n = md.topics()[0].partitions().len() as i32;
    (0..n)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap()
                .1
        })
        .collect()
}

/// Resets the (inactive) group's offsets of `topic` to the beginning, as
/// `kafka-consumer-groups --reset-offsets --to-earliest` does.
pub fn reset_group_offsets(group: &str, topic: &str) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let n = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        let (low, _) = c
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .unwrap();
        tpl.add_partition_offset(topic, p, Offset::Offset(low))
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

/// A DLQ message as read back.
#[derive(Debug)]
pub struct DlqMessage {
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: HashMap<String, String>,
}

/// Reads `n` messages from the DLQ topic (from the beginning), or panics after `timeout`.
pub async fn read_dlq(topic: &str, n: usize, timeout: Duration) -> Vec<DlqMessage> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("dlq-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, c.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} DLQ messages within {timeout:?}", out.len()))
            .unwrap();
        let mut headers = HashMap::new();
        if let Some(h) = m.headers() {
            for hdr in h.iter() {
                headers.insert(
                    hdr.key.to_string(),
                    hdr.value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default(),
                );
            }
        }
        out.push(DlqMessage {
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
            headers,
        });
    }
    out
}

/// A sink running in-process; `stop` shuts it down gracefully and returns its result.
pub struct RunningSink {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningSink {
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("sink stops within 60 s")
            .expect("sink task")
    }

    /// Waits for the sink to end on its own (test hook).
    pub async fn join(mut self, timeout: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(timeout, &mut self.task)
            .await
            .expect("sink ended on its own")
            .expect("sink task")
    }
}

pub fn start_sink(cfg: SinkConfig) -> RunningSink {
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let task = tokio::spawn(flashsale_sink::run_sink(cfg, shutdown));
    RunningSink {
        stop: Some(tx),
        task,
    }
}

pub async fn eventually<F, Fut>(timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < timeout,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------------------------ events

pub const T0: &str = "2026-11-24T05:00:00.000Z";

pub fn envelope(event_type: &str, aggregate: &str, at: &str, payload: Value) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "type": event_type,
        "aggregate": aggregate,
        "at": at,
        "payload": payload,
    })
}

pub fn member_registered(member_id: i64) -> Value {
    envelope(
        "member.registered",
        &format!("member:{member_id}"),
        T0,
        json!({
            "member_id": member_id,
            "email": format!("m{member_id}@example.com"),
            "name": format!("Member {member_id}"),
            "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            "created_at": T0,
        }),
    )
}

pub fn points_charged(member_id: i64, amount: i64, balance_after: i64) -> Value {
    envelope(
        "points.charged",
        &format!("member:{member_id}"),
        "2026-11-24T05:00:01.000Z",
        json!({
            "member_id": member_id, "amount": amount, "balance_after": balance_after,
        }),
    )
}

pub fn product_created(product_id: i64, price: i64, stock: i64) -> Value {
    envelope(
        "product.created",
        &format!("product:{product_id}"),
        T0,
        json!({
            "product_id": product_id, "name": format!("Product {product_id}"), "price": price, "stock": stock,
            "created_at": T0,
        }),
    )
}

/// product.created with sale rules (issue 11): times as the events write them, None = null.
pub fn product_created_with_rules(
    product_id: i64,
    stock: i64,
    sale_starts_at: Option<&str>,
    sale_ends_at: Option<&str>,
    per_member_limit: Option<i64>,
) -> Value {
    let mut ev = product_created(product_id, 1000, stock);
    ev["payload"]["sale_starts_at"] = json!(sale_starts_at);
    ev["payload"]["sale_ends_at"] = json!(sale_ends_at);
    ev["payload"]["per_member_limit"] = json!(per_member_limit);
    ev
}

/// product.rules_changed: the whole rule set after the change.
pub fn product_rules_changed(
    product_id: i64,
    sale_starts_at: Option<&str>,
    sale_ends_at: Option<&str>,
    per_member_limit: Option<i64>,
    changed_at: &str,
) -> Value {
    envelope(
        "product.rules_changed",
        &format!("product:{product_id}"),
        changed_at,
        json!({
            "product_id": product_id, "sale_starts_at": sale_starts_at, "sale_ends_at": sale_ends_at,
            "per_member_limit": per_member_limit, "changed_at": changed_at,
        }),
    )
}

pub fn stock_added(product_id: i64, add: i64, stock_after: i64) -> Value {
    envelope(
        "product.stock_added",
        &format!("product:{product_id}"),
        "2026-11-24T05:00:02.000Z",
        json!({
            "product_id": product_id, "add": add, "stock_after": stock_after,
        }),
    )
}

pub fn coupon_created(coupon_id: i64, total: i64) -> Value {
    envelope(
        "coupon.created",
        &format!("coupon:{coupon_id}"),
        T0,
        json!({
            "coupon_id": coupon_id, "name": "Ten off", "discount_type": "FIXED", "discount_value": 1000,
            "total_quantity": total, "valid_from": "2026-11-24T00:00:00.000Z",
            "valid_until": "2026-11-25T00:00:00.000Z", "created_at": T0,
        }),
    )
}

pub fn coupon_issued(coupon_id: i64, member_id: i64, remaining_after: i64) -> Value {
    envelope(
        "coupon.issued",
        &format!("coupon:{coupon_id}"),
        "2026-11-24T05:00:03.000Z",
        json!({
            "coupon_id": coupon_id, "member_id": member_id, "issued_at": "2026-11-24T05:00:03.000Z",
            "remaining_after": remaining_after,
        }),
    )
}

/// An order of `items` (product_id, quantity, unit_price) as the snapshot of the given status.
pub struct Order {
    pub id: i64,
    pub member_id: i64,
    pub items: Vec<(i64, i64, i64)>,
    pub coupon: Option<(i64, i64)>, // (coupon id, discount)
}

impl Order {
    pub fn total(&self) -> i64 {
        self.items.iter().map(|(_, q, p)| q * p).sum()
    }
    pub fn discount(&self) -> i64 {
        self.coupon.map_or(0, |(_, d)| d)
    }
    pub fn paid_amount(&self) -> i64 {
        self.total() - self.discount()
    }

    fn snapshot(&self, status: &str) -> Value {
        let paid = matches!(status, "PAID") || (status == "CANCELLED_PAID");
        let status = if status == "CANCELLED_PAID" {
            "CANCELLED"
        } else {
            status
        };
        let closed = matches!(status, "CANCELLED" | "EXPIRED");
        json!({
            "id": self.id,
            "member_id": self.member_id,
            "status": status,
            "items": self.items.iter().map(|(p, q, u)| json!({"product_id": p, "quantity": q, "unit_price": u})).collect::<Vec<_>>(),
            "total_amount": self.total(),
            "discount_amount": if paid { self.discount() } else { 0 },
            "paid_amount": if paid { self.paid_amount() } else { 0 },
            "coupon_id": if paid { self.coupon.map(|(c, _)| json!(c)).unwrap_or(Value::Null) } else { Value::Null },
            "expires_at": "2026-11-24T05:20:00.000Z",
            "created_at": "2026-11-24T05:10:00.000Z",
            "paid_at": if paid { json!("2026-11-24T05:11:00.000Z") } else { Value::Null },
            "closed_at": if closed { json!("2026-11-24T05:12:00.000Z") } else { Value::Null },
        })
    }

    pub fn reserved(&self) -> Value {
        envelope(
            "order.reserved",
            &format!("order:{}", self.id),
            "2026-11-24T05:10:00.000Z",
            json!({"order": self.snapshot("RESERVED")}),
        )
    }

    pub fn paid(&self, balance_after: i64) -> Value {
        envelope(
            "order.paid",
            &format!("order:{}", self.id),
            "2026-11-24T05:11:00.000Z",
            json!({"order": self.snapshot("PAID"), "balance_after": balance_after}),
        )
    }

    /// Cancel of a reserved order.
    pub fn cancelled_reserved(&self) -> Value {
        envelope(
            "order.cancelled",
            &format!("order:{}", self.id),
            "2026-11-24T05:12:00.000Z",
            json!({"order": self.snapshot("CANCELLED"), "previous_status": "RESERVED",
                   "refunded_amount": 0, "balance_after": null}),
        )
    }

    /// Cancel of a paid order (refund).
    pub fn cancelled_paid(&self, balance_after: i64) -> Value {
        envelope(
            "order.cancelled",
            &format!("order:{}", self.id),
            "2026-11-24T05:12:00.000Z",
            json!({"order": self.snapshot("CANCELLED_PAID"), "previous_status": "PAID",
                   "refunded_amount": self.paid_amount(), "balance_after": balance_after}),
        )
    }

    pub fn expired(&self) -> Value {
        envelope(
            "order.expired",
            &format!("order:{}", self.id),
            "2026-11-24T05:20:00.000Z",
            json!({"order": self.snapshot("EXPIRED")}),
        )
    }
}

// ------------------------------------------------------------------------------------ TCP proxy

/// A TCP proxy in front of the real database server, to cut the sink off from it (an outage) and
/// bring it back. While down it closes every open connection and refuses new ones.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    down: bool,
    conns: Vec<JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState::default()));
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut g = st.lock().unwrap();
                if g.down {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                g.conns.push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Proxy {
            addr,
            state,
            accept,
        }
    }

    pub fn down(&self) {
        let mut g = self.state.lock().unwrap();
        g.down = true;
        for c in g.conns.drain(..) {
            c.abort();
        }
    }

    pub fn up(&self) {
        self.state.lock().unwrap().down = false;
    }

    /// `url` with its host:port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}{}{tail}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}

/// host:port of the database server.
pub fn server_host_port() -> String {
    let url = server_url();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:3306")
    }
}
