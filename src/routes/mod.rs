//! HTTP routes, one module per resource. Handlers validate at the edge, then run one Lua script (or read
//! Redis) and hand the script's reply straight back.

pub mod coupons;
pub mod members;
pub mod ops;
pub mod orders;
pub mod points;
pub mod products;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::idempotency::{fingerprint, IdempotencyKey};
use crate::scripts::calls::Idem;

/// Parses a JSON body: malformed JSON or wrong types -> 400 INVALID_REQUEST; a number too large for any
/// numeric type (`1e400`, hundreds of digits) -> 422 VALIDATION_FAILED like any other out-of-range value.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| json_error(&e))
}

/// `parse_json` for a body that must be a JSON object: a struct whose fields are all optional would
/// also take a JSON array (serde's sequence form of a struct), e.g. `[null, null]` as an empty PATCH.
pub fn parse_json_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => parse_json(body),
        _ => Err(ApiError::InvalidRequest(
            "invalid JSON body: expected a JSON object".into(),
        )),
    }
}

pub(crate) fn json_error(e: &serde_json::Error) -> ApiError {
    if is_number_out_of_range(e) {
        return ApiError::validation("body", format!("a number is out of range: {e}"));
    }
    ApiError::InvalidRequest(format!("invalid JSON body: {e}"))
}

/// serde_json reports a number beyond f64 as this syntax error; it has no error kind of its own.
pub(crate) fn is_number_out_of_range(e: &serde_json::Error) -> bool {
    e.is_syntax() && e.to_string().starts_with("number out of range")
}

/// Parses an optional JSON body (empty means the type's default).
pub fn parse_optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    parse_json(body)
}

/// The idempotency side of a member's mutation, as the script calls take it.
pub struct Idempotent;

impl Idempotent {
    pub fn from_request(
        headers: &HeaderMap,
        method: &Method,
        uri: &Uri,
        body: &Bytes,
        required: bool,
    ) -> Result<Idem, ApiError> {
        let key = IdempotencyKey::from_headers(headers, required)?;
        // The fingerprint is only compared with a stored record: no key, no record, no hash to spend.
        Ok(match key {
            Some(key) => Idem {
                digest: Some(key.digest()),
                fingerprint: fingerprint(method, uri.path(), body),
            },
            None => Idem {
                digest: None,
                fingerprint: String::new(),
            },
        })
    }
}
