//! Scenario 3, idle cost: 9,000 idle WebSockets through a proxy to three
//! nodes (18,000 of the proxy's descriptors). The RSS growth per connection
//! of the proxy process(es) and of the nodes, for roompin-balancer, nginx
//! and HAProxy. Every run gets fresh nodes and a fresh proxy, so no run
//! inherits another's heap.

use serde_json::{json, Value};

use super::{args, median, pid_args, rotated, rss_delta_bytes};
use crate::env::Env;
use crate::loadgen::{self, f};
use crate::peers::{haproxy, nginx, roompin, Front};

pub async fn run(env: &Env) -> anyhow::Result<Value> {
    let (conns, rounds, ramp) = if env.smoke {
        (150u64, 1usize, "500")
    } else {
        (9000, 2, "3000")
    };
    let systems = ["roompin", "nginx", "haproxy"];
    let mut runs: Vec<Value> = Vec::new();
    for round in 0..rounds {
        for name in rotated(&systems, round) {
            let nodes =
                roompin::start_nodes(env, &format!("idle-{name}-r{round}"), 3, None).await?;
            let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
            let refs: Vec<&roompin::Node> = nodes.iter().collect();
            let front: Front = match name {
                "roompin" => {
                    roompin::Balancer::start(env, &format!("idle-balancer-r{round}"), &refs, None)
                        .await?
                        .front()
                }
                "nginx" => nginx::start(env, &addrs, env.proxy_workers()).await?,
                _ => haproxy::start(env, &addrs, env.proxy_workers()).await?,
            };
            let node_pids: Vec<u32> = nodes.iter().map(|n| n.proc.pid()).collect();
            let mut a = args(&[
                "--per-room",
                "1",
                "--duration",
                if env.smoke { "500ms" } else { "3s" },
                "--connect-timeout",
                "20s",
            ]);
            a.extend(env.phases("2s", "1s"));
            a.extend([
                "--conns".into(),
                conns.to_string(),
                "--ramp".into(),
                ramp.into(),
            ]);
            a.extend(pid_args(&front.pids));
            a.extend(pid_args(&node_pids));
            let r = loadgen::run(
                env,
                &format!("idle-{name}-r{round}"),
                "idle",
                &front.addr.to_string(),
                &a,
            )
            .await?;
            let ok = f(&r, "connections.ok");
            let per = |bytes: f64| if ok > 0.0 { bytes / ok } else { 0.0 };
            runs.push(json!({
                "system": name,
                "round": round,
                "connections_ok": ok,
                "connections_failed": f(&r, "connections.failed"),
                "dropped": f(&r, "connections.dropped"),
                "proxy_bytes_per_conn": per(rss_delta_bytes(&r, &front.pids)),
                "nodes_bytes_per_conn": per(rss_delta_bytes(&r, &node_pids)),
                "proxy_processes": front.pids.len(),
                "loadgen_cpu_share": f(&r, "loadgen_cpu_share"),
                "processes": r["processes"].clone(),
            }));
            drop(front);
            drop(nodes);
        }
    }
    let mut summary = serde_json::Map::new();
    for name in systems {
        let mine: Vec<&Value> = runs.iter().filter(|r| r["system"] == name).collect();
        let q = |k: &str| mine.iter().map(|v| f(v, k)).collect::<Vec<f64>>();
        summary.insert(
            name.to_owned(),
            json!({
                "proxy_bytes_per_conn": median(q("proxy_bytes_per_conn")),
                "nodes_bytes_per_conn": median(q("nodes_bytes_per_conn")),
                "connections_ok": median(q("connections_ok")),
            }),
        );
    }
    Ok(json!({
        "params": { "conns": conns, "nodes": 3, "rounds": rounds, "proxy_threads_or_workers": env.proxy_workers(), "ramp_per_sec": ramp },
        "runs": runs,
        "summary": summary,
    }))
}
