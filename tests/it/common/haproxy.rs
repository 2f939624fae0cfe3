//! A private HAProxy in front of a test's engines, configured by the same generator as `make up
//! TOPOLOGY=cluster` (scripts/haproxy-cfg.sh), with faster health checks. HAProxy is a Debian package
//! that scripts/services.sh installs.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::pipeline::ChildGuard;

pub struct PrivateHaproxy {
    _process: ChildGuard,
    dir: std::path::PathBuf,
    /// `http://127.0.0.1:PORT`: what the clients talk to.
    pub base: String,
}

impl PrivateHaproxy {
    /// HAProxy on a free local port, balancing over `engines` (`http://host:port` each), checking
    /// `/readyz` every `check_ms`; returns once it answers `/readyz` with 200.
    pub async fn start(engines: &[&str], check_ms: u64) -> Self {
        let dir = std::env::temp_dir().join(super::unique("haproxy-"));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let bind = format!("127.0.0.1:{port}");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/haproxy-cfg.sh");
        let generated = Command::new("sh")
            .arg(script)
            .arg(&bind)
            .args(engines.iter().map(|e| e.trim_start_matches("http://")))
            .env("HAPROXY_CHECK_INTERVAL_MS", check_ms.to_string())
            .output()
            .expect("scripts/haproxy-cfg.sh runs");
        assert!(
            generated.status.success(),
            "haproxy-cfg.sh: {}",
            String::from_utf8_lossy(&generated.stderr)
        );
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, &generated.stdout).expect("config written");
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("log file");
        let process = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("haproxy starts (scripts/services.sh installs it)");
        let proxy = Self {
            _process: ChildGuard(process),
            base: format!("http://{bind}"),
            dir,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http
                .get(format!("{}/readyz", proxy.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return proxy;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy never answered /readyz: {}",
                proxy.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What HAProxy logged (the abnormal requests only: 5xx, aborts, retries).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for PrivateHaproxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
