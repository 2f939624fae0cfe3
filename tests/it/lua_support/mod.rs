//! Harness for tests/it/lua_scripts.rs: runs the engine's Lua scripts straight against the real Redis with the
//! exact KEYS/ARGV layout the routes and the expiry task use, under a random key prefix per test. Reserve,
//! cancel and expire run through the engine's own saga sequencing (src/orders.rs), as the route and the
//! expiry task run them; the product-slot steps can also be run one by one.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{TimeZone, Utc};
use flashsale::domain::{MAX_BALANCE, MAX_STOCK};
use flashsale::keys::Keys;
use flashsale::orders::{Reserve, Store};
use flashsale::partition::Partition;
use flashsale::popular::POPULAR_DAY_TTL_SECS;
use flashsale::scripts::calls::{
    ClaimRef, CouponCreate, CouponIssue, CouponWalletAdd, EmailClaim, EmailConfirm, EmailRelease,
    HoldConfirm, HoldRef, Idem as TypedIdem, MemberSignup, OrderPay, PointsCharge, ProductCreate,
    ProductStockAdd, StockCommit, StockHold, StockRelease, StockReturn,
};
use flashsale::scripts::{ScriptCall, ScriptReply, Scripts};
use fred::prelude::*;
use serde_json::Value as Json;

pub const PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
/// Reservation lifetime used by the helpers (the engine's default is of this order).
pub const RESERVATION_MS: i64 = 600_000;

/// Dumps every key under a pattern (except idempotency records) as JSON: {key: [type, contents]}.
/// One key's type and contents, as `[type, value]` in JSON (hash and zset as objects, a set sorted, a
/// stream as its entry ids). One declared key per call, so that a cluster routes it to its node.
const DUMP_KEY_LUA: &str = r#"
local k = KEYS[1]
local t = redis.call('TYPE', k).ok
local v = {}
if t == 'hash' or t == 'zset' then
  local flat
  if t == 'hash' then flat = redis.call('HGETALL', k) else flat = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES') end
  for i = 1, #flat, 2 do v[flat[i]] = flat[i + 1] end
elseif t == 'set' then
  v = redis.call('SMEMBERS', k)
  table.sort(v)
elseif t == 'string' then
  v = redis.call('GET', k)
elseif t == 'stream' then
  for _, e in ipairs(redis.call('XRANGE', k, '-', '+')) do v[#v + 1] = e[1] end
end
return cjson.encode({ t, v })
"#;

pub fn rfc(ms: i64) -> String {
    flashsale::state::rfc3339(Utc.timestamp_millis_opt(ms).unwrap())
}

pub fn day(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .unwrap()
        .format("%Y%m%d")
        .to_string()
}

/// A clock reading the tests move by hand: `now` in ms, a few seconds past a whole second.
pub fn clock() -> i64 {
    let now = Utc::now().timestamp_millis();
    now - now % 1000 + 123
}

fn json_int(n: i64) -> Json {
    Json::from(n)
}

pub fn ev() -> String {
    flashsale::state::event_id()
}

/// An Idempotency-Key record name plus a request fingerprint.
#[derive(Clone, Debug)]
pub struct Idem {
    /// The record's Redis key.
    pub key: String,
    pub digest: String,
    pub fp: String,
}

impl Idem {
    /// As the engine's typed calls take it.
    pub fn typed(&self) -> TypedIdem {
        TypedIdem {
            digest: Some(self.digest.clone()),
            fingerprint: self.fp.clone(),
        }
    }
}

/// One outbox stream entry.
#[derive(Debug, Clone)]
pub struct Event {
    pub stream_id: String,
    pub event_id: String,
    pub kind: String,
    pub aggregate: String,
    pub at: String,
    pub payload: Json,
}

/// What every RFC 3339 time reads as in bodies, events and hashes the tests compare: scripts stamp
/// Redis time (issue 8 item 5), which a test cannot set; the prelude's formatter has its own test.
pub const TIME: &str = "<time>";

fn is_rfc3339_ms(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

pub fn mask_text(s: &str) -> String {
    if is_rfc3339_ms(s) {
        TIME.into()
    } else {
        s.into()
    }
}

/// Every RFC 3339 string in `v` replaced by TIME.
pub fn mask(v: Json) -> Json {
    match v {
        Json::String(s) => Json::String(mask_text(&s)),
        Json::Array(a) => Json::Array(a.into_iter().map(mask).collect()),
        Json::Object(o) => Json::Object(o.into_iter().map(|(k, v)| (k, mask(v))).collect()),
        other => other,
    }
}

pub fn ok_body(reply: &ScriptReply, status: u16) -> Json {
    match reply {
        ScriptReply::Ok { status: s, body } if *s == status => {
            mask(serde_json::from_str(body).unwrap_or_else(|e| panic!("body {body}: {e}")))
        }
        other => panic!("expected ok {status}, got {other:?}"),
    }
}

pub fn assert_refused(reply: &ScriptReply, status: u16, code: &str) -> String {
    match reply {
        ScriptReply::Refused {
            status: s,
            code: c,
            detail,
            ..
        } if *s == status && c == code => detail.clone(),
        other => panic!("expected refusal {status} {code}, got {other:?}"),
    }
}

pub struct Ctx {
    pub redis: Pool,
    pub scripts: Scripts,
    pub k: Keys,
    /// Each call's ARGV, in call order (orders the events of several partitions' streams).
    calls: std::sync::Mutex<Vec<Vec<String>>>,
    /// order id -> member id of the orders reserved in this test.
    orders: std::sync::Mutex<HashMap<i64, i64>>,
    popular: flashsale::popular::PopularCache,
}

impl Ctx {
    pub async fn new() -> Self {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let redis = Builder::from_config(Config::from_url(&url).expect("REDIS_URL"))
            .build_pool(2)
            .expect("pool");
        redis.init().await.expect("connect to Redis");
        let scripts = Scripts::load(&redis, Default::default())
            .await
            .expect("load scripts");
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        Self {
            redis,
            scripts,
            k: Keys::new(prefix),
            calls: Default::default(),
            orders: Default::default(),
            popular: Default::default(),
        }
    }

    pub async fn cleanup(self) {
        let _ = flashsale::keyspace::unlink_all(self.redis.next(), &self.k.all_pattern()).await;
        let _ = self.redis.quit().await;
    }

    /// A record for a coupon issue: it lives in the coupon's slot, where the issue is decided.
    pub fn coupon_idem(&self, coupon: i64, member: i64) -> Idem {
        let digest = uuid::Uuid::new_v4().simple().to_string();
        Idem {
            key: self.k.coupon_idempotency(coupon, member, &digest),
            digest,
            fp: format!("fp-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    pub fn idem(&self, member: i64) -> Idem {
        let digest = uuid::Uuid::new_v4().simple().to_string();
        Idem {
            key: self.k.idempotency(member, &digest),
            digest,
            fp: format!("fp-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    // ---- state readers ----

    /// Every key of this test but the idempotency records (on every primary of a cluster).
    pub async fn dump(&self) -> Json {
        let keys = flashsale::keyspace::all_keys(self.redis.next(), &self.k.all_pattern())
            .await
            .expect("scan");
        let mut all = serde_json::Map::new();
        for key in keys.into_iter().filter(|k| !k.contains(":idem:")) {
            let text: String = self
                .redis
                .eval(DUMP_KEY_LUA, vec![key.clone()], Vec::<String>::new())
                .await
                .expect("dump a key");
            let entry: Json = serde_json::from_str(&text).expect("dump json");
            if entry[0] != "none" {
                all.insert(key, entry);
            }
        }
        Json::Object(all)
    }

    /// The hash with its RFC 3339 values masked (see TIME).
    pub async fn hash(&self, key: &str) -> HashMap<String, String> {
        let h: HashMap<String, String> = self.redis.hgetall(key).await.expect("hgetall");
        h.into_iter().map(|(k, v)| (k, mask_text(&v))).collect()
    }

    pub async fn field(&self, key: &str, field: &str) -> Option<String> {
        self.redis.hget(key, field).await.expect("hget")
    }

    /// A bare reservation entry (as a rebuild or a lost race may leave behind).
    pub async fn add_reservation(&self, order: i64, expires_ms: i64) {
        let _: i64 = self
            .redis
            .zadd(
                self.k.reservations(Partition::of_id(self.member_of(order))),
                None,
                None,
                false,
                false,
                (expires_ms as f64, order.to_string()),
            )
            .await
            .expect("zadd");
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        self.redis.get(key).await.expect("get")
    }

    pub async fn num(&self, key: &str, field: &str) -> i64 {
        self.field(key, field)
            .await
            .unwrap_or_else(|| panic!("{key} has no {field}"))
            .parse()
            .expect("integer field")
    }

    pub async fn zset(&self, key: &str) -> BTreeMap<String, String> {
        let flat: Vec<String> = self
            .redis
            .eval(
                "return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')",
                vec![key.to_string()],
                Vec::<String>::new(),
            )
            .await
            .expect("zrange");
        flat.chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect()
    }

    pub async fn set(&self, key: &str) -> BTreeSet<String> {
        let members: Vec<String> = self.redis.smembers(key).await.expect("smembers");
        members.into_iter().collect()
    }

    pub async fn exists(&self, key: &str) -> bool {
        let n: i64 = self.redis.exists(key).await.expect("exists");
        n == 1
    }

    pub async fn ttl(&self, key: &str) -> i64 {
        self.redis.ttl(key).await.expect("ttl")
    }

    pub async fn pttl(&self, key: &str) -> i64 {
        self.redis.pttl(key).await.expect("pttl")
    }

    /// Every partition's outbox entries, in the order of the calls that appended them (one call's
    /// events in stream order).
    pub async fn events(&self) -> Vec<Event> {
        let mut entries: Vec<(String, HashMap<String, String>)> = Vec::new();
        for p in Partition::all() {
            let part: Vec<(String, HashMap<String, String>)> = self
                .redis
                .xrange_values(self.k.outbox(p), "-", "+", None)
                .await
                .expect("xrange");
            entries.extend(part);
        }
        let calls = self.calls.lock().expect("calls").clone();
        let call_of = |event_id: &str| {
            calls
                .iter()
                .position(|args| args.iter().any(|a| a == event_id))
                .unwrap_or(usize::MAX)
        };
        let stream_order = |id: &str| {
            let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
            (
                ms.parse::<u64>().unwrap_or(0),
                seq.parse::<u64>().unwrap_or(0),
            )
        };
        entries.sort_by_key(|(id, fields)| {
            (
                call_of(fields.get("event_id").map(String::as_str).unwrap_or("")),
                stream_order(id),
            )
        });
        entries
            .into_iter()
            .map(|(stream_id, fields)| {
                let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
                names.sort_unstable();
                assert_eq!(
                    names,
                    ["aggregate", "at", "event_id", "payload", "type"],
                    "outbox entry fields"
                );
                let payload = serde_json::from_str(&fields["payload"])
                    .unwrap_or_else(|e| panic!("payload {}: {e}", fields["payload"]));
                Event {
                    stream_id,
                    event_id: fields["event_id"].clone(),
                    kind: fields["type"].clone(),
                    aggregate: fields["aggregate"].clone(),
                    at: mask_text(&fields["at"]),
                    payload: mask(payload),
                }
            })
            .collect()
    }

    pub async fn last_event(&self) -> Event {
        self.events().await.pop().expect("an outbox entry")
    }

    /// The idempotency record under `idem.key`: (fields, ttl seconds).
    pub async fn record(&self, idem: &Idem) -> (HashMap<String, String>, i64) {
        (self.hash(&idem.key).await, self.ttl(&idem.key).await)
    }

    // ---- the scripts, through the engine's typed calls (src/scripts/calls.rs) ----

    /// Runs a typed call, remembering its arguments so `events()` can order events by call.
    pub async fn invoke<C: ScriptCall>(&self, call: &C) -> ScriptReply {
        self.calls.lock().expect("calls").push(call.args(&self.k));
        self.scripts
            .invoke(&self.redis, &self.k, call)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", C::SCRIPT.name()))
    }

    fn remember_order(&self, order: i64, member: i64) {
        self.orders.lock().expect("orders").insert(order, member);
    }

    /// The member an order was reserved for in this test (the order key names its partition).
    pub fn member_of(&self, order: i64) -> i64 {
        self.orders
            .lock()
            .expect("orders")
            .get(&order)
            .copied()
            .unwrap_or(1)
    }

    /// The order's hash key (in its member's partition).
    pub fn order_key(&self, order: i64) -> String {
        self.k.order(self.member_of(order), order)
    }

    /// Sign-up as the route runs it (src/signup.rs): the address claimed, the member, the claim
    /// confirmed (or released after a refused member step).
    pub async fn signup(
        &self,
        id: i64,
        email: &str,
        name: &str,
        event: &str,
        _at: i64,
    ) -> ScriptReply {
        self.calls
            .lock()
            .expect("calls")
            .push(vec![event.to_string()]);
        flashsale::signup::register(
            self.store(),
            &flashsale::signup::Signup {
                member_id: id,
                email,
                name,
                password_hash: PASSWORD_HASH,
                event_id: event.into(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("signup: {e:?}"))
    }

    // ---- the sign-up's steps one by one ----

    pub fn claim_ref(&self, member: i64, email: &str) -> ClaimRef {
        ClaimRef {
            member_id: member,
            email: email.into(),
        }
    }

    /// email_claim's raw reply: ["claimed", deadline], ["confirmed"] or ["taken"].
    pub async fn claim(&self, member: i64, email: &str, ttl_ms: i64) -> Json {
        let value = self
            .scripts
            .run_call(
                &self.redis,
                &self.k,
                &EmailClaim {
                    claim: self.claim_ref(member, email),
                    ttl_ms,
                },
            )
            .await
            .expect("email_claim");
        Json::Array(
            value
                .into_array()
                .into_iter()
                .map(|v| match v.as_i64() {
                    Some(n) if v.is_integer() => json_int(n),
                    _ => Json::String(v.as_string().unwrap_or_default()),
                })
                .collect(),
        )
    }

    /// The member step alone, with the claim deadline given.
    pub async fn member_step(
        &self,
        id: i64,
        email: &str,
        event: &str,
        claim_deadline_ms: i64,
    ) -> ScriptReply {
        self.invoke(&MemberSignup {
            member_id: id,
            email,
            name: "Ann",
            password_hash: PASSWORD_HASH,
            event_id: event.into(),
            claim_deadline_ms,
        })
        .await
    }

    pub async fn confirm_claim(&self, member: i64, email: &str) -> String {
        self.outcome(&EmailConfirm {
            claim: self.claim_ref(member, email),
        })
        .await
    }

    pub async fn release_claim(
        &self,
        member: i64,
        email: &str,
        sweep_margin_ms: Option<i64>,
    ) -> String {
        self.outcome(&EmailRelease {
            claim: self.claim_ref(member, email),
            sweep_margin_ms,
        })
        .await
    }

    /// Every partition's pending e-mail claims, merged: entry -> deadline.
    pub async fn pending_claims(&self) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        for p in Partition::all() {
            all.extend(self.zset(&self.k.email_claims(p)).await);
        }
        all
    }

    /// The claim sweep of every partition, as the expiry task runs it: (released, confirmed).
    pub async fn sweep_claims(&self) -> (usize, usize) {
        let mut totals = (0, 0);
        for p in Partition::all() {
            let sweep = flashsale::signup::sweep_email_claims(self.store(), p)
                .await
                .expect("claim sweep");
            totals.0 += sweep.released;
            totals.1 += sweep.confirmed;
        }
        totals
    }

    pub async fn charge_limited(
        &self,
        member: i64,
        idem: &Idem,
        amount: i64,
        limit: i64,
        event: &str,
        _at: i64,
    ) -> ScriptReply {
        self.invoke(&PointsCharge {
            member_id: member,
            idem: idem.typed(),
            amount,
            balance_limit: limit,
            event_id: event.into(),
        })
        .await
    }

    pub async fn charge(
        &self,
        member: i64,
        idem: &Idem,
        amount: i64,
        event: &str,
        at: i64,
    ) -> ScriptReply {
        self.charge_limited(member, idem, amount, MAX_BALANCE, event, at)
            .await
    }

    pub async fn create_product(
        &self,
        id: i64,
        name: &str,
        price: i64,
        stock: i64,
        event: &str,
        at: i64,
    ) -> ScriptReply {
        // As the route runs it: the listing index entry, then the script.
        let call = ProductCreate {
            product_id: id,
            name: name.into(),
            price,
            stock,
            rules: Default::default(),
            created_at: rfc(at),
            event_id: event.into(),
        };
        self.calls.lock().expect("calls").push(call.args(&self.k));
        flashsale::hot_path::create_product_in_redis(self.store(), &call)
            .await
            .unwrap_or_else(|e| panic!("product_create: {e:?}"))
    }

    pub async fn stock_add_limited(
        &self,
        id: i64,
        add: i64,
        limit: i64,
        event: &str,
        at: i64,
    ) -> ScriptReply {
        self.invoke(&ProductStockAdd {
            product_id: id,
            add,
            stock_limit: limit,
            now_ms: at,
            now: rfc(at),
            event_id: event.into(),
        })
        .await
    }

    pub async fn stock_add(&self, id: i64, add: i64, event: &str, at: i64) -> ScriptReply {
        self.stock_add_limited(id, add, MAX_STOCK, event, at).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create_coupon(
        &self,
        id: i64,
        discount_type: &str,
        value: i64,
        quantity: i64,
        from_ms: i64,
        until_ms: i64,
        event: &str,
        at: i64,
    ) -> ScriptReply {
        self.invoke(&CouponCreate {
            coupon_id: id,
            name: format!("coupon {id}"),
            discount_type: discount_type.into(),
            discount_value: value,
            total_quantity: quantity,
            valid_from_ms: from_ms,
            valid_from: rfc(from_ms),
            valid_until_ms: until_ms,
            valid_until: rfc(until_ms),
            now: rfc(at),
            event_id: event.into(),
        })
        .await
    }

    pub async fn issue(
        &self,
        coupon: i64,
        member: i64,
        idem: Option<&Idem>,
        event: &str,
        _at: i64,
    ) -> ScriptReply {
        let idem = match idem {
            Some(i) => i.typed(),
            None => TypedIdem {
                digest: None,
                fingerprint: "fp-no-key".into(),
            },
        };
        let reply = self
            .invoke(&CouponIssue {
                coupon_id: coupon,
                member_id: member,
                idem,
                event_id: event.into(),
            })
            .await;
        if matches!(reply, ScriptReply::Ok { .. }) {
            self.run_wallet_step(event).await;
        }
        reply
    }

    /// The saga step the engine's worker runs for a coupon.issued event (src/pipeline/saga.rs), run here at once
    /// so the tests see the wallet entry; running it again changes nothing.
    pub async fn run_wallet_step(&self, event: &str) -> String {
        let Some(issued) = self
            .events()
            .await
            .into_iter()
            .find(|e| e.event_id == event && e.kind == "coupon.issued")
        else {
            return "no event".into();
        };
        let call =
            CouponWalletAdd::from_issued(&issued.payload).expect("wallet fields in the event");
        self.scripts
            .run_call(&self.redis, &self.k, &call)
            .await
            .expect("coupon_wallet_add")
            .as_string()
            .expect("coupon_wallet_add returns a string")
    }

    /// What the engine's order sagas run against (src/orders.rs).
    pub fn store(&self) -> Store<'_> {
        Store {
            redis: &self.redis,
            scripts: &self.scripts,
            keys: &self.k,
            sold_out: None,
        }
    }

    /// Reserve as the route runs it (src/orders.rs): the holds, then the member step.
    #[allow(clippy::too_many_arguments)]
    pub async fn reserve(
        &self,
        member: i64,
        order: i64,
        idem: &Idem,
        items: &[(i64, i64)],
        expires_ms: i64,
        event: &str,
        at: i64,
    ) -> ScriptReply {
        self.try_reserve(member, order, idem, items, expires_ms - at, event)
            .await
            .unwrap_or_else(|e| panic!("reserve: {e:?}"))
    }

    /// Reserve with the member step's TTL given; errors (e.g. the 503 of lapsed holds) returned.
    pub async fn try_reserve(
        &self,
        member: i64,
        order: i64,
        idem: &Idem,
        items: &[(i64, i64)],
        reservation_ttl_ms: i64,
        event: &str,
    ) -> Result<ScriptReply, flashsale::error::ApiError> {
        self.remember_order(order, member);
        self.calls
            .lock()
            .expect("calls")
            .push(vec![event.to_string()]);
        // The member step stamps Redis time and expires the order this TTL later (negative: already due).
        flashsale::orders::reserve(
            self.store(),
            &Reserve {
                member_id: member,
                order_id: order,
                idem: idem.typed(),
                items: items.to_vec(),
                reservation_ttl_ms,
                event_id: event.into(),
            },
            None,
        )
        .await
    }

    // ---- the product-slot steps one by one ----

    pub fn hold_ref(&self, product: i64, order: i64, member: i64) -> HoldRef {
        HoldRef {
            product_id: product,
            order_id: order,
            member_id: member,
        }
    }

    /// stock_hold's raw reply, e.g. ["held", price, deadline] or ["out_of_stock", stock].
    pub async fn hold(&self, product: i64, order: i64, member: i64, qty: i64, ttl_ms: i64) -> Json {
        self.remember_order(order, member);
        let value = self
            .scripts
            .run_call(
                &self.redis,
                &self.k,
                &StockHold {
                    hold: self.hold_ref(product, order, member),
                    quantity: qty,
                    ttl_ms,
                },
            )
            .await
            .expect("stock_hold");
        Json::Array(
            value
                .into_array()
                .into_iter()
                .map(|v| match v.as_i64() {
                    Some(n) if v.is_integer() => json_int(n),
                    _ => Json::String(v.as_string().unwrap_or_default()),
                })
                .collect(),
        )
    }

    async fn outcome<C: ScriptCall>(&self, call: &C) -> String {
        self.scripts
            .run_call(&self.redis, &self.k, call)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", C::SCRIPT.name()))
            .as_string()
            .unwrap_or_else(|| panic!("{} returns a string", C::SCRIPT.name()))
    }

    pub async fn release(
        &self,
        product: i64,
        order: i64,
        member: i64,
        orphan_margin_ms: Option<i64>,
    ) -> String {
        self.outcome(&StockRelease {
            hold: self.hold_ref(product, order, member),
            orphan_margin_ms,
        })
        .await
    }

    pub async fn commit(&self, product: i64, order: i64, member: i64) -> String {
        self.outcome(&StockCommit {
            hold: self.hold_ref(product, order, member),
        })
        .await
    }

    pub async fn give_back(&self, product: i64, order: i64, member: i64, qty: i64) -> String {
        self.outcome(&StockReturn {
            hold: self.hold_ref(product, order, member),
            quantity: qty,
        })
        .await
    }

    pub async fn confirm(&self, product: i64, order: i64, member: i64) -> String {
        self.outcome(&HoldConfirm {
            hold: self.hold_ref(product, order, member),
        })
        .await
    }

    /// Every partition's pending holds, merged: entry -> deadline.
    pub async fn pending_holds(&self) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        for p in Partition::all() {
            all.extend(self.zset(&self.k.holds_pending(p)).await);
        }
        all
    }

    /// The orphan sweep of every partition, as the expiry task runs it: (released, confirmed).
    pub async fn sweep_orphans(&self) -> (usize, usize) {
        let mut totals = (0, 0);
        for p in Partition::all() {
            let sweep = flashsale::orders::sweep_orphan_holds(self.store(), p)
                .await
                .expect("orphan sweep");
            totals.0 += sweep.released;
            totals.1 += sweep.confirmed;
        }
        totals
    }

    /// Runs the saga worker's step (src/pipeline/saga.rs) for every outbox entry of this test, in call order,
    /// as a worker would after a crash; every step is idempotent.
    pub async fn run_saga_steps(&self) {
        for e in self.events().await {
            let fields: HashMap<String, String> = [
                ("type".to_string(), e.kind.clone()),
                ("payload".to_string(), e.payload.to_string()),
            ]
            .into();
            flashsale::pipeline::saga::run_step(self.store(), &fields)
                .await
                .expect("saga step");
        }
    }

    pub async fn pay(
        &self,
        member: i64,
        order: i64,
        coupon: Option<i64>,
        idem: &Idem,
        event: &str,
        at: i64,
    ) -> ScriptReply {
        self.invoke(&OrderPay {
            member_id: member,
            order_id: order,
            idem: idem.typed(),
            coupon_id: coupon,
            day: day(at),
            popular_day_ttl_secs: POPULAR_DAY_TTL_SECS,
            event_id: event.into(),
        })
        .await
    }

    /// Cancel as the route runs it (src/orders.rs): the member step, then the stock back inline.
    pub async fn cancel(
        &self,
        member: i64,
        order: i64,
        idem: &Idem,
        event: &str,
        at: i64,
    ) -> ScriptReply {
        self.calls
            .lock()
            .expect("calls")
            .push(vec![event.to_string()]);
        flashsale::orders::cancel(
            self.store(),
            member,
            order,
            idem.typed(),
            day(at),
            event.into(),
        )
        .await
        .unwrap_or_else(|e| panic!("cancel: {e:?}"))
    }

    /// Expire as the expiry task runs it (src/orders.rs): the member step, then the holds released.
    pub async fn expire(&self, order: i64, event: &str, at: i64) -> String {
        let _ = at; // due by Redis time now
        self.calls
            .lock()
            .expect("calls")
            .push(vec![event.to_string()]);
        flashsale::orders::expire(
            self.store(),
            Partition::of_id(self.member_of(order)),
            order,
            event.into(),
        )
        .await
        .expect("expire")
    }

    /// The popular ranking as the engine merges it (src/popular.rs): `window` days ending on the day
    /// named first in `days` (the tests list the window's days, newest first).
    pub async fn popular(
        &self,
        window: u32,
        days: &[String],
        limit: i64,
        cache_ms: i64,
    ) -> Vec<(String, String)> {
        let first = days.first().expect("a day");
        let now = chrono::NaiveDate::parse_from_str(first, "%Y%m%d")
            .expect("YYYYMMDD")
            .and_hms_opt(12, 0, 0)
            .expect("noon")
            .and_utc();
        let ranking = flashsale::popular::ranking(
            &self.redis,
            &self.k,
            &self.popular,
            cache_ms as u64,
            now,
            i64::from(window),
        )
        .await
        .expect("popular ranking");
        ranking
            .iter()
            .take(limit as usize)
            .map(|(id, units)| (id.to_string(), units.to_string()))
            .collect()
    }

    /// Every partition's reservation index, merged (the engine sweeps them one by one).
    pub async fn reservations(&self) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        for p in Partition::all() {
            all.extend(self.zset(&self.k.reservations(p)).await);
        }
        all
    }

    /// One day's popular counters of every partition, summed.
    pub async fn popular_day(&self, day: &str) -> BTreeMap<String, String> {
        let mut units: BTreeMap<String, f64> = BTreeMap::new();
        for p in Partition::all() {
            for (product, n) in self.zset(&self.k.popular_day(p, day)).await {
                *units.entry(product).or_default() += n.parse::<f64>().expect("score");
            }
        }
        units
            .into_iter()
            .map(|(product, n)| (product, format!("{n}")))
            .collect()
    }

    /// The popular day keys (of any partition) that exist, with their TTL in seconds.
    pub async fn popular_day_ttls(&self, day: &str) -> Vec<i64> {
        let mut ttls = Vec::new();
        for p in Partition::all() {
            let key = self.k.popular_day(p, day);
            if self.exists(&key).await {
                ttls.push(self.ttl(&key).await);
            }
        }
        ttls
    }

    // ---- setup shortcuts (through the scripts) ----

    pub async fn member_with(&self, id: i64, points: i64, at: i64) {
        ok_body(
            &self
                .signup(
                    id,
                    &format!("m{id}@example.test"),
                    &format!("member {id}"),
                    &ev(),
                    at,
                )
                .await,
            201,
        );
        if points > 0 {
            ok_body(
                &self.charge(id, &self.idem(id), points, &ev(), at).await,
                200,
            );
        }
    }

    pub async fn product(&self, id: i64, price: i64, stock: i64, at: i64) {
        ok_body(
            &self
                .create_product(id, &format!("product {id}"), price, stock, &ev(), at)
                .await,
            201,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn coupon(
        &self,
        id: i64,
        discount_type: &str,
        value: i64,
        quantity: i64,
        from: i64,
        until: i64,
        at: i64,
    ) {
        ok_body(
            &self
                .create_coupon(id, discount_type, value, quantity, from, until, &ev(), at)
                .await,
            201,
        );
    }

    pub async fn issued(&self, coupon: i64, member: i64, at: i64) {
        ok_body(&self.issue(coupon, member, None, &ev(), at).await, 201);
    }

    /// Reserves an order expiring RESERVATION_MS after `at`; returns the body.
    pub async fn reserved(&self, member: i64, order: i64, items: &[(i64, i64)], at: i64) -> Json {
        ok_body(
            &self
                .reserve(
                    member,
                    order,
                    &self.idem(member),
                    items,
                    at + RESERVATION_MS,
                    &ev(),
                    at,
                )
                .await,
            201,
        )
    }

    /// Reserves an order expiring `ttl_ms` after Redis time at the call (0: due at once; negative:
    /// past its expiry already); returns the body.
    pub async fn reserved_ttl(
        &self,
        member: i64,
        order: i64,
        items: &[(i64, i64)],
        ttl_ms: i64,
    ) -> Json {
        ok_body(
            &self
                .reserve(member, order, &self.idem(member), items, ttl_ms, &ev(), 0)
                .await,
            201,
        )
    }

    /// Redis's own clock in ms (what the scripts decide and stamp with).
    pub async fn redis_ms(&self) -> i64 {
        let t: Vec<String> = self
            .redis
            .eval(
                "return redis.call('TIME')",
                Vec::<String>::new(),
                Vec::<String>::new(),
            )
            .await
            .expect("TIME");
        t[0].parse::<i64>().expect("secs") * 1000 + t[1].parse::<i64>().expect("micros") / 1000
    }

    /// Sets hash fields directly (state a script cannot reach, e.g. planted as a rebuild would).
    pub async fn hset(&self, key: &str, field: &str, value: &str) {
        let _: i64 = self
            .redis
            .hset(key, (field.to_string(), value.to_string()))
            .await
            .expect("hset");
    }

    pub async fn paid(&self, member: i64, order: i64, coupon: Option<i64>, at: i64) -> Json {
        ok_body(
            &self
                .pay(member, order, coupon, &self.idem(member), &ev(), at)
                .await,
            200,
        )
    }
}
