//! The progress bar: time through the run's phases, with live counters. It
//! draws only on a terminal (stderr), so logs and CI output stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::stats::Counts;
use crate::timeline::Timeline;

pub struct Progress {
    bar: Option<ProgressBar>,
    timeline: Timeline,
    planned: u64,
}

impl Progress {
    pub fn new(wanted: bool, timeline: Timeline, planned_connections: u64) -> Progress {
        let bar = (wanted && std::io::stderr().is_terminal()).then(|| {
            let total = timeline.hard_end.saturating_duration_since(Instant::now());
            let bar = ProgressBar::with_draw_target(
                Some(total.as_millis() as u64),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            let style = ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:24}] {percent:>3}% {msg}",
            );
            if let Ok(style) = style {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            timeline,
            planned: planned_connections,
        }
    }

    pub fn enabled(&self) -> bool {
        self.bar.is_some()
    }

    pub fn update(&self, c: &Counts) {
        let Some(bar) = &self.bar else { return };
        let now = Instant::now();
        let start = self.timeline.hard_end - Duration::from_millis(bar.length().unwrap_or(0));
        bar.set_position(now.saturating_duration_since(start).as_millis() as u64);
        bar.set_message(format!(
            "{:<7} open {}/{} failed {} sent {} recv {} gaps {}",
            self.phase(now),
            c.open,
            self.planned,
            c.failed,
            c.sent,
            c.received,
            c.seq_gaps
        ));
    }

    fn phase(&self, now: Instant) -> &'static str {
        let t = &self.timeline;
        if now < t.t0 {
            "start"
        } else if now < t.ramp_end {
            "ramp"
        } else if now < t.measure_start {
            "settle"
        } else if now < t.measure_end {
            "measure"
        } else if now < t.drain_end {
            "drain"
        } else {
            "close"
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
