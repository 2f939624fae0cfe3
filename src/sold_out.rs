//! Sold-out markers: the herd that keeps pressing "buy" after the last unit is gone is answered by
//! the engine, without a Redis call.
//!
//! A marker comes from a refusal Redis gave: `COUPON_SOLD_OUT` (none left) or a stock hold that
//! answered `out_of_stock` with the units it had. It only ever refuses, and only what Redis would
//! have refused with the count it reported: an order for more units than the marker's count. It
//! never grants.
//!
//! A marker never outlives the stock. Every script that gives units or coupons back (admin stock or
//! quantity add, a hold released, a paid order's stock returned) publishes `product:ID` /
//! `coupon:ID` on the invalidation channel in the same script, and every engine drops the marker
//! (src/invalidations.rs). A lost message leaves a marker stale for `SOLD_OUT_MARKER_TTL_MS` at most;
//! a reconnect of the subscription drops every marker.
//!
//! A marker set from an answer that was already on its way when the item came back would be stale:
//! each item has a generation, bumped by every invalidation, read before the Redis call (`ticket`)
//! and compared when the answer is noted (`note`). An answer older than an invalidation is not
//! remembered.
//!
//! A request refused here did not execute: nothing is stored under its Idempotency-Key
//! (docs/api.md), so the same key may succeed after a restock.

use std::hash::{BuildHasher, Hash};

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::error::ApiResult;
use crate::scripts::ScriptReply;
use crate::state::AppState;

/// What a marker is about. Coupons and products have separate id spaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Item {
    Coupon(i64),
    Product(i64),
}

impl Item {
    /// The `kind` label of the metrics (a bounded set).
    pub fn kind(self) -> &'static str {
        match self {
            Item::Coupon(_) => "coupon",
            Item::Product(_) => "product",
        }
    }

    /// The refusal, worded as the script path words it (same status, code and detail).
    pub fn refusal(self) -> ScriptReply {
        let (code, detail) = match self {
            Item::Coupon(_) => ("COUPON_SOLD_OUT", "no coupons left".to_string()),
            Item::Product(id) => ("OUT_OF_STOCK", format!("not enough stock for product {id}")),
        };
        ScriptReply::Refused {
            status: 409,
            code: code.into(),
            detail,
            extensions: String::new(),
        }
    }
}

/// An item's generation when its Redis call went out.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    item: Item,
    generation: u64,
}

#[derive(Clone, Copy, Debug)]
struct Marker {
    /// Units (coupons) Redis reported left; requests for more are refused.
    available: i64,
    noted: Instant,
}

/// Generation slots: an invalidation bumps its item's slot. Items sharing a slot only cost a marker
/// not being set now and then, never a stale one.
const GENERATION_SLOTS: usize = 1024;

pub struct SoldOutMarkers {
    entries: Mutex<HashMap<Item, Marker>>,
    generations: Box<[AtomicU64]>,
    slot_hasher: foldhash::fast::RandomState,
    ttl: Duration,
    /// Off (`SOLD_OUT_MARKERS=false`): every request reaches Redis.
    enabled: bool,
}

impl SoldOutMarkers {
    pub fn new(enabled: bool, ttl: Duration) -> Self {
        Self {
            entries: Mutex::default(),
            generations: (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            slot_hasher: Default::default(),
            ttl,
            enabled,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn slot(&self, item: Item) -> &AtomicU64 {
        &self.generations[(self.slot_hasher.hash_one(item) % GENERATION_SLOTS as u64) as usize]
    }

    /// Read before the Redis call whose answer may be noted.
    pub fn ticket(&self, item: Item) -> Ticket {
        Ticket {
            item,
            generation: self.slot(item).load(Ordering::Acquire),
        }
    }

    /// Remembers that Redis had `available` units of the ticket's item, unless the item came back
    /// (an invalidation) since the ticket was taken.
    pub fn note(&self, ticket: Ticket, available: i64) {
        if !self.enabled {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        // Checked under the lock: `forget` bumps the generation before it takes the lock, so an
        // invalidation either is seen here or removes this entry after it is written.
        if self.slot(ticket.item).load(Ordering::Acquire) != ticket.generation {
            return;
        }
        entries.insert(
            ticket.item,
            Marker {
                available: available.max(0),
                noted: Instant::now(),
            },
        );
        metrics::gauge!("flashsale_soldout_markers").set(entries.len() as f64);
    }

    /// Whether a live marker refuses `quantity` units of `item`.
    pub fn refuses(&self, item: Item, quantity: i64) -> bool {
        if !self.enabled {
            return false;
        }
        match self.entries.lock() {
            Ok(entries) => entries
                .get(&item)
                .is_some_and(|m| m.noted.elapsed() < self.ttl && quantity > m.available),
            Err(_) => false,
        }
    }

    /// Counts a request answered by a marker. The two series are registered once: a registry lookup
    /// builds and hashes the key on every call, and this runs for every request of the herd.
    pub fn count_hit(item: Item) {
        static HITS: [OnceLock<metrics::Counter>; 2] = [const { OnceLock::new() }; 2];
        let index = match item {
            Item::Coupon(_) => 0,
            Item::Product(_) => 1,
        };
        HITS[index]
            .get_or_init(
                || metrics::counter!("flashsale_soldout_marker_hits_total", "kind" => item.kind()),
            )
            .increment(1);
    }

    /// The item came back (or may have): drop its marker and let no answer in flight set it again.
    pub fn forget(&self, item: Item) {
        self.slot(item).fetch_add(1, Ordering::AcqRel);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.remove(&item).is_some() {
                metrics::gauge!("flashsale_soldout_markers").set(entries.len() as f64);
            }
        }
    }

    /// Messages may have been missed (a reconnect): drop every marker.
    pub fn forget_all(&self) {
        for slot in self.generations.iter() {
            slot.fetch_add(1, Ordering::AcqRel);
        }
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
            metrics::gauge!("flashsale_soldout_markers").set(0.0);
        }
    }

    /// Drops expired markers (so the map does not keep every item ever sold out).
    pub fn prune(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, m| m.noted.elapsed() < self.ttl);
            metrics::gauge!("flashsale_soldout_markers").set(entries.len() as f64);
        }
    }
}

/// Whether the item's sold-out marker answers this request (src/sold_out.rs). A request with an
/// Idempotency-Key whose record exists goes to Redis anyway, so a retry of a request that executed
/// gets its first answer back, not a refusal: one read instead of the script.
pub async fn refused_by_marker(
    state: &AppState,
    item: Item,
    quantity: i64,
    idempotency_record: impl FnOnce() -> Option<String>,
) -> ApiResult<bool> {
    if !state.caches.sold_out.refuses(item, quantity) {
        return Ok(false);
    }
    // The record's key is built only here: most requests meet no marker.
    let refused = match idempotency_record() {
        Some(key) => {
            let recorded: i64 = state.redis.exists(key).await?;
            recorded == 0
        }
        None => true,
    };
    if refused {
        SoldOutMarkers::count_hit(item);
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn markers() -> SoldOutMarkers {
        SoldOutMarkers::new(true, Duration::from_secs(60))
    }

    #[test]
    fn refuses_only_more_than_redis_reported() {
        let m = markers();
        let product = Item::Product(7);
        m.note(m.ticket(product), 2);
        assert!(!m.refuses(product, 2));
        assert!(m.refuses(product, 3));
        assert!(
            !m.refuses(Item::Coupon(7), 1),
            "coupons and products are apart"
        );
        m.note(m.ticket(Item::Coupon(7)), 0);
        assert!(m.refuses(Item::Coupon(7), 1));
    }

    #[test]
    fn an_answer_older_than_an_invalidation_is_not_remembered() {
        let m = markers();
        let item = Item::Coupon(3);
        let ticket = m.ticket(item);
        m.forget(item); // the restock's message arrives before the sold-out answer
        m.note(ticket, 0);
        assert!(!m.refuses(item, 1));
        m.note(m.ticket(item), 0);
        assert!(m.refuses(item, 1));
        m.forget(item);
        assert!(!m.refuses(item, 1));
        m.note(m.ticket(item), 0);
        m.forget_all();
        assert!(!m.refuses(item, 1));
    }

    #[test]
    fn expires_and_can_be_switched_off() {
        let m = SoldOutMarkers::new(true, Duration::ZERO);
        m.note(m.ticket(Item::Product(1)), 0);
        assert!(!m.refuses(Item::Product(1), 1));
        let off = SoldOutMarkers::new(false, Duration::from_secs(60));
        off.note(off.ticket(Item::Product(1)), 0);
        assert!(!off.refuses(Item::Product(1), 1));
    }
}
