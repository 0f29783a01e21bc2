//! roompin's own processes: chat nodes and the balancer, started from the
//! release binaries beside the bench, with the balancer TOML written into
//! the work folder (and rewritten live for membership changes).

use anyhow::{bail, Context};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Front;
use crate::env::{Env, Side};
use crate::procs::{self, Proc};

pub struct Node {
    pub id: String,
    pub addr: SocketAddr,
    pub proc: Proc,
}

/// Starts a node. With a token it takes part in room moves (membership
/// scenario); without one it accepts every meeting, so nginx and HAProxy,
/// whose hashes differ from roompin's ring, can share the same nodes.
pub async fn start_node(env: &Env, id: &str, token: Option<&str>) -> anyhow::Result<Node> {
    let addr = procs::free_addr()?;
    let mut cmd = Command::new(env.bin("roompin-node"));
    cmd.args(["--id", id, "--listen", &addr.to_string(), "--config"])
        .arg(env.root.join("config").join("node.toml"))
        .env("RUST_LOG", server_log())
        .env_remove("ROOMPIN_CONTROL_TOKEN");
    if let Some(t) = token {
        cmd.env("ROOMPIN_CONTROL_TOKEN", t);
    }
    env.pin(&mut cmd, Side::Server);
    let mut proc = Proc::spawn(id, cmd, &env.dir("logs")?)?;
    // SIGINT stops a node at once; SIGTERM would drain it first.
    proc.stop_signal = libc::SIGINT;
    procs::wait_listening(&mut proc, addr, Duration::from_secs(15)).await?;
    Ok(Node {
        id: id.to_owned(),
        addr,
        proc,
    })
}

pub async fn start_nodes(
    env: &Env,
    prefix: &str,
    n: usize,
    token: Option<&str>,
) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(start_node(env, &format!("{prefix}-{i}"), token).await?);
    }
    Ok(nodes)
}

/// What the balancer TOML says; rewritten live for membership changes.
pub struct BalancerConfig {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub path: PathBuf,
    pub token: Option<String>,
    pub vnodes: u32,
}

impl BalancerConfig {
    /// The TOML for these upstreams; written atomically (rename), as an
    /// operator's editor would, so the watcher never reads half a file.
    pub fn write(&self, nodes: &[&Node]) -> anyhow::Result<()> {
        let mut t = format!(
            // max_connections: the idle and storm scenarios hold 9,000
            // WebSockets, over the default cap of 8,000 (and within the
            // budget of a 20,000-descriptor process).
            "listen = \"{}\"\nadmin_listen = \"{}\"\nvnodes = {}\nmax_connections = 9400\n",
            self.addr, self.admin, self.vnodes
        );
        match &self.token {
            Some(token) => t.push_str(&format!("control_token = \"{token}\"\n")),
            None => t.push_str("moves = false\n"),
        }
        t.push_str("\n[health]\ninterval_ms = 1000\ntimeout_ms = 1000\nunhealthy_after = 3\nhealthy_after = 2\n");
        for n in nodes {
            t.push_str(&format!(
                "\n[[upstream]]\nid = \"{}\"\naddr = \"{}\"\nweight = 1\n",
                n.id, n.addr
            ));
        }
        let tmp = self.path.with_extension("toml.tmp");
        std::fs::write(&tmp, t).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).context("cannot replace the balancer TOML")?;
        Ok(())
    }
}

pub struct Balancer {
    pub config: BalancerConfig,
    pub proc: Proc,
}

impl Balancer {
    pub async fn start(
        env: &Env,
        name: &str,
        nodes: &[&Node],
        token: Option<&str>,
    ) -> anyhow::Result<Balancer> {
        let config = BalancerConfig {
            addr: procs::free_addr()?,
            admin: procs::free_addr()?,
            path: env.dir(name)?.join("balancer.toml"),
            token: token.map(str::to_owned),
            vnodes: 512,
        };
        config.write(nodes)?;
        let mut cmd = Command::new(env.bin("roompin-balancer"));
        cmd.arg("--config")
            .arg(&config.path)
            .args(["--threads", &env.proxy_workers().to_string()])
            .env("RUST_LOG", server_log());
        env.pin(&mut cmd, Side::Server);
        let mut proc = Proc::spawn(name, cmd, &env.dir("logs")?)?;
        procs::wait_listening(&mut proc, config.addr, Duration::from_secs(15)).await?;
        let b = Balancer { config, proc };
        let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        b.wait_owners(&ids, Duration::from_secs(20)).await?;
        Ok(b)
    }

    pub fn addr(&self) -> SocketAddr {
        self.config.addr
    }

    pub fn ring(&self) -> anyhow::Result<Value> {
        let (status, body) = procs::http_get(self.config.admin, "/ring")?;
        if status != 200 {
            bail!("/ring answered {status}");
        }
        serde_json::from_str(&body).context("/ring is not JSON")
    }

    /// Waits until exactly `ids` own meetings.
    pub async fn wait_owners(&self, ids: &[&str], within: Duration) -> anyhow::Result<()> {
        let want: BTreeSet<&str> = ids.iter().copied().collect();
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(ring) = self.ring() {
                let owners: BTreeSet<&str> = ring["members"]
                    .as_array()
                    .map(|ms| {
                        ms.iter()
                            .filter(|m| m["owner"] == true)
                            .filter_map(|m| m["id"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                if owners == want {
                    return Ok(());
                }
                last = ring;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the balancer's owners are not {want:?} after {within:?}: {last}")
    }

    pub fn front(self) -> Front {
        Front {
            name: "roompin",
            addr: self.config.addr,
            pids: vec![self.proc.pid()],
            _procs: vec![self.proc],
        }
    }
}

/// The servers' log filter: `warn`, so logging costs the measurement
/// nothing, unless `ROOMPIN_BENCH_SERVER_LOG` asks for more (to see where a
/// slow step spent its time; the logs are in the work folder's logs/).
fn server_log() -> String {
    std::env::var("ROOMPIN_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".to_owned())
}
