//! Who *should* hold which meeting, as the balancers last told this node.
//!
//! This module decides and never acts: it keeps each balancer's latest view
//! and answers questions about them (is this request misrouted? should this
//! room leave? which peers exist? has that peer surely fenced itself?).
//! Where a meeting's room actually is, and moving it, is `placement` and
//! `mover`'s business. Every question takes `now`, so the rules are tested
//! in-process without waiting on clocks.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lease::{Lease, Renewal};

use roompin_shared::control::{NodeRef, RingView, RoutedBy};
use roompin_shared::{MeetingId, Member, Ring};

/// Peers named by a view that stopped coming are still asked where rooms
/// are for this long: they may hold rooms though their balancer is gone.
const PEER_MEMORY: Duration = Duration::from_secs(60);
/// Views of a balancer process not heard from for this long are dropped.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// One balancer's view, the owner ring built from it, and when it came.
pub struct Held {
    pub view: RingView,
    pub ring: Ring,
    pub received: Instant,
    /// The configured members, sorted, and the ring size: two views with
    /// the same config have the same one, whatever order their files list
    /// members in (`Views::current`).
    config: (u32, Vec<Member>),
}

impl Held {
    fn fresh_until(&self) -> Instant {
        self.received + Duration::from_millis(self.view.fresh_for_ms())
    }

    /// A balancer re-sends its view every `push_interval_ms`; one not heard
    /// for `FRESH_PUSHES` intervals has stopped (or lost us).
    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.fresh_until()
    }

    fn owner(&self, meeting: &str) -> Option<NodeRef> {
        self.ring.owner(meeting).map(|m| NodeRef {
            id: m.id.clone(),
            addr: m.addr.clone(),
        })
    }
}

/// The meeting belongs to another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misrouted {
    pub owner: String,
    pub epoch: u64,
    pub source: String,
}

impl std::fmt::Display for Misrouted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this meeting is owned by node {} (ring epoch {} of balancer {}); connect through the balancer",
            self.owner, self.epoch, self.source
        )
    }
}

/// The balancers' views as this node holds them. Cheap to clone (the views
/// are shared), so callers decide on a snapshot without holding a lock.
#[derive(Clone)]
pub struct Views {
    me: String,
    by_source: HashMap<String, Arc<Held>>,
    /// Set by the first view and never cleared: from then on the node is
    /// part of a cluster, whose rules (claim rounds, the lease) apply.
    cluster: bool,
}

impl Views {
    pub fn new(me: &str) -> Views {
        Views {
            me: me.to_owned(),
            by_source: HashMap::new(),
            cluster: false,
        }
    }

    /// Stores a balancer's view unless an older one overtook a newer one in
    /// flight. A repeat of the same epoch refreshes it. Returns whether it
    /// was taken.
    pub fn apply(&mut self, view: RingView, now: Instant) -> bool {
        if self
            .by_source
            .get(&view.source)
            .is_some_and(|v| v.view.epoch > view.epoch)
        {
            return false;
        }
        self.by_source
            .retain(|_, v| now.saturating_duration_since(v.received) < FORGET_AFTER);
        let mut members = view.members.clone();
        members
            .sort_unstable_by(|a, b| (&a.id, &a.addr, a.weight).cmp(&(&b.id, &b.addr, b.weight)));
        let held = Arc::new(Held {
            ring: view.owner_ring(),
            config: (view.vnodes, members),
            view,
            received: now,
        });
        self.by_source.insert(held.view.source.clone(), held);
        self.cluster = true;
        true
    }

    fn fresh(&self, now: Instant) -> impl Iterator<Item = &Arc<Held>> {
        self.by_source.values().filter(move |v| v.is_fresh(now))
    }

    /// The fresh views that rooms move by. While config management rolls
    /// an edit out, the balancers' configured members differ for a while
    /// (seconds, one machine after another). A view whose members differ
    /// from those of a view whose file was written later is on its way out,
    /// and is not waited for: rooms follow the newest edit at once, and the
    /// balancer that has not caught up meanwhile routes to the old holder,
    /// which forwards its members to the new one. Views with the same
    /// members (they differ in health only, as when one balancer cannot
    /// reach a node) all count, so a room leaves only when none of them
    /// names this node. Safety does not rest on this choice (the claim
    /// rounds and handoffs keep one live room whatever views say, and
    /// node/model/one_live_room.pml lets rooms move by any view); it only
    /// decides how soon rooms move.
    fn current(&self, now: Instant) -> impl Iterator<Item = &Arc<Held>> {
        let newest = self.fresh(now).max_by(|a, b| {
            (a.view.config_ms, &a.view.source).cmp(&(b.view.config_ms, &b.view.source))
        });
        self.fresh(now).filter(move |v| {
            newest.is_some_and(|n| v.view.config_ms >= n.view.config_ms || v.config == n.config)
        })
    }

    /// Whether this node has ever been told a view (it is part of a
    /// cluster, and the one-live-room rules apply).
    pub fn in_cluster(&self) -> bool {
        self.cluster
    }

    pub fn has_fresh(&self, now: Instant) -> bool {
        self.fresh(now).next().is_some()
    }

    /// When the last fresh view stops being fresh: the node's lease.
    pub fn lease_until(&self) -> Option<Instant> {
        self.by_source.values().map(|v| v.fresh_until()).max()
    }

    /// Refuses a meeting that a view says another node owns.
    ///
    /// A request a balancer routed by epoch N is refused only if this node's
    /// view from that balancer is at least N (a node that has not heard of
    /// a change yet trusts the balancer), judged on the ring without the
    /// nodes the balancer skipped because they refused. A request with no
    /// balancer, or naming a balancer this node has never had a view from
    /// (which anyone can write), is refused only when every fresh view
    /// names another owner, and its `skipped` list is ignored.
    pub fn check(
        &self,
        meeting: &MeetingId,
        routed_by: Option<&RoutedBy<'_>>,
        now: Instant,
    ) -> Result<(), Misrouted> {
        if let Some(r) = routed_by {
            if let Some(v) = self.by_source.get(r.source) {
                if v.view.epoch < r.epoch {
                    return Ok(());
                }
                let ring;
                let ring_ref = if r.skipped.is_empty() {
                    &v.ring
                } else {
                    ring = v.ring.without(|m| r.skipped.contains(&m.id.as_str()));
                    &ring
                };
                return match ring_ref.owner(meeting.as_str()) {
                    Some(o) if o.id != self.me => Err(Misrouted {
                        owner: o.id.clone(),
                        epoch: v.view.epoch,
                        source: v.view.source.clone(),
                    }),
                    _ => Ok(()),
                };
            }
        }
        match self.unanimous_other(meeting.as_str(), now) {
            Some((owner, v)) => Err(Misrouted {
                owner: owner.id,
                epoch: v.view.epoch,
                source: v.view.source.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The owner another node has under every fresh view, with the newest
    /// such view; `None` if any fresh view keeps the meeting here, names no
    /// owner, or there is no fresh view.
    fn unanimous_other(&self, meeting: &str, now: Instant) -> Option<(NodeRef, &Held)> {
        let mut newest: Option<(NodeRef, &Held)> = None;
        for v in self.fresh(now) {
            let owner = v.owner(meeting)?;
            if owner.id == self.me {
                return None;
            }
            if newest.as_ref().is_none_or(|(_, n)| v.received > n.received) {
                newest = Some((owner, v));
            }
        }
        newest
    }

    /// Where a room this node holds should go, if it should leave: once no
    /// current view (see [`Views::current`]: fresh, and not behind another
    /// balancer's config edit) names this node as the meeting's owner, to
    /// the owner the most of them name (the newest view breaks a tie). A
    /// room stays while any current view still names this node, so that
    /// two balancers whose health views disagree for a while never bounce
    /// it between nodes; the other nodes forward its members here
    /// meanwhile.
    pub fn move_target(&self, meeting: &str, now: Instant) -> Option<NodeRef> {
        let mut votes: Vec<(NodeRef, usize, Instant)> = Vec::new();
        for v in self.current(now) {
            let owner = v.owner(meeting)?;
            if owner.id == self.me {
                return None;
            }
            match votes.iter_mut().find(|(o, _, _)| o.id == owner.id) {
                Some((_, n, newest)) => {
                    *n += 1;
                    *newest = (*newest).max(v.received);
                }
                None => votes.push((owner, 1, v.received)),
            }
        }
        votes
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(a.2.cmp(&b.2)))
            .map(|(o, _, _)| o)
    }

    /// Whether some fresh view names `node` as the meeting's owner.
    pub fn names(&self, meeting: &str, node: &str, now: Instant) -> bool {
        self.named(meeting, node, now).is_some()
    }

    /// `node` as a fresh view that names it the meeting's owner knows it,
    /// with the address the balancers reach it at. That is the address to
    /// send it anything: a node's own idea of its address is its listen
    /// address, `0.0.0.0:8080` on most hosts, which leads back to oneself.
    pub fn named(&self, meeting: &str, node: &str, now: Instant) -> Option<NodeRef> {
        self.fresh(now)
            .filter_map(|v| v.owner(meeting))
            .find(|o| o.id == node)
    }

    /// Every node a view of the last minute names (configured or recently
    /// removed), but this one: the peers asked where a meeting's room is.
    pub fn peers(&self, now: Instant) -> Vec<NodeRef> {
        let mut views: Vec<&Arc<Held>> = self
            .by_source
            .values()
            .filter(|v| now.saturating_duration_since(v.received) < PEER_MEMORY)
            .collect();
        // Newest last, so a node's newest address wins.
        views.sort_by_key(|v| v.received);
        let mut out: Vec<NodeRef> = Vec::new();
        for v in views {
            for m in v.view.members.iter().chain(&v.view.departed) {
                if m.id == self.me {
                    continue;
                }
                match out.iter_mut().find(|p| p.id == m.id) {
                    Some(p) => p.addr = m.addr.clone(),
                    None => out.push(NodeRef {
                        id: m.id.clone(),
                        addr: m.addr.clone(),
                    }),
                }
            }
        }
        out.sort();
        out
    }

    /// Whether `peer` has surely fenced itself: every fresh view's balancer
    /// reports that none of its pushes could have reached the peer for
    /// longer than any view keeps a node's lease alive, plus a margin for
    /// clocks that run at slightly different rates. A balancer that does not
    /// push to the peer at all cannot renew its lease. With no fresh view
    /// this node knows nothing and answers false.
    pub fn known_fenced(&self, peer: &str, now: Instant) -> bool {
        let lease = self
            .by_source
            .values()
            .map(|v| v.view.fresh_for_ms())
            .max()
            .unwrap_or(0);
        let bound = Duration::from_millis(lease + lease / 10 + 500);
        let mut any = false;
        for v in self.fresh(now) {
            any = true;
            let pushed = v
                .view
                .members
                .iter()
                .chain(&v.view.departed)
                .any(|m| m.id == peer);
            if !pushed {
                continue;
            }
            let Some(u) = v.view.unreachable.iter().find(|u| u.id == peer) else {
                return false;
            };
            let age = Duration::from_millis(u.for_ms) + now.saturating_duration_since(v.received);
            if age < bound {
                return false;
            }
        }
        any
    }

    /// Whether every fresh view routes nothing to this node any more.
    pub fn routed_away(&self, now: Instant) -> bool {
        let mut fresh = self.fresh(now).peekable();
        fresh.peek().is_some() && fresh.all(|v| !v.view.healthy.contains(&self.me))
    }
}

/// The node's views behind a lock, and the lease they grant.
pub struct Ownership {
    views: Mutex<Views>,
    pub lease: Arc<Lease>,
}

impl Ownership {
    pub fn new(me: &str) -> Ownership {
        Ownership {
            views: Mutex::new(Views::new(me)),
            lease: Arc::new(Lease::forever()),
        }
    }

    /// The views now, to decide on without holding the lock.
    pub fn snapshot(&self) -> Views {
        self.views.lock().clone()
    }

    /// Applies a balancer's view and extends the lease by it; `None` if the
    /// view was not applied (an older one). A lease that had lapsed is
    /// extended only once the fence has closed the old rooms
    /// ([`Renewal::AfterLapse`]).
    pub fn apply(&self, view: RingView, now: Instant) -> Option<Renewal> {
        let mut views = self.views.lock();
        views
            .apply(view, now)
            .then(|| self.lease.set(views.lease_until(), now))
    }

    pub fn in_cluster(&self) -> bool {
        self.views.lock().in_cluster()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roompin_shared::control::Unreachable;
    use roompin_shared::Member;

    fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            addr: format!("{id}.test:9001"),
            weight: 1,
        }
    }

    fn view(source: &str, epoch: u64, members: &[&str], healthy: &[&str]) -> RingView {
        RingView {
            source: source.into(),
            epoch,
            config_ms: 0,
            vnodes: 64,
            members: members.iter().map(|m| member(m)).collect(),
            healthy: healthy.iter().map(|h| h.to_string()).collect(),
            push_interval_ms: 100,
            departed: Vec::new(),
            unreachable: Vec::new(),
        }
    }

    fn mid(s: &str) -> MeetingId {
        MeetingId::parse(s, "meeting_id").expect("valid")
    }

    /// A meeting whose owner is `a` among {a, b, c} and `d` once d joins.
    fn meeting_moving_to_d(abc: &Ring, abcd: &Ring) -> String {
        (0..10_000)
            .map(|i| format!("m{i}"))
            .find(|m| {
                abc.owner(m).is_some_and(|o| o.id == "a")
                    && abcd.owner(m).is_some_and(|o| o.id == "d")
            })
            .expect("some meeting moves from a to d")
    }

    fn rings() -> (Ring, Ring) {
        let abc = view("x", 1, &["a", "b", "c"], &["a", "b", "c"]).owner_ring();
        let abcd = view("x", 1, &["a", "b", "c", "d"], &["a", "b", "c", "d"]).owner_ring();
        (abc, abcd)
    }

    #[test]
    fn an_older_view_of_the_same_balancer_is_not_taken() {
        let now = Instant::now();
        let mut v = Views::new("a");
        assert!(!v.in_cluster());
        assert!(v.apply(view("b1", 5, &["a"], &["a"]), now));
        assert!(!v.apply(view("b1", 4, &["a"], &[]), now));
        assert!(
            v.apply(view("b1", 5, &["a"], &["a"]), now),
            "a repeat refreshes"
        );
        assert!(v.in_cluster());
        assert!(v.has_fresh(now));
        assert!(!v.has_fresh(now + Duration::from_millis(300)), "3 × 100 ms");
        assert_eq!(v.lease_until(), Some(now + Duration::from_millis(300)));
    }

    /// A view that comes after the lease lapsed (the node paused or cut
    /// off past it) does not let the old rooms serve again by itself: the
    /// lease waits for the fence (`fence::renew_after_lapse`).
    #[test]
    fn a_view_after_a_lapse_waits_for_the_fence() {
        let own = Ownership::new("a");
        let t0 = Instant::now();
        // Fresh for 3 × 100 ms.
        let v = |epoch| view("b1", epoch, &["a"], &["a"]);
        assert_eq!(own.apply(v(1), t0), Some(Renewal::Done));
        let in_time = t0 + Duration::from_millis(200);
        assert_eq!(own.apply(v(2), in_time), Some(Renewal::Done));
        assert!(own.lease.holds(in_time + Duration::from_millis(250)));
        let woke = t0 + Duration::from_secs(5);
        assert!(!own.lease.holds(woke));
        assert_eq!(own.apply(v(3), woke), Some(Renewal::AfterLapse));
        assert!(!own.lease.holds(woke), "held until the fence");
        own.lease.resume();
        assert!(own.lease.holds(woke));
        assert_eq!(own.apply(v(2), woke), None, "an older view is not taken");
    }

    /// The rules of `check`, one row per case.
    #[test]
    fn misrouting_rules() {
        let (abc, abcd) = rings();
        let m = meeting_moving_to_d(&abc, &abcd);
        let meeting = mid(&m);
        let now = Instant::now();
        // Node d; b1 has seen d join (epoch 2), b2 has not (epoch 7).
        let mut v = Views::new("d");
        v.apply(
            view("b1@1", 2, &["a", "b", "c", "d"], &["a", "b", "c", "d"]),
            now,
        );
        v.apply(
            view("b2@1", 7, &["a", "b", "c", "d"], &["a", "b", "c"]),
            now,
        );
        let routed = |source, epoch, skipped: Vec<&'static str>| RoutedBy {
            source,
            epoch,
            skipped,
        };
        #[rustfmt::skip]
        let cases: Vec<(Option<RoutedBy>, bool, &str)> = vec![
            (Some(routed("b1@1", 2, vec![])), true,  "the view of the routing balancer names d"),
            (Some(routed("b2@1", 7, vec![])), false, "b2's view names a: 421"),
            (Some(routed("b2@1", 8, vec![])), true,  "b2 routed by a newer ring than d knows: trusted"),
            (Some(routed("b2@1", 7, vec!["a"])), false, "b2 skipped a: its next owner is still not d"),
            (None,                             true,  "direct: b1 names d, so not every view names another"),
            (Some(routed("forged", 99, vec!["a", "b", "c"])), true, "unknown source: judged as direct"),
        ];
        for (r, ok, why) in cases {
            assert_eq!(v.check(&meeting, r.as_ref(), now).is_ok(), ok, "{why}");
        }
        // The node after a on b2's ring accepts what b2 sent it past a.
        let next = abc
            .without(|m| m.id == "a")
            .owner(&m)
            .map(|o| o.id.clone())
            .expect("an owner");
        let mut w = Views::new(&next);
        w.apply(
            view("b2@1", 7, &["a", "b", "c", "d"], &["a", "b", "c"]),
            now,
        );
        assert!(w
            .check(&meeting, Some(&routed("b2@1", 7, vec!["a"])), now)
            .is_ok());
        assert!(w
            .check(&meeting, Some(&routed("b2@1", 7, vec![])), now)
            .is_err());
        // Once b1 also says a (d unhealthy there), a direct or forged
        // request is refused, and names the owner.
        v.apply(
            view("b1@1", 3, &["a", "b", "c", "d"], &["a", "b", "c"]),
            now,
        );
        let forged = routed("forged", 99, vec!["a"]);
        let err = v.check(&meeting, Some(&forged), now).expect_err("421");
        assert_eq!(err.owner, "a");
        assert!(v.check(&meeting, None, now).is_err());
        // Stale views do not count for direct requests.
        assert!(v
            .check(&meeting, None, now + Duration::from_secs(1))
            .is_ok());
    }

    #[test]
    fn a_room_moves_only_once_no_fresh_view_names_its_holder() {
        let (abc, abcd) = rings();
        let m = meeting_moving_to_d(&abc, &abcd);
        let now = Instant::now();
        let mut v = Views::new("a");
        v.apply(view("b1", 1, &["a", "b", "c"], &["a", "b", "c"]), now);
        v.apply(view("b2", 1, &["a", "b", "c"], &["a", "b", "c"]), now);
        assert_eq!(v.move_target(&m, now), None);
        // b1 learns of d first: the views disagree, the room stays.
        v.apply(
            view("b1", 2, &["a", "b", "c", "d"], &["a", "b", "c", "d"]),
            now,
        );
        assert_eq!(v.move_target(&m, now), None);
        assert!(v.names(&m, "d", now) && v.names(&m, "a", now));
        // b2 follows: move to d.
        v.apply(
            view("b2", 2, &["a", "b", "c", "d"], &["a", "b", "c", "d"]),
            now,
        );
        assert_eq!(v.move_target(&m, now).map(|n| n.id), Some("d".into()));
        // If b2 falls silent, b1 alone decides.
        let mut w = Views::new("a");
        w.apply(view("b2", 1, &["a", "b", "c"], &["a", "b", "c"]), now);
        let later = now + Duration::from_millis(250);
        w.apply(
            view("b1", 2, &["a", "b", "c", "d"], &["a", "b", "c", "d"]),
            later,
        );
        assert_eq!(w.move_target(&m, later), None, "b2 is still fresh");
        let stale = now + Duration::from_millis(301);
        assert_eq!(w.move_target(&m, stale).map(|n| n.id), Some("d".into()));
        // No fresh view at all: nothing to decide (the node is fenced).
        assert_eq!(w.move_target(&m, now + Duration::from_secs(5)), None);
    }

    /// While an edit rolls out, rooms follow the balancer whose file was
    /// written later; views that differ in health only all count.
    #[test]
    fn a_room_follows_the_newest_config_edit_without_waiting_for_the_other_balancer() {
        let (abc, abcd) = rings();
        let m = meeting_moving_to_d(&abc, &abcd);
        let now = Instant::now();
        let stamped = |source, members: &[&str], healthy: &[&str], ms| RingView {
            config_ms: ms,
            ..view(source, 1, members, healthy)
        };
        let abc = ["a", "b", "c"];
        let abcd = ["a", "b", "c", "d"];
        let dcba = ["d", "c", "b", "a"];
        #[rustfmt::skip]
        let cases: Vec<(RingView, RingView, Option<&str>, &str)> = vec![
            (stamped("b1", &abc, &abc, 100), stamped("b2", &abc, &abc, 100), None,
                "agreed: a owns it"),
            (stamped("b1", &abcd, &abcd, 200), stamped("b2", &abc, &abc, 100), Some("d"),
                "b1 has the newer edit; b2 will follow"),
            (stamped("b1", &abcd, &abcd, 200), stamped("b2", &abc, &abc, 300), None,
                "b2's file is newer (an edit undone): it counts, and names a"),
            (stamped("b1", &abcd, &abcd, 200), stamped("b2", &abc, &abc, 200), None,
                "the same time: both count, and b2 names a"),
            (stamped("b1", &abcd, &abc, 200), stamped("b2", &abcd, &abcd, 300), None,
                "the same members, b1 cannot reach d: health only, both count"),
            (stamped("b1", &abcd, &abcd, 200), stamped("b2", &dcba, &dcba, 100), Some("d"),
                "the same members in another order: one config"),
            (stamped("b1", &abcd, &abcd, 0), stamped("b2", &abc, &abc, 0), None,
                "unstamped (older balancers): wait for both"),
        ];
        for (v1, v2, want, why) in cases {
            let mut v = Views::new("a");
            v.apply(v1, now);
            v.apply(v2, now);
            assert_eq!(
                v.move_target(&m, now).map(|n| n.id),
                want.map(String::from),
                "{why}"
            );
        }
    }

    #[test]
    fn two_views_that_name_different_new_owners_pick_the_majority_then_the_newest() {
        let now = Instant::now();
        let ring = view("x", 1, &["a", "b", "c"], &["a", "b", "c"]).owner_ring();
        let m = (0..10_000)
            .map(|i| format!("m{i}"))
            .find(|m| ring.owner(m).is_some_and(|o| o.id == "a"))
            .expect("a meeting of a");
        let b_ring = view("x", 1, &["a", "b", "c"], &["b"]).owner_ring();
        let c_ring = view("x", 1, &["a", "b", "c"], &["c"]).owner_ring();
        assert_eq!(b_ring.owner(&m).map(|o| o.id.as_str()), Some("b"));
        let mut v = Views::new("a");
        v.apply(view("b1", 1, &["a", "b", "c"], &["b"]), now);
        v.apply(
            view("b2", 1, &["a", "b", "c"], &["c"]),
            now + Duration::from_millis(1),
        );
        assert_eq!(c_ring.owner(&m).map(|o| o.id.as_str()), Some("c"));
        let t = now + Duration::from_millis(2);
        assert_eq!(
            v.move_target(&m, t).map(|n| n.id),
            Some("c".into()),
            "newest wins a tie"
        );
        v.apply(view("b3", 1, &["a", "b", "c"], &["b"]), t);
        assert_eq!(
            v.move_target(&m, t).map(|n| n.id),
            Some("b".into()),
            "majority"
        );
    }

    #[test]
    fn peers_are_every_member_and_departed_node_of_recent_views() {
        let now = Instant::now();
        let mut v = Views::new("a");
        let mut first = view("b1", 1, &["a", "b", "c"], &["a"]);
        first.departed = vec![member("e")];
        v.apply(first, now);
        v.apply(view("b2", 1, &["a", "d"], &["a"]), now);
        let ids: Vec<String> = v.peers(now).into_iter().map(|p| p.id).collect();
        assert_eq!(ids, vec!["b", "c", "d", "e"]);
        assert!(v.peers(now + Duration::from_secs(61)).is_empty());
    }

    #[test]
    fn a_peer_is_known_fenced_only_when_every_fresh_balancer_lost_it_long_enough() {
        let now = Instant::now();
        let unreachable = |for_ms| {
            vec![Unreachable {
                id: "b".into(),
                for_ms,
            }]
        };
        // Lease 300 ms; bound 300 + 30 + 500 = 830 ms.
        let mk = |source: &str, u: Vec<Unreachable>| {
            let mut x = view(source, 1, &["a", "b"], &["a"]);
            x.unreachable = u;
            x
        };
        #[rustfmt::skip]
        let cases: Vec<(Vec<RingView>, bool, &str)> = vec![
            (vec![mk("b1", unreachable(900)), mk("b2", unreachable(1000))], true,  "both lost it long ago"),
            (vec![mk("b1", unreachable(900)), mk("b2", unreachable(100))],  false, "b2 lost it only just"),
            (vec![mk("b1", unreachable(900)), mk("b2", vec![])],            false, "b2 still reaches it"),
            (vec![mk("b1", unreachable(900)), view("b2", 1, &["a"], &["a"])], true, "b2 does not push to it"),
            (vec![],                                                          false, "no views: no knowledge"),
        ];
        for (views, fenced, why) in cases {
            let mut v = Views::new("a");
            for x in views {
                v.apply(x, now);
            }
            assert_eq!(v.known_fenced("b", now), fenced, "{why}");
        }
        // The age of a report counts too.
        let mut v = Views::new("a");
        v.apply(mk("b1", unreachable(700)), now);
        assert!(!v.known_fenced("b", now));
        assert!(v.known_fenced("b", now + Duration::from_millis(150)));
    }

    #[test]
    fn routed_away_needs_every_fresh_view() {
        let now = Instant::now();
        let mut v = Views::new("a");
        assert!(!v.routed_away(now), "no views: nobody routes away");
        v.apply(view("b1", 1, &["a", "b"], &["b"]), now);
        v.apply(view("b2", 1, &["a", "b"], &["a", "b"]), now);
        assert!(!v.routed_away(now));
        v.apply(view("b2", 2, &["a", "b"], &["b"]), now);
        assert!(v.routed_away(now));
    }
}
