//! `roompin-balancer`: the edge proxy. See docs/ARCHITECTURE.md.
//!
//! Without a subcommand it runs the balancer (`--config F [--listen A]
//! [--admin-listen B]`), as it always has; subcommands are offline tools
//! that read the same TOML.

mod route_cmd;
mod token_cmd;

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

use roompin_shared::logging::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "roompin-balancer",
    version,
    about = "roompin's edge proxy",
    // `roompin-balancer --config F` runs; `roompin-balancer route …` does
    // not, and the run flags are not required then.
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

/// Running the balancer.
#[derive(Args, Debug)]
struct RunArgs {
    /// The balancer TOML (see config/balancer.toml). Edits apply live.
    #[arg(long, required = true)]
    config: Option<PathBuf>,
    /// Overrides `listen` in the file.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides `admin_listen` in the file.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Worker threads of the proxy.
    #[arg(long, default_value_t = 2)]
    threads: usize,
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Which node owns a meeting, and which would own it if that node
    /// failed: answered offline from the TOML, with the balancer's own ring.
    Route(route_cmd::RouteArgs),
    /// Mints a join token for a meeting and a user, signed with the first
    /// of `[auth] hs256_secrets`: for operators and tests.
    Token(token_cmd::TokenArgs),
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Route(args)) => {
            if let Err(e) = route_cmd::run(&args) {
                eprintln!("roompin-balancer route: {e:#}");
                std::process::exit(2);
            }
        }
        Some(Command::Token(args)) => {
            if let Err(e) = token_cmd::run(&args) {
                eprintln!("roompin-balancer token: {e:#}");
                std::process::exit(2);
            }
        }
        None => run(cli.run),
    }
}

fn run(args: RunArgs) {
    if let Err(e) = logging::init(args.log_format) {
        eprintln!("roompin-balancer: {e}");
        std::process::exit(2);
    }
    // glibc's malloc, trimmed when freed memory stays resident: what an
    // attack took comes back within seconds (docs/SECURITY.md).
    if let Err(e) = roompin_shared::heap::spawn_trimmer() {
        eprintln!("roompin-balancer: cannot start the heap trimmer: {e}");
        std::process::exit(2);
    }
    let Some(config) = args.config else {
        // clap requires it; this is only a second line of defence.
        eprintln!("roompin-balancer: --config is required");
        std::process::exit(2);
    };
    let options = roompin_balancer::Options {
        config,
        listen: args.listen,
        admin_listen: args.admin_listen,
        threads: args.threads,
    };
    if let Err(e) = roompin_balancer::run(options) {
        tracing::error!("{e:#}");
        // The log line may be JSON or filtered out; a person starting the
        // balancer by hand still reads why it stopped.
        eprintln!("roompin-balancer: {e:#}");
        std::process::exit(2);
    }
}
