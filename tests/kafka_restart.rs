//! The Kafka broker restarts while the engine is under load: the hot path keeps answering, the relay
//! retries, the sink reconnects, and after the drain nothing is lost or applied twice. Its own test
//! binary, because it stops the shared broker (cargo runs test binaries one at a time).

mod common;

use std::process::Command;
use std::time::Duration;

use common::pipeline::{assert_exactly_once, kill9, mixed_workload, platform, start_sink, Done};
use common::spawn_app_with;

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The broker's pid, from the pid file of scripts/services.sh.
fn broker_pid() -> i32 {
    let local = std::env::var("FLASHSALE_LOCAL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo().join(".local"));
    let file = local.join("run").join("kafka.pid");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| {
            panic!(
                "this test restarts the broker started by scripts/services.sh; {}: {e}",
                file.display()
            )
        })
        .trim()
        .parse()
        .expect("pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_broker_restart_under_load_loses_nothing() {
    let app = spawn_app_with(|s| {
        s.run_relay = true;
        s.reservation_ttl_secs = 2;
    })
    .await;
    let (url, handle) = platform(0.0, 0).await;
    let mut sink = start_sink(&app.settings.connections, &url, &[]);
    let first = mixed_workload(&app, 60).await;

    // Stop the broker (SIGTERM, as a restart does) while a second workload runs, then start it again.
    let pid = broker_pid();
    let during = mixed_workload(&app, 120);
    let restart = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stopped = Command::new("kill")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(stopped.success());
        while Command::new("kill")
            .args(["-0", &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (second, ()) = tokio::join!(during, restart);
    // The hot path answered every request of the second workload with the broker down.
    let up = tokio::task::spawn_blocking(|| {
        Command::new(repo().join("scripts/services.sh"))
            .arg("up")
            .status()
    })
    .await
    .unwrap()
    .expect("services.sh up");
    assert!(up.success(), "the broker restarts");
    let third = mixed_workload(&app, 60).await;

    let done = Done {
        paid: first.paid + second.paid + third.paid,
    };
    assert_exactly_once(&app, &done, &handle).await;
    kill9(&mut sink);
    app.stop().await;
}
