//! Product sale rules (issue 11): the sale window and the per-member limit, checked in the step that
//! takes the stock, by Redis time; the engine's window cache; PATCH; the durable record.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{json, Value};

use crate::common::pipeline::{
    count, drain, kill9, platform, redis_now_ms, start_engine, start_sink, DRAIN,
};
use crate::common::{spawn_app, spawn_app_with, unique, Reply, TestApp};
use flashsale::idempotency::IdempotencyKey;

fn at(ms: i64) -> String {
    flashsale::state::rfc3339_ms(ms)
}

async fn create(app: &TestApp, stock: i64, rules: Value) -> i64 {
    let mut body = json!({"name": "Limited", "price": 10, "stock": stock});
    for (k, v) in rules.as_object().expect("rules object") {
        body[k] = v.clone();
    }
    let r = app.post("/api/v1/admin/products", None, None, body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json()["id"].as_i64().expect("id")
}

async fn patch(app: &TestApp, product: i64, body: Value) -> Reply {
    app.request(
        reqwest::Method::PATCH,
        &format!("/api/v1/admin/products/{product}"),
        None,
        None,
        Some(body.to_string()),
    )
    .await
}

async fn order_with_key(app: &TestApp, token: &str, key: &str, items: Value) -> Reply {
    app.post(
        "/api/v1/orders",
        Some(token),
        Some(key),
        json!({ "items": items }),
    )
    .await
}

async fn remaining(app: &TestApp, token: &str, product: i64) -> Value {
    app.get(&format!("/api/v1/products/{product}"), Some(token))
        .await
        .json()["remaining_allowance"]
        .clone()
}

async fn bought(app: &TestApp, product: i64, member: i64) -> Option<i64> {
    use fred::prelude::*;
    app.redis
        .hget(app.keys.product_bought(product), member)
        .await
        .expect("HGET")
}

/// Whether Redis keeps a result under this member's Idempotency-Key (a request Redis executed).
async fn has_record(app: &TestApp, member: i64, key: &str) -> bool {
    use fred::prelude::*;
    let record = IdempotencyKey::internal(key).record_key(&app.keys, member);
    app.redis.exists::<i64, _>(record).await.expect("EXISTS") == 1
}

fn assert_refused(reply: &Reply, code: &str) -> Value {
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert_eq!(reply.code(), code, "{}", reply.text);
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    reply.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_parallel_orders_of_one_member_get_exactly_the_limit() {
    let app = spawn_app().await;
    let product = create(&app, 100, json!({"per_member_limit": 2})).await;
    let (member, token) = app.member(0).await;
    let keys: Vec<String> = (0..20).map(|_| unique("k")).collect();
    let replies = join_all(keys.iter().map(|key| {
        order_with_key(
            &app,
            &token,
            key,
            json!([{"product_id": product, "quantity": 1}]),
        )
    }))
    .await;
    let won: Vec<usize> = (0..20).filter(|i| replies[*i].status == 201).collect();
    assert_eq!(won.len(), 2, "exactly the limit is reserved");
    for (i, reply) in replies.iter().enumerate() {
        if reply.status != 201 {
            let problem = assert_refused(reply, "PURCHASE_LIMIT_EXCEEDED");
            assert_eq!(problem["remaining_allowance"], 0, "{}", reply.text);
            assert_eq!(problem["product_id"], product);
            // The refusal executed: it is the key's result, answered again on a retry.
            let again = order_with_key(
                &app,
                &token,
                &keys[i],
                json!([{"product_id": product, "quantity": 1}]),
            )
            .await;
            assert!(again.replayed());
            assert_eq!(again.text, reply.text);
        }
    }
    // Retries of the winners replay their orders and take nothing more.
    for i in &won {
        let again = order_with_key(
            &app,
            &token,
            &keys[*i],
            json!([{"product_id": product, "quantity": 1}]),
        )
        .await;
        assert_eq!(again.status, 201);
        assert!(again.replayed());
    }
    assert_eq!(app.stock(product).await, 98);
    assert_eq!(bought(&app, product, member).await, Some(2));
    assert_eq!(remaining(&app, &token, product).await, 0);
    // Without a token there is no member to count for; a bad token is refused, not ignored.
    let anonymous = app.get(&format!("/api/v1/products/{product}"), None).await;
    assert_eq!(anonymous.json()["per_member_limit"], 2);
    assert!(anonymous.json().get("remaining_allowance").is_none());
    let bad = app
        .get(&format!("/api/v1/products/{product}"), Some("not-a-token"))
        .await;
    assert_eq!(bad.status, 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multi_item_order_with_one_item_over_its_limit_reserves_nothing() {
    let app = spawn_app().await;
    let free = create(&app, 10, json!({})).await;
    let limited = create(&app, 10, json!({"per_member_limit": 1})).await;
    let (member, token) = app.member(0).await;
    let refused = app
        .order(
            &token,
            json!([{"product_id": free, "quantity": 1}, {"product_id": limited, "quantity": 2}]),
        )
        .await;
    let problem = assert_refused(&refused, "PURCHASE_LIMIT_EXCEEDED");
    assert_eq!(problem["product_id"], limited);
    assert_eq!(problem["remaining_allowance"], 1);
    assert_eq!(app.stock(free).await, 10);
    assert_eq!(app.stock(limited).await, 10);
    assert_eq!(bought(&app, free, member).await, None);
    assert_eq!(bought(&app, limited, member).await, None);
    let ok = app
        .order(
            &token,
            json!([{"product_id": free, "quantity": 1}, {"product_id": limited, "quantity": 1}]),
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    assert_eq!(app.stock(free).await, 9);
    assert_eq!(app.stock(limited).await, 9);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_and_expiry_give_the_allowance_back_exactly_once() {
    let app = spawn_app_with(|s| s.reservation_ttl_secs = 1).await;
    let product = create(&app, 100, json!({"per_member_limit": 2})).await;
    let (member, token) = app.member(1_000).await;
    let items = json!([{"product_id": product, "quantity": 2}]);

    // Cancel of a reserved order, twice: the units come back once.
    let first = app.order(&token, items.clone()).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_refused(
        &app.order(&token, json!([{"product_id": product, "quantity": 1}]))
            .await,
        "PURCHASE_LIMIT_EXCEEDED",
    );
    let id = first.json()["id"].as_i64().expect("id");
    let cancel = |id: i64| {
        let app = &app;
        let token = token.clone();
        async move {
            app.post(
                &format!("/api/v1/orders/{id}/cancel"),
                Some(&token),
                Some(&unique("k")),
                json!({}),
            )
            .await
        }
    };
    assert_eq!(cancel(id).await.status, 200);
    let _ = cancel(id).await;
    assert_eq!(remaining(&app, &token, product).await, 2);
    assert_eq!(bought(&app, product, member).await, None);

    // Cancel of a paid order: the same.
    let paid = app.order(&token, items.clone()).await;
    assert_eq!(paid.status, 201, "{}", paid.text);
    let id = paid.json()["id"].as_i64().expect("id");
    assert_eq!(app.pay(&token, id, None).await.status, 200);
    assert_eq!(remaining(&app, &token, product).await, 0);
    assert_eq!(cancel(id).await.status, 200);
    let _ = cancel(id).await;
    assert_eq!(remaining(&app, &token, product).await, 2);

    // Expiry (1 s): the sweep and the saga worker both run the release; it counts once.
    let expiring = app.order(&token, items.clone()).await;
    assert_eq!(expiring.status, 201, "{}", expiring.text);
    let id = expiring.json()["id"].as_i64().expect("id");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = app
            .get(&format!("/api/v1/orders/{id}"), Some(&token))
            .await
            .json()["status"]
            .clone();
        if status == "EXPIRED" && bought(&app, product, member).await.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the order never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the saga worker replay the release from the event too, then count again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bought(&app, product, member).await, None);
    assert_eq!(remaining(&app, &token, product).await, 2);
    assert_eq!(app.stock(product).await, 100);
    let again = app.order(&token, items).await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(bought(&app, product, member).await, Some(2));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_window_opens_at_its_millisecond_and_a_reservation_taken_in_time_is_paid_after_the_close(
) {
    let app = spawn_app().await;
    let (_, token) = app.member(1_000).await;
    let now = redis_now_ms(&app).await;
    let opens = now + 1_500;
    let product = create(&app, 10, json!({"sale_starts_at": at(opens)})).await;
    let view = app.get(&format!("/api/v1/products/{product}"), None).await;
    assert_eq!(view.json()["sale_starts_at"], at(opens));
    assert_eq!(view.json()["sale_ends_at"], Value::Null);
    let before = app
        .order(&token, json!([{"product_id": product, "quantity": 1}]))
        .await;
    let problem = assert_refused(&before, "SALE_NOT_STARTED");
    assert_eq!(problem["sale_starts_at"], at(opens));
    // After the opening by Redis's clock the engine's cached window lets the order through.
    while redis_now_ms(&app).await < opens {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open = app
        .order(&token, json!([{"product_id": product, "quantity": 1}]))
        .await;
    assert_eq!(open.status, 201, "{}", open.text);

    // The opening millisecond itself is open: a window that opens "now" by Redis's clock admits the
    // next order at once.
    let edge = create(
        &app,
        10,
        json!({"sale_starts_at": at(redis_now_ms(&app).await)}),
    )
    .await;
    let at_edge = app
        .order(&token, json!([{"product_id": edge, "quantity": 1}]))
        .await;
    assert_eq!(at_edge.status, 201, "{}", at_edge.text);

    // Close the first sale; the reservation taken while it was open is still paid.
    let closes = redis_now_ms(&app).await + 200;
    let closed = patch(&app, product, json!({"sale_ends_at": at(closes)})).await;
    assert_eq!(closed.status, 200, "{}", closed.text);
    while redis_now_ms(&app).await < closes {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = app
        .order(&token, json!([{"product_id": product, "quantity": 1}]))
        .await;
    let problem = assert_refused(&after, "SALE_ENDED");
    assert_eq!(problem["sale_ends_at"], at(closes));
    let order = open.json()["id"].as_i64().expect("id");
    let paid = app.pay(&token, order, None).await;
    assert_eq!(paid.status, 200, "{}", paid.text);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_changed_during_a_sale_apply_to_the_next_order() {
    let app = spawn_app().await;
    let product = create(&app, 100, json!({"per_member_limit": 3})).await;
    let (_, token) = app.member(0).await;
    let one = json!([{"product_id": product, "quantity": 1}]);
    for _ in 0..2 {
        assert_eq!(app.order(&token, one.clone()).await.status, 201);
    }
    assert_eq!(remaining(&app, &token, product).await, 1);
    let events = app.outbox_count("product.rules_changed").await;

    // Lowered below what the member holds: nothing more, nothing taken back.
    let lowered = patch(&app, product, json!({"per_member_limit": 1})).await;
    assert_eq!(lowered.status, 200, "{}", lowered.text);
    assert_eq!(lowered.json()["per_member_limit"], 1);
    assert_eq!(remaining(&app, &token, product).await, 0);
    assert_eq!(
        assert_refused(
            &app.order(&token, one.clone()).await,
            "PURCHASE_LIMIT_EXCEEDED"
        )["remaining_allowance"],
        0
    );
    // The same PATCH again changes nothing and is no event.
    assert_eq!(
        patch(&app, product, json!({"per_member_limit": 1}))
            .await
            .status,
        200
    );
    assert_eq!(app.outbox_count("product.rules_changed").await, events + 1);
    // Cleared: no limit.
    let cleared = patch(&app, product, json!({"per_member_limit": null})).await;
    assert_eq!(cleared.json()["per_member_limit"], Value::Null);
    assert_eq!(app.order(&token, one.clone()).await.status, 201);
    assert!(app
        .get(&format!("/api/v1/products/{product}"), Some(&token))
        .await
        .json()
        .get("remaining_allowance")
        .is_none());
    // A window moved into the future closes the sale again.
    let opens = redis_now_ms(&app).await + 60_000;
    assert_eq!(
        patch(&app, product, json!({"sale_starts_at": at(opens)}))
            .await
            .status,
        200
    );
    assert_refused(&app.order(&token, one.clone()).await, "SALE_NOT_STARTED");
    assert_eq!(app.outbox_count("product.rules_changed").await, events + 3);
    // Bad patches: a window that closes before it opens (merged with the stored opening), an unknown
    // product, an unknown field, a limit of 0.
    let inverted = patch(&app, product, json!({"sale_ends_at": at(opens - 1)})).await;
    assert_eq!(inverted.status, 422, "{}", inverted.text);
    assert_eq!(inverted.code(), "VALIDATION_FAILED");
    assert_eq!(
        patch(&app, 987_654_321, json!({"per_member_limit": 2}))
            .await
            .status,
        404
    );
    assert_eq!(patch(&app, product, json!({"limit": 2})).await.status, 400);
    assert_eq!(patch(&app, product, json!([null, null])).await.status, 400);
    let zero = patch(&app, product, json!({"per_member_limit": 0})).await;
    assert_eq!(
        (zero.status, zero.code().as_str()),
        (422, "VALIDATION_FAILED")
    );
    let create_inverted = app
        .post(
            "/api/v1/admin/products",
            None,
            None,
            json!({"name": "x", "price": 1, "stock": 1, "sale_starts_at": at(opens), "sale_ends_at": at(opens)}),
        )
        .await;
    assert_eq!(create_inverted.status, 422, "{}", create_inverted.text);
    app.stop().await;
}

/// Sends `n` orders one after the other, each with its own key, and counts the keys Redis kept a
/// result for (the requests that reached Redis).
async fn crowd(app: &TestApp, member: i64, token: &str, product: i64, n: usize) -> usize {
    let mut recorded = 0;
    for _ in 0..n {
        let key = unique("k");
        let reply = order_with_key(
            app,
            token,
            &key,
            json!([{"product_id": product, "quantity": 1}]),
        )
        .await;
        assert_refused(&reply, "SALE_NOT_STARTED");
        if has_record(app, member, &key).await {
            recorded += 1;
        }
    }
    recorded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_crowd_before_the_opening_is_answered_without_redis() {
    let cached = spawn_app().await;
    let uncached = spawn_app_with(|s| s.sale_window_cache = false).await;
    for (app, expected) in [(&cached, 1), (&uncached, 30)] {
        let opens = redis_now_ms(app).await + 60_000;
        let product = create(app, 10, json!({"sale_starts_at": at(opens)})).await;
        let (member, token) = app.member(0).await;
        // Only the first refusal (which taught the engine the window) reached Redis.
        assert_eq!(crowd(app, member, &token, product, 30).await, expected);
    }
    cached.stop().await;
    uncached.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rules_change_on_one_engine_reaches_the_other_engines_cache() {
    let app = spawn_app().await;
    let (_engine, other) = start_engine(&app.settings.connections).await;
    let opens = redis_now_ms(&app).await + 60_000;
    let product = create(&app, 10, json!({"sale_starts_at": at(opens)})).await;
    let (member, token) = app.member(0).await;
    // This engine learns the window, then answers alone.
    assert_eq!(crowd(&app, member, &token, product, 3).await, 1);
    // The other engine opens the sale now.
    let opened = app
        .http
        .patch(format!("{other}/api/v1/admin/products/{product}"))
        .header("X-Admin-Key", crate::common::ADMIN_KEY)
        .header("content-type", "application/json")
        .body(json!({"sale_starts_at": null}).to_string())
        .send()
        .await
        .expect("patch sent");
    assert_eq!(opened.status(), 200);
    let changed = Instant::now();
    // This engine's next orders get through once the message arrives, well before the cached
    // window would expire on its own.
    loop {
        let reply = app
            .order(&token, json!([{"product_id": product, "quantity": 1}]))
            .await;
        if reply.status == 201 {
            break;
        }
        assert_refused(&reply, "SALE_NOT_STARTED");
        assert!(
            changed.elapsed() < flashsale::sale_windows::ENTRY_TTL - Duration::from_millis(500),
            "the change never reached this engine's cache"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sale_rules_reach_mysql_reconcile_and_survive_a_rebuild() {
    let app = spawn_app_with(|s| s.run_relay = true).await;
    let (url, _handle) = platform(0.0, 0).await;
    let mut sink = start_sink(&app.settings.connections, &url, &[]);
    let opens = redis_now_ms(&app).await - 1_000;
    let product = create(
        &app,
        50,
        json!({"sale_starts_at": at(opens), "per_member_limit": 3}),
    )
    .await;
    let members = app.seed_members(4, 1_000).await;
    for (i, (_, token)) in members.iter().enumerate() {
        let r = app
            .order(
                token,
                json!([{"product_id": product, "quantity": 1 + i % 3}]),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        if i == 1 {
            let id = r.json()["id"].as_i64().expect("id");
            assert_eq!(app.pay(token, id, None).await.status, 200);
        }
        if i == 3 {
            let id = r.json()["id"].as_i64().expect("id");
            let cancel = app
                .post(
                    &format!("/api/v1/orders/{id}/cancel"),
                    Some(token),
                    Some(&unique("k")),
                    json!({}),
                )
                .await;
            assert_eq!(cancel.status, 200);
        }
    }
    let ends = opens + 86_400_000;
    assert_eq!(
        patch(
            &app,
            product,
            json!({"sale_ends_at": at(ends), "per_member_limit": 2})
        )
        .await
        .status,
        200
    );
    let report = drain(&app, DRAIN).await;
    assert!(report.in_sync, "{report:?}");
    let columns = count(
        &app,
        &format!(
            "SELECT COUNT(*) FROM products WHERE id = {product} AND per_member_limit = 2 \
             AND sale_starts_at = '{}' AND sale_ends_at = '{}'",
            naive(opens),
            naive(ends)
        ),
    )
    .await;
    assert_eq!(columns, 1, "MySQL carries the rules");
    let path = format!("/api/v1/products/{product}");
    let mut before = Vec::new();
    for (_, token) in &members {
        before.push(app.get(&path, Some(token)).await.json());
    }

    // Redis lost and rebuilt from MySQL: the same rules and the same allowances.
    crate::common::cleanup_redis_keys(&app.settings.connections, &app.redis).await;
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
    for ((_, token), old) in members.iter().zip(&before) {
        assert_eq!(&app.get(&path, Some(token)).await.json(), old);
    }
    // Member 2 holds 3 units against a limit of 2 now: refused, allowance 0.
    let over = app
        .order(
            &members[2].1,
            json!([{"product_id": product, "quantity": 1}]),
        )
        .await;
    assert_eq!(
        assert_refused(&over, "PURCHASE_LIMIT_EXCEEDED")["remaining_allowance"],
        0
    );
    kill9(&mut sink);
    app.stop().await;
}

/// A MySQL DATETIME(3) literal of Unix ms.
fn naive(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("instant")
        .naive_utc()
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}
