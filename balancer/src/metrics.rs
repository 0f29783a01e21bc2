//! The balancer's Prometheus metrics, in the default registry that
//! `pingora-prometheus` serves on the admin listener.

use prometheus::{
    register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

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
}

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
                "Rooms the nodes moved to a new owner after a ring change, as they reported"
            )?,
            view_pushes: register_int_counter_vec!(
                "roompin_balancer_view_pushes_total",
                "Ownership views pushed to nodes, by result",
                &["result"]
            )?,
        })
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
