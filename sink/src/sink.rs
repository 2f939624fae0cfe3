//! Wiring: database, Kafka, the apply loop, the delivery worker, lag and gauges, the ops server, and
//! graceful shutdown.

use crate::config::SinkConfig;
use crate::consumer::ApplyLoop;
use crate::delivery::{self, DeliveryConfig};
use rdkafka::consumer::Consumer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Sleeps `d`; returns true (early) when shutdown was signalled.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    let signalled = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    };
    signalled || *shutdown.borrow()
}

/// Runs the sink until `shutdown` completes: stops fetching, finishes and commits the batch in hand
/// (MySQL, then offsets), lets the delivery worker finish its requests, and returns.
pub async fn run_sink(
    config: SinkConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _ = crate::telemetry::prometheus();
    let (tx, rx) = watch::channel(false);
    let signal = tokio::spawn({
        let tx = tx.clone();
        async move {
            shutdown.await;
            tracing::info!("shutdown requested");
            let _ = tx.send(true);
        }
    });
    drop(rx);
    let result = run_inner(config, tx.clone()).await;
    let _ = tx.send(true);
    signal.abort();
    result
}

async fn run_inner(cfg: SinkConfig, tx: watch::Sender<bool>) -> anyhow::Result<()> {
    let rx = tx.subscribe();
    let state = Arc::new(crate::state::SinkState::default());
    let mut tasks = Vec::new();
    if let Some(addr) = cfg.listen_addr {
        let (_, t) = crate::ops::serve(addr, state.clone(), rx.clone()).await?;
        tasks.push(t);
    }

    let mut wait_rx = rx.clone();
    let pool = match crate::db::connect(&cfg.database_url, 8, &mut wait_rx).await? {
        Some(p) => p,
        None => return Ok(()),
    };
    if cfg.run_migrations {
        crate::db::migrate(&pool, &mut wait_rx).await?;
    }

    let consumer = Arc::new(crate::consumer::consumer(&cfg, state.clone())?);
    consumer.subscribe(&[cfg.topic.as_str()])?;
    let producer = crate::dlq::producer(&cfg.kafka_brokers)?;
    let wake = Arc::new(Notify::new());
    tracing::info!(topic = %cfg.topic, group = %cfg.group_id, dlq = %cfg.dlq_topic, "sink started");

    if cfg.run_delivery_worker {
        tasks.push(tokio::spawn(delivery::run(
            pool.clone(),
            DeliveryConfig::from(&cfg),
            wake.clone(),
            rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(delivery::gauges(
        pool.clone(),
        cfg.gauges_interval,
        rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::lag::run(
        consumer.clone(),
        state.clone(),
        cfg.gauges_interval,
        rx.clone(),
    )));

    let apply = ApplyLoop {
        cfg: cfg.clone(),
        pool: pool.clone(),
        consumer: consumer.clone(),
        producer,
        deliveries: wake,
        state,
    };
    let result = apply.run(rx.clone()).await;
    drop(apply);

    // Stop the others (also when the apply loop ended on its own) and let them finish.
    let _ = tx.send(true);
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            tracing::warn!("a task did not stop within 10 s");
        }
    }
    // Leave the group without committing anything more.
    let consumer = Arc::try_unwrap(consumer).ok();
    if let Some(c) = consumer {
        tokio::task::spawn_blocking(move || {
            c.unsubscribe();
            drop(c);
        })
        .await
        .ok();
    }
    pool.close().await;
    tracing::info!("sink stopped");
    result
}
