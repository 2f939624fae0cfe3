//! Partitions: how owners (members, products, coupons, e-mail addresses) are spread over Redis Cluster
//! slots. A script changes the state of ONE owner, so all the keys it touches carry the same hash tag.
//! A tag per owner would need an outbox stream per owner, so owners are grouped into a fixed number of
//! partitions; the hash tag names the partition, and each partition has its own outbox stream, expiry
//! index and popular counters.
//!
//! The partition count is fixed for the life of the data (it is stored in Redis at first start and the
//! engine refuses to start with another one): moving an owner to another partition means moving its keys.
//!
//! Each partition's tag is chosen so that its slot falls in the partition's own 1/PARTITIONS of the slot
//! range: however a cluster splits the slots into contiguous ranges (as `redis-cli --cluster create`
//! does), every primary gets its share of the partitions.

use std::sync::LazyLock;

/// Number of partitions. Fixed for the life of the data.
pub const PARTITIONS: u16 = 64;

/// Redis Cluster's slot count.
pub const SLOTS: u16 = 16384;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition(u16);

impl Partition {
    /// Every partition, in order.
    pub fn all() -> impl Iterator<Item = Partition> {
        (0..PARTITIONS).map(Partition)
    }

    pub fn index(self) -> u16 {
        self.0
    }

    pub fn from_index(index: u16) -> Option<Self> {
        (index < PARTITIONS).then_some(Self(index))
    }

    /// The partition of a numeric owner id (member, product, coupon). Ids are time-ordered, so their low
    /// bits are not spread evenly: mix them first (the splitmix64 finaliser).
    pub fn of_id(id: i64) -> Self {
        let mut z = id as u64;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self((z % u64::from(PARTITIONS)) as u16)
    }

    /// The partition of a text owner (a normalised e-mail address): FNV-1a, stable across releases.
    pub fn of_text(text: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self((h % u64::from(PARTITIONS)) as u16)
    }

    /// The hash tag (without braces) of this partition's keys.
    pub fn tag(self) -> &'static str {
        TAGS[usize::from(self.0)].as_str()
    }

    /// The Redis Cluster slot every key of this partition lives in.
    pub fn slot(self) -> u16 {
        crc16(self.tag().as_bytes()) % SLOTS
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `p<index>.<salt>` with the smallest salt whose slot falls in the partition's own slot range.
static TAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    (0..PARTITIONS)
        .map(|index| {
            let range = u32::from(SLOTS) / u32::from(PARTITIONS);
            (0u32..)
                .map(|salt| format!("p{index}.{salt}"))
                .find(|tag| u32::from(crc16(tag.as_bytes()) % SLOTS) / range == u32::from(index))
                .unwrap_or_else(|| format!("p{index}"))
        })
        .collect()
});

/// CRC16-CCITT (XModem), the checksum Redis Cluster maps keys to slots with.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for b in bytes {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a key, with Redis's hash-tag rule: the part between the first `{` and the next `}`, if
/// that part is not empty, else the whole key.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    if let Some(open) = bytes.iter().position(|b| *b == b'{') {
        if let Some(len) = bytes[open + 1..].iter().position(|b| *b == b'}') {
            if len > 0 {
                return crc16(&bytes[open + 1..open + 1 + len]) % SLOTS;
            }
        }
    }
    crc16(bytes) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(
            key_slot("{user1000}.following"),
            key_slot("{user1000}.followers")
        );
        assert_eq!(key_slot("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot("foo{{bar}}zap"), crc16(b"{bar") % SLOTS);
    }

    #[test]
    fn each_partition_owns_its_share_of_the_slots() {
        let range = SLOTS / PARTITIONS;
        for p in Partition::all() {
            assert_eq!(p.slot() / range, p.index(), "{}", p.tag());
            assert_eq!(key_slot(&format!("fs:{{{}}}:member:1", p.tag())), p.slot());
        }
    }

    #[test]
    fn owners_spread_evenly() {
        let mut counts = vec![0u32; usize::from(PARTITIONS)];
        // Time-ordered ids: consecutive milliseconds, node and sequence bits mostly zero.
        for n in 0..64_000i64 {
            counts[usize::from(Partition::of_id((1_000_000 + n) << 12).index())] += 1;
        }
        let expected = 64_000 / u32::from(PARTITIONS);
        for c in &counts {
            assert!(
                *c > expected * 8 / 10 && *c < expected * 12 / 10,
                "{counts:?}"
            );
        }
        let mut text = vec![0u32; usize::from(PARTITIONS)];
        for n in 0..64_000 {
            text[usize::from(Partition::of_text(&format!("user{n}@example.com")).index())] += 1;
        }
        for c in &text {
            assert!(
                *c > expected * 8 / 10 && *c < expected * 12 / 10,
                "{text:?}"
            );
        }
    }
}
