//! Runs `roompin-loadgen` (a release build, beside this binary) and reads
//! its JSON result. Every scenario that measures latency or server cost
//! goes through it, for every system, so the numbers are comparable.

use anyhow::{bail, Context};
use serde_json::Value;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::env::{Env, Side};
use crate::procs::Proc;

/// One loadgen run: `mode`, target and extra arguments. Returns the result.
pub async fn run(
    env: &Env,
    label: &str,
    mode: &str,
    target: &str,
    args: &[String],
) -> anyhow::Result<Value> {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let dir = env.dir("loadgen")?;
    let name = format!("{n:03}-{label}");
    let out = dir.join(format!("{name}.json"));
    let mut cmd = Command::new(env.bin("roompin-loadgen"));
    cmd.arg(mode)
        .args(["--target", target, "--no-progress"])
        .arg("--out")
        .arg(&out)
        .args(args);
    env.pin(&mut cmd, Side::Client);
    let mut proc = Proc::spawn(&format!("loadgen-{name}"), cmd, &dir)?;
    // Every loadgen phase is bounded by time; this is a backstop.
    let status = proc.wait(Duration::from_secs(600)).await?;
    // 0: done; 1: no connection succeeded (the result is still written).
    if !(status.success() || status.code() == Some(1)) {
        bail!("loadgen {label} failed ({status}):\n{}", proc.tail());
    }
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("no loadgen result {}:\n{}", out.display(), proc.tail()))?;
    let v: Value = serde_json::from_str(&text).context("the loadgen result is not JSON")?;
    eprintln!(
        "    {label}: {}",
        proc.tail()
            .lines()
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    Ok(v)
}

/// `v[a][b]...` as f64 (0 when absent).
pub fn f(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = match key.parse::<usize>() {
            Ok(i) => &at[i],
            Err(_) => &at[key],
        };
    }
    at.as_f64().unwrap_or(0.0)
}
