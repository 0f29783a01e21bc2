//! Scenario 1, proxy overhead: the same three nodes behind roompin-balancer,
//! nginx and HAProxy, and direct (one node). Round trips through rooms of
//! one (loadgen `rtt`): the latency at a fixed offered rate, then the
//! highest delivered rate whose p99 stays within 10 ms.
//!
//! A ladder stops a system at its second failing step in a row, not its
//! first. On two shared cores one stall of the machine pushes a single
//! step's p99 past 10 ms far below any limit: in the 2026-12-02 full run,
//! `direct` (no proxy at all) failed its 3,125/s step and its retry at a
//! server share of 0.2, then passed every step up to 23,283/s, and roompin
//! failed at 6,103/s (share 0.42) in one round and reached 11,920/s, as
//! nginx did, in the other. A real limit fails every step above it, so it
//! fails two in a row; a stall rarely spans two steps and their retries.
//!
//! The proxies and the nodes run on the server cores, the loadgen on its
//! own; every run records both sides' CPU share, and a ladder step the
//! loadgen saturated is marked client-bound.

use serde_json::{json, Value};

use super::{args, brief, cpu_window_of, median, pid_args, rotated, server_share, spread};
use crate::env::Env;
use crate::loadgen::{self, f};
use crate::peers::{haproxy, nginx, roompin, Front};

pub const P99_LIMIT_US: f64 = 10_000.0;

/// Failing steps in a row that end a system's ladder round.
const STRIKES: u32 = 2;

struct Params {
    conns: u64,
    rate_per_conn: f64,
    duration: &'static str,
    rounds: usize,
    ladder_conns: u64,
    ladder_start: f64,
    ladder_factor: f64,
    ladder_steps: usize,
    ladder_duration: &'static str,
    ladder_rounds: usize,
}

pub async fn run(env: &Env) -> anyhow::Result<Value> {
    let p = if env.smoke {
        Params {
            conns: 4,
            rate_per_conn: 20.0,
            duration: "1s",
            rounds: 1,
            ladder_conns: 4,
            ladder_start: 200.0,
            ladder_factor: 2.0,
            ladder_steps: 1,
            ladder_duration: "1s",
            ladder_rounds: 1,
        }
    } else {
        Params {
            conns: 50,
            rate_per_conn: 40.0,
            duration: "6s",
            rounds: 5,
            ladder_conns: 100,
            // Fine steps: with proxies and nodes sharing one core the
            // maxima sit within a few ×1.5 steps of each other.
            ladder_start: 2000.0,
            ladder_factor: 1.25,
            ladder_steps: 12,
            ladder_duration: "4s",
            ladder_rounds: 2,
        }
    };
    let nodes = roompin::start_nodes(env, "px", 3, None).await?;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let node_pids: Vec<u32> = nodes.iter().map(|n| n.proc.pid()).collect();
    let server_cores = env.cpus.server.len();
    let refs: Vec<&roompin::Node> = nodes.iter().collect();
    let balancer = roompin::Balancer::start(env, "px-balancer", &refs, None)
        .await?
        .front();
    let nginx = nginx::start(env, &addrs, env.proxy_workers()).await?;
    let haproxy = haproxy::start(env, &addrs, env.proxy_workers()).await?;
    let direct = Front {
        name: "direct",
        addr: nodes[0].addr,
        pids: vec![],
        _procs: vec![],
    };
    let systems: Vec<&Front> = vec![&balancer, &nginx, &haproxy, &direct];
    let names: Vec<&str> = systems.iter().map(|s| s.name).collect();

    // 1. Fixed offered rate, every system once per round, in rotation.
    let offered = p.conns as f64 * p.rate_per_conn;
    eprintln!("  fixed rate: {offered} round trips/s, {} rounds", p.rounds);
    let mut fixed: Vec<(String, Value)> = Vec::new();
    for round in 0..p.rounds {
        for sys in rotated(&systems, round) {
            let mut a = args(&["--duration", p.duration, "--ramp", "500", "--payload", "64"]);
            a.extend(env.phases("1s", "1s"));
            a.extend([
                "--conns".into(),
                p.conns.to_string(),
                "--rate".into(),
                p.rate_per_conn.to_string(),
            ]);
            a.extend(pid_args(&sys.pids));
            a.extend(pid_args(&node_pids));
            let r = loadgen::run(
                env,
                &format!("px-fixed-{}-r{round}", sys.name),
                "rtt",
                &sys.addr.to_string(),
                &a,
            )
            .await?;
            let mut b = brief(&r);
            b["round"] = json!(round);
            b["proxy_cpu_seconds"] = json!(cpu_window_of(&r, &sys.pids));
            b["nodes_cpu_seconds"] = json!(cpu_window_of(&r, &node_pids));
            b["server_cpu_share"] = json!(server_share(
                &r,
                &[&sys.pids[..], &node_pids[..]].concat(),
                server_cores
            ));
            fixed.push((sys.name.to_owned(), b));
        }
    }
    let mut fixed_summary = serde_json::Map::new();
    for name in &names {
        let runs: Vec<&Value> = fixed
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect();
        let q = |k: &str| runs.iter().map(|v| f(v, k)).collect::<Vec<f64>>();
        fixed_summary.insert(
            name.to_string(),
            json!({
                "p50_us": median(q("p50_us")),
                "p99_us": median(q("p99_us")),
                "p999_us": median(q("p999_us")),
                "p99_spread": spread(&q("p99_us")),
                "lost": q("lost").iter().sum::<f64>(),
                "proxy_cpu_seconds": median(q("proxy_cpu_seconds")),
                "loadgen_cpu_share": median(q("loadgen_cpu_share")),
                "server_cpu_share": median(q("server_cpu_share")),
                "client_bound_runs": runs.iter().filter(|v| v["client_bound"] == true).count(),
                "runs": runs.len(),
            }),
        );
    }

    // 2. The ladder: raise the offered rate until p99 passes 10 ms (or
    // round trips go missing); each step runs the systems still in, rotated.
    let mut ladder: Vec<(String, Value)> = Vec::new();
    // First attempts that failed and were run again (kept for the record).
    let mut retried: Vec<(String, Value)> = Vec::new();
    // Per system, each round's best passing rate, whether a step failed,
    // and whether that failing step was client-bound.
    let mut per_round: std::collections::BTreeMap<String, Vec<(f64, bool, bool)>> =
        names.iter().map(|n| (n.to_string(), Vec::new())).collect();
    for round in 0..p.ladder_rounds {
        let mut best: std::collections::BTreeMap<String, (f64, bool, bool)> = names
            .iter()
            .map(|n| (n.to_string(), (0.0, false, false)))
            .collect();
        // Per system, its failing steps in a row so far.
        let mut strikes: std::collections::BTreeMap<String, u32> =
            names.iter().map(|n| (n.to_string(), 0)).collect();
        let mut rate = p.ladder_start;
        for step in 0..p.ladder_steps {
            let active: Vec<&Front> = systems
                .iter()
                .copied()
                .filter(|s| !best[s.name].1)
                .collect();
            if active.is_empty() {
                break;
            }
            let per_conn = rate / p.ladder_conns as f64;
            eprintln!("  ladder round {round} step {step}: {rate:.0} round trips/s offered");
            for sys in rotated(&active, round + step) {
                let mut a = args(&[
                    "--duration",
                    p.ladder_duration,
                    "--ramp",
                    "1000",
                    "--payload",
                    "64",
                ]);
                a.extend(env.phases("1s", "1s"));
                a.extend([
                    "--conns".into(),
                    p.ladder_conns.to_string(),
                    "--rate".into(),
                    format!("{per_conn:.3}"),
                ]);
                a.extend(pid_args(&sys.pids));
                a.extend(pid_args(&node_pids));
                // A failing step gets one more try: on two shared cores one
                // stall of the machine can push a single run's p99 over.
                let mut b = Value::Null;
                let mut ok = false;
                for attempt in 0..2 {
                    let label = match attempt {
                        0 => format!("px-ladder-{}-r{round}-s{step}", sys.name),
                        _ => format!("px-ladder-{}-r{round}-s{step}-retry", sys.name),
                    };
                    let r = loadgen::run(env, &label, "rtt", &sys.addr.to_string(), &a).await?;
                    b = brief(&r);
                    b["proxy_cpu_seconds"] = json!(cpu_window_of(&r, &sys.pids));
                    b["server_cpu_share"] = json!(server_share(
                        &r,
                        &[&sys.pids[..], &node_pids[..]].concat(),
                        server_cores
                    ));
                    b["offered_per_sec"] = json!(rate);
                    b["round"] = json!(round);
                    b["attempt"] = json!(attempt);
                    ok = f(&b, "p99_us") <= P99_LIMIT_US
                        && f(&b, "lost") <= 0.001 * f(&b, "sent").max(1.0)
                        && f(&b, "connections_failed") == 0.0;
                    b["pass"] = json!(ok);
                    if ok || attempt == 1 {
                        break;
                    }
                    retried.push((sys.name.to_owned(), b.clone()));
                }
                let entry = best.get_mut(sys.name).expect("every system has an entry");
                let strike = strikes
                    .get_mut(sys.name)
                    .expect("every system has an entry");
                if ok {
                    entry.0 = entry.0.max(f(&b, "delivered_per_sec"));
                    *strike = 0;
                } else {
                    *strike += 1;
                    entry.1 = *strike >= STRIKES;
                    entry.2 = b["client_bound"] == true;
                }
                ladder.push((sys.name.to_owned(), b));
            }
            rate *= p.ladder_factor;
        }
        for (n, v) in best {
            per_round.entry(n).or_default().push(v);
        }
    }
    let max_rate: serde_json::Map<String, Value> = per_round
        .iter()
        .map(|(n, rounds)| {
            let rates: Vec<f64> = rounds.iter().map(|r| r.0).collect();
            (
                n.clone(),
                json!({
                    "max_delivered_per_sec": median(rates.clone()),
                    "per_round": rates,
                    // A system that never failed is at least this fast.
                    "reached_limit": rounds.iter().all(|r| r.1),
                    // The step that stopped it had the loadgen saturated:
                    // a limit of the load generator, not of the system.
                    "limit_client_bound_rounds": rounds.iter().map(|r| r.2).collect::<Vec<bool>>(),
                    "client_bound": rounds.iter().any(|r| r.2),
                }),
            )
        })
        .collect();

    Ok(json!({
        "params": {
            "fixed": { "conns": p.conns, "rate_per_conn": p.rate_per_conn, "offered_per_sec": offered, "duration": p.duration, "rounds": p.rounds },
            "ladder": { "conns": p.ladder_conns, "start_per_sec": p.ladder_start, "factor": p.ladder_factor, "steps": p.ladder_steps, "duration": p.ladder_duration, "rounds": p.ladder_rounds, "p99_limit_us": P99_LIMIT_US, "stops_after_failed_steps_in_a_row": STRIKES },
            "proxy_threads": env.proxy_workers(),
            "server_cpus": env.cpus.server, "client_cpus": env.cpus.client,
            "client_bound_share": super::CLIENT_BOUND_SHARE,
        },
        "fixed_runs": fixed.iter().map(|(n, v)| json!({"system": n, "result": v})).collect::<Vec<_>>(),
        "ladder_runs": ladder.iter().map(|(n, v)| json!({"system": n, "result": v})).collect::<Vec<_>>(),
        "retried_runs": retried.iter().map(|(n, v)| json!({"system": n, "result": v})).collect::<Vec<_>>(),
        "summary": { "fixed": fixed_summary, "max_rate": max_rate },
    }))
}
