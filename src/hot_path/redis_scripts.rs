//! The product's hot path: Redis Lua scripts, one atomic step in one slot each. In front of the
//! scripts sit the engine's own refusals (sale windows before the opening, sold-out markers after the
//! sell-out); neither ever grants.

use std::collections::HashMap;

use async_trait::async_trait;
use axum::response::{IntoResponse, Response};
use fred::prelude::*;
use futures::{StreamExt, TryStreamExt};

use super::HotPath;
use crate::domain::{
    CouponView, NewCoupon, NewProduct, OrderView, ProductView, RulesPatch, MAX_BALANCE,
    MAX_COUPON_QUANTITY, MAX_STOCK,
};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::IdempotencyKey;
use crate::ids::Entity;
use crate::orders::Store;
use crate::popular::POPULAR_DAY_TTL_SECS;
use crate::scripts::calls::{
    CouponCreate, CouponIssue, CouponQuantityAdd, Idem, OrderPay, PointsCharge, ProductCreate,
    ProductRulesSet, ProductStockAdd,
};
use crate::scripts::{Script, ScriptCall, ScriptReply};
use crate::sold_out::Item;
use crate::state::{event_id, rfc3339, rfc3339_ms, AppState, Now};

/// Redis Lua scripts (`HOT_PATH=redis`, the default).
pub struct RedisScripts;

fn count_transition(reply: &ScriptReply, status: &'static str) {
    if matches!(reply, ScriptReply::Ok { .. }) {
        metrics::counter!("flashsale_orders_total", "status" => status).increment(1);
    }
}

#[async_trait]
impl HotPath for RedisScripts {
    async fn create_product(
        &self,
        state: &AppState,
        id: i64,
        product: NewProduct,
    ) -> ApiResult<Response> {
        let call = ProductCreate {
            product_id: id,
            name: product.name,
            price: product.price,
            stock: product.stock,
            rules: product.rules,
            created_at: Now::read().rfc3339(),
            event_id: event_id(),
        };
        Ok(create_product_in_redis(state.store(), &call)
            .await?
            .into_response())
    }

    async fn set_product_rules(
        &self,
        state: &AppState,
        id: i64,
        patch: RulesPatch,
    ) -> ApiResult<Response> {
        let now = Now::read();
        let call = ProductRulesSet {
            product_id: id,
            starts_ms: patch.starts_ms,
            ends_ms: patch.ends_ms,
            per_member_limit: patch.per_member_limit,
            now_ms: now.ms(),
            now: now.rfc3339(),
            event_id: event_id(),
        };
        let reply = state
            .scripts
            .invoke(&state.redis, &state.keys, &call)
            .await?;
        if matches!(reply, ScriptReply::Ok { .. }) {
            // Every engine (this one too) forgets the window it cached for this product.
            state.caches.forget(Item::Product(id));
            crate::invalidations::publish_product_changed(
                &state.redis,
                &state.keys.invalidations(),
                id,
            )
            .await;
        }
        Ok(reply.into_response())
    }

    async fn add_stock(&self, state: &AppState, id: i64, add: i64) -> ApiResult<Response> {
        let now = Now::read();
        let call = ProductStockAdd {
            product_id: id,
            add,
            stock_limit: MAX_STOCK,
            now_ms: now.ms(),
            now: now.rfc3339(),
            event_id: event_id(),
        };
        Ok(give_back(state, &call).await?.into_response())
    }

    async fn product(
        &self,
        state: &AppState,
        id: i64,
        member: Option<i64>,
    ) -> ApiResult<ProductView> {
        let mut product = load_products(state, &[id])
            .await?
            .remove(&id)
            .ok_or_else(|| ApiError::NotFound("product not found".into()))?;
        if let (Some(member), Some(limit)) = (member, product.per_member_limit) {
            let live: Option<i64> = state
                .redis
                .hget(state.keys.product_bought(id), member)
                .await?;
            product.remaining_allowance = Some((limit - live.unwrap_or(0)).max(0));
        }
        Ok(product)
    }

    async fn create_coupon(
        &self,
        state: &AppState,
        id: i64,
        coupon: NewCoupon,
        now: Now,
    ) -> ApiResult<Response> {
        let call = CouponCreate {
            coupon_id: id,
            name: coupon.name,
            discount_type: coupon.discount_type.to_string(),
            discount_value: coupon.discount_value,
            total_quantity: coupon.total_quantity,
            valid_from_ms: coupon.valid_from.timestamp_millis(),
            valid_from: rfc3339(coupon.valid_from),
            valid_until_ms: coupon.valid_until.timestamp_millis(),
            valid_until: rfc3339(coupon.valid_until),
            now: now.rfc3339(),
            event_id: event_id(),
        };
        let reply = state
            .scripts
            .invoke(&state.redis, &state.keys, &call)
            .await?;
        if matches!(reply, ScriptReply::Ok { .. }) {
            // The catalog index (admin path only) lives in its own slot: written after the coupon.
            let _: i64 = state
                .redis
                .zadd(
                    state.keys.coupons(),
                    None,
                    None,
                    false,
                    false,
                    (id as f64, id.to_string()),
                )
                .await?;
        }
        Ok(reply.into_response())
    }

    async fn add_coupon_quantity(
        &self,
        state: &AppState,
        id: i64,
        add: i64,
    ) -> ApiResult<Response> {
        let now = Now::read();
        let call = CouponQuantityAdd {
            coupon_id: id,
            add,
            quantity_limit: MAX_COUPON_QUANTITY,
            now_ms: now.ms(),
            now: now.rfc3339(),
            event_id: event_id(),
        };
        Ok(give_back(state, &call).await?.into_response())
    }

    async fn coupon(&self, state: &AppState, id: i64) -> ApiResult<CouponView> {
        load_coupon(state, id)
            .await?
            .ok_or_else(|| ApiError::NotFound("coupon not found".into()))
    }

    async fn issue_coupon(
        &self,
        state: &AppState,
        member: i64,
        coupon: i64,
        idem: Idem,
    ) -> ApiResult<Response> {
        let item = Item::Coupon(coupon);
        if crate::sold_out::refused_by_marker(state, item, 1, || {
            idem.digest
                .as_deref()
                .map(|digest| state.keys.coupon_idempotency(coupon, member, digest))
        })
        .await?
        {
            return Ok(item.refusal().into_response());
        }
        let ticket = state.caches.sold_out.ticket(item);
        let call = CouponIssue {
            coupon_id: coupon,
            member_id: member,
            idem,
            event_id: event_id(),
        };
        let reply = state
            .scripts
            .invoke(&state.redis, &state.keys, &call)
            .await?;
        if matches!(&reply, ScriptReply::Refused { code, .. } if code == "COUPON_SOLD_OUT") {
            state.caches.sold_out.note(ticket, 0);
        }
        Ok(reply.into_response())
    }

    async fn create_order(
        &self,
        state: &AppState,
        member: i64,
        idem: Idem,
        items: Vec<(i64, i64)>,
    ) -> ApiResult<Response> {
        // The crowd before the opening second: answered from the window Redis last refused with. Not
        // executed, so not stored under the Idempotency-Key.
        if let Some(closed) = state
            .caches
            .windows
            .closed(items.iter().map(|(product, _)| *product), Now::read().ms())
        {
            metrics::counter!("flashsale_sale_rule_refusals_total", "code" => closed.code(), "answered_by" => "engine")
                .increment(1);
            return Ok(closed.reply().into_response());
        }
        // The herd after the sell-out: a single-product order for more than the units Redis last
        // reported (src/sold_out.rs). Also not executed, so not stored.
        if let [(product, quantity)] = items[..] {
            let item = Item::Product(product);
            let record = || {
                idem.digest
                    .as_deref()
                    .map(|digest| state.keys.idempotency(member, digest))
            };
            if crate::sold_out::refused_by_marker(state, item, quantity, record).await? {
                return Ok(item.refusal().into_response());
            }
        }
        let order_id = state.ids.next(Entity::Order).await?;
        // The member step stamps the order with Redis time and expires it the TTL after that.
        let request = crate::orders::Reserve {
            member_id: member,
            order_id,
            idem,
            items,
            reservation_ttl_ms: state.settings.reservation_ttl_secs.saturating_mul(1000) as i64,
            event_id: event_id(),
        };
        let reply = crate::orders::reserve(state.store(), &request, Some(&state.caches)).await?;
        reply.note_entity_conflict(Script::OrderReserve, order_id);
        count_transition(&reply, "RESERVED");
        Ok(reply.into_response())
    }

    async fn pay_order(
        &self,
        state: &AppState,
        member: i64,
        order_id: i64,
        idem: Idem,
        coupon: Option<i64>,
    ) -> ApiResult<Response> {
        // The popular-ranking bucket is the engine's day; every time decision is the script's (Redis time).
        let call = OrderPay {
            member_id: member,
            order_id,
            idem,
            coupon_id: coupon,
            day: Now::read().day(),
            popular_day_ttl_secs: POPULAR_DAY_TTL_SECS,
            event_id: event_id(),
        };
        if let Some(coupon_id) = coupon {
            // Paying right after the issue can beat the saga step that fills the wallet (its lag is
            // milliseconds): complete the step here first. It is idempotent; the worker's run then
            // changes nothing.
            let in_wallet: bool = state
                .redis
                .hexists(state.keys.member_coupons(member), coupon_id.to_string())
                .await?;
            if !in_wallet {
                crate::pipeline::saga::complete_wallet(state, member, coupon_id)
                    .await
                    .map_err(ApiError::Internal)?;
            }
        }
        let reply = state
            .scripts
            .invoke(&state.redis, &state.keys, &call)
            .await?;
        count_transition(&reply, "PAID");
        Ok(reply.into_response())
    }

    async fn cancel_order(
        &self,
        state: &AppState,
        member: i64,
        order_id: i64,
        idem: Idem,
    ) -> ApiResult<Response> {
        // The member step, then the stock back in each product's slot (inline, so a product read right
        // after shows it; the saga worker completes it after a crash).
        let reply = crate::orders::cancel(
            state.store(),
            member,
            order_id,
            idem,
            Now::read().day(),
            event_id(),
        )
        .await?;
        count_transition(&reply, "CANCELLED");
        Ok(reply.into_response())
    }

    async fn order(&self, state: &AppState, member: i64, order_id: i64) -> ApiResult<OrderView> {
        let h: HashMap<String, String> = state
            .redis
            .hgetall(state.keys.order(member, order_id))
            .await?;
        order_from_hash(&h)
            .filter(|o| o.member_id == member)
            .ok_or_else(|| ApiError::NotFound("order not found".into()))
    }

    async fn balance(&self, state: &AppState, member: i64) -> ApiResult<i64> {
        let balance: Option<i64> = state
            .redis
            .hget(state.keys.member(member), "balance")
            .await?;
        balance.ok_or_else(|| ApiError::NotFound("member not found".into()))
    }

    async fn charge_points(
        &self,
        state: &AppState,
        member: i64,
        idem: Idem,
        amount: i64,
    ) -> ApiResult<Response> {
        let call = PointsCharge {
            member_id: member,
            idem,
            amount,
            balance_limit: MAX_BALANCE,
            event_id: event_id(),
        };
        let reply = state
            .scripts
            .invoke(&state.redis, &state.keys, &call)
            .await?;
        Ok(reply.into_response())
    }

    async fn seed_members(
        &self,
        state: &AppState,
        emails: Vec<String>,
        password_hash: String,
        balance: i64,
    ) -> ApiResult<Vec<i64>> {
        futures::stream::iter(emails)
            .map(|email| {
                let hash = password_hash.clone();
                async move {
                    let (id, reply) =
                        crate::signup::register_member(state, &email, "seeded member", &hash)
                            .await?;
                    let id = match reply {
                        ScriptReply::Ok { .. } => id,
                        ScriptReply::Refused { ref code, .. } if code == "EMAIL_TAKEN" => state
                            .redis
                            .get::<Option<i64>, _>(state.keys.email(&email))
                            .await?
                            .unwrap_or(id),
                        other => {
                            return Err(ApiError::Internal(anyhow::anyhow!(
                                "seeding {email}: {other:?}"
                            )))
                        }
                    };
                    if balance > 0 {
                        // Keyed per member, so seeding the same prefix again does not charge twice.
                        let call = PointsCharge {
                            member_id: id,
                            idem: Idem {
                                digest: Some(IdempotencyKey::internal("seed-balance").digest()),
                                fingerprint: format!("seed:{balance}"),
                            },
                            amount: balance,
                            balance_limit: MAX_BALANCE,
                            event_id: event_id(),
                        };
                        state
                            .scripts
                            .invoke(&state.redis, &state.keys, &call)
                            .await?;
                    }
                    Ok::<_, ApiError>(id)
                }
            })
            .buffered(64)
            .try_collect()
            .await
    }
}

/// Runs a call that gives units or coupons back (`ScriptCall::gives_back`). Its script told every
/// engine on the invalidation channel; this one forgets its marker and cached window at once, so its
/// next answer sees what came back.
async fn give_back<C: ScriptCall>(state: &AppState, call: &C) -> ApiResult<ScriptReply> {
    let reply = state
        .scripts
        .invoke(&state.redis, &state.keys, call)
        .await?;
    if let (ScriptReply::Ok { .. }, Some(item)) = (&reply, call.gives_back()) {
        state.caches.forget(item);
    }
    Ok(reply)
}

/// Creates a product in Redis as two single-slot steps: the listing index entry first (its own
/// `{catalog}` slot is not the product's), then product_create. A crash in between leaves an id
/// without a product, which every reader of the index skips (`list`, the stock gauges) and
/// rebuild-redis drops; the other order could leave a product missing from the listing. A refused
/// create (CONFLICT: the id is another product's) leaves the index as it was: that product's entry.
pub async fn create_product_in_redis(
    store: Store<'_>,
    call: &ProductCreate,
) -> ApiResult<ScriptReply> {
    let id = call.product_id;
    let _: i64 = store
        .redis
        .zadd(
            store.keys.products(),
            None,
            None,
            false,
            false,
            (id as f64, id.to_string()),
        )
        .await?;
    store.scripts.invoke(store.redis, store.keys, call).await
}

pub async fn load_products(state: &AppState, ids: &[i64]) -> ApiResult<HashMap<i64, ProductView>> {
    let reads = ids.iter().map(|id| {
        let key = state.keys.product(*id);
        async move {
            state
                .redis
                .hmget::<Vec<Option<String>>, _, _>(
                    key,
                    vec![
                        "id",
                        "name",
                        "price",
                        "stock",
                        "sale_starts_ms",
                        "sale_ends_ms",
                        "per_member_limit",
                    ],
                )
                .await
        }
    });
    let rows = futures::future::try_join_all(reads).await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| product_from_fields(&row))
        .map(|p| (p.id, p))
        .collect())
}

fn product_from_fields(row: &[Option<String>]) -> Option<ProductView> {
    let get = |i: usize| row.get(i).cloned().flatten();
    let number = |i: usize| get(i).and_then(|v| v.parse::<i64>().ok());
    Some(ProductView {
        id: get(0)?.parse().ok()?,
        name: get(1)?,
        price: get(2)?.parse().ok()?,
        stock: get(3)?.parse().ok()?,
        sale_starts_at: number(4).map(rfc3339_ms),
        sale_ends_at: number(5).map(rfc3339_ms),
        per_member_limit: number(6),
        remaining_allowance: None,
    })
}

pub async fn load_coupon(state: &AppState, id: i64) -> ApiResult<Option<CouponView>> {
    let h: HashMap<String, String> = state.redis.hgetall(state.keys.coupon(id)).await?;
    Ok(coupon_from_hash(&h))
}

fn coupon_from_hash(h: &HashMap<String, String>) -> Option<CouponView> {
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
    Some(CouponView {
        id: num("id")?,
        name: h.get("name")?.clone(),
        discount_type: h.get("discount_type")?.clone(),
        discount_value: num("discount_value")?,
        total_quantity: num("total_quantity")?,
        remaining: num("remaining")?,
        valid_from: h.get("valid_from")?.clone(),
        valid_until: h.get("valid_until")?.clone(),
    })
}

fn order_from_hash(h: &HashMap<String, String>) -> Option<OrderView> {
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
    let opt = |k: &str| h.get(k).filter(|v| !v.is_empty()).cloned();
    Some(OrderView {
        id: num("id")?,
        member_id: num("member_id")?,
        status: h.get("status")?.clone(),
        items: serde_json::from_str(h.get("items")?).ok()?,
        total_amount: num("total_amount")?,
        discount_amount: num("discount_amount").unwrap_or(0),
        paid_amount: num("paid_amount").unwrap_or(0),
        coupon_id: num("coupon_id"),
        expires_at: h.get("expires_at")?.clone(),
        created_at: h.get("created_at")?.clone(),
        paid_at: opt("paid_at"),
        closed_at: opt("closed_at"),
    })
}
