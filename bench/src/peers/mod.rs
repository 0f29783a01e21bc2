//! The systems under test. Each starts real processes (dropped = stopped)
//! and says where clients connect and which pids to measure.

pub mod haproxy;
pub mod nginx;
pub mod roompin;
pub mod socketio;
pub mod ws;

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use crate::env::{Env, Side};
use crate::procs::{self, Proc};

/// A proxy in front of the nodes (or none).
pub struct Front {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// The processes that hold the connections (nginx's workers, not its
    /// master), to measure.
    pub pids: Vec<u32>,
    pub _procs: Vec<Proc>,
}

/// A Debian daemon's binary: on PATH, else in /usr/sbin (not on a
/// non-root user's PATH).
pub fn sbin(name: &str) -> std::path::PathBuf {
    let fallback = Path::new("/usr/sbin").join(name);
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if !on_path && fallback.is_file() {
        fallback
    } else {
        name.into()
    }
}

/// `{{key}}` → value in a template file of bench/peers/.
pub fn render(template: &Path, vars: &[(&str, String)]) -> anyhow::Result<String> {
    let mut text = std::fs::read_to_string(template)
        .with_context(|| format!("cannot read {}", template.display()))?;
    for (k, v) in vars {
        text = text.replace(&format!("{{{{{k}}}}}"), v);
    }
    if let Some(i) = text.find("{{") {
        bail!(
            "{}: unfilled placeholder near `{:.30}`",
            template.display(),
            &text[i..]
        );
    }
    Ok(text)
}

/// `node bench/peers/<script> 127.0.0.1 <port>`: the npm peers.
pub async fn start_node_script(
    env: &Env,
    name: &'static str,
    script: &str,
) -> anyhow::Result<Front> {
    let peers = env.peers_dir();
    if !peers.join("node_modules").is_dir() {
        bail!(
            "{}/node_modules is missing: run `npm ci` there (scripts/prereqs bench does)",
            peers.display()
        );
    }
    let addr = procs::free_addr()?;
    let mut cmd = Command::new("node");
    cmd.arg(peers.join(script))
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    env.pin(&mut cmd, Side::Server);
    let mut proc = Proc::spawn(name, cmd, &env.dir("logs")?)?;
    procs::wait_listening(&mut proc, addr, std::time::Duration::from_secs(15)).await?;
    Ok(Front {
        name,
        addr,
        pids: vec![proc.pid()],
        _procs: vec![proc],
    })
}
