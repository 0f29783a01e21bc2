//! Who owns which meeting, as this balancer sees it.
//!
//! `Membership` holds the config in force and each member's health; every
//! change to either rebuilds an immutable `Routing` (owner ring + epoch) and
//! swaps it in, so the proxy's hot path is one atomic load and one ring
//! lookup, and never takes a lock.

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::health::Check;
use crate::metrics::Metrics;
use roompin_shared::config::BalancerConfig;
use roompin_shared::control::{RingView, Unreachable};
use roompin_shared::{Member, Ring};

/// How long a member removed from the TOML still gets views pushed, so a
/// node that is still running hears that it owns nothing any more.
const DEPARTED_PUSH_FOR: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet: owns nothing until its first good check.
    Unknown,
    Healthy,
    Unhealthy,
}

/// A snapshot of routing: what the proxy reads on every request.
pub struct Routing {
    pub epoch: u64,
    pub config: Arc<BalancerConfig>,
    pub balancer_id: String,
    /// The configured members minus those not healthy.
    pub owners: Ring,
    pub health: HashMap<String, Health>,
}

impl Routing {
    pub fn owner(&self, meeting: &str) -> Option<&Member> {
        self.owners.owner(meeting)
    }

    pub fn health_of(&self, id: &str) -> Health {
        self.health.get(id).copied().unwrap_or(Health::Unknown)
    }
}

/// Consecutive check results of one member.
#[derive(Clone, Debug)]
struct Track {
    health: Health,
    /// Whether this member has ever been healthy since it was configured.
    ever_healthy: bool,
    ok_streak: u32,
    fail_streak: u32,
}

impl Track {
    /// A member just configured: unknown until its first check.
    fn new() -> Track {
        Track {
            health: Health::Unknown,
            ever_healthy: false,
            ok_streak: 0,
            fail_streak: 0,
        }
    }

    /// Counts one check and returns the health it leads to. The rules:
    /// a 503 (draining) takes a member out at once; a member never seen
    /// healthy (new, or still starting) is admitted by its first good check
    /// (`healthy_after` guards failback, not first admission); a healthy
    /// member leaves after `unhealthy_after` failures in a row, and an
    /// unhealthy one returns after `healthy_after` successes in a row.
    fn record(&mut self, check: Check, unhealthy_after: u32, healthy_after: u32) -> Health {
        if check == Check::NotSent {
            // The balancer's own shortage: no news of the node at all.
            return self.health;
        }
        let ok = check == Check::Ok;
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
        }
        let next = match (self.health, ok) {
            (_, false) if check == Check::Draining => Health::Unhealthy,
            (Health::Unknown, true) => Health::Healthy,
            (Health::Unknown, false) => Health::Unhealthy,
            (Health::Unhealthy, true) if !self.ever_healthy => Health::Healthy,
            (Health::Healthy, false) if self.fail_streak >= unhealthy_after => Health::Unhealthy,
            (Health::Unhealthy, true) if self.ok_streak >= healthy_after => Health::Healthy,
            (same, _) => same,
        };
        self.health = next;
        self.ever_healthy |= next == Health::Healthy;
        next
    }
}

/// What a health check means for the connections open to the member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paths {
    Keep,
    /// End them: their clients reconnect, to a node they can reach.
    Cut,
}

/// The rule "no member sits on a dead path": a member that has just failed
/// its way out of the ring is out of this balancer's reach, and so are the
/// clients tunnelled to it (their messages stall, and neither side may
/// notice for minutes). Ending those connections sends the clients back
/// through some balancer to whichever node holds their meeting now. A
/// draining member (503) is different: it still answers, and sends its
/// clients on itself as its rooms move; cutting them would only race its
/// handoffs.
pub fn paths_after(before: Health, next: Health, check: Check) -> Paths {
    match (before, next, check) {
        (Health::Healthy, Health::Unhealthy, Check::Failed) => Paths::Cut,
        _ => Paths::Keep,
    }
}

/// What the last view pushes to a node did.
#[derive(Clone, Debug)]
struct PushTrack {
    /// When the last push that may have renewed the node's lease started
    /// (it was applied, or its answer was lost after the request went out).
    renewed: Option<Instant>,
    /// Why the last push failed, if it did.
    failing: Option<String>,
}

/// The outcome of one view push, as the pusher saw it.
#[derive(Clone, Debug)]
pub enum PushOutcome {
    /// Applied (or a newer view was already there).
    Applied,
    /// Rejected with an error status (a wrong token, say): it did not renew.
    Rejected(String),
    /// No connection: it did not reach the node.
    Unreached(String),
    /// The request went out but its answer was lost: it may have renewed.
    Lost(String),
    /// It never left: no local descriptor, port or buffer (`shortage.rs`).
    NotSent(String),
}

struct Inner {
    config: Arc<BalancerConfig>,
    /// When the file behind `config` was written (`RingView::config_ms`).
    config_ms: u64,
    tracks: HashMap<String, Track>,
    epoch: u64,
    departed: Vec<(Member, Instant)>,
    suspects: Vec<String>,
    /// Per node id, pushed to now or lately.
    pushes: HashMap<String, PushTrack>,
}

pub struct Membership {
    balancer_id: String,
    started: Instant,
    routing: ArcSwap<Routing>,
    inner: Mutex<Inner>,
    metrics: Metrics,
    /// Wakes the view pusher after every epoch change.
    pub changed: Notify,
    /// Wakes the health checker early (a new member, a suspect).
    pub probe_now: Notify,
}

impl Membership {
    /// `written_ms`: when the config file was written (see
    /// `reload::ConfigSource::written_ms`).
    pub fn new(config: BalancerConfig, written_ms: u64, metrics: Metrics) -> Arc<Membership> {
        // The view's source names this process, not just this balancer: a
        // restarted balancer counts its epochs from 1 again, and nodes would
        // otherwise keep the dead process's higher epoch and ignore the new
        // one. The old instance's view goes stale after three pushes.
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let balancer_id = format!("{}@{started}", config.balancer_id());
        let config = Arc::new(config);
        let tracks = config
            .upstreams
            .iter()
            .map(|u| (u.id.clone(), Track::new()))
            .collect();
        let mut inner = Inner {
            config,
            config_ms: written_ms,
            tracks,
            epoch: 0,
            departed: Vec::new(),
            suspects: Vec::new(),
            pushes: HashMap::new(),
        };
        let routing = build(&balancer_id, &mut inner, &metrics);
        Arc::new(Membership {
            balancer_id,
            started: Instant::now(),
            routing: ArcSwap::from_pointee(routing),
            inner: Mutex::new(inner),
            metrics,
            changed: Notify::new(),
            probe_now: Notify::new(),
        })
    }

    /// The routing in force. Cheap: one atomic load.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    /// Applies a reloaded config. Members keep their health across reloads;
    /// new ones start unknown and are probed at once.
    pub fn apply_config(&self, config: BalancerConfig, written_ms: u64) {
        let mut inner = self.inner.lock();
        inner.config_ms = written_ms;
        let old = inner.config.clone();
        if old.listen != config.listen || old.admin_listen != config.admin_listen {
            tracing::warn!(
                "`listen` and `admin_listen` changes need a restart; keeping the old addresses"
            );
        }
        let now = Instant::now();
        for m in old.members() {
            if !config
                .upstreams
                .iter()
                .any(|u| u.id == m.id && u.addr == m.addr)
            {
                self.metrics
                    .upstream_healthy
                    .remove_label_values(&[&m.id])
                    .ok();
                inner.departed.push((m, now));
            }
        }
        inner.departed.retain(|(m, at)| {
            at.elapsed() < DEPARTED_PUSH_FOR && !config.upstreams.iter().any(|u| u.addr == m.addr)
        });
        let mut tracks = HashMap::new();
        for u in &config.upstreams {
            let same = old
                .upstreams
                .iter()
                .any(|o| o.id == u.id && o.addr == u.addr);
            let track = match inner.tracks.get(&u.id) {
                Some(t) if same => t.clone(),
                _ => Track::new(),
            };
            tracks.insert(u.id.clone(), track);
        }
        let ring_changed = old.members() != config.members() || old.vnodes != config.vnodes;
        inner.tracks = tracks;
        inner.config = Arc::new(config);
        if ring_changed || old.hash_param != inner.config.hash_param {
            self.rebuild(&mut inner);
        } else {
            // Same ring: keep the epoch, but take the other settings.
            let routing = build(&self.balancer_id, &mut inner, &self.metrics);
            self.routing.store(Arc::new(routing));
        }
        self.probe_now.notify_one();
    }

    /// Records one active check of `id`, and says what becomes of the
    /// connections open to it (see [`paths_after`]).
    pub fn record_check(&self, id: &str, check: Check) -> Paths {
        let mut inner = self.inner.lock();
        let (unhealthy_after, healthy_after) = (
            inner.config.health.unhealthy_after,
            inner.config.health.healthy_after,
        );
        inner.suspects.retain(|s| s != id);
        let Some(track) = inner.tracks.get_mut(id) else {
            return Paths::Keep;
        };
        let before = track.health;
        let next = track.record(check, unhealthy_after, healthy_after);
        if next != before {
            tracing::info!(upstream = id, from = ?before, to = ?next, "upstream health changed");
            self.rebuild(&mut inner);
        }
        paths_after(before, next, check)
    }

    /// Passive check: a connection to `id` was refused. The checker probes it
    /// at once and then quickly until it is decided either way.
    pub fn suspect(&self, id: &str) {
        let mut inner = self.inner.lock();
        if !inner.suspects.iter().any(|s| s == id) {
            inner.suspects.push(id.to_owned());
        }
        drop(inner);
        self.probe_now.notify_one();
    }

    pub fn has_suspects(&self) -> bool {
        !self.inner.lock().suspects.is_empty()
    }

    /// Members removed from the config recently: they still get views.
    pub fn departed(&self) -> Vec<Member> {
        let mut inner = self.inner.lock();
        inner
            .departed
            .retain(|(_, at)| at.elapsed() < DEPARTED_PUSH_FOR);
        inner.departed.iter().map(|(m, _)| m.clone()).collect()
    }

    /// The view to push now: the routing in force, the members recently
    /// removed, and the nodes whose pushes have been failing, with how long
    /// ago a push could last have renewed their lease.
    pub fn view(&self) -> RingView {
        let routing = self.routing();
        let now = Instant::now();
        let departed = self.departed();
        let inner = self.inner.lock();
        let unreachable = inner
            .pushes
            .iter()
            .filter(|(_, p)| p.failing.is_some())
            .map(|(id, p)| Unreachable {
                id: id.clone(),
                for_ms: now
                    .saturating_duration_since(p.renewed.unwrap_or(self.started))
                    .as_millis() as u64,
            })
            .collect();
        RingView {
            source: routing.balancer_id.clone(),
            config_ms: inner.config_ms,
            epoch: routing.epoch,
            vnodes: routing.config.vnodes,
            members: routing.config.members(),
            healthy: routing
                .owners
                .members()
                .iter()
                .map(|m| m.id.clone())
                .collect(),
            push_interval_ms: routing.config.push_interval_ms,
            departed,
            unreachable,
        }
    }

    /// Records how a push to node `id`, started at `started`, ended. A
    /// change between working and failing is logged once, with the reason,
    /// and shows in `/ring` and `roompin_balancer_upstream_control_ok`.
    pub fn record_push(&self, id: &str, started: Instant, outcome: &PushOutcome) {
        let mut inner = self.inner.lock();
        // A first push that fails is a change worth a log line too.
        let track = inner.pushes.entry(id.to_owned()).or_insert(PushTrack {
            renewed: None,
            failing: None,
        });
        let failing = match outcome {
            PushOutcome::Applied => None,
            PushOutcome::Rejected(why) => Some(format!("rejected: {why}")),
            PushOutcome::Unreached(why) => Some(format!("unreachable: {why}")),
            PushOutcome::Lost(why) => Some(format!("no answer: {why}")),
            // Our own shortage says nothing of the node's control channel.
            PushOutcome::NotSent(_) => return,
        };
        if matches!(outcome, PushOutcome::Applied | PushOutcome::Lost(_)) {
            track.renewed = Some(track.renewed.map_or(started, |r| r.max(started)));
        }
        match (&track.failing, &failing) {
            (Some(_), None) => tracing::info!(upstream = id, "view pushes to the node work"),
            (None, Some(why)) => {
                tracing::error!(upstream = id, reason = %why, "view push to the node failed: it cannot be told to move rooms")
            }
            _ => {}
        }
        let ok = failing.is_none();
        track.failing = failing;
        self.metrics
            .upstream_control_ok
            .with_label_values(&[id])
            .set(i64::from(ok));
    }

    /// Why pushes to `id` fail, if they do (`None`: working; never pushed
    /// counts as failing).
    pub fn push_status(&self, id: &str) -> Option<String> {
        match self.inner.lock().pushes.get(id) {
            Some(p) => p.failing.clone(),
            None => Some("no push yet".into()),
        }
    }

    fn rebuild(&self, inner: &mut Inner) {
        inner.epoch += 1;
        let routing = build(&self.balancer_id, inner, &self.metrics);
        tracing::info!(
            epoch = routing.epoch,
            owners = ?routing.owners.members().iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            "ring changed"
        );
        self.routing.store(Arc::new(routing));
        self.changed.notify_one();
    }
}

fn build(balancer_id: &str, inner: &mut Inner, metrics: &Metrics) -> Routing {
    let health: HashMap<String, Health> = inner
        .tracks
        .iter()
        .map(|(id, t)| (id.clone(), t.health))
        .collect();
    let ring = Ring::new(inner.config.members(), inner.config.vnodes);
    let owners = ring.without(|m| health.get(&m.id) != Some(&Health::Healthy));
    for (id, h) in &health {
        metrics
            .upstream_healthy
            .with_label_values(&[id])
            .set(i64::from(*h == Health::Healthy));
    }
    metrics.ring_epoch.set(inner.epoch as i64);
    Routing {
        epoch: inner.epoch,
        config: inner.config.clone(),
        balancer_id: balancer_id.to_owned(),
        owners,
        health,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's one registration (route.rs's tests share it; a second
    /// `register` in one process fails).
    fn metrics() -> Metrics {
        // The one registration every unit test shares.
        Metrics::for_tests()
    }

    /// Health after each check, from a fresh member: `unhealthy_after` 3,
    /// `healthy_after` 2. `o` ok, `f` failed, `d` draining (503).
    #[test]
    fn health_rules() {
        use Health::*;
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<Health>, &str)> = vec![
            ("o",      vec![Healthy], "a new member is admitted by its first good check"),
            ("f",      vec![Unhealthy], "a new member that fails is out"),
            ("fo",     vec![Unhealthy, Healthy], "never healthy yet: the first good check admits it"),
            ("off",    vec![Healthy, Healthy, Healthy], "two failures are a blip"),
            ("offf",   vec![Healthy, Healthy, Healthy, Unhealthy], "the third one is not"),
            ("offo f", vec![Healthy, Healthy, Healthy, Healthy, Healthy], "a success resets the streak"),
            ("od",     vec![Healthy, Unhealthy], "503: out at once"),
            ("odo",    vec![Healthy, Unhealthy, Unhealthy], "failback needs two good checks"),
            ("odoo",   vec![Healthy, Unhealthy, Unhealthy, Healthy], "and gets them"),
            ("odofoo", vec![Healthy, Unhealthy, Unhealthy, Unhealthy, Unhealthy, Healthy], "in a row"),
            // `n`: the probe never left (EMFILE, ENFILE, ENOBUFS here).
            ("onnnnn", vec![Healthy; 6], "our own shortage never takes a node out"),
            ("offnnf", vec![Healthy, Healthy, Healthy, Healthy, Healthy, Unhealthy], "nor breaks a streak of failures"),
            ("n",      vec![Unknown], "nor admits a new member"),
            ("fnno",   vec![Unhealthy, Unhealthy, Unhealthy, Healthy], "nor keeps one out"),
            ("odnno",  vec![Healthy, Unhealthy, Unhealthy, Unhealthy, Unhealthy], "nor counts toward failback"),
        ];
        for (checks, want, why) in cases {
            let mut t = Track::new();
            let got: Vec<Health> = checks
                .chars()
                .filter(|c| !c.is_whitespace())
                .map(|c| {
                    let check = match c {
                        'o' => Check::Ok,
                        'd' => Check::Draining,
                        'n' => Check::NotSent,
                        _ => Check::Failed,
                    };
                    t.record(check, 3, 2)
                })
                .collect();
            assert_eq!(got, want, "{checks}: {why}");
        }
    }

    /// When a check ends the member's connections: only when failures take
    /// a healthy member out.
    #[test]
    fn paths_are_cut_only_when_failures_take_a_member_out() {
        use Health::*;
        use Paths::*;
        #[rustfmt::skip]
        let cases = [
            (Healthy,   Unhealthy, Check::Failed,   Cut,  "unhealthy_after failures: out of reach"),
            (Healthy,   Healthy,   Check::Failed,   Keep, "a blip below unhealthy_after"),
            (Healthy,   Unhealthy, Check::Draining, Keep, "draining: it answers, and moves its clients itself"),
            (Unhealthy, Unhealthy, Check::Failed,   Keep, "already out: cut when it went"),
            (Unknown,   Unhealthy, Check::Failed,   Keep, "never in the ring: no connections to it"),
            (Unhealthy, Healthy,   Check::Ok,       Keep, "failback"),
            (Healthy,   Healthy,   Check::Ok,       Keep, "steady"),
        ];
        for (before, next, check, want, why) in cases {
            assert_eq!(paths_after(before, next, check), want, "{why}");
        }
        // Through the membership (`unhealthy_after` 2 by default): the
        // second failure in a row is the cut, and only it.
        let m = Membership::new(config(&[A, B]), 0, metrics());
        assert_eq!(m.record_check("a", Check::Ok), Keep);
        assert_eq!(m.record_check("a", Check::Failed), Keep);
        assert_eq!(m.record_check("a", Check::Failed), Cut);
        assert_eq!(m.record_check("a", Check::Failed), Keep);
        assert_eq!(m.record_check("b", Check::Ok), Keep);
        assert_eq!(m.record_check("b", Check::Draining), Keep);
        assert_eq!(m.record_check("nobody", Check::Failed), Keep);
    }

    fn config(upstreams: &[(&str, &str, u32)]) -> BalancerConfig {
        let mut toml = String::from(
            "listen = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\ncontrol_token = \"t\"\n",
        );
        for (id, addr, weight) in upstreams {
            toml.push_str(&format!(
                "[[upstream]]\nid = \"{id}\"\naddr = \"{addr}\"\nweight = {weight}\n"
            ));
        }
        BalancerConfig::from_toml(std::path::Path::new("t.toml"), &toml).expect("valid")
    }

    const A: (&str, &str, u32) = ("a", "127.0.0.1:9001", 1);
    const B: (&str, &str, u32) = ("b", "127.0.0.1:9002", 1);
    const C: (&str, &str, u32) = ("c", "127.0.0.1:9003", 1);

    fn healthy_ids(m: &Membership) -> Vec<String> {
        let mut ids: Vec<String> = m
            .routing()
            .owners
            .members()
            .iter()
            .map(|x| x.id.clone())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn reloads_keep_health_bump_the_epoch_only_for_ring_changes_and_remember_the_departed() {
        let m = Membership::new(config(&[A, B]), 0, metrics());
        m.record_check("a", Check::Ok);
        m.record_check("b", Check::Ok);
        assert_eq!(healthy_ids(&m), vec!["a", "b"]);
        let epoch = m.routing().epoch;

        // Same members, other settings: same epoch, health kept.
        let mut same = config(&[A, B]);
        same.push_interval_ms = 777;
        m.apply_config(same, 0);
        assert_eq!(m.routing().epoch, epoch);
        assert_eq!(m.routing().config.push_interval_ms, 777);
        assert_eq!(healthy_ids(&m), vec!["a", "b"]);

        // A new member starts unknown (owns nothing) until checked.
        m.apply_config(config(&[A, B, C]), 0);
        assert_eq!(m.routing().epoch, epoch + 1);
        assert_eq!(m.routing().health_of("c"), Health::Unknown);
        assert_eq!(healthy_ids(&m), vec!["a", "b"]);
        m.record_check("c", Check::Ok);
        assert_eq!(healthy_ids(&m), vec!["a", "b", "c"]);

        // A weight change is a ring change.
        m.apply_config(config(&[A, ("b", "127.0.0.1:9002", 2), C]), 0);
        assert_eq!(m.routing().epoch, epoch + 3);

        // A removed member is remembered, and gets views meanwhile.
        m.apply_config(config(&[A, C]), 0);
        let departed: Vec<String> = m.departed().into_iter().map(|x| x.id).collect();
        assert_eq!(departed, vec!["b"]);
        let view = m.view();
        assert_eq!(view.departed.len(), 1);
        assert!(!view.members.iter().any(|x| x.id == "b"));

        // The same id at another address is another node: unknown again.
        m.apply_config(config(&[A, ("c", "127.0.0.1:9999", 1)]), 0);
        assert_eq!(m.routing().health_of("c"), Health::Unknown);
        let departed: Vec<String> = m.departed().into_iter().map(|x| x.addr).collect();
        assert!(departed.contains(&"127.0.0.1:9003".to_owned()));
    }

    #[test]
    fn failing_pushes_are_reported_in_the_view_with_the_time_since_a_possible_renewal() {
        let m = Membership::new(config(&[A, B]), 0, metrics());
        assert!(
            m.push_status("a").is_some(),
            "never pushed counts as failing"
        );
        let t0 = Instant::now();
        m.record_push("a", t0, &PushOutcome::Applied);
        m.record_push("b", t0, &PushOutcome::Lost("timeout".into()));
        assert_eq!(m.push_status("a"), None);
        assert!(m.push_status("b").is_some_and(|w| w.contains("no answer")));
        m.record_push(
            "b",
            Instant::now(),
            &PushOutcome::Unreached("refused".into()),
        );
        m.record_push("a", Instant::now(), &PushOutcome::Rejected("401".into()));
        let view = m.view();
        let mut ids: Vec<&str> = view.unreachable.iter().map(|u| u.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, vec!["a", "b"], "both fail now");
        // b's lease may have been renewed by the lost push at t0, not by the
        // unreached one; a's by the push applied at t0.
        for u in &view.unreachable {
            assert!(u.for_ms <= t0.elapsed().as_millis() as u64 + 1);
        }
        m.record_push("a", Instant::now(), &PushOutcome::Applied);
        assert!(m.view().unreachable.iter().all(|u| u.id != "a"));
    }
}
