//! The command line. Options shared by every mode live in [`Common`], which
//! each subcommand flattens, so they may be written after the mode name and
//! so a worker process can be given extra (hidden) flags by appending them.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "roompin-loadgen",
    version,
    about = "Load generator for roompin (and plain WebSocket broadcast servers)",
    long_about = "Load generator for roompin (and plain WebSocket broadcast servers).\n\n\
        Every run has four phases: ramp (open connections at --ramp per second), \
        settle, the measured window (--duration), and drain (wait for messages in \
        flight). Latency is measured from each message's intended send time, so a \
        stalled server cannot hide behind a slowed-down client."
)]
pub struct Cli {
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Mode {
    /// R rooms of M members; S members per room publish at a fixed rate.
    Fanout(FanoutArgs),
    /// Round trips through rooms of one: send, wait for the message back.
    Rtt(RttArgs),
    /// Hold C connections open for the duration (memory per connection).
    Idle(IdleArgs),
    /// Connect and disconnect at a fixed rate while base members listen.
    Churn(ChurnArgs),
    /// Hold C connections; when the window opens, drop them all, and
    /// reconnect them all at once (a reconnect storm).
    Storm(StormArgs),
}

impl Mode {
    pub fn common(&self) -> &Common {
        match self {
            Mode::Fanout(a) => &a.common,
            Mode::Rtt(a) => &a.common,
            Mode::Idle(a) => &a.common,
            Mode::Churn(a) => &a.common,
            Mode::Storm(a) => &a.common,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Mode::Fanout(_) => "fanout",
            Mode::Rtt(_) => "rtt",
            Mode::Idle(_) => "idle",
            Mode::Churn(_) => "churn",
            Mode::Storm(_) => "storm",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Number of rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    /// Members (connections) per room, publishers included.
    #[arg(long, default_value_t = 10)]
    pub members: u64,
    /// Members per room that also publish.
    #[arg(long, default_value_t = 1)]
    pub publishers: u64,
    /// Messages per second per publisher.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Message text length in bytes (at least the timestamp's ~20 bytes).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct RttArgs {
    /// Connections, each alone in its own room.
    #[arg(long, default_value_t = 1)]
    pub conns: u64,
    /// Round trips per second per connection; 0 sends the next as soon as
    /// the previous came back.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Message text length in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// A message not back within this long counts as lost.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 100)]
    pub conns: u64,
    /// Connections per room (every join is broadcast to the room, so large
    /// rooms cost the server O(n²) frames while ramping).
    #[arg(long, default_value_t = 1)]
    pub per_room: u64,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    /// New connections per second during the measured window.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// How long each churning connection stays.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Rooms the churning connections are spread over.
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    /// Members per room that stay for the whole run and check seqs.
    #[arg(long, default_value_t = 1)]
    pub base: u64,
    /// Messages each churning connection sends once it is in.
    #[arg(long, default_value_t = 1)]
    pub messages: u64,
    /// Message text length in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    /// Connections to open, drop and reopen.
    #[arg(long, default_value_t = 100)]
    pub conns: u64,
    /// Connections per room.
    #[arg(long, default_value_t = 1)]
    pub per_room: u64,
    /// From dropping every connection (when the window opens) to
    /// reconnecting them all at once: time for the server to notice the
    /// drops, as it would have before clients come back after a failure.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub gap: Duration,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Where to connect (the balancer, or one node): ws://HOST:PORT,
    /// http://HOST:PORT or HOST:PORT. No TLS.
    #[arg(long, env = "ROOMPIN_TARGET", default_value = "ws://127.0.0.1:8080")]
    pub target: String,
    /// Length of the measured window (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Connections opened per second while ramping up (all workers together).
    #[arg(long, default_value_t = 1000.0)]
    pub ramp: f64,
    /// Pause between the end of the ramp and the measured window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
    /// How long to keep reading after the window, for messages in flight.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Give up on a connection (TCP + handshake + welcome) after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Source addresses 127.0.0.A-B to spread connections over ("1-50"),
    /// "none", or "auto" (1-50 when the target is on 127.x, else none).
    #[arg(long, default_value = "auto")]
    pub source_ips: String,
    /// Processes to split the connections over (each may hold ~19,000).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Write the JSON result here (otherwise it goes to stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// A server process to measure (CPU seconds, RSS); repeatable.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Wire protocol of the target.
    #[arg(long, value_enum, default_value_t = ProtocolKind::Roompin)]
    pub protocol: ProtocolKind,
    /// How members listen (SSE members publish with POST).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    #[arg(long, default_value = "/websocket")]
    pub ws_path: String,
    #[arg(long, default_value = "/sse")]
    pub sse_path: String,
    #[arg(long, default_value = "/messages")]
    pub publish_path: String,
    /// Prefix of the meeting ids used (default: unique per run).
    #[arg(long)]
    pub room_prefix: Option<String>,

    // Set by the parent on the worker processes it starts.
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
    #[arg(long, hide = true)]
    pub worker_count: Option<usize>,
    /// The common start (unix ms) all workers schedule from.
    #[arg(long, hide = true)]
    pub t0_unix_ms: Option<u64>,
    #[arg(long, hide = true)]
    pub run_id: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolKind {
    /// roompin protocol v1: JSON frames, welcome, room seqs.
    Roompin,
    /// Raw text frames broadcast to the room; no welcome, no seqs.
    Plain,
    /// Socket.IO v4 over Engine.IO v4, WebSocket transport only: connect to
    /// the default namespace, publish `42["m",text]`, receive the same from
    /// the room. Use `--ws-path /socket.io/`.
    Socketio,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Ws,
    Sse,
}

/// "10s", "250ms", "2m", "1.5" (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 10s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}`: use ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=7.0 * 24.0 * 3600.0).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn common_flags_after_the_mode() {
        let cli = Cli::try_parse_from([
            "lg",
            "fanout",
            "--rooms",
            "3",
            "--target",
            "127.0.0.1:1",
            "--pid",
            "1",
            "--pid",
            "2",
            "--worker-index",
            "0",
        ])
        .map_err(|e| e.to_string());
        let cli = cli.as_ref().map(|c| c.mode.common().pids.clone());
        assert_eq!(cli, Ok(vec![1, 2]));
    }
}
