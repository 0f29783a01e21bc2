//! The chat page in real Chromium (issue 5): `tests/browser/chat.mjs` drives
//! three pages through a real balancer and three real nodes, two over
//! WebSocket and one over SSE. When it prints `READY <node>`, this test
//! `kill -9`s that node and tells the script to go on; the pages must find
//! the meeting's new node by themselves and keep chatting. When it prints
//! `RESTART <node>`, this test starts that node again on its address; the
//! meeting moves back to it with its history (close code 4001, SSE `moved`)
//! and the pages must follow with no gap and no duplicate.
//!
//! Needs Chromium (`/usr/bin/chromium`, or `$CHROMIUM`) and Node.js with
//! `tests/browser/node_modules` (`scripts/prereqs test` installs all three).
//! Without them this test fails; it never skips.

use roompin_tests::process::target_dir;
use roompin_tests::{Cluster, ClusterOptions, NodeProc};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The whole browser run, start to end.
const BUDGET: Duration = Duration::from_secs(75);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `npm ci` if `node_modules` is missing (as `scripts/prereqs test` does).
async fn ensure_node_modules(dir: &Path) {
    if dir.join("node_modules/playwright-core").is_dir() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .await
        .unwrap_or_else(|e| panic!("cannot run npm (run scripts/prereqs test): {e}"));
    assert!(
        status.success(),
        "npm ci in {} failed: {status}",
        dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_page_chats_and_survives_a_node_crash_in_chromium() {
    let browser_dir = repo_root().join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/prereqs test (the browser test never skips)"
    );
    ensure_node_modules(&browser_dir).await;

    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    // target/browser-test/ (target_dir() is target/<profile>/).
    let target = target_dir();
    let out = target.parent().unwrap_or(&target).join("browser-test");
    let _ = std::fs::remove_dir_all(&out);
    let meeting = "browser-e2e";
    let mut child = Command::new("node")
        .arg(browser_dir.join("chat.mjs"))
        .arg(cluster.balancer.url(""))
        .arg(&out)
        .arg("--admin")
        .arg(cluster.balancer.admin_url(""))
        .arg("--meeting")
        .arg(meeting)
        .env("CHROMIUM", &chromium)
        .current_dir(&browser_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (run scripts/prereqs test): {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    let run = async {
        let mut lines = Vec::new();
        let mut killed = None;
        while let Some(line) = stdout.next_line().await.ok().flatten() {
            if let Some(node) = line.strip_prefix("READY ") {
                let node = node.trim().to_owned();
                let proc = cluster
                    .nodes
                    .iter_mut()
                    .find(|n| n.id == node)
                    .unwrap_or_else(|| panic!("the page shows an unknown node {node:?}"));
                proc.proc.kill9();
                stdin.write_all(b"KILLED\n").await.expect("tell the script");
                stdin.flush().await.expect("flush");
                killed = Some(node);
            } else if let Some(node) = line.strip_prefix("RESTART ") {
                let i = cluster
                    .nodes
                    .iter()
                    .position(|n| n.id == node.trim())
                    .unwrap_or_else(|| panic!("no node {node:?} to restart"));
                let old = &cluster.nodes[i];
                let (id, addr, options) = (old.id.clone(), old.addr, old.options.clone());
                cluster.nodes[i] = NodeProc::start_on(&id, addr, options).await;
                stdin
                    .write_all(b"RESTARTED\n")
                    .await
                    .expect("tell the script");
                stdin.flush().await.expect("flush");
            }
            lines.push(line);
        }
        let status = child.wait().await.expect("wait for node");
        (status, lines, killed)
    };
    let (status, lines, killed) = match tokio::time::timeout(BUDGET, run).await {
        Ok(done) => done,
        Err(_) => {
            let _ = child.start_kill();
            panic!(
                "the browser test ran over {BUDGET:?}\n{}",
                stderr_task.await.unwrap_or_default()
            );
        }
    };
    let log = stderr_task.await.unwrap_or_default();
    let report = format!("stdout:\n{}\nstderr:\n{log}", lines.join("\n"));
    assert!(status.success(), "chat.mjs failed ({status})\n{report}");
    let killed = killed.unwrap_or_else(|| panic!("the script never said READY\n{report}"));
    let pass = lines
        .iter()
        .find_map(|l| l.strip_prefix("PASS "))
        .unwrap_or_else(|| panic!("no PASS line\n{report}"));
    let hops: Vec<&str> = pass.split(" -> ").collect();
    let [from, to, back] = hops[..] else {
        panic!("PASS <from> -> <to> -> <back>, got {pass:?}")
    };
    assert_eq!((from, back), (killed.as_str(), killed.as_str()), "{report}");
    assert_ne!(to, killed, "{report}");
    assert!(
        cluster.node(to).is_some(),
        "{to} is not a node of this cluster"
    );
    for shot in ["before", "after", "moved"] {
        for who in ["ann", "bob", "cat"] {
            let png = out.join(format!("{shot}-{who}.png"));
            let bytes = std::fs::read(&png).unwrap_or_default();
            assert!(
                bytes.starts_with(b"\x89PNG"),
                "{} is not a PNG",
                png.display()
            );
        }
    }
    eprintln!("screenshots in {}\n{report}", out.display());
}
