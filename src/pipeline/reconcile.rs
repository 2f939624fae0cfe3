//! Reconciliation: Redis (the live sale) against MySQL (the durable record). Reports events still in
//! flight and every difference in stock, coupons, balances and order statuses, and in products' sale
//! rules (`product_rules`: the hash's `sale_starts_ms`, `sale_ends_ms`, `per_member_limit` against the
//! products columns) and members' live units of a product (`product_bought`: the product's `bought`
//! hash against the units of the member's RESERVED and PAID orders in MySQL). Like stock, the live
//! units of an order still being written (its hold taken, its order not yet in MySQL) show as drift
//! until it lands: reconcile speaks of a drained system.
//!
//! Ids are sparse (time-ordered, src/ids.rs), so the scan walks what exists, not an id range: first the
//! MySQL rows of products, coupons, members and orders in id order, each compared with its Redis hash;
//! then the deployment's Redis keys (SCAN), for the entities Redis holds and MySQL does not. Both go in
//! bounded steps, so the admin endpoint answers one page per request (`reconcile_page`, resumed by a
//! cursor) and `flashsale reconcile` runs the same steps through to the end (`reconcile`).
//!
//! E-mail keys and the pending sign-up claims (src/signup.rs) are not compared: a pending claim is a
//! sign-up in progress (or one the claim sweep settles within its deadline + margin), not drift, and
//! MySQL has no row for it until its member exists. `Keys::entity_of` knows neither key.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use fred::prelude::*;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use sqlx::MySqlPool;

use crate::config::ConnectionSettings;
use crate::domain::{Drift, ReconcilePage, ReconcileReport};
use crate::ids::Entity;
use crate::keys::Keys;
use crate::pipeline::rebuild::{live_units_sql, SaleRules};

const CONCURRENCY: usize = 256;
/// Entities in scan order; a rows cursor names one of them.
const ENTITIES: [Entity; 4] = [
    Entity::Product,
    Entity::Coupon,
    Entity::Member,
    Entity::Order,
];
/// Rows or keys per step of the full scan (`flashsale reconcile`).
const FULL_SCAN_CHUNK: i64 = 10_000;
/// The full scan lists at most this many drift entries.
const FULL_SCAN_DRIFT_CAP: usize = 1000;
/// SCAN calls one step makes at most: in a Redis shared with other deployments many calls match none
/// of this one's keys, and a page must stay bounded.
const SCAN_CALLS_PER_STEP: usize = 64;

/// What is compared for one entity: MySQL table and column, Redis hash field, and the drift's name.
struct Compared {
    table: &'static str,
    column: &'static str,
    field: &'static str,
    drift: &'static str,
}

fn compared(entity: Entity) -> Compared {
    let (table, column, field, drift) = match entity {
        Entity::Product => ("products", "CAST(stock AS CHAR)", "stock", "product_stock"),
        Entity::Coupon => (
            "coupons",
            "CAST(remaining AS CHAR)",
            "remaining",
            "coupon_remaining",
        ),
        Entity::Member => (
            "members",
            "CAST(balance AS CHAR)",
            "balance",
            "member_balance",
        ),
        Entity::Order => ("orders", "status", "status", "order_status"),
    };
    Compared {
        table,
        column,
        field,
        drift,
    }
}

/// Where a scan resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanCursor {
    /// MySQL rows of `ENTITIES[entity]` with ids above `after` are still to compare (`entity:after`).
    Rows { entity: usize, after: i64 },
    /// Redis keys from this SCAN cursor on, on the `node`th node to scan (one on a single Redis, each
    /// primary of a cluster in turn), are still to look at (`keys:cursor` on the first node,
    /// `keys<node>:cursor` on the others).
    Keys { node: usize, cursor: u64 },
}

impl Default for ScanCursor {
    fn default() -> Self {
        Self::Rows {
            entity: 0,
            after: 0,
        }
    }
}

impl ScanCursor {
    /// Parses `entity:after_id` or `keys:scan_cursor` as returned in `next_cursor`; None when malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let (name, number) = text.split_once(':')?;
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if let Some(node) = name.strip_prefix("keys") {
            let node = match node {
                "" => 0,
                digits if digits.bytes().all(|b| b.is_ascii_digit()) => digits.parse().ok()?,
                _ => return None,
            };
            return Some(Self::Keys {
                node,
                cursor: number.parse().ok()?,
            });
        }
        let entity = ENTITIES.iter().position(|e| e.name() == name)?;
        let after: i64 = number.parse().ok()?;
        Some(Self::Rows { entity, after })
    }
}

impl std::fmt::Display for ScanCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rows { entity, after } => write!(f, "{}:{after}", ENTITIES[*entity].name()),
            Self::Keys { node: 0, cursor } => write!(f, "keys:{cursor}"),
            Self::Keys { node, cursor } => write!(f, "keys{node}:{cursor}"),
        }
    }
}

/// Events accepted by Redis and not yet applied to MySQL.
pub async fn pending_events(
    redis: &Pool,
    keys: &Keys,
    c: &ConnectionSettings,
) -> anyhow::Result<i64> {
    let (_, unforwarded) = crate::pipeline::relay::outbox_backlog(redis.next(), keys).await?;
    let lag =
        crate::pipeline::kafka::group_lag(&c.kafka_brokers, &c.kafka_topic, &c.kafka_group).await?;
    Ok(unforwarded + lag)
}

/// One hash field of each entity, by (id, main key) (absent where the entity does not exist in Redis).
async fn fields(
    redis: &Pool,
    targets: Vec<(i64, String)>,
    field: &'static str,
) -> anyhow::Result<BTreeMap<i64, String>> {
    let values: Vec<(i64, Option<String>)> = futures::stream::iter(targets)
        .map(|(id, key)| async move {
            Ok::<_, fred::error::Error>((id, redis.hget::<Option<String>, _, _>(key, field).await?))
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(values
        .into_iter()
        .filter_map(|(id, v)| v.map(|v| (id, v)))
        .collect())
}

/// (id, main key) for members, products and coupons (an order's key needs its member: see
/// `compare_rows`).
fn targets(keys: &Keys, entity: Entity, ids: &[i64]) -> Vec<(i64, String)> {
    ids.iter()
        .filter_map(|id| Some((*id, keys.entity(entity, *id)?)))
        .collect()
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
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

/// Holders per coupon: Redis (coupons Redis has) against MySQL `issued_coupons`, for `ids`.
async fn compare_issued(
    redis: &Pool,
    db: &MySqlPool,
    keys: &Keys,
    ids: &[i64],
    in_redis: &BTreeMap<i64, String>,
    drift: &mut Vec<Drift>,
) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut issued = BTreeMap::new();
    for id in in_redis.keys() {
        let holders: i64 = redis.hlen(keys.coupon_holders(*id)).await?;
        issued.insert(*id, holders.to_string());
    }
    let sql = format!(
        "SELECT coupon_id, CAST(COUNT(*) AS CHAR) FROM issued_coupons \
         WHERE coupon_id IN ({}) GROUP BY coupon_id",
        placeholders(ids.len())
    );
    let mut query = sqlx::query_as::<_, (i64, String)>(&sql);
    for id in ids {
        query = query.bind(*id);
    }
    let counted: BTreeMap<i64, String> = query.fetch_all(db).await?.into_iter().collect();
    let issued_mysql: BTreeMap<i64, String> = in_redis
        .keys()
        .map(|id| (*id, counted.get(id).cloned().unwrap_or_else(|| "0".into())))
        .chain(counted.clone())
        .collect();
    compare("coupon_issued", &issued, &issued_mysql, drift);
    Ok(())
}

/// A hash field as reconcile reports it: absent (or empty) null, an integer a number, else the text.
fn field_json(v: Option<&str>) -> serde_json::Value {
    match v {
        None | Some("") => serde_json::Value::Null,
        Some(s) => s
            .parse::<i64>()
            .map(|n| json!(n))
            .unwrap_or_else(|_| json!(s)),
    }
}

/// The `product_rules` drift of one product: its hash's rule fields (`SaleRules::FIELDS` order) against
/// the MySQL columns (`SaleRules::default()` when MySQL has no row).
fn rules_drift(id: i64, redis: &[Option<String>], mysql: SaleRules) -> Option<Drift> {
    let redis: serde_json::Map<String, serde_json::Value> = SaleRules::FIELDS
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let value = redis.get(i).and_then(|v| v.as_deref());
            (field.to_string(), field_json(value))
        })
        .collect();
    let redis = serde_json::Value::Object(redis);
    let mysql = mysql.to_json();
    (redis != mysql).then(|| Drift {
        entity: "product_rules".into(),
        id,
        redis,
        mysql,
    })
}

/// The `product_bought` drift of one product: the members whose live units differ between its Redis
/// `bought` hash and MySQL, each side as `{member id: units}` (0 where a side has none; a field holding
/// 0 counts as absent, a value that is not an integer is shown as its text).
fn bought_drift(
    id: i64,
    redis: &HashMap<String, String>,
    mysql: Option<&BTreeMap<i64, i64>>,
) -> Option<Drift> {
    let zero = json!(0);
    let in_redis: BTreeMap<&str, serde_json::Value> = redis
        .iter()
        .map(|(member, units)| (member.as_str(), field_json(Some(units))))
        .filter(|(_, units)| *units != zero && !units.is_null())
        .collect();
    let mysql_members: Vec<(String, i64)> = mysql
        .into_iter()
        .flatten()
        .filter(|(_, units)| **units != 0)
        .map(|(member, units)| (member.to_string(), *units))
        .collect();
    let in_mysql: BTreeMap<&str, serde_json::Value> = mysql_members
        .iter()
        .map(|(member, units)| (member.as_str(), json!(units)))
        .collect();
    let members: BTreeSet<&str> = in_redis.keys().chain(in_mysql.keys()).copied().collect();
    let (mut r, mut m) = (serde_json::Map::new(), serde_json::Map::new());
    for member in members {
        let (a, b) = (in_redis.get(member), in_mysql.get(member));
        if a != b {
            r.insert(
                member.to_string(),
                a.cloned().unwrap_or_else(|| zero.clone()),
            );
            m.insert(
                member.to_string(),
                b.cloned().unwrap_or_else(|| zero.clone()),
            );
        }
    }
    (!r.is_empty()).then(|| Drift {
        entity: "product_bought".into(),
        id,
        redis: r.into(),
        mysql: m.into(),
    })
}

/// Sale rules of the products Redis holds (`ids`) against MySQL's columns.
async fn compare_rules(
    redis: &Pool,
    db: &MySqlPool,
    keys: &Keys,
    ids: &[i64],
    drift: &mut Vec<Drift>,
) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT id, sale_starts_at, sale_ends_at, per_member_limit FROM products WHERE id IN ({})",
        placeholders(ids.len())
    );
    type RulesRow = (
        i64,
        Option<chrono::NaiveDateTime>,
        Option<chrono::NaiveDateTime>,
        Option<i32>,
    );
    let mut query = sqlx::query_as::<_, RulesRow>(&sql);
    for id in ids {
        query = query.bind(*id);
    }
    let in_mysql: HashMap<i64, SaleRules> = query
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|(id, starts, ends, limit)| (id, SaleRules::from_mysql(starts, ends, limit)))
        .collect();
    let in_redis: Vec<(i64, Vec<Option<String>>)> = futures::stream::iter(ids.iter().copied())
        .map(|id| async move {
            let key = keys.product(id);
            let values: Vec<Option<String>> = redis.hmget(key, SaleRules::FIELDS.to_vec()).await?;
            Ok::<_, fred::error::Error>((id, values))
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    for (id, values) in in_redis {
        let mysql = in_mysql.get(&id).copied().unwrap_or_default();
        drift.extend(rules_drift(id, &values, mysql));
    }
    Ok(())
}

/// Members' live units of each product in `ids`: the Redis `bought` hash against MySQL's orders.
async fn compare_bought(
    redis: &Pool,
    db: &MySqlPool,
    keys: &Keys,
    ids: &[i64],
    drift: &mut Vec<Drift>,
) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let sql = live_units_sql(&format!(
        "AND i.product_id IN ({})",
        placeholders(ids.len())
    ));
    let mut query = sqlx::query_as::<_, (i64, i64, i64)>(&sql);
    for id in ids {
        query = query.bind(*id);
    }
    let mut in_mysql: HashMap<i64, BTreeMap<i64, i64>> = HashMap::new();
    for (product, member, units) in query.fetch_all(db).await? {
        in_mysql.entry(product).or_default().insert(member, units);
    }
    let in_redis: Vec<(i64, HashMap<String, String>)> = futures::stream::iter(ids.iter().copied())
        .map(|id| async move {
            let bought: HashMap<String, String> = redis.hgetall(keys.product_bought(id)).await?;
            Ok::<_, fred::error::Error>((id, bought))
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    for (id, bought) in in_redis {
        drift.extend(bought_drift(id, &bought, in_mysql.get(&id)));
    }
    Ok(())
}

/// Compares at most `limit` MySQL rows of `entity` with ids above `after` against Redis. Returns how
/// many rows there were and the last id.
async fn compare_rows(
    redis: &Pool,
    db: &MySqlPool,
    keys: &Keys,
    entity: Entity,
    (after, limit): (i64, i64),
    drift: &mut Vec<Drift>,
) -> anyhow::Result<(i64, i64)> {
    let c = compared(entity);
    // An order's key is in its member's partition: its rows bring the member along.
    let owner = if entity == Entity::Order {
        "member_id"
    } else {
        "0"
    };
    let sql = format!(
        "SELECT id, {owner}, {} FROM {} WHERE id > ? ORDER BY id LIMIT ?",
        c.column, c.table
    );
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(&sql)
        .bind(after)
        .bind(limit)
        .fetch_all(db)
        .await?;
    let ids: Vec<i64> = rows.iter().map(|(id, _, _)| *id).collect();
    let targets: Vec<(i64, String)> = if entity == Entity::Order {
        rows.iter()
            .map(|(id, member, _)| (*id, keys.order(*member, *id)))
            .collect()
    } else {
        targets(keys, entity, &ids)
    };
    let in_redis = fields(redis, targets, c.field).await?;
    let in_mysql: BTreeMap<i64, String> =
        rows.into_iter().map(|(id, _, value)| (id, value)).collect();
    compare(c.drift, &in_redis, &in_mysql, drift);
    if entity == Entity::Coupon {
        compare_issued(redis, db, keys, &ids, &in_redis, drift).await?;
    }
    if entity == Entity::Product {
        // Rules of the products Redis holds (one Redis lacks is product_stock drift already); live
        // units of every product of the page.
        let held: Vec<i64> = in_redis.keys().copied().collect();
        compare_rules(redis, db, keys, &held, drift).await?;
        compare_bought(redis, db, keys, &ids, drift).await?;
    }
    Ok((ids.len() as i64, ids.last().copied().unwrap_or(after)))
}

/// Looks at about `limit` Redis keys from `cursor` on and reports the entities among them that MySQL
/// does not have. Returns how many keys were looked at and the next SCAN cursor (0: done).
async fn compare_keys(
    redis: &Pool,
    node: Option<&fred::types::config::Server>,
    db: &MySqlPool,
    keys: &Keys,
    (cursor, limit): (u64, i64),
    drift: &mut Vec<Drift>,
) -> anyhow::Result<(i64, u64)> {
    let client = redis.next();
    let mut cursor = cursor;
    let mut looked = 0_i64;
    let mut found: [BTreeMap<i64, String>; 4] = Default::default();
    for _ in 0..SCAN_CALLS_PER_STEP {
        // COUNT is a hint (SCAN returns whole buckets): asking for what is left keeps close to `limit`.
        let count = u32::try_from((limit - looked).clamp(1, 10_000)).unwrap_or(1000);
        let (next, page) =
            crate::keyspace::scan_page(client, node, cursor, &keys.all_pattern(), count).await?;
        cursor = next;
        looked += page.len() as i64;
        for key in page {
            if let Some((entity, id)) = keys.entity_of(&key) {
                if let Some(at) = ENTITIES.iter().position(|e| *e == entity) {
                    found[at].insert(id, key);
                }
            }
        }
        if cursor == 0 || looked >= limit {
            break;
        }
    }
    for (entity, ids) in ENTITIES.into_iter().zip(found) {
        if ids.is_empty() {
            continue;
        }
        let c = compared(entity);
        let sql = format!(
            "SELECT id FROM {} WHERE id IN ({})",
            c.table,
            placeholders(ids.len())
        );
        let mut query = sqlx::query_scalar::<_, i64>(&sql);
        for id in ids.keys() {
            query = query.bind(*id);
        }
        let in_mysql: HashSet<i64> = query.fetch_all(db).await?.into_iter().collect();
        let missing: Vec<(i64, String)> = ids
            .into_iter()
            .filter(|(id, _)| !in_mysql.contains(id))
            .collect();
        let missing_ids: Vec<i64> = missing.iter().map(|(id, _)| *id).collect();
        let in_redis = fields(redis, missing, c.field).await?;
        compare(c.drift, &in_redis, &BTreeMap::new(), drift);
        if entity == Entity::Coupon {
            compare_issued(redis, db, keys, &missing_ids, &in_redis, drift).await?;
        }
        if entity == Entity::Product {
            // No MySQL row: any rule or live unit Redis holds for it is drift too.
            let held: Vec<i64> = in_redis.keys().copied().collect();
            compare_rules(redis, db, keys, &held, drift).await?;
            compare_bought(redis, db, keys, &missing_ids, drift).await?;
        }
    }
    Ok((looked, cursor))
}

/// What one bounded stretch of the scan found.
struct Scanned {
    drift: Vec<Drift>,
    checked: i64,
    next: Option<ScanCursor>,
}

/// Compares about `limit` rows and keys from `from` on: MySQL rows entity after entity, then one step of
/// the Redis keys (a page ends after it, so the SCAN work of a page stays bounded too).
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
        match at {
            ScanCursor::Rows { entity, after } => {
                let (rows, last) = compare_rows(
                    redis,
                    db,
                    keys,
                    ENTITIES[entity],
                    (after, budget),
                    &mut drift,
                )
                .await?;
                checked += rows;
                at = if rows == budget {
                    ScanCursor::Rows {
                        entity,
                        after: last,
                    }
                } else if entity + 1 < ENTITIES.len() {
                    ScanCursor::Rows {
                        entity: entity + 1,
                        after: 0,
                    }
                } else {
                    ScanCursor::Keys { node: 0, cursor: 0 }
                };
                budget -= rows;
                if budget <= 0 {
                    return Ok(Scanned {
                        drift,
                        checked,
                        next: Some(at),
                    });
                }
            }
            ScanCursor::Keys { node, cursor } => {
                let nodes = crate::keyspace::scan_nodes(redis.next());
                let Some(server) = nodes.get(node) else {
                    // A cursor from before the cluster lost a primary: nothing left to scan.
                    return Ok(Scanned {
                        drift,
                        checked,
                        next: None,
                    });
                };
                let (looked, next) = compare_keys(
                    redis,
                    server.as_ref(),
                    db,
                    keys,
                    (cursor, budget),
                    &mut drift,
                )
                .await?;
                checked += looked;
                let next = if next != 0 {
                    Some(ScanCursor::Keys { node, cursor: next })
                } else if node + 1 < nodes.len() {
                    Some(ScanCursor::Keys {
                        node: node + 1,
                        cursor: 0,
                    })
                } else {
                    None
                };
                return Ok(Scanned {
                    drift,
                    checked,
                    next,
                });
            }
        }
    }
}

/// One bounded page of the comparison: about `limit` rows or keys from `cursor` (the start when None).
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
    // SCAN may return a key twice (while Redis resizes its table): one entry per entity and id.
    let mut seen = HashSet::new();
    let mut at = Some(ScanCursor::default());
    while let Some(from) = at {
        let scanned = scan(redis, db, keys, from, FULL_SCAN_CHUNK).await?;
        for d in scanned.drift {
            if drift.len() < FULL_SCAN_DRIFT_CAP && seen.insert((d.entity.clone(), d.id)) {
                drift.push(d);
            }
        }
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

    fn some(values: &[&str]) -> Vec<Option<String>> {
        values
            .iter()
            .map(|v| (!v.is_empty()).then(|| v.to_string()))
            .collect()
    }

    #[test]
    fn rules_drift_compares_the_hash_fields_with_the_columns() {
        let t = |s: &str| Some(chrono::DateTime::parse_from_rfc3339(s).unwrap().naive_utc());
        let mysql = SaleRules::from_mysql(
            t("2026-11-27T05:00:00.000Z"),
            t("2026-11-27T06:00:00.250Z"),
            Some(2),
        );
        assert!(rules_drift(1, &some(&["1795755600000", "1795759200250", "2"]), mysql).is_none());
        // Unset everywhere: absent fields against NULL columns (an empty field counts as absent).
        assert!(rules_drift(1, &some(&["", "", ""]), SaleRules::default()).is_none());
        assert!(rules_drift(1, &[], SaleRules::default()).is_none());
        // A limit Redis lost, an end that moved, a field that is no number.
        let d = rules_drift(7, &some(&["1795755600000", "1795759200000", ""]), mysql).unwrap();
        assert_eq!((d.entity.as_str(), d.id), ("product_rules", 7));
        assert_eq!(
            d.redis,
            json!({"sale_starts_ms": 1795755600000_i64, "sale_ends_ms": 1795759200000_i64,
                   "per_member_limit": null})
        );
        assert_eq!(
            d.mysql,
            json!({"sale_starts_ms": 1795755600000_i64, "sale_ends_ms": 1795759200250_i64,
                   "per_member_limit": 2})
        );
        let d = rules_drift(7, &some(&["", "", "two"]), SaleRules::default()).unwrap();
        assert_eq!(d.redis["per_member_limit"], json!("two"));
        assert_eq!(d.mysql["per_member_limit"], json!(null));
    }

    #[test]
    fn bought_drift_lists_the_members_that_differ() {
        let redis = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(m, u)| (m.to_string(), u.to_string()))
                .collect()
        };
        let mysql: BTreeMap<i64, i64> = [(11, 2), (12, 1)].into_iter().collect();
        assert!(bought_drift(1, &redis(&[("11", "2"), ("12", "1")]), Some(&mysql)).is_none());
        // A field holding 0 is the same as no field; nothing anywhere is no drift.
        assert!(bought_drift(
            1,
            &redis(&[("11", "2"), ("12", "1"), ("13", "0")]),
            Some(&mysql)
        )
        .is_none());
        assert!(bought_drift(1, &HashMap::new(), None).is_none());
        assert!(bought_drift(1, &HashMap::new(), Some(&BTreeMap::new())).is_none());
        // 11 holds one unit too many in Redis, 12 is missing there, 14 exists only there.
        let d = bought_drift(
            5,
            &redis(&[("11", "3"), ("14", "1"), ("15", "x")]),
            Some(&mysql),
        )
        .unwrap();
        assert_eq!((d.entity.as_str(), d.id), ("product_bought", 5));
        assert_eq!(d.redis, json!({"11": 3, "12": 0, "14": 1, "15": "x"}));
        assert_eq!(d.mysql, json!({"11": 2, "12": 1, "14": 0, "15": 0}));
        // Redis lost the whole hash.
        let d = bought_drift(5, &HashMap::new(), Some(&mysql)).unwrap();
        assert_eq!(d.redis, json!({"11": 0, "12": 0}));
        assert_eq!(d.mysql, json!({"11": 2, "12": 1}));
    }

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let c = ScanCursor::Rows {
            entity: 2,
            after: 17,
        };
        assert_eq!(c.to_string(), "member:17");
        assert_eq!(ScanCursor::parse("member:17"), Some(c));
        assert_eq!(ScanCursor::parse("product:0"), Some(ScanCursor::default()));
        let k = ScanCursor::Keys {
            node: 0,
            cursor: u64::MAX,
        };
        assert_eq!(k.to_string(), "keys:18446744073709551615");
        assert_eq!(ScanCursor::parse(&k.to_string()), Some(k));
        let k = ScanCursor::Keys { node: 2, cursor: 7 };
        assert_eq!(k.to_string(), "keys2:7");
        assert_eq!(ScanCursor::parse("keys2:7"), Some(k));
        for junk in [
            "",
            "member",
            "member:",
            "member:-1",
            "member:+1",
            "user:3",
            "order:1e3",
            "order:99999999999999999999",
            "keys:",
            "keys:-1",
            "keys:18446744073709551616",
            "keys-1:3",
            "keysx:3",
        ] {
            assert_eq!(ScanCursor::parse(junk), None, "{junk}");
        }
    }
}
