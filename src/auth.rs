//! Members' credentials and tokens: argon2id password hashes (computed off the async threads) and
//! short-lived HS256 JWTs with the algorithm pinned and exp/iss/aud checked, the result of a check
//! kept per token until it expires. Admin endpoints take `X-Admin-Key`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{decode, encode, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

const ISSUER: &str = "flashsale";
const AUDIENCE: &str = "flashsale-api";

/// OWASP minimum for argon2id: 19 MiB, 2 iterations, 1 lane.
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("static argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))
    })
    .await
    .map_err(|e| anyhow::anyhow!("hash task: {e}"))?
    .map_err(ApiError::from)
}

/// Verifies a password; `None` (unknown email) still spends the same work so timing tells nothing.
pub async fn verify_password(password: String, stored: Option<String>) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let phc = stored.clone().unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| {
                    let salt = SaltString::generate(&mut OsRng);
                    hasher()
                        .hash_password(b"dummy", &salt)
                        .map(|h| h.to_string())
                        .unwrap_or_default()
                })
                .clone()
        });
        let Ok(parsed) = PasswordHash::new(&phc) else {
            return false;
        };
        let ok = hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && stored.is_some()
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("verify task: {e}")))
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: String,
    iat: u64,
    exp: u64,
}

/// Most tokens whose check is kept. A rush sends each member's token with every request; checking
/// its HMAC and parsing its claims again each time was a fifth of the engine's instructions per coupon
/// request. Past this many members the cache evicts and an evicted token is checked in full again.
const VERIFIED_TOKENS: usize = 65_536;

/// What checking a token found: whose it is and until when (unix seconds).
#[derive(Clone, Copy, Debug)]
struct Verified {
    member: i64,
    exp: u64,
}

#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// By the token's exact text. Only tokens that passed every check are kept, so a forged or
    /// altered token never matches one (it is not the same text) and is checked in full; the expiry
    /// is checked again on every use.
    verified: Arc<quick_cache::sync::Cache<String, Verified>>,
    pub ttl_secs: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Tokens {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            verified: Arc::new(quick_cache::sync::Cache::new(VERIFIED_TOKENS)),
            ttl_secs,
        }
    }

    pub fn issue(&self, member_id: i64) -> Result<String, ApiError> {
        let now = unix_now();
        let claims = Claims {
            sub: member_id.to_string(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + self.ttl_secs,
        };
        encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.encoding,
        )
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("jwt encode: {e}")))
    }

    pub fn verify(&self, token: &str) -> Result<i64, ApiError> {
        self.verify_at(token, unix_now())
    }

    /// `verify` at `now` (unix seconds). A kept check answers while the token is in date by the same
    /// rule as jsonwebtoken's (`exp >= now - leeway`).
    fn verify_at(&self, token: &str, now: u64) -> Result<i64, ApiError> {
        let expired = || ApiError::Unauthorized("invalid or expired token".into());
        if let Some(known) = self.verified.get(token) {
            if now <= known.exp.saturating_add(self.validation.leeway) {
                return Ok(known.member);
            }
            self.verified.remove(token);
            return Err(expired());
        }
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|_| expired())?;
        let member = data
            .claims
            .sub
            .parse()
            .map_err(|_| ApiError::Unauthorized("invalid token subject".into()))?;
        self.verified.insert(
            token.to_owned(),
            Verified {
                member,
                exp: data.claims.exp,
            },
        );
        Ok(member)
    }
}

/// The member the bearer token names. Handlers take the member from here, never from a body or path.
#[derive(Debug, Clone, Copy)]
pub struct AuthMember(pub i64);

impl FromRequestParts<AppState> for AuthMember {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        Ok(Self(state.tokens.verify(token.trim())?))
    }
}

/// For reads that a member's token only adds to (a product's remaining allowance): no Authorization
/// header is no member; a header that is not a valid token is still refused (401), not ignored.
impl axum::extract::OptionalFromRequestParts<AppState> for AuthMember {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        if !parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION)
        {
            return Ok(None);
        }
        <Self as FromRequestParts<AppState>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

/// Proof that the request carried the configured admin key.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let given = parts
            .headers
            .get("x-admin-key")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        // Compare digests so the comparison time does not depend on where the keys differ.
        let a = Sha256::digest(given);
        let b = Sha256::digest(state.settings.admin_api_key.as_bytes());
        if a.as_slice()
            .iter()
            .zip(b.as_slice())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
        {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized(
                "missing or wrong X-Admin-Key".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_forgeries() {
        let tokens = Tokens::new(&[7u8; 32], 60);
        let t = tokens.issue(42).unwrap();
        assert_eq!(tokens.verify(&t).unwrap(), 42);
        let other = Tokens::new(&[8u8; 32], 60);
        assert!(other.verify(&t).is_err());
        assert!(tokens.verify("not.a.token").is_err());
        // alg=none is refused: the algorithm is pinned.
        let none = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
            t.split('.').nth(1).unwrap()
        );
        assert!(tokens.verify(&none).is_err());
    }

    #[test]
    fn a_kept_check_still_expires_and_never_admits_an_altered_token() {
        let tokens = Tokens::new(&[7u8; 32], 60);
        let t = tokens.issue(42).unwrap();
        let now = unix_now();
        assert_eq!(tokens.verify_at(&t, now).unwrap(), 42);
        // Kept: the same text answers again, while in date (60 s + 5 s leeway).
        assert_eq!(tokens.verify_at(&t, now + 64).unwrap(), 42);
        // Out of date: refused, and forgotten.
        assert!(tokens.verify_at(&t, now + 120).is_err());
        assert!(tokens.verified.get(t.as_str()).is_none());
        // A token one character off is another text: checked in full, refused.
        let signature_at = t.rfind('.').unwrap() + 1;
        let first = &t[signature_at..=signature_at];
        let altered = format!(
            "{}{}{}",
            &t[..signature_at],
            if first == "A" { "B" } else { "A" },
            &t[signature_at + 1..]
        );
        assert!(tokens.verify_at(&altered, now).is_err());
        assert!(tokens.verified.get(altered.as_str()).is_none());
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse".into(), Some(h.clone()))
            .await
            .unwrap());
        assert!(!verify_password("wrong".into(), Some(h)).await.unwrap());
        assert!(!verify_password("x".into(), None).await.unwrap());
    }
}
