//! Redis key names. Every key carries the hash tag of its owner's partition (src/partition.rs), so all
//! the keys one script touches share one Redis Cluster slot when they belong to one owner, and the
//! owners spread over all the slots. Scripts never build key names themselves; they get them in KEYS.
//!
//! Owners and what they own:
//! - member (partition of the member id): the member hash, the coupon wallet, the member's orders,
//!   idempotency records, the partition's reservation index and popular counters;
//! - product (partition of the product id): the product hash, its stock holds, returned orders,
//!   restock records, and the partition's pending-holds index;
//! - coupon (partition of the coupon id): the coupon hash and its holders;
//! - e-mail address (partition of the normalised address): the login index entry, and the partition's
//!   pending sign-up claims.
//!
//! Every partition has its own outbox stream; a script appends its event to its own partition's stream.

use crate::ids::Entity;
use crate::partition::Partition;

/// Room for a key's part after the tag: the longest, an idempotency record, is `idem:<member id>:` and
/// a 64-character digest.
const KEY_REST_CAPACITY: usize = 96;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix:{tag}:rest`, written into one allocation sized up front: `format!` with nested
    /// arguments cannot estimate the length and grew the string several times (a coupon issue builds
    /// four keys per request; this was 6% of its instructions).
    fn in_partition(&self, partition: Partition, rest: std::fmt::Arguments<'_>) -> String {
        use std::fmt::Write;
        let tag = partition.tag();
        let mut key = String::with_capacity(self.prefix.len() + tag.len() + 4 + KEY_REST_CAPACITY);
        key.push_str(&self.prefix);
        key.push_str(":{");
        key.push_str(tag);
        key.push_str("}:");
        match rest.as_str() {
            Some(text) => key.push_str(text),
            // Writing into a String cannot fail.
            None => {
                let _ = key.write_fmt(rest);
            }
        }
        key
    }

    // ------------------------------------------------------------------------------------ members

    pub fn member(&self, id: i64) -> String {
        self.in_partition(Partition::of_id(id), format_args!("member:{id}"))
    }

    /// The member's coupon wallet: coupon id -> entry (see lua/coupon_wallet_add.lua).
    pub fn member_coupons(&self, id: i64) -> String {
        self.in_partition(Partition::of_id(id), format_args!("member:{id}:coupons"))
    }

    /// Login index: normalised e-mail -> member id.
    pub fn email(&self, email: &str) -> String {
        self.in_partition(Partition::of_text(email), format_args!("email:{email}"))
    }

    /// Sign-up claims of the partition's addresses that no member confirmed yet, by deadline (ms);
    /// members are `member_id:email`. The claim sweep releases those past deadline + margin whose
    /// member was never written, and confirms those whose member exists (src/signup.rs).
    pub fn email_claims(&self, partition: Partition) -> String {
        self.in_partition(partition, format_args!("emails:pending"))
    }

    /// The client's key is hashed so its length and characters never shape ours.
    pub fn idempotency(&self, member_id: i64, key_digest: &str) -> String {
        self.in_partition(
            Partition::of_id(member_id),
            format_args!("idem:{member_id}:{key_digest}"),
        )
    }

    /// An order lives with its member: every order script is a member-slot script.
    pub fn order(&self, member_id: i64, order_id: i64) -> String {
        self.order_in(Partition::of_id(member_id), order_id)
    }

    /// An order by its member's partition (the expiry index stores order ids per partition).
    pub fn order_in(&self, partition: Partition, order_id: i64) -> String {
        self.in_partition(partition, format_args!("order:{order_id}"))
    }

    /// Reserved orders of the partition's members by expiry time (ms); members are order ids.
    pub fn reservations(&self, partition: Partition) -> String {
        self.in_partition(partition, format_args!("reservations"))
    }

    /// Units sold per product on one UTC day (`day` as YYYYMMDD), counted in the paying member's
    /// partition; the ranking merges the partitions on read.
    pub fn popular_day(&self, partition: Partition, day: &str) -> String {
        self.in_partition(partition, format_args!("popular:{day}"))
    }

    // ----------------------------------------------------------------------------------- products

    pub fn product(&self, id: i64) -> String {
        self.in_partition(Partition::of_id(id), format_args!("product:{id}"))
    }

    /// The product's stock holds: order id -> `qty|member|unit_price|deadline_ms` (lua/stock_hold.lua).
    pub fn product_holds(&self, id: i64) -> String {
        self.in_partition(Partition::of_id(id), format_args!("product:{id}:holds"))
    }

    /// Units of this product each member has in live orders (reserved or paid, holds included):
    /// member id -> units (lua/stock_hold.lua adds, stock_release/stock_return take back). The
    /// per-member limit is checked against it in the step that takes the stock.
    pub fn product_bought(&self, id: i64) -> String {
        self.in_partition(Partition::of_id(id), format_args!("product:{id}:bought"))
    }

    /// Orders whose units came back to this product after a paid cancel (lua/stock_return.lua): each
    /// order's units come back once.
    pub fn product_returned(&self, id: i64) -> String {
        self.in_partition(Partition::of_id(id), format_args!("product:{id}:returned"))
    }

    /// Holds of the partition's products that no order owns yet, by deadline (ms); members are
    /// `product:order:member`. The orphan sweep releases those past deadline + margin whose order was
    /// never written (src/orders.rs).
    pub fn holds_pending(&self, partition: Partition) -> String {
        self.in_partition(partition, format_args!("holds:pending"))
    }

    pub fn product_ops(&self, id: i64) -> String {
        self.in_partition(Partition::of_id(id), format_args!("product:{id}:ops"))
    }

    /// Pub/sub channel on which an engine that changed a product's sale rules tells every engine to
    /// forget its cached window (src/sale_windows.rs). Not a key: classic pub/sub reaches every node
    /// of a cluster.
    pub fn invalidations(&self) -> String {
        format!("{}:invalidations", self.prefix)
    }

    /// The product listing index. Written only by the admin path (one ZADD before a create, as its own
    /// single-key step), never on the hot path, so one key for all products is fine.
    pub fn products(&self) -> String {
        format!("{}:{{catalog}}:products", self.prefix)
    }

    /// Coupon ids by id, like `products` (admin path only; the dashboards' recent coupons).
    pub fn coupons(&self) -> String {
        format!("{}:{{catalog}}:coupons", self.prefix)
    }

    // ------------------------------------------------------------------------------------ coupons

    pub fn coupon(&self, id: i64) -> String {
        self.in_partition(Partition::of_id(id), format_args!("coupon:{id}"))
    }

    /// Recent admin op ids on a coupon (a resent quantity add adds nothing).
    pub fn coupon_ops(&self, id: i64) -> String {
        self.in_partition(Partition::of_id(id), format_args!("coupon:{id}:ops"))
    }

    /// member id -> `issue event id|issued_at` of the members holding the coupon.
    pub fn coupon_holders(&self, id: i64) -> String {
        self.in_partition(Partition::of_id(id), format_args!("coupon:{id}:holders"))
    }

    /// The idempotency record of a coupon issue: in the COUPON's slot, where the issue is decided
    /// (scoped to the member like every record).
    pub fn coupon_idempotency(&self, coupon_id: i64, member_id: i64, key_digest: &str) -> String {
        self.in_partition(
            Partition::of_id(coupon_id),
            format_args!("idem:{member_id}:{key_digest}"),
        )
    }

    // ------------------------------------------------------------------------------------- outbox

    pub fn outbox(&self, partition: Partition) -> String {
        self.in_partition(partition, format_args!("outbox"))
    }

    /// Outbox entries Kafka refused for good, parked by the relay (same slot as the partition's outbox).
    pub fn outbox_dead(&self, partition: Partition) -> String {
        self.in_partition(partition, format_args!("outbox:dead"))
    }

    /// Marks the partition layout (count) this data was written with; see `partition::PARTITIONS`.
    pub fn layout(&self) -> String {
        format!("{}:{{meta}}:layout", self.prefix)
    }

    /// Pattern matching every key of this deployment (used by rebuild to clear state).
    pub fn all_pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }

    /// The main key (hash) of a member, product or coupon. An order's key needs its member's
    /// partition: `order` / `order_in`.
    pub fn entity(&self, entity: Entity, id: i64) -> Option<String> {
        match entity {
            Entity::Member => Some(self.member(id)),
            Entity::Product => Some(self.product(id)),
            Entity::Coupon => Some(self.coupon(id)),
            Entity::Order => None,
        }
    }

    /// The entity and id whose main key `key` is, None for any other key: ids are sparse (time-ordered),
    /// so reconcile finds the entities Redis holds by scanning keys, not by walking an id range.
    pub fn entity_of(&self, key: &str) -> Option<(Entity, i64)> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?;
        let (tag, rest) = rest.split_once("}:")?;
        let (kind, digits) = rest.split_once(':')?;
        let entity = Entity::ALL.into_iter().find(|e| e.name() == kind)?;
        let id: i64 = digits.parse().ok()?;
        // Only what the key builders build, byte for byte (no `:coupons`, `:ops`, `:holders`, leading
        // zeros, foreign tags).
        let rebuilt = match entity {
            Entity::Order => self.order_in(Partition::from_tag(tag)?, id),
            other => self.entity(other, id)?,
        };
        (rebuilt == key).then_some((entity, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::key_slot;

    #[test]
    fn an_owners_keys_share_one_slot_and_owners_spread() {
        let k = Keys::new("fs");
        for member in [1, 7, 1 << 20, 123_456_789] {
            let slot = key_slot(&k.member(member));
            let p = Partition::of_id(member);
            for key in [
                k.member_coupons(member),
                k.idempotency(member, "ab"),
                k.order(member, 99),
                k.reservations(p),
                k.popular_day(p, "20261124"),
                k.outbox(p),
                k.outbox_dead(p),
            ] {
                assert_eq!(key_slot(&key), slot, "{key}");
            }
            let email = format!("m{member}@example.test");
            assert_eq!(
                key_slot(&k.email_claims(Partition::of_text(&email))),
                key_slot(&k.email(&email))
            );
            assert_eq!(
                key_slot(&k.coupon_holders(member)),
                key_slot(&k.coupon(member))
            );
            assert_eq!(
                key_slot(&k.product_ops(member)),
                key_slot(&k.product(member))
            );
            assert_eq!(key_slot(&k.coupon_ops(member)), key_slot(&k.coupon(member)));
            for key in [
                k.product_holds(member),
                k.product_returned(member),
                k.holds_pending(p),
            ] {
                assert_eq!(key_slot(&key), key_slot(&k.product(member)), "{key}");
            }
        }
        let slots: std::collections::HashSet<u16> =
            (1..1000).map(|id| key_slot(&k.member(id))).collect();
        assert_eq!(slots.len(), usize::from(crate::partition::PARTITIONS));
    }

    #[test]
    fn entity_keys_parse_back_and_nothing_else_does() {
        let k = Keys::new("fs");
        let big = crate::ids::MAX_ID;
        for id in [1, 42, big] {
            for entity in [Entity::Member, Entity::Product, Entity::Coupon] {
                let key = k.entity(entity, id).expect("a main key");
                assert_eq!(k.entity_of(&key), Some((entity, id)));
                assert_eq!(Keys::new("other").entity_of(&key), None);
            }
            assert_eq!(k.entity_of(&k.order(7, id)), Some((Entity::Order, id)));
        }
        let p = Partition::of_id(1);
        for other in [
            k.member_coupons(1),
            k.idempotency(1, "ab"),
            k.product_ops(1),
            k.products(),
            k.coupon_holders(1),
            k.reservations(p),
            k.outbox(p),
            k.email("a@b.c"),
            k.email_claims(p),
            format!("fs:{{{}}}:order:007", p.tag()),
            "fs:{nope}:order:7".to_string(),
            // A member key under another partition's tag is not what `member` builds.
            format!(
                "fs:{{{}}}:member:1",
                Partition::from_index((p.index() + 1) % crate::partition::PARTITIONS)
                    .expect("a partition")
                    .tag()
            ),
        ] {
            assert_eq!(k.entity_of(&other), None, "{other}");
        }
    }
}
