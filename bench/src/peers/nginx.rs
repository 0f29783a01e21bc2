//! Debian's nginx with bench/peers/nginx.conf.tmpl: `hash $arg_meeting_id
//! consistent` over the nodes. Runs in the foreground with its own prefix,
//! pid file and logs in the work folder.

use anyhow::Context;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::{render, Front};
use crate::env::{Env, Side};
use crate::procs::{self, Proc};

pub async fn start(env: &Env, nodes: &[SocketAddr], workers: usize) -> anyhow::Result<Front> {
    let dir = env.dir("nginx")?;
    let addr = procs::free_addr()?;
    let servers: String = nodes
        .iter()
        .map(|a| format!("        server {a} max_fails=0;\n"))
        .collect();
    let conf = render(
        &env.peers_dir().join("nginx.conf.tmpl"),
        &[
            ("workers", workers.to_string()),
            ("dir", dir.display().to_string()),
            ("servers", servers),
            ("listen", addr.to_string()),
        ],
    )?;
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).with_context(|| format!("cannot write {}", path.display()))?;
    let mut cmd = Command::new(super::sbin("nginx"));
    cmd.arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&path);
    env.pin(&mut cmd, Side::Server);
    let mut proc = Proc::spawn("nginx", cmd, &env.dir("logs")?)
        .context("cannot start nginx: is it installed? (scripts/prereqs bench)")?;
    procs::wait_listening(&mut proc, addr, Duration::from_secs(10)).await?;
    // The workers hold the connections; the master only watches them.
    let mut pids = procs::children(proc.pid());
    for _ in 0..50 {
        if pids.len() >= workers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        pids = procs::children(proc.pid());
    }
    Ok(Front {
        name: "nginx",
        addr,
        pids,
        _procs: vec![proc],
    })
}
