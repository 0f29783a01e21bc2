//! Child processes that are killed when dropped, with their logs kept in
//! `target/test-logs/` for post-mortems.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// `target/<profile>/`, where cargo put the binaries under test.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Path of a workspace binary; panics with a hint if it is missing or older
/// than its sources (`cargo test` does not build other packages' binaries,
/// and a stale one would test old code).
pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    let hint = "build them first: `cargo build --workspace --bins` (scripts/test does)";
    let built = std::fs::metadata(&path).and_then(|m| m.modified());
    let Ok(built) = built else {
        panic!("{} is missing: {hint}", path.display());
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let crate_dir = name.trim_start_matches("roompin-");
    let sources = [
        format!("{crate_dir}/src"),
        format!("{crate_dir}/assets"),
        "shared/src".to_owned(),
    ];
    for dir in sources {
        if let Some(newer) = newest_source(&root.join(dir)).filter(|(t, _)| *t > built) {
            panic!(
                "{} is older than {}: {hint}",
                path.display(),
                newer.1.display()
            );
        }
    }
    path
}

/// The most recently modified `.rs` or `.html` file below `dir`: what the
/// binary is compiled from. (Not `Cargo.toml`: a change there, such as a new
/// bench, need not relink the binary.)
fn newest_source(dir: &std::path::Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs" || e == "html") {
                if let Ok(t) = entry.metadata().and_then(|m| m.modified()) {
                    if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                        newest = Some((t, p));
                    }
                }
            }
        }
    }
    newest
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process, killed on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with the test's own `RUST_LOG` (or `info`).
    pub fn spawn(name: &str, cmd: Command) -> Proc {
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        Self::spawn_filtered(name, cmd, &filter)
    }

    /// Spawns `cmd` with `RUST_LOG` set to `filter`.
    pub fn spawn_filtered(name: &str, mut cmd: Command, filter: &str) -> Proc {
        let dir = target_dir().join("test-logs");
        let _ = std::fs::create_dir_all(&dir);
        let log = dir.join(format!("{name}-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).expect("create log file");
        let err = file.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        cmd.env("RUST_LOG", filter);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, sig);
        }
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Some(status);
                }
            } else {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `http://addr/healthz` until it answers 200.
pub async fn wait_healthy(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let url = format!("http://{addr}/healthz");
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(resp) = reqwest::get(&url).await {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{url} not healthy after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A test node's config file: `toml`, with the message-rate limit lifted
/// unless `toml` sets it, because most tests send as fast as they can (the
/// limit's own tests, `node_limits.rs`, set it). The keys go first, before
/// any `[table]` of `toml`.
pub fn node_toml(toml: &str) -> String {
    if toml.contains("messages_per_second") || toml.contains("message_burst") {
        return toml.to_owned();
    }
    format!("messages_per_second = 1000000\nmessage_burst = 1000000\n{toml}")
}

/// Settings for a test node; everything else comes from the node defaults.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Extra TOML lines for the node's config file.
    pub toml: String,
    pub control_token: Option<String>,
}

/// A running `roompin-node`.
pub struct NodeProc {
    pub id: String,
    pub addr: SocketAddr,
    pub proc: Proc,
    pub options: NodeOptions,
}

impl NodeProc {
    /// Starts a node with extra lines for its config file.
    pub async fn with_toml(id: &str, toml: &str) -> NodeProc {
        Self::start(
            id,
            NodeOptions {
                toml: toml.to_owned(),
                ..NodeOptions::default()
            },
        )
        .await
    }

    pub async fn start(id: &str, options: NodeOptions) -> NodeProc {
        Self::start_on(id, loopback(free_port()), options).await
    }

    /// Starts (or restarts) a node on a given address.
    pub async fn start_on(id: &str, addr: SocketAddr, options: NodeOptions) -> NodeProc {
        let dir = target_dir().join("test-logs");
        let _ = std::fs::create_dir_all(&dir);
        let config = dir.join(format!("{id}-{}-{}.toml", addr.port(), std::process::id()));
        std::fs::write(&config, node_toml(&options.toml)).expect("write node config");
        let mut cmd = Command::new(bin("roompin-node"));
        cmd.arg("--id")
            .arg(id)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--config")
            .arg(&config);
        if let Some(token) = &options.control_token {
            cmd.env("ROOMPIN_CONTROL_TOKEN", token);
        }
        let proc = Proc::spawn(&format!("node-{id}-{}", addr.port()), cmd);
        wait_healthy(addr, crate::PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", proc.logs()));
        NodeProc {
            id: id.to_owned(),
            addr,
            proc,
            options,
        }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/websocket?{query}", self.addr)
    }

    /// `ws://…/websocket`, without a query.
    pub fn ws_base(&self) -> String {
        format!("ws://{}/websocket", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}
