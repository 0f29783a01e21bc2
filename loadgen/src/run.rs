//! The parent's side of a run: pick the common start, watch the server
//! processes, run the workers (in-process for one, as children for more),
//! merge, and write the result.

use anyhow::Context;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::Mode;
use crate::modes::Slot;
use crate::plan::workers::{self, Live};
use crate::plan::Plan;
use crate::procstat::{self, Watch};
use crate::progress::Progress;
use crate::report::{Report, RunFacts};
use crate::stamp::unix_nanos;
use crate::stats::{Counts, Merged};
use crate::target::{SourceIps, Target};
use crate::timeline::Timeline;
use crate::worker;

/// Head start before t0: time for worker children to exec and set up.
const START_DELAY_IN_PROCESS: Duration = Duration::from_millis(100);
const START_DELAY_CHILDREN: Duration = Duration::from_millis(700);
/// Extra patience for children past the hard end before they are killed.
const CHILD_GRACE: Duration = Duration::from_secs(10);

pub async fn parent(mode: Mode, plan: Plan) -> anyhow::Result<ExitCode> {
    let common = mode.common().clone();
    // Fail on a bad target or source range here, not once per worker.
    let target = Target::parse(&common.target)?;
    let sources = SourceIps::parse(&common.source_ips, &target)?;
    let started = Instant::now();
    let started_unix_ms = unix_nanos() / 1_000_000;
    let run_id = format!(
        "{:x}{:x}",
        started_unix_ms % 0xffff_ffff,
        std::process::id()
    );
    let prefix = worker::room_prefix(common.room_prefix.as_deref(), &run_id);
    let delay = if plan.workers > 1 {
        START_DELAY_CHILDREN
    } else {
        START_DELAY_IN_PROCESS
    };
    let t0 = started_unix_ms + delay.as_millis() as u64;
    let timeline = Timeline::new(t0, plan.phases);
    eprintln!(
        "roompin-loadgen {}: {} connections ({} sockets at peak) in {} process(es) to {}; \
         ramp {:.1}s, settle {:.1}s, measure {:.1}s, drain {:.1}s",
        mode.name(),
        plan.ramp_connections,
        plan.peak_sockets,
        plan.workers,
        target.addr,
        plan.phases.ramp.as_secs_f64(),
        plan.phases.settle.as_secs_f64(),
        plan.phases.measure.as_secs_f64(),
        plan.phases.drain.as_secs_f64(),
    );

    let progress = Arc::new(Progress::new(
        !common.no_progress,
        timeline,
        plan.ramp_connections,
    ));
    let partials = if plan.workers == 1 {
        let slot = Slot { index: 0, count: 1 };
        let ctx = worker::build(&mode, &plan, slot, t0, prefix.clone())?;
        let counts = {
            let ctx = ctx.clone();
            move || ctx.counters.snapshot()
        };
        let watcher = tokio::spawn(watch(common.pids.clone(), timeline, counts.clone()));
        let ticker = tick(progress.clone(), counts);
        let partial = worker::run(ctx, &mode).await;
        ticker.abort();
        (vec![partial?], watcher)
    } else {
        let live = Arc::new(Live::default());
        let counts = {
            let live = live.clone();
            move || live.total()
        };
        let watcher = tokio::spawn(watch(common.pids.clone(), timeline, counts.clone()));
        let ticker = tick(progress.clone(), counts);
        let deadline = timeline.hard_end + CHILD_GRACE;
        let parts = workers::run(plan.workers, t0, &run_id, live, deadline).await;
        ticker.abort();
        (parts?, watcher)
    };
    progress.finish();

    let (partials, watcher) = partials;
    let watches = watcher.await.unwrap_or_default();
    let merged = Merged::from_partials(&partials)?;
    let processes = watches
        .iter()
        .map(|w| w.report(merged.counts.frames))
        .collect();
    let report = Report::build(
        &mode,
        &plan,
        &merged,
        RunFacts {
            started_unix_ms,
            wall_s: started.elapsed().as_secs_f64(),
            source_ips: sources.describe(),
            room_prefix: prefix,
            processes,
            loadgen_cpu_seconds: procstat::own_cpu_seconds(),
        },
    );
    let json = serde_json::to_string_pretty(&report)?;
    match &common.out {
        Some(path) => std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{json}"),
    }
    eprintln!("{}", report.summary());
    Ok(if merged.counts.connected == 0 {
        eprintln!("roompin-loadgen: no connection succeeded");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Redraws the progress bar a few times a second until aborted.
fn tick(
    progress: Arc<Progress>,
    counts: impl Fn() -> Counts + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !progress.enabled() {
            return;
        }
        let mut every = tokio::time::interval(Duration::from_millis(250));
        loop {
            every.tick().await;
            progress.update(&counts());
        }
    })
}

/// Samples each `--pid` before the ramp, when the window opens, when it
/// closes (every connection open) and after the drain (before anything
/// closes).
async fn watch(
    pids: Vec<u32>,
    t: Timeline,
    counts: impl Fn() -> Counts + Send + 'static,
) -> Vec<Watch> {
    let mut watches: Vec<Watch> = pids
        .iter()
        .map(|&pid| Watch {
            pid,
            before: procstat::sample(pid),
            ..Default::default()
        })
        .collect();
    if watches.is_empty() {
        return watches;
    }
    tokio::time::sleep_until(t.measure_start.into()).await;
    for w in &mut watches {
        w.window_start = procstat::sample(w.pid);
    }
    tokio::time::sleep_until(t.measure_end.into()).await;
    let open = counts().open;
    for w in &mut watches {
        w.loaded = procstat::sample(w.pid);
        w.open_at_loaded = open;
    }
    tokio::time::sleep_until(t.drain_end.into()).await;
    for w in &mut watches {
        w.after = procstat::sample(w.pid);
    }
    watches
}
