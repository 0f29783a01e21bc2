//! The plan: how many connections and sockets a command line asks for, how
//! long each phase lasts, and whether it fits. Every process (parent and
//! workers) derives the same plan from the same arguments.

pub mod workers;

use anyhow::bail;
use serde_json::{json, Value};
use std::time::Duration;

use crate::cli::{Mode, ProtocolKind, Transport};
use crate::limits::MAX_SOCKETS_PER_PROCESS;
use crate::timeline::Phases;

/// The most connections one run may open, all workers together.
const MAX_CONNECTIONS: u64 = 2_000_000;
const MAX_WORKERS: usize = 64;
const MAX_PAYLOAD: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Plan {
    /// Connections opened by the ramp (churn's arrivals come on top).
    pub ramp_connections: u64,
    /// Sockets open at once at the peak, all workers together.
    pub peak_sockets: u64,
    pub workers: usize,
    pub phases: Phases,
    /// The mode's own parameters, for the report.
    pub params: Value,
}

impl Plan {
    pub fn new(mode: &Mode) -> anyhow::Result<Plan> {
        let common = mode.common();
        let sse = common.transport == Transport::Sse;
        if sse && common.protocol != ProtocolKind::Roompin {
            bail!("--transport sse needs --protocol roompin: a plain WebSocket or Socket.IO server has no SSE here");
        }
        positive("--ramp", common.ramp)?;
        if common.workers == 0 || common.workers > MAX_WORKERS {
            bail!("--workers must be 1 to {MAX_WORKERS}");
        }
        if let Some(prefix) = &common.room_prefix {
            let ok = !prefix.is_empty()
                && prefix.len() <= 100
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b));
            if !ok {
                bail!("--room-prefix must be 1 to 100 of A-Z a-z 0-9 . _ ~ -");
            }
        }
        // Sockets per member that publishes, per member that only listens.
        let (pub_sockets, listen_sockets) = (if sse { 2 } else { 1 }, 1);
        let (ramp_connections, peak_sockets, params) = match mode {
            Mode::Fanout(a) => {
                at_least("--rooms", a.rooms, 1)?;
                at_least("--members", a.members, 1)?;
                if a.publishers > a.members {
                    bail!(
                        "--publishers ({}) cannot exceed --members ({})",
                        a.publishers,
                        a.members
                    );
                }
                positive("--rate", a.rate)?;
                payload(a.payload)?;
                let n = a.rooms.saturating_mul(a.members);
                let sockets = n + a.rooms * a.publishers * (pub_sockets - listen_sockets);
                let params = json!({
                    "rooms": a.rooms, "members": a.members, "publishers": a.publishers,
                    "rate": a.rate, "payload": a.payload,
                    "messages_per_sec": a.rate * (a.rooms * a.publishers) as f64,
                    "deliveries_per_sec": a.rate * (a.rooms * a.publishers * a.members) as f64,
                });
                (n, sockets, params)
            }
            Mode::Rtt(a) => {
                at_least("--conns", a.conns, 1)?;
                if !(a.rate >= 0.0 && a.rate.is_finite()) {
                    bail!("--rate must be 0 (back to back) or more");
                }
                payload(a.payload)?;
                let params = json!({
                    "conns": a.conns, "rate": a.rate, "payload": a.payload,
                    "timeout_ms": a.timeout.as_millis() as u64,
                });
                (a.conns, a.conns * pub_sockets, params)
            }
            Mode::Idle(a) => {
                at_least("--conns", a.conns, 1)?;
                at_least("--per-room", a.per_room, 1)?;
                let params = json!({ "conns": a.conns, "per_room": a.per_room });
                (a.conns, a.conns, params)
            }
            Mode::Storm(a) => {
                at_least("--conns", a.conns, 1)?;
                at_least("--per-room", a.per_room, 1)?;
                if a.gap >= common.duration {
                    bail!("--gap must be shorter than --duration: the reconnects happen in the window");
                }
                let params = json!({
                    "conns": a.conns, "per_room": a.per_room, "gap_ms": a.gap.as_millis() as u64,
                });
                // Each member closes before it reconnects.
                (a.conns, a.conns, params)
            }
            Mode::Churn(a) => {
                at_least("--rooms", a.rooms, 1)?;
                positive("--rate", a.rate)?;
                payload(a.payload)?;
                let base = a.rooms.saturating_mul(a.base);
                let arrivals = a.rate * common.duration.as_secs_f64();
                if arrivals > MAX_CONNECTIONS as f64 {
                    bail!("--rate × --duration asks for {arrivals:.0} connections; at most {MAX_CONNECTIONS}");
                }
                // Concurrent churners: arrivals during one hold, plus those
                // still connecting (allow a second of slow connects).
                let each = if a.messages > 0 {
                    pub_sockets
                } else {
                    listen_sockets
                };
                let churning = (a.rate * (a.hold.as_secs_f64() + 1.0)).ceil() as u64 * each;
                let params = json!({
                    "rate": a.rate, "hold_ms": a.hold.as_millis() as u64, "rooms": a.rooms,
                    "base": a.base, "messages": a.messages, "payload": a.payload,
                    "arrivals": arrivals.floor() as u64,
                });
                (base, base + churning, params)
            }
        };
        if ramp_connections > MAX_CONNECTIONS {
            bail!("this plan opens {ramp_connections} connections; at most {MAX_CONNECTIONS}");
        }
        let plan = Plan {
            ramp_connections,
            peak_sockets,
            workers: common.workers,
            phases: Phases {
                ramp: Duration::from_secs_f64(ramp_connections as f64 / common.ramp),
                settle: common.settle,
                measure: common.duration,
                drain: common.drain,
            },
            params,
        };
        let per = plan.sockets_per_process();
        if per > MAX_SOCKETS_PER_PROCESS {
            let need = plan.peak_sockets.div_ceil(MAX_SOCKETS_PER_PROCESS);
            bail!(
                "this plan holds up to {} sockets, {per} in each of {} process(es); one process may \
                 hold at most {MAX_SOCKETS_PER_PROCESS} (20,000 file descriptors each): raise --workers to at least {need}",
                plan.peak_sockets,
                plan.workers
            );
        }
        Ok(plan)
    }

    /// Sockets the busiest worker holds at the peak.
    pub fn sockets_per_process(&self) -> u64 {
        self.peak_sockets.div_ceil(self.workers as u64)
    }
}

fn positive(flag: &str, v: f64) -> anyhow::Result<()> {
    if !(v > 0.0 && v.is_finite()) {
        bail!("{flag} must be a positive number, got {v}");
    }
    Ok(())
}

fn at_least(flag: &str, v: u64, min: u64) -> anyhow::Result<()> {
    if v < min {
        bail!("{flag} must be at least {min}");
    }
    Ok(())
}

fn payload(len: usize) -> anyhow::Result<()> {
    if len > MAX_PAYLOAD {
        bail!("--payload must be at most {MAX_PAYLOAD} bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(std::iter::once("lg").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Plan::new(&cli.mode).map_err(|e| e.to_string())
    }

    #[test]
    fn refuses_too_many_sockets_per_process() {
        let err = plan(&["idle", "--conns", "20000"])
            .err()
            .unwrap_or_default();
        assert!(err.contains("raise --workers to at least 2"), "{err}");
        assert!(plan(&["idle", "--conns", "20000", "--workers", "2"]).is_ok());
        let err = plan(&[
            "fanout",
            "--rooms",
            "100",
            "--members",
            "100",
            "--publishers",
            "100",
            "--transport",
            "sse",
            "--workers",
            "1",
        ])
        .err()
        .unwrap_or_default();
        assert!(err.contains("20000 sockets"), "{err}");
    }

    #[test]
    fn phases_from_the_ramp() -> Result<(), String> {
        let p = plan(&[
            "fanout",
            "--rooms",
            "10",
            "--members",
            "50",
            "--ramp",
            "250",
        ])?;
        assert_eq!(p.ramp_connections, 500);
        assert_eq!(p.phases.ramp, Duration::from_secs(2));
        Ok(())
    }

    #[test]
    fn refuses_nonsense() {
        assert!(plan(&["fanout", "--publishers", "11"]).is_err());
        assert!(plan(&["fanout", "--rate", "0"]).is_err());
        assert!(plan(&["rtt", "--protocol", "plain", "--transport", "sse"]).is_err());
        assert!(plan(&["idle", "--room-prefix", "a b"]).is_err());
    }
}
