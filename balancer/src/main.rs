//! `roompin-balancer`: the edge proxy. See docs/ARCHITECTURE.md.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "roompin-balancer", version, about = "roompin's edge proxy")]
struct Cli {
    /// The balancer TOML (see config/balancer.toml). Edits apply live.
    #[arg(long)]
    config: PathBuf,
    /// Overrides `listen` in the file.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides `admin_listen` in the file.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Worker threads of the proxy.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let options = roompin_balancer::Options {
        config: cli.config,
        listen: cli.listen,
        admin_listen: cli.admin_listen,
        threads: cli.threads,
    };
    if let Err(e) = roompin_balancer::run(options) {
        tracing::error!("{e:#}");
        eprintln!("roompin-balancer: {e:#}");
        std::process::exit(2);
    }
}
