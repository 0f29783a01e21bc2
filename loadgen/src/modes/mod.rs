//! The four load shapes. Each mode only decides *who* connects *when* and
//! who publishes; the member life cycle itself is in [`member`], and the
//! round-trip loop in [`rtt`].

pub mod churn;
pub mod fanout;
pub mod idle;
pub mod member;
pub mod rtt;
pub mod storm;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

use crate::client::{Conn, Endpoint};
use crate::stats::{Counters, ErrorSamples, Recorder, Rooms};
use crate::timeline::Timeline;

/// Which share of the connections this process runs: global connection `g`
/// belongs to worker `g % count`. Fan-out numbers connections member-major
/// (`g = member * rooms + room`), so when the worker count divides the room
/// count, every room lives in one worker.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub index: usize,
    pub count: usize,
}

impl Slot {
    pub fn mine(&self, g: u64) -> bool {
        g % self.count as u64 == self.index as u64
    }
}

/// What every connection task of one worker shares.
pub struct Ctx {
    pub endpoint: Endpoint,
    pub timeline: Timeline,
    pub counters: Counters,
    /// The mode's main latency: delivery (fanout, churn), round trip (rtt),
    /// or connect (idle).
    pub latency: Recorder,
    /// Intended connect time to ready, for every mode.
    pub connect_latency: Recorder,
    pub rooms: Rooms,
    pub errors: ErrorSamples,
    pub room_prefix: String,
    pub connect_timeout: Duration,
    pub slot: Slot,
    /// Sockets this process may hold at once.
    pub socket_budget: u64,
}

impl Ctx {
    /// Connects within `connect_timeout`, counting the attempt and any
    /// failure (with its reason in `errors`); `None` if it failed.
    pub async fn connect_counted(
        &self,
        meeting: &str,
        user: &str,
        publishes: bool,
    ) -> Option<Conn> {
        let c = &self.counters;
        Counters::inc(&c.attempted);
        match tokio::time::timeout(
            self.connect_timeout,
            self.endpoint.connect(meeting, user, publishes),
        )
        .await
        {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(e)) => {
                Counters::inc(&c.failed);
                self.errors.note(format!("{e:#}"));
                None
            }
            Err(_) => {
                Counters::inc(&c.failed);
                self.errors.note(format!(
                    "connect timed out after {:?}",
                    self.connect_timeout
                ));
                None
            }
        }
    }

    pub fn meeting(&self, room: u64) -> String {
        format!("{}-{room}", self.room_prefix)
    }

    /// When ramped connection `g` of `n` should start, at `rate` per second.
    pub fn ramp_at(&self, g: u64, rate: f64) -> Instant {
        self.timeline.t0 + Duration::from_secs_f64(g as f64 / rate)
    }
}

/// Spawns `make(g)` for each of this worker's `g` in `0..n`, each at the
/// instant `at(g)` (non-decreasing in `g`), without waiting for any: an
/// open-loop ramp. Stops spawning at `stop`.
pub async fn spawn_paced<F, T, Fut>(
    ctx: &Arc<Ctx>,
    tasks: &mut JoinSet<()>,
    n: u64,
    stop: Instant,
    at: impl Fn(u64) -> Instant,
    mut make: F,
) where
    F: FnMut(u64, Instant) -> Option<Fut>,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    for g in (0..n).filter(|g| ctx.slot.mine(*g)) {
        let when = at(g);
        if when >= stop {
            break;
        }
        tokio::time::sleep_until(when.into()).await;
        if let Some(fut) = make(g, when) {
            tasks.spawn(async move {
                fut.await;
            });
        }
        // Reap finished tasks as we go so a long churn does not pile up
        // completed handles.
        while tasks.try_join_next().is_some() {}
    }
}

/// Waits for every task, but not past `deadline`; stragglers are aborted.
pub async fn join_all(tasks: &mut JoinSet<()>, deadline: Instant) {
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline.into(), all).await.is_err() {
        tasks.abort_all();
    }
}

pub fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}
