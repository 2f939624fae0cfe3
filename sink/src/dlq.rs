//! Dead-letter topic: a poison message is produced unchanged (same key and value) with headers that
//! name where it came from and why it was rejected.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use std::time::Duration;

/// Header names on dead-lettered messages.
pub const H_TOPIC: &str = "x-origin-topic";
pub const H_PARTITION: &str = "x-origin-partition";
pub const H_OFFSET: &str = "x-origin-offset";
pub const H_ERROR: &str = "x-error";
pub const H_STAGE: &str = "x-error-stage";
pub const H_FAILED_AT: &str = "x-failed-at";

/// Why and where a message was rejected.
#[derive(Debug, Clone)]
pub struct Poison {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// `decode` (the message cannot be read) or `apply` (the database refused it).
    pub stage: &'static str,
    pub error: String,
}

pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()?)
}

/// Produces one poison message to the DLQ and waits for the broker's ack.
pub async fn send(producer: &FutureProducer, dlq_topic: &str, p: &Poison) -> anyhow::Result<()> {
    let partition = p.partition.to_string();
    let offset = p.offset.to_string();
    let failed_at = crate::apply::rfc3339(crate::db::now());
    let error: String = p.error.chars().take(2000).collect();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: H_TOPIC,
            value: Some(p.topic.as_str()),
        })
        .insert(Header {
            key: H_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: H_OFFSET,
            value: Some(offset.as_str()),
        })
        .insert(Header {
            key: H_ERROR,
            value: Some(error.as_str()),
        })
        .insert(Header {
            key: H_STAGE,
            value: Some(p.stage),
        })
        .insert(Header {
            key: H_FAILED_AT,
            value: Some(failed_at.as_str()),
        });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(dlq_topic).headers(headers);
    if let Some(k) = &p.key {
        record = record.key(k.as_slice());
    }
    if let Some(v) = &p.value {
        record = record.payload(v.as_slice());
    }
    producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing to {dlq_topic}: {e}"))?;
    Ok(())
}
