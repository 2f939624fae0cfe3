//! First-come coupons: admin create, read, issue (Lua, at most one per member, never one too many) and
//! the member's own coupons.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::Json;
use fred::prelude::*;

use super::{parse_json, Idempotent};
use crate::auth::{Admin, AuthMember};
use crate::domain::{
    AddCouponQuantityRequest, CouponView, CreateCouponRequest, IssuedCouponView, MyCouponView,
    MAX_COUPON_QUANTITY,
};
use crate::error::{ApiResult, Problem};
use crate::extract::ApiPath;
use crate::ids::Entity;
use crate::state::{AppState, Now};

#[utoipa::path(operation_id = "create_coupon", post, path = "/api/v1/admin/coupons", tag = "admin", request_body = CreateCouponRequest,
    params(("X-Admin-Key" = String, Header, description = "admin key")),
    responses(
        (status = 201, description = "Created", body = CouponView),
        (status = 400, description = "INVALID_REQUEST", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "VALIDATION_FAILED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    body: Bytes,
) -> ApiResult<Response> {
    let now = Now::read();
    let coupon = parse_json::<CreateCouponRequest>(&body)?.parse(now.at)?;
    let id = state.ids.next(Entity::Coupon).await?;
    state.hot_path.create_coupon(&state, id, coupon, now).await
}

#[utoipa::path(operation_id = "add_coupon_quantity", post, path = "/api/v1/admin/coupons/{id}/quantity", tag = "admin", request_body = AddCouponQuantityRequest,
    params(("id" = i64, Path, description = "coupon id"), ("X-Admin-Key" = String, Header, description = "admin key")),
    responses(
        (status = 200, description = "Added to total_quantity and remaining", body = CouponView),
        (status = 400, description = "INVALID_REQUEST", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "VALIDATION_FAILED (also: total_quantity would pass 10,000,000)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn add_quantity(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<i64>,
    body: Bytes,
) -> ApiResult<Response> {
    let add = parse_json::<AddCouponQuantityRequest>(&body)?
        .add
        .in_range("add", 1, MAX_COUPON_QUANTITY)?;
    state.hot_path.add_coupon_quantity(&state, id, add).await
}

#[utoipa::path(operation_id = "get_coupon", get, path = "/api/v1/coupons/{id}", tag = "coupons",
    params(("id" = i64, Path, description = "coupon id")),
    responses(
        (status = 200, description = "The coupon; issued + remaining = total_quantity", body = CouponView),
        (status = 404, description = "NOT_FOUND", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<CouponView>> {
    state.hot_path.coupon(&state, id).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/coupons/{id}/issue", tag = "coupons", security(("bearer" = [])),
    params(("id" = i64, Path, description = "coupon id"), ("Idempotency-Key" = Option<String>, Header, description = "optional")),
    responses(
        (status = 201, description = "Issued", body = IssuedCouponView),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "COUPON_SOLD_OUT, COUPON_ALREADY_ISSUED", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "COUPON_NOT_ACTIVE, IDEMPOTENCY_KEY_REUSED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn issue(
    State(state): State<AppState>,
    AuthMember(member): AuthMember,
    ApiPath(id): ApiPath<i64>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let idem = Idempotent::from_request(&headers, &method, &uri, &body, false)?;
    state.hot_path.issue_coupon(&state, member, id, idem).await
}

#[utoipa::path(get, path = "/api/v1/me/coupons", tag = "coupons", security(("bearer" = [])),
    responses(
        (status = 200, description = "Coupons the member holds", body = [MyCouponView]),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn mine(
    State(state): State<AppState>,
    AuthMember(member): AuthMember,
) -> ApiResult<Json<Vec<MyCouponView>>> {
    let held: HashMap<String, String> = state
        .redis
        .hgetall(state.keys.member_coupons(member))
        .await?;
    let mut ids: Vec<(i64, bool)> = held
        .iter()
        .filter_map(|(id, entry)| {
            Some((
                id.parse().ok()?,
                entry.split('|').nth(1).is_some_and(|used| used != "0"),
            ))
        })
        .collect();
    ids.sort();
    let coupons = futures::future::try_join_all(
        ids.iter()
            .map(|(id, _)| crate::hot_path::load_coupon(&state, *id)),
    )
    .await?;
    Ok(Json(
        ids.iter()
            .zip(coupons)
            .filter_map(|((_, used), coupon)| {
                coupon.map(|c| MyCouponView {
                    coupon_id: c.id,
                    name: c.name,
                    discount_type: c.discount_type,
                    discount_value: c.discount_value,
                    valid_until: c.valid_until,
                    used: *used,
                })
            })
            .collect(),
    ))
}
