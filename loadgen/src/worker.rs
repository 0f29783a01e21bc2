//! One process's share of a run: build the shared context, run the mode,
//! and turn what was measured into a [`Partial`]. The parent calls this
//! in-process for `--workers 1`; a worker child runs it and reports on
//! stdout (see `plan/workers.rs` for the line format).

use anyhow::{bail, Context as _};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::Mode;
use crate::client::Endpoint;
use crate::limits;
use crate::modes::{self, Ctx, Slot};
use crate::plan::workers::{PROGRESS_PREFIX, RESULT_PREFIX};
use crate::plan::Plan;
use crate::procstat;
use crate::protocol::Protocol;
use crate::stats::{encode_histogram, Counters, ErrorSamples, Partial, Recorder, Rooms};
use crate::target::{SourceIps, Target};
use crate::timeline::Timeline;

/// How often a worker child reports its counters.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

pub fn build(
    mode: &Mode,
    plan: &Plan,
    slot: Slot,
    t0_unix_ms: u64,
    room_prefix: String,
) -> anyhow::Result<Arc<Ctx>> {
    let common = mode.common();
    let per_process = plan.sockets_per_process();
    if let Some(limit) = limits::raise_nofile() {
        // Leave room for the runtime, stdio and sockets still closing.
        if per_process + 100 > limit {
            bail!(
                "this process may open {limit} files but the plan puts {per_process} sockets in it: \
                 raise `ulimit -n` or --workers"
            );
        }
    }
    let target = Target::parse(&common.target)?;
    let sources = SourceIps::parse(&common.source_ips, &target)?;
    Ok(Arc::new(Ctx {
        endpoint: Endpoint {
            target,
            protocol: Protocol(common.protocol),
            transport: common.transport,
            sources,
            ws_path: common.ws_path.clone(),
            sse_path: common.sse_path.clone(),
            publish_path: common.publish_path.clone(),
        },
        timeline: Timeline::new(t0_unix_ms, plan.phases),
        counters: Counters::default(),
        latency: Recorder::default(),
        connect_latency: Recorder::default(),
        rooms: Rooms::default(),
        errors: ErrorSamples::default(),
        room_prefix,
        connect_timeout: common.connect_timeout,
        slot,
        socket_budget: per_process,
    }))
}

/// Runs this process's share of the mode; returns once everything is closed
/// (or the hard end has passed).
pub async fn run(ctx: Arc<Ctx>, mode: &Mode) -> anyhow::Result<Partial> {
    let ramp = mode.common().ramp;
    let work = {
        let ctx = ctx.clone();
        let mode = mode.clone();
        async move {
            match &mode {
                Mode::Fanout(a) => modes::fanout::run(ctx, a, ramp).await,
                Mode::Rtt(a) => modes::rtt::run(ctx, a, ramp).await,
                Mode::Idle(a) => modes::idle::run(ctx, a, ramp).await,
                Mode::Churn(a) => modes::churn::run(ctx, a, ramp).await,
                Mode::Storm(a) => modes::storm::run(ctx, a, ramp).await,
            }
        }
    };
    let own_cpu = tokio::spawn(own_window_cpu(ctx.clone()));
    // Every loop inside is bounded by the timeline; this is the backstop.
    let backstop = ctx.timeline.hard_end + Duration::from_secs(2);
    if tokio::time::timeout_at(backstop.into(), work)
        .await
        .is_err()
    {
        ctx.errors
            .note("the run overran its hard end and was cut off");
    }
    // The window CPU is read at the drain's end, which the work may have
    // passed only just: give the reading its moment (bounded all the same).
    let _ = tokio::time::timeout_at(
        (ctx.timeline.drain_end + Duration::from_secs(1)).into(),
        own_cpu,
    )
    .await;
    partial(&ctx, mode)
}

/// This process's own CPU from the window's start to the drain's end, the
/// same span as the `--pid` processes' `cpu_seconds_window`, in ms: on a
/// small machine it tells whether the loadgen, not the server, was the
/// limit.
async fn own_window_cpu(ctx: Arc<Ctx>) {
    let me = std::process::id();
    tokio::time::sleep_until(ctx.timeline.measure_start.into()).await;
    let start = procstat::sample(me);
    tokio::time::sleep_until(ctx.timeline.drain_end.into()).await;
    if let (Some(a), Some(b)) = (start, procstat::sample(me)) {
        let ms = ((b.cpu_seconds - a.cpu_seconds) * 1000.0).max(0.0).round() as u64;
        ctx.counters
            .cpu_window_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

fn partial(ctx: &Ctx, mode: &Mode) -> anyhow::Result<Partial> {
    // Idle has no messages; its main latency is the connect latency.
    let main = match mode {
        Mode::Idle(_) => &ctx.connect_latency,
        _ => &ctx.latency,
    };
    Ok(Partial {
        counts: ctx.counters.snapshot(),
        latency: encode_histogram(&main.merged())?,
        connect_latency: encode_histogram(&ctx.connect_latency.merged())?,
        rooms: ctx.rooms.take(),
        errors: ctx.errors.take(),
    })
}

/// The main of a worker child: report progress lines while running, then
/// the result line.
pub async fn child(mode: Mode, plan: Plan) -> anyhow::Result<()> {
    let common = mode.common();
    let slot = Slot {
        index: common.worker_index.context("--worker-index missing")?,
        count: common.worker_count.context("--worker-count missing")?,
    };
    if slot.count == 0 || slot.index >= slot.count {
        bail!("bad worker slot {}/{}", slot.index, slot.count);
    }
    let t0 = common.t0_unix_ms.context("--t0-unix-ms missing")?;
    let run_id = common.run_id.clone().context("--run-id missing")?;
    let prefix = room_prefix(common.room_prefix.as_deref(), &run_id);
    let ctx = build(&mode, &plan, slot, t0, prefix)?;
    let reporter = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tick.tick().await;
                if let Ok(line) = serde_json::to_string(&ctx.counters.snapshot()) {
                    emit(PROGRESS_PREFIX, &line);
                }
            }
        })
    };
    let result = run(ctx, &mode).await;
    reporter.abort();
    let line = serde_json::to_string(&result?)?;
    emit(RESULT_PREFIX, &line);
    Ok(())
}

fn emit(prefix: &str, line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{prefix}{line}");
    let _ = out.flush();
}

/// Meeting ids of a run: `<prefix>-<room>`; unique per run unless given.
pub fn room_prefix(given: Option<&str>, run_id: &str) -> String {
    given.map_or_else(|| format!("lg-{run_id}"), str::to_owned)
}
