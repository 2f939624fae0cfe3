//! Reconciliation: Redis (the live sale) against MySQL (the durable record). Reports events still in
//! flight and every difference in stock, coupons, balances and order statuses.
//!
//! The scan walks the id space of each entity (products, coupons, members, orders) in chunks, so the
//! admin endpoint can answer one bounded page per request (`reconcile_page`, resumed by a cursor)
//! and `flashsale reconcile` runs the same chunks through to the end (`reconcile`).

use std::collections::{BTreeMap, BTreeSet};

use fred::prelude::*;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use sqlx::MySqlPool;

use crate::config::ConnectionSettings;
use crate::domain::{Drift, ReconcilePage, ReconcileReport};
use crate::keys::Keys;

const CONCURRENCY: usize = 256;
/// Entities in scan order; the cursor names one of them (its sequence name).
const ENTITIES: [&str; 4] = ["product", "coupon", "member", "order"];
/// Ids per chunk of the full scan (`flashsale reconcile`).
const FULL_SCAN_CHUNK: i64 = 10_000;
/// The full scan lists at most this many drift entries.
const FULL_SCAN_DRIFT_CAP: usize = 1000;

/// Where a scan resumes: ids of `ENTITIES[entity]` above `after` are still to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanCursor {
    entity: usize,
    after: i64,
}

impl ScanCursor {
    /// Parses `entity:after_id` as returned in `next_cursor`; None when malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let (name, after) = text.split_once(':')?;
        let entity = ENTITIES.iter().position(|e| *e == name)?;
        let after: i64 = after.parse().ok().filter(|a| *a >= 0)?;
        Some(Self { entity, after })
    }
}

impl std::fmt::Display for ScanCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", ENTITIES[self.entity], self.after)
    }
}

/// Events accepted by Redis and not yet applied to MySQL.
pub async fn pending_events(
    redis: &Pool,
    keys: &Keys,
    c: &ConnectionSettings,
) -> anyhow::Result<i64> {
    let (_, unforwarded) = crate::relay::outbox_backlog(redis, keys).await?;
    let lag = crate::kafka::group_lag(&c.kafka_brokers, &c.kafka_topic, &c.kafka_group).await?;
    Ok(unforwarded + lag)
}

async fn last_id(redis: &Pool, keys: &Keys, entity: &str) -> anyhow::Result<i64> {
    Ok(redis
        .get::<Option<i64>, _>(keys.sequence(entity))
        .await?
        .unwrap_or(0))
}

/// The highest id of an entity in either store (MySQL may hold ids Redis lost).
async fn max_id(redis: &Pool, db: &MySqlPool, keys: &Keys, entity: &str) -> anyhow::Result<i64> {
    let table = match entity {
        "product" => "products",
        "coupon" => "coupons",
        "member" => "members",
        _ => "orders",
    };
    let (mysql,): (Option<i64>,) = sqlx::query_as(&format!("SELECT MAX(id) FROM {table}"))
        .fetch_one(db)
        .await?;
    Ok(last_id(redis, keys, entity).await?.max(mysql.unwrap_or(0)))
}

/// Reads one hash field for ids in (after, to] (absent where the entity does not exist).
async fn field_by_id(
    redis: &Pool,
    (after, to): (i64, i64),
    key: impl Fn(i64) -> String,
    field: &'static str,
) -> anyhow::Result<BTreeMap<i64, String>> {
    let values: Vec<(i64, Option<String>)> = futures::stream::iter(after + 1..=to)
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

/// `sql` selects (id, value) rows and ends in `WHERE <id column> > ? AND <id column> <= ?`.
async fn mysql_map(
    db: &MySqlPool,
    sql: &str,
    (after, to): (i64, i64),
) -> anyhow::Result<BTreeMap<i64, String>> {
    let rows: Vec<(i64, String)> = sqlx::query_as(sql)
        .bind(after)
        .bind(to)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Compares the ids in (after, to] of one entity.
async fn compare_range(
    redis: &Pool,
    db: &MySqlPool,
    keys: &Keys,
    entity: &str,
    range: (i64, i64),
    drift: &mut Vec<Drift>,
) -> anyhow::Result<()> {
    match entity {
        "product" => {
            let stock = field_by_id(redis, range, |id| keys.product(id), "stock").await?;
            let sql = "SELECT id, CAST(stock AS CHAR) FROM products WHERE id > ? AND id <= ?";
            compare(
                "product_stock",
                &stock,
                &mysql_map(db, sql, range).await?,
                drift,
            );
        }
        "coupon" => {
            let remaining = field_by_id(redis, range, |id| keys.coupon(id), "remaining").await?;
            let sql = "SELECT id, CAST(remaining AS CHAR) FROM coupons WHERE id > ? AND id <= ?";
            compare(
                "coupon_remaining",
                &remaining,
                &mysql_map(db, sql, range).await?,
                drift,
            );
            let mut issued = BTreeMap::new();
            for id in remaining.keys() {
                let holders: i64 = redis.hlen(keys.coupon_holders(*id)).await?;
                issued.insert(*id, holders.to_string());
            }
            let issued_mysql = mysql_map(
                db,
                "SELECT coupon_id, CAST(COUNT(*) AS CHAR) FROM issued_coupons \
                 WHERE coupon_id > ? AND coupon_id <= ? GROUP BY coupon_id",
                range,
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
            compare("coupon_issued", &issued, &issued_mysql, drift);
        }
        "member" => {
            let balances = field_by_id(redis, range, |id| keys.member(id), "balance").await?;
            let sql = "SELECT id, CAST(balance AS CHAR) FROM members WHERE id > ? AND id <= ?";
            compare(
                "member_balance",
                &balances,
                &mysql_map(db, sql, range).await?,
                drift,
            );
        }
        _ => {
            // An order's key names its member's partition: the ids to compare come from MySQL (an
            // order only in Redis is an event not applied yet, which `pending_events` counts).
            let rows: Vec<(i64, i64, String)> =
                sqlx::query_as("SELECT id, member_id, status FROM orders WHERE id > ? AND id <= ?")
                    .bind(range.0)
                    .bind(range.1)
                    .fetch_all(db)
                    .await?;
            let owned: Vec<(i64, i64)> = rows.iter().map(|(id, m, _)| (*id, *m)).collect();
            let statuses: Vec<(i64, Option<String>)> = futures::stream::iter(owned)
                .map(|(id, member)| {
                    let key = keys.order(member, id);
                    async move {
                        Ok::<_, fred::error::Error>((
                            id,
                            redis.hget::<Option<String>, _, _>(key, "status").await?,
                        ))
                    }
                })
                .buffered(CONCURRENCY)
                .try_collect()
                .await?;
            let statuses = statuses
                .into_iter()
                .filter_map(|(id, v)| v.map(|v| (id, v)))
                .collect();
            let mysql = rows
                .into_iter()
                .map(|(id, _, status)| (id, status))
                .collect();
            compare("order_status", &statuses, &mysql, drift);
        }
    }
    Ok(())
}

/// What one bounded stretch of the scan found.
struct Scanned {
    drift: Vec<Drift>,
    checked: i64,
    next: Option<ScanCursor>,
}

/// Compares at most `limit` ids from `from` on, entity after entity.
async fn scan(
    redis: &Pool,
    db: &MySqlPool,
    keys: &Keys,
    from: ScanCursor,
    limit: i64,
) -> anyhow::Result<Scanned> {
    let mut at = from;
    let mut budget = limit.max(1);
    let mut drift = Vec::new();
    let mut checked = 0;
    loop {
        let entity = ENTITIES[at.entity];
        let last = max_id(redis, db, keys, entity).await?;
        let to = last.min(at.after.saturating_add(budget)).max(at.after);
        compare_range(redis, db, keys, entity, (at.after, to), &mut drift).await?;
        checked += to - at.after;
        budget -= to - at.after;
        if to < last {
            at.after = to;
            return Ok(Scanned {
                drift,
                checked,
                next: Some(at),
            });
        }
        if at.entity + 1 == ENTITIES.len() {
            return Ok(Scanned {
                drift,
                checked,
                next: None,
            });
        }
        at = ScanCursor {
            entity: at.entity + 1,
            after: 0,
        };
        if budget <= 0 {
            return Ok(Scanned {
                drift,
                checked,
                next: Some(at),
            });
        }
    }
}

/// One bounded page of the comparison: at most `limit` ids from `cursor` (the start when None).
pub async fn reconcile_page(
    redis: &Pool,
    db: &MySqlPool,
    keys: &Keys,
    c: &ConnectionSettings,
    cursor: Option<ScanCursor>,
    limit: i64,
) -> anyhow::Result<ReconcilePage> {
    let pending = pending_events(redis, keys, c).await?;
    let from = cursor.unwrap_or_default();
    let scanned = scan(redis, db, keys, from, limit).await?;
    Ok(ReconcilePage {
        in_sync: pending == 0 && scanned.drift.is_empty(),
        pending_events: pending,
        drift: scanned.drift,
        cursor: from.to_string(),
        checked: scanned.checked,
        next_cursor: scanned.next.map(|n| n.to_string()),
    })
}

/// The full scan, chunk after chunk (the `flashsale reconcile` command and the tests' drain).
pub async fn reconcile(
    redis: &Pool,
    db: &MySqlPool,
    keys: &Keys,
    c: &ConnectionSettings,
) -> anyhow::Result<ReconcileReport> {
    let pending = pending_events(redis, keys, c).await?;
    let mut drift = Vec::new();
    let mut at = Some(ScanCursor::default());
    while let Some(from) = at {
        let scanned = scan(redis, db, keys, from, FULL_SCAN_CHUNK).await?;
        drift.extend(scanned.drift);
        drift.truncate(FULL_SCAN_DRIFT_CAP);
        at = scanned.next;
    }
    Ok(ReconcileReport {
        in_sync: pending == 0 && drift.is_empty(),
        pending_events: pending,
        drift,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let c = ScanCursor {
            entity: 2,
            after: 17,
        };
        assert_eq!(c.to_string(), "member:17");
        assert_eq!(ScanCursor::parse("member:17"), Some(c));
        assert_eq!(ScanCursor::parse("product:0"), Some(ScanCursor::default()));
        for junk in [
            "",
            "member",
            "member:",
            "member:-1",
            "user:3",
            "order:1e3",
            "order:99999999999999999999",
        ] {
            assert_eq!(ScanCursor::parse(junk), None, "{junk}");
        }
    }
}
