//! The wrk twin of limited-rush (loadtest/limited_rush.sh, loadtest/wrk/limited_rush.lua): this
//! binary seeds and creates the product before wrk runs (`limited-prepare`) and checks the outcome
//! after it (`limited-verify`), with the very checks of the goose scenario.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::api::{id_str, Api, Member};
use crate::call::{self, Ctx};
use crate::scenarios::{self, Data, LimitedArgs, LimitedData, PlacedOrder};
use crate::stats::Stats;
use crate::{drain_check, print_phases, Common, PrepareArgs, VerifyArgs};

pub async fn prepare(c: &Common, api: &Api, run_id: &str, a: &PrepareArgs) -> Result<bool> {
    let r = &a.rush;
    if r.limit < 1 {
        bail!("--limit must be >= 1");
    }
    let baseline: HashSet<String> = if c.no_drain {
        HashSet::new()
    } else {
        api.drift_baseline(Duration::from_secs(c.pre_drain_timeout))
            .await
            .context("GET /api/v1/admin/reconcile")?
    };
    eprintln!("== limited-prepare {run_id} against {}: seeding", c.host);
    let members = api
        .seed_members(r.members, r.balance, &format!("wrk-{run_id}"))
        .await?;
    if !c.no_drain {
        let d = api
            .drain(
                Duration::from_secs(c.drain_timeout.min(c.pre_drain_timeout)),
                &baseline,
            )
            .await;
        if !d.ok {
            eprintln!(
                "warning: pipeline not drained/in sync before the burst: pending_events {:?}",
                d.last_pending
            );
        }
    }
    let (id, opening) =
        scenarios::create_limited_product(api, &format!("limited item wrk {run_id}"), r).await?;
    let mut lines = String::new();
    for m in &members {
        let token = m.bearer.strip_prefix("Bearer ").unwrap_or(&m.bearer);
        lines.push_str(&format!("{} {token}\n", id_str(&m.id)));
    }
    std::fs::write(&a.members_out, lines)
        .with_context(|| format!("writing {}", a.members_out.display()))?;
    let state = json!({
        "run_id": run_id,
        "host": c.host,
        "product_id": id,
        "stock": r.stock,
        "per_member_limit": r.limit,
        "price": r.price,
        "open_delay": r.open_delay,
        "burst": r.burst,
        "opening": opening.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "opening_ms": opening.timestamp_millis(),
        "baseline": baseline.into_iter().collect::<Vec<_>>(),
        "members": members.iter().map(|m| json!({"id": m.id, "email": m.email, "bearer": m.bearer, "balance": m.initial_balance})).collect::<Vec<_>>(),
    });
    std::fs::write(&a.state, serde_json::to_vec(&state)?)
        .with_context(|| format!("writing {}", a.state.display()))?;
    eprintln!(
        "product {} with {} units, per_member_limit {}, sale_starts_at {} ({:.1}s from now)",
        id_str(&id),
        r.stock,
        r.limit,
        state["opening"].as_str().unwrap_or(""),
        (opening - Utc::now()).num_milliseconds() as f64 / 1000.0
    );
    // For the driver script.
    println!("PRODUCT_ID={}", id_str(&id));
    println!("OPENING_MS={}", opening.timestamp_millis());
    Ok(true)
}

fn read(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub async fn verify(c: &Common, api: &Api, a: &VerifyArgs) -> Result<bool> {
    let state: Value = serde_json::from_str(&read(&a.state)?).context("state file")?;
    let num = |k: &str| {
        state[k]
            .as_i64()
            .ok_or_else(|| anyhow!("state has no integer {k}"))
    };
    let run_id = state["run_id"].as_str().unwrap_or("wrk").to_string();
    let opening: DateTime<Utc> = state["opening"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| anyhow!("state has no opening"))?;
    let members: Vec<Member> = state["members"]
        .as_array()
        .ok_or_else(|| anyhow!("state has no members"))?
        .iter()
        .map(|m| Member {
            id: m["id"].clone(),
            email: m["email"].as_str().unwrap_or("").to_string(),
            bearer: m["bearer"].as_str().unwrap_or("").to_string(),
            initial_balance: m["balance"].as_i64().unwrap_or(0),
        })
        .collect();
    let index: HashMap<String, usize> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (id_str(&m.id), i))
        .collect();
    let args = LimitedArgs {
        members: members.len(),
        stock: num("stock")?,
        limit: num("per_member_limit")?,
        price: num("price")?,
        balance: 0,
        open_delay: num("open_delay")? as u64,
        burst: num("burst")? as usize,
    };
    let d = LimitedData::new(
        "wrk",
        members.len(),
        &args,
        state["product_id"].clone(),
        opening,
    );
    // wrk rotates every connection over the whole pool.
    for t in &d.tried {
        t.store(true, Relaxed);
    }
    let ambiguous = AtomicU64::new(0);

    let mut unknown_members = 0;
    for line in read(&a.orders)?.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [oid, mid, ms] = f[..] else { continue };
        let Some(&member) = index.get(mid) else {
            unknown_members += 1;
            continue;
        };
        let at = ms
            .parse::<i64>()
            .ok()
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or(opening);
        if at < opening {
            d.early_orders.lock().unwrap().push(format!(
                "order {oid} of member {mid} answered 201 at {}, before the opening",
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ));
        }
        d.orders.lock().unwrap().push(PlacedOrder {
            member,
            id: oid.to_string(),
            quantity: 0,
            received_at: at,
        });
    }
    if unknown_members > 0 {
        d.early_orders.lock().unwrap().push(format!(
            "{unknown_members} orders of members this run did not seed"
        ));
    }
    if let Some(p) = &a.counts {
        for line in read(p)?.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            match f[..] {
                ["phase", phase, answer, n] => {
                    let n: u64 = n.parse().unwrap_or(0);
                    let mut ph = d.phases.lock().unwrap();
                    ph.entry(answer.to_string()).or_default()[(phase == "after") as usize] += n;
                }
                ["late_not_started", n] => {
                    d.late_not_started.store(n.parse().unwrap_or(0), Relaxed);
                }
                ["bad_refusal", n] => {
                    let n: u64 = n.parse().unwrap_or(0);
                    d.bad_refusal_count.store(n, Relaxed);
                    if n > 0 {
                        d.bad_refusals.lock().unwrap().push(
                            "SALE_NOT_STARTED without sale_starts_at or PURCHASE_LIMIT_EXCEEDED without remaining_allowance (see the wrk log)".into(),
                        );
                    }
                }
                ["ambiguous", n] => ambiguous.store(n.parse().unwrap_or(0), Relaxed),
                _ => {}
            }
        }
    }

    let baseline: HashSet<String> = state["baseline"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    call::install(Ctx {
        members,
        cursor: AtomicUsize::new(0),
        slots: AtomicUsize::new(0),
        users: 1,
        stats: Stats::default(),
        ambiguous: AtomicU64::new(ambiguous.load(Relaxed)),
        data: Data::Limited(d),
    });
    let drain = if c.no_drain {
        None
    } else {
        eprintln!("== waiting for the pipeline to drain (reconcile: pending_events 0, in_sync)");
        Some(
            api.drain(Duration::from_secs(c.drain_timeout), &baseline)
                .await,
        )
    };
    let mut checks = scenarios::verify(api).await;
    if let Some(dr) = &drain {
        checks.push(drain_check(dr, c.drain_timeout));
    }
    let Data::Limited(d) = &call::ctx().data else {
        unreachable!()
    };
    let limited = scenarios::limited_report(d);
    println!();
    println!("== limited-rush (wrk twin) {run_id}: checks");
    print_phases(&limited);
    let passed = checks.iter().all(|x| x.ok);
    println!("checks:");
    for ch in &checks {
        println!(
            "  {}  {}: {}",
            if ch.ok { "PASS" } else { "FAIL" },
            ch.name,
            ch.detail
        );
    }
    std::fs::create_dir_all(&c.report_dir)
        .with_context(|| format!("creating {}", c.report_dir.display()))?;
    let path = c
        .report_dir
        .join(format!("limited-rush-wrk-{run_id}.summary.json"));
    let summary = json!({
        "scenario": "limited-rush-wrk",
        "run_id": run_id,
        "host": c.host,
        "drain": drain,
        "checks": checks,
        "limited": limited,
        "passed": passed,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("report: {}", path.display());
    println!(
        "RESULT limited-rush-wrk {run_id}: {}",
        if passed { "PASS" } else { "FAIL" }
    );
    Ok(passed)
}
