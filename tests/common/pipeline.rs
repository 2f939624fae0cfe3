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

use super::TestApp;

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

/// A sink process for this deployment. `extra` adds environment (e.g. SINK_CRASH_POINT).
pub fn start_sink(c: &ConnectionSettings, platform_url: &str, extra: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(sink_binary());
    cmd.arg("run")
        .env("DATA_PLATFORM_URL", platform_url)
        .env("SINK_LISTEN_ADDR", "127.0.0.1:0");
    common_env(&mut cmd, c);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("sink starts")
}

/// A standalone relay process (`flashsale relay`).
pub fn start_relay(c: &ConnectionSettings, consumer: &str) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    cmd.arg("relay")
        .env("RELAY_CONSUMER", consumer)
        .env("RELAY_CLAIM_IDLE_MS", "1000");
    common_env(&mut cmd, c);
    cmd.spawn().expect("relay starts")
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
        let report = flashsale::reconcile::reconcile(
            &app.redis,
            &app.state.db,
            &app.keys,
            &app.settings.connections,
        )
        .await
        .expect("reconcile runs");
        if report.in_sync || started.elapsed() > timeout {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Events ever appended to the outbox (XINFO STREAM entries-added), trimmed or not.
pub async fn events_produced(app: &TestApp) -> i64 {
    let info: Value = app
        .redis
        .xinfo_stream(app.keys.outbox(), false, None)
        .await
        .expect("xinfo stream");
    let flat = info.into_array();
    flat.chunks(2)
        .find(|kv| kv.first().and_then(|k| k.as_string()).as_deref() == Some("entries-added"))
        .and_then(|kv| kv.get(1).and_then(|v| v.as_i64()))
        .expect("entries-added")
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
