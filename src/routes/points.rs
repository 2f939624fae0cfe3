//! Points: balance (Redis), charge (Lua), history (MySQL, the durable ledger).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::Json;

use super::{parse_json, Idempotent};
use crate::auth::AuthMember;
use crate::domain::{BalanceView, ChargeRequest, PointsHistoryEntry, MAX_CHARGE};
use crate::error::{ApiResult, Problem};
use crate::state::AppState;

#[utoipa::path(get, path = "/api/v1/me/points", tag = "points", security(("bearer" = [])),
    responses(
        (status = 200, description = "Current balance", body = BalanceView),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn balance(
    State(state): State<AppState>,
    AuthMember(member): AuthMember,
) -> ApiResult<Json<BalanceView>> {
    let balance = state.hot_path.balance(&state, member).await?;
    Ok(Json(BalanceView { balance }))
}

#[utoipa::path(post, path = "/api/v1/me/points/charge", tag = "points", security(("bearer" = [])),
    request_body = ChargeRequest,
    params(("Idempotency-Key" = String, Header, description = "required, 1..255 characters")),
    responses(
        (status = 200, description = "Charged (or replayed: header Idempotent-Replayed: true)", body = BalanceView),
        (status = 400, description = "INVALID_REQUEST, IDEMPOTENCY_KEY_REQUIRED", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "BALANCE_LIMIT_EXCEEDED", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "VALIDATION_FAILED, IDEMPOTENCY_KEY_REUSED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn charge(
    State(state): State<AppState>,
    AuthMember(member): AuthMember,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let idem = Idempotent::from_request(&headers, &method, &uri, &body, true)?;
    let amount = parse_json::<ChargeRequest>(&body)?
        .amount
        .in_range("amount", 1, MAX_CHARGE)?;
    state
        .hot_path
        .charge_points(&state, member, idem, amount)
        .await
}

#[utoipa::path(get, path = "/api/v1/me/points/history", tag = "points", security(("bearer" = [])),
    responses(
        (status = 200, description = "Ledger from MySQL, newest first (last 100; follows the pipeline by a few ms)", body = [PointsHistoryEntry]),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn history(
    State(state): State<AppState>,
    AuthMember(member): AuthMember,
) -> ApiResult<Json<Vec<PointsHistoryEntry>>> {
    let rows: Vec<(String, i64, i64, chrono::NaiveDateTime)> = sqlx::query_as(
        "SELECT type, amount, balance_after, at FROM points_ledger WHERE member_id = ? ORDER BY at DESC, id DESC LIMIT 100",
    )
    .bind(member)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(kind, amount, balance_after, at)| PointsHistoryEntry {
                r#type: kind,
                amount,
                balance_after,
                at: at.and_utc(),
            })
            .collect(),
    ))
}
