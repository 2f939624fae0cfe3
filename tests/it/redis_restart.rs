//! Redis is killed (-9) mid-workload and restarted from its AOF (issue 8 item 20): nothing acknowledged
//! is lost, the pipeline drains, and reconcile and the `flashsale_outbox_pending` gauge say so instead
//! of a false backlog left by XINFO GROUPS after the reload. The test runs its own redis-server (own
//! port, own data dir), never the shared one; its own binary, because it reads process-wide gauges.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;

use common::pipeline::{drain, mixed_workload, platform, start_sink, DRAIN};
use common::redis::PrivateRedis;
use common::{isolated_connections, serve_settings, spawn_with_settings, unique};

/// The value of an unlabelled gauge in /metrics.
async fn gauge(app: &common::TestApp, name: &str) -> Option<f64> {
    app.get("/metrics", None)
        .await
        .text
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_kill9_and_aof_restart_leaves_no_false_backlog() {
    let _alone = common::exclusive().await;
    let mut redis = PrivateRedis::start();
    redis.wait_ready().await;
    let mut connections = isolated_connections();
    connections.redis_url = redis.url();
    let mut settings = serve_settings(connections);
    settings.run_relay = true;
    settings.reservation_ttl_secs = 2;
    let app = spawn_with_settings(settings).await;
    let (url, _platform) = platform(0.0, 0).await;
    let _sink = start_sink(&app.settings.connections, &url, &[]);
    mixed_workload(&app, 40).await;

    // Charges, orders and pays keep coming while Redis is killed and restarted; a request that fails
    // while it is down is fine, what was acknowledged must not be lost.
    let product = app.create_product(100, 1_000_000).await;
    let people = app.seed_members(40, 1_000_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let busy = join_all(people.iter().map(|(_, token)| {
        let stop = stop.clone();
        let app = &app;
        async move {
            while !stop.load(Ordering::Relaxed) {
                app.post(
                    "/api/v1/me/points/charge",
                    Some(token),
                    Some(&unique("c")),
                    json!({"amount": 10}),
                )
                .await;
                let order = app
                    .order(token, json!([{"product_id": product, "quantity": 1}]))
                    .await;
                if let Some(id) = order.json()["id"].as_i64() {
                    app.pay(token, id, None).await;
                }
            }
        }
    }));
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        redis.kill9();
        redis.spawn();
        redis.wait_ready().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
    };
    tokio::join!(busy, chaos);
    // The engine works after the restart.
    mixed_workload(&app, 30).await;

    let report = drain(&app, DRAIN).await;
    assert!(
        report.in_sync && report.pending_events == 0,
        "reconcile after the drain: {report:?}"
    );
    // A false backlog stays; a true one goes. Entries still come (the 2 s reservations of orders the
    // restart left unpaid expire) and each is unacknowledged until Kafka took it (the producer's
    // linger, RELAY_LINGER_MS): the backlog reaches 0, it need not be 0 at this very moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, backlog) = flashsale::pipeline::relay::outbox_backlog(app.redis.next(), &app.keys)
            .await
            .expect("backlog");
        if backlog == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "outbox backlog stays at {backlog}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The engine's gauge follows (sampled every five seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = gauge(&app, "flashsale_outbox_pending").await;
        if pending == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flashsale_outbox_pending stays at {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    app.stop().await;
}

/// Redis lost its script cache (SCRIPT FLUSH stands in for a restart or a failover to a node that never
/// loaded the scripts): each call answers NOSCRIPT once, is sent again with its source and the same
/// KEYS and ARGV, and runs once: an issue with a key is issued, the same key resent replays it (same
/// record key, same fingerprint), and a call without a key runs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_script_cache_is_reloaded_and_each_call_runs_once() {
    use fred::prelude::*;

    let redis = PrivateRedis::start();
    redis.wait_ready().await;
    let mut connections = isolated_connections();
    connections.redis_url = redis.url();
    let app = spawn_with_settings(serve_settings(connections)).await;
    let flush = || async {
        let () = app
            .redis
            .next()
            .script_flush(false)
            .await
            .expect("SCRIPT FLUSH");
    };
    let coupon = app.create_coupon("FIXED", 100, 1).await;
    let path = format!("/api/v1/coupons/{coupon}/issue");
    let (_, holder) = app.member(0).await;
    let key = unique("issue");

    flush().await;
    let issued = app.post(&path, Some(&holder), Some(&key), json!({})).await;
    assert_eq!(issued.status, 201, "{}", issued.text);
    flush().await;
    let resent = app.post(&path, Some(&holder), Some(&key), json!({})).await;
    assert_eq!(resent.status, 201, "{}", resent.text);
    assert!(resent.replayed(), "the resend replays the first answer");
    assert_eq!(resent.json(), issued.json());

    flush().await;
    let (_, late) = app.member(0).await;
    let refused = app.post(&path, Some(&late), None, json!({})).await;
    assert_eq!(refused.code(), "COUPON_SOLD_OUT", "{}", refused.text);
    let coupon_now = app.get(&format!("/api/v1/coupons/{coupon}"), None).await;
    assert_eq!(coupon_now.json()["remaining"], 0);
    app.stop().await;
}
