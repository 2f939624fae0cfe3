//! Orders: reserve (all items or none), pay, cancel, read. Pay is one Lua script in the member's slot;
//! reserve and cancel are sagas of single-slot steps sequenced by src/orders.rs.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::Json;

use super::{parse_json, parse_optional_json, Idempotent};
use crate::auth::AuthMember;
use crate::domain::{CreateOrderRequest, OrderView, PayOrderRequest};
use crate::error::{ApiResult, Problem};
use crate::extract::ApiPath;
use crate::state::AppState;

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
    state
        .hot_path
        .create_order(&state, member, idem, items)
        .await
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
    state
        .hot_path
        .pay_order(&state, member, order_id, idem, coupon)
        .await
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
    state
        .hot_path
        .cancel_order(&state, member, order_id, idem)
        .await
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
    state
        .hot_path
        .order(&state, member, order_id)
        .await
        .map(Json)
}
