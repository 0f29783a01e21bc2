//! `roompin-node`: a stateless chat node. See docs/ARCHITECTURE.md.

use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

use roompin_shared::config::{validate_node_id, NodeConfig};
use roompin_shared::logging::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(name = "roompin-node", version, about = "A roompin chat node")]
struct Cli {
    /// This node's id, as the balancer's [[upstream]] names it.
    #[arg(long)]
    id: Option<String>,
    /// Address to listen on, e.g. 127.0.0.1:9001.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML file with the other settings (see config/node.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Bearer token the balancer must present on /control/*.
    #[arg(long, env = "ROOMPIN_CONTROL_TOKEN", hide_env_values = true)]
    control_token: Option<String>,
    /// Milliseconds to wait on SIGTERM for the balancers to route away and
    /// the clients to leave, before the rest are closed with 4001.
    #[arg(long)]
    drain_timeout_ms: Option<u64>,
    /// Log lines as `text` (for people) or `json` (one object per line, for
    /// machines). RUST_LOG filters them.
    #[arg(
        long,
        value_name = "text|json",
        env = "ROOMPIN_LOG_FORMAT",
        default_value_t
    )]
    log_format: LogFormat,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log_format)?;
    let mut settings = match &cli.config {
        Some(path) => {
            let mut settings = NodeConfig::load(path)?;
            // [auth] key files are relative to the config file.
            if let Some(auth) = &mut settings.auth {
                let base = roompin_shared::auth::key_base(path);
                for key in &mut auth.public_keys {
                    *key = base.join(&*key);
                }
            }
            settings
        }
        None => NodeConfig::default(),
    };
    // Flags override the file.
    settings.id = cli.id.or(settings.id);
    settings.listen = cli.listen.or(settings.listen);
    settings.control_token = cli.control_token.or(settings.control_token);
    settings.drain_timeout_ms = cli.drain_timeout_ms.unwrap_or(settings.drain_timeout_ms);
    let id = settings
        .id
        .clone()
        .context("no node id: pass --id or set `id` in the config file")?;
    validate_node_id(&id).map_err(|e| anyhow::anyhow!("--id: {e}"))?;
    let listen = settings
        .listen
        .context("no address: pass --listen or set `listen` in the config file")?;
    settings.validate().map_err(|e| anyhow::anyhow!("{e}"))?;

    // glibc's malloc, trimmed when freed memory stays resident: what a
    // flood took comes back within seconds (docs/SECURITY.md).
    roompin_shared::heap::spawn_trimmer().context("cannot start the heap trimmer")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(roompin_node::serve(id, listen, settings))
}
