//! Sign-up, login and the admin bulk seeding path used by load tests.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fred::prelude::*;

use super::parse_json;
use crate::auth::{hash_password, verify_password, Admin};
use crate::domain::{
    parse_email, LoginRequest, MemberView, SeedMembersRequest, SeededMember, SeededMembers,
    SignupRequest, TokenView, MAX_BALANCE, MAX_SEED,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::signup::{register_member, RegisterError};
use crate::state::AppState;

/// Counts an attempt against the client's quota (the address behind a trusted proxy).
fn rate_limit(state: &AppState, peer: &SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    let client = state.auth_guard.client_ip(*peer, headers);
    state.auth_guard.check_client(client)
}

/// 503 + Retry-After: sign-up needs MySQL for the credential; every other sale path only needs Redis.
fn credential_store_down(e: &sqlx::Error) -> Response {
    tracing::warn!(error = %e, "sign-up refused: cannot write member credentials to MySQL");
    let mut response = ApiError::Unavailable(
        "sign-up is unavailable for a moment (credential store unreachable); retry".into(),
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("5"),
    );
    response
}

#[utoipa::path(post, path = "/api/v1/members", tag = "members", request_body = SignupRequest,
    responses(
        (status = 201, description = "Member created", body = MemberView),
        (status = 400, description = "INVALID_REQUEST", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "EMAIL_TAKEN", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "VALIDATION_FAILED", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn signup(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    rate_limit(&state, &addr, &headers)?;
    let signup = parse_json::<SignupRequest>(&body)?.parse()?;
    state.auth_guard.check_account(&signup.email)?;
    // Cheap pre-check so a taken email does not cost an argon2 hash (a pending claim counts as taken
    // too); the claim step decides for real.
    let taken: bool = state.redis.exists(state.keys.email(&signup.email)).await?;
    if taken {
        return Err(ApiError::problem(
            StatusCode::CONFLICT,
            "EMAIL_TAKEN",
            "an account with this email already exists",
        ));
    }
    let permit = state.auth_guard.hash_permit().await?;
    let hash = hash_password(signup.password).await?;
    drop(permit);
    match register_member(&state, &signup.email, &signup.name, &hash).await {
        Ok((_, reply)) => Ok(reply.into_response()),
        Err(RegisterError::CredentialStoreDown(e)) => Ok(credential_store_down(&e)),
        Err(RegisterError::Api(e)) => Err(e),
    }
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "members", request_body = LoginRequest,
    responses(
        (status = 200, description = "Access token", body = TokenView),
        (status = 400, description = "INVALID_REQUEST", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_CREDENTIALS", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<TokenView>> {
    rate_limit(&state, &addr, &headers)?;
    let request: LoginRequest = parse_json(&body)?;
    let mut member: Option<(i64, String)> = None;
    if let Ok(email) = parse_email(&request.email) {
        state.auth_guard.check_account(&email)?;
        let id: Option<i64> = state.redis.get(state.keys.email(&email)).await?;
        if let Some(id) = id {
            let hash: Option<String> = state
                .redis
                .hget(state.keys.member(id), "password_hash")
                .await?;
            member = hash.map(|h| (id, h));
        }
    }
    let stored = member.as_ref().map(|(_, h)| h.clone());
    let permit = state.auth_guard.hash_permit().await?;
    let verified = verify_password(request.password, stored).await?;
    drop(permit);
    if !verified {
        return Err(ApiError::problem(
            StatusCode::UNAUTHORIZED,
            "INVALID_CREDENTIALS",
            "wrong email or password",
        ));
    }
    let id = member.map(|(id, _)| id).unwrap_or_default();
    Ok(Json(TokenView {
        access_token: state.tokens.issue(id)?,
        token_type: "Bearer",
        expires_in: state.tokens.ttl_secs,
    }))
}

/// Password of every seeded member (they are for load tests, which log in with tokens, not passwords).
pub const SEED_PASSWORD: &str = "seeded-member-password";

#[utoipa::path(post, path = "/api/v1/admin/seed/members", tag = "admin", request_body = SeedMembersRequest,
    params(("X-Admin-Key" = String, Header, description = "admin key")),
    responses(
        (status = 201, description = "Members created with tokens (password: seeded-member-password)", body = SeededMembers),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "VALIDATION_FAILED", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn seed_members(
    State(state): State<AppState>,
    _admin: Admin,
    body: Bytes,
) -> ApiResult<Response> {
    let request: SeedMembersRequest = parse_json(&body)?;
    let count = request.count.in_range("count", 1, MAX_SEED)?;
    let balance = match request.balance {
        Some(b) => b.in_range("balance", 0, MAX_BALANCE)?,
        None => 0,
    };
    let prefix = request.email_prefix.trim().to_lowercase();
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::validation(
            "email_prefix",
            "must be 1 to 64 of [a-z0-9_-]",
        ));
    }
    // One argon2 hash for the whole batch: seeding must not spend a hash per member.
    let permit = state.auth_guard.hash_permit().await?;
    let hash = hash_password(SEED_PASSWORD.to_string()).await?;
    drop(permit);
    let emails: Vec<String> = (0..count)
        .map(|n| format!("{prefix}-{n}@seed.flashsale.test"))
        .collect();
    let ids = state
        .hot_path
        .seed_members(&state, emails.clone(), hash, balance)
        .await?;
    let members = ids
        .into_iter()
        .zip(emails)
        .map(|(id, email)| {
            Ok(SeededMember {
                id,
                email,
                access_token: state.tokens.issue(id)?,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok((StatusCode::CREATED, Json(SeededMembers { members })).into_response())
}
