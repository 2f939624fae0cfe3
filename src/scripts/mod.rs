//! The Lua script set: every operation in `lua/`, each with the shared prelude prepended, loaded once at
//! start (SCRIPT LOAD) and run by SHA; a NOSCRIPT answer (Redis restarted or flushed its script cache)
//! reloads the script and runs it again.

use std::time::Instant;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fred::prelude::*;
use fred::types::Value;

use crate::error::{repeated_problem_response, ApiError, ProblemExtensions};
use crate::keys::Keys;

pub mod calls;
pub use calls::ScriptCall;

const PRELUDE: &str = include_str!("../../lua/lib/prelude.lua");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Script {
    MemberSignup,
    PointsCharge,
    ProductCreate,
    ProductStockAdd,
    ProductRulesSet,
    CouponCreate,
    CouponIssue,
    CouponQuantityAdd,
    CouponWalletAdd,
    OrderReserve,
    OrderPay,
    OrderCancel,
    OrderExpire,
    OrderRefuse,
    StockHold,
    StockRelease,
    StockCommit,
    StockReturn,
    HoldConfirm,
    HoldsDue,
    EmailClaim,
    EmailConfirm,
    EmailRelease,
    EmailClaimsDue,
}

impl Script {
    pub const ALL: [Script; 24] = [
        Script::MemberSignup,
        Script::PointsCharge,
        Script::ProductCreate,
        Script::ProductStockAdd,
        Script::ProductRulesSet,
        Script::CouponCreate,
        Script::CouponIssue,
        Script::CouponQuantityAdd,
        Script::CouponWalletAdd,
        Script::OrderReserve,
        Script::OrderPay,
        Script::OrderCancel,
        Script::OrderExpire,
        Script::OrderRefuse,
        Script::StockHold,
        Script::StockRelease,
        Script::StockCommit,
        Script::StockReturn,
        Script::HoldConfirm,
        Script::HoldsDue,
        Script::EmailClaim,
        Script::EmailConfirm,
        Script::EmailRelease,
        Script::EmailClaimsDue,
    ];

    /// How many scripts there are: the length of per-script tables indexed by `index`.
    pub const COUNT: usize = Script::ALL.len();

    /// The script's place in `ALL` (a unit test keeps the two in step): per-script tables are arrays
    /// indexed by it, not hash maps, since every request looks them up.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The script's name: its file in `lua/` without `.lua`, and its metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Script::MemberSignup => "member_signup",
            Script::PointsCharge => "points_charge",
            Script::ProductCreate => "product_create",
            Script::ProductStockAdd => "product_stock_add",
            Script::ProductRulesSet => "product_rules_set",
            Script::CouponCreate => "coupon_create",
            Script::CouponIssue => "coupon_issue",
            Script::CouponQuantityAdd => "coupon_quantity_add",
            Script::CouponWalletAdd => "coupon_wallet_add",
            Script::OrderReserve => "order_reserve",
            Script::OrderPay => "order_pay",
            Script::OrderCancel => "order_cancel",
            Script::OrderExpire => "order_expire",
            Script::OrderRefuse => "order_refuse",
            Script::StockHold => "stock_hold",
            Script::StockRelease => "stock_release",
            Script::StockCommit => "stock_commit",
            Script::StockReturn => "stock_return",
            Script::HoldConfirm => "hold_confirm",
            Script::HoldsDue => "holds_due",
            Script::EmailClaim => "email_claim",
            Script::EmailConfirm => "email_confirm",
            Script::EmailRelease => "email_release",
            Script::EmailClaimsDue => "email_claims_due",
        }
    }

    fn operation_source(self) -> &'static str {
        match self {
            Script::MemberSignup => include_str!("../../lua/member_signup.lua"),
            Script::PointsCharge => include_str!("../../lua/points_charge.lua"),
            Script::ProductCreate => include_str!("../../lua/product_create.lua"),
            Script::ProductStockAdd => include_str!("../../lua/product_stock_add.lua"),
            Script::ProductRulesSet => include_str!("../../lua/product_rules_set.lua"),
            Script::CouponCreate => include_str!("../../lua/coupon_create.lua"),
            Script::CouponIssue => include_str!("../../lua/coupon_issue.lua"),
            Script::CouponQuantityAdd => include_str!("../../lua/coupon_quantity_add.lua"),
            Script::CouponWalletAdd => include_str!("../../lua/coupon_wallet_add.lua"),
            Script::OrderReserve => include_str!("../../lua/order_reserve.lua"),
            Script::OrderPay => include_str!("../../lua/order_pay.lua"),
            Script::OrderCancel => include_str!("../../lua/order_cancel.lua"),
            Script::OrderExpire => include_str!("../../lua/order_expire.lua"),
            Script::OrderRefuse => include_str!("../../lua/order_refuse.lua"),
            Script::StockHold => include_str!("../../lua/stock_hold.lua"),
            Script::StockRelease => include_str!("../../lua/stock_release.lua"),
            Script::StockCommit => include_str!("../../lua/stock_commit.lua"),
            Script::StockReturn => include_str!("../../lua/stock_return.lua"),
            Script::HoldConfirm => include_str!("../../lua/hold_confirm.lua"),
            Script::HoldsDue => include_str!("../../lua/holds_due.lua"),
            Script::EmailClaim => include_str!("../../lua/email_claim.lua"),
            Script::EmailConfirm => include_str!("../../lua/email_confirm.lua"),
            Script::EmailRelease => include_str!("../../lua/email_release.lua"),
            Script::EmailClaimsDue => include_str!("../../lua/email_claims_due.lua"),
        }
    }

    /// The text sent to SCRIPT LOAD: the prelude, then the operation.
    pub fn source(self) -> String {
        format!("{PRELUDE}\n{}", self.operation_source())
    }
}

/// How many replicas must confirm a mutating script's writes before its answer goes out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durability {
    /// 0: answer at once (one node, or the cluster with the guarantee switched off).
    pub replicas: u32,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Scripts {
    /// SHA1 of each script, by `Script::index`.
    shas: Vec<String>,
    durability: Durability,
}

impl Scripts {
    /// Loads every script; fails at start if any does not compile.
    /// On a cluster every primary gets every script (a script runs on the node of its slot).
    pub async fn load(redis: &Pool, durability: Durability) -> Result<Self, fred::error::Error> {
        let mut shas = vec![String::new(); Script::COUNT];
        let client = redis.next();
        for script in Script::ALL {
            let sha: String = if client.is_clustered() {
                client.script_load_cluster(script.source()).await?
            } else {
                client.script_load(script.source()).await?
            };
            shas[script.index()] = sha;
        }
        Ok(Self { shas, durability })
    }

    pub fn sha(&self, script: Script) -> &str {
        self.shas
            .get(script.index())
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Runs `call` by SHA on `client` with the KEYS and ARGV it builds (moved into the command, not
    /// copied); on NOSCRIPT (a restart, or a failover to a replica that never loaded it) sends the
    /// source with KEYS and ARGV built again from `call`, which gives the same ones. EVAL goes to the
    /// node of the keys' slot (a SCRIPT LOAD would go to any node) and caches the script there again.
    /// Returns the reply and the key naming the node to ask for replica confirmation
    /// (`confirmation_key`).
    async fn run_on<C: ScriptCall>(
        &self,
        client: &Client,
        layout: &Keys,
        call: &C,
    ) -> Result<(Value, Option<String>), fred::error::Error> {
        let (keys, args) = (call.keys(layout), call.args(layout));
        let confirm_on = self.confirmation_key(&keys);
        let started = Instant::now();
        let result = match client
            .evalsha::<Value, _, _, _>(self.sha(C::SCRIPT), keys, args)
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                tracing::warn!(
                    script = C::SCRIPT.name(),
                    "script cache lost, sending the source"
                );
                client
                    .eval::<Value, _, _, _>(
                        C::SCRIPT.source(),
                        call.keys(layout),
                        call.args(layout),
                    )
                    .await
            }
            other => other,
        };
        script_series::duration(C::SCRIPT).record(started.elapsed().as_secs_f64());
        result.map(|value| (value, confirm_on))
    }

    /// The first of `keys`, when replicas must confirm what a call wrote: every key of a call shares
    /// one slot, so it names the node to ask. None without replicas (nothing to ask, nothing copied).
    fn confirmation_key(&self, keys: &[String]) -> Option<String> {
        (self.durability.replicas > 0)
            .then(|| keys.first().cloned())
            .flatten()
    }

    /// WAIT for the configured replicas on the connection that ran the script, on the node that owns
    /// `key`'s slot. Err when they do not confirm in time: the client must not be told "done".
    /// `fence`: the script wrote nothing itself (a replay), see `replicated`.
    async fn confirm_replicated(
        &self,
        client: &Client,
        key: Option<&str>,
        fence: bool,
    ) -> Result<(), ApiError> {
        let Some(key) = key else {
            return Ok(());
        };
        let started = Instant::now();
        let acknowledged = replicated(client, key, self.durability, fence).await;
        metrics::histogram!("flashsale_redis_wait_seconds").record(started.elapsed().as_secs_f64());
        match acknowledged {
            Ok(true) => Ok(()),
            outcome => {
                let outcome = if outcome.is_ok() { "timeout" } else { "error" };
                metrics::counter!("flashsale_redis_wait_failures_total", "outcome" => outcome)
                    .increment(1);
                Err(ApiError::retry_later(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVICE_UNAVAILABLE",
                    "the write is not on a replica yet; retry with the same Idempotency-Key",
                    std::time::Duration::from_secs(1),
                ))
            }
        }
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Runs a saga step (a typed call whose reply is a bare outcome) and returns only once what the
    /// step found is on the replicas: a step whose effect a failover could still take back must not
    /// let its trigger be acknowledged. A step that wrote nothing ("already done") found the effect of
    /// an earlier run, maybe another engine's that is not replicated yet: it fences (see `replicated`).
    /// Err (a Timeout) when the replicas do not confirm in time.
    pub async fn run_step<C: ScriptCall>(
        &self,
        redis: &Pool,
        keys: &Keys,
        call: &C,
        wrote: impl Fn(&str) -> bool,
    ) -> Result<String, fred::error::Error> {
        let client = redis.next();
        let (value, first_key) = self.run_on(client, keys, call).await?;
        let outcome = value.as_string().unwrap_or_default();
        if let Some(first_key) = first_key {
            let started = Instant::now();
            let confirmed = replicated(client, &first_key, self.durability, !wrote(&outcome)).await;
            metrics::histogram!("flashsale_redis_wait_seconds")
                .record(started.elapsed().as_secs_f64());
            if !matches!(confirmed, Ok(true)) {
                let outcome = if confirmed.is_ok() {
                    "timeout"
                } else {
                    "error"
                };
                metrics::counter!("flashsale_redis_wait_failures_total", "outcome" => outcome)
                    .increment(1);
                confirmed?;
                return Err(fred::error::Error::new(
                    fred::error::ErrorKind::Timeout,
                    format!("{}: not confirmed by a replica in time", C::SCRIPT.name()),
                ));
            }
        }
        Ok(outcome)
    }

    /// Runs a typed call and returns the raw reply (scripts outside the HTTP reply protocol).
    pub async fn run_call<C: ScriptCall>(
        &self,
        redis: &Pool,
        keys: &Keys,
        call: &C,
    ) -> Result<Value, fred::error::Error> {
        let (value, _) = self.run_on(redis.next(), keys, call).await?;
        Ok(value)
    }

    /// Runs a typed call whose writes a client's answer depends on (a stock hold): like `run_call`,
    /// then, when `wrote` says the reply means a write, the replica confirmation `invoke` waits for
    /// too (a refusal that wrote nothing has nothing to confirm).
    pub async fn run_call_replicated<C: ScriptCall>(
        &self,
        redis: &Pool,
        keys: &Keys,
        call: &C,
        wrote: impl Fn(&Value) -> bool,
    ) -> Result<Value, ApiError> {
        let client = redis.next();
        let (value, first_key) = self.run_on(client, keys, call).await?;
        if wrote(&value) {
            self.confirm_replicated(client, first_key.as_deref(), false)
                .await?;
        }
        Ok(value)
    }

    /// Runs a typed HTTP-facing call and decodes its reply (see lua/lib/prelude.lua).
    pub async fn invoke<C: ScriptCall>(
        &self,
        redis: &Pool,
        keys: &Keys,
        call: &C,
    ) -> Result<ScriptReply, ApiError> {
        let client = redis.next();
        let (value, first_key) = self.run_on(client, keys, call).await?;
        let reply = ScriptReply::decode(value)?;
        // A replay answers a write made earlier, maybe not on a replica yet (its first answer was a
        // 503): it is confirmed too, after a fence since the replay itself wrote nothing.
        match reply {
            ScriptReply::Ok { .. } => {
                self.confirm_replicated(client, first_key.as_deref(), false)
                    .await?
            }
            ScriptReply::Replay { .. } => {
                self.confirm_replicated(client, first_key.as_deref(), true)
                    .await?
            }
            ScriptReply::Refused { .. } | ScriptReply::KeyReused => {}
        }
        script_series::outcomes(C::SCRIPT, reply.outcome_label()).increment(1);
        Ok(reply)
    }
}

/// The key a fence writes: in `key`'s slot (same hash tag), short-lived.
fn fence_key(key: &str) -> String {
    match key.find('}') {
        Some(close) if key[..close].contains('{') => format!("{}:fence", &key[..=close]),
        _ => format!("{key}:fence"),
    }
}

/// True once `durability.replicas` replicas of the node owning `key`'s slot hold everything this
/// connection wrote there. WAIT counts from the connection's last write, so a caller that wrote
/// nothing but acts on what it read (the relay forwarding outbox entries, a saga step that found its
/// work already done) fences first: a small write in the same slot, after which WAIT covers every
/// earlier write on that node, whoever made it (one replication stream per node).
pub async fn replicated(
    client: &Client,
    key: &str,
    durability: Durability,
    fence: bool,
) -> Result<bool, fred::error::Error> {
    let Durability {
        replicas,
        timeout_ms,
    } = durability;
    if replicas == 0 {
        return Ok(true);
    }
    let timeout = i64::try_from(timeout_ms).unwrap_or(i64::MAX);
    let node_client = if client.is_clustered() {
        let slot = crate::partition::key_slot(key);
        match client
            .cached_cluster_state()
            .and_then(|state| state.get_server(slot).cloned())
        {
            Some(node) => client.with_cluster_node(node),
            None => return Ok(false),
        }
    } else {
        client.with_options(&fred::types::config::Options::default())
    };
    if fence {
        let _: Value = node_client
            .set(
                fence_key(key),
                "1",
                Some(fred::types::Expiration::PX(10_000)),
                None,
                false,
            )
            .await?;
    }
    let acknowledged: i64 = node_client.wait(i64::from(replicas), timeout).await?;
    Ok(acknowledged >= i64::from(replicas))
}

/// A decoded script reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptReply {
    /// Executed: the response body (JSON) with its status.
    Ok { status: u16, body: String },
    /// Refused by a business rule.
    Refused {
        status: u16,
        code: String,
        detail: String,
        /// Problem extension members (a JSON object), or empty.
        extensions: String,
    },
    /// The first result for this idempotency key, sent back unchanged.
    Replay {
        status: u16,
        problem: bool,
        body: String,
        detail: String,
        extensions: String,
    },
    /// Idempotency key reused with another request.
    KeyReused,
}

impl ScriptReply {
    pub fn decode(value: Value) -> Result<Self, ApiError> {
        let parts = match value {
            Value::Array(parts) => parts,
            other => return Err(bad_reply(&other)),
        };
        let text = |i: usize| parts.get(i).and_then(|v| v.as_string()).unwrap_or_default();
        let status = parts.get(1).and_then(|v| v.as_i64()).unwrap_or(500) as u16;
        Ok(match text(0).as_str() {
            // Element layout per outcome: lua/lib/prelude.lua ("Reply protocol").
            "ok" => Self::Ok {
                status,
                body: text(2),
            },
            "err" => Self::Refused {
                status,
                code: text(2),
                detail: text(3),
                extensions: text(4),
            },
            "replay" => Self::Replay {
                status,
                problem: text(2) == "problem",
                body: text(3),
                detail: text(4),
                extensions: text(5),
            },
            "reused" => Self::KeyReused,
            _ => return Err(bad_reply(&Value::Array(parts))),
        })
    }

    /// Logs and counts a refusal to overwrite an existing entity (`CONFLICT`: an id taken by another
    /// entity, i.e. an id-allocation fault such as a hand-edited node lease table); alerting watches
    /// `flashsale_entity_conflicts_total`.
    pub fn note_entity_conflict(&self, script: Script, id: i64) {
        if let Self::Refused { code, detail, .. } = self {
            if code == "CONFLICT" {
                tracing::error!(script = script.name(), id, detail = %detail, "refused to overwrite an existing entity");
                metrics::counter!("flashsale_entity_conflicts_total", "script" => script.name())
                    .increment(1);
            }
        }
    }

    pub fn outcome_label(&self) -> &str {
        match self {
            Self::Ok { .. } => "ok",
            Self::Refused { code, .. } => code,
            Self::Replay { .. } => "replayed",
            Self::KeyReused => "IDEMPOTENCY_KEY_REUSED",
        }
    }
}

fn bad_reply(value: &Value) -> ApiError {
    ApiError::Internal(anyhow::anyhow!("unexpected script reply: {value:?}"))
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl IntoResponse for ScriptReply {
    fn into_response(self) -> Response {
        let status_of =
            |s: u16| StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match self {
            Self::Ok { status, body } => json_response(status_of(status), body),
            Self::Refused {
                status,
                code,
                detail,
                extensions,
            } => {
                let status = status_of(status);
                let extensions = ProblemExtensions::from_json(&extensions);
                repeated_problem_response(status, &code, &detail, &extensions)
            }
            Self::Replay {
                status,
                problem,
                body,
                detail,
                extensions,
            } => {
                let status = status_of(status);
                let mut response = if problem {
                    let extensions = ProblemExtensions::from_json(&extensions);
                    repeated_problem_response(status, &body, &detail, &extensions)
                } else {
                    json_response(status, body)
                };
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                response
            }
            Self::KeyReused => ApiError::problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was used with a different request",
            )
            .into_response(),
        }
    }
}

/// The per-script metric handles, registered once each: the registry lookup builds and hashes a key
/// from the labels on every call, and every request that reaches Redis made two of them.
mod script_series {
    use super::Script;
    use foldhash::HashMap;
    use std::sync::{OnceLock, RwLock};

    pub fn duration(script: Script) -> metrics::Histogram {
        static CACHE: [OnceLock<metrics::Histogram>; Script::COUNT] =
            [const { OnceLock::new() }; Script::COUNT];
        CACHE[script.index()]
            .get_or_init(|| {
                metrics::histogram!("flashsale_script_duration_seconds", "script" => script.name())
            })
            .clone()
    }

    /// Outcomes are the scripts' refusal codes and a few words: a bounded set.
    pub fn outcomes(script: Script, outcome: &str) -> metrics::Counter {
        type ByOutcome = RwLock<HashMap<String, metrics::Counter>>;
        static CACHE: [OnceLock<ByOutcome>; Script::COUNT] =
            [const { OnceLock::new() }; Script::COUNT];
        let cache = CACHE[script.index()].get_or_init(Default::default);
        if let Some(c) = read(cache).get(outcome) {
            return c.clone();
        }
        let c = metrics::counter!("flashsale_script_outcomes_total", "script" => script.name(), "outcome" => outcome.to_string());
        write(cache).insert(outcome.to_string(), c.clone());
        c
    }

    fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
        lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
        lock.write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::Script;

    #[test]
    fn every_script_sits_at_its_index_in_all() {
        for (position, script) in Script::ALL.iter().enumerate() {
            assert_eq!(script.index(), position, "{}", script.name());
        }
    }
}
