//! The apply loop: fetch a batch, apply it in ONE MySQL transaction, dead-letter poison, then commit
//! the Kafka offsets. Offsets are only committed after the effects of every message up to them are
//! durable in MySQL (or the message went to the DLQ); a crash in between makes Kafka redeliver, and
//! processed_events turns the redelivery into a no-op.

use crate::apply::{apply_batch, apply_event, Outcome};
use crate::config::SinkConfig;
use crate::db::is_transient;
use crate::dlq::{self, Poison};
use crate::event::Event;
use crate::sink::sleep_or_shutdown;
use crate::telemetry as m;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::MySqlPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Builds the consumer: manual offset store and commit, read_committed, earliest on a new group.
pub fn consumer(cfg: &SinkConfig) -> anyhow::Result<StreamConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka_brokers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .create()?)
}

/// One message of a batch, decoded or not.
struct Item {
    msg: OwnedMessage,
    decoded: Result<Event, String>,
}

/// How a batch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchEnd {
    /// Applied (or dead-lettered) and offsets committed.
    Committed,
    /// Shutdown arrived while waiting for the database or the DLQ; nothing committed past it.
    Aborted,
    /// Test hook: stopped between the MySQL commit and the offset commit.
    ExitHook,
}

pub struct ApplyLoop {
    pub cfg: SinkConfig,
    pub pool: MySqlPool,
    pub consumer: Arc<StreamConsumer>,
    pub producer: FutureProducer,
    /// Woken after a batch wrote new data platform deliveries.
    pub deliveries: Arc<Notify>,
}

impl ApplyLoop {
    /// Runs until shutdown (finishing the batch in hand) or until the test hook fires.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let first = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                r = self.consumer.recv() => r,
            };
            let mut batch = match first {
                Ok(msg) => vec![msg.detach()],
                Err(e) => {
                    metrics::counter!(m::SINK_ERRORS).increment(1);
                    tracing::warn!(error = %e, "kafka consume error");
                    sleep_or_shutdown(Duration::from_millis(200), &mut shutdown).await;
                    continue;
                }
            };
            while batch.len() < self.cfg.batch_max {
                match tokio::time::timeout(self.cfg.batch_idle, self.consumer.recv()).await {
                    Ok(Ok(msg)) => batch.push(msg.detach()),
                    Ok(Err(e)) => {
                        metrics::counter!(m::SINK_ERRORS).increment(1);
                        tracing::warn!(error = %e, "kafka consume error");
                        break;
                    }
                    Err(_) => break,
                }
            }
            match self.process(batch, &mut shutdown).await? {
                BatchEnd::Committed => {}
                BatchEnd::Aborted => break,
                BatchEnd::ExitHook => {
                    tracing::warn!("exit_after_db_commit: stopping before the offset commit");
                    return Ok(());
                }
            }
        }
        tracing::info!("apply loop stopped");
        Ok(())
    }

    /// Applies one batch end to end.
    pub async fn process(
        &self,
        batch: Vec<OwnedMessage>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<BatchEnd> {
        let started = Instant::now();
        metrics::histogram!(m::SINK_BATCH_SIZE).record(batch.len() as f64);
        let items: Vec<Item> = batch
            .into_iter()
            .map(|msg| {
                let decoded = match msg.payload() {
                    Some(p) => Event::decode(p).map_err(|e| e.to_string()),
                    None => Err("message has no value".to_string()),
                };
                Item { msg, decoded }
            })
            .collect();
        let mut poison: Vec<Poison> = Vec::new();
        let mut events: Vec<(&OwnedMessage, &Event)> = Vec::new();
        for it in &items {
            match &it.decoded {
                Ok(ev) => events.push((&it.msg, ev)),
                Err(e) => {
                    tracing::warn!(partition = it.msg.partition(), offset = it.msg.offset(), error = %e, "undecodable message");
                    poison.push(poison_of(&it.msg, "decode", e.clone()));
                }
            }
        }

        // 1. MySQL: the whole batch in one transaction; on a non-transient failure, one by one.
        let mut applied: Vec<&str> = Vec::new();
        let mut new_deliveries = false;
        if !events.is_empty() {
            let mut attempt = 0u32;
            let whole = loop {
                match apply_all(&self.pool, &events, self.cfg.crash).await {
                    Ok(outcomes) => break Some(outcomes),
                    Err(e) if is_transient(&e) => {
                        metrics::counter!(m::SINK_ERRORS).increment(1);
                        attempt += 1;
                        let wait = crate::backoff::simple(attempt, Duration::from_secs(10));
                        tracing::warn!(error = %e, ?wait, events = events.len(), "batch apply failed (transient), retrying");
                        if sleep_or_shutdown(wait, shutdown).await {
                            return Ok(BatchEnd::Aborted);
                        }
                    }
                    Err(e) => {
                        metrics::counter!(m::SINK_ERRORS).increment(1);
                        tracing::warn!(error = %e, events = events.len(), "batch apply failed; applying its events one by one");
                        break None;
                    }
                }
            };
            match whole {
                Some(outcomes) => {
                    for ((_, ev), o) in events.iter().zip(outcomes) {
                        if o == Outcome::Applied {
                            applied.push(&ev.event_type);
                        }
                    }
                }
                None => {
                    for (msg, ev) in &events {
                        match self.apply_alone(msg, ev, shutdown).await {
                            Alone::Done(Outcome::Applied) => applied.push(&ev.event_type),
                            Alone::Done(Outcome::Duplicate) => {}
                            Alone::Poison(err) => {
                                tracing::error!(event_id = %ev.event_id, partition = msg.partition(), offset = msg.offset(), error = %err, "event refused by the database; dead-lettering");
                                poison.push(poison_of(msg, "apply", err));
                            }
                            Alone::Aborted => return Ok(BatchEnd::Aborted),
                        }
                    }
                }
            }
            for t in &applied {
                metrics::counter!(m::SINK_EVENTS_APPLIED, "type" => t.to_string()).increment(1);
                if *t == "order.paid" {
                    new_deliveries = true;
                }
            }
            let skipped = events.len() - applied.len();
            if skipped > 0 {
                metrics::counter!(m::SINK_EVENTS_SKIPPED).increment(skipped as u64);
            }
        }
        metrics::histogram!(m::SINK_APPLY_DURATION).record(started.elapsed().as_secs_f64());
        if new_deliveries {
            self.deliveries.notify_one();
        }
        if self.cfg.exit_after_db_commit {
            return Ok(BatchEnd::ExitHook);
        }

        // 2. DLQ: every poison message acknowledged by the broker before its offset is committed.
        for p in &poison {
            let mut attempt = 0u32;
            loop {
                match dlq::send(&self.producer, &self.cfg.dlq_topic, p).await {
                    Ok(()) => {
                        metrics::counter!(m::SINK_DEAD_LETTERS).increment(1);
                        tracing::warn!(topic = %p.topic, partition = p.partition, offset = p.offset, stage = p.stage, error = %p.error, "dead-lettered");
                        break;
                    }
                    Err(e) => {
                        metrics::counter!(m::SINK_ERRORS).increment(1);
                        attempt += 1;
                        let wait = crate::backoff::simple(attempt, Duration::from_secs(10));
                        tracing::warn!(error = %e, ?wait, "DLQ produce failed, retrying");
                        if sleep_or_shutdown(wait, shutdown).await {
                            return Ok(BatchEnd::Aborted);
                        }
                    }
                }
            }
        }

        // 3. Offsets: next offset to read per partition.
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for it in &items {
            let k = (it.msg.topic().to_string(), it.msg.partition());
            let v = it.msg.offset() + 1;
            let e = next.entry(k).or_insert(v);
            *e = (*e).max(v);
        }
        self.commit(next).await;
        tracing::debug!(messages = items.len(), applied = applied.len(), poison = poison.len(), elapsed = ?started.elapsed(), "batch done");
        Ok(BatchEnd::Committed)
    }

    /// Applies one event alone, retrying non-transient failures a few times; transient ones forever.
    async fn apply_alone(
        &self,
        msg: &OwnedMessage,
        ev: &Event,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Alone {
        let mut failures = 0u32;
        let mut transient = 0u32;
        loop {
            match apply_one(&self.pool, msg, ev).await {
                Ok(o) => return Alone::Done(o),
                Err(e) if is_transient(&e) => {
                    metrics::counter!(m::SINK_ERRORS).increment(1);
                    transient += 1;
                    let wait = crate::backoff::simple(transient, Duration::from_secs(10));
                    tracing::warn!(event_id = %ev.event_id, error = %e, ?wait, "apply failed (transient), retrying");
                    if sleep_or_shutdown(wait, shutdown).await {
                        return Alone::Aborted;
                    }
                }
                Err(e) => {
                    metrics::counter!(m::SINK_ERRORS).increment(1);
                    failures += 1;
                    if failures >= self.cfg.poison_attempts.max(1) {
                        return Alone::Poison(e.to_string());
                    }
                    if sleep_or_shutdown(Duration::from_millis(50 * failures as u64), shutdown)
                        .await
                    {
                        return Alone::Aborted;
                    }
                }
            }
        }
    }

    /// Stores and synchronously commits the offsets. A failure is logged, not fatal: the events are
    /// recorded in processed_events, so a redelivery after a failed commit changes nothing.
    async fn commit(&self, next: BTreeMap<(String, i32), i64>) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(error = %e, "bad offset");
            }
        }
        let consumer = self.consumer.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut last = String::new();
            for attempt in 0..3u64 {
                if let Err(e) = consumer.store_offsets(&tpl) {
                    // Partitions revoked by a rebalance meanwhile: their new owner re-reads them.
                    tracing::debug!(error = %e, "store_offsets");
                }
                match consumer.commit(&tpl, CommitMode::Sync) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        last = e.to_string();
                        std::thread::sleep(Duration::from_millis(100 * (attempt + 1)));
                    }
                }
            }
            Err(last)
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                metrics::counter!(m::SINK_ERRORS).increment(1);
                tracing::warn!(error = %e, "offset commit failed; the batch may be redelivered (harmless)");
            }
            Err(e) => tracing::warn!(error = %e, "offset commit task failed"),
        }
    }
}

enum Alone {
    Done(Outcome),
    Poison(String),
    Aborted,
}

fn poison_of(msg: &OwnedMessage, stage: &'static str, error: String) -> Poison {
    Poison {
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().map(|k| k.to_vec()),
        value: msg.payload().map(|v| v.to_vec()),
        stage,
        error,
    }
}

/// Applies the events in one transaction and commits it.
async fn apply_all(
    pool: &MySqlPool,
    events: &[(&OwnedMessage, &Event)],
    crash: Option<crate::crash::CrashPlan>,
) -> Result<Vec<Outcome>, sqlx::Error> {
    let batch: Vec<(&Event, i32, i64)> = events
        .iter()
        .map(|(m, e)| (*e, m.partition(), m.offset()))
        .collect();
    let mut tx = pool.begin().await?;
    let out = apply_batch(&mut tx, &batch).await?;
    crate::crash::at(crash, crate::crash::CrashPoint::MidBatch);
    tx.commit().await?;
    crate::crash::at(crash, crate::crash::CrashPoint::AfterDbCommit);
    Ok(out)
}

/// Applies one event alone in its own transaction.
async fn apply_one(
    pool: &MySqlPool,
    msg: &OwnedMessage,
    ev: &Event,
) -> Result<Outcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let out = apply_event(&mut tx, ev, msg.partition(), msg.offset()).await?;
    tx.commit().await?;
    Ok(out)
}
