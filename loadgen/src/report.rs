//! The result: one JSON object per run (the schema is in loadgen/README.md)
//! and a few human lines on stderr.
//!
//! Loss is judged the strongest way the protocol allows: by seq where there
//! are seqs (gaps, plus tail messages no later seq exposed), else by counting
//! what steady members received against what was published into their room.

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::cli::{Mode, ProtocolKind, Transport};
use crate::plan::Plan;
use crate::procstat::ProcessReport;
use crate::stats::Merged;

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub protocol: ProtocolKind,
    pub transport: Transport,
    pub target: String,
    pub params: Value,
    pub settings: Settings,
    pub started_unix_ms: u64,
    /// Length of the measured window, seconds.
    pub duration_s: f64,
    /// Whole run, ramp to close, seconds.
    pub wall_s: f64,
    pub connections: Connections,
    pub sent: u64,
    pub send_errors: u64,
    /// Sends due in the window but not made by its end: the publisher fell
    /// behind (see latency) or lost its connection.
    pub unsent: u64,
    /// Chat messages received, all members together.
    pub received: u64,
    /// All frames (or SSE events) received, welcome/join/leave included.
    pub frames_received: u64,
    /// What members present for the whole window should have received
    /// between them (fanout and churn; `null` elsewhere).
    pub expected: Option<u64>,
    pub received_by_steady: Option<u64>,
    pub lost: u64,
    pub duplicates: u64,
    pub loss: LossDetail,
    pub server_errors: u64,
    pub latency: Latency,
    pub connect_latency: Latency,
    /// `received` per second of the measured window.
    pub delivered_per_sec: f64,
    pub processes: Vec<ProcessReport>,
    /// CPU seconds the loadgen itself used, workers included.
    pub loadgen_cpu_seconds: f64,
    /// Its CPU over the window and drain (the `--pid` processes'
    /// `cpu_seconds_window` span), all workers together.
    pub loadgen_cpu_seconds_window: f64,
    /// That over the span's length: 1.0 is one core busy throughout, the
    /// sign that the loadgen, not the server, set the pace.
    pub loadgen_cpu_share: f64,
    /// Errors by kind, most frequent first.
    pub errors: Vec<ErrorCount>,
}

#[derive(Debug, Serialize)]
pub struct ErrorCount {
    pub message: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub workers: usize,
    pub ramp_per_sec: f64,
    pub settle_s: f64,
    pub drain_s: f64,
    pub connect_timeout_s: f64,
    pub source_ips: String,
    pub room_prefix: String,
}

#[derive(Debug, Serialize)]
pub struct Connections {
    /// Connections the ramp was to open (churn arrivals not included).
    pub planned: u64,
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    /// Attempts still connecting when the run ended (a ramp faster than
    /// the server, or the loadgen, can take).
    pub unfinished: u64,
    /// Ended by the server (or the network) before we closed them.
    pub dropped: u64,
    /// Churn arrivals not attempted because the socket budget was full.
    pub skipped: u64,
    /// Storm: connections back after the storm, and those that failed.
    pub reconnected: u64,
    pub reconnect_failed: u64,
}

#[derive(Debug, Serialize)]
pub struct LossDetail {
    /// "seq", "count", "timeout" (rtt) or "none".
    pub method: &'static str,
    pub seq_gaps: u64,
    /// Seqs up to the room's last message that steady members never got.
    pub tail: u64,
    /// Count-based shortfall (protocols without seqs).
    pub count_shortfall: u64,
    pub timeouts: u64,
    pub late: u64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    /// "delivery" (intended send → receipt at each member), "rtt" (intended
    /// send → own message back) or "connect" (intended connect → ready).
    pub measures: &'static str,
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    fn of(measures: &'static str, h: &Histogram<u64>) -> Latency {
        let q = |q: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        Latency {
            measures,
            count: h.len(),
            p50_us: q(0.50),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            mean_us: if h.is_empty() {
                0.0
            } else {
                (h.mean() * 10.0).round() / 10.0
            },
        }
    }
}

pub struct RunFacts {
    pub started_unix_ms: u64,
    pub wall_s: f64,
    pub source_ips: String,
    pub room_prefix: String,
    pub processes: Vec<ProcessReport>,
    pub loadgen_cpu_seconds: f64,
}

impl Report {
    pub fn build(mode: &Mode, plan: &Plan, m: &Merged, facts: RunFacts) -> Report {
        let common = mode.common();
        let c = &m.counts;
        let seq = crate::protocol::Protocol(common.protocol).has_seq();
        let tail: u64 = m.rooms.values().map(|r| r.tail_lost()).sum();
        let shortfall: u64 = m.rooms.values().map(|r| r.shortfall()).sum();
        let surplus: u64 = m.rooms.values().map(|r| r.surplus()).sum();
        let has_rooms_expectation = matches!(mode, Mode::Fanout(_) | Mode::Churn(_));
        let (method, lost, duplicates) = match mode {
            Mode::Rtt(_) => ("timeout", c.timeouts, c.duplicates),
            _ if seq => ("seq", c.seq_gaps + tail, c.duplicates),
            // Without seqs only fan-out has a sound expectation: churners
            // come and go mid-stream, idle sends nothing.
            Mode::Fanout(_) => ("count", shortfall, surplus),
            _ => ("none", 0, 0),
        };
        let duration_s = common.duration.as_secs_f64();
        let measures = match mode {
            Mode::Fanout(_) | Mode::Churn(_) => "delivery",
            Mode::Rtt(_) => "rtt",
            Mode::Idle(_) => "connect",
            Mode::Storm(_) => "reconnect",
        };
        let cpu_window = c.cpu_window_ms as f64 / 1000.0;
        let span = duration_s + common.drain.as_secs_f64();
        Report {
            mode: mode.name(),
            protocol: common.protocol,
            transport: common.transport,
            target: common.target.clone(),
            params: plan.params.clone(),
            settings: Settings {
                workers: plan.workers,
                ramp_per_sec: common.ramp,
                settle_s: common.settle.as_secs_f64(),
                drain_s: common.drain.as_secs_f64(),
                connect_timeout_s: common.connect_timeout.as_secs_f64(),
                source_ips: facts.source_ips,
                room_prefix: facts.room_prefix,
            },
            started_unix_ms: facts.started_unix_ms,
            duration_s,
            wall_s: (facts.wall_s * 1000.0).round() / 1000.0,
            connections: Connections {
                planned: plan.ramp_connections,
                attempted: c.attempted,
                ok: c.connected,
                failed: c.failed,
                unfinished: c.attempted.saturating_sub(c.connected + c.failed),
                dropped: c.dropped,
                skipped: c.skipped,
                reconnected: c.reconnected,
                reconnect_failed: c.reconnect_failed,
            },
            sent: c.sent,
            send_errors: c.send_errors,
            unsent: c.unsent,
            received: c.received,
            frames_received: c.frames,
            expected: has_rooms_expectation.then(|| m.rooms.values().map(|r| r.expected()).sum()),
            received_by_steady: has_rooms_expectation
                .then(|| m.rooms.values().map(|r| r.steady_received).sum()),
            lost,
            duplicates,
            loss: LossDetail {
                method,
                seq_gaps: c.seq_gaps,
                tail,
                count_shortfall: shortfall,
                timeouts: c.timeouts,
                late: c.late,
            },
            server_errors: c.server_errors,
            latency: Latency::of(measures, &m.latency),
            connect_latency: Latency::of("connect", &m.connect_latency),
            delivered_per_sec: if duration_s > 0.0 {
                (c.received as f64 / duration_s).round()
            } else {
                0.0
            },
            processes: facts.processes,
            loadgen_cpu_seconds: facts.loadgen_cpu_seconds,
            loadgen_cpu_seconds_window: cpu_window,
            loadgen_cpu_share: if span > 0.0 {
                (cpu_window / span * 1000.0).round() / 1000.0
            } else {
                0.0
            },
            errors: {
                let mut v: Vec<_> = m
                    .errors
                    .iter()
                    .map(|(message, &count)| ErrorCount {
                        message: message.clone(),
                        count,
                    })
                    .collect();
                v.sort_by_key(|e| std::cmp::Reverse(e.count));
                v
            },
        }
    }

    /// A few lines for a person watching the terminal.
    pub fn summary(&self) -> String {
        let l = &self.latency;
        let mut s = format!(
            "{} ({}, {} worker(s)): {} of {} connections ok, {} failed, {} unfinished, {} dropped\n\
             sent {}, received {} ({:.0}/s), lost {}, duplicates {} [{}]\n\
             {} latency over {} samples: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            self.mode,
            self.transport_name(),
            self.settings.workers,
            self.connections.ok,
            self.connections.attempted,
            self.connections.failed,
            self.connections.unfinished,
            self.connections.dropped,
            self.sent,
            self.received,
            self.delivered_per_sec,
            self.lost,
            self.duplicates,
            self.loss.method,
            l.measures,
            l.count,
            l.p50_us,
            l.p99_us,
            l.p999_us,
            l.max_us
        );
        s.push_str(&format!(
            "\nloadgen cpu {:.2} s over {:.1} s ({:.0}% of a core in the window)",
            self.loadgen_cpu_seconds,
            self.wall_s,
            self.loadgen_cpu_share * 100.0
        ));
        if self.mode == "storm" {
            s.push_str(&format!(
                "\nstorm: {} reconnected, {} failed, the last after {} ms",
                self.connections.reconnected,
                self.connections.reconnect_failed,
                self.latency.max_us / 1000
            ));
        }
        for p in &self.processes {
            s.push_str(&format!(
                "\npid {}: cpu {:.2} s (window {:.2} s), rss {} → {} KiB",
                p.pid,
                p.cpu_seconds.unwrap_or(0.0),
                p.cpu_seconds_window.unwrap_or(0.0),
                p.rss_before_kib.unwrap_or(0),
                p.rss_loaded_kib.unwrap_or(0)
            ));
        }
        for e in &self.errors {
            s.push_str(&format!("\nerror ×{}: {}", e.count, e.message));
        }
        s
    }

    fn transport_name(&self) -> String {
        let t = match self.transport {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        };
        let p = match self.protocol {
            ProtocolKind::Roompin => "roompin",
            ProtocolKind::Plain => "plain",
            ProtocolKind::Socketio => "socketio",
        };
        format!("{p}/{t}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::stats::{new_histogram, Counts, RoomTally};
    use clap::Parser;

    fn report(args: &[&str], counts: Counts, room: RoomTally) -> Report {
        let cli = Cli::try_parse_from(std::iter::once("lg").chain(args.iter().copied()));
        let Ok(cli) = cli else {
            panic!("bad test args {args:?}")
        };
        let Ok(plan) = Plan::new(&cli.mode) else {
            panic!("bad plan {args:?}")
        };
        let merged = Merged {
            counts,
            latency: new_histogram(),
            connect_latency: new_histogram(),
            rooms: [(0, room)].into(),
            errors: Default::default(),
        };
        let facts = RunFacts {
            started_unix_ms: 0,
            wall_s: 1.0,
            source_ips: "none".into(),
            room_prefix: "p".into(),
            processes: vec![],
            loadgen_cpu_seconds: 0.0,
        };
        Report::build(&cli.mode, &plan, &merged, facts)
    }

    fn room() -> RoomTally {
        RoomTally {
            sent: 10,
            max_message_seq: 14,
            steady: 3,
            steady_received: 27,
            steady_gaps: 1,
            last_seqs: [(14, 2), (12, 1)].into(),
        }
    }

    #[test]
    fn roompin_loss_is_gaps_plus_tail() {
        let counts = Counts {
            seq_gaps: 1,
            duplicates: 2,
            ..Default::default()
        };
        let r = report(&["fanout"], counts, room());
        assert_eq!((r.loss.method, r.lost, r.duplicates), ("seq", 1 + 2, 2));
        assert_eq!((r.expected, r.received_by_steady), (Some(30), Some(27)));
    }

    #[test]
    fn plain_loss_is_counted() {
        let r = report(
            &["fanout", "--protocol", "plain"],
            Counts::default(),
            room(),
        );
        assert_eq!((r.loss.method, r.lost, r.duplicates), ("count", 3, 0));
        let r = report(&["churn", "--protocol", "plain"], Counts::default(), room());
        assert_eq!((r.loss.method, r.lost), ("none", 0));
    }

    #[test]
    fn rtt_loss_is_timeouts() {
        let counts = Counts {
            timeouts: 4,
            seq_gaps: 4,
            ..Default::default()
        };
        let r = report(&["rtt"], counts, RoomTally::default());
        assert_eq!((r.loss.method, r.lost, r.expected), ("timeout", 4, None));
    }
}
