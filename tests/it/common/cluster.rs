//! A private Redis Cluster (3 primaries, 3 replicas, own ports and data dirs, a one-second
//! `cluster-node-timeout`, full coverage not required as in the local cluster) for the tests that
//! kill a primary; the shared cluster other tests use is never touched. Every node is killed and its
//! data removed on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::unique;

pub struct PrivateCluster {
    pub ports: Vec<u16>,
    dirs: Vec<PathBuf>,
    children: Vec<Option<Child>>,
}

/// One line of CLUSTER NODES: the node's port, whether it is a primary now, and its slot ranges.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub port: u16,
    pub primary: bool,
    pub failed: bool,
    pub slots: Vec<(u16, u16)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Sends one command with redis-cli and returns its output (empty when the node does not answer).
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl PrivateCluster {
    pub async fn start() -> Self {
        let mut cluster = Self {
            ports: Vec::new(),
            dirs: Vec::new(),
            children: Vec::new(),
        };
        for _ in 0..6 {
            // Cluster bus port = port + 10000: both must be free.
            let port = loop {
                let port = free_port();
                if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                    break port;
                }
            };
            let dir = std::env::temp_dir().join(unique("flashsale-cluster-"));
            std::fs::create_dir_all(&dir).expect("cluster node dir");
            cluster.ports.push(port);
            cluster.dirs.push(dir);
            cluster.children.push(None);
        }
        for node in 0..6 {
            cluster.spawn(node);
        }
        for &port in &cluster.ports {
            poll(
                || cli(port, &["PING"]).contains("PONG"),
                "a cluster node never answered",
            )
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create runs");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_healthy().await;
        cluster
    }

    fn spawn(&mut self, node: usize) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.ports[node].to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--dir")
            .arg(&self.dirs[node])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "1000"])
            // As `make up TOPOLOGY=cluster`: a dead primary stops only its own slots.
            .args(["--cluster-require-full-coverage", "no"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.children[node] = Some(child);
    }

    /// fred's cluster URL with every node as a seed.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.ports[0]);
        for (i, port) in self.ports.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{port}"));
        }
        url
    }

    /// Every live node says the cluster is ok, every live replica has synced with its primary, and
    /// every primary has a replica online (what WAIT 1 needs).
    pub async fn wait_healthy(&self) {
        poll(
            || {
                self.live_ports().iter().all(|&port| {
                    let replication = cli(port, &["INFO", "replication"]);
                    cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                        && if replication.contains("role:slave") {
                            replication.contains("master_link_status:up")
                        } else {
                            replication.contains("state=online")
                        }
                })
            },
            "the private cluster never became healthy",
        )
        .await
        .unwrap_or_else(|failure| panic!("{failure}: {}", self.describe()));
    }

    /// Each live node's cluster state and replication role, for a failure message.
    fn describe(&self) -> String {
        self.live_ports()
            .iter()
            .map(|&port| {
                let info = cli(port, &["CLUSTER", "INFO"]);
                let replication = cli(port, &["INFO", "replication"]);
                let pick = |text: &str, prefixes: &[&str]| -> Vec<String> {
                    text.lines()
                        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
                        .map(|l| l.trim().to_string())
                        .collect()
                };
                format!(
                    "{port}: {:?} {:?}",
                    pick(
                        &info,
                        &[
                            "cluster_state",
                            "cluster_slots_assigned",
                            "cluster_known_nodes"
                        ]
                    ),
                    pick(
                        &replication,
                        &["role", "master_link_status", "connected_slaves", "slave0"]
                    )
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn live_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.children)
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// The cluster's view of its nodes, from any live node.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let port = self.live_ports()[0];
        cli(port, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let parts: Vec<&str> = line.split_whitespace().collect();
                let port = parts
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let flags = parts.get(2)?;
                let slots = parts
                    .iter()
                    .skip(8)
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|range| {
                        let mut ends = range.split('-');
                        let start: u16 = ends.next()?.parse().ok()?;
                        let end = ends.next().and_then(|e| e.parse().ok()).unwrap_or(start);
                        Some((start, end))
                    })
                    .collect();
                Some(NodeInfo {
                    port,
                    primary: flags.contains("master"),
                    failed: flags.contains("fail"),
                    slots,
                })
            })
            .collect()
    }

    /// The port of the primary that serves `key` now; None while its primary is down and no replica
    /// has taken over yet.
    pub fn primary_of(&self, key: &str) -> Option<u16> {
        let port = self.live_ports()[0];
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        self.nodes()
            .into_iter()
            .find(|n| {
                n.primary && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|n| n.port)
    }

    /// kill -9 of the node on `port`.
    pub fn kill9(&mut self, port: u16) {
        let node = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("a node of this cluster");
        if let Some(mut child) = self.children[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node on `port` again, on its data and nodes.conf (it rejoins the cluster).
    pub fn restart(&mut self, port: u16) {
        let node = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("a node of this cluster");
        if self.children[node].is_none() {
            self.spawn(node);
        }
    }

    /// INFO commandstats of the node on `port`: calls per command ("evalsha" -> n).
    pub fn command_calls(&self, port: u16) -> std::collections::HashMap<String, u64> {
        cli(port, &["INFO", "commandstats"])
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_string(), calls))
            })
            .collect()
    }
}

/// Polls `ready` every 100 ms for up to 90 s; Err(failure) when it never is.
async fn poll(mut ready: impl FnMut() -> bool, failure: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ready() {
        if Instant::now() >= deadline {
            return Err(failure.to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut() {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
