//! The db-lock baseline (HOT_PATH=db-lock) the benchmarks compare against: the same API over MySQL
//! row locks must also never over-issue or oversell, or the comparison means nothing.

use crate::common;

use common::spawn_app_with;
use flashsale::config::HotPathKind;
use futures::future::join_all;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn db_lock_baseline_keeps_the_same_promises() {
    let app = spawn_app_with(|s| s.hot_path = HotPathKind::DbLock).await;
    let coupon = app.create_coupon("FIXED", 100, 20).await;
    let product = app.create_product(500, 30).await;
    let members = app.seed_members(200, 10_000).await;

    let path = format!("/api/v1/coupons/{coupon}/issue");
    let issues = join_all(
        members
            .iter()
            .map(|(_, t)| app.post(&path, Some(t), None, json!({}))),
    )
    .await;
    assert_eq!(issues.iter().filter(|r| r.status == 201).count(), 20);
    assert!(issues
        .iter()
        .filter(|r| r.status != 201)
        .all(|r| r.code() == "COUPON_SOLD_OUT"));
    assert_eq!(
        app.get(&format!("/api/v1/coupons/{coupon}"), None)
            .await
            .json()["remaining"],
        0
    );

    let orders = join_all(
        members
            .iter()
            .map(|(_, t)| app.order(t, json!([{"product_id": product, "quantity": 1}]))),
    )
    .await;
    let created: Vec<(usize, i64)> = orders
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == 201)
        .map(|(i, r)| (i, r.json()["id"].as_i64().unwrap()))
        .collect();
    assert_eq!(created.len(), 30);
    assert_eq!(app.stock(product).await, 0);
    let (i, order) = created[0];
    let token = &members[i].1;
    let paid = app.pay(token, order, None).await;
    assert_eq!(paid.status, 200, "{}", paid.text);
    assert_eq!(paid.json()["status"], "PAID");
    assert_eq!(app.balance(token).await, 9_500);
    assert_eq!(
        app.pay(token, order, None).await.code(),
        "ORDER_NOT_PAYABLE"
    );
    let other = &members[(i + 1) % members.len()].1;
    assert_eq!(
        app.get(&format!("/api/v1/orders/{order}"), Some(other))
            .await
            .status,
        404
    );
    app.stop().await;
}
