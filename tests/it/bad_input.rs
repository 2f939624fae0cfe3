//! Bad input gets the right 4xx with a problem+json body, never a 5xx.

use crate::common;

use common::{spawn_app, JWT_SECRET};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx() {
    let app = spawn_app().await;
    let product = app.create_product(100, 10).await;
    let coupon = app.create_coupon("FIXED", 10, 10).await;
    let (_, token) = app.member(1000).await;
    use reqwest::Method as M;
    async fn send(
        app: &common::TestApp,
        token: &str,
        method: M,
        path: &str,
        body: &str,
    ) -> common::Reply {
        app.request(
            method,
            path,
            Some(token),
            Some(&common::unique("k")),
            Some(body.to_string()),
        )
        .await
    }
    macro_rules! raw {
        ($m:expr, $p:expr, $b:expr) => {
            send(&app, &token, $m, $p, $b)
        };
    }
    let cases: Vec<(common::Reply, u16, &str)> = vec![
        (raw!(M::POST, "/api/v1/orders", "{not json").await, 400, "INVALID_REQUEST"),
        (raw!(M::POST, "/api/v1/orders", r#"{"items":"nope"}"#).await, 400, "INVALID_REQUEST"),
        (raw!(M::POST, "/api/v1/orders", r#"{"items":[{"product_id":"1","quantity":1}]}"#).await, 400, "INVALID_REQUEST"),
        (raw!(M::POST, "/api/v1/orders", r#"{"items":[{"product_id":1,"quantity":1.5}]}"#).await, 400, "INVALID_REQUEST"),
        (raw!(M::POST, "/api/v1/orders", r#"{"items":[]}"#).await, 422, "VALIDATION_FAILED"),
        (raw!(M::POST, "/api/v1/orders", &format!(r#"{{"items":[{{"product_id":{product},"quantity":0}}]}}"#)).await, 422, "VALIDATION_FAILED"),
        (raw!(M::POST, "/api/v1/orders", &format!(r#"{{"items":[{{"product_id":{product},"quantity":-3}}]}}"#)).await, 422, "VALIDATION_FAILED"),
        (raw!(M::POST, "/api/v1/orders", &format!(r#"{{"items":[{{"product_id":{product},"quantity":99999999999999999999999}}]}}"#)).await, 422, "VALIDATION_FAILED"),
        (raw!(M::POST, "/api/v1/orders", &format!(r#"{{"items":[{}]}}"#, vec![format!(r#"{{"product_id":{product},"quantity":1}}"#); 21].join(","))).await, 422, "VALIDATION_FAILED"),
        (raw!(M::POST, "/api/v1/orders", r#"{"items":[{"product_id":424242,"quantity":1}]}"#).await, 404, "NOT_FOUND"),
        (raw!(M::POST, "/api/v1/me/points/charge", r#"{"amount":0}"#).await, 422, "VALIDATION_FAILED"),
        (raw!(M::POST, "/api/v1/me/points/charge", r#"{"amount":-5}"#).await, 422, "VALIDATION_FAILED"),
        (raw!(M::POST, "/api/v1/me/points/charge", r#"{"amount":1e300}"#).await, 422, "VALIDATION_FAILED"),
        (raw!(M::POST, "/api/v1/me/points/charge", r#"{"amount":"100"}"#).await, 400, "INVALID_REQUEST"),
        (raw!(M::POST, "/api/v1/me/points/charge", r#"{}"#).await, 400, "INVALID_REQUEST"),
        (raw!(M::POST, "/api/v1/orders/abc/pay", "{}").await, 400, "INVALID_REQUEST"),
        (raw!(M::POST, "/api/v1/orders/987654/pay", "{}").await, 404, "NOT_FOUND"),
        (raw!(M::POST, "/api/v1/orders/987654/cancel", "{}").await, 404, "NOT_FOUND"),
        (raw!(M::POST, "/api/v1/orders/1/pay", r#"{"coupon_id":-1}"#).await, 422, "VALIDATION_FAILED"),
        (raw!(M::POST, "/api/v1/coupons/987654/issue", "{}").await, 404, "NOT_FOUND"),
        (app.get("/api/v1/products/987654", None).await, 404, "NOT_FOUND"),
        (app.get("/api/v1/products/-1", None).await, 404, "NOT_FOUND"),
        (app.get("/api/v1/coupons/987654", None).await, 404, "NOT_FOUND"),
        (app.get("/api/v1/products?limit=1000", None).await, 422, "VALIDATION_FAILED"),
        (app.get("/api/v1/no/such/route", None).await, 404, "NOT_FOUND"),
        (app.post("/api/v1/members", None, None, json!({"email": "not-an-email", "password": "longenough", "name": "x"})).await, 422, "VALIDATION_FAILED"),
        (app.post("/api/v1/members", None, None, json!({"email": "a@b.co", "password": "short", "name": "x"})).await, 422, "VALIDATION_FAILED"),
        (app.post("/api/v1/members", None, None, json!({"email": "a@b.co", "password": "longenough", "name": ""})).await, 422, "VALIDATION_FAILED"),
        (app.post("/api/v1/admin/products", None, None, json!({"name": "x", "price": 0, "stock": 1})).await, 422, "VALIDATION_FAILED"),
        (app.post("/api/v1/admin/products", None, None, json!({"name": "x", "price": 10, "stock": -1})).await, 422, "VALIDATION_FAILED"),
        (app.post(&format!("/api/v1/admin/products/{product}/stock"), None, None, json!({"add": 0})).await, 422, "VALIDATION_FAILED"),
        (app.post("/api/v1/admin/products/987654/stock", None, None, json!({"add": 5})).await, 404, "NOT_FOUND"),
        (app.post("/api/v1/admin/coupons", None, None, json!({"name": "x", "discount_type": "BOGUS", "discount_value": 1, "total_quantity": 1, "valid_until": "2099-01-01T00:00:00Z"})).await, 422, "VALIDATION_FAILED"),
        (app.post("/api/v1/admin/coupons", None, None, json!({"name": "x", "discount_type": "PERCENT", "discount_value": 101, "total_quantity": 1, "valid_until": "2099-01-01T00:00:00Z"})).await, 422, "VALIDATION_FAILED"),
        (app.post("/api/v1/admin/coupons", None, None, json!({"name": "x", "discount_type": "FIXED", "discount_value": 1, "total_quantity": 1, "valid_until": "yesterday"})).await, 400, "INVALID_REQUEST"),
    ];
    for (i, (reply, status, code)) in cases.iter().enumerate() {
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (*status, *code),
            "case {i}: {}",
            reply.text
        );
        assert_eq!(
            reply
                .headers
                .get("content-type")
                .map(|v| v.to_str().unwrap_or_default()),
            Some("application/problem+json"),
            "case {i}"
        );
        let body = reply.json();
        for field in ["type", "title", "status", "detail", "code"] {
            assert!(!body[field].is_null(), "case {i} lacks {field}");
        }
    }

    // Oversize body -> 413.
    let huge = format!(
        r#"{{"items":[{{"product_id":1,"quantity":1}}],"pad":"{}"}}"#,
        "x".repeat(64 * 1024)
    );
    let r = app
        .request(
            M::POST,
            "/api/v1/orders",
            Some(&token),
            Some("big"),
            Some(huge),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text);
    // Refused before its body was read: the connection is not reused (the next request on it would
    // meet a broken pipe).
    assert_eq!(
        r.headers.get("connection").and_then(|v| v.to_str().ok()),
        Some("close")
    );

    // Tokens: missing, forged, expired, wrong audience -> 401.
    let now = chrono::Utc::now().timestamp() as u64;
    let sign = |secret: &[u8], exp: u64, aud: &str| {
        let claims = json!({"sub": "1", "iss": "flashsale", "aud": aud, "iat": now, "exp": exp});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let forged = sign(
        b"another-secret-another-secret-0123456",
        now + 600,
        "flashsale-api",
    );
    let expired = sign(JWT_SECRET.as_bytes(), now - 600, "flashsale-api");
    let wrong_aud = sign(JWT_SECRET.as_bytes(), now + 600, "elsewhere");
    for bad in [
        None,
        Some("garbage"),
        Some(forged.as_str()),
        Some(expired.as_str()),
        Some(wrong_aud.as_str()),
    ] {
        let r = app.get("/api/v1/me/points", bad).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "UNAUTHORIZED"),
            "{bad:?}"
        );
    }
    // Wrong admin key -> 401.
    let r = app
        .http
        .post(format!("{}/api/v1/admin/products", app.base))
        .header("X-Admin-Key", "wrong")
        .json(&json!({"name": "x", "price": 1, "stock": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .http
        .get(format!("{}/api/v1/admin/reconcile", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Nothing above changed the state.
    assert_eq!(app.stock(product).await, 10);
    assert_eq!(app.balance(&token).await, 1000);
    assert_eq!(
        app.get(&format!("/api/v1/coupons/{coupon}"), None)
            .await
            .json()["remaining"],
        10
    );
    app.stop().await;
}
