//! Where things are (the repo, the release binaries, this run's work
//! folder) and what the machine is: what docs/BENCHMARKS.md must state.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::procs::command_output;

pub struct Env {
    pub root: PathBuf,
    pub bin_dir: PathBuf,
    pub work: PathBuf,
    pub smoke: bool,
    pub cpus: Cpus,
}

/// Which side of a measurement a process is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The systems under test: proxies, nodes, the peers' servers.
    Server,
    /// The load generator (and this bench process, whose tasks are the
    /// membership scenario's clients).
    Client,
}

/// The cores each side is pinned to, so that neither takes the other's
/// CPU: on two cores, the servers get core 0 and the load generator core 1.
/// A side that used all of its cores was the limit (see `client_bound`).
#[derive(Clone, Debug)]
pub struct Cpus {
    pub server: Vec<usize>,
    pub client: Vec<usize>,
}

impl Cpus {
    /// The cores this process may use, split in two halves (the servers get
    /// the first, larger one). On one core, both sides share it.
    pub fn split() -> Cpus {
        let mine = allowed_cpus();
        if mine.len() < 2 {
            return Cpus {
                server: mine.clone(),
                client: mine,
            };
        }
        let half = mine.len().div_ceil(2);
        Cpus {
            server: mine[..half].to_vec(),
            client: mine[half..].to_vec(),
        }
    }

    pub fn of(&self, side: Side) -> &[usize] {
        match side {
            Side::Server => &self.server,
            Side::Client => &self.client,
        }
    }
}

/// The CPUs the scheduler lets this process run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the set we pass, nothing else.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Restricts process `pid` (0: this one) to `cpus`.
fn set_affinity(pid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a cpu_set_t built here and one syscall on it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
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
        let cpus = Cpus::split();
        // This process runs the membership scenario's clients, and its
        // children inherit its cores unless pinned elsewhere.
        set_affinity(0, &cpus.client).context("cannot pin the bench to the client cores")?;
        Ok(Env {
            root,
            bin_dir,
            work,
            smoke,
            cpus,
        })
    }

    /// Worker processes or threads of each proxy: one per server core, as
    /// nginx's `worker_processes auto` and HAProxy's default `nbthread`
    /// choose. More workers than cores only make them take turns.
    pub fn proxy_workers(&self) -> usize {
        self.cpus.server.len().max(1)
    }

    /// Starts `cmd` pinned to `side`'s cores (threads and children inherit
    /// them: nginx's workers, the loadgen's workers).
    pub fn pin(&self, cmd: &mut Command, side: Side) {
        let cpus = self.cpus.of(side).to_vec();
        // SAFETY: between fork and exec only sched_setaffinity runs, which
        // is async-signal-safe, on a set built before the fork.
        unsafe {
            cmd.pre_exec(move || set_affinity(0, &cpus));
        }
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
        "pinning": { "server_cpus": env.cpus.server, "client_cpus": env.cpus.client },
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
