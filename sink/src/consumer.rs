//! The apply loop: fetch a batch, apply it in ONE MySQL transaction, dead-letter poison, then commit
//! the Kafka offsets. Offsets are only committed after the effects of every message up to them are
//! durable in MySQL (or the message went to the DLQ); a crash in between makes Kafka redeliver, and
//! processed_events turns the redelivery into a no-op.
//!
//! An event the database refuses with an integrity-constraint error (duplicate key, foreign key, ...)
//! was accepted by the engine, so the stores disagree: it is never dead-lettered. Its partition stalls
//! instead (paused on the consumer, offset not committed past the event, nothing after it applied)
//! and the event is retried with capped backoff until it applies; the other partitions keep flowing.

use crate::apply::{apply_batch, apply_event, Outcome};
use crate::config::SinkConfig;
use crate::db::{is_constraint_violation, is_transient, transient_retry_wait};
use crate::dlq::{self, Poison};
use crate::event::Event;
use crate::sink::sleep_or_shutdown;
use crate::state::{SinkContext, SinkState, Stall, Tp};
use crate::telemetry as m;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::MySqlPool;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Builds the consumer: manual offset store and commit, read_committed, earliest on a new group; its
/// rebalance callbacks keep `state` to the partitions it holds.
pub fn consumer(
    cfg: &SinkConfig,
    state: Arc<SinkState>,
) -> anyhow::Result<StreamConsumer<SinkContext>> {
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
        // Fewer, larger fetches: the broker answers when 64 KiB are there or after 50 ms, not
        // with every few events (each fetch costs the broker about what a whole batch of bytes does).
        .set("fetch.min.bytes", "65536")
        .set("fetch.wait.max.ms", "50")
        .create_with_context(SinkContext { state })?)
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
    pub consumer: Arc<StreamConsumer<SinkContext>>,
    pub producer: FutureProducer,
    /// Woken after a batch wrote new data platform deliveries.
    pub deliveries: Arc<Notify>,
    /// Stalled partitions (shared with the rebalance callbacks and /metrics).
    pub state: Arc<SinkState>,
}

impl ApplyLoop {
    /// Runs until shutdown (finishing the batch in hand) or until the test hook fires.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut rebalances_seen = self.state.rebalance_count();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let rebalances = self.state.rebalance_count();
            if rebalances != rebalances_seen {
                rebalances_seen = rebalances;
                self.resume_unstalled();
            }
            self.retry_due_stalls();
            // Wake up for the next stalled retry (and now and then to notice a rebalance).
            let wake_in = self.next_stall_retry().unwrap_or(Duration::from_secs(1));
            let first = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                r = self.consumer.recv() => r,
                _ = tokio::time::sleep(wake_in) => continue,
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
            let deadline = Instant::now() + self.cfg.batch_max_wait;
            while batch.len() < self.cfg.batch_max {
                let wait = self
                    .cfg
                    .batch_idle
                    .min(deadline.saturating_duration_since(Instant::now()));
                if wait.is_zero() {
                    break;
                }
                match tokio::time::timeout(wait, self.consumer.recv()).await {
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
        let (batch, retried) = self.admit(batch);
        if batch.is_empty() {
            return Ok(BatchEnd::Committed);
        }
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
        let mut duplicates = 0usize;
        // Partitions refused at an offset in this batch: nothing from that offset on is applied,
        // dead-lettered or committed.
        let mut refused: BTreeMap<Tp, Refusal> = BTreeMap::new();
        let mut new_deliveries = false;
        if !events.is_empty() {
            let mut attempt = 0u32;
            let whole = loop {
                match apply_all(&self.pool, &events, self.cfg.crash).await {
                    Ok(outcomes) => break Some(outcomes),
                    Err(e) if is_transient(&e) => {
                        attempt += 1;
                        // A lost lock conflict clears as soon as the other sink's batch commits; see
                        // transient_retry_wait (escalating to seconds idled a sink for 6 s per conflict).
                        let wait = transient_retry_wait(&e, attempt);
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
                        match o {
                            Outcome::Applied => applied.push(&ev.event_type),
                            Outcome::Duplicate => duplicates += 1,
                        }
                    }
                }
                None => {
                    for (msg, ev) in &events {
                        let tp = (msg.topic().to_string(), msg.partition());
                        if refused.contains_key(&tp) {
                            continue;
                        }
                        match self.apply_alone(msg, ev, shutdown).await {
                            Alone::Done(Outcome::Applied) => applied.push(&ev.event_type),
                            Alone::Done(Outcome::Duplicate) => duplicates += 1,
                            Alone::Conflict(err) => {
                                refused.insert(
                                    tp,
                                    Refusal {
                                        offset: msg.offset(),
                                        event_id: ev.event_id.clone(),
                                        event_type: ev.event_type.clone(),
                                        error: err,
                                    },
                                );
                            }
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
            if duplicates > 0 {
                metrics::counter!(m::SINK_EVENTS_SKIPPED).increment(duplicates as u64);
            }
        }
        self.record_stalls(&refused, &retried);
        let blocked = |topic: &str, partition: i32, offset: i64| {
            refused
                .get(&(topic.to_string(), partition))
                .is_some_and(|r| offset >= r.offset)
        };
        poison.retain(|p| !blocked(&p.topic, p.partition, p.offset));
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
            if blocked(it.msg.topic(), it.msg.partition(), it.msg.offset()) {
                continue;
            }
            let k = (it.msg.topic().to_string(), it.msg.partition());
            let v = it.msg.offset() + 1;
            let e = next.entry(k).or_insert(v);
            *e = (*e).max(v);
        }
        self.commit(next).await;
        tracing::debug!(messages = items.len(), applied = applied.len(), poison = poison.len(), stalled = refused.len(), elapsed = ?started.elapsed(), "batch done");
        Ok(BatchEnd::Committed)
    }

    /// Filters a fetched batch against the stalled partitions. A paused partition's messages were
    /// fetched before the pause: dropped (they are read again after the rewind). A partition resumed
    /// for a retry must start at its refused event; if it does not (a message fetched before the
    /// rewind), it is paused and rewound again. Returns the admitted messages and the partitions whose
    /// refused event is in them.
    fn admit(&self, batch: Vec<OwnedMessage>) -> (Vec<OwnedMessage>, Vec<Tp>) {
        let mut stalls = self.state.stalls();
        if stalls.is_empty() {
            return (batch, Vec::new());
        }
        // Per stalled partition of this batch: true = its refused event came first, admit what follows.
        let mut started: HashMap<Tp, bool> = HashMap::new();
        let mut out = Vec::with_capacity(batch.len());
        for msg in batch {
            let tp = (msg.topic().to_string(), msg.partition());
            let Some(stall) = stalls.get_mut(&tp) else {
                out.push(msg);
                continue;
            };
            if stall.paused {
                continue;
            }
            match started.get(&tp) {
                Some(true) => out.push(msg),
                Some(false) => {}
                None if msg.offset() < stall.offset => {}
                None if msg.offset() == stall.offset => {
                    started.insert(tp, true);
                    out.push(msg);
                }
                None => {
                    tracing::debug!(
                        partition = tp.1,
                        offset = msg.offset(),
                        expected = stall.offset,
                        "stalled partition resumed past its event; rewinding again"
                    );
                    started.insert(tp.clone(), false);
                    stall.paused = true;
                    stall.retry_at = Instant::now();
                    self.pause(&tp);
                }
            }
        }
        let retried = started
            .into_iter()
            .filter_map(|(tp, first)| first.then_some(tp))
            .collect();
        (out, retried)
    }

    /// Stalls (or keeps stalled, with a longer backoff) every partition refused in this batch, and
    /// clears the stall of every retried partition whose event went through.
    fn record_stalls(&self, refused: &BTreeMap<Tp, Refusal>, retried: &[Tp]) {
        let mut stalls = self.state.stalls();
        for tp in retried {
            if !refused.contains_key(tp) {
                if let Some(s) = stalls.remove(tp) {
                    tracing::warn!(topic = %tp.0, partition = tp.1, offset = s.offset, event_id = %s.event_id, attempts = s.attempts, stalled_for = ?s.since.elapsed(), "stalled event applied; partition flows again");
                }
            }
        }
        for (tp, r) in refused {
            metrics::counter!(m::SINK_CONFLICTS).increment(1);
            let now = Instant::now();
            let stall = stalls.entry(tp.clone()).or_insert_with(|| Stall {
                offset: r.offset,
                event_id: r.event_id.clone(),
                error: String::new(),
                since: now,
                attempts: 0,
                retry_at: now,
                paused: true,
            });
            if stall.offset != r.offset {
                // A different event of the partition (the earlier one applied meanwhile).
                stall.offset = r.offset;
                stall.event_id = r.event_id.clone();
                stall.since = now;
                stall.attempts = 0;
            }
            stall.attempts += 1;
            stall.error = r.error.clone();
            let wait = crate::backoff::delay(
                stall.attempts,
                self.cfg.stall_backoff_base,
                self.cfg.stall_backoff_cap,
            );
            stall.retry_at = now + wait;
            stall.paused = true;
            tracing::error!(
                topic = %tp.0, partition = tp.1, offset = r.offset, event_id = %r.event_id,
                event_type = %r.event_type, attempts = stall.attempts, retry_in = ?wait, error = %r.error,
                "event refused by an integrity constraint: the stores disagree; partition stalled (not dead-lettered), retrying"
            );
            self.pause(tp);
        }
    }

    fn pause(&self, tp: &Tp) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::warn!(partition = tp.1, error = %e, "pausing a stalled partition failed");
        }
    }

    /// Rewinds every stalled partition whose retry is due to its refused event and resumes it.
    fn retry_due_stalls(&self) {
        let now = Instant::now();
        let mut stalls = self.state.stalls();
        for (tp, stall) in stalls.iter_mut() {
            if !stall.paused || stall.retry_at > now {
                continue;
            }
            if let Err(e) = self.consumer.seek(
                &tp.0,
                tp.1,
                Offset::Offset(stall.offset),
                Duration::from_secs(5),
            ) {
                tracing::warn!(partition = tp.1, offset = stall.offset, error = %e, "rewinding a stalled partition failed; trying again shortly");
                stall.retry_at = now + Duration::from_millis(500);
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.0, tp.1);
            match self.consumer.resume(&tpl) {
                Ok(()) => stall.paused = false,
                Err(e) => {
                    tracing::warn!(partition = tp.1, error = %e, "resuming a stalled partition failed; trying again shortly");
                    stall.retry_at = now + Duration::from_millis(500);
                }
            }
        }
    }

    /// Time until the earliest paused stall is due.
    fn next_stall_retry(&self) -> Option<Duration> {
        let now = Instant::now();
        self.state
            .stalls()
            .values()
            .filter(|s| s.paused)
            .map(|s| s.retry_at.saturating_duration_since(now))
            .min()
    }

    /// After a rebalance: resume every assigned partition that is not stalled (a partition paused
    /// here, revoked and assigned again must not stay paused).
    fn resume_unstalled(&self) {
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "assignment unknown");
                return;
            }
        };
        let stalls = self.state.stalls();
        let mut tpl = TopicPartitionList::new();
        for e in assignment.elements() {
            if !stalls.contains_key(&(e.topic().to_string(), e.partition())) {
                tpl.add_partition(e.topic(), e.partition());
            }
        }
        drop(stalls);
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::debug!(error = %e, "resuming after a rebalance");
            }
        }
    }

    /// Applies one event alone, retrying non-transient failures a few times, transient ones forever;
    /// an integrity-constraint violation is returned at once (the caller stalls the partition).
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
                Err(e) if is_constraint_violation(&e) => {
                    metrics::counter!(m::SINK_ERRORS).increment(1);
                    return Alone::Conflict(e.to_string());
                }
                Err(e) if is_transient(&e) => {
                    transient += 1;
                    let wait = transient_retry_wait(&e, transient);
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
    /// Refused by an integrity constraint: stall the partition.
    Conflict(String),
    Aborted,
}

/// An event refused by an integrity constraint in this batch.
struct Refusal {
    offset: i64,
    event_id: String,
    event_type: String,
    error: String,
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
