//! A smoke run of the benchmark suite (`roompin-bench --smoke`): every
//! scenario of docs/BENCHMARKS.md against every peer (nginx, HAProxy,
//! Socket.IO, ws) for a few seconds. It asserts only that each scenario
//! produced numbers, never their values: speed and memory targets belong in
//! the bench, measured against the peers in the same run.
//!
//! The peers must be installed (`scripts/prereqs test` does): a missing
//! nginx, HAProxy or `npm ci` in bench/peers fails this test.

use roompin_tests::process;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;

/// The smoke run takes about a minute; this is a backstop.
const LIMIT: Duration = Duration::from_secs(240);

fn num(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("`{path}` is not a number in\n{v:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_produces_numbers() {
    let work = process::target_dir()
        .join("test-logs")
        .join(format!("bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let mut cmd = tokio::process::Command::new(process::bin("roompin-bench"));
    cmd.arg("--smoke")
        .arg("--work")
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("roompin-bench --smoke ran over {LIMIT:?}"))
        .unwrap_or_else(|e| panic!("cannot run roompin-bench: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "roompin-bench --smoke failed ({}); logs in {}:\n{stderr}",
        out.status,
        work.display()
    );
    let text = std::fs::read_to_string(work.join("results.json"))
        .unwrap_or_else(|e| panic!("no results.json: {e}\n{stderr}"));
    let r: Value = serde_json::from_str(&text).expect("results.json is JSON");
    let sc = &r["scenarios"];
    for name in [
        "ring",
        "proxy_overhead",
        "fanout",
        "idle_cost",
        "reconnect_storm",
        "membership",
    ] {
        assert!(
            sc[name]["error"].is_null(),
            "{name} failed: {}",
            sc[name]["error"]
        );
        assert!(sc[name]["summary"].is_object(), "{name} has no summary");
    }

    for sys in ["roompin", "nginx", "haproxy", "direct"] {
        let p99 = num(sc, &format!("proxy_overhead.summary.fixed.{sys}.p99_us"));
        assert!(p99 > 0.0, "proxy_overhead: no p99 for {sys}");
    }
    let ladder = sc["proxy_overhead"]["ladder_runs"]
        .as_array()
        .expect("ladder runs");
    assert!(ladder.len() >= 4, "{ladder:?}");

    let fan = sc["fanout"]["runs"].as_array().expect("fan-out runs");
    for sys in ["roompin", "ws", "socketio"] {
        let run = fan
            .iter()
            .find(|r| r["system"] == sys)
            .unwrap_or_else(|| panic!("no fan-out run of {sys}"));
        assert!(num(&run["result"], "received") > 0.0, "{sys}: {run}");
        assert!(num(&run["result"], "p99_us") > 0.0, "{sys}: {run}");
        assert!(
            num(&run["result"], "server_cpu_seconds") >= 0.0,
            "{sys}: {run}"
        );
    }

    for sys in ["roompin", "nginx", "haproxy"] {
        assert!(num(sc, &format!("idle_cost.summary.{sys}.connections_ok")) > 0.0);
        num(sc, &format!("idle_cost.summary.{sys}.proxy_bytes_per_conn"));
        num(sc, &format!("idle_cost.summary.{sys}.nodes_bytes_per_conn"));
    }

    for sys in ["roompin", "nginx", "haproxy"] {
        let st = |k: &str| num(sc, &format!("reconnect_storm.summary.{sys}.{k}"));
        assert!(
            st("reconnected") > 0.0,
            "reconnect_storm: nothing reconnected through {sys}"
        );
        assert!(
            st("storm_ms") > 0.0,
            "reconnect_storm: no storm time for {sys}"
        );
    }

    let mb = &sc["membership"]["summary"];
    assert!(num(mb, "published") > 0.0, "{mb:#}");
    num(mb, "lost");
    num(mb, "duplicates");
    let changes = mb["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 2, "{mb:#}");
    for c in changes {
        assert!(
            c["converged_ms"].is_u64(),
            "a change did not converge: {c:#}"
        );
        num(c, "rooms_moved");
    }

    let ring = &sc["ring"]["summary"];
    assert_eq!(
        ring["balance"].as_array().map(Vec::len),
        Some(8),
        "{ring:#}"
    );
    for l in ring["lookup_loop"].as_array().expect("lookups") {
        assert!(num(l, "ns_per_lookup") > 0.0, "{l}");
    }

    let svg = std::fs::read_to_string(work.join("benchmarks.svg")).expect("the plot");
    assert!(
        svg.starts_with("<svg") && svg.contains("roompin"),
        "not a plot"
    );
    let tables = std::fs::read_to_string(work.join("tables.md")).expect("the tables");
    for heading in [
        "Proxy overhead",
        "Fan-out",
        "Idle cost",
        "Membership",
        "Ring",
    ] {
        assert!(tables.contains(heading), "no {heading} table:\n{tables}");
    }
}
