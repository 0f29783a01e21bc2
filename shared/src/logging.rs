//! The one log setup of both binaries, so `roompin-node` and
//! `roompin-balancer` write the same lines for the same flags.
//!
//! - `RUST_LOG` filters (`info` when unset). A filter that does not parse is
//!   an error at start-up, not a silently different level.
//! - `--log-format text` (the default) is for people: colour only when
//!   standard output is a terminal and `NO_COLOR` is unset, so a file or a
//!   pipe never gets ANSI escapes.
//! - `--log-format json` is for machines: one JSON object per line, the
//!   event's fields at the top level beside `timestamp`, `level`, `target`
//!   and `message`, and the fields of the spans it happened in under `span`
//!   (the innermost) and `spans` (all, outermost first).
//!
//! Lines go to standard output. Pingora's own lines (it logs through the
//! `log` crate) are bridged into the same subscriber, so they follow the
//! format too.

use std::io::IsTerminal;
use std::str::FromStr;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("RUST_LOG={value:?} is not a valid filter: {message}")]
    Filter { value: String, message: String },
    #[error("cannot install the logger: {0}")]
    Install(String),
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) -> Result<(), LoggingError> {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(colour(
                std::io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
            ))
            .try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
    installed.map_err(|e| LoggingError::Install(e.to_string()))
}

/// The filter for a `RUST_LOG` value: `info` when unset or blank.
fn filter(rust_log: Option<&str>) -> Result<EnvFilter, LoggingError> {
    match rust_log.map(str::trim) {
        None | Some("") => Ok(EnvFilter::new("info")),
        Some(value) => EnvFilter::try_new(value).map_err(|e| LoggingError::Filter {
            value: value.to_owned(),
            message: e.to_string(),
        }),
    }
}

/// Whether text lines get ANSI colour: only on a terminal, and never when
/// the user asked for none (<https://no-color.org>).
fn colour(stdout_is_terminal: bool, no_color: bool) -> bool {
    stdout_is_terminal && !no_color
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_without_no_color() {
        let cases = [
            (true, false, true),
            (true, true, false),
            (false, false, false),
            (false, true, false),
        ];
        for (terminal, no_color, want) in cases {
            assert_eq!(colour(terminal, no_color), want, "{terminal} {no_color}");
        }
    }

    #[test]
    fn log_formats_parse_and_print_back() {
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(f.to_string().parse::<LogFormat>(), Ok(f));
        }
        let err = "xml".parse::<LogFormat>().unwrap_err();
        assert!(err.contains("text or json"), "{err}");
    }

    #[test]
    fn rust_log_is_honoured_and_a_bad_one_refused() {
        assert_eq!(
            filter(None).map(|f| f.to_string()).ok(),
            Some("info".into())
        );
        assert_eq!(
            filter(Some("  ")).map(|f| f.to_string()).ok(),
            Some("info".into())
        );
        let f = filter(Some("warn,roompin_node=debug")).map(|f| f.to_string());
        assert_eq!(f.ok().as_deref(), Some("roompin_node=debug,warn"));
        match filter(Some("roompin_node=loud")) {
            Err(LoggingError::Filter { value, .. }) => assert_eq!(value, "roompin_node=loud"),
            other => panic!("accepted a bad filter: {other:?}"),
        }
    }
}
