//! The Kafka broker restarts while the engine is under load: the hot path keeps answering, the relay
//! retries, the sink reconnects, and after the drain nothing is lost or applied twice. The test runs its
//! OWN broker (tests/it/common/kafka.rs: own ports, own log dir), so the shared broker other tests use is
//! never stopped; the broker and the sink are killed by their guards if the test fails.

use crate::common;

use std::sync::{Arc, Mutex};

use common::kafka::PrivateKafka;
use common::pipeline::{assert_exactly_once, mixed_workload, platform, start_sink, Done};
use common::spawn_app_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_broker_restart_under_load_loses_nothing() {
    let _alone = common::exclusive().await;
    let kafka = tokio::task::spawn_blocking(|| {
        let mut kafka = PrivateKafka::new();
        kafka.start();
        kafka
    })
    .await
    .expect("private broker");
    let brokers = kafka.brokers();
    let kafka = Arc::new(Mutex::new(kafka));
    let app = spawn_app_with(|s| {
        s.connections.kafka_brokers = brokers.clone();
        s.run_relay = true;
        s.reservation_ttl_secs = 2;
    })
    .await;
    let (url, handle) = platform(0.0, 0).await;
    let _sink = start_sink(&app.settings.connections, &url, &[]);
    let first = mixed_workload(&app, 60).await;

    // Stop the broker (SIGTERM, as a restart does) while a second workload runs, then start it again.
    let during = mixed_workload(&app, 120);
    let stopper = kafka.clone();
    let stop = tokio::task::spawn_blocking(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        stopper.lock().expect("broker").stop();
    });
    let (second, stopped) = tokio::join!(during, stop);
    stopped.expect("the broker stops");
    // The hot path answered every request of the second workload with the broker down.
    let starter = kafka.clone();
    tokio::task::spawn_blocking(move || starter.lock().expect("broker").start())
        .await
        .expect("the broker restarts");
    let third = mixed_workload(&app, 60).await;

    let done = Done {
        paid: first.paid + second.paid + third.paid,
    };
    assert_exactly_once(&app, &done, &handle).await;
    app.stop().await;
}
