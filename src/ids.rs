//! Id allocation: the engine takes blocks of ids from a Redis sequence (one INCRBY per block) and hands
//! them out locally, so the hot path makes no extra round trip per order. Ids stay unique across engines;
//! a crash only leaves gaps.

use std::collections::HashMap;
use std::sync::Arc;

use fred::prelude::*;
use tokio::sync::Mutex;

use crate::keys::Keys;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entity {
    Member,
    Product,
    Coupon,
    Order,
}

impl Entity {
    pub fn name(self) -> &'static str {
        match self {
            Entity::Member => "member",
            Entity::Product => "product",
            Entity::Coupon => "coupon",
            Entity::Order => "order",
        }
    }

    fn block(self) -> i64 {
        match self {
            Entity::Order | Entity::Member => 256,
            Entity::Product | Entity::Coupon => 1,
        }
    }
}

#[derive(Default)]
struct Block {
    next: i64,
    end: i64, // exclusive
}

#[derive(Clone, Default)]
pub struct IdAllocator {
    blocks: Arc<HashMap<&'static str, Mutex<Block>>>,
}

impl IdAllocator {
    pub fn new() -> Self {
        let mut blocks = HashMap::new();
        for e in [
            Entity::Member,
            Entity::Product,
            Entity::Coupon,
            Entity::Order,
        ] {
            blocks.insert(e.name(), Mutex::new(Block::default()));
        }
        Self {
            blocks: Arc::new(blocks),
        }
    }

    pub async fn next(
        &self,
        redis: &Pool,
        keys: &Keys,
        entity: Entity,
    ) -> Result<i64, fred::error::Error> {
        let Some(slot) = self.blocks.get(entity.name()) else {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                "unknown entity",
            ));
        };
        let mut block = slot.lock().await;
        if block.next >= block.end {
            let size = entity.block();
            let end: i64 = redis.incr_by(keys.sequence(entity.name()), size).await?;
            block.next = end - size + 1;
            block.end = end + 1;
        }
        let id = block.next;
        block.next += 1;
        Ok(id)
    }
}
