//! How many client connections the public listener holds at once
//! (`max_connections`), and who makes room when it is full.
//!
//! The cap keeps the balancer's descriptors well below the process limit,
//! so its health probes and view pushes always find one: a proxied
//! connection costs two descriptors, and the probes and pushes need a few
//! of their own (see [`budget`]). Without it, 20,000 half-sent heads took
//! every descriptor, the probes failed, and the ring went empty.
//!
//! At the cap, a connection that is still waiting for a request head (a
//! first one, or the next one of a kept-alive connection) is closed to make
//! room, the oldest first: a slow or idle client is the cheapest to lose,
//! and a flood of half-sent heads cannot lock out clients that send theirs
//! at once. When every connection is busy (tunnels, streams, requests in
//! flight), the new one gets 503.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Descriptors kept back from client connections for everything else:
/// listeners, health probes and view pushes (one each per node at a time),
/// admin scrapes, log files, the runtime's own.
pub const RESERVED_FDS: u64 = 1024;

/// Refusals (503 at the cap) being written at once; past this a
/// connection over the cap is closed without an answer, so that answering
/// cannot itself hold descriptors without bound.
pub const MAX_REFUSING: usize = 256;

/// The most client connections `fd_limit` descriptors allow: two per
/// proxied connection, after the reserve (a quarter of a small limit).
pub fn budget(fd_limit: u64) -> usize {
    let reserve = RESERVED_FDS.min(fd_limit / 4);
    (fd_limit.saturating_sub(reserve) / 2).max(1) as usize
}

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit,
    /// Admit it, and close the oldest connection waiting for a head.
    Evict,
    /// 503.
    Refuse,
}

/// The rule, on its own for the table test.
pub fn decide(open: usize, max: usize, waiting: usize) -> Decision {
    if open < max {
        Decision::Admit
    } else if waiting > 0 {
        Decision::Evict
    } else {
        Decision::Refuse
    }
}

pub struct Capacity {
    max: AtomicUsize,
    inner: Mutex<Inner>,
    refusing: AtomicUsize,
    metrics: Metrics,
}

#[derive(Default)]
struct Inner {
    open: usize,
    /// Connections waiting for a head, by the order they started waiting.
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
    next: u64,
}

/// One admitted connection; dropping it gives its place back.
pub struct Slot {
    capacity: Arc<Capacity>,
}

/// A connection waiting for a head, which may be evicted meanwhile.
pub struct Waiting {
    capacity: Arc<Capacity>,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

/// A refusal being written; dropping it ends it.
pub struct Refusing {
    capacity: Arc<Capacity>,
}

pub enum Admit {
    Admitted(Slot),
    /// Over the cap: answer 503 while holding this, or, with `None`, close
    /// without a word.
    Full(Option<Refusing>),
}

impl Capacity {
    pub fn new(max: usize, metrics: Metrics) -> Arc<Capacity> {
        Arc::new(Capacity {
            max: AtomicUsize::new(max),
            inner: Mutex::new(Inner::default()),
            refusing: AtomicUsize::new(0),
            metrics,
        })
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// A reloaded `max_connections` (already held to the budget).
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Takes a place for a new connection, closing the oldest waiting one
    /// if that is what it takes.
    pub fn admit(self: &Arc<Self>) -> Admit {
        let mut inner = self.inner.lock();
        match decide(inner.open, self.max(), inner.waiting.len()) {
            Decision::Admit => {}
            Decision::Evict => {
                if let Some((_, evict)) = inner.waiting.pop_first() {
                    // Its slot is given back when its task sees this and
                    // ends, a moment from now.
                    let _ = evict.send(());
                    self.metrics.connections_evicted.inc();
                }
            }
            Decision::Refuse => {
                drop(inner);
                self.metrics.connections_refused.inc();
                if self.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
                    self.refusing.fetch_sub(1, Ordering::AcqRel);
                    return Admit::Full(None);
                }
                return Admit::Full(Some(Refusing {
                    capacity: self.clone(),
                }));
            }
        }
        inner.open += 1;
        self.metrics.client_connections.set(inner.open as i64);
        Admit::Admitted(Slot {
            capacity: self.clone(),
        })
    }

    /// Marks a connection as waiting for a head (evictable) until the
    /// returned guard is dropped.
    pub fn waiting(self: &Arc<Self>) -> Waiting {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock();
        let id = inner.next;
        inner.next += 1;
        inner.waiting.insert(id, tx);
        Waiting {
            capacity: self.clone(),
            id,
            evicted: rx,
        }
    }

    /// Connections held now, and how many of them wait for a head.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.open, inner.waiting.len())
    }
}

impl Waiting {
    /// Resolves when this connection is chosen to make room.
    pub async fn evicted(&mut self) {
        let _ = (&mut self.evicted).await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.capacity.inner.lock();
        inner.open = inner.open.saturating_sub(1);
        self.capacity
            .metrics
            .client_connections
            .set(inner.open as i64);
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.capacity.inner.lock().waiting.remove(&self.id);
    }
}

impl Drop for Refusing {
    fn drop(&mut self) {
        self.capacity.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        #[rustfmt::skip]
        let cases = [
            // open, max, waiting
            ((0, 10, 0), Decision::Admit),
            ((9, 10, 5), Decision::Admit),
            ((10, 10, 1), Decision::Evict),
            ((10, 10, 0), Decision::Refuse),
            ((11, 10, 0), Decision::Refuse),
        ];
        for ((open, max, waiting), want) in cases {
            assert_eq!(decide(open, max, waiting), want, "{open} {max} {waiting}");
        }
    }

    #[test]
    fn budgets_leave_room_for_probes_and_pushes() {
        assert_eq!(budget(20_000), 9_488);
        assert!(budget(20_000) >= roompin_shared::config::DEFAULT_BALANCER_MAX_CONNECTIONS);
        // A small limit keeps a quarter back.
        assert_eq!(budget(1024), 384);
        assert_eq!(budget(0), 1);
    }

    #[tokio::test]
    async fn the_oldest_waiting_connection_makes_room() {
        let c = Capacity::new(2, Metrics::for_tests());
        let Admit::Admitted(a) = c.admit() else {
            panic!("a")
        };
        let Admit::Admitted(b) = c.admit() else {
            panic!("b")
        };
        // Both busy: a third is refused.
        assert!(matches!(c.admit(), Admit::Full(Some(_))));
        // `a` waits for a head, then `b`: a new one evicts `a`, not `b`.
        let mut wa = c.waiting();
        let mut wb = c.waiting();
        let Admit::Admitted(_new) = c.admit() else {
            panic!("evicts")
        };
        tokio::time::timeout(std::time::Duration::from_secs(1), wa.evicted())
            .await
            .expect("a is evicted");
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), wb.evicted()).await;
        assert!(pending.is_err(), "b is not evicted");
        drop((wa, a));
        assert_eq!(c.counts(), (2, 1));
        drop((wb, b));
        assert_eq!(c.counts(), (1, 0));
    }
}
