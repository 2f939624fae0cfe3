//! Issue 9 item 5: a mutating request is answered only after a replica has its writes (`WAIT`). With
//! the replica down the client gets 503 with Retry-After, never a success that a failover could take
//! back; once a replica is back, the same request (same Idempotency-Key) answers 200 and charged once.
//! A private primary and replica (own ports), so the shared Redis is never touched.

use crate::common;

use serde_json::json;

use common::redis::PrivateRedis;
use common::{isolated_connections, serve_settings, spawn_with_settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_no_replica_confirms_is_503_and_its_retry_replays_once_one_does() {
    let primary = PrivateRedis::start();
    primary.wait_ready().await;
    let port = primary.port.to_string();
    let replica_args = ["--replicaof", "127.0.0.1", port.as_str()];
    let mut replica = PrivateRedis::start_with(&replica_args);
    replica.wait_synced().await;

    let mut connections = isolated_connections();
    connections.redis_url = primary.url();
    connections.redis_wait_replicas = Some(1);
    connections.redis_wait_timeout_ms = 300;
    let mut settings = serve_settings(connections);
    settings.run_relay = false;
    let app = spawn_with_settings(settings).await;

    // With the replica up, writes are confirmed and answered as usual.
    let people = app.seed_members(1, 1_000).await;
    let token = &people[0].1;
    let charge = || {
        app.post(
            "/api/v1/me/points/charge",
            Some(token),
            Some("charge-during-outage"),
            json!({"amount": 25}),
        )
    };

    // The replica goes away: the write lands on the primary, but the answer is a retryable 503.
    replica.kill9();
    let refused = charge().await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.code(), "SERVICE_UNAVAILABLE");
    assert!(
        refused.headers.contains_key("retry-after"),
        "{:?}",
        refused.headers
    );
    assert!(refused.headers["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("application/problem+json"));

    // Its retry while still no replica has it: the stored answer is not replayed as a success yet.
    let replayed_early = charge().await;
    assert_eq!(replayed_early.status, 503, "{}", replayed_early.text);

    // A replica again (it resyncs from the primary): the client's retry replays the one charge.
    replica.spawn();
    replica.wait_synced().await;
    let mut retried = charge().await;
    for _ in 0..100 {
        if retried.status != 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        retried = charge().await;
    }
    assert_eq!(retried.status, 200, "{}", retried.text);
    assert_eq!(app.balance(token).await, 1_025, "charged exactly once");
    app.stop().await;
}
