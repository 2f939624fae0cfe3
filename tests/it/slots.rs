//! Redis Cluster runs a script only when all its KEYS hash to one slot (issue 9 item 2). For every typed
//! call in src/scripts/calls.rs, built with many random ids, this computes the slot of each key
//! (`flashsale::partition::key_slot`, CRC16 with the hash-tag rule) and asserts one slot per call,
//! for every call without exception (sign-up and product create are sagas of single-slot steps now).

use std::collections::BTreeSet;

use flashsale::domain::RuleChange;
use flashsale::keys::Keys;
use flashsale::partition::{key_slot, Partition};
use flashsale::scripts::calls::*;
use flashsale::scripts::{Script, ScriptCall};
use rand::Rng;

fn keys_of<C: ScriptCall>(call: C, keys: &Keys) -> (Script, Vec<String>) {
    (C::SCRIPT, call.keys(keys))
}

fn idem(rng: &mut impl Rng, with_key: bool) -> Idem {
    Idem {
        digest: with_key.then(|| format!("{:032x}", rng.gen::<u128>())),
        fingerprint: "fp".into(),
    }
}

/// One call of every script, with random owners.
fn every_call(rng: &mut impl Rng, keys: &Keys) -> Vec<(Script, Vec<String>)> {
    // Ids as the engine hands them out (positive 63-bit), small ones too.
    let mut id = || {
        if rng.gen_bool(0.2) {
            rng.gen_range(1..10_000i64)
        } else {
            rng.gen_range(1..i64::MAX)
        }
    };
    let (member, product, coupon, order) = (id(), id(), id(), id());
    let products: Vec<i64> = (0..5).map(|_| id()).collect();
    let mut rng2 = rand::thread_rng();
    let with_key = rng2.gen_bool(0.5);
    let day = format!(
        "2026{:02}{:02}",
        rng2.gen_range(1..13),
        rng2.gen_range(1..29)
    );
    let email = format!("user{}@example.com", rng2.gen::<u32>());
    let claim = ClaimRef {
        member_id: member,
        email: email.clone(),
    };
    let hold = HoldRef {
        product_id: product,
        order_id: order,
        member_id: member,
    };
    vec![
        keys_of(
            MemberSignup {
                member_id: member,
                email: &email,
                name: "n",
                password_hash: "h",
                event_id: "e".into(),
                claim_deadline_ms: 1,
            },
            keys,
        ),
        keys_of(
            EmailClaim {
                claim: claim.clone(),
                ttl_ms: 1,
            },
            keys,
        ),
        keys_of(
            EmailConfirm {
                claim: claim.clone(),
            },
            keys,
        ),
        keys_of(
            EmailRelease {
                claim: claim.clone(),
                sweep_margin_ms: with_key.then_some(5),
            },
            keys,
        ),
        keys_of(
            EmailClaimsDue {
                partition: claim.partition(),
                margin_ms: 1,
                limit: 1,
            },
            keys,
        ),
        keys_of(
            PointsCharge {
                member_id: member,
                idem: idem(&mut rng2, with_key),
                amount: 1,
                balance_limit: 10,
                event_id: "e".into(),
            },
            keys,
        ),
        keys_of(
            ProductCreate {
                product_id: product,
                name: "p".into(),
                price: 1,
                stock: 1,
                rules: Default::default(),
                created_at: "t".into(),
                event_id: "e".into(),
            },
            keys,
        ),
        keys_of(
            ProductStockAdd {
                product_id: product,
                add: 1,
                stock_limit: 10,
                now_ms: 0,
                now: "t".into(),
                event_id: "e".into(),
            },
            keys,
        ),
        keys_of(
            CouponQuantityAdd {
                coupon_id: coupon,
                add: 1,
                quantity_limit: 10,
                now_ms: 0,
                now: "t".into(),
                event_id: "e".into(),
            },
            keys,
        ),
        keys_of(
            ProductRulesSet {
                product_id: product,
                starts_ms: RuleChange::Set(1),
                ends_ms: RuleChange::Clear,
                per_member_limit: RuleChange::Keep,
                now_ms: 0,
                now: "t".into(),
                event_id: "e".into(),
            },
            keys,
        ),
        keys_of(
            CouponCreate {
                coupon_id: coupon,
                name: "c".into(),
                discount_type: "FIXED".into(),
                discount_value: 1,
                total_quantity: 1,
                valid_from_ms: 0,
                valid_from: "t".into(),
                valid_until_ms: 1,
                valid_until: "t".into(),
                now: "t".into(),
                event_id: "e".into(),
            },
            keys,
        ),
        keys_of(
            CouponIssue {
                coupon_id: coupon,
                member_id: member,
                idem: idem(&mut rng2, with_key),
                event_id: "e".into(),
            },
            keys,
        ),
        keys_of(
            CouponWalletAdd {
                member_id: member,
                coupon_id: coupon,
                entry: "x".into(),
            },
            keys,
        ),
        keys_of(
            OrderReserve {
                member_id: member,
                order_id: order,
                idem: idem(&mut rng2, true),
                items: products
                    .iter()
                    .map(|p| PricedItem {
                        product_id: *p,
                        quantity: 1,
                        unit_price: 1,
                    })
                    .collect(),
                reservation_ttl_ms: 1,
                hold_deadline_ms: 1,
                event_id: "e".into(),
            },
            keys,
        ),
        keys_of(
            OrderRefuse {
                member_id: member,
                idem: idem(&mut rng2, true),
                status: 409,
                code: "OUT_OF_STOCK".into(),
                detail: "d".into(),
                extensions: String::new(),
            },
            keys,
        ),
        keys_of(
            OrderPay {
                member_id: member,
                order_id: order,
                idem: idem(&mut rng2, true),
                coupon_id: Some(coupon),
                day: day.clone(),
                popular_day_ttl_secs: 1,
                event_id: "e".into(),
            },
            keys,
        ),
        keys_of(
            OrderCancel {
                member_id: member,
                order_id: order,
                idem: idem(&mut rng2, true),
                popular_day: day,
                event_id: "e".into(),
            },
            keys,
        ),
        keys_of(
            OrderExpire {
                partition: Partition::of_id(member),
                order_id: order,
                event_id: "e".into(),
            },
            keys,
        ),
        keys_of(
            StockHold {
                hold,
                quantity: 1,
                ttl_ms: 1,
            },
            keys,
        ),
        keys_of(
            StockRelease {
                hold,
                orphan_margin_ms: with_key.then_some(5),
            },
            keys,
        ),
        keys_of(StockCommit { hold }, keys),
        keys_of(StockReturn { hold, quantity: 1 }, keys),
        keys_of(HoldConfirm { hold }, keys),
        keys_of(
            HoldsDue {
                partition: Partition::of_id(product),
                margin_ms: 1,
                limit: 1,
            },
            keys,
        ),
    ]
}

#[test]
fn every_script_call_touches_one_slot() {
    let keys = Keys::new("fs");
    let mut rng = rand::thread_rng();
    let mut seen = BTreeSet::new();
    for _ in 0..2_000 {
        for (script, call_keys) in every_call(&mut rng, &keys) {
            seen.insert(script.name());
            assert!(!call_keys.is_empty(), "{}: no keys", script.name());
            let slots: BTreeSet<u16> = call_keys.iter().map(|k| key_slot(k)).collect();
            assert_eq!(
                slots.len(),
                1,
                "{} spans slots {slots:?}: {call_keys:?}",
                script.name()
            );
        }
    }
    let all: BTreeSet<&str> = Script::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(seen, all, "every script has a call in this test");
}

/// A sign-up's two steps are in two owners' slots (that is why it is a saga): the address's step keeps
/// the address's keys together, the member's step the member's.
#[test]
fn a_signups_steps_follow_their_owners() {
    let keys = Keys::new("fs");
    let mut rng = rand::thread_rng();
    for _ in 0..1_000 {
        let member = rng.gen_range(1..i64::MAX);
        let email = format!("u{}@example.com", rng.gen::<u64>());
        let claim = ClaimRef {
            member_id: member,
            email: email.clone(),
        };
        let address = EmailClaim { claim, ttl_ms: 1 }.keys(&keys);
        assert!(address
            .iter()
            .all(|k| key_slot(k) == key_slot(&keys.email(&email))));
        let member_keys = MemberSignup {
            member_id: member,
            email: &email,
            name: "n",
            password_hash: "h",
            event_id: "e".into(),
            claim_deadline_ms: 1,
        }
        .keys(&keys);
        assert!(member_keys
            .iter()
            .all(|k| key_slot(k) == key_slot(&keys.member(member))));
        assert!(!ProductCreate {
            product_id: member,
            name: "p".into(),
            price: 1,
            stock: 1,
            rules: Default::default(),
            created_at: "t".into(),
            event_id: "e".into(),
        }
        .keys(&keys)
        .contains(&keys.products()));
    }
}

/// The partition count is fixed for the life of the data: the first start records it, and an engine
/// refuses to start on data written with another count (the owners' keys would sit under tags it
/// never reads).
#[tokio::test]
async fn an_engine_refuses_data_written_with_another_partition_count() {
    use fred::prelude::*;

    let app = crate::common::spawn_app().await;
    let recorded: Option<String> = app.redis.get(app.keys.layout()).await.expect("GET");
    assert_eq!(
        recorded.as_deref(),
        Some(flashsale::partition::PARTITIONS.to_string().as_str())
    );

    let connections = crate::common::isolated_connections();
    let redis = flashsale::app::connect_redis(&connections)
        .await
        .expect("redis");
    let keys = Keys::new(connections.key_prefix.clone());
    let _: () = redis
        .set(keys.layout(), "32", None, None, false)
        .await
        .expect("SET");
    let refused = flashsale::app::Application::build(crate::common::serve_settings(connections))
        .await
        .err()
        .expect("an engine on a 32-partition layout must not start");
    assert!(
        format!("{refused:#}").contains("written with 32 partitions"),
        "{refused:#}"
    );
    let _: i64 = redis.del(keys.layout()).await.expect("DEL");
}
