//! roompin-bench: runs the six scenarios of docs/BENCHMARKS.md against
//! roompin and its peers (nginx, HAProxy, Socket.IO, ws), alternating the
//! systems, and writes bench/results/<date>-<HHMM>.json (UTC; one file per
//! run, so a second run on one day keeps the first), the tables in
//! docs/BENCHMARKS.md and the plot docs/benchmarks.svg.
//!
//! `scripts/bench` installs the peers, builds in release mode and runs this;
//! `--smoke` runs every scenario for seconds (the test suite does) and
//! writes into the work folder only.

mod env;
mod loadgen;
mod peers;
mod procs;
mod report;
mod scenarios;

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

const SCENARIOS: [&str; 6] = [
    "ring",
    "proxy_overhead",
    "fanout",
    "idle_cost",
    "reconnect_storm",
    "membership",
];

#[derive(Parser, Debug)]
#[command(
    name = "roompin-bench",
    about = "roompin side by side with nginx, HAProxy, Socket.IO and ws"
)]
struct Cli {
    /// Every scenario for a few seconds, only to show that each produces
    /// numbers; writes into --work, never into docs/ or bench/results/.
    #[arg(long)]
    smoke: bool,
    /// Run only these scenarios (comma-separated): ring, proxy_overhead,
    /// fanout, idle_cost, reconnect_storm, membership.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The repository (default: where this crate was built from).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.."))]
    root: PathBuf,
    /// Logs, configs and loadgen results of this run (default:
    /// bench/work/<date>-<time>).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Only render the tables and the plot again from an existing results
    /// JSON (into docs/, or into --work with --no-docs); runs nothing.
    #[arg(long, value_name = "RESULTS_JSON")]
    render: Option<PathBuf>,
    /// Write the results, tables and plot into --work only: do not touch
    /// bench/results/, docs/BENCHMARKS.md or docs/benchmarks.svg.
    #[arg(long)]
    no_docs: bool,
}

fn main() {
    let cli = Cli::parse();
    raise_fd_limit();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roompin-bench: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = rt.block_on(async {
        tokio::select! {
            r = run(cli) => match r {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("roompin-bench: {e:#}");
                    1
                }
            },
            _ = tokio::signal::ctrl_c() => {
                // Dropping `run` stops every process it started.
                eprintln!("roompin-bench: interrupted; stopping everything it started");
                130
            }
        }
    });
    drop(rt);
    std::process::exit(code);
}

/// The 1-minute load average.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The membership scenario holds 9,000 sockets in this process.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on our own process.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let root = cli.root.canonicalize().context("no repository folder")?;
    let (date, time) = report::utc_now();
    let work = cli.work.clone().unwrap_or_else(|| {
        root.join("bench").join("work").join(format!(
            "{date}-{}{}",
            time.replace(':', ""),
            if cli.smoke { "-smoke" } else { "" }
        ))
    });
    if let Some(json_path) = &cli.render {
        let text = std::fs::read_to_string(json_path)
            .with_context(|| format!("cannot read {}", json_path.display()))?;
        let doc: Value = serde_json::from_str(&text).context("not a results JSON")?;
        let json_path = json_path.canonicalize().unwrap_or(json_path.clone());
        let (md, svg) = if cli.no_docs {
            std::fs::create_dir_all(&work).context("cannot create the work folder")?;
            (None, work.join("benchmarks.svg"))
        } else {
            (
                Some(root.join("docs").join("BENCHMARKS.md")),
                root.join("docs").join("benchmarks.svg"),
            )
        };
        report::plot(&doc, &svg)?;
        let tables = report::tables(&doc, &json_path, &root);
        match md {
            Some(md) => report::update_doc(&md, &tables)?,
            None => {
                std::fs::write(work.join("tables.md"), &tables).context("cannot write tables.md")?
            }
        }
        eprintln!("rendered {}", svg.display());
        return Ok(());
    }
    let env = env::Env::new(root.clone(), work, cli.smoke)?;
    if !env.release() && !cli.smoke {
        eprintln!("warning: these are not release binaries; numbers will be meaningless");
    }
    let chosen: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| cli.only.is_empty() || cli.only.iter().any(|o| o == s))
        .collect();
    anyhow::ensure!(
        !chosen.is_empty(),
        "no scenario matches --only {:?}",
        cli.only
    );
    let machine = env::describe(&env);
    eprintln!(
        "roompin-bench{}: work folder {}",
        if cli.smoke { " --smoke" } else { "" },
        env.work.display()
    );
    let started = Instant::now();
    let mut results = serde_json::Map::new();
    let mut failed = Vec::new();
    for name in &chosen {
        eprintln!("== {name}");
        let t = Instant::now();
        let load_before = loadavg();
        let r = match *name {
            "ring" => scenarios::ring::run(&env).await,
            "proxy_overhead" => scenarios::proxy_overhead::run(&env).await,
            "fanout" => scenarios::fanout::run(&env).await,
            "idle_cost" => scenarios::idle_cost::run(&env).await,
            "reconnect_storm" => scenarios::reconnect_storm::run(&env).await,
            _ => scenarios::membership::run(&env).await,
        };
        let secs = t.elapsed().as_secs_f64();
        let value = match r {
            Ok(mut v) => {
                v["wall_s"] = json!(secs);
                // Other work on the machine shows here (2 cores: the
                // bench's own processes alone keep it near 2).
                v["loadavg_1min"] = json!([load_before, loadavg()]);
                v
            }
            Err(e) => {
                eprintln!("   {name} failed: {e:#}");
                failed.push(name.to_string());
                json!({ "error": format!("{e:#}"), "wall_s": secs })
            }
        };
        eprintln!("   {name}: {secs:.0} s");
        results.insert(name.to_string(), value);
    }
    let doc = json!({
        "date": date,
        "time_utc": time,
        "smoke": cli.smoke,
        "wall_s": started.elapsed().as_secs_f64(),
        "machine": machine,
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "scenarios": Value::Object(results),
    });
    let json_path = if cli.smoke || cli.no_docs {
        env.work.join("results.json")
    } else {
        let dir = root.join("bench").join("results");
        std::fs::create_dir_all(&dir).context("cannot create bench/results")?;
        let hhmm: String = time.chars().filter(char::is_ascii_digit).take(4).collect();
        dir.join(format!("{date}-{hhmm}.json"))
    };
    let text = serde_json::to_string_pretty(&doc).context("cannot serialise the results")?;
    std::fs::write(&json_path, text + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    eprintln!("results: {}", json_path.display());

    let (md_target, svg_path) = if cli.smoke || cli.no_docs {
        (None, env.work.join("benchmarks.svg"))
    } else {
        (
            Some(root.join("docs").join("BENCHMARKS.md")),
            root.join("docs").join("benchmarks.svg"),
        )
    };
    report::plot(&doc, &svg_path)?;
    let tables = report::tables(&doc, &json_path, &root);
    std::fs::write(env.work.join("tables.md"), &tables).context("cannot write tables.md")?;
    if let Some(md) = md_target {
        report::update_doc(&md, &tables)?;
        eprintln!("updated {} and {}", md.display(), svg_path.display());
    }
    anyhow::ensure!(failed.is_empty(), "scenarios failed: {}", failed.join(", "));
    Ok(())
}
