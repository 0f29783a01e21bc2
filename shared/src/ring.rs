//! The consistent-hash ring that maps a meeting to its node.
//!
//! Built on the `hashring` crate. Its default hasher is SipHash-2-4 with zero
//! keys, and we feed it bytes only (never `Hash` impls of std types, whose
//! output is not promised to stay the same across Rust releases), so a point's
//! position depends on nothing but the member id, the replica number and the
//! meeting id. Two balancers with the same TOML therefore route every meeting
//! to the same node, and the test vectors below pin that across builds.
//!
//! Ownership: the owner of a meeting is the first *healthy* member clockwise
//! from the meeting's hash. A ring built from the healthy members only gives
//! exactly that answer, so health changes rebuild the ring instead of walking
//! past dead points on every lookup.
//!
//! Failover is different: a retry past a node that just refused a
//! connection, or a node judging a request that carries
//! `x-roompin-skipped`, happens per request, and during a reconnect storm on
//! thousands of requests at once. [`Ring::candidates`] walks the same points
//! clockwise and yields each member once, in the order it would take over
//! (as pingora-load-balancing's `BackendSelection::iter` does), so skipping
//! a member costs a few comparisons instead of re-hashing and sorting every
//! point the way [`Ring::without`] does.

use hashring::DefaultHashBuilder;
use serde::{Deserialize, Serialize};
use std::hash::{BuildHasher, Hash, Hasher};

/// A chat node as the ring sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub addr: String,
    pub weight: u32,
}

/// What is hashed to place one point: replica `replica` of member `id`.
struct PointKey<'a> {
    id: &'a str,
    replica: u32,
}

impl Hash for PointKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.id.as_bytes());
        state.write(b"#");
        state.write(&self.replica.to_le_bytes());
    }
}

/// A lookup key hashed as its raw bytes.
struct Key<'a>(&'a [u8]);

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// One point on the ring: its position and the index of its member.
#[derive(Clone, Copy, Debug)]
struct Point {
    key: u64,
    index: u32,
}

/// An immutable ring: rebuild it on any change and swap it in.
///
/// The points are hashed with `hashring`'s SipHash builder and searched the
/// way `hashring::HashRing::get` searches them (the test
/// `agrees_with_hashring` holds us to that), but kept here as a plain sorted
/// slice so that [`Ring::candidates`] can walk on from any point.
#[derive(Clone)]
pub struct Ring {
    members: Vec<Member>,
    vnodes: u32,
    /// Sorted by key; ties keep insertion order (a stable sort), as in hashring.
    points: Vec<Point>,
    /// Members that have at least one point.
    on_ring: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("members", &self.members)
            .field("vnodes", &self.vnodes)
            .finish()
    }
}

impl Ring {
    /// Places `vnodes × weight` points for each member.
    pub fn new(members: Vec<Member>, vnodes: u32) -> Ring {
        let hasher = DefaultHashBuilder;
        let mut points = Vec::new();
        let mut on_ring = 0;
        for (index, m) in members.iter().enumerate() {
            let count = vnodes.saturating_mul(m.weight);
            if count > 0 {
                on_ring += 1;
            }
            points.extend((0..count).map(|replica| Point {
                key: hasher.hash_one(PointKey { id: &m.id, replica }),
                index: index as u32,
            }));
        }
        points.sort_by_key(|p| p.key);
        Ring {
            members,
            vnodes,
            points,
            on_ring,
        }
    }

    /// The same ring without the members `skip` rejects: used for ownership
    /// (skip the unhealthy), where the result is kept for many lookups. For
    /// one lookup past a few members, use [`Ring::candidates`].
    pub fn without(&self, skip: impl Fn(&Member) -> bool) -> Ring {
        let kept = self.members.iter().filter(|m| !skip(m)).cloned().collect();
        Ring::new(kept, self.vnodes)
    }

    /// Where `key` lands: the index of the first point at or after its hash.
    fn start(&self, key: &str) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let k = DefaultHashBuilder.hash_one(Key(key.as_bytes()));
        let n = match self.points.binary_search_by(|p| p.key.cmp(&k)) {
            Ok(n) | Err(n) => n,
        };
        Some(if n == self.points.len() { 0 } else { n })
    }

    /// The member owning `key`, or `None` on an empty ring.
    pub fn owner(&self, key: &str) -> Option<&Member> {
        self.start(key)
            .map(|n| &self.members[self.points[n].index as usize])
    }

    /// Every member, each once, in the order the ring hands `key` on:
    /// the owner first, then the member that would own `key` without it,
    /// and so on. The first one `skip` does not reject is the owner on
    /// `self.without(skip)`, without building that ring.
    pub fn candidates<'a>(&'a self, key: &str) -> Candidates<'a> {
        Candidates {
            ring: self,
            start: self.start(key).unwrap_or(0),
            step: 0,
            left: self.on_ring,
            seen: Seen::new(self.members.len()),
        }
    }

    /// The owner of `key` once the members `skip` rejects are passed over:
    /// the first of [`Ring::candidates`] that `skip` does not reject.
    pub fn owner_skipping(&self, key: &str, skip: impl Fn(&Member) -> bool) -> Option<&Member> {
        self.candidates(key).find(|m| !skip(m))
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// The members of a ring clockwise from a key, each once: see
/// [`Ring::candidates`].
pub struct Candidates<'a> {
    ring: &'a Ring,
    start: usize,
    /// Points walked so far.
    step: usize,
    /// Members not yet yielded.
    left: usize,
    seen: Seen,
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Member;

    fn next(&mut self) -> Option<&'a Member> {
        let points = &self.ring.points;
        while self.left > 0 && self.step < points.len() {
            let p = points[(self.start + self.step) % points.len()];
            self.step += 1;
            if self.seen.insert(p.index as usize) {
                self.left -= 1;
                return Some(&self.ring.members[p.index as usize]);
            }
        }
        None
    }
}

/// Members already yielded: a bit each, on the stack for up to 64 members.
enum Seen {
    Small(u64),
    Large(Vec<u64>),
}

impl Seen {
    fn new(members: usize) -> Seen {
        if members <= 64 {
            Seen::Small(0)
        } else {
            Seen::Large(vec![0; members.div_ceil(64)])
        }
    }

    /// Marks `i`; false if it was marked already.
    fn insert(&mut self, i: usize) -> bool {
        let (word, bit) = match self {
            Seen::Small(w) => (w, i),
            Seen::Large(v) => (&mut v[i / 64], i % 64),
        };
        let mask = 1u64 << bit;
        let fresh = *word & mask == 0;
        *word |= mask;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{distr::Alphanumeric, rngs::StdRng, Rng as _, SeedableRng};
    use std::collections::HashMap;

    fn member(id: &str, weight: u32) -> Member {
        Member {
            id: id.into(),
            addr: format!("127.0.0.1:{}", 9000 + id.len()),
            weight,
        }
    }

    fn three() -> Vec<Member> {
        vec![
            member("node-a", 1),
            member("node-b", 1),
            member("node-c", 1),
        ]
    }

    fn random_ids(n: usize, seed: u64) -> Vec<String> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let len = rng.random_range(6..24);
                (&mut rng)
                    .sample_iter(&Alphanumeric)
                    .take(len)
                    .map(char::from)
                    .collect()
            })
            .collect()
    }

    fn shares(ring: &Ring, ids: &[String]) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for id in ids {
            *counts
                .entry(ring.owner(id).map(|m| m.id.clone()).unwrap_or_default())
                .or_insert(0) += 1;
        }
        counts
    }

    /// Pinned routes. If this test fails, the hash changed and every deployed
    /// balancer would disagree with a new one: that is a breaking change.
    #[test]
    fn test_vectors_are_stable() {
        let ring = Ring::new(three(), crate::config::DEFAULT_VNODES);
        let expected = [
            ("standup", "node-c"),
            ("team.sync", "node-b"),
            ("a", "node-b"),
            ("meeting-42", "node-a"),
            ("Z~_.-", "node-b"),
            ("0000000000", "node-c"),
        ];
        let got: Vec<(&str, String)> = expected
            .iter()
            .map(|(k, _)| (*k, ring.owner(k).map(|m| m.id.clone()).unwrap_or_default()))
            .collect();
        let want: Vec<(&str, String)> = expected.iter().map(|(k, v)| (*k, v.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn three_equal_nodes_are_balanced_within_ten_percent() {
        let ring = Ring::new(three(), crate::config::DEFAULT_VNODES);
        let ids = random_ids(100_000, 1);
        let counts = shares(&ring, &ids);
        let mean = ids.len() as f64 / 3.0;
        let max = counts.values().copied().max().unwrap_or(0) as f64;
        assert_eq!(counts.len(), 3);
        assert!(
            max <= 1.10 * mean,
            "busiest node holds {max} keys, mean {mean}: {counts:?}"
        );
    }

    #[test]
    fn weights_are_honoured() {
        let members = vec![
            member("node-a", 1),
            member("node-b", 2),
            member("node-c", 1),
        ];
        let ring = Ring::new(members, crate::config::DEFAULT_VNODES);
        let ids = random_ids(100_000, 2);
        let counts = shares(&ring, &ids);
        for (id, want) in [("node-a", 0.25), ("node-b", 0.50), ("node-c", 0.25)] {
            let share = counts.get(id).copied().unwrap_or(0) as f64 / ids.len() as f64;
            assert!(
                (share - want).abs() <= 0.10 * want,
                "{id} has share {share}, want {want}"
            );
        }
    }

    #[test]
    fn adding_a_node_moves_keys_only_to_it() {
        let before = Ring::new(three(), crate::config::DEFAULT_VNODES);
        let mut four = three();
        four.push(member("node-d", 1));
        let after = Ring::new(four, crate::config::DEFAULT_VNODES);
        let ids = random_ids(100_000, 3);
        let mut moved = 0;
        for id in &ids {
            let (old, new) = (
                before.owner(id).map(|m| &m.id),
                after.owner(id).map(|m| &m.id),
            );
            if old != new {
                moved += 1;
                assert_eq!(
                    new.map(String::as_str),
                    Some("node-d"),
                    "{id} moved between old nodes"
                );
            }
        }
        let fraction = moved as f64 / ids.len() as f64;
        assert!(fraction <= 0.30, "{fraction} of keys moved");
        assert!(
            fraction >= 0.15,
            "only {fraction} of keys moved to the new node"
        );
    }

    #[test]
    fn skipping_a_member_moves_only_its_keys() {
        let ring = Ring::new(three(), crate::config::DEFAULT_VNODES);
        let healthy = ring.without(|m| m.id == "node-b");
        for id in random_ids(10_000, 4) {
            let (all, some) = (ring.owner(&id), healthy.owner(&id));
            assert_ne!(some.map(|m| m.id.as_str()), Some("node-b"));
            if all.map(|m| m.id.as_str()) != Some("node-b") {
                assert_eq!(all, some, "{id} moved although its owner is healthy");
            }
        }
    }

    #[test]
    fn an_empty_ring_has_no_owner() {
        assert!(Ring::new(vec![], 10).owner("x").is_none());
        assert!(Ring::new(three(), 10)
            .without(|_| true)
            .owner("x")
            .is_none());
    }

    /// The points and the search are ours, the hash is hashring's: the
    /// owners must be exactly the ones `hashring::HashRing` would give.
    #[test]
    fn agrees_with_hashring() {
        #[derive(Clone)]
        struct P(String, u32);
        impl Hash for P {
            fn hash<H: Hasher>(&self, state: &mut H) {
                state.write(self.0.as_bytes());
                state.write(b"#");
                state.write(&self.1.to_le_bytes());
            }
        }
        let members = vec![
            member("node-a", 1),
            member("node-b", 3),
            member("node-c", 1),
            member("node-d", 2),
        ];
        let mut oracle = hashring::HashRing::new();
        for m in &members {
            oracle.batch_add((0..160 * m.weight).map(|r| P(m.id.clone(), r)).collect());
        }
        let ring = Ring::new(members, 160);
        for id in random_ids(50_000, 5) {
            let want = oracle.get(&Key(id.as_bytes())).map(|p| p.0.as_str());
            assert_eq!(ring.owner(&id).map(|m| m.id.as_str()), want, "{id}");
        }
    }

    #[test]
    fn candidates_start_at_the_owner_and_name_every_member_once() {
        let ring = Ring::new(three(), crate::config::DEFAULT_VNODES);
        for id in random_ids(2_000, 6) {
            let order: Vec<&str> = ring.candidates(&id).map(|m| m.id.as_str()).collect();
            assert_eq!(
                order.first().copied(),
                ring.owner(&id).map(|m| m.id.as_str())
            );
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, ["node-a", "node-b", "node-c"], "{id}: {order:?}");
        }
        assert_eq!(Ring::new(vec![], 10).candidates("x").count(), 0);
    }

    /// The failover walk answers exactly what rebuilding the ring without
    /// the skipped members answers, for every subset of five members.
    #[test]
    fn skipping_by_candidates_equals_rebuilding_without() {
        let five: Vec<Member> = ["n1", "n2", "n3", "n4", "n5"]
            .iter()
            .enumerate()
            .map(|(i, id)| member(id, 1 + i as u32 % 2))
            .collect();
        let ring = Ring::new(five.clone(), 64);
        let ids = random_ids(300, 7);
        for mask in 0u32..32 {
            let skip = |m: &Member| {
                five.iter()
                    .position(|f| f.id == m.id)
                    .is_some_and(|i| mask & (1 << i) != 0)
            };
            let rebuilt = ring.without(skip);
            for id in &ids {
                assert_eq!(
                    ring.owner_skipping(id, skip),
                    rebuilt.owner(id),
                    "{id}, skipping mask {mask:05b}"
                );
            }
        }
    }

    #[test]
    fn candidates_work_past_64_members() {
        let many: Vec<Member> = (0..100).map(|i| member(&format!("m{i}"), 1)).collect();
        let ring = Ring::new(many, 8);
        let all: std::collections::HashSet<&str> =
            ring.candidates("key").map(|m| m.id.as_str()).collect();
        assert_eq!(all.len(), 100);
    }
}
