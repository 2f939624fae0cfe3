//! The five scenarios: what each seeds, what each goose user does in a loop, and what is checked at
//! the end through the API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use goose::prelude::*;
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::{id_str, int, Api, Member};
use crate::call::{call, call_idem, ctx, Req, Resp};
use crate::stats::{Class, Op};

#[derive(Serialize, Debug, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: &str, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            ok,
            detail: detail.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario parameters (the subcommands' own flags).

#[derive(clap::Args, Debug, Clone)]
pub struct CouponArgs {
    /// Members racing for the coupon.
    #[arg(long, default_value_t = 20_000)]
    pub members: usize,
    /// Coupons available.
    #[arg(long, default_value_t = 1_000)]
    pub quantity: i64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StockArgs {
    /// Members racing for the hot product.
    #[arg(long, default_value_t = 5_000)]
    pub members: usize,
    /// Units of the hot product.
    #[arg(long, default_value_t = 500)]
    pub stock: i64,
    #[arg(long, default_value_t = 1_000)]
    pub price: i64,
    /// Points each member starts with.
    #[arg(long, default_value_t = 100_000)]
    pub balance: i64,
}

/// The big sale: the success path. A product with more units than the run can sell, members who
/// can afford every order they make; every order is paid and every `cancel_every`-th paid order is
/// cancelled (refund, units back).
#[derive(clap::Args, Debug, Clone)]
pub struct BigSaleArgs {
    #[arg(long, default_value_t = 5_000)]
    pub members: usize,
    #[arg(long, default_value_t = 1_000_000)]
    pub stock: i64,
    #[arg(long, default_value_t = 1_000)]
    pub price: i64,
    #[arg(long, default_value_t = 100_000_000)]
    pub balance: i64,
    /// Cancel every N-th paid order (0: none).
    #[arg(long, default_value_t = 10)]
    pub cancel_every: i64,
}

impl BigSaleArgs {
    pub fn stock_args(&self) -> StockArgs {
        StockArgs {
            members: self.members,
            stock: self.stock,
            price: self.price,
            balance: self.balance,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ShopperArgs {
    #[arg(long, default_value_t = 2_000)]
    pub members: usize,
    #[arg(long, default_value_t = 30)]
    pub products: usize,
    /// Units of each product.
    #[arg(long, default_value_t = 100_000)]
    pub stock: i64,
    #[arg(long, default_value_t = 10_000_000)]
    pub balance: i64,
    /// Coupons (FIXED 500 off) shoppers may take and use; defaults to half the members.
    #[arg(long)]
    pub coupons: Option<i64>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PointsArgs {
    /// Hot members every user charges and pays on.
    #[arg(long, default_value_t = 4)]
    pub hot_members: usize,
    #[arg(long, default_value_t = 1_000_000)]
    pub balance: i64,
    /// Price of the product paid for (charges average the same amount).
    #[arg(long, default_value_t = 1_000)]
    pub price: i64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LimitedArgs {
    /// Members rushing for the limited product.
    #[arg(long, default_value_t = 2_000)]
    pub members: usize,
    /// Units of the product.
    #[arg(long, default_value_t = 1_000)]
    pub stock: i64,
    /// per_member_limit: units one member may hold in live (reserved or paid) orders.
    #[arg(long, default_value_t = 2)]
    pub limit: i64,
    #[arg(long, default_value_t = 1_000)]
    pub price: i64,
    /// Points each member starts with.
    #[arg(long, default_value_t = 100_000)]
    pub balance: i64,
    /// Seconds from the start of the timed part to the opening (sale_starts_at, rounded up to a
    /// whole second): members are refused SALE_NOT_STARTED until then.
    #[arg(long, default_value_t = 5)]
    pub open_delay: u64,
    /// Users acting for one member at once (consecutive picks of the pool go to the same member),
    /// so the per-member limit is raced, not only tried in turn.
    #[arg(long, default_value_t = 4)]
    pub burst: usize,
}

// ---------------------------------------------------------------------------------------------
// Shared data per scenario.

pub enum Data {
    Coupon(CouponData),
    Stock(StockData),
    Shopper(ShopperData),
    Points(PointsData),
    Limited(LimitedData),
}

pub struct CouponData {
    pub coupon_id: Value,
    pub issue_path: String,
    pub quantity: i64,
    pub issued: AtomicI64,
    pub ambiguous: AtomicI64,
}

pub struct StockData {
    pub product_path: String,
    pub order_body: Value,
    pub stock: i64,
    pub price: i64,
    /// Units in orders that were created (201).
    pub reserved: AtomicI64,
    pub paid_orders: AtomicI64,
    /// Every N-th paid order is cancelled (0: none; the big sale).
    pub cancel_every: i64,
    /// Units of the orders cancelled (given back).
    pub cancelled: AtomicI64,
    /// Points spent per member (refunds deducted).
    pub spent: Vec<AtomicI64>,
}

pub struct Product {
    pub id: Value,
    pub path: String,
    pub price: i64,
    pub stock: i64,
    /// Units held by orders (reserved or paid, not cancelled).
    pub held: AtomicI64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CouponState {
    None,
    SoldOut,
    Unused,
    /// Used by a paid order (by index into nothing: the order id is only logged).
    Used,
}

pub struct ShopperMember {
    pub coupon: CouponState,
    /// Coupon used by this paid order id, to release it on cancel.
    pub coupon_order: Option<String>,
}

#[derive(Clone)]
pub struct Abandoned {
    pub member: usize,
    pub order_id: String,
    pub items: Vec<(usize, i64)>,
}

pub struct ShopperData {
    pub products: Vec<Product>,
    pub coupon_id: Value,
    pub coupon_path: String,
    pub coupon_issue_path: String,
    pub coupon_quantity: i64,
    pub coupons_issued: AtomicI64,
    pub members: Vec<Mutex<ShopperMember>>,
    pub spent: Vec<AtomicI64>,
    pub abandoned: Mutex<Vec<Abandoned>>,
}

pub struct PointsData {
    pub product: Product,
    pub order_body: Value,
    /// Net change of each hot member's balance (charges - payments).
    pub delta: Vec<AtomicI64>,
}

/// An order the rush got a 201 for (once per answer: replays repeat ids, the checks dedupe them).
#[derive(Clone, Debug)]
pub struct PlacedOrder {
    pub member: usize,
    pub id: String,
    /// Units asked for (0 when unknown, as for orders the wrk twin saw).
    pub quantity: i64,
    /// When the client had the 201 in hand.
    pub received_at: DateTime<Utc>,
}

/// Counts of one (request, answer) before and after the opening instant.
pub type PhaseCounts = BTreeMap<String, [u64; 2]>;

pub struct LimitedData {
    /// Who drove the load: "goose" or "wrk" (the twin, checked by `limited-verify`).
    pub driver: &'static str,
    pub product_id: Value,
    pub product_path: String,
    pub stock: i64,
    pub limit: i64,
    pub price: i64,
    pub open_delay: u64,
    pub burst: usize,
    /// sale_starts_at as set on the product.
    pub opening: DateTime<Utc>,
    pub orders: Mutex<Vec<PlacedOrder>>,
    /// "<request> <answer>" -> [before, after] the opening (by when the request was first sent; the
    /// wrk twin splits by when the answer came).
    pub phases: Mutex<PhaseCounts>,
    /// 201s in hand before the opening instant (an order made before the sale opened).
    pub early_orders: Mutex<Vec<String>>,
    /// First-time (not replayed) requests sent after the opening and still answered SALE_NOT_STARTED
    /// (the wrk twin: answered more than a second after it).
    pub late_not_started: AtomicU64,
    /// Refusals without their extension field (SALE_NOT_STARTED.sale_starts_at,
    /// PURCHASE_LIMIT_EXCEEDED.remaining_allowance) or with a wrong one.
    pub bad_refusals: Mutex<Vec<String>>,
    pub bad_refusal_count: AtomicU64,
    /// Same-key retries whose answer differed from the first one.
    pub replay_mismatches: Mutex<Vec<String>>,
    pub replays: AtomicU64,
    /// Members the rush sent at least one request for.
    pub tried: Vec<std::sync::atomic::AtomicBool>,
}

impl LimitedData {
    pub fn new(
        driver: &'static str,
        n_members: usize,
        a: &LimitedArgs,
        product_id: Value,
        opening: DateTime<Utc>,
    ) -> LimitedData {
        LimitedData {
            driver,
            product_path: format!("/api/v1/products/{}", id_str(&product_id)),
            product_id,
            stock: a.stock,
            limit: a.limit,
            price: a.price,
            open_delay: a.open_delay,
            burst: a.burst,
            opening,
            orders: Mutex::new(Vec::new()),
            phases: Mutex::new(BTreeMap::new()),
            early_orders: Mutex::new(Vec::new()),
            late_not_started: AtomicU64::new(0),
            bad_refusals: Mutex::new(Vec::new()),
            bad_refusal_count: AtomicU64::new(0),
            replay_mismatches: Mutex::new(Vec::new()),
            replays: AtomicU64::new(0),
            tried: (0..n_members)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        }
    }

    pub fn count(&self, key: String, after: bool) {
        self.phases.lock().unwrap().entry(key).or_default()[after as usize] += 1;
    }

    fn bad_refusal(&self, what: String) {
        self.bad_refusal_count.fetch_add(1, Relaxed);
        let mut v = self.bad_refusals.lock().unwrap();
        if v.len() < 10 {
            v.push(what);
        }
    }
}

/// "201", "409 PURCHASE_LIMIT_EXCEEDED", "transport error": how an answer is counted.
fn answer_label(r: &Resp) -> String {
    match (r.status, &r.code) {
        (None, _) => "transport error".into(),
        (Some(s), Some(c)) => format!("{s} {c}"),
        (Some(s), None) => s.to_string(),
    }
}

/// Creates the limited product: `per_member_limit`, sale_starts_at = now + open_delay rounded up to
/// a whole second, sale_ends_at an hour after that (well after the run).
pub async fn create_limited_product(
    api: &Api,
    name: &str,
    a: &LimitedArgs,
) -> Result<(Value, DateTime<Utc>)> {
    let at = Utc::now() + chrono::Duration::seconds(a.open_delay as i64);
    let opening = DateTime::<Utc>::from_timestamp(at.timestamp() + 1, 0)
        .ok_or_else(|| anyhow!("opening out of range"))?;
    let ends = opening + chrono::Duration::hours(1);
    let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let v = api
        .admin_post(
            "/api/v1/admin/products",
            &json!({
                "name": name,
                "price": a.price,
                "stock": a.stock,
                "sale_starts_at": fmt(opening),
                "sale_ends_at": fmt(ends),
                "per_member_limit": a.limit,
            }),
        )
        .await
        .context("creating the limited product (POST /api/v1/admin/products with sale rules)")?;
    let id = v
        .get("id")
        .cloned()
        .ok_or_else(|| anyhow!("product without id: {v}"))?;
    Ok((id, opening))
}

fn data() -> &'static Data {
    &ctx().data
}

// ---------------------------------------------------------------------------------------------
// Setup.

pub async fn setup_coupon(api: &Api, run: &str, a: &CouponArgs) -> Result<(Vec<Member>, Data)> {
    let members = api
        .seed_members(a.members, 0, &format!("load-{run}"))
        .await?;
    let coupon_id = api
        .create_coupon(&format!("rush {run}"), "FIXED", 1000, a.quantity)
        .await?;
    eprintln!(
        "coupon {} with {} units for {} members",
        id_str(&coupon_id),
        a.quantity,
        members.len()
    );
    let data = Data::Coupon(CouponData {
        issue_path: format!("/api/v1/coupons/{}/issue", id_str(&coupon_id)),
        coupon_id,
        quantity: a.quantity,
        issued: AtomicI64::new(0),
        ambiguous: AtomicI64::new(0),
    });
    Ok((members, data))
}

pub async fn setup_stock(
    api: &Api,
    run: &str,
    a: &StockArgs,
    cancel_every: i64,
) -> Result<(Vec<Member>, Data)> {
    let members = api
        .seed_members(a.members, a.balance, &format!("load-{run}"))
        .await?;
    let product_id = api
        .create_product(&format!("hot item {run}"), a.price, a.stock)
        .await?;
    eprintln!(
        "product {} with {} units at {} for {} members",
        id_str(&product_id),
        a.stock,
        a.price,
        members.len()
    );
    let n = members.len();
    let data = Data::Stock(StockData {
        product_path: format!("/api/v1/products/{}", id_str(&product_id)),
        order_body: json!({"items": [{"product_id": product_id, "quantity": 1}]}),
        stock: a.stock,
        price: a.price,
        reserved: AtomicI64::new(0),
        paid_orders: AtomicI64::new(0),
        cancel_every,
        cancelled: AtomicI64::new(0),
        spent: (0..n).map(|_| AtomicI64::new(0)).collect(),
    });
    Ok((members, data))
}

pub async fn setup_shopper(
    api: &Api,
    run: &str,
    a: &ShopperArgs,
    users: usize,
) -> Result<(Vec<Member>, Data)> {
    if a.members < users {
        return Err(anyhow!(
            "shopper needs at least as many members ({}) as users ({users})",
            a.members
        ));
    }
    let members = api
        .seed_members(a.members, a.balance, &format!("load-{run}"))
        .await?;
    let mut products = Vec::new();
    for i in 0..a.products {
        let price = 1_000 * (1 + (i as i64 % 20));
        let id = api
            .create_product(&format!("shop item {i} {run}"), price, a.stock)
            .await?;
        products.push(Product {
            path: format!("/api/v1/products/{}", id_str(&id)),
            id,
            price,
            stock: a.stock,
            held: AtomicI64::new(0),
        });
    }
    let coupons = a.coupons.unwrap_or((a.members / 2).max(1) as i64);
    let coupon_id = api
        .create_coupon(&format!("shopper 500 off {run}"), "FIXED", 500, coupons)
        .await?;
    eprintln!(
        "{} products, coupon {} x{coupons}",
        products.len(),
        id_str(&coupon_id)
    );
    let n = members.len();
    let data = Data::Shopper(ShopperData {
        products,
        coupon_path: format!("/api/v1/coupons/{}", id_str(&coupon_id)),
        coupon_issue_path: format!("/api/v1/coupons/{}/issue", id_str(&coupon_id)),
        coupon_id,
        coupon_quantity: coupons,
        coupons_issued: AtomicI64::new(0),
        members: (0..n)
            .map(|_| {
                Mutex::new(ShopperMember {
                    coupon: CouponState::None,
                    coupon_order: None,
                })
            })
            .collect(),
        spent: (0..n).map(|_| AtomicI64::new(0)).collect(),
        abandoned: Mutex::new(Vec::new()),
    });
    Ok((members, data))
}

pub async fn setup_points(api: &Api, run: &str, a: &PointsArgs) -> Result<(Vec<Member>, Data)> {
    let members = api
        .seed_members(a.hot_members.max(1), a.balance, &format!("load-{run}"))
        .await?;
    let stock = 100_000_000;
    let id = api
        .create_product(&format!("points item {run}"), a.price, stock)
        .await?;
    let n = members.len();
    let data = Data::Points(PointsData {
        order_body: json!({"items": [{"product_id": id, "quantity": 1}]}),
        product: Product {
            path: format!("/api/v1/products/{}", id_str(&id)),
            id,
            price: a.price,
            stock,
            held: AtomicI64::new(0),
        },
        delta: (0..n).map(|_| AtomicI64::new(0)).collect(),
    });
    Ok((members, data))
}

/// Seeds the members only: the product is created right before the timed part ([`arm`]), so that
/// the opening falls `--open-delay` seconds into it whatever the seeding and pre-drain took.
pub async fn setup_limited(api: &Api, run: &str, a: &LimitedArgs) -> Result<(Vec<Member>, Data)> {
    if a.limit < 1 {
        return Err(anyhow!("--limit must be >= 1"));
    }
    let members = api
        .seed_members(a.members, a.balance, &format!("load-{run}"))
        .await?;
    let n = members.len();
    let data = Data::Limited(LimitedData::new("goose", n, a, Value::Null, Utc::now()));
    Ok((members, data))
}

/// The last step before the timed part: limited-rush creates its product here.
pub async fn arm(api: &Api, run: &str, data: &mut Data) -> Result<()> {
    if let Data::Limited(d) = data {
        let a = LimitedArgs {
            members: 0,
            stock: d.stock,
            limit: d.limit,
            price: d.price,
            balance: 0,
            open_delay: d.open_delay,
            burst: d.burst,
        };
        let (id, opening) = create_limited_product(api, &format!("limited item {run}"), &a).await?;
        eprintln!(
            "product {} with {} units, per_member_limit {}, sale_starts_at {} ({:.1}s from now)",
            id_str(&id),
            d.stock,
            d.limit,
            opening.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            (opening - Utc::now()).num_milliseconds() as f64 / 1000.0
        );
        d.product_path = format!("/api/v1/products/{}", id_str(&id));
        d.product_id = id;
        d.opening = opening;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Goose scenarios.

pub fn goose_scenario(kind: &str) -> Scenario {
    match kind {
        "coupon-rush" => scenario!("CouponRush")
            .register_transaction(transaction!(coupon_issue).set_name("issue")),
        "stock-rush" => scenario!("StockRush")
            .register_transaction(transaction!(stock_order_and_pay).set_name("order+pay")),
        "big-sale" => scenario!("BigSale")
            .register_transaction(transaction!(stock_order_and_pay).set_name("order+pay(+cancel)")),
        "shopper" => scenario!("Shopper")
            .register_transaction(transaction!(shopper_start).set_on_start())
            .register_transaction(transaction!(shopper_visit).set_name("visit")),
        "points" => scenario!("Points")
            .register_transaction(transaction!(points_charge_and_pay).set_name("charge+pay")),
        "limited-rush" => scenario!("LimitedRush")
            .register_transaction(transaction!(limited_order).set_name("order+retry+pay")),
        other => unreachable!("unknown scenario {other}"),
    }
}

async fn coupon_issue(user: &mut GooseUser) -> TransactionResult {
    let ctx = ctx();
    let Data::Coupon(d) = data() else {
        unreachable!()
    };
    let m = &ctx.members[ctx.next_member()];
    let r = call(
        user,
        &Req::post(Op::CouponIssue, &d.issue_path, &m.bearer)
            .expect(&["COUPON_SOLD_OUT", "COUPON_ALREADY_ISSUED"]),
    )
    .await?;
    if r.is(201) {
        d.issued.fetch_add(1, Relaxed);
    } else if r.class == Class::Unknown {
        d.ambiguous.fetch_add(1, Relaxed);
    }
    Ok(())
}

fn order_id(body: &Value) -> Option<String> {
    body.get("id").map(id_str)
}

async fn stock_order_and_pay(user: &mut GooseUser) -> TransactionResult {
    let ctx = ctx();
    let Data::Stock(d) = data() else {
        unreachable!()
    };
    let mi = ctx.next_member();
    let m = &ctx.members[mi];
    let key = crate::call::idem_key();
    let r = call_idem(
        user,
        &Req::post(Op::OrderCreate, "/api/v1/orders", &m.bearer)
            .body(&d.order_body)
            .idem(&key)
            .expect(&["OUT_OF_STOCK"])
            .want_body(),
    )
    .await?;
    if !r.is(201) {
        return Ok(());
    }
    d.reserved.fetch_add(1, Relaxed);
    let Some(oid) = order_id(&r.body) else {
        return Ok(());
    };
    let path = format!("/api/v1/orders/{oid}/pay");
    let key = crate::call::idem_key();
    let empty = json!({});
    let p = call_idem(
        user,
        &Req::post(Op::OrderPay, &path, &m.bearer)
            .body(&empty)
            .idem(&key)
            .want_body(),
    )
    .await?;
    if p.is(200) {
        let n = d.paid_orders.fetch_add(1, Relaxed) + 1;
        let paid = int(&p.body, "paid_amount").unwrap_or(d.price);
        d.spent[mi].fetch_add(paid, Relaxed);
        if d.cancel_every > 0 && n % d.cancel_every == 0 && cancel(user, &m.bearer, &oid).await? {
            d.cancelled.fetch_add(1, Relaxed);
            d.spent[mi].fetch_sub(paid, Relaxed);
        }
    }
    Ok(())
}

/// Each shopper user owns the members whose index is congruent to its slot, so one member's
/// requests never race with each other and the tracked state stays exact.
struct ShopperSession {
    slot: usize,
    next: usize,
}

async fn shopper_start(user: &mut GooseUser) -> TransactionResult {
    let slot = ctx().slots.fetch_add(1, Relaxed);
    user.set_session_data(ShopperSession { slot, next: 0 });
    Ok(())
}

async fn shopper_visit(user: &mut GooseUser) -> TransactionResult {
    let ctx = ctx();
    let Data::Shopper(d) = data() else {
        unreachable!()
    };
    let users = ctx.users.max(1);
    let mi = {
        let s = user.get_session_data_unchecked_mut::<ShopperSession>();
        let owned = (ctx.members.len() + users - 1 - s.slot % users) / users;
        let i = (s.slot % users) + users * (s.next % owned.max(1));
        s.next += 1;
        i.min(ctx.members.len() - 1)
    };
    let m = &ctx.members[mi];
    let np = d.products.len();

    // Browse.
    call(
        user,
        &Req::get(Op::ProductsList, "/api/v1/products?limit=20"),
    )
    .await?;
    call(
        user,
        &Req::get(Op::Popular, "/api/v1/products/popular?days=3&limit=5"),
    )
    .await?;
    let look = rand::thread_rng().gen_range(0..np);
    call(user, &Req::get(Op::ProductGet, &d.products[look].path)).await?;

    // Maybe take the coupon.
    let state = d.members[mi].lock().unwrap().coupon;
    let want_coupon = rand::thread_rng().gen_bool(0.5);
    if state == CouponState::None && want_coupon {
        let key = crate::call::idem_key();
        let r = call_idem(
            user,
            &Req::post(Op::CouponIssue, &d.coupon_issue_path, &m.bearer)
                .idem(&key)
                .expect(&["COUPON_SOLD_OUT", "COUPON_ALREADY_ISSUED"]),
        )
        .await?;
        let mut st = d.members[mi].lock().unwrap();
        if r.is(201) {
            d.coupons_issued.fetch_add(1, Relaxed);
            st.coupon = CouponState::Unused;
        } else if r.code.as_deref() == Some("COUPON_SOLD_OUT") {
            st.coupon = CouponState::SoldOut;
        } else if r.code.as_deref() == Some("COUPON_ALREADY_ISSUED") {
            // Only this user acts for this member, so this means an earlier unknown outcome
            // did issue it.
            st.coupon = CouponState::Unused;
        }
    }

    // Order 1-3 distinct products, 1-2 units each.
    let items: Vec<(usize, i64)> = {
        let mut rng = rand::thread_rng();
        let n = rng.gen_range(1..=3usize).min(np);
        let mut picked: Vec<usize> = Vec::new();
        while picked.len() < n {
            let p = rng.gen_range(0..np);
            if !picked.contains(&p) {
                picked.push(p);
            }
        }
        picked
            .into_iter()
            .map(|p| (p, rng.gen_range(1..=2i64)))
            .collect()
    };
    let body = json!({"items": items.iter().map(|(p, q)| json!({"product_id": d.products[*p].id, "quantity": q})).collect::<Vec<_>>()});
    let key = crate::call::idem_key();
    let r = call_idem(
        user,
        &Req::post(Op::OrderCreate, "/api/v1/orders", &m.bearer)
            .body(&body)
            .idem(&key)
            .expect(&["OUT_OF_STOCK"])
            .want_body(),
    )
    .await?;
    if !r.is(201) {
        return Ok(());
    }
    let Some(oid) = order_id(&r.body) else {
        return Ok(());
    };
    for (p, q) in &items {
        d.products[*p].held.fetch_add(*q, Relaxed);
    }

    let roll: f64 = rand::thread_rng().gen();
    if roll < 0.10 {
        // Abandon: the reservation stays until it expires.
        d.abandoned.lock().unwrap().push(Abandoned {
            member: mi,
            order_id: oid,
            items,
        });
        return Ok(());
    }
    if roll < 0.25 {
        // Cancel before paying.
        if cancel(user, &m.bearer, &oid).await? {
            for (p, q) in &items {
                d.products[*p].held.fetch_sub(*q, Relaxed);
            }
        }
        return Ok(());
    }

    // Pay, with the coupon half the time when the member holds an unused one.
    let use_coupon = d.members[mi].lock().unwrap().coupon == CouponState::Unused
        && rand::thread_rng().gen_bool(0.5);
    let pay_body = if use_coupon {
        json!({"coupon_id": d.coupon_id})
    } else {
        json!({})
    };
    let path = format!("/api/v1/orders/{oid}/pay");
    let key = crate::call::idem_key();
    let p = call_idem(
        user,
        &Req::post(Op::OrderPay, &path, &m.bearer)
            .body(&pay_body)
            .idem(&key)
            .want_body(),
    )
    .await?;
    if !p.is(200) {
        return Ok(());
    }
    let paid = int(&p.body, "paid_amount").unwrap_or(0);
    d.spent[mi].fetch_add(paid, Relaxed);
    if use_coupon {
        let mut st = d.members[mi].lock().unwrap();
        st.coupon = CouponState::Used;
        st.coupon_order = Some(oid.clone());
    }

    // Some regret it.
    if rand::thread_rng().gen_bool(0.15) && cancel(user, &m.bearer, &oid).await? {
        d.spent[mi].fetch_sub(paid, Relaxed);
        for (p, q) in &items {
            d.products[*p].held.fetch_sub(*q, Relaxed);
        }
        let mut st = d.members[mi].lock().unwrap();
        if st.coupon_order.as_deref() == Some(oid.as_str()) {
            st.coupon = CouponState::Unused;
            st.coupon_order = None;
        }
    }
    Ok(())
}

async fn cancel(
    user: &mut GooseUser,
    bearer: &str,
    oid: &str,
) -> Result<bool, Box<TransactionError>> {
    let path = format!("/api/v1/orders/{oid}/cancel");
    let key = crate::call::idem_key();
    let empty = json!({});
    let r = call_idem(
        user,
        &Req::post(Op::OrderCancel, &path, bearer)
            .body(&empty)
            .idem(&key),
    )
    .await?;
    Ok(r.is(200))
}

async fn points_charge_and_pay(user: &mut GooseUser) -> TransactionResult {
    let ctx = ctx();
    let Data::Points(d) = data() else {
        unreachable!()
    };
    let (mi, amount) = {
        let mut rng = rand::thread_rng();
        (
            rng.gen_range(0..ctx.members.len()),
            rng.gen_range(d.product.price / 2..=d.product.price * 3 / 2),
        )
    };
    let m = &ctx.members[mi];
    let body = json!({ "amount": amount });
    let key = crate::call::idem_key();
    let r = call_idem(
        user,
        &Req::post(Op::PointsCharge, "/api/v1/me/points/charge", &m.bearer)
            .body(&body)
            .idem(&key)
            .expect(&["BALANCE_LIMIT_EXCEEDED"]),
    )
    .await?;
    if r.is(200) {
        d.delta[mi].fetch_add(amount, Relaxed);
    }

    let key = crate::call::idem_key();
    let r = call_idem(
        user,
        &Req::post(Op::OrderCreate, "/api/v1/orders", &m.bearer)
            .body(&d.order_body)
            .idem(&key)
            .expect(&["OUT_OF_STOCK"])
            .want_body(),
    )
    .await?;
    if !r.is(201) {
        return Ok(());
    }
    d.product.held.fetch_add(1, Relaxed);
    let Some(oid) = order_id(&r.body) else {
        return Ok(());
    };
    let path = format!("/api/v1/orders/{oid}/pay");
    let key = crate::call::idem_key();
    let empty = json!({});
    let p = call_idem(
        user,
        &Req::post(Op::OrderPay, &path, &m.bearer)
            .body(&empty)
            .idem(&key)
            .expect(&["INSUFFICIENT_POINTS"])
            .want_body(),
    )
    .await?;
    if p.is(200) {
        let paid = int(&p.body, "paid_amount").unwrap_or(d.product.price);
        d.delta[mi].fetch_sub(paid, Relaxed);
    } else if p.code.as_deref() == Some("INSUFFICIENT_POINTS")
        && cancel(user, &m.bearer, &oid).await?
    {
        d.product.held.fetch_sub(1, Relaxed);
    }
    Ok(())
}

const LIMITED_EXPECTED: [&str; 3] = [
    "SALE_NOT_STARTED",
    "PURCHASE_LIMIT_EXCEEDED",
    "OUT_OF_STOCK",
];
const LIMITED_EXPECTED_KEYLESS: [&str; 4] = [
    "IDEMPOTENCY_KEY_REQUIRED",
    "SALE_NOT_STARTED",
    "PURCHASE_LIMIT_EXCEEDED",
    "OUT_OF_STOCK",
];

/// One member (shared by `--burst` users at once) orders 1 (sometimes 2) units, whatever it already
/// holds: before the opening, at it, and long after its limit is reached. Some orders are sent again
/// with the same key (a client retry), a few without a key (refused), some are paid, a few cancelled
/// (which gives the allowance back).
async fn limited_order(user: &mut GooseUser) -> TransactionResult {
    let ctx = ctx();
    let Data::Limited(d) = data() else {
        unreachable!()
    };
    let mi = (ctx.cursor.fetch_add(1, Relaxed) / d.burst.max(1)) % ctx.members.len();
    d.tried[mi].store(true, Relaxed);
    let m = &ctx.members[mi];
    let (qty, keyless, retry, pay, cancel_it) = {
        let mut rng = rand::thread_rng();
        (
            if rng.gen_bool(0.2) { 2 } else { 1 },
            rng.gen_bool(0.03),
            rng.gen_bool(0.2),
            rng.gen_bool(0.6),
            rng.gen_bool(0.15),
        )
    };
    let body = json!({"items": [{"product_id": d.product_id, "quantity": qty}]});
    let key = crate::call::idem_key();
    let sent = Utc::now();
    let after = sent >= d.opening;
    let r = if keyless {
        call(
            user,
            &Req::post(Op::OrderCreate, "/api/v1/orders", &m.bearer)
                .body(&body)
                .expect(&LIMITED_EXPECTED_KEYLESS)
                .want_body(),
        )
        .await?
    } else {
        call_idem(
            user,
            &Req::post(Op::OrderCreate, "/api/v1/orders", &m.bearer)
                .body(&body)
                .idem(&key)
                .expect(&LIMITED_EXPECTED)
                .want_body(),
        )
        .await?
    };
    if keyless && r.class == Class::Unknown {
        // Nothing to retry with: an order may or may not have been made.
        ctx.ambiguous.fetch_add(1, Relaxed);
    }
    limited_note(d, mi, Op::OrderCreate, &r, qty, after, true);
    let oid = if r.is(201) { order_id(&r.body) } else { None };

    if retry && !keyless && r.class != Class::Unknown {
        let again = call(
            user,
            &Req::post(Op::OrderRetry, "/api/v1/orders", &m.bearer)
                .body(&body)
                .idem(&key)
                .expect(&LIMITED_EXPECTED)
                .want_body(),
        )
        .await?;
        d.replays.fetch_add(1, Relaxed);
        limited_note(d, mi, Op::OrderRetry, &again, qty, after, false);
        let same = again.status == r.status
            && again.code == r.code
            && (!r.is(201) || order_id(&again.body) == oid);
        if !same && again.class != Class::Unknown {
            let mut v = d.replay_mismatches.lock().unwrap();
            if v.len() < 10 {
                v.push(format!(
                    "member {}: first {} {}, same key again {} {}",
                    id_str(&m.id),
                    answer_label(&r),
                    oid.as_deref().unwrap_or(""),
                    answer_label(&again),
                    order_id(&again.body).unwrap_or_default()
                ));
            }
        }
    }

    let Some(oid) = oid else {
        return Ok(());
    };
    let empty = json!({});
    if pay {
        let path = format!("/api/v1/orders/{oid}/pay");
        let key = crate::call::idem_key();
        let p = call_idem(
            user,
            &Req::post(Op::OrderPay, &path, &m.bearer)
                .body(&empty)
                .idem(&key),
        )
        .await?;
        d.count(
            format!("{} {}", Op::OrderPay.name(), answer_label(&p)),
            Utc::now() >= d.opening,
        );
    }
    if cancel_it {
        let path = format!("/api/v1/orders/{oid}/cancel");
        let key = crate::call::idem_key();
        let c = call_idem(
            user,
            &Req::post(Op::OrderCancel, &path, &m.bearer)
                .body(&empty)
                .idem(&key),
        )
        .await?;
        d.count(
            format!("{} {}", Op::OrderCancel.name(), answer_label(&c)),
            Utc::now() >= d.opening,
        );
    }
    Ok(())
}

/// Counts an order answer in its phase and looks at what it says.
fn limited_note(d: &LimitedData, mi: usize, op: Op, r: &Resp, qty: i64, after: bool, fresh: bool) {
    let now = Utc::now();
    d.count(format!("{} {}", op.name(), answer_label(r)), after);
    let member = || id_str(&ctx().members[mi].id);
    match r.code.as_deref() {
        _ if r.is(201) => {
            let Some(id) = order_id(&r.body) else {
                return;
            };
            if now < d.opening {
                d.early_orders.lock().unwrap().push(format!(
                    "order {id} of member {} answered 201 at {}, before the opening",
                    member(),
                    now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ));
            }
            d.orders.lock().unwrap().push(PlacedOrder {
                member: mi,
                id,
                quantity: qty,
                received_at: now,
            });
        }
        Some("SALE_NOT_STARTED") => {
            if fresh && after {
                d.late_not_started.fetch_add(1, Relaxed);
            }
            let at = r
                .body
                .get("sale_starts_at")
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok());
            if at.map(|t| t.with_timezone(&Utc)) != Some(d.opening) {
                d.bad_refusal(format!(
                    "SALE_NOT_STARTED with sale_starts_at {} (the product's is {})",
                    r.body.get("sale_starts_at").unwrap_or(&Value::Null),
                    d.opening
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ));
            }
        }
        Some("PURCHASE_LIMIT_EXCEEDED") => {
            let left = r.body.get("remaining_allowance").and_then(Value::as_i64);
            // Refused, so what is left is less than asked for (a replay may be older, so only its
            // range is certain).
            let ok = match left {
                Some(l) if fresh => (0..qty).contains(&l),
                Some(l) => (0..=d.limit).contains(&l),
                None => false,
            };
            if !ok {
                d.bad_refusal(format!(
                    "PURCHASE_LIMIT_EXCEEDED for {qty} unit(s) of member {} with remaining_allowance {}",
                    member(),
                    r.body.get("remaining_allowance").unwrap_or(&Value::Null)
                ));
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Checks after the timed part.

pub async fn verify(api: &Api) -> Vec<Check> {
    let ctx = ctx();
    let mut checks = Vec::new();
    let ambiguous = ctx.ambiguous.load(Relaxed);
    if ambiguous > 0 {
        checks.push(Check::new(
            "definite outcomes",
            false,
            format!("{ambiguous} mutating requests never got a definite answer (even after retrying with the same Idempotency-Key); exact checks below may be off by them"),
        ));
    }
    let result = match &ctx.data {
        Data::Coupon(d) => verify_coupon(api, d, &mut checks).await,
        Data::Stock(d) => verify_stock(api, d, &mut checks).await,
        Data::Shopper(d) => verify_shopper(api, d, &mut checks).await,
        Data::Points(d) => verify_points(api, d, &mut checks).await,
        Data::Limited(d) => verify_limited(api, d, &mut checks).await,
    };
    if let Err(e) = result {
        checks.push(Check::new("verification requests", false, format!("{e:#}")));
    }
    checks
}

async fn verify_coupon(api: &Api, d: &CouponData, checks: &mut Vec<Check>) -> Result<()> {
    let ctx = ctx();
    let c = api
        .get(&format!("/api/v1/coupons/{}", id_str(&d.coupon_id)), None)
        .await?;
    let remaining = int(&c, "remaining")?;
    let total = int(&c, "total_quantity")?;
    let issued = d.issued.load(Relaxed);
    let unknown = d.ambiguous.load(Relaxed);
    let attempts = ctx.stats.ops[Op::CouponIssue as usize].hist.count();
    checks.push(Check::new(
        "coupon total_quantity unchanged",
        total == d.quantity,
        format!("total_quantity {total}, created with {}", d.quantity),
    ));
    checks.push(Check::new(
        "coupon remaining never negative",
        remaining >= 0,
        format!("remaining {remaining}"),
    ));
    let consistent = issued <= total - remaining && total - remaining <= issued + unknown;
    checks.push(Check::new(
        "201s == total_quantity - remaining",
        consistent,
        format!("{issued} issue requests answered 201 ({unknown} unknown outcomes); total {total} - remaining {remaining} = {}", total - remaining),
    ));
    if attempts as usize >= ctx.members.len() || attempts as i64 >= d.quantity * 2 {
        checks.push(Check::new(
            "sold out exactly (remaining 0, 201s == quantity)",
            remaining == 0 && (issued == d.quantity || unknown > 0),
            format!("{attempts} attempts by {} members for {} coupons: remaining {remaining}, 201s {issued}", ctx.members.len(), d.quantity),
        ));
    } else {
        checks.push(Check::new(
            "sold out exactly (remaining 0, 201s == quantity)",
            true,
            format!("not applicable: only {attempts} attempts for {} coupons (raise --run-time or --users)", d.quantity),
        ));
    }
    Ok(())
}

async fn verify_stock(api: &Api, d: &StockData, checks: &mut Vec<Check>) -> Result<()> {
    let ctx = ctx();
    let reserved = d.reserved.load(Relaxed);
    let paid = d.paid_orders.load(Relaxed);
    checks.push(Check::new(
        "every created order paid",
        paid == reserved,
        format!("{paid} paid of {reserved} created"),
    ));
    let p = api.get(&d.product_path, None).await?;
    let stock_now = int(&p, "stock")?;
    checks.push(Check::new(
        "stock never negative",
        stock_now >= 0,
        format!("stock now {stock_now}"),
    ));
    let cancelled = d.cancelled.load(Relaxed);
    let sold = reserved - cancelled;
    checks.push(Check::new(
        "sold + remaining == initial",
        sold + stock_now == d.stock,
        format!(
            "units in orders created {reserved} - cancelled {cancelled} + stock now {stock_now} = {}, initial {}",
            sold + stock_now,
            d.stock
        ),
    ));
    let out_of_stock_seen = ctx.stats.ops[Op::OrderCreate as usize]
        .outcomes
        .lock()
        .unwrap()
        .keys()
        .any(|k| k.contains("OUT_OF_STOCK"));
    if out_of_stock_seen {
        checks.push(Check::new(
            "OUT_OF_STOCK only once sold out",
            stock_now == 0,
            format!("OUT_OF_STOCK answers were given; stock now {stock_now}"),
        ));
    }
    let touched: Vec<usize> = (0..ctx.members.len())
        .filter(|i| d.spent[*i].load(Relaxed) != 0)
        .collect();
    let bad = check_balances(api, &touched, |i| {
        ctx.members[i].initial_balance - d.spent[i].load(Relaxed)
    })
    .await?;
    checks.push(Check::new(
        "buyers' balances exact",
        bad.is_empty(),
        if bad.is_empty() {
            format!("{} buyers checked", touched.len())
        } else {
            format!(
                "{} of {} wrong, e.g. {}",
                bad.len(),
                touched.len(),
                bad[..bad.len().min(5)].join("; ")
            )
        },
    ));
    Ok(())
}

/// GETs /me/points for each member index and returns descriptions of the mismatches.
async fn check_balances(
    api: &Api,
    members: &[usize],
    expected: impl Fn(usize) -> i64,
) -> Result<Vec<String>> {
    let ctx = ctx();
    let results: Vec<Result<(usize, i64)>> = stream::iter(members.iter().copied())
        .map(|i| {
            let api = api.clone();
            async move {
                let v = api
                    .get("/api/v1/me/points", Some(&ctx.members[i].bearer))
                    .await?;
                Ok((i, int(&v, "balance")?))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut bad = Vec::new();
    for r in results {
        let (i, balance) = r?;
        let want = expected(i);
        if balance != want {
            bad.push(format!(
                "member {} ({}): balance {balance}, expected {want}",
                id_str(&ctx.members[i].id),
                ctx.members[i].email
            ));
        }
    }
    Ok(bad)
}

async fn verify_shopper(api: &Api, d: &ShopperData, checks: &mut Vec<Check>) -> Result<()> {
    let ctx = ctx();
    // Abandoned reservations that expired meanwhile gave their units back.
    let abandoned: Vec<Abandoned> = d.abandoned.lock().unwrap().clone();
    let statuses: Vec<Result<(usize, String)>> = stream::iter(abandoned.iter().enumerate())
        .map(|(k, a)| {
            let api = api.clone();
            async move {
                let v = api
                    .get(
                        &format!("/api/v1/orders/{}", a.order_id),
                        Some(&ctx.members[a.member].bearer),
                    )
                    .await?;
                Ok((
                    k,
                    v.get("status")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                ))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut expired = 0;
    let mut odd = Vec::new();
    for r in statuses {
        let (k, status) = r?;
        match status.as_str() {
            "RESERVED" => {}
            "EXPIRED" => {
                expired += 1;
                for (p, q) in &abandoned[k].items {
                    d.products[*p].held.fetch_sub(*q, Relaxed);
                }
            }
            other => odd.push(format!("order {} is {other}", abandoned[k].order_id)),
        }
    }
    checks.push(Check::new(
        "abandoned orders stay RESERVED until they expire",
        odd.is_empty(),
        format!(
            "{} abandoned, {expired} expired meanwhile{}",
            abandoned.len(),
            if odd.is_empty() {
                String::new()
            } else {
                format!("; {}", odd.join(", "))
            }
        ),
    ));

    let mut stock_bad = Vec::new();
    for p in &d.products {
        let v = api.get(&p.path, None).await?;
        let now = int(&v, "stock")?;
        let want = p.stock - p.held.load(Relaxed);
        if now != want || now < 0 {
            stock_bad.push(format!(
                "product {}: stock {now}, expected {want}",
                id_str(&p.id)
            ));
        }
    }
    checks.push(Check::new(
        "stock == initial - units held by live orders (never negative)",
        stock_bad.is_empty(),
        if stock_bad.is_empty() {
            format!("{} products checked", d.products.len())
        } else {
            stock_bad.join("; ")
        },
    ));

    let c = api.get(&d.coupon_path, None).await?;
    let remaining = int(&c, "remaining")?;
    let issued = d.coupons_issued.load(Relaxed);
    checks.push(Check::new(
        "coupon issued + remaining == total",
        issued + remaining == d.coupon_quantity && remaining >= 0,
        format!(
            "{issued} issued + {remaining} remaining, total {}",
            d.coupon_quantity
        ),
    ));

    let all: Vec<usize> = (0..ctx.members.len()).collect();
    let bad = check_balances(api, &all, |i| {
        ctx.members[i].initial_balance - d.spent[i].load(Relaxed)
    })
    .await?;
    checks.push(Check::new(
        "shoppers' balances exact (paid - refunded)",
        bad.is_empty(),
        if bad.is_empty() {
            format!("{} members checked", all.len())
        } else {
            format!(
                "{} of {} wrong, e.g. {}",
                bad.len(),
                all.len(),
                bad[..bad.len().min(5)].join("; ")
            )
        },
    ));

    // Coupon holdings and their used flag.
    let holders: Vec<(usize, CouponState)> = (0..ctx.members.len())
        .map(|i| (i, d.members[i].lock().unwrap().coupon))
        .filter(|(_, s)| matches!(s, CouponState::Unused | CouponState::Used))
        .collect();
    let cid = id_str(&d.coupon_id);
    let results: Vec<Result<Option<String>>> = stream::iter(holders.iter().copied())
        .map(|(i, state)| {
            let api = api.clone();
            let cid = cid.clone();
            async move {
                let v = api
                    .get("/api/v1/me/coupons", Some(&ctx.members[i].bearer))
                    .await?;
                let entry = v.as_array().and_then(|a| {
                    a.iter()
                        .find(|c| c.get("coupon_id").map(id_str).as_deref() == Some(cid.as_str()))
                });
                let want_used = state == CouponState::Used;
                Ok(match entry {
                    None => Some(format!(
                        "member {} lacks the coupon",
                        id_str(&ctx.members[i].id)
                    )),
                    Some(e) if e.get("used").and_then(Value::as_bool) != Some(want_used) => {
                        Some(format!(
                            "member {}: used={}, expected {want_used}",
                            id_str(&ctx.members[i].id),
                            e.get("used").cloned().unwrap_or(Value::Null)
                        ))
                    }
                    _ => None,
                })
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut coupon_bad = Vec::new();
    for r in results {
        if let Some(s) = r? {
            coupon_bad.push(s);
        }
    }
    checks.push(Check::new(
        "coupon holdings and used flags",
        coupon_bad.is_empty(),
        if coupon_bad.is_empty() {
            format!("{} holders checked", holders.len())
        } else {
            format!(
                "{} wrong, e.g. {}",
                coupon_bad.len(),
                coupon_bad[..coupon_bad.len().min(5)].join("; ")
            )
        },
    ));
    Ok(())
}

async fn verify_points(api: &Api, d: &PointsData, checks: &mut Vec<Check>) -> Result<()> {
    let ctx = ctx();
    let all: Vec<usize> = (0..ctx.members.len()).collect();
    let bad = check_balances(api, &all, |i| {
        ctx.members[i].initial_balance + d.delta[i].load(Relaxed)
    })
    .await?;
    let moved: i64 = d.delta.iter().map(|x| x.load(Relaxed).abs()).sum();
    checks.push(Check::new(
        "hot members' balances exact (initial + charges - payments)",
        bad.is_empty(),
        if bad.is_empty() {
            format!("{} hot members checked (net |delta| {moved})", all.len())
        } else {
            bad.join("; ")
        },
    ));
    let v = api.get(&d.product.path, None).await?;
    let now = int(&v, "stock")?;
    let want = d.product.stock - d.product.held.load(Relaxed);
    checks.push(Check::new(
        "stock == initial - units held",
        now == want,
        format!("stock {now}, expected {want}"),
    ));
    Ok(())
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn examples(v: &[String]) -> String {
    v[..v.len().min(5)].join("; ")
}

/// One order as the engine shows it to its member after the run.
struct OrderSeen {
    member: usize,
    id: String,
    status: String,
    units: i64,
    asked: i64,
    created_at: Option<DateTime<Utc>>,
    raw_created_at: Value,
}

async fn verify_limited(api: &Api, d: &LimitedData, checks: &mut Vec<Check>) -> Result<()> {
    let ctx = ctx();
    let pid = id_str(&d.product_id);

    // The product and its rules as the engine shows them.
    let p = api.get(&d.product_path, None).await?;
    let stock_now = int(&p, "stock")?;
    let limit_shown = p.get("per_member_limit").and_then(Value::as_i64);
    let starts_shown = p
        .get("sale_starts_at")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc));
    checks.push(Check::new(
        "product view shows the sale rules",
        limit_shown == Some(d.limit) && starts_shown == Some(d.opening),
        format!(
            "per_member_limit {}, sale_starts_at {} (set: {}, {})",
            p.get("per_member_limit").unwrap_or(&Value::Null),
            p.get("sale_starts_at").unwrap_or(&Value::Null),
            d.limit,
            rfc(d.opening)
        ),
    ));

    // Every order the rush was answered 201 for, once, as its member sees it now.
    let mut placed: Vec<PlacedOrder> = Vec::new();
    {
        let mut seen = HashSet::new();
        for o in d.orders.lock().unwrap().iter() {
            if seen.insert(o.id.clone()) {
                placed.push(o.clone());
            }
        }
    }
    let results: Vec<Result<OrderSeen>> = stream::iter(placed.iter().cloned())
        .map(|o| {
            let api = api.clone();
            let pid = pid.clone();
            async move {
                let v = api
                    .get(
                        &format!("/api/v1/orders/{}", o.id),
                        Some(&ctx.members[o.member].bearer),
                    )
                    .await?;
                let units = v
                    .get("items")
                    .and_then(Value::as_array)
                    .map(|items| {
                        items
                            .iter()
                            .filter(|i| i.get("product_id").map(id_str).as_deref() == Some(&pid))
                            .filter_map(|i| i.get("quantity").and_then(Value::as_i64))
                            .sum()
                    })
                    .unwrap_or(0);
                let raw = v.get("created_at").cloned().unwrap_or(Value::Null);
                Ok(OrderSeen {
                    member: o.member,
                    id: o.id,
                    status: v
                        .get("status")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    units,
                    asked: o.quantity,
                    created_at: raw
                        .as_str()
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                        .map(|t| t.with_timezone(&Utc)),
                    raw_created_at: raw,
                })
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut orders = Vec::with_capacity(results.len());
    for r in results {
        orders.push(r?);
    }

    let mut live: HashMap<usize, i64> = HashMap::new();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut odd = Vec::new();
    let mut early = d.early_orders.lock().unwrap().clone();
    for o in &orders {
        *by_status.entry(o.status.clone()).or_default() += 1;
        if o.asked > 0 && o.units != o.asked {
            odd.push(format!(
                "order {} has {} unit(s), {} asked",
                o.id, o.units, o.asked
            ));
        }
        match o.status.as_str() {
            "RESERVED" | "PAID" => *live.entry(o.member).or_default() += o.units,
            "CANCELLED" | "EXPIRED" => {}
            other => odd.push(format!("order {} has status {other:?}", o.id)),
        }
        match o.created_at {
            Some(t) if t >= d.opening => {}
            Some(t) => early.push(format!(
                "order {} created_at {} < sale_starts_at {}",
                o.id,
                rfc(t),
                rfc(d.opening)
            )),
            None => early.push(format!(
                "order {} has no readable created_at ({})",
                o.id, o.raw_created_at
            )),
        }
    }
    let sold: i64 = live.values().sum();
    let statuses: Vec<String> = by_status.iter().map(|(k, v)| format!("{k} {v}")).collect();
    if !odd.is_empty() {
        checks.push(Check::new(
            "orders as placed",
            false,
            format!("{} odd, e.g. {}", odd.len(), examples(&odd)),
        ));
    }

    // (a) No member above its limit.
    let over: Vec<String> = live
        .iter()
        .filter(|(_, u)| **u > d.limit)
        .map(|(m, u)| {
            format!(
                "member {} holds {u} units in live orders",
                id_str(&ctx.members[*m].id)
            )
        })
        .collect();
    let max_live = live.values().copied().max().unwrap_or(0);
    let at_limit = live.values().filter(|u| **u == d.limit).count();
    checks.push(Check::new(
        "no member above its limit (units in RESERVED + PAID orders <= per_member_limit)",
        over.is_empty(),
        if over.is_empty() {
            format!(
                "{} orders ({}), {} members holding units, at most {max_live} each (limit {}), {at_limit} at the limit",
                orders.len(),
                statuses.join(", "),
                live.len(),
                d.limit
            )
        } else {
            format!("{} members over {}: {}", over.len(), d.limit, examples(&over))
        },
    ));

    // The engine's own count of each member's units agrees: remaining_allowance = limit - live.
    let tried: Vec<usize> = (0..ctx.members.len())
        .filter(|i| d.tried[*i].load(Relaxed) || live.contains_key(i))
        .collect();
    let views: Vec<Result<(usize, Option<i64>)>> = stream::iter(tried.iter().copied())
        .map(|i| {
            let api = api.clone();
            let path = d.product_path.clone();
            async move {
                let v = api.get(&path, Some(&ctx.members[i].bearer)).await?;
                Ok((i, v.get("remaining_allowance").and_then(Value::as_i64)))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut allowance_bad = Vec::new();
    for r in views {
        let (i, left) = r?;
        let want = d.limit - live.get(&i).copied().unwrap_or(0);
        if left != Some(want) {
            allowance_bad.push(format!(
                "member {}: remaining_allowance {}, expected {want}",
                id_str(&ctx.members[i].id),
                left.map(|l| l.to_string()).unwrap_or("absent".into())
            ));
        }
    }
    checks.push(Check::new(
        "remaining_allowance == limit - units in live orders (product view with the member's token)",
        allowance_bad.is_empty(),
        if allowance_bad.is_empty() {
            format!("{} members checked", tried.len())
        } else {
            format!(
                "{} of {} wrong, e.g. {}",
                allowance_bad.len(),
                tried.len(),
                examples(&allowance_bad)
            )
        },
    ));

    // (b) Sold + remaining = initial.
    checks.push(Check::new(
        "sold + remaining == initial (sold: units in RESERVED + PAID orders)",
        sold + stock_now == d.stock && stock_now >= 0,
        format!(
            "sold {sold} + stock now {stock_now} = {}, initial {}",
            sold + stock_now,
            d.stock
        ),
    ));

    // (c) No order before the opening.
    let first_created = orders.iter().filter_map(|o| o.created_at).min();
    let first_in_hand = placed.iter().map(|o| o.received_at).min();
    checks.push(Check::new(
        "no order before the opening (created_at >= sale_starts_at; no 201 in hand before it)",
        early.is_empty(),
        if early.is_empty() {
            format!(
                "{} orders; sale_starts_at {}, first created_at {}, first 201 in hand at {}",
                orders.len(),
                rfc(d.opening),
                first_created.map(rfc).unwrap_or("-".into()),
                first_in_hand.map(rfc).unwrap_or("-".into())
            )
        } else {
            format!("{} early: {}", early.len(), examples(&early))
        },
    ));

    let late = d.late_not_started.load(Relaxed);
    checks.push(Check::new(
        "SALE_NOT_STARTED only before the opening",
        late == 0,
        if d.driver == "wrk" {
            format!("{late} first-time requests answered SALE_NOT_STARTED more than 1 s after the opening")
        } else {
            format!("{late} first-time requests sent after the opening answered SALE_NOT_STARTED")
        },
    ));

    let bad = d.bad_refusal_count.load(Relaxed);
    checks.push(Check::new(
        "refusals carry their fields (sale_starts_at, remaining_allowance < units asked)",
        bad == 0,
        if bad == 0 {
            "all SALE_NOT_STARTED / PURCHASE_LIMIT_EXCEEDED answers well formed".to_string()
        } else {
            format!(
                "{bad} malformed, e.g. {}",
                examples(&d.bad_refusals.lock().unwrap())
            )
        },
    ));

    if d.driver == "goose" {
        let mism = d.replay_mismatches.lock().unwrap().clone();
        checks.push(Check::new(
            "same-key retries answered as the first time",
            mism.is_empty(),
            format!(
                "{} retries, {} differed{}",
                d.replays.load(Relaxed),
                mism.len(),
                if mism.is_empty() {
                    String::new()
                } else {
                    format!(": {}", examples(&mism))
                }
            ),
        ));
    }

    // The run proves something only if it met each rule.
    let phases = d.phases.lock().unwrap().clone();
    let sum = |pred: &dyn Fn(&str) -> bool, after: usize| -> u64 {
        phases
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(_, v)| v[after])
            .sum()
    };
    let not_started_before = sum(&|k| k.contains("SALE_NOT_STARTED"), 0);
    let created_after = orders.len() as u64;
    let limit_refused = sum(&|k| k.contains("PURCHASE_LIMIT_EXCEEDED"), 1);
    checks.push(Check::new(
        "the rush met every rule (refused before the opening, sold after it, refused over the limit)",
        not_started_before > 0 && created_after > 0 && limit_refused > 0,
        format!(
            "SALE_NOT_STARTED before the opening {not_started_before}, orders created {created_after}, PURCHASE_LIMIT_EXCEEDED {limit_refused}"
        ),
    ));
    Ok(())
}

/// limited-rush's own part of the summary: the product, its opening and every answer before / after.
pub fn limited_report(d: &LimitedData) -> Value {
    let phases = d.phases.lock().unwrap().clone();
    json!({
        "driver": d.driver,
        "product_id": d.product_id,
        "stock": d.stock,
        "per_member_limit": d.limit,
        "opening": rfc(d.opening),
        "orders_created": d.orders.lock().unwrap().iter().map(|o| &o.id).collect::<HashSet<_>>().len(),
        "answers": phases
            .iter()
            .map(|(k, v)| json!({"answer": k, "before": v[0], "after": v[1]}))
            .collect::<Vec<_>>(),
    })
}
