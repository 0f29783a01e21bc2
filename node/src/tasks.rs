//! How a node starts its tasks: every one on the node's `TaskTracker`, so
//! that shutdown can wait for it, and under `catch_unwind`, so that a panic
//! is logged and counted (`roompin_node_task_panics_total{task}`) instead
//! of vanishing with its task.

use futures_util::FutureExt;
use prometheus::IntCounterVec;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::node::Node;

/// A WebSocket session: its reader, which runs the session.
pub const WEBSOCKET: &str = "websocket";
/// A WebSocket session's writer.
pub const WRITER: &str = "writer";
/// One HTTP connection, and so every request on it, SSE streams included.
pub const CONNECTION: &str = "connection";
pub const REAPER: &str = "reaper";
pub const MOVER: &str = "mover";
pub const FENCE: &str = "fence";
pub const SIGNALS: &str = "signals";
/// A claim round (`claim.rs`).
pub const CLAIM: &str = "claim";
/// A handoff batch, or the settlement of one (`mover.rs`).
pub const HANDOFF: &str = "handoff";
/// Where-is questions to one peer (`peers.rs`).
pub const PEER: &str = "peer";
/// A member forwarded to the holder of its room (`relay.rs`).
pub const RELAY: &str = "relay";
/// Every `task` label, exposed at zero from the start.
pub const ALL: [&str; 11] = [
    WEBSOCKET, WRITER, CONNECTION, REAPER, MOVER, FENCE, SIGNALS, CLAIM, HANDOFF, PEER, RELAY,
];

/// Spawns `fut` on the node's tracker inside `span`. The handle yields
/// `None` if it panicked.
pub fn spawn<F>(
    node: &Node,
    task: &'static str,
    span: tracing::Span,
    fut: F,
) -> JoinHandle<Option<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_on(&node.tasks, &node.metrics.task_panics, task, span, fut)
}

/// [`spawn`] with the tracker and counter given apart, for tests.
pub fn spawn_on<F>(
    tracker: &TaskTracker,
    panics: &IntCounterVec,
    task: &'static str,
    span: tracing::Span,
    fut: F,
) -> JoinHandle<Option<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let panics = panics.clone();
    tracker.spawn(
        async move {
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(out) => Some(out),
                Err(payload) => {
                    panics.with_label_values(&[task]).inc();
                    tracing::error!(task, panic = %message(&*payload), "task panicked");
                    None
                }
            }
        }
        .instrument(span),
    )
}

fn message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    #[tokio::test]
    async fn a_panic_is_counted_and_the_tracker_still_drains() {
        let tracker = TaskTracker::new();
        let panics = IntCounterVec::new(Opts::new("p", "p"), &["task"]).expect("counter");
        let ok = spawn_on(&tracker, &panics, WRITER, tracing::Span::none(), async {
            7
        });
        let boom = spawn_on(&tracker, &panics, WEBSOCKET, tracing::Span::none(), async {
            if panics_now() {
                panic!("boom");
            }
        });
        assert_eq!(ok.await.ok(), Some(Some(7)));
        assert_eq!(boom.await.ok(), Some(None));
        assert_eq!(panics.with_label_values(&[WEBSOCKET]).get(), 1);
        assert_eq!(panics.with_label_values(&[WRITER]).get(), 0);
        tracker.close();
        tracker.wait().await;
    }

    fn panics_now() -> bool {
        true
    }
}
