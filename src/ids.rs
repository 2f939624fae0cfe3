//! Id allocation: time-ordered ids minted in the engine, without a round trip, under a node id the
//! engine leases in MySQL (`engine_id_leases`).
//!
//! Layout, most significant bits first: 41 bits of milliseconds since 2026-01-01T00:00:00Z (about 69
//! years), 6 bits of node (64 engines), 6 bits of sequence (64 ids per millisecond, node and entity
//! kind). 53 bits in all: every id is an exact JSON/JavaScript number, and an exact Lua number in the
//! scripts (doubles).
//!
//! Uniqueness rests on MySQL alone, whose commits survive what a Redis failover or a lost AOF second
//! loses: an engine mints only under a node it leased there, and only in milliseconds up to the
//! high-water mark it recorded in the lease row before using them (the ceiling); whoever takes the
//! node next starts above that mark. The id clock never goes backwards (see `MonoClock`), and when a
//! millisecond's 64 sequence numbers are used up it moves to the next millisecond, running at most
//! `ID_MAX_AHEAD_MS` ahead of the wall clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::config::IdSettings;

/// 2026-01-01T00:00:00Z in Unix milliseconds: millisecond 0 of the ids.
pub const EPOCH_MS: i64 = 1_767_225_600_000;
pub const TIME_BITS: u32 = 41;
pub const NODE_BITS: u32 = 6;
pub const SEQ_BITS: u32 = 6;
/// Nodes that can hold a lease at once (rows of `engine_id_leases`).
pub const NODES: i64 = 1 << NODE_BITS;
const SEQS: i64 = 1 << SEQ_BITS;
const MAX_OFFSET_MS: i64 = (1 << TIME_BITS) - 1;
/// Largest id the layout can produce: 2^53 - 1, the largest integer a double holds exactly.
pub const MAX_ID: i64 = (1 << (TIME_BITS + NODE_BITS + SEQ_BITS)) - 1;

/// A claim or a renewal that takes longer than this counts as failed (the lease is not extended).
const MYSQL_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry interval while no node is held or a renewal failed.
const RETRY: Duration = Duration::from_secs(1);
/// A request waits at most this long for the id clock (a burst beyond 64 ids/ms of one kind), then 503.
const MAX_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entity {
    Member,
    Product,
    Coupon,
    Order,
}

impl Entity {
    pub const ALL: [Entity; 4] = [
        Entity::Member,
        Entity::Product,
        Entity::Coupon,
        Entity::Order,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Entity::Member => "member",
            Entity::Product => "product",
            Entity::Coupon => "coupon",
            Entity::Order => "order",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The fields of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdParts {
    /// Unix milliseconds.
    pub ms: i64,
    pub node: i64,
    pub seq: i64,
}

/// The id of (Unix ms, node, sequence); None outside the layout's range.
pub fn compose(ms: i64, node: i64, seq: i64) -> Option<i64> {
    let offset = ms.checked_sub(EPOCH_MS)?;
    let fits = (0..=MAX_OFFSET_MS).contains(&offset)
        && (0..NODES).contains(&node)
        && (0..SEQS).contains(&seq);
    fits.then_some(offset << (NODE_BITS + SEQ_BITS) | node << SEQ_BITS | seq)
}

pub fn parts(id: i64) -> IdParts {
    IdParts {
        ms: (id >> (NODE_BITS + SEQ_BITS)) + EPOCH_MS,
        node: (id >> SEQ_BITS) & (NODES - 1),
        seq: id & (SEQS - 1),
    }
}

/// Why no id could be minted; answered 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdsUnavailable {
    #[error(
        "no node lease is held (MySQL unreachable at start, every node taken, or the lease lost)"
    )]
    NoLease,
    #[error(
        "the node's recorded high-water mark is reached and MySQL has not confirmed a new one"
    )]
    Ceiling,
    #[error("more ids were asked for than the id clock allows; the clock is too far ahead")]
    Busy,
    #[error("the clock is outside the id layout's range")]
    OutOfRange,
}

impl From<IdsUnavailable> for crate::error::ApiError {
    fn from(e: IdsUnavailable) -> Self {
        let detail = match e {
            IdsUnavailable::Busy => "too many creations at once; retry",
            _ => "creation is unavailable for a moment (no id lease); retry",
        };
        crate::error::ApiError::retry_later(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            detail,
            RETRY,
        )
    }
}

/// Wall-clock milliseconds that never go backwards: the monotonic clock's elapsed time on top of the
/// highest wall-clock reading seen. A wall clock stepped back is ignored (the ids keep their pace, no
/// repeat and no stall); a step forward is followed.
pub struct MonoClock {
    start: Instant,
    /// max(wall ms - elapsed ms) over every reading.
    offset: AtomicI64,
}

impl Default for MonoClock {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            offset: AtomicI64::new(i64::MIN),
        }
    }
}

impl MonoClock {
    pub fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.observe(chrono::Utc::now().timestamp_millis(), elapsed)
    }

    /// The clock given a wall-clock reading and the monotonic time elapsed since `start`.
    pub fn observe(&self, wall_ms: i64, elapsed_ms: i64) -> i64 {
        let candidate = wall_ms.saturating_sub(elapsed_ms);
        let previous = self.offset.fetch_max(candidate, Ordering::Relaxed);
        previous.max(candidate).saturating_add(elapsed_ms)
    }
}

/// Why `Minter::mint` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The id clock would be more than the allowed run-ahead past the clock: retry after this many ms.
    Ahead(i64),
    Ceiling,
    OutOfRange,
}

/// The minting state of one held node; pure, so the layout rules are tested without clocks or MySQL.
#[derive(Debug)]
struct Minter {
    node: i64,
    /// Lowest ms to mint in: above the high-water mark of whoever held the node before.
    floor: i64,
    /// Highest ms to mint in: the high-water mark MySQL confirmed for this holder.
    ceiling: i64,
    /// Per entity kind: the last ms used and the next sequence number in it.
    last: [(i64, i64); 4],
}

impl Minter {
    fn new(node: i64, floor: i64, ceiling: i64) -> Self {
        Self {
            node,
            floor,
            ceiling,
            last: [(floor - 1, SEQS); 4],
        }
    }

    fn mint(&mut self, kind: usize, now_ms: i64, max_ahead_ms: i64) -> Result<i64, Refusal> {
        let base = now_ms.max(self.floor);
        let (last_ms, next_seq) = self.last[kind];
        // max(now, last_ms): never backwards; a used-up millisecond moves on to the next one.
        let (ms, seq) = if base > last_ms {
            (base, 0)
        } else if next_seq < SEQS {
            (last_ms, next_seq)
        } else {
            (last_ms + 1, 0)
        };
        if ms > base + max_ahead_ms {
            return Err(Refusal::Ahead(ms - base - max_ahead_ms));
        }
        if ms > self.ceiling {
            return Err(Refusal::Ceiling);
        }
        let id = compose(ms, self.node, seq).ok_or(Refusal::OutOfRange)?;
        self.last[kind] = (ms, seq + 1);
        Ok(id)
    }

    /// The highest ms any id was minted in (the floor's predecessor when none was).
    fn high_used(&self) -> i64 {
        self.last
            .iter()
            .map(|(ms, _)| *ms)
            .max()
            .unwrap_or(self.floor - 1)
    }
}

struct Lease {
    minter: Minter,
    /// After this instant the lease may have expired in MySQL: mint nothing more under it.
    deadline: Instant,
}

/// Outcome of one renewal (`flashsale_id_lease_renewals_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Ok,
    /// Another holder has the node (or the row is gone): minting stopped.
    Lost,
    /// MySQL did not answer; minting goes on until the lease's deadline or the ceiling.
    Error,
    /// Nothing to renew.
    NotHeld,
}

impl Renewal {
    fn label(self) -> &'static str {
        match self {
            Renewal::Ok => "ok",
            Renewal::Lost => "lost",
            Renewal::Error | Renewal::NotHeld => "error",
        }
    }
}

/// The engine's id allocator (cheap to clone; one per engine process). Not ready until it holds a
/// lease: `next` answers `IdsUnavailable::NoLease` until then.
#[derive(Clone)]
pub struct IdAllocator(Arc<Shared>);

struct Shared {
    settings: IdSettings,
    holder: String,
    clock: MonoClock,
    lease: Mutex<Option<Lease>>,
}

impl IdAllocator {
    pub fn new(settings: IdSettings) -> Self {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "host".into());
        let host: String = host.trim().chars().take(32).collect();
        let nonce = &uuid::Uuid::new_v4().simple().to_string()[..12];
        // Unique per allocator: a restarted engine (same host and pid) never passes for its predecessor.
        let holder = format!("{host}/{}/{nonce}", std::process::id());
        metrics::gauge!("flashsale_id_node").set(-1.0);
        Self(Arc::new(Shared {
            settings,
            holder,
            clock: MonoClock::default(),
            lease: Mutex::new(None),
        }))
    }

    pub fn holder(&self) -> &str {
        &self.0.holder
    }

    /// The node held, if any.
    pub fn node(&self) -> Option<i64> {
        self.lock().as_ref().map(|l| l.minter.node)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Lease>> {
        // Nothing in the critical sections panics; a poisoned lock still holds consistent state.
        self.0.lease.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.0.settings.id_lease_ttl_ms)
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.0.settings.id_lease_ttl_ms).unwrap_or(i64::MAX / 4)
    }

    /// How long a lease is trusted after the request that set it was sent: the database started its
    /// TTL later than that, so this is on the safe side; 5% off covers clocks that tick at other rates.
    fn deadline(&self, sent: Instant) -> Instant {
        sent + self.ttl().mul_f64(0.95)
    }

    /// A new id of `entity`: no round trip, unless the id clock must wait (a burst) or no lease is held.
    pub async fn next(&self, entity: Entity) -> Result<i64, IdsUnavailable> {
        let max_ahead = i64::try_from(self.0.settings.id_max_ahead_ms).unwrap_or(i64::MAX / 4);
        let started = Instant::now();
        loop {
            let minted = {
                let mut lease = self.lock();
                match lease.as_mut() {
                    None => return Err(IdsUnavailable::NoLease),
                    Some(l) if Instant::now() >= l.deadline => {
                        tracing::error!(
                            node = l.minter.node,
                            "id lease not renewed in time; no ids until a node is held again"
                        );
                        *lease = None;
                        metrics::gauge!("flashsale_id_node").set(-1.0);
                        return Err(IdsUnavailable::NoLease);
                    }
                    Some(l) => l
                        .minter
                        .mint(entity.index(), self.0.clock.now_ms(), max_ahead),
                }
            };
            match minted {
                Ok(id) => return Ok(id),
                Err(Refusal::Ahead(ms)) => {
                    if started.elapsed() >= MAX_WAIT {
                        return Err(IdsUnavailable::Busy);
                    }
                    let wait = u64::try_from(ms.clamp(1, 50)).unwrap_or(1);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Err(Refusal::Ceiling) => return Err(IdsUnavailable::Ceiling),
                Err(Refusal::OutOfRange) => {
                    tracing::error!("the clock is outside the id layout (2026-01-01 + 69 years)");
                    return Err(IdsUnavailable::OutOfRange);
                }
            }
        }
    }

    /// One attempt to take a free or expired node (expiry by the database's clock). Starts minting above
    /// the row's high-water mark and records the new mark before minting. Returns the node, or None when
    /// every node is held.
    pub async fn claim(&self, db: &MySqlPool) -> anyhow::Result<Option<i64>> {
        if let Some(node) = self.node() {
            return Ok(Some(node));
        }
        let sent = Instant::now();
        let claimed = tokio::time::timeout(MYSQL_TIMEOUT, self.claim_row(db))
            .await
            .map_err(|_| anyhow::anyhow!("claiming an id node timed out"))??;
        let Some((node, floor, ceiling)) = claimed else {
            return Ok(None);
        };
        *self.lock() = Some(Lease {
            minter: Minter::new(node, floor, ceiling),
            deadline: self.deadline(sent),
        });
        metrics::gauge!("flashsale_id_node").set(node as f64);
        tracing::info!(node, floor, holder = %self.0.holder, "id node leased");
        Ok(Some(node))
    }

    /// The claim transaction: (node, floor ms, ceiling ms) of the row taken.
    async fn claim_row(&self, db: &MySqlPool) -> anyhow::Result<Option<(i64, i64, i64)>> {
        let mut tx = db.begin().await?;
        // The longest-free node first: its high-water mark is the oldest, so minting starts nearest
        // the present. SKIP LOCKED: engines starting together each take another row, nobody waits.
        let row: Option<(i16, i64)> = sqlx::query_as(
            "SELECT node_id, high_water_ms FROM engine_id_leases \
             WHERE lease_until <= UTC_TIMESTAMP(3) ORDER BY lease_until, node_id LIMIT 1 \
             FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((node, high_water)) = row else {
            return Ok(None);
        };
        let floor = self.0.clock.now_ms().max(high_water + 1);
        // Promise made before the first id: nothing above it until a renewal raises it.
        let ceiling = floor + self.ttl_ms();
        sqlx::query(
            "UPDATE engine_id_leases SET holder = ?, \
             lease_until = UTC_TIMESTAMP(3) + INTERVAL ? MICROSECOND, high_water_ms = ? \
             WHERE node_id = ?",
        )
        .bind(&self.0.holder)
        .bind(self.ttl_ms().saturating_mul(1000))
        .bind(ceiling)
        .bind(node)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some((i64::from(node), floor, ceiling)))
    }

    /// Extends the lease and raises the ceiling to a TTL past the id clock. Only a confirmed renewal
    /// raises the ceiling in memory, so the engine never mints above a mark MySQL does not hold.
    pub async fn renew(&self, db: &MySqlPool) -> Renewal {
        let outcome = self.renew_once(db).await;
        metrics::counter!("flashsale_id_lease_renewals_total", "outcome" => outcome.label())
            .increment(1);
        outcome
    }

    async fn renew_once(&self, db: &MySqlPool) -> Renewal {
        let (node, ceiling) = {
            let lease = self.lock();
            let Some(l) = lease.as_ref() else {
                return Renewal::NotHeld;
            };
            let clock = self.0.clock.now_ms().max(l.minter.high_used());
            (l.minter.node, clock + self.ttl_ms())
        };
        let sent = Instant::now();
        let update = sqlx::query(
            "UPDATE engine_id_leases SET lease_until = UTC_TIMESTAMP(3) + INTERVAL ? MICROSECOND, \
             high_water_ms = GREATEST(high_water_ms, ?) WHERE node_id = ? AND holder = ?",
        )
        .bind(self.ttl_ms().saturating_mul(1000))
        .bind(ceiling)
        .bind(node)
        .bind(&self.0.holder)
        .execute(db);
        let done = match tokio::time::timeout(MYSQL_TIMEOUT, update).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::warn!(node, error = %e, "id lease renewal failed; minting goes on until the lease runs out");
                return Renewal::Error;
            }
            Err(_) => {
                tracing::warn!(
                    node,
                    "id lease renewal timed out; minting goes on until the lease runs out"
                );
                return Renewal::Error;
            }
        };
        let mut lease = self.lock();
        let Some(l) = lease.as_mut().filter(|l| l.minter.node == node) else {
            return Renewal::NotHeld;
        };
        if done.rows_affected() == 1 {
            l.minter.ceiling = l.minter.ceiling.max(ceiling);
            l.deadline = self.deadline(sent);
            Renewal::Ok
        } else {
            tracing::error!(
                node,
                "id lease taken by another holder; no ids until a node is held again"
            );
            *lease = None;
            metrics::gauge!("flashsale_id_node").set(-1.0);
            Renewal::Lost
        }
    }

    /// Stops minting and frees the node for the next engine (clean shutdown). The high-water mark comes
    /// down to the last millisecond actually used, so a successor starts at the present, not a TTL ahead.
    pub async fn release(&self, db: &MySqlPool) {
        let Some(lease) = self.lock().take() else {
            return;
        };
        metrics::gauge!("flashsale_id_node").set(-1.0);
        let node = lease.minter.node;
        let used = lease.minter.high_used();
        let update = sqlx::query(
            "UPDATE engine_id_leases SET lease_until = UTC_TIMESTAMP(3), high_water_ms = ? \
             WHERE node_id = ? AND holder = ?",
        )
        .bind(used)
        .bind(node)
        .bind(&self.0.holder)
        .execute(db);
        match tokio::time::timeout(MYSQL_TIMEOUT, update).await {
            Ok(Ok(_)) => tracing::info!(node, "id node released"),
            // The lease then runs out by itself; the successor starts above the promised mark.
            _ => tracing::warn!(
                node,
                "could not release the id node; it frees when its lease runs out"
            ),
        }
    }

    /// Drops a lease whose deadline passed (also checked on every `next`), so the gauge and a new
    /// claim follow even when no id is asked for.
    fn expire_if_due(&self) {
        let mut lease = self.lock();
        if lease.as_ref().is_some_and(|l| Instant::now() >= l.deadline) {
            tracing::error!("id lease not renewed in time; no ids until a node is held again");
            *lease = None;
            metrics::gauge!("flashsale_id_node").set(-1.0);
        }
    }

    /// The lease's life: claim (retrying every second while MySQL is unreachable or every node is held),
    /// renew every `ID_LEASE_RENEW_MS`, claim again after a loss, release at shutdown.
    pub async fn run(self, db: MySqlPool, mut stop: watch::Receiver<bool>) {
        let renew_every = Duration::from_millis(self.0.settings.id_lease_renew_ms);
        let mut claim_failing = false;
        while !*stop.borrow() {
            self.expire_if_due();
            let wait = if self.node().is_some() {
                match self.renew(&db).await {
                    Renewal::Ok => renew_every,
                    Renewal::Error => RETRY.min(renew_every),
                    Renewal::Lost | Renewal::NotHeld => Duration::ZERO,
                }
            } else {
                match self.claim(&db).await {
                    Ok(Some(_)) => {
                        claim_failing = false;
                        renew_every
                    }
                    outcome => {
                        if !claim_failing {
                            match outcome {
                                Ok(_) => tracing::error!(
                                    "every id node is held by another engine; creation answers 503"
                                ),
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot claim an id node; creation answers 503")
                                }
                            }
                        }
                        claim_failing = true;
                        RETRY
                    }
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        self.release(&db).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = EPOCH_MS + 330 * 86_400_000;

    #[test]
    fn bit_layout() {
        assert_eq!(EPOCH_MS, 1_767_225_600_000, "2026-01-01T00:00:00Z");
        assert_eq!(compose(EPOCH_MS, 0, 0), Some(0));
        assert_eq!(compose(EPOCH_MS, 0, 1), Some(1));
        assert_eq!(compose(EPOCH_MS, 1, 0), Some(64));
        assert_eq!(compose(EPOCH_MS + 1, 0, 0), Some(4096));
        assert_eq!(compose(EPOCH_MS + 2, 5, 7), Some(2 * 4096 + 5 * 64 + 7));
        let id = compose(NOW, 63, 63).expect("in range");
        assert_eq!(
            parts(id),
            IdParts {
                ms: NOW,
                node: 63,
                seq: 63
            }
        );
        // Out of the layout: before the epoch, past 41 bits, bad node or sequence.
        assert_eq!(compose(EPOCH_MS - 1, 0, 0), None);
        assert_eq!(compose(EPOCH_MS + (1 << 41), 0, 0), None);
        assert_eq!(compose(NOW, 64, 0), None);
        assert_eq!(compose(NOW, -1, 0), None);
        assert_eq!(compose(NOW, 0, 64), None);
        // About 69 years of milliseconds.
        let years = (MAX_OFFSET_MS as f64) / (365.25 * 86_400_000.0);
        assert!((69.0..70.0).contains(&years), "{years}");
    }

    #[test]
    fn ids_are_json_safe() {
        // The largest id of the layout is 2^53 - 1: exact as a double (JavaScript, Lua, JSON parsers).
        let last = compose(EPOCH_MS + MAX_OFFSET_MS, NODES - 1, SEQS - 1).expect("in range");
        assert_eq!(last, MAX_ID);
        assert_eq!(MAX_ID, (1_i64 << 53) - 1);
        assert_eq!((last as f64) as i64, last);
        let text = serde_json::to_string(&serde_json::json!({ "id": last })).expect("json");
        let back: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(back["id"].as_f64().map(|f| f as i64), Some(last));
        let mut m = Minter::new(3, NOW, NOW + 60_000);
        for _ in 0..10_000 {
            let id = m.mint(0, NOW, 1_000).expect("id");
            assert!(id > 0 && id <= MAX_ID);
            assert_eq!((id as f64) as i64, id);
        }
    }

    #[test]
    fn monotonic_and_unique_when_the_sequence_overflows() {
        let mut m = Minter::new(7, NOW, NOW + 60_000);
        let mut ids = Vec::new();
        // 64 * 10 ids in one wall-clock millisecond: ten milliseconds of the id clock.
        for _ in 0..640 {
            ids.push(m.mint(Entity::Order.index(), NOW, 1_000).expect("id"));
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        let first = parts(ids[0]);
        let last = parts(ids[639]);
        assert_eq!((first.ms, first.node, first.seq), (NOW, 7, 0));
        assert_eq!((last.ms, last.node, last.seq), (NOW + 9, 7, 63));
        // Another kind has its own sequence: same wall ms, starts at 0 (the ids live in other keys).
        let member = parts(m.mint(Entity::Member.index(), NOW, 1_000).expect("id"));
        assert_eq!((member.ms, member.seq), (NOW, 0));
        // When the wall clock catches up, ids follow it again.
        let later = parts(m.mint(Entity::Order.index(), NOW + 50, 1_000).expect("id"));
        assert_eq!((later.ms, later.seq), (NOW + 50, 0));
    }

    #[test]
    fn the_id_clock_runs_ahead_only_so_far_and_never_past_the_ceiling() {
        let mut m = Minter::new(1, NOW, NOW + 60_000);
        // 2 ms of run-ahead allowed: 3 milliseconds' worth of ids, then wait.
        for _ in 0..(3 * 64) {
            m.mint(0, NOW, 2).expect("id");
        }
        assert_eq!(m.mint(0, NOW, 2), Err(Refusal::Ahead(1)));
        assert!(m.mint(0, NOW + 1, 2).is_ok());
        // The ceiling (the high-water mark MySQL holds) is never passed, whatever the clock says.
        let mut m = Minter::new(1, NOW, NOW + 10);
        assert!(m.mint(0, NOW + 10, 1_000).is_ok());
        assert_eq!(m.mint(0, NOW + 11, 1_000), Err(Refusal::Ceiling));
        assert_eq!(m.high_used(), NOW + 10);
    }

    #[test]
    fn never_backwards_when_the_clock_steps_back() {
        let mut m = Minter::new(2, NOW, NOW + 600_000);
        let before = m.mint(0, NOW + 5_000, 1_000).expect("id");
        // The wall clock steps back 5 s: ids go on above the last one, in its millisecond.
        let after = m.mint(0, NOW, 10_000).expect("id");
        assert!(after > before);
        assert_eq!(parts(after).ms, NOW + 5_000);
        // And the engine's clock hides the step from the minter altogether.
        let clock = MonoClock::default();
        assert_eq!(clock.observe(NOW, 0), NOW);
        assert_eq!(clock.observe(NOW + 100, 100), NOW + 100);
        assert_eq!(
            clock.observe(NOW - 5_000, 200),
            NOW + 200,
            "step back ignored"
        );
        assert_eq!(clock.observe(NOW - 4_700, 500), NOW + 500);
        assert_eq!(
            clock.observe(NOW + 60_000, 600),
            NOW + 60_000,
            "step forward followed"
        );
        assert_eq!(clock.observe(NOW + 700, 700), NOW + 60_100);
    }

    #[test]
    fn a_successor_starts_above_the_predecessors_high_water_mark() {
        // The predecessor recorded NOW + 60 s (its ceiling); the successor's clock says NOW.
        let high_water = NOW + 60_000;
        let mut m = Minter::new(4, high_water + 1, high_water + 1 + 60_000);
        let id = m.mint(0, NOW, 1_000).expect("id");
        assert_eq!(parts(id).ms, high_water + 1);
        // Run-ahead is measured from the floor, so starting ahead of the wall clock does not stall.
        for _ in 0..64 {
            m.mint(1, NOW, 1_000).expect("id");
        }
    }
}
