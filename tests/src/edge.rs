//! A balancer with edge settings of a test's own (`[tls]`, `[auth]`,
//! `allowed_origins`, `max_connections`) in front of nodes the test
//! started, for the tests of what faces the internet (issue 11).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cluster::{BalancerProc, Cluster, ClusterOptions, TOKEN};
use crate::process::{free_port, loopback, target_dir, NodeOptions, NodeProc};

/// Nodes as the cluster starts them (with the control token).
pub async fn nodes(ids: &[&str], toml: &str) -> Vec<NodeProc> {
    let mut out = Vec::new();
    for id in ids {
        let options = NodeOptions {
            toml: toml.to_owned(),
            control_token: Some(TOKEN.to_owned()),
        };
        out.push(NodeProc::start(id, options).await);
    }
    out
}

/// Where a test writes its files (keys, certificates, configs).
pub fn scratch(name: &str) -> PathBuf {
    let dir = target_dir()
        .join("test-logs")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The balancer TOML for `nodes` on fresh ports, with `top` (top-level
/// keys) first and `tables` (`[tls]`, `[auth]`) last.
pub fn balancer_toml(
    nodes: &[&NodeProc],
    top: &str,
    tables: &str,
) -> (String, SocketAddr, SocketAddr) {
    let (public, admin) = (loopback(free_port()), loopback(free_port()));
    let base = Cluster::toml_for(&ClusterOptions::default(), public, admin, nodes);
    (format!("{top}\n{base}\n{tables}\n"), public, admin)
}

/// Starts a balancer with that TOML and waits until every node owns
/// meetings.
pub async fn balancer(nodes: &[&NodeProc], top: &str, tables: &str) -> BalancerProc {
    let (toml, public, admin) = balancer_toml(nodes, top, tables);
    let config = scratch("edge").join(format!("balancer-{}.toml", admin.port()));
    std::fs::write(&config, toml).expect("write balancer config");
    let b = BalancerProc::start(config, public, admin).await;
    let n = nodes.len();
    crate::eventually(crate::PATIENCE, "all nodes healthy in /ring", || async {
        (b.owners().await.ok()?.len() == n).then_some(())
    })
    .await;
    b
}

/// Runs `roompin-balancer --config` on `toml` and returns its exit code
/// (`None`: it was still running after `PATIENCE`, and was killed) and
/// stderr: for configs it must refuse at start.
pub fn refused_start(toml: &str, name: &str) -> (Option<i32>, String) {
    let config = scratch("edge").join(format!("{name}.toml"));
    std::fs::write(&config, toml).expect("write config");
    let mut child = std::process::Command::new(crate::process::bin("roompin-balancer"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn balancer");
    // A refusal is immediate; one that starts is killed after a while.
    let deadline = std::time::Instant::now() + crate::PATIENCE;
    let mut killed = false;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            killed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait");
    let code = if killed { None } else { out.status.code() };
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}
