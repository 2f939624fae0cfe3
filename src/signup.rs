//! Sign-up as a saga of single-slot steps (issue 9): the e-mail address lives in the address's
//! partition, the member in its id's, so no one script may write both. This module is the one place
//! that sequences the steps; the route, the seeding path, the claim sweep and the tests call it.
//!
//! 1. `email_claim` in the address's slot: the address is claimed for the new member id (refused
//!    `EMAIL_TAKEN` when it names another id; the same id again answers as the first call), recorded
//!    as pending with a deadline in Redis time (the address partition's `emails:pending` index).
//! 2. `member_signup` in the member's slot: the member and its `member.registered` event; refused
//!    after the claim's deadline (by the member node's clock), so a late step never creates a member
//!    whose claim was released.
//! 3. `email_confirm` inline: the claim leaves the pending index. A refused member step releases the
//!    claim instead (`email_release`: compare-and-delete, the key goes only while it names this id).
//!
//! A crash between the steps leaves a pending claim: the claim sweep (`sweep_email_claims`, every
//! engine, every partition, once a second) confirms those whose member exists with this address and
//! releases those past deadline + margin whose member does not. The same timing argument as the
//! orphan-hold sweep (src/orders.rs): the sweep looks the member up only after deadline + margin by
//! the address node's clock; by then no member step can still write it, provided the nodes' clocks
//! differ by less than the margin.

use std::time::Duration;

use axum::http::StatusCode;
use fred::prelude::*;

use crate::error::ApiError;
use crate::ids::Entity;
use crate::orders::Store;
use crate::partition::Partition;
use crate::scripts::calls::{
    ClaimRef, EmailClaim, EmailClaimsDue, EmailConfirm, EmailRelease, MemberSignup,
};
use crate::scripts::{Script, ScriptReply};
use crate::state::{event_id, AppState, Now};

/// How long a claim waits for its member (Redis ms): the member step refuses after the deadline.
pub const CLAIM_TTL_MS: i64 = 30_000;
/// The sweep releases a claim only this long after its deadline (clock skew between the address's
/// node and the member's node).
pub const CLAIM_MARGIN_MS: i64 = 5_000;
/// Pending claims looked at per partition and sweep round.
const SWEEP_BATCH: i64 = 200;

/// A sign-up as the route runs it: the id is minted and the credential row written already.
pub struct Signup<'a> {
    pub member_id: i64,
    /// Normalized (`parse_email`).
    pub email: &'a str,
    pub name: &'a str,
    pub password_hash: &'a str,
    pub event_id: String,
}

/// The address step's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Claimed { deadline_ms: i64 },
    Confirmed,
    Taken,
}

fn parse_claim(value: fred::types::Value) -> Result<Claim, ApiError> {
    let parts = value.into_array();
    match parts.first().and_then(|v| v.as_string()).as_deref() {
        Some("claimed") => match parts.get(1).and_then(|v| v.as_i64()) {
            Some(deadline_ms) => Ok(Claim::Claimed { deadline_ms }),
            None => Err(ApiError::Internal(anyhow::anyhow!(
                "email_claim: malformed reply {parts:?}"
            ))),
        },
        Some("confirmed") => Ok(Claim::Confirmed),
        Some("taken") => Ok(Claim::Taken),
        _ => Err(ApiError::Internal(anyhow::anyhow!(
            "email_claim: unexpected reply {parts:?}"
        ))),
    }
}

/// The refusal sign-up always gave for a taken address.
fn email_taken() -> ScriptReply {
    ScriptReply::Refused {
        status: 409,
        code: "EMAIL_TAKEN".into(),
        detail: "an account with this email already exists".into(),
        extensions: String::new(),
    }
}

/// Registers a member: claim, member, confirm (see the module doc). The reply is the member step's
/// (201, or 409 `CONFLICT` for a taken id), 409 `EMAIL_TAKEN` from the claim, or 503
/// `SERVICE_UNAVAILABLE` when the claim lapsed before the member step ran (nothing created; the
/// caller answers it as retryable: `lapsed`).
pub async fn register(store: Store<'_>, req: &Signup<'_>) -> Result<ScriptReply, ApiError> {
    let claim = ClaimRef {
        member_id: req.member_id,
        email: req.email.to_string(),
    };
    let value = store
        .run(&EmailClaim {
            claim: claim.clone(),
            ttl_ms: CLAIM_TTL_MS,
        })
        .await?;
    let answer = parse_claim(value)?;
    let outcome = match answer {
        Claim::Claimed { .. } => "claimed",
        Claim::Confirmed => "confirmed",
        Claim::Taken => "EMAIL_TAKEN",
    };
    metrics::counter!("flashsale_script_outcomes_total", "script" => Script::EmailClaim.name(), "outcome" => outcome)
        .increment(1);
    let deadline_ms = match answer {
        Claim::Taken => return Ok(email_taken()),
        Claim::Claimed { deadline_ms } => deadline_ms,
        // The address names this id, confirmed: this very sign-up resent after it completed. The
        // member step answers from the member (same event: the first answer; else CONFLICT).
        Claim::Confirmed => i64::MAX,
    };
    let call = MemberSignup {
        member_id: req.member_id,
        email: req.email,
        name: req.name,
        password_hash: req.password_hash,
        event_id: req.event_id.clone(),
        claim_deadline_ms: deadline_ms,
    };
    // An error here leaves the claim pending on purpose: the member may have been written (a lost
    // answer), and only the sweep, after the deadline, can tell.
    let reply = store.scripts.invoke(store.redis, store.keys, &call).await?;
    let settled = match &reply {
        ScriptReply::Ok { .. } => store.step(&EmailConfirm { claim }).await,
        _ => settle(store, claim, None).await,
    };
    if let Err(e) = settled {
        tracing::warn!(member_id = req.member_id, error = %e,
            "cannot settle the e-mail claim now; the claim sweep does it after its deadline");
        metrics::counter!("flashsale_saga_errors_total").increment(1);
    }
    if lapsed(&reply) {
        metrics::counter!("flashsale_email_claim_lapsed_total").increment(1);
    }
    Ok(reply)
}

/// True for the member step's refusal after the claim's deadline: nothing was created; the client
/// retries (see `retry_lapsed`).
pub fn lapsed(reply: &ScriptReply) -> bool {
    matches!(reply, ScriptReply::Refused { status: 503, .. })
}

/// The lapsed-claim refusal as the route answers it: 503 with Retry-After.
pub fn retry_lapsed() -> ApiError {
    ApiError::retry_later(
        StatusCode::SERVICE_UNAVAILABLE,
        "SERVICE_UNAVAILABLE",
        "the e-mail claim lapsed before the member was written; retry",
        Duration::from_secs(1),
    )
}

/// Settles a claim whose member step will not run (again): confirmed when the member exists with this
/// very address (its own claim: a resend, or an id repeated with the same address), else released
/// (compare-and-delete; with a margin, only once due). Returns the step's outcome.
async fn settle(
    store: Store<'_>,
    claim: ClaimRef,
    sweep_margin_ms: Option<i64>,
) -> Result<String, fred::error::Error> {
    let email: Option<String> = store
        .redis
        .hget(store.keys.member(claim.member_id), "email")
        .await?;
    if email.as_deref() == Some(claim.email.as_str()) {
        store.step(&EmailConfirm { claim }).await
    } else {
        store
            .step(&EmailRelease {
                claim,
                sweep_margin_ms,
            })
            .await
    }
}

/// What one claim sweep round did in a partition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClaimSweep {
    /// Claims past deadline + margin looked at.
    pub due: usize,
    /// Released: the member was never written; the address is free again.
    pub released: usize,
    /// Confirmed: the member exists (the engine crashed before its inline confirm).
    pub confirmed: usize,
}

/// Settles one partition's pending claims past deadline + margin (see the module doc).
pub async fn sweep_email_claims(
    store: Store<'_>,
    partition: Partition,
) -> anyhow::Result<ClaimSweep> {
    let due: Vec<String> = store
        .run(&EmailClaimsDue {
            partition,
            margin_ms: CLAIM_MARGIN_MS,
            limit: SWEEP_BATCH,
        })
        .await?
        .into_array()
        .into_iter()
        .filter_map(|v| v.as_string())
        .collect();
    let mut sweep = ClaimSweep {
        due: due.len(),
        ..Default::default()
    };
    for entry in &due {
        let Some(claim) = ClaimRef::parse(entry) else {
            tracing::error!(entry = %entry, "unparsable pending e-mail claim; dropped");
            let _: i64 = store
                .redis
                .zrem(store.keys.email_claims(partition), entry.as_str())
                .await?;
            continue;
        };
        let member_id = claim.member_id;
        match settle(store, claim, Some(CLAIM_MARGIN_MS)).await?.as_str() {
            "confirmed" => sweep.confirmed += 1,
            "released" => {
                sweep.released += 1;
                tracing::info!(member_id, "unfinished sign-up: e-mail claim released");
                metrics::counter!("flashsale_email_claims_released_total").increment(1);
            }
            _ => {}
        }
    }
    Ok(sweep)
}

/// Why sign-up could not run: MySQL (the credential store) is down, or the script's answer.
pub enum RegisterError {
    CredentialStoreDown(sqlx::Error),
    Api(ApiError),
}

impl From<ApiError> for RegisterError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<crate::ids::IdsUnavailable> for RegisterError {
    fn from(e: crate::ids::IdsUnavailable) -> Self {
        Self::Api(e.into())
    }
}

impl From<fred::error::Error> for RegisterError {
    fn from(e: fred::error::Error) -> Self {
        Self::Api(e.into())
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::CredentialStoreDown(e) => {
                ApiError::Internal(anyhow::anyhow!("writing member credentials: {e}"))
            }
            RegisterError::Api(e) => e,
        }
    }
}

/// Runs the sign-up saga (src/signup.rs); shared by sign-up and seeding. The password hash is written
/// to MySQL (member_credentials, keyed by the new id) BEFORE the Redis steps, so it never travels in an
/// event and rebuild-redis restores logins from there; a refused sign-up removes its credential row
/// again (not after a Redis error: the member may exist, the claim sweep settles it).
pub async fn register_member(
    state: &AppState,
    email: &str,
    name: &str,
    password_hash: &str,
) -> Result<(i64, ScriptReply), RegisterError> {
    let id = state.ids.next(Entity::Member).await?;
    let written = sqlx::query(
        "INSERT IGNORE INTO member_credentials (member_id, password_hash, created_at) VALUES (?, ?, ?)",
    )
    .bind(id)
    .bind(password_hash)
    .bind(Now::read().at.naive_utc())
    .execute(&state.db)
    .await
    .map_err(RegisterError::CredentialStoreDown)?;
    if written.rows_affected() == 0 {
        // Another member's credential holds this id (an id-allocation fault). Never overwrite it.
        let reply = ScriptReply::Refused {
            status: 409,
            code: "CONFLICT".into(),
            detail: "member id already in use".into(),
            extensions: String::new(),
        };
        reply.note_entity_conflict(Script::MemberSignup, id);
        return Ok((id, reply));
    }
    // The saga of single-slot steps: the address claimed in its partition, then the member in its
    // own (src/signup.rs).
    let signup = Signup {
        member_id: id,
        email,
        name,
        password_hash,
        event_id: event_id(),
    };
    let reply = register(state.store(), &signup).await?;
    reply.note_entity_conflict(Script::MemberSignup, id);
    if let ScriptReply::Refused { code, .. } = &reply {
        if code != "CONFLICT" {
            // Best effort: an orphan row is harmless (rebuild joins from members), just untidy.
            let _ = sqlx::query("DELETE FROM member_credentials WHERE member_id = ?")
                .bind(id)
                .execute(&state.db)
                .await;
        }
    }
    if lapsed(&reply) {
        // Nothing was created (the claim is released): retryable, like a reserve whose holds lapsed.
        return Err(RegisterError::Api(retry_lapsed()));
    }
    Ok((id, reply))
}
