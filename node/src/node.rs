//! The node's shared state, handed to every HTTP handler and session.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::history::Budget;
use crate::metrics::Metrics;
use crate::ownership::Ownership;
use crate::params::routed_by;
use crate::rooms::Rooms;
use roompin_shared::config::NodeConfig;
use roompin_shared::MeetingId;

pub struct Node {
    pub id: Arc<str>,
    pub settings: NodeConfig,
    pub rooms: Rooms,
    pub ownership: Ownership,
    pub metrics: Metrics,
    /// Set on SIGTERM: `/healthz` answers 503 so the balancer routes away.
    pub draining: AtomicBool,
    /// Cancelled when the node stops; every long-lived task watches it.
    pub shutdown: CancellationToken,
    /// Every session and background task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    next_conn: AtomicU64,
}

impl Node {
    pub fn new(id: String, settings: NodeConfig, metrics: Metrics) -> Arc<Node> {
        let id: Arc<str> = Arc::from(id);
        let budget = Arc::new(Budget::new(
            settings.history_bytes,
            metrics.history_bytes.clone(),
        ));
        Arc::new(Node {
            rooms: Rooms::new(id.clone(), settings.history_events, budget, metrics.clone()),
            ownership: Ownership::new(id.to_string()),
            id,
            settings,
            metrics,
            draining: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
        })
    }

    /// A connection id unique within this node's lifetime: `<node>.<n>`.
    pub fn next_conn_id(&self) -> Arc<str> {
        let n = self.next_conn.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}.{n}", self.id))
    }

    /// The 421 for a meeting another node owns, if it does (see
    /// `Ownership::check`).
    pub fn misrouted(&self, meeting: &MeetingId, headers: &HeaderMap) -> Option<Response> {
        let m = self.ownership.check(meeting, routed_by(headers)).err()?;
        self.metrics.misrouted.inc();
        Some((StatusCode::MISDIRECTED_REQUEST, m.to_string()).into_response())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
