//! The node's Prometheus metrics, registered once in the default registry.

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
};

/// Cheap to clone: every field is an `Arc` inside.
#[derive(Clone)]
pub struct Metrics {
    pub connections: IntGauge,
    pub rooms: IntGauge,
    pub events_received: IntCounter,
    pub frames_delivered: IntCounter,
    pub broadcast_seconds: Histogram,
    pub slow_consumers: IntCounter,
    pub history_bytes: IntGauge,
    pub closes: IntCounterVec,
    pub rooms_moved: IntCounter,
    pub handoffs: IntCounterVec,
    pub handoff_seconds: HistogramVec,
    pub misrouted: IntCounter,
    pub claim_rounds: IntCounterVec,
    pub admission_seconds: Histogram,
    pub relayed: IntCounterVec,
    pub fenced: IntGauge,
    pub task_panics: IntCounterVec,
}

impl Metrics {
    pub fn register() -> prometheus::Result<Metrics> {
        Ok(Metrics {
            connections: register_int_gauge!(
                "roompin_node_connections",
                "Open client connections (WebSocket and SSE)"
            )?,
            rooms: register_int_gauge!("roompin_node_rooms", "Rooms held in memory")?,
            events_received: register_int_counter!(
                "roompin_node_events_received_total",
                "Client messages accepted for broadcast (WebSocket and HTTP publish)"
            )?,
            frames_delivered: register_int_counter!(
                "roompin_node_frames_delivered_total",
                "Frames written to clients"
            )?,
            broadcast_seconds: register_histogram!(
                "roompin_node_broadcast_seconds",
                "Time to fan one event out to every member's queue",
                vec![1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2]
            )?,
            slow_consumers: register_int_counter!(
                "roompin_node_slow_consumers_total",
                "Members dropped because their send queue overflowed"
            )?,
            history_bytes: register_int_gauge!(
                "roompin_node_history_bytes",
                "Bytes of room history held by the node"
            )?,
            closes: register_int_counter_vec!(
                "roompin_node_closes_total",
                "Connections ended, by the code of the close frame the node sent (1005: an empty one; other: a client's own 3000-4999 code echoed back; 1006: none, the connection ended without a closing handshake)",
                &["code"]
            )?,
            rooms_moved: register_int_counter!(
                "roompin_node_rooms_moved_total",
                "Rooms this node gave away because another node owns them now"
            )?,
            handoffs: register_int_counter_vec!(
                "roompin_node_handoffs_total",
                "Room handoffs by direction (sent, received) and result (adopted, duplicate, conflict, draining, fenced, aborted, invalid, unreachable, unknown, adopted_late)",
                &["direction", "result"]
            )?,
            handoff_seconds: register_histogram_vec!(
                "roompin_node_handoff_seconds",
                "From closing a room for a move to knowing its handoff's outcome",
                &["direction"],
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
            )?,
            claim_rounds: register_int_counter_vec!(
                "roompin_node_claim_rounds_total",
                "Rounds of asking the peers where a meeting's room is, by outcome (create, relay, await_handoff, retry)",
                &["outcome"]
            )?,
            admission_seconds: register_histogram!(
                "roompin_node_admission_seconds",
                "How long a member request waited for its meeting's room (claim round, move in flight)",
                vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0]
            )?,
            relayed: register_int_counter_vec!(
                "roompin_node_relayed_total",
                "Member requests forwarded to the node holding their meeting's room, by route",
                &["route"]
            )?,
            fenced: register_int_gauge!(
                "roompin_node_fenced",
                "1 while the node has no fresh view of any balancer and serves no room"
            )?,
            misrouted: register_int_counter!(
                "roompin_node_misrouted_total",
                "Requests refused with 421 because another node owns the meeting"
            )?,
            task_panics: register_int_counter_vec!(
                "roompin_node_task_panics_total",
                "Tasks that panicked, by task (websocket, writer, connection, reaper, mover, fence, signals); each is also logged at error",
                &["task"]
            )?,
        })
    }
}
