//! A test cluster: N real nodes and a real balancer on free loopback ports,
//! with the balancer's TOML in a file the test can edit live.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{
    bin, free_port, loopback, target_dir, wait_healthy, NodeOptions, NodeProc, Proc,
};

pub const TOKEN: &str = "test-control-token";

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// Extra TOML for every node's config file.
    pub node_toml: String,
    /// The balancer's `[health]` table body.
    pub health_toml: String,
    /// Whether nodes and balancer share a control token (room moves).
    pub control: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            node_toml: String::new(),
            // Quick checks, but a patient timeout: under a reconnect storm a
            // debug-build node can be slow to answer, and a dead node is
            // found at once anyway (its connect is refused).
            health_toml:
                "interval_ms = 200\ntimeout_ms = 1000\nunhealthy_after = 3\nhealthy_after = 2\n"
                    .into(),
            control: true,
        }
    }
}

/// A running balancer.
pub struct BalancerProc {
    pub proc: Proc,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
}

impl BalancerProc {
    /// Starts a balancer on `config` and waits for its `/healthz`.
    pub async fn start(config: PathBuf, public: SocketAddr, admin: SocketAddr) -> BalancerProc {
        let mut cmd = Command::new(bin("roompin-balancer"));
        // The flags override the file, so several balancers can share one TOML.
        cmd.arg("--config").arg(&config);
        cmd.arg("--listen")
            .arg(public.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string());
        let proc = Proc::spawn(&format!("balancer-{}", admin.port()), cmd);
        wait_healthy(admin, crate::PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", proc.logs()));
        BalancerProc {
            proc,
            public,
            admin,
            config,
        }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/websocket?{query}", self.public)
    }

    /// `ws://…/websocket`, without a query.
    pub fn ws_base(&self) -> String {
        format!("ws://{}/websocket", self.public)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The node id `/route` names for a meeting.
    pub async fn route(&self, meeting: &str) -> anyhow::Result<String> {
        let v = crate::get_json(&self.admin_url(&format!("/route?meeting_id={meeting}"))).await?;
        v["node"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no node in {v}"))
    }

    pub async fn ring(&self) -> anyhow::Result<Value> {
        crate::get_json(&self.admin_url("/ring")).await
    }

    /// Ids of the members that own meetings now, sorted.
    pub async fn owners(&self) -> anyhow::Result<Vec<String>> {
        let ring = self.ring().await?;
        let members = ring["members"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("no members in {ring}"))?;
        let mut owners: Vec<String> = members
            .iter()
            .filter(|m| m["owner"] == true)
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        owners.sort();
        Ok(owners)
    }

    pub async fn epoch(&self) -> u64 {
        self.ring()
            .await
            .ok()
            .and_then(|r| r["epoch"].as_u64())
            .unwrap_or(0)
    }

    pub async fn metrics(&self) -> String {
        crate::get(&self.admin_url("/metrics"))
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }
}

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub balancer: BalancerProc,
    pub options: ClusterOptions,
}

impl Cluster {
    pub async fn start(options: ClusterOptions) -> Cluster {
        let node_options = NodeOptions {
            toml: options.node_toml.clone(),
            control_token: options.control.then(|| TOKEN.to_owned()),
        };
        let names = ["node-a", "node-b", "node-c", "node-d", "node-e"];
        let mut nodes = Vec::new();
        for name in names.iter().take(options.nodes) {
            nodes.push(NodeProc::start(name, node_options.clone()).await);
        }
        let (public, admin) = (loopback(free_port()), loopback(free_port()));
        let config = target_dir().join("test-logs").join(format!(
            "balancer-{}-{}.toml",
            admin.port(),
            std::process::id()
        ));
        let cluster_toml =
            Self::toml_for(&options, public, admin, &nodes.iter().collect::<Vec<_>>());
        std::fs::write(&config, cluster_toml).expect("write balancer config");
        let balancer = BalancerProc::start(config, public, admin).await;
        let cluster = Cluster {
            nodes,
            balancer,
            options,
        };
        // Every node healthy in the ring before the test starts.
        let n = cluster.nodes.len();
        crate::eventually(crate::PATIENCE, "all nodes healthy in /ring", || async {
            (cluster.balancer.owners().await.ok()?.len() == n).then_some(())
        })
        .await;
        cluster
    }

    /// A balancer TOML listing `nodes` as upstreams.
    pub fn toml_for(
        options: &ClusterOptions,
        public: SocketAddr,
        admin: SocketAddr,
        nodes: &[&NodeProc],
    ) -> String {
        let mut toml =
            format!("listen = \"{public}\"\nadmin_listen = \"{admin}\"\npush_interval_ms = 500\n");
        if options.control {
            toml.push_str(&format!("control_token = \"{TOKEN}\"\n"));
        } else {
            toml.push_str("moves = false\n");
        }
        toml.push_str(&format!("\n[health]\n{}\n", options.health_toml));
        for n in nodes {
            toml.push_str(&format!(
                "[[upstream]]\nid = \"{}\"\naddr = \"{}\"\n\n",
                n.id, n.addr
            ));
        }
        toml
    }

    /// The balancer TOML for a set of this cluster's nodes, by index.
    pub fn toml_with(&self, indices: &[usize]) -> String {
        let nodes: Vec<&NodeProc> = indices.iter().map(|&i| &self.nodes[i]).collect();
        Self::toml_for(
            &self.options,
            self.balancer.public,
            self.balancer.admin,
            &nodes,
        )
    }

    /// Rewrites the live config file (the balancer reloads it by itself).
    pub fn write_config(&self, toml: &str) {
        let tmp = self.balancer.config.with_extension("tmp");
        std::fs::write(&tmp, toml).expect("write config");
        std::fs::rename(&tmp, &self.balancer.config).expect("replace config");
    }

    /// Starts one more node with this cluster's options (not yet in the TOML).
    pub async fn add_node(&mut self, id: &str) -> usize {
        let options = NodeOptions {
            toml: self.options.node_toml.clone(),
            control_token: self.options.control.then(|| TOKEN.to_owned()),
        };
        self.nodes.push(NodeProc::start(id, options).await);
        self.nodes.len() - 1
    }

    /// Waits until `/ring` shows exactly these owners.
    pub async fn wait_owners(&self, ids: &[&str], within: Duration) {
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        crate::eventually(within, &format!("owners {want:?}"), || async {
            (self.balancer.owners().await.ok()? == want).then_some(())
        })
        .await
    }

    pub fn node(&self, id: &str) -> Option<&NodeProc> {
        self.nodes.iter().find(|n| n.id == id)
    }
}
