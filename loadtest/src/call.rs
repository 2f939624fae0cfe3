//! The one way scenarios talk to the engine during the timed part: a goose request that is
//! classified (ok / expected / error / unknown), timed in µs, and fed both to goose's metrics and ours.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use goose::goose::GooseResponse;
use goose::prelude::*;
use serde_json::Value;

use crate::api::Member;
use crate::scenarios::Data;
use crate::stats::{Class, Op, Stats};

/// Everything the goose users share: the member pool, the scenario's data and the counters.
pub struct Ctx {
    pub members: Vec<Member>,
    /// Round-robin cursor into `members` (coupon-rush, stock-rush).
    pub cursor: AtomicUsize,
    /// Next goose user slot (shopper gives each user its own members).
    pub slots: AtomicUsize,
    pub users: usize,
    pub stats: Stats,
    /// Mutating requests that never got a definite answer even after retrying with the same
    /// Idempotency-Key: their effect is unknown, so exact checks cannot be trusted.
    pub ambiguous: AtomicU64,
    pub data: Data,
}

static CTX: OnceLock<Ctx> = OnceLock::new();

pub fn install(ctx: Ctx) {
    if CTX.set(ctx).is_err() {
        panic!("context installed twice");
    }
}

pub fn ctx() -> &'static Ctx {
    CTX.get().expect("context not installed")
}

impl Ctx {
    /// Next member of the shared pool, cycling.
    pub fn next_member(&self) -> usize {
        self.cursor.fetch_add(1, Relaxed) % self.members.len()
    }
}

pub struct Resp {
    pub status: Option<u16>,
    pub code: Option<String>,
    pub body: Value,
    pub class: Class,
}

impl Resp {
    pub fn is(&self, status: u16) -> bool {
        self.status == Some(status)
    }
}

pub fn idem_key() -> String {
    format!("lt-{:032x}", rand::random::<u128>())
}

pub struct Req<'a> {
    pub op: Op,
    pub method: GooseMethod,
    pub path: &'a str,
    pub bearer: Option<&'a str>,
    pub idem: Option<&'a str>,
    pub body: Option<&'a Value>,
    /// Problem `code`s that are expected outcomes, not errors.
    pub expected: &'a [&'a str],
    /// Parse the 2xx body as JSON (otherwise it is read and dropped).
    pub want_body: bool,
}

impl<'a> Req<'a> {
    pub fn get(op: Op, path: &'a str) -> Self {
        Req {
            op,
            method: GooseMethod::Get,
            path,
            bearer: None,
            idem: None,
            body: None,
            expected: &[],
            want_body: false,
        }
    }

    pub fn post(op: Op, path: &'a str, bearer: &'a str) -> Self {
        Req {
            op,
            method: GooseMethod::Post,
            path,
            bearer: Some(bearer),
            idem: None,
            body: None,
            expected: &[],
            want_body: false,
        }
    }

    pub fn body(mut self, body: &'a Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn idem(mut self, key: &'a str) -> Self {
        self.idem = Some(key);
        self
    }

    pub fn expect(mut self, codes: &'a [&'a str]) -> Self {
        self.expected = codes;
        self
    }

    pub fn want_body(mut self) -> Self {
        self.want_body = true;
        self
    }
}

/// Even pacing of all users' requests for `--throttle-requests` (goose's own throttle releases
/// tokens in batches every 10 ms, and its wait would count in our latencies).
pub struct Pacer {
    base: Instant,
    interval_ns: u64,
    next_ns: AtomicU64,
}

static PACER: OnceLock<Pacer> = OnceLock::new();

pub fn set_rate(per_sec: usize) {
    if per_sec > 0 {
        let _ = PACER.set(Pacer {
            base: Instant::now(),
            interval_ns: 1_000_000_000 / per_sec as u64,
            next_ns: AtomicU64::new(0),
        });
    }
}

async fn pace() {
    let Some(p) = PACER.get() else { return };
    let now = p.base.elapsed().as_nanos() as u64;
    // Claim the next slot; a backlog is never made up in a burst (slots restart at now).
    let prev = p
        .next_ns
        .fetch_update(Relaxed, Relaxed, |n| Some(n.max(now) + p.interval_ns))
        .unwrap_or(now);
    let slot = prev.max(now);
    if slot > now {
        tokio::time::sleep(Duration::from_nanos(slot - now)).await;
    }
}

/// One request, recorded in goose's metrics (expected 4xx marked as success) and in ours.
pub async fn call(user: &mut GooseUser, req: &Req<'_>) -> Result<Resp, Box<TransactionError>> {
    pace().await;
    let started = Instant::now();
    let mut rb = user.get_request_builder(&req.method, req.path)?;
    if let Some(b) = req.bearer {
        rb = rb.header("Authorization", b);
    }
    if let Some(k) = req.idem {
        rb = rb.header("Idempotency-Key", k);
    }
    if let Some(b) = req.body {
        rb = rb.json(b);
    }
    let stats = &ctx().stats;
    let likely = stats.likely_status[req.op as usize].load(Relaxed);
    let mut builder = GooseRequest::builder()
        .method(req.method.clone())
        .name(req.op.goose_name())
        .set_request_builder(rb);
    if likely >= 300 {
        // e.g. 409 once a coupon is sold out: goose then counts it as a success by itself.
        builder = builder.expect_status_code(likely);
    }
    let goose_req = builder.build();
    let GooseResponse {
        mut request,
        response,
    } = user.request(goose_req).await?;
    let (status, bytes) = match response {
        Ok(r) => {
            let s = r.status().as_u16();
            (Some(s), r.bytes().await.ok())
        }
        Err(_) => (None, None),
    };
    let elapsed = started.elapsed();

    let mut code = None;
    let mut body = Value::Null;
    let (class, outcome) = match status {
        None => (Class::Unknown, "transport error".to_string()),
        Some(s) if bytes.is_none() => (Class::Unknown, format!("{s} body lost")),
        Some(s) if (200..300).contains(&s) => {
            if req.want_body {
                match serde_json::from_slice::<Value>(bytes.as_deref().unwrap_or_default()) {
                    Ok(v) => {
                        body = v;
                        (Class::Ok, s.to_string())
                    }
                    Err(_) => (Class::Error, format!("{s} unparsable body")),
                }
            } else {
                (Class::Ok, s.to_string())
            }
        }
        Some(s) => {
            let parsed = serde_json::from_slice::<Value>(bytes.as_deref().unwrap_or_default()).ok();
            code = parsed
                .as_ref()
                .and_then(|v| v.get("code"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let label = format!("{s} {}", code.as_deref().unwrap_or("-"));
            let class = if s >= 500 || code.as_deref() == Some("IDEMPOTENCY_IN_PROGRESS") {
                Class::Unknown
            } else if code.as_deref().is_some_and(|c| req.expected.contains(&c)) {
                Class::Expected
            } else {
                Class::Error
            };
            if let Some(v) = parsed {
                body = v;
            }
            (class, label)
        }
    };

    match class {
        Class::Expected if !request.success => user.set_success(&mut request)?,
        Class::Error | Class::Unknown if request.success => {
            // A 2xx that we could not use: let goose count it as a failure too.
            let _ = user.set_failure(&outcome, &mut request, None, None);
        }
        _ => {}
    }
    ctx()
        .stats
        .record(req.op, class, &outcome, started, elapsed);
    Ok(Resp {
        status,
        code,
        body,
        class,
    })
}

/// A mutating request with an Idempotency-Key: retried with the same key while the answer is
/// unknown (transport error, 5xx, in progress), so the scenario's expected state stays exact.
pub async fn call_idem(user: &mut GooseUser, req: &Req<'_>) -> Result<Resp, Box<TransactionError>> {
    let mut attempt = 0;
    loop {
        let r = call(user, req).await?;
        if r.class != Class::Unknown || attempt >= 3 {
            if r.class == Class::Unknown {
                ctx().ambiguous.fetch_add(1, Relaxed);
            }
            return Ok(r);
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
    }
}
