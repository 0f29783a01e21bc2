//! What is recorded when a request on the public listener ends, whichever
//! path served it: `roompin_balancer_requests_total{route,status}` and the
//! per-connection log line with its meeting, node, status and duration.

use std::time::Instant;

use crate::metrics::Metrics;
use crate::route::Route;

/// A request's facts, filled in as it goes.
#[derive(Debug)]
pub struct Outcome {
    pub route: Route,
    pub meeting: Option<String>,
    pub node: Option<String>,
    /// The status the client got; 0 for none (it went away first).
    pub status: u16,
    pub started: Instant,
}

impl Outcome {
    pub fn new(route: Route, started: Instant) -> Outcome {
        Outcome {
            route,
            meeting: None,
            node: None,
            status: 0,
            started,
        }
    }

    /// Counts the request and writes its log line (none for the page).
    pub fn record(&self, metrics: &Metrics, error: Option<&str>) {
        metrics
            .requests
            .with_label_values(&[self.route.label(), &self.status.to_string()])
            .inc();
        if self.route != Route::Page {
            tracing::info!(
                route = self.route.label(),
                meeting = self.meeting.as_deref().unwrap_or("-"),
                node = self.node.as_deref().unwrap_or("-"),
                status = self.status,
                secs = self.started.elapsed().as_secs_f64(),
                error,
                "request done"
            );
        }
    }
}
