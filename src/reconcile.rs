//! Reconciliation: Redis (the live sale) against MySQL (the durable record). Reports events still in
//! flight and every difference in stock, coupons, balances and order statuses.

use std::collections::{BTreeMap, BTreeSet};

use fred::prelude::*;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use sqlx::MySqlPool;

use crate::config::ConnectionSettings;
use crate::domain::{Drift, ReconcileReport};
use crate::keys::Keys;

const CONCURRENCY: usize = 256;

/// Events accepted by Redis and not yet applied to MySQL.
pub async fn pending_events(
    redis: &Pool,
    keys: &Keys,
    c: &ConnectionSettings,
) -> anyhow::Result<i64> {
    let (_, unforwarded) = crate::relay::outbox_backlog(redis.next(), keys).await?;
    let lag = crate::kafka::group_lag(&c.kafka_brokers, &c.kafka_topic, &c.kafka_group).await?;
    Ok(unforwarded + lag)
}

async fn last_id(redis: &Pool, keys: &Keys, entity: &str) -> anyhow::Result<i64> {
    Ok(redis
        .get::<Option<i64>, _>(keys.sequence(entity))
        .await?
        .unwrap_or(0))
}

/// Reads one hash field for ids 1..=last (None where the entity does not exist).
async fn field_by_id(
    redis: &Pool,
    last: i64,
    key: impl Fn(i64) -> String,
    field: &'static str,
) -> anyhow::Result<BTreeMap<i64, String>> {
    let values: Vec<(i64, Option<String>)> = futures::stream::iter(1..=last)
        .map(|id| {
            let key = key(id);
            async move {
                Ok::<_, fred::error::Error>((
                    id,
                    redis.hget::<Option<String>, _, _>(key, field).await?,
                ))
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(values
        .into_iter()
        .filter_map(|(id, v)| v.map(|v| (id, v)))
        .collect())
}

fn compare(
    entity: &str,
    redis: &BTreeMap<i64, String>,
    mysql: &BTreeMap<i64, String>,
    drift: &mut Vec<Drift>,
) {
    let ids: BTreeSet<i64> = redis.keys().chain(mysql.keys()).copied().collect();
    for id in ids {
        let (r, m) = (redis.get(&id), mysql.get(&id));
        if r != m {
            let as_json = |v: Option<&String>| match v {
                None => serde_json::Value::Null,
                Some(s) => s
                    .parse::<i64>()
                    .map(|n| json!(n))
                    .unwrap_or_else(|_| json!(s)),
            };
            drift.push(Drift {
                entity: entity.into(),
                id,
                redis: as_json(r),
                mysql: as_json(m),
            });
        }
    }
}

async fn mysql_map(db: &MySqlPool, sql: &str) -> anyhow::Result<BTreeMap<i64, String>> {
    let rows: Vec<(i64, String)> = sqlx::query_as(sql).fetch_all(db).await?;
    Ok(rows.into_iter().collect())
}

pub async fn reconcile(
    redis: &Pool,
    db: &MySqlPool,
    keys: &Keys,
    c: &ConnectionSettings,
) -> anyhow::Result<ReconcileReport> {
    let pending = pending_events(redis, keys, c).await?;
    let mut drift = Vec::new();

    let products = last_id(redis, keys, "product").await?;
    let stock = field_by_id(redis, products, |id| keys.product(id), "stock").await?;
    compare(
        "product_stock",
        &stock,
        &mysql_map(db, "SELECT id, CAST(stock AS CHAR) FROM products").await?,
        &mut drift,
    );

    let coupons = last_id(redis, keys, "coupon").await?;
    let remaining = field_by_id(redis, coupons, |id| keys.coupon(id), "remaining").await?;
    compare(
        "coupon_remaining",
        &remaining,
        &mysql_map(db, "SELECT id, CAST(remaining AS CHAR) FROM coupons").await?,
        &mut drift,
    );
    let mut issued = BTreeMap::new();
    for id in remaining.keys() {
        let holders: i64 = redis.scard(keys.coupon_holders(*id)).await?;
        issued.insert(*id, holders.to_string());
    }
    let issued_mysql = mysql_map(
        db,
        "SELECT coupon_id, CAST(COUNT(*) AS CHAR) FROM issued_coupons GROUP BY coupon_id",
    )
    .await?;
    let issued_mysql: BTreeMap<i64, String> = remaining
        .keys()
        .map(|id| {
            (
                *id,
                issued_mysql.get(id).cloned().unwrap_or_else(|| "0".into()),
            )
        })
        .chain(issued_mysql.clone())
        .collect();
    compare("coupon_issued", &issued, &issued_mysql, &mut drift);

    let members = last_id(redis, keys, "member").await?;
    let balances = field_by_id(redis, members, |id| keys.member(id), "balance").await?;
    compare(
        "member_balance",
        &balances,
        &mysql_map(db, "SELECT id, CAST(balance AS CHAR) FROM members").await?,
        &mut drift,
    );

    let orders = last_id(redis, keys, "order").await?;
    let statuses = field_by_id(redis, orders, |id| keys.order(id), "status").await?;
    compare(
        "order_status",
        &statuses,
        &mysql_map(db, "SELECT id, status FROM orders").await?,
        &mut drift,
    );

    drift.truncate(1000);
    Ok(ReconcileReport {
        in_sync: pending == 0 && drift.is_empty(),
        pending_events: pending,
        drift,
    })
}
