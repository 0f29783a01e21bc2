//! Where things are (the repo, the release binaries, this run's work
//! folder) and what the machine is: what docs/BENCHMARKS.md must state.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use crate::procs::command_output;

pub struct Env {
    pub root: PathBuf,
    pub bin_dir: PathBuf,
    pub work: PathBuf,
    pub smoke: bool,
}

impl Env {
    pub fn new(root: PathBuf, work: PathBuf, smoke: bool) -> anyhow::Result<Env> {
        let exe = std::env::current_exe().context("no current exe")?;
        let bin_dir = exe
            .parent()
            .context("the bench binary has no folder")?
            .to_path_buf();
        for b in ["roompin-node", "roompin-balancer", "roompin-loadgen"] {
            if !bin_dir.join(b).is_file() {
                bail!(
                    "{} is missing: build the workspace's binaries first (scripts/bench does: cargo build --release --workspace --bins)",
                    bin_dir.join(b).display()
                );
            }
        }
        std::fs::create_dir_all(&work)
            .with_context(|| format!("cannot create {}", work.display()))?;
        Ok(Env {
            root,
            bin_dir,
            work,
            smoke,
        })
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn peers_dir(&self) -> PathBuf {
        self.root.join("bench").join("peers")
    }

    /// A fresh folder for one system or one run inside the work folder.
    pub fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.work.join(name);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        Ok(d)
    }

    /// Loadgen settle and drain: short in a smoke run.
    pub fn phases(&self, settle: &str, drain: &str) -> Vec<String> {
        let (settle, drain) = if self.smoke {
            ("300ms", "700ms")
        } else {
            (settle, drain)
        };
        ["--settle", settle, "--drain", drain]
            .map(String::from)
            .to_vec()
    }

    /// Whether the binaries are a release build (measurements need one).
    pub fn release(&self) -> bool {
        self.bin_dir.ends_with("release")
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_owned()
}

fn npm_version(peers: &Path, package: &str) -> String {
    let path = peers
        .join("node_modules")
        .join(package)
        .join("package.json");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "missing".into())
}

/// The machine and every peer's version, as measured now.
pub fn describe(env: &Env) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": command_output("uname", &["-r"]),
        "os": first_line(&command_output("sh", &["-c", ". /etc/os-release && echo $PRETTY_NAME"])),
        "loadavg_at_start": load.trim(),
        "fd_limit": command_output("sh", &["-c", "ulimit -n"]),
        "release_build": env.release(),
        "versions": {
            "roompin": env!("CARGO_PKG_VERSION"),
            "git": command_output("git", &["-C", &env.root.to_string_lossy(), "rev-parse", "--short", "HEAD"]),
            "rustc": command_output("rustc", &["--version"]),
            "nginx": command_output(&crate::peers::sbin("nginx").to_string_lossy(), &["-v"]).trim_start_matches("nginx version: ").to_owned(),
            "haproxy": first_line(&command_output(&crate::peers::sbin("haproxy").to_string_lossy(), &["-v"])),
            "node": command_output("node", &["--version"]),
            "socket.io": npm_version(&env.peers_dir(), "socket.io"),
            "ws": npm_version(&env.peers_dir(), "ws"),
        }
    })
}
