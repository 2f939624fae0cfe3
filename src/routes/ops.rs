//! Operations endpoints: liveness, readiness, metrics, reconciliation.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::Admin;
use crate::domain::ReconcileReport;
use crate::error::{ApiResult, Problem};
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

#[utoipa::path(get, path = "/api/v1/admin/reconcile", tag = "admin",
    params(("X-Admin-Key" = String, Header, description = "admin key")),
    responses(
        (status = 200, description = "Redis compared with MySQL", body = ReconcileReport),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reconcile(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<Json<ReconcileReport>> {
    let report = crate::reconcile::reconcile(
        &state.redis,
        &state.db,
        &state.keys,
        &state.settings.connections,
    )
    .await?;
    Ok(Json(report))
}
