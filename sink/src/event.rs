//! The Kafka event JSON (docs/architecture.md, "Events"): decoding and validation.
//!
//! Value: `{"event_id","type","aggregate","at","payload":{...}}`. Integers may arrive as JSON numbers
//! (also integral floats such as `1e+15`, which Lua's cjson writes for big numbers) or as decimal strings;
//! times are RFC 3339 and are stored as UTC `NaiveDateTime`.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

/// Why a message could not be decoded: it is poison and goes to the dead-letter topic.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("invalid {event_type} payload: {error}")]
    Payload { event_type: String, error: String },
    #[error("invalid event: {0}")]
    Invalid(String),
}

/// An integer id or amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(Int(i))
                } else if let Some(f) = n.as_f64() {
                    if f.fract() == 0.0 && f.abs() < 9.0e15 {
                        Ok(Int(f as i64))
                    } else {
                        Err(de::Error::custom(format!("not an integer: {n}")))
                    }
                } else {
                    Err(de::Error::custom(format!("not an integer: {n}")))
                }
            }
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(Int)
                .map_err(|_| de::Error::custom(format!("not an integer: {s:?}"))),
            other => Err(de::Error::custom(format!(
                "expected an integer, got {other}"
            ))),
        }
    }
}

/// An RFC 3339 time, kept as UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ts(pub NaiveDateTime);

impl Ts {
    /// RFC 3339 text to UTC `NaiveDateTime`.
    pub fn parse(s: &str) -> Result<Self, String> {
        DateTime::parse_from_rfc3339(s.trim())
            .map(|t| Ts(t.with_timezone(&Utc).naive_utc()))
            .map_err(|e| format!("not an RFC 3339 time: {s:?} ({e})"))
    }
}

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ts::parse(&s).map_err(de::Error::custom)
    }
}

/// Missing, `null` and `""` all mean "none" (Lua writes empty hash fields as null, but be lenient).
fn opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(de::Error::custom),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct MemberRegistered {
    pub member_id: Int,
    pub email: String,
    pub name: String,
    /// Only in events of engines before issue 8 item 14 (the engine now writes the hash to
    /// member_credentials itself); kept so such events still restore their login.
    #[serde(default)]
    pub password_hash: Option<String>,
    pub created_at: Ts,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PointsCharged {
    pub member_id: Int,
    pub amount: Int,
    pub balance_after: Int,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProductCreated {
    pub product_id: Int,
    pub name: String,
    pub price: Int,
    pub stock: Int,
    pub created_at: Ts,
    /// Sale rules (issue 11): null or missing (events of engines before them) = no such rule.
    #[serde(default, deserialize_with = "opt")]
    pub sale_starts_at: Option<Ts>,
    #[serde(default, deserialize_with = "opt")]
    pub sale_ends_at: Option<Ts>,
    #[serde(default, deserialize_with = "opt")]
    pub per_member_limit: Option<Int>,
}

impl ProductCreated {
    pub fn rules(&self) -> SaleRules {
        SaleRules::of(
            self.sale_starts_at,
            self.sale_ends_at,
            self.per_member_limit,
        )
    }
}

/// `product.rules_changed`: the whole rule set after the change (not a delta). Every rule field must be
/// there, null when the rule is unset: a missing one is a malformed event, not a cleared rule.
#[derive(Debug, Clone, Deserialize)]
pub struct ProductRulesChanged {
    pub product_id: Int,
    #[serde(deserialize_with = "opt")]
    pub sale_starts_at: Option<Ts>,
    #[serde(deserialize_with = "opt")]
    pub sale_ends_at: Option<Ts>,
    #[serde(deserialize_with = "opt")]
    pub per_member_limit: Option<Int>,
    pub changed_at: Ts,
}

impl ProductRulesChanged {
    pub fn rules(&self) -> SaleRules {
        SaleRules::of(
            self.sale_starts_at,
            self.sale_ends_at,
            self.per_member_limit,
        )
    }
}

/// A product's sale rules as MySQL keeps them (`products.sale_starts_at`, `sale_ends_at`,
/// `per_member_limit`); `None` = no such rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct SaleRules {
    pub sale_starts_at: Option<NaiveDateTime>,
    pub sale_ends_at: Option<NaiveDateTime>,
    /// Checked at decoding: 1..=i32::MAX (an INT column).
    pub per_member_limit: Option<i32>,
}

impl SaleRules {
    fn of(starts: Option<Ts>, ends: Option<Ts>, limit: Option<Int>) -> Self {
        SaleRules {
            sale_starts_at: starts.map(|t| t.0),
            sale_ends_at: ends.map(|t| t.0),
            per_member_limit: limit.and_then(|l| i32::try_from(l.0).ok()),
        }
    }
}

/// A per-member limit, when given, is a number of units: 1 or more (and fits MySQL's INT).
fn check_limit(event_type: &str, limit: Option<Int>) -> Result<(), DecodeError> {
    match limit {
        None => Ok(()),
        Some(Int(l)) => check(l >= 1 && i32::try_from(l).is_ok(), || {
            format!(
                "{event_type} per_member_limit must be 1..={}, got {l}",
                i32::MAX
            )
        }),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProductStockAdded {
    pub product_id: Int,
    pub add: Int,
    #[serde(default, deserialize_with = "opt")]
    pub stock_after: Option<Int>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CouponCreated {
    pub coupon_id: Int,
    pub name: String,
    pub discount_type: String,
    pub discount_value: Int,
    pub total_quantity: Int,
    pub valid_from: Ts,
    pub valid_until: Ts,
    pub created_at: Ts,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CouponQuantityAdded {
    pub coupon_id: Int,
    pub add: Int,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CouponIssued {
    pub coupon_id: Int,
    pub member_id: Int,
    pub issued_at: Ts,
    #[serde(default, deserialize_with = "opt")]
    pub remaining_after: Option<Int>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderItem {
    pub product_id: Int,
    pub quantity: Int,
    pub unit_price: Int,
}

/// The order snapshot every order event carries.
#[derive(Debug, Clone, Deserialize)]
pub struct OrderSnapshot {
    pub id: Int,
    pub member_id: Int,
    pub status: String,
    pub items: Vec<OrderItem>,
    pub total_amount: Int,
    #[serde(default, deserialize_with = "opt")]
    pub discount_amount: Option<Int>,
    #[serde(default, deserialize_with = "opt")]
    pub paid_amount: Option<Int>,
    #[serde(default, deserialize_with = "opt")]
    pub coupon_id: Option<Int>,
    pub expires_at: Ts,
    pub created_at: Ts,
    #[serde(default, deserialize_with = "opt")]
    pub paid_at: Option<Ts>,
    #[serde(default, deserialize_with = "opt")]
    pub closed_at: Option<Ts>,
}

impl OrderSnapshot {
    pub fn discount(&self) -> i64 {
        self.discount_amount.map_or(0, |v| v.0)
    }
    pub fn paid(&self) -> i64 {
        self.paid_amount.map_or(0, |v| v.0)
    }
    /// Items with one line per product (quantities of repeated products added up), in first-seen order.
    pub fn merged_items(&self) -> Vec<(i64, i64, i64)> {
        let mut out: Vec<(i64, i64, i64)> = Vec::with_capacity(self.items.len());
        for it in &self.items {
            match out.iter_mut().find(|(p, _, _)| *p == it.product_id.0) {
                Some(line) => line.1 += it.quantity.0,
                None => out.push((it.product_id.0, it.quantity.0, it.unit_price.0)),
            }
        }
        out
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderEvent {
    pub order: OrderSnapshot,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderPaid {
    pub order: OrderSnapshot,
    #[serde(default, deserialize_with = "opt")]
    pub balance_after: Option<Int>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrderCancelled {
    pub order: OrderSnapshot,
    pub previous_status: String,
    #[serde(default, deserialize_with = "opt")]
    pub refunded_amount: Option<Int>,
    #[serde(default, deserialize_with = "opt")]
    pub balance_after: Option<Int>,
}

/// What happened, by event type.
#[derive(Debug, Clone)]
pub enum Body {
    MemberRegistered(MemberRegistered),
    PointsCharged(PointsCharged),
    ProductCreated(ProductCreated),
    ProductRulesChanged(ProductRulesChanged),
    ProductStockAdded(ProductStockAdded),
    CouponCreated(CouponCreated),
    CouponQuantityAdded(CouponQuantityAdded),
    CouponIssued(CouponIssued),
    OrderReserved(OrderEvent),
    OrderPaid(OrderPaid),
    OrderCancelled(OrderCancelled),
    OrderExpired(OrderEvent),
}

/// A decoded, validated event.
#[derive(Debug, Clone)]
pub struct Event {
    /// Lower-case hyphenated UUID.
    pub event_id: String,
    pub event_type: String,
    pub aggregate: String,
    pub at: NaiveDateTime,
    pub body: Body,
}

#[derive(Deserialize)]
struct Envelope {
    event_id: String,
    #[serde(rename = "type")]
    event_type: String,
    aggregate: String,
    at: String,
    payload: Value,
}

/// Order status and its rank (RESERVED 1, PAID 2, CANCELLED/EXPIRED 3).
pub fn status_rank(status: &str) -> Option<i8> {
    match status {
        "RESERVED" => Some(1),
        "PAID" => Some(2),
        "CANCELLED" | "EXPIRED" => Some(3),
        _ => None,
    }
}

fn payload<T: serde::de::DeserializeOwned>(event_type: &str, v: Value) -> Result<T, DecodeError> {
    serde_json::from_value(v).map_err(|e| DecodeError::Payload {
        event_type: event_type.to_string(),
        error: e.to_string(),
    })
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), DecodeError> {
    if cond {
        Ok(())
    } else {
        Err(DecodeError::Invalid(what()))
    }
}

fn check_order(o: &OrderSnapshot, expected_status: &str) -> Result<(), DecodeError> {
    check(status_rank(&o.status).is_some(), || {
        format!("order {} has unknown status {:?}", o.id.0, o.status)
    })?;
    check(o.status == expected_status, || {
        format!(
            "order {} snapshot status {} does not match the event ({expected_status})",
            o.id.0, o.status
        )
    })?;
    check(!o.items.is_empty(), || {
        format!("order {} has no items", o.id.0)
    })?;
    for it in &o.items {
        check(it.quantity.0 > 0, || {
            format!("order {} item quantity must be > 0", o.id.0)
        })?;
    }
    Ok(())
}

impl Event {
    /// Decodes one Kafka message value. Any error makes the message poison.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))?;
        let event_id = uuid::Uuid::parse_str(env.event_id.trim())
            .map_err(|_| {
                DecodeError::Invalid(format!("event_id {:?} is not a UUID", env.event_id))
            })?
            .hyphenated()
            .to_string();
        check(
            !env.aggregate.is_empty() && env.aggregate.len() <= 64,
            || format!("aggregate {:?} must be 1..64 characters", env.aggregate),
        )?;
        let at = Ts::parse(&env.at).map_err(DecodeError::Invalid)?.0;
        // The outbox keeps the payload as JSON text; the relay sends an object. Accept both.
        let p = match env.payload {
            Value::String(s) => {
                serde_json::from_str(&s).map_err(|e| DecodeError::Json(format!("payload: {e}")))?
            }
            v => v,
        };
        let t = env.event_type.as_str();
        let body = match t {
            "member.registered" => Body::MemberRegistered(payload(t, p)?),
            "points.charged" => {
                let b: PointsCharged = payload(t, p)?;
                check(b.amount.0 > 0, || {
                    "points.charged amount must be > 0".into()
                })?;
                Body::PointsCharged(b)
            }
            "product.created" => {
                let b: ProductCreated = payload(t, p)?;
                check(b.stock.0 >= 0, || {
                    "product.created stock must be >= 0".into()
                })?;
                check_limit(t, b.per_member_limit)?;
                Body::ProductCreated(b)
            }
            "product.rules_changed" => {
                let b: ProductRulesChanged = payload(t, p)?;
                check_limit(t, b.per_member_limit)?;
                Body::ProductRulesChanged(b)
            }
            "product.stock_added" => {
                let b: ProductStockAdded = payload(t, p)?;
                check(b.add.0 > 0, || "product.stock_added add must be > 0".into())?;
                Body::ProductStockAdded(b)
            }
            "coupon.created" => Body::CouponCreated(payload(t, p)?),
            "coupon.quantity_added" => {
                let b: CouponQuantityAdded = payload(t, p)?;
                check(b.add.0 > 0, || {
                    "coupon.quantity_added add must be > 0".into()
                })?;
                Body::CouponQuantityAdded(b)
            }
            "coupon.issued" => Body::CouponIssued(payload(t, p)?),
            "order.reserved" => {
                let b: OrderEvent = payload(t, p)?;
                check_order(&b.order, "RESERVED")?;
                Body::OrderReserved(b)
            }
            "order.paid" => {
                let b: OrderPaid = payload(t, p)?;
                check_order(&b.order, "PAID")?;
                Body::OrderPaid(b)
            }
            "order.cancelled" => {
                let b: OrderCancelled = payload(t, p)?;
                check_order(&b.order, "CANCELLED")?;
                check(
                    matches!(b.previous_status.as_str(), "RESERVED" | "PAID"),
                    || {
                        format!(
                            "previous_status {:?} must be RESERVED or PAID",
                            b.previous_status
                        )
                    },
                )?;
                Body::OrderCancelled(b)
            }
            "order.expired" => {
                let b: OrderEvent = payload(t, p)?;
                check_order(&b.order, "EXPIRED")?;
                Body::OrderExpired(b)
            }
            other => return Err(DecodeError::UnknownType(other.to_string())),
        };
        Ok(Event {
            event_id,
            event_type: env.event_type,
            aggregate: env.aggregate,
            at,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(status: &str) -> Value {
        json!({"id": 9, "member_id": "3", "status": status,
               "items": [{"product_id": 1, "quantity": 2, "unit_price": 1000}],
               "total_amount": 2000, "discount_amount": 0, "paid_amount": 0, "coupon_id": null,
               "expires_at": "2026-11-24T05:10:00.000Z", "created_at": "2026-11-24T05:00:00.000Z",
               "paid_at": null, "closed_at": null})
    }

    fn env(t: &str, payload: Value) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"event_id": "0b5e9c9e-2f1a-4a57-9d3c-7d1f0a3c1e11", "type": t,
            "aggregate": "order:9", "at": "2026-11-24T05:00:00.123Z", "payload": payload}),
        )
        .unwrap()
    }

    #[test]
    fn decodes_order_reserved_with_string_ids() {
        let ev =
            Event::decode(&env("order.reserved", json!({"order": order("RESERVED")}))).unwrap();
        assert_eq!(ev.at.and_utc().timestamp_subsec_millis(), 123);
        match ev.body {
            Body::OrderReserved(o) => {
                assert_eq!(o.order.member_id, Int(3));
                assert_eq!(o.order.coupon_id, None);
                assert_eq!(o.order.paid_at, None);
            }
            _ => panic!("wrong body"),
        }
    }

    #[test]
    fn payload_as_text_and_big_numbers() {
        let p = json!({"member_id": 1, "amount": 1e15, "balance_after": 1e15}).to_string();
        let ev = Event::decode(&env("points.charged", Value::String(p))).unwrap();
        match ev.body {
            Body::PointsCharged(b) => assert_eq!(b.amount, Int(1_000_000_000_000_000)),
            _ => panic!("wrong body"),
        }
    }

    #[test]
    fn rejects_poison() {
        assert!(matches!(Event::decode(b"{nope"), Err(DecodeError::Json(_))));
        assert!(matches!(
            Event::decode(&env("order.shipped", json!({}))),
            Err(DecodeError::UnknownType(_))
        ));
        assert!(matches!(
            Event::decode(&env("points.charged", json!({"member_id": 1}))),
            Err(DecodeError::Payload { .. })
        ));
        assert!(matches!(
            Event::decode(&env("order.paid", json!({"order": order("RESERVED")}))),
            Err(DecodeError::Invalid(_))
        ));
    }

    fn product(extra: Value) -> Value {
        let mut p = json!({"product_id": "5", "name": "P", "price": 1000, "stock": 10,
                           "created_at": "2026-11-24T05:00:00.000Z"});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    }

    fn at(s: &str) -> Option<NaiveDateTime> {
        Some(Ts::parse(s).unwrap().0)
    }

    #[test]
    fn product_created_with_and_without_rules() {
        // The shape of engines before issue 11: no rule fields at all.
        let ev = Event::decode(&env("product.created", product(json!({})))).unwrap();
        let Body::ProductCreated(b) = ev.body else {
            panic!("wrong body")
        };
        assert_eq!(b.rules(), SaleRules::default());
        let ev = Event::decode(&env(
            "product.created",
            product(json!({"sale_starts_at": "2026-11-27T05:00:00.000Z",
                           "sale_ends_at": "2026-11-27T14:00:00.250+09:00",
                           "per_member_limit": "2"})),
        ))
        .unwrap();
        let Body::ProductCreated(b) = ev.body else {
            panic!("wrong body")
        };
        assert_eq!(
            b.rules(),
            SaleRules {
                sale_starts_at: at("2026-11-27T05:00:00.000Z"),
                sale_ends_at: at("2026-11-27T05:00:00.250Z"),
                per_member_limit: Some(2),
            }
        );
        let ev = Event::decode(&env(
            "product.created",
            product(
                json!({"sale_starts_at": null, "sale_ends_at": null, "per_member_limit": null}),
            ),
        ))
        .unwrap();
        let Body::ProductCreated(b) = ev.body else {
            panic!("wrong body")
        };
        assert_eq!(b.rules(), SaleRules::default());
    }

    #[test]
    fn product_rules_changed_carries_the_whole_rule_set() {
        let ev = Event::decode(&env(
            "product.rules_changed",
            json!({"product_id": 5, "sale_starts_at": null, "sale_ends_at": "2026-11-28T00:00:00.000Z",
                   "per_member_limit": 3, "changed_at": "2026-11-27T04:00:00.001Z"}),
        ))
        .unwrap();
        let Body::ProductRulesChanged(b) = ev.body else {
            panic!("wrong body")
        };
        assert_eq!(b.product_id, Int(5));
        assert_eq!(b.changed_at.0, at("2026-11-27T04:00:00.001Z").unwrap());
        assert_eq!(
            b.rules(),
            SaleRules {
                sale_starts_at: None,
                sale_ends_at: at("2026-11-28T00:00:00.000Z"),
                per_member_limit: Some(3),
            }
        );
        // A rule field left out is malformed (not "cleared"); so are limits below 1 or above INT.
        assert!(matches!(
            Event::decode(&env(
                "product.rules_changed",
                json!({"product_id": 5, "sale_starts_at": null, "sale_ends_at": null,
                       "changed_at": "2026-11-27T04:00:00.001Z"}),
            )),
            Err(DecodeError::Payload { .. })
        ));
        for bad in [json!(0), json!(-1), json!(1_i64 << 31)] {
            assert!(matches!(
                Event::decode(&env(
                    "product.rules_changed",
                    json!({"product_id": 5, "sale_starts_at": null, "sale_ends_at": null,
                           "per_member_limit": bad, "changed_at": "2026-11-27T04:00:00.001Z"}),
                )),
                Err(DecodeError::Invalid(_))
            ));
            assert!(matches!(
                Event::decode(&env(
                    "product.created",
                    product(json!({"per_member_limit": bad}))
                )),
                Err(DecodeError::Invalid(_))
            ));
        }
    }

    #[test]
    fn time_offsets_become_utc() {
        let t = Ts::parse("2026-11-24T14:00:00.5+09:00").unwrap().0;
        assert_eq!(t.to_string(), "2026-11-24 05:00:00.500");
    }
}
