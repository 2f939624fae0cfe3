//! Orders: reserve (all items or none), pay, cancel, read. Pay is one Lua script in the member's slot;
//! reserve and cancel are sagas of single-slot steps sequenced by src/orders.rs.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fred::prelude::*;

use super::{parse_json, parse_optional_json, Idempotent};
use crate::auth::AuthMember;
use crate::config::HotPath;
use crate::domain::{CreateOrderRequest, OrderView, PayOrderRequest};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiPath;
use crate::ids::Entity;
use crate::scripts::calls::OrderPay;
use crate::scripts::{Script, ScriptReply};
use crate::sold_out::Item;
use crate::state::{event_id, AppState, Now};

pub use crate::popular::POPULAR_DAY_TTL_SECS;

fn count_transition(reply: &ScriptReply, status: &'static str) {
    if matches!(reply, ScriptReply::Ok { .. }) {
        metrics::counter!("flashsale_orders_total", "status" => status).increment(1);
    }
}

#[utoipa::path(operation_id = "create_order", post, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])), request_body = CreateOrderRequest,
    params(("Idempotency-Key" = String, Header, description = "required, 1..255 characters")),
    responses(
        (status = 201, description = "Reserved: every item's stock is held until expires_at", body = OrderView),
        (status = 400, description = "INVALID_REQUEST, IDEMPOTENCY_KEY_REQUIRED", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND (a product)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "OUT_OF_STOCK (nothing reserved), SALE_NOT_STARTED (with sale_starts_at), SALE_ENDED (with sale_ends_at), PURCHASE_LIMIT_EXCEEDED (with remaining_allowance), CONFLICT (order id taken: an id-sequence fault)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "VALIDATION_FAILED, IDEMPOTENCY_KEY_REUSED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    AuthMember(member): AuthMember,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let idem = Idempotent::from_request(&headers, &method, &uri, &body, true)?;
    let items = parse_json::<CreateOrderRequest>(&body)?.parse()?;
    if state.settings.hot_path == HotPath::DbLock {
        return crate::dblock::create_order(&state, member, &items).await;
    }
    // The crowd before the opening second: answered from the window Redis last refused with. Not
    // executed, so not stored under the Idempotency-Key.
    if let Some(closed) = state
        .caches
        .windows
        .closed(items.iter().map(|(product, _)| *product), Now::read().ms())
    {
        metrics::counter!("flashsale_sale_rule_refusals_total", "code" => closed.code(), "answered_by" => "engine")
            .increment(1);
        return Ok(closed.reply().into_response());
    }
    // The herd after the sell-out: a single-product order for more than the units Redis last
    // reported (src/sold_out.rs). Also not executed, so not stored.
    if let [(product, quantity)] = items[..] {
        let item = Item::Product(product);
        let record = || {
            idem.digest
                .as_deref()
                .map(|digest| state.keys.idempotency(member, digest))
        };
        if crate::sold_out::refused_by_marker(&state, item, quantity, record).await? {
            return Ok(item.refusal().into_response());
        }
    }
    let order_id = state.ids.next(Entity::Order).await?;
    // The member step stamps the order with Redis time and expires it the TTL after that.
    let request = crate::orders::Reserve {
        member_id: member,
        order_id,
        idem,
        items,
        reservation_ttl_ms: state.settings.reservation_ttl_secs.saturating_mul(1000) as i64,
        event_id: event_id(),
    };
    let reply = crate::orders::reserve(state.store(), &request, Some(&state.caches)).await?;
    reply.note_entity_conflict(Script::OrderReserve, order_id);
    count_transition(&reply, "RESERVED");
    Ok(reply.into_response())
}

#[utoipa::path(post, path = "/api/v1/orders/{id}/pay", tag = "orders", security(("bearer" = [])), request_body = PayOrderRequest,
    params(("id" = i64, Path, description = "order id"), ("Idempotency-Key" = String, Header, description = "required")),
    responses(
        (status = 200, description = "Paid", body = OrderView),
        (status = 400, description = "INVALID_REQUEST, IDEMPOTENCY_KEY_REQUIRED", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "INSUFFICIENT_POINTS, ORDER_EXPIRED, ORDER_NOT_PAYABLE, COUPON_NOT_USABLE", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "VALIDATION_FAILED, IDEMPOTENCY_KEY_REUSED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn pay(
    State(state): State<AppState>,
    AuthMember(member): AuthMember,
    ApiPath(order_id): ApiPath<i64>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let idem = Idempotent::from_request(&headers, &method, &uri, &body, true)?;
    let request: PayOrderRequest = parse_optional_json(&body)?;
    let coupon = match request.coupon_id {
        Some(c) => Some(c.in_range("coupon_id", 1, i64::MAX)?),
        None => None,
    };
    if state.settings.hot_path == HotPath::DbLock {
        return crate::dblock::pay_order(&state, member, order_id, coupon).await;
    }
    // The popular-ranking bucket is the engine's day; every time decision is the script's (Redis time).
    let call = OrderPay {
        member_id: member,
        order_id,
        idem,
        coupon_id: coupon,
        day: Now::read().day(),
        popular_day_ttl_secs: POPULAR_DAY_TTL_SECS,
        event_id: event_id(),
    };
    if let Some(coupon_id) = coupon {
        // Paying right after the issue can beat the saga step that fills the wallet (its lag is
        // milliseconds): complete the step here first. It is idempotent; the worker's run then
        // changes nothing.
        let in_wallet: bool = state
            .redis
            .hexists(state.keys.member_coupons(member), coupon_id.to_string())
            .await?;
        if !in_wallet {
            crate::pipeline::saga::complete_wallet(&state, member, coupon_id)
                .await
                .map_err(ApiError::Internal)?;
        }
    }
    let reply = state
        .scripts
        .invoke(&state.redis, &state.keys, &call)
        .await?;
    count_transition(&reply, "PAID");
    Ok(reply.into_response())
}

#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = i64, Path, description = "order id"), ("Idempotency-Key" = String, Header, description = "required")),
    responses(
        (status = 200, description = "Cancelled: stock released; a paid order's points refunded and coupon returned", body = OrderView),
        (status = 400, description = "IDEMPOTENCY_KEY_REQUIRED", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "ORDER_NOT_CANCELLABLE, ORDER_BUSY (the order kept changing under the call; Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    AuthMember(member): AuthMember,
    ApiPath(order_id): ApiPath<i64>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let idem = Idempotent::from_request(&headers, &method, &uri, &body, true)?;
    // The member step, then the stock back in each product's slot (inline, so a product read right
    // after shows it; the saga worker completes it after a crash).
    let reply = crate::orders::cancel(
        state.store(),
        member,
        order_id,
        idem,
        Now::read().day(),
        event_id(),
    )
    .await?;
    count_transition(&reply, "CANCELLED");
    Ok(reply.into_response())
}

pub fn order_from_hash(h: &HashMap<String, String>) -> Option<OrderView> {
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
    let opt = |k: &str| h.get(k).filter(|v| !v.is_empty()).cloned();
    Some(OrderView {
        id: num("id")?,
        member_id: num("member_id")?,
        status: h.get("status")?.clone(),
        items: serde_json::from_str(h.get("items")?).ok()?,
        total_amount: num("total_amount")?,
        discount_amount: num("discount_amount").unwrap_or(0),
        paid_amount: num("paid_amount").unwrap_or(0),
        coupon_id: num("coupon_id"),
        expires_at: h.get("expires_at")?.clone(),
        created_at: h.get("created_at")?.clone(),
        paid_at: opt("paid_at"),
        closed_at: opt("closed_at"),
    })
}

#[utoipa::path(operation_id = "get_order", get, path = "/api/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = i64, Path, description = "order id")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND (also another member's order)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    AuthMember(member): AuthMember,
    ApiPath(order_id): ApiPath<i64>,
) -> ApiResult<Json<OrderView>> {
    if state.settings.hot_path == HotPath::DbLock {
        return crate::dblock::get_order(&state, member, order_id)
            .await
            .map(Json);
    }
    let h: HashMap<String, String> = state
        .redis
        .hgetall(state.keys.order(member, order_id))
        .await?;
    order_from_hash(&h)
        .filter(|o| o.member_id == member)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("order not found".into()))
}
