//! Scenario 6, reconnect storm: 9,000 WebSockets (one per room) through a
//! proxy to three nodes; when the window opens the loadgen drops them all,
//! and a second later all 9,000 reconnect at once, as clients do after a
//! node failure. The time until the last of them has its `welcome`, and
//! how many failed, for roompin-balancer, nginx and HAProxy. Each run gets
//! fresh nodes and a fresh proxy; rounds alternate the systems.

use serde_json::{json, Value};

use super::{args, cpu_window_of, median, pid_args, rotated, server_share};
use crate::env::Env;
use crate::loadgen::{self, f};
use crate::peers::{haproxy, nginx, roompin, Front};

pub async fn run(env: &Env) -> anyhow::Result<Value> {
    let (conns, rounds, ramp, duration) = if env.smoke {
        (150u64, 1usize, "500", "3s")
    } else {
        (9000, 3, "3000", "15s")
    };
    let gap = "1s";
    let systems = ["roompin", "nginx", "haproxy"];
    let mut runs: Vec<Value> = Vec::new();
    for round in 0..rounds {
        for name in rotated(&systems, round) {
            let nodes =
                roompin::start_nodes(env, &format!("storm-{name}-r{round}"), 3, None).await?;
            let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
            let refs: Vec<&roompin::Node> = nodes.iter().collect();
            let front: Front = match name {
                "roompin" => {
                    roompin::Balancer::start(env, &format!("storm-balancer-r{round}"), &refs, None)
                        .await?
                        .front()
                }
                "nginx" => nginx::start(env, &addrs, env.proxy_workers()).await?,
                _ => haproxy::start(env, &addrs, env.proxy_workers()).await?,
            };
            let node_pids: Vec<u32> = nodes.iter().map(|n| n.proc.pid()).collect();
            let mut a = args(&["--per-room", "1", "--gap", gap, "--connect-timeout", "30s"]);
            a.extend(env.phases("2s", "1s"));
            a.extend([
                "--conns".into(),
                conns.to_string(),
                "--ramp".into(),
                ramp.into(),
                "--duration".into(),
                duration.into(),
            ]);
            a.extend(pid_args(&front.pids));
            a.extend(pid_args(&node_pids));
            let r = loadgen::run(
                env,
                &format!("storm-{name}-r{round}"),
                "storm",
                &front.addr.to_string(),
                &a,
            )
            .await?;
            let all: Vec<u32> = front.pids.iter().chain(&node_pids).copied().collect();
            let storm_s = f(&r, "latency.max_us") / 1e6;
            // Nearly all of the loadgen's window CPU goes into the storm
            // (the drops before it, the idle connections after it cost
            // little), so its CPU over the storm's length is (an upper
            // bound of) its share of its core while the storm lasted.
            let busy = if storm_s > 0.0 {
                f(&r, "loadgen_cpu_seconds_window") / storm_s / env.cpus.client.len().max(1) as f64
            } else {
                0.0
            };
            runs.push(json!({
                "system": name,
                "round": round,
                "connections_before": f(&r, "connections.ok") - f(&r, "connections.reconnected"),
                "reconnected": f(&r, "connections.reconnected"),
                "reconnect_failed": f(&r, "connections.reconnect_failed"),
                // Storm instant to the last welcome: how long it took to clear.
                "storm_ms": f(&r, "latency.max_us") / 1000.0,
                "p50_ms": f(&r, "latency.p50_us") / 1000.0,
                "p99_ms": f(&r, "latency.p99_us") / 1000.0,
                "proxy_cpu_seconds": cpu_window_of(&r, &front.pids),
                "nodes_cpu_seconds": cpu_window_of(&r, &node_pids),
                "server_cpu_share": server_share(&r, &all, env.cpus.server.len()),
                "loadgen_cpu_share": f(&r, "loadgen_cpu_share"),
                "loadgen_cpu_seconds": f(&r, "loadgen_cpu_seconds_window"),
                "loadgen_busy_during_storm": busy,
                "client_bound": busy >= super::CLIENT_BOUND_SHARE,
                "errors": r["errors"].clone(),
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
                "storm_ms": median(q("storm_ms")),
                "storm_ms_rounds": q("storm_ms"),
                "p99_ms": median(q("p99_ms")),
                "reconnected": median(q("reconnected")),
                "reconnect_failed": q("reconnect_failed").iter().sum::<f64>(),
                "proxy_cpu_seconds": median(q("proxy_cpu_seconds")),
                "loadgen_busy_during_storm": median(q("loadgen_busy_during_storm")),
                "client_bound": mine.iter().any(|r| r["client_bound"] == true),
            }),
        );
    }
    Ok(json!({
        "params": { "conns": conns, "nodes": 3, "rounds": rounds, "ramp_per_sec": ramp, "gap": gap, "window": duration, "proxy_threads_or_workers": env.proxy_workers() },
        "runs": runs,
        "summary": summary,
    }))
}
