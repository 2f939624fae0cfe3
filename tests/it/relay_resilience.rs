//! The relay and readiness against real servers: one outbox entry Kafka refuses for good is parked in
//! the dead-letter stream while everything else flows (issue 8 item 7); the engine starts, serves and
//! reports ready without Kafka and its events flow once a broker is reachable, and it stays ready for
//! Redis-only sales while MySQL is unreachable (item 8).

use crate::common;

use std::time::{Duration, Instant};

use common::kafka::{free_port, PrivateKafka};
use common::pipeline::{count, drain, mixed_workload, platform, start_sink, Done, DRAIN};
use common::proxy::TcpProxy;
use common::{spawn_app_with, unique, TestApp};
use fred::prelude::*;
use serde_json::json;

async fn ready(app: &TestApp) -> (u16, serde_json::Value) {
    let reply = app.get("/readyz", None).await;
    (reply.status, reply.json())
}

/// Polls /readyz until `check` holds on its body (the dependency probe samples every couple of seconds).
async fn readyz_until(app: &TestApp, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ready(app).await;
        assert_eq!(status, 200, "/readyz follows Redis only: {body}");
        if check(&body) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dependency_gauge(app: &TestApp, dependency: &str) -> Option<f64> {
    let text = app.get("/metrics", None).await.text;
    let prefix = format!("flashsale_dependency_up{{dependency=\"{dependency}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_kafka_refuses_for_good_is_parked_and_everything_else_flows() {
    let app = spawn_app_with(|s| {
        s.run_relay = true;
        s.reservation_ttl_secs = 2;
    })
    .await;
    let (url, handle) = platform(0.0, 0).await;
    let _sink = start_sink(&app.settings.connections, &url, &[]);
    let first = mixed_workload(&app, 40).await;

    // An entry larger than the producer's message.max.bytes (1 MB), written straight into the outbox
    // in the middle of the workload.
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(1_200_000));
    let during = mixed_workload(&app, 60);
    let inject = async {
        let id: String = app
            .redis
            .xadd(
                app.keys.outbox(),
                false,
                None::<()>,
                "*",
                vec![
                    ("event_id", uuid::Uuid::now_v7().to_string()),
                    ("type", "test.oversized".to_string()),
                    ("aggregate", "test:oversized".to_string()),
                    ("at", "2026-01-01T00:00:00.000Z".to_string()),
                    ("payload", huge),
                ],
            )
            .await
            .expect("xadd");
        id
    };
    let (second, huge_id) = tokio::join!(during, inject);
    let third = mixed_workload(&app, 40).await;
    let done = Done {
        paid: first.paid + second.paid + third.paid,
    };

    let report = drain(&app, DRAIN).await;
    assert!(
        report.in_sync,
        "the pipeline drains around the refused entry: {report:?}"
    );
    let (processed, produced) = common::pipeline::settled_counts(&app, 1).await;
    assert_eq!(processed, produced, "every other event applied once");
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM payments").await,
        done.paid as i64
    );
    // The refused entry sits in the dead-letter stream with its error, acknowledged in the outbox.
    let dead: Vec<(String, std::collections::HashMap<String, String>)> = app
        .redis
        .xrange_values(app.keys.outbox_dead(), "-", "+", None)
        .await
        .expect("xrange dead");
    assert_eq!(dead.len(), 1, "one parked entry");
    let fields = &dead[0].1;
    assert_eq!(fields.get("dead_entry_id"), Some(&huge_id));
    assert_eq!(
        fields.get("type").map(String::as_str),
        Some("test.oversized")
    );
    assert!(
        fields
            .get("dead_error")
            .is_some_and(|e| e.to_lowercase().contains("too large")),
        "{:?}",
        fields.get("dead_error")
    );
    // (Gauges are process-wide and other tests' engines share this process: check the counter exists.)
    let metrics = app.get("/metrics", None).await.text;
    assert!(
        metrics.contains("flashsale_relay_dead_lettered_total"),
        "dead letters are counted"
    );
    let stats = handle.stats();
    assert_eq!(stats.distinct_event_ids, done.paid as u64);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_starts_ready_without_kafka_and_events_flow_once_a_broker_is_reachable() {
    // Nothing listens on this port until the private broker starts on it.
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let app = spawn_app_with(|s| {
        s.connections.kafka_brokers = brokers.clone();
        s.run_relay = true;
        s.reservation_ttl_secs = 2;
        s.relay.relay_retry_max_ms = 1_000;
    })
    .await;
    readyz_until(&app, "Kafka reported down", |b| {
        b["ready"] == true && b["redis"] == true && b["kafka"] == false
    })
    .await;
    // Process-wide gauges (other tests' engines share this process): the series exist.
    assert!(dependency_gauge(&app, "kafka").await.is_some());
    assert!(dependency_gauge(&app, "redis").await.is_some());
    let before = mixed_workload(&app, 30).await;

    let kafka = tokio::task::spawn_blocking(move || {
        let mut kafka = PrivateKafka::on_port(port);
        kafka.start();
        kafka
    })
    .await
    .expect("private broker");
    // Up = the relay created the topic and the broker serves it; only then the sink subscribes.
    readyz_until(&app, "Kafka reported up", |b| b["kafka"] == true).await;
    let (url, handle) = platform(0.0, 0).await;
    let _sink = start_sink(&app.settings.connections, &url, &[]);
    let after = mixed_workload(&app, 30).await;
    let done = Done {
        paid: before.paid + after.paid,
    };
    common::pipeline::assert_exactly_once(&app, &done, &handle).await;
    app.stop().await;
    drop(kafka);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_stays_ready_for_redis_sales_while_mysql_is_unreachable() {
    let mysql = common::mysql_server_url();
    let host = mysql
        .rsplit('@')
        .next()
        .and_then(|h| h.strip_prefix("mysql://").or(Some(h)))
        .unwrap_or("127.0.0.1:3306")
        .to_string();
    let target: std::net::SocketAddr = tokio::net::lookup_host(&host)
        .await
        .expect("MySQL address")
        .next()
        .expect("MySQL address");
    let proxy = TcpProxy::start(target).await;
    let user = mysql
        .strip_prefix("mysql://")
        .and_then(|rest| rest.rsplit_once('@').map(|(u, _)| u.to_string()))
        .unwrap_or_else(|| "root".into());
    let app = spawn_app_with(|s| {
        let database = s
            .connections
            .database_url
            .rsplit('/')
            .next()
            .unwrap_or("fs")
            .to_string();
        s.connections.database_url = format!("mysql://{user}@127.0.0.1:{}/{database}", proxy.port);
    })
    .await;
    let product = app.create_product(500, 100).await;
    let people = app.seed_members(5, 10_000).await;
    readyz_until(&app, "MySQL reported up", |b| b["mysql"] == true).await;

    proxy.stop();
    readyz_until(&app, "MySQL reported down", |b| {
        b["ready"] == true && b["mysql"] == false
    })
    .await;
    assert!(dependency_gauge(&app, "mysql").await.is_some());
    // Sales need only Redis.
    for (_, token) in &people {
        let order = app
            .order(token, json!([{"product_id": product, "quantity": 1}]))
            .await;
        assert_eq!(order.status, 201, "{}", order.text);
        let id = order.json()["id"].as_i64().expect("order id");
        let pay = app.pay(token, id, None).await;
        assert_eq!(pay.status, 200, "{}", pay.text);
    }
    let charge = app
        .post(
            "/api/v1/me/points/charge",
            Some(&people[0].1),
            Some(&unique("c")),
            json!({"amount": 100}),
        )
        .await;
    assert_eq!(charge.status, 200, "{}", charge.text);
    assert_eq!(app.stock(product).await, 95);
    app.stop().await;
}

/// Issue 8 item 18: after a broker restart the idempotent producer can enter a fatal state (e.g. an
/// out-of-order sequence number, librdkafka#3584) in which every send fails for good; the relay kept
/// using it and the outbox never drained. librdkafka's test hook raises the same fatal error here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_replaces_a_producer_in_a_fatal_state() {
    use rdkafka::producer::Producer;
    let app = spawn_app_with(|s| {
        s.run_relay = true;
        s.reservation_ttl_secs = 2;
    })
    .await;
    let (url, handle) = platform(0.0, 0).await;
    let _sink = start_sink(&app.settings.connections, &url, &[]);
    let first = mixed_workload(&app, 30).await;
    // The relay shares the engine's producer (the same librdkafka handle).
    let reason = std::ffi::CString::new("test: out of order sequence after a broker restart")
        .expect("reason");
    let raised = unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            app.state.producer.client().native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        )
    };
    assert_eq!(
        raised,
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    );
    assert!(app.state.producer.client().fatal_error().is_some());
    let second = mixed_workload(&app, 30).await;
    let done = Done {
        paid: first.paid + second.paid,
    };
    common::pipeline::assert_exactly_once(&app, &done, &handle).await;
    app.stop().await;
}
