//! Room history: each room's ring of recent events, and the node-wide
//! policy that keeps all rooms' history within `history_bytes` while every
//! room keeps a fair share of it.
//!
//! The policy (docs/ARCHITECTURE.md, "History"):
//!
//! 1. A room keeps at most `history_events` events, its newest.
//! 2. The node never holds more than `history_bytes` of history: an event's
//!    bytes are reserved on the node-wide counter before it is kept, and a
//!    reservation that does not fit fails instead of overshooting.
//! 3. A room's **share** is `history_bytes / rooms`. Its newest events that
//!    fit within its share are never evicted to make room for another room.
//! 4. When the node's history passes a high-water mark (15/16 of the
//!    budget), a **sweep** evicts the globally oldest events of the rooms
//!    above their share, across rooms, until it is back at a low-water mark
//!    (7/8). So a new room on a full node keeps its history, and so does a
//!    quiet room next to a busy one.
//! 5. At the budget itself (every room near its share, so the sweep found
//!    little to take), a room above its share gives up its own oldest
//!    events for its newest.
//!
//! Locking: a room's history lives under the room's lock, which stays the
//! only lock a publish takes. The node-wide part is an atomic byte counter
//! and a registry of rooms that is locked only when a room is created or
//! freed, and for a moment at the start of a sweep. The sweep visits one
//! room at a time through [`Holder`], taking that room's lock briefly, so
//! it never serialises the rooms. It runs on the thread of the publish that
//! crossed the high-water mark, after that room's lock is released
//! ([`Pool::settle`]). If appends outrun it and a reservation fails, the
//! appending room (which holds its own lock) sweeps with `try_lock` only,
//! skipping busy rooms, so two rooms can never wait for each other; failing
//! that, it gives up its own oldest events for its newest.

use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use crate::event::Event;

/// Why events left a room's history: the `reason` label of
/// `roompin_node_history_evicted_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evicted {
    /// The room reached `history_events`; its oldest went.
    HistoryEvents,
    /// The node neared `history_bytes`: a sweep took the node's oldest
    /// events of rooms above their share, or a room above its share gave
    /// up its own oldest for its newest.
    HistoryBytes,
    /// The node was at `history_bytes` and no room above its share could
    /// give way at that moment (the sweep was behind, or they were busy):
    /// a room within its share lost its own oldest, or its new event was
    /// not kept. It stays at 0 unless appends outrun the sweep.
    Full,
}

impl Evicted {
    pub const ALL: [Evicted; 3] = [Evicted::HistoryEvents, Evicted::HistoryBytes, Evicted::Full];

    pub fn label(self) -> &'static str {
        match self {
            Evicted::HistoryEvents => "history_events",
            Evicted::HistoryBytes => "history_bytes",
            Evicted::Full => "full",
        }
    }

    /// Its place in [`Evicted::ALL`].
    fn index(self) -> usize {
        self as usize
    }
}

/// The metrics a [`Pool`] keeps up to date.
#[derive(Clone)]
pub struct HistoryMetrics {
    /// Bytes held, all rooms together.
    pub bytes: IntGauge,
    /// Events evicted, by [`Evicted::label`].
    pub evicted: IntCounterVec,
    /// The share of each room now: `history_bytes / rooms`.
    pub share: IntGauge,
}

impl HistoryMetrics {
    /// Metrics in no registry, for tests that read their own counts.
    #[cfg(test)]
    pub fn unregistered() -> HistoryMetrics {
        let opts = |n: &str| prometheus::Opts::new(n, n);
        HistoryMetrics {
            bytes: IntGauge::with_opts(opts("bytes")).expect("valid gauge"),
            evicted: IntCounterVec::new(opts("evicted"), &["reason"]).expect("valid counter"),
            share: IntGauge::with_opts(opts("share")).expect("valid gauge"),
        }
    }

    fn evicted(&self, why: Evicted) -> IntCounter {
        self.evicted.with_label_values(&[why.label()])
    }
}

/// How a sweep takes a room's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locking {
    /// Wait for it: the sweeping thread holds no room's lock.
    Wait,
    /// Only if it is free now: the sweeping thread holds its own room's
    /// lock, and waiting for another room could deadlock with that room.
    Try,
}

/// What owns a room's [`History`] and the lock around it (the room's
/// state), as the sweep reaches it.
pub trait Holder: Send + Sync {
    /// Runs `f` on the history under the holder's lock. Returns false, and
    /// does not run `f`, if `locking` is `Try` and the lock is taken.
    fn with_history(&self, locking: Locking, f: &mut dyn FnMut(&mut History)) -> bool;
}

/// A kept event and when it was kept.
struct Kept {
    /// Node-wide append order: lower is older, across rooms.
    stamp: u64,
    event: Arc<Event>,
}

/// What one kept event costs the budget: its bytes and its slot.
fn cost(event: &Event) -> usize {
    event.cost() + std::mem::size_of::<Kept>()
}

/// The node's history budget, shared by every room.
pub struct Pool {
    limit: usize,
    per_room: usize,
    /// A sweep starts above `trigger`: the high-water mark, or, after a
    /// sweep that found too little to evict, a batch above where it ended
    /// (so a node whose rooms are all within their share does not sweep on
    /// every publish; a new room resets it, since the shares shrink)...
    high: usize,
    trigger: AtomicUsize,
    /// ...and stops at or below this.
    low: usize,
    used: AtomicUsize,
    clock: AtomicU64,
    sweeping: AtomicBool,
    next_id: AtomicU64,
    /// Rooms registered now; their share is `limit / rooms`.
    rooms: AtomicUsize,
    registry: Mutex<HashMap<u64, Weak<dyn Holder>>>,
    metrics: HistoryMetrics,
    /// `metrics.evicted` by [`Evicted::index`], looked up once: a labelled
    /// lookup takes the vector's lock, and evictions happen on publishes.
    evicted: [IntCounter; 3],
}

impl Pool {
    /// A budget of `history_bytes` for the whole node, and of
    /// `history_events` for each room.
    pub fn new(history_events: usize, history_bytes: usize, metrics: HistoryMetrics) -> Pool {
        let evicted = Evicted::ALL.map(|why| metrics.evicted(why));
        metrics.share.set(gauge(history_bytes));
        Pool {
            limit: history_bytes,
            per_room: history_events,
            high: history_bytes - history_bytes / 16,
            trigger: AtomicUsize::new(history_bytes - history_bytes / 16),
            low: history_bytes - history_bytes / 8,
            used: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            rooms: AtomicUsize::new(0),
            registry: Mutex::new(HashMap::new()),
            metrics,
            evicted,
        }
    }

    /// Bytes held now, all rooms together.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The share each room keeps whatever the others do.
    pub fn share(&self) -> usize {
        self.limit / self.rooms.load(Ordering::Acquire).max(1)
    }

    /// Sweeps if the node's history is past its high-water mark. Call it
    /// after every append, with no room's lock held.
    pub fn settle(&self) {
        if self.used() > self.trigger.load(Ordering::Relaxed) {
            self.sweep(Locking::Wait);
        }
    }

    /// Evicts the globally oldest events of rooms above their share until
    /// the node's history is at its low-water mark (or every room is within
    /// its share). One sweep at a time: a sweep that finds another running
    /// returns at once, since that one also frees what this one would.
    /// Returns the bytes freed.
    ///
    /// A k-way merge over the rooms by the stamp of their oldest event: the
    /// room with the oldest gives up its events older than the next room's
    /// oldest, then goes back in the heap with its new oldest.
    pub fn sweep(&self, locking: Locking) -> usize {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return 0;
        }
        let _done = Done(&self.sweeping);
        let holders: Vec<Arc<dyn Holder>> = self
            .registry
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let share = self.share();
        let mut heap = BinaryHeap::new();
        for (i, h) in holders.iter().enumerate() {
            let mut oldest = None;
            h.with_history(locking, &mut |hist| oldest = hist.oldest_above(share));
            if let Some(stamp) = oldest {
                heap.push(Reverse((stamp, i)));
            }
        }
        let mut freed = 0;
        let mut idle = 0;
        while self.used() > self.low && idle <= holders.len() {
            let Some(Reverse((_, i))) = heap.pop() else {
                break;
            };
            let until = heap.peek().map(|Reverse((stamp, _))| *stamp);
            let want = self.used().saturating_sub(self.low);
            let (mut n, mut next) = (0, None);
            holders[i].with_history(locking, &mut |hist| {
                (n, next) = hist.evict_oldest(share, until, want);
            });
            freed += n;
            idle = if n == 0 { idle + 1 } else { 0 };
            if let Some(stamp) = next {
                heap.push(Reverse((stamp, i)));
            }
        }
        let used = self.used();
        let trigger = if used <= self.low {
            self.high
        } else {
            used.saturating_add(self.limit / 16)
        };
        self.trigger.store(trigger, Ordering::Relaxed);
        freed
    }

    /// Reserves `cost` bytes if they fit within the budget.
    fn reserve(&self, cost: usize) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + cost <= self.limit).then_some(u + cost)
            })
            .is_ok();
        if ok {
            self.metrics.bytes.add(gauge(cost));
        }
        ok
    }

    fn release(&self, cost: usize) {
        if cost > 0 {
            self.used.fetch_sub(cost, Ordering::AcqRel);
            self.metrics.bytes.sub(gauge(cost));
        }
    }

    fn register(&self, holder: Weak<dyn Holder>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.registry.lock().insert(id, holder);
        let rooms = self.rooms.fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.share.set(gauge(self.limit / rooms));
        self.trigger.store(self.high, Ordering::Relaxed);
        id
    }

    fn deregister(&self, id: u64) {
        if self.registry.lock().remove(&id).is_some() {
            let rooms = self.rooms.fetch_sub(1, Ordering::AcqRel) - 1;
            self.metrics.share.set(gauge(self.limit / rooms.max(1)));
        }
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Clears the sweeping flag however the sweep ends.
struct Done<'a>(&'a AtomicBool);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// One room's retained events, oldest first, within the [`Pool`]'s rules.
/// It lives under the room's lock; dropping it gives its bytes back.
pub struct History {
    pool: Arc<Pool>,
    id: u64,
    events: VecDeque<Kept>,
    bytes: usize,
    /// Released for good (the room closed): keeps nothing more.
    released: bool,
}

impl History {
    /// An empty history in `pool`; the sweep reaches it through `holder`.
    pub fn new(pool: &Arc<Pool>, holder: Weak<dyn Holder>) -> History {
        History {
            pool: pool.clone(),
            id: pool.register(holder),
            events: VecDeque::new(),
            bytes: 0,
            released: false,
        }
    }

    /// Keeps `event` as the newest, within the room's count and the node's
    /// bytes (see the module's policy). Events come in rising seq order
    /// (the room's lock orders them), which replay relies on.
    pub fn append(&mut self, event: Arc<Event>) {
        let pool = self.pool.clone();
        if self.released || pool.per_room == 0 {
            return;
        }
        while self.events.len() >= pool.per_room {
            self.evict_front(Evicted::HistoryEvents);
        }
        let cost = cost(&event);
        if cost > pool.limit {
            pool.evicted[Evicted::Full.index()].inc();
            return;
        }
        let mut swept = false;
        loop {
            if pool.reserve(cost) {
                let stamp = pool.clock.fetch_add(1, Ordering::Relaxed);
                self.events.push_back(Kept { stamp, event });
                self.bytes += cost;
                return;
            }
            // The node is full. A room above its share gives up its own
            // oldest for its newest. One within its share takes the bytes
            // from the rooms above theirs (the sweep is behind)...
            let within = self.bytes + cost <= pool.share();
            if within && !swept {
                swept = true;
                pool.sweep(Locking::Try);
                continue;
            }
            // ...or, if they were busy, it too keeps its newest at the cost
            // of its oldest.
            if self.events.is_empty() {
                pool.evicted[Evicted::Full.index()].inc();
                return;
            }
            self.evict_front(if within {
                Evicted::Full
            } else {
                Evicted::HistoryBytes
            });
        }
    }

    /// The seq of the oldest retained event.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.events.front().map(|k| k.event.seq)
    }

    /// Every retained event with a seq above `since`, oldest first.
    pub fn after(&self, since: u64) -> Vec<Arc<Event>> {
        let from = self.events.partition_point(|k| k.event.seq <= since);
        self.events.range(from..).map(|k| k.event.clone()).collect()
    }

    /// Every retained event, oldest first.
    pub fn all(&self) -> Vec<Arc<Event>> {
        self.after(0)
    }

    /// The retained events as the JSON a handoff carries, oldest first.
    pub fn snapshot(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|k| k.event.json.as_str().to_owned())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Bytes this room's history costs the node's budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frees every event and leaves the pool: the room is closed for good,
    /// and the other rooms' share grows.
    pub fn release(&mut self) {
        self.pool.release(self.bytes);
        self.bytes = 0;
        self.events.clear();
        if !self.released {
            self.released = true;
            self.pool.deregister(self.id);
        }
    }

    /// The stamp of the oldest event, if the room is above `share` (only
    /// then may the sweep take from it).
    fn oldest_above(&self, share: usize) -> Option<u64> {
        self.events
            .front()
            .filter(|_| self.bytes > share)
            .map(|k| k.stamp)
    }

    /// Evicts the oldest events stamped at most `until`, while the room is
    /// above `share`, until `want` bytes are freed. Returns the bytes freed
    /// and, if the room is still above its share, its new oldest stamp.
    fn evict_oldest(
        &mut self,
        share: usize,
        until: Option<u64>,
        want: usize,
    ) -> (usize, Option<u64>) {
        let mut freed = 0;
        while self.bytes > share && freed < want {
            match self.events.front() {
                Some(k) if until.is_none_or(|u| k.stamp <= u) => {
                    freed += self.evict_front(Evicted::HistoryBytes);
                }
                _ => break,
            }
        }
        (freed, self.oldest_above(share))
    }

    fn evict_front(&mut self, why: Evicted) -> usize {
        let Some(old) = self.events.pop_front() else {
            return 0;
        };
        let c = cost(&old.event);
        self.bytes -= c;
        self.pool.release(c);
        self.pool.evicted[why.index()].inc();
        c
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roompin_shared::protocol::ServerEvent;

    /// A room's history on its own lock, as the sweep sees a room.
    type Room = Arc<Mutex<History>>;

    impl Holder for Mutex<History> {
        fn with_history(&self, locking: Locking, f: &mut dyn FnMut(&mut History)) -> bool {
            let guard = match locking {
                Locking::Wait => Some(self.lock()),
                Locking::Try => self.try_lock(),
            };
            guard.map(|mut h| f(&mut h)).is_some()
        }
    }

    fn pool(events: usize, bytes: usize) -> Arc<Pool> {
        Arc::new(Pool::new(events, bytes, HistoryMetrics::unregistered()))
    }

    fn room(pool: &Arc<Pool>) -> Room {
        Arc::new_cyclic(|me: &Weak<Mutex<History>>| {
            let holder: Weak<dyn Holder> = me.clone();
            Mutex::new(History::new(pool, holder))
        })
    }

    /// A message of `text_len` bytes of text with this seq.
    fn event(seq: u64, text_len: usize) -> Arc<Event> {
        Event::new(&ServerEvent::Message {
            meeting_id: "m".into(),
            seq,
            from: "u".into(),
            text: "x".repeat(text_len),
            ts: 0,
        })
    }

    /// Appends the next seq to `room` the way a room does: under its lock,
    /// then settles with the lock released.
    fn append(pool: &Pool, room: &Room, text_len: usize) {
        {
            let mut h = room.lock();
            let seq = h.events.back().map_or(0, |k| k.event.seq) + 1;
            h.append(event(seq, text_len));
        }
        pool.settle();
    }

    fn seqs(room: &Room) -> Vec<u64> {
        room.lock().all().iter().map(|e| e.seq).collect()
    }

    fn evicted(pool: &Pool, why: Evicted) -> u64 {
        pool.evicted[why.index()].get()
    }

    /// What one message of `text_len` bytes costs.
    fn unit(text_len: usize) -> usize {
        cost(&event(1, text_len))
    }

    #[test]
    fn no_room_grows_past_history_events() {
        let pool = pool(10, 1 << 20);
        let r = room(&pool);
        for _ in 0..50 {
            append(&pool, &r, 10);
        }
        assert_eq!(seqs(&r), (41..=50).collect::<Vec<_>>());
        assert_eq!(evicted(&pool, Evicted::HistoryEvents), 40);
        assert_eq!(pool.used(), r.lock().bytes());
        assert_eq!(r.lock().after(47).len(), 3);
        assert_eq!(r.lock().oldest_seq(), Some(41));
    }

    /// The headline: a node whose budget one busy room filled still keeps
    /// history for a room that starts after, both when the sweep ran in
    /// time and when it did not (the new room then sweeps by itself).
    #[test]
    fn a_full_node_still_keeps_history_for_a_new_room() {
        for settle in [true, false] {
            let pool = pool(10_000, 100 * unit(100));
            let busy = room(&pool);
            for seq in 1..=1_000 {
                busy.lock().append(event(seq, 100));
                if settle {
                    pool.settle();
                }
            }
            assert!(pool.used() > pool.low, "the busy room filled the node");
            let new = room(&pool);
            for _ in 0..5 {
                append(&pool, &new, 100);
            }
            assert_eq!(seqs(&new), vec![1, 2, 3, 4, 5], "settle: {settle}");
            assert!(pool.used() <= pool.limit);
            // A room alone has the whole budget as its share: it gave up
            // its own oldest, and the new room took from it.
            assert_eq!(evicted(&pool, Evicted::Full), 0);
            assert!(evicted(&pool, Evicted::HistoryBytes) >= 900);
            assert_eq!(seqs(&busy).last(), Some(&1_000));
        }
    }

    /// Many rooms of random sizes in random order: the node's total never
    /// passes the budget, and is exactly what the rooms hold.
    #[test]
    fn the_node_total_stays_within_history_bytes() {
        let limit = 50_000;
        let pool = pool(64, limit);
        let rooms: Vec<Room> = (0..40).map(|_| room(&pool)).collect();
        for i in 0..5_000usize {
            let r = &rooms[(i * 7919 + i / 3) % rooms.len()];
            append(&pool, r, (i * 31) % 400);
            assert!(pool.used() <= limit, "{} > {limit} at {i}", pool.used());
        }
        let held: usize = rooms.iter().map(|r| r.lock().bytes()).sum();
        assert_eq!(held, pool.used());
        assert!(rooms.iter().all(|r| r.lock().len() <= 64));
        // Released rooms give everything back, and leave the pool.
        for r in &rooms[..20] {
            r.lock().release();
        }
        drop(rooms);
        assert_eq!(pool.used(), 0);
        assert_eq!(pool.rooms.load(Ordering::Acquire), 0);
    }

    /// Threads appending to their own rooms at once: the reservation is
    /// atomic, so the total is within the budget at every moment.
    #[test]
    fn concurrent_rooms_stay_within_history_bytes() {
        let limit = 128 * unit(200);
        let pool = pool(1_000, limit);
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (pool, peak) = (pool.clone(), peak.clone());
                std::thread::spawn(move || {
                    let rooms: Vec<Room> = (0..8).map(|_| room(&pool)).collect();
                    for i in 0..2_000 {
                        append(&pool, &rooms[i % 8], 200);
                        peak.fetch_max(pool.used(), Ordering::AcqRel);
                    }
                    rooms
                })
            })
            .collect();
        let mut rooms = Vec::new();
        for t in threads {
            rooms.extend(t.join().expect("no panic"));
        }
        let held: usize = rooms.iter().map(|r| r.lock().bytes()).sum();
        assert!(peak.load(Ordering::Acquire) <= limit);
        assert_eq!(held, pool.used(), "the pool counts what the rooms hold");
        assert!(held > limit / 2, "the budget was used: {held}");
    }

    /// Three rooms filled one after the other: the sweep empties the
    /// oldest room down to its share first, and touches a newer room only
    /// once every older event above a share is gone.
    #[test]
    fn eviction_takes_the_globally_oldest_first() {
        let u = unit(100);
        // Three rooms: a share is 20 events; the budget holds 60.
        let pool = pool(1_000, 60 * u);
        let (a, b, c) = (room(&pool), room(&pool), room(&pool));
        for r in [&a, &b, &c] {
            for _ in 0..19 {
                append(&pool, r, 100);
            }
        }
        assert_eq!(evicted(&pool, Evicted::HistoryBytes), 0);
        // Interleaved now, so that ages cross rooms: a's and b's older
        // events go before c's newer ones.
        for _ in 0..3 {
            append(&pool, &a, 100);
            append(&pool, &b, 100);
        }
        // 63 events would not fit; the sweep started past 15/16 (56.25)
        // and went down to 7/8 (52.5): a and b above their share lost
        // their oldest first, c (within its share) lost nothing.
        assert_eq!(seqs(&c), (1..=19).collect::<Vec<_>>());
        let (sa, sb) = (seqs(&a), seqs(&b));
        assert!(sa.len() >= 20 && sb.len() >= 20, "{sa:?} {sb:?}");
        assert_eq!(*sa.last().unwrap_or(&0), 22);
        assert_eq!(*sb.last().unwrap_or(&0), 22);
        assert!(pool.used() <= pool.limit);
        assert!(evicted(&pool, Evicted::HistoryBytes) > 0);
        assert_eq!(evicted(&pool, Evicted::Full), 0);
    }

    /// The order across rooms, exactly: with three busy rooms appended to
    /// in a scrambled order, what a sweep evicted is exactly the oldest of
    /// their events, whichever room held them; a quiet room's events, older
    /// still but within its share, stay.
    #[test]
    fn a_sweep_is_a_merge_by_age_across_rooms() {
        let u = unit(50);
        // Four rooms: a share is 100 events; the budget holds 400.
        let pool = pool(10_000, 400 * u);
        let rooms: Vec<Room> = (0..4).map(|_| room(&pool)).collect();
        for _ in 0..5 {
            append(&pool, &rooms[3], 50);
        }
        let mut busy = Vec::new();
        for i in 0..380usize {
            let k = (i + i / 4 + i / 9) % 3;
            append(&pool, &rooms[k], 50);
            busy.push(rooms[k].lock().events.back().map(|e| e.stamp));
        }
        let swept = evicted(&pool, Evicted::HistoryBytes) as usize;
        assert!(swept > 0, "385 events passed the high-water mark");
        let kept: Vec<u64> = rooms[..3]
            .iter()
            .flat_map(|r| r.lock().events.iter().map(|e| e.stamp).collect::<Vec<_>>())
            .collect();
        let mut gone: Vec<u64> = busy
            .iter()
            .flatten()
            .copied()
            .filter(|s| !kept.contains(s))
            .collect();
        gone.sort();
        let oldest: Vec<u64> = busy.iter().flatten().copied().take(swept).collect();
        assert_eq!(gone, oldest, "the sweep took others than the oldest");
        let share = pool.share();
        assert!(
            rooms[..3].iter().all(|r| r.lock().bytes() > share),
            "no busy room reached its share"
        );
        assert_eq!(seqs(&rooms[3]), vec![1, 2, 3, 4, 5]);
        assert!(
            pool.used() <= pool.high,
            "settled below the high-water mark"
        );
    }

    /// A quiet room next to a busy one keeps its (old) events within its
    /// share: age alone does not decide.
    #[test]
    fn a_room_keeps_its_share_however_old() {
        let u = unit(100);
        let pool = pool(10_000, 40 * u);
        let quiet = room(&pool);
        for _ in 0..5 {
            append(&pool, &quiet, 100);
        }
        let busy = room(&pool);
        for _ in 0..1_000 {
            append(&pool, &busy, 100);
        }
        assert_eq!(seqs(&quiet), vec![1, 2, 3, 4, 5]);
        assert!(busy.lock().len() >= 20, "the busy room has the rest");
        assert_eq!(seqs(&busy).last(), Some(&1_000));
    }

    #[test]
    fn a_handoff_snapshot_is_the_retained_json_and_release_returns_the_bytes() {
        let pool = pool(3, 1 << 20);
        let r = room(&pool);
        for _ in 0..5 {
            append(&pool, &r, 5);
        }
        let snap = r.lock().snapshot();
        assert_eq!(snap.len(), 3);
        assert!(snap[0].contains("\"seq\":3"), "{}", snap[0]);
        r.lock().release();
        assert_eq!(pool.used(), 0);
        append(&pool, &r, 5);
        assert!(r.lock().is_empty(), "a released history keeps nothing");
        assert_eq!(pool.share(), 1 << 20);
    }

    #[test]
    fn an_event_bigger_than_the_budget_is_not_kept() {
        let pool = pool(10, unit(10));
        let r = room(&pool);
        append(&pool, &r, 10);
        append(&pool, &r, 1_000);
        assert_eq!(seqs(&r), vec![1], "nothing was evicted for it");
        assert_eq!(evicted(&pool, Evicted::Full), 1);
    }
}
