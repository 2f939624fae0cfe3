//! The row changes of a batch, gathered while its events are read and written with a few multi-row
//! statements at the end (or earlier, when an event must read what the batch wrote so far: see
//! [`Writes::flush`]). A batch of 500 order events used to cost about 2,500 statements, one round trip
//! each; gathered, it is about ten, whatever its size.
//!
//! Only changes that commute are gathered: upserts that move an order forward by its status rank,
//! inserts of rows keyed by event (a duplicate is an error that rolls the batch back, as before), and
//! deltas of stock and balance, summed per row. Deltas are applied in ascending id order, so two sinks
//! lock the rows they share in the same order.
//!
//! A member's row is one commutative upsert of everything the batch knows about that member: its
//! sign-up (identity) and the sum of its ledger rows (balance). A payment that arrives before its
//! member's sign-up (two sinks, two Kafka partitions) creates the row with its balance and no identity
//! yet; the sign-up fills the identity in and never overwrites one. Nothing is read first, so no
//! locking read holds gaps of the ledger's index while the other sink inserts into them (it did: a
//! burst of sign-ups deadlocked two sinks for seconds on end).

use chrono::NaiveDateTime;
use sqlx::mysql::MySqlArguments;
use sqlx::{MySql, MySqlConnection};
use std::collections::BTreeMap;

type Res<T> = Result<T, sqlx::Error>;
type Query<'q> = sqlx::query::Query<'q, MySql, MySqlArguments>;

/// Rows per statement: far below the 65,535 placeholders and the 16 MB packet of a default server.
const ROWS_PER_STATEMENT: usize = 400;

/// One row of a multi-row statement.
trait Row {
    /// "(?, ?, ?)": one placeholder per bound value.
    const PLACEHOLDERS: &'static str;
    fn bind<'q>(&self, q: Query<'q>) -> Query<'q>;
}

pub struct OrderRow {
    pub id: i64,
    pub member_id: i64,
    pub status: &'static str,
    pub status_rank: i8,
    pub total_amount: i64,
    pub discount_amount: i64,
    pub paid_amount: i64,
    pub coupon_id: Option<i64>,
    pub expires_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
    pub paid_at: Option<NaiveDateTime>,
    pub closed_at: Option<NaiveDateTime>,
}

impl Row for OrderRow {
    const PLACEHOLDERS: &'static str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    fn bind<'q>(&self, q: Query<'q>) -> Query<'q> {
        q.bind(self.id)
            .bind(self.member_id)
            .bind(self.status)
            .bind(self.status_rank)
            .bind(self.total_amount)
            .bind(self.discount_amount)
            .bind(self.paid_amount)
            .bind(self.coupon_id)
            .bind(self.expires_at)
            .bind(self.created_at)
            .bind(self.paid_at)
            .bind(self.closed_at)
    }
}

pub struct ItemRow {
    pub order_id: i64,
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
}

impl Row for ItemRow {
    const PLACEHOLDERS: &'static str = "(?, ?, ?, ?)";
    fn bind<'q>(&self, q: Query<'q>) -> Query<'q> {
        q.bind(self.order_id)
            .bind(self.product_id)
            .bind(self.quantity)
            .bind(self.unit_price)
    }
}

pub struct PaymentRow {
    pub order_id: i64,
    pub member_id: i64,
    pub amount: i64,
    pub discount_amount: i64,
    pub coupon_id: Option<i64>,
    pub paid_at: NaiveDateTime,
    /// None for a payment, the refund's time for a refund.
    pub refunded_at: Option<NaiveDateTime>,
}

impl Row for PaymentRow {
    const PLACEHOLDERS: &'static str = "(?, ?, ?, ?, ?, ?, ?, ?)";
    fn bind<'q>(&self, q: Query<'q>) -> Query<'q> {
        q.bind(self.order_id)
            .bind(self.member_id)
            .bind(self.amount)
            .bind(self.discount_amount)
            .bind(self.coupon_id)
            .bind(if self.refunded_at.is_some() {
                "REFUNDED"
            } else {
                "PAID"
            })
            .bind(self.paid_at)
            .bind(self.refunded_at)
    }
}

pub struct MovementRow {
    pub event_id: String,
    pub product_id: i64,
    pub delta: i64,
    pub reason: &'static str,
    pub order_id: Option<i64>,
    pub at: NaiveDateTime,
}

impl Row for MovementRow {
    const PLACEHOLDERS: &'static str = "(?, ?, ?, ?, ?, ?)";
    fn bind<'q>(&self, q: Query<'q>) -> Query<'q> {
        q.bind(self.event_id.clone())
            .bind(self.product_id)
            .bind(self.delta)
            .bind(self.reason)
            .bind(self.order_id)
            .bind(self.at)
    }
}

pub struct LedgerRow {
    pub event_id: String,
    pub member_id: i64,
    /// CHARGE, USE or REFUND; `amount` is the positive size of the change.
    pub kind: &'static str,
    pub amount: i64,
    pub balance_after: i64,
    pub order_id: Option<i64>,
    pub at: NaiveDateTime,
}

impl Row for LedgerRow {
    const PLACEHOLDERS: &'static str = "(?, ?, ?, ?, ?, ?, ?)";
    fn bind<'q>(&self, q: Query<'q>) -> Query<'q> {
        q.bind(self.event_id.clone())
            .bind(self.member_id)
            .bind(self.kind)
            .bind(self.amount)
            .bind(self.balance_after)
            .bind(self.order_id)
            .bind(self.at)
    }
}

pub struct DeliveryRow {
    pub event_id: String,
    pub order_id: i64,
    pub payload: String,
    pub created_at: NaiveDateTime,
}

/// The identity a sign-up gives a member row.
pub struct MemberIdentity {
    pub email: String,
    pub name: String,
    pub created_at: NaiveDateTime,
}

/// What a batch changes of one member row.
#[derive(Default)]
struct MemberChange {
    identity: Option<MemberIdentity>,
    balance_delta: i64,
}

struct MemberUpsert<'a>(i64, &'a MemberChange);

impl Row for MemberUpsert<'_> {
    const PLACEHOLDERS: &'static str = "(?, ?, ?, ?, ?)";
    fn bind<'q>(&self, q: Query<'q>) -> Query<'q> {
        let identity = self.1.identity.as_ref();
        q.bind(self.0)
            .bind(identity.map(|i| i.email.clone()))
            .bind(identity.map(|i| i.name.clone()))
            .bind(self.1.balance_delta)
            .bind(identity.map(|i| i.created_at))
    }
}

impl Row for DeliveryRow {
    const PLACEHOLDERS: &'static str = "(?, ?, ?, 'PENDING', 0, ?, NULL, ?, NULL)";
    fn bind<'q>(&self, q: Query<'q>) -> Query<'q> {
        q.bind(self.event_id.clone())
            .bind(self.order_id)
            .bind(self.payload.clone())
            .bind(self.created_at)
            .bind(self.created_at)
    }
}

/// What a batch's events will write, in the order it must reach the tables.
#[derive(Default)]
pub struct Writes {
    orders: Vec<OrderRow>,
    items: Vec<ItemRow>,
    payments: Vec<PaymentRow>,
    refunds: Vec<PaymentRow>,
    movements: Vec<MovementRow>,
    /// product id -> summed delta of the movements above.
    stock: BTreeMap<i64, i64>,
    ledger: Vec<LedgerRow>,
    /// member id -> its sign-up in this batch and the summed delta of its ledger rows above.
    members: BTreeMap<i64, MemberChange>,
    deliveries: Vec<DeliveryRow>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
            && self.items.is_empty()
            && self.payments.is_empty()
            && self.refunds.is_empty()
            && self.movements.is_empty()
            && self.ledger.is_empty()
            && self.members.is_empty()
            && self.deliveries.is_empty()
    }

    /// Inserts the order or moves it forward (never back) by status rank, with its items.
    pub fn order(&mut self, row: OrderRow, items: impl IntoIterator<Item = ItemRow>) {
        // The items of an order never change: the first snapshot of the batch brings them.
        if !self.orders.iter().any(|o| o.id == row.id) {
            self.items.extend(items);
        }
        self.orders.push(row);
    }

    /// A payment row (an existing row, e.g. already refunded, is left as it is).
    pub fn payment(&mut self, row: PaymentRow) {
        self.payments.push(row);
    }

    /// A refund: the payment row is created REFUNDED or turned REFUNDED.
    pub fn refund(&mut self, row: PaymentRow) {
        self.refunds.push(row);
    }

    /// A stock movement of the event, applied to the product's stock (when the product row exists; a
    /// product created later starts from the sum of its movements).
    pub fn stock_movement(&mut self, row: MovementRow) {
        *self.stock.entry(row.product_id).or_default() += row.delta;
        self.movements.push(row);
    }

    /// A points ledger row, applied to the member's balance with `delta` (the member row is created
    /// with it if its sign-up has not been applied yet).
    pub fn points(&mut self, row: LedgerRow, delta: i64) {
        self.members.entry(row.member_id).or_default().balance_delta += delta;
        self.ledger.push(row);
    }

    /// A member's sign-up: its row gets this identity unless it has one already (an identity is
    /// never overwritten; the first sign-up of the batch wins, as the first applied would).
    pub fn member_registered(&mut self, member_id: i64, identity: MemberIdentity) {
        self.members
            .entry(member_id)
            .or_default()
            .identity
            .get_or_insert(identity);
    }

    /// A data platform delivery of a paid order (one per event id).
    pub fn delivery(&mut self, row: DeliveryRow) {
        self.deliveries.push(row);
    }

    /// Writes everything gathered so far and starts over. Called before an event whose effects read
    /// rows (a member or product created late sums the deltas recorded for it; a coupon's use depends
    /// on the order's status): it then sees the batch's earlier events, as if each had been applied
    /// alone. At the end of a batch, [`Writes::write_rows`] and [`Deltas::apply`] instead, with the
    /// processed_events rows in between.
    pub async fn flush(&mut self, conn: &mut MySqlConnection) -> Res<()> {
        self.write_rows(conn).await?.apply(conn).await
    }

    /// Writes the gathered rows and starts over; returns the stock and balance deltas still to
    /// apply. They are applied last in a transaction because their rows are the hot ones (a sale's
    /// product, its buyers): locked just before the commit, two sinks wait for each other only that long.
    pub async fn write_rows(&mut self, conn: &mut MySqlConnection) -> Res<Deltas> {
        let w = std::mem::take(self);
        if w.is_empty() {
            return Ok(Deltas::default());
        }
        // Assignments run left to right and see earlier ones, so status_rank is updated last.
        write_rows(
            conn,
            "INSERT INTO orders (id, member_id, status, status_rank, total_amount, discount_amount, \
             paid_amount, coupon_id, expires_at, created_at, paid_at, closed_at) VALUES",
            " ON DUPLICATE KEY UPDATE \
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
            &w.orders,
        )
        .await?;
        write_rows(
            conn,
            "INSERT IGNORE INTO order_items (order_id, product_id, quantity, unit_price) VALUES",
            "",
            &w.items,
        )
        .await?;
        const PAYMENT_HEAD: &str = "payments (order_id, member_id, amount, discount_amount, \
             coupon_id, status, paid_at, refunded_at) VALUES";
        // A refund recorded before its payment (events of one order may arrive in any order
        // after a replay) stays REFUNDED: the payment's insert is ignored.
        write_rows(
            conn,
            &format!("INSERT IGNORE INTO {PAYMENT_HEAD}"),
            "",
            &w.payments,
        )
        .await?;
        write_rows(
            conn,
            &format!("INSERT INTO {PAYMENT_HEAD}"),
            " ON DUPLICATE KEY UPDATE status = 'REFUNDED', refunded_at = VALUES(refunded_at)",
            &w.refunds,
        )
        .await?;
        // Plain INSERTs: the batch's events are new (processed_events said so), so a duplicate
        // means another sink is applying them now; the error rolls this batch back.
        write_rows(
            conn,
            "INSERT INTO stock_movements (event_id, product_id, delta, reason, order_id, at) VALUES",
            "",
            &w.movements,
        )
        .await?;
        write_rows(
            conn,
            "INSERT INTO points_ledger (event_id, member_id, type, amount, balance_after, order_id, at) VALUES",
            "",
            &w.ledger,
        )
        .await?;
        write_rows(
            conn,
            "INSERT IGNORE INTO data_platform_deliveries (event_id, order_id, payload, status, attempts, \
             next_attempt_at, last_error, created_at, delivered_at) VALUES",
            "",
            &w.deliveries,
        )
        .await?;
        Ok(Deltas {
            stock: w.stock,
            members: w.members,
        })
    }
}

/// Stock changes of rows already written (stock_movements), summed per product, and the member rows'
/// upserts (sign-ups and the ledger rows' balance deltas).
#[derive(Default)]
#[must_use = "the deltas must be applied in the same transaction"]
pub struct Deltas {
    stock: BTreeMap<i64, i64>,
    members: BTreeMap<i64, MemberChange>,
}

impl Deltas {
    /// `products.stock` += its deltas (a product row that does not exist yet is left alone: its
    /// creation starts from the recorded movements), then the member rows, both in id order.
    pub async fn apply(self, conn: &mut MySqlConnection) -> Res<()> {
        add_by_id(conn, "products", "stock", &self.stock).await?;
        let members: Vec<MemberUpsert> = self
            .members
            .iter()
            .filter(|(_, c)| c.identity.is_some() || c.balance_delta != 0)
            .map(|(id, c)| MemberUpsert(*id, c))
            .collect();
        // COALESCE: only a row created by a payment before its sign-up lacks an identity.
        write_rows(
            conn,
            "INSERT INTO members (id, email, name, balance, created_at) VALUES",
            " ON DUPLICATE KEY UPDATE email = COALESCE(email, VALUES(email)), \
             name = COALESCE(name, VALUES(name)), created_at = COALESCE(created_at, VALUES(created_at)), \
             balance = balance + VALUES(balance)",
            &members,
        )
        .await
    }
}

/// `head (?, ...), (?, ...) tail` in chunks of [`ROWS_PER_STATEMENT`] rows.
async fn write_rows<R: Row>(
    conn: &mut MySqlConnection,
    head: &str,
    tail: &str,
    rows: &[R],
) -> Res<()> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "{head} {}{tail}",
            vec![R::PLACEHOLDERS; chunk.len()].join(", ")
        );
        let mut q = sqlx::query(&sql);
        for row in chunk {
            q = row.bind(q);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `table.column += delta` for every (id, delta), one statement per chunk, rows locked in id order.
/// A row that does not exist yet is left alone (its creation starts from the recorded deltas).
/// `table` and `column` are constants of this crate, never input.
async fn add_by_id(
    conn: &mut MySqlConnection,
    table: &str,
    column: &str,
    deltas: &BTreeMap<i64, i64>,
) -> Res<()> {
    let deltas: Vec<(i64, i64)> = deltas
        .iter()
        .filter(|(_, d)| **d != 0)
        .map(|(id, d)| (*id, *d))
        .collect();
    for chunk in deltas.chunks(ROWS_PER_STATEMENT) {
        if let [(id, delta)] = chunk {
            sqlx::query(&format!(
                "UPDATE {table} SET {column} = {column} + ? WHERE id = ?"
            ))
            .bind(*delta)
            .bind(*id)
            .execute(&mut *conn)
            .await?;
            continue;
        }
        // A derived table of (id, delta) rows: portable between MySQL 8 and MariaDB (no VALUES ROW).
        let rows = vec!["SELECT ? AS id, ? AS delta"; chunk.len()].join(" UNION ALL ");
        let sql = format!(
            "UPDATE {table} t JOIN ({rows}) d ON t.id = d.id SET t.{column} = t.{column} + d.delta"
        );
        let mut q = sqlx::query(&sql);
        for (id, delta) in chunk {
            q = q.bind(*id).bind(*delta);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
