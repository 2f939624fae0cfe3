//! The popular ranking: units sold per product over the last N days. Pay counts units in the paying
//! member's partition (one slot with the order), so the ranking merges every partition's day counters
//! on read: one ZUNION per partition, summed here, cached for `POPULAR_CACHE_MS` per window so a
//! storm of readers costs one merge per window and period.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fred::prelude::*;
use fred::types::Value;

use crate::keys::Keys;
use crate::partition::Partition;

/// Popular-ranking day buckets outlive the longest window (30 days).
pub const POPULAR_DAY_TTL_SECS: i64 = 35 * 24 * 3600;

/// A merged ranking: (product id, units), most units first.
type Ranking = std::sync::Arc<Vec<(i64, i64)>>;

/// Merged rankings per window (days), with when they were computed.
#[derive(Default)]
pub struct PopularCache {
    merged: Mutex<HashMap<i64, (Instant, Ranking)>>,
}

impl PopularCache {
    fn get(&self, days: i64, lifetime: Duration) -> Option<std::sync::Arc<Vec<(i64, i64)>>> {
        let merged = self.merged.lock().ok()?;
        let (at, ranking) = merged.get(&days)?;
        (at.elapsed() < lifetime).then(|| ranking.clone())
    }

    fn forget(&self, days: i64) {
        if let Ok(mut merged) = self.merged.lock() {
            merged.remove(&days);
        }
    }

    fn put(&self, days: i64, ranking: std::sync::Arc<Vec<(i64, i64)>>) {
        if let Ok(mut merged) = self.merged.lock() {
            merged.insert(days, (Instant::now(), ranking));
        }
    }
}

/// The day buckets (YYYYMMDD, UTC) of a window of `days` ending today.
pub fn window_days(now: DateTime<Utc>, days: i64) -> Vec<String> {
    (0..days)
        .map(|back| {
            (now - chrono::Duration::days(back))
                .format("%Y%m%d")
                .to_string()
        })
        .collect()
}

/// (product id, units) over the window, most units first; ties by product id, highest first (as the
/// single-key ZREVRANGE used to order them). Products with no units are left out.
pub async fn ranking(
    redis: &Pool,
    keys: &Keys,
    cache: &PopularCache,
    cache_ms: u64,
    now: DateTime<Utc>,
    days: i64,
) -> Result<std::sync::Arc<Vec<(i64, i64)>>, fred::error::Error> {
    let lifetime = Duration::from_millis(cache_ms);
    if cache_ms > 0 {
        if let Some(ranking) = cache.get(days, lifetime) {
            return Ok(ranking);
        }
    } else {
        cache.forget(days);
    }
    let day_names = window_days(now, days);
    let per_partition = futures::future::try_join_all(Partition::all().map(|p| {
        let day_keys: Vec<String> = day_names.iter().map(|d| keys.popular_day(p, d)).collect();
        async move {
            redis
                .zunion::<Value, _, _>(day_keys, Vec::<f64>::new(), None, true)
                .await
        }
    }))
    .await?;
    let mut units: HashMap<i64, f64> = HashMap::new();
    for flat in per_partition {
        let flat = flat.into_array();
        for pair in flat.chunks(2) {
            let id = pair
                .first()
                .and_then(|v| v.as_string())
                .and_then(|s| s.parse::<i64>().ok());
            let score = pair.get(1).and_then(|v| v.as_f64());
            if let (Some(id), Some(score)) = (id, score) {
                *units.entry(id).or_default() += score;
            }
        }
    }
    let mut ranked: Vec<(i64, i64)> = units
        .into_iter()
        .map(|(id, u)| (id, u.round() as i64))
        .filter(|(_, u)| *u > 0)
        .collect();
    ranked.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| b.0.to_string().cmp(&a.0.to_string()))
    });
    let ranked = std::sync::Arc::new(ranked);
    if cache_ms > 0 {
        cache.put(days, ranked.clone());
    }
    Ok(ranked)
}
