//! One typed call per Lua script: the struct names every argument, and `keys`/`args` build KEYS and
//! ARGV in the order the script's header documents. This is the only place that knows those orders;
//! handlers, the expiry sweep and the tests fill in a struct.

use crate::domain::{RuleChange, SaleRules};
use crate::idempotency::RECORD_TTL_SECS;
use crate::keys::Keys;
use crate::partition::Partition;
use crate::scripts::Script;
use crate::sold_out::Item;

/// A script invocation: which script, and its KEYS and ARGV.
pub trait ScriptCall {
    const SCRIPT: Script;
    fn keys(&self, keys: &Keys) -> Vec<String>;
    /// ARGV. `keys` for what the layout names that is not a key (the invalidation channel).
    fn args(&self, keys: &Keys) -> Vec<String>;
    /// The item this call gives units or coupons back to when it writes (its script publishes the
    /// item on the invalidation channel; the engine that ran it forgets its marker at once).
    fn gives_back(&self) -> Option<Item> {
        None
    }
}

/// The idempotency side of a member's mutation: the record's key digest (none when the request
/// carried no Idempotency-Key) and the request fingerprint.
#[derive(Clone, Debug)]
pub struct Idem {
    /// `IdempotencyKey::digest()`; None: no record is kept.
    pub digest: Option<String>,
    /// Empty when `digest` is None (nothing to compare it with).
    pub fingerprint: String,
}

impl Idem {
    /// KEYS entry: the record key, or a placeholder in the member's slot the script leaves alone.
    fn key(&self, keys: &Keys, member_id: i64) -> String {
        keys.idempotency(member_id, self.digest.as_deref().unwrap_or("none"))
    }

    fn ttl() -> String {
        RECORD_TTL_SECS.to_string()
    }
}

/// Names one sign-up's claim of one e-mail address (the address-slot steps take it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClaimRef {
    pub member_id: i64,
    /// Normalized (`parse_email`).
    pub email: String,
}

impl ClaimRef {
    fn args(&self) -> Vec<String> {
        vec![self.member_id.to_string(), self.email.clone()]
    }

    /// The pending-index entry, `member_id:email`.
    pub fn entry(&self) -> String {
        format!("{}:{}", self.member_id, self.email)
    }

    /// Parses a pending-index entry (the id is digits, so the first `:` ends it; the address may
    /// hold more).
    pub fn parse(entry: &str) -> Option<Self> {
        let (id, email) = entry.split_once(':')?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || email.is_empty() {
            return None;
        }
        Some(Self {
            member_id: id.parse().ok()?,
            email: email.to_string(),
        })
    }

    /// The partition of the address: its key and its pending index live there.
    pub fn partition(&self) -> Partition {
        Partition::of_text(&self.email)
    }
}

/// lua/email_claim.lua: step 1 of a sign-up, in the address's slot.
pub struct EmailClaim {
    pub claim: ClaimRef,
    pub ttl_ms: i64,
}

impl ScriptCall for EmailClaim {
    const SCRIPT: Script = Script::EmailClaim;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.email(&self.claim.email),
            keys.email_claims(self.claim.partition()),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        let mut a = self.claim.args();
        a.push(self.ttl_ms.to_string());
        a
    }
}

/// lua/member_signup.lua: step 2 of a sign-up, in the member's slot.
pub struct MemberSignup<'a> {
    pub member_id: i64,
    pub email: &'a str,
    pub name: &'a str,
    pub password_hash: &'a str,
    pub event_id: String,
    /// The claim's deadline (Redis ms) email_claim answered: refused after it.
    pub claim_deadline_ms: i64,
}

impl ScriptCall for MemberSignup<'_> {
    const SCRIPT: Script = Script::MemberSignup;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.member(self.member_id),
            keys.outbox(Partition::of_id(self.member_id)),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![
            self.member_id.to_string(),
            self.email.to_string(),
            self.name.to_string(),
            self.password_hash.to_string(),
            self.event_id.clone(),
            self.claim_deadline_ms.to_string(),
        ]
    }
}

/// lua/email_confirm.lua (address slot).
pub struct EmailConfirm {
    pub claim: ClaimRef,
}

impl ScriptCall for EmailConfirm {
    const SCRIPT: Script = Script::EmailConfirm;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![keys.email_claims(self.claim.partition())]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        self.claim.args()
    }
}

/// lua/email_release.lua (address slot).
pub struct EmailRelease {
    pub claim: ClaimRef,
    /// The sweep's margin: release only a claim past deadline + margin. None: at once (a refused
    /// member step).
    pub sweep_margin_ms: Option<i64>,
}

impl ScriptCall for EmailRelease {
    const SCRIPT: Script = Script::EmailRelease;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.email(&self.claim.email),
            keys.email_claims(self.claim.partition()),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        let mut a = self.claim.args();
        a.push(
            self.sweep_margin_ms
                .map(|m| m.to_string())
                .unwrap_or_default(),
        );
        a
    }
}

/// lua/email_claims_due.lua (one partition's pending-claims index; read only).
pub struct EmailClaimsDue {
    pub partition: Partition,
    pub margin_ms: i64,
    pub limit: i64,
}

impl ScriptCall for EmailClaimsDue {
    const SCRIPT: Script = Script::EmailClaimsDue;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![keys.email_claims(self.partition)]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![self.margin_ms.to_string(), self.limit.to_string()]
    }
}

/// lua/points_charge.lua
pub struct PointsCharge {
    pub member_id: i64,
    pub idem: Idem,
    pub amount: i64,
    pub balance_limit: i64,
    pub event_id: String,
}

impl ScriptCall for PointsCharge {
    const SCRIPT: Script = Script::PointsCharge;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.member(self.member_id),
            self.idem.key(keys, self.member_id),
            keys.outbox(Partition::of_id(self.member_id)),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![
            self.idem.fingerprint.clone(),
            Idem::ttl(),
            self.amount.to_string(),
            self.balance_limit.to_string(),
            self.event_id.clone(),
        ]
    }
}

/// lua/product_create.lua (the listing index is its own step before it: src/routes/products.rs).
pub struct ProductCreate {
    pub product_id: i64,
    pub name: String,
    pub price: i64,
    pub stock: i64,
    pub rules: SaleRules,
    pub created_at: String,
    pub event_id: String,
}

fn optional(value: Option<i64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// ARGV form of a rule change in lua/product_rules_set.lua: 'keep', '' (clear) or the value.
fn change_arg(change: RuleChange) -> String {
    match change {
        RuleChange::Keep => "keep".into(),
        RuleChange::Clear => String::new(),
        RuleChange::Set(v) => v.to_string(),
    }
}

/// lua/product_rules_set.lua
pub struct ProductRulesSet {
    pub product_id: i64,
    pub starts_ms: RuleChange,
    pub ends_ms: RuleChange,
    pub per_member_limit: RuleChange,
    pub now_ms: i64,
    pub now: String,
    pub event_id: String,
}

impl ScriptCall for ProductRulesSet {
    const SCRIPT: Script = Script::ProductRulesSet;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.product(self.product_id),
            keys.product_ops(self.product_id),
            keys.outbox(Partition::of_id(self.product_id)),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![
            change_arg(self.starts_ms),
            change_arg(self.ends_ms),
            change_arg(self.per_member_limit),
            self.now_ms.to_string(),
            self.now.clone(),
            self.event_id.clone(),
        ]
    }
}

impl ScriptCall for ProductCreate {
    const SCRIPT: Script = Script::ProductCreate;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.product(self.product_id),
            keys.outbox(Partition::of_id(self.product_id)),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![
            self.product_id.to_string(),
            self.name.clone(),
            self.price.to_string(),
            self.stock.to_string(),
            self.created_at.clone(),
            self.event_id.clone(),
            optional(self.rules.starts_ms),
            optional(self.rules.ends_ms),
            optional(self.rules.per_member_limit),
        ]
    }
}

/// lua/product_stock_add.lua
pub struct ProductStockAdd {
    pub product_id: i64,
    pub add: i64,
    pub stock_limit: i64,
    pub now_ms: i64,
    pub now: String,
    pub event_id: String,
}

impl ScriptCall for ProductStockAdd {
    const SCRIPT: Script = Script::ProductStockAdd;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.product(self.product_id),
            keys.product_ops(self.product_id),
            keys.outbox(Partition::of_id(self.product_id)),
        ]
    }
    fn args(&self, keys: &Keys) -> Vec<String> {
        vec![
            self.add.to_string(),
            self.stock_limit.to_string(),
            self.now_ms.to_string(),
            self.now.clone(),
            self.event_id.clone(),
            keys.invalidations(),
        ]
    }
    fn gives_back(&self) -> Option<Item> {
        Some(Item::Product(self.product_id))
    }
}

/// lua/coupon_create.lua
pub struct CouponCreate {
    pub coupon_id: i64,
    pub name: String,
    pub discount_type: String,
    pub discount_value: i64,
    pub total_quantity: i64,
    pub valid_from_ms: i64,
    pub valid_from: String,
    pub valid_until_ms: i64,
    pub valid_until: String,
    pub now: String,
    pub event_id: String,
}

impl ScriptCall for CouponCreate {
    const SCRIPT: Script = Script::CouponCreate;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.coupon(self.coupon_id),
            keys.outbox(Partition::of_id(self.coupon_id)),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![
            self.coupon_id.to_string(),
            self.name.clone(),
            self.discount_type.clone(),
            self.discount_value.to_string(),
            self.total_quantity.to_string(),
            self.valid_from_ms.to_string(),
            self.valid_from.clone(),
            self.valid_until_ms.to_string(),
            self.valid_until.clone(),
            self.now.clone(),
            self.event_id.clone(),
        ]
    }
}

/// lua/coupon_issue.lua: decided in the coupon's slot alone (the wallet follows: CouponWalletAdd).
pub struct CouponIssue {
    pub coupon_id: i64,
    pub member_id: i64,
    pub idem: Idem,
    pub event_id: String,
}

impl ScriptCall for CouponIssue {
    const SCRIPT: Script = Script::CouponIssue;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.coupon(self.coupon_id),
            keys.coupon_holders(self.coupon_id),
            keys.coupon_idempotency(
                self.coupon_id,
                self.member_id,
                self.idem.digest.as_deref().unwrap_or("none"),
            ),
            keys.outbox(Partition::of_id(self.coupon_id)),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![
            self.idem.fingerprint.clone(),
            Idem::ttl(),
            if self.idem.digest.is_some() { "1" } else { "0" }.to_string(),
            self.member_id.to_string(),
            self.event_id.clone(),
        ]
    }
}

/// lua/coupon_quantity_add.lua (admin, coupon slot).
pub struct CouponQuantityAdd {
    pub coupon_id: i64,
    pub add: i64,
    pub quantity_limit: i64,
    pub now_ms: i64,
    pub now: String,
    pub event_id: String,
}

impl ScriptCall for CouponQuantityAdd {
    const SCRIPT: Script = Script::CouponQuantityAdd;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.coupon(self.coupon_id),
            keys.coupon_ops(self.coupon_id),
            keys.outbox(Partition::of_id(self.coupon_id)),
        ]
    }
    fn args(&self, keys: &Keys) -> Vec<String> {
        vec![
            self.add.to_string(),
            self.quantity_limit.to_string(),
            self.now_ms.to_string(),
            self.now.clone(),
            self.event_id.clone(),
            keys.invalidations(),
        ]
    }
    fn gives_back(&self) -> Option<Item> {
        Some(Item::Coupon(self.coupon_id))
    }
}

/// lua/coupon_wallet_add.lua: the member-side step of a coupon issue (src/pipeline/saga.rs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CouponWalletAdd {
    pub member_id: i64,
    pub coupon_id: i64,
    /// The wallet entry coupon_issue.lua put in its event.
    pub entry: String,
}

impl CouponWalletAdd {
    /// From a `coupon.issued` event's payload.
    pub fn from_issued(payload: &serde_json::Value) -> Option<Self> {
        Some(Self {
            member_id: payload.get("member_id")?.as_i64()?,
            coupon_id: payload.get("coupon_id")?.as_i64()?,
            entry: payload.get("wallet")?.as_str()?.to_string(),
        })
    }
}

impl ScriptCall for CouponWalletAdd {
    const SCRIPT: Script = Script::CouponWalletAdd;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.member(self.member_id),
            keys.member_coupons(self.member_id),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![self.coupon_id.to_string(), self.entry.clone()]
    }
}

/// An order item with the unit price its stock hold answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PricedItem {
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
}

/// lua/order_reserve.lua: the member-slot step of a reserve (the holds come first: StockHold).
pub struct OrderReserve {
    pub member_id: i64,
    pub order_id: i64,
    pub idem: Idem,
    /// Distinct products in item order, priced by their holds.
    pub items: Vec<PricedItem>,
    pub reservation_ttl_ms: i64,
    /// The earliest deadline of the order's holds (Redis ms): refused after it.
    pub hold_deadline_ms: i64,
    pub event_id: String,
}

impl ScriptCall for OrderReserve {
    const SCRIPT: Script = Script::OrderReserve;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        let partition = Partition::of_id(self.member_id);
        vec![
            keys.order(self.member_id, self.order_id),
            keys.reservations(partition),
            self.idem.key(keys, self.member_id),
            keys.outbox(partition),
            keys.member(self.member_id),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        let mut a = vec![
            self.idem.fingerprint.clone(),
            Idem::ttl(),
            self.member_id.to_string(),
            self.order_id.to_string(),
            self.reservation_ttl_ms.to_string(),
            self.event_id.clone(),
            self.hold_deadline_ms.to_string(),
        ];
        for item in &self.items {
            a.push(item.product_id.to_string());
            a.push(item.quantity.to_string());
            a.push(item.unit_price.to_string());
        }
        a
    }
}

/// lua/order_refuse.lua: records a reserve's refusal (a failed hold) in the member's slot.
pub struct OrderRefuse {
    pub member_id: i64,
    pub idem: Idem,
    pub status: u16,
    pub code: String,
    pub detail: String,
    /// Problem extension members as JSON (`ProblemExtensions::to_json`), or empty.
    pub extensions: String,
}

impl ScriptCall for OrderRefuse {
    const SCRIPT: Script = Script::OrderRefuse;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.member(self.member_id),
            self.idem.key(keys, self.member_id),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![
            self.idem.fingerprint.clone(),
            Idem::ttl(),
            self.status.to_string(),
            self.code.clone(),
            self.detail.clone(),
            self.extensions.clone(),
        ]
    }
}

/// Names one order's hold on one product (the product-slot steps take it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HoldRef {
    pub product_id: i64,
    pub order_id: i64,
    pub member_id: i64,
}

impl HoldRef {
    fn args(&self) -> Vec<String> {
        vec![
            self.product_id.to_string(),
            self.order_id.to_string(),
            self.member_id.to_string(),
        ]
    }

    /// The pending-index entry, `product:order:member`.
    pub fn entry(&self) -> String {
        format!("{}:{}:{}", self.product_id, self.order_id, self.member_id)
    }

    /// Parses a pending-index entry.
    pub fn parse(entry: &str) -> Option<Self> {
        let mut parts = entry.split(':').map(|p| p.parse::<i64>().ok());
        let hold = Self {
            product_id: parts.next()??,
            order_id: parts.next()??,
            member_id: parts.next()??,
        };
        parts.next().is_none().then_some(hold)
    }
}

/// lua/stock_hold.lua (product slot).
pub struct StockHold {
    pub hold: HoldRef,
    pub quantity: i64,
    pub ttl_ms: i64,
}

impl ScriptCall for StockHold {
    const SCRIPT: Script = Script::StockHold;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        let product = self.hold.product_id;
        vec![
            keys.product(product),
            keys.product_holds(product),
            keys.holds_pending(Partition::of_id(product)),
            keys.product_bought(product),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        let mut a = self.hold.args();
        a.push(self.quantity.to_string());
        a.push(self.ttl_ms.to_string());
        a
    }
}

/// lua/stock_release.lua (product slot).
pub struct StockRelease {
    pub hold: HoldRef,
    /// The orphan sweep's margin: release only a still-pending hold past deadline + margin.
    pub orphan_margin_ms: Option<i64>,
}

impl ScriptCall for StockRelease {
    const SCRIPT: Script = Script::StockRelease;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        let product = self.hold.product_id;
        vec![
            keys.product(product),
            keys.product_holds(product),
            keys.holds_pending(Partition::of_id(product)),
            keys.product_bought(product),
        ]
    }
    fn args(&self, keys: &Keys) -> Vec<String> {
        let mut a = self.hold.args();
        a.push(
            self.orphan_margin_ms
                .map(|m| m.to_string())
                .unwrap_or_default(),
        );
        a.push(keys.invalidations());
        a
    }
    fn gives_back(&self) -> Option<Item> {
        Some(Item::Product(self.hold.product_id))
    }
}

/// lua/stock_commit.lua (product slot).
pub struct StockCommit {
    pub hold: HoldRef,
}

impl ScriptCall for StockCommit {
    const SCRIPT: Script = Script::StockCommit;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        let product = self.hold.product_id;
        vec![
            keys.product_holds(product),
            keys.holds_pending(Partition::of_id(product)),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        self.hold.args()
    }
}

/// lua/stock_return.lua (product slot).
pub struct StockReturn {
    pub hold: HoldRef,
    pub quantity: i64,
}

impl ScriptCall for StockReturn {
    const SCRIPT: Script = Script::StockReturn;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        let product = self.hold.product_id;
        vec![
            keys.product(product),
            keys.product_holds(product),
            keys.holds_pending(Partition::of_id(product)),
            keys.product_returned(product),
            keys.product_bought(product),
        ]
    }
    fn args(&self, keys: &Keys) -> Vec<String> {
        let mut a = self.hold.args();
        a.push(self.quantity.to_string());
        a.push(keys.invalidations());
        a
    }
    fn gives_back(&self) -> Option<Item> {
        Some(Item::Product(self.hold.product_id))
    }
}

/// lua/hold_confirm.lua (product slot).
pub struct HoldConfirm {
    pub hold: HoldRef,
}

impl ScriptCall for HoldConfirm {
    const SCRIPT: Script = Script::HoldConfirm;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![keys.holds_pending(Partition::of_id(self.hold.product_id))]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        self.hold.args()
    }
}

/// lua/holds_due.lua (one partition's pending-holds index; read only).
pub struct HoldsDue {
    pub partition: Partition,
    pub margin_ms: i64,
    pub limit: i64,
}

impl ScriptCall for HoldsDue {
    const SCRIPT: Script = Script::HoldsDue;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![keys.holds_pending(self.partition)]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![self.margin_ms.to_string(), self.limit.to_string()]
    }
}

/// lua/order_pay.lua: the member's slot alone (the wallet entry carries the coupon's terms).
pub struct OrderPay {
    pub member_id: i64,
    pub order_id: i64,
    pub idem: Idem,
    pub coupon_id: Option<i64>,
    /// The popular-ranking bucket, YYYYMMDD.
    pub day: String,
    pub popular_day_ttl_secs: i64,
    pub event_id: String,
}

impl ScriptCall for OrderPay {
    const SCRIPT: Script = Script::OrderPay;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        let partition = Partition::of_id(self.member_id);
        vec![
            keys.order(self.member_id, self.order_id),
            keys.member(self.member_id),
            keys.member_coupons(self.member_id),
            keys.reservations(partition),
            keys.popular_day(partition, &self.day),
            self.idem.key(keys, self.member_id),
            keys.outbox(partition),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![
            self.idem.fingerprint.clone(),
            Idem::ttl(),
            self.member_id.to_string(),
            self.coupon_id.map(|c| c.to_string()).unwrap_or_default(),
            self.day.clone(),
            self.popular_day_ttl_secs.to_string(),
            self.event_id.clone(),
        ]
    }
}

/// lua/order_cancel.lua: the member-slot step of a cancel (the stock follows: StockRelease/StockReturn).
pub struct OrderCancel {
    pub member_id: i64,
    pub order_id: i64,
    pub idem: Idem,
    /// The engine's popular bucket, YYYYMMDD; the script takes a paid order's units back from the
    /// bucket of the day it was paid (same partition key, that day's date).
    pub popular_day: String,
    pub event_id: String,
}

impl ScriptCall for OrderCancel {
    const SCRIPT: Script = Script::OrderCancel;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        let partition = Partition::of_id(self.member_id);
        vec![
            keys.order(self.member_id, self.order_id),
            keys.member(self.member_id),
            keys.member_coupons(self.member_id),
            keys.reservations(partition),
            keys.popular_day(partition, &self.popular_day),
            self.idem.key(keys, self.member_id),
            keys.outbox(partition),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![
            self.idem.fingerprint.clone(),
            Idem::ttl(),
            self.member_id.to_string(),
            self.event_id.clone(),
        ]
    }
}

/// lua/order_expire.lua (the expiry sweep's member-slot step; replies a bare outcome string, not the
/// HTTP protocol; the stock follows: StockRelease).
pub struct OrderExpire {
    /// The partition of the order's member (the sweep finds orders per partition).
    pub partition: Partition,
    pub order_id: i64,
    pub event_id: String,
}

impl ScriptCall for OrderExpire {
    const SCRIPT: Script = Script::OrderExpire;
    fn keys(&self, keys: &Keys) -> Vec<String> {
        vec![
            keys.order_in(self.partition, self.order_id),
            keys.reservations(self.partition),
            keys.outbox(self.partition),
        ]
    }
    fn args(&self, _keys: &Keys) -> Vec<String> {
        vec![self.order_id.to_string(), self.event_id.clone()]
    }
}
