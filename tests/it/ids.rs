//! Issue 9 item 4: no id is handed out twice, across engines and across a Redis failover or a lost AOF
//! second. Ids are minted under a node leased in MySQL `engine_id_leases` (src/ids.rs); these tests run
//! allocators against a real MariaDB, each test in its own database.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use flashsale::config::{ConnectionSettings, IdSettings};
use flashsale::ids::{parts, Entity, IdAllocator, IdsUnavailable, Renewal, MAX_ID};
use serde_json::json;
use sqlx::MySqlPool;

/// A fresh database with the migrations applied.
async fn database() -> (MySqlPool, ConnectionSettings) {
    let connections = common::isolated_connections();
    let db = flashsale::app::connect_mysql(&connections)
        .await
        .expect("database");
    (db, connections)
}

async fn drop_database(db: MySqlPool, connections: &ConnectionSettings) {
    db.close().await;
    if let Some(name) = connections.database_url.rsplit('/').next() {
        if let Ok(mut conn) = common::server_connection().await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                .execute(&mut conn)
                .await;
        }
    }
}

async fn lease_row(db: &MySqlPool, node: i64) -> (String, i64) {
    sqlx::query_as("SELECT holder, high_water_ms FROM engine_id_leases WHERE node_id = ?")
        .bind(node)
        .fetch_one(db)
        .await
        .expect("lease row")
}

/// Every node but `except` held by someone else for an hour.
async fn hold_all_but(db: &MySqlPool, except: Option<i64>) {
    sqlx::query(
        "UPDATE engine_id_leases SET holder = 'someone-else', \
         lease_until = UTC_TIMESTAMP(3) + INTERVAL 1 HOUR WHERE node_id <> ?",
    )
    .bind(except.unwrap_or(-1))
    .execute(db)
    .await
    .expect("hold nodes");
}

/// The engine of `node` stops renewing (a crash, a partition): its lease runs out.
async fn expire(db: &MySqlPool, node: i64) {
    sqlx::query(
        "UPDATE engine_id_leases SET lease_until = UTC_TIMESTAMP(3) - INTERVAL 1 SECOND \
         WHERE node_id = ?",
    )
    .bind(node)
    .execute(db)
    .await
    .expect("expire lease");
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_allocators_get_different_nodes() {
    let (db, connections) = database().await;
    let a = IdAllocator::new(IdSettings::default());
    let b = IdAllocator::new(IdSettings::default());
    assert_eq!(
        a.next(Entity::Order).await,
        Err(IdsUnavailable::NoLease),
        "no lease, no id"
    );
    let na = a.claim(&db).await.expect("claim").expect("a node");
    let nb = b.claim(&db).await.expect("claim").expect("a node");
    assert_ne!(na, nb);
    assert_eq!(lease_row(&db, na).await.0, a.holder());
    assert_eq!(lease_row(&db, nb).await.0, b.holder());
    let (ia, ib) = (
        a.next(Entity::Order).await.expect("id"),
        b.next(Entity::Order).await.expect("id"),
    );
    assert_ne!(ia, ib);
    assert_eq!((parts(ia).node, parts(ib).node), (na, nb));
    drop_database(db, &connections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_lease_is_not_taken() {
    let (db, connections) = database().await;
    let a = IdAllocator::new(IdSettings::default());
    let node = a.claim(&db).await.expect("claim").expect("a node");
    hold_all_but(&db, Some(node)).await;
    let b = IdAllocator::new(IdSettings::default());
    assert_eq!(
        b.claim(&db).await.expect("claim"),
        None,
        "every node is live"
    );
    assert_eq!(b.node(), None);
    assert_eq!(b.next(Entity::Member).await, Err(IdsUnavailable::NoLease));
    // The holder keeps its node and keeps minting.
    assert_eq!(lease_row(&db, node).await.0, a.holder());
    assert_eq!(a.renew(&db).await, Renewal::Ok);
    assert!(a.next(Entity::Member).await.is_ok());
    drop_database(db, &connections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_is_taken_and_the_successor_starts_above_the_high_water_mark() {
    let (db, connections) = database().await;
    let settings = IdSettings::default();
    let a = IdAllocator::new(settings.clone());
    let node = a.claim(&db).await.expect("claim").expect("a node");
    let mut minted = Vec::new();
    for _ in 0..1_000 {
        minted.push(a.next(Entity::Order).await.expect("id"));
    }
    assert_eq!(a.renew(&db).await, Renewal::Ok);
    let (_, high_water) = lease_row(&db, node).await;
    // The promise runs a TTL ahead of the clock: the predecessor may mint up to it without MySQL.
    assert!(high_water >= now_ms() + settings.id_lease_ttl_ms as i64 - 5_000);
    assert!(minted.iter().all(|id| parts(*id).ms <= high_water));

    // `a` crashes (no release): its lease runs out; `b` gets that node, as the only one free.
    expire(&db, node).await;
    hold_all_but(&db, Some(node)).await;
    let b = IdAllocator::new(settings);
    assert_eq!(b.claim(&db).await.expect("claim"), Some(node));
    let first = b.next(Entity::Order).await.expect("id");
    assert!(
        parts(first).ms > high_water,
        "{:?} vs {high_water}",
        parts(first)
    );
    assert!(minted.iter().all(|id| *id < first));
    assert!(lease_row(&db, node).await.1 > high_water);
    // Starting ahead of the wall clock does not stall the successor.
    for _ in 0..1_000 {
        b.next(Entity::Order).await.expect("id");
    }

    // Were `a` only cut off, its next renewal finds the node taken: it stops minting.
    assert_eq!(a.renew(&db).await, Renewal::Lost);
    assert_eq!(a.node(), None);
    assert_eq!(a.next(Entity::Order).await, Err(IdsUnavailable::NoLease));
    drop_database(db, &connections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_released_node_is_taken_again_above_its_last_id_without_a_wait() {
    let (db, connections) = database().await;
    let a = IdAllocator::new(IdSettings::default());
    let node = a.claim(&db).await.expect("claim").expect("a node");
    let mut last = 0;
    for _ in 0..500 {
        last = a.next(Entity::Coupon).await.expect("id");
    }
    a.release(&db).await;
    assert_eq!(a.node(), None);
    assert_eq!(a.next(Entity::Coupon).await, Err(IdsUnavailable::NoLease));
    // The mark comes down from the promise (a TTL ahead) to the last millisecond used.
    let (_, high_water) = lease_row(&db, node).await;
    assert_eq!(high_water, parts(last).ms);

    hold_all_but(&db, Some(node)).await;
    let b = IdAllocator::new(IdSettings::default());
    assert_eq!(b.claim(&db).await.expect("claim"), Some(node));
    let first = b.next(Entity::Coupon).await.expect("id");
    assert!(first > last);
    assert!(
        (parts(first).ms - now_ms()).abs() < 5_000,
        "starts at the present"
    );
    drop_database(db, &connections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_allocators_minting_concurrently_give_no_duplicate() {
    const PER_ALLOCATOR: usize = 12_500;
    let (db, connections) = database().await;
    let mut allocators = Vec::new();
    for _ in 0..4 {
        let allocator = IdAllocator::new(IdSettings::default());
        allocator.claim(&db).await.expect("claim").expect("a node");
        allocators.push(allocator);
    }
    let nodes: HashSet<i64> = allocators.iter().filter_map(|a| a.node()).collect();
    assert_eq!(nodes.len(), 4);
    // Several tasks per allocator: the allocator is shared by every request of an engine.
    let mut tasks = tokio::task::JoinSet::new();
    for allocator in &allocators {
        for _ in 0..5 {
            let allocator = allocator.clone();
            tasks.spawn(async move {
                let mut ids = Vec::with_capacity(PER_ALLOCATOR / 5);
                for _ in 0..PER_ALLOCATOR / 5 {
                    ids.push(allocator.next(Entity::Order).await.expect("id"));
                }
                ids
            });
        }
    }
    let mut all = Vec::new();
    while let Some(ids) = tasks.join_next().await {
        let ids = ids.expect("task");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "one task's ids increase"
        );
        all.extend(ids);
    }
    assert_eq!(all.len(), 4 * PER_ALLOCATOR);
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "no duplicate");
    assert!(all.iter().all(|id| *id > 0 && *id <= MAX_ID));
    for allocator in &allocators {
        allocator.release(&db).await;
    }
    drop_database(db, &connections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_lease_stops_creation_until_a_node_is_held_again() {
    let app = common::spawn_app_with(|s| {
        s.ids.id_lease_renew_ms = 200;
    })
    .await;
    let node = app
        .state
        .ids
        .node()
        .expect("the engine leased a node at start");
    let product = app.create_product(100, 10).await;
    let (member, token) = app.member(10_000).await;
    let order = app
        .order(&token, json!([{"product_id": product, "quantity": 1}]))
        .await;
    assert_eq!(order.status, 201, "{}", order.text);
    let order_id = order.json()["id"].as_i64().expect("order id");
    assert_eq!(parts(order_id).node, node);
    assert_eq!(parts(member).node, node);

    // Another holder takes this engine's node, and every other one.
    hold_all_but(&app.state.db, None).await;
    let signup = || {
        app.post(
            "/api/v1/members",
            None,
            None,
            json!({"email": format!("{}@example.com", common::unique("lost")), "password": "longenough", "name": "Lost"}),
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let r = signup().await;
        if r.status != 201 {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewal should find the lease lost"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.code(), "SERVICE_UNAVAILABLE");
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(app.state.ids.node(), None);
    let creations = [
        app.post(
            "/api/v1/admin/products",
            None,
            None,
            json!({"name": "W", "price": 1, "stock": 1}),
        )
        .await,
        app.order(&token, json!([{"product_id": product, "quantity": 1}]))
            .await,
    ];
    for r in creations {
        assert_eq!(r.status, 503, "{}", r.text);
        assert_eq!(r.code(), "SERVICE_UNAVAILABLE");
    }
    // What needs no new id goes on: paying the order made before.
    let pay = app.pay(&token, order_id, None).await;
    assert_eq!(pay.status, 200, "{}", pay.text);

    // The nodes free again: the engine leases one and creation resumes, above every earlier id.
    sqlx::query("UPDATE engine_id_leases SET lease_until = UTC_TIMESTAMP(3) - INTERVAL 1 SECOND")
        .execute(&app.state.db)
        .await
        .expect("free nodes");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let created = loop {
        let r = signup().await;
        if r.status == 201 {
            break r;
        }
        assert_eq!(r.status, 503, "{}", r.text);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the engine should lease a node again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = created.json()["id"].as_i64().expect("member id");
    assert!(id > order_id && id > member);
    assert!(app.state.ids.node().is_some());
    app.stop().await;
}
