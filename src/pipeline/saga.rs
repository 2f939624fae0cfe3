//! Saga steps driven from the outbox. An operation that spans two owners is decided in one owner's
//! slot (one script, its event appended to that partition's outbox); the step in the other owner's
//! slot follows from the event. Every engine runs one saga worker per partition, reading the
//! partition's outbox through the `sagas` consumer group (engines share the partitions), running the
//! step, and acknowledging the entry only after the step ran. Steps are idempotent by the event, so a
//! redelivery (a crash between step and XACK, a claim of a dead engine's entries) changes nothing.
//!
//! Steps:
//! - `coupon.issued` -> `coupon_wallet_add` in the member's slot (the wallet entry, with the coupon's
//!   terms, that `/me/coupons` lists and pay uses). `/me/coupons` therefore follows an issue by the
//!   worker's lag (measured by `flashsale_saga_lag_seconds`).
//! - order events -> the product-slot steps of each item (src/orders.rs): `order.reserved` ->
//!   `hold_confirm`; `order.paid` -> `stock_commit`; `order.cancelled` -> `stock_release` (it was
//!   reserved) or `stock_return` (it was paid); `order.expired` -> `stock_release`. The engine that
//!   cancelled or expired the order already ran them inline; here they complete a crash in between
//!   (and change nothing otherwise).

use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value;
use futures::StreamExt;
use tokio::sync::watch;

use crate::app::connect_redis_client;
use crate::domain::OrderView;
use crate::orders::{product_steps, ProductStep, Store};
use crate::partition::Partition;
use crate::scripts::calls::CouponWalletAdd;
use crate::state::AppState;

pub const SAGA_GROUP: &str = "sagas";

/// Entries read per round.
const BATCH: u64 = 100;
/// How long an idle worker blocks on its stream (a new entry ends the block at once; this sets only
/// the idle cost: one read per partition per block).
const IDLE_BLOCK_MS: u64 = 2_000;
/// An entry pending this long with a consumer is taken over (its engine died or hangs).
const CLAIM_IDLE_MS: u64 = 5_000;

/// Runs a saga worker per partition until stopped.
pub async fn run_all(state: AppState, stop: watch::Receiver<bool>) {
    let consumer = format!("saga-{}", uuid::Uuid::new_v4().simple());
    let mut workers = tokio::task::JoinSet::new();
    for partition in Partition::all() {
        workers.spawn(run(
            state.clone(),
            partition,
            consumer.clone(),
            stop.clone(),
        ));
    }
    while workers.join_next().await.is_some() {}
}

async fn run(
    state: AppState,
    partition: Partition,
    consumer: String,
    mut stop: watch::Receiver<bool>,
) {
    let outbox = state.keys.outbox(partition);
    // Blocking reads need a connection of their own.
    let mut client = loop {
        match connect_redis_client(&state.settings.connections).await {
            Ok(client) => break client,
            Err(e) => {
                tracing::warn!(error = %e, "saga worker cannot connect; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let mut own_pending = true;
    let mut last_claim = Instant::now();
    let mut failures = 0u32;
    while !*stop.borrow() {
        let mut reconnect = false;
        let round = async {
            let mut entries = Vec::new();
            if own_pending {
                // What this consumer read before and did not acknowledge (none after a fresh start:
                // the consumer name is new; kept for the failure path below).
                entries = read(&client, &outbox, &consumer, "0", None).await?;
                own_pending = !entries.is_empty();
            }
            if last_claim.elapsed() >= Duration::from_millis(CLAIM_IDLE_MS) {
                last_claim = Instant::now();
                entries.extend(claim(&client, &outbox, &consumer).await?);
            }
            if entries.is_empty() {
                entries = read(&client, &outbox, &consumer, ">", Some(IDLE_BLOCK_MS)).await?;
            }
            if !entries.is_empty() {
                // The steps must not act on an entry a failover could still take back (its
                // operation would be undone while its step stands): it must be on the replicas.
                let durability = state.scripts.durability();
                if !crate::scripts::replicated(&client, &outbox, durability, true).await? {
                    // No replica yet (a failover just promoted one): they stay pending with us and
                    // are read again shortly; the connection is fine, so no reconnect.
                    metrics::counter!("flashsale_saga_unreplicated_waits_total").increment(1);
                    own_pending = true;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Ok(());
                }
            }
            // Independent entries run concurrently (a hot coupon's issues all land in one
            // partition: one at a time, the last wallet entry of a rush trailed by seconds); the
            // entries of one order stay in order. A failed entry stops its own sequence only; it
            // and the rest of that sequence stay pending with this consumer and are retried.
            // Owned per sequence: the futures are spawned-task-safe (no borrow across them).
            let rounds = futures::stream::iter(sequences(&entries).into_iter().map(|sequence| {
                let state = state.clone();
                async move {
                    let mut done = Vec::new();
                    for (id, fields) in sequence {
                        if let Err(e) = run_step(state.store(), &fields).await {
                            return (done, Some(e));
                        }
                        done.push(id);
                    }
                    (done, None)
                }
            }))
            .buffer_unordered(STEP_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
            let mut done = Vec::new();
            let mut failed = None;
            for (ids, error) in rounds {
                done.extend(ids);
                if let Some(e) = error {
                    failed.get_or_insert(e);
                }
            }
            if !done.is_empty() {
                let _: i64 = client.xack(outbox.as_str(), SAGA_GROUP, done).await?;
            }
            match failed {
                Some(e) => Err(e),
                None => Ok::<_, anyhow::Error>(()),
            }
        };
        tokio::select! {
            result = round => match result {
                Ok(()) => failures = 0,
                Err(e) => {
                    // Left pending: retried from our own pending list after a capped backoff.
                    own_pending = true;
                    failures += 1;
                    metrics::counter!("flashsale_saga_errors_total").increment(1);
                    let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(Duration::from_secs(5));
                    tracing::warn!(partition = %partition, error = %e, retry_in = ?wait, "saga step failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => {}
                    }
                    reconnect = true;
                }
            },
            _ = stop.changed() => {}
        }
        if reconnect {
            // The connection may be wedged (a read blocked across a server restart): replace it.
            if let Ok(fresh) = connect_redis_client(&state.settings.connections).await {
                let old = std::mem::replace(&mut client, fresh);
                crate::app::retire_redis_client(old);
            }
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.quit()).await;
}

/// Runs the step an outbox entry calls for (most events call for none). Public for the tests, which
/// run the worker's steps by hand.
pub async fn run_step(
    store: Store<'_>,
    fields: &std::collections::HashMap<String, String>,
) -> anyhow::Result<()> {
    let kind = fields.get("type").map(String::as_str).unwrap_or_default();
    let step = match kind {
        "coupon.issued" => None,
        "order.reserved" => Some(ProductStep::Confirm),
        "order.paid" => Some(ProductStep::Commit),
        "order.expired" => Some(ProductStep::Release),
        "order.cancelled" => Some(ProductStep::Release), // or Return: decided from the payload
        _ => return Ok(()),
    };
    let payload: serde_json::Value =
        serde_json::from_str(fields.get("payload").map(String::as_str).unwrap_or("{}"))?;
    let step_name = match step {
        Some(step) => {
            let Some(order) = payload
                .get("order")
                .and_then(|o| serde_json::from_value::<OrderView>(o.clone()).ok())
            else {
                tracing::error!(payload = %payload, kind, "order event without an order; skipped");
                metrics::counter!("flashsale_saga_steps_total", "step" => "order", "outcome" => "malformed").increment(1);
                return Ok(());
            };
            let step = if kind == "order.cancelled"
                && payload.get("previous_status").and_then(|s| s.as_str()) == Some("PAID")
            {
                ProductStep::Return
            } else {
                step
            };
            product_steps(store, step, order.member_id, order.id, &order.items).await?;
            metrics::counter!("flashsale_saga_steps_total", "step" => step.name(), "outcome" => "done").increment(1);
            step.name()
        }
        None => {
            wallet_step(store, &payload).await?;
            "coupon_wallet_add"
        }
    };
    if let Some(at) = fields
        .get("at")
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
    {
        let lag = (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
            .num_milliseconds()
            .max(0);
        metrics::histogram!("flashsale_saga_lag_seconds", "step" => step_name)
            .record(lag as f64 / 1000.0);
    }
    Ok(())
}

async fn wallet_step(store: Store<'_>, payload: &serde_json::Value) -> anyhow::Result<()> {
    let Some(call) = CouponWalletAdd::from_issued(payload) else {
        tracing::error!(payload = %payload, "coupon.issued without the wallet fields; skipped");
        metrics::counter!("flashsale_saga_steps_total", "step" => "coupon_wallet_add", "outcome" => "malformed").increment(1);
        return Ok(());
    };
    let outcome: String = store.step(&call).await?;
    let outcome: &'static str = match outcome.as_str() {
        "added" => "added",
        "present" => "present",
        _ => "no_member",
    };
    if outcome == "no_member" {
        tracing::error!(
            member_id = call.member_id,
            coupon_id = call.coupon_id,
            "coupon issued to a member Redis does not know; no wallet entry"
        );
    }
    metrics::counter!("flashsale_saga_steps_total", "step" => "coupon_wallet_add", "outcome" => outcome).increment(1);
    Ok(())
}

/// Read-your-writes for pay: when a member pays with a coupon the coupon's slot already issued to them
/// but whose wallet entry the saga worker has not written yet (its lag, milliseconds), the engine runs
/// the step itself (idempotent, the worker's later run changes nothing). True when the wallet now has
/// the coupon.
pub async fn complete_wallet(
    state: &AppState,
    member_id: i64,
    coupon_id: i64,
) -> anyhow::Result<bool> {
    let held: Option<String> = state
        .redis
        .hget(state.keys.coupon_holders(coupon_id), member_id.to_string())
        .await?;
    let Some(held) = held else {
        return Ok(false);
    };
    let terms: Vec<Option<String>> = state
        .redis
        .hmget(
            state.keys.coupon(coupon_id),
            vec![
                "discount_type",
                "discount_value",
                "valid_from_ms",
                "valid_until_ms",
            ],
        )
        .await?;
    let (event_id, issued_at) = held.split_once('|').unwrap_or((held.as_str(), ""));
    let issued_ms = chrono::DateTime::parse_from_rfc3339(issued_at)
        .map(|at| at.timestamp_millis())
        .unwrap_or(0);
    let term = |i: usize| terms.get(i).cloned().flatten().unwrap_or_default();
    let call = CouponWalletAdd {
        member_id,
        coupon_id,
        entry: [
            issued_ms.to_string(),
            "0".into(),
            event_id.to_string(),
            issued_at.to_string(),
            term(0),
            term(1),
            term(2),
            term(3),
        ]
        .join("|"),
    };
    let outcome = state
        .scripts
        .run_call(&state.redis, &state.keys, &call)
        .await?
        .as_string()
        .unwrap_or_default();
    metrics::counter!("flashsale_saga_steps_total", "step" => "coupon_wallet_add", "outcome" => "completed_by_pay")
        .increment(1);
    Ok(outcome == "added")
}

type Entry = (String, std::collections::HashMap<String, String>);

/// Steps of one read run at once at most.
const STEP_CONCURRENCY: usize = 32;

/// The entries as sequences that must run in order: one per order (its events' steps follow each
/// other), each coupon issue alone (its wallet entry depends on nothing else). First-seen order.
fn sequences(entries: &[Entry]) -> Vec<Vec<Entry>> {
    let mut order: Vec<Vec<Entry>> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for entry in entries {
        let fields = &entry.1;
        let key = match fields.get("type").map(String::as_str) {
            Some("coupon.issued") | None => None,
            Some(_) => fields.get("aggregate").map(String::as_str),
        };
        match key.and_then(|k| index.get(k).copied()) {
            Some(at) => order[at].push(entry.clone()),
            None => {
                if let Some(k) = key {
                    index.insert(k, order.len());
                }
                order.push(vec![entry.clone()]);
            }
        }
    }
    order
}

async fn read(
    client: &Client,
    outbox: &str,
    consumer: &str,
    from: &str,
    block: Option<u64>,
) -> anyhow::Result<Vec<Entry>> {
    // Bounded: a read blocked on a connection Redis dropped (a killed server) must fail, not hang.
    let bound = Duration::from_millis(block.unwrap_or(0) + 5_000);
    let read = client.xreadgroup(
        SAGA_GROUP,
        consumer,
        Some(BATCH),
        block,
        false,
        outbox,
        from,
    );
    let response: Value = tokio::time::timeout(bound, read)
        .await
        .map_err(|_| anyhow::anyhow!("XREADGROUP got no answer in {bound:?}"))??;
    let mut entries = Vec::new();
    for stream in response.into_array() {
        let mut parts = stream.into_array().into_iter();
        let _name = parts.next();
        if let Some(list) = parts.next() {
            entries.extend(crate::pipeline::relay::parse_entries(list));
        }
    }
    Ok(entries)
}

async fn claim(client: &Client, outbox: &str, consumer: &str) -> anyhow::Result<Vec<Entry>> {
    let reply: Value = client
        .xautoclaim(
            outbox,
            SAGA_GROUP,
            consumer,
            CLAIM_IDLE_MS,
            "0-0",
            Some(BATCH),
            false,
        )
        .await?;
    Ok(reply
        .into_array()
        .into_iter()
        .nth(1)
        .map(crate::pipeline::relay::parse_entries)
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, kind: &str, aggregate: &str) -> Entry {
        let fields = [("type", kind), ("aggregate", aggregate)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (id.to_string(), fields)
    }

    #[test]
    fn an_orders_events_stay_in_sequence_and_coupon_issues_run_alone() {
        let entries = vec![
            entry("1-0", "coupon.issued", "coupon:7"),
            entry("2-0", "order.reserved", "order:1"),
            entry("3-0", "coupon.issued", "coupon:7"),
            entry("4-0", "order.reserved", "order:2"),
            entry("5-0", "order.paid", "order:1"),
        ];
        let sequences = sequences(&entries);
        let ids: Vec<Vec<&str>> = sequences
            .iter()
            .map(|s| s.iter().map(|(id, _)| id.as_str()).collect())
            .collect();
        assert_eq!(
            ids,
            [vec!["1-0"], vec!["2-0", "5-0"], vec!["3-0"], vec!["4-0"]]
        );
    }
}
