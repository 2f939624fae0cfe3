//! Operations endpoints: liveness, readiness, metrics, reconciliation.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fred::prelude::*;
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
    responses((status = 200, description = "Redis, MySQL and Kafka answer"), (status = 503, description = "A dependency does not answer")))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let redis = state.redis.next().ping::<String>(None).await.is_ok();
    let mysql = sqlx::query("SELECT 1").execute(&state.db).await.is_ok();
    let kafka =
        crate::kafka::is_ready(&state.producer, &state.settings.connections.kafka_topic).await;
    let ready = redis && mysql && kafka;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "redis": redis, "mysql": mysql, "kafka": kafka})),
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
