//! Outbox relay: Redis streams -> Kafka. One relay per outbox partition (src/partition.rs), each on its
//! own connection (it blocks reading its stream). Reads through the `relay` consumer group, produces with the
//! idempotent producer keyed by aggregate (one aggregate's events stay in order on one partition), and
//! XACKs an entry only after Kafka acknowledged it. On start it re-sends its own pending entries; it
//! claims entries a crashed relay left pending; it trims only entries every group has acknowledged.
//! Two relays at once are safe: the sink drops a redelivered event by its id.
//!
//! One entry never stalls the others: sends are in flight concurrently while new entries are read; an
//! entry Kafka did not acknowledge waits for its own capped backoff, and the later entries of the same
//! aggregate queue behind it (so they still reach Kafka in order) while every other aggregate flows. An
//! entry Kafka refuses for good (too large, invalid record) or that cannot be read as an event is parked
//! in the partition's dead-letter stream `<prefix>:{<partition tag>}:outbox:dead` (see the runbook) instead of being retried
//! forever. A producer in a fatal state (an idempotence error librdkafka cannot recover from) is
//! replaced by a new one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::streams::XReadValue;
use fred::types::Value;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::watch;

use crate::app::{connect_redis_client, RELAY_GROUP};
use crate::config::{ConnectionSettings, RelaySettings};
use crate::keys::Keys;
use crate::partition::Partition;

type Entry = XReadValue<String, String, String>;

/// How long an idle relay blocks on its stream: a new entry ends the block at once, so this only
/// sets the idle cost (64 partitions, one read each per block).
const IDLE_BLOCK: Duration = Duration::from_millis(2_000);

/// How long, beyond the producer's linger, the relay waits for its sends in flight to settle before it
/// reads again: a read's sends are usually acknowledged together and the next read finds what arrived
/// meanwhile, so a trickle of entries costs a read and an XACK per producer batch, not a read per entry.
const SETTLE_WAIT: Duration = Duration::from_millis(40);

/// How much longer than its BLOCK time a read may take before the connection is deemed wedged.
const READ_GRACE_MS: u64 = 5_000;

/// Parks an entry in the dead-letter stream and acknowledges it, atomically. Resent after a reconnect it
/// is harmless: an entry already acknowledged is not parked twice.
/// KEYS: [1] outbox stream, [2] dead-letter stream. ARGV: [1] group, [2] entry id, [3] error,
/// [4..] the entry's fields and values. Returns 1 when parked, 0 when it was already acknowledged.
const DEAD_LETTER_SCRIPT: &str = r#"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local fields = {'dead_entry_id', ARGV[2], 'dead_error', ARGV[3]}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('XADD', KEYS[2], '*', unpack(fields))
return 1
"#;

/// A send that settled: the entry, how many attempts it has had, and Kafka's answer.
struct Settled {
    entry: Entry,
    attempts: u32,
    result: Result<(), String>,
    verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Sent,
    /// Not acknowledged this time (broker down, timeout, leader moving): retry after a backoff.
    Retry,
    /// The producer itself is unusable: retry with a new producer.
    RetryNewProducer,
    /// Kafka will never take it.
    Dead,
}

/// Entries of one aggregate waiting behind a failed one, oldest first.
struct Waiting {
    queue: VecDeque<(Entry, u32)>,
    /// When the head may be sent again.
    due: Instant,
    /// The id of the head while it is being sent.
    head_in_flight: Option<String>,
}

pub struct Relay {
    redis: Client,
    partition: Partition,
    /// This partition's outbox stream and dead-letter stream.
    outbox: String,
    outbox_dead: String,
    connections: ConnectionSettings,
    producer: FutureProducer,
    consumer: String,
    batch: u64,
    claim_idle_ms: u64,
    retry_base: Duration,
    retry_max: Duration,
    /// Entries sent or waiting at most: beyond it no new entry is read (Kafka is down, most likely).
    window: usize,
    waiting: HashMap<String, Waiting>,
    in_flight: HashSet<String>,
    /// The producer's linger (a replacement producer gets the same).
    linger: Duration,
}

impl Relay {
    /// Relays every outbox partition until stopped: waits for the topics once, then runs one relay per
    /// partition. Relays on several engines share the partitions through the consumer group.
    pub async fn run_all(
        connections: ConnectionSettings,
        settings: RelaySettings,
        producer: FutureProducer,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        if !Self::wait_for_topics(&connections, &settings, &mut stop).await {
            return Ok(());
        }
        let mut relays = tokio::task::JoinSet::new();
        for partition in Partition::all() {
            let (connections, settings) = (connections.clone(), settings.clone());
            let (producer, mut stop) = (producer.clone(), stop.clone());
            relays.spawn(async move {
                if let Some(relay) =
                    Self::connect(&connections, &settings, producer, partition, &mut stop).await
                {
                    relay.run(stop).await;
                }
            });
        }
        tracing::info!(partitions = relays.len(), "relay started");
        while relays.join_next().await.is_some() {}
        tracing::info!("relay stopped");
        Ok(())
    }

    /// A partition's relay on a connection of its own, connecting until it succeeds (a start while
    /// Redis is slow or restarting must not leave a partition without a relay); None when stopped.
    async fn connect(
        connections: &ConnectionSettings,
        settings: &RelaySettings,
        producer: FutureProducer,
        partition: Partition,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Self> {
        let mut wait = Duration::from_millis(100);
        let redis = loop {
            match connect_redis_client(connections).await {
                Ok(client) => break client,
                Err(e) => {
                    metrics::counter!("flashsale_relay_errors_total").increment(1);
                    tracing::warn!(error = %e, %partition, retry_in = ?wait, "relay cannot connect to Redis; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return None,
                    }
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        };
        Some(Self::new(connections, settings, producer, partition, redis))
    }

    fn new(
        connections: &ConnectionSettings,
        settings: &RelaySettings,
        producer: FutureProducer,
        partition: Partition,
        redis: Client,
    ) -> Self {
        let batch = settings.relay_batch.max(1);
        let keys = Keys::new(connections.key_prefix.clone());
        Self {
            redis,
            outbox: keys.outbox(partition),
            outbox_dead: keys.outbox_dead(partition),
            partition,
            connections: connections.clone(),
            producer,
            consumer: settings.consumer_name(),
            batch: batch as u64,
            claim_idle_ms: settings.relay_claim_idle_ms,
            retry_base: Duration::from_millis(settings.relay_retry_base_ms.max(1)),
            retry_max: Duration::from_millis(
                settings
                    .relay_retry_max_ms
                    .max(settings.relay_retry_base_ms.max(1)),
            ),
            window: batch * 4,
            waiting: HashMap::new(),
            in_flight: HashSet::new(),
            linger: Duration::from_millis(settings.relay_linger_ms),
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tracing::debug!(consumer = %self.consumer, partition = %self.partition, "relay started");
        let mut sends: FuturesUnordered<BoxFuture<'static, Settled>> = FuturesUnordered::new();
        // Our own pending entries first: they were read before a crash but maybe never acknowledged.
        // Walked with a cursor, so entries waiting for a retry do not hide the ones after them.
        let mut own_pending_cursor: Option<String> = Some("0-0".into());
        let mut last_claim = Instant::now() - Duration::from_secs(3600);
        let mut last_trim = Instant::now();
        while !*stop.borrow() {
            let mut failed = false;
            let step = async {
                let mut settled = Vec::new();
                while let Some(Some(done)) = sends.next().now_or_never() {
                    settled.push(done);
                }
                self.settle(settled).await?;

                let mut fresh = Vec::new();
                if last_claim.elapsed() >= Duration::from_secs(5) {
                    last_claim = Instant::now();
                    let claimed = self.claim_abandoned().await?;
                    if !claimed.is_empty() {
                        tracing::warn!(count = claimed.len(), "claimed entries of a crashed relay");
                        fresh.extend(claimed);
                    }
                }
                let busy = sends.len() + self.waiting_count();
                if let Some(cursor) = own_pending_cursor.clone() {
                    let entries = self.read(&cursor, None).await?;
                    own_pending_cursor = entries.last().map(|(id, _)| id.clone());
                    fresh.extend(entries);
                } else if busy < self.window {
                    // Block only when there is nothing else to do, and not past the next retry.
                    let idle = sends.is_empty() && fresh.is_empty();
                    let block = idle.then(|| {
                        let until_due = self
                            .next_due()
                            .map(|due| due.saturating_duration_since(Instant::now()))
                            .unwrap_or(IDLE_BLOCK);
                        until_due.as_millis().clamp(1, IDLE_BLOCK.as_millis()) as u64
                    });
                    let due_now = self.next_due().is_some_and(|due| due <= Instant::now());
                    fresh.extend(self.read(">", if due_now { None } else { block }).await?);
                }
                if !fresh.is_empty() {
                    // Only entries on the replicas go to Kafka: an entry a failover can take back
                    // would reach MySQL while its write is undone in Redis.
                    let durability = self.connections.durability();
                    if !crate::scripts::replicated(&self.redis, &self.outbox, durability, true)
                        .await?
                    {
                        // No replica yet (a failover just promoted one): read them again later.
                        metrics::counter!("flashsale_relay_unreplicated_waits_total").increment(1);
                        own_pending_cursor = Some("0-0".into());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        fresh.clear();
                    }
                }
                for entry in fresh {
                    if let Some(send) = self.admit(entry, 0) {
                        sends.push(send);
                    }
                }
                for send in self.due_heads() {
                    sends.push(send);
                }
                metrics::gauge!("flashsale_relay_retrying").set(self.waiting_count() as f64);
                metrics::gauge!("flashsale_relay_in_flight").set(sends.len() as f64);

                if !sends.is_empty() {
                    // Wait for the sends in flight (one producer batch: they settle together), at
                    // most SETTLE_WAIT, and acknowledge them with one XACK; then look for new
                    // entries again. A send Kafka is slow to answer stays in flight while the next
                    // entries are read, so one entry never stalls the others.
                    let deadline = tokio::time::Instant::now() + self.linger + SETTLE_WAIT;
                    let mut settled = Vec::new();
                    while let Ok(Some(done)) = tokio::time::timeout_at(deadline, sends.next()).await
                    {
                        settled.push(done);
                    }
                    self.settle(settled).await?;
                } else if own_pending_cursor.is_none() && self.waiting_count() > 0 {
                    // Nothing in flight, only entries waiting for their backoff.
                    let wait = self
                        .next_due()
                        .map(|due| due.saturating_duration_since(Instant::now()))
                        .unwrap_or(Duration::from_millis(100))
                        .min(Duration::from_millis(500));
                    tokio::time::sleep(wait).await;
                }
                if last_trim.elapsed() >= Duration::from_secs(5) {
                    last_trim = Instant::now();
                    self.trim().await?;
                }
                Ok::<_, anyhow::Error>(())
            };
            tokio::select! {
                result = step => {
                    if let Err(e) = result {
                        metrics::counter!("flashsale_relay_errors_total").increment(1);
                        tracing::error!(error = %e, "relay step failed; retrying on a new connection");
                        failed = true;
                    }
                }
                _ = stop.changed() => {}
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(500)).await;
                // The connection may be wedged (a read blocked across a server restart): replace it;
                // our own pending entries are read again from the start.
                if let Ok(fresh) = connect_redis_client(&self.connections).await {
                    let old = std::mem::replace(&mut self.redis, fresh);
                    crate::app::retire_redis_client(old);
                    own_pending_cursor = Some("0-0".into());
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.redis.quit()).await;
        tracing::debug!(partition = %self.partition, "relay stopped");
    }

    /// Creates the topics, retrying with a capped backoff while Kafka is unreachable. False when stopped.
    async fn wait_for_topics(
        connections: &ConnectionSettings,
        settings: &RelaySettings,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let retry_base = Duration::from_millis(settings.relay_retry_base_ms.max(1));
        let retry_max =
            Duration::from_millis(settings.relay_retry_max_ms).max(Duration::from_secs(1));
        let mut wait = retry_base;
        loop {
            if *stop.borrow() {
                return false;
            }
            // Stopping must not wait for an admin request to an unreachable broker to time out.
            let attempt = tokio::select! {
                attempt = crate::pipeline::kafka::ensure_topics(connections) => attempt,
                _ = stop.changed() => return false,
            };
            match attempt {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "Kafka topics not ready; the relay waits");
                    metrics::counter!("flashsale_relay_errors_total").increment(1);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return false;
            }
            wait = (wait * 2).min(retry_max);
        }
    }

    fn waiting_count(&self) -> usize {
        self.waiting.values().map(|w| w.queue.len()).sum()
    }

    fn next_due(&self) -> Option<Instant> {
        self.waiting
            .values()
            .filter(|w| w.head_in_flight.is_none() && !w.queue.is_empty())
            .map(|w| w.due)
            .min()
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
        self.retry_base.saturating_mul(factor).min(self.retry_max)
    }

    /// Sends the entry now, or queues it behind a waiting entry of the same aggregate.
    fn admit(&mut self, entry: Entry, attempts: u32) -> Option<BoxFuture<'static, Settled>> {
        if self.in_flight.contains(&entry.0) {
            return None; // claimed while our own send of it is still out
        }
        let aggregate = entry.1.get("aggregate").cloned().unwrap_or_default();
        if let Some(waiting) = self.waiting.get_mut(&aggregate) {
            if !waiting.queue.iter().any(|(e, _)| e.0 == entry.0) {
                insert_in_order(&mut waiting.queue, entry, attempts);
            }
            return None;
        }
        Some(self.send(entry, attempts))
    }

    /// The heads of the aggregate queues whose backoff has passed.
    fn due_heads(&mut self) -> Vec<BoxFuture<'static, Settled>> {
        let now = Instant::now();
        let mut heads = Vec::new();
        for waiting in self.waiting.values_mut() {
            if waiting.head_in_flight.is_none() && waiting.due <= now {
                if let Some(head) = waiting.queue.pop_front() {
                    waiting.head_in_flight = Some(head.0 .0.clone());
                    heads.push(head);
                }
            }
        }
        heads
            .into_iter()
            .map(|(entry, attempts)| self.send(entry, attempts))
            .collect()
    }

    fn send(&mut self, entry: Entry, attempts: u32) -> BoxFuture<'static, Settled> {
        self.in_flight.insert(entry.0.clone());
        let producer = self.producer.clone();
        let topic = self.connections.kafka_topic.clone();
        async move {
            let Some((key, value, event_id, event_type)) = kafka_message(&entry.1) else {
                return Settled {
                    entry,
                    attempts: attempts + 1,
                    result: Err("malformed outbox entry: not an event".into()),
                    verdict: Verdict::Dead,
                };
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
            let record = FutureRecord::to(&topic)
                .key(&key)
                .payload(&value)
                .headers(headers);
            let sent = producer.send(record, Duration::from_secs(10)).await;
            let (result, verdict) = match sent {
                Ok(_) => (Ok(()), Verdict::Sent),
                Err((e, _)) => {
                    let verdict = verdict_of(&e, &producer);
                    (Err(e.to_string()), verdict)
                }
            };
            Settled {
                entry,
                attempts: attempts + 1,
                result,
                verdict,
            }
        }
        .boxed()
    }

    /// Acknowledges what Kafka took, parks what it refuses for good, schedules the rest for a retry.
    async fn settle(&mut self, settled: Vec<Settled>) -> anyhow::Result<()> {
        if settled.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut acked = Vec::new();
        let mut failed = 0u64;
        let mut new_producer = false;
        let mut first_error: Option<anyhow::Error> = None;
        for done in settled {
            let Settled {
                entry,
                attempts,
                result,
                verdict,
            } = done;
            self.in_flight.remove(&entry.0);
            let aggregate = entry.1.get("aggregate").cloned().unwrap_or_default();
            match verdict {
                Verdict::Sent => {
                    acked.push(entry.0.clone());
                    self.advance(&aggregate, &entry.0);
                }
                Verdict::Dead => {
                    let error = result.err().unwrap_or_default();
                    // On a failure the entry stays pending and is read again after the reconnect;
                    // the rest of this batch is still settled (else their ids stay in flight for good).
                    if let Err(e) = self.dead_letter(&entry, &error).await {
                        first_error.get_or_insert(e);
                    }
                    self.advance(&aggregate, &entry.0);
                }
                Verdict::Retry | Verdict::RetryNewProducer => {
                    failed += 1;
                    new_producer |= verdict == Verdict::RetryNewProducer;
                    let wait = self.backoff(attempts);
                    if attempts == 1 || attempts % 10 == 0 {
                        tracing::warn!(entry = %entry.0, attempts, retry_in = ?wait,
                            error = %result.err().unwrap_or_default(), "Kafka did not acknowledge; retrying");
                    }
                    let due = Instant::now() + wait;
                    match self.waiting.get_mut(&aggregate) {
                        Some(waiting) => {
                            if waiting.head_in_flight.as_ref() == Some(&entry.0) {
                                waiting.head_in_flight = None;
                                waiting.due = due;
                            }
                            insert_in_order(&mut waiting.queue, entry, attempts);
                        }
                        None => {
                            self.waiting.insert(
                                aggregate,
                                Waiting {
                                    queue: VecDeque::from([(entry, attempts)]),
                                    due,
                                    head_in_flight: None,
                                },
                            );
                        }
                    }
                }
            }
        }
        if !acked.is_empty() {
            // Not acknowledged: they stay pending and are sent again (the sink drops the duplicates).
            let acknowledged: Result<i64, _> = self
                .redis
                .xack(&self.outbox, RELAY_GROUP, acked.clone())
                .await;
            if let Err(e) = acknowledged {
                first_error.get_or_insert(e.into());
            }
        }
        if new_producer {
            tracing::error!("the Kafka producer is in a fatal state; replacing it");
            metrics::counter!("flashsale_relay_producer_replaced_total").increment(1);
            self.producer = crate::pipeline::kafka::producer(
                &self.connections.kafka_brokers,
                self.linger.as_millis() as u64,
            )?;
        }
        metrics::counter!("flashsale_relay_published_total").increment(acked.len() as u64);
        metrics::counter!("flashsale_relay_errors_total").increment(failed);
        metrics::histogram!("flashsale_relay_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        first_error.map_or(Ok(()), Err)
    }

    /// The head of the aggregate's queue went through: the next one may go at once.
    fn advance(&mut self, aggregate: &str, id: &str) {
        if let Some(waiting) = self.waiting.get_mut(aggregate) {
            if waiting.head_in_flight.as_deref() == Some(id) {
                waiting.head_in_flight = None;
                waiting.due = Instant::now();
            }
            if waiting.queue.is_empty() && waiting.head_in_flight.is_none() {
                self.waiting.remove(aggregate);
            }
        }
    }

    async fn dead_letter(&self, entry: &Entry, error: &str) -> anyhow::Result<()> {
        let mut args: Vec<String> = vec![RELAY_GROUP.into(), entry.0.clone(), error.into()];
        let mut fields: Vec<(&String, &String)> = entry.1.iter().collect();
        fields.sort();
        for (name, value) in fields {
            args.push(name.clone());
            args.push(value.clone());
        }
        let parked: i64 = self
            .redis
            .eval(
                DEAD_LETTER_SCRIPT,
                vec![self.outbox.clone(), self.outbox_dead.clone()],
                args,
            )
            .await?;
        if parked == 1 {
            metrics::counter!("flashsale_relay_dead_lettered_total").increment(1);
            tracing::error!(entry = %entry.0, error, "outbox entry refused for good; parked in the dead-letter stream");
        }
        Ok(())
    }

    async fn read(&self, from: &str, block: Option<u64>) -> anyhow::Result<Vec<Entry>> {
        // A read blocked on a connection that Redis dropped (a killed server) must not wait forever:
        // bounded, it fails, and the step's error path replaces the connection.
        let bound = Duration::from_millis(block.unwrap_or(0) + READ_GRACE_MS);
        let read = self.redis.xreadgroup(
            RELAY_GROUP,
            &self.consumer,
            Some(self.batch),
            block,
            false,
            self.outbox.as_str(),
            from,
        );
        // Parsed by hand: a BLOCK timeout answers nil, which typed map conversions refuse.
        let response: Value = tokio::time::timeout(bound, read)
            .await
            .map_err(|_| anyhow::anyhow!("XREADGROUP got no answer in {bound:?}"))??;
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
                self.outbox.as_str(),
                RELAY_GROUP,
                &self.consumer,
                self.claim_idle_ms,
                "0-0",
                Some(self.batch),
                false,
            )
            .await?;
        let claimed: Vec<Entry> = reply
            .into_array()
            .into_iter()
            .nth(1)
            .map(parse_entries)
            .unwrap_or_default();
        // Our own entries waiting for a retry are idle too; they are not abandoned.
        Ok(claimed
            .into_iter()
            .filter(|(id, _)| {
                !self.in_flight.contains(id)
                    && !self
                        .waiting
                        .values()
                        .any(|w| w.queue.iter().any(|(e, _)| &e.0 == id))
            })
            .collect())
    }

    /// Drops entries every consumer group has acknowledged, and nothing else.
    async fn trim(&self) -> anyhow::Result<()> {
        let Some(min_id) = safe_trim_id(&self.redis, &self.outbox).await? else {
            return Ok(());
        };
        let _: i64 = self
            .redis
            .xtrim(self.outbox.as_str(), ("MINID", "~", min_id))
            .await?;
        Ok(())
    }
}

/// What a failed send means for the entry.
fn verdict_of(error: &KafkaError, producer: &FutureProducer) -> Verdict {
    use rdkafka::producer::Producer;
    if producer.client().fatal_error().is_some() {
        return Verdict::RetryNewProducer;
    }
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Fatal) => Verdict::RetryNewProducer,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage,
        ) => Verdict::Dead,
        _ => Verdict::Retry,
    }
}

/// Inserts the entry by stream id (a retried entry goes back before the later ones).
fn insert_in_order(queue: &mut VecDeque<(Entry, u32)>, entry: Entry, attempts: u32) {
    let id = parse_id(&entry.0);
    let at = queue
        .iter()
        .position(|(e, _)| parse_id(&e.0) > id)
        .unwrap_or(queue.len());
    queue.insert(at, (entry, attempts));
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
pub(crate) fn parse_entries(list: Value) -> Vec<Entry> {
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
        match outbox_backlog(&redis, &keys).await {
            Ok((length, unforwarded)) => {
                metrics::gauge!("flashsale_outbox_stream_length").set(length as f64);
                metrics::gauge!("flashsale_outbox_pending").set(unforwarded as f64);
            }
            Err(e) => tracing::debug!(error = %e, "sampling the outbox failed"),
        }
        sample_dead_letters(redis.next(), &keys).await;
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
/// Summed over every partition's stream (read concurrently).
pub async fn outbox_backlog<C: StreamsInterface + Sync>(
    redis: &C,
    keys: &Keys,
) -> anyhow::Result<(i64, i64)> {
    let per_partition = futures::future::try_join_all(
        Partition::all().map(|p| partition_backlog(redis, keys.outbox(p))),
    )
    .await?;
    Ok(per_partition
        .into_iter()
        .fold((0, 0), |(l, u), (length, unforwarded)| {
            (l + length, u + unforwarded)
        }))
}

/// One partition's backlog: (entries in the stream, entries not yet forwarded).
pub async fn partition_backlog<C: StreamsInterface + Sync>(
    redis: &C,
    outbox: String,
) -> anyhow::Result<(i64, i64)> {
    let length: i64 = redis.xlen(outbox.as_str()).await?;
    let groups: Value = redis
        .xinfo_groups(outbox.as_str())
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
    let summary: Value = redis.xpending(outbox.as_str(), RELAY_GROUP, ()).await?;
    let pending = summary
        .into_array()
        .first()
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let after = entries_after(redis, &outbox, &last_delivered, length, pending).await?;
    Ok((length, pending + after))
}

/// Entries with an id above `last`, counted from whichever side of it is shorter: the trimmer keeps
/// the side at or below it down to the pending list plus about a second of acknowledged entries.
async fn entries_after<C: StreamsInterface + Sync>(
    redis: &C,
    outbox: &str,
    last: &str,
    length: i64,
    pending: i64,
) -> anyhow::Result<i64> {
    let mut above_from = format!("({last}");
    let mut below_from = last.to_string();
    let (mut above, mut below) = (0i64, 0i64);
    for _ in 0..BACKLOG_PAGES {
        let page: Value = redis
            .xrange(outbox, above_from.as_str(), "+", Some(BACKLOG_PAGE))
            .await?;
        let (count, last_id) = page_ids(page);
        above += count;
        match last_id {
            Some(id) if count == BACKLOG_PAGE as i64 => above_from = format!("({id}"),
            _ => return Ok(above),
        }
        let page: Value = redis
            .xrevrange(outbox, below_from.as_str(), "-", Some(BACKLOG_PAGE))
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
async fn safe_trim_id(redis: &Client, outbox: &str) -> anyhow::Result<Option<String>> {
    let groups: Value = redis.xinfo_groups(outbox).await?;
    let mut floor: Option<(u64, u64, String)> = None;
    for group in groups.into_array() {
        let fields = group.into_array();
        let Some(name) = field(&fields, "name").and_then(|v| v.as_string()) else {
            continue;
        };
        let summary: Value = redis.xpending(outbox, name, ()).await?;
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

/// Samples the length of the relay's dead-letter streams (entries Kafka refused for good), summed.
pub async fn sample_dead_letters<C: StreamsInterface + Sync>(redis: &C, keys: &Keys) {
    let lengths = futures::future::try_join_all(
        Partition::all().map(|p| async move { redis.xlen::<i64, _>(keys.outbox_dead(p)).await }),
    )
    .await
    .map(|l| l.into_iter().sum::<i64>());
    match lengths {
        Ok(length) => metrics::gauge!("flashsale_relay_dead_letter_length").set(length as f64),
        Err(e) => tracing::debug!(error = %e, "sampling the dead-letter stream failed"),
    }
}
