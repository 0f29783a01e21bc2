//! End-to-end: the node-wide history budget (docs/ARCHITECTURE.md,
//! "History") with 5,000 rooms on one node, whose `history_bytes` (2 MiB)
//! holds the full history of only a few hundred of them.
//!
//! Every room talks once, which fills the budget ten times over; then the
//! old rooms talk again, and the newest rooms last, on a full node. The
//! newest rooms' members drop and resume with `recovered: true` and get all
//! they missed (the old policy kept nothing for a room whose history began
//! on a full node). The old rooms lost their oldest events first, yet each
//! kept its share: a short drop there still resumes with `recovered: true`.
//! The node's history stays within the budget, and its RSS does not grow
//! with the second round's traffic (the bound is stated below).

use futures_util::{SinkExt, StreamExt};
use roompin_tests::{get, metric, NodeProc, PATIENCE};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const ROOMS: usize = 5_000;
/// The last rooms to talk: their events are the node's newest.
const NEWEST: usize = 200;
/// Old rooms whose members drop and resume too.
const OLD_SAMPLE: usize = 200;
const MESSAGES: usize = 4;
const TEXT: usize = 1_000;
const BUDGET: usize = 2 << 20;
/// Client tasks, and the source addresses 127.0.0.2..: connections are
/// spread over both.
const TASKS: usize = 16;
const SOURCES: u8 = 8;

/// One member of one room, straight over TCP from a chosen source address.
struct Member {
    index: usize,
    ws: WebSocketStream<TcpStream>,
    /// The room's incarnation (`welcome.room`).
    room: String,
    last_seq: u64,
}

fn meeting(index: usize) -> String {
    format!("hist-{index:05}")
}

fn source(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (index % SOURCES as usize) as u8)
}

/// Connects from `source(index)` and returns the socket and the welcome.
async fn connect(
    node: SocketAddr,
    index: usize,
    query: &str,
) -> anyhow::Result<(WebSocketStream<TcpStream>, Value)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source(index), 0)))?;
    let tcp = tokio::time::timeout(PATIENCE, socket.connect(node)).await??;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{node}/websocket?{query}");
    // Small buffers: the test process holds 5,000 of these.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio::time::timeout(
        PATIENCE,
        tokio_tungstenite::client_async_with_config(url, tcp, Some(config)),
    )
    .await??;
    let welcome = recv(&mut ws).await?;
    anyhow::ensure!(welcome["type"] == "welcome", "not a welcome: {welcome}");
    Ok((ws, welcome))
}

/// The next JSON text frame.
async fn recv(ws: &mut WebSocketStream<TcpStream>) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
            Some(Ok(Message::Close(f))) => anyhow::bail!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => anyhow::bail!("read error: {e}"),
            None => anyhow::bail!("connection ended"),
        }
    }
}

impl Member {
    /// Joins room `index` and reads its own join.
    async fn join(node: SocketAddr, index: usize) -> anyhow::Result<Member> {
        let query = format!("meeting_id={}&user=u{index}", meeting(index));
        let (ws, welcome) = connect(node, index, &query).await?;
        let mut m = Member {
            index,
            ws,
            room: welcome["room"].as_str().unwrap_or_default().to_owned(),
            last_seq: welcome["seq"].as_u64().unwrap_or(0),
        };
        m.expect("join").await?;
        Ok(m)
    }

    /// The next frame, which must be a room event of `kind` with the next seq.
    async fn expect(&mut self, kind: &str) -> anyhow::Result<Value> {
        let v = recv(&mut self.ws).await?;
        anyhow::ensure!(
            v["type"] == kind && v["seq"] == json!(self.last_seq + 1),
            "room {}: expected {kind} with seq {}, got {v}",
            self.index,
            self.last_seq + 1
        );
        self.last_seq += 1;
        Ok(v)
    }

    /// Sends `MESSAGES` messages and reads them back.
    async fn talk(&mut self) -> anyhow::Result<()> {
        let text = "x".repeat(TEXT);
        for _ in 0..MESSAGES {
            let frame = json!({"type": "message", "text": text}).to_string();
            self.ws.send(Message::text(frame)).await?;
        }
        for _ in 0..MESSAGES {
            self.expect("message").await?;
        }
        Ok(())
    }

    /// Drops (a clean close: the room sees the member's leave), then comes
    /// back with `since`. Returns the welcome and the seqs replayed before
    /// the member's own new join.
    async fn drop_and_resume(
        self,
        node: SocketAddr,
        since: u64,
    ) -> anyhow::Result<(Value, Vec<u64>)> {
        let Member {
            index,
            mut ws,
            room,
            ..
        } = self;
        ws.close(None).await?;
        // Wait for the node's close frame, so that the leave is in.
        while let Some(Ok(msg)) = tokio::time::timeout(PATIENCE, ws.next()).await? {
            if msg.is_close() {
                break;
            }
        }
        let query = format!(
            "meeting_id={}&user=u{index}&since={since}&since_room={room}",
            meeting(index)
        );
        let (mut ws, welcome) = connect(node, index, &query).await?;
        let seq = welcome["seq"].as_u64().unwrap_or(0);
        let mut replay = Vec::new();
        loop {
            let v = recv(&mut ws).await?;
            if v["type"] == "join" && v["seq"] == json!(seq + 1) {
                break;
            }
            replay.push(v["seq"].as_u64().unwrap_or(0));
        }
        Ok((welcome, replay))
    }
}

/// Runs `work` on every member, split over `TASKS` tasks, and hands the
/// members back in order.
async fn on_all<Fut>(members: Vec<Member>, work: fn(Member) -> Fut) -> Vec<Member>
where
    Fut: std::future::Future<Output = anyhow::Result<Member>> + Send + 'static,
{
    let mut slices: Vec<Vec<Member>> = (0..TASKS).map(|_| Vec::new()).collect();
    for m in members {
        slices[m.index % TASKS].push(m);
    }
    let tasks: Vec<_> = slices
        .into_iter()
        .map(|slice| {
            tokio::spawn(async move {
                let mut out = Vec::new();
                for m in slice {
                    out.push(work(m).await?);
                }
                anyhow::Ok(out)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task").expect("client work"));
    }
    all.sort_by_key(|m| m.index);
    all
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let need = 2 * ROOMS as u64 + 1_000;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let want = hard.min(20_000);
    assert!(
        want >= need,
        "this test needs {need} file descriptors; the hard limit is {hard}"
    );
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit");
    }
}

/// The node's resident memory, from /proc/<pid>/status.
fn rss_bytes(node: &NodeProc) -> u64 {
    let pid = node.proc.pid().expect("node runs").as_raw();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/<pid>/status")
}

async fn scrape(node: &NodeProc, series: &str) -> f64 {
    let (_, text) = get(&node.url("/metrics")).await.expect("metrics");
    metric(&text, series).unwrap_or_else(|| panic!("{series} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_rooms_of_a_full_node_resume_with_recovered_true() {
    raise_fd_limit();
    let started = Instant::now();
    let toml = format!(
        "history_events = 100\nhistory_bytes = {BUDGET}\n\
         # nobody is pinged during the test: members wait idle between phases\n\
         ping_interval_ms = 600000\n"
    );
    let node = NodeProc::with_toml("hist", &toml).await;
    let addr = node.addr;

    // Every room gets its member (and so its join event, seq 1).
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            tokio::spawn(async move {
                let mut out = Vec::new();
                for index in (t..ROOMS).step_by(TASKS) {
                    out.push(Member::join(addr, index).await?);
                }
                anyhow::Ok(out)
            })
        })
        .collect();
    let mut members = Vec::new();
    for t in tasks {
        members.extend(t.await.expect("client task").expect("join"));
    }
    println!(
        "{ROOMS} rooms open after {:?}: node RSS {} MiB",
        started.elapsed(),
        rss_bytes(&node) >> 20
    );

    // Round 1: every room talks (seqs 2..=M+1), which fills the budget
    // several times over and grows every connection's buffers once.
    let members = on_all(members, talk).await;
    let full = rss_bytes(&node);
    println!(
        "round 1 after {:?}: node RSS {} MiB, history {} bytes",
        started.elapsed(),
        full >> 20,
        scrape(&node, "roompin_node_history_bytes").await
    );

    // Round 2 (seqs M+2..=2M+1): the old rooms first, then the newest, on
    // a node whose budget is full.
    let (old, newest): (Vec<Member>, Vec<Member>) =
        members.into_iter().partition(|m| m.index < ROOMS - NEWEST);
    let old = on_all(old, talk).await;
    let newest = on_all(newest, talk).await;
    let after = rss_bytes(&node);
    println!(
        "round 2 after {:?}: node RSS {} MiB",
        started.elapsed(),
        after >> 20
    );
    let held = scrape(&node, "roompin_node_history_bytes").await;
    let swept = scrape(
        &node,
        "roompin_node_history_evicted_total{reason=\"history_bytes\"}",
    )
    .await;
    assert!(
        held <= BUDGET as f64,
        "history holds {held} bytes, over {BUDGET}"
    );
    assert!(held > BUDGET as f64 / 2.0, "the budget was used: {held}");
    assert!(swept > 0.0, "the budget was full, so the oldest went");

    // RSS. Round 2 sent another ~20 MiB. With no node-wide budget every
    // room would keep it (history_events is 100): measured, RSS then grows
    // by ~40 MiB in round 2 (real memory is ~1.6 times the bytes the
    // budget counts: allocator rounding, the rings' spare capacity). With
    // the budget, the history held at most BUDGET before round 2 and after
    // it, and every connection's buffers grew in round 1 already: the node
    // may grow by the budget once more (a ring's capacity left over where
    // rooms shrank), plus 4 MiB for the allocator's per-thread caches.
    // Measured: it does not grow at all.
    let bound = full + BUDGET as u64 + (4 << 20);
    assert!(
        after <= bound,
        "RSS grew from {} to {} MiB in round 2: over the bound of {} MiB",
        full >> 20,
        after >> 20,
        bound >> 20
    );

    // Members of the newest rooms drop, and resume from before round 2:
    // everything since is still there (M messages, and their own leave).
    let m = MESSAGES as u64;
    for (index, welcome, replay) in &on_all_resume(newest, addr, m + 1).await {
        assert_eq!(welcome["recovered"], true, "newest room {index}: {welcome}");
        assert_eq!(
            *replay,
            (m + 2..=2 * m + 2).collect::<Vec<_>>(),
            "newest room {index}"
        );
    }

    // The oldest rooms lost their oldest events first: a resume from their
    // join is not recovered. But each kept its share, so a member that
    // just dropped gets back its own leave with `recovered: true`.
    let sample: Vec<Member> = old.into_iter().take(OLD_SAMPLE).collect();
    for (index, welcome, replay) in &on_all_resume(sample, addr, 2 * m + 1).await {
        assert_eq!(welcome["recovered"], true, "old room {index}: {welcome}");
        assert_eq!(*replay, vec![2 * m + 2], "old room {index}: its own leave");
    }
    for index in 0..10 {
        let query = format!("meeting_id={}&since=1", meeting(index));
        let (_ws, welcome) = connect(addr, index, &query).await.expect("prober");
        assert_eq!(
            welcome["recovered"], false,
            "old room {index} kept all: {welcome}"
        );
    }
    let held = scrape(&node, "roompin_node_history_bytes").await;
    assert!(
        held <= BUDGET as f64,
        "history holds {held} bytes, over {BUDGET}"
    );
    println!("done after {:?}", started.elapsed());
}

async fn talk(mut m: Member) -> anyhow::Result<Member> {
    m.talk().await?;
    Ok(m)
}

/// Every member drops and resumes with `since`; returns the welcome and
/// replayed seqs of each.
async fn on_all_resume(
    members: Vec<Member>,
    node: SocketAddr,
    since: u64,
) -> Vec<(usize, Value, Vec<u64>)> {
    let mut slices: Vec<Vec<Member>> = (0..TASKS).map(|_| Vec::new()).collect();
    for m in members {
        slices[m.index % TASKS].push(m);
    }
    let tasks: Vec<_> = slices
        .into_iter()
        .map(|slice| {
            tokio::spawn(async move {
                let mut out = Vec::new();
                for m in slice {
                    let index = m.index;
                    let (welcome, replay) = m.drop_and_resume(node, since).await?;
                    out.push((index, welcome, replay));
                }
                anyhow::Ok(out)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task").expect("resume"));
    }
    all
}
