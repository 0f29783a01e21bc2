//! `--workers N`: the parent re-executes itself N times, because one process
//! may hold only 20,000 file descriptors. Each child gets the parent's own
//! arguments plus hidden flags (its slot, the common start time and the run
//! id), takes every N-th connection, and writes to stdout:
//!
//! - `P <counts json>` every half second (for the progress bar), and
//! - `R <partial json>` once, at the end.
//!
//! Its stderr goes straight to the terminal. A child never draws a progress
//! bar, writes `--out` or samples `--pid`: the parent does those.

use anyhow::{bail, Context};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::stats::{Counts, Partial};

pub const PROGRESS_PREFIX: &str = "P ";
pub const RESULT_PREFIX: &str = "R ";

/// The latest counters of every child, for the progress bar.
#[derive(Default)]
pub struct Live(Mutex<Vec<Counts>>);

impl Live {
    pub fn total(&self) -> Counts {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut sum = Counts::default();
        for c in v.iter() {
            sum.add(c);
        }
        sum
    }

    fn set(&self, i: usize, c: Counts) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() <= i {
            v.resize(i + 1, Counts::default());
        }
        v[i] = c;
    }
}

/// Starts the children, waits for their results (until `deadline`, then
/// kills the ones still running), and returns one partial per child.
pub async fn run(
    count: usize,
    t0_unix_ms: u64,
    run_id: &str,
    live: Arc<Live>,
    deadline: Instant,
) -> anyhow::Result<Vec<Partial>> {
    let exe = std::env::current_exe().context("cannot find my own executable")?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let mut waits = Vec::new();
    for i in 0..count {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .arg("--worker-index")
            .arg(i.to_string())
            .arg("--worker-count")
            .arg(count.to_string())
            .arg("--t0-unix-ms")
            .arg(t0_unix_ms.to_string())
            .arg("--run-id")
            .arg(run_id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start worker {i}"))?;
        let stdout = child.stdout.take().context("worker stdout missing")?;
        let live = live.clone();
        waits.push(tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut result = None;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(json) = line.strip_prefix(PROGRESS_PREFIX) {
                    if let Ok(c) = serde_json::from_str(json) {
                        live.set(i, c);
                    }
                } else if let Some(json) = line.strip_prefix(RESULT_PREFIX) {
                    result = Some(serde_json::from_str::<Partial>(json));
                }
            }
            let status = child.wait().await;
            (status, result)
        }));
    }
    // Aborting a wait task drops its child, which kill_on_drop then kills;
    // the guard does that for every child on any early return.
    let mut waits = AbortOnDrop(waits);
    let mut parts = Vec::new();
    for (i, wait) in waits.0.iter_mut().enumerate() {
        let Ok(Ok((status, result))) = tokio::time::timeout_at(deadline.into(), wait).await else {
            bail!("worker {i} did not finish in time and was killed");
        };
        match (status, result) {
            (_, Some(Ok(p))) => parts.push(p),
            (_, Some(Err(e))) => bail!("worker {i} printed a result that does not parse: {e}"),
            (Ok(status), None) => bail!("worker {i} exited ({status}) without a result"),
            (Err(e), None) => bail!("worker {i} could not be waited for: {e}"),
        }
    }
    Ok(parts)
}

struct AbortOnDrop<T>(Vec<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}
