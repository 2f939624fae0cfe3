//! Kafka plumbing shared by the relay, readiness and reconcile.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use crate::config::ConnectionSettings;

/// Idempotent producer: acks from all in-sync replicas, retries without duplicates or reordering.
/// The relay sends entry by entry from 64 partition loops; librdkafka gathers them per Kafka
/// partition for `linger_ms` (RELAY_LINGER_MS), so the broker gets a few large compressed batches
/// instead of one request per handful of events (its CPU is per request far more than per byte:
/// issue 12 measured ~360 µs of broker CPU per event at 2 ms).
pub fn producer(brokers: &str, linger_ms: u64) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating the Kafka producer")
}

/// Creates the events and dead-letter topics when missing (a second call is harmless), with the
/// configured replication factor and `min.insync.replicas` (production: 3 and 2; locally 1 and 1).
pub async fn ensure_topics(c: &ConnectionSettings) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &c.kafka_brokers)
        .create()
        .context("creating the Kafka admin client")?;
    let replication = c.kafka_replication_factor.max(1);
    let min_insync = c.kafka_min_insync_replicas.max(1).to_string();
    let topics = [
        NewTopic::new(
            &c.kafka_topic,
            c.kafka_partitions,
            TopicReplication::Fixed(replication),
        )
        .set("min.insync.replicas", &min_insync),
        NewTopic::new(&c.kafka_dlq_topic, 1, TopicReplication::Fixed(replication))
            .set("min.insync.replicas", &min_insync),
    ];
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .create_topics(&topics, &options)
        .await
        .context("creating Kafka topics")?
    {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            // Worth another try: the cluster is still coming up.
            Err((
                name,
                code @ (RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::NotController
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::LeaderNotAvailable),
            )) => anyhow::bail!("creating topic {name}: {code}"),
            // The broker answered and said no (e.g. not authorized: topics made by operations, or a
            // replication factor the cluster cannot hold): say so and go on; sends tell the rest.
            Err((name, code)) => {
                tracing::error!(topic = %name, error = %code, "could not create the topic")
            }
        }
    }
    Ok(())
}

/// True when the broker answers a metadata request for the topic.
pub async fn is_ready(producer: &FutureProducer, topic: &str) -> bool {
    let producer = producer.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(2))
            .map(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.error().is_none() && !t.partitions().is_empty())
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// The group's committed offsets. A broker that just started (or moved the group) answers
/// "not coordinator" / "coordinator loading" until its offsets topic is ready: those are retried
/// with capped backoff for up to 20 s; any other error is returned at once.
fn committed_offsets_when_coordinated(
    consumer: &BaseConsumer,
    list: TopicPartitionList,
    timeout: Duration,
) -> anyhow::Result<TopicPartitionList> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut pause = Duration::from_millis(100);
    loop {
        match consumer.committed_offsets(list.clone(), timeout) {
            Ok(committed) => return Ok(committed),
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::NotCoordinator
                            | RDKafkaErrorCode::CoordinatorLoadInProgress
                            | RDKafkaErrorCode::CoordinatorNotAvailable
                    )
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Messages of the topic not yet committed by the consumer group (sum over partitions).
pub async fn group_lag(brokers: &str, topic: &str, group: &str) -> anyhow::Result<i64> {
    let brokers = brokers.to_string();
    let topic = topic.to_string();
    let group = group.to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        let timeout = Duration::from_secs(5);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        let mut list = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                list.add_partition(&topic, p.id());
            }
        }
        let committed = committed_offsets_when_coordinated(&consumer, list, timeout)?;
        let mut lag = 0;
        for element in committed.elements() {
            let (low, high) = consumer.fetch_watermarks(&topic, element.partition(), timeout)?;
            let position = element.offset().to_raw().filter(|o| *o >= 0).unwrap_or(low);
            lag += (high - position).max(0);
        }
        Ok(lag)
    })
    .await?
}
