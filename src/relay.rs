//! Outbox relay: Redis stream -> Kafka. Reads through the `relay` consumer group, produces with the
//! idempotent producer keyed by aggregate (one aggregate's events stay in order on one partition), and
//! XACKs an entry only after Kafka acknowledged it. On start it re-sends its own pending entries; it
//! claims entries a crashed relay left pending; it trims only entries every group has acknowledged.
//! Two relays at once are safe: the sink drops a redelivered event by its id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::streams::XReadValue;
use fred::types::Value;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use crate::app::{connect_redis_client, RELAY_GROUP};
use crate::config::{ConnectionSettings, RelaySettings};
use crate::keys::Keys;

type Entry = XReadValue<String, String, String>;

pub struct Relay {
    redis: Client,
    keys: Keys,
    producer: FutureProducer,
    topic: String,
    consumer: String,
    batch: u64,
    claim_idle_ms: u64,
}

impl Relay {
    pub async fn new(
        connections: &ConnectionSettings,
        settings: &RelaySettings,
        producer: FutureProducer,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            redis: connect_redis_client(connections).await?,
            keys: Keys::new(connections.key_prefix.clone()),
            producer,
            topic: connections.kafka_topic.clone(),
            consumer: settings.consumer_name(),
            batch: settings.relay_batch.max(1) as u64,
            claim_idle_ms: settings.relay_claim_idle_ms,
        })
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!(consumer = %self.consumer, "relay started");
        // Our own pending entries first: they were read before a crash but maybe never acknowledged.
        let mut read_own_pending = true;
        let mut last_claim = Instant::now() - Duration::from_secs(3600);
        let mut last_trim = Instant::now();
        while !*stop.borrow() {
            let step = async {
                if last_claim.elapsed() >= Duration::from_secs(5) {
                    last_claim = Instant::now();
                    let claimed = self.claim_abandoned().await?;
                    if !claimed.is_empty() {
                        tracing::warn!(count = claimed.len(), "claimed entries of a crashed relay");
                        self.forward(claimed).await?;
                    }
                }
                let from = if read_own_pending { "0" } else { ">" };
                let entries = self.read(from).await?;
                if read_own_pending && entries.is_empty() {
                    read_own_pending = false;
                }
                if !entries.is_empty() {
                    let all_sent = self.forward(entries).await?;
                    if !all_sent {
                        // Some entries stay pending: go through our own pending list again.
                        read_own_pending = true;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                if last_trim.elapsed() >= Duration::from_secs(1) {
                    last_trim = Instant::now();
                    self.trim().await?;
                }
                Ok::<_, anyhow::Error>(())
            };
            tokio::select! {
                result = step => {
                    if let Err(e) = result {
                        metrics::counter!("flashsale_relay_errors_total").increment(1);
                        tracing::error!(error = %e, "relay step failed; retrying");
                        read_own_pending = true;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                _ = stop.changed() => {}
            }
        }
        tracing::info!("relay stopped");
    }

    async fn read(&self, from: &str) -> anyhow::Result<Vec<Entry>> {
        let block = if from == ">" { Some(500) } else { None };
        // Parsed by hand: a BLOCK timeout answers nil, which typed map conversions refuse.
        let response: Value = self
            .redis
            .xreadgroup(
                RELAY_GROUP,
                &self.consumer,
                Some(self.batch),
                block,
                false,
                self.keys.outbox(),
                from,
            )
            .await?;
        let mut entries = Vec::new();
        for stream in response.into_array() {
            let mut parts = stream.into_array().into_iter();
            let _name = parts.next();
            if let Some(list) = parts.next() {
                entries.extend(parse_entries(list));
            }
        }
        Ok(entries)
    }

    async fn claim_abandoned(&self) -> anyhow::Result<Vec<Entry>> {
        let reply: Value = self
            .redis
            .xautoclaim(
                self.keys.outbox(),
                RELAY_GROUP,
                &self.consumer,
                self.claim_idle_ms,
                "0-0",
                Some(self.batch),
                false,
            )
            .await?;
        Ok(reply
            .into_array()
            .into_iter()
            .nth(1)
            .map(parse_entries)
            .unwrap_or_default())
    }

    /// Produces the entries and acknowledges those Kafka acknowledged. True when all were sent.
    async fn forward(&self, entries: Vec<Entry>) -> anyhow::Result<bool> {
        let started = Instant::now();
        let sends = entries.iter().map(|(id, fields)| {
            let message = kafka_message(fields);
            async move {
                let Some((key, value, event_id, event_type)) = message else {
                    // A malformed entry can never be sent; acknowledge it so it does not block the stream
                    // (the sink would dead-letter it anyway), and say so loudly.
                    tracing::error!(entry = %id, "malformed outbox entry skipped");
                    return (id.clone(), true);
                };
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "event_id",
                        value: Some(event_id.as_str()),
                    })
                    .insert(Header {
                        key: "type",
                        value: Some(event_type.as_str()),
                    });
                let record = FutureRecord::to(&self.topic)
                    .key(&key)
                    .payload(&value)
                    .headers(headers);
                let sent = self.producer.send(record, Duration::from_secs(10)).await;
                match sent {
                    Ok(_) => (id.clone(), true),
                    Err((e, _)) => {
                        tracing::warn!(entry = %id, error = %e, "Kafka did not acknowledge");
                        (id.clone(), false)
                    }
                }
            }
        });
        let results = futures::future::join_all(sends).await;
        let acked: Vec<String> = results
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(id, _)| id.clone())
            .collect();
        let failed = results.len() - acked.len();
        if !acked.is_empty() {
            let _: i64 = self
                .redis
                .xack(self.keys.outbox(), RELAY_GROUP, acked.clone())
                .await?;
        }
        metrics::counter!("flashsale_relay_published_total").increment(acked.len() as u64);
        metrics::counter!("flashsale_relay_errors_total").increment(failed as u64);
        metrics::histogram!("flashsale_relay_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(failed == 0)
    }

    /// Drops entries every consumer group has acknowledged, and nothing else.
    async fn trim(&self) -> anyhow::Result<()> {
        let Some(min_id) = safe_trim_id(&self.redis, &self.keys).await? else {
            return Ok(());
        };
        let _: i64 = self
            .redis
            .xtrim(self.keys.outbox(), ("MINID", "~", min_id))
            .await?;
        Ok(())
    }
}

/// (key, value, event id, type) of the Kafka message for an outbox entry.
fn kafka_message(fields: &HashMap<String, String>) -> Option<(String, String, String, String)> {
    let event_id = fields.get("event_id")?;
    let event_type = fields.get("type")?;
    let aggregate = fields.get("aggregate")?;
    let at = fields.get("at")?;
    let payload = fields.get("payload")?;
    let raw: &serde_json::value::RawValue = serde_json::from_str(payload).ok()?;
    let value = serde_json::json!({
        "event_id": event_id,
        "type": event_type,
        "aggregate": aggregate,
        "at": at,
        "payload": raw,
    });
    Some((
        aggregate.clone(),
        value.to_string(),
        event_id.clone(),
        event_type.clone(),
    ))
}

/// `[[id, [field, value, ...]], ...]` as entries; entries whose content is gone (nil) are skipped.
fn parse_entries(list: Value) -> Vec<Entry> {
    list.into_array()
        .into_iter()
        .filter_map(|entry| {
            let mut parts = entry.into_array().into_iter();
            let id = parts.next()?.as_string()?;
            let flat = parts.next()?.into_array();
            let fields = flat
                .chunks(2)
                .filter_map(|kv| Some((kv.first()?.as_string()?, kv.get(1)?.as_string()?)))
                .collect::<HashMap<String, String>>();
            Some((id, fields))
        })
        .collect()
}

fn field<'a>(map: &'a [Value], name: &str) -> Option<&'a Value> {
    map.chunks(2)
        .find(|pair| pair.first().and_then(|k| k.as_str()).as_deref() == Some(name))
        .and_then(|p| p.get(1))
}

/// Samples the outbox backlog gauges every two seconds until stopped (the standalone relay's; the
/// engine samples them with its other gauges).
pub async fn sample_backlog(redis: Pool, keys: Keys, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        match outbox_backlog(redis.next(), &keys).await {
            Ok((length, unforwarded)) => {
                metrics::gauge!("flashsale_outbox_stream_length").set(length as f64);
                metrics::gauge!("flashsale_outbox_pending").set(unforwarded as f64);
            }
            Err(e) => tracing::debug!(error = %e, "sampling the outbox failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Entries per XRANGE page when the backlog is counted from ids, and pages per side before it is
/// estimated instead (a backlog above ~10,000 entries is large whatever its exact size).
const BACKLOG_PAGE: u64 = 1000;
const BACKLOG_PAGES: usize = 10;

/// Outbox backlog: (entries in the stream, entries not yet forwarded). Not yet forwarded = the relay
/// group's pending list (XPENDING) + the entries after its last-delivered id, counted from ids.
/// XINFO GROUPS `lag`/`entries-read` are deliberately not used: after Redis reloads its AOF they can
/// stay wrong for good (a false backlog of thousands). The one count behind the
/// `flashsale_outbox_pending` gauge, reconcile and rebuild-redis's in-flight check.
pub async fn outbox_backlog<C: StreamsInterface + Sync>(
    redis: &C,
    keys: &Keys,
) -> anyhow::Result<(i64, i64)> {
    let length: i64 = redis.xlen(keys.outbox()).await?;
    let groups: Value = redis
        .xinfo_groups(keys.outbox())
        .await
        .unwrap_or(Value::Null);
    let last_delivered = groups.into_array().into_iter().find_map(|group| {
        let fields = group.into_array();
        let name = field(&fields, "name").and_then(|v| v.as_string());
        (name.as_deref() == Some(RELAY_GROUP)).then(|| {
            field(&fields, "last-delivered-id")
                .and_then(|v| v.as_string())
                .unwrap_or_else(|| "0-0".into())
        })
    });
    // Without the group (not created yet) nothing has been forwarded.
    let Some(last_delivered) = last_delivered else {
        return Ok((length, length));
    };
    let summary: Value = redis.xpending(keys.outbox(), RELAY_GROUP, ()).await?;
    let pending = summary
        .into_array()
        .first()
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let after = entries_after(redis, keys, &last_delivered, length, pending).await?;
    Ok((length, pending + after))
}

/// Entries with an id above `last`, counted from whichever side of it is shorter: the trimmer keeps
/// the side at or below it down to the pending list plus about a second of acknowledged entries.
async fn entries_after<C: StreamsInterface + Sync>(
    redis: &C,
    keys: &Keys,
    last: &str,
    length: i64,
    pending: i64,
) -> anyhow::Result<i64> {
    let mut above_from = format!("({last}");
    let mut below_from = last.to_string();
    let (mut above, mut below) = (0i64, 0i64);
    for _ in 0..BACKLOG_PAGES {
        let page: Value = redis
            .xrange(keys.outbox(), above_from.as_str(), "+", Some(BACKLOG_PAGE))
            .await?;
        let (count, last_id) = page_ids(page);
        above += count;
        match last_id {
            Some(id) if count == BACKLOG_PAGE as i64 => above_from = format!("({id}"),
            _ => return Ok(above),
        }
        let page: Value = redis
            .xrevrange(keys.outbox(), below_from.as_str(), "-", Some(BACKLOG_PAGE))
            .await?;
        let (count, last_id) = page_ids(page);
        below += count;
        match last_id {
            Some(id) if count == BACKLOG_PAGE as i64 => below_from = format!("({id}"),
            // Exact; never below what was counted above (entries appended since XLEN was read).
            _ => return Ok((length - below).max(above)),
        }
    }
    // Both sides are long: an estimate. Pending entries all lie at or below `last`.
    Ok((length - below.max(pending)).max(above))
}

/// How many entries an XRANGE/XREVRANGE page holds, and the id of its last one.
fn page_ids(page: Value) -> (i64, Option<String>) {
    let entries = page.into_array();
    let last = entries
        .last()
        .cloned()
        .and_then(|entry| entry.into_array().into_iter().next())
        .and_then(|id| id.as_string());
    (entries.len() as i64, last)
}

/// The smallest id still needed: the oldest pending entry, else the group's last delivered id.
async fn safe_trim_id(redis: &Client, keys: &Keys) -> anyhow::Result<Option<String>> {
    let groups: Value = redis.xinfo_groups(keys.outbox()).await?;
    let mut floor: Option<(u64, u64, String)> = None;
    for group in groups.into_array() {
        let fields = group.into_array();
        let Some(name) = field(&fields, "name").and_then(|v| v.as_string()) else {
            continue;
        };
        let summary: Value = redis.xpending(keys.outbox(), name, ()).await?;
        let summary = summary.into_array();
        let pending = summary.first().and_then(|v| v.as_i64()).unwrap_or(0);
        let candidate = if pending > 0 {
            summary.get(1).and_then(|v| v.as_string())
        } else {
            field(&fields, "last-delivered-id").and_then(|v| v.as_string())
        };
        let Some(candidate) = candidate else {
            return Ok(None);
        };
        let parsed = parse_id(&candidate);
        if floor
            .as_ref()
            .is_none_or(|(ms, seq, _)| parsed < (*ms, *seq))
        {
            floor = Some((parsed.0, parsed.1, candidate));
        }
    }
    Ok(floor.map(|(_, _, id)| id).filter(|id| id != "0-0"))
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}
