//! The baseline this project replaces (`HOT_PATH=db-lock`, for benchmarks only): coupon issue and stock
//! reservation as MySQL transactions with pessimistic row locks (`SELECT ... FOR UPDATE`), the way the
//! original Spring service did it, served over the same HTTP stack. Products, coupons and seeded members
//! live in MySQL in this mode, and pay (without coupons) spends the member's MySQL balance.

use async_trait::async_trait;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{Duration, NaiveDateTime};

use crate::domain::{
    CouponView, IssuedCouponView, NewCoupon, NewProduct, OrderItemView, OrderView, ProductView,
    RuleChange, RulesPatch,
};
use crate::error::{ApiError, ApiResult, ProblemExtensions};
use crate::ids::Entity;
use crate::scripts::calls::Idem;
use crate::state::{rfc3339, rfc3339_ms, AppState, Now};

use super::{HotPath, RedisScripts};

fn naive_ms(ms: i64) -> Option<NaiveDateTime> {
    chrono::DateTime::from_timestamp_millis(ms).map(|at| at.naive_utc())
}

fn ms_of(at: NaiveDateTime) -> i64 {
    at.and_utc().timestamp_millis()
}

/// A sale-rule refusal worded as the Redis path words it (src/orders.rs, src/sale_windows.rs).
fn rule_refusal(code: &str, detail: String, extensions: ProblemExtensions) -> Response {
    crate::scripts::ScriptReply::Refused {
        status: 409,
        code: code.into(),
        detail,
        extensions: extensions.to_json(),
    }
    .into_response()
}

fn conflict(code: &str, detail: &str) -> ApiError {
    ApiError::problem(StatusCode::CONFLICT, code, detail)
}

async fn create_product(state: &AppState, id: i64, p: NewProduct) -> ApiResult<Response> {
    sqlx::query("INSERT INTO products (id, name, price, stock, created_at, sale_starts_at, sale_ends_at, per_member_limit) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(id)
        .bind(&p.name)
        .bind(p.price)
        .bind(p.stock)
        .bind(Now::read().at.naive_utc())
        .bind(p.rules.starts_ms.and_then(naive_ms))
        .bind(p.rules.ends_ms.and_then(naive_ms))
        .bind(p.rules.per_member_limit)
        .execute(&state.db)
        .await?;
    let view = ProductView {
        id,
        name: p.name,
        price: p.price,
        stock: p.stock,
        sale_starts_at: p.rules.starts_ms.map(rfc3339_ms),
        sale_ends_at: p.rules.ends_ms.map(rfc3339_ms),
        per_member_limit: p.rules.per_member_limit,
        remaining_allowance: None,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// PATCH of the sale rules, as one locked read-modify-write of the product row.
async fn set_product_rules(state: &AppState, id: i64, patch: RulesPatch) -> ApiResult<Response> {
    let mut tx = state.db.begin().await?;
    let row: Option<(Option<NaiveDateTime>, Option<NaiveDateTime>, Option<i64>)> = sqlx::query_as(
        "SELECT sale_starts_at, sale_ends_at, CAST(per_member_limit AS SIGNED) FROM products WHERE id = ? FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((starts, ends, limit)) = row else {
        return Err(ApiError::NotFound("product not found".into()));
    };
    let pick = |change: RuleChange, current: Option<i64>| match change {
        RuleChange::Keep => current,
        RuleChange::Clear => None,
        RuleChange::Set(v) => Some(v),
    };
    let starts = pick(patch.starts_ms, starts.map(ms_of));
    let ends = pick(patch.ends_ms, ends.map(ms_of));
    let limit = pick(patch.per_member_limit, limit);
    if let (Some(s), Some(e)) = (starts, ends) {
        if e <= s {
            return Err(ApiError::validation(
                "sale_ends_at",
                "must be after sale_starts_at",
            ));
        }
    }
    sqlx::query(
        "UPDATE products SET sale_starts_at = ?, sale_ends_at = ?, per_member_limit = ? WHERE id = ?",
    )
    .bind(starts.and_then(naive_ms))
    .bind(ends.and_then(naive_ms))
    .bind(limit)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(get_product(state, id).await?).into_response())
}

/// Units of a product the member holds in live (reserved or paid) orders.
async fn live_units(state: &AppState, member: i64, product: i64) -> ApiResult<i64> {
    Ok(sqlx::query_scalar(LIVE_UNITS_SQL)
        .bind(member)
        .bind(product)
        .fetch_one(&state.db)
        .await?)
}

const LIVE_UNITS_SQL: &str =
    "SELECT CAST(COALESCE(SUM(i.quantity), 0) AS SIGNED) FROM order_items i \
     JOIN orders o ON o.id = i.order_id \
     WHERE o.member_id = ? AND i.product_id = ? AND o.status IN ('RESERVED', 'PAID')";

async fn create_coupon(state: &AppState, id: i64, c: NewCoupon) -> ApiResult<Response> {
    sqlx::query(
        "INSERT INTO coupons (id, name, discount_type, discount_value, total_quantity, remaining, valid_from, valid_until, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(&c.name)
    .bind(c.discount_type)
    .bind(c.discount_value)
    .bind(c.total_quantity)
    .bind(c.total_quantity)
    .bind(c.valid_from.naive_utc())
    .bind(c.valid_until.naive_utc())
    .bind(Now::read().at.naive_utc())
    .execute(&state.db)
    .await?;
    let view = CouponView {
        id,
        name: c.name,
        discount_type: c.discount_type.into(),
        discount_value: c.discount_value,
        total_quantity: c.total_quantity,
        remaining: c.total_quantity,
        valid_from: rfc3339(c.valid_from),
        valid_until: rfc3339(c.valid_until),
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn issue_coupon(state: &AppState, member: i64, coupon_id: i64) -> ApiResult<Response> {
    let now = Now::read();
    let mut tx = state.db.begin().await?;
    let row: Option<(i64, NaiveDateTime, NaiveDateTime)> = sqlx::query_as(
        "SELECT remaining, valid_from, valid_until FROM coupons WHERE id = ? FOR UPDATE",
    )
    .bind(coupon_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((remaining, from, until)) = row else {
        return Err(ApiError::NotFound("coupon not found".into()));
    };
    let at = now.at.naive_utc();
    if at < from || at > until {
        return Err(ApiError::problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "COUPON_NOT_ACTIVE",
            "coupon is not valid at this time",
        ));
    }
    let held: Option<(i64,)> = sqlx::query_as(
        "SELECT member_id FROM issued_coupons WHERE coupon_id = ? AND member_id = ?",
    )
    .bind(coupon_id)
    .bind(member)
    .fetch_optional(&mut *tx)
    .await?;
    if held.is_some() {
        return Err(conflict(
            "COUPON_ALREADY_ISSUED",
            "this member already holds the coupon",
        ));
    }
    if remaining <= 0 {
        return Err(conflict("COUPON_SOLD_OUT", "no coupons left"));
    }
    sqlx::query("UPDATE coupons SET remaining = remaining - 1 WHERE id = ?")
        .bind(coupon_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO issued_coupons (coupon_id, member_id, issued_at) VALUES (?, ?, ?)")
        .bind(coupon_id)
        .bind(member)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let view = IssuedCouponView {
        coupon_id,
        issued_at: now.rfc3339(),
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn create_order(state: &AppState, member: i64, items: &[(i64, i64)]) -> ApiResult<Response> {
    let order_id = state.ids.next(Entity::Order).await?;
    let now = Now::read();
    let expires = now.at + Duration::seconds(state.settings.reservation_ttl_secs as i64);
    // Lock rows in id order so two orders never wait on each other in a cycle.
    let mut sorted = items.to_vec();
    sorted.sort();
    let mut tx = state.db.begin().await?;
    let mut lines = Vec::new();
    type ProductRow = (
        i64,
        i64,
        Option<NaiveDateTime>,
        Option<NaiveDateTime>,
        Option<i64>,
        NaiveDateTime,
    );
    for (product, quantity) in &sorted {
        // The database's clock decides the window here (this baseline's one authority).
        let row: Option<ProductRow> = sqlx::query_as(
            "SELECT price, stock, sale_starts_at, sale_ends_at, CAST(per_member_limit AS SIGNED), UTC_TIMESTAMP(3) FROM products WHERE id = ? FOR UPDATE",
        )
        .bind(product)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((price, stock, starts, ends, limit, db_now)) = row else {
            return Err(ApiError::NotFound(format!("product not found: {product}")));
        };
        if let Some(starts) = starts.filter(|s| db_now < *s) {
            let (detail, ext) = crate::sale_windows::not_started_problem(*product, ms_of(starts));
            return Ok(rule_refusal("SALE_NOT_STARTED", detail, ext));
        }
        if let Some(ends) = ends.filter(|e| db_now >= *e) {
            let (detail, ext) = crate::sale_windows::ended_problem(*product, ms_of(ends));
            return Ok(rule_refusal("SALE_ENDED", detail, ext));
        }
        if let Some(limit) = limit {
            // Under the product row's lock: two orders of one member for it wait on each other.
            let live: i64 = sqlx::query_scalar(LIVE_UNITS_SQL)
                .bind(member)
                .bind(product)
                .fetch_one(&mut *tx)
                .await?;
            if live + quantity > limit {
                let remaining = (limit - live).max(0);
                return Ok(rule_refusal(
                    "PURCHASE_LIMIT_EXCEEDED",
                    format!("product {product} is limited to {limit} units per member; you may still buy {remaining}"),
                    ProblemExtensions {
                        product_id: Some(*product),
                        remaining_allowance: Some(remaining),
                        ..Default::default()
                    },
                ));
            }
        }
        if stock < *quantity {
            return Err(conflict(
                "OUT_OF_STOCK",
                &format!("not enough stock for product {product}"),
            ));
        }
        lines.push(OrderItemView {
            product_id: *product,
            quantity: *quantity,
            unit_price: price,
        });
    }
    let total: i64 = lines.iter().map(|l| l.quantity * l.unit_price).sum();
    for line in &lines {
        sqlx::query("UPDATE products SET stock = stock - ? WHERE id = ?")
            .bind(line.quantity)
            .bind(line.product_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES (?, ?, ?, ?)")
            .bind(order_id)
            .bind(line.product_id)
            .bind(line.quantity)
            .bind(line.unit_price)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO orders (id, member_id, status, status_rank, total_amount, expires_at, created_at) VALUES (?, ?, 'RESERVED', 1, ?, ?, ?)",
    )
    .bind(order_id)
    .bind(member)
    .bind(total)
    .bind(expires.naive_utc())
    .bind(now.at.naive_utc())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let view = OrderView {
        id: order_id,
        member_id: member,
        status: "RESERVED".into(),
        items: lines,
        total_amount: total,
        discount_amount: 0,
        paid_amount: 0,
        coupon_id: None,
        expires_at: rfc3339(expires),
        created_at: now.rfc3339(),
        paid_at: None,
        closed_at: None,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn get_order(state: &AppState, member: i64, order_id: i64) -> ApiResult<OrderView> {
    let row: Option<(i64, String, i64, NaiveDateTime, NaiveDateTime)> = sqlx::query_as(
        "SELECT member_id, status, total_amount, expires_at, created_at FROM orders WHERE id = ?",
    )
    .bind(order_id)
    .fetch_optional(&state.db)
    .await?;
    let Some((owner, status, total, expires, created)) = row.filter(|r| r.0 == member) else {
        return Err(ApiError::NotFound("order not found".into()));
    };
    let items: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT product_id, CAST(quantity AS SIGNED), unit_price FROM order_items WHERE order_id = ?")
            .bind(order_id)
            .fetch_all(&state.db)
            .await?;
    Ok(OrderView {
        id: order_id,
        member_id: owner,
        status,
        items: items
            .into_iter()
            .map(|(product_id, quantity, unit_price)| OrderItemView {
                product_id,
                quantity,
                unit_price,
            })
            .collect(),
        total_amount: total,
        discount_amount: 0,
        paid_amount: 0,
        coupon_id: None,
        expires_at: rfc3339(expires.and_utc()),
        created_at: rfc3339(created.and_utc()),
        paid_at: None,
        closed_at: None,
    })
}

/// Seeded members for the baseline live in MySQL (their balance is what pay spends).
async fn seed_members(
    state: &AppState,
    emails: &[String],
    hash: &str,
    balance: i64,
) -> ApiResult<Vec<i64>> {
    let mut ids = Vec::with_capacity(emails.len());
    for _ in emails {
        ids.push(state.ids.next(Entity::Member).await?);
    }
    let now = Now::read().at.naive_utc();
    for chunk in ids.iter().zip(emails).collect::<Vec<_>>().chunks(500) {
        let rows = vec!["(?, ?, 'seeded member', ?, ?)"; chunk.len()].join(",");
        let sql =
            format!("INSERT INTO members (id, email, name, balance, created_at) VALUES {rows}");
        let mut q = sqlx::query(&sql);
        for (id, email) in chunk {
            q = q.bind(**id).bind(email.as_str()).bind(balance).bind(now);
        }
        q.execute(&state.db).await?;
        // The password hash lives apart from the member row (issue 8 item 14).
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO member_credentials (member_id, password_hash, created_at) VALUES {rows}"
        );
        let mut q = sqlx::query(&sql);
        for (id, _) in chunk {
            q = q.bind(**id).bind(hash).bind(now);
        }
        q.execute(&state.db).await?;
    }
    Ok(ids)
}

async fn pay_order(
    state: &AppState,
    member: i64,
    order_id: i64,
    coupon: Option<i64>,
) -> ApiResult<Response> {
    if coupon.is_some() {
        return Err(conflict(
            "COUPON_NOT_USABLE",
            "the db-lock baseline pays without coupons",
        ));
    }
    let now = Now::read();
    let mut tx = state.db.begin().await?;
    let row: Option<(i64, String, i64, NaiveDateTime)> = sqlx::query_as(
        "SELECT member_id, status, total_amount, expires_at FROM orders WHERE id = ? FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((_, status, total, expires)) = row.filter(|r| r.0 == member) else {
        return Err(ApiError::NotFound("order not found".into()));
    };
    if status == "EXPIRED" || (status == "RESERVED" && now.at.naive_utc() >= expires) {
        return Err(conflict(
            "ORDER_EXPIRED",
            "the reservation expired before payment",
        ));
    }
    if status != "RESERVED" {
        return Err(conflict("ORDER_NOT_PAYABLE", &format!("order is {status}")));
    }
    let balance: Option<i64> =
        sqlx::query_scalar("SELECT balance FROM members WHERE id = ? FOR UPDATE")
            .bind(member)
            .fetch_optional(&mut *tx)
            .await?;
    let balance = balance.unwrap_or(0);
    if balance < total {
        return Err(conflict(
            "INSUFFICIENT_POINTS",
            &format!("order needs {total} points, balance is {balance}"),
        ));
    }
    sqlx::query("UPDATE members SET balance = balance - ? WHERE id = ?")
        .bind(total)
        .bind(member)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE orders SET status = 'PAID', status_rank = 2, paid_amount = ?, paid_at = ? WHERE id = ?")
        .bind(total)
        .bind(now.at.naive_utc())
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let order = get_order(state, member, order_id).await?;
    Ok((StatusCode::OK, Json(order)).into_response())
}

async fn get_product(state: &AppState, id: i64) -> ApiResult<ProductView> {
    type Row = (
        String,
        i64,
        i64,
        Option<NaiveDateTime>,
        Option<NaiveDateTime>,
        Option<i64>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT name, price, stock, sale_starts_at, sale_ends_at, CAST(per_member_limit AS SIGNED) FROM products WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await?;
    let (name, price, stock, starts, ends, limit) =
        row.ok_or_else(|| ApiError::NotFound("product not found".into()))?;
    Ok(ProductView {
        id,
        name,
        price,
        stock,
        sale_starts_at: starts.map(|at| rfc3339_ms(ms_of(at))),
        sale_ends_at: ends.map(|at| rfc3339_ms(ms_of(at))),
        per_member_limit: limit,
        remaining_allowance: None,
    })
}

async fn get_coupon(state: &AppState, id: i64) -> ApiResult<CouponView> {
    type Row = (String, String, i64, i64, i64, NaiveDateTime, NaiveDateTime);
    let row: Option<Row> = sqlx::query_as(
        "SELECT name, discount_type, discount_value, total_quantity, remaining, valid_from, valid_until FROM coupons WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await?;
    let (name, discount_type, discount_value, total_quantity, remaining, from, until) =
        row.ok_or_else(|| ApiError::NotFound("coupon not found".into()))?;
    Ok(CouponView {
        id,
        name,
        discount_type,
        discount_value,
        total_quantity,
        remaining,
        valid_from: rfc3339(from.and_utc()),
        valid_until: rfc3339(until.and_utc()),
    })
}

async fn balance(state: &AppState, member: i64) -> ApiResult<i64> {
    let balance: Option<i64> = sqlx::query_scalar("SELECT balance FROM members WHERE id = ?")
        .bind(member)
        .fetch_optional(&state.db)
        .await?;
    balance.ok_or_else(|| ApiError::NotFound("member not found".into()))
}

/// MySQL row locks (`HOT_PATH=db-lock`, the baseline). What the benchmarks compare runs in MySQL:
/// products, coupons, coupon issue, order reserve, pay, reads and seeding. Restocks, cancel and points
/// charge are not part of the baseline: they run the product's scripts, as they always did in this mode.
pub struct RowLocks;

#[async_trait]
impl HotPath for RowLocks {
    async fn create_product(
        &self,
        state: &AppState,
        id: i64,
        product: NewProduct,
    ) -> ApiResult<Response> {
        create_product(state, id, product).await
    }

    async fn set_product_rules(
        &self,
        state: &AppState,
        id: i64,
        patch: RulesPatch,
    ) -> ApiResult<Response> {
        set_product_rules(state, id, patch).await
    }

    async fn add_stock(&self, state: &AppState, id: i64, add: i64) -> ApiResult<Response> {
        RedisScripts.add_stock(state, id, add).await
    }

    async fn product(
        &self,
        state: &AppState,
        id: i64,
        member: Option<i64>,
    ) -> ApiResult<ProductView> {
        let mut product = get_product(state, id).await?;
        if let (Some(member), Some(limit)) = (member, product.per_member_limit) {
            let live = live_units(state, member, id).await?;
            product.remaining_allowance = Some((limit - live).max(0));
        }
        Ok(product)
    }

    async fn create_coupon(
        &self,
        state: &AppState,
        id: i64,
        coupon: NewCoupon,
        _now: Now,
    ) -> ApiResult<Response> {
        create_coupon(state, id, coupon).await
    }

    async fn add_coupon_quantity(
        &self,
        state: &AppState,
        id: i64,
        add: i64,
    ) -> ApiResult<Response> {
        RedisScripts.add_coupon_quantity(state, id, add).await
    }

    async fn coupon(&self, state: &AppState, id: i64) -> ApiResult<CouponView> {
        get_coupon(state, id).await
    }

    /// The baseline keeps no idempotency records: a resent issue answers COUPON_ALREADY_ISSUED.
    async fn issue_coupon(
        &self,
        state: &AppState,
        member: i64,
        coupon: i64,
        _idem: Idem,
    ) -> ApiResult<Response> {
        issue_coupon(state, member, coupon).await
    }

    async fn create_order(
        &self,
        state: &AppState,
        member: i64,
        _idem: Idem,
        items: Vec<(i64, i64)>,
    ) -> ApiResult<Response> {
        create_order(state, member, &items).await
    }

    async fn pay_order(
        &self,
        state: &AppState,
        member: i64,
        order_id: i64,
        _idem: Idem,
        coupon: Option<i64>,
    ) -> ApiResult<Response> {
        pay_order(state, member, order_id, coupon).await
    }

    async fn cancel_order(
        &self,
        state: &AppState,
        member: i64,
        order_id: i64,
        idem: Idem,
    ) -> ApiResult<Response> {
        RedisScripts
            .cancel_order(state, member, order_id, idem)
            .await
    }

    async fn order(&self, state: &AppState, member: i64, order_id: i64) -> ApiResult<OrderView> {
        get_order(state, member, order_id).await
    }

    async fn balance(&self, state: &AppState, member: i64) -> ApiResult<i64> {
        balance(state, member).await
    }

    async fn charge_points(
        &self,
        state: &AppState,
        member: i64,
        idem: Idem,
        amount: i64,
    ) -> ApiResult<Response> {
        RedisScripts
            .charge_points(state, member, idem, amount)
            .await
    }

    /// Members and their balances live in MySQL in the baseline (pay spends them there).
    async fn seed_members(
        &self,
        state: &AppState,
        emails: Vec<String>,
        password_hash: String,
        balance: i64,
    ) -> ApiResult<Vec<i64>> {
        seed_members(state, &emails, &password_hash, balance).await
    }
}
