//! The balancer's Prometheus metrics, in the default registry that
//! `pingora-prometheus` serves on the admin listener. docs/METRICS.md lists
//! each one with the question it answers; the `metrics_catalogue` test fails
//! when this file and that list disagree.
//!
//! Labels have bounded values only: an upstream id, a route, a status, a
//! result; never a meeting id.

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// Buckets of `roompin_balancer_upstream_connect_seconds`: a node on the
/// same host or LAN connects in well under a millisecond; the proxy gives up
/// after one second (`CONNECT_TIMEOUT` in proxy.rs).
const CONNECT_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Clone)]
pub struct Metrics {
    /// Open proxied WebSockets per upstream.
    pub connections: IntGaugeVec,
    /// Open proxied SSE streams per upstream.
    pub streams: IntGaugeVec,
    pub requests: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_healthy: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub ring_epoch: IntGauge,
    pub rooms_moved: IntCounter,
    pub view_pushes: IntCounterVec,
    pub upstream_control_ok: IntGaugeVec,
    /// Time to open a new TCP connection to an upstream, by upstream. To be
    /// observed by the proxy path (docs/METRICS.md marks it pending until
    /// then): from `upstream_peer` to `connected_to_upstream` for a fresh
    /// (not reused) connection.
    pub upstream_connect_seconds: HistogramVec,
    /// Member requests refused for their join token, by `Failure::label`.
    pub auth_failures: IntCounterVec,
    /// Member requests refused for their `Origin`.
    pub origin_refusals: IntCounter,
    /// Client connections the public listener holds (`capacity.rs`).
    pub client_connections: IntGauge,
    /// New connections answered 503 at `max_connections`.
    pub connections_refused: IntCounter,
    /// Connections still waiting for a head, closed to make room.
    pub connections_evicted: IntCounter,
    /// Probes, pushes and connects that failed for want of a local
    /// resource (`shortage.rs`), by what was being done.
    pub local_shortages: IntCounterVec,
}

/// The `during` values of `roompin_balancer_local_shortages_total`.
pub const SHORTAGE_DURING: [&str; 3] = ["probe", "push", "connect"];

impl Metrics {
    pub fn register() -> prometheus::Result<Metrics> {
        Ok(Metrics {
            connections: register_int_gauge_vec!(
                "roompin_balancer_connections",
                "Open proxied WebSocket connections, by upstream",
                &["upstream"]
            )?,
            streams: register_int_gauge_vec!(
                "roompin_balancer_sse_streams",
                "Open proxied SSE streams, by upstream",
                &["upstream"]
            )?,
            requests: register_int_counter_vec!(
                "roompin_balancer_requests_total",
                "Requests on the public listener, by route and response status",
                &["route", "status"]
            )?,
            upstream_errors: register_int_counter_vec!(
                "roompin_balancer_upstream_errors_total",
                "Failed connections or proxy errors, by upstream",
                &["upstream"]
            )?,
            upstream_healthy: register_int_gauge_vec!(
                "roompin_balancer_upstream_healthy",
                "1 when the upstream owns meetings, 0 when it is out of the ring",
                &["upstream"]
            )?,
            config_reloads: register_int_counter_vec!(
                "roompin_balancer_config_reloads_total",
                "Config reloads, by result (ok or error)",
                &["result"]
            )?,
            ring_epoch: register_int_gauge!(
                "roompin_balancer_ring_epoch",
                "Epoch of the ring in force; bumped by any change of members, weights or health"
            )?,
            rooms_moved: register_int_counter!(
                "roompin_balancer_rooms_moved_total",
                "Rooms the nodes started handing to a new owner after a view push, as they reported"
            )?,
            view_pushes: register_int_counter_vec!(
                "roompin_balancer_view_pushes_total",
                "Ownership views pushed to nodes, by result",
                &["result"]
            )?,
            upstream_control_ok: register_int_gauge_vec!(
                "roompin_balancer_upstream_control_ok",
                "1 when the last view push to the node worked, 0 when it failed (a wrong control token, the node out of reach): a node that gets no views cannot be told to move rooms",
                &["upstream"]
            )?,
            upstream_connect_seconds: register_histogram_vec!(
                "roompin_balancer_upstream_connect_seconds",
                "Time to open a TCP connection to an upstream, by upstream",
                &["upstream"],
                CONNECT_BUCKETS.to_vec()
            )?,
            auth_failures: register_int_counter_vec!(
                "roompin_balancer_auth_failures_total",
                "Member requests refused for their join token (401 or 403), by reason",
                &["reason"]
            )?,
            origin_refusals: register_int_counter!(
                "roompin_balancer_origin_refusals_total",
                "Member requests refused (403) because their Origin is not in allowed_origins"
            )?,
            client_connections: register_int_gauge!(
                "roompin_balancer_client_connections",
                "Client connections the public listener holds, of any kind (max_connections caps them)"
            )?,
            connections_refused: register_int_counter!(
                "roompin_balancer_connections_refused_total",
                "New client connections answered 503 because max_connections were busy"
            )?,
            connections_evicted: register_int_counter!(
                "roompin_balancer_connections_evicted_total",
                "Client connections still waiting for a request head, closed at max_connections to make room"
            )?,
            local_shortages: register_int_counter_vec!(
                "roompin_balancer_local_shortages_total",
                "Health probes, view pushes and node connects that failed for want of a local resource (descriptors, ports, buffers): not counted against the node",
                &["during"]
            )?,
        }
        .with_results_at_zero())
    }

    /// Counters with a fixed set of results exist from the start, at 0, so
    /// `rate()` and an alert on `result="error"` see the first increment.
    fn with_results_at_zero(self) -> Metrics {
        for result in ["ok", "error"] {
            self.config_reloads.with_label_values(&[result]);
            self.view_pushes.with_label_values(&[result]);
        }
        for failure in roompin_shared::auth::Failure::ALL {
            self.auth_failures.with_label_values(&[failure.label()]);
        }
        for during in SHORTAGE_DURING {
            self.local_shortages.with_label_values(&[during]);
        }
        self
    }
}

#[cfg(test)]
impl Metrics {
    /// The process's one registration, shared by every unit test (the
    /// default registry refuses a second one).
    pub fn for_tests() -> Metrics {
        static M: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
        M.get_or_init(|| Metrics::register().expect("the first registration"))
            .clone()
    }
}
