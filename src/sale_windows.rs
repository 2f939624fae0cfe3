//! The engine's copy of the sale windows Redis answered with: the crowd that presses "buy" before
//! the opening second (or after the close) is refused here, without a Redis call.
//!
//! Redis time decides; the engine only repeats what Redis said. An entry comes from a `stock_hold`
//! refusal (SALE_NOT_STARTED / SALE_ENDED), which carries the window and Redis's clock at that
//! moment. The engine refuses locally only while its estimate of the product node's clock is clearly
//! before the opening (or after the close), the estimate leaning the safe way: for "not started" the
//! latest Redis time the reply allows, for "ended" the earliest. So the first request after the
//! opening millisecond always reaches Redis, and Redis may still refuse it.
//!
//! An entry is dropped when the rules change (`PUBLISH` on the invalidation channel by the engine
//! that changed them; every engine subscribes, see src/invalidations.rs), when the subscription
//! reconnects (messages may have been missed), and after `ENTRY_TTL` in any case: a lost message makes
//! a window stale for that long at most.
//!
//! A request refused here did not execute: nothing is stored under its Idempotency-Key (docs/api.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ProblemExtensions;
use crate::scripts::ScriptReply;
use crate::state::rfc3339_ms;

/// How long an entry answers without a change message: the staleness bound for a lost message.
pub const ENTRY_TTL: Duration = Duration::from_secs(5);
/// Clock drift allowed for between the reply that taught the window and now.
const DRIFT_MARGIN_MS: i64 = 20;

#[derive(Clone, Copy, Debug)]
struct Window {
    starts_ms: Option<i64>,
    ends_ms: Option<i64>,
    /// Bounds of (Redis clock - engine clock) from the reply: Redis read its clock between the call
    /// and the answer.
    offset_low_ms: i64,
    offset_high_ms: i64,
    noted: Instant,
}

/// Why a product cannot be bought now, as far as the cached window tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    NotStarted { product_id: i64, starts_ms: i64 },
    Ended { product_id: i64, ends_ms: i64 },
}

impl Closed {
    /// The refusal, as the script path words it (same status, code, detail and extensions).
    pub fn reply(self) -> ScriptReply {
        let (detail, extensions) = match self {
            Closed::NotStarted {
                product_id,
                starts_ms,
            } => not_started_problem(product_id, starts_ms),
            Closed::Ended {
                product_id,
                ends_ms,
            } => ended_problem(product_id, ends_ms),
        };
        ScriptReply::Refused {
            status: 409,
            code: self.code().into(),
            detail,
            extensions: extensions.to_json(),
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Closed::NotStarted { .. } => "SALE_NOT_STARTED",
            Closed::Ended { .. } => "SALE_ENDED",
        }
    }
}

/// SALE_NOT_STARTED's detail and extension members (the same whether Redis or the engine refused).
pub fn not_started_problem(product_id: i64, starts_ms: i64) -> (String, ProblemExtensions) {
    let starts = rfc3339_ms(starts_ms);
    (
        format!("the sale of product {product_id} opens at {starts}"),
        ProblemExtensions {
            product_id: Some(product_id),
            sale_starts_at: Some(starts),
            ..Default::default()
        },
    )
}

/// SALE_ENDED's detail and extension members.
pub fn ended_problem(product_id: i64, ends_ms: i64) -> (String, ProblemExtensions) {
    let ends = rfc3339_ms(ends_ms);
    (
        format!("the sale of product {product_id} closed at {ends}"),
        ProblemExtensions {
            product_id: Some(product_id),
            sale_ends_at: Some(ends),
            ..Default::default()
        },
    )
}

#[derive(Default)]
pub struct SaleWindows {
    entries: Mutex<HashMap<i64, Window>>,
    /// Off: every request reaches Redis (tests that count Redis calls compare both).
    disabled: bool,
}

impl SaleWindows {
    pub fn new(enabled: bool) -> Self {
        Self {
            entries: Mutex::default(),
            disabled: !enabled,
        }
    }

    /// Remembers a product's window from a refusal. `sent_ms`/`answered_ms`: the engine clock when
    /// the call went out and when its answer came; `redis_now_ms`: the product node's clock in it.
    pub fn note(
        &self,
        product_id: i64,
        starts_ms: Option<i64>,
        ends_ms: Option<i64>,
        redis_now_ms: i64,
        sent_ms: i64,
        answered_ms: i64,
    ) {
        if self.disabled {
            return;
        }
        let window = Window {
            starts_ms,
            ends_ms,
            offset_low_ms: redis_now_ms - answered_ms,
            offset_high_ms: redis_now_ms - sent_ms,
            noted: Instant::now(),
        };
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(product_id, window);
            metrics::gauge!("flashsale_sale_windows_cached").set(entries.len() as f64);
        }
    }

    /// Whether the cached window of any of the products says no at engine time `now_ms`; the first
    /// such product in the given order.
    pub fn closed(&self, products: impl IntoIterator<Item = i64>, now_ms: i64) -> Option<Closed> {
        if self.disabled {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        if entries.is_empty() {
            return None;
        }
        products.into_iter().find_map(|product_id| {
            let w = entries.get(&product_id)?;
            if w.noted.elapsed() >= ENTRY_TTL {
                return None;
            }
            if let Some(starts_ms) = w.starts_ms {
                // The latest the product node's clock can read now.
                if now_ms + w.offset_high_ms + DRIFT_MARGIN_MS < starts_ms {
                    return Some(Closed::NotStarted {
                        product_id,
                        starts_ms,
                    });
                }
            }
            if let Some(ends_ms) = w.ends_ms {
                // The earliest it can read.
                if now_ms + w.offset_low_ms - DRIFT_MARGIN_MS >= ends_ms {
                    return Some(Closed::Ended {
                        product_id,
                        ends_ms,
                    });
                }
            }
            None
        })
    }

    /// The rules of a product changed: forget its window.
    pub fn forget(&self, product_id: i64) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&product_id);
            metrics::gauge!("flashsale_sale_windows_cached").set(entries.len() as f64);
        }
    }

    pub fn forget_all(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
            metrics::gauge!("flashsale_sale_windows_cached").set(0.0);
        }
    }

    /// Drops expired entries (so the map does not keep every product ever refused).
    pub fn prune(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, w| w.noted.elapsed() < ENTRY_TTL);
            metrics::gauge!("flashsale_sale_windows_cached").set(entries.len() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_only_while_clearly_before_the_opening() {
        let w = SaleWindows::new(true);
        // Redis read 1,000 while the engine's clock went from 900 to 910: offset 90..100.
        w.note(7, Some(2_000), None, 1_000, 900, 910);
        assert_eq!(
            w.closed([7], 1_850),
            Some(Closed::NotStarted {
                product_id: 7,
                starts_ms: 2_000
            })
        );
        // 1,890 + 100 + margin is past the opening: Redis decides.
        assert_eq!(w.closed([7], 1_890), None);
        assert_eq!(w.closed([8], 0), None);
        w.forget(7);
        assert_eq!(w.closed([7], 0), None);
    }

    #[test]
    fn refuses_after_the_close_only_when_certainly_past_it() {
        let w = SaleWindows::new(true);
        w.note(3, None, Some(5_000), 4_000, 3_900, 3_950);
        // Earliest Redis time = now + 50 - 20.
        assert_eq!(w.closed([3], 4_960), None);
        assert_eq!(
            w.closed([1, 3], 4_975),
            Some(Closed::Ended {
                product_id: 3,
                ends_ms: 5_000
            })
        );
    }

    #[test]
    fn disabled_never_refuses() {
        let w = SaleWindows::new(false);
        w.note(7, Some(i64::MAX), None, 0, 0, 0);
        assert_eq!(w.closed([7], 0), None);
    }
}
