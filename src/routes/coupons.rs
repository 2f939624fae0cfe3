//! First-come coupons: admin create, read, issue (Lua, at most one per member, never one too many) and
//! the member's own coupons.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fred::prelude::*;

use super::{parse_json, Idempotent};
use crate::auth::{Admin, AuthMember};
use crate::domain::{
    AddCouponQuantityRequest, CouponView, CreateCouponRequest, IssuedCouponView, MyCouponView,
    MAX_COUPON_QUANTITY,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiPath;
use crate::ids::Entity;
use crate::scripts::calls::{CouponCreate, CouponIssue, CouponQuantityAdd};
use crate::scripts::ScriptReply;
use crate::sold_out::Item;
use crate::state::{event_id, rfc3339, AppState, Now};

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
    if state.settings.hot_path == crate::config::HotPath::DbLock {
        return crate::dblock::create_coupon(&state, id, coupon).await;
    }
    let call = CouponCreate {
        coupon_id: id,
        name: coupon.name,
        discount_type: coupon.discount_type.to_string(),
        discount_value: coupon.discount_value,
        total_quantity: coupon.total_quantity,
        valid_from_ms: coupon.valid_from.timestamp_millis(),
        valid_from: rfc3339(coupon.valid_from),
        valid_until_ms: coupon.valid_until.timestamp_millis(),
        valid_until: rfc3339(coupon.valid_until),
        now: now.rfc3339(),
        event_id: event_id(),
    };
    let reply = state
        .scripts
        .invoke(&state.redis, &state.keys, &call)
        .await?;
    if matches!(reply, ScriptReply::Ok { .. }) {
        // The catalog index (admin path only) lives in its own slot: written after the coupon.
        let _: i64 = state
            .redis
            .zadd(
                state.keys.coupons(),
                None,
                None,
                false,
                false,
                (id as f64, id.to_string()),
            )
            .await?;
    }
    Ok(reply.into_response())
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
    let now = Now::read();
    let call = CouponQuantityAdd {
        coupon_id: id,
        add,
        quantity_limit: MAX_COUPON_QUANTITY,
        now_ms: now.ms(),
        now: now.rfc3339(),
        event_id: event_id(),
    };
    let reply = state
        .scripts
        .invoke(&state.redis, &state.keys, &call)
        .await?;
    if matches!(reply, ScriptReply::Ok { .. }) {
        // The script told every engine; this one forgets at once, so its next answer sees them.
        state.caches.sold_out.forget(Item::Coupon(id));
    }
    Ok(reply.into_response())
}

pub async fn load_coupon(state: &AppState, id: i64) -> ApiResult<Option<CouponView>> {
    let h: HashMap<String, String> = state.redis.hgetall(state.keys.coupon(id)).await?;
    Ok(coupon_from_hash(&h))
}

fn coupon_from_hash(h: &HashMap<String, String>) -> Option<CouponView> {
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
    Some(CouponView {
        id: num("id")?,
        name: h.get("name")?.clone(),
        discount_type: h.get("discount_type")?.clone(),
        discount_value: num("discount_value")?,
        total_quantity: num("total_quantity")?,
        remaining: num("remaining")?,
        valid_from: h.get("valid_from")?.clone(),
        valid_until: h.get("valid_until")?.clone(),
    })
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
    if state.settings.hot_path == crate::config::HotPath::DbLock {
        return crate::dblock::get_coupon(&state, id).await.map(Json);
    }
    load_coupon(&state, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("coupon not found".into()))
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
    if state.settings.hot_path == crate::config::HotPath::DbLock {
        return crate::dblock::issue_coupon(&state, member, id).await;
    }
    let item = Item::Coupon(id);
    if crate::sold_out::refused_by_marker(&state, item, 1, || {
        idem.digest
            .as_deref()
            .map(|digest| state.keys.coupon_idempotency(id, member, digest))
    })
    .await?
    {
        return Ok(item.refusal().into_response());
    }
    let ticket = state.caches.sold_out.ticket(item);
    let call = CouponIssue {
        coupon_id: id,
        member_id: member,
        idem,
        event_id: event_id(),
    };
    let reply = state
        .scripts
        .invoke(&state.redis, &state.keys, &call)
        .await?;
    if matches!(&reply, ScriptReply::Refused { code, .. } if code == "COUPON_SOLD_OUT") {
        state.caches.sold_out.note(ticket, 0);
    }
    Ok(reply.into_response())
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
    let coupons =
        futures::future::try_join_all(ids.iter().map(|(id, _)| load_coupon(&state, *id))).await?;
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
