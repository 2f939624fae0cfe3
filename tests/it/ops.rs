//! Operations hardening (issue 8 items 9 and 20): the expiry sweep survives a bad order, the admin
//! reconcile answers a bounded page, and the outbox backlog is counted from ids, not from XINFO lag.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::{CustomCommand, Value};
use serde_json::json;

use common::spawn_app_with;

async fn order_status(app: &common::TestApp, member: i64, order: i64) -> String {
    app.redis
        .hget::<Option<String>, _, _>(app.keys.order(member, order), "status")
        .await
        .expect("hget")
        .unwrap_or_default()
}

/// The value of an unlabelled counter or gauge in /metrics (0 when absent).
async fn metric(app: &common::TestApp, name: &str) -> f64 {
    app.get("/metrics", None)
        .await
        .text
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The partition whose outbox the backlog tests write to (the others stay empty).
fn p0() -> flashsale::partition::Partition {
    flashsale::partition::Partition::from_index(0).expect("partition 0")
}

/// XREADGROUP's answer: stream -> [(entry id, fields)].
type StreamRead = HashMap<String, Vec<(String, HashMap<String, String>)>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_order_does_not_stop_the_expiry_sweep() {
    let app = spawn_app_with(|s| s.reservation_ttl_secs = 1).await;
    let product = app.create_product(100, 10).await;
    let (member, token) = app.member(10_000).await;
    let partition = flashsale::partition::Partition::of_id(member);
    let mut orders = Vec::new();
    for _ in 0..5 {
        let r = app
            .order(&token, json!([{"product_id": product, "quantity": 1}]))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        orders.push(r.json()["id"].as_i64().expect("order id"));
    }
    let (unparsable, broken_expiry) = (orders[0], orders[1]);
    let healthy = &orders[2..];
    // One order whose items the engine cannot parse, one whose script fails (no number to compare),
    // both first in the queue so that every sweep meets them before the healthy ones.
    let _: () = app
        .redis
        .hset(app.keys.order(member, unparsable), ("items", "{not json"))
        .await
        .unwrap();
    let _: () = app
        .redis
        .hset(
            app.keys.order(member, broken_expiry),
            ("expires_at_ms", "soon"),
        )
        .await
        .unwrap();
    for (score, id) in [(1.0, unparsable), (2.0, broken_expiry)] {
        let _: () = app
            .redis
            .zadd(
                app.keys.reservations(partition),
                None,
                None,
                false,
                false,
                (score, id.to_string()),
            )
            .await
            .unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut expired = 0;
        for id in healthy {
            if order_status(&app, member, *id).await == "EXPIRED" {
                expired += 1;
            }
        }
        if expired == healthy.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the healthy reservations never expired behind the corrupt ones ({expired} of {})",
            healthy.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.stock(product).await,
        8,
        "the three healthy units return"
    );
    // The corrupt ones stay reserved and queued (retried later), and were counted.
    for id in [unparsable, broken_expiry] {
        assert_eq!(order_status(&app, member, id).await, "RESERVED");
        let score: Option<f64> = app
            .redis
            .zscore(app.keys.reservations(partition), id.to_string())
            .await
            .unwrap();
        assert!(
            score.is_some_and(|s| s > 2.0),
            "order {id} moved back in the queue"
        );
    }
    assert!(metric(&app, "flashsale_expiry_skipped_total").await >= 2.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_reconcile_answers_a_bounded_page_and_a_cursor() {
    let app = spawn_app_with(|_| {}).await;
    // The relay is off: the product lives only in Redis, the one drift to find.
    let product = app.create_product(100, 10).await;
    // 12,000 products in both stores, alike: rows to compare in MySQL and keys to look at in Redis.
    let base = flashsale::ids::compose(flashsale::ids::EPOCH_MS + 1_000, 0, 0).expect("id");
    let ids: Vec<i64> = (0..12_000).map(|i| base + i * 64).collect();
    for chunk in ids.chunks(1000) {
        let sql = format!(
            "INSERT INTO products (id, name, price, stock, created_at) VALUES {}",
            vec!["(?, 'bulk', 100, 7, NOW(3))"; chunk.len()].join(",")
        );
        let mut insert = sqlx::query(&sql);
        for id in chunk {
            insert = insert.bind(*id);
        }
        insert.execute(&app.state.db).await.expect("insert");
        let pipeline = app.redis.next().pipeline();
        for id in chunk {
            let _: () = pipeline
                .hset(app.keys.product(*id), ("stock", "7"))
                .await
                .expect("queued");
        }
        let _: Vec<i64> = pipeline.all().await.expect("hset");
    }

    let first = app.get("/api/v1/admin/reconcile", None).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let page = first.json();
    assert_eq!(page["cursor"], "product:0");
    assert!(page["checked"].as_i64().unwrap() <= 1000, "{page}");
    assert!(page["next_cursor"].is_string(), "more to compare: {page}");
    // The relay is off: the product.created event is still in the outbox.
    assert_eq!(page["pending_events"], 1);

    // Walk every page to the end: the union finds exactly the one drift.
    let mut drift = Vec::new();
    let mut cursor = None::<String>;
    let mut pages = 0;
    let mut checked = 0;
    loop {
        let path = match &cursor {
            None => "/api/v1/admin/reconcile?limit=5000".to_string(),
            Some(c) => format!("/api/v1/admin/reconcile?limit=5000&cursor={c}"),
        };
        let r = app.get(&path, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let page = r.json();
        // Rows: at most the limit; keys: about it (SCAN's COUNT is a hint, whole buckets come back).
        assert!(page["checked"].as_i64().unwrap() <= 2 * 5000, "{page}");
        checked += page["checked"].as_i64().unwrap();
        drift.extend(page["drift"].as_array().unwrap().iter().cloned());
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    // 12,000 MySQL rows, then as many Redis keys, 5000 at a time.
    assert!(pages >= 4, "{pages} pages");
    assert!(checked >= 24_000, "{checked}");
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0]["entity"], "product_stock");
    assert_eq!(drift[0]["id"], product);
    assert_eq!(drift[0]["redis"], 10);
    assert_eq!(drift[0]["mysql"], serde_json::Value::Null);

    // The full scan (`flashsale reconcile`) agrees.
    let full = flashsale::pipeline::reconcile::reconcile(
        &app.redis,
        &app.state.db,
        &app.keys,
        &app.settings.connections,
    )
    .await
    .unwrap();
    assert!(!full.in_sync);
    assert_eq!(full.drift.len(), 1);

    for bad in [
        "?cursor=nonsense",
        "?cursor=order:-4",
        "?limit=0",
        "?limit=5001",
    ] {
        let r = app
            .get(&format!("/api/v1/admin/reconcile{bad}"), None)
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (422, "VALIDATION_FAILED"),
            "{bad}"
        );
    }
    app.stop().await;
}

async fn xgroup_setid(app: &common::TestApp, id: &str, entries_read: i64) {
    let _: Value = app
        .redis
        .next()
        .custom(
            CustomCommand::new_static("XGROUP", None, false),
            vec![
                "SETID".to_string(),
                app.keys.outbox(p0()),
                flashsale::app::RELAY_GROUP.to_string(),
                id.to_string(),
                "ENTRIESREAD".to_string(),
                entries_read.to_string(),
            ],
        )
        .await
        .expect("XGROUP SETID");
}

async fn read_as_relay(app: &common::TestApp, count: u64) -> Vec<String> {
    let read: StreamRead = app
        .redis
        .next()
        .xreadgroup_map(
            flashsale::app::RELAY_GROUP,
            "test-relay",
            Some(count),
            None,
            false,
            app.keys.outbox(p0()),
            ">",
        )
        .await
        .expect("xreadgroup");
    read.into_values().flatten().map(|(id, _)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_backlog_is_counted_from_ids_when_xinfo_lag_is_wrong() {
    let app = spawn_app_with(|s| s.run_relay = false).await;
    let backlog = || async {
        flashsale::pipeline::relay::outbox_backlog(app.redis.next(), &app.keys)
            .await
            .expect("backlog")
            .1
    };
    for i in 0..20 {
        let _: String = app
            .redis
            .xadd(app.keys.outbox(p0()), false, None::<()>, "*", ("n", i))
            .await
            .unwrap();
    }
    assert_eq!(backlog().await, 20, "nothing read yet");
    let read = read_as_relay(&app, 20).await;
    assert_eq!(read.len(), 20);
    let _: i64 = app
        .redis
        .xack(
            app.keys.outbox(p0()),
            flashsale::app::RELAY_GROUP,
            read[..15].to_vec(),
        )
        .await
        .unwrap();
    for i in 0..7 {
        let _: String = app
            .redis
            .xadd(app.keys.outbox(p0()), false, None::<()>, "*", ("n", i))
            .await
            .unwrap();
    }
    assert_eq!(backlog().await, 5 + 7, "5 pending + 7 never read");

    // What an AOF reload can leave behind: a group whose entries-read no longer matches its
    // last-delivered id, so XINFO GROUPS reports a lag that never goes away.
    xgroup_setid(&app, read.last().unwrap(), 0).await;
    assert_eq!(backlog().await, 12, "XINFO lag ignored");

    // Everything forwarded: no backlog, whatever XINFO says.
    let rest = read_as_relay(&app, 100).await;
    assert_eq!(rest.len(), 7);
    let all: Vec<String> = read[15..].iter().cloned().chain(rest.clone()).collect();
    let _: i64 = app
        .redis
        .xack(app.keys.outbox(p0()), flashsale::app::RELAY_GROUP, all)
        .await
        .unwrap();
    xgroup_setid(&app, rest.last().unwrap(), 1).await;
    assert_eq!(backlog().await, 0);

    // Larger than one page on each side of the last-delivered id: still exact.
    for i in 0..2_500 {
        let _: String = app
            .redis
            .xadd(app.keys.outbox(p0()), false, None::<()>, "*", ("n", i))
            .await
            .unwrap();
    }
    let read = read_as_relay(&app, 1_200).await;
    assert_eq!(read.len(), 1_200);
    assert_eq!(backlog().await, 2_500);
    let _: i64 = app
        .redis
        .xack(
            app.keys.outbox(p0()),
            flashsale::app::RELAY_GROUP,
            read[..1_100].to_vec(),
        )
        .await
        .unwrap();
    xgroup_setid(&app, read.last().unwrap(), 0).await;
    assert_eq!(backlog().await, 100 + 1_300);
    app.stop().await;
}
