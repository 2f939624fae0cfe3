//! Idempotency-Key handling (IETF httpapi draft semantics). The record itself is written by the Lua
//! script in the same atomic step as the effect, so a retry after a crash replays instead of
//! re-executing; this module only parses the header and names the record.

use axum::http::{HeaderMap, Method};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::keys::Keys;

pub const HEADER: &str = "idempotency-key";
/// Results are kept at least 24 hours; a little more so a client retrying at the 24 h mark still replays.
pub const RECORD_TTL_SECS: u64 = 25 * 3600;

#[derive(Debug, Clone)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Reads the header: missing -> 400 IDEMPOTENCY_KEY_REQUIRED when `required`; empty, longer than
    /// 255 characters or not visible ASCII -> 400 INVALID_REQUEST.
    pub fn from_headers(headers: &HeaderMap, required: bool) -> Result<Option<Self>, ApiError> {
        let Some(value) = headers.get(HEADER) else {
            if required {
                return Err(ApiError::problem(
                    axum::http::StatusCode::BAD_REQUEST,
                    "IDEMPOTENCY_KEY_REQUIRED",
                    "this endpoint requires an Idempotency-Key header",
                ));
            }
            return Ok(None);
        };
        let key = value.to_str().map_err(|_| {
            ApiError::InvalidRequest("Idempotency-Key must be visible ASCII".into())
        })?;
        if key.is_empty() || key.chars().count() > 255 {
            return Err(ApiError::InvalidRequest(
                "Idempotency-Key must be 1 to 255 characters".into(),
            ));
        }
        Ok(Some(Self(key.to_string())))
    }

    /// A key the engine itself uses (e.g. seeding), never seen in a header.
    pub fn internal(key: &str) -> Self {
        Self(key.to_string())
    }

    /// The digest naming the record (the client's key is hashed so its length and characters never
    /// shape ours).
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// The Redis key of the record, scoped to the member: member B can never see member A's result.
    pub fn record_key(&self, keys: &Keys, member_id: i64) -> String {
        keys.idempotency(member_id, &self.digest())
    }
}

/// Fingerprint of "the same request": method, path and body bytes.
pub fn fingerprint(method: &Method, path: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn header_rules() {
        let mut h = HeaderMap::new();
        assert!(matches!(IdempotencyKey::from_headers(&h, false), Ok(None)));
        let err = IdempotencyKey::from_headers(&h, true).unwrap_err();
        assert_eq!(err.code(), "IDEMPOTENCY_KEY_REQUIRED");
        h.insert(HEADER, HeaderValue::from_static(""));
        assert_eq!(
            IdempotencyKey::from_headers(&h, true).unwrap_err().code(),
            "INVALID_REQUEST"
        );
        h.insert(HEADER, HeaderValue::from_str(&"k".repeat(256)).unwrap());
        assert_eq!(
            IdempotencyKey::from_headers(&h, true).unwrap_err().code(),
            "INVALID_REQUEST"
        );
        h.insert(HEADER, HeaderValue::from_str(&"k".repeat(255)).unwrap());
        assert!(IdempotencyKey::from_headers(&h, true).unwrap().is_some());
    }

    #[test]
    fn keys_are_scoped_to_the_member_and_fingerprints_to_the_request() {
        let keys = Keys::new("fs");
        let k = IdempotencyKey("abc".into());
        assert_ne!(k.record_key(&keys, 1), k.record_key(&keys, 2));
        let a = fingerprint(&Method::POST, "/x", b"{}");
        assert_eq!(a, fingerprint(&Method::POST, "/x", b"{}"));
        assert_ne!(a, fingerprint(&Method::POST, "/y", b"{}"));
        assert_ne!(a, fingerprint(&Method::POST, "/x", b"{ }"));
    }
}
