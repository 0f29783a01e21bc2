//! The six scenarios of docs/BENCHMARKS.md, one file each. Each returns a
//! JSON object with its parameters, every raw run, and a `summary` that the
//! report turns into the tables and the plot.

pub mod fanout;
pub mod idle_cost;
pub mod membership;
pub mod proxy_overhead;
pub mod reconnect_storm;
pub mod ring;
pub mod room_sampler;

use serde_json::{json, Value};

use crate::loadgen::f;

/// The systems in the order of round `round`: rotated each round, so no
/// system always runs first (on a warm or a cold machine) or right after
/// the same neighbour.
pub fn rotated<T: Clone>(items: &[T], round: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let k = round % v.len();
        v.rotate_left(k);
    }
    v
}

/// The latency and loss fields of one loadgen result that the report uses.
pub fn brief(r: &Value) -> Value {
    json!({
        "p50_us": f(r, "latency.p50_us"),
        "p99_us": f(r, "latency.p99_us"),
        "p999_us": f(r, "latency.p999_us"),
        "max_us": f(r, "latency.max_us"),
        "samples": f(r, "latency.count"),
        "sent": f(r, "sent"),
        "received": f(r, "received"),
        "lost": f(r, "lost"),
        "duplicates": f(r, "duplicates"),
        "unsent": f(r, "unsent"),
        "connections_ok": f(r, "connections.ok"),
        "connections_failed": f(r, "connections.failed"),
        "dropped": f(r, "connections.dropped"),
        "delivered_per_sec": f(r, "delivered_per_sec"),
        "loadgen_cpu_seconds": f(r, "loadgen_cpu_seconds"),
        "loadgen_cpu_share": f(r, "loadgen_cpu_share"),
        "client_bound": client_bound(r),
        "duration_s": f(r, "duration_s"),
    })
}

/// The load generator runs pinned to its own core(s); a run in which it kept
/// this share of them busy was paced by the load generator, not by the
/// system under test, and its result says nothing about the server's limit.
pub const CLIENT_BOUND_SHARE: f64 = 0.9;

/// Whether a loadgen result was client-bound (see [`CLIENT_BOUND_SHARE`]).
pub fn client_bound(r: &Value) -> bool {
    f(r, "loadgen_cpu_share") >= CLIENT_BOUND_SHARE
}

/// The window CPU of the measured processes among `pids`, over the span
/// it covers (window + drain), per server core: the servers' share of
/// their cores.
pub fn server_share(r: &Value, pids: &[u32], server_cores: usize) -> f64 {
    let span = f(r, "duration_s") + f(r, "settings.drain_s");
    if span <= 0.0 || server_cores == 0 {
        return 0.0;
    }
    cpu_window_of(r, pids) / span / server_cores as f64
}

/// Window CPU seconds of the measured processes among `pids`, summed.
pub fn cpu_window_of(r: &Value, pids: &[u32]) -> f64 {
    r["processes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| {
                    pids.iter()
                        .any(|pid| p["pid"].as_u64() == Some(*pid as u64))
                })
                .map(|p| f(p, "cpu_seconds_window"))
                .sum()
        })
        .unwrap_or(0.0)
}

/// The median of some numbers (0 for none).
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Spread of repeated measurements: (max − min) / median, for the noise note.
pub fn spread(xs: &[f64]) -> f64 {
    let m = median(xs.to_vec());
    if m == 0.0 || xs.len() < 2 {
        return 0.0;
    }
    let (lo, hi) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    (hi - lo) / m
}

/// Window CPU seconds of the processes measured, summed.
pub fn cpu_window(r: &Value) -> f64 {
    r["processes"]
        .as_array()
        .map(|ps| ps.iter().map(|p| f(p, "cpu_seconds_window")).sum())
        .unwrap_or(0.0)
}

/// RSS growth (loaded − before) of the processes measured, in bytes, summed.
pub fn rss_delta_bytes(r: &Value, pids: &[u32]) -> f64 {
    r["processes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| {
                    pids.iter()
                        .any(|pid| p["pid"].as_u64() == Some(*pid as u64))
                })
                .map(|p| f(p, "rss_delta_kib") * 1024.0)
                .sum()
        })
        .unwrap_or(0.0)
}

pub fn pid_args(pids: &[u32]) -> Vec<String> {
    pids.iter()
        .flat_map(|p| ["--pid".to_owned(), p.to_string()])
        .collect()
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}
