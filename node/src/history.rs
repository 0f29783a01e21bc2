//! The node-wide byte budget for room history, so that many busy rooms
//! cannot grow memory without bound even though each is capped by count.

use prometheus::IntGauge;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Budget {
    used: AtomicUsize,
    limit: usize,
    gauge: IntGauge,
}

impl Budget {
    pub fn new(limit: usize, gauge: IntGauge) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            limit,
            gauge,
        }
    }

    /// Whether `cost` more bytes would fit now.
    pub fn fits(&self, cost: usize) -> bool {
        self.used.load(Ordering::Relaxed) + cost <= self.limit
    }

    /// Reserves `cost` bytes if they fit.
    pub fn take(&self, cost: usize) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + cost <= self.limit).then_some(u + cost)
            })
            .is_ok();
        if ok {
            self.gauge.add(cost as i64);
        }
        ok
    }

    pub fn release(&self, cost: usize) {
        if cost > 0 {
            self.used.fetch_sub(cost, Ordering::AcqRel);
            self.gauge.sub(cost as i64);
        }
    }
}
