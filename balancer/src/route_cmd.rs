//! `roompin-balancer route <meeting_id>... --config FILE`: why a meeting is
//! on the node it is on, answered without a running balancer.
//!
//! It loads the TOML the way the balancer does (same validation) and builds
//! the ring the way the balancer does (`roompin_shared::Ring` over the
//! configured members and `vnodes`). It cannot know health, so it assumes
//! every configured node is healthy: that is what a running balancer's
//! `/route` says too while they all are. "Next" is the owner on the ring
//! without that node: where the meeting goes when its node fails, drains or
//! is removed from the TOML (and where the proxy retries a refused
//! connection).
//!
//! Binary-only: `main.rs` declares this module; the library never needs it.

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

use roompin_balancer::reload::ConfigSource;
use roompin_shared::config::BalancerConfig;
use roompin_shared::protocol::MEETING_PARAM;
use roompin_shared::{MeetingId, Member, Ring};

#[derive(Args, Debug)]
pub struct RouteArgs {
    /// One or more meeting ids.
    #[arg(required = true, value_name = "MEETING_ID")]
    meetings: Vec<String>,
    /// The balancer TOML (see config/balancer.toml).
    #[arg(long)]
    config: PathBuf,
    /// One JSON object per meeting instead of a sentence.
    #[arg(long)]
    json: bool,
}

/// Where one meeting goes.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub meeting_id: String,
    /// Its owner with every configured node healthy.
    pub node: Member,
    /// Its owner if `node` failed; `None` with a single node.
    pub next: Option<Member>,
}

/// The ring of a config, and for each member the ring without it, built
/// once: a lookup is then a hash, however many meetings are asked about.
pub struct Router {
    ring: Ring,
    without: Vec<(String, Ring)>,
}

impl Router {
    pub fn new(config: &BalancerConfig) -> Router {
        let ring = Ring::new(config.members(), config.vnodes);
        let without = ring
            .members()
            .iter()
            .map(|m| (m.id.clone(), ring.without(|o| o.id == m.id)))
            .collect();
        Router { ring, without }
    }

    /// `None` only for a ring without members (a config never has one).
    pub fn answer(&self, meeting: &MeetingId) -> Option<Answer> {
        let key = meeting.as_str();
        let node = self.ring.owner(key)?.clone();
        let next = self
            .without
            .iter()
            .find(|(id, _)| *id == node.id)
            .and_then(|(_, ring)| ring.owner(key).cloned());
        Some(Answer {
            meeting_id: key.to_owned(),
            node,
            next,
        })
    }
}

pub fn run(args: &RouteArgs) -> anyhow::Result<()> {
    let source = ConfigSource {
        path: args.config.clone(),
        listen: None,
        admin_listen: None,
    };
    let config = source.load()?;
    // Refuse a bad id before answering any: the same rules as the proxy.
    let meetings = args
        .meetings
        .iter()
        .map(|m| MeetingId::parse(m, MEETING_PARAM))
        .collect::<Result<Vec<_>, _>>()?;
    let router = Router::new(&config);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for meeting in &meetings {
        let answer = router
            .answer(meeting)
            .context("the config has no upstream")?;
        if args.json {
            serde_json::to_writer(&mut out, &answer)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", sentence(&answer))?;
        }
    }
    out.flush()?;
    Ok(())
}

fn sentence(a: &Answer) -> String {
    let next = match &a.next {
        Some(n) => format!("{} ({})", n.id, n.addr),
        None => "no other node".to_owned(),
    };
    format!(
        "{}: {} ({}); if {} fails: {next}",
        a.meeting_id, a.node.id, a.node.addr, a.node.id
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(upstreams: &[(&str, u32)]) -> BalancerConfig {
        let mut toml =
            String::from(
            "listen = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:9090\"\ncontrol_token = \"t\"\n",
        );
        for (i, (id, weight)) in upstreams.iter().enumerate() {
            toml.push_str(&format!(
                "[[upstream]]\nid = \"{id}\"\naddr = \"127.0.0.1:{}\"\nweight = {weight}\n",
                9001 + i
            ));
        }
        BalancerConfig::from_toml(Path::new("test.toml"), &toml).expect("valid test config")
    }

    fn meeting(id: &str) -> MeetingId {
        MeetingId::parse(id, MEETING_PARAM).expect("valid id")
    }

    /// The ring's pinned vectors (shared/src/ring.rs) hold here too: the
    /// command answers what a balancer with this TOML answers.
    #[test]
    fn owners_are_the_rings_pinned_routes() {
        let router = Router::new(&config(&[("node-a", 1), ("node-b", 1), ("node-c", 1)]));
        for (m, want) in [
            ("standup", "node-c"),
            ("team.sync", "node-b"),
            ("meeting-42", "node-a"),
        ] {
            let a = router.answer(&meeting(m)).expect("an owner");
            assert_eq!(a.node.id, want, "{m}");
        }
    }

    /// "Next" is the owner once the node is gone from the config, and is
    /// never the node itself.
    #[test]
    fn next_is_the_owner_without_that_node() {
        let all = [("node-a", 1), ("node-b", 2), ("node-c", 1)];
        let router = Router::new(&config(&all));
        for i in 0..300 {
            let m = meeting(&format!("m-{i}"));
            let a = router.answer(&m).expect("an owner");
            let next = a.next.expect("three nodes: a next one");
            assert_ne!(next.id, a.node.id);
            let rest: Vec<_> = all
                .iter()
                .copied()
                .filter(|(id, _)| *id != a.node.id)
                .collect();
            let without = Router::new(&config(&rest)).answer(&m).expect("an owner");
            assert_eq!(next.id, without.node.id, "{m:?}");
        }
    }

    #[test]
    fn a_single_node_has_no_next() {
        let router = Router::new(&config(&[("solo", 1)]));
        let a = router.answer(&meeting("standup")).expect("an owner");
        assert_eq!((a.node.id.as_str(), &a.next), ("solo", &None));
        assert!(sentence(&a).ends_with("if solo fails: no other node"));
    }
}
