//! `roompin-loadgen`: drives a roompin deployment (or a plain WebSocket
//! broadcast server) with many connections and reports delivery latency,
//! loss and the server's CPU and memory cost. See loadgen/README.md.

mod cli;
mod client;
mod limits;
mod modes;
mod plan;
mod procstat;
mod progress;
mod protocol;
mod report;
mod run;
mod stamp;
mod stats;
mod target;
mod timeline;
mod worker;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match start(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("roompin-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn start(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    let plan = plan::Plan::new(&cli.mode)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if cli.mode.common().worker_index.is_some() {
        runtime.block_on(worker::child(cli.mode, plan))?;
        return Ok(ExitCode::SUCCESS);
    }
    runtime.block_on(run::parent(cli.mode, plan))
}
