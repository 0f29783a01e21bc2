//! Scenario 4, a membership change under load: 3,000 meetings × 3 members
//! behind two balancers, each member publishing 1 msg/s and picking a
//! balancer at random on every (re)connect. A fourth node is added by
//! editing one balancer's TOML live and the other's 1 s later (config
//! management never updates every machine at once), then removed again the
//! same way. Measured per step, from the moment the change reached the last
//! balancer: how long until no meeting is split and every member sits on
//! its ring owner, the splits seen (count and longest, from the first edit
//! on), the rooms moved against the ideal 1/N, and messages lost or
//! duplicated.
//!
//! The members here reconnect by docs/PROTOCOL.md's rules (4001: at once
//! after 0–250 ms of jitter; otherwise exponential backoff with full
//! jitter; always resume with `since=<last seq>&since_room=<welcome.room>`), and
//! they resend a message the node refused (`room_moved`) or never echoed
//! once they are back in the room. Each message carries `<user>:<k>`, so
//! every member can tell, without trusting the server's seqs, which
//! messages of its meeting it got, and how often.

use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use roompin_shared::{Member as RingMember, Ring};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::env::{Env, Side};
use crate::peers::roompin::{self, Balancer, Node};
use crate::scenarios::room_sampler;

const TOKEN: &str = "bench-control-token";
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const SAMPLE: Duration = Duration::from_millis(50);
/// How often every node's live rooms are polled during a change, for splits
/// as the nodes see them (`room_sampler`).
const NODE_SAMPLE: Duration = Duration::from_millis(50);
/// Each member publishes once per this. At one message a second per member
/// (9,000 in and 27,000 frames out a second, each crossing a balancer) the
/// one server core of the pinned bench saturates: connects and view pushes
/// time out and a starved node fences itself, which measures the core, not
/// the move. One every 4 s (2,250 in, 6,750 out a second) leaves it
/// headroom; the scenario reports the servers' share of their core so a
/// saturated run shows as such.
const PUBLISH_EVERY: Duration = Duration::from_secs(4);
/// The second balancer's edit lands this long after the first's.
const SKEW: Duration = Duration::from_secs(1);

/// What the sampler can see of every member, without locks.
struct Shared {
    /// 0: not in a room now; i + 1: in a room on node i.
    node: Vec<AtomicU8>,
    publish: AtomicBool,
    stop: AtomicBool,
    reconnects_4001: AtomicU64,
    reconnects_other: AtomicU64,
    not_recovered: AtomicU64,
    room_moved_errors: AtomicU64,
    resent: AtomicU64,
    connect_failures: AtomicU64,
}

/// A member's own tally, handed back when it ends.
#[derive(Default)]
struct Tally {
    /// Messages this member published (`k` from 0).
    published: u64,
    /// When each was published (index `k`), to tell which step it was in.
    published_at: Vec<Instant>,
    /// Published but never echoed back to it.
    unacked: usize,
    received: HashSet<(u8, u64)>,
    duplicates: u64,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    conn_id: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    recovered: Option<bool>,
}

fn node_index(id: &str) -> u8 {
    id.rsplit('-')
        .next()
        .and_then(|i| i.parse::<u8>().ok())
        .map_or(0, |i| i.saturating_add(1))
}

struct MemberSpec {
    index: usize,
    meeting: String,
    user: u8,
    /// The balancers; one is picked at random for every (re)connect.
    targets: [SocketAddr; 2],
    source: IpAddr,
    connect_at: Instant,
}

async fn member(spec: MemberSpec, shared: Arc<Shared>) -> Tally {
    let mut t = Tally::default();
    let mut unacked: BTreeMap<u64, String> = BTreeMap::new();
    let mut resume: Option<(u64, String)> = None; // (last seq, room)
    let mut attempt = 0u32;
    let mut delay = spec.connect_at.saturating_duration_since(Instant::now());
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let me = format!("u{}", spec.user);
    // First publish at a random phase of the period.
    let mut next_publish = spec.connect_at
        + Duration::from_millis(rng.random_range(0..PUBLISH_EVERY.as_millis() as u64));
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(delay).await;
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let target = spec.targets[rng.random_range(0..2)];
        let mut url = format!(
            "ws://{}/websocket?meeting_id={}&user={me}",
            target, spec.meeting
        );
        if let Some((seq, room)) = &resume {
            url.push_str(&format!("&since={seq}&since_room={room}"));
        }
        let ws = async {
            let socket = TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(spec.source, 0))?;
            let stream = socket.connect(target).await?;
            stream.set_nodelay(true)?;
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
                    .await
                    .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(ws)
        };
        let mut ws = match tokio::time::timeout(Duration::from_secs(10), ws).await {
            Ok(Ok(ws)) => ws,
            _ => {
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                shared.reconnects_other.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                delay = backoff(&mut rng, attempt);
                continue;
            }
        };
        let mut my_conn = String::new();
        let mut joined = false;
        let mut close_code: Option<u16> = None;
        loop {
            // One timer per publish, not a fast ticker: 9,000 members
            // ticking every 100 ms loaded this process enough to delay the
            // handling of close frames, which the split detector then saw.
            let due = tokio::time::sleep_until(next_publish.into());
            let frame = tokio::select! {
                m = ws.next() => m,
                _ = due => {
                    if shared.stop.load(Ordering::Relaxed) {
                        let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
                        break;
                    }
                    let now = Instant::now();
                    if !shared.publish.load(Ordering::Relaxed) {
                        while next_publish <= now {
                            next_publish += PUBLISH_EVERY;
                        }
                        continue;
                    }
                    // Publish what is due (queued while away, sent once in).
                    while now >= next_publish {
                        next_publish += PUBLISH_EVERY;
                        let k = t.published;
                        t.published += 1;
                        t.published_at.push(now);
                        let text = format!("{me}:{k}");
                        let frame = json!({"type": "message", "text": text}).to_string();
                        unacked.insert(k, frame.clone());
                        if joined && ws.send(Message::text(frame)).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
            };
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(c))) => {
                    close_code = c.map(|c| u16::from(c.code));
                    break;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break,
            };
            let Ok(f) = serde_json::from_str::<Frame>(&text) else {
                continue;
            };
            // The welcome's seq is the room's, not one we have seen yet.
            if let (Some(seq), false) = (f.seq, f.kind == "welcome") {
                if let Some((last, _)) = resume.as_mut() {
                    *last = (*last).max(seq);
                }
            }
            match f.kind.as_str() {
                "welcome" => {
                    let room = f.room.unwrap_or_default();
                    let seq = f.seq.unwrap_or(0);
                    if f.recovered == Some(false) {
                        shared.not_recovered.fetch_add(1, Ordering::Relaxed);
                    }
                    // A new incarnation numbers afresh: the replay is all new.
                    resume = match resume.take() {
                        Some((last, r)) if r == room => Some((last, r)),
                        // First connection: the live stream starts after `seq`.
                        None => Some((seq, room)),
                        _ => Some((0, room)),
                    };
                    my_conn = f.conn_id.unwrap_or_default();
                    shared.node[spec.index].store(
                        node_index(f.node.as_deref().unwrap_or("")),
                        Ordering::Relaxed,
                    );
                    attempt = 0;
                }
                // Our own join: the replay is over; resend what never came back.
                "join" if !joined && f.conn_id.as_deref() == Some(my_conn.as_str()) => {
                    joined = true;
                    for frame in unacked.values() {
                        shared.resent.fetch_add(1, Ordering::Relaxed);
                        if ws.send(Message::text(frame.clone())).await.is_err() {
                            break;
                        }
                    }
                }
                "message" => {
                    let id = f.text.as_deref().and_then(|t| {
                        let (u, k) = t.split_once(':')?;
                        Some((
                            u.strip_prefix('u')?.parse::<u8>().ok()?,
                            k.parse::<u64>().ok()?,
                        ))
                    });
                    if let Some(id) = id {
                        if !t.received.insert(id) {
                            t.duplicates += 1;
                        }
                        if f.from.as_deref() == Some(me.as_str()) && id.0 == spec.user {
                            unacked.remove(&id.1);
                        }
                    }
                }
                "error" if f.code.as_deref() == Some("room_moved") => {
                    shared.room_moved_errors.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        shared.node[spec.index].store(0, Ordering::Relaxed);
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        match close_code {
            Some(4001) | Some(4002) => {
                shared.reconnects_4001.fetch_add(1, Ordering::Relaxed);
                delay = Duration::from_millis(rng.random_range(0..=250));
            }
            _ => {
                shared.reconnects_other.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                delay = backoff(&mut rng, attempt);
            }
        }
    }
    t.unacked = unacked.len();
    t
}

fn backoff(rng: &mut impl Rng, attempt: u32) -> Duration {
    let cap = FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.min(10))
        .min(MAX_BACKOFF);
    Duration::from_millis(rng.random_range(0..=cap.as_millis() as u64))
}

/// Per meeting: the node its connected members are on (0 when none is
/// connected), and whether they are on more than one.
fn snapshot(shared: &Shared, meetings: usize) -> (Vec<u8>, usize, usize) {
    let (nodes, split, away, _) = snapshot_split(shared, meetings);
    (nodes, split, away)
}

/// As [`snapshot`], plus which meetings are split.
fn snapshot_split(shared: &Shared, meetings: usize) -> (Vec<u8>, usize, usize, Vec<bool>) {
    let mut splits = vec![false; meetings];
    let mut nodes = vec![0u8; meetings];
    let mut split = 0;
    let mut away = 0;
    for m in 0..meetings {
        let mut seen = 0u8;
        let mut is_split = false;
        for u in 0..3 {
            let n = shared.node[m * 3 + u].load(Ordering::Relaxed);
            if n == 0 {
                away += 1;
            } else if seen == 0 {
                seen = n;
            } else if seen != n {
                is_split = true;
            }
        }
        nodes[m] = seen;
        split += is_split as usize;
        splits[m] = is_split;
    }
    (nodes, split, away, splits)
}

fn ring_owners(nodes: &[&Node], meetings: &[String]) -> Vec<u8> {
    let members = nodes
        .iter()
        .map(|n| RingMember {
            id: n.id.clone(),
            addr: n.addr.to_string(),
            weight: 1,
        })
        .collect();
    let ring = Ring::new(members, 512);
    meetings
        .iter()
        .map(|m| ring.owner(m).map_or(0, |o| node_index(&o.id)))
        .collect()
}

/// Edits the first balancer's TOML to `nodes`, the second's `SKEW` later,
/// and watches until every member is on its new ring owner (and a little
/// longer, for late splits), within `cap` of the second edit. Convergence
/// counts from the second edit: the change reaching the last balancer.
/// Splits count from the first.
/// `nodes` is the new member set; `all_nodes` every node running, whose
/// rooms are polled.
async fn change(
    label: &str,
    balancers: [&Balancer; 2],
    (nodes, all_nodes): (&[&Node], &[&Node]),
    meetings: &[String],
    shared: &Shared,
    (cap, linger): (Duration, Duration),
    servers: &Servers,
) -> anyhow::Result<(Value, Instant)> {
    let n = meetings.len();
    // The servers' CPU rate before the change (the publishing alone), so
    // that what the move cost can be told apart from it.
    let (quiet_from, quiet_cpu) = (Instant::now(), servers.cpu());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_at_edit = servers.cpu();
    let baseline = cpu_at_edit
        .minus(&quiet_cpu)
        .per_second(quiet_from.elapsed());
    let (before, split0, away0) = snapshot(shared, n);
    let want = ring_owners(nodes, meetings);
    let ring_moves = before.iter().zip(&want).filter(|(a, b)| a != b).count();
    let addrs: Vec<SocketAddr> = all_nodes.iter().map(|n| n.addr).collect();
    let sampler = room_sampler::start(&addrs, TOKEN, NODE_SAMPLE);
    let first_edit = Instant::now();
    balancers[0].config.write(nodes)?;
    let mut watch = SplitWatch::new(n);
    // Where the members are, every sample from the first edit on: the
    // shape of the reconnect wave, to tell where convergence time goes.
    let mut timeline: Vec<[u64; 3]> = Vec::new();
    // The skew: sample splits meanwhile (the views disagree now).
    while first_edit.elapsed() < SKEW {
        tokio::time::sleep(SAMPLE).await;
        let (now, _, away) = watch.sample(shared, first_edit);
        timeline.push(wave_point(first_edit, &now, &want, away));
    }
    let t0 = Instant::now();
    balancers[1].config.write(nodes)?;
    let mut converged: Option<Duration> = None;
    let mut move_cpu: Option<ServerCpu> = None;
    let mut after = before.clone();
    while t0.elapsed() < cap {
        tokio::time::sleep(SAMPLE).await;
        let (now, split, away) = watch.sample(shared, first_edit);
        timeline.push(wave_point(first_edit, &now, &want, away));
        if converged.is_none() && away == 0 && split == 0 && now == want {
            converged = Some(t0.elapsed());
            after = now;
            move_cpu = Some(
                servers
                    .cpu()
                    .minus(&cpu_at_edit)
                    .minus(&baseline.times(first_edit.elapsed())),
            );
        }
        // Keep watching a while past convergence for late splits.
        if converged.is_some_and(|c| t0.elapsed() > c + linger) {
            break;
        }
    }
    let on_nodes = sampler.finish().await;
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    // 1/N of the bigger ring: the new node's share, or the removed one's.
    let ideal = n as f64 / nodes.len().max(before_members(&before)) as f64;
    let longest = watch.longest();
    let mut split_ids: Vec<&String> = watch.split_meetings.iter().map(|&m| &meetings[m]).collect();
    split_ids.sort();
    let mut node_split_ids: Vec<&String> = on_nodes.meetings.iter().collect();
    node_split_ids.sort();
    eprintln!(
        "  {label}: converged {:?} after the second edit; live on two nodes: {} meetings (longest {:?}, {} polls, {} failed); clients on two nodes: {} meetings (longest {longest:?}, last {:?} after the first edit); moved {moved} (ring {ring_moves}, ideal {ideal:.0})",
        converged, on_nodes.meetings.len(), on_nodes.longest, on_nodes.polls, on_nodes.failed_polls, watch.split_meetings.len(), watch.last_split
    );
    let reconnects = ring_moves * 3;
    let move_total = move_cpu.as_ref().map(ServerCpu::total);
    eprintln!(
        "  {label}: servers' CPU for the move, over their rate before it: {:.2} s, {:.0} µs per moved member ({}); before it they used {:.0} % of a core ({})",
        move_total.unwrap_or(f64::NAN),
        move_total.unwrap_or(f64::NAN) * 1e6 / reconnects.max(1) as f64,
        move_cpu.as_ref().map_or_else(|| "not converged".to_owned(), ServerCpu::describe),
        baseline.total() * 100.0,
        baseline.describe(),
    );
    let wave: Vec<String> = timeline
        .iter()
        .step_by(4)
        .map(|[t, away, wrong]| format!("{t}:{away}/{wrong}"))
        .collect();
    eprintln!(
        "  {label}: ms after first edit: away/not on owner: {}",
        wave.join(" ")
    );
    Ok((
        json!({
            "change": label,
            "nodes_after": nodes.len(),
            "skew_ms": SKEW.as_millis() as u64,
            "converged_ms": converged.map(|d| d.as_millis() as u64),
            // Splits as the nodes saw them: a meeting live on two nodes at
            // once, proven by polls of their rooms (room_sampler).
            "node_split_meetings": on_nodes.meetings.len(),
            "node_split_meeting_ids": node_split_ids,
            "node_longest_split_ms": on_nodes.longest.as_millis() as u64,
            "node_polls": on_nodes.polls,
            "node_failed_polls": on_nodes.failed_polls,
            // The rest: as the clients saw it (each member's node from its
            // welcome, cleared when it reads its close frame).
            "last_split_ms_after_first_edit": watch.last_split.map(|d| d.as_millis() as u64),
            "max_split_meetings": watch.max_split,
            "meetings_ever_split": watch.split_meetings.len(),
            // Which ones, to look them up in the servers' logs.
            "split_meeting_ids": split_ids,
            // Sampled every SAMPLE: a split seen once lasted up to one sample.
            "longest_split_ms": longest.as_millis() as u64,
            "split_samples": watch.split_samples,
            "samples": watch.samples,
            "split_before": split0,
            "members_away_before": away0,
            "rooms_moved": moved,
            "rooms_moved_by_ring": ring_moves,
            "ideal_moved": ideal,
            "moved_over_ideal": moved as f64 / ideal.max(1.0),
            // [ms after the first edit, members away, meetings not yet on
            // their ring owner], one per sample.
            "timeline": timeline,
            // Server CPU from the first edit to convergence, over what the
            // publishing alone took in the second before (all six server
            // processes): what the move itself cost.
            "move_server_cpu_s": move_total,
            "move_server_cpu_us_per_member": move_total.map(|c| c * 1e6 / reconnects.max(1) as f64),
            // The same, apart: [user, system] seconds of the balancers and
            // of the nodes. System time is the kernel's (TCP on loopback).
            "move_cpu_balancers_s": move_cpu.as_ref().map(|c| c.balancers),
            "move_cpu_nodes_s": move_cpu.as_ref().map(|c| c.nodes),
            // The servers' CPU rate in the second before the edit (the
            // publishing alone), in cores, [user, system] per role.
            "baseline_cores_balancers": baseline.balancers,
            "baseline_cores_nodes": baseline.nodes,
        }),
        first_edit,
    ))
}

/// One point of the wave: ms since the first edit, members away, meetings
/// whose connected members are not (yet) on their ring owner.
fn wave_point(first_edit: Instant, now: &[u8], want: &[u8], away: usize) -> [u64; 3] {
    let wrong = now.iter().zip(want).filter(|(a, b)| a != b).count();
    [
        first_edit.elapsed().as_millis() as u64,
        away as u64,
        wrong as u64,
    ]
}

/// Splits seen across samples: per meeting, since when it has been split.
struct SplitWatch {
    split_since: Vec<Option<Instant>>,
    longest: Duration,
    split_meetings: HashSet<usize>,
    last_split: Option<Duration>,
    max_split: usize,
    samples: u64,
    split_samples: u64,
}

impl SplitWatch {
    fn new(meetings: usize) -> SplitWatch {
        SplitWatch {
            split_since: vec![None; meetings],
            longest: Duration::ZERO,
            split_meetings: HashSet::new(),
            last_split: None,
            max_split: 0,
            samples: 0,
            split_samples: 0,
        }
    }

    /// One sample; returns (nodes per meeting, meetings split, members away).
    fn sample(&mut self, shared: &Shared, since: Instant) -> (Vec<u8>, usize, usize) {
        let (now, split, away, splits) = snapshot_split(shared, self.split_since.len());
        let t = Instant::now();
        for (m, is) in splits.iter().enumerate() {
            match (self.split_since[m], is) {
                (None, true) => {
                    self.split_since[m] = Some(t);
                    self.split_meetings.insert(m);
                }
                (Some(s), false) => {
                    self.longest = self.longest.max(t - s);
                    self.split_since[m] = None;
                }
                _ => {}
            }
        }
        self.samples += 1;
        if split > 0 {
            self.last_split = Some(since.elapsed());
            self.split_samples += 1;
        }
        self.max_split = self.max_split.max(split);
        (now, split, away)
    }

    fn longest(&self) -> Duration {
        self.split_since
            .iter()
            .flatten()
            .map(|s| s.elapsed())
            .fold(self.longest, Duration::max)
    }
}

/// Distinct nodes in use in a snapshot (for the ideal 1/N of the bigger ring).
fn before_members(nodes: &[u8]) -> usize {
    nodes
        .iter()
        .filter(|n| **n != 0)
        .collect::<HashSet<_>>()
        .len()
}

pub async fn run(env: &Env) -> anyhow::Result<Value> {
    let (meetings_n, steady, cap, linger) = if env.smoke {
        (
            20usize,
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_millis(300),
        )
    } else {
        (
            3000,
            Duration::from_secs(5),
            Duration::from_secs(60),
            Duration::from_secs(2),
        )
    };
    let nodes = roompin::start_nodes(env, "mb", 4, Some(TOKEN)).await?;
    let three: Vec<&Node> = nodes[..3].iter().collect();
    let four: Vec<&Node> = nodes.iter().collect();
    let b1 = Balancer::start(env, "mb-balancer-1", &three, Some(TOKEN)).await?;
    let b2 = Balancer::start(env, "mb-balancer-2", &three, Some(TOKEN)).await?;
    let balancers = [&b1, &b2];
    let servers = Servers {
        nodes: nodes.iter().map(|n| n.proc.pid()).collect(),
        balancers: vec![b1.proc.pid(), b2.proc.pid()],
    };
    let server_pids: Vec<u32> = servers
        .nodes
        .iter()
        .chain(&servers.balancers)
        .copied()
        .collect();
    let server_cores = env.cpus.of(Side::Server).len().max(1) as f64;
    let client_cores = env.cpus.of(Side::Client).len().max(1) as f64;
    let meetings: Vec<String> = (0..meetings_n).map(|i| format!("mb-{i:05}")).collect();
    let shared = Arc::new(Shared {
        node: (0..meetings_n * 3).map(|_| AtomicU8::new(0)).collect(),
        publish: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        reconnects_4001: AtomicU64::new(0),
        reconnects_other: AtomicU64::new(0),
        not_recovered: AtomicU64::new(0),
        room_moved_errors: AtomicU64::new(0),
        resent: AtomicU64::new(0),
        connect_failures: AtomicU64::new(0),
    });
    // Connect at 3,000/s from 127.0.0.2-50.
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(meetings_n * 3);
    for (m, meeting) in meetings.iter().enumerate() {
        for u in 0..3u8 {
            let index = m * 3 + u as usize;
            let spec = MemberSpec {
                index,
                meeting: meeting.clone(),
                user: u,
                targets: [b1.addr(), b2.addr()],
                source: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (index % 49) as u8)),
                connect_at: start + Duration::from_secs_f64(index as f64 / 3000.0),
            };
            tasks.push(tokio::spawn(member(spec, shared.clone())));
        }
    }
    let result = async {
        // All in, within a bound.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, split, away) = snapshot(&shared, meetings_n);
            if away == 0 && split == 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{away} of {} members not connected after 60 s",
                meetings_n * 3
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let connected_s = start.elapsed().as_secs_f64();
        shared.publish.store(true, Ordering::Relaxed);
        let publish_start = Instant::now();
        let cpu_start = (cpu_of(&server_pids), cpu_of(&[std::process::id()]));
        tokio::time::sleep(steady).await;
        let (add, add_at) = change(
            "add a 4th node",
            balancers,
            (&four, &four),
            &meetings,
            &shared,
            (cap, linger),
            &servers,
        )
        .await?;
        tokio::time::sleep(steady).await;
        let (remove, remove_at) = change(
            "remove it again",
            balancers,
            (&three, &four),
            &meetings,
            &shared,
            (cap, linger),
            &servers,
        )
        .await?;
        tokio::time::sleep(steady).await;
        shared.publish.store(false, Ordering::Relaxed);
        let publish_s = publish_start.elapsed().as_secs_f64();
        let cpu = (
            (cpu_of(&server_pids) - cpu_start.0) / publish_s / server_cores,
            (cpu_of(&[std::process::id()]) - cpu_start.1) / publish_s / client_cores,
        );
        // Drain: the last messages and any resends arrive.
        tokio::time::sleep(if env.smoke {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(3)
        })
        .await;
        anyhow::Ok((
            connected_s,
            publish_s,
            cpu,
            add,
            remove,
            [add_at, remove_at],
        ))
    }
    .await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut tallies = Vec::with_capacity(tasks.len());
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(15), t).await {
            Ok(Ok(t)) => tallies.push(t),
            _ => tallies.push(Tally::default()),
        }
    }
    let (connected_s, publish_s, (server_share, client_share), mut add, mut remove, step_starts) =
        result?;

    // Every member should have every message of its meeting exactly once.
    // A message counts in the step during which it was published (before
    // the first change: "steady").
    let step_of = |at: Instant| step_starts.iter().filter(|s| at >= **s).count();
    let mut published = 0u64;
    let mut lost = 0u64;
    let mut lost_by_step = [0u64; 3];
    let mut published_by_step = [0u64; 3];
    let mut duplicates = 0u64;
    let mut unacked = 0u64;
    for m in 0..meetings_n {
        let room = &tallies[m * 3..m * 3 + 3];
        let ids: Vec<((u8, u64), usize)> = room
            .iter()
            .enumerate()
            .flat_map(|(u, t)| {
                (0..t.published).map(move |k| {
                    let at = t.published_at.get(k as usize).copied();
                    ((u as u8, k), at.map_or(0, step_of))
                })
            })
            .collect();
        published += ids.len() as u64;
        for (_, step) in &ids {
            published_by_step[*step] += 1;
        }
        for t in room {
            for (id, step) in &ids {
                if !t.received.contains(id) {
                    lost += 1;
                    lost_by_step[*step] += 1;
                }
            }
            duplicates += t.duplicates;
            unacked += t.unacked as u64;
        }
    }
    add["published"] = json!(published_by_step[1]);
    add["lost"] = json!(lost_by_step[1]);
    remove["published"] = json!(published_by_step[2]);
    remove["lost"] = json!(lost_by_step[2]);
    let deliveries_expected = published * 3;
    let s = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let balancer_metrics: Vec<String> = balancers
        .iter()
        .flat_map(|b| {
            crate::procs::http_get(b.config.admin, "/metrics")
                .map(|(_, body)| {
                    body.lines()
                        .filter(|l| {
                            l.starts_with("roompin_balancer_rooms_moved_total")
                                || l.starts_with("roompin_balancer_ring_epoch")
                        })
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect();
    // What the nodes forwarded (a member routed by a balancer that had not
    // seen the edit yet) and handed off, summed over the run.
    let node_metrics: Vec<String> = nodes
        .iter()
        .flat_map(|n| {
            crate::procs::http_get(n.addr, "/metrics")
                .map(|(_, body)| {
                    body.lines()
                        .filter(|l| {
                            l.starts_with("roompin_node_relayed_total")
                                || l.starts_with("roompin_node_handoffs_total")
                        })
                        .map(|l| format!("{}: {l}", n.id))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect();
    let summary = json!({
        "meetings": meetings_n,
        "members": meetings_n * 3,
        "connected_in_s": connected_s,
        "publish_s": publish_s,
        // CPU over the publishing window, as a share of each side's cores:
        // near 1 on the server side means the run measured a saturated
        // core; near 1 on the client side, that it was client-bound.
        "server_cpu_share": server_share,
        "client_cpu_share": client_share,
        "server_bound": server_share >= 0.9,
        "client_bound": client_share >= 0.9,
        "published": published,
        "deliveries_expected": deliveries_expected,
        "lost": lost,
        "lost_before_the_changes": lost_by_step[0],
        "duplicates": duplicates,
        "never_echoed": unacked,
        "resent": s(&shared.resent),
        "room_moved_errors": s(&shared.room_moved_errors),
        "reconnects_4001": s(&shared.reconnects_4001),
        "reconnects_other": s(&shared.reconnects_other),
        "connect_failures": s(&shared.connect_failures),
        "not_recovered": s(&shared.not_recovered),
        "changes": [add, remove],
        "balancer_metrics": balancer_metrics,
        "node_metrics": node_metrics,
    });
    drop(b1);
    drop(b2);
    drop(nodes);
    Ok(json!({
        "params": { "meetings": meetings_n, "members_per_meeting": 3, "msgs_per_sec_per_member": 1.0 / PUBLISH_EVERY.as_secs_f64(), "balancers": 2, "skew_ms": SKEW.as_millis() as u64, "steady_s": steady.as_secs(), "watch_cap_s": cap.as_secs(), "sample_ms": SAMPLE.as_millis() as u64, "vnodes": 512 },
        "summary": summary,
    }))
}

/// The server processes, by role, to tell where a move's CPU goes.
struct Servers {
    nodes: Vec<u32>,
    balancers: Vec<u32>,
}

impl Servers {
    fn cpu(&self) -> ServerCpu {
        ServerCpu {
            balancers: cpu_split(&self.balancers),
            nodes: cpu_split(&self.nodes),
        }
    }
}

/// CPU of the servers, `[user, system]` seconds (or cores, as a rate) of
/// the balancers and of the nodes.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ServerCpu {
    balancers: [f64; 2],
    nodes: [f64; 2],
}

impl ServerCpu {
    fn map2(&self, other: &ServerCpu, f: impl Fn(f64, f64) -> f64) -> ServerCpu {
        let pair = |a: [f64; 2], b: [f64; 2]| [f(a[0], b[0]), f(a[1], b[1])];
        ServerCpu {
            balancers: pair(self.balancers, other.balancers),
            nodes: pair(self.nodes, other.nodes),
        }
    }

    fn minus(&self, other: &ServerCpu) -> ServerCpu {
        self.map2(other, |a, b| a - b)
    }

    /// Seconds over `d` as a rate (cores).
    fn per_second(&self, d: Duration) -> ServerCpu {
        let s = d.as_secs_f64().max(1e-3);
        self.scaled(1.0 / s)
    }

    /// A rate (cores) over `d` as seconds.
    fn times(&self, d: Duration) -> ServerCpu {
        self.scaled(d.as_secs_f64())
    }

    fn scaled(&self, k: f64) -> ServerCpu {
        let scale = |[u, s]: [f64; 2]| [u * k, s * k];
        ServerCpu {
            balancers: scale(self.balancers),
            nodes: scale(self.nodes),
        }
    }

    fn total(&self) -> f64 {
        self.balancers.iter().chain(&self.nodes).sum()
    }

    fn describe(&self) -> String {
        format!(
            "balancers {:.2} user + {:.2} sys, nodes {:.2} user + {:.2} sys",
            self.balancers[0], self.balancers[1], self.nodes[0], self.nodes[1]
        )
    }
}

/// `[user, system]` CPU seconds of these processes so far.
fn cpu_split(pids: &[u32]) -> [f64; 2] {
    pids.iter()
        .filter_map(|&p| crate::procs::cpu_times(p))
        .fold([0.0, 0.0], |[u, s], (pu, ps)| [u + pu, s + ps])
}

/// CPU seconds (user + system) of these processes so far.
fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|&p| crate::procs::cpu_seconds(p))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_cpu_arithmetic() {
        let a = ServerCpu {
            balancers: [3.0, 5.0],
            nodes: [7.0, 9.0],
        };
        let b = ServerCpu {
            balancers: [1.0, 1.0],
            nodes: [2.0, 4.0],
        };
        assert_eq!(
            a.minus(&b),
            ServerCpu {
                balancers: [2.0, 4.0],
                nodes: [5.0, 5.0]
            }
        );
        let rate = b.per_second(Duration::from_secs(2));
        assert_eq!(
            rate,
            ServerCpu {
                balancers: [0.5, 0.5],
                nodes: [1.0, 2.0]
            }
        );
        assert_eq!(rate.times(Duration::from_secs(2)), b);
        assert_eq!(a.total(), 24.0);
    }

    #[test]
    fn node_indices() {
        assert_eq!(node_index("mb-0"), 1);
        assert_eq!(node_index("mb-3"), 4);
        assert_eq!(node_index("x"), 0);
    }
}
