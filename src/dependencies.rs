//! Dependency probe: every two seconds, whether Redis, MySQL and Kafka answer, as
//! `flashsale_dependency_up{dependency}` gauges and as the state /readyz reports. Only Redis decides
//! readiness: sales need nothing else, MySQL and Kafka are reached through the outbox.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::*;
use tokio::sync::watch;

use crate::state::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Last probe result per dependency; before the first probe, what the start found (the engine connected
/// to Redis and MySQL; Kafka as its topic creation went).
pub struct DependencyStatus {
    redis: AtomicBool,
    mysql: AtomicBool,
    kafka: AtomicBool,
}

impl DependencyStatus {
    pub fn new(kafka_up: bool) -> Self {
        Self {
            redis: AtomicBool::new(true),
            mysql: AtomicBool::new(true),
            kafka: AtomicBool::new(kafka_up),
        }
    }

    pub fn redis(&self) -> bool {
        self.redis.load(Ordering::Relaxed)
    }
    pub fn mysql(&self) -> bool {
        self.mysql.load(Ordering::Relaxed)
    }
    pub fn kafka(&self) -> bool {
        self.kafka.load(Ordering::Relaxed)
    }
}

pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        probe(&state).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// True when Redis answers a PING within the probe timeout.
pub async fn redis_up(state: &AppState) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, state.redis.next().ping::<String>(None)).await,
        Ok(Ok(_))
    )
}

async fn probe(state: &AppState) {
    let mysql = async {
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&state.db)).await,
            Ok(Ok(_))
        )
    };
    let kafka =
        crate::pipeline::kafka::is_ready(&state.producer, &state.settings.connections.kafka_topic);
    let (redis, mysql, kafka) = tokio::join!(redis_up(state), mysql, kafka);
    let status = &state.dependencies;
    for (name, flag, up) in [
        ("redis", &status.redis, redis),
        ("mysql", &status.mysql, mysql),
        ("kafka", &status.kafka, kafka),
    ] {
        if flag.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(dependency = name, "dependency answers again");
            } else {
                tracing::warn!(dependency = name, "dependency does not answer");
            }
        }
        metrics::gauge!("flashsale_dependency_up", "dependency" => name).set(if up {
            1.0
        } else {
            0.0
        });
    }
}
