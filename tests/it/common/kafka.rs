//! A private single-node Kafka broker (KRaft) for the tests that stop, restart or delay a broker: its own
//! ports and its own temporary log directory, so the shared broker other tests use is never touched. The
//! broker runs as a child process in its own process group; Drop kills it and removes its directory, so
//! a failing test leaves nothing behind.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Kafka jars scripts/services.sh installs.
fn kafka_libs() -> PathBuf {
    let cache = std::env::var("FLASHSALE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/flashsale")
        });
    let libs = cache.join("kafka-4.1.0/libs");
    assert!(
        libs.join(".complete").exists() || libs.exists(),
        "Kafka jars missing in {} (run scripts/services.sh install)",
        libs.display()
    );
    libs
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

pub struct PrivateKafka {
    pub port: u16,
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl PrivateKafka {
    /// Formats a fresh log directory for a broker on a free port; not started yet.
    pub fn new() -> Self {
        Self::on_port(free_port())
    }

    /// Formats a fresh log directory for a broker that will listen on `port`; not started yet.
    pub fn on_port(port: u16) -> Self {
        let controller = free_port();
        let dir = std::env::temp_dir().join(format!(
            "flashsale-kafka-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("data")).expect("kafka temp dir");
        let config = dir.join("kafka.properties");
        std::fs::write(
            &config,
            format!(
                "process.roles=broker,controller\n\
                 node.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 controller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
                 log.dirs={data}\n\
                 num.partitions=3\n\
                 default.replication.factor=1\n\
                 auto.create.topics.enable=false\n\
                 offsets.topic.replication.factor=1\n\
                 offsets.topic.num.partitions=3\n\
                 transaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\n\
                 transaction.state.log.num.partitions=3\n\
                 share.coordinator.state.topic.replication.factor=1\n\
                 share.coordinator.state.topic.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n\
                 min.insync.replicas=1\n",
                data = dir.join("data").display()
            ),
        )
        .expect("kafka config");
        // `--cluster-id=ID` in one argument: an id may start with '-', and as a separate argument
        // the tool's parser takes it for an option and refuses (1 format in 64 failed that way).
        let tool_log = dir.join("storage-tool.log");
        let output = java(&dir)
            .args(["kafka.tools.StorageTool", "format"])
            .arg(format!("--cluster-id={}", random_cluster_id()))
            .arg(format!("--config={}", config.display()))
            .stdout(Stdio::null())
            .output()
            .expect("java runs the Kafka storage tool");
        let _ = std::fs::write(&tool_log, &output.stderr);
        assert!(
            output.status.success(),
            "formatting the private Kafka log dir: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self {
            port,
            dir,
            config,
            child: None,
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker and waits until it listens.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = java(&self.dir);
        cmd.args(["-Xms256m", "-Xmx256m", "kafka.Kafka"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.child = Some(cmd.spawn().expect("the private Kafka broker starts"));
        let deadline = Instant::now() + Duration::from_secs(120);
        while !port_open(self.port) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "the private Kafka broker exited: {status} (see {})",
                    self.dir.join("kafka.log").display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the private Kafka broker does not listen"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM (a clean shutdown, as a restart does) and waits until the process is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // The whole process group (the JVM is its leader). A syscall, not `kill -TERM -<pid>`: Debian 12's
    // procps kill (4.0.2) reads that as `kill(-<first digit>)`, and -1 is every process on the machine.
    let Ok(group) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    if group > 1 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
        unsafe {
            libc::kill(-group, signal);
        }
    }
}

fn java(dir: &Path) -> Command {
    let mut cmd = Command::new("java");
    cmd.arg("-XX:+UseSerialGC")
        .arg("-XX:TieredStopAtLevel=1")
        .arg(format!("-Dkafka.logs.dir={}", dir.display()))
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            repo().join("scripts/kafka/log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", kafka_libs().display()));
    cmd
}

/// A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.
fn random_cluster_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = uuid::Uuid::new_v4().as_u128();
    // 128 bits as 22 six-bit digits (the last one carries the remaining 2 bits, as base64 does).
    (0..22)
        .map(|i| {
            let shift = 128i32 - 6 * (i + 1);
            let digit = if shift >= 0 {
                (bytes >> shift) & 0x3f
            } else {
                (bytes << -shift) & 0x3f
            };
            ALPHABET[digit as usize] as char
        })
        .collect()
}
