//! Rebuilds Redis from MySQL after a Redis loss. MySQL is the durable record: members with balances,
//! products with stock and sale rules, coupons with holders, orders (live reservations included), the
//! popular ranking, the stock holds of reserved orders and each member's live units of a product (the
//! per-member limit's count). Idempotency records live only in Redis and are not rebuilt.
//! Ids need nothing: their state (the node leases, src/ids.rs) lives in MySQL, which a Redis loss does
//! not touch.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{NaiveDateTime, Utc};
use fred::prelude::*;
use sqlx::MySqlPool;

use crate::config::ConnectionSettings;
use crate::keys::Keys;
use crate::partition::Partition;
use crate::popular::POPULAR_DAY_TTL_SECS;
use crate::state::rfc3339;

fn at(t: NaiveDateTime) -> String {
    rfc3339(t.and_utc())
}

/// Order statuses whose units count against a per-member limit: live orders (a cancelled or expired
/// order gave its units back). MySQL `orders.status` holds the event's upper-case status.
pub(crate) const LIVE_STATUSES: &str = "'RESERVED', 'PAID'";

/// Units of a product each member holds in live orders, by (product, member), from MySQL: what the
/// product's `bought` hash (Keys::product_bought) holds once no order is in flight. `where_products`
/// narrows it (`AND i.product_id IN (...)`), or is empty for all products.
pub(crate) fn live_units_sql(where_products: &str) -> String {
    format!(
        "SELECT i.product_id, o.member_id, CAST(SUM(i.quantity) AS SIGNED) \
         FROM order_items i JOIN orders o ON o.id = i.order_id \
         WHERE o.status IN ({LIVE_STATUSES}) {where_products} \
         GROUP BY i.product_id, o.member_id"
    )
}

/// A product's sale rules (issue 11) as its Redis hash holds them: `sale_starts_ms`, `sale_ends_ms`
/// (Unix epoch milliseconds) and `per_member_limit`; a field absent = the rule unset. MySQL keeps them in
/// `products.sale_starts_at`, `sale_ends_at` (DATETIME(3)) and `per_member_limit` (INT), NULL = unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaleRules {
    pub starts_ms: Option<i64>,
    pub ends_ms: Option<i64>,
    pub per_member_limit: Option<i64>,
}

impl SaleRules {
    /// The product hash fields, in this order.
    pub const FIELDS: [&'static str; 3] = ["sale_starts_ms", "sale_ends_ms", "per_member_limit"];

    pub fn from_mysql(
        starts: Option<NaiveDateTime>,
        ends: Option<NaiveDateTime>,
        per_member_limit: Option<i32>,
    ) -> Self {
        SaleRules {
            starts_ms: starts.map(|t| t.and_utc().timestamp_millis()),
            ends_ms: ends.map(|t| t.and_utc().timestamp_millis()),
            per_member_limit: per_member_limit.map(i64::from),
        }
    }

    fn values(&self) -> [Option<i64>; 3] {
        [self.starts_ms, self.ends_ms, self.per_member_limit]
    }

    /// The hash fields of the rules that are set (an unset rule has no field).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        Self::FIELDS
            .into_iter()
            .zip(self.values())
            .filter_map(|(field, v)| Some((field, v?.to_string())))
            .collect()
    }

    /// `{"sale_starts_ms": ms|null, "sale_ends_ms": ms|null, "per_member_limit": n|null}`, as reconcile
    /// reports them.
    pub fn to_json(&self) -> serde_json::Value {
        Self::FIELDS
            .into_iter()
            .zip(self.values())
            .map(|(field, v)| (field.to_string(), serde_json::json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

pub struct RebuildReport {
    pub members: usize,
    pub products: usize,
    pub coupons: usize,
    pub orders: usize,
}

pub async fn rebuild(
    redis: &Pool,
    db: &MySqlPool,
    keys: &Keys,
    connections: &ConnectionSettings,
    force: bool,
) -> anyhow::Result<RebuildReport> {
    // Events still in flight would be lost: their effects are in neither MySQL nor the new Redis.
    match crate::pipeline::reconcile::pending_events(redis, keys, connections).await {
        Ok(0) => {}
        Ok(n) if !force => {
            anyhow::bail!("{n} events are still in flight; wait for the drain or pass --force")
        }
        Ok(n) => tracing::warn!(pending = n, "rebuilding with events in flight (--force)"),
        Err(e) if !force => {
            return Err(e).context("cannot tell whether events are in flight (use --force)")
        }
        Err(e) => tracing::warn!(error = %e, "pending events unknown (--force)"),
    }
    clear(redis, keys).await?;
    let client = redis.next();

    let members: Vec<(i64, String, String, String, i64, NaiveDateTime)> =
        // Logins come back from the credentials table (the hash never travels through the pipeline).
        // CONVERT: the email column's binary collation makes the driver see VARBINARY, not text.
        // A row without an email is a member whose sign-up the sink has not applied yet (a payment
        // came first): not a member MySQL knows yet.
        sqlx::query_as(
            "SELECT m.id, CONVERT(m.email USING utf8mb4), m.name, COALESCE(c.password_hash, ''), m.balance, m.created_at \
             FROM members m LEFT JOIN member_credentials c ON c.member_id = m.id \
             WHERE m.email IS NOT NULL",
        )
            .fetch_all(db)
            .await?;
    for (id, email, name, hash, balance, created) in &members {
        let _: () = client
            .hset(
                keys.member(*id),
                vec![
                    ("id", id.to_string()),
                    ("email", email.clone()),
                    ("name", name.clone()),
                    ("password_hash", hash.clone()),
                    ("balance", balance.to_string()),
                    ("created_at", at(*created)),
                ],
            )
            .await?;
        // A confirmed claim (src/signup.rs): the key alone, no entry in the pending index (`clear`
        // removed every old one), so the claim sweep never looks at it.
        let _: () = client
            .set(keys.email(email), id.to_string(), None, None, false)
            .await?;
    }

    type ProductRow = (
        i64,
        String,
        i64,
        i64,
        NaiveDateTime,
        Option<NaiveDateTime>,
        Option<NaiveDateTime>,
        Option<i32>,
    );
    let products: Vec<ProductRow> = sqlx::query_as(
        "SELECT id, name, price, stock, created_at, sale_starts_at, sale_ends_at, per_member_limit \
         FROM products",
    )
    .fetch_all(db)
    .await?;
    for (id, name, price, stock, created, starts, ends, limit) in &products {
        let mut fields = vec![
            ("id", id.to_string()),
            ("name", name.clone()),
            ("price", price.to_string()),
            ("stock", stock.to_string()),
            ("created_at", at(*created)),
        ];
        fields.extend(SaleRules::from_mysql(*starts, *ends, *limit).fields());
        let _: () = client.hset(keys.product(*id), fields).await?;
        // The listing index from MySQL's products alone: entries of creates that crashed before their
        // product (src/routes/products.rs) do not come back.
        let _: () = client
            .zadd(
                keys.products(),
                None,
                None,
                false,
                false,
                (*id as f64, id.to_string()),
            )
            .await?;
    }

    type CouponRow = (
        i64,
        String,
        String,
        i64,
        i64,
        i64,
        NaiveDateTime,
        NaiveDateTime,
        NaiveDateTime,
    );
    let coupons: Vec<CouponRow> = sqlx::query_as(
        "SELECT id, name, discount_type, discount_value, total_quantity, remaining, valid_from, valid_until, created_at FROM coupons",
    )
    .fetch_all(db)
    .await?;
    for (id, name, kind, value, total, remaining, from, until, created) in &coupons {
        let _: () = client
            .hset(
                keys.coupon(*id),
                vec![
                    ("id", id.to_string()),
                    ("name", name.clone()),
                    ("discount_type", kind.clone()),
                    ("discount_value", value.to_string()),
                    ("total_quantity", total.to_string()),
                    ("remaining", remaining.to_string()),
                    (
                        "valid_from_ms",
                        from.and_utc().timestamp_millis().to_string(),
                    ),
                    ("valid_from", at(*from)),
                    (
                        "valid_until_ms",
                        until.and_utc().timestamp_millis().to_string(),
                    ),
                    ("valid_until", at(*until)),
                    ("created_at", at(*created)),
                ],
            )
            .await?;
        let _: i64 = client
            .zadd(
                keys.coupons(),
                None,
                None,
                false,
                false,
                (*id as f64, id.to_string()),
            )
            .await?;
    }
    // Wallet entries carry the coupon's terms (lua/lib/prelude.lua, wallet_entry).
    let terms: HashMap<i64, (String, i64, NaiveDateTime, NaiveDateTime)> = coupons
        .iter()
        .map(|(id, _, kind, value, _, _, from, until, _)| {
            (*id, (kind.clone(), *value, *from, *until))
        })
        .collect();
    let issued: Vec<(i64, i64, NaiveDateTime, Option<i64>)> =
        sqlx::query_as("SELECT coupon_id, member_id, issued_at, used_order_id FROM issued_coupons")
            .fetch_all(db)
            .await?;
    for (coupon, member, issued_at, used) in &issued {
        let _: () = client
            .hset(
                keys.coupon_holders(*coupon),
                (member.to_string(), format!("rebuilt|{}", at(*issued_at))),
            )
            .await?;
        let Some((kind, value, from, until)) = terms.get(coupon) else {
            continue;
        };
        let entry = format!(
            "{}|{}|rebuilt|{}|{kind}|{value}|{}|{}",
            issued_at.and_utc().timestamp_millis(),
            used.unwrap_or(0),
            at(*issued_at),
            from.and_utc().timestamp_millis(),
            until.and_utc().timestamp_millis(),
        );
        let _: () = client
            .hset(keys.member_coupons(*member), (coupon.to_string(), entry))
            .await?;
    }

    type OrderRow = (
        i64,
        i64,
        String,
        i64,
        i64,
        i64,
        Option<i64>,
        NaiveDateTime,
        NaiveDateTime,
        Option<NaiveDateTime>,
        Option<NaiveDateTime>,
    );
    let orders: Vec<OrderRow> = sqlx::query_as(
        "SELECT id, member_id, status, total_amount, discount_amount, paid_amount, coupon_id, expires_at, created_at, paid_at, closed_at FROM orders",
    )
    .fetch_all(db)
    .await?;
    let items: Vec<(i64, i64, i64, i64)> =
        sqlx::query_as("SELECT order_id, product_id, CAST(quantity AS SIGNED), unit_price FROM order_items ORDER BY order_id, product_id")
            .fetch_all(db)
            .await?;
    let mut items_by_order: HashMap<i64, Vec<serde_json::Value>> = HashMap::new();
    for (order, product, quantity, price) in items {
        items_by_order.entry(order).or_default().push(
            serde_json::json!({"product_id": product, "quantity": quantity, "unit_price": price}),
        );
    }
    let horizon = Utc::now().naive_utc() - chrono::Duration::seconds(POPULAR_DAY_TTL_SECS);
    for (id, member, status, total, discount, paid, coupon, expires, created, paid_at, closed_at) in
        &orders
    {
        let order_items = items_by_order.remove(id).unwrap_or_default();
        let paid_day = paid_at
            .map(|p| p.format("%Y%m%d").to_string())
            .unwrap_or_default();
        let _: () = client
            .hset(
                keys.order(*member, *id),
                vec![
                    ("id", id.to_string()),
                    ("member_id", member.to_string()),
                    ("status", status.clone()),
                    (
                        "items",
                        serde_json::Value::Array(order_items.clone()).to_string(),
                    ),
                    ("total_amount", total.to_string()),
                    ("discount_amount", discount.to_string()),
                    ("paid_amount", paid.to_string()),
                    (
                        "coupon_id",
                        coupon.map(|c| c.to_string()).unwrap_or_default(),
                    ),
                    (
                        "expires_at_ms",
                        expires.and_utc().timestamp_millis().to_string(),
                    ),
                    ("expires_at", at(*expires)),
                    ("created_at", at(*created)),
                    ("paid_at", paid_at.map(at).unwrap_or_default()),
                    ("closed_at", closed_at.map(at).unwrap_or_default()),
                    ("paid_day", paid_day.clone()),
                ],
            )
            .await?;
        if status == "RESERVED" {
            let _: () = client
                .zadd(
                    keys.reservations(Partition::of_id(*member)),
                    None,
                    None,
                    false,
                    false,
                    (expires.and_utc().timestamp_millis() as f64, id.to_string()),
                )
                .await?;
            // A reserved order's units are held in each product's slot (MySQL's stock already
            // counts them out): the hold comes back confirmed (not pending: its order exists), so
            // cancel/expire release it and pay commits it as for any order.
            for item in &order_items {
                let product = item["product_id"].as_i64().unwrap_or_default();
                let quantity = item["quantity"].as_i64().unwrap_or_default();
                let price = item["unit_price"].as_i64().unwrap_or_default();
                let _: () = client
                    .hset(
                        keys.product_holds(product),
                        (
                            id.to_string(),
                            format!(
                                "{quantity}|{member}|{price}|{}",
                                created.and_utc().timestamp_millis()
                            ),
                        ),
                    )
                    .await?;
            }
        }
        if status == "PAID" && paid_at.is_some_and(|p| p > horizon) {
            for item in &order_items {
                let product = item["product_id"].as_i64().unwrap_or_default();
                let quantity = item["quantity"].as_i64().unwrap_or_default();
                let _: f64 = client
                    .zincrby(
                        keys.popular_day(Partition::of_id(*member), &paid_day),
                        quantity as f64,
                        product.to_string(),
                    )
                    .await?;
            }
            let _: () = client
                .expire(
                    keys.popular_day(Partition::of_id(*member), &paid_day),
                    POPULAR_DAY_TTL_SECS,
                    None,
                )
                .await?;
        }
    }

    // Each member's live units of a product (the per-member limit's count): reserved orders (their
    // holds came back above) and paid ones. `clear` removed every old hash; none is written for 0.
    let live: Vec<(i64, i64, i64)> = sqlx::query_as(&live_units_sql("")).fetch_all(db).await?;
    for (product, member, units) in live {
        if units > 0 {
            let _: () = client
                .hset(
                    keys.product_bought(product),
                    (member.to_string(), units.to_string()),
                )
                .await?;
        }
    }

    crate::app::ensure_outbox_group(redis, keys).await?;
    Ok(RebuildReport {
        members: members.len(),
        products: products.len(),
        coupons: coupons.len(),
        orders: orders.len(),
    })
}

/// Deletes every key of this deployment (its prefix), on every node.
async fn clear(redis: &Pool, keys: &Keys) -> anyhow::Result<()> {
    crate::keyspace::unlink_all(redis.next(), &keys.all_pattern()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().naive_utc()
    }

    #[test]
    fn sale_rules_become_hash_fields_only_when_set() {
        let none = SaleRules::from_mysql(None, None, None);
        assert_eq!(none, SaleRules::default());
        assert!(none.fields().is_empty());
        assert_eq!(
            none.to_json(),
            serde_json::json!({"sale_starts_ms": null, "sale_ends_ms": null, "per_member_limit": null})
        );
        let all = SaleRules::from_mysql(
            Some(t("2026-11-27T05:00:00.000Z")),
            Some(t("2026-11-27T06:00:00.250Z")),
            Some(2),
        );
        assert_eq!(
            all.fields(),
            vec![
                ("sale_starts_ms", "1795755600000".to_string()),
                ("sale_ends_ms", "1795759200250".to_string()),
                ("per_member_limit", "2".to_string()),
            ]
        );
        let limit_only = SaleRules::from_mysql(None, None, Some(1));
        assert_eq!(
            limit_only.fields(),
            vec![("per_member_limit", "1".to_string())]
        );
        assert_eq!(
            limit_only.to_json(),
            serde_json::json!({"sale_starts_ms": null, "sale_ends_ms": null, "per_member_limit": 1})
        );
    }

    #[test]
    fn live_units_count_reserved_and_paid_orders_only() {
        let all = live_units_sql("");
        assert!(all.contains("o.status IN ('RESERVED', 'PAID')"), "{all}");
        assert!(all.ends_with("GROUP BY i.product_id, o.member_id"), "{all}");
        let some = live_units_sql("AND i.product_id IN (?,?)");
        assert!(
            some.contains("IN ('RESERVED', 'PAID') AND i.product_id IN (?,?) GROUP BY"),
            "{some}"
        );
    }
}
