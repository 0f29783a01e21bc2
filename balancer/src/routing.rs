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
use roompin_shared::control::RingView;
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

    pub fn view(&self) -> RingView {
        RingView {
            source: self.balancer_id.clone(),
            epoch: self.epoch,
            vnodes: self.config.vnodes,
            members: self.config.members(),
            healthy: self.owners.members().iter().map(|m| m.id.clone()).collect(),
            push_interval_ms: self.config.push_interval_ms,
        }
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
}

struct Inner {
    config: Arc<BalancerConfig>,
    tracks: HashMap<String, Track>,
    epoch: u64,
    departed: Vec<(Member, Instant)>,
    suspects: Vec<String>,
}

pub struct Membership {
    balancer_id: String,
    routing: ArcSwap<Routing>,
    inner: Mutex<Inner>,
    metrics: Metrics,
    /// Wakes the view pusher after every epoch change.
    pub changed: Notify,
    /// Wakes the health checker early (a new member, a suspect).
    pub probe_now: Notify,
}

impl Membership {
    pub fn new(config: BalancerConfig, metrics: Metrics) -> Arc<Membership> {
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
            tracks,
            epoch: 0,
            departed: Vec::new(),
            suspects: Vec::new(),
        };
        let routing = build(&balancer_id, &mut inner, &metrics);
        Arc::new(Membership {
            balancer_id,
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
    pub fn apply_config(&self, config: BalancerConfig) {
        let mut inner = self.inner.lock();
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

    /// Records one active check of `id`.
    pub fn record_check(&self, id: &str, check: Check) {
        let ok = check == Check::Ok;
        let mut inner = self.inner.lock();
        let (unhealthy_after, healthy_after) = (
            inner.config.health.unhealthy_after,
            inner.config.health.healthy_after,
        );
        inner.suspects.retain(|s| s != id);
        let Some(track) = inner.tracks.get_mut(id) else {
            return;
        };
        if ok {
            track.ok_streak += 1;
            track.fail_streak = 0;
        } else {
            track.fail_streak += 1;
            track.ok_streak = 0;
        }
        let next = match (track.health, ok) {
            (_, false) if check == Check::Draining => Health::Unhealthy,
            // A member never seen healthy (new, or still starting) is
            // admitted by its first good check: healthy_after guards
            // failback, not first admission.
            (Health::Unknown, true) => Health::Healthy,
            (Health::Unknown, false) => Health::Unhealthy,
            (Health::Unhealthy, true) if !track.ever_healthy => Health::Healthy,
            (Health::Healthy, false) if track.fail_streak >= unhealthy_after => Health::Unhealthy,
            // healthy_after is the guard against flapping on failback.
            (Health::Unhealthy, true) if track.ok_streak >= healthy_after => Health::Healthy,
            (same, _) => same,
        };
        if next != track.health {
            tracing::info!(upstream = id, from = ?track.health, to = ?next, "upstream health changed");
            track.health = next;
            track.ever_healthy |= next == Health::Healthy;
            self.rebuild(&mut inner);
        }
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
