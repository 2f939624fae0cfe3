//! Pipeline harness: the relay and the sink as real child processes (so a test can kill -9 them), the
//! mock data platform in-process, and the drain: wait until reconcile says nothing is in flight.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashsale::config::ConnectionSettings;
use flashsale::domain::ReconcileReport;
use fred::prelude::*;
use fred::types::Value;

use flashsale_sink::mock_platform::{spawn_mock_platform_with, MockPlatformConfig};
use futures::future::join_all;
use serde_json::json;

use super::{unique, TestApp};

/// The sink binary next to this test's target directory (built by `cargo test --workspace`; built here
/// when missing).
pub fn sink_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf();
    let bin = dir.join("flashsale-sink");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "flashsale-sink"])
            .status()
            .expect("cargo build -p flashsale-sink");
        assert!(status.success(), "building flashsale-sink failed");
    }
    bin
}

fn common_env(cmd: &mut Command, c: &ConnectionSettings) {
    cmd.env("REDIS_URL", &c.redis_url)
        .env("DATABASE_URL", &c.database_url)
        .env("KAFKA_BROKERS", &c.kafka_brokers)
        .env("KAFKA_TOPIC", &c.kafka_topic)
        .env("KAFKA_DLQ_TOPIC", &c.kafka_dlq_topic)
        .env("KAFKA_GROUP", &c.kafka_group)
        .env("KEY_PREFIX", &c.key_prefix)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
}

/// A child process that is killed (-9) and reaped when dropped, so a failing test (a panic unwinds
/// through it) leaves no sink or relay running. Derefs to the `Child`.
pub struct ChildGuard(pub Child);

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        kill9(&mut self.0);
    }
}

/// A sink process for this deployment. `extra` adds environment (e.g. SINK_CRASH_POINT).
pub fn start_sink(
    c: &ConnectionSettings,
    platform_url: &str,
    extra: &[(&str, &str)],
) -> ChildGuard {
    let mut cmd = Command::new(sink_binary());
    cmd.arg("run")
        .env("DATA_PLATFORM_URL", platform_url)
        .env("SINK_LISTEN_ADDR", "127.0.0.1:0");
    common_env(&mut cmd, c);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    ChildGuard(cmd.spawn().expect("sink starts"))
}

/// A standalone relay process (`flashsale relay`).
pub fn start_relay(c: &ConnectionSettings, consumer: &str) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    cmd.arg("relay")
        .env("RELAY_CONSUMER", consumer)
        .env("RELAY_CLAIM_IDLE_MS", "1000")
        .env("RELAY_METRICS_ADDR", "127.0.0.1:0");
    common_env(&mut cmd, c);
    ChildGuard(cmd.spawn().expect("relay starts"))
}

/// A second engine as a child process (`flashsale serve`, relay on) on a port of its own, so a test
/// can kill -9 it; it accepts the tokens of the test's in-process engine (same JWT secret and admin
/// key). Returns when its /readyz answers 200.
pub async fn start_engine(c: &ConnectionSettings) -> (ChildGuard, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    cmd.arg("serve")
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_API_KEY", super::ADMIN_KEY)
        .env("JWT_SECRET", super::JWT_SECRET)
        .env("FLASHSALE_ENV", "dev")
        .env("RUN_RELAY", "true")
        .env("RELAY_CLAIM_IDLE_MS", "1000")
        .env("EXPIRY_INTERVAL_MS", "100")
        .env("REQUEST_TIMEOUT_MS", "30000")
        .env("KAFKA_PARTITIONS", c.kafka_partitions.to_string());
    common_env(&mut cmd, c);
    let child = ChildGuard(cmd.spawn().expect("engine starts"));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return (child, base);
        }
        assert!(
            Instant::now() < deadline,
            "the second engine never got ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// kill -9.
pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until nothing is in flight and Redis equals MySQL; returns the last report.
pub async fn drain(app: &TestApp, timeout: Duration) -> ReconcileReport {
    let started = Instant::now();
    loop {
        let report = flashsale::pipeline::reconcile::reconcile(
            &app.redis,
            &app.state.db,
            &app.keys,
            &app.settings.connections,
        )
        .await;
        // A broker that just started answers NotCoordinator until its offsets topic exists: retry.
        let report = match report {
            Ok(report) => report,
            Err(e) if started.elapsed() < timeout => {
                tracing::debug!(error = %e, "reconcile failed; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            Err(e) => panic!("reconcile runs: {e:#}"),
        };
        // In sync, but a reservation about to expire will append an event after we return: the
        // pipeline is drained only when nothing is due within the next few seconds.
        let settling = report.in_sync && expiring_soon(app).await;
        if (report.in_sync && !settling) || started.elapsed() > timeout {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Redis's clock (ms): the clock the scripts decide by.
pub async fn redis_now_ms(app: &TestApp) -> i64 {
    let time: Vec<i64> = app
        .redis
        .next()
        .custom(
            fred::types::CustomCommand::new_static("TIME", fred::types::ClusterHash::Random, false),
            Vec::<String>::new(),
        )
        .await
        .expect("TIME");
    time.first().copied().unwrap_or_default() * 1000
        + time.get(1).copied().unwrap_or_default() / 1000
}

/// Whether any partition holds a reservation due within the next five seconds (by Redis time).
async fn expiring_soon(app: &TestApp) -> bool {
    let now_ms = redis_now_ms(app).await;
    for p in flashsale::partition::Partition::all() {
        let due: Vec<String> = app
            .redis
            .zrangebyscore(
                app.keys.reservations(p),
                "-inf",
                (now_ms + 5_000) as f64,
                false,
                Some((0, 1)),
            )
            .await
            .expect("zrangebyscore");
        if !due.is_empty() {
            return true;
        }
    }
    false
}

/// Events ever appended to the outbox (XINFO STREAM entries-added), trimmed or not.
/// Summed over every partition's stream (a stream not created yet has added none).
pub async fn events_produced(app: &TestApp) -> i64 {
    let mut added = 0;
    for p in flashsale::partition::Partition::all() {
        let info: Result<Value, _> = app
            .redis
            .xinfo_stream(app.keys.outbox(p), false, None)
            .await;
        let Ok(info) = info else { continue };
        let flat = info.into_array();
        added += flat
            .chunks(2)
            .find(|kv| kv.first().and_then(|k| k.as_string()).as_deref() == Some("entries-added"))
            .and_then(|kv| kv.get(1).and_then(|v| v.as_i64()))
            .expect("entries-added");
    }
    added
}

/// (events applied, events produced - `parked`) once they agree, or as they stand after DRAIN. An event
/// appended after a drain reported in sync (a background step such as an expiry landing just then) is
/// waited for, not counted as lost; an event really lost never arrives, and the counts differ.
pub async fn settled_counts(app: &TestApp, parked: i64) -> (i64, i64) {
    let started = Instant::now();
    loop {
        let produced = events_produced(app).await - parked;
        let processed = processed_events(app).await;
        if processed == produced || started.elapsed() > DRAIN {
            return (processed, produced);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn processed_events(app: &TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM processed_events")
        .fetch_one(&app.state.db)
        .await
        .expect("count");
    n
}

pub async fn count(app: &TestApp, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .fetch_one(&app.state.db)
        .await
        .expect(sql);
    n
}

pub const DRAIN: Duration = Duration::from_secs(120);

/// What a workload did, to check against MySQL and the data platform.
#[derive(Default, Debug)]
pub struct Done {
    pub paid: usize,
}

/// A mixed concurrent workload: charges, coupon issues, orders, pays (some with the coupon), cancels of
/// paid and reserved orders, and abandoned reservations left to expire.
pub async fn mixed_workload(app: &TestApp, members: usize) -> Done {
    let products = [
        app.create_product(700, 500).await,
        app.create_product(1300, 500).await,
    ];
    let coupon = app.create_coupon("PERCENT", 10, (members / 2) as i64).await;
    // More coupons released after the create: the sink adds them to the row (coupon.quantity_added).
    let added = app
        .post(
            &format!("/api/v1/admin/coupons/{coupon}/quantity"),
            None,
            None,
            json!({"add": 5}),
        )
        .await;
    assert_eq!(added.status, 200, "{}", added.text);
    let people = app.seed_members(members, 20_000).await;
    let results = join_all(people.iter().enumerate().map(|(i, (_, token))| async move {
        let mut paid = 0;
        let charge = app
            .post(
                "/api/v1/me/points/charge",
                Some(token),
                Some(&unique("c")),
                json!({"amount": 1000 + i}),
            )
            .await;
        assert_eq!(charge.status, 200, "{}", charge.text);
        let issued = app
            .post(
                &format!("/api/v1/coupons/{coupon}/issue"),
                Some(token),
                None,
                json!({}),
            )
            .await
            .status
            == 201;
        let product = products[i % 2];
        let order = app
            .order(
                token,
                json!([{"product_id": product, "quantity": 1 + i % 3}]),
            )
            .await;
        assert_eq!(order.status, 201, "{}", order.text);
        let id = order.json()["id"].as_i64().unwrap_or_default();
        match i % 5 {
            0..=2 => {
                let pay = app
                    .pay(
                        token,
                        id,
                        if issued && i % 2 == 0 {
                            Some(coupon)
                        } else {
                            None
                        },
                    )
                    .await;
                assert_eq!(pay.status, 200, "{}", pay.text);
                paid += 1;
                if i % 5 == 2 {
                    let cancel = app
                        .post(
                            &format!("/api/v1/orders/{id}/cancel"),
                            Some(token),
                            Some(&unique("x")),
                            json!({}),
                        )
                        .await;
                    assert_eq!(cancel.status, 200, "{}", cancel.text);
                }
            }
            3 => {
                let cancel = app
                    .post(
                        &format!("/api/v1/orders/{id}/cancel"),
                        Some(token),
                        Some(&unique("x")),
                        json!({}),
                    )
                    .await;
                assert_eq!(cancel.status, 200, "{}", cancel.text);
            }
            _ => {} // abandoned: expires
        }
        paid
    }))
    .await;
    Done {
        paid: results.iter().sum(),
    }
}

pub async fn assert_exactly_once(
    app: &TestApp,
    done: &Done,
    platform: &flashsale_sink::mock_platform::MockPlatformHandle,
) {
    let report = drain(app, DRAIN).await;
    assert!(
        report.in_sync,
        "Redis and MySQL differ after the drain: {report:?}"
    );
    let (processed, produced) = settled_counts(app, 0).await;
    assert_eq!(processed, produced, "every event applied once, none lost");
    assert_eq!(
        count(app, "SELECT COUNT(*) FROM payments").await,
        done.paid as i64
    );
    assert_eq!(
        count(app, "SELECT COUNT(*) FROM points_ledger WHERE type = 'USE'").await,
        done.paid as i64
    );
    // Every paid order reaches the data platform, once per event id.
    let deadline = std::time::Instant::now() + DRAIN;
    loop {
        let delivered = count(
            app,
            "SELECT COUNT(*) FROM data_platform_deliveries WHERE status = 'DELIVERED'",
        )
        .await;
        if delivered == done.paid as i64 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stats = platform.stats();
    assert_eq!(
        stats.distinct_event_ids, done.paid as u64,
        "one distinct event per paid order: {stats:?}"
    );
    let distinct_orders: std::collections::HashSet<i64> = stats.order_ids.iter().copied().collect();
    assert_eq!(distinct_orders.len(), done.paid);
}

pub async fn platform(
    fail_rate: f64,
    delay_ms: u64,
) -> (String, flashsale_sink::mock_platform::MockPlatformHandle) {
    let cfg = MockPlatformConfig {
        fail_rate,
        delay: Duration::from_millis(delay_ms),
    };
    let (addr, handle) = spawn_mock_platform_with("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .expect("mock platform");
    (format!("http://{addr}/events"), handle)
}
