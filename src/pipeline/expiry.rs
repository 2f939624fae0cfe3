//! Reservation expiry: finds orders whose reservation is due (one sorted set by expiry time per
//! partition; every engine sweeps every partition) and expires each through src/orders.rs (the member
//! step order_expire.lua, then the stock released in each product's slot). A pay racing the expiry has
//! exactly one winner: both scripts check the status and the expiry time atomically.
//!
//! The same loop runs the orphan-hold sweep (src/orders.rs): holds taken for an order whose member
//! step never ran (an engine crashed in between) are released after their deadline; and the e-mail
//! claim sweep (src/signup.rs): addresses claimed by a sign-up whose member step never ran are
//! released after theirs, claims whose member exists are confirmed.

use std::time::Duration;

use fred::prelude::*;
use tokio::sync::watch;

use crate::partition::Partition;
use crate::state::{event_id, AppState};

const BATCH: i64 = 200;

pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let interval = Duration::from_millis(state.settings.expiry_interval_ms.max(10));
    let mut last_orphan_sweep: Option<std::time::Instant> = None;
    while !*stop.borrow() {
        // Orphaned holds and claims are rare (a crash between a reserve's or a sign-up's steps) and
        // wait out a 35 s deadline: every two seconds is plenty (64 partitions x 2 scripts a round).
        if last_orphan_sweep.is_none_or(|at| at.elapsed() >= ORPHAN_SWEEP_EVERY) {
            last_orphan_sweep = Some(std::time::Instant::now());
            if let Err(e) = sweep_orphan_holds(&state).await {
                tracing::error!(error = %e, "orphan hold sweep failed");
            }
            if let Err(e) = sweep_email_claims(&state).await {
                tracing::error!(error = %e, "e-mail claim sweep failed");
            }
        }
        match expire_due(&state).await {
            Ok(n) if n >= BATCH as usize => continue, // more may be due: no pause
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "expiry sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
    }
}

const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Every partition's orphaned holds (src/orders.rs); returns how many were released.
pub async fn sweep_orphan_holds(state: &AppState) -> anyhow::Result<usize> {
    let swept = futures::future::join_all(
        Partition::all().map(|p| crate::orders::sweep_orphan_holds(state.store(), p)),
    )
    .await;
    let mut released = 0;
    for result in swept {
        released += result?.released;
    }
    Ok(released)
}

/// Every partition's pending e-mail claims past their deadline (src/signup.rs); returns how many
/// were released.
pub async fn sweep_email_claims(state: &AppState) -> anyhow::Result<usize> {
    let swept = futures::future::join_all(
        Partition::all().map(|p| crate::signup::sweep_email_claims(state.store(), p)),
    )
    .await;
    let mut released = 0;
    for result in swept {
        released += result?.released;
    }
    Ok(released)
}

/// How long a reservation the sweep could not expire waits before it is tried again: long enough not
/// to flood the log, short enough that a fixed order is released soon after.
const RETRY_FAILED_AFTER_MS: i64 = 60_000;

/// Expires what is due now in every partition; returns the most due reservations one partition had
/// (the sweep goes again at once when a partition filled its batch).
pub async fn expire_due(state: &AppState) -> anyhow::Result<usize> {
    let swept = futures::future::join_all(Partition::all().map(|p| expire_due_in(state, p))).await;
    let mut most = 0;
    for result in swept {
        most = most.max(result?);
    }
    Ok(most)
}

/// Redis's clock in ms (the scripts decide by it too), not this engine's, which may be skewed.
async fn redis_now_ms(state: &AppState) -> anyhow::Result<i64> {
    let time: Vec<i64> = state
        .redis
        .next()
        .custom(
            fred::types::CustomCommand::new_static("TIME", fred::types::ClusterHash::Random, false),
            Vec::<String>::new(),
        )
        .await?;
    Ok(time.first().copied().unwrap_or_default() * 1000
        + time.get(1).copied().unwrap_or_default() / 1000)
}

/// One partition's due reservations. One order that cannot be expired (unparsable, or its script
/// fails) is logged, counted and retried later; the others go on.
async fn expire_due_in(state: &AppState, partition: Partition) -> anyhow::Result<usize> {
    let now_ms = redis_now_ms(state).await?;
    let reservations = state.keys.reservations(partition);
    let due: Vec<i64> = state
        .redis
        .zrangebyscore(&reservations, "-inf", now_ms, false, Some((0, BATCH)))
        .await?;
    for order_id in &due {
        if let Err(e) = expire_one(state, partition, *order_id).await {
            tracing::error!(order_id, error = %e, "cannot expire this order; skipped, retried later");
            metrics::counter!("flashsale_expiry_skipped_total").increment(1);
            // Moved back in the queue (only if still there) so that it neither blocks the orders due
            // after it nor is retried on every sweep.
            let _: Result<i64, _> = state
                .redis
                .zadd(
                    &reservations,
                    Some(SetOptions::XX),
                    None,
                    false,
                    false,
                    (
                        (now_ms + RETRY_FAILED_AFTER_MS) as f64,
                        order_id.to_string(),
                    ),
                )
                .await;
        }
    }
    Ok(due.len())
}

async fn expire_one(state: &AppState, partition: Partition, order_id: i64) -> anyhow::Result<()> {
    crate::orders::expire(state.store(), partition, order_id, event_id()).await?;
    Ok(())
}
