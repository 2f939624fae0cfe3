//! Operations endpoints: liveness, readiness, metrics, reconciliation.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::Admin;
use crate::domain::{query_number, ReconcilePage, ReconcileQuery};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiQuery;
use crate::pipeline::reconcile::ScanCursor;
use crate::state::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process runs")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Redis answers: sales can be served. The body also reports MySQL and Kafka (last probe), which readiness does not depend on"),
              (status = 503, description = "Redis does not answer")))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    // Sales need only Redis; MySQL and Kafka sit behind the outbox, so their outage must not take the
    // engine out of the load balancer. Their state comes from the background probe.
    let redis = crate::dependencies::redis_up(&state).await;
    let status = if redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let dependencies = &state.dependencies;
    (
        status,
        Json(json!({
            "ready": redis,
            "redis": redis,
            "mysql": dependencies.mysql(),
            "kafka": dependencies.kafka(),
        })),
    )
        .into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render_metrics(),
    )
        .into_response()
}

/// Rows or keys compared per admin reconcile page: small enough to answer well within the request timeout.
const RECONCILE_PAGE_DEFAULT: i64 = 1000;
const RECONCILE_PAGE_MAX: i64 = 5000;

#[utoipa::path(get, path = "/api/v1/admin/reconcile", tag = "admin",
    params(("X-Admin-Key" = String, Header, description = "admin key"), ReconcileQuery),
    responses(
        (status = 200, description = "One page of Redis compared with MySQL; follow `next_cursor` to the end (`flashsale reconcile` runs the whole scan)", body = ReconcilePage),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "VALIDATION_FAILED", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "SERVICE_UNAVAILABLE (Redis, MySQL or Kafka did not answer; Retry-After)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reconcile(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<ReconcileQuery>,
) -> ApiResult<Json<ReconcilePage>> {
    let limit = query_number(
        "limit",
        query.limit.as_deref(),
        RECONCILE_PAGE_DEFAULT,
        1,
        RECONCILE_PAGE_MAX,
    )?;
    let cursor = match query.cursor.as_deref() {
        None => None,
        Some(text) => Some(ScanCursor::parse(text).ok_or_else(|| {
            ApiError::validation("cursor", "must be a next_cursor this endpoint returned")
        })?),
    };
    let page = crate::pipeline::reconcile::reconcile_page(
        &state.redis,
        &state.db,
        &state.keys,
        &state.settings.connections,
        cursor,
        limit,
    )
    .await
    .map_err(|e| {
        // Every step is a read of Redis, MySQL or Kafka: one that fails or times out is a store not
        // answering, which the operator retries, not an engine fault.
        tracing::warn!(error = %e, "reconcile page failed");
        ApiError::retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "a store did not answer the comparison in time; retry",
            std::time::Duration::from_secs(2),
        )
    })?;
    Ok(Json(page))
}
