//! Lock-free latency histograms and outcome counters, recorded by every goose request at microsecond
//! resolution (goose's own metrics are whole milliseconds, too coarse for a Redis-backed hot path).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Log-linear histogram: exact below 128 µs, then 64 sub-buckets per power of two (~1.6 % precision).
pub struct Hist {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

const LINEAR: u64 = 128;
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
const MAX_EXP: u32 = 40;

fn bucket_of(v: u64) -> usize {
    let v = v.min((1u64 << MAX_EXP) - 1);
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 7
    let shift = e - SUB_BITS;
    let m = (v >> shift) as usize; // in [64, 128)
    LINEAR as usize + (e as usize - 7) * SUB + (m - SUB)
}

fn value_of(idx: usize) -> u64 {
    if (idx as u64) < LINEAR {
        return idx as u64;
    }
    let k = idx - LINEAR as usize;
    let e = (k / SUB) as u32 + 7;
    let m = (k % SUB + SUB) as u64;
    let shift = e - SUB_BITS;
    (m << shift) + ((1u64 << shift) >> 1)
}

impl Default for Hist {
    fn default() -> Self {
        let n = LINEAR as usize + (MAX_EXP as usize - 6) * SUB;
        Hist {
            buckets: (0..n).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl Hist {
    pub fn record(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(us, Relaxed);
        self.max.fetch_max(us, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Value (µs) at quantile `q` in 0..=1.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let target = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= target {
                return value_of(i).min(self.max.load(Relaxed));
            }
        }
        self.max.load(Relaxed)
    }

    pub fn mean(&self) -> f64 {
        let c = self.count();
        if c == 0 {
            0.0
        } else {
            self.sum.load(Relaxed) as f64 / c as f64
        }
    }

    pub fn max(&self) -> u64 {
        self.max.load(Relaxed)
    }
}

/// The requests the scenarios make; one histogram and set of counters each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    CouponIssue,
    OrderCreate,
    OrderPay,
    OrderCancel,
    ProductsList,
    ProductGet,
    Popular,
    PointsCharge,
    /// An order create sent again with the same Idempotency-Key and body (a client retry).
    OrderRetry,
}

pub const ALL_OPS: [Op; 9] = [
    Op::CouponIssue,
    Op::OrderCreate,
    Op::OrderPay,
    Op::OrderCancel,
    Op::ProductsList,
    Op::ProductGet,
    Op::Popular,
    Op::PointsCharge,
    Op::OrderRetry,
];

impl Op {
    /// Name in goose's reports (goose puts the method in front itself).
    pub fn goose_name(self) -> &'static str {
        let n = self.name();
        &n[n.find(' ').map_or(0, |i| i + 1)..]
    }

    /// Name used in our reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::CouponIssue => "POST /coupons/{id}/issue",
            Op::OrderCreate => "POST /orders",
            Op::OrderPay => "POST /orders/{id}/pay",
            Op::OrderCancel => "POST /orders/{id}/cancel",
            Op::ProductsList => "GET /products",
            Op::ProductGet => "GET /products/{id}",
            Op::Popular => "GET /products/popular",
            Op::PointsCharge => "POST /me/points/charge",
            Op::OrderRetry => "POST /orders (same key)",
        }
    }
}

/// How a response counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// 2xx.
    Ok,
    /// A 4xx the scenario expects (sold out, out of stock, ...): not an error.
    Expected,
    /// Anything else with a definite answer (unexpected 4xx, bad body).
    Error,
    /// No definite answer: transport error, timeout, 5xx, IDEMPOTENCY_IN_PROGRESS. Also an error.
    Unknown,
}

#[derive(Default)]
pub struct OpStats {
    pub hist: Hist,
    pub ok: AtomicU64,
    pub expected: AtomicU64,
    pub errors: AtomicU64,
    pub outcomes: Mutex<BTreeMap<String, u64>>,
    /// The outcomes that counted as errors (a subset of `outcomes`).
    pub error_outcomes: Mutex<BTreeMap<String, u64>>,
}

pub struct Stats {
    pub ops: Vec<OpStats>,
    /// Per op, the status the last definite (ok or expected) answer had: goose is told to expect it,
    /// so the common case needs no success/failure correction message.
    pub likely_status: Vec<AtomicU16>,
    pub all: Hist,
    base: Instant,
    /// µs since `base` of the first request start / last response (u64::MAX / 0 when none).
    first_us: AtomicU64,
    last_us: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ops: ALL_OPS.iter().map(|_| OpStats::default()).collect(),
            likely_status: ALL_OPS.iter().map(|_| AtomicU16::new(0)).collect(),
            all: Hist::default(),
            base: Instant::now(),
            first_us: AtomicU64::new(u64::MAX),
            last_us: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn record(&self, op: Op, class: Class, outcome: &str, started: Instant, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        let s = &self.ops[op as usize];
        s.hist.record(us);
        self.all.record(us);
        match class {
            Class::Ok => &s.ok,
            Class::Expected => &s.expected,
            Class::Error | Class::Unknown => &s.errors,
        }
        .fetch_add(1, Relaxed);
        // 2xx outcomes are counted without a lock: derived from `ok` at summary time.
        if class != Class::Ok || !outcome.starts_with('2') {
            *s.outcomes
                .lock()
                .unwrap()
                .entry(outcome.to_string())
                .or_default() += 1;
        }
        if matches!(class, Class::Error | Class::Unknown) {
            *s.error_outcomes
                .lock()
                .unwrap()
                .entry(outcome.to_string())
                .or_default() += 1;
        }
        let start = started.saturating_duration_since(self.base).as_micros() as u64;
        self.first_us.fetch_min(start, Relaxed);
        self.last_us.fetch_max(start + us, Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.all.count()
    }

    pub fn errors(&self) -> u64 {
        self.ops.iter().map(|o| o.errors.load(Relaxed)).sum()
    }

    /// Seconds between the first request's start and the last response.
    pub fn window_secs(&self) -> f64 {
        let f = self.first_us.load(Relaxed);
        let l = self.last_us.load(Relaxed);
        if f == u64::MAX || l <= f {
            0.0
        } else {
            (l - f) as f64 / 1e6
        }
    }

    pub fn summary(&self) -> StatsSummary {
        let window = self.window_secs();
        let total = self.total();
        let errors = self.errors();
        let mut ops = BTreeMap::new();
        for (op, s) in ALL_OPS.iter().zip(&self.ops) {
            let count = s.hist.count();
            if count == 0 {
                continue;
            }
            let mut outcomes = s.outcomes.lock().unwrap().clone();
            let ok = s.ok.load(Relaxed);
            if ok > 0 {
                outcomes.insert("2xx".into(), ok);
            }
            ops.insert(
                op.name().to_string(),
                OpSummary {
                    count,
                    ok,
                    expected: s.expected.load(Relaxed),
                    errors: s.errors.load(Relaxed),
                    rps: if window > 0.0 {
                        count as f64 / window
                    } else {
                        0.0
                    },
                    latency: Lat::of(&s.hist),
                    outcomes,
                    error_outcomes: s.error_outcomes.lock().unwrap().clone(),
                },
            );
        }
        StatsSummary {
            requests: total,
            errors,
            error_rate: if total == 0 {
                0.0
            } else {
                errors as f64 / total as f64
            },
            window_secs: window,
            rps: if window > 0.0 {
                total as f64 / window
            } else {
                0.0
            },
            latency: Lat::of(&self.all),
            ops,
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct Lat {
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Lat {
    fn of(h: &Hist) -> Lat {
        Lat {
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.quantile(0.50),
            p90_us: h.quantile(0.90),
            p99_us: h.quantile(0.99),
            p999_us: h.quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct OpSummary {
    pub count: u64,
    pub ok: u64,
    pub expected: u64,
    pub errors: u64,
    pub rps: f64,
    pub latency: Lat,
    pub outcomes: BTreeMap<String, u64>,
    pub error_outcomes: BTreeMap<String, u64>,
}

#[derive(Serialize, Clone, Debug)]
pub struct StatsSummary {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub window_secs: f64,
    pub rps: f64,
    pub latency: Lat,
    pub ops: BTreeMap<String, OpSummary>,
}

pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// CPU time (user + system) of a process in seconds, from /proc/<pid>/stat.
pub fn proc_cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ", field 3 (state) is index 0; utime is field 14 -> index 11, stime 15 -> 12.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every mainstream Linux configuration.
    100.0
}

/// Peak resident set size (VmHWM) of a process in KiB.
pub fn proc_hwm_kib(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What one Redis node reports in `INFO cpu` + `INFO commandstats` + `INFO replication` (the bench's
/// per-node figures on a cluster, where a pid per node is not enough: the script calls count too).
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub role: String,
    /// used_cpu_sys + used_cpu_user (seconds, the whole process).
    pub cpu_secs: f64,
    pub evalsha_calls: u64,
    pub evalsha_usec: u64,
    /// Script calls that answered an error (not a business refusal: those are ordinary replies).
    pub evalsha_failed: u64,
    pub wait_calls: u64,
    /// Calls of every command.
    pub commands: u64,
}

/// `INFO` of a node over a plain connection (host:port): one RESP command, one bulk reply. None when the
/// node does not answer within 2 s.
pub fn node_info(addr: &str) -> Option<NodeInfo> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let sock = addr.to_socket_addrs().ok()?.next()?;
    let mut conn =
        std::net::TcpStream::connect_timeout(&sock, std::time::Duration::from_secs(2)).ok()?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    conn.write_all(b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut want: Option<usize> = None;
    loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if want.is_none() {
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                let head = std::str::from_utf8(&buf[..end]).ok()?;
                let len: usize = head.strip_prefix('$')?.parse().ok()?;
                want = Some(end + 2 + len);
            }
        }
        if matches!(want, Some(w) if buf.len() >= w) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let mut info = NodeInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k {
            "role" => info.role = v.trim().to_string(),
            "used_cpu_sys" | "used_cpu_user" => {
                info.cpu_secs += v.trim().parse::<f64>().unwrap_or(0.0)
            }
            _ if k.starts_with("cmdstat_") => {
                let field = |name: &str| {
                    v.split(',')
                        .find_map(|kv| {
                            kv.strip_prefix(name)?
                                .strip_prefix('=')?
                                .parse::<u64>()
                                .ok()
                        })
                        .unwrap_or(0)
                };
                let calls = field("calls");
                info.commands += calls;
                match k {
                    "cmdstat_evalsha" => {
                        info.evalsha_calls = calls;
                        info.evalsha_usec = field("usec");
                        info.evalsha_failed = field("failed_calls");
                    }
                    "cmdstat_wait" => info.wait_calls = calls,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_precision() {
        for v in [
            0u64, 1, 127, 128, 129, 1000, 4_095, 65_536, 1_234_567, 99_999_999,
        ] {
            let back = value_of(bucket_of(v));
            let err = (back as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 0.02, "v={v} back={back}");
        }
    }

    #[test]
    fn quantiles() {
        let h = Hist::default();
        for v in 1..=1000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 500.0).abs() / 500.0 < 0.02);
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 990.0).abs() / 990.0 < 0.02);
        assert_eq!(h.max(), 1000);
    }
}
