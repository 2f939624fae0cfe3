//! Request and response shapes of the contract. Requests parse into validated values once, at the
//! edge; out-of-range values are 422 VALIDATION_FAILED naming the field. Limits keep every request's
//! work bounded and every amount far from overflow (Lua numbers are doubles: exact below 2^53).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

pub const MAX_CHARGE: i64 = 100_000_000;
pub const MAX_BALANCE: i64 = 1_000_000_000_000;
pub const MAX_PRICE: i64 = 100_000_000;
pub const MAX_STOCK: i64 = 1_000_000_000;
pub const MAX_ITEMS: usize = 20;
pub const MAX_QUANTITY: i64 = 100;
pub const MAX_COUPON_QUANTITY: i64 = 10_000_000;
pub const MAX_SEED: i64 = 5_000;

/// Any JSON number that is a whole value, kept wide so "huge" is a range error (422), not a type error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(value_type = i64)]
pub struct WholeNumber(pub i128);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = WholeNumber;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E>(self, v: i64) -> Result<WholeNumber, E> {
                Ok(WholeNumber(v as i128))
            }
            fn visit_u64<E>(self, v: u64) -> Result<WholeNumber, E> {
                Ok(WholeNumber(v as i128))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<WholeNumber, E> {
                if v.is_finite() && v.fract() == 0.0 {
                    Ok(WholeNumber(v.clamp(-1e30, 1e30) as i128))
                } else {
                    Err(E::custom("expected an integer"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl WholeNumber {
    pub fn in_range(self, field: &'static str, min: i64, max: i64) -> Result<i64, ApiError> {
        if self.0 < min as i128 || self.0 > max as i128 {
            return Err(ApiError::validation(
                field,
                format!("must be between {min} and {max}"),
            ));
        }
        Ok(self.0 as i64)
    }
}

// The schema patterns below state these parse rules as JSON Schema (ECMA-262) regexes. Text: at least
// one character that is not white space, no control characters. Email: one `@`, a dotted domain that
// neither starts nor ends with a dot, no white space, control characters or `{}"<>`. Outer white space
// is trimmed by the parse, so the patterns allow it.

fn text(field: &'static str, value: &str, max_chars: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max_chars {
        return Err(ApiError::validation(
            field,
            format!("must be 1 to {max_chars} characters"),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(ApiError::validation(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_string())
}

// ---------------------------------------------------------------- members

#[derive(Debug, Deserialize, ToSchema)]
pub struct SignupRequest {
    #[schema(
        example = "alice@example.com",
        min_length = 3,
        max_length = 254,
        pattern = r#"^\s*[^@\s{}"<>\x00-\x1f\x7f-\x9f]+@[^@\s{}"<>\x00-\x1f\x7f-\x9f.]([^@\s{}"<>\x00-\x1f\x7f-\x9f]*\.)+[^@\s{}"<>\x00-\x1f\x7f-\x9f]*[^@\s{}"<>\x00-\x1f\x7f-\x9f.]\s*$"#
    )]
    pub email: String,
    #[schema(example = "correct horse battery", min_length = 8, max_length = 128)]
    pub password: String,
    #[schema(
        example = "Alice",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
}

pub struct Signup {
    pub email: String,
    pub password: String,
    pub name: String,
}

/// One definition of an email for Redis and MySQL alike: Unicode NFKC (a decomposed `e` + U+0301 is the
/// precomposed `é`, a full-width `ｊ` is `j`), then lower-cased, then NFKC again (lower-casing may
/// denormalize); MySQL compares the result byte for byte (`utf8mb4_bin`). Also: one `@`, no spaces,
/// and none of the characters that would break a Redis hash tag.
pub fn parse_email(email: &str) -> Result<String, ApiError> {
    use unicode_normalization::UnicodeNormalization;
    let lowered = email.trim().nfkc().collect::<String>().to_lowercase();
    let email = lowered.nfkc().collect::<String>();
    let valid = (3..=254).contains(&email.len())
        && email.matches('@').count() == 1
        && !email.starts_with('@')
        && !email.ends_with('@')
        && email
            .rsplit('@')
            .next()
            .is_some_and(|d| d.contains('.') && !d.starts_with('.') && !d.ends_with('.'))
        && !email.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | '"' | '<' | '>')
        });
    if !valid {
        return Err(ApiError::validation(
            "email",
            "must be a valid email address",
        ));
    }
    Ok(email)
}

impl SignupRequest {
    pub fn parse(self) -> Result<Signup, ApiError> {
        let email = parse_email(&self.email)?;
        let count = self.password.chars().count();
        if !(8..=128).contains(&count) {
            return Err(ApiError::validation(
                "password",
                "must be 8 to 128 characters",
            ));
        }
        Ok(Signup {
            email,
            password: self.password,
            name: text("name", &self.name, 100)?,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub id: i64,
    pub email: String,
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SeedMembersRequest {
    /// How many members to create.
    #[schema(value_type = i64, minimum = 1, maximum = 5_000)]
    pub count: WholeNumber,
    /// Points each starts with.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub balance: Option<WholeNumber>,
    /// Emails are `<prefix>-<n>@seed.flashsale.test` (the prefix lower-cased).
    #[schema(min_length = 1, pattern = r"^\s*[A-Za-z0-9_-]{1,64}\s*$")]
    pub email_prefix: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeededMember {
    pub id: i64,
    pub email: String,
    pub access_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeededMembers {
    pub members: Vec<SeededMember>,
}

// ---------------------------------------------------------------- points

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChargeRequest {
    /// Points to add.
    #[schema(value_type = i64, minimum = 1, maximum = 100_000_000)]
    pub amount: WholeNumber,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BalanceView {
    pub balance: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PointsHistoryEntry {
    /// CHARGE, USE or REFUND.
    #[schema(example = "CHARGE")]
    pub r#type: String,
    pub amount: i64,
    pub balance_after: i64,
    pub at: DateTime<Utc>,
}

// ---------------------------------------------------------------- products

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateProductRequest {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    #[schema(value_type = i64, minimum = 1, maximum = 100_000_000)]
    pub price: WholeNumber,
    #[schema(value_type = i64, minimum = 0, maximum = 1_000_000_000)]
    pub stock: WholeNumber,
    /// When the sale opens (RFC 3339, years 1971..9989 as the pattern says; every such instant is
    /// accepted); orders before it are refused with SALE_NOT_STARTED. Default: open now.
    #[schema(
        pattern = r"^(19(7[1-9]|[89][0-9])|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9])-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
    )]
    pub sale_starts_at: Option<DateTime<Utc>>,
    /// When the sale closes (RFC 3339, after sale_starts_at); orders from then on are refused with
    /// SALE_ENDED (a reservation taken before may still be paid). Default: never.
    #[schema(
        pattern = r"^(19(7[1-9]|[89][0-9])|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9])-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
    )]
    pub sale_ends_at: Option<DateTime<Utc>>,
    /// Units one member may hold in live (reserved or paid) orders. Default: no limit.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1_000_000_000)]
    pub per_member_limit: Option<WholeNumber>,
}

/// A product's sale rules as the scripts keep them: Redis-time ms and units; None = no such rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaleRules {
    pub starts_ms: Option<i64>,
    pub ends_ms: Option<i64>,
    pub per_member_limit: Option<i64>,
}

/// One rule in a PATCH: left as it is, cleared (JSON null) or set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RuleChange {
    #[default]
    Keep,
    Clear,
    Set(i64),
}

pub struct NewProduct {
    pub name: String,
    pub price: i64,
    pub stock: i64,
    pub rules: SaleRules,
}

/// The latest instant a sale rule may name (9999-12-31T23:59:59.999Z: the scripts write 4-digit years).
const MAX_INSTANT_MS: i64 = 253_402_300_799_999;

fn instant_ms(field: &'static str, at: DateTime<Utc>) -> Result<i64, ApiError> {
    let ms = at.timestamp_millis();
    if !(0..=MAX_INSTANT_MS).contains(&ms) {
        return Err(ApiError::validation(
            field,
            "must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z",
        ));
    }
    Ok(ms)
}

fn member_limit(limit: WholeNumber) -> Result<i64, ApiError> {
    limit.in_range("per_member_limit", 1, MAX_STOCK)
}

impl CreateProductRequest {
    pub fn parse(self) -> Result<NewProduct, ApiError> {
        let starts_ms = self
            .sale_starts_at
            .map(|at| instant_ms("sale_starts_at", at))
            .transpose()?;
        let ends_ms = self
            .sale_ends_at
            .map(|at| instant_ms("sale_ends_at", at))
            .transpose()?;
        if let (Some(starts), Some(ends)) = (starts_ms, ends_ms) {
            if ends <= starts {
                return Err(ApiError::validation(
                    "sale_ends_at",
                    "must be after sale_starts_at",
                ));
            }
        }
        Ok(NewProduct {
            name: text("name", &self.name, 200)?,
            price: self.price.in_range("price", 1, MAX_PRICE)?,
            stock: self.stock.in_range("stock", 0, MAX_STOCK)?,
            rules: SaleRules {
                starts_ms,
                ends_ms,
                per_member_limit: self.per_member_limit.map(member_limit).transpose()?,
            },
        })
    }
}

/// `PATCH /admin/products/{id}`: each rule absent (kept), null (cleared) or a value (set).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchProductRequest {
    /// null: open now.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^(19(7[1-9]|[89][0-9])|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9])-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")]
    pub sale_starts_at: Option<Option<DateTime<Utc>>>,
    /// null: never closes.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^(19(7[1-9]|[89][0-9])|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9])-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")]
    pub sale_ends_at: Option<Option<DateTime<Utc>>>,
    /// null: no limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1_000_000_000)]
    pub per_member_limit: Option<Option<WholeNumber>>,
}

/// A field that is present is `Some` (holding `None` for JSON null); an absent one stays `None` via
/// `#[serde(default)]`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

pub struct RulesPatch {
    pub starts_ms: RuleChange,
    pub ends_ms: RuleChange,
    pub per_member_limit: RuleChange,
}

impl PatchProductRequest {
    pub fn parse(self) -> Result<RulesPatch, ApiError> {
        fn change<T>(
            value: Option<Option<T>>,
            parse: impl FnOnce(T) -> Result<i64, ApiError>,
        ) -> Result<RuleChange, ApiError> {
            Ok(match value {
                None => RuleChange::Keep,
                Some(None) => RuleChange::Clear,
                Some(Some(v)) => RuleChange::Set(parse(v)?),
            })
        }
        let starts_ms = change(self.sale_starts_at, |at| instant_ms("sale_starts_at", at))?;
        let ends_ms = change(self.sale_ends_at, |at| instant_ms("sale_ends_at", at))?;
        if let (RuleChange::Set(starts), RuleChange::Set(ends)) = (starts_ms, ends_ms) {
            if ends <= starts {
                return Err(ApiError::validation(
                    "sale_ends_at",
                    "must be after sale_starts_at",
                ));
            }
        }
        Ok(RulesPatch {
            starts_ms,
            ends_ms,
            per_member_limit: change(self.per_member_limit, member_limit)?,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AddCouponQuantityRequest {
    /// Coupons to add to total_quantity and remaining; total_quantity after it is at most 10,000,000.
    #[schema(value_type = i64, minimum = 1, maximum = 10_000_000)]
    pub add: WholeNumber,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AddStockRequest {
    /// Units to add; the stock after it is at most 1,000,000,000.
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000)]
    pub add: WholeNumber,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    pub id: i64,
    pub name: String,
    pub price: i64,
    /// Units available now.
    pub stock: i64,
    /// When the sale opens; null: open.
    pub sale_starts_at: Option<String>,
    /// When the sale closes; null: never.
    pub sale_ends_at: Option<String>,
    /// Units one member may hold in live orders; null: no limit.
    pub per_member_limit: Option<i64>,
    /// Units the calling member may still buy (only with a member's bearer token, for a product
    /// with a limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_allowance: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductPage {
    pub items: Vec<ProductView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListProductsQuery {
    /// Page size, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// The previous page's `next_cursor`.
    #[param(value_type = Option<i64>, minimum = 0)]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PopularQuery {
    /// Window in days, default 3.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 30)]
    pub days: Option<String>,
    /// How many products, default 5.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
}

/// Query numbers arrive as text so a non-number is a 422 naming the field rather than a bare 400.
pub fn query_number(
    field: &'static str,
    value: Option<&str>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let n: i128 = value.trim().parse().map_err(|_| {
        ApiError::validation(
            field,
            format!("must be a whole number between {min} and {max}"),
        )
    })?;
    WholeNumber(n).in_range(field, min, max)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PopularProduct {
    pub id: i64,
    pub name: String,
    pub price: i64,
    /// Units sold in paid orders over the window.
    pub sold: i64,
}

// ---------------------------------------------------------------- coupons

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateCouponRequest {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    #[schema(value_type = DiscountType)]
    pub discount_type: String,
    /// FIXED: points off (1..100,000,000); PERCENT: percent off (1..100).
    #[schema(value_type = i64, minimum = 1, maximum = 100_000_000)]
    pub discount_value: WholeNumber,
    #[schema(value_type = i64, minimum = 1, maximum = 10_000_000)]
    pub total_quantity: WholeNumber,
    /// Default: now. RFC 3339; the pattern states the form the parser takes (`format` alone lets any
    /// string through), narrowed to days 01..28 so that every string it admits is a real date.
    #[schema(
        pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
    )]
    pub valid_from: Option<DateTime<Utc>>,
    /// Must be after valid_from.
    #[schema(
        pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
    )]
    pub valid_until: DateTime<Utc>,
}

/// How a coupon discounts: FIXED subtracts discount_value points, PERCENT floor(total * value / 100).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub enum DiscountType {
    #[serde(rename = "FIXED")]
    Fixed,
    #[serde(rename = "PERCENT")]
    Percent,
}

pub struct NewCoupon {
    pub name: String,
    pub discount_type: &'static str,
    pub discount_value: i64,
    pub total_quantity: i64,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
}

impl CreateCouponRequest {
    pub fn parse(self, now: DateTime<Utc>) -> Result<NewCoupon, ApiError> {
        let discount_type = match self.discount_type.as_str() {
            "FIXED" => "FIXED",
            "PERCENT" => "PERCENT",
            _ => {
                return Err(ApiError::validation(
                    "discount_type",
                    "must be FIXED or PERCENT",
                ))
            }
        };
        let max_value = if discount_type == "PERCENT" {
            100
        } else {
            MAX_PRICE
        };
        let valid_from = self.valid_from.unwrap_or(now);
        if self.valid_until <= valid_from {
            return Err(ApiError::validation(
                "valid_until",
                "must be after valid_from",
            ));
        }
        Ok(NewCoupon {
            name: text("name", &self.name, 200)?,
            discount_type,
            discount_value: self
                .discount_value
                .in_range("discount_value", 1, max_value)?,
            total_quantity: self.total_quantity.in_range(
                "total_quantity",
                1,
                MAX_COUPON_QUANTITY,
            )?,
            valid_from,
            valid_until: self.valid_until,
        })
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CouponView {
    pub id: i64,
    pub name: String,
    pub discount_type: String,
    pub discount_value: i64,
    pub total_quantity: i64,
    pub remaining: i64,
    pub valid_from: String,
    pub valid_until: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedCouponView {
    pub coupon_id: i64,
    pub issued_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MyCouponView {
    pub coupon_id: i64,
    pub name: String,
    pub discount_type: String,
    pub discount_value: i64,
    pub valid_until: String,
    pub used: bool,
}

// ---------------------------------------------------------------- orders

#[derive(Debug, Deserialize, ToSchema)]
pub struct OrderItemRequest {
    #[schema(value_type = i64, minimum = 1)]
    pub product_id: WholeNumber,
    /// At most 100 per product, counting repeated entries of the same product together.
    #[schema(value_type = i64, minimum = 1, maximum = 100)]
    pub quantity: WholeNumber,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateOrderRequest {
    /// Repeated products are merged (their quantities summed).
    #[schema(min_items = 1, max_items = 20)]
    pub items: Vec<OrderItemRequest>,
}

impl CreateOrderRequest {
    /// Distinct products with their summed quantities, in first-seen order.
    pub fn parse(self) -> Result<Vec<(i64, i64)>, ApiError> {
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            return Err(ApiError::validation(
                "items",
                format!("must hold 1 to {MAX_ITEMS} items"),
            ));
        }
        let mut order: Vec<i64> = Vec::new();
        let mut quantities: BTreeMap<i64, i64> = BTreeMap::new();
        for item in self.items {
            let product = item.product_id.in_range("items.product_id", 1, i64::MAX)?;
            let quantity = item.quantity.in_range("items.quantity", 1, MAX_QUANTITY)?;
            let total = quantities.entry(product).or_insert_with(|| {
                order.push(product);
                0
            });
            *total += quantity;
            if *total > MAX_QUANTITY {
                return Err(ApiError::validation(
                    "items.quantity",
                    format!("must be between 1 and {MAX_QUANTITY} per product"),
                ));
            }
        }
        Ok(order.into_iter().map(|p| (p, quantities[&p])).collect())
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct PayOrderRequest {
    /// A coupon the member holds, unused and valid now.
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub coupon_id: Option<WholeNumber>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderItemView {
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
}

/// An order as the API (and every order event) shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    pub id: i64,
    pub member_id: i64,
    /// RESERVED, PAID, CANCELLED or EXPIRED.
    pub status: String,
    pub items: Vec<OrderItemView>,
    pub total_amount: i64,
    pub discount_amount: i64,
    pub paid_amount: i64,
    pub coupon_id: Option<i64>,
    pub expires_at: String,
    pub created_at: String,
    pub paid_at: Option<String>,
    pub closed_at: Option<String>,
}

// ---------------------------------------------------------------- admin

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Drift {
    /// product_stock, product_rules, product_bought (per-member live units), coupon_remaining,
    /// coupon_issued, member_balance, order_status
    pub entity: String,
    pub id: i64,
    pub redis: serde_json::Value,
    pub mysql: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReconcileReport {
    pub in_sync: bool,
    /// Events accepted by Redis and not yet applied to MySQL (outbox backlog + Kafka lag of the sink).
    pub pending_events: i64,
    pub drift: Vec<Drift>,
}

/// One bounded page of the admin reconcile: from `cursor` on, at most about `limit` rows or keys.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReconcilePage {
    /// No event pending and no drift among the ids this page compared. The data set is in sync when
    /// every page up to the last (`next_cursor` null) says so.
    pub in_sync: bool,
    /// Events accepted by Redis and not yet applied to MySQL (outbox backlog + Kafka lag of the sink).
    pub pending_events: i64,
    /// The differences among the ids this page compared.
    pub drift: Vec<Drift>,
    /// Where this page started (`entity:after_id` while MySQL rows are compared, `keys:scan_cursor` while
    /// Redis keys are looked at for entities MySQL lacks).
    pub cursor: String,
    /// How many MySQL rows and Redis keys this page compared.
    pub checked: i64,
    /// Pass as `cursor` to get the next page; null when this page reached the end.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReconcileQuery {
    /// `next_cursor` of the previous page (`entity:after_id` or `keys:scan_cursor`); the start when absent.
    #[param(
        max_length = 40,
        pattern = "^((product|coupon|member|order):[0-9]{1,18}|keys:[0-9]{1,19})$"
    )]
    pub cursor: Option<String>,
    /// Rows or keys compared per page: 1..5000, default 1000.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 5000)]
    pub limit: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_accept_huge_values_for_range_errors() {
        let n: WholeNumber = serde_json::from_str("1e30").unwrap();
        assert!(n.in_range("amount", 1, 10).is_err());
        let n: WholeNumber = serde_json::from_str("18446744073709551615").unwrap();
        assert_eq!(
            n.in_range("x", 1, 10).unwrap_err().code(),
            "VALIDATION_FAILED"
        );
        assert!(serde_json::from_str::<WholeNumber>("1.5").is_err());
        assert!(serde_json::from_str::<WholeNumber>("\"5\"").is_err());
    }

    #[test]
    fn order_items_merge_and_bound() {
        let req: CreateOrderRequest =
            serde_json::from_str(r#"{"items":[{"product_id":2,"quantity":1},{"product_id":1,"quantity":2},{"product_id":2,"quantity":3}]}"#).unwrap();
        assert_eq!(req.parse().unwrap(), vec![(2, 4), (1, 2)]);
        let req: CreateOrderRequest = serde_json::from_str(r#"{"items":[]}"#).unwrap();
        assert!(req.parse().is_err());
        let req: CreateOrderRequest =
            serde_json::from_str(r#"{"items":[{"product_id":1,"quantity":0}]}"#).unwrap();
        assert!(req.parse().is_err());
    }

    #[test]
    fn emails() {
        assert_eq!(
            parse_email(" Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        assert_eq!(
            parse_email("jos\u{65}\u{301}@example.com").unwrap(),
            "jos\u{e9}@example.com"
        );
        assert_eq!(
            parse_email("\u{ff2a}\u{ff2f}\u{ff33}\u{ff25}@example.com").unwrap(),
            "jose@example.com"
        );
        assert_eq!(
            parse_email("JOS\u{c9}@EXAMPLE.COM").unwrap(),
            "jos\u{e9}@example.com"
        );
        for bad in ["", "a", "a@b", "@b.c", "a@@b.c", "a b@c.d", "a{x}@b.c"] {
            assert!(parse_email(bad).is_err(), "{bad}");
        }
    }
}
