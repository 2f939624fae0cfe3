//! Products: admin create and restock (Lua), listing, one product, and the popular ranking.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fred::prelude::*;

use super::{parse_json, parse_json_object};
use crate::auth::{Admin, AuthMember};
use crate::domain::{
    query_number, AddStockRequest, CreateProductRequest, ListProductsQuery, PatchProductRequest,
    PopularProduct, PopularQuery, ProductPage, ProductView, MAX_STOCK,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiPath, ApiQuery};
use crate::ids::Entity;
use crate::orders::Store;
use crate::scripts::calls::{ProductCreate, ProductRulesSet, ProductStockAdd};
use crate::scripts::ScriptReply;
use crate::state::{event_id, rfc3339_ms, AppState, Now};

#[utoipa::path(operation_id = "create_product", post, path = "/api/v1/admin/products", tag = "admin", request_body = CreateProductRequest,
    params(("X-Admin-Key" = String, Header, description = "admin key")),
    responses(
        (status = 201, description = "Created; sale_starts_at, sale_ends_at and per_member_limit are optional sale rules", body = ProductView),
        (status = 400, description = "INVALID_REQUEST", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "VALIDATION_FAILED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    body: Bytes,
) -> ApiResult<Response> {
    let product = parse_json::<CreateProductRequest>(&body)?.parse()?;
    let id = state.ids.next(Entity::Product).await?;
    if state.settings.hot_path == crate::config::HotPath::DbLock {
        return crate::dblock::create_product(&state, id, product).await;
    }
    let call = ProductCreate {
        product_id: id,
        name: product.name,
        price: product.price,
        stock: product.stock,
        rules: product.rules,
        created_at: Now::read().rfc3339(),
        event_id: event_id(),
    };
    let reply = create_in_redis(state.store(), &call).await?;
    Ok(reply.into_response())
}

#[utoipa::path(operation_id = "set_product_rules", patch, path = "/api/v1/admin/products/{id}", tag = "admin", request_body = PatchProductRequest,
    params(("id" = i64, Path, description = "product id"), ("X-Admin-Key" = String, Header, description = "admin key")),
    responses(
        (status = 200, description = "The product with its rules after the change (a change that changes nothing is not an event)", body = ProductView),
        (status = 400, description = "INVALID_REQUEST", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "VALIDATION_FAILED (also when the merged window closes before it opens)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn set_rules(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<i64>,
    body: Bytes,
) -> ApiResult<Response> {
    let patch = parse_json_object::<PatchProductRequest>(&body)?.parse()?;
    if state.settings.hot_path == crate::config::HotPath::DbLock {
        return crate::dblock::set_product_rules(&state, id, patch).await;
    }
    let now = Now::read();
    let call = ProductRulesSet {
        product_id: id,
        starts_ms: patch.starts_ms,
        ends_ms: patch.ends_ms,
        per_member_limit: patch.per_member_limit,
        now_ms: now.ms(),
        now: now.rfc3339(),
        event_id: event_id(),
    };
    let reply = state
        .scripts
        .invoke(&state.redis, &state.keys, &call)
        .await?;
    if matches!(reply, ScriptReply::Ok { .. }) {
        // Every engine (this one too) forgets the window it cached for this product.
        state.caches.forget(crate::sold_out::Item::Product(id));
        crate::invalidations::publish_product_changed(
            &state.redis,
            &state.keys.invalidations(),
            id,
        )
        .await;
    }
    Ok(reply.into_response())
}

#[utoipa::path(post, path = "/api/v1/admin/products/{id}/stock", tag = "admin", request_body = AddStockRequest,
    params(("id" = i64, Path, description = "product id"), ("X-Admin-Key" = String, Header, description = "admin key")),
    responses(
        (status = 200, description = "Stock added", body = ProductView),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "VALIDATION_FAILED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn add_stock(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<i64>,
    body: Bytes,
) -> ApiResult<Response> {
    let add = parse_json::<AddStockRequest>(&body)?
        .add
        .in_range("add", 1, MAX_STOCK)?;
    let now = Now::read();
    let call = ProductStockAdd {
        product_id: id,
        add,
        stock_limit: MAX_STOCK,
        now_ms: now.ms(),
        now: now.rfc3339(),
        event_id: event_id(),
    };
    let reply = state
        .scripts
        .invoke(&state.redis, &state.keys, &call)
        .await?;
    if matches!(reply, ScriptReply::Ok { .. }) {
        // The script told every engine; this one forgets at once, so its next answer sees the units.
        state.caches.forget(crate::sold_out::Item::Product(id));
    }
    Ok(reply.into_response())
}

/// Creates a product in Redis as two single-slot steps: the listing index entry first (its own
/// `{catalog}` slot is not the product's), then product_create. A crash in between leaves an id
/// without a product, which every reader of the index skips (`list`, the stock gauges) and
/// rebuild-redis drops; the other order could leave a product missing from the listing. A refused
/// create (CONFLICT: the id is another product's) leaves the index as it was: that product's entry.
pub async fn create_in_redis(store: Store<'_>, call: &ProductCreate) -> ApiResult<ScriptReply> {
    let id = call.product_id;
    let _: i64 = store
        .redis
        .zadd(
            store.keys.products(),
            None,
            None,
            false,
            false,
            (id as f64, id.to_string()),
        )
        .await?;
    store.scripts.invoke(store.redis, store.keys, call).await
}

pub async fn load_products(state: &AppState, ids: &[i64]) -> ApiResult<HashMap<i64, ProductView>> {
    let reads = ids.iter().map(|id| {
        let key = state.keys.product(*id);
        async move {
            state
                .redis
                .hmget::<Vec<Option<String>>, _, _>(
                    key,
                    vec![
                        "id",
                        "name",
                        "price",
                        "stock",
                        "sale_starts_ms",
                        "sale_ends_ms",
                        "per_member_limit",
                    ],
                )
                .await
        }
    });
    let rows = futures::future::try_join_all(reads).await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| product_from_fields(&row))
        .map(|p| (p.id, p))
        .collect())
}

fn product_from_fields(row: &[Option<String>]) -> Option<ProductView> {
    let get = |i: usize| row.get(i).cloned().flatten();
    let number = |i: usize| get(i).and_then(|v| v.parse::<i64>().ok());
    Some(ProductView {
        id: get(0)?.parse().ok()?,
        name: get(1)?,
        price: get(2)?.parse().ok()?,
        stock: get(3)?.parse().ok()?,
        sale_starts_at: number(4).map(rfc3339_ms),
        sale_ends_at: number(5).map(rfc3339_ms),
        per_member_limit: number(6),
        remaining_allowance: None,
    })
}

#[utoipa::path(get, path = "/api/v1/products", tag = "products", params(ListProductsQuery),
    responses(
        (status = 200, description = "A page of products by id", body = ProductPage),
        (status = 422, description = "VALIDATION_FAILED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListProductsQuery>,
) -> ApiResult<Json<ProductPage>> {
    let limit = query_number("limit", query.limit.as_deref(), 20, 1, 100)?;
    let after = query_number("cursor", query.cursor.as_deref(), 0, 0, i64::MAX)?;
    let ids: Vec<i64> = state
        .redis
        .zrangebyscore(
            state.keys.products(),
            format!("({after}"),
            "+inf",
            false,
            Some((0, limit + 1)),
        )
        .await?;
    let more = ids.len() as i64 > limit;
    let ids: Vec<i64> = ids.into_iter().take(limit as usize).collect();
    // An id without a product (a create that crashed after its index step) is skipped; the cursor
    // still moves past it.
    let products = load_products(&state, &ids).await?;
    let items: Vec<ProductView> = ids
        .iter()
        .filter_map(|id| products.get(id).cloned())
        .collect();
    let next_cursor = if more {
        ids.last().map(|id| id.to_string())
    } else {
        None
    };
    Ok(Json(ProductPage { items, next_cursor }))
}

#[utoipa::path(operation_id = "get_product", get, path = "/api/v1/products/{id}", tag = "products",
    params(("id" = i64, Path, description = "product id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The product; stock = units available now. With a member's bearer token and a per-member limit, remaining_allowance = units that member may still buy", body = ProductView),
        (status = 400, description = "INVALID_REQUEST", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED (an Authorization header that is not a valid token)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    member: Option<AuthMember>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<ProductView>> {
    if state.settings.hot_path == crate::config::HotPath::DbLock {
        let mut product = crate::dblock::get_product(&state, id).await?;
        if let (Some(AuthMember(member)), Some(limit)) = (member, product.per_member_limit) {
            let live = crate::dblock::live_units(&state, member, id).await?;
            product.remaining_allowance = Some((limit - live).max(0));
        }
        return Ok(Json(product));
    }
    let mut product = load_products(&state, &[id])
        .await?
        .remove(&id)
        .ok_or_else(|| ApiError::NotFound("product not found".into()))?;
    if let (Some(AuthMember(member)), Some(limit)) = (member, product.per_member_limit) {
        let live: Option<i64> = state
            .redis
            .hget(state.keys.product_bought(id), member)
            .await?;
        product.remaining_allowance = Some((limit - live.unwrap_or(0)).max(0));
    }
    Ok(Json(product))
}

#[utoipa::path(get, path = "/api/v1/products/popular", tag = "products", params(PopularQuery),
    responses(
        (status = 200, description = "Most units sold in paid orders over the last `days` days first", body = [PopularProduct]),
        (status = 422, description = "VALIDATION_FAILED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn popular(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PopularQuery>,
) -> ApiResult<Json<Vec<PopularProduct>>> {
    let days = query_number("days", query.days.as_deref(), 3, 1, 30)?;
    let limit = query_number("limit", query.limit.as_deref(), 5, 1, 100)?;
    let merged = crate::popular::ranking(
        &state.redis,
        &state.keys,
        &state.popular,
        state.settings.popular_cache_ms,
        Now::read().at,
        days,
    )
    .await?;
    let ranked: Vec<(i64, i64)> = merged.iter().take(limit as usize).copied().collect();
    let ids: Vec<i64> = ranked.iter().map(|(id, _)| *id).collect();
    let products = load_products(&state, &ids).await?;
    Ok(Json(
        ranked
            .into_iter()
            .filter_map(|(id, sold)| {
                products.get(&id).map(|p| PopularProduct {
                    id,
                    name: p.name.clone(),
                    price: p.price,
                    sold,
                })
            })
            .collect(),
    ))
}
