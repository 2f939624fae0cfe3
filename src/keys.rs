//! Redis key names. Every key carries a hash tag `{...}` naming the entity that owns it, so a move to
//! Redis Cluster keeps the names; scripts never build key names themselves, they get them in KEYS.

use crate::ids::Entity;

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

    pub fn member(&self, id: i64) -> String {
        format!("{}:member:{{m:{id}}}", self.prefix)
    }

    pub fn member_coupons(&self, id: i64) -> String {
        format!("{}:member:{{m:{id}}}:coupons", self.prefix)
    }

    pub fn email(&self, email: &str) -> String {
        format!("{}:email:{{e:{email}}}", self.prefix)
    }

    /// The client's key is hashed so its length and characters never shape ours.
    pub fn idempotency(&self, member_id: i64, key_digest: &str) -> String {
        format!("{}:idem:{{m:{member_id}}}:{key_digest}", self.prefix)
    }

    pub fn product(&self, id: i64) -> String {
        format!("{}:product:{{p:{id}}}", self.prefix)
    }

    pub fn product_ops(&self, id: i64) -> String {
        format!("{}:product:{{p:{id}}}:ops", self.prefix)
    }

    pub fn products(&self) -> String {
        format!("{}:products:{{products}}", self.prefix)
    }

    pub fn coupon(&self, id: i64) -> String {
        format!("{}:coupon:{{c:{id}}}", self.prefix)
    }

    pub fn coupon_holders(&self, id: i64) -> String {
        format!("{}:coupon:{{c:{id}}}:holders", self.prefix)
    }

    pub fn order(&self, id: i64) -> String {
        format!("{}:order:{{o:{id}}}", self.prefix)
    }

    pub fn reservations(&self) -> String {
        format!("{}:reservations:{{reservations}}", self.prefix)
    }

    /// Units sold per product on one UTC day, `day` as YYYYMMDD.
    pub fn popular_day(&self, day: &str) -> String {
        format!("{}:popular:{{popular}}:{day}", self.prefix)
    }

    pub fn popular_top(&self, days: u32) -> String {
        format!("{}:popular:{{popular}}:top:{days}", self.prefix)
    }

    pub fn outbox(&self) -> String {
        format!("{}:outbox:{{outbox}}", self.prefix)
    }
    /// Outbox entries Kafka refused for good, parked by the relay (same hash slot as the outbox).
    pub fn outbox_dead(&self) -> String {
        format!("{}:outbox:{{outbox}}:dead", self.prefix)
    }

    /// Pattern matching every key of this deployment (used by rebuild to clear state).
    pub fn all_pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }

    /// The main key of an entity: its hash (`member`, `product`, `coupon`, `order`).
    pub fn entity(&self, entity: Entity, id: i64) -> String {
        match entity {
            Entity::Member => self.member(id),
            Entity::Product => self.product(id),
            Entity::Coupon => self.coupon(id),
            Entity::Order => self.order(id),
        }
    }

    /// The entity and id whose main key `key` is, None for any other key: ids are sparse (time-ordered),
    /// so reconcile finds the entities Redis holds by scanning keys, not by walking an id range.
    pub fn entity_of(&self, key: &str) -> Option<(Entity, i64)> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix(':')?;
        let (kind, tag) = rest.split_once(':')?;
        let entity = Entity::ALL.into_iter().find(|e| e.name() == kind)?;
        let digits = tag
            .strip_prefix('{')?
            .split_once(':')?
            .1
            .strip_suffix('}')?;
        let id: i64 = digits.parse().ok()?;
        // Only what `entity` builds, byte for byte (no `:coupons`, `:ops`, `:holders`, leading zeros).
        (self.entity(entity, id) == key).then_some((entity, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_hash_tag() {
        let k = Keys::new("fs");
        for key in [
            k.member(1),
            k.member_coupons(1),
            k.email("a@b.c"),
            k.idempotency(1, "ab"),
            k.product(1),
            k.product_ops(1),
            k.products(),
            k.coupon(1),
            k.coupon_holders(1),
            k.order(1),
            k.reservations(),
            k.popular_day("20261124"),
            k.popular_top(3),
            k.outbox(),
        ] {
            let open = key.find('{').expect("hash tag");
            let close = key[open..].find('}').expect("closed hash tag");
            assert!(close > 1, "{key} has an empty hash tag");
        }
        // The member's own keys share one slot.
        assert!(k.member_coupons(7).contains("{m:7}") && k.idempotency(7, "x").contains("{m:7}"));
    }

    #[test]
    fn entity_keys_parse_back_and_nothing_else_does() {
        let k = Keys::new("fs");
        let big = crate::ids::MAX_ID;
        for entity in Entity::ALL {
            for id in [1, 42, big] {
                assert_eq!(k.entity_of(&k.entity(entity, id)), Some((entity, id)));
                assert_eq!(Keys::new("other").entity_of(&k.entity(entity, id)), None);
            }
        }
        for other in [
            k.member_coupons(1),
            k.idempotency(1, "ab"),
            k.product_ops(1),
            k.products(),
            k.coupon_holders(1),
            k.reservations(),
            k.outbox(),
            k.email("a@b.c"),
            "fs:order:{o:007}".to_string(),
            "fs:order:{p:7}".to_string(),
        ] {
            assert_eq!(k.entity_of(&other), None, "{other}");
        }
    }
}
