//! One error type for every handler, rendered as `application/problem+json` with the contract's codes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, wrong types, bad headers: 400 INVALID_REQUEST.
    #[error("{0}")]
    InvalidRequest(String),
    /// A value out of range: 422 VALIDATION_FAILED naming the field.
    #[error("{field}: {message}")]
    Validation {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("request body is larger than the limit")]
    PayloadTooLarge,
    /// Any other contract outcome with its own status and code (409 COUPON_SOLD_OUT, ...).
    #[error("{code}: {detail}")]
    Problem {
        status: StatusCode,
        code: String,
        detail: String,
    },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A refusal the client should retry later (429 RATE_LIMITED, 503 BUSY): sent with `Retry-After`.
    #[error("{detail}")]
    RetryLater {
        status: StatusCode,
        code: &'static str,
        detail: &'static str,
        retry_after_secs: u64,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn validation(field: &'static str, message: impl Into<String>) -> Self {
        Self::Validation {
            field,
            message: message.into(),
        }
    }

    pub fn problem(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self::Problem {
            status,
            code: code.to_string(),
            detail: detail.into(),
        }
    }

    /// `wait` is rounded up to whole seconds, at least one (`Retry-After` takes seconds).
    pub fn retry_later(
        status: StatusCode,
        code: &'static str,
        detail: &'static str,
        wait: std::time::Duration,
    ) -> Self {
        let nanos = wait.as_nanos();
        let secs = nanos.div_ceil(1_000_000_000).max(1);
        Self::RetryLater {
            status,
            code,
            detail,
            retry_after_secs: u64::try_from(secs).unwrap_or(u64::MAX),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Problem { status, .. } => *status,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::RetryLater { status, .. } => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &str {
        match self {
            Self::InvalidRequest(_) => "INVALID_REQUEST",
            Self::Validation { .. } => "VALIDATION_FAILED",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Unauthorized(_) => "UNAUTHORIZED",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::Problem { code, .. } => code,
            Self::Unavailable(_) => "SERVICE_UNAVAILABLE",
            Self::RetryLater { code, .. } => code,
            Self::Internal(_) => "INTERNAL",
        }
    }
}

impl From<fred::error::Error> for ApiError {
    /// Redis out of reach or moving (a restart, a cluster failover) is a 503 the client retries with
    /// the same Idempotency-Key; anything else (a script error, a reply we cannot parse) is our bug.
    fn from(e: fred::error::Error) -> Self {
        if redis_unavailable(&e) {
            tracing::warn!(error = %e, "redis unavailable");
            return Self::retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "Redis does not answer for a moment; retry with the same Idempotency-Key",
                std::time::Duration::from_secs(1),
            );
        }
        Self::Internal(anyhow::anyhow!("redis: {e}"))
    }
}

/// Whether a Redis error is the server being out of reach, loading or failing over (transient).
pub fn redis_unavailable(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    match e.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Cluster
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Routing => true,
        _ => {
            let details = e.details();
            [
                "TRYAGAIN",
                "LOADING",
                "READONLY",
                "MASTERDOWN",
                "CLUSTERDOWN",
                "NOREPLICAS",
            ]
            .iter()
            .any(|prefix| details.starts_with(prefix))
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(anyhow::anyhow!("mysql: {e}"))
    }
}

/// The problem document, as the OpenAPI schema shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[schema(example = "https://flashsale.dev/problems/coupon-sold-out")]
    pub r#type: String,
    #[schema(example = "Conflict")]
    pub title: String,
    #[schema(example = 409)]
    pub status: u16,
    pub detail: String,
    /// Stable UPPER_SNAKE identifier; clients branch on it.
    #[schema(example = "COUPON_SOLD_OUT")]
    pub code: String,
    /// The offending field, for VALIDATION_FAILED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(flatten)]
    pub extensions: ProblemExtensions,
}

/// Members a refusal adds to its problem (RFC 9457 extension members); each is present only for the
/// codes that name it. A script stores them with the idempotency record, so a replay answers them too.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProblemExtensions {
    /// The product a sale rule refused (SALE_NOT_STARTED, SALE_ENDED, PURCHASE_LIMIT_EXCEEDED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<i64>,
    /// SALE_NOT_STARTED: when the sale opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sale_starts_at: Option<String>,
    /// SALE_ENDED: when the sale closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sale_ends_at: Option<String>,
    /// PURCHASE_LIMIT_EXCEEDED: units of the product this member may still buy (0 or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_allowance: Option<i64>,
}

impl ProblemExtensions {
    /// Parses what a script stored; '' (none) or anything unreadable is no extension.
    pub fn from_json(text: &str) -> Self {
        if text.is_empty() {
            return Self::default();
        }
        serde_json::from_str(text).unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        if *self == Self::default() {
            return String::new();
        }
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Deterministic rendering: an idempotent replay renders the stored (status, code, detail) to the very
/// same bytes as the first response.
pub fn problem_body(status: StatusCode, code: &str, detail: &str, field: Option<&str>) -> String {
    problem_body_with(status, code, detail, field, &ProblemExtensions::default())
}

/// `problem_body` with extension members.
pub fn problem_body_with(
    status: StatusCode,
    code: &str,
    detail: &str,
    field: Option<&str>,
    extensions: &ProblemExtensions,
) -> String {
    let problem = Problem {
        r#type: format!(
            "https://flashsale.dev/problems/{}",
            code.to_ascii_lowercase().replace('_', "-")
        ),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail: detail.to_string(),
        code: code.to_string(),
        field: field.map(str::to_string),
        extensions: extensions.clone(),
    };
    serde_json::to_string(&problem).unwrap_or_else(|_| String::from("{}"))
}

/// A problem without field whose body a herd hears over and over (COUPON_SOLD_OUT to everyone after
/// a sell-out): rendered once and kept (see `repeated_problems`), the same bytes `problem_body_with`
/// gives.
pub fn repeated_problem_response(
    status: StatusCode,
    code: &str,
    detail: &str,
    extensions: &ProblemExtensions,
) -> Response {
    if *extensions == ProblemExtensions::default() {
        return problem_response(status, repeated_problems::body(status, code, detail));
    }
    problem_response(
        status,
        problem_body_with(status, code, detail, None, extensions),
    )
}

/// Rendered bodies of problems without field or extensions, which depend only on (status, code,
/// detail). Kept up to `KEPT_AT_MOST` bodies (details that name an id make more); past that they are
/// rendered each time.
mod repeated_problems {
    use foldhash::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{LazyLock, RwLock};

    use axum::body::Bytes;
    use axum::http::StatusCode;

    const KEPT_AT_MOST: usize = 1024;

    /// code -> detail -> (status, body)
    type Kept = HashMap<String, HashMap<String, (StatusCode, Bytes)>>;
    static KEPT: LazyLock<RwLock<Kept>> = LazyLock::new(Default::default);
    static KEPT_COUNT: AtomicUsize = AtomicUsize::new(0);

    pub fn body(status: StatusCode, code: &str, detail: &str) -> Bytes {
        {
            let kept = KEPT.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((kept_status, body)) = kept.get(code).and_then(|by| by.get(detail)) {
                if *kept_status == status {
                    return body.clone();
                }
            }
        }
        let body = Bytes::from(super::problem_body(status, code, detail, None));
        if KEPT_COUNT.load(Ordering::Relaxed) < KEPT_AT_MOST {
            KEPT_COUNT.fetch_add(1, Ordering::Relaxed);
            KEPT.write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(code.to_string())
                .or_default()
                .insert(detail.to_string(), (status, body.clone()));
        }
        body
    }
}

pub fn problem_response(status: StatusCode, body: impl IntoResponse) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (detail, field) = match &self {
            Self::Validation { field, message } => (format!("{field}: {message}"), Some(*field)),
            Self::Internal(e) => {
                // The cause goes to the log, never to the client.
                tracing::error!(error = ?e, "internal error");
                ("an internal error occurred".to_string(), None)
            }
            Self::Problem { detail, .. } => (detail.clone(), None),
            other => (other.to_string(), None),
        };
        let mut response =
            problem_response(status, problem_body(status, self.code(), &detail, field));
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::RetryLater {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error, ErrorKind};

    #[tokio::test]
    async fn a_kept_problem_body_is_the_rendered_one() {
        let status = StatusCode::CONFLICT;
        let rendered = problem_body(status, "COUPON_SOLD_OUT", "no coupons left", None);
        for _ in 0..2 {
            let response = repeated_problem_response(
                status,
                "COUPON_SOLD_OUT",
                "no coupons left",
                &ProblemExtensions::default(),
            );
            assert_eq!(response.status(), status);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
            assert_eq!(body, rendered.as_bytes());
        }
        // Same code and detail under another status: rendered for that status, not the kept one.
        let other = repeated_problem_response(
            StatusCode::GONE,
            "COUPON_SOLD_OUT",
            "no coupons left",
            &ProblemExtensions::default(),
        );
        let body = axum::body::to_bytes(other.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(
            body,
            problem_body(StatusCode::GONE, "COUPON_SOLD_OUT", "no coupons left", None).as_bytes()
        );
    }

    #[test]
    fn redis_out_of_reach_is_a_503_and_a_script_error_is_ours() {
        for transient in [
            Error::new(ErrorKind::IO, "connection reset"),
            Error::new(ErrorKind::Timeout, "request timed out"),
            Error::new(ErrorKind::Cluster, "CLUSTERDOWN The cluster is down"),
            Error::new(ErrorKind::Unknown, "LOADING Redis is loading the dataset"),
            Error::new(
                ErrorKind::Unknown,
                "READONLY You can't write against a replica",
            ),
        ] {
            let response = ApiError::from(transient.clone()).into_response();
            assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{transient}"
            );
            assert!(
                response.headers().contains_key(header::RETRY_AFTER),
                "{transient}"
            );
        }
        for ours in [
            Error::new(
                ErrorKind::Unknown,
                "ERR user_script:1: attempt to index a nil value",
            ),
            Error::new(ErrorKind::Parse, "cannot parse the reply"),
        ] {
            let response = ApiError::from(ours.clone()).into_response();
            assert_eq!(
                response.status(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "{ours}"
            );
        }
    }
}
