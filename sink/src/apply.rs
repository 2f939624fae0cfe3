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
    status_rank, Body, CouponCreated, CouponIssued, CouponQuantityAdded, Event, MemberRegistered,
    OrderCancelled, OrderEvent, OrderPaid, OrderSnapshot, PointsCharged, ProductCreated,
    ProductRulesChanged, SaleRules,
};
use crate::writes::{
    DeliveryRow, ItemRow, LedgerRow, MemberIdentity, MovementRow, OrderRow, PaymentRow, Writes,
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
    let mut writes = Writes::default();
    apply_effects(conn, &mut writes, ev).await?;
    writes.flush(conn).await?;
    Ok(Outcome::Applied)
}

/// Applies a batch in the caller's transaction: one query finds the ids processed before, the new
/// events' effects are gathered in order and written with a few multi-row statements ([`Writes`]),
/// then their processed_events rows in one multi-row INSERT. (A concurrent sink applying the same ids
/// makes an INSERT fail with a duplicate key; the caller then rolls back and applies the events one
/// by one with [`apply_event`].)
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
    let mut writes = Writes::default();
    for item in events {
        let ev = item.0;
        if seen.insert(ev.event_id.clone()) {
            apply_effects(conn, &mut writes, ev).await?;
            fresh.push(item);
            out.push(Outcome::Applied);
        } else {
            out.push(Outcome::Duplicate);
        }
    }
    let deltas = writes.write_rows(conn).await?;
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
    // The hot rows last (see Writes::write_rows).
    deltas.apply(conn).await?;
    Ok(out)
}

/// The effects of one event (without its processed_events row): gathered into `writes` when they
/// commute with the rest of the batch; written at once (after flushing `writes`) when they read rows.
async fn apply_effects(conn: &mut MySqlConnection, writes: &mut Writes, ev: &Event) -> Res<()> {
    match &ev.body {
        Body::MemberRegistered(b) => member_registered(conn, writes, b).await,
        Body::PointsCharged(b) => {
            points_charged(writes, ev, b);
            Ok(())
        }
        Body::ProductCreated(b) => {
            writes.flush(conn).await?;
            product_created(conn, ev, b).await
        }
        Body::ProductRulesChanged(b) => {
            writes.flush(conn).await?;
            product_rules_changed(conn, ev, b).await
        }
        Body::ProductStockAdded(b) => {
            stock_movement(writes, ev, b.product_id.0, b.add.0, "RESTOCK", None);
            Ok(())
        }
        Body::CouponCreated(b) => {
            writes.flush(conn).await?;
            coupon_created(conn, ev, b).await
        }
        Body::CouponQuantityAdded(b) => {
            writes.flush(conn).await?;
            coupon_quantity_added(conn, ev, b).await
        }
        Body::CouponIssued(b) => {
            writes.flush(conn).await?;
            coupon_issued(conn, b).await
        }
        Body::OrderReserved(b) => {
            order_reserved(writes, ev, b);
            Ok(())
        }
        Body::OrderPaid(b) => order_paid(conn, writes, ev, b).await,
        Body::OrderCancelled(b) => order_cancelled(conn, writes, ev, b).await,
        Body::OrderExpired(b) => {
            order_expired(writes, ev, b);
            Ok(())
        }
    }
}

/// Gives the member row its identity (gathered: see `Writes::member_registered`).
async fn member_registered(
    conn: &mut MySqlConnection,
    writes: &mut Writes,
    b: &MemberRegistered,
) -> Res<()> {
    writes.member_registered(
        b.member_id.0,
        MemberIdentity {
            email: b.email.clone(),
            name: b.name.clone(),
            created_at: b.created_at.0,
        },
    );
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
    Ok(())
}

fn points_charged(writes: &mut Writes, ev: &Event, b: &PointsCharged) {
    writes.points(
        ledger_row(
            ev,
            b.member_id.0,
            "CHARGE",
            b.amount.0,
            b.balance_after.0,
            None,
        ),
        b.amount.0,
    );
}

/// Creates the coupon row (once); its remaining count starts from the issues recorded before it.
async fn coupon_created(conn: &mut MySqlConnection, ev: &Event, b: &CouponCreated) -> Res<()> {
    let exists = sqlx::query_scalar::<_, i64>("SELECT id FROM coupons WHERE id = ? FOR UPDATE")
        .bind(b.coupon_id.0)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_some() {
        tracing::warn!(event_id = %ev.event_id, coupon_id = b.coupon_id.0, "coupon exists already; nothing to do");
        return Ok(());
    }
    let issued = sqlx::query_scalar::<_, i64>(
        // A locking read (see ROW_CREATION_LOCKS).
        "SELECT COUNT(*) FROM issued_coupons WHERE coupon_id = ? FOR UPDATE",
    )
    .bind(b.coupon_id.0)
    .fetch_one(&mut *conn)
    .await?;
    let added = sqlx::query_scalar::<_, i64>(
        // CAST: SUM is DECIMAL; also a locking read.
        "SELECT CAST(COALESCE(SUM(added), 0) AS SIGNED) FROM coupon_quantity_additions \
         WHERE coupon_id = ? FOR UPDATE",
    )
    .bind(b.coupon_id.0)
    .fetch_one(&mut *conn)
    .await?;
    let total = b.total_quantity.0 + added;
    sqlx::query(
        "INSERT INTO coupons (id, name, discount_type, discount_value, total_quantity, \
         remaining, valid_from, valid_until, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(b.coupon_id.0)
    .bind(&b.name)
    .bind(&b.discount_type)
    .bind(b.discount_value.0)
    .bind(total)
    .bind(total - issued)
    .bind(b.valid_from.0)
    .bind(b.valid_until.0)
    .bind(b.created_at.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the addition, and adds it to the coupon's total and remaining when the row exists (a
/// row created later starts from the additions recorded: `coupon_created`).
async fn coupon_quantity_added(
    conn: &mut MySqlConnection,
    ev: &Event,
    b: &CouponQuantityAdded,
) -> Res<()> {
    sqlx::query(
        "INSERT INTO coupon_quantity_additions (event_id, coupon_id, added, added_at) \
         VALUES (?, ?, ?, ?)",
    )
    .bind(&ev.event_id)
    .bind(b.coupon_id.0)
    .bind(b.add.0)
    .bind(ev.at)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE coupons SET total_quantity = total_quantity + ?, remaining = remaining + ? \
         WHERE id = ?",
    )
    .bind(b.add.0)
    .bind(b.add.0)
    .bind(b.coupon_id.0)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the issue (once per coupon and member) and counts it against the coupon's remaining.
async fn coupon_issued(conn: &mut MySqlConnection, b: &CouponIssued) -> Res<()> {
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
    Ok(())
}

fn order_reserved(writes: &mut Writes, ev: &Event, b: &OrderEvent) {
    order_row(writes, &b.order, "RESERVED");
    for (product_id, qty, _) in b.order.merged_items() {
        stock_movement(writes, ev, product_id, -qty, "RESERVE", Some(b.order.id.0));
    }
}

fn order_expired(writes: &mut Writes, ev: &Event, b: &OrderEvent) {
    order_row(writes, &b.order, "EXPIRED");
    for (product_id, qty, _) in b.order.merged_items() {
        stock_movement(writes, ev, product_id, qty, "RELEASE", Some(b.order.id.0));
    }
}

/// The order turns PAID: its payment, the points spent, the coupon marked used, and the delivery
/// to the data platform.
async fn order_paid(
    conn: &mut MySqlConnection,
    writes: &mut Writes,
    ev: &Event,
    b: &OrderPaid,
) -> Res<()> {
    let o = &b.order;
    order_row(writes, o, "PAID");
    let paid_at = o.paid_at.map_or(ev.at, |t| t.0);
    writes.payment(PaymentRow {
        order_id: o.id.0,
        member_id: o.member_id.0,
        amount: o.paid(),
        discount_amount: o.discount(),
        coupon_id: o.coupon_id.map(|c| c.0),
        paid_at,
        refunded_at: None,
    });
    let balance_after = match b.balance_after {
        Some(v) => v.0,
        // An event of an older engine: the balance as this batch left it so far.
        None => {
            writes.flush(conn).await?;
            member_balance(conn, o.member_id.0).await?.unwrap_or(0) - o.paid()
        }
    };
    writes.points(
        ledger_row(
            ev,
            o.member_id.0,
            "USE",
            o.paid(),
            balance_after,
            Some(o.id.0),
        ),
        -o.paid(),
    );
    // Only while the order is still PAID: a cancel applied earlier already returned the coupon.
    if let Some(coupon) = o.coupon_id {
        writes.flush(conn).await?;
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
    writes.delivery(DeliveryRow {
        event_id: ev.event_id.clone(),
        order_id: o.id.0,
        payload: payload.to_string(),
        created_at: crate::db::now(),
    });
    Ok(())
}

/// The order is cancelled: its units go back, and a paid order is refunded (points back, the
/// coupon free again).
async fn order_cancelled(
    conn: &mut MySqlConnection,
    writes: &mut Writes,
    ev: &Event,
    b: &OrderCancelled,
) -> Res<()> {
    let o = &b.order;
    order_row(writes, o, "CANCELLED");
    for (product_id, qty, _) in o.merged_items() {
        stock_movement(writes, ev, product_id, qty, "RELEASE", Some(o.id.0));
    }
    if b.previous_status != "PAID" {
        return Ok(());
    }
    let refunded = b.refunded_amount.map_or(o.paid(), |v| v.0);
    let closed_at = o.closed_at.map_or(ev.at, |t| t.0);
    // The paid event may come later: it then finds this row and leaves it REFUNDED.
    writes.refund(PaymentRow {
        order_id: o.id.0,
        member_id: o.member_id.0,
        amount: o.paid(),
        discount_amount: o.discount(),
        coupon_id: o.coupon_id.map(|c| c.0),
        paid_at: o.paid_at.map_or(closed_at, |t| t.0),
        refunded_at: Some(closed_at),
    });
    let balance_after = match b.balance_after {
        Some(v) => v.0,
        None => {
            writes.flush(conn).await?;
            member_balance(conn, o.member_id.0).await?.unwrap_or(0) + refunded
        }
    };
    writes.points(
        ledger_row(
            ev,
            o.member_id.0,
            "REFUND",
            refunded,
            balance_after,
            Some(o.id.0),
        ),
        refunded,
    );
    // Only an order with a coupon marked one used (order.paid and coupon.issued both go by the
    // order's coupon_id).
    if o.coupon_id.is_some() {
        writes.flush(conn).await?;
        sqlx::query(
            "UPDATE issued_coupons SET used_order_id = NULL WHERE member_id = ? AND used_order_id = ?",
        )
        .bind(o.member_id.0)
        .bind(o.id.0)
        .execute(&mut *conn)
        .await?;
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
    sqlx::query(
        "INSERT INTO stock_movements (event_id, product_id, delta, reason, order_id, at) \
         VALUES (?, ?, ?, 'CREATED', NULL, ?)",
    )
    .bind(&ev.event_id)
    .bind(product_id)
    .bind(b.stock.0)
    .bind(ev.at)
    .execute(&mut *conn)
    .await?;
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

/// The order's row at `status` (it moves forward only: see [`Writes::flush`]) and its items.
fn order_row(writes: &mut Writes, o: &OrderSnapshot, status: &'static str) {
    writes.order(
        OrderRow {
            id: o.id.0,
            member_id: o.member_id.0,
            status,
            status_rank: status_rank(status).unwrap_or(1),
            total_amount: o.total_amount.0,
            discount_amount: o.discount(),
            paid_amount: o.paid(),
            coupon_id: o.coupon_id.map(|c| c.0),
            expires_at: o.expires_at.0,
            created_at: o.created_at.0,
            paid_at: o.paid_at.map(|t| t.0),
            closed_at: o.closed_at.map(|t| t.0),
        },
        o.merged_items()
            .into_iter()
            .map(|(product_id, quantity, unit_price)| ItemRow {
                order_id: o.id.0,
                product_id,
                quantity,
                unit_price,
            }),
    );
}

async fn order_status(conn: &mut MySqlConnection, order_id: i64) -> Res<Option<String>> {
    sqlx::query_scalar::<_, String>("SELECT status FROM orders WHERE id = ?")
        .bind(order_id)
        .fetch_optional(&mut *conn)
        .await
}

/// A stock movement of the event, applied to the product's stock.
fn stock_movement(
    writes: &mut Writes,
    ev: &Event,
    product_id: i64,
    delta: i64,
    reason: &'static str,
    order_id: Option<i64>,
) {
    writes.stock_movement(MovementRow {
        event_id: ev.event_id.clone(),
        product_id,
        delta,
        reason,
        order_id,
        at: ev.at,
    });
}

fn ledger_row(
    ev: &Event,
    member_id: i64,
    kind: &'static str,
    amount: i64,
    balance_after: i64,
    order_id: Option<i64>,
) -> LedgerRow {
    LedgerRow {
        event_id: ev.event_id.clone(),
        member_id,
        kind,
        amount,
        balance_after,
        order_id,
        at: ev.at,
    }
}

async fn member_balance(conn: &mut MySqlConnection, member_id: i64) -> Res<Option<i64>> {
    sqlx::query_scalar::<_, i64>("SELECT balance FROM members WHERE id = ?")
        .bind(member_id)
        .fetch_optional(&mut *conn)
        .await
}

// ROW_CREATION_LOCKS: a product or coupon row created late starts from the deltas already recorded
// for it (stock movements; issues and quantity additions), read with a locking read (FOR UPDATE, under
// InnoDB's default REPEATABLE READ). Two sinks may apply a row's creation and its deltas at once
// (different Kafka partitions): with a plain read, the creating transaction summed the deltas from its
// snapshot while the other transaction added one and updated no row (not there yet), so the new row
// missed it for good (seen in the failover test: stock in MySQL above Redis). Locked, the creator waits
// for a pending delta row and reads it, or blocks its insert (gap lock) until the row exists, so the
// writer's update finds it. Members do without: their row is a commutative upsert (crate::writes),
// because sign-ups come in bursts and their gap locks deadlocked two sinks.
