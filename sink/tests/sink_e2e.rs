//! End-to-end tests of the sink against the real Kafka and MariaDB/MySQL (scripts/services.sh up).
//! Each test owns a database `sink_test_<uuid>` and topics with unique names, and drops them after.

mod common;

use common::*;
use flashsale_sink::{spawn_mock_platform, spawn_mock_platform_with, MockPlatformConfig};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// (a) A message produced to the events topic is consumed and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_event_is_consumed_and_applied() {
    let env = TestEnv::new(3).await;
    let sink = start_sink(env.config());
    let p = producer();
    produce_event(&p, &env.topic, &member_registered(1)).await;
    produce_event(&p, &env.topic, &points_charged(1, 5000, 5000)).await;
    produce_event(&p, &env.topic, &product_created(10, 1000, 50)).await;

    env.wait_count("SELECT COUNT(*) FROM processed_events", 3, WAIT)
        .await;
    let (email, balance): (String, i64) =
        sqlx::query_as("SELECT CONVERT(email USING utf8mb4), balance FROM members WHERE id = 1")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(email, "m1@example.com");
    assert_eq!(balance, 5000);
    let (kind, amount, after): (String, i64, i64) =
        sqlx::query_as("SELECT type, amount, balance_after FROM points_ledger WHERE member_id = 1")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), amount, after), ("CHARGE", 5000, 5000));
    assert_eq!(
        env.count("SELECT stock FROM products WHERE id = 10").await,
        50
    );
    assert_eq!(
        env.count("SELECT CAST(SUM(delta) AS SIGNED) FROM stock_movements WHERE product_id = 10")
            .await,
        50
    );
    env.wait_committed_to_end(WAIT).await;
    sink.stop().await.unwrap();
    env.cleanup().await;
}

/// (b) Redelivery of the same event changes nothing: the same event twice, then the group's offsets
/// reset to the beginning and everything consumed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_redelivery_changes_nothing() {
    let env = TestEnv::new(3).await;
    let p = producer();
    let charge = points_charged(7, 3000, 3000);
    let order = Order {
        id: 70,
        member_id: 7,
        items: vec![(71, 2, 1000)],
        coupon: None,
    };
    let events = vec![
        member_registered(7),
        charge.clone(),
        charge.clone(), // the very same event again
        product_created(71, 1000, 10),
        order.reserved(),
        order.paid(1000),
    ];
    for e in &events {
        produce_event(&p, &env.topic, e).await;
    }
    let sink = start_sink(env.config());
    env.wait_count("SELECT COUNT(*) FROM processed_events", 5, WAIT)
        .await;
    env.wait_committed_to_end(WAIT).await;
    sink.stop().await.unwrap();

    let snapshot = |env: &TestEnv| {
        let pool = env.pool.clone();
        async move {
            let q = |sql: &'static str| {
                let pool = pool.clone();
                async move {
                    sqlx::query_scalar::<_, i64>(sql)
                        .fetch_one(&pool)
                        .await
                        .unwrap()
                }
            };
            vec![
                q("SELECT balance FROM members WHERE id = 7").await,
                q("SELECT COUNT(*) FROM points_ledger").await,
                q("SELECT stock FROM products WHERE id = 71").await,
                q("SELECT COUNT(*) FROM stock_movements").await,
                q("SELECT COUNT(*) FROM payments").await,
                q("SELECT COUNT(*) FROM order_items").await,
                q("SELECT COUNT(*) FROM data_platform_deliveries").await,
                q("SELECT COUNT(*) FROM processed_events").await,
            ]
        }
    };
    let first = snapshot(&env).await;
    assert_eq!(first, vec![1000, 2, 8, 2, 1, 1, 1, 5]);

    // Reset the group to the beginning and consume everything again.
    reset_group_offsets(&env.group, &env.topic);
    assert!(
        env.committed().iter().all(|c| *c == Some(0)),
        "{:?}",
        env.committed()
    );
    let sink = start_sink(env.config());
    env.wait_committed_to_end(WAIT).await;
    sink.stop().await.unwrap();
    assert_eq!(snapshot(&env).await, first);
    env.cleanup().await;
}

/// (c) Poison messages land in the DLQ with their origin; the valid events after them are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_poison_goes_to_dlq_and_the_rest_is_applied() {
    let env = TestEnv::new(1).await;
    let p = producer();
    let key = "member:5";
    produce_event(&p, &env.topic, &member_registered(5)).await;
    let bad_json = produce(&p, &env.topic, key, b"{\"event_id\": oops").await;
    let unknown = produce_event(
        &p,
        &env.topic,
        &envelope("member.teleported", key, T0, json!({"member_id": 5})),
    )
    .await;
    let missing = produce_event(
        &p,
        &env.topic,
        &envelope("points.charged", key, T0, json!({"member_id": 5})),
    )
    .await;
    // Decodes fine but the database refuses it (name longer than VARCHAR(100)): isolated, then DLQ.
    let mut too_long = member_registered(6);
    too_long["payload"]["name"] = json!("x".repeat(300));
    let refused = produce_event(&p, &env.topic, &too_long).await;
    produce_event(&p, &env.topic, &points_charged(5, 700, 700)).await;
    produce_event(&p, &env.topic, &member_registered(8)).await;

    let sink = start_sink(env.config());
    let dlq = read_dlq(&env.dlq, 4, WAIT).await;
    env.wait_count("SELECT COUNT(*) FROM processed_events", 3, WAIT)
        .await;
    env.wait_committed_to_end(WAIT).await;
    sink.stop().await.unwrap();

    assert_eq!(
        env.count("SELECT balance FROM members WHERE id = 5").await,
        700
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM members WHERE id = 8").await,
        1
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM members WHERE id = 6").await,
        0
    );

    let offsets: Vec<i64> = dlq
        .iter()
        .map(|m| m.headers["x-origin-offset"].parse().unwrap())
        .collect();
    assert_eq!(offsets, vec![bad_json.1, unknown.1, missing.1, refused.1]);
    for m in &dlq {
        assert_eq!(m.headers["x-origin-topic"], env.topic);
        assert_eq!(m.headers["x-origin-partition"], "0");
        assert!(!m.headers["x-error"].is_empty());
    }
    for m in &dlq[..3] {
        assert_eq!(m.key.as_deref(), Some(key));
        assert_eq!(m.headers["x-error-stage"], "decode");
    }
    assert_eq!(dlq[0].value.as_deref(), Some("{\"event_id\": oops"));
    assert_eq!(dlq[0].headers["x-error-stage"], "decode");
    assert!(
        dlq[1].headers["x-error"].contains("unknown event type"),
        "{:?}",
        dlq[1].headers
    );
    assert!(
        dlq[2].headers["x-error"].contains("points.charged"),
        "{:?}",
        dlq[2].headers
    );
    assert_eq!(dlq[3].headers["x-error-stage"], "apply");
    assert_eq!(dlq[3].key.as_deref(), Some("member:6"));
    env.cleanup().await;
}

fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// (d) A data platform failing 30% of requests with slow answers still receives every paid order
/// exactly once as a distinct Idempotency-Key, and the deliveries end DELIVERED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_deliveries_reach_a_flaky_platform_exactly_once() {
    let env = TestEnv::new(3).await;
    let (addr, mock) = spawn_mock_platform_with(
        "127.0.0.1:0".parse().unwrap(),
        MockPlatformConfig {
            fail_rate: 0.3,
            delay: Duration::from_millis(150),
        },
    )
    .await
    .unwrap();
    let ops = free_port();
    let mut cfg = env.config();
    cfg.run_delivery_worker = true;
    cfg.data_platform_url = format!("http://{addr}/events");
    cfg.listen_addr = Some(ops);
    let sink = start_sink(cfg);

    const N: i64 = 40;
    let p = producer();
    produce_event(&p, &env.topic, &member_registered(1)).await;
    produce_event(&p, &env.topic, &points_charged(1, 1_000_000, 1_000_000)).await;
    produce_event(&p, &env.topic, &product_created(3, 500, 1000)).await;
    let mut paid_ids = BTreeSet::new();
    let mut balance = 1_000_000;
    for i in 0..N {
        let o = Order {
            id: 1000 + i,
            member_id: 1,
            items: vec![(3, 1 + i % 3, 500)],
            coupon: None,
        };
        balance -= o.paid_amount();
        let paid = o.paid(balance);
        paid_ids.insert(paid["event_id"].as_str().unwrap().to_string());
        produce_event(&p, &env.topic, &o.reserved()).await;
        produce_event(&p, &env.topic, &paid).await;
    }

    env.wait_count(
        "SELECT COUNT(*) FROM data_platform_deliveries WHERE status = 'DELIVERED'",
        N,
        Duration::from_secs(120),
    )
    .await;
    let stats = mock.stats();
    assert_eq!(stats.distinct_event_ids, N as u64, "{stats:?}");
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    assert!(stats.failed > 0, "the mock failed no request: {stats:?}");
    assert_eq!(stats.requests, stats.accepted + stats.failed);
    let orders: BTreeSet<i64> = stats.order_ids.iter().copied().collect();
    assert_eq!(orders, (1000..1000 + N).collect::<BTreeSet<_>>());
    assert_eq!(stats.order_ids.len(), N as usize);
    for id in &paid_ids {
        let body = mock
            .body(id)
            .unwrap_or_else(|| panic!("no delivery under key {id}"));
        assert_eq!(body["event_id"], json!(id));
        for f in [
            "order_id",
            "member_id",
            "items",
            "total_amount",
            "discount_amount",
            "paid_amount",
            "paid_at",
        ] {
            assert!(!body[f].is_null(), "{f} missing in {body}");
        }
        assert_eq!(body["paid_at"], json!("2026-11-24T05:11:00.000Z"));
    }
    let retried = env
        .count("SELECT COUNT(*) FROM data_platform_deliveries WHERE attempts > 1")
        .await;
    assert!(retried > 0);
    assert_eq!(
        env.count("SELECT balance FROM members WHERE id = 1").await,
        balance
    );

    // The ops endpoint serves the sink's metrics. The lag gauge appears once the sampler (every
    // `gauges_interval`) has seen the assigned partition, which may be after the last event applied.
    let lag_line = "flashsale_sink_consumer_lag{partition=\"0\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = reqwest::get(format!("http://{ops}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(lag_line) || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for name in [
        "flashsale_sink_events_applied_total",
        "flashsale_data_platform_deliveries_total",
        "flashsale_sink_batch_size",
        "flashsale_sink_apply_duration_seconds",
        lag_line,
        "flashsale_data_platform_pending",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(
        reqwest::get(format!("http://{ops}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );

    sink.stop().await.unwrap();
    // Nothing more arrives after the sink is gone, and nothing was sent twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.stats().distinct_event_ids, N as u64);
    mock.stop();
    env.cleanup().await;
}

/// (e) A sink killed between its MySQL commit and its offset commit: the next sink gets the same
/// messages again and reapplies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_crash_between_db_commit_and_offset_commit_reapplies_nothing() {
    let env = TestEnv::new(1).await;
    let p = producer();
    let o = Order {
        id: 50,
        member_id: 2,
        items: vec![(9, 4, 250)],
        coupon: None,
    };
    let events = vec![
        member_registered(2),
        points_charged(2, 1000, 1000),
        points_charged(2, 2000, 3000),
        product_created(9, 250, 20),
        stock_added(9, 5, 25),
        o.reserved(),
        o.paid(2000),
    ];
    for e in &events {
        produce_event(&p, &env.topic, e).await;
    }

    let mut cfg = env.config();
    cfg.exit_after_db_commit = true;
    start_sink(cfg).join(WAIT).await.unwrap();
    let applied = env.count("SELECT COUNT(*) FROM processed_events").await;
    assert!(applied > 0, "the first sink applied nothing");
    assert_eq!(
        env.committed(),
        vec![None],
        "offsets must not be committed after the MySQL commit"
    );

    let sink = start_sink(env.config());
    env.wait_committed_to_end(WAIT).await;
    sink.stop().await.unwrap();
    assert_eq!(
        env.count("SELECT COUNT(*) FROM processed_events").await,
        events.len() as i64
    );
    assert_eq!(
        env.count("SELECT balance FROM members WHERE id = 2").await,
        2000
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM points_ledger").await, 3);
    assert_eq!(
        env.count("SELECT stock FROM products WHERE id = 9").await,
        21
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM stock_movements").await, 3);
    assert_eq!(env.count("SELECT COUNT(*) FROM payments").await, 1);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM data_platform_deliveries")
            .await,
        1
    );
    assert_eq!(high_watermarks(&env.dlq), vec![0], "nothing dead-lettered");
    env.cleanup().await;
}

/// (f) Events of one order arriving out of order (paid before reserved, cancel before pay), and
/// entities created after the orders that use them, end in the right state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_out_of_order_events_end_in_the_right_state() {
    let env = TestEnv::new(3).await;
    let p = producer();
    // A: 2 x 3000 with coupon 5 (1000 off), paid. B: 1 x 3000 with coupon 6 (500 off), paid then
    // cancelled. C: 3 x 3000, reserved then expired. D: 5 x 3000, reserved then cancelled.
    let a = Order {
        id: 100,
        member_id: 1,
        items: vec![(20, 2, 3000)],
        coupon: Some((5, 1000)),
    };
    let b = Order {
        id: 101,
        member_id: 1,
        items: vec![(20, 1, 3000)],
        coupon: Some((6, 500)),
    };
    let d = Order {
        id: 103,
        member_id: 1,
        items: vec![(20, 5, 3000)],
        coupon: None,
    };
    let c = Order {
        id: 102,
        member_id: 1,
        items: vec![(20, 3, 3000)],
        coupon: None,
    };
    let events = vec![
        a.paid(5000),
        a.reserved(),
        b.cancelled_paid(5000),
        b.paid(2500),
        b.reserved(),
        c.expired(),
        c.reserved(),
        d.cancelled_reserved(),
        d.reserved(),
        member_registered(1),
        points_charged(1, 10_000, 10_000),
        product_created(20, 3000, 100),
        coupon_created(5, 10),
        coupon_created(6, 10),
        coupon_issued(5, 1, 9),
        coupon_issued(6, 1, 9),
        // A second sign-up naming the same member (never from the engine): the identity the row has
        // stays.
        {
            let mut again = member_registered(1);
            again["payload"]["email"] = json!("someone.else@example.com");
            again["payload"]["name"] = json!("Someone Else");
            again
        },
    ];
    for e in &events {
        produce_event(&p, &env.topic, e).await;
    }
    let sink = start_sink(env.config());
    env.wait_count(
        "SELECT COUNT(*) FROM processed_events",
        events.len() as i64,
        WAIT,
    )
    .await;
    env.wait_committed_to_end(WAIT).await;
    sink.stop().await.unwrap();

    let orders: Vec<(i64, String, i8, i64, i64, Option<i64>)> = sqlx::query_as(
        "SELECT id, status, status_rank, discount_amount, paid_amount, coupon_id FROM orders ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        orders,
        vec![
            (100, "PAID".into(), 2, 1000, 5000, Some(5)),
            (101, "CANCELLED".into(), 3, 500, 2500, Some(6)),
            (102, "EXPIRED".into(), 3, 0, 0, None),
            (103, "CANCELLED".into(), 3, 0, 0, None),
        ]
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM orders WHERE id = 100 AND paid_at IS NOT NULL AND closed_at IS NULL").await, 1);
    assert_eq!(env.count("SELECT COUNT(*) FROM order_items").await, 4);
    // Stock: 100 - 2 - 1 + 1 - 3 + 3 - 5 + 5.
    assert_eq!(
        env.count("SELECT stock FROM products WHERE id = 20").await,
        98
    );
    assert_eq!(
        env.count("SELECT CAST(SUM(delta) AS SIGNED) FROM stock_movements WHERE product_id = 20")
            .await,
        98
    );
    // Points: 10000 - 5000 - 2500 + 2500. The payments came before the sign-up: they created the
    // row with their balance, and the sign-up gave it its identity.
    assert_eq!(
        env.count("SELECT balance FROM members WHERE id = 1").await,
        5000
    );
    let identity: (String, String) = sqlx::query_as(
        "SELECT CONVERT(email USING utf8mb4), name FROM members WHERE id = 1 AND created_at IS NOT NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        identity,
        ("m1@example.com".to_string(), "Member 1".to_string())
    );
    let ledger: Vec<(String, i64, Option<i64>)> =
        sqlx::query_as("SELECT type, amount, order_id FROM points_ledger ORDER BY type, order_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        ledger,
        vec![
            ("CHARGE".into(), 10_000, None),
            ("REFUND".into(), 2500, Some(101)),
            ("USE".into(), 5000, Some(100)),
            ("USE".into(), 2500, Some(101)),
        ]
    );
    let payments: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT order_id, status, amount FROM payments ORDER BY order_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        payments,
        vec![(100, "PAID".into(), 5000), (101, "REFUNDED".into(), 2500)]
    );
    let coupons: Vec<(i64, Option<i64>)> =
        sqlx::query_as("SELECT coupon_id, used_order_id FROM issued_coupons ORDER BY coupon_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(coupons, vec![(5, Some(100)), (6, None)]);
    assert_eq!(
        env.count("SELECT CAST(SUM(remaining) AS SIGNED) FROM coupons")
            .await,
        18
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM data_platform_deliveries WHERE status = 'PENDING'")
            .await,
        2
    );
    env.cleanup().await;
}

/// (g) A database outage is transient: the sink waits and retries, dead-letters nothing, commits no
/// offset past an unapplied event, and applies everything once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_database_outage_is_waited_out() {
    let env = TestEnv::new(1).await;
    let proxy = Proxy::start(server_host_port()).await;
    let mut cfg = env.config();
    cfg.database_url = proxy.url(&env.db_url);
    let sink = start_sink(cfg);
    let p = producer();
    let (_, first) = produce_event(&p, &env.topic, &member_registered(4)).await;
    env.wait_count("SELECT COUNT(*) FROM processed_events", 1, WAIT)
        .await;
    env.wait_committed_to_end(WAIT).await;

    proxy.down();
    for i in 1..=3 {
        produce_event(&p, &env.topic, &points_charged(4, 100, 100 * i)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.count("SELECT COUNT(*) FROM processed_events").await, 1);
    assert_eq!(
        env.committed(),
        vec![Some(first + 1)],
        "no offset committed past unapplied events"
    );
    assert_eq!(
        high_watermarks(&env.dlq),
        vec![0],
        "an outage dead-letters nothing"
    );

    proxy.up();
    env.wait_count("SELECT COUNT(*) FROM processed_events", 4, WAIT)
        .await;
    env.wait_committed_to_end(WAIT).await;
    sink.stop().await.unwrap();
    assert_eq!(
        env.count("SELECT balance FROM members WHERE id = 4").await,
        300
    );
    assert_eq!(high_watermarks(&env.dlq), vec![0]);
    env.cleanup().await;
}

/// (h) Only a permanent refusal (a 4xx other than 408/409/425/429) makes a delivery DEAD, at its
/// first answer; 429 and 503 are retried past the old 12-attempt limit; replay-deliveries puts a DEAD
/// delivery back to PENDING and it is then delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h_only_a_permanent_refusal_is_dead_and_dead_can_be_replayed() {
    let env = TestEnv::new(1).await;
    let (addr, mock) = spawn_mock_platform_with(
        "127.0.0.1:0".parse().unwrap(),
        MockPlatformConfig {
            fail_rate: 1.0,
            delay: Duration::ZERO,
        },
    )
    .await
    .unwrap();
    mock.set_failure_status(400);
    let mut cfg = env.config();
    cfg.run_delivery_worker = true;
    cfg.data_platform_url = format!("http://{addr}/events");
    cfg.delivery_backoff_base = Duration::from_millis(10);
    cfg.delivery_backoff_cap = Duration::from_millis(50);
    cfg.delivery_poll_interval = Duration::from_millis(20);
    let sink = start_sink(cfg);
    let p = producer();
    let refused = Order {
        id: 7,
        member_id: 1,
        items: vec![(1, 1, 100)],
        coupon: None,
    };
    produce_event(&p, &env.topic, &refused.reserved()).await;
    let refused_paid = refused.paid(0);
    produce_event(&p, &env.topic, &refused_paid).await;

    // 400: DEAD at once, after one request.
    env.wait_count(
        "SELECT COUNT(*) FROM data_platform_deliveries WHERE order_id = 7 AND status = 'DEAD' AND attempts = 1",
        1,
        WAIT,
    )
    .await;
    assert_eq!(mock.stats().requests, 1);
    let err: String =
        sqlx::query_scalar("SELECT last_error FROM data_platform_deliveries WHERE order_id = 7")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(err.contains("400"), "{err}");

    // 429, then 503: retried, never DEAD, well past the old limit of 12 attempts.
    mock.set_failure_status(429);
    let retried = Order {
        id: 8,
        member_id: 1,
        items: vec![(1, 1, 100)],
        coupon: None,
    };
    produce_event(&p, &env.topic, &retried.reserved()).await;
    produce_event(&p, &env.topic, &retried.paid(0)).await;
    env.wait_count(
        "SELECT COUNT(*) FROM data_platform_deliveries WHERE order_id = 8 AND status = 'PENDING' \
         AND attempts >= 8 AND last_error LIKE 'HTTP 429%'",
        1,
        WAIT,
    )
    .await;
    mock.set_failure_status(503);
    env.wait_count(
        "SELECT COUNT(*) FROM data_platform_deliveries WHERE order_id = 8 AND status = 'PENDING' \
         AND attempts >= 16 AND last_error LIKE 'HTTP 503%'",
        1,
        WAIT,
    )
    .await;
    assert_eq!(
        env.count("SELECT COUNT(*) FROM data_platform_deliveries WHERE status = 'DEAD'")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT attempts FROM data_platform_deliveries WHERE order_id = 7")
            .await,
        1,
        "a DEAD delivery is not retried"
    );

    // The platform recovers: the retried one arrives; the DEAD one after a replay.
    mock.set_config(MockPlatformConfig::default());
    env.wait_count(
        "SELECT COUNT(*) FROM data_platform_deliveries WHERE order_id = 8 AND status = 'DELIVERED'",
        1,
        WAIT,
    )
    .await;
    let n = flashsale_sink::replay_dead_deliveries(
        &env.pool,
        Some(refused_paid["event_id"].as_str().unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    env.wait_count(
        "SELECT COUNT(*) FROM data_platform_deliveries WHERE status = 'DELIVERED'",
        2,
        WAIT,
    )
    .await;
    let stats = mock.stats();
    assert_eq!(stats.distinct_event_ids, 2, "{stats:?}");
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    assert_eq!(stats.order_ids, vec![8, 7]);
    assert_eq!(
        flashsale_sink::replay_dead_deliveries(&env.pool, None)
            .await
            .unwrap(),
        0
    );
    sink.stop().await.unwrap();
    mock.stop();
    env.cleanup().await;
}

/// (i) The data platform down for many backoff caps (first refusing connections, then answering 503)
/// loses no order: nothing turns DEAD, and once it is back every paid order arrives exactly once.
/// The backlog and oldest-pending-age gauges show the outage and clear after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i_platform_outage_longer_than_the_backoff_cap_loses_no_order() {
    let env = TestEnv::new(2).await;
    let (addr, mock) = spawn_mock_platform("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let proxy = Proxy::start(addr.to_string()).await;
    proxy.down();
    let ops = free_port();
    let mut cfg = env.config();
    cfg.run_delivery_worker = true;
    cfg.data_platform_url = proxy.url(&format!("http://{addr}/events"));
    cfg.delivery_backoff_base = Duration::from_millis(10);
    cfg.delivery_backoff_cap = Duration::from_millis(100);
    cfg.delivery_poll_interval = Duration::from_millis(20);
    cfg.gauges_interval = Duration::from_millis(200);
    cfg.listen_addr = Some(ops);
    let sink = start_sink(cfg);

    const N: i64 = 20;
    let p = producer();
    produce_event(&p, &env.topic, &member_registered(1)).await;
    produce_event(&p, &env.topic, &points_charged(1, 1_000_000, 1_000_000)).await;
    produce_event(&p, &env.topic, &product_created(3, 500, 1000)).await;
    let mut balance = 1_000_000;
    for i in 0..N {
        let o = Order {
            id: 2000 + i,
            member_id: 1,
            items: vec![(3, 1, 500)],
            coupon: None,
        };
        balance -= o.paid_amount();
        produce_event(&p, &env.topic, &o.reserved()).await;
        produce_event(&p, &env.topic, &o.paid(balance)).await;
    }

    // Refused connections: every delivery retried again and again, still PENDING.
    env.wait_count(
        "SELECT COUNT(*) FROM data_platform_deliveries WHERE status = 'PENDING' AND attempts >= 6",
        N,
        WAIT,
    )
    .await;
    eventually(WAIT, || async {
        let text = metrics_text(ops).await;
        metric(&text, "flashsale_data_platform_pending") == Some(N as f64)
            && metric(&text, "flashsale_data_platform_oldest_pending_age_seconds")
                .is_some_and(|age| age > 0.0)
    })
    .await;
    assert_eq!(mock.stats().requests, 0);

    // 503 answers: past the old limit of 12 attempts, still PENDING.
    mock.set_config(MockPlatformConfig {
        fail_rate: 1.0,
        delay: Duration::ZERO,
    });
    proxy.up();
    env.wait_count(
        "SELECT COUNT(*) FROM data_platform_deliveries WHERE status = 'PENDING' AND attempts >= 16 \
         AND last_error LIKE 'HTTP 503%'",
        N,
        WAIT,
    )
    .await;
    assert_eq!(
        env.count("SELECT COUNT(*) FROM data_platform_deliveries WHERE status <> 'PENDING'")
            .await,
        0
    );
    assert_eq!(mock.stats().accepted, 0);

    // Back: every paid order exactly once.
    mock.set_config(MockPlatformConfig::default());
    env.wait_count(
        "SELECT COUNT(*) FROM data_platform_deliveries WHERE status = 'DELIVERED'",
        N,
        WAIT,
    )
    .await;
    let stats = mock.stats();
    assert_eq!(stats.distinct_event_ids, N as u64, "{stats:?}");
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    let orders: BTreeSet<i64> = stats.order_ids.iter().copied().collect();
    assert_eq!(orders, (2000..2000 + N).collect::<BTreeSet<_>>());
    assert_eq!(stats.order_ids.len(), N as usize);
    eventually(WAIT, || async {
        let text = metrics_text(ops).await;
        metric(&text, "flashsale_data_platform_pending") == Some(0.0)
            && metric(&text, "flashsale_data_platform_oldest_pending_age_seconds") == Some(0.0)
            && metric(&text, "flashsale_data_platform_dead") == Some(0.0)
    })
    .await;
    sink.stop().await.unwrap();
    mock.stop();
    env.cleanup().await;
}

/// (j) An accepted event the database refuses with a duplicate key (a row the engine never wrote)
/// is not dead-lettered: its partition stalls (offset not committed past it, later events of the
/// partition wait, the stall gauge says so) while the other partition flows; once the conflicting
/// row is removed the event applies, exactly once, and the partition catches up by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j_integrity_conflict_stalls_the_partition_instead_of_dead_lettering() {
    let env = TestEnv::new(2).await;
    let ops = free_port();
    let mut cfg = env.config();
    cfg.listen_addr = Some(ops);
    cfg.stall_backoff_base = Duration::from_millis(50);
    cfg.stall_backoff_cap = Duration::from_millis(300);
    let sink = start_sink(cfg);
    env.wait_count("SELECT COUNT(*) FROM processed_events", 0, WAIT)
        .await;

    let charge = points_charged(1, 100, 100);
    let charge_id = charge["event_id"].as_str().unwrap().to_string();
    insert_conflicting_ledger_row(&env, &charge_id).await;

    let p = producer();
    produce_to(&p, &env.topic, 0, &member_registered(1)).await;
    let refused = produce_to(&p, &env.topic, 0, &charge).await;
    produce_to(&p, &env.topic, 0, &points_charged(1, 50, 150)).await;
    produce_to(&p, &env.topic, 1, &member_registered(2)).await;
    produce_to(&p, &env.topic, 1, &points_charged(2, 70, 70)).await;

    // Partition 1 flows; partition 0 applies up to the refused event and stalls there.
    env.wait_count(
        "SELECT COALESCE((SELECT balance FROM members WHERE id = 2), -1)",
        70,
        WAIT,
    )
    .await;
    eventually(WAIT, || async {
        let text = metrics_text(ops).await;
        metric(&text, "flashsale_sink_stalled_partitions") == Some(1.0)
            && metric(&text, "flashsale_sink_stalled_seconds{partition=\"0\"}").is_some()
            && metric(&text, "flashsale_sink_conflicts_total").is_some_and(|n| n >= 4.0)
    })
    .await;
    eventually(WAIT, || async {
        env.committed() == vec![Some(refused.1), Some(high_watermarks(&env.topic)[1])]
    })
    .await;
    assert_eq!(
        env.count("SELECT balance FROM members WHERE id = 1").await,
        0
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM processed_events").await, 3);
    assert_eq!(high_watermarks(&env.dlq), vec![0], "nothing dead-lettered");

    // The fix: the conflicting row goes; the sink resumes by itself.
    sqlx::query("DELETE FROM points_ledger WHERE event_id = ?")
        .bind(&charge_id)
        .execute(&env.pool)
        .await
        .unwrap();
    env.wait_count("SELECT balance FROM members WHERE id = 1", 150, WAIT)
        .await;
    env.wait_committed_to_end(WAIT).await;
    eventually(WAIT, || async {
        metric(
            &metrics_text(ops).await,
            "flashsale_sink_stalled_partitions",
        ) == Some(0.0)
    })
    .await;
    assert_eq!(env.count("SELECT COUNT(*) FROM processed_events").await, 5);
    assert_eq!(
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM points_ledger WHERE event_id = ? AND member_id = 1"
        )
        .bind(&charge_id)
        .fetch_one(&env.pool)
        .await
        .unwrap(),
        1
    );
    assert_eq!(high_watermarks(&env.dlq), vec![0], "nothing dead-lettered");
    sink.stop().await.unwrap();
    env.cleanup().await;
}

/// (k) Two sink processes in one group: after the rebalance each reports the lag of the partitions
/// it holds and no other, so the lag summed over both /metrics is the real lag (before, the first
/// sink kept reporting the partitions it lost). The lag is held still by stalled partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_rebalance_drops_the_revoked_partitions_lag() {
    const PARTITIONS: i32 = 4;
    let env = TestEnv::new(PARTITIONS).await;
    let first = SinkProcess::start(&env, "first");
    env.wait_count("SELECT COUNT(*) FROM processed_events", 0, WAIT)
        .await;
    let p = producer();
    for partition in 0..PARTITIONS {
        let member = 10 + partition as i64;
        let charge = points_charged(member, 10, 10);
        insert_conflicting_ledger_row(&env, charge["event_id"].as_str().unwrap()).await;
        produce_to(&p, &env.topic, partition, &charge).await;
        produce_to(&p, &env.topic, partition, &member_registered(member)).await;
        produce_to(&p, &env.topic, partition, &points_charged(member, 5, 15)).await;
    }
    let real_lag = |env: &TestEnv| -> f64 {
        high_watermarks(&env.topic)
            .iter()
            .zip(env.committed())
            .map(|(high, committed)| (high - committed.unwrap_or(0)) as f64)
            .sum()
    };
    assert_eq!(real_lag(&env), 12.0);

    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    eventually(WAIT, || async {
        let text = first.metrics().await;
        lag_partitions(&text)
            .keys()
            .copied()
            .collect::<BTreeSet<_>>()
            == all
            && lag_partitions(&text).values().sum::<f64>() == 12.0
            && metric(&text, "flashsale_sink_stalled_partitions") == Some(PARTITIONS as f64)
    })
    .await;

    let second = SinkProcess::start(&env, "second");
    eventually(Duration::from_secs(90), || async {
        let (a, b) = (first.metrics().await, second.metrics().await);
        let (la, lb) = (lag_partitions(&a), lag_partitions(&b));
        let held_a: BTreeSet<i32> = la.keys().copied().collect();
        let held_b: BTreeSet<i32> = lb.keys().copied().collect();
        !held_a.is_empty()
            && !held_b.is_empty()
            && held_a.is_disjoint(&held_b)
            && held_a.union(&held_b).copied().collect::<BTreeSet<_>>() == all
            && la.values().sum::<f64>() + lb.values().sum::<f64>() == real_lag(&env)
            && metric(&a, "flashsale_sink_stalled_partitions").unwrap_or(0.0)
                + metric(&b, "flashsale_sink_stalled_partitions").unwrap_or(0.0)
                == PARTITIONS as f64
    })
    .await;
    assert_eq!(high_watermarks(&env.dlq), vec![0], "nothing dead-lettered");
    drop(second);
    drop(first);
    env.cleanup().await;
}

// ------------------------------------------------------------------------------------ helpers

/// A points_ledger row under `event_id` that the engine never wrote: the event then hits the
/// unique key uq_points_ledger_event when the sink applies it.
/// (l) Issue 11: product sale rules land in `products` from product.created (with rules, and in the
/// old shape without them) and product.rules_changed (set, then cleared to null); a change recorded
/// before its product's row makes the row start from it, an older change applied after a newer one
/// leaves the newer in place, and consuming everything again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l_product_sale_rules_land_and_a_replay_changes_nothing() {
    const STARTS: &str = "2026-11-27T05:00:00.000Z";
    const ENDS: &str = "2026-11-27T06:30:00.250Z";
    let env = TestEnv::new(3).await;
    let p = producer();
    let events = vec![
        // 80: created with every rule.
        product_created_with_rules(80, 10, Some(STARTS), Some(ENDS), Some(2)),
        // 81: the shape of engines before the rules (no rule fields at all).
        product_created(81, 1000, 10),
        // 82: created without rules (explicit nulls), rules set, then all cleared.
        product_created_with_rules(82, 10, None, None, None),
        product_rules_changed(82, Some(STARTS), None, Some(5), "2026-11-24T06:00:00.000Z"),
        product_rules_changed(82, None, None, None, "2026-11-24T07:00:00.000Z"),
        // 83: a change before its product's creation (never from the engine, but e.g. a dead-lettered
        // create sent again): the row starts from the change, not from the create's rules.
        product_rules_changed(83, None, Some(ENDS), Some(1), "2026-11-24T06:00:00.000Z"),
        product_created_with_rules(83, 10, Some(STARTS), None, Some(9)),
        // 84: the newer change first, an older one after it: the newer stays.
        product_created_with_rules(84, 10, None, None, None),
        product_rules_changed(84, None, None, Some(3), "2026-11-24T08:00:00.000Z"),
        product_rules_changed(
            84,
            Some(STARTS),
            Some(ENDS),
            Some(7),
            "2026-11-24T07:00:00.000Z",
        ),
    ];
    for e in &events {
        produce_event(&p, &env.topic, e).await;
    }
    let sink = start_sink(env.config());
    env.wait_count(
        "SELECT COUNT(*) FROM processed_events",
        events.len() as i64,
        WAIT,
    )
    .await;
    env.wait_committed_to_end(WAIT).await;
    sink.stop().await.unwrap();

    type Rules = (
        Option<chrono::NaiveDateTime>,
        Option<chrono::NaiveDateTime>,
        Option<i32>,
    );
    let rules = |env: &TestEnv| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_as::<_, (i64, Option<chrono::NaiveDateTime>, Option<chrono::NaiveDateTime>, Option<i32>, i64)>(
                "SELECT id, sale_starts_at, sale_ends_at, per_member_limit, stock FROM products ORDER BY id",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, s, e, l, stock)| {
                assert_eq!(stock, 10, "product {id}");
                (id, (s, e, l))
            })
            .collect::<Vec<(i64, Rules)>>()
        }
    };
    let t = |s: &str| Some(chrono::DateTime::parse_from_rfc3339(s).unwrap().naive_utc());
    let first = rules(&env).await;
    assert_eq!(
        first,
        vec![
            (80, (t(STARTS), t(ENDS), Some(2))),
            (81, (None, None, None)),
            (82, (None, None, None)),
            (83, (None, t(ENDS), Some(1))),
            (84, (None, None, Some(3))),
        ]
    );
    let changes = "SELECT COUNT(*) FROM product_rule_changes";
    assert_eq!(env.count(changes).await, 5);

    // Consume everything again: nothing changes.
    reset_group_offsets(&env.group, &env.topic);
    let sink = start_sink(env.config());
    env.wait_committed_to_end(WAIT).await;
    sink.stop().await.unwrap();
    assert_eq!(rules(&env).await, first);
    assert_eq!(env.count(changes).await, 5);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM processed_events").await,
        events.len() as i64
    );
    env.cleanup().await;
}

/// (m) A big sale's batches: many orders of a few members and one hot product, reserved, paid, some
/// cancelled after payment or before it, some paid before their reserve arrives, all in a few large
/// batches. Their row changes are gathered and written with multi-row statements (sink/src/writes.rs,
/// more rows than one statement takes): the totals come out as if each event had been applied alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m_large_batches_of_a_big_sale_add_up() {
    const ORDERS: i64 = 900;
    const MEMBERS: i64 = 20;
    const PRODUCT: i64 = 30;
    const STOCK: i64 = 100_000;
    const CHARGE: i64 = 1_000_000;
    let env = TestEnv::new(1).await;
    let p = producer();
    let mut events = Vec::new();
    events.push(product_created(PRODUCT, 100, STOCK));
    for m in 1..=MEMBERS {
        events.push(member_registered(m));
        events.push(points_charged(m, CHARGE, CHARGE));
    }
    let (mut sold, mut refunded_orders, mut paid_orders, mut cancelled_reserved) = (0, 0, 0, 0);
    let mut spent = std::collections::BTreeMap::<i64, i64>::new();
    for i in 0..ORDERS {
        let o = Order {
            id: 5_000 + i,
            member_id: 1 + i % MEMBERS,
            items: vec![(PRODUCT, 1 + i % 3, 100)],
            coupon: None,
        };
        let units = 1 + i % 3;
        if i % 7 == 0 && i % 5 != 0 {
            events.push(o.reserved());
            events.push(o.cancelled_reserved());
            cancelled_reserved += 1;
            continue;
        }
        if i % 11 == 0 {
            // The payment first (another partition's replay order): the reserve then changes nothing.
            events.push(o.paid(0));
            events.push(o.reserved());
        } else {
            events.push(o.reserved());
            events.push(o.paid(0));
        }
        paid_orders += 1;
        if i % 5 == 0 {
            events.push(o.cancelled_paid(0));
            refunded_orders += 1;
        } else {
            sold += units;
            *spent.entry(o.member_id).or_default() += o.paid_amount();
        }
    }
    let sends: Vec<_> = events
        .iter()
        .map(|e| produce_event(&p, &env.topic, e))
        .collect();
    futures::future::join_all(sends).await;
    let sink = start_sink(env.config());
    env.wait_count(
        "SELECT COUNT(*) FROM processed_events",
        events.len() as i64,
        WAIT,
    )
    .await;
    env.wait_committed_to_end(WAIT).await;
    sink.stop().await.unwrap();

    assert_eq!(
        env.count(&format!("SELECT stock FROM products WHERE id = {PRODUCT}"))
            .await,
        STOCK - sold
    );
    assert_eq!(
        env.count(&format!(
            "SELECT CAST(SUM(delta) AS SIGNED) FROM stock_movements WHERE product_id = {PRODUCT}"
        ))
        .await,
        STOCK - sold
    );
    for m in 1..=MEMBERS {
        let balance = env
            .count(&format!("SELECT balance FROM members WHERE id = {m}"))
            .await;
        assert_eq!(
            balance,
            CHARGE - spent.get(&m).copied().unwrap_or(0),
            "member {m}"
        );
    }
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM orders GROUP BY status ORDER BY status")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        vec![
            ("CANCELLED".into(), refunded_orders + cancelled_reserved),
            ("PAID".into(), paid_orders - refunded_orders),
        ]
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM order_items").await, ORDERS);
    let payments: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM payments GROUP BY status ORDER BY status")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        payments,
        vec![
            ("PAID".into(), paid_orders - refunded_orders),
            ("REFUNDED".into(), refunded_orders)
        ]
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM points_ledger WHERE type = 'USE'")
            .await,
        paid_orders
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM points_ledger WHERE type = 'REFUND'")
            .await,
        refunded_orders
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM data_platform_deliveries")
            .await,
        paid_orders
    );
    // Paid before reserved: the order still carries its payment time and total.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM orders WHERE id = 5011 AND status = 'PAID' AND paid_at IS NOT NULL AND paid_amount = 300")
            .await,
        1
    );
    env.cleanup().await;
}

async fn insert_conflicting_ledger_row(env: &TestEnv, event_id: &str) {
    sqlx::query(
        "INSERT INTO points_ledger (event_id, member_id, type, amount, balance_after, order_id, at) \
         VALUES (?, 999, 'CHARGE', 1, 1, NULL, '2026-11-24 05:00:00')",
    )
    .bind(event_id)
    .execute(&env.pool)
    .await
    .unwrap();
}

/// Produces an event to one partition.
async fn produce_to(
    p: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: i32,
    ev: &serde_json::Value,
) -> (i32, i64) {
    let key = ev["aggregate"].as_str().unwrap().to_string();
    let value = ev.to_string();
    p.send(
        rdkafka::producer::FutureRecord::to(topic)
            .partition(partition)
            .key(&key)
            .payload(&value),
        rdkafka::util::Timeout::After(Duration::from_secs(30)),
    )
    .await
    .map(|d| (d.partition, d.offset))
    .map_err(|(e, _)| e)
    .expect("produced")
}

async fn metrics_text(addr: std::net::SocketAddr) -> String {
    match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the series `name` (with its labels, if any, exactly as rendered).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// flashsale_sink_consumer_lag by partition.
fn lag_partitions(text: &str) -> std::collections::BTreeMap<i32, f64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("flashsale_sink_consumer_lag{partition=\"")?;
            let (partition, rest) = rest.split_once("\"}")?;
            Some((partition.parse().ok()?, rest.trim().parse().ok()?))
        })
        .collect()
}

/// The sink binary as a child process of this test's database and topics; killed on drop, so a
/// failing test leaves no process behind. Its log goes to a file in the temp dir.
struct SinkProcess {
    child: std::process::Child,
    ops: std::net::SocketAddr,
}

impl SinkProcess {
    fn start(env: &TestEnv, name: &str) -> SinkProcess {
        let ops = free_port();
        let log_path = std::env::temp_dir().join(format!("sink-test-{}-{name}.log", env.name));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale-sink"))
            .arg("run")
            .env("DATABASE_URL", &env.db_url)
            .env("KAFKA_BROKERS", brokers())
            .env("KAFKA_TOPIC", &env.topic)
            .env("KAFKA_DLQ_TOPIC", &env.dlq)
            .env("KAFKA_GROUP", &env.group)
            .env("DATA_PLATFORM_URL", "http://127.0.0.1:9/events")
            .env("SINK_LISTEN_ADDR", ops.to_string())
            .env("SINK_NO_DELIVERY", "true")
            .env("SINK_GAUGES_INTERVAL_MS", "200")
            .env("SINK_STALL_BACKOFF_BASE_MS", "100")
            .env("SINK_STALL_BACKOFF_CAP_MS", "500")
            .env("RUST_LOG", "flashsale_sink=info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sink binary starts");
        SinkProcess { child, ops }
    }

    async fn metrics(&self) -> String {
        metrics_text(self.ops).await
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Throughput probe (not part of the suite): `cargo test -p flashsale-sink --release --test sink_e2e
/// throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let env = TestEnv::new(6).await;
    let p = producer();
    const ORDERS: i64 = 3000;
    produce_event(&p, &env.topic, &member_registered(1)).await;
    produce_event(
        &p,
        &env.topic,
        &points_charged(1, 1_000_000_000, 1_000_000_000),
    )
    .await;
    produce_event(&p, &env.topic, &product_created(1, 100, 1_000_000)).await;
    let mut msgs = Vec::new();
    for i in 0..ORDERS {
        let o = Order {
            id: i + 1,
            member_id: 1,
            items: vec![(1, 1, 100)],
            coupon: None,
        };
        for e in [o.reserved(), o.paid(0)] {
            msgs.push((e["aggregate"].as_str().unwrap().to_string(), e.to_string()));
        }
    }
    let futs: Vec<_> = msgs
        .iter()
        .map(|(k, v)| {
            p.send(
                rdkafka::producer::FutureRecord::to(&env.topic)
                    .key(k)
                    .payload(v),
                rdkafka::util::Timeout::After(Duration::from_secs(30)),
            )
        })
        .collect();
    let _ = futures::future::join_all(futs).await;
    let start = std::time::Instant::now();
    let sink = start_sink(env.config());
    env.wait_count(
        "SELECT COUNT(*) FROM processed_events",
        3 + 2 * ORDERS,
        Duration::from_secs(300),
    )
    .await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} events in {secs:.2} s (incl. group join): {:.0} events/s",
        3 + 2 * ORDERS,
        (3 + 2 * ORDERS) as f64 / secs
    );
    sink.stop().await.unwrap();
    env.cleanup().await;
}
