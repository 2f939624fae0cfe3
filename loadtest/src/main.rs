//! flashsale load tests: one binary, one subcommand per scenario.
//!
//! Each run seeds its own data (members with tokens through the admin seed endpoint, products and
//! coupons through the admin API), drives the engine with goose for `--run-time`, then checks the
//! invariants through the API and the reconcile endpoint, and fails (exit 1) when a check or a
//! threshold (`--max-p99-ms`, `--max-error-rate`) is broken. Goose's HTML and JSON reports and our
//! own summary (µs latencies, CPU per request, drain time, checks) land in `--report-dir`.

mod api;
mod call;
mod scenarios;
mod stats;
mod twin;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use goose::config::GooseConfiguration;
use goose::prelude::*;
use serde::Serialize;

use crate::api::{Api, Drain};
use crate::call::Ctx;
use crate::scenarios::{
    BigSaleArgs, Check, CouponArgs, Data, LimitedArgs, PointsArgs, ShopperArgs, StockArgs,
};
use crate::stats::{ms, node_info, proc_cpu_secs, proc_hwm_kib, NodeInfo, Stats, StatsSummary};

#[derive(Parser, Debug)]
#[command(
    name = "flashsale-loadtest",
    about = "Load scenarios for the flashsale engine (goose), with invariant checks"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Common {
    /// Engine base URL.
    #[arg(
        long,
        global = true,
        env = "FLASHSALE_HOST",
        default_value = "http://127.0.0.1:8080"
    )]
    host: String,
    /// X-Admin-Key for seeding and reconcile.
    #[arg(
        long,
        global = true,
        env = "ADMIN_API_KEY",
        default_value = "dev-admin-key"
    )]
    admin_key: String,
    /// Concurrent goose users (no think time: each loops as fast as the engine answers). Default 8;
    /// 16 for limited-rush.
    #[arg(long, global = true)]
    users: Option<usize>,
    /// Users started per second (default: all at once).
    #[arg(long, global = true)]
    hatch_rate: Option<String>,
    /// Length of the timed part: 30s, 2m, 90 (seconds). Default 30s; 20s for limited-rush.
    #[arg(long, global = true)]
    run_time: Option<String>,
    /// Cap on requests per second over all users, paced evenly (0 = as fast as possible).
    #[arg(long, global = true, default_value_t = 0)]
    throttle_requests: usize,
    /// Where goose's HTML/JSON reports and our summary JSON go.
    #[arg(long, global = true, default_value = "loadtest/reports")]
    report_dir: PathBuf,
    /// Name of this run (report file names, seeded e-mails). Default: time-based.
    #[arg(long, global = true)]
    run_id: Option<String>,
    /// Fail the run when the p99 of all requests exceeds this many milliseconds.
    #[arg(long, global = true, default_value_t = 250.0)]
    max_p99_ms: f64,
    /// Fail the run when errors / requests exceeds this (expected 409s are not errors).
    #[arg(long, global = true, default_value_t = 0.01)]
    max_error_rate: f64,
    /// Seconds to wait for the pipeline to drain (reconcile: pending_events 0 and in_sync).
    #[arg(long, global = true, default_value_t = 180)]
    drain_timeout: u64,
    /// Seconds to wait, after seeding and before the burst, for the pipeline to absorb the seed.
    #[arg(long, global = true, default_value_t = 60)]
    pre_drain_timeout: u64,
    /// Skip waiting for the pipeline and the in_sync check.
    #[arg(long, global = true)]
    no_drain: bool,
    /// Per-request timeout in seconds.
    #[arg(long, global = true, default_value_t = 10)]
    request_timeout: u64,
    /// Seconds between progress lines (0 = none).
    #[arg(long, global = true, default_value_t = 5)]
    progress_secs: u64,
    /// Engine pid: CPU time (utime+stime) over the timed part and peak RSS go into the summary.
    #[arg(long, global = true, env = "ENGINE_PID")]
    engine_pid: Option<String>,
    /// Redis server pid: its CPU time over the timed part goes into the summary.
    #[arg(long, global = true, env = "REDIS_PID")]
    redis_pid: Option<String>,
    /// Redis nodes (host:port, comma-separated; e.g. every node of a cluster): each one's CPU
    /// (`INFO cpu`) and script calls (`INFO commandstats`) over the timed part go into the summary.
    #[arg(long, global = true, env = "REDIS_NODES", value_delimiter = ',')]
    redis_nodes: Vec<String>,
    /// More processes to account for (name=pid, comma-separated, e.g. kafka=12,sink=34,mariadb=56):
    /// each one's CPU over the timed part and over the drain after it goes into the summary.
    #[arg(long, global = true, env = "WATCH_PIDS", value_delimiter = ',')]
    watch_pids: Vec<String>,
    /// Also print goose's running metrics every N seconds.
    #[arg(long, global = true)]
    goose_running_metrics: Option<usize>,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Many members race for a coupon of few units: POST /coupons/{id}/issue.
    CouponRush(CouponArgs),
    /// Members order one hot product with little stock (Idempotency-Key), then pay.
    StockRush(StockArgs),
    /// The success path: a product with more units than the run sells; every order paid, every
    /// N-th cancelled (refund, units back). Measures what a sale that sells costs.
    BigSale(BigSaleArgs),
    /// Browse, popular list, order 1-3 items, pay (some with a coupon), some cancel, some abandon.
    Shopper(ShopperArgs),
    /// Charges and payments on a few hot members; balances must come out exact.
    Points(PointsArgs),
    /// One product with a per-member limit and an opening time a few seconds into the run: members
    /// order it before and after the opening, far beyond their limit; nobody may end above it.
    LimitedRush(LimitedArgs),
    /// For the wrk twin (loadtest/limited_rush.sh): seed the members and create the limited product
    /// as limited-rush does, write them to --state (JSON) and --members-out (`id token` lines), exit.
    LimitedPrepare(PrepareArgs),
    /// For the wrk twin: wait for the pipeline, then run limited-rush's checks on the orders wrk
    /// was answered 201 for (--orders) and its answer counts (--counts).
    LimitedVerify(VerifyArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct PrepareArgs {
    #[command(flatten)]
    rush: LimitedArgs,
    /// Where the run's state goes (read back by limited-verify).
    #[arg(long)]
    state: PathBuf,
    /// The members for wrk's script: one `member_id access_token` line each.
    #[arg(long)]
    members_out: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct VerifyArgs {
    /// The state limited-prepare wrote.
    #[arg(long)]
    state: PathBuf,
    /// Orders wrk was answered 201 for: `order_id member_id received_unix_ms` lines.
    #[arg(long)]
    orders: PathBuf,
    /// wrk's answer counts: `phase<TAB>before|after<TAB>answer<TAB>n`, `late_not_started<TAB>n`,
    /// `bad_refusal<TAB>n` and `ambiguous<TAB>n` lines.
    #[arg(long)]
    counts: Option<PathBuf>,
}

impl Cmd {
    fn kind(&self) -> &'static str {
        match self {
            Cmd::CouponRush(_) => "coupon-rush",
            Cmd::StockRush(_) => "stock-rush",
            Cmd::BigSale(_) => "big-sale",
            Cmd::Shopper(_) => "shopper",
            Cmd::Points(_) => "points",
            Cmd::LimitedRush(_) => "limited-rush",
            Cmd::LimitedPrepare(_) => "limited-prepare",
            Cmd::LimitedVerify(_) => "limited-verify",
        }
    }

    fn default_users(&self) -> usize {
        match self {
            Cmd::LimitedRush(_) => 16,
            _ => 8,
        }
    }

    fn default_run_time(&self) -> &'static str {
        match self {
            Cmd::LimitedRush(_) => "20s",
            _ => "30s",
        }
    }
}

fn parse_secs(s: &str) -> Result<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    let n: usize = num
        .parse()
        .with_context(|| format!("bad duration {s:?} (use 30s, 2m, 90)"))?;
    if n == 0 {
        bail!("run time must be > 0");
    }
    Ok(n * mult)
}

#[derive(Serialize, Default, Debug, Clone)]
struct Cpu {
    /// Seconds of CPU over the timed part.
    engine_secs: Option<f64>,
    redis_secs: Option<f64>,
    loadtest_secs: Option<f64>,
    engine_us_per_request: Option<f64>,
    redis_us_per_request: Option<f64>,
    loadtest_us_per_request: Option<f64>,
    /// VmHWM of the engine at the end of the run, KiB.
    engine_peak_rss_kib: Option<u64>,
}

struct CpuSnap {
    engine: Option<f64>,
    redis: Option<f64>,
    me: Option<f64>,
    nodes: Vec<Option<NodeInfo>>,
    /// CPU seconds of each --watch-pids process, in its order.
    watched: Vec<Option<f64>>,
}

fn snap(c: &Common) -> CpuSnap {
    CpuSnap {
        engine: c.engine_pid.as_deref().and_then(proc_cpu_secs),
        redis: c.redis_pid.as_deref().and_then(proc_cpu_secs),
        me: proc_cpu_secs("self"),
        nodes: c.redis_nodes.iter().map(|a| node_info(a)).collect(),
        watched: watched_pids(c)
            .iter()
            .map(|(_, pid)| proc_cpu_secs(pid))
            .collect(),
    }
}

/// (name, pid) of every --watch-pids entry; an entry without `=` is named by its pid.
fn watched_pids(c: &Common) -> Vec<(String, String)> {
    c.watch_pids
        .iter()
        .filter(|w| !w.trim().is_empty())
        .map(|w| match w.split_once('=') {
            Some((name, pid)) => (name.trim().to_string(), pid.trim().to_string()),
            None => (w.trim().to_string(), w.trim().to_string()),
        })
        .collect()
}

/// CPU of a --watch-pids process: over the timed part, and over the drain that followed it (the
/// pipeline's work for the run's events goes on after the last request).
#[derive(Serialize, Debug)]
struct ProcessCpu {
    name: String,
    pid: String,
    run_secs: Option<f64>,
    drain_secs: Option<f64>,
}

fn process_cpu(
    c: &Common,
    before: &CpuSnap,
    after: &CpuSnap,
    drained: &CpuSnap,
) -> Vec<ProcessCpu> {
    let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(((b - a) * 1000.0).round() / 1000.0),
        _ => None,
    };
    watched_pids(c)
        .into_iter()
        .enumerate()
        .map(|(i, (name, pid))| ProcessCpu {
            name,
            pid,
            run_secs: delta(before.watched[i], after.watched[i]),
            drain_secs: delta(after.watched[i], drained.watched[i]),
        })
        .collect()
}

/// One Redis node over the timed part (--redis-nodes).
#[derive(Serialize, Debug, Clone)]
struct NodeDelta {
    addr: String,
    role: String,
    cpu_secs: f64,
    cpu_us_per_request: f64,
    evalsha_calls: u64,
    evalsha_failed: u64,
    evalsha_usec: u64,
    evalsha_calls_per_request: f64,
    wait_calls: u64,
    commands: u64,
}

fn node_deltas(c: &Common, before: &CpuSnap, after: &CpuSnap, requests: f64) -> Vec<NodeDelta> {
    let mut out = Vec::new();
    for (i, addr) in c.redis_nodes.iter().enumerate() {
        let (Some(Some(b)), Some(Some(a))) = (before.nodes.get(i), after.nodes.get(i)) else {
            eprintln!("warning: redis node {addr} did not answer INFO before or after the run");
            continue;
        };
        let cpu = ((a.cpu_secs - b.cpu_secs) * 1000.0).round() / 1000.0;
        let calls = a.evalsha_calls.saturating_sub(b.evalsha_calls);
        out.push(NodeDelta {
            addr: addr.clone(),
            role: a.role.clone(),
            cpu_secs: cpu,
            cpu_us_per_request: (cpu * 1e6 / requests * 10.0).round() / 10.0,
            evalsha_calls: calls,
            evalsha_failed: a.evalsha_failed.saturating_sub(b.evalsha_failed),
            evalsha_usec: a.evalsha_usec.saturating_sub(b.evalsha_usec),
            evalsha_calls_per_request: (calls as f64 / requests * 1000.0).round() / 1000.0,
            wait_calls: a.wait_calls.saturating_sub(b.wait_calls),
            commands: a.commands.saturating_sub(b.commands),
        });
    }
    out
}

#[derive(Serialize, Debug)]
struct Threshold {
    name: String,
    limit: f64,
    value: f64,
    ok: bool,
}

#[derive(Serialize, Debug)]
struct Summary {
    scenario: String,
    run_id: String,
    host: String,
    users: usize,
    run_time_secs: usize,
    throttle_requests: usize,
    started_at: String,
    seeded_members: usize,
    seed_secs: f64,
    stats: StatsSummary,
    cpu: Cpu,
    redis_nodes: Vec<NodeDelta>,
    /// --watch-pids: CPU over the timed part and over the drain.
    processes: Vec<ProcessCpu>,
    /// Timed part's bounds (unix ms), to line samples taken outside up with it.
    timed_from_ms: i64,
    timed_until_ms: i64,
    drain: Option<Drain>,
    checks: Vec<Check>,
    thresholds: Vec<Threshold>,
    goose_reports: Vec<String>,
    /// limited-rush: the opening and the answers before / after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    limited: Option<serde_json::Value>,
    passed: bool,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("flashsale-loadtest: ERROR: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(cli: Cli) -> Result<bool> {
    let c = &cli.common;
    let kind = cli.cmd.kind();
    let run_secs = parse_secs(c.run_time.as_deref().unwrap_or(cli.cmd.default_run_time()))?;
    let users = c.users.unwrap_or(cli.cmd.default_users());
    if users == 0 {
        bail!("--users must be > 0");
    }
    let run_id = c.run_id.clone().unwrap_or_else(|| {
        format!(
            "{}-{:04x}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S"),
            rand::random::<u16>()
        )
    });
    let api = Api::new(&c.host, &c.admin_key)?;
    api.wait_ready(Duration::from_secs(60)).await?;
    match &cli.cmd {
        Cmd::LimitedPrepare(a) => return twin::prepare(c, &api, &run_id, a).await,
        Cmd::LimitedVerify(a) => return twin::verify(c, &api, a).await,
        _ => {}
    }

    let baseline = if c.no_drain {
        Default::default()
    } else {
        let b = api
            .drift_baseline(Duration::from_secs(c.pre_drain_timeout))
            .await
            .context("GET /api/v1/admin/reconcile")?;
        if !b.is_empty() {
            eprintln!(
                "note: reconcile already reports {} drift entries before this run; they are ignored, any new drift fails the run",
                b.len()
            );
        }
        b
    };
    eprintln!("== {kind} run {run_id} against {}: seeding", c.host);
    let seed_started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (members, mut data) = match &cli.cmd {
        Cmd::CouponRush(a) => scenarios::setup_coupon(&api, &run_id, a).await?,
        Cmd::StockRush(a) => scenarios::setup_stock(&api, &run_id, a, 0).await?,
        Cmd::BigSale(a) => {
            scenarios::setup_stock(&api, &run_id, &a.stock_args(), a.cancel_every).await?
        }
        Cmd::Shopper(a) => scenarios::setup_shopper(&api, &run_id, a, users).await?,
        Cmd::Points(a) => scenarios::setup_points(&api, &run_id, a).await?,
        Cmd::LimitedRush(a) => scenarios::setup_limited(&api, &run_id, a).await?,
        Cmd::LimitedPrepare(_) | Cmd::LimitedVerify(_) => unreachable!(),
    };
    let seed_secs = seed_started.elapsed().as_secs_f64();
    let seeded_members = members.len();
    if !c.no_drain {
        // Start the timed part from a drained pipeline so the drain time measures the burst only.
        let d = api
            .drain(
                Duration::from_secs(c.drain_timeout.min(c.pre_drain_timeout)),
                &baseline,
            )
            .await;
        if d.ok {
            eprintln!(
                "pipeline absorbed the seed in {:.1}s",
                d.in_sync_secs.unwrap_or(0.0)
            );
        } else {
            eprintln!(
                "warning: pipeline not drained/in sync before the burst: pending_events {:?}, {} new drift entries",
                d.last_pending,
                d.new_drift.len(),
            );
        }
    }
    scenarios::arm(&api, &run_id, &mut data).await?;
    call::install(Ctx {
        members,
        cursor: AtomicUsize::new(0),
        slots: AtomicUsize::new(0),
        users,
        stats: Stats::default(),
        ambiguous: AtomicU64::new(0),
        data,
    });

    std::fs::create_dir_all(&c.report_dir)
        .with_context(|| format!("creating {}", c.report_dir.display()))?;
    let base = c.report_dir.join(format!("{kind}-{run_id}"));
    let reports = vec![
        format!("{}.html", base.display()),
        format!("{}.json", base.display()),
    ];
    let summary_path = format!("{}.summary.json", base.display());

    let mut config = GooseConfiguration::default();
    config.report_file = reports.clone();
    let mut attack = GooseAttack::initialize_with_config(config)?
        .register_scenario(scenarios::goose_scenario(kind))
        .set_default(GooseDefault::Host, c.host.as_str())?
        .set_default(GooseDefault::Users, users)?
        .set_default(
            GooseDefault::HatchRate,
            c.hatch_rate.as_deref().unwrap_or("1000"),
        )?
        .set_default(GooseDefault::RunTime, run_secs)?
        .set_default(GooseDefault::NoTelnet, true)?
        .set_default(GooseDefault::NoWebSocket, true)?
        .set_default(GooseDefault::NoResetMetrics, true)?
        // Expected 409s are successes here; our summary has the breakdown of every outcome.
        .set_default(GooseDefault::NoErrorSummary, true)?
        // Keep the generator lean: request metrics only (that is what the reports show).
        .set_default(GooseDefault::NoTransactionMetrics, true)?
        .set_default(GooseDefault::NoScenarioMetrics, true)?
        .set_default(GooseDefault::NoGzip, true)?
        .set_default(
            GooseDefault::Timeout,
            c.request_timeout.to_string().as_str(),
        )?;
    // Not goose's ThrottleRequests: ours paces requests evenly and keeps the wait out of latencies.
    call::set_rate(c.throttle_requests);
    if let Some(n) = c.goose_running_metrics {
        attack = attack.set_default(GooseDefault::RunningMetrics, n)?;
    }

    eprintln!(
        "== {kind}: {} users for {run_secs}s{}",
        users,
        if c.throttle_requests > 0 {
            format!(", throttled to {} req/s", c.throttle_requests)
        } else {
            String::new()
        }
    );
    let progress = (c.progress_secs > 0).then(|| tokio::spawn(progress(c.progress_secs)));
    let before = snap(c);
    let timed_from_ms = chrono::Utc::now().timestamp_millis();
    let goose_result = attack.execute().await;
    let timed_until_ms = chrono::Utc::now().timestamp_millis();
    let after = snap(c);
    if let Some(p) = progress {
        p.abort();
    }
    goose_result.context("goose run")?;

    let ctx = call::ctx();
    let stats = ctx.stats.summary();
    let n = stats.requests.max(1) as f64;
    let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(((b - a) * 1000.0).round() / 1000.0),
        _ => None,
    };
    let per_req = |s: Option<f64>| s.map(|s| (s * 1e6 / n * 10.0).round() / 10.0);
    let engine_secs = delta(before.engine, after.engine);
    let redis_secs = delta(before.redis, after.redis);
    let loadtest_secs = delta(before.me, after.me);
    let cpu = Cpu {
        engine_secs,
        redis_secs,
        loadtest_secs,
        engine_us_per_request: per_req(engine_secs),
        redis_us_per_request: per_req(redis_secs),
        loadtest_us_per_request: per_req(loadtest_secs),
        engine_peak_rss_kib: c.engine_pid.as_deref().and_then(proc_hwm_kib),
    };
    let redis_nodes = node_deltas(c, &before, &after, n);
    for d in &redis_nodes {
        eprintln!(
            "  redis {} ({}): cpu {} s ({} µs/req), evalsha {} ({}/req, {} failed), wait {}",
            d.addr,
            d.role,
            d.cpu_secs,
            d.cpu_us_per_request,
            d.evalsha_calls,
            d.evalsha_calls_per_request,
            d.evalsha_failed,
            d.wait_calls
        );
    }

    print_stats(kind, &run_id, &stats, &cpu);

    let drain = if c.no_drain {
        None
    } else {
        eprintln!("== waiting for the pipeline to drain (reconcile: pending_events 0, in_sync)");
        Some(
            api.drain(Duration::from_secs(c.drain_timeout), &baseline)
                .await,
        )
    };
    let drained = snap(c);
    let processes = process_cpu(c, &before, &after, &drained);
    for p in &processes {
        eprintln!(
            "  {} (pid {}): cpu {:?} s over the run, {:?} s over the drain",
            p.name, p.pid, p.run_secs, p.drain_secs
        );
    }
    let mut checks = scenarios::verify(&api).await;
    if let Some(d) = &drain {
        checks.push(drain_check(d, c.drain_timeout));
    }
    let limited = match &call::ctx().data {
        Data::Limited(d) => {
            let v = scenarios::limited_report(d);
            print_phases(&v);
            Some(v)
        }
        _ => None,
    };

    let p99_ms = stats.latency.p99_us as f64 / 1000.0;
    let thresholds = vec![
        Threshold {
            name: "p99 of all requests (ms)".into(),
            limit: c.max_p99_ms,
            value: p99_ms,
            ok: p99_ms <= c.max_p99_ms,
        },
        Threshold {
            name: "error rate".into(),
            limit: c.max_error_rate,
            value: stats.error_rate,
            ok: stats.error_rate <= c.max_error_rate,
        },
        Threshold {
            name: "requests made".into(),
            limit: 1.0,
            value: stats.requests as f64,
            ok: stats.requests >= 1,
        },
    ];

    let passed = checks.iter().all(|x| x.ok) && thresholds.iter().all(|t| t.ok);
    println!("checks:");
    for ch in &checks {
        println!(
            "  {}  {}: {}",
            if ch.ok { "PASS" } else { "FAIL" },
            ch.name,
            ch.detail
        );
    }
    println!("thresholds:");
    for t in &thresholds {
        println!(
            "  {}  {}: {} (limit {})",
            if t.ok { "PASS" } else { "FAIL" },
            t.name,
            round3(t.value),
            t.limit
        );
    }

    let summary = Summary {
        scenario: kind.to_string(),
        run_id: run_id.clone(),
        host: c.host.clone(),
        users,
        run_time_secs: run_secs,
        throttle_requests: c.throttle_requests,
        started_at,
        seeded_members,
        seed_secs: round3(seed_secs),
        stats,
        cpu,
        redis_nodes,
        processes,
        timed_from_ms,
        timed_until_ms,
        drain,
        checks,
        thresholds,
        goose_reports: reports.clone(),
        limited,
        passed,
    };
    std::fs::write(&summary_path, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("writing {summary_path}"))?;
    println!("reports: {}, {}, {summary_path}", reports[0], reports[1]);
    if passed {
        println!("RESULT {kind} {run_id}: PASS");
    } else {
        let failed: Vec<String> = summary
            .checks
            .iter()
            .filter(|x| !x.ok)
            .map(|x| x.name.clone())
            .chain(
                summary
                    .thresholds
                    .iter()
                    .filter(|t| !t.ok)
                    .map(|t| t.name.clone()),
            )
            .collect();
        eprintln!("RESULT {kind} {run_id}: FAIL ({})", failed.join("; "));
        println!("RESULT {kind} {run_id}: FAIL");
    }
    Ok(passed)
}

/// The check every scenario ends with: the pipeline drained and reconcile in sync.
pub(crate) fn drain_check(d: &Drain, drain_timeout: u64) -> Check {
    Check::new(
        "pipeline drained and Redis in sync with MySQL",
        d.ok,
        if d.ok {
            format!(
                "pending_events 0 after {:.2}s, in sync after {:.2}s{}",
                d.pending_zero_secs.unwrap_or(0.0),
                d.in_sync_secs.unwrap_or(0.0),
                if d.in_sync {
                    String::new()
                } else {
                    format!(
                        " (reconcile's in_sync is false only for {} drift entries that predate this run)",
                        d.preexisting_drift
                    )
                }
            )
        } else {
            let shown: Vec<String> = d.new_drift.iter().take(10).map(|x| x.to_string()).collect();
            format!(
                "not drained/in sync after {}s: pending_events {:?}, {} new drift entries [{}]{}{}{}",
                drain_timeout,
                d.last_pending,
                d.new_drift.len(),
                shown.join(", "),
                if d.preexisting_drift > 0 {
                    format!(", plus {} that predate this run", d.preexisting_drift)
                } else {
                    String::new()
                },
                if d.drift_list_truncated {
                    "; reconcile's drift list is full (it stops at 1,000 entries), so new drift cannot be ruled out: run on a clean stack or namespace (KEY_PREFIX, database, topics), as loadtest/bench.sh does"
                } else {
                    ""
                },
                d.error
                    .as_ref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )
        },
    )
}

/// limited-rush's answers before and after the opening.
pub(crate) fn print_phases(v: &serde_json::Value) {
    println!(
        "  opening (sale_starts_at) {}; answers by when the request was sent:",
        v["opening"].as_str().unwrap_or("?")
    );
    println!("  {:<58} {:>9} {:>9}", "request answer", "before", "after");
    if let Some(rows) = v["answers"].as_array() {
        for r in rows {
            println!(
                "  {:<58} {:>9} {:>9}",
                r["answer"].as_str().unwrap_or(""),
                r["before"],
                r["after"]
            );
        }
    }
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn progress(every: u64) {
    let started = Instant::now();
    let mut last_n = 0;
    let mut last_err = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = &call::ctx().stats;
        let n = s.total();
        let e = s.errors();
        eprintln!(
            "[{:>5.0}s] {n} requests, {:.0} req/s now, errors {e} (+{}), p50 {} ms, p99 {} ms",
            started.elapsed().as_secs_f64(),
            (n - last_n) as f64 / every as f64,
            e - last_err,
            ms(s.all.quantile(0.5)),
            ms(s.all.quantile(0.99)),
        );
        last_n = n;
        last_err = e;
    }
}

fn print_stats(kind: &str, run_id: &str, s: &StatsSummary, cpu: &Cpu) {
    println!();
    println!(
        "== {kind} {run_id}: {} requests in {:.1}s = {:.0} req/s; errors {} ({:.3}%)",
        s.requests,
        s.window_secs,
        s.rps,
        s.errors,
        s.error_rate * 100.0
    );
    println!(
        "  {:<28} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  outcomes",
        "request", "count", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for (name, o) in &s.ops {
        let outcomes: Vec<String> = o
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!(
            "  {:<28} {:>8} {:>8.0} {:>8} {:>8} {:>8} {:>8}  {}",
            name,
            o.count,
            o.rps,
            ms(o.latency.p50_us),
            ms(o.latency.p99_us),
            ms(o.latency.p999_us),
            ms(o.latency.max_us),
            outcomes.join(", ")
        );
    }
    println!(
        "  {:<28} {:>8} {:>8.0} {:>8} {:>8} {:>8} {:>8}",
        "all",
        s.requests,
        s.rps,
        ms(s.latency.p50_us),
        ms(s.latency.p99_us),
        ms(s.latency.p999_us),
        ms(s.latency.max_us),
    );
    let f = |x: Option<f64>, unit: &str| x.map(|v| format!("{v}{unit}")).unwrap_or("-".into());
    println!(
        "  cpu: engine {} ({}/req), redis {} ({}/req), loadtest {} ({}/req); engine peak RSS {}",
        f(cpu.engine_secs, " s"),
        f(cpu.engine_us_per_request, " µs"),
        f(cpu.redis_secs, " s"),
        f(cpu.redis_us_per_request, " µs"),
        f(cpu.loadtest_secs, " s"),
        f(cpu.loadtest_us_per_request, " µs"),
        cpu.engine_peak_rss_kib
            .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or("-".into())
    );
}
