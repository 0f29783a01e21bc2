//! `roompin-cluster`: one command for a local cluster. It starts one
//! `roompin-node` per `[[upstream]]` of the balancer config, waits until they
//! answer `/healthz`, then starts the balancer, and prints where to connect.
//! Ctrl-C stops every process it started.
//!
//! It runs the sibling binaries built next to it, so run it after
//! `cargo build --release` (the README's first command does both).

use anyhow::{bail, Context};
use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

use roompin_shared::config::BalancerConfig;

#[derive(Parser, Debug)]
#[command(name = "roompin-cluster", about = "Start a local roompin cluster")]
struct Cli {
    /// Balancer config; one node is started per [[upstream]].
    #[arg(long, default_value = "config/balancer.toml")]
    config: PathBuf,
    /// Settings shared by the nodes.
    #[arg(long, default_value = "config/node.toml")]
    node_config: PathBuf,
}

/// A started child. Dropping it (on an error path) kills it outright; a
/// normal stop goes through `stop_all`.
struct Started {
    name: String,
    child: Child,
}

impl Started {
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = BalancerConfig::load(&cli.config)?;
    let dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("no directory of the launcher")?;
    let binary = |name: &str| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        if !path.exists() {
            bail!(
                "{} is missing: build it first with `cargo build --release`",
                path.display()
            );
        }
        Ok(path)
    };
    let (node_bin, balancer_bin) = (binary("roompin-node")?, binary("roompin-balancer")?);

    let mut started: Vec<Started> = Vec::new();
    for u in &config.upstreams {
        let mut cmd = Command::new(&node_bin);
        cmd.args(["--id", &u.id, "--listen", &u.addr])
            .arg("--config")
            .arg(&cli.node_config);
        if let Some(token) = &config.control_token {
            cmd.env("ROOMPIN_CONTROL_TOKEN", token);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start node {}", u.id))?;
        started.push(Started {
            name: format!("node {}", u.id),
            child,
        });
    }
    // The nodes first, so that the balancer's first health checks find them.
    for u in &config.upstreams {
        wait_healthy(&format!("http://{}/healthz", u.addr), &mut started).await?;
    }
    let child = Command::new(&balancer_bin)
        .arg("--config")
        .arg(&cli.config)
        .spawn()
        .context("cannot start the balancer")?;
    started.push(Started {
        name: "balancer".into(),
        child,
    });
    wait_healthy(
        &format!("http://{}/healthz", config.admin_listen),
        &mut started,
    )
    .await?;

    println!();
    println!(
        "roompin is up: {} nodes behind the balancer.",
        config.upstreams.len()
    );
    println!("  Chat page:   http://{}/", config.listen);
    println!(
        "  WebSocket:   ws://{}/websocket?meeting_id=standup",
        config.listen
    );
    println!(
        "  Ring:        http://{}/ring   Metrics: http://{}/metrics",
        config.admin_listen, config.admin_listen
    );
    println!(
        "Edit {} to add or remove nodes live. Ctrl-C stops everything.",
        cli.config.display()
    );
    println!();

    let (mut int, mut term) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Ctrl-C stops everything now (nodes close their clients with 1001);
    // SIGTERM lets the nodes drain (up to drain_timeout_ms, 10 s by default).
    let (sig, patience) = loop {
        tokio::select! {
            _ = int.recv() => break (Signal::SIGINT, Duration::from_secs(5)),
            _ = term.recv() => break (Signal::SIGTERM, Duration::from_secs(15)),
            _ = tick.tick() => report_exits(&mut started),
        }
    };
    println!("stopping {} processes…", started.len());
    stop_all(&mut started, sig, patience);
    Ok(())
}

/// Sends `sig` to every child at once, waits for each until `patience` runs
/// out, and kills what is left.
fn stop_all(started: &mut Vec<Started>, sig: Signal, patience: Duration) {
    for p in started.iter_mut() {
        if p.running() {
            let _ = kill(Pid::from_raw(p.child.id() as i32), sig);
        }
    }
    let deadline = Instant::now() + patience;
    for mut p in started.drain(..) {
        while p.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if p.running() {
            eprintln!("{} did not stop within {patience:?}: killing it", p.name);
        }
    }
}

/// A process that exits stays gone (a node you kill to try failover); say so.
fn report_exits(started: &mut Vec<Started>) {
    started.retain_mut(|p| match p.child.try_wait() {
        Ok(Some(status)) => {
            eprintln!("{} exited: {status}", p.name);
            false
        }
        _ => true,
    });
}

async fn wait_healthy(url: &str, started: &mut [Started]) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Ok(resp) = reqwest::get(url).await {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        for p in started.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!(
                    "{} exited during start-up ({status}); is its port in use?",
                    p.name
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not answer within 15 s")
}
