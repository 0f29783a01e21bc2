//! The node's Prometheus metrics, registered once in the default registry.
//! docs/METRICS.md lists each one with the question it answers; the
//! `metrics_catalogue` test fails when this file and that list disagree.
//!
//! Labels have bounded values only: never a meeting id or a connection id.

use prometheus::proto::MetricFamily;
use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec,
};

/// Cheap to clone: every field is an `Arc` inside.
#[derive(Clone)]
pub struct Metrics {
    /// Open client connections by `transport`: use [`Metrics::open`] and
    /// [`Metrics::open_connections`].
    pub connections: IntGaugeVec,
    pub rooms: IntGauge,
    pub events_received: IntCounter,
    pub frames_delivered: IntCounter,
    pub broadcast_seconds: Histogram,
    pub slow_consumers: IntCounter,
    pub history_bytes: IntGauge,
    pub history_evicted: IntCounterVec,
    pub history_share_bytes: IntGauge,
    pub closes: IntCounterVec,
    pub rooms_moved: IntCounter,
    pub handoffs: IntCounterVec,
    pub handoff_seconds: HistogramVec,
    pub misrouted: IntCounter,
    pub claim_rounds: IntCounterVec,
    pub admission_seconds: Histogram,
    pub relayed: IntCounterVec,
    pub fenced: IntGauge,
    pub fences: IntCounter,
    pub task_panics: IntCounterVec,
    // What facing the internet costs (docs/SECURITY.md).
    pub auth_failures: IntCounterVec,
    pub limit_refusals: IntCounterVec,
    pub rate_limited: IntCounter,
    pub http_timeouts: IntCounterVec,
    pub sockets: IntGauge,
    pub socket_evictions: IntCounter,
    pub control_refusals: IntCounterVec,
    pub heap_bytes: IntGaugeVec,
}

impl Metrics {
    pub fn register() -> prometheus::Result<Metrics> {
        Ok(Metrics {
            connections: {
                let v = register_int_gauge_vec!(
                    "roompin_node_connections",
                    "Open client connections, by transport (websocket or sse)",
                    &["transport"]
                )?;
                // Both series exist from the start, at 0, so sum() and
                // rate() see them before the first client.
                for t in Transport::ALL {
                    v.with_label_values(&[t.label()]);
                }
                v
            },
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
            history_evicted: register_int_counter_vec!(
                "roompin_node_history_evicted_total",
                "Events dropped from room history, by reason (history_events: the room's count; history_bytes: the node's budget took the oldest above a room's share; full: the node was full and a room within its share lost events)",
                &["reason"]
            )?,
            history_share_bytes: register_int_gauge!(
                "roompin_node_history_share_bytes",
                "The history each room keeps whatever the others do: history_bytes divided by the rooms"
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
            fences: register_int_counter!(
                "roompin_node_fences_total",
                "Times the node's lease lapsed and it fenced itself, closing its rooms"
            )?,
            misrouted: register_int_counter!(
                "roompin_node_misrouted_total",
                "Requests refused with 421 because another node owns the meeting"
            )?,
            task_panics: register_int_counter_vec!(
                "roompin_node_task_panics_total",
                "Tasks that panicked, by task (websocket, writer, connection, reaper, mover, fence, signals, claim, handoff, peer, relay); each is also logged at error",
                &["task"]
            )?,
            auth_failures: register_int_counter_vec!(
                "roompin_node_auth_failures_total",
                "Member requests refused for their join token (401, 403), by reason",
                &["reason"]
            )?,
            limit_refusals: register_int_counter_vec!(
                "roompin_node_limit_refusals_total",
                "Requests refused with 503 at a limit, by limit (connections, rooms, sockets)",
                &["limit"]
            )?,
            rate_limited: register_int_counter!(
                "roompin_node_rate_limited_total",
                "Client WebSocket frames over the client's rate limit (messages not published, pings counted)"
            )?,
            http_timeouts: register_int_counter_vec!(
                "roompin_node_http_timeouts_total",
                "HTTP connections or requests cut at a deadline, by phase (head, body, keep_alive)",
                &["phase"]
            )?,
            sockets: register_int_gauge!(
                "roompin_node_sockets",
                "TCP connections held, of any kind (HTTP, WebSocket, SSE), against max_sockets"
            )?,
            socket_evictions: register_int_counter!(
                "roompin_node_socket_evictions_total",
                "Connections with no request in flight closed at max_sockets to make room for a new one"
            )?,
            control_refusals: register_int_counter_vec!(
                "roompin_node_control_refusals_total",
                "/control/* requests refused, by reason (unauthorized 401, disabled 403, too_large 413, bad_body 400)",
                &["reason"]
            )?,
            heap_bytes: register_int_gauge_vec!(
                "roompin_node_heap_bytes",
                "The heap, read at each scrape, by kind (allocated: what malloc handed out; free: free bytes in malloc's arenas; resident: anonymous resident memory)",
                &["kind"]
            )?,
        }
        .with_labels_at_zero())
    }

    /// Counters whose label values are a fixed set exist from the start, at
    /// 0, so `rate()` and alerts see their first increment. The values are
    /// those relay.rs and claim.rs count under.
    fn with_labels_at_zero(self) -> Metrics {
        for route in ["websocket", "sse", "messages"] {
            self.relayed.with_label_values(&[route]);
        }
        for outcome in ["create", "relay", "await_handoff", "retry"] {
            self.claim_rounds.with_label_values(&[outcome]);
        }
        for phase in crate::deadline::PHASES {
            self.http_timeouts.with_label_values(&[phase]);
        }
        for failure in roompin_shared::auth::Failure::ALL {
            self.auth_failures.with_label_values(&[failure.label()]);
        }
        for kind in crate::heap::KINDS {
            self.heap_bytes.with_label_values(&[kind]);
        }
        for reason in crate::control::REFUSALS {
            self.control_refusals.with_label_values(&[reason]);
        }
        for limit in crate::guard::LIMITS {
            self.limit_refusals.with_label_values(&[limit]);
        }
        self
    }
}

impl Metrics {
    /// What the history pool keeps up to date.
    pub fn history(&self) -> crate::history::HistoryMetrics {
        crate::history::HistoryMetrics {
            bytes: self.history_bytes.clone(),
            evicted: self.history_evicted.clone(),
            share: self.history_share_bytes.clone(),
        }
    }

    /// The gauge of open connections over `transport`: increment it when
    /// one opens and decrement it when it ends.
    pub fn open(&self, transport: Transport) -> IntGauge {
        self.connections.with_label_values(&[transport.label()])
    }

    /// Open client connections over every transport.
    pub fn open_connections(&self) -> i64 {
        Transport::ALL.iter().map(|t| self.open(*t).get()).sum()
    }
}

/// How a client is connected: the `transport` label of
/// `roompin_node_connections`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::WebSocket, Transport::Sse];

    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

/// `roompin_node_room_members`: how many members the node's rooms have.
pub const ROOM_MEMBERS: &str = "roompin_node_room_members";

/// Room sizes the buckets of `roompin_node_room_members` separate: a
/// one-to-one call, small teams, classes, all-hands, webinars.
const ROOM_MEMBER_BUCKETS: [f64; 13] = [
    1.0, 2.0, 3.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
];

/// The members-per-room histogram, sampled now from each room's member
/// count: `_count` is the number of rooms, `_sum` the members of all of
/// them, and a bucket `le="N"` the rooms with at most N members.
///
/// It is a snapshot, built afresh on every scrape, not a count of events
/// since start: read it without `rate()`, e.g.
/// `histogram_quantile(0.99, sum by (le) (roompin_node_room_members_bucket))`.
/// (A cumulative histogram observed at joins would say how big rooms
/// *were*, weighted by churn, not how big they are.)
pub fn room_members(
    members_per_room: impl IntoIterator<Item = usize>,
) -> prometheus::Result<Vec<MetricFamily>> {
    use prometheus::core::Collector;
    let h = Histogram::with_opts(
        HistogramOpts::new(
            ROOM_MEMBERS,
            "Members per room, sampled from the rooms held when scraped",
        )
        .buckets(ROOM_MEMBER_BUCKETS.to_vec()),
    )?;
    for n in members_per_room {
        h.observe(n as f64);
    }
    Ok(h.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(f: &MetricFamily) -> Vec<(f64, u64)> {
        f.get_metric()[0]
            .get_histogram()
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect()
    }

    #[test]
    fn room_members_is_a_snapshot_of_room_sizes() {
        let families = room_members([1, 2, 2, 7, 0]).expect("valid histogram");
        assert_eq!(families.len(), 1);
        let f = &families[0];
        assert_eq!(f.name(), ROOM_MEMBERS);
        let h = f.get_metric()[0].get_histogram();
        assert_eq!(h.get_sample_count(), 5, "one observation per room");
        assert_eq!(h.get_sample_sum(), 12.0, "members of all rooms");
        let b = buckets(f);
        assert_eq!(b[0], (1.0, 2), "rooms of at most one member");
        assert_eq!(b[1], (2.0, 4));
        assert_eq!(b[4], (10.0, 5));
    }

    #[test]
    fn no_rooms_still_expose_the_histogram() {
        let families = room_members([]).expect("valid histogram");
        let h = families[0].get_metric()[0].get_histogram();
        assert_eq!((h.get_sample_count(), h.get_sample_sum()), (0, 0.0));
    }
}
