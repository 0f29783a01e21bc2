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

use hashring::HashRing;
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A chat node as the ring sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub addr: String,
    pub weight: u32,
}

/// One point on the ring: replica `replica` of member `index`.
#[derive(Clone, Debug)]
struct Point {
    index: usize,
    id: Arc<str>,
    replica: u32,
}

impl Hash for Point {
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

/// An immutable ring: rebuild it on any change and swap it in.
#[derive(Clone)]
pub struct Ring {
    members: Vec<Member>,
    vnodes: u32,
    points: HashRing<Point>,
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
        let mut points = Vec::new();
        for (index, m) in members.iter().enumerate() {
            let id: Arc<str> = Arc::from(m.id.as_str());
            let count = vnodes.saturating_mul(m.weight);
            points.extend((0..count).map(|replica| Point {
                index,
                id: id.clone(),
                replica,
            }));
        }
        let mut ring = HashRing::new();
        ring.batch_add(points);
        Ring {
            members,
            vnodes,
            points: ring,
        }
    }

    /// The same ring without the members `skip` rejects: used for ownership
    /// (skip the unhealthy) and for retrying past a node that refused.
    pub fn without(&self, skip: impl Fn(&Member) -> bool) -> Ring {
        let kept = self.members.iter().filter(|m| !skip(m)).cloned().collect();
        Ring::new(kept, self.vnodes)
    }

    /// The member owning `key`, or `None` on an empty ring.
    pub fn owner(&self, key: &str) -> Option<&Member> {
        self.points
            .get(&Key(key.as_bytes()))
            .map(|p| &self.members[p.index])
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
}
