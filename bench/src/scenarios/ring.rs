//! Scenario 5, the ring (`shared::Ring`): lookup cost, balance over vnodes
//! settings, and the keys moved when a node joins or leaves against the
//! ideal 1/N. The lookup is timed here (a plain loop, for the smoke run and
//! as a cross-check) and, in a full run, by the criterion bench
//! `shared/benches/ring.rs`.

use anyhow::Context;
use roompin_shared::{Member, Ring};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use crate::env::Env;

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            id: format!("node-{i}"),
            addr: format!("127.0.0.1:{}", 9001 + i),
            weight: 1,
        })
        .collect()
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("meeting-{i:07}")).collect()
}

fn owners<'a>(ring: &'a Ring, keys: &[String]) -> Vec<&'a str> {
    keys.iter()
        .map(|k| ring.owner(k).map_or("", |m| m.id.as_str()))
        .collect()
}

/// Busiest member's keys over the mean.
fn balance(ring: &Ring, keys: &[String]) -> f64 {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for o in owners(ring, keys) {
        *count.entry(o).or_default() += 1;
    }
    let mean = keys.len() as f64 / ring.members().len() as f64;
    count.values().copied().max().unwrap_or(0) as f64 / mean
}

/// Fraction of keys whose owner changed, and whether every change involved
/// `node` (moved to it on add, away from it on remove).
fn moved(before: &Ring, after: &Ring, keys: &[String], node: &str) -> (f64, bool) {
    let (a, b) = (owners(before, keys), owners(after, keys));
    let mut n = 0usize;
    let mut only_that_node = true;
    for (x, y) in a.iter().zip(&b) {
        if x != y {
            n += 1;
            only_that_node &= *x == node || *y == node;
        }
    }
    (n as f64 / keys.len() as f64, only_that_node)
}

fn lookup_ns(nodes: usize, vnodes: u32, iters: usize) -> f64 {
    let ring = Ring::new(members(nodes), vnodes);
    let ks = keys(4096);
    let start = Instant::now();
    let mut hits = 0usize;
    for i in 0..iters {
        if ring.owner(black_box(&ks[i % ks.len()])).is_some() {
            hits += 1;
        }
    }
    black_box(hits);
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// `cargo bench -p roompin-shared --bench ring`, then criterion's estimates.
fn criterion(env: &Env) -> anyhow::Result<Value> {
    let status = Command::new("cargo")
        .current_dir(&env.root)
        .args([
            "bench",
            "-p",
            "roompin-shared",
            "--bench",
            "ring",
            "--",
            "--warm-up-time",
            "1",
            "--measurement-time",
            "3",
            "--noplot",
        ])
        .status()
        .context("cannot run cargo bench")?;
    anyhow::ensure!(status.success(), "cargo bench failed: {status}");
    let dir = env
        .root
        .join("target")
        .join("criterion")
        .join("ring_lookup");
    let mut out = serde_json::Map::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("no {}", dir.display()))? {
        let entry = entry?;
        let est = entry.path().join("new").join("estimates.json");
        if let Ok(text) = std::fs::read_to_string(&est) {
            let v: Value =
                serde_json::from_str(&text).context("criterion estimates are not JSON")?;
            out.insert(
                entry.file_name().to_string_lossy().into_owned(),
                json!({ "mean_ns": v["mean"]["point_estimate"], "median_ns": v["median"]["point_estimate"] }),
            );
        }
    }
    Ok(Value::Object(out))
}

pub async fn run(env: &Env) -> anyhow::Result<Value> {
    let nkeys = if env.smoke { 20_000 } else { 300_000 };
    let iters = if env.smoke { 200_000 } else { 5_000_000 };
    let ks = keys(nkeys);
    let vnode_settings = [40u32, 160, 512, 1024];
    let mut rows = Vec::new();
    for &v in &vnode_settings {
        for n in [3usize, 10] {
            let ring = Ring::new(members(n), v);
            let bigger = Ring::new(members(n + 1), v);
            let added = format!("node-{n}");
            let (add, add_only) = moved(&ring, &bigger, &ks, &added);
            // Remove node-0 from the bigger ring.
            let smaller = Ring::new(members(n + 1).into_iter().skip(1).collect(), v);
            let (remove, remove_only) = moved(&bigger, &smaller, &ks, "node-0");
            rows.push(json!({
                "vnodes": v,
                "nodes": n,
                "balance_max_over_mean": balance(&ring, &ks),
                "moved_on_add": add,
                "ideal_on_add": 1.0 / (n + 1) as f64,
                "moved_on_add_only_to_new": add_only,
                "moved_on_remove": remove,
                "ideal_on_remove": 1.0 / (n + 1) as f64,
                "moved_on_remove_only_from_removed": remove_only,
            }));
        }
    }
    let lookups: Vec<Value> = [(3usize, 512u32), (100, 512)]
        .iter()
        .map(|&(n, v)| json!({ "nodes": n, "vnodes": v, "ns_per_lookup": lookup_ns(n, v, iters) }))
        .collect();
    let crit = if env.smoke {
        Value::Null
    } else {
        let env_ref = env;
        match criterion(env_ref) {
            Ok(v) => v,
            Err(e) => json!({ "error": format!("{e:#}") }),
        }
    };
    Ok(json!({
        "params": { "keys": nkeys, "lookup_iterations": iters, "vnodes_settings": vnode_settings },
        "summary": { "balance": rows, "lookup_loop": lookups, "lookup_criterion": crit },
    }))
}
