//! The SQL effects of one event, inside the caller's transaction. Portable between MySQL 8 and
//! MariaDB 10.11: no `INSERT ... AS alias`, no RETURNING, `VALUES(col)` in ON DUPLICATE KEY UPDATE.
//!
//! Events of different aggregates may arrive in any order (different partitions, replays), so:
//! - an order row only moves forward by `status_rank`; every order event carries the full snapshot;
//! - stock, balance and coupon `remaining` change by deltas, which commute; a row created late
//!   (product, member, coupon) starts from the deltas already recorded for it (stock_movements,
//!   points_ledger, issued_coupons), so `products.stock = SUM(stock_movements.delta)`,
//!   `members.balance = SUM(points_ledger)` (USE negative) and `coupons.remaining = total - issued`
//!   hold whatever the arrival order.
//! - points_ledger `amount` is the positive size of the change; `type` gives its direction.
//! - a product's sale rules are state, not deltas: every product.rules_changed is recorded
//!   (product_rule_changes) and the row takes the latest by `changed_at`, whatever the arrival order; a
//!   product row created after a change starts from it.

use crate::event::{
    status_rank, Body, Event, OrderSnapshot, ProductCreated, ProductRulesChanged, SaleRules,
};
use chrono::NaiveDateTime;
use serde_json::json;
use sqlx::MySqlConnection;

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Effects written.
    Applied,
    /// The event id was processed before: nothing written.
    Duplicate,
}

type Res<T> = Result<T, sqlx::Error>;

/// Applies one event (its processed_events row first; a duplicate id changes nothing).
pub async fn apply_event(
    conn: &mut MySqlConnection,
    ev: &Event,
    partition: i32,
    offset: i64,
) -> Res<Outcome> {
    let now = crate::db::now();
    let inserted = sqlx::query(
        "INSERT IGNORE INTO processed_events \
         (event_id, event_type, aggregate, kafka_partition, kafka_offset, processed_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&ev.event_id)
    .bind(&ev.event_type)
    .bind(&ev.aggregate)
    .bind(partition)
    .bind(offset)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(Outcome::Duplicate);
    }
    apply_effects(conn, ev).await?;
    Ok(Outcome::Applied)
}

/// Applies a batch in the caller's transaction: one query finds the ids processed before, the new
/// events' effects are written in order, then their processed_events rows in one multi-row INSERT.
/// (A concurrent sink applying the same ids makes that INSERT fail with a duplicate key; the caller
/// then rolls back and applies the events one by one with [`apply_event`].)
pub async fn apply_batch(
    conn: &mut MySqlConnection,
    events: &[(&Event, i32, i64)],
) -> Res<Vec<Outcome>> {
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for chunk in events.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let sql = format!("SELECT event_id FROM processed_events WHERE event_id IN ({marks})");
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for (ev, _, _) in chunk {
            q = q.bind(&ev.event_id);
        }
        seen.extend(q.fetch_all(&mut *conn).await?);
    }
    let mut out = Vec::with_capacity(events.len());
    let mut fresh: Vec<&(&Event, i32, i64)> = Vec::new();
    for item in events {
        let ev = item.0;
        if seen.insert(ev.event_id.clone()) {
            apply_effects(conn, ev).await?;
            fresh.push(item);
            out.push(Outcome::Applied);
        } else {
            out.push(Outcome::Duplicate);
        }
    }
    let now = crate::db::now();
    for chunk in fresh.chunks(200) {
        let rows = vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO processed_events \
             (event_id, event_type, aggregate, kafka_partition, kafka_offset, processed_at) VALUES {rows}"
        );
        let mut q = sqlx::query(&sql);
        for (ev, partition, offset) in chunk {
            q = q
                .bind(&ev.event_id)
                .bind(&ev.event_type)
                .bind(&ev.aggregate)
                .bind(*partition)
                .bind(*offset)
                .bind(now);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(out)
}

/// The effects of one event (without its processed_events row).
async fn apply_effects(conn: &mut MySqlConnection, ev: &Event) -> Res<()> {
    match &ev.body {
        Body::MemberRegistered(b) => {
            let exists =
                sqlx::query_scalar::<_, i64>("SELECT id FROM members WHERE id = ? FOR UPDATE")
                    .bind(b.member_id.0)
                    .fetch_optional(&mut *conn)
                    .await?;
            if exists.is_some() {
                tracing::warn!(event_id = %ev.event_id, member_id = b.member_id.0, "member exists already; nothing to do");
            } else {
                let balance = ledger_balance(conn, b.member_id.0).await?;
                sqlx::query(
                    "INSERT INTO members (id, email, name, balance, created_at) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(b.member_id.0)
                .bind(&b.email)
                .bind(&b.name)
                .bind(balance)
                .bind(b.created_at.0)
                .execute(&mut *conn)
                .await?;
            }
            // The engine writes credentials itself; an event from an older engine still carries them.
            if let Some(hash) = &b.password_hash {
                sqlx::query(
                    "INSERT IGNORE INTO member_credentials (member_id, password_hash, created_at) \
                     VALUES (?, ?, ?)",
                )
                .bind(b.member_id.0)
                .bind(hash)
                .bind(b.created_at.0)
                .execute(&mut *conn)
                .await?;
            }
        }
        Body::PointsCharged(b) => {
            ledger(
                conn,
                ev,
                b.member_id.0,
                "CHARGE",
                b.amount.0,
                b.balance_after.0,
                None,
            )
            .await?;
            add_balance(conn, b.member_id.0, b.amount.0).await?;
        }
        Body::ProductCreated(b) => product_created(conn, ev, b).await?,
        Body::ProductRulesChanged(b) => product_rules_changed(conn, ev, b).await?,
        Body::ProductStockAdded(b) => {
            stock_delta(conn, ev, b.product_id.0, b.add.0, "RESTOCK", None).await?;
        }
        Body::CouponCreated(b) => {
            let exists =
                sqlx::query_scalar::<_, i64>("SELECT id FROM coupons WHERE id = ? FOR UPDATE")
                    .bind(b.coupon_id.0)
                    .fetch_optional(&mut *conn)
                    .await?;
            if exists.is_some() {
                tracing::warn!(event_id = %ev.event_id, coupon_id = b.coupon_id.0, "coupon exists already; nothing to do");
            } else {
                let issued = sqlx::query_scalar::<_, i64>(
                    // A locking read (see ROW_CREATION_LOCKS).
                    "SELECT COUNT(*) FROM issued_coupons WHERE coupon_id = ? FOR UPDATE",
                )
                .bind(b.coupon_id.0)
                .fetch_one(&mut *conn)
                .await?;
                sqlx::query(
                    "INSERT INTO coupons (id, name, discount_type, discount_value, total_quantity, \
                     remaining, valid_from, valid_until, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(b.coupon_id.0)
                .bind(&b.name)
                .bind(&b.discount_type)
                .bind(b.discount_value.0)
                .bind(b.total_quantity.0)
                .bind(b.total_quantity.0 - issued)
                .bind(b.valid_from.0)
                .bind(b.valid_until.0)
                .bind(b.created_at.0)
                .execute(&mut *conn)
                .await?;
            }
        }
        Body::CouponIssued(b) => {
            // A paid order that used this coupon may have been applied first.
            let inserted = sqlx::query(
                "INSERT IGNORE INTO issued_coupons (coupon_id, member_id, issued_at, used_order_id) \
                 VALUES (?, ?, ?, (SELECT MAX(o.id) FROM orders o \
                                   WHERE o.member_id = ? AND o.coupon_id = ? AND o.status = 'PAID'))",
            )
            .bind(b.coupon_id.0)
            .bind(b.member_id.0)
            .bind(b.issued_at.0)
            .bind(b.member_id.0)
            .bind(b.coupon_id.0)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if inserted == 1 {
                sqlx::query("UPDATE coupons SET remaining = remaining - 1 WHERE id = ?")
                    .bind(b.coupon_id.0)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Body::OrderReserved(b) => {
            upsert_order(conn, &b.order, "RESERVED").await?;
            for (product_id, qty, _) in b.order.merged_items() {
                stock_delta(conn, ev, product_id, -qty, "RESERVE", Some(b.order.id.0)).await?;
            }
        }
        Body::OrderPaid(b) => {
            let o = &b.order;
            upsert_order(conn, o, "PAID").await?;
            let paid_at = o.paid_at.map_or(ev.at, |t| t.0);
            sqlx::query(
                "INSERT IGNORE INTO payments (order_id, member_id, amount, discount_amount, coupon_id, \
                 status, paid_at, refunded_at) VALUES (?, ?, ?, ?, ?, 'PAID', ?, NULL)",
            )
            .bind(o.id.0)
            .bind(o.member_id.0)
            .bind(o.paid())
            .bind(o.discount())
            .bind(o.coupon_id.map(|c| c.0))
            .bind(paid_at)
            .execute(&mut *conn)
            .await?;
            let balance_after = match b.balance_after {
                Some(v) => v.0,
                None => member_balance(conn, o.member_id.0).await?.unwrap_or(0) - o.paid(),
            };
            ledger(
                conn,
                ev,
                o.member_id.0,
                "USE",
                o.paid(),
                balance_after,
                Some(o.id.0),
            )
            .await?;
            add_balance(conn, o.member_id.0, -o.paid()).await?;
            // Only while the order is still PAID: a cancel applied earlier already returned the coupon.
            if let Some(coupon) = o.coupon_id {
                if order_status(conn, o.id.0).await?.as_deref() == Some("PAID") {
                    sqlx::query(
                        "UPDATE issued_coupons SET used_order_id = ? WHERE coupon_id = ? AND member_id = ?",
                    )
                    .bind(o.id.0)
                    .bind(coupon.0)
                    .bind(o.member_id.0)
                    .execute(&mut *conn)
                    .await?;
                }
            }
            let payload = json!({
                "event_id": ev.event_id,
                "order_id": o.id.0,
                "member_id": o.member_id.0,
                "items": o.items.iter().map(|i| json!({
                    "product_id": i.product_id.0, "quantity": i.quantity.0, "unit_price": i.unit_price.0,
                })).collect::<Vec<_>>(),
                "total_amount": o.total_amount.0,
                "discount_amount": o.discount(),
                "paid_amount": o.paid(),
                "paid_at": rfc3339(paid_at),
            });
            let now = crate::db::now();
            sqlx::query(
                "INSERT IGNORE INTO data_platform_deliveries (event_id, order_id, payload, status, attempts, \
                 next_attempt_at, last_error, created_at, delivered_at) \
                 VALUES (?, ?, ?, 'PENDING', 0, ?, NULL, ?, NULL)",
            )
            .bind(&ev.event_id)
            .bind(o.id.0)
            .bind(payload.to_string())
            .bind(now)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        Body::OrderCancelled(b) => {
            let o = &b.order;
            upsert_order(conn, o, "CANCELLED").await?;
            for (product_id, qty, _) in o.merged_items() {
                stock_delta(conn, ev, product_id, qty, "RELEASE", Some(o.id.0)).await?;
            }
            if b.previous_status == "PAID" {
                let refunded = b.refunded_amount.map_or(o.paid(), |v| v.0);
                let closed_at = o.closed_at.map_or(ev.at, |t| t.0);
                let paid_at = o.paid_at.map_or(closed_at, |t| t.0);
                // The paid event may come later: it then finds this row and leaves it REFUNDED.
                sqlx::query(
                    "INSERT INTO payments (order_id, member_id, amount, discount_amount, coupon_id, \
                     status, paid_at, refunded_at) VALUES (?, ?, ?, ?, ?, 'REFUNDED', ?, ?) \
                     ON DUPLICATE KEY UPDATE status = 'REFUNDED', refunded_at = VALUES(refunded_at)",
                )
                .bind(o.id.0)
                .bind(o.member_id.0)
                .bind(o.paid())
                .bind(o.discount())
                .bind(o.coupon_id.map(|c| c.0))
                .bind(paid_at)
                .bind(closed_at)
                .execute(&mut *conn)
                .await?;
                let balance_after = match b.balance_after {
                    Some(v) => v.0,
                    None => member_balance(conn, o.member_id.0).await?.unwrap_or(0) + refunded,
                };
                ledger(
                    conn,
                    ev,
                    o.member_id.0,
                    "REFUND",
                    refunded,
                    balance_after,
                    Some(o.id.0),
                )
                .await?;
                add_balance(conn, o.member_id.0, refunded).await?;
                sqlx::query(
                    "UPDATE issued_coupons SET used_order_id = NULL WHERE member_id = ? AND used_order_id = ?",
                )
                .bind(o.member_id.0)
                .bind(o.id.0)
                .execute(&mut *conn)
                .await?;
            }
        }
        Body::OrderExpired(b) => {
            upsert_order(conn, &b.order, "EXPIRED").await?;
            for (product_id, qty, _) in b.order.merged_items() {
                stock_delta(conn, ev, product_id, qty, "RELEASE", Some(b.order.id.0)).await?;
            }
        }
    }
    Ok(())
}

/// Creates the product row (once: a second product.created of the id changes nothing). Its stock starts
/// from the movements recorded so far and its sale rules from the latest product.rules_changed recorded
/// before it, if any (both locking reads: ROW_CREATION_LOCKS), else from the event.
async fn product_created(conn: &mut MySqlConnection, ev: &Event, b: &ProductCreated) -> Res<()> {
    let product_id = b.product_id.0;
    let exists = sqlx::query_scalar::<_, i64>("SELECT id FROM products WHERE id = ? FOR UPDATE")
        .bind(product_id)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_some() {
        tracing::warn!(event_id = %ev.event_id, product_id, "product exists already; nothing to do");
        return Ok(());
    }
    movement(conn, ev, product_id, b.stock.0, "CREATED", None).await?;
    let stock = sqlx::query_scalar::<_, i64>(
        // A locking read (see ROW_CREATION_LOCKS).
        "SELECT CAST(COALESCE(SUM(delta), 0) AS SIGNED) FROM stock_movements WHERE product_id = ? FOR UPDATE",
    )
    .bind(product_id)
    .fetch_one(&mut *conn)
    .await?;
    // Every change comes after the creation, so a recorded one is newer than the event's rules.
    let rules = match latest_rules(conn, product_id).await? {
        Some(changed) => changed,
        None => b.rules(),
    };
    sqlx::query(
        "INSERT INTO products (id, name, price, stock, created_at, sale_starts_at, sale_ends_at, \
         per_member_limit) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(product_id)
    .bind(&b.name)
    .bind(b.price.0)
    .bind(stock)
    .bind(b.created_at.0)
    .bind(rules.sale_starts_at)
    .bind(rules.sale_ends_at)
    .bind(rules.per_member_limit)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the change (product_rule_changes, one row per event) and sets the product's rules to the
/// latest recorded change: an older change applied late (a replay, a dead-lettered event sent again)
/// leaves a newer one in place. A product row not there yet is no error (an accepted event is never
/// poison): its product.created starts from the change recorded here.
async fn product_rules_changed(
    conn: &mut MySqlConnection,
    ev: &Event,
    b: &ProductRulesChanged,
) -> Res<()> {
    let product_id = b.product_id.0;
    let rules = b.rules();
    sqlx::query(
        "INSERT IGNORE INTO product_rule_changes (event_id, product_id, sale_starts_at, sale_ends_at, \
         per_member_limit, changed_at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&ev.event_id)
    .bind(product_id)
    .bind(rules.sale_starts_at)
    .bind(rules.sale_ends_at)
    .bind(rules.per_member_limit)
    .bind(b.changed_at.0)
    .execute(&mut *conn)
    .await?;
    let exists = sqlx::query_scalar::<_, i64>("SELECT id FROM products WHERE id = ? FOR UPDATE")
        .bind(product_id)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        tracing::warn!(event_id = %ev.event_id, product_id, "rules of a product not in MySQL yet; its creation will start from them");
        return Ok(());
    }
    let latest = latest_rules(conn, product_id).await?.unwrap_or(rules);
    sqlx::query(
        "UPDATE products SET sale_starts_at = ?, sale_ends_at = ?, per_member_limit = ? WHERE id = ?",
    )
    .bind(latest.sale_starts_at)
    .bind(latest.sale_ends_at)
    .bind(latest.per_member_limit)
    .bind(product_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The rules of the product's latest recorded change (latest `changed_at`; ties: recorded last), read
/// with a locking read (ROW_CREATION_LOCKS).
async fn latest_rules(conn: &mut MySqlConnection, product_id: i64) -> Res<Option<SaleRules>> {
    sqlx::query_as::<_, SaleRules>(
        "SELECT sale_starts_at, sale_ends_at, per_member_limit FROM product_rule_changes \
         WHERE product_id = ? ORDER BY changed_at DESC, id DESC LIMIT 1 FOR UPDATE",
    )
    .bind(product_id)
    .fetch_optional(&mut *conn)
    .await
}

/// RFC 3339 UTC with milliseconds, as the events write times.
pub fn rfc3339(t: NaiveDateTime) -> String {
    t.and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Inserts or moves the order forward (never back) by status rank, and records its items.
async fn upsert_order(conn: &mut MySqlConnection, o: &OrderSnapshot, status: &str) -> Res<()> {
    let rank = status_rank(status).unwrap_or(1);
    // Assignments run left to right and see earlier ones, so status_rank is updated last.
    sqlx::query(
        "INSERT INTO orders (id, member_id, status, status_rank, total_amount, discount_amount, paid_amount, \
         coupon_id, expires_at, created_at, paid_at, closed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE \
         member_id = IF(VALUES(status_rank) > status_rank, VALUES(member_id), member_id), \
         status = IF(VALUES(status_rank) > status_rank, VALUES(status), status), \
         total_amount = IF(VALUES(status_rank) > status_rank, VALUES(total_amount), total_amount), \
         discount_amount = IF(VALUES(status_rank) > status_rank, VALUES(discount_amount), discount_amount), \
         paid_amount = IF(VALUES(status_rank) > status_rank, VALUES(paid_amount), paid_amount), \
         coupon_id = IF(VALUES(status_rank) > status_rank, VALUES(coupon_id), coupon_id), \
         expires_at = IF(VALUES(status_rank) > status_rank, VALUES(expires_at), expires_at), \
         created_at = IF(VALUES(status_rank) > status_rank, VALUES(created_at), created_at), \
         paid_at = IF(VALUES(status_rank) > status_rank, COALESCE(VALUES(paid_at), paid_at), paid_at), \
         closed_at = IF(VALUES(status_rank) > status_rank, VALUES(closed_at), closed_at), \
         status_rank = GREATEST(status_rank, VALUES(status_rank))",
    )
    .bind(o.id.0)
    .bind(o.member_id.0)
    .bind(status)
    .bind(rank)
    .bind(o.total_amount.0)
    .bind(o.discount())
    .bind(o.paid())
    .bind(o.coupon_id.map(|c| c.0))
    .bind(o.expires_at.0)
    .bind(o.created_at.0)
    .bind(o.paid_at.map(|t| t.0))
    .bind(o.closed_at.map(|t| t.0))
    .execute(&mut *conn)
    .await?;
    for (product_id, qty, unit_price) in o.merged_items() {
        sqlx::query(
            "INSERT IGNORE INTO order_items (order_id, product_id, quantity, unit_price) VALUES (?, ?, ?, ?)",
        )
        .bind(o.id.0)
        .bind(product_id)
        .bind(qty)
        .bind(unit_price)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn order_status(conn: &mut MySqlConnection, order_id: i64) -> Res<Option<String>> {
    sqlx::query_scalar::<_, String>("SELECT status FROM orders WHERE id = ?")
        .bind(order_id)
        .fetch_optional(&mut *conn)
        .await
}

/// Records a stock movement and applies it to the product (when the product row exists yet; a product
/// created later starts from the sum of its movements).
async fn stock_delta(
    conn: &mut MySqlConnection,
    ev: &Event,
    product_id: i64,
    delta: i64,
    reason: &str,
    order_id: Option<i64>,
) -> Res<()> {
    if movement(conn, ev, product_id, delta, reason, order_id).await? {
        sqlx::query("UPDATE products SET stock = stock + ? WHERE id = ?")
            .bind(delta)
            .bind(product_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Inserts a stock_movements row; false when this event already moved this product's stock.
async fn movement(
    conn: &mut MySqlConnection,
    ev: &Event,
    product_id: i64,
    delta: i64,
    reason: &str,
    order_id: Option<i64>,
) -> Res<bool> {
    let n = sqlx::query(
        "INSERT IGNORE INTO stock_movements (event_id, product_id, delta, reason, order_id, at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&ev.event_id)
    .bind(product_id)
    .bind(delta)
    .bind(reason)
    .bind(order_id)
    .bind(ev.at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

#[allow(clippy::too_many_arguments)]
async fn ledger(
    conn: &mut MySqlConnection,
    ev: &Event,
    member_id: i64,
    kind: &str,
    amount: i64,
    balance_after: i64,
    order_id: Option<i64>,
) -> Res<()> {
    sqlx::query(
        "INSERT INTO points_ledger (event_id, member_id, type, amount, balance_after, order_id, at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&ev.event_id)
    .bind(member_id)
    .bind(kind)
    .bind(amount)
    .bind(balance_after)
    .bind(order_id)
    .bind(ev.at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn add_balance(conn: &mut MySqlConnection, member_id: i64, delta: i64) -> Res<()> {
    sqlx::query("UPDATE members SET balance = balance + ? WHERE id = ?")
        .bind(delta)
        .bind(member_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn member_balance(conn: &mut MySqlConnection, member_id: i64) -> Res<Option<i64>> {
    sqlx::query_scalar::<_, i64>("SELECT balance FROM members WHERE id = ?")
        .bind(member_id)
        .fetch_optional(&mut *conn)
        .await
}

/// Balance implied by the ledger rows recorded so far (for a member row created after them).
/// ROW_CREATION_LOCKS: a row created late starts from the deltas already recorded for it, read with
/// a locking read (FOR UPDATE, under InnoDB's default REPEATABLE READ). Two sinks apply a member's
/// sign-up and its payments at once (different Kafka partitions): with a plain read, the creating
/// transaction summed the ledger from its snapshot while a payment's transaction added a ledger row
/// and updated no member row (not there yet), so the new row missed that payment for good (seen in the
/// failover test: balances and stock in MySQL above Redis). Locked, the creator waits for a pending
/// ledger row and reads it, or blocks its insert (gap lock) until the row exists, so the writer's
/// update finds it.
async fn ledger_balance(conn: &mut MySqlConnection, member_id: i64) -> Res<i64> {
    sqlx::query_scalar::<_, i64>(
        "SELECT CAST(COALESCE(SUM(CASE type WHEN 'USE' THEN -amount ELSE amount END), 0) AS SIGNED) \
         FROM points_ledger WHERE member_id = ? FOR UPDATE",
    )
    .bind(member_id)
    .fetch_one(&mut *conn)
    .await
}
