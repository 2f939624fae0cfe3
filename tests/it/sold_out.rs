//! Sold-out markers (issue 10): the engine answers the herd after a sell-out without Redis, never
//! grants, never outlives the stock (restock, cancel and quantity add on ANOTHER engine clear it),
//! and never stores its refusal under an Idempotency-Key.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fred::prelude::*;
use futures::future::join_all;
use serde_json::{json, Value};

use crate::common::pipeline::{drain, kill9, platform, start_engine, start_sink, DRAIN};
use crate::common::{spawn_app, spawn_app_with, unique, Reply, TestApp};
use flashsale::sold_out::Item;

/// A marker TTL no test waits out: only the invalidation message can clear a marker.
const LONG_TTL_MS: u64 = 120_000;
/// How long the other engine's message may take to arrive (a test bound, not a benchmark).
const MESSAGE_BOUND: Duration = Duration::from_secs(5);

fn assert_problem(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.code(), code, "{}", reply.text);
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
}

async fn issue(app: &TestApp, coupon: i64, token: &str, key: Option<&str>) -> Reply {
    app.post(
        &format!("/api/v1/coupons/{coupon}/issue"),
        Some(token),
        key,
        json!({}),
    )
    .await
}

async fn order_with_key(app: &TestApp, token: &str, key: &str, product: i64, qty: i64) -> Reply {
    app.post(
        "/api/v1/orders",
        Some(token),
        Some(key),
        json!({"items": [{"product_id": product, "quantity": qty}]}),
    )
    .await
}

async fn admin_post(base: &str, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("X-Admin-Key", crate::common::ADMIN_KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("admin request sent")
}

fn marked(app: &TestApp, item: Item, quantity: i64) -> bool {
    app.state.caches.sold_out.refuses(item, quantity)
}

/// The marker hits this process counted so far (the recorder is shared by the tests in this binary,
/// so callers compare before and after).
async fn marker_hits(app: &TestApp, kind: &str) -> f64 {
    let text = app.get("/metrics", None).await.text;
    let prefix = format!("flashsale_soldout_marker_hits_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Retries `attempt` until it answers `granted` (true), failing after MESSAGE_BOUND.
async fn granted_within_bound<F, Fut>(what: &str, mut attempt: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    let mut n = 0;
    while !attempt(n).await {
        assert!(
            started.elapsed() < MESSAGE_BOUND,
            "{what}: the other engine's change never cleared this engine's marker"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restock_on_another_engine_clears_the_marker_of_this_one() {
    let app = spawn_app_with(|s| s.sold_out_marker_ttl_ms = LONG_TTL_MS).await;
    let (_engine, other) = start_engine(&app.settings.connections).await;
    let members = app.seed_members(8, 1_000_000).await;

    // A coupon sold out through this engine, its marker set by Redis's refusal.
    let coupon = app.create_coupon("FIXED", 100, 1).await;
    assert_eq!(issue(&app, coupon, &members[0].1, None).await.status, 201);
    assert_problem(
        &issue(&app, coupon, &members[1].1, None).await,
        409,
        "COUPON_SOLD_OUT",
    );
    assert!(marked(&app, Item::Coupon(coupon), 1));
    let hits = marker_hits(&app, "coupon").await;
    let refused = issue(&app, coupon, &members[2].1, None).await;
    assert_problem(&refused, 409, "COUPON_SOLD_OUT");
    assert_eq!(refused.json()["detail"], "no coupons left");
    assert!(marker_hits(&app, "coupon").await >= hits + 1.0);

    // The other engine releases one more; this engine grants it.
    let added = admin_post(
        &other,
        &format!("/api/v1/admin/coupons/{coupon}/quantity"),
        json!({"add": 1}),
    )
    .await;
    assert_eq!(added.status(), 200);
    let view: Value = added.json().await.expect("coupon view");
    assert_eq!(
        (view["total_quantity"].as_i64(), view["remaining"].as_i64()),
        (Some(2), Some(1))
    );
    granted_within_bound("coupon quantity add", |_| async {
        let r = issue(&app, coupon, &members[2].1, None).await;
        if r.status != 201 {
            assert_problem(&r, 409, "COUPON_SOLD_OUT");
        }
        r.status == 201
    })
    .await;

    // A product sold out through this engine.
    let product = app.create_product(10, 1).await;
    let first = order_with_key(&app, &members[0].1, &unique("k"), product, 1).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let order = first.json()["id"].as_i64().expect("order id");
    assert_problem(
        &order_with_key(&app, &members[1].1, &unique("k"), product, 1).await,
        409,
        "OUT_OF_STOCK",
    );
    assert!(marked(&app, Item::Product(product), 1));
    let refused = order_with_key(&app, &members[1].1, &unique("k"), product, 1).await;
    assert_problem(&refused, 409, "OUT_OF_STOCK");
    assert_eq!(
        refused.json()["detail"],
        format!("not enough stock for product {product}")
    );

    // Restocked on the other engine: this one sells the unit.
    let restocked = admin_post(
        &other,
        &format!("/api/v1/admin/products/{product}/stock"),
        json!({"add": 1}),
    )
    .await;
    assert_eq!(restocked.status(), 200);
    granted_within_bound("stock add", |_| async {
        let r = order_with_key(&app, &members[1].1, &unique("k"), product, 1).await;
        if r.status != 201 {
            assert_problem(&r, 409, "OUT_OF_STOCK");
        }
        r.status == 201
    })
    .await;

    // Sold out again; the first order is cancelled on the other engine: its unit comes back.
    assert_problem(
        &order_with_key(&app, &members[2].1, &unique("k"), product, 1).await,
        409,
        "OUT_OF_STOCK",
    );
    assert!(marked(&app, Item::Product(product), 1));
    let cancelled = reqwest::Client::new()
        .post(format!("{other}/api/v1/orders/{order}/cancel"))
        .bearer_auth(&members[0].1)
        .header("Idempotency-Key", unique("k"))
        .send()
        .await
        .expect("cancel sent");
    assert_eq!(cancelled.status(), 200);
    granted_within_bound("cancel", |_| async {
        let r = order_with_key(&app, &members[2].1, &unique("k"), product, 1).await;
        if r.status != 201 {
            assert_problem(&r, 409, "OUT_OF_STOCK");
        }
        r.status == 201
    })
    .await;
    assert_eq!(app.stock(product).await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_refused_by_a_marker_executes_after_a_restock() {
    let app = spawn_app_with(|s| s.sold_out_marker_ttl_ms = LONG_TTL_MS).await;
    let members = app.seed_members(4, 1_000_000).await;

    let coupon = app.create_coupon("FIXED", 100, 1).await;
    assert_eq!(issue(&app, coupon, &members[0].1, None).await.status, 201);
    assert_problem(
        &issue(&app, coupon, &members[1].1, None).await,
        409,
        "COUPON_SOLD_OUT",
    );
    let key = unique("k");
    assert_problem(
        &issue(&app, coupon, &members[2].1, Some(&key)).await,
        409,
        "COUPON_SOLD_OUT",
    );
    let added = app
        .post(
            &format!("/api/v1/admin/coupons/{coupon}/quantity"),
            None,
            None,
            json!({"add": 1}),
        )
        .await;
    assert_eq!(added.status, 200, "{}", added.text);
    let again = issue(&app, coupon, &members[2].1, Some(&key)).await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert!(!again.replayed());

    let product = app.create_product(10, 1).await;
    let sold = order_with_key(&app, &members[0].1, &unique("k"), product, 1).await;
    assert_eq!(sold.status, 201, "{}", sold.text);
    assert_problem(
        &order_with_key(&app, &members[1].1, &unique("k"), product, 1).await,
        409,
        "OUT_OF_STOCK",
    );
    let key = unique("k");
    assert_problem(
        &order_with_key(&app, &members[2].1, &key, product, 1).await,
        409,
        "OUT_OF_STOCK",
    );
    let restocked = app
        .post(
            &format!("/api/v1/admin/products/{product}/stock"),
            None,
            None,
            json!({"add": 1}),
        )
        .await;
    assert_eq!(restocked.status, 200, "{}", restocked.text);
    let again = order_with_key(&app, &members[2].1, &key, product, 1).await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert!(!again.replayed());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_of_a_request_that_executed_gets_its_answer_not_the_marker() {
    let app = spawn_app_with(|s| s.sold_out_marker_ttl_ms = LONG_TTL_MS).await;
    let members = app.seed_members(3, 1_000_000).await;

    let coupon = app.create_coupon("FIXED", 100, 1).await;
    let key = unique("k");
    let first = issue(&app, coupon, &members[0].1, Some(&key)).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_problem(
        &issue(&app, coupon, &members[1].1, None).await,
        409,
        "COUPON_SOLD_OUT",
    );
    assert!(marked(&app, Item::Coupon(coupon), 1));
    let retry = issue(&app, coupon, &members[0].1, Some(&key)).await;
    assert_eq!(retry.status, 201, "{}", retry.text);
    assert!(retry.replayed());
    assert_eq!(retry.json(), first.json());

    let product = app.create_product(10, 1).await;
    let key = unique("k");
    let first = order_with_key(&app, &members[0].1, &key, product, 1).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_problem(
        &order_with_key(&app, &members[1].1, &unique("k"), product, 1).await,
        409,
        "OUT_OF_STOCK",
    );
    assert!(marked(&app, Item::Product(product), 1));
    let retry = order_with_key(&app, &members[0].1, &key, product, 1).await;
    assert_eq!(retry.status, 201, "{}", retry.text);
    assert!(retry.replayed());
    assert_eq!(retry.json()["id"], first.json()["id"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_marker_refuses_only_more_than_redis_had_and_multi_item_orders_go_to_redis() {
    let app = spawn_app_with(|s| s.sold_out_marker_ttl_ms = LONG_TTL_MS).await;
    let members = app.seed_members(3, 1_000_000).await;
    let product = app.create_product(10, 3).await;
    let other = app.create_product(10, 5).await;
    assert_problem(
        &order_with_key(&app, &members[0].1, &unique("k"), product, 5).await,
        409,
        "OUT_OF_STOCK",
    );
    assert!(marked(&app, Item::Product(product), 4));
    assert!(!marked(&app, Item::Product(product), 3));
    let fits = order_with_key(&app, &members[1].1, &unique("k"), product, 3).await;
    assert_eq!(fits.status, 201, "{}", fits.text);
    // Now out: the order for one more is refused by Redis, which also sets the marker to 0.
    assert_problem(
        &order_with_key(&app, &members[2].1, &unique("k"), product, 1).await,
        409,
        "OUT_OF_STOCK",
    );
    assert!(marked(&app, Item::Product(product), 1));
    // A two-product order is Redis's to answer (its refusal names every short product).
    let both = app
        .post(
            "/api/v1/orders",
            Some(&members[2].1),
            Some(&unique("k")),
            json!({"items": [{"product_id": other, "quantity": 1}, {"product_id": product, "quantity": 1}]}),
        )
        .await;
    assert_problem(&both, 409, "OUT_OF_STOCK");
    assert_eq!(app.stock(other).await, 5, "nothing reserved");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switched_off_every_request_reaches_redis() {
    let app = spawn_app_with(|s| s.sold_out_markers = false).await;
    let members = app.seed_members(3, 1_000_000).await;
    let coupon = app.create_coupon("FIXED", 100, 1).await;
    assert_eq!(issue(&app, coupon, &members[0].1, None).await.status, 201);
    for (_, token) in &members[1..] {
        assert_problem(
            &issue(&app, coupon, token, None).await,
            409,
            "COUPON_SOLD_OUT",
        );
    }
    assert!(!marked(&app, Item::Coupon(coupon), 1));
    // A holder asking again hears Redis's own precedence: ALREADY_ISSUED before SOLD_OUT.
    assert_problem(
        &issue(&app, coupon, &members[0].1, None).await,
        409,
        "COUPON_ALREADY_ISSUED",
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coupon_quantity_add_is_validated_and_recorded() {
    let app = spawn_app().await;
    let coupon = app.create_coupon("FIXED", 100, 2).await;
    let path = format!("/api/v1/admin/coupons/{coupon}/quantity");
    for (body, status) in [
        (json!({"add": 0}), 422),
        (json!({"add": 10_000_000}), 422),
        (json!({"add": "x"}), 400),
        (json!({}), 400),
    ] {
        let r = app.post(&path, None, None, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
    }
    let missing = app
        .post(
            "/api/v1/admin/coupons/999999999/quantity",
            None,
            None,
            json!({"add": 1}),
        )
        .await;
    assert_problem(&missing, 404, "NOT_FOUND");
    let r = app.post(&path, None, None, json!({"add": 3})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let view = app
        .get(&format!("/api/v1/coupons/{coupon}"), None)
        .await
        .json();
    assert_eq!(view["total_quantity"], 5);
    assert_eq!(view["remaining"], 5);
    assert_eq!(app.outbox_count("coupon.quantity_added").await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rushes_with_markers_on_keep_every_invariant_and_reconcile() {
    let app = spawn_app_with(|s| {
        s.run_relay = true;
        s.sold_out_marker_ttl_ms = LONG_TTL_MS;
    })
    .await;
    let (url, _platform) = platform(0.0, 0).await;
    let mut sink = start_sink(&app.settings.connections, &url, &[]);
    let members = app.seed_members(300, 1_000_000).await;

    // A coupon rush in two waves: the second comes after the sell-out, mostly answered by the marker.
    let coupon = app.create_coupon("FIXED", 100, 40).await;
    let hits = marker_hits(&app, "coupon").await;
    let mut granted = 0;
    for _ in 0..2 {
        let replies = join_all(
            members
                .iter()
                .map(|(_, token)| issue(&app, coupon, token, None)),
        )
        .await;
        for r in &replies {
            match r.status {
                201 => granted += 1,
                _ => assert!(
                    ["COUPON_SOLD_OUT", "COUPON_ALREADY_ISSUED"].contains(&r.code().as_str()),
                    "{}",
                    r.text
                ),
            }
        }
    }
    assert_eq!(granted, 40, "exactly the quantity");
    assert!(
        marker_hits(&app, "coupon").await > hits,
        "the marker answered"
    );
    let holders: Vec<String> = app
        .redis
        .hkeys(app.keys.coupon_holders(coupon))
        .await
        .expect("holders");
    assert_eq!(
        holders.iter().collect::<HashSet<_>>().len(),
        40,
        "none twice"
    );
    let view = app
        .get(&format!("/api/v1/coupons/{coupon}"), None)
        .await
        .json();
    assert_eq!(view["remaining"], 0);

    // A stock rush in two waves, one unit per order.
    let product = app.create_product(10, 30).await;
    let mut sold = 0;
    for _ in 0..2 {
        let replies = join_all(members.iter().map(|(_, token)| async {
            order_with_key(&app, token, &unique("k"), product, 1).await
        }))
        .await;
        for r in &replies {
            match r.status {
                201 => sold += 1,
                _ => assert_problem(r, 409, "OUT_OF_STOCK"),
            }
        }
    }
    assert_eq!(sold, 30, "sold + remaining = initial");
    assert_eq!(app.stock(product).await, 0, "never negative");

    let report = drain(&app, DRAIN).await;
    assert!(report.in_sync, "{report:?}");
    kill9(&mut sink);
    app.stop().await;
}
