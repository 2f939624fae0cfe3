//! A private redis-server (own port, own data dir, AOF with fsync always) for the tests that kill,
//! restart or replicate a Redis; the shared one other tests use is never touched.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::unique;

/// A private redis-server with AOF (fsync always: an acknowledged write survives kill -9). Killed and
/// its data removed on drop, so a failing test leaves nothing behind.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra server arguments (e.g. `--replicaof 127.0.0.1 <port>`).
    pub fn start_with(extra: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(unique("flashsale-redis-"));
        std::fs::create_dir_all(&dir).expect("redis data dir");
        let mut redis = Self {
            port,
            dir,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        redis.spawn();
        redis
    }

    pub fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--logfile", "redis.log"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Polls PING until PONG (not LOADING) or the deadline.
    pub async fn wait_ready(&self) {
        self.poll_until(
            b"PING\r\n",
            "+PONG",
            "the private redis-server never answered",
        )
        .await;
    }

    /// For a replica: polls INFO replication until its link to the primary is up (the first sync
    /// done), or the deadline. A replica answers PING long before that.
    pub async fn wait_synced(&self) {
        self.poll_until(
            b"INFO replication\r\n",
            "master_link_status:up",
            "the private replica never synced with its primary",
        )
        .await;
    }

    /// Sends `command` on a fresh connection every 50 ms until the answer contains `expected`.
    async fn poll_until(&self, command: &[u8], expected: &str, failure: &str) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answered = std::net::TcpStream::connect(("127.0.0.1", self.port))
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(1)))?;
                    s.write_all(command)?;
                    let mut buf = [0u8; 4096];
                    let n = s.read(&mut buf)?;
                    Ok(String::from_utf8_lossy(&buf[..n]).contains(expected))
                })
                .unwrap_or(false);
            if answered {
                return;
            }
            assert!(Instant::now() < deadline, "{failure}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
