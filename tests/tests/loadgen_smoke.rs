//! Smoke tests of `roompin-loadgen`: every mode runs for about a second
//! against a real node and must produce a JSON result whose numbers add up.
//! Nothing here asserts a timing: only that traffic flowed, that latency was
//! measured, and (on an unloaded node) that nothing was lost or repeated.

use roompin_tests::{process, NodeProc};
use serde_json::Value;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Generous: a run is ~3 s of phases plus process start-up.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Runs the loadgen against `node` and returns its parsed result file.
async fn loadgen(node: &NodeProc, mode: &str, args: &[&str]) -> Value {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let dir = process::target_dir().join("test-logs");
    let _ = std::fs::create_dir_all(&dir);
    let out = dir.join(format!(
        "loadgen-{mode}-{}-{}.json",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let pid = node.proc.pid().map(|p| p.as_raw().to_string());
    let mut cmd = tokio::process::Command::new(process::bin("roompin-loadgen"));
    cmd.arg(mode)
        .args(["--target", &node.addr.to_string()])
        .args(["--duration", "1s", "--settle", "200ms", "--drain", "1s"])
        .args(["--ramp", "500", "--connect-timeout", "5s", "--no-progress"])
        .arg("--out")
        .arg(&out)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(pid) = &pid {
        cmd.args(["--pid", pid]);
    }
    let output = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("loadgen {mode} ran over {RUN_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("cannot run loadgen {mode}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadgen {mode} {args:?} failed ({}):\n{stderr}\nnode log:\n{}",
        output.status,
        node.proc.logs()
    );
    let text = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("no result file {}: {e}\n{stderr}", out.display()));
    let result: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("result is not JSON: {e}\n{text}"));
    assert_eq!(result["mode"], mode, "{text}");
    result
}

fn num(v: &Value, path: &str) -> u64 {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("`{path}` is not a whole number in\n{v:#}"))
}

/// What every message-carrying run must show.
fn assert_traffic(r: &Value) {
    assert!(num(r, "sent") > 0, "nothing sent:\n{r:#}");
    assert!(num(r, "received") > 0, "nothing received:\n{r:#}");
    assert!(num(r, "latency.count") > 0, "no latency samples:\n{r:#}");
    assert!(num(r, "connections.ok") > 0, "no connection:\n{r:#}");
    assert_eq!(num(r, "connections.failed"), 0, "{r:#}");
    // The four quantiles are there and ordered.
    let q = ["p50_us", "p99_us", "p999_us", "max_us"].map(|k| num(r, &format!("latency.{k}")));
    assert!(q.windows(2).all(|w| w[0] <= w[1]), "{q:?}");
}

fn assert_no_loss(r: &Value) {
    assert_eq!(num(r, "lost"), 0, "messages lost on an idle node:\n{r:#}");
    assert_eq!(num(r, "duplicates"), 0, "duplicates:\n{r:#}");
}

/// The server-process figures asked for with --pid are numbers.
fn assert_process_figures(r: &Value) {
    let p = &r["processes"][0];
    assert!(p["cpu_seconds"].is_number(), "{r:#}");
    assert!(p["rss_loaded_kib"].is_number(), "{r:#}");
}

#[tokio::test]
async fn fanout_in_two_workers_delivers_everything() {
    let node = NodeProc::start("lg-fanout", Default::default()).await;
    let r = loadgen(
        &node,
        "fanout",
        &[
            "--workers",
            "2",
            "--rooms",
            "4",
            "--members",
            "3",
            "--publishers",
            "1",
            "--rate",
            "20",
            "--payload",
            "100",
        ],
    )
    .await;
    assert_traffic(&r);
    assert_no_loss(&r);
    assert_process_figures(&r);
    assert_eq!(num(&r, "settings.workers"), 2);
    assert_eq!(num(&r, "connections.ok"), 12, "{r:#}");
    // Every member of a room receives every message published into it.
    assert_eq!(num(&r, "received_by_steady"), num(&r, "expected"), "{r:#}");
    assert_eq!(r["loss"]["method"], "seq");
}

#[tokio::test]
async fn fanout_over_sse_with_http_publishers() {
    let node = NodeProc::start("lg-sse", Default::default()).await;
    let r = loadgen(
        &node,
        "fanout",
        &[
            "--transport",
            "sse",
            "--rooms",
            "2",
            "--members",
            "3",
            "--publishers",
            "2",
            "--rate",
            "10",
        ],
    )
    .await;
    assert_traffic(&r);
    assert_no_loss(&r);
    assert_eq!(num(&r, "received_by_steady"), num(&r, "expected"), "{r:#}");
}

#[tokio::test]
async fn rtt_gets_every_message_back() {
    let node = NodeProc::start("lg-rtt", Default::default()).await;
    let r = loadgen(&node, "rtt", &["--conns", "3", "--rate", "50"]).await;
    assert_traffic(&r);
    assert_no_loss(&r);
    assert_process_figures(&r);
    assert_eq!(num(&r, "sent"), num(&r, "received"), "{r:#}");
    assert_eq!(r["latency"]["measures"], "rtt");
}

#[tokio::test]
async fn idle_holds_every_connection() {
    let node = NodeProc::start("lg-idle", Default::default()).await;
    let r = loadgen(
        &node,
        "idle",
        &["--conns", "40", "--per-room", "4", "--workers", "2"],
    )
    .await;
    assert_eq!(num(&r, "connections.ok"), 40, "{r:#}");
    assert_eq!(num(&r, "connections.failed"), 0, "{r:#}");
    assert_eq!(num(&r, "connections.dropped"), 0, "{r:#}");
    assert_eq!(
        num(&r, "latency.count"),
        40,
        "one connect latency each:\n{r:#}"
    );
    // Welcomes and the joins of room-mates.
    assert!(num(&r, "frames_received") >= 40, "{r:#}");
    assert_no_loss(&r);
    assert_process_figures(&r);
}

#[tokio::test]
async fn churn_connects_and_leaves() {
    let node = NodeProc::start("lg-churn", Default::default()).await;
    let r = loadgen(
        &node,
        "churn",
        &[
            "--rate", "30", "--hold", "300ms", "--rooms", "3", "--base", "2",
        ],
    )
    .await;
    assert_traffic(&r);
    // Base members plus about a second's worth of arrivals.
    assert!(num(&r, "connections.ok") > 6, "{r:#}");
}

#[tokio::test]
async fn refuses_a_plan_that_needs_more_workers() {
    let output = tokio::process::Command::new(process::bin("roompin-loadgen"))
        .args(["idle", "--conns", "25000", "--target", "127.0.0.1:9"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run loadgen: {e}"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("raise --workers to at least 2"), "{stderr}");
}
