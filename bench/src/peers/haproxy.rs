//! Debian's HAProxy with bench/peers/haproxy.cfg.tmpl: `balance url_param
//! meeting_id` with `hash-type consistent`, in the foreground (`-db`).

use anyhow::Context;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::{render, Front};
use crate::env::{Env, Side};
use crate::procs::{self, Proc};

pub async fn start(env: &Env, nodes: &[SocketAddr], threads: usize) -> anyhow::Result<Front> {
    let dir = env.dir("haproxy")?;
    let addr = procs::free_addr()?;
    let servers: String = nodes
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server n{i} {a}\n"))
        .collect();
    let conf = render(
        &env.peers_dir().join("haproxy.cfg.tmpl"),
        &[
            ("threads", threads.to_string()),
            ("servers", servers),
            ("listen", addr.to_string()),
        ],
    )?;
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).with_context(|| format!("cannot write {}", path.display()))?;
    let mut cmd = Command::new(super::sbin("haproxy"));
    cmd.arg("-db").arg("-f").arg(&path);
    env.pin(&mut cmd, Side::Server);
    let mut proc = Proc::spawn("haproxy", cmd, &env.dir("logs")?)
        .context("cannot start haproxy: is it installed? (scripts/prereqs bench)")?;
    procs::wait_listening(&mut proc, addr, Duration::from_secs(10)).await?;
    Ok(Front {
        name: "haproxy",
        addr,
        pids: vec![proc.pid()],
        _procs: vec![proc],
    })
}
