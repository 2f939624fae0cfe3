//! Fault injection for the crash tests: the process aborts (no cleanup, no offset commit: what kill -9
//! does) at a chosen point of its Nth batch. Off unless SINK_CRASH_POINT is set.

use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CrashPoint {
    /// Inside the MySQL transaction, after the batch's events were applied, before COMMIT.
    MidBatch,
    /// After the MySQL COMMIT, before the Kafka offset commit.
    AfterDbCommit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPlan {
    pub point: CrashPoint,
    /// Batches that complete normally before the crash.
    pub after_batches: u32,
}

static BATCHES_SEEN: AtomicU32 = AtomicU32::new(0);

/// Called at each crash point; aborts the process when the plan says so.
pub fn at(plan: Option<CrashPlan>, here: CrashPoint) {
    let Some(plan) = plan else { return };
    if plan.point != here {
        return;
    }
    if BATCHES_SEEN.fetch_add(1, Ordering::SeqCst) >= plan.after_batches {
        eprintln!("SINK_CRASH_POINT {here:?} reached: aborting");
        std::process::abort();
    }
}
