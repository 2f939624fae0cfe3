//! Products: admin create and restock (Lua), listing, one product, and the popular ranking.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use fred::prelude::*;

use super::{parse_json, parse_json_object};
use crate::auth::{Admin, AuthMember};
use crate::domain::{
    query_number, AddStockRequest, CreateProductRequest, ListProductsQuery, PatchProductRequest,
    PopularProduct, PopularQuery, ProductPage, ProductView, MAX_STOCK,
};
use crate::error::{ApiResult, Problem};
use crate::extract::{ApiPath, ApiQuery};
use crate::ids::Entity;
use crate::state::{AppState, Now};

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
    state.hot_path.create_product(&state, id, product).await
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
    state.hot_path.set_product_rules(&state, id, patch).await
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
    state.hot_path.add_stock(&state, id, add).await
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
    let products = crate::hot_path::load_products(&state, &ids).await?;
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
    let member = member.map(|AuthMember(member)| member);
    state.hot_path.product(&state, id, member).await.map(Json)
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
    let products = crate::hot_path::load_products(&state, &ids).await?;
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
