//! The hot path behind one interface. Handlers parse the request, call one method here and turn its
//! answer into HTTP; which implementation answers is chosen once at start (`HOT_PATH`):
//!
//! - `RedisScripts` (the product): each step one atomic Lua script in one slot, sagas across owners
//!   (src/orders.rs, src/signup.rs), sold-out markers and the sale-window cache in front of them;
//! - `RowLocks` (the baseline this project replaces, benchmarks only): MySQL transactions with
//!   `SELECT ... FOR UPDATE`.
//!
//! A mutation answers with the finished response (`Response`): a script's reply carries its own status,
//! problem and replay headers, and the baseline words its answers the same way.

mod redis_scripts;
mod row_locks;

use std::sync::Arc;

use async_trait::async_trait;
use axum::response::Response;

use crate::config::HotPathKind;
use crate::domain::{CouponView, NewCoupon, NewProduct, OrderView, ProductView, RulesPatch};
use crate::error::ApiResult;
use crate::scripts::calls::Idem;
use crate::state::{AppState, Now};

pub use redis_scripts::{create_product_in_redis, load_coupon, load_products, RedisScripts};
pub use row_locks::RowLocks;

/// What the handlers ask of the store that takes the sale. Every method gets the shared state
/// explicitly; implementations hold nothing of their own.
#[async_trait]
pub trait HotPath: Send + Sync {
    async fn create_product(
        &self,
        state: &AppState,
        id: i64,
        product: NewProduct,
    ) -> ApiResult<Response>;
    async fn set_product_rules(
        &self,
        state: &AppState,
        id: i64,
        patch: RulesPatch,
    ) -> ApiResult<Response>;
    async fn add_stock(&self, state: &AppState, id: i64, add: i64) -> ApiResult<Response>;
    /// The product; with a member, `remaining_allowance` under a per-member limit.
    async fn product(
        &self,
        state: &AppState,
        id: i64,
        member: Option<i64>,
    ) -> ApiResult<ProductView>;

    async fn create_coupon(
        &self,
        state: &AppState,
        id: i64,
        coupon: NewCoupon,
        now: Now,
    ) -> ApiResult<Response>;
    async fn add_coupon_quantity(&self, state: &AppState, id: i64, add: i64)
        -> ApiResult<Response>;
    async fn coupon(&self, state: &AppState, id: i64) -> ApiResult<CouponView>;
    async fn issue_coupon(
        &self,
        state: &AppState,
        member: i64,
        coupon: i64,
        idem: Idem,
    ) -> ApiResult<Response>;

    /// Reserves every item or none; `items` are (product, quantity), parsed and merged.
    async fn create_order(
        &self,
        state: &AppState,
        member: i64,
        idem: Idem,
        items: Vec<(i64, i64)>,
    ) -> ApiResult<Response>;
    async fn pay_order(
        &self,
        state: &AppState,
        member: i64,
        order_id: i64,
        idem: Idem,
        coupon: Option<i64>,
    ) -> ApiResult<Response>;
    async fn cancel_order(
        &self,
        state: &AppState,
        member: i64,
        order_id: i64,
        idem: Idem,
    ) -> ApiResult<Response>;
    /// The member's order (another member's is not found).
    async fn order(&self, state: &AppState, member: i64, order_id: i64) -> ApiResult<OrderView>;

    async fn balance(&self, state: &AppState, member: i64) -> ApiResult<i64>;
    async fn charge_points(
        &self,
        state: &AppState,
        member: i64,
        idem: Idem,
        amount: i64,
    ) -> ApiResult<Response>;
    /// Creates (or finds) the members of these addresses, all with the one password hash and this
    /// balance; their ids in the order of `emails`.
    async fn seed_members(
        &self,
        state: &AppState,
        emails: Vec<String>,
        password_hash: String,
        balance: i64,
    ) -> ApiResult<Vec<i64>>;
}

/// The implementation `HOT_PATH` names.
pub fn choose(kind: HotPathKind) -> Arc<dyn HotPath> {
    match kind {
        HotPathKind::Redis => Arc::new(RedisScripts),
        HotPathKind::DbLock => Arc::new(RowLocks),
    }
}
