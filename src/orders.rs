//! Order sagas: reserve, cancel and expire as steps that each touch ONE Redis Cluster slot. An order
//! lives in its member's slot; a product's stock and holds live in the product's slot. This module is
//! the one place that sequences the steps; the HTTP route, the expiry sweep, the saga worker and the
//! tests all call it.
//!
//! Reserve: `stock_hold` on every product (concurrently, each in its product's slot; idempotent by
//! order id), then `order_reserve` in the member's slot with the prices and the earliest deadline the
//! holds answered. A failed hold (unknown product, short stock) or a refused member step releases the
//! holds already taken (`stock_release`) and, for a failed hold, records the refusal in the member's
//! idempotency record (`order_refuse`), so the request answers as it always did: all or nothing.
//!
//! Cancel / expire: the member step (`order_cancel` / `order_expire`), then, inline, `stock_release`
//! (the order was unpaid) or `stock_return` (it was paid) on each product, so a product read right
//! after the answer shows the stock back. The saga worker (src/pipeline/saga.rs) runs the same product steps
//! from the events (`order.cancelled`, `order.expired`; and `hold_confirm` for `order.reserved`,
//! `stock_commit` for `order.paid`), so a crash between the steps is completed by any engine.
//!
//! A crash between the holds and the member step leaves holds no order owns: they stay in the
//! partition's pending-holds index, and the orphan sweep (`sweep_orphan_holds`, every engine, every
//! partition) releases those past deadline + margin whose order was never written, and confirms
//! those whose order exists.

use std::collections::HashMap;

use axum::http::StatusCode;
use fred::prelude::*;
use futures::future::join_all;

use crate::domain::OrderItemView;
use crate::error::{ApiError, ProblemExtensions};
use crate::invalidations::LocalCaches;
use crate::keys::Keys;
use crate::partition::Partition;
use crate::scripts::calls::{
    HoldConfirm, HoldRef, HoldsDue, Idem, OrderCancel, OrderExpire, OrderRefuse, OrderReserve,
    PricedItem, StockCommit, StockHold, StockRelease, StockReturn,
};
use crate::scripts::{ScriptCall, ScriptReply, Scripts};
use crate::sold_out::{Item, SoldOutMarkers};
use crate::state::Now;

/// How long a hold waits for its order (Redis ms): the member step refuses after the deadline.
pub const HOLD_TTL_MS: i64 = 30_000;
/// The orphan sweep releases a hold only this long after its deadline: the member step judges the
/// deadline by the member node's clock, the sweep by the product node's; the margin covers the skew.
pub const HOLD_MARGIN_MS: i64 = 5_000;
/// Pending holds looked at per partition and sweep round.
const SWEEP_BATCH: i64 = 200;

/// What the steps run against: the Redis pool, the loaded scripts and the key layout.
#[derive(Clone, Copy)]
pub struct Store<'a> {
    pub redis: &'a Pool,
    pub scripts: &'a Scripts,
    pub keys: &'a Keys,
    /// The engine's sold-out markers: a step that gives units back drops its product's marker here
    /// at once (other engines hear it from the script's PUBLISH).
    pub sold_out: Option<&'a SoldOutMarkers>,
}

impl Store<'_> {
    pub(crate) async fn run<C: ScriptCall>(
        &self,
        call: &C,
    ) -> Result<fred::types::Value, fred::error::Error> {
        self.scripts.run_call(self.redis, self.keys, call).await
    }

    /// A saga step: its reply is a bare outcome string, counted by script and outcome. It returns only
    /// once the replicas hold what the step found (see `Scripts::run_step`), so its caller may act
    /// on it (acknowledge the event that triggered it) without a failover taking it back.
    pub(crate) async fn step<C: ScriptCall>(&self, call: &C) -> Result<String, fred::error::Error> {
        let outcome = self
            .scripts
            .run_step(self.redis, self.keys, call, |outcome| {
                step_wrote(C::SCRIPT.name(), outcome)
            })
            .await?;
        metrics::counter!("flashsale_script_outcomes_total", "script" => C::SCRIPT.name(), "outcome" => outcome.clone())
            .increment(1);
        if let (Some(markers), Some(item)) = (self.sold_out, call.gives_back()) {
            if step_wrote(C::SCRIPT.name(), &outcome) {
                markers.forget(item);
            }
        }
        Ok(outcome)
    }
}

/// True when a step's outcome means the step itself wrote (so WAIT covers it without a fence).
fn step_wrote(script: &str, outcome: &str) -> bool {
    matches!(
        (script, outcome),
        (_, "committed" | "released" | "returned" | "added")
            | ("hold_confirm" | "email_confirm", "confirmed")
    )
}

/// A reserve request, as the route received it.
pub struct Reserve {
    pub member_id: i64,
    pub order_id: i64,
    pub idem: Idem,
    /// (product id, quantity), distinct products in item order.
    pub items: Vec<(i64, i64)>,
    pub reservation_ttl_ms: i64,
    pub event_id: String,
}

/// One product's hold answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Held {
        unit_price: i64,
        deadline_ms: i64,
        /// Taken by this call (false: it was there already, a resend's or another call's).
        fresh: bool,
    },
    NotFound,
    /// The sale opens at `starts_ms` by the product node's clock, which read `now_ms`.
    NotStarted {
        starts_ms: i64,
        ends_ms: Option<i64>,
        now_ms: i64,
    },
    Ended {
        ends_ms: i64,
        now_ms: i64,
    },
    /// The member's live units + this quantity pass the per-member limit.
    OverLimit {
        remaining: i64,
        limit: i64,
    },
    /// Fewer units than the quantity: `available` were left.
    OutOfStock {
        available: i64,
    },
    Conflict,
}

/// Whether a stock_hold reply may stand for a write (anything but a plain refusal).
fn hold_wrote(reply: &fred::types::Value) -> bool {
    match reply {
        fred::types::Value::Array(parts) => !matches!(
            parts.first().and_then(|v| v.as_str()).as_deref(),
            Some("not_found" | "not_started" | "ended" | "limit" | "out_of_stock" | "conflict")
        ),
        _ => true,
    }
}

fn parse_hold(value: fred::types::Value) -> Result<Hold, ApiError> {
    let parts = value.into_array();
    let int = |i: usize| parts.get(i).and_then(|v| v.as_i64());
    match parts.first().and_then(|v| v.as_string()).as_deref() {
        Some("held") => match (int(1), int(2)) {
            (Some(unit_price), Some(deadline_ms)) => Ok(Hold::Held {
                unit_price,
                deadline_ms,
                fresh: int(3) != Some(0),
            }),
            _ => Err(ApiError::Internal(anyhow::anyhow!(
                "stock_hold: malformed reply {parts:?}"
            ))),
        },
        Some("not_found") => Ok(Hold::NotFound),
        Some("not_started") => match (int(1), int(2), int(3)) {
            (Some(starts_ms), Some(ends_ms), Some(now_ms)) => Ok(Hold::NotStarted {
                starts_ms,
                ends_ms: (ends_ms >= 0).then_some(ends_ms),
                now_ms,
            }),
            _ => Err(ApiError::Internal(anyhow::anyhow!(
                "stock_hold: malformed reply {parts:?}"
            ))),
        },
        Some("ended") => match (int(1), int(2)) {
            (Some(ends_ms), Some(now_ms)) => Ok(Hold::Ended { ends_ms, now_ms }),
            _ => Err(ApiError::Internal(anyhow::anyhow!(
                "stock_hold: malformed reply {parts:?}"
            ))),
        },
        Some("limit") => match (int(1), int(2)) {
            (Some(remaining), Some(limit)) => Ok(Hold::OverLimit { remaining, limit }),
            _ => Err(ApiError::Internal(anyhow::anyhow!(
                "stock_hold: malformed reply {parts:?}"
            ))),
        },
        Some("out_of_stock") => Ok(Hold::OutOfStock {
            available: int(1).unwrap_or(0),
        }),
        Some("conflict") => Ok(Hold::Conflict),
        _ => Err(ApiError::Internal(anyhow::anyhow!(
            "stock_hold: unexpected reply {parts:?}"
        ))),
    }
}

/// Reserves an order: holds, then the member step (see the module doc). The reply is what the route
/// sends back; a 503 (the holds lapsed before the member step ran) comes back as a retryable error.
///
/// `caches`: where a sale-window refusal and a product's sold-out answer are remembered, so the
/// engine can answer the next such request alone.
pub async fn reserve(
    store: Store<'_>,
    req: &Reserve,
    caches: Option<&LocalCaches>,
) -> Result<ScriptReply, ApiError> {
    // No read ahead of the holds: the member step checks everything a read would (the member is
    // known, a stored result to replay, this very call resent) and whichever step follows the holds
    // answers a replay with the first result, even when the stock is gone since (order_refuse) or
    // still there (order_reserve: the new holds go back). Two script calls an order, not five commands.
    let holds: Vec<HoldRef> = req
        .items
        .iter()
        .map(|(product_id, _)| HoldRef {
            product_id: *product_id,
            order_id: req.order_id,
            member_id: req.member_id,
        })
        .collect();
    let tickets: Vec<_> = match caches {
        Some(caches) => holds
            .iter()
            .map(|hold| Some(caches.sold_out.ticket(Item::Product(hold.product_id))))
            .collect(),
        None => vec![None; holds.len()],
    };
    let windows = caches.map(|c| &*c.windows);
    let sent_ms = Now::read().ms();
    let answers = join_all(
        holds
            .iter()
            .zip(&req.items)
            .map(|(hold, (_, quantity))| async move {
                let call = StockHold {
                    hold: *hold,
                    quantity: *quantity,
                    ttl_ms: HOLD_TTL_MS,
                };
                // The order will count on this hold: on a cluster it must be on a replica first.
                let value = store
                    .scripts
                    .run_call_replicated(store.redis, store.keys, &call, hold_wrote)
                    .await?;
                parse_hold(value)
            }),
    )
    .await;
    let answered_ms = Now::read().ms();

    let mut taken = Vec::new();
    let mut priced = Vec::new();
    let mut deadline = i64::MAX;
    let (mut not_found, mut short, mut conflict, mut error) = (None, Vec::new(), false, None);
    let mut rule: Option<RuleRefusal> = None;
    for (((hold, (_, quantity)), answer), ticket) in
        holds.iter().zip(&req.items).zip(answers).zip(tickets)
    {
        match answer {
            Ok(Hold::Held {
                unit_price,
                deadline_ms,
                fresh,
            }) => {
                // Only what this call took is given back on a refusal: a hold that was there
                // already belongs to a resend (then the member step answers, no refusal) or, on an
                // id fault, to another call's live order.
                if fresh {
                    taken.push(*hold);
                }
                priced.push(PricedItem {
                    product_id: hold.product_id,
                    quantity: *quantity,
                    unit_price,
                });
                deadline = deadline.min(deadline_ms);
            }
            Ok(Hold::NotFound) => {
                not_found.get_or_insert(hold.product_id);
            }
            Ok(Hold::NotStarted {
                starts_ms,
                ends_ms,
                now_ms,
            }) => {
                if let Some(windows) = windows {
                    windows.note(
                        hold.product_id,
                        Some(starts_ms),
                        ends_ms,
                        now_ms,
                        sent_ms,
                        answered_ms,
                    );
                }
                rule.get_or_insert(RuleRefusal::NotStarted(hold.product_id, starts_ms));
            }
            Ok(Hold::Ended { ends_ms, now_ms }) => {
                if let Some(windows) = windows {
                    windows.note(
                        hold.product_id,
                        None,
                        Some(ends_ms),
                        now_ms,
                        sent_ms,
                        answered_ms,
                    );
                }
                rule.get_or_insert(RuleRefusal::Ended(hold.product_id, ends_ms));
            }
            Ok(Hold::OverLimit { remaining, limit }) => {
                rule.get_or_insert(RuleRefusal::OverLimit {
                    product_id: hold.product_id,
                    remaining,
                    limit,
                });
            }
            Ok(Hold::OutOfStock { available }) => {
                if let (Some(caches), Some(ticket)) = (caches, ticket) {
                    caches.sold_out.note(ticket, available);
                }
                short.push(hold.product_id.to_string())
            }
            Ok(Hold::Conflict) => conflict = true,
            // A hold whose answer was lost may still have been taken: release it too (no-op if not).
            Err(e) => {
                taken.push(*hold);
                error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = error {
        release_all(store, &taken).await;
        return Err(e);
    }
    // Which refusal answers, in order: the first unknown product (in item order), then the first
    // sale rule that refuses (window, then limit, as each product's step checks them), then every
    // short product.
    let refusal = if let Some(product) = not_found {
        Some((
            404,
            "NOT_FOUND",
            format!("product not found: {product}"),
            ProblemExtensions::default(),
        ))
    } else if let Some(rule) = rule {
        Some(rule.problem())
    } else if !short.is_empty() {
        Some((
            409,
            "OUT_OF_STOCK",
            format!("not enough stock for product {}", short.join(", ")),
            ProblemExtensions::default(),
        ))
    } else if conflict {
        Some((
            409,
            "CONFLICT",
            "order id already in use".to_string(),
            ProblemExtensions::default(),
        ))
    } else {
        None
    };
    if let Some((status, code, detail, extensions)) = refusal {
        release_all(store, &taken).await;
        if RuleRefusal::is_rule_code(code) {
            metrics::counter!("flashsale_sale_rule_refusals_total", "code" => code, "answered_by" => "redis")
                .increment(1);
        }
        let call = OrderRefuse {
            member_id: req.member_id,
            idem: req.idem.clone(),
            status,
            code: code.into(),
            detail,
            extensions: extensions.to_json(),
        };
        return store.scripts.invoke(store.redis, store.keys, &call).await;
    }

    let result = member_step(store, req, priced, deadline).await;
    // Give the holds back now only when the member step definitely wrote no order of this call (a
    // replay, a reuse, a refusal). After an error the order may exist (the script ran, its answer was
    // lost with the connection): the orphan sweep decides after the deadline, by whether it exists.
    let no_order = matches!(result, Ok(MemberStep::Refused(_)) | Ok(MemberStep::Lapsed));
    if no_order {
        release_all(store, &taken).await;
    }
    result.and_then(MemberStep::answer)
}

/// A product's sale rule refused the order (the first such product in item order).
#[derive(Clone, Copy, Debug)]
enum RuleRefusal {
    NotStarted(i64, i64),
    Ended(i64, i64),
    OverLimit {
        product_id: i64,
        remaining: i64,
        limit: i64,
    },
}

impl RuleRefusal {
    fn is_rule_code(code: &str) -> bool {
        matches!(
            code,
            "SALE_NOT_STARTED" | "SALE_ENDED" | "PURCHASE_LIMIT_EXCEEDED"
        )
    }

    /// Status, code, detail and extensions, worded as the engine's own window refusals are
    /// (src/sale_windows.rs), so a refusal reads the same whoever answered it.
    fn problem(self) -> (u16, &'static str, String, ProblemExtensions) {
        match self {
            RuleRefusal::NotStarted(product_id, starts_ms) => {
                let (detail, ext) = crate::sale_windows::not_started_problem(product_id, starts_ms);
                (409, "SALE_NOT_STARTED", detail, ext)
            }
            RuleRefusal::Ended(product_id, ends_ms) => {
                let (detail, ext) = crate::sale_windows::ended_problem(product_id, ends_ms);
                (409, "SALE_ENDED", detail, ext)
            }
            RuleRefusal::OverLimit {
                product_id,
                remaining,
                limit,
            } => (
                409,
                "PURCHASE_LIMIT_EXCEEDED",
                format!(
                    "product {product_id} is limited to {limit} units per member; you may still buy {remaining}"
                ),
                ProblemExtensions {
                    product_id: Some(product_id),
                    remaining_allowance: Some(remaining),
                    ..Default::default()
                },
            ),
        }
    }
}

/// What the member step did. An `Err` from it is no answer: the order may or may not exist.
enum MemberStep {
    /// The order of this call exists now.
    Written(ScriptReply),
    /// No order of this call was written (a replay, a reused id or key, a refusal).
    Refused(ScriptReply),
    /// Refused because the holds' deadline had passed by the member node's clock.
    Lapsed,
}

impl MemberStep {
    /// The client's answer: the script's reply, or a retryable 503 when the holds had lapsed.
    fn answer(self) -> Result<ScriptReply, ApiError> {
        match self {
            MemberStep::Written(reply) | MemberStep::Refused(reply) => Ok(reply),
            MemberStep::Lapsed => Err(ApiError::retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "the stock holds lapsed before the order was written; retry",
                std::time::Duration::from_secs(1),
            )),
        }
    }
}

/// The member step.
async fn member_step(
    store: Store<'_>,
    req: &Reserve,
    items: Vec<PricedItem>,
    hold_deadline_ms: i64,
) -> Result<MemberStep, ApiError> {
    let call = OrderReserve {
        member_id: req.member_id,
        order_id: req.order_id,
        idem: req.idem.clone(),
        items,
        reservation_ttl_ms: req.reservation_ttl_ms,
        hold_deadline_ms,
        event_id: req.event_id.clone(),
    };
    let reply = store.scripts.invoke(store.redis, store.keys, &call).await?;
    Ok(match reply {
        ScriptReply::Refused { status: 503, .. } => {
            metrics::counter!("flashsale_hold_lapsed_total").increment(1);
            MemberStep::Lapsed
        }
        ScriptReply::Ok { .. } => MemberStep::Written(reply),
        // A replay is usually an earlier request's answer (its own order; this call's holds are
        // spare), but it is also what this very call gets when the client library resent it after a
        // reconnect and the first run had written the order: then the holds are that order's.
        ScriptReply::Replay { .. } => {
            let written: bool = store
                .redis
                .exists(store.keys.order(req.member_id, req.order_id))
                .await?;
            if written {
                MemberStep::Written(reply)
            } else {
                MemberStep::Refused(reply)
            }
        }
        other => MemberStep::Refused(other),
    })
}

/// Releases holds concurrently; a failure is logged and left to the orphan sweep.
async fn release_all(store: Store<'_>, holds: &[HoldRef]) {
    let results = join_all(holds.iter().map(|hold| async move {
        store
            .step(&StockRelease {
                hold: *hold,
                orphan_margin_ms: None,
            })
            .await
    }))
    .await;
    for (hold, result) in holds.iter().zip(results) {
        if let Err(e) = result {
            tracing::warn!(product_id = hold.product_id, order_id = hold.order_id, error = %e,
                "cannot release a hold now; the orphan sweep releases it after its deadline");
            metrics::counter!("flashsale_saga_errors_total").increment(1);
        }
    }
}

/// Which product-slot step follows an order event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductStep {
    /// order.reserved: the holds leave the pending index.
    Confirm,
    /// order.paid: the holds become sales.
    Commit,
    /// order.cancelled of an unpaid order, order.expired: stock back, holds gone.
    Release,
    /// order.cancelled of a paid order: stock back once per order.
    Return,
}

impl ProductStep {
    pub fn name(self) -> &'static str {
        match self {
            Self::Confirm => "hold_confirm",
            Self::Commit => "stock_commit",
            Self::Release => "stock_release",
            Self::Return => "stock_return",
        }
    }
}

/// Runs one product step for every item of an order, concurrently (each in its product's slot).
/// Every step is idempotent by order id; the first error is returned after all ran.
pub async fn product_steps(
    store: Store<'_>,
    step: ProductStep,
    member_id: i64,
    order_id: i64,
    items: &[OrderItemView],
) -> Result<(), fred::error::Error> {
    let results = join_all(items.iter().map(|item| async move {
        let hold = HoldRef {
            product_id: item.product_id,
            order_id,
            member_id,
        };
        match step {
            ProductStep::Confirm => store.step(&HoldConfirm { hold }).await,
            ProductStep::Commit => store.step(&StockCommit { hold }).await,
            ProductStep::Release => {
                store
                    .step(&StockRelease {
                        hold,
                        orphan_margin_ms: None,
                    })
                    .await
            }
            ProductStep::Return => {
                store
                    .step(&StockReturn {
                        hold,
                        quantity: item.quantity,
                    })
                    .await
            }
        }
    }))
    .await;
    results.into_iter().try_for_each(|r| r.map(drop))
}

/// Cancels an order: the member step, then the stock back inline (release or return).
pub async fn cancel(
    store: Store<'_>,
    member_id: i64,
    order_id: i64,
    idem: Idem,
    popular_day: String,
    event_id: String,
) -> Result<ScriptReply, ApiError> {
    let call = OrderCancel {
        member_id,
        order_id,
        idem,
        popular_day,
        event_id,
    };
    let reply = store.scripts.invoke(store.redis, store.keys, &call).await?;
    if let ScriptReply::Ok { body, .. } = &reply {
        match serde_json::from_str::<crate::domain::OrderView>(body) {
            Ok(order) => {
                // Only pay sets paid_at: a cancelled order with one was paid.
                let step = if order.paid_at.is_some() {
                    ProductStep::Return
                } else {
                    ProductStep::Release
                };
                if let Err(e) = product_steps(store, step, member_id, order_id, &order.items).await
                {
                    // Answered anyway: the order is cancelled; the saga worker completes the stock
                    // from the order.cancelled event.
                    tracing::warn!(order_id, error = %e, "stock not given back inline; the saga worker completes it");
                    metrics::counter!("flashsale_saga_errors_total").increment(1);
                }
            }
            Err(e) => tracing::error!(order_id, error = %e, "cancel reply is not an order"),
        }
    }
    Ok(reply)
}

/// Expires one order if due: the member step, then its holds released inline. Returns the member
/// step's outcome (`expired`, `not_reserved`, `gone`, `not_due`).
pub async fn expire(
    store: Store<'_>,
    partition: Partition,
    order_id: i64,
    event_id: String,
) -> anyhow::Result<String> {
    let call = OrderExpire {
        partition,
        order_id,
        event_id,
    };
    let outcome = store.step(&call).await?;
    if outcome == "expired" {
        metrics::counter!("flashsale_orders_total", "status" => "EXPIRED").increment(1);
        // The items never change; read them after the step (the expire reply is a bare outcome).
        let fields: Vec<Option<String>> = store
            .redis
            .hmget(
                store.keys.order_in(partition, order_id),
                vec!["member_id", "items"],
            )
            .await?;
        let member_id = fields
            .first()
            .cloned()
            .flatten()
            .and_then(|m| m.parse::<i64>().ok());
        let items = fields
            .get(1)
            .cloned()
            .flatten()
            .and_then(|i| serde_json::from_str::<Vec<OrderItemView>>(&i).ok());
        match (member_id, items) {
            (Some(member_id), Some(items)) => {
                if let Err(e) =
                    product_steps(store, ProductStep::Release, member_id, order_id, &items).await
                {
                    tracing::warn!(order_id, error = %e, "stock not released inline; the saga worker completes it");
                    metrics::counter!("flashsale_saga_errors_total").increment(1);
                }
            }
            _ => tracing::error!(order_id, "expired order without member or items"),
        }
    }
    Ok(outcome)
}

/// What one orphan sweep round did in a partition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OrphanSweep {
    /// Holds past deadline + margin looked at.
    pub due: usize,
    /// Released: no order was ever written for them.
    pub released: usize,
    /// Confirmed: their order exists (the saga worker's confirm had not run yet).
    pub confirmed: usize,
}

/// Releases one partition's orphaned holds (see the module doc). The due list and the release both
/// judge time by the product node's clock, and the order is looked up only after the hold is due: by
/// then no member step can still write the order (it refuses after the deadline by its own clock,
/// which the margin keeps behind).
pub async fn sweep_orphan_holds(
    store: Store<'_>,
    partition: Partition,
) -> anyhow::Result<OrphanSweep> {
    let due: Vec<String> = store
        .run(&HoldsDue {
            partition,
            margin_ms: HOLD_MARGIN_MS,
            limit: SWEEP_BATCH,
        })
        .await?
        .into_array()
        .into_iter()
        .filter_map(|v| v.as_string())
        .collect();
    let mut sweep = OrphanSweep {
        due: due.len(),
        ..Default::default()
    };
    let mut orders: HashMap<(i64, i64), bool> = HashMap::new();
    for entry in &due {
        let Some(hold) = HoldRef::parse(entry) else {
            tracing::error!(entry = %entry, "unparsable pending hold; dropped");
            let _: i64 = store
                .redis
                .zrem(store.keys.holds_pending(partition), entry.as_str())
                .await?;
            continue;
        };
        let key = (hold.member_id, hold.order_id);
        let exists = match orders.get(&key) {
            Some(exists) => *exists,
            None => {
                let n: i64 = store
                    .redis
                    .exists(store.keys.order(hold.member_id, hold.order_id))
                    .await?;
                orders.insert(key, n == 1);
                n == 1
            }
        };
        if exists {
            if store.step(&HoldConfirm { hold }).await? == "confirmed" {
                sweep.confirmed += 1;
            }
        } else if store
            .step(&StockRelease {
                hold,
                orphan_margin_ms: Some(HOLD_MARGIN_MS),
            })
            .await?
            == "released"
        {
            sweep.released += 1;
            tracing::info!(
                product_id = hold.product_id,
                order_id = hold.order_id,
                "orphaned hold released"
            );
            metrics::counter!("flashsale_orphan_holds_released_total").increment(1);
        }
    }
    Ok(sweep)
}
