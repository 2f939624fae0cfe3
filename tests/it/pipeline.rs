//! The durable pipeline end to end against real Redis, Kafka and MariaDB: every effect reaches MySQL
//! exactly once in effect and every paid order reaches the data platform, through crashes and restarts.

use crate::common;

use common::pipeline::{
    assert_exactly_once, count, drain, kill9, mixed_workload, platform, start_relay, start_sink,
    DRAIN,
};
use common::spawn_app_with;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_workload_lands_in_mysql_exactly_once() {
    let app = spawn_app_with(|s| {
        s.run_relay = true;
        s.reservation_ttl_secs = 2;
    })
    .await;
    let (url, handle) = platform(0.0, 0).await;
    let mut sink = start_sink(&app.settings.connections, &url, &[]);
    let done = mixed_workload(&app, 150).await;
    assert!(done.paid > 0);
    assert_exactly_once(&app, &done, &handle).await;
    // The history endpoint reads the MySQL ledger, newest first.
    let (_, token) = app.member(0).await;
    app.post(
        "/api/v1/me/points/charge",
        Some(&token),
        Some("h1"),
        json!({"amount": 10}),
    )
    .await;
    app.post(
        "/api/v1/me/points/charge",
        Some(&token),
        Some("h2"),
        json!({"amount": 20}),
    )
    .await;
    drain(&app, DRAIN).await;
    let history = app
        .get("/api/v1/me/points/history", Some(&token))
        .await
        .json();
    assert_eq!(history[0]["amount"], 20);
    assert_eq!(history[0]["balance_after"], 30);
    assert_eq!(history[1]["type"], "CHARGE");
    kill9(&mut sink);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_killed_mid_stream_loses_and_doubles_nothing() {
    let app = spawn_app_with(|s| {
        s.run_relay = false;
        s.reservation_ttl_secs = 2;
    })
    .await;
    let (url, handle) = platform(0.0, 0).await;
    let mut sink = start_sink(&app.settings.connections, &url, &[]);
    let mut relay = start_relay(&app.settings.connections, "relay-a");
    let work = mixed_workload(&app, 120);
    let killer = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        kill9(&mut relay);
    };
    let (done, ()) = tokio::join!(work, killer);
    // Restarted under the same name it re-sends its own pending entries; a second relay with another
    // name claims whatever stays pending past the idle time. Both run at once: still safe.
    let mut again = start_relay(&app.settings.connections, "relay-a");
    let mut other = start_relay(&app.settings.connections, "relay-b");
    assert_exactly_once(&app, &done, &handle).await;
    kill9(&mut again);
    kill9(&mut other);
    kill9(&mut sink);
    app.stop().await;
}

async fn sink_crash(point: &str) {
    let app = spawn_app_with(|s| {
        s.run_relay = true;
        s.reservation_ttl_secs = 2;
    })
    .await;
    let (url, handle) = platform(0.0, 0).await;
    let c = app.settings.connections.clone();
    // Small batches so the crash lands in the middle of the stream.
    let mut crashing = start_sink(
        &c,
        &url,
        &[
            ("SINK_CRASH_POINT", point),
            ("SINK_CRASH_AFTER_BATCHES", "3"),
            ("SINK_BATCH_MAX", "20"),
        ],
    );
    let done = mixed_workload(&app, 120).await;
    let status = tokio::task::spawn_blocking(move || crashing.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "the sink aborted at {point}");
    let mut sink = start_sink(&c, &url, &[]);
    assert_exactly_once(&app, &done, &handle).await;
    kill9(&mut sink);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sink_killed_between_mysql_commit_and_offset_commit() {
    sink_crash("after-db-commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sink_killed_in_the_middle_of_a_batch() {
    sink_crash("mid-batch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sink_killed_at_random_under_load() {
    let app = spawn_app_with(|s| s.run_relay = true).await;
    let (url, handle) = platform(0.0, 0).await;
    let c = app.settings.connections.clone();
    let mut sink = start_sink(&c, &url, &[("SINK_BATCH_MAX", "10")]);
    let work = mixed_workload(&app, 100);
    let killer = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            kill9(&mut sink);
            sink = start_sink(&c, &url, &[("SINK_BATCH_MAX", "10")]);
        }
    };
    let (done, ()) = tokio::join!(work, killer);
    assert_exactly_once(&app, &done, &handle).await;
    kill9(&mut sink);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_slow_data_platform_still_gets_every_paid_order_once() {
    let app = spawn_app_with(|s| {
        s.run_relay = true;
        s.reservation_ttl_secs = 2;
    })
    .await;
    let (url, handle) = platform(0.3, 150).await;
    let mut sink = start_sink(&app.settings.connections, &url, &[]);
    let done = mixed_workload(&app, 80).await;
    // The hot path never waits for the platform: when every pay has answered, the slow platform has
    // not yet seen them all.
    assert!(
        handle.stats().distinct_event_ids < done.paid as u64,
        "{:?}",
        handle.stats()
    );
    assert_exactly_once(&app, &done, &handle).await;
    assert!(
        handle.stats().failed > 0,
        "the platform did fail some requests"
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM data_platform_deliveries WHERE status <> 'DELIVERED'"
        )
        .await,
        0
    );
    kill9(&mut sink);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_rebuilt_from_mysql_reconciles_the_same() {
    let app = spawn_app_with(|s| {
        s.run_relay = true;
        s.reservation_ttl_secs = 600;
    })
    .await;
    let (url, handle) = platform(0.0, 0).await;
    let mut sink = start_sink(&app.settings.connections, &url, &[]);
    let done = mixed_workload(&app, 60).await;
    assert_exactly_once(&app, &done, &handle).await;
    let before = drain(&app, DRAIN).await;
    let popular_before = app
        .get("/api/v1/products/popular?days=1", None)
        .await
        .json();

    // Lose this deployment's Redis data (FLUSHALL would also wipe other tests' and the dev stack's).
    common::cleanup_redis_keys(&app.settings.connections, &app.redis).await;
    let lost = flashsale::pipeline::reconcile::reconcile(
        &app.redis,
        &app.state.db,
        &app.keys,
        &app.settings.connections,
    )
    .await
    .unwrap();
    assert!(!lost.in_sync);
    flashsale::pipeline::rebuild::rebuild(
        &app.redis,
        &app.state.db,
        &app.keys,
        &app.settings.connections,
        false,
    )
    .await
    .expect("rebuild");
    let after = drain(&app, DRAIN).await;
    assert!(after.in_sync, "{after:?}");
    assert_eq!(after.drift.len(), before.drift.len());
    assert_eq!(
        app.get("/api/v1/products/popular?days=1", None)
            .await
            .json(),
        popular_before
    );
    // The rebuilt Redis serves the API: a member logs in with the same token and keeps trading.
    let (_, token) = app.member(5000).await;
    let product = app.create_product(10, 10).await;
    let order = app
        .order(&token, json!([{"product_id": product, "quantity": 1}]))
        .await;
    assert_eq!(order.status, 201, "{}", order.text);
    kill9(&mut sink);
    app.stop().await;
}
