//! Data integrity between Redis and MySQL (issue 8 items 1, 3, 4, 14, 15), against the real servers:
//! one email identity in both stores, no script overwrites an entity or acts for a member Redis does not
//! know, the password hash stays out of the pipeline, and the engine refuses development secrets in
//! production.

use crate::common;

use std::time::Duration;

use common::pipeline::{drain, platform, start_sink, DRAIN};
use common::{spawn_app, spawn_app_with, unique, Reply, TestApp};
use flashsale::partition::Partition;
use flashsale::scripts::calls::{ClaimRef, EmailClaim, Idem};
use flashsale::scripts::ScriptReply;
use fred::prelude::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";

async fn signup(app: &TestApp, email: &str, password: &str) -> Reply {
    app.post(
        "/api/v1/members",
        None,
        None,
        json!({"email": email, "password": password, "name": "Jose"}),
    )
    .await
}

async fn login(app: &TestApp, email: &str, password: &str) -> Reply {
    app.post(
        "/api/v1/auth/login",
        None,
        None,
        json!({"email": email, "password": password}),
    )
    .await
}

/// Messages ever written to the deployment's dead-letter topic (sum of high watermarks).
fn dead_letters(app: &TestApp) -> i64 {
    let c = &app.settings.connections;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &c.kafka_brokers)
        .set("group.id", unique("dlq-check"))
        .create()
        .expect("kafka consumer");
    let metadata = consumer
        .fetch_metadata(Some(&c.kafka_dlq_topic), Duration::from_secs(10))
        .expect("dlq metadata");
    let mut total = 0;
    for topic in metadata.topics() {
        for partition in topic.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(&c.kafka_dlq_topic, partition.id(), Duration::from_secs(10))
                .expect("watermarks");
            total += high - low.min(high);
        }
    }
    total
}

/// Item 1: accented, decomposed, full-width and case twins are one identity in Redis and in MySQL;
/// every sign-up the engine accepts reaches MySQL, nothing is dead-lettered, reconcile ends in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn email_twins_are_one_identity_in_both_stores() {
    let app = spawn_app_with(|s| s.run_relay = true).await;
    let (url, _platform) = platform(0.0, 0).await;
    let _sink = start_sink(&app.settings.connections, &url, &[]);

    let plain = "jose@example.com";
    let accented = "jos\u{e9}@example.com"; // precomposed é
    let r = signup(&app, plain, PASSWORD).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let plain_id = r.json()["id"].as_i64().expect("id");
    // A different address (é is not e): its own member, in Redis and in MySQL alike.
    let r = signup(&app, accented, "another password").await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["email"], accented);
    let accented_id = r.json()["id"].as_i64().expect("id");

    for (twin, of) in [
        ("jose\u{301}@example.com", accented), // e + combining acute = é
        ("JOS\u{c9}@Example.COM", accented),   // case twin of the accented one
        ("\u{ff4a}\u{ff4f}\u{ff53}\u{ff45}@example.com", plain), // full-width ｊｏｓｅ
        ("\u{ff2a}OSE@EXAMPLE.com", plain),    // full-width capital + case
        (" Jose@Example.Com ", plain),
    ] {
        let r = signup(&app, twin, PASSWORD).await;
        assert_eq!(r.status, 409, "{twin:?} is {of:?}: {}", r.text);
        assert_eq!(r.code(), "EMAIL_TAKEN", "{twin:?}");
    }
    // Login agrees with sign-up: the decomposed spelling logs the accented member in.
    let r = login(&app, "JOSE\u{301}@EXAMPLE.COM", "another password").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = login(&app, "\u{ff4a}ose@example.com", PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let report = drain(&app, DRAIN).await;
    assert!(report.in_sync, "reconcile not in sync: {report:?}");
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT id, CAST(email AS BINARY) FROM members ORDER BY id")
            .fetch_all(&app.state.db)
            .await
            .expect("members");
    assert_eq!(
        rows,
        vec![
            (plain_id, plain.as_bytes().to_vec()),
            (accented_id, accented.as_bytes().to_vec())
        ]
    );
    let (processed, produced) = common::pipeline::settled_counts(&app, 0).await;
    assert_eq!(processed, produced);
    assert_eq!(
        dead_letters(&app),
        0,
        "an accepted sign-up was dead-lettered"
    );
    app.stop().await;
}

/// Item 14 (a): the password hash never travels in member.registered; the engine wrote it to MySQL
/// itself, and rebuild-redis restores logins from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_hash_stays_out_of_the_pipeline_and_rebuild_restores_logins() {
    let app = spawn_app_with(|s| s.run_relay = true).await;
    let (url, _platform) = platform(0.0, 0).await;
    let _sink = start_sink(&app.settings.connections, &url, &[]);
    let email = format!("{}@example.com", unique("p"));
    let r = signup(&app, &email, PASSWORD).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json()["id"].as_i64().expect("id");

    let entries: Vec<(String, std::collections::HashMap<String, String>)> = app
        .redis
        .xrange(app.keys.outbox(Partition::of_id(id)), "-", "+", None)
        .await
        .expect("outbox");
    let registered: Vec<_> = entries
        .iter()
        .filter(|(_, f)| f.get("type").map(String::as_str) == Some("member.registered"))
        .collect();
    assert_eq!(registered.len(), 1);
    let payload: Value = serde_json::from_str(&registered[0].1["payload"]).expect("payload");
    assert!(
        payload.get("password_hash").is_none(),
        "hash in the event: {payload}"
    );
    assert!(
        !registered[0].1["payload"].contains("$argon2"),
        "hash in the event"
    );
    let (hash,): (String,) =
        sqlx::query_as("SELECT password_hash FROM member_credentials WHERE member_id = ?")
            .bind(id)
            .fetch_one(&app.state.db)
            .await
            .expect("credential row written by the engine");
    assert!(hash.starts_with("$argon2id$"), "{hash}");

    let report = drain(&app, DRAIN).await;
    assert!(report.in_sync, "{report:?}");
    // A sign-up in progress (its address claimed, no member yet) is not in MySQL: gone after the rebuild.
    let unfinished = format!("{}@example.com", unique("u"));
    claim_alone(
        &app,
        flashsale::ids::MAX_ID - 9,
        &unfinished,
        flashsale::signup::CLAIM_TTL_MS,
    )
    .await;
    flashsale::pipeline::rebuild::rebuild(
        &app.redis,
        &app.state.db,
        &app.keys,
        &app.settings.connections,
        false,
    )
    .await
    .expect("rebuild");
    let r = login(&app, &email, PASSWORD).await;
    assert_eq!(r.status, 200, "login after rebuild: {}", r.text);
    assert_eq!(
        pending_claims(&app).await,
        0,
        "rebuilt e-mail keys are confirmed claims"
    );
    let owner: Option<i64> = app.redis.get(app.keys.email(&email)).await.expect("get");
    assert_eq!(owner, Some(id));
    let unfinished_key: bool = app
        .redis
        .exists(app.keys.email(&unfinished))
        .await
        .expect("exists");
    assert!(!unfinished_key, "the unfinished claim came back");
    let r = login(&app, &email, "wrong password!").await;
    assert_eq!(r.status, 401, "{}", r.text);
    app.stop().await;
}

/// Item 14 (a): sign-up needs MySQL for the credential: without it, 503 + Retry-After and nothing in
/// Redis (no member, no email key, no event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_without_mysql_answers_503_with_retry_after_and_writes_nothing() {
    let app = spawn_app().await;
    let before = app.outbox_counts().await;
    app.state.db.close().await; // the engine's view of MySQL: unreachable
    let email = format!("{}@example.com", unique("d"));
    let r = signup(&app, &email, PASSWORD).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.code(), "SERVICE_UNAVAILABLE");
    assert!(r.headers.get("retry-after").is_some(), "no Retry-After");
    let email_key: bool = app
        .redis
        .exists(app.keys.email(&email))
        .await
        .expect("exists");
    assert!(!email_key, "the email was taken in Redis");
    assert_eq!(app.outbox_counts().await, before);
    app.stop().await;
}

/// Item 14 (c): outside FLASHSALE_ENV=dev the engine refuses the dev admin key and a generated secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_refuses_development_secrets_outside_dev() {
    let mut settings = common::serve_settings(common::isolated_connections());
    settings.env = "production".into();
    settings.admin_api_key = "dev-admin-key".into();
    let err = flashsale::app::Application::build(settings.clone())
        .await
        .err()
        .expect("dev admin key refused in production");
    assert!(format!("{err:#}").contains("ADMIN_API_KEY"), "{err:#}");

    settings.admin_api_key = "a-real-admin-key".into();
    settings.jwt_secret = None;
    let err = flashsale::app::Application::build(settings.clone())
        .await
        .err()
        .expect("generated JWT secret refused in production");
    assert!(format!("{err:#}").contains("JWT_SECRET"), "{err:#}");

    // FLASHSALE_ENV=dev (make up, the tests) still may.
    settings.env = "dev".into();
    settings.admin_api_key = "dev-admin-key".into();
    assert!(flashsale::app::signing_secret(&settings).is_ok());
}

/// Item 3: member_signup never overwrites another member: a taken id is refused (409 CONFLICT) unless
/// the hash is this very call's (same create event id, a resent script); the refused sign-up's address
/// claim is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_signup_refuses_a_taken_member_id() {
    let app = spawn_app().await;
    let email = format!("{}@example.com", unique("o"));
    let r = signup(&app, &email, PASSWORD).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json()["id"].as_i64().expect("id");
    let before: std::collections::HashMap<String, String> = app
        .redis
        .hgetall(app.keys.member(id))
        .await
        .expect("member");
    let events = app.outbox_count("member.registered").await;

    // The sign-up saga as the route runs it (src/signup.rs), on the taken id.
    let call = |email: String, event: String| {
        let app = &app;
        async move {
            flashsale::signup::register(
                app.state.store(),
                &flashsale::signup::Signup {
                    member_id: id,
                    email: &email,
                    name: "Mallory",
                    password_hash: "$argon2id$other",
                    event_id: event,
                },
            )
            .await
            .expect("the steps run")
        }
    };
    let other = format!("{}@example.com", unique("x"));
    match call(other.clone(), flashsale::state::event_id()).await {
        ScriptReply::Refused {
            status: 409, code, ..
        } if code == "CONFLICT" => {}
        reply => panic!("a taken member id must be refused, got {reply:?}"),
    }
    let after: std::collections::HashMap<String, String> = app
        .redis
        .hgetall(app.keys.member(id))
        .await
        .expect("member");
    assert_eq!(after, before, "the member was overwritten");
    let other_key: bool = app
        .redis
        .exists(app.keys.email(&other))
        .await
        .expect("exists");
    assert!(!other_key, "the refused sign-up's claim was released");
    assert_eq!(pending_claims(&app).await, 0);
    assert_eq!(app.outbox_count("member.registered").await, events);

    // The same script resent (same event id) answers as its first run did.
    let first_event = before["create_event"].clone();
    match call(email.clone(), first_event).await {
        ScriptReply::Ok { status: 201, .. } => {}
        reply => panic!("a resent sign-up answers 201, got {reply:?}"),
    }
    assert_eq!(app.outbox_count("member.registered").await, events);
    app.stop().await;
}

/// Pending e-mail claims of every partition (src/signup.rs).
async fn pending_claims(app: &TestApp) -> i64 {
    let mut n = 0;
    for p in Partition::all() {
        let c: i64 = app
            .redis
            .zcard(app.keys.email_claims(p))
            .await
            .expect("zcard");
        n += c;
    }
    n
}

/// Runs a sign-up's first step alone (the address claim), as an engine that crashed right after it.
async fn claim_alone(app: &TestApp, member_id: i64, email: &str, ttl_ms: i64) {
    let reply = app
        .state
        .scripts
        .run_call(
            &app.redis,
            &app.keys,
            &EmailClaim {
                claim: ClaimRef {
                    member_id,
                    email: email.to_string(),
                },
                ttl_ms,
            },
        )
        .await
        .expect("email_claim");
    assert_eq!(
        reply
            .into_array()
            .first()
            .and_then(|v| v.as_string())
            .as_deref(),
        Some("claimed")
    );
}

/// Issue 9: a sign-up that crashed between its steps (the address claimed, the member never written)
/// keeps the address taken until its deadline, is no drift for reconcile, and is then released by the
/// engine's claim sweep: the address signs up and logs in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signup_crashed_after_its_claim_is_released_by_the_sweep() {
    use flashsale::signup::{CLAIM_MARGIN_MS, CLAIM_TTL_MS};
    let app = spawn_app().await;

    // Crashed, its deadline still ahead: the address is taken, nobody logs in with it.
    let waiting = format!("{}@example.com", unique("w"));
    claim_alone(&app, flashsale::ids::MAX_ID - 7, &waiting, CLAIM_TTL_MS).await;
    let r = signup(&app, &waiting, PASSWORD).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.code(), "EMAIL_TAKEN");
    let r = login(&app, &waiting, PASSWORD).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.code(), "INVALID_CREDENTIALS");
    let report = flashsale::pipeline::reconcile::reconcile(
        &app.redis,
        &app.state.db,
        &app.keys,
        &app.settings.connections,
    )
    .await
    .expect("reconcile");
    assert!(
        report.drift.is_empty(),
        "a pending claim is no drift: {report:?}"
    );

    // Crashed, its deadline + margin already past: the sweep (every engine, once a second) frees it.
    let crashed = format!("{}@example.com", unique("c"));
    let ghost = flashsale::ids::MAX_ID - 8;
    claim_alone(&app, ghost, &crashed, -CLAIM_MARGIN_MS - 1).await;
    let mut claimed = true;
    for _ in 0..100 {
        claimed = app
            .redis
            .exists(app.keys.email(&crashed))
            .await
            .expect("exists");
        if !claimed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!claimed, "the claim sweep did not release the address");
    assert_eq!(pending_claims(&app).await, 1, "only the waiting claim left");

    let r = signup(&app, &crashed, PASSWORD).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json()["id"].as_i64().expect("id");
    assert_ne!(id, ghost);
    let owner: Option<i64> = app.redis.get(app.keys.email(&crashed)).await.expect("get");
    assert_eq!(owner, Some(id));
    assert_eq!(
        pending_claims(&app).await,
        1,
        "the new claim confirmed inline"
    );
    let r = login(&app, &crashed, PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text);
    app.stop().await;
}

/// Item 3: a reserve (holds, then order_reserve) never answers with (or overwrites) an order whose id another call took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_reserve_refuses_a_taken_order_id() {
    let app = spawn_app().await;
    let product = app.create_product(100, 10).await;
    // An order lives in its member's slot: the id is taken when the same member's key holds another
    // call's order (ids are unique across members by allocation, see src/ids.rs).
    let (owner, _) = app.member(0).await;
    let intruder = owner;
    let order_id = 4242;
    let reserve = |member: i64, event: String| {
        let app = &app;
        async move {
            flashsale::orders::reserve(
                app.state.store(),
                &flashsale::orders::Reserve {
                    member_id: member,
                    order_id,
                    idem: Idem {
                        digest: Some(unique("k")),
                        fingerprint: "fp".into(),
                    },
                    items: vec![(product, 2)],
                    reservation_ttl_ms: 600_000,
                    event_id: event,
                },
                None,
            )
            .await
            .expect("script runs")
        }
    };
    let first_event = flashsale::state::event_id();
    let first = match reserve(owner, first_event.clone()).await {
        ScriptReply::Ok { status: 201, body } => body,
        reply => panic!("{reply:?}"),
    };
    match reserve(intruder, flashsale::state::event_id()).await {
        ScriptReply::Refused {
            status: 409, code, ..
        } if code == "CONFLICT" => {}
        reply => panic!("another call's order must not be answered, got {reply:?}"),
    }
    // The same call resent (same event id, even under a fresh record key) gets its order back.
    match reserve(owner, first_event).await {
        ScriptReply::Ok { status: 201, body } => assert_eq!(body, first),
        reply => panic!("{reply:?}"),
    }
    assert_eq!(app.stock(product).await, 8, "stock reserved once");
    assert_eq!(app.outbox_count("order.reserved").await, 1);
    app.stop().await;
}

/// Item 4: a member Redis does not know (stale token after a rebuild, or a hash without `id` left by
/// an old HINCRBY) gets 404 from every member script, and nothing is written: no credit, no member
/// hash, no idempotency record, no order, no stock change, no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_refuse_a_member_missing_in_redis_and_write_nothing() {
    let app = spawn_app().await;
    let product = app.create_product(100, 10).await;
    let coupon = app.create_coupon("FIXED", 10, 5).await;
    let (ghost, token) = app.member(0).await;
    let (_, other_token) = app.member(1000).await;
    let order = app
        .order(
            &other_token,
            json!([{"product_id": product, "quantity": 1}]),
        )
        .await;
    assert_eq!(order.status, 201, "{}", order.text);
    let order_id = order.json()["id"].as_i64().expect("order id");
    // The member vanishes from Redis; a stray hash without `id` is what old order_pay left behind.
    let _: i64 = app.redis.del(app.keys.member(ghost)).await.expect("del");
    let _: () = app
        .redis
        .hset(app.keys.member(ghost), ("balance", "0"))
        .await
        .expect("hset");
    let events_before = app.outbox_counts().await;

    let check = |r: Reply, what: &str| {
        assert_eq!(r.status, 404, "{what}: {}", r.text);
        assert_eq!(r.code(), "NOT_FOUND", "{what}");
    };
    for attempt in 0..2 {
        let key = format!("ghost-charge-{attempt}");
        check(
            app.post(
                "/api/v1/me/points/charge",
                Some(&token),
                Some(&key),
                json!({"amount": 500}),
            )
            .await,
            "charge",
        );
        check(
            app.post(
                "/api/v1/orders",
                Some(&token),
                Some("ghost-order"),
                json!({"items": [{"product_id": product, "quantity": 1}]}),
            )
            .await,
            "reserve",
        );
        check(
            app.post(
                &format!("/api/v1/orders/{order_id}/pay"),
                Some(&token),
                Some("ghost-pay"),
                json!({}),
            )
            .await,
            "pay",
        );
        check(
            app.post(
                &format!("/api/v1/orders/{order_id}/cancel"),
                Some(&token),
                Some("ghost-cancel"),
                json!({}),
            )
            .await,
            "cancel",
        );
    }
    let ghost_hash: std::collections::HashMap<String, String> = app
        .redis
        .hgetall(app.keys.member(ghost))
        .await
        .expect("hgetall");
    assert_eq!(ghost_hash.len(), 1, "only the stray field: {ghost_hash:?}");
    assert_eq!(ghost_hash["balance"], "0", "credited a missing member");
    let records: Vec<String> = app
        .redis
        .next()
        .custom(
            fred::types::CustomCommand::new_static("KEYS", fred::types::ClusterHash::Random, false),
            vec![app.keys.idempotency(ghost, "*")],
        )
        .await
        .expect("keys");
    assert!(
        records.is_empty(),
        "idempotency records written: {records:?}"
    );
    assert_eq!(
        app.stock(product).await,
        9,
        "only the other member's reservation"
    );
    assert_eq!(app.outbox_counts().await, events_before, "events appended");

    // A coupon issue is decided in the coupon's slot alone (one call, no member read): the coupon is
    // issued, and the saga step that fills the wallet writes nothing for the missing member.
    let issue = app
        .post(
            &format!("/api/v1/coupons/{coupon}/issue"),
            Some(&token),
            None,
            json!({}),
        )
        .await;
    assert_eq!(issue.status, 201, "{}", issue.text);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let coupons: bool = app
        .redis
        .exists(app.keys.member_coupons(ghost))
        .await
        .expect("exists");
    assert!(!coupons, "a wallet created for a missing member");
    let ghost_hash: std::collections::HashMap<String, String> = app
        .redis
        .hgetall(app.keys.member(ghost))
        .await
        .expect("hgetall");
    assert_eq!(ghost_hash.len(), 1, "only the stray field: {ghost_hash:?}");
    app.stop().await;
}

/// Item 15: IDEMPOTENCY_IN_PROGRESS cannot happen (every mutation is one atomic script), so the contract
/// does not list it; a cancel racing changes answers its own code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_no_impossible_codes_and_cancel_names_order_busy() {
    let app = spawn_app().await;
    let doc = app.get("/openapi.json", None).await;
    assert_eq!(doc.status, 200);
    assert!(
        !doc.text.contains("IDEMPOTENCY_IN_PROGRESS"),
        "listed where it cannot happen"
    );
    let cancel = &doc.json()["paths"]["/api/v1/orders/{id}/cancel"]["post"]["responses"]["409"];
    assert!(cancel.to_string().contains("ORDER_BUSY"), "{cancel}");
    app.stop().await;
}
