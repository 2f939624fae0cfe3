//! Plain HTTP client for setup (seeding, admin) and for the checks after the timed part.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// A seeded member, ready to act.
pub struct Member {
    pub id: Value,
    pub email: String,
    /// `Bearer <access_token>`, the whole Authorization header value.
    pub bearer: String,
    pub initial_balance: i64,
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    admin_key: String,
}

/// Ids may be integers or strings (the contract lets the project choose); render either in a path.
pub fn id_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn int(v: &Value, field: &str) -> Result<i64> {
    v.get(field)
        .and_then(|x| {
            x.as_i64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| anyhow!("response has no integer `{field}`: {v}"))
}

impl Api {
    pub fn new(base: &str, admin_key: &str) -> Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .build()?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_string(),
            admin_key: admin_key.to_string(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.http.get(self.url("/readyz")).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!(
                    "engine at {} not ready after {:?}: {last}",
                    self.base,
                    timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder, what: &str) -> Result<(u16, Value)> {
        let r = rb.send().await.with_context(|| what.to_string())?;
        let status = r.status().as_u16();
        let bytes = r.bytes().await.with_context(|| what.to_string())?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, body))
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> Result<Value> {
        let rb = self
            .http
            .post(self.url(path))
            .header("X-Admin-Key", &self.admin_key)
            .json(body);
        let (status, v) = self.send(rb, &format!("POST {path}")).await?;
        if !(200..300).contains(&status) {
            bail!("POST {path} -> HTTP {status}: {v}");
        }
        Ok(v)
    }

    pub async fn admin_get(&self, path: &str) -> Result<Value> {
        let rb = self
            .http
            .get(self.url(path))
            .header("X-Admin-Key", &self.admin_key);
        let (status, v) = self.send(rb, &format!("GET {path}")).await?;
        if !(200..300).contains(&status) {
            bail!("GET {path} -> HTTP {status}: {v}");
        }
        Ok(v)
    }

    /// The whole admin reconcile: every page from the first to the last (`next_cursor` null), merged
    /// into one `{in_sync, pending_events, drift}` (pending_events as the first page saw it).
    pub async fn reconcile(&self) -> Result<Value> {
        let first = self.admin_get("/api/v1/admin/reconcile?limit=5000").await?;
        let pending = first.get("pending_events").cloned().unwrap_or(Value::Null);
        let mut in_sync = true;
        let mut drift = Vec::new();
        let mut page = first;
        loop {
            in_sync &= page.get("in_sync").and_then(Value::as_bool) == Some(true);
            drift.extend(
                page.get("drift")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
            let Some(next) = page.get("next_cursor").and_then(Value::as_str) else {
                break;
            };
            page = self
                .admin_get(&format!("/api/v1/admin/reconcile?limit=5000&cursor={next}"))
                .await?;
        }
        Ok(json!({"in_sync": in_sync, "pending_events": pending, "drift": drift}))
    }

    /// GET as a member (or anonymous), expecting 2xx.
    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Result<Value> {
        let mut rb = self.http.get(self.url(path));
        if let Some(b) = bearer {
            rb = rb.header("Authorization", b);
        }
        let (status, v) = self.send(rb, &format!("GET {path}")).await?;
        if !(200..300).contains(&status) {
            bail!("GET {path} -> HTTP {status}: {v}");
        }
        Ok(v)
    }

    /// Seeds `count` members with `balance` points each, in batches of at most 5,000.
    pub async fn seed_members(
        &self,
        count: usize,
        balance: i64,
        prefix: &str,
    ) -> Result<Vec<Member>> {
        let started = Instant::now();
        let mut out = Vec::with_capacity(count);
        let mut batch = 0;
        // A nonce keeps the e-mails fresh even when a run id is reused (seeding an existing e-mail
        // hands back that member as it is, balance and coupons included).
        let prefix = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        while out.len() < count {
            let n = (count - out.len()).min(5000);
            let body = json!({"count": n, "balance": balance, "email_prefix": format!("{prefix}-b{batch}")});
            let v = self
                .admin_post("/api/v1/admin/seed/members", &body)
                .await
                .context("seeding members (POST /api/v1/admin/seed/members)")?;
            let members = v
                .get("members")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("seed response has no `members` array"))?;
            if members.len() != n {
                bail!("asked to seed {n} members, got {}", members.len());
            }
            for m in members {
                let token = m
                    .get("access_token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("seeded member without access_token: {m}"))?;
                out.push(Member {
                    id: m.get("id").cloned().unwrap_or(Value::Null),
                    email: m
                        .get("email")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    bearer: format!("Bearer {token}"),
                    initial_balance: balance,
                });
            }
            batch += 1;
        }
        eprintln!(
            "seeded {} members ({} points each) in {:.1}s",
            out.len(),
            balance,
            started.elapsed().as_secs_f64()
        );
        Ok(out)
    }

    pub async fn create_product(&self, name: &str, price: i64, stock: i64) -> Result<Value> {
        let v = self
            .admin_post(
                "/api/v1/admin/products",
                &json!({"name": name, "price": price, "stock": stock}),
            )
            .await?;
        v.get("id")
            .cloned()
            .ok_or_else(|| anyhow!("product without id: {v}"))
    }

    pub async fn create_coupon(
        &self,
        name: &str,
        discount_type: &str,
        discount_value: i64,
        quantity: i64,
    ) -> Result<Value> {
        let valid_until = (chrono::Utc::now() + chrono::Duration::days(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let v = self
            .admin_post(
                "/api/v1/admin/coupons",
                &json!({
                    "name": name,
                    "discount_type": discount_type,
                    "discount_value": discount_value,
                    "total_quantity": quantity,
                    "valid_until": valid_until,
                }),
            )
            .await?;
        v.get("id")
            .cloned()
            .ok_or_else(|| anyhow!("coupon without id: {v}"))
    }

    /// The drift entries reconcile reports right now, as `entity:id` keys. Taken before a run
    /// seeds anything, so that drift left by earlier activity on a shared stack is not blamed on it.
    pub async fn drift_baseline(&self, wait_pending: Duration) -> Result<HashSet<String>> {
        let deadline = Instant::now() + wait_pending;
        loop {
            let v = self.reconcile().await?;
            let pending = v.get("pending_events").and_then(Value::as_i64).unwrap_or(0);
            if pending == 0 || Instant::now() > deadline {
                return Ok(drift_keys(&v));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Polls reconcile until the pipeline has drained (pending_events == 0) and Redis agrees with
    /// MySQL: in_sync, or at least no drift beyond the entries in `baseline` (drift that predates
    /// this run), or the timeout passes.
    pub async fn drain(&self, timeout: Duration, baseline: &HashSet<String>) -> Drain {
        let started = Instant::now();
        let mut polls = 0u32;
        let mut pending_zero_at: Option<f64> = None;
        let mut last = Value::Null;
        let mut new_drift = Vec::new();
        let mut preexisting = 0;
        let mut truncated = false;
        loop {
            polls += 1;
            let last_err = match self.reconcile().await {
                Ok(v) => {
                    let pending = v.get("pending_events").and_then(Value::as_i64);
                    let in_sync = v.get("in_sync").and_then(Value::as_bool) == Some(true);
                    if pending == Some(0) && pending_zero_at.is_none() {
                        pending_zero_at = Some(started.elapsed().as_secs_f64());
                    }
                    if pending != Some(0) {
                        pending_zero_at = None;
                    }
                    let drift = v
                        .get("drift")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    new_drift = drift
                        .iter()
                        .filter(|d| !baseline.contains(&drift_key(d)))
                        .cloned()
                        .collect();
                    preexisting = drift.len() - new_drift.len();
                    // reconcile lists at most 1,000 entries: a full list may hide new drift.
                    truncated = drift.len() >= DRIFT_LIST_CAP;
                    last = v;
                    if pending == Some(0) && (in_sync || (new_drift.is_empty() && !truncated)) {
                        return Drain {
                            ok: true,
                            pending_zero_secs: pending_zero_at,
                            in_sync_secs: Some(started.elapsed().as_secs_f64()),
                            in_sync,
                            preexisting_drift: preexisting,
                            drift_list_truncated: truncated,
                            new_drift,
                            polls,
                            last_pending: pending,
                            error: None,
                        };
                    }
                    None
                }
                Err(e) => Some(format!("{e:#}")),
            };
            if started.elapsed() > timeout {
                return Drain {
                    ok: false,
                    pending_zero_secs: pending_zero_at,
                    in_sync_secs: None,
                    in_sync: last.get("in_sync").and_then(Value::as_bool) == Some(true),
                    preexisting_drift: preexisting,
                    drift_list_truncated: truncated,
                    new_drift,
                    polls,
                    last_pending: last.get("pending_events").and_then(Value::as_i64),
                    error: last_err,
                };
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// reconcile truncates its drift list to this many entries.
const DRIFT_LIST_CAP: usize = 1000;

fn drift_key(d: &Value) -> String {
    format!(
        "{}:{}",
        d.get("entity").and_then(Value::as_str).unwrap_or("?"),
        d.get("id").map(id_str).unwrap_or_default()
    )
}

fn drift_keys(v: &Value) -> HashSet<String> {
    v.get("drift")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(drift_key).collect())
        .unwrap_or_default()
}

#[derive(serde::Serialize, Debug, Clone)]
pub struct Drain {
    pub ok: bool,
    /// Seconds after the burst until reconcile first reported pending_events == 0 (and stayed so).
    pub pending_zero_secs: Option<f64>,
    /// Seconds after the burst until pending_events == 0 and no drift but what predates the run.
    pub in_sync_secs: Option<f64>,
    /// reconcile's own in_sync at the end.
    pub in_sync: bool,
    /// Drift entries that were already there before the run seeded anything (ignored).
    pub preexisting_drift: usize,
    /// reconcile's list was full (it stops at 1,000), so new drift could hide behind old drift.
    pub drift_list_truncated: bool,
    /// Drift entries that were not (the first ones; at most what reconcile lists).
    pub new_drift: Vec<Value>,
    pub polls: u32,
    pub last_pending: Option<i64>,
    pub error: Option<String>,
}
