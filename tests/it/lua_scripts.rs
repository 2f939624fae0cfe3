//! Every Lua script in lua/ run directly against the real Redis, for each return path its header names.
//! Each test owns a random key prefix and sets its state up through the scripts themselves; it checks the
//! state after, the outbox entries (one per effect, none for refusals and replays), and that a refused
//! call changed nothing but the idempotency record.

use crate::lua_support;

use flashsale::domain::{MAX_BALANCE, MAX_STOCK};
use flashsale::idempotency::RECORD_TTL_SECS;
use flashsale::orders::HOLD_MARGIN_MS;
use flashsale::partition::Partition;
use flashsale::popular::POPULAR_DAY_TTL_SECS;
use flashsale::scripts::calls::{OrderCancel, OrderExpire, OrderRefuse, OrderReserve, PricedItem};
use flashsale::scripts::ScriptReply;
use lua_support::*;
use serde_json::{json, Value as Json};

/// Expected times: scripts stamp Redis time, so the harness masks every RFC 3339 value (see TIME).
fn rfc(_ms: i64) -> String {
    TIME.into()
}

const M: i64 = 1; // the member most tests use
const M2: i64 = 2;

fn assert_replay(reply: &ScriptReply, status: u16, problem: bool, body: &str) {
    match reply {
        ScriptReply::Replay {
            status: s,
            problem: p,
            body: b,
            ..
        } if *s == status && *p == problem && b == body => {}
        other => panic!("expected replay {status} problem={problem} {body}, got {other:?}"),
    }
}

fn ok_raw(reply: &ScriptReply) -> String {
    match reply {
        ScriptReply::Ok { body, .. } => body.clone(),
        other => panic!("expected ok, got {other:?}"),
    }
}

/// The record a refusal leaves under its idempotency key.
async fn assert_problem_record(c: &Ctx, idem: &Idem, status: u16, code: &str) {
    let (rec, ttl) = c.record(idem).await;
    assert_eq!(rec["fp"], idem.fp);
    assert_eq!(rec["status"], status.to_string());
    assert_eq!(rec["kind"], "problem");
    assert_eq!(rec["body"], code);
    assert!(!rec["detail"].is_empty(), "problem record has a detail");
    assert!(ttl > 0 && ttl <= RECORD_TTL_SECS as i64, "record ttl {ttl}");
}

async fn assert_ok_record(c: &Ctx, idem: &Idem, status: u16, body: &str) {
    let (rec, ttl) = c.record(idem).await;
    assert_eq!(rec["fp"], idem.fp);
    assert_eq!(rec["status"], status.to_string());
    assert_eq!(rec["kind"], "ok");
    assert_eq!(rec["body"], body);
    assert_eq!(rec["detail"], "");
    assert!(
        ttl > RECORD_TTL_SECS as i64 - 60 && ttl <= RECORD_TTL_SECS as i64,
        "record ttl {ttl}"
    );
}

/// A full order snapshot as order events and bodies show it.
#[allow(clippy::too_many_arguments)]
fn order_json(
    id: i64,
    member: i64,
    status: &str,
    items: Json,
    total: i64,
    discount: i64,
    paid: i64,
    coupon: Option<i64>,
    expires_at: &str,
    created_at: &str,
    paid_at: Option<&str>,
    closed_at: Option<&str>,
) -> Json {
    json!({
        "id": id, "member_id": member, "status": status, "items": items,
        "total_amount": total, "discount_amount": discount, "paid_amount": paid,
        "coupon_id": coupon, "expires_at": expires_at, "created_at": created_at,
        "paid_at": paid_at, "closed_at": closed_at,
    })
}

// ------------------------------------------------------------------------------------------------
// member_signup
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn member_signup_creates_the_member_once_and_refuses_a_taken_email() {
    let c = Ctx::new().await;
    let t = clock();
    let e1 = ev();
    let reply = c.signup(7, "ann@example.test", "Ann", &e1, t).await;
    let body = ok_body(&reply, 201);
    assert_eq!(
        body,
        json!({"id": 7, "email": "ann@example.test", "name": "Ann"})
    );
    let h = c.hash(&c.k.member(7)).await;
    assert_eq!(h["id"], "7");
    assert_eq!(h["email"], "ann@example.test");
    assert_eq!(h["name"], "Ann");
    assert_eq!(h["password_hash"], PASSWORD_HASH);
    assert_eq!(h["balance"], "0");
    assert_eq!(h["created_at"], rfc(t));
    assert_eq!(h["create_event"], e1);
    let email_owner = c.get(&c.k.email("ann@example.test")).await;
    assert_eq!(email_owner.as_deref(), Some("7"));

    let events = c.events().await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (
            e.event_id.as_str(),
            e.kind.as_str(),
            e.aggregate.as_str(),
            e.at.as_str()
        ),
        (
            e1.as_str(),
            "member.registered",
            "member:7",
            rfc(t).as_str()
        )
    );
    assert_eq!(
        e.payload,
        json!({"member_id": 7, "email": "ann@example.test", "name": "Ann", "created_at": rfc(t)}),
        "no password hash in the event"
    );

    // The very same call resent: same answer, one effect.
    let before = c.dump().await;
    let again = c.signup(7, "ann@example.test", "Ann", &e1, t).await;
    assert_eq!(ok_raw(&again), ok_raw(&reply));
    assert_eq!(c.dump().await, before);

    // Another member id for the same email: refused, nothing written.
    let refused = c.signup(8, "ann@example.test", "Other", &ev(), t + 5).await;
    assert_refused(&refused, 409, "EMAIL_TAKEN");
    assert_eq!(c.dump().await, before);
    assert!(!c.exists(&c.k.member(8)).await);

    // Another call on the same member id (an id-sequence fault): refused, the member is not overwritten.
    let refused = c.signup(7, "bob@example.test", "Bob", &ev(), t + 6).await;
    assert_refused(&refused, 409, "CONFLICT");
    assert_eq!(c.dump().await, before);
    assert!(!c.exists(&c.k.email("bob@example.test")).await);
    c.cleanup().await;
}

/// The whole sign-up (claim, member, confirm) leaves no pending claim; a refused member step releases
/// its claim (the address key names the member or nobody, never a member that does not exist).
#[tokio::test]
async fn member_signup_saga_leaves_no_pending_claim() {
    let c = Ctx::new().await;
    let t = clock();
    ok_body(&c.signup(7, "ann@example.test", "Ann", &ev(), t).await, 201);
    assert!(c.pending_claims().await.is_empty());
    // A taken id (an id fault) with a new address: CONFLICT, and the new address is free again.
    assert_refused(
        &c.signup(7, "bob@example.test", "Bob", &ev(), t).await,
        409,
        "CONFLICT",
    );
    assert!(c.pending_claims().await.is_empty());
    assert!(!c.exists(&c.k.email("bob@example.test")).await);
    // The same taken id repeated with the member's own address: its claim is the member's, kept.
    assert_refused(
        &c.signup(7, "ann@example.test", "Ann", &ev(), t).await,
        409,
        "CONFLICT",
    );
    assert_eq!(
        c.get(&c.k.email("ann@example.test")).await.as_deref(),
        Some("7")
    );
    assert!(c.pending_claims().await.is_empty());
    ok_body(&c.signup(8, "bob@example.test", "Bob", &ev(), t).await, 201);
    c.cleanup().await;
}

// ------------------------------------------------------------------------------------------------
// email_claim / email_confirm / email_release / email_claims_due (sign-up steps, src/signup.rs)
// ------------------------------------------------------------------------------------------------

const ANN: &str = "ann@example.test";

#[tokio::test]
async fn email_claim_claims_once_replays_and_refuses_a_taken_address() {
    let c = Ctx::new().await;
    let before_ms = c.redis_ms().await;
    let claimed = c.claim(7, ANN, 30_000).await;
    assert_eq!(claimed[0], "claimed");
    let deadline = claimed[1].as_i64().expect("deadline");
    let after_ms = c.redis_ms().await;
    assert!(
        (before_ms + 30_000..=after_ms + 30_000).contains(&deadline),
        "deadline {deadline} is Redis time + TTL"
    );
    assert_eq!(c.get(&c.k.email(ANN)).await.as_deref(), Some("7"));
    let pending = c.pending_claims().await;
    assert_eq!(
        pending.keys().cloned().collect::<Vec<_>>(),
        [format!("7:{ANN}")]
    );
    let score: f64 = pending[&format!("7:{ANN}")].parse().expect("score");
    assert_eq!(score, deadline as f64, "scored by the deadline");
    assert!(c.events().await.is_empty(), "a claim is no event");

    // The same member id again (a resend): the first answer, nothing written, deadline unchanged.
    let before = c.dump().await;
    assert_eq!(c.claim(7, ANN, 60_000).await, claimed);
    assert_eq!(c.dump().await, before);
    // Another member id: taken while pending, nothing written.
    assert_eq!(c.claim(8, ANN, 30_000).await, json!(["taken"]));
    assert_eq!(c.dump().await, before);

    // Confirmed: out of the pending index, the key stays; confirming again changes nothing.
    assert_eq!(c.confirm_claim(7, ANN).await, "confirmed");
    assert!(c.pending_claims().await.is_empty());
    assert_eq!(c.get(&c.k.email(ANN)).await.as_deref(), Some("7"));
    let before = c.dump().await;
    assert_eq!(c.confirm_claim(7, ANN).await, "gone");
    // A confirmed claim: the same id answers `confirmed`, another is refused, a release leaves it.
    assert_eq!(c.claim(7, ANN, 30_000).await, json!(["confirmed"]));
    assert_eq!(c.claim(8, ANN, 30_000).await, json!(["taken"]));
    assert_eq!(c.release_claim(7, ANN, None).await, "confirmed");
    assert_eq!(c.release_claim(7, ANN, Some(0)).await, "confirmed");
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

#[tokio::test]
async fn member_signup_step_refuses_after_the_claim_deadline() {
    let c = Ctx::new().await;
    c.claim(7, ANN, 30_000).await;
    let before = c.dump().await;
    let now = c.redis_ms().await;
    // Past the deadline (by Redis time): retryable, nothing written.
    assert_refused(
        &c.member_step(7, ANN, &ev(), now - 1).await,
        503,
        "SERVICE_UNAVAILABLE",
    );
    assert!(!c.exists(&c.k.member(7)).await);
    assert_eq!(c.dump().await, before);
    // In time: the member and its event.
    let e = ev();
    let body = ok_body(&c.member_step(7, ANN, &e, now + 60_000).await, 201);
    assert_eq!(body, json!({"id": 7, "email": ANN, "name": "Ann"}));
    assert_eq!(c.field(&c.k.member(7), "email").await.as_deref(), Some(ANN));
    assert_eq!(c.last_event().await.kind, "member.registered");
    // The very call resent after the deadline answers as it first did (the member exists); any other
    // call on the id is refused, never an overwrite.
    let before = c.dump().await;
    assert_eq!(
        ok_body(&c.member_step(7, ANN, &e, now - 1).await, 201),
        body
    );
    assert_refused(
        &c.member_step(7, ANN, &ev(), now + 60_000).await,
        409,
        "CONFLICT",
    );
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

#[tokio::test]
async fn email_release_deletes_the_key_only_while_it_names_the_claims_member() {
    use fred::prelude::*;
    let c = Ctx::new().await;
    // A pending claim released at once (a refused member step): key and entry go.
    c.claim(7, ANN, 30_000).await;
    assert_eq!(c.release_claim(7, ANN, Some(0)).await, "not_due");
    assert_eq!(c.release_claim(7, ANN, None).await, "released");
    assert!(!c.exists(&c.k.email(ANN)).await);
    assert!(c.pending_claims().await.is_empty());
    assert_eq!(c.release_claim(7, ANN, None).await, "absent");
    // A pending entry whose key names another member now: only the entry goes, the key stays.
    c.claim(7, ANN, 30_000).await;
    let _: () = c
        .redis
        .set(c.k.email(ANN), "9", None, None, false)
        .await
        .expect("set");
    assert_eq!(c.release_claim(7, ANN, None).await, "gone");
    assert_eq!(c.get(&c.k.email(ANN)).await.as_deref(), Some("9"));
    assert!(c.pending_claims().await.is_empty());
    // The address free again: another member claims it.
    let _: i64 = c.redis.del(c.k.email(ANN)).await.expect("del");
    assert_eq!(c.claim(8, ANN, 30_000).await[0], "claimed");
    c.cleanup().await;
}

#[tokio::test]
async fn claim_sweep_confirms_claims_with_their_member_and_releases_the_rest() {
    use flashsale::signup::CLAIM_MARGIN_MS;
    let c = Ctx::new().await;
    let t = clock();
    let past = -CLAIM_MARGIN_MS - 1; // a TTL putting the deadline past deadline + margin already
                                     // Crashed after the member step (in time), before the confirm: confirmed, the key stays.
    c.claim(7, ANN, past).await;
    ok_body(&c.member_step(7, ANN, &ev(), i64::MAX).await, 201);
    // Crashed before the member step: released.
    c.claim(8, "bob@example.test", past).await;
    // Past its deadline but within the margin: stays (its member step may still be judged in time by
    // a node whose clock is behind).
    c.claim(9, "cy@example.test", -1).await;
    // Its id names a member with another address (an id fault): not that member's claim, released.
    ok_body(
        &c.signup(10, "dee@example.test", "Dee", &ev(), t).await,
        201,
    );
    c.claim(10, "dee2@example.test", past).await;

    assert_eq!(c.sweep_claims().await, (2, 1));
    assert_eq!(c.get(&c.k.email(ANN)).await.as_deref(), Some("7"));
    assert!(!c.exists(&c.k.email("bob@example.test")).await);
    assert!(!c.exists(&c.k.email("dee2@example.test")).await);
    assert_eq!(
        c.get(&c.k.email("dee@example.test")).await.as_deref(),
        Some("10")
    );
    assert_eq!(
        c.pending_claims().await.keys().cloned().collect::<Vec<_>>(),
        ["9:cy@example.test"]
    );
    let before = c.dump().await;
    assert_eq!(c.sweep_claims().await, (0, 0));
    assert_eq!(c.dump().await, before);
    // The released address signs up again.
    ok_body(
        &c.signup(11, "bob@example.test", "Bob", &ev(), t).await,
        201,
    );
    assert_eq!(
        c.get(&c.k.email("bob@example.test")).await.as_deref(),
        Some("11")
    );
    c.cleanup().await;
}

// ------------------------------------------------------------------------------------------------
// points_charge
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn points_charge_adds_points_and_replays_by_idempotency_key() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;
    let idem = c.idem(M);
    let e1 = ev();
    let reply = c.charge(M, &idem, 1500, &e1, t + 10).await;
    assert_eq!(ok_body(&reply, 200), json!({"balance": 1500}));
    assert_eq!(c.num(&c.k.member(M), "balance").await, 1500);
    assert_ok_record(&c, &idem, 200, &ok_raw(&reply)).await;
    let e = c.last_event().await;
    assert_eq!(e.event_id, e1);
    assert_eq!(e.kind, "points.charged");
    assert_eq!(e.aggregate, format!("member:{M}"));
    assert_eq!(e.at, rfc(t + 10));
    assert_eq!(
        e.payload,
        json!({"member_id": M, "amount": 1500, "balance_after": 1500})
    );
    let second = c.charge(M, &c.idem(M), 250, &ev(), t + 20).await;
    assert_eq!(ok_body(&second, 200), json!({"balance": 1750}));
    assert_eq!(c.last_event().await.payload["balance_after"], 1750);
    assert_eq!(c.events().await.len(), 3); // registered + 2 charges

    // Replay: the same call resent (same key, fingerprint and event id) answers the first result.
    let before = c.dump().await;
    let replay = c.charge(M, &idem, 1500, &e1, t + 10).await;
    assert_replay(&replay, 200, false, &ok_raw(&reply));
    // Same key and fingerprint, a later attempt: still the stored first result.
    let replay = c.charge(M, &idem, 1500, &ev(), t + 30).await;
    assert_replay(&replay, 200, false, &ok_raw(&reply));
    assert_eq!(c.dump().await, before);

    // Same key, another request: refused, the record stays as it was.
    let record_before = c.record(&idem).await.0;
    let other = Idem {
        key: idem.key.clone(),
        digest: idem.digest.clone(),
        fp: "fp-other-body".into(),
    };
    assert_eq!(
        c.charge(M, &other, 9, &ev(), t + 40).await,
        ScriptReply::KeyReused
    );
    assert_eq!(c.dump().await, before);
    assert_eq!(c.record(&idem).await.0, record_before);
    c.cleanup().await;
}

#[tokio::test]
async fn points_charge_refusals_change_nothing_but_the_record() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;

    // Unknown member.
    let before = c.dump().await;
    let idem = c.idem(99);
    let reply = c.charge(99, &idem, 10, &ev(), t).await;
    assert_refused(&reply, 404, "NOT_FOUND");
    assert_eq!(c.dump().await, before);
    assert!(!c.exists(&c.k.member(99)).await);
    // Not even the idempotency record is written for an unknown member: a retry is refused afresh.
    assert!(
        !c.exists(&idem.key).await,
        "no record for an unknown member"
    );
    assert_refused(&c.charge(99, &idem, 10, &ev(), t).await, 404, "NOT_FOUND");
    assert!(!c.exists(&idem.key).await);
    assert_eq!(c.dump().await, before);

    // Up to the limit exactly is fine; one more point is refused.
    let limit = 1_000;
    ok_body(
        &c.charge_limited(M, &c.idem(M), 1_000, limit, &ev(), t)
            .await,
        200,
    );
    let before = c.dump().await;
    let idem = c.idem(M);
    let reply = c.charge_limited(M, &idem, 1, limit, &ev(), t + 1).await;
    let detail = assert_refused(&reply, 409, "BALANCE_LIMIT_EXCEEDED");
    assert!(detail.contains("1000"), "{detail}");
    assert_eq!(c.dump().await, before);
    assert_eq!(c.num(&c.k.member(M), "balance").await, 1_000);
    assert_problem_record(&c, &idem, 409, "BALANCE_LIMIT_EXCEEDED").await;
    assert_replay(
        &c.charge_limited(M, &idem, 1, limit, &ev(), t + 2).await,
        409,
        true,
        "BALANCE_LIMIT_EXCEEDED",
    );
    // The engine's real limit is far above.
    ok_body(
        &c.charge(M, &c.idem(M), MAX_BALANCE - 1_000, &ev(), t).await,
        200,
    );
    assert_refused(
        &c.charge(M, &c.idem(M), 1, &ev(), t).await,
        409,
        "BALANCE_LIMIT_EXCEEDED",
    );
    c.cleanup().await;
}

// ------------------------------------------------------------------------------------------------
// product_create / product_stock_add
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn product_create_creates_once_and_refuses_a_taken_id() {
    let c = Ctx::new().await;
    let t = clock();
    let e1 = ev();
    let reply = c.create_product(5, "Lamp", 1200, 30, &e1, t).await;
    let view = json!({"id": 5, "name": "Lamp", "price": 1200, "stock": 30,
        "sale_starts_at": null, "sale_ends_at": null, "per_member_limit": null});
    assert_eq!(ok_body(&reply, 201), view);
    let h = c.hash(&c.k.product(5)).await;
    assert_eq!(h["id"], "5");
    assert_eq!(h["name"], "Lamp");
    assert_eq!(h["price"], "1200");
    assert_eq!(h["stock"], "30");
    assert_eq!(h["created_at"], rfc(t));
    assert_eq!(
        c.zset(&c.k.products()).await,
        [("5".to_string(), "5".to_string())].into()
    );
    let events = c.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_id, e1);
    assert_eq!(events[0].kind, "product.created");
    assert_eq!(events[0].aggregate, "product:5");
    assert_eq!(events[0].at, rfc(t));
    assert_eq!(
        events[0].payload,
        json!({"product_id": 5, "name": "Lamp", "price": 1200, "stock": 30, "created_at": rfc(t),
               "sale_starts_at": null, "sale_ends_at": null, "per_member_limit": null})
    );

    // Resent: same answer, one effect.
    let before = c.dump().await;
    assert_eq!(
        ok_body(&c.create_product(5, "Lamp", 1200, 30, &e1, t).await, 201),
        view
    );
    assert_eq!(c.dump().await, before);
    // Another create on the same id.
    assert_refused(
        &c.create_product(5, "Other", 1, 1, &ev(), t + 1).await,
        409,
        "CONFLICT",
    );
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

#[tokio::test]
async fn product_stock_add_adds_once_per_op_and_respects_the_limit() {
    let c = Ctx::new().await;
    let t = clock();
    c.product(3, 100, 10, t).await;
    let op = ev();
    let reply = c.stock_add(3, 5, &op, t + 1).await;
    let view = json!({"id": 3, "name": "product 3", "price": 100, "stock": 15,
        "sale_starts_at": null, "sale_ends_at": null, "per_member_limit": null});
    assert_eq!(ok_body(&reply, 200), view);
    assert_eq!(c.num(&c.k.product(3), "stock").await, 15);
    assert_eq!(
        c.zset(&c.k.product_ops(3)).await,
        [(op.clone(), (t + 1).to_string())].into()
    );
    let e = c.last_event().await;
    assert_eq!(
        (
            e.event_id.as_str(),
            e.kind.as_str(),
            e.aggregate.as_str(),
            e.at.as_str()
        ),
        (
            op.as_str(),
            "product.stock_added",
            "product:3",
            rfc(t + 1).as_str()
        )
    );
    assert_eq!(
        e.payload,
        json!({"product_id": 3, "add": 5, "stock_after": 15})
    );

    // The same op resent adds nothing.
    let before = c.dump().await;
    assert_eq!(ok_body(&c.stock_add(3, 5, &op, t + 1).await, 200), view);
    assert_eq!(c.dump().await, before);

    // Unknown product.
    assert_refused(&c.stock_add(4, 5, &ev(), t + 2).await, 404, "NOT_FOUND");
    assert_eq!(c.dump().await, before);

    // Up to the limit exactly, then past it.
    ok_body(&c.stock_add_limited(3, 85, 100, &ev(), t + 3).await, 200);
    assert_eq!(c.num(&c.k.product(3), "stock").await, 100);
    let before = c.dump().await;
    let detail = assert_refused(
        &c.stock_add_limited(3, 1, 100, &ev(), t + 4).await,
        422,
        "VALIDATION_FAILED",
    );
    assert!(detail.contains("100"), "{detail}");
    assert_eq!(c.dump().await, before);
    assert_refused(
        &c.stock_add(3, MAX_STOCK, &ev(), t + 4).await,
        422,
        "VALIDATION_FAILED",
    );
    assert_eq!(c.dump().await, before);
    assert_eq!(c.events().await.len(), 3);

    // Op ids older than an hour are dropped from the ops set.
    let late = ev();
    ok_body(&c.stock_add(3, 1, &late, t + 3_600_002).await, 200);
    let ops = c.zset(&c.k.product_ops(3)).await;
    assert!(!ops.contains_key(&op), "old op trimmed: {ops:?}");
    assert!(ops.contains_key(&late));
    c.cleanup().await;
}

// ------------------------------------------------------------------------------------------------
// coupon_create / coupon_issue
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn coupon_create_creates_once_and_refuses_a_taken_id() {
    let c = Ctx::new().await;
    let t = clock();
    let (from, until) = (t - 1000, t + 86_400_000);
    let e1 = ev();
    let reply = c
        .create_coupon(4, "PERCENT", 15, 100, from, until, &e1, t)
        .await;
    let view = json!({"id": 4, "name": "coupon 4", "discount_type": "PERCENT", "discount_value": 15,
                      "total_quantity": 100, "remaining": 100, "valid_from": rfc(from), "valid_until": rfc(until)});
    assert_eq!(ok_body(&reply, 201), view);
    let h = c.hash(&c.k.coupon(4)).await;
    for (f, v) in [
        ("id", "4".to_string()),
        ("name", "coupon 4".into()),
        ("discount_type", "PERCENT".into()),
        ("discount_value", "15".into()),
        ("total_quantity", "100".into()),
        ("remaining", "100".into()),
        ("valid_from_ms", from.to_string()),
        ("valid_from", rfc(from)),
        ("valid_until_ms", until.to_string()),
        ("valid_until", rfc(until)),
        ("created_at", rfc(t)),
    ] {
        assert_eq!(h[f], v, "{f}");
    }
    let events = c.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_id, e1);
    assert_eq!(events[0].kind, "coupon.created");
    assert_eq!(events[0].aggregate, "coupon:4");
    assert_eq!(events[0].at, rfc(t));
    assert_eq!(
        events[0].payload,
        json!({"coupon_id": 4, "name": "coupon 4", "discount_type": "PERCENT", "discount_value": 15,
               "total_quantity": 100, "valid_from": rfc(from), "valid_until": rfc(until), "created_at": rfc(t)})
    );

    let before = c.dump().await;
    let again = c
        .create_coupon(4, "PERCENT", 15, 100, from, until, &e1, t)
        .await;
    assert_eq!(ok_body(&again, 201), view);
    assert_eq!(c.dump().await, before);
    assert_refused(
        &c.create_coupon(4, "FIXED", 1, 1, from, until, &ev(), t)
            .await,
        409,
        "CONFLICT",
    );
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

#[tokio::test]
async fn coupon_issue_without_key_issues_once_and_resend_is_safe() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;
    c.coupon(9, "FIXED", 500, 1, t - 10_000, t + 10_000, t)
        .await;
    let e1 = ev();
    let t0 = c.redis_ms().await;
    let reply = c.issue(9, M, None, &e1, t).await;
    let t1 = c.redis_ms().await;
    assert_eq!(
        ok_body(&reply, 201),
        json!({"coupon_id": 9, "issued_at": rfc(t)})
    );
    assert_eq!(c.num(&c.k.coupon(9), "remaining").await, 0);
    // The holder entry is `issue event id|issued_at` (Redis time, masked here).
    let holders = c.hash(&c.k.coupon_holders(9)).await;
    let (event, issued_at) = holders["1"].split_once('|').expect("event|issued_at");
    assert_eq!(holders.len(), 1);
    assert_eq!((event, mask_text(issued_at).as_str()), (e1.as_str(), TIME));
    // The wallet entry (written by the saga step from the event): "issued_ms|0|event|issued_at" and
    // the coupon's terms, stamped with Redis time.
    let entry = c.field(&c.k.member_coupons(M), "9").await.unwrap();
    let parts: Vec<&str> = entry.split('|').collect();
    assert_eq!(parts.len(), 8, "{entry}");
    assert_eq!(&parts[4..6], ["FIXED", "500"], "{entry}");
    assert_eq!(
        c.run_wallet_step(&e1).await,
        "present",
        "a second run changes nothing"
    );
    let issued_ms: i64 = parts[0].parse().expect("issued_ms");
    assert!(
        t0 <= issued_ms && issued_ms <= t1,
        "{entry} issued within [{t0}, {t1}]"
    );
    assert_eq!(&parts[1..3], ["0", e1.as_str()], "{entry}");
    assert_eq!(parts[3], lua_support::rfc(issued_ms), "{entry}");
    let issued_at = serde_json::from_str::<Json>(&ok_raw(&reply)).unwrap()["issued_at"].clone();
    assert_eq!(
        issued_at,
        json!(parts[3]),
        "the body's issued_at is the entry's"
    );
    // No key sent: the placeholder record is left alone.
    assert!(!c.exists(&c.k.coupon_idempotency(9, M, "none")).await);
    let e = c.last_event().await;
    assert_eq!(
        (
            e.event_id.as_str(),
            e.kind.as_str(),
            e.aggregate.as_str(),
            e.at.as_str()
        ),
        (e1.as_str(), "coupon.issued", "coupon:9", rfc(t).as_str())
    );
    assert_eq!(
        e.payload,
        json!({"coupon_id": 9, "member_id": M, "issued_at": rfc(t), "remaining_after": 0,
               "wallet": entry})
    );

    // The very same call resent: the first answer (not SOLD_OUT, though none is left), one effect.
    let before = c.dump().await;
    let again = c.issue(9, M, None, &e1, t).await;
    assert_eq!(ok_raw(&again), ok_raw(&reply));
    assert_eq!(c.dump().await, before);

    // A new request of the same member: already issued.
    assert_refused(
        &c.issue(9, M, None, &ev(), t + 1).await,
        409,
        "COUPON_ALREADY_ISSUED",
    );
    assert_eq!(c.dump().await, before);

    // Another member: sold out.
    c.member_with(M2, 0, t).await;
    let before = c.dump().await;
    assert_refused(
        &c.issue(9, M2, None, &ev(), t + 1).await,
        409,
        "COUPON_SOLD_OUT",
    );
    assert_eq!(c.dump().await, before);
    assert!(!c.exists(&c.k.idempotency(M2, "none")).await);
    c.cleanup().await;
}

#[tokio::test]
async fn coupon_issue_with_key_replays_and_records_refusals() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;
    c.coupon(2, "PERCENT", 10, 5, t - 10_000, t + 10_000, t)
        .await;
    let idem = c.coupon_idem(2, M);
    let reply = c.issue(2, M, Some(&idem), &ev(), t).await;
    ok_body(&reply, 201);
    assert_ok_record(&c, &idem, 201, &ok_raw(&reply)).await;
    assert_eq!(c.num(&c.k.coupon(2), "remaining").await, 4);

    let before = c.dump().await;
    assert_replay(
        &c.issue(2, M, Some(&idem), &ev(), t + 5).await,
        201,
        false,
        &ok_raw(&reply),
    );
    let reused = Idem {
        key: idem.key.clone(),
        digest: idem.digest.clone(),
        fp: "fp-other".into(),
    };
    assert_eq!(
        c.issue(2, M, Some(&reused), &ev(), t + 5).await,
        ScriptReply::KeyReused
    );
    assert_eq!(c.dump().await, before);

    // A refusal under a key is recorded and replayed as a problem.
    let again = c.coupon_idem(2, M);
    assert_refused(
        &c.issue(2, M, Some(&again), &ev(), t + 6).await,
        409,
        "COUPON_ALREADY_ISSUED",
    );
    assert_problem_record(&c, &again, 409, "COUPON_ALREADY_ISSUED").await;
    assert_replay(
        &c.issue(2, M, Some(&again), &ev(), t + 7).await,
        409,
        true,
        "COUPON_ALREADY_ISSUED",
    );
    assert_eq!(c.dump().await, before);
    assert_eq!(c.events().await.len(), 3); // registered, created, issued
    c.cleanup().await;
}

#[tokio::test]
async fn coupon_issue_refuses_unknown_and_inactive_coupons() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;
    // Validity is judged by Redis time: one window still ahead, one already over, one open now.
    let now = c.redis_ms().await;
    c.coupon(3, "FIXED", 100, 10, now + 60_000, now + 120_000, t)
        .await;
    c.coupon(4, "FIXED", 100, 10, now - 120_000, now - 60_000, t)
        .await;
    let before = c.dump().await;

    let idem = c.coupon_idem(77, M);
    assert_refused(
        &c.issue(77, M, Some(&idem), &ev(), t).await,
        404,
        "NOT_FOUND",
    );
    assert_problem_record(&c, &idem, 404, "NOT_FOUND").await;
    assert_refused(&c.issue(77, M, None, &ev(), t).await, 404, "NOT_FOUND");
    assert_eq!(c.dump().await, before);

    // Before valid_from, after valid_until: refused; under a key the refusal is recorded.
    for coupon in [3, 4] {
        assert_refused(
            &c.issue(coupon, M, None, &ev(), t).await,
            422,
            "COUPON_NOT_ACTIVE",
        );
        assert_eq!(c.dump().await, before);
        let idem = c.coupon_idem(coupon, M);
        assert_refused(
            &c.issue(coupon, M, Some(&idem), &ev(), t).await,
            422,
            "COUPON_NOT_ACTIVE",
        );
        assert_problem_record(&c, &idem, 422, "COUPON_NOT_ACTIVE").await;
        assert_eq!(c.dump().await, before);
    }
    // A window opening at the Redis time just read is open.
    c.member_with(M2, 0, t).await;
    let now = c.redis_ms().await;
    c.coupon(5, "FIXED", 100, 10, now, now + 60_000, t).await;
    ok_body(&c.issue(5, M, None, &ev(), t).await, 201);
    ok_body(&c.issue(5, M2, None, &ev(), t).await, 201);
    assert_eq!(c.num(&c.k.coupon(5), "remaining").await, 8);
    assert_eq!(
        c.hash(&c.k.coupon_holders(5))
            .await
            .into_keys()
            .collect::<std::collections::BTreeSet<_>>(),
        ["1".to_string(), "2".to_string()].into()
    );
    // A window that closes shortly: issued inside it, refused once Redis time has passed it.
    let now = c.redis_ms().await;
    c.coupon(6, "FIXED", 100, 10, now - 60_000, now + 2_000, t)
        .await;
    ok_body(&c.issue(6, M, None, &ev(), t).await, 201);
    // The window closed 2 s after it was read: a stalled machine cannot make the first call late.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let before = c.dump().await;
    assert_refused(
        &c.issue(6, M2, None, &ev(), t).await,
        422,
        "COUPON_NOT_ACTIVE",
    );
    assert_eq!(c.dump().await, before);
    assert_eq!(c.num(&c.k.coupon(6), "remaining").await, 9);
    // A member Redis does not know (a stale token after a Redis loss): the coupon's slot cannot see
    // members, so the coupon is issued; the wallet step writes nothing for the unknown member (the
    // engine logs and counts it: flashsale_saga_steps_total{outcome="no_member"}).
    let idem = c.coupon_idem(5, 99);
    let e99 = ev();
    ok_body(&c.issue(5, 99, Some(&idem), &e99, t).await, 201);
    assert_eq!(c.run_wallet_step(&e99).await, "no_member");
    assert!(!c.exists(&c.k.member_coupons(99)).await);
    assert!(!c.exists(&c.k.member(99)).await);
    c.cleanup().await;
}

// ------------------------------------------------------------------------------------------------
// order_reserve
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn order_reserve_reserves_every_item_and_replays() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;
    c.product(1, 1000, 10, t).await;
    c.product(2, 250, 3, t).await;
    let idem = c.idem(M);
    let e1 = ev();
    let expires = t + RESERVATION_MS; // ARGV carries the TTL, expires - t
    let t0 = c.redis_ms().await;
    let reply = c
        .reserve(M, 40, &idem, &[(1, 2), (2, 3)], expires, &e1, t)
        .await;
    let t1 = c.redis_ms().await;
    let items = json!([
        {"product_id": 1, "quantity": 2, "unit_price": 1000},
        {"product_id": 2, "quantity": 3, "unit_price": 250},
    ]);
    let snapshot = order_json(
        40,
        M,
        "RESERVED",
        items.clone(),
        2750,
        0,
        0,
        None,
        &rfc(expires),
        &rfc(t),
        None,
        None,
    );
    assert_eq!(ok_body(&reply, 201), snapshot);
    assert_eq!(c.num(&c.k.product(1), "stock").await, 8);
    assert_eq!(c.num(&c.k.product(2), "stock").await, 0);
    let h = c.hash(&c.order_key(40)).await;
    for (f, v) in [
        ("id", "40".to_string()),
        ("member_id", M.to_string()),
        ("status", "RESERVED".into()),
        ("total_amount", "2750".into()),
        ("discount_amount", "0".into()),
        ("paid_amount", "0".into()),
        ("coupon_id", "".into()),
        ("expires_at", rfc(expires)),
        ("created_at", rfc(t)),
        ("paid_at", "".into()),
        ("closed_at", "".into()),
        ("paid_day", "".into()),
    ] {
        assert_eq!(h[f], v, "order field {f}");
    }
    assert_eq!(h["create_event"], e1);
    assert_eq!(serde_json::from_str::<Json>(&h["items"]).unwrap(), items);
    // Created at Redis time, expiring the TTL later; the reservation entry scores the expiry.
    let expires_ms: i64 = h["expires_at_ms"].parse().expect("expires_at_ms");
    let created_ms = expires_ms - RESERVATION_MS;
    assert!(
        t0 <= created_ms && created_ms <= t1,
        "created {created_ms} within [{t0}, {t1}]"
    );
    let raw = serde_json::from_str::<Json>(&ok_raw(&reply)).unwrap();
    assert_eq!(raw["created_at"], json!(lua_support::rfc(created_ms)));
    assert_eq!(raw["expires_at"], json!(lua_support::rfc(expires_ms)));
    assert_eq!(
        c.field(&c.order_key(40), "created_at").await.unwrap(),
        lua_support::rfc(created_ms)
    );
    assert_eq!(
        c.reservations().await,
        [("40".to_string(), expires_ms.to_string())].into()
    );
    assert_ok_record(&c, &idem, 201, &ok_raw(&reply)).await;
    let e = c.last_event().await;
    assert_eq!(
        (
            e.event_id.as_str(),
            e.kind.as_str(),
            e.aggregate.as_str(),
            e.at.as_str()
        ),
        (e1.as_str(), "order.reserved", "order:40", rfc(t).as_str())
    );
    assert_eq!(e.payload, json!({ "order": snapshot }));

    // Replays: the same call resent, and a later retry with the same key.
    let before = c.dump().await;
    let replay = c
        .reserve(M, 40, &idem, &[(1, 2), (2, 3)], expires, &e1, t)
        .await;
    assert_replay(&replay, 201, false, &ok_raw(&reply));
    let replay = c
        .reserve(M, 41, &idem, &[(1, 2), (2, 3)], expires + 9, &ev(), t + 9)
        .await;
    assert_replay(&replay, 201, false, &ok_raw(&reply));
    assert_eq!(c.dump().await, before);
    // Reused key.
    let reused = Idem {
        key: idem.key.clone(),
        digest: idem.digest.clone(),
        fp: "fp-other".into(),
    };
    assert_eq!(
        c.reserve(M, 42, &reused, &[(1, 1)], expires, &ev(), t)
            .await,
        ScriptReply::KeyReused
    );
    assert_eq!(c.dump().await, before);
    // The record lost (no key): the order id exists, so the call already ran; nothing reserved twice.
    let other_key = c.idem(M);
    let again = c
        .reserve(M, 40, &other_key, &[(1, 2), (2, 3)], expires, &e1, t)
        .await;
    assert_eq!(
        serde_json::from_str::<Json>(&ok_raw(&again)).unwrap(),
        raw,
        "the first answer, times included"
    );
    assert_eq!(c.dump().await, before);
    // Another call on the taken order id (an id-sequence fault): refused, the order not overwritten.
    let idem3 = c.idem(M);
    assert_refused(
        &c.reserve(M, 40, &idem3, &[(1, 1)], expires, &ev(), t).await,
        409,
        "CONFLICT",
    );
    assert_problem_record(&c, &idem3, 409, "CONFLICT").await;
    assert_eq!(c.dump().await, before);
    // An unknown member (a stale token): refused, nothing written, not even the record.
    let idem4 = c.idem(99);
    assert_refused(
        &c.reserve(99, 43, &idem4, &[(1, 1)], expires, &ev(), t)
            .await,
        404,
        "NOT_FOUND",
    );
    assert!(!c.exists(&idem4.key).await);
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

#[tokio::test]
async fn order_reserve_refuses_unknown_products_and_short_stock_reserving_nothing() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;
    c.product(1, 100, 5, t).await;
    c.product(2, 100, 2, t).await;
    let before = c.dump().await;

    let idem = c.idem(M);
    let expires = t + RESERVATION_MS;
    let detail = assert_refused(
        &c.reserve(M, 10, &idem, &[(1, 1), (9, 1)], expires, &ev(), t)
            .await,
        404,
        "NOT_FOUND",
    );
    assert!(detail.contains('9'), "{detail}");
    assert_problem_record(&c, &idem, 404, "NOT_FOUND").await;
    assert_eq!(c.dump().await, before);

    let idem = c.idem(M);
    let detail = assert_refused(
        &c.reserve(M, 11, &idem, &[(1, 5), (2, 3)], expires, &ev(), t)
            .await,
        409,
        "OUT_OF_STOCK",
    );
    assert!(detail.ends_with('2'), "{detail}");
    assert_problem_record(&c, &idem, 409, "OUT_OF_STOCK").await;
    assert_replay(
        &c.reserve(M, 12, &idem, &[(1, 5), (2, 3)], expires, &ev(), t)
            .await,
        409,
        true,
        "OUT_OF_STOCK",
    );
    assert_eq!(c.dump().await, before);
    assert!(!c.exists(&c.order_key(11)).await);

    // Exactly the stock left is fine.
    c.reserved(M, 13, &[(1, 5), (2, 2)], t).await;
    assert_eq!(c.num(&c.k.product(1), "stock").await, 0);
    assert_eq!(c.num(&c.k.product(2), "stock").await, 0);
    let before = c.dump().await;
    assert_refused(
        &c.reserve(M, 14, &c.idem(M), &[(1, 1)], expires, &ev(), t)
            .await,
        409,
        "OUT_OF_STOCK",
    );
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

// ------------------------------------------------------------------------------------------------
// product-slot steps: stock_hold, stock_release, stock_commit, stock_return, hold_confirm
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn stock_hold_is_idempotent_by_order_and_refuses_short_or_unknown_products() {
    let c = Ctx::new().await;
    let t = clock();
    c.product(1, 250, 5, t).await;
    let t0 = c.redis_ms().await;
    let held = c.hold(1, 70, M, 3, 30_000).await;
    let t1 = c.redis_ms().await;
    assert_eq!((&held[0], &held[1]), (&json!("held"), &json!(250)));
    let deadline = held[2].as_i64().expect("deadline");
    assert!(
        t0 + 30_000 <= deadline && deadline <= t1 + 30_000,
        "deadline {deadline} = Redis time + TTL"
    );
    assert_eq!(c.num(&c.k.product(1), "stock").await, 2);
    assert_eq!(
        c.field(&c.k.product_holds(1), "70").await,
        Some(format!("3|{M}|250|{deadline}"))
    );
    assert_eq!(
        c.pending_holds().await,
        [(format!("1:70:{M}"), deadline.to_string())].into()
    );
    assert!(c.events().await.len() == 1, "holds append no event");

    assert_eq!(held[3], json!(1), "taken by this call");
    // The same order again (a resend, whatever its quantity): the first answer, marked as not taken
    // by this call (so a refused call never releases it), nothing written.
    let before = c.dump().await;
    let again = json!(["held", 250, deadline, 0]);
    assert_eq!(c.hold(1, 70, M, 3, 30_000).await, again);
    assert_eq!(c.hold(1, 70, M, 1, 99).await, again);
    // The order id holding the product for another member (an id fault): refused.
    assert_eq!(c.hold(1, 70, M2, 1, 30_000).await, json!(["conflict"]));
    // Short stock, unknown product: nothing written.
    assert_eq!(
        c.hold(1, 71, M, 3, 30_000).await,
        json!(["out_of_stock", 2])
    );
    assert_eq!(c.hold(9, 72, M, 1, 30_000).await, json!(["not_found"]));
    assert_eq!(c.dump().await, before);
    // Exactly the stock left is fine.
    assert_eq!(c.hold(1, 73, M, 2, 30_000).await[0], "held");
    assert_eq!(c.num(&c.k.product(1), "stock").await, 0);
    assert_eq!(c.pending_holds().await.len(), 2);
    c.cleanup().await;
}

#[tokio::test]
async fn stock_release_commit_and_return_each_take_effect_once() {
    let c = Ctx::new().await;
    let t = clock();
    c.product(1, 100, 10, t).await;
    let stock = || async { c.num(&c.k.product(1), "stock").await };

    // Release: stock back, hold and pending entry gone; then a no-op.
    c.hold(1, 80, M, 4, 30_000).await;
    assert_eq!(stock().await, 6);
    assert_eq!(c.release(1, 80, M2, None).await, "other_member");
    assert_eq!(stock().await, 6);
    assert_eq!(c.release(1, 80, M, None).await, "released");
    assert_eq!(stock().await, 10);
    assert!(!c.exists(&c.k.product_holds(1)).await);
    assert!(c.pending_holds().await.is_empty());
    assert_eq!(c.release(1, 80, M, None).await, "gone");
    assert_eq!(stock().await, 10);

    // Commit (paid): the hold goes, the stock stays sold; a later release finds nothing.
    c.hold(1, 81, M, 3, 30_000).await;
    assert_eq!(c.commit(1, 81, M).await, "committed");
    assert_eq!(stock().await, 7);
    assert!(!c.exists(&c.k.product_holds(1)).await);
    assert!(c.pending_holds().await.is_empty());
    assert_eq!(c.commit(1, 81, M).await, "gone");
    assert_eq!(c.release(1, 81, M, None).await, "gone");
    assert_eq!(stock().await, 7);

    // Return (a paid order cancelled): the units come back once per order.
    assert_eq!(c.give_back(1, 81, M, 3).await, "returned");
    assert_eq!(stock().await, 10);
    assert_eq!(c.give_back(1, 81, M, 3).await, "already");
    assert_eq!(stock().await, 10);
    // Return before the commit ran: the hold goes with it; the commit then finds nothing.
    c.hold(1, 82, M, 2, 30_000).await;
    assert_eq!(c.give_back(1, 82, M, 2).await, "returned");
    assert_eq!(stock().await, 10);
    assert!(!c.exists(&c.k.product_holds(1)).await);
    assert!(c.pending_holds().await.is_empty());
    assert_eq!(c.commit(1, 82, M).await, "gone");
    assert_eq!(c.give_back(1, 82, M, 2).await, "already");
    assert_eq!(stock().await, 10);
    assert_eq!(
        c.set(&c.k.product_returned(1)).await,
        ["81".to_string(), "82".to_string()].into()
    );

    // Confirm: the pending entry goes, the hold stays (its order owns it) until released.
    c.hold(1, 83, M, 1, 30_000).await;
    assert_eq!(c.confirm(1, 83, M).await, "confirmed");
    assert!(c.pending_holds().await.is_empty());
    assert!(c.field(&c.k.product_holds(1), "83").await.is_some());
    assert_eq!(c.confirm(1, 83, M).await, "gone");
    assert_eq!(stock().await, 9);
    assert_eq!(c.release(1, 83, M, None).await, "released");
    assert_eq!(stock().await, 10);
    c.cleanup().await;
}

#[tokio::test]
async fn order_reserve_member_step_refuses_after_the_hold_deadline() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;
    c.product(1, 100, 10, t).await;
    c.hold(1, 90, M, 2, 30_000).await;
    let step = |idem: &Idem, deadline: i64, event: String| OrderReserve {
        member_id: M,
        order_id: 90,
        idem: idem.typed(),
        items: vec![PricedItem {
            product_id: 1,
            quantity: 2,
            unit_price: 100,
        }],
        reservation_ttl_ms: RESERVATION_MS,
        hold_deadline_ms: deadline,
        event_id: event,
    };
    // Past the deadline (by Redis time): a retryable refusal, nothing written, not even the record.
    let idem = c.idem(M);
    let before = c.dump().await;
    let now = c.redis_ms().await;
    let reply = c.invoke(&step(&idem, now - 1, ev())).await;
    assert_refused(&reply, 503, "SERVICE_UNAVAILABLE");
    assert!(!c.exists(&idem.key).await);
    assert_eq!(c.dump().await, before);
    // In time: the order, priced by the hold.
    let e = ev();
    let body = ok_body(&c.invoke(&step(&idem, now + 60_000, e.clone())).await, 201);
    assert_eq!(body["total_amount"], 200);
    assert_eq!(
        body["items"],
        json!([{"product_id": 1, "quantity": 2, "unit_price": 100}])
    );
    // The very call resent after the deadline answers as it first did (the order exists).
    let again = c.invoke(&step(&c.idem(M), now - 1, e)).await;
    assert_eq!(ok_body(&again, 201), body);
    c.cleanup().await;
}

#[tokio::test]
async fn order_refuse_records_the_refusal_and_nothing_else() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;
    let before = c.dump().await;
    let idem = c.idem(M);
    let refuse = |idem: &Idem, member: i64, status: u16, code: &str| OrderRefuse {
        member_id: member,
        idem: idem.typed(),
        status,
        code: code.into(),
        detail: "not enough stock for product 3".into(),
        extensions: String::new(),
    };
    let reply = c.invoke(&refuse(&idem, M, 409, "OUT_OF_STOCK")).await;
    assert_refused(&reply, 409, "OUT_OF_STOCK");
    assert_problem_record(&c, &idem, 409, "OUT_OF_STOCK").await;
    assert_eq!(c.dump().await, before);
    // The key has a result: that result (a concurrent call with the same key finished first).
    assert_replay(
        &c.invoke(&refuse(&idem, M, 404, "NOT_FOUND")).await,
        409,
        true,
        "OUT_OF_STOCK",
    );
    // A member Redis does not know: 404, nothing written.
    let ghost = c.idem(99);
    assert_refused(
        &c.invoke(&refuse(&ghost, 99, 409, "OUT_OF_STOCK")).await,
        404,
        "NOT_FOUND",
    );
    assert!(!c.exists(&ghost.key).await);
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

#[tokio::test]
async fn orphan_sweep_releases_holds_whose_order_never_came() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;
    c.product(1, 100, 10, t).await;
    c.product(2, 100, 10, t).await;
    let past = -HOLD_MARGIN_MS - 1; // a TTL putting the deadline past deadline + margin already
                                    // A crash after the holds: the member step never ran.
    c.hold(1, 200, M, 3, past).await;
    c.hold(2, 200, M, 1, past).await;
    // Past its deadline but within the margin: it stays (its member step may still be judged in time
    // by a node whose clock is behind).
    c.hold(1, 201, M, 2, -1).await;
    // Its member step ran in time but its confirm was lost: confirmed, not released.
    c.hold(2, 202, M, 4, past).await;
    let now = c.redis_ms().await;
    ok_body(
        &c.invoke(&OrderReserve {
            member_id: M,
            order_id: 202,
            idem: c.idem(M).typed(),
            items: vec![PricedItem {
                product_id: 2,
                quantity: 4,
                unit_price: 100,
            }],
            reservation_ttl_ms: RESERVATION_MS,
            hold_deadline_ms: now + 60_000,
            event_id: ev(),
        })
        .await,
        201,
    );
    assert_eq!(c.num(&c.k.product(1), "stock").await, 5);
    assert_eq!(c.num(&c.k.product(2), "stock").await, 5);

    assert_eq!(c.sweep_orphans().await, (2, 1));
    assert_eq!(c.num(&c.k.product(1), "stock").await, 8);
    assert_eq!(c.num(&c.k.product(2), "stock").await, 6);
    assert_eq!(
        c.pending_holds().await.keys().cloned().collect::<Vec<_>>(),
        [format!("1:201:{M}")]
    );
    assert!(
        c.field(&c.k.product_holds(2), "202").await.is_some(),
        "the order's hold stays"
    );
    assert!(c.field(&c.k.product_holds(1), "200").await.is_none());
    let before = c.dump().await;
    assert_eq!(c.sweep_orphans().await, (0, 0));
    assert_eq!(c.dump().await, before);
    // The orphan release itself refuses a hold not due yet, or one an order confirmed.
    assert_eq!(c.release(1, 201, M, Some(HOLD_MARGIN_MS)).await, "not_due");
    assert_eq!(
        c.release(2, 202, M, Some(HOLD_MARGIN_MS)).await,
        "confirmed"
    );
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

#[tokio::test]
async fn saga_steps_complete_a_crash_between_the_member_step_and_the_stock() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 10_000, t).await;
    c.product(1, 100, 20, t).await;
    c.reserved(M, 300, &[(1, 2)], t).await;
    c.reserved(M, 301, &[(1, 3)], t).await;
    c.reserved(M, 302, &[(1, 1)], t).await;
    c.reserved_ttl(M, 303, &[(1, 4)], 0).await;
    c.paid(M, 301, None, t + 1).await;
    assert_eq!(c.num(&c.k.product(1), "stock").await, 10);
    assert_eq!(
        c.pending_holds().await.len(),
        4,
        "no worker ran the confirms yet"
    );

    // The member steps ran (cancel of a reserved and of a paid order, an expiry), then the engine
    // died before the product steps.
    for order in [300, 301] {
        ok_body(
            &c.invoke(&OrderCancel {
                member_id: M,
                order_id: order,
                idem: c.idem(M).typed(),
                popular_day: day(t),
                event_id: ev(),
            })
            .await,
            200,
        );
    }
    let expire = OrderExpire {
        partition: Partition::of_id(M),
        order_id: 303,
        event_id: ev(),
    };
    let outcome = c
        .scripts
        .run_call(&c.redis, &c.k, &expire)
        .await
        .expect("order_expire");
    assert_eq!(outcome.as_string().as_deref(), Some("expired"));
    assert_eq!(c.num(&c.k.product(1), "stock").await, 10);

    // Any engine's saga worker completes them from the events.
    c.run_saga_steps().await;
    assert_eq!(
        c.num(&c.k.product(1), "stock").await,
        19,
        "300 and 303 released, 301 returned, 302 still held"
    );
    assert!(
        c.pending_holds().await.is_empty(),
        "every order confirmed its holds"
    );
    assert_eq!(
        c.hash(&c.k.product_holds(1))
            .await
            .keys()
            .collect::<Vec<_>>(),
        ["302"]
    );
    assert_eq!(
        c.set(&c.k.product_returned(1)).await,
        ["301".to_string()].into()
    );
    // Redelivered (a claim, a second engine): nothing changes.
    let before = c.dump().await;
    c.run_saga_steps().await;
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

#[tokio::test]
async fn inline_and_saga_steps_of_cancel_and_expire_give_stock_back_once() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 10_000, t).await;
    c.product(1, 100, 20, t).await;
    c.reserved(M, 310, &[(1, 2)], t).await;
    c.reserved(M, 311, &[(1, 3)], t).await;
    c.reserved_ttl(M, 312, &[(1, 4)], 0).await;
    c.paid(M, 311, None, t + 1).await;
    ok_body(&c.cancel(M, 310, &c.idem(M), &ev(), t + 2).await, 200);
    ok_body(&c.cancel(M, 311, &c.idem(M), &ev(), t + 2).await, 200);
    assert_eq!(c.expire(312, &ev(), t).await, "expired");
    // Inline: the stock is back as the answers return.
    assert_eq!(c.num(&c.k.product(1), "stock").await, 20);
    // The worker's later run of the same steps changes nothing.
    c.run_saga_steps().await;
    assert_eq!(c.num(&c.k.product(1), "stock").await, 20);
    assert!(!c.exists(&c.k.product_holds(1)).await);
    assert!(c.pending_holds().await.is_empty());
    c.cleanup().await;
}

// ------------------------------------------------------------------------------------------------
// order_pay
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn order_pay_without_coupon_pays_counts_units_and_replays() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 5_000, t).await;
    c.product(1, 1000, 10, t).await;
    c.product(2, 250, 10, t).await;
    let reserved = c.reserved(M, 20, &[(1, 2), (2, 3)], t).await;
    let idem = c.idem(M);
    let e1 = ev();
    let at = t + 1_000;
    let reply = c.pay(M, 20, None, &idem, &e1, at).await;
    let body = ok_body(&reply, 200);
    let mut expected = reserved.clone();
    expected["status"] = json!("PAID");
    expected["paid_amount"] = json!(2750);
    expected["paid_at"] = json!(rfc(at));
    assert_eq!(body, expected);
    assert_eq!(c.num(&c.k.member(M), "balance").await, 2_250);
    let h = c.hash(&c.order_key(20)).await;
    assert_eq!(h["status"], "PAID");
    assert_eq!(h["paid_amount"], "2750");
    assert_eq!(h["discount_amount"], "0");
    assert_eq!(h["coupon_id"], "");
    assert_eq!(h["paid_at"], rfc(at));
    assert_eq!(h["paid_day"], day(at));
    assert!(c.reservations().await.is_empty());
    let popular = c.k.popular_day(Partition::of_id(M), &day(at));
    assert_eq!(
        c.zset(&popular).await,
        [
            ("1".to_string(), "2".to_string()),
            ("2".to_string(), "3".to_string())
        ]
        .into()
    );
    let ttl = c.ttl(&popular).await;
    assert!(
        ttl > POPULAR_DAY_TTL_SECS - 60 && ttl <= POPULAR_DAY_TTL_SECS,
        "{ttl}"
    );
    // Stock was taken at reservation; payment leaves it.
    assert_eq!(c.num(&c.k.product(1), "stock").await, 8);
    assert_ok_record(&c, &idem, 200, &ok_raw(&reply)).await;
    let e = c.last_event().await;
    assert_eq!(
        (
            e.event_id.as_str(),
            e.kind.as_str(),
            e.aggregate.as_str(),
            e.at.as_str()
        ),
        (e1.as_str(), "order.paid", "order:20", rfc(at).as_str())
    );
    assert_eq!(e.payload, json!({"order": expected, "balance_after": 2250}));

    let before = c.dump().await;
    assert_replay(
        &c.pay(M, 20, None, &idem, &e1, at).await,
        200,
        false,
        &ok_raw(&reply),
    );
    let reused = Idem {
        key: idem.key.clone(),
        digest: idem.digest.clone(),
        fp: "fp-other".into(),
    };
    assert_eq!(
        c.pay(M, 20, Some(1), &reused, &ev(), at).await,
        ScriptReply::KeyReused
    );
    assert_eq!(c.dump().await, before);

    // Paying again under a new key: not payable; a second paid order adds to the day's units.
    let idem2 = c.idem(M);
    let detail = assert_refused(
        &c.pay(M, 20, None, &idem2, &ev(), at + 1).await,
        409,
        "ORDER_NOT_PAYABLE",
    );
    assert!(detail.contains("PAID"), "{detail}");
    assert_problem_record(&c, &idem2, 409, "ORDER_NOT_PAYABLE").await;
    assert_eq!(c.dump().await, before);
    c.reserved(M, 21, &[(2, 1)], at).await;
    c.paid(M, 21, None, at + 1).await;
    assert_eq!(c.zset(&popular).await["2"], "4");
    c.cleanup().await;
}

#[tokio::test]
async fn order_pay_refuses_unknown_foreign_and_cancelled_orders() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 5_000, t).await;
    c.member_with(M2, 5_000, t).await;
    c.product(1, 100, 10, t).await;
    c.reserved(M, 30, &[(1, 1)], t).await;
    let before = c.dump().await;

    let idem = c.idem(M);
    assert_refused(&c.pay(M, 31, None, &idem, &ev(), t).await, 404, "NOT_FOUND");
    assert_problem_record(&c, &idem, 404, "NOT_FOUND").await;
    // Another member's order is "not found" for them.
    let idem = c.idem(M2);
    assert_refused(
        &c.pay(M2, 30, None, &idem, &ev(), t).await,
        404,
        "NOT_FOUND",
    );
    assert_problem_record(&c, &idem, 404, "NOT_FOUND").await;
    assert_eq!(c.dump().await, before);

    ok_body(&c.cancel(M, 30, &c.idem(M), &ev(), t + 1).await, 200);
    let before = c.dump().await;
    let detail = assert_refused(
        &c.pay(M, 30, None, &c.idem(M), &ev(), t + 2).await,
        409,
        "ORDER_NOT_PAYABLE",
    );
    assert!(detail.contains("CANCELLED"), "{detail}");
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

#[tokio::test]
async fn order_pay_applies_fixed_and_percent_discounts() {
    let c = Ctx::new().await;
    let t = clock();
    let (from, until) = (t - 60_000, t + 60_000);
    c.member_with(M, 10_000, t).await;
    c.product(1, 999, 100, t).await;
    c.coupon(1, "FIXED", 300, 10, from, until, t).await;
    c.coupon(2, "PERCENT", 15, 10, from, until, t).await;
    c.issued(1, M, t).await;
    c.issued(2, M, t).await;
    let issued_2 = c.field(&c.k.member_coupons(M), "2").await.unwrap();

    // FIXED: 2 x 999 = 1998 - 300.
    c.reserved(M, 50, &[(1, 2)], t).await;
    let e1 = ev();
    let body = ok_body(&c.pay(M, 50, Some(1), &c.idem(M), &e1, t + 1).await, 200);
    assert_eq!(
        (
            body["total_amount"].clone(),
            body["discount_amount"].clone(),
            body["paid_amount"].clone(),
            body["coupon_id"].clone()
        ),
        (json!(1998), json!(300), json!(1698), json!(1))
    );
    assert_eq!(c.num(&c.k.member(M), "balance").await, 10_000 - 1698);
    let entry = c.field(&c.k.member_coupons(M), "1").await.unwrap();
    let parts: Vec<&str> = entry.split('|').collect();
    assert_eq!(parts[1], "50", "coupon entry marks the order: {entry}");
    let h = c.hash(&c.order_key(50)).await;
    assert_eq!(
        (
            h["coupon_id"].as_str(),
            h["discount_amount"].as_str(),
            h["paid_amount"].as_str()
        ),
        ("1", "300", "1698")
    );
    // The coupon's remaining count is about issuing; paying leaves it.
    assert_eq!(c.num(&c.k.coupon(1), "remaining").await, 9);
    let e = c.last_event().await;
    assert_eq!(e.event_id, e1);
    assert_eq!(e.payload["order"], body);
    assert_eq!(e.payload["balance_after"], 10_000 - 1698);

    // PERCENT, floored: 999 * 15 / 100 = 149.85 -> 149.
    c.reserved(M, 51, &[(1, 1)], t).await;
    let body = ok_body(&c.pay(M, 51, Some(2), &c.idem(M), &ev(), t + 2).await, 200);
    assert_eq!(
        (
            body["total_amount"].clone(),
            body["discount_amount"].clone(),
            body["paid_amount"].clone(),
            body["coupon_id"].clone()
        ),
        (json!(999), json!(149), json!(850), json!(2))
    );
    assert_eq!(c.num(&c.k.member(M), "balance").await, 10_000 - 1698 - 850);
    let (issued_ms, rest) = issued_2.split_once('|').unwrap();
    let (_, tail) = rest.split_once('|').unwrap();
    assert_eq!(
        c.field(&c.k.member_coupons(M), "2").await.unwrap(),
        format!("{issued_ms}|51|{tail}")
    );
    c.cleanup().await;
}

#[tokio::test]
async fn order_pay_caps_the_discount_at_the_total() {
    let c = Ctx::new().await;
    let t = clock();
    let (from, until) = (t - 60_000, t + 60_000);
    c.member_with(M, 0, t).await; // no points at all: the order costs nothing
    c.product(1, 400, 10, t).await;
    c.coupon(1, "FIXED", 1_000, 10, from, until, t).await;
    c.coupon(2, "PERCENT", 100, 10, from, until, t).await;
    c.issued(1, M, t).await;
    c.issued(2, M, t).await;
    for (order, coupon) in [(60, 1), (61, 2)] {
        c.reserved(M, order, &[(1, 2)], t).await;
        let e1 = ev();
        let body = ok_body(
            &c.pay(M, order, Some(coupon), &c.idem(M), &e1, t + 1).await,
            200,
        );
        assert_eq!(body["total_amount"], 800);
        assert_eq!(body["discount_amount"], 800);
        assert_eq!(body["paid_amount"], 0);
        assert_eq!(body["status"], "PAID");
        let e = c.last_event().await;
        assert_eq!(e.event_id, e1);
        assert_eq!(e.payload["balance_after"], 0);
    }
    assert_eq!(c.num(&c.k.member(M), "balance").await, 0);
    c.cleanup().await;
}

#[tokio::test]
async fn order_pay_refuses_unusable_coupons_changing_nothing() {
    let c = Ctx::new().await;
    let t = clock();
    let (from, until) = (t - 60_000, t + 60_000);
    c.member_with(M, 10_000, t).await;
    c.member_with(M2, 0, t).await;
    c.product(1, 100, 100, t).await;
    c.coupon(1, "FIXED", 10, 10, from, until, t).await; // held by M
    c.coupon(2, "FIXED", 10, 10, from, until, t).await; // held by M2 only
    c.issued(1, M, t).await;
    c.issued(2, M2, t).await;
    // Validity is judged by Redis time. Coupon 3 is held by M but its window closes shortly.
    let now = c.redis_ms().await;
    c.coupon(3, "FIXED", 10, 10, now - 60_000, now + 2_000, t)
        .await;
    c.issued(3, M, t).await;
    // Coupon 4's window is still ahead: the issue script refuses it, so M's entry is planted as a
    // rebuild from the database would leave it.
    c.coupon(4, "FIXED", 10, 10, now + 60_000, now + 120_000, t)
        .await;
    c.hset(
        &c.k.member_coupons(M),
        "4",
        &format!(
            "{now}|0|{}|{}|FIXED|10|{}|{}",
            ev(),
            lua_support::rfc(now),
            now + 60_000,
            now + 120_000
        ),
    )
    .await;
    c.reserved(M, 70, &[(1, 1)], t).await;
    // Coupon 3 was issued inside its window; let Redis time pass its valid_until.
    // The window closed 2 s after it was read: a stalled machine cannot make the first call late.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;

    let cases: Vec<(&str, i64, i64)> = vec![
        ("not held", 2, t + 1),
        ("unknown coupon", 99, t + 1),
        ("after valid_until", 3, t + 1),
        ("before valid_from", 4, t + 1),
    ];
    for (why, coupon, at) in cases {
        let before = c.dump().await;
        let idem = c.idem(M);
        let reply = c.pay(M, 70, Some(coupon), &idem, &ev(), at).await;
        let detail = assert_refused(&reply, 409, "COUPON_NOT_USABLE");
        assert_eq!(c.dump().await, before, "{why}: nothing changed");
        if coupon == 3 || coupon == 4 {
            assert!(detail.contains("valid"), "{why}: {detail}");
        }
        assert_problem_record(&c, &idem, 409, "COUPON_NOT_USABLE").await;
    }
    // Used in a paid order: not usable for another.
    c.paid(M, 70, Some(1), t + 2).await;
    c.reserved(M, 71, &[(1, 1)], t).await;
    let before = c.dump().await;
    let detail = assert_refused(
        &c.pay(M, 71, Some(1), &c.idem(M), &ev(), t + 3).await,
        409,
        "COUPON_NOT_USABLE",
    );
    assert!(detail.contains("used"), "{detail}");
    assert_eq!(c.dump().await, before);
    // Inside its window a coupon is usable.
    c.issued(2, M, t).await;
    ok_body(&c.pay(M, 71, Some(2), &c.idem(M), &ev(), until).await, 200);
    c.cleanup().await;
}

#[tokio::test]
async fn order_pay_insufficient_points_changes_nothing() {
    let c = Ctx::new().await;
    let t = clock();
    let (from, until) = (t - 60_000, t + 60_000);
    c.member_with(M, 849, t).await;
    c.product(1, 999, 10, t).await;
    c.coupon(1, "PERCENT", 15, 10, from, until, t).await;
    c.issued(1, M, t).await;
    c.reserved(M, 80, &[(1, 1)], t).await;
    let before = c.dump().await;
    let idem = c.idem(M);
    let detail = assert_refused(
        &c.pay(M, 80, Some(1), &idem, &ev(), t + 1).await,
        409,
        "INSUFFICIENT_POINTS",
    );
    assert_eq!(detail, "order needs 850 points, balance is 849");
    assert_eq!(c.dump().await, before);
    assert_problem_record(&c, &idem, 409, "INSUFFICIENT_POINTS").await;
    assert_replay(
        &c.pay(M, 80, Some(1), &idem, &ev(), t + 1).await,
        409,
        true,
        "INSUFFICIENT_POINTS",
    );
    assert_eq!(c.dump().await, before);
    // One more point and it goes through, to 0.
    ok_body(&c.charge(M, &c.idem(M), 1, &ev(), t).await, 200);
    ok_body(&c.pay(M, 80, Some(1), &c.idem(M), &ev(), t + 2).await, 200);
    assert_eq!(c.num(&c.k.member(M), "balance").await, 0);
    c.cleanup().await;
}

#[tokio::test]
async fn order_pay_after_expiry_time_is_refused_even_before_the_sweep() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 1_000, t).await;
    c.product(1, 100, 10, t).await;
    // Expiry is judged by Redis time: order 90 expires the instant it is created (expires_at_ms equals
    // its creation time, so any later Redis time is at or past it), order 91 a minute before.
    c.reserved_ttl(M, 90, &[(1, 1)], 0).await;
    c.reserved_ttl(M, 91, &[(1, 1)], -60_000).await;
    c.reserved_ttl(M, 92, &[(1, 1)], RESERVATION_MS).await;
    let before = c.dump().await;
    let idem = c.idem(M);
    assert_refused(
        &c.pay(M, 90, None, &idem, &ev(), t).await,
        409,
        "ORDER_EXPIRED",
    );
    assert_problem_record(&c, &idem, 409, "ORDER_EXPIRED").await;
    assert_refused(
        &c.pay(M, 91, None, &c.idem(M), &ev(), t).await,
        409,
        "ORDER_EXPIRED",
    );
    assert_eq!(c.dump().await, before, "still reserved, left for the sweep");
    assert_eq!(
        c.field(&c.order_key(90), "status").await.unwrap(),
        "RESERVED"
    );
    assert_eq!(
        c.reservations().await.keys().collect::<Vec<_>>(),
        ["90", "91", "92"]
    );
    assert_eq!(c.num(&c.k.member(M), "balance").await, 1_000);
    // Before its expiry an order is payable.
    ok_body(&c.pay(M, 92, None, &c.idem(M), &ev(), t).await, 200);
    assert_eq!(c.num(&c.k.member(M), "balance").await, 900);
    c.cleanup().await;
}

// ------------------------------------------------------------------------------------------------
// order_cancel
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn order_cancel_of_a_reserved_order_releases_stock_and_the_reservation() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 1_000, t).await;
    c.product(1, 100, 10, t).await;
    c.product(2, 50, 10, t).await;
    let reserved = c.reserved(M, 100, &[(1, 3), (2, 1)], t).await;
    c.reserved(M, 101, &[(2, 2)], t).await; // another reservation that stays
    let idem = c.idem(M);
    let e1 = ev();
    let at = t + 5_000;
    let today = c.k.popular_day(Partition::of_id(M), &day(at));
    let reply = c.cancel(M, 100, &idem, &e1, at).await;
    let mut expected = reserved.clone();
    expected["status"] = json!("CANCELLED");
    expected["closed_at"] = json!(rfc(at));
    assert_eq!(ok_body(&reply, 200), expected);
    assert_eq!(c.num(&c.k.product(1), "stock").await, 10);
    assert_eq!(c.num(&c.k.product(2), "stock").await, 8);
    assert_eq!(c.reservations().await.keys().collect::<Vec<_>>(), ["101"]);
    let h = c.hash(&c.order_key(100)).await;
    assert_eq!(h["status"], "CANCELLED");
    assert_eq!(h["closed_at"], rfc(at));
    assert_eq!(c.num(&c.k.member(M), "balance").await, 1_000);
    assert!(!c.exists(&today).await, "popular untouched");
    assert_ok_record(&c, &idem, 200, &ok_raw(&reply)).await;
    let e = c.last_event().await;
    assert_eq!(
        (
            e.event_id.as_str(),
            e.kind.as_str(),
            e.aggregate.as_str(),
            e.at.as_str()
        ),
        (
            e1.as_str(),
            "order.cancelled",
            "order:100",
            rfc(at).as_str()
        )
    );
    assert_eq!(
        e.payload,
        json!({"order": expected, "previous_status": "RESERVED", "refunded_amount": 0, "balance_after": null})
    );

    // Replay / reuse / cancel again under a new key.
    let before = c.dump().await;
    assert_replay(
        &c.cancel(M, 100, &idem, &e1, at).await,
        200,
        false,
        &ok_raw(&reply),
    );
    let reused = Idem {
        key: idem.key.clone(),
        digest: idem.digest.clone(),
        fp: "fp-other".into(),
    };
    assert_eq!(
        c.cancel(M, 101, &reused, &ev(), at).await,
        ScriptReply::KeyReused
    );
    let idem2 = c.idem(M);
    let detail = assert_refused(
        &c.cancel(M, 100, &idem2, &ev(), at + 1).await,
        409,
        "ORDER_NOT_CANCELLABLE",
    );
    assert!(detail.contains("CANCELLED"), "{detail}");
    assert_problem_record(&c, &idem2, 409, "ORDER_NOT_CANCELLABLE").await;
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

#[tokio::test]
async fn order_cancel_of_a_paid_order_refunds_points_coupon_units_and_stock() {
    let c = Ctx::new().await;
    let t = clock();
    let (from, until) = (t - 60_000, t + 60_000);
    c.member_with(M, 10_000, t).await;
    c.product(1, 1000, 10, t).await;
    c.product(2, 300, 10, t).await;
    c.coupon(1, "FIXED", 500, 10, from, until, t).await;
    c.issued(1, M, t).await;
    let entry_before = c.field(&c.k.member_coupons(M), "1").await.unwrap();
    c.reserved(M, 110, &[(1, 2), (2, 1)], t).await;
    // Another paid order the same day keeps product 2 in the ranking.
    c.reserved(M, 111, &[(2, 4)], t).await;
    c.paid(M, 111, None, t + 1).await;
    let paid = c.paid(M, 110, Some(1), t + 2).await;
    assert_eq!(paid["paid_amount"], 1800);
    let paid_day = day(t + 2);
    let popular = c.k.popular_day(Partition::of_id(M), &paid_day);
    assert_eq!(
        c.zset(&popular).await,
        [
            ("1".to_string(), "2".to_string()),
            ("2".to_string(), "5".to_string())
        ]
        .into()
    );
    assert_eq!(c.num(&c.k.member(M), "balance").await, 10_000 - 1200 - 1800);
    assert_ne!(
        c.field(&c.k.member_coupons(M), "1").await.unwrap(),
        entry_before
    );

    let idem = c.idem(M);
    let e1 = ev();
    let at = t + 3;
    let reply = c.cancel(M, 110, &idem, &e1, at).await;
    let mut expected = paid.clone();
    expected["status"] = json!("CANCELLED");
    expected["closed_at"] = json!(rfc(at));
    assert_eq!(ok_body(&reply, 200), expected);
    assert_eq!(c.num(&c.k.member(M), "balance").await, 10_000 - 1200);
    assert_eq!(
        c.field(&c.k.member_coupons(M), "1").await.unwrap(),
        entry_before,
        "coupon unused again, the rest of the entry kept"
    );
    assert_eq!(
        c.zset(&popular).await,
        [("2".to_string(), "4".to_string())].into(),
        "units taken back; a product at 0 leaves the ranking"
    );
    assert_eq!(c.num(&c.k.product(1), "stock").await, 10);
    assert_eq!(c.num(&c.k.product(2), "stock").await, 6);
    assert_eq!(c.num(&c.k.coupon(1), "remaining").await, 9);
    let h = c.hash(&c.order_key(110)).await;
    assert_eq!(h["status"], "CANCELLED");
    assert_eq!(h["paid_day"], paid_day);
    let e = c.last_event().await;
    assert_eq!(
        (e.event_id.as_str(), e.kind.as_str(), e.aggregate.as_str()),
        (e1.as_str(), "order.cancelled", "order:110")
    );
    assert_eq!(
        e.payload,
        json!({"order": expected, "previous_status": "PAID", "refunded_amount": 1800,
               "balance_after": 10_000 - 1200})
    );
    assert_ok_record(&c, &idem, 200, &ok_raw(&reply)).await;

    // The returned coupon pays another order.
    c.reserved(M, 112, &[(1, 1)], t).await;
    let body = c.paid(M, 112, Some(1), t + 4).await;
    assert_eq!(body["discount_amount"], 500);
    c.cleanup().await;
}

#[tokio::test]
async fn order_cancel_refuses_unknown_foreign_and_expired_orders() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;
    c.member_with(M2, 0, t).await;
    c.product(1, 100, 10, t).await;
    // Due at once by Redis time (a reserved order past its expiry is still cancellable until swept).
    c.reserved_ttl(M, 120, &[(1, 1)], 0).await;
    let before = c.dump().await;
    let idem = c.idem(M);
    assert_refused(&c.cancel(M, 121, &idem, &ev(), t).await, 404, "NOT_FOUND");
    assert_problem_record(&c, &idem, 404, "NOT_FOUND").await;
    let idem = c.idem(M2);
    assert_refused(&c.cancel(M2, 120, &idem, &ev(), t).await, 404, "NOT_FOUND");
    assert_problem_record(&c, &idem, 404, "NOT_FOUND").await;
    assert_eq!(c.dump().await, before);

    assert_eq!(c.expire(120, &ev(), t).await, "expired");
    let before = c.dump().await;
    let detail = assert_refused(
        &c.cancel(M, 120, &c.idem(M), &ev(), t).await,
        409,
        "ORDER_NOT_CANCELLABLE",
    );
    assert!(detail.contains("EXPIRED"), "{detail}");
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

// ------------------------------------------------------------------------------------------------
// order_expire
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn order_expire_releases_a_due_reservation_once() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;
    c.product(1, 100, 10, t).await;
    c.product(2, 70, 10, t).await;
    // Due is judged by Redis time: order 141's expiry is ahead; order 140 expires the instant it is
    // created (expires_at_ms equals its creation time: due means expires_at_ms <= Redis time).
    c.reserved_ttl(M, 141, &[(1, 1)], RESERVATION_MS).await;
    let reserved = c.reserved_ttl(M, 140, &[(1, 4), (2, 2)], 0).await;
    let expires = t;

    // Not due yet: nothing changes.
    let before = c.dump().await;
    assert_eq!(c.expire(141, &ev(), expires - 1).await, "not_due");
    assert_eq!(c.dump().await, before);

    let e1 = ev();
    let at = expires;
    assert_eq!(c.expire(140, &e1, at).await, "expired");
    assert_eq!(
        c.num(&c.k.product(1), "stock").await,
        9,
        "141 keeps its unit"
    );
    assert_eq!(c.num(&c.k.product(2), "stock").await, 10);
    assert_eq!(c.reservations().await.keys().collect::<Vec<_>>(), ["141"]);
    let h = c.hash(&c.order_key(140)).await;
    assert_eq!(h["status"], "EXPIRED");
    assert_eq!(h["closed_at"], rfc(at));
    let mut expected = reserved.clone();
    expected["status"] = json!("EXPIRED");
    expected["closed_at"] = json!(rfc(at));
    let e = c.last_event().await;
    assert_eq!(
        (
            e.event_id.as_str(),
            e.kind.as_str(),
            e.aggregate.as_str(),
            e.at.as_str()
        ),
        (e1.as_str(), "order.expired", "order:140", rfc(at).as_str())
    );
    assert_eq!(e.payload, json!({ "order": expected }));

    // The very same call resent: one effect.
    let before = c.dump().await;
    assert_eq!(c.expire(140, &e1, at).await, "not_reserved");
    assert_eq!(c.dump().await, before);

    // Pay after the sweep: ORDER_EXPIRED.
    let before = c.dump().await;
    assert_refused(
        &c.pay(M, 140, None, &c.idem(M), &ev(), expires - 1).await,
        409,
        "ORDER_EXPIRED",
    );
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

#[tokio::test]
async fn order_expire_drops_entries_of_orders_not_reserved_or_gone() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 1_000, t).await;
    c.product(1, 100, 10, t).await;
    let late = t + 10 * RESERVATION_MS;

    // Paid, then a leftover reservation entry (e.g. from a rebuild) is swept: entry dropped only.
    c.reserved(M, 150, &[(1, 1)], t).await;
    c.paid(M, 150, None, t + 1).await;
    let clean = c.dump().await;
    c.add_reservation(150, t + 5).await;
    assert_eq!(c.expire(150, &ev(), late).await, "not_reserved");
    assert_eq!(c.dump().await, clean);

    // Cancelled: likewise.
    c.reserved(M, 151, &[(1, 1)], t).await;
    ok_body(&c.cancel(M, 151, &c.idem(M), &ev(), t + 2).await, 200);
    let clean = c.dump().await;
    c.add_reservation(151, t + 5).await;
    assert_eq!(c.expire(151, &ev(), late).await, "not_reserved");
    assert_eq!(c.dump().await, clean);

    // No such order: its entry is dropped.
    c.add_reservation(999, t + 5).await;
    assert_eq!(c.expire(999, &ev(), late).await, "gone");
    assert_eq!(c.dump().await, clean);
    assert_eq!(c.events().await.len(), 2 + 1 + 2 + 2);
    c.cleanup().await;
}

#[tokio::test]
async fn expire_and_pay_race_whichever_runs_first_wins() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 1_000, t).await;
    c.product(1, 100, 10, t).await;
    let expires = t + RESERVATION_MS;

    // Pay first (in time), then the sweep once Redis time is past the expiry: not_reserved, stock
    // stays sold.
    c.reserved_ttl(M, 160, &[(1, 2)], 2_000).await;
    c.paid(M, 160, None, expires - 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let before = c.dump().await;
    assert_eq!(c.expire(160, &ev(), expires).await, "not_reserved");
    assert_eq!(c.dump().await, before);
    assert_eq!(c.num(&c.k.product(1), "stock").await, 8);
    assert_eq!(c.field(&c.order_key(160), "status").await.unwrap(), "PAID");

    // Sweep first, then the pay: ORDER_EXPIRED, no points taken.
    c.reserved_ttl(M, 161, &[(1, 3)], 0).await;
    assert_eq!(c.expire(161, &ev(), expires).await, "expired");
    let before = c.dump().await;
    assert_refused(
        &c.pay(M, 161, None, &c.idem(M), &ev(), expires - 1).await,
        409,
        "ORDER_EXPIRED",
    );
    assert_eq!(c.dump().await, before);
    assert_eq!(c.num(&c.k.product(1), "stock").await, 8);
    assert_eq!(c.num(&c.k.member(M), "balance").await, 800);
    let kinds: Vec<String> = c.events().await.into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds[kinds.len() - 4..],
        [
            "order.reserved",
            "order.paid",
            "order.reserved",
            "order.expired"
        ]
    );
    c.cleanup().await;
}

// ------------------------------------------------------------------------------------------------
// popular ranking (merged over the partitions by the engine)
// ------------------------------------------------------------------------------------------------

/// Sells `qty` of `product` in a paid order on the day of `at`.
async fn sell(c: &Ctx, order: i64, product: i64, qty: i64, at: i64) {
    c.reserved(M, order, &[(product, qty)], at).await;
    c.paid(M, order, None, at + 1).await;
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn popular_ranking_unions_the_days_ranks_by_units_and_limits() {
    let c = Ctx::new().await;
    let t = clock();
    const DAY: i64 = 86_400_000;
    c.member_with(M, 1_000_000, t).await;
    for p in 1..=4 {
        c.product(p, 10, 1_000, t).await;
    }
    let (d0, d1, d2) = (t, t - DAY, t - 2 * DAY);
    sell(&c, 1, 1, 3, d0).await;
    sell(&c, 2, 2, 1, d0).await;
    sell(&c, 3, 2, 5, d1).await;
    sell(&c, 4, 3, 2, d1).await;
    sell(&c, 5, 4, 50, d2).await; // outside a 2-day window
    let two_days = [day(d0), day(d1)];
    let top = c.popular(2, &two_days, 10, 0).await;
    assert_eq!(top, pairs(&[("2", "6"), ("1", "3"), ("3", "2")]));
    assert_eq!(
        c.popular(2, &two_days, 2, 0).await,
        pairs(&[("2", "6"), ("1", "3")])
    );
    assert_eq!(c.popular(2, &two_days, 1, 0).await, pairs(&[("2", "6")]));
    // Three days, one of them empty, and a day with no key at all.
    let three_days = [day(d0), day(d1), day(d2), day(t - 3 * DAY)];
    assert_eq!(
        c.popular(4, &three_days, 3, 0).await,
        pairs(&[("4", "50"), ("2", "6"), ("1", "3")])
    );
    // Nothing sold in the window: empty.
    let empty = [day(t - 10 * DAY)];
    assert!(c.popular(1, &empty, 5, 0).await.is_empty());
    assert!(c.popular(1, &empty, 5, 1_000).await.is_empty());
    // Reading changes no day key.
    let before = c.dump().await;
    c.popular(2, &two_days, 5, 0).await;
    assert_eq!(c.dump().await, before);
    c.cleanup().await;
}

#[tokio::test]
async fn popular_ranking_caches_the_union_for_its_lifetime_only_when_asked() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 1_000_000, t).await;
    c.product(1, 10, 1_000, t).await;
    c.product(2, 10, 1_000, t).await;
    sell(&c, 1, 1, 3, t).await;
    sell(&c, 2, 2, 2, t).await;
    let days = [day(t)];

    let first = c.popular(1, &days, 5, 60_000).await;
    assert_eq!(first, pairs(&[("1", "3"), ("2", "2")]));

    // A later sale is not seen while the cache lives; a smaller limit is cut from the cached union.
    sell(&c, 3, 2, 4, t).await;
    assert_eq!(c.popular(1, &days, 5, 60_000).await, first);
    assert_eq!(c.popular(1, &days, 1, 60_000).await, pairs(&[("1", "3")]));
    // Lifetime 0 recomputes and drops the cache.
    assert_eq!(
        c.popular(1, &days, 5, 0).await,
        pairs(&[("2", "6"), ("1", "3")])
    );
    // A cache with a short life expires and is then rebuilt.
    assert_eq!(
        c.popular(1, &days, 5, 30).await,
        pairs(&[("2", "6"), ("1", "3")])
    );
    sell(&c, 4, 1, 10, t).await;
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    assert_eq!(
        c.popular(1, &days, 5, 30).await,
        pairs(&[("1", "13"), ("2", "6")])
    );
    c.cleanup().await;
}

// ------------------------------------------------------------------------------------------------
// cross-cutting
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn cancel_and_expire_of_one_reservation_release_stock_once() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 0, t).await;
    c.product(1, 100, 10, t).await;
    let expires = t + RESERVATION_MS;
    // Cancelled past its expiry (by Redis time) but before the sweep: the sweep then finds it not
    // reserved.
    c.reserved_ttl(M, 170, &[(1, 4)], -1).await;
    ok_body(&c.cancel(M, 170, &c.idem(M), &ev(), expires + 5).await, 200);
    assert_eq!(c.num(&c.k.product(1), "stock").await, 10);
    let before = c.dump().await;
    assert_eq!(c.expire(170, &ev(), expires + 6).await, "not_reserved");
    assert_eq!(c.dump().await, before);
    // Swept first: the cancel is refused.
    c.reserved_ttl(M, 171, &[(1, 4)], -1).await;
    assert_eq!(c.expire(171, &ev(), expires).await, "expired");
    let before = c.dump().await;
    assert_refused(
        &c.cancel(M, 171, &c.idem(M), &ev(), expires + 1).await,
        409,
        "ORDER_NOT_CANCELLABLE",
    );
    assert_eq!(c.dump().await, before);
    assert_eq!(c.num(&c.k.product(1), "stock").await, 10);
    c.cleanup().await;
}

#[tokio::test]
async fn order_cancel_takes_units_back_from_the_day_it_was_paid() {
    let c = Ctx::new().await;
    let t = clock();
    let yesterday = t - 86_400_000;
    c.member_with(M, 10_000, t).await;
    c.product(1, 100, 100, t).await;
    sell(&c, 180, 1, 5, yesterday).await;
    sell(&c, 181, 1, 2, t).await;
    let (old_day, today) = (
        c.k.popular_day(Partition::of_id(M), &day(yesterday)),
        c.k.popular_day(Partition::of_id(M), &day(t)),
    );
    assert_eq!(c.zset(&old_day).await["1"], "5");
    assert_eq!(c.zset(&today).await["1"], "2");
    ok_body(&c.cancel(M, 180, &c.idem(M), &ev(), t + 10).await, 200);
    assert!(
        c.zset(&old_day).await.is_empty(),
        "yesterday's units taken back"
    );
    assert_eq!(c.zset(&today).await["1"], "2", "today's bucket untouched");
    assert_eq!(c.num(&c.k.member(M), "balance").await, 10_000 - 200);
    let e = c.last_event().await;
    assert_eq!(e.payload["previous_status"], "PAID");
    assert_eq!(e.payload["refunded_amount"], 500);
    assert_eq!(e.payload["order"]["coupon_id"], Json::Null);
    c.cleanup().await;
}

#[tokio::test]
async fn amounts_at_the_engine_limits_stay_exact() {
    let c = Ctx::new().await;
    let t = clock();
    let (from, until) = (t - 60_000, t + 60_000);
    let price = flashsale::domain::MAX_PRICE - 1; // 99_999_999
    c.member_with(M, 0, t).await;
    // One charge above the route's per-request cap (the script itself only checks the balance limit)
    // reaches a balance no order at the limits can exhaust.
    ok_body(
        &c.charge(M, &c.idem(M), MAX_BALANCE - 1, &ev(), t).await,
        200,
    );
    assert_eq!(
        c.last_event().await.payload["balance_after"],
        json!(MAX_BALANCE - 1)
    );
    let items: Vec<(i64, i64)> = (1..=20).map(|p| (p, 100)).collect();
    for (p, _) in &items {
        c.product(*p, price, 1_000, t).await;
    }
    c.coupon(1, "PERCENT", 33, 1, from, until, t).await;
    c.issued(1, M, t).await;
    let reserved = c.reserved(M, 190, &items, t).await;
    let total = 20 * 100 * price; // 199_999_998_000
    assert_eq!(reserved["total_amount"], json!(total));
    let paid = c.paid(M, 190, Some(1), t + 1).await;
    let discount = total * 33 / 100;
    assert_eq!(paid["discount_amount"], json!(discount));
    assert_eq!(paid["paid_amount"], json!(total - discount));
    let e = c.last_event().await;
    assert_eq!(e.payload["order"], paid);
    assert_eq!(
        e.payload["balance_after"],
        json!(MAX_BALANCE - 1 - (total - discount))
    );
    assert_eq!(
        c.num(&c.k.member(M), "balance").await,
        MAX_BALANCE - 1 - (total - discount)
    );
    c.cleanup().await;
}

#[tokio::test]
async fn the_state_dump_sees_every_key_but_idempotency_records() {
    let c = Ctx::new().await;
    let t = clock();
    c.member_with(M, 10, t).await;
    c.product(1, 100, 10, t).await;
    let dump = c.dump().await;
    let keys: Vec<&String> = dump.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            &c.k.email("m1@example.test"),
            &c.k.member(M),
            &c.k.outbox(Partition::of_id(M)),
            &c.k.product(1),
            &c.k.products()
        ]
        .iter()
        .map(|k| k.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .iter()
        .collect::<Vec<_>>()
    );
    assert_eq!(dump[c.k.member(M)][1]["balance"], "10");
    assert_eq!(
        dump[c.k.outbox(Partition::of_id(M))][1]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    c.cleanup().await;
}

// ------------------------------------------------------------------------------------------------
// prelude: the RFC 3339 formatter every script stamps Redis time with
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn prelude_rfc3339_matches_chrono_for_many_instants() {
    use chrono::{TimeZone, Utc};
    use fred::prelude::*;
    let c = Ctx::new().await;
    let script = format!(
        "{}\nlocal out = {{}}\nfor i = 1, #ARGV do out[i] = rfc3339(tonumber(ARGV[i])) end\nreturn out",
        include_str!("../../lua/lib/prelude.lua")
    );
    // Edges (epoch, leap days, century rules, year ends, 9999) and a deterministic spread of the rest.
    let mut instants: Vec<i64> = vec![
        0,
        1,
        999,
        1_000,
        86_399_999,
        86_400_000,
        951_782_400_000,
        951_868_799_999,
        4_107_542_400_000,
        4_102_444_799_999,
        1_709_164_800_123,
        1_735_689_599_999,
        253_402_300_799_999,
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while instants.len() < 2_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        instants.push((x % 253_402_300_800_000) as i64);
    }
    for chunk in instants.chunks(500) {
        let got: Vec<String> = c
            .redis
            .eval(
                script.as_str(),
                Vec::<String>::new(),
                chunk.iter().map(|ms| ms.to_string()).collect::<Vec<_>>(),
            )
            .await
            .expect("eval");
        for (ms, text) in chunk.iter().zip(got) {
            let want = flashsale::state::rfc3339(Utc.timestamp_millis_opt(*ms).unwrap());
            assert_eq!(text, want, "{ms} ms");
        }
    }
    c.cleanup().await;
}
