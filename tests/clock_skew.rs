//! Issue 8 item 5: no expiry or validity decision depends on the engine's clock. This binary skews the
//! engine clock of its own process (the hook is process-wide, hence a binary of its own) and checks that
//! the scripts still decide by Redis time: an expired order is not paid, an out-of-window coupon is not
//! issued.

// Its own test binary again: the clock hook is process-wide, and inside the shared `it` binary the
// skew leaked into tests running beside it (seen: the db-lock baseline's pay answered ORDER_EXPIRED
// while this test had the clock an hour ahead).
#[path = "it/common/mod.rs"]
mod common;

use std::time::Duration;

use common::spawn_app_with;
use fred::prelude::*;
use serde_json::json;

const HOUR_MS: i64 = 3_600_000;

async fn redis_now_ms(redis: &Pool) -> i64 {
    let t: Vec<i64> = redis
        .next()
        .custom(
            fred::types::CustomCommand::new_static("TIME", fred::types::ClusterHash::Random, false),
            Vec::<String>::new(),
        )
        .await
        .expect("TIME");
    t[0] * 1000 + t[1] / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_engine_clock_cannot_pay_an_expired_order_or_issue_an_inactive_coupon() {
    let app = spawn_app_with(|s| {
        s.reservation_ttl_secs = 1;
        s.expiry_interval_ms = 3_600_000; // no sweep: the pay script's own expiry check decides
    })
    .await;
    let product = app.create_product(100, 10).await;
    let (_, token) = app.member(10_000).await;
    // A coupon valid from 30 minutes to 2 hours from now (Redis time).
    let from = chrono::Utc::now() + chrono::Duration::minutes(30);
    let until = chrono::Utc::now() + chrono::Duration::hours(2);
    let r = app
        .post(
            "/api/v1/admin/coupons",
            None,
            None,
            json!({"name": "Later", "discount_type": "FIXED", "discount_value": 10, "total_quantity": 5,
                   "valid_from": from.to_rfc3339(), "valid_until": until.to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let coupon = r.json()["id"].as_i64().expect("coupon id");

    // An engine one hour ahead thinks the coupon is active: Redis time says it is not.
    flashsale::state::skew_engine_clock_for_tests(HOUR_MS);
    let r = app
        .post(
            &format!("/api/v1/coupons/{coupon}/issue"),
            Some(&token),
            None,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 422, "issued outside its window: {}", r.text);
    assert_eq!(r.code(), "COUPON_NOT_ACTIVE");

    // An engine one hour behind thinks a 1-second reservation is still live long after it expired.
    flashsale::state::skew_engine_clock_for_tests(-HOUR_MS);
    let order = app
        .order(&token, json!([{"product_id": product, "quantity": 1}]))
        .await;
    assert_eq!(order.status, 201, "{}", order.text);
    let order_id = order.json()["id"].as_i64().expect("order id");
    let expires_ms: i64 = app
        .redis
        .hget(app.keys.order(order_id), "expires_at_ms")
        .await
        .expect("expires_at_ms");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while redis_now_ms(&app.redis).await <= expires_ms {
        assert!(
            std::time::Instant::now() < deadline,
            "Redis time never passed the expiry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = app.pay(&token, order_id, None).await;
    flashsale::state::skew_engine_clock_for_tests(0);
    assert_eq!(r.status, 409, "paid an expired order: {}", r.text);
    assert_eq!(r.code(), "ORDER_EXPIRED");
    assert_eq!(app.balance(&token).await, 10_000);
    app.stop().await;
}
