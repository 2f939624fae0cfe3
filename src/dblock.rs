//! The baseline this project replaces (`HOT_PATH=db-lock`, for benchmarks only): coupon issue and stock
//! reservation as MySQL transactions with pessimistic row locks (`SELECT ... FOR UPDATE`), the way the
//! original Spring service did it, served over the same HTTP stack. Products and coupons are created in
//! MySQL directly in this mode; paying is not part of the baseline.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{Duration, NaiveDateTime};

use crate::domain::{
    CouponView, IssuedCouponView, NewCoupon, NewProduct, OrderItemView, OrderView, ProductView,
};
use crate::error::{ApiError, ApiResult};
use crate::ids::Entity;
use crate::state::{rfc3339, AppState, Now};

fn conflict(code: &str, detail: &str) -> ApiError {
    ApiError::problem(StatusCode::CONFLICT, code, detail)
}

pub async fn create_product(state: &AppState, id: i64, p: NewProduct) -> ApiResult<Response> {
    sqlx::query("INSERT INTO products (id, name, price, stock, created_at) VALUES (?, ?, ?, ?, ?)")
        .bind(id)
        .bind(&p.name)
        .bind(p.price)
        .bind(p.stock)
        .bind(Now::read().at.naive_utc())
        .execute(&state.db)
        .await?;
    let view = ProductView {
        id,
        name: p.name,
        price: p.price,
        stock: p.stock,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub async fn create_coupon(state: &AppState, id: i64, c: NewCoupon) -> ApiResult<Response> {
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

pub async fn issue_coupon(state: &AppState, member: i64, coupon_id: i64) -> ApiResult<Response> {
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

pub async fn create_order(
    state: &AppState,
    member: i64,
    items: &[(i64, i64)],
) -> ApiResult<Response> {
    let order_id = state.ids.next(Entity::Order).await?;
    let now = Now::read();
    let expires = now.at + Duration::seconds(state.settings.reservation_ttl_secs as i64);
    // Lock rows in id order so two orders never wait on each other in a cycle.
    let mut sorted = items.to_vec();
    sorted.sort();
    let mut tx = state.db.begin().await?;
    let mut lines = Vec::new();
    for (product, quantity) in &sorted {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT price, stock FROM products WHERE id = ? FOR UPDATE")
                .bind(product)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((price, stock)) = row else {
            return Err(ApiError::NotFound(format!("product not found: {product}")));
        };
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

pub async fn get_order(state: &AppState, member: i64, order_id: i64) -> ApiResult<OrderView> {
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
pub async fn seed_members(
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

pub async fn pay_order(
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

pub async fn get_product(state: &AppState, id: i64) -> ApiResult<ProductView> {
    let row: Option<(String, i64, i64)> =
        sqlx::query_as("SELECT name, price, stock FROM products WHERE id = ?")
            .bind(id)
            .fetch_optional(&state.db)
            .await?;
    let (name, price, stock) = row.ok_or_else(|| ApiError::NotFound("product not found".into()))?;
    Ok(ProductView {
        id,
        name,
        price,
        stock,
    })
}

pub async fn get_coupon(state: &AppState, id: i64) -> ApiResult<CouponView> {
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

pub async fn balance(state: &AppState, member: i64) -> ApiResult<i64> {
    let balance: Option<i64> = sqlx::query_scalar("SELECT balance FROM members WHERE id = ?")
        .bind(member)
        .fetch_optional(&state.db)
        .await?;
    balance.ok_or_else(|| ApiError::NotFound("member not found".into()))
}
