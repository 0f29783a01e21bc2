//! Clients that record what they do into a [`History`], for tests that
//! judge a run with the checker afterwards:
//!
//! - a **WebSocket member** that stays: it reconnects by docs/PROTOCOL.md's
//!   rules (4001 at once after 0–250 ms of jitter, 4002 at once, anything
//!   else with exponential backoff and full jitter), always resumes with
//!   `since` and `since_room`, and picks a balancer at random on every
//!   (re)connect, as a client behind DNS round robin does;
//! - an **SSE member** that stays: it resumes with `Last-Event-ID` (and
//!   `since_room`, which the node reads beside the header) after an
//!   `event: moved` (at once, with the same jitter) or a drop (backoff);
//! - a **churner**: a WebSocket member that leaves every `churn_every` and
//!   rejoins fresh, without `since`, as a new joiner does;
//! - a **publisher** that POSTs through a random balancer at a given rate,
//!   round robin across meetings, and records each `202`'s seq and room;
//! - a [`NodePoller`] that samples every node's `GET /control/rooms`.
//!
//! Each client is one tokio task, so 100 meetings × 5 clients is cheap in
//! one test process. All tasks run on the runtime [`Clients::new`] is given:
//! the test's own, or one whose threads live in another network namespace
//! (see `netbed.rs`).

use crate::history::{parse_tag, tag_text, ClientKind, ClientLog, End, EventKind, History, Route};
use eventsource_stream::Eventsource;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use roompin_shared::control::{RoomsReport, ROOMS_PATH};
use roompin_shared::protocol::{
    close, error_code, PublishAccepted, PublishRequest, ServerEvent, NO_NODE_REASON,
};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

/// How the clients behave; the defaults follow docs/PROTOCOL.md.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Connect → `welcome` (WebSocket handshake or SSE response included);
    /// longer counts as a failed attempt.
    pub welcome_timeout: Duration,
    /// Backoff after a drop or a failed connect: `random(0, min(cap, base ×
    /// 2^attempt))`, with `attempt` reset once a connection stayed up for
    /// `stable_after`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub stable_after: Duration,
    /// Jitter before reconnecting after 4001 (SSE: `moved`).
    pub moved_jitter: Duration,
    /// WebSocket members send a ping this often (keepalive).
    pub ping_every: Option<Duration>,
    /// ...and drop the connection themselves when no pong came for this
    /// long. Off by default: a test of dead paths wants to see whether the
    /// system ends them, not the client.
    pub pong_timeout: Option<Duration>,
    /// SSE members drop a stream silent for this long (off by default).
    pub sse_idle_timeout: Option<Duration>,
    /// WebSocket members (not churners) publish a message this often; the
    /// echo of their own message is its ack.
    pub ws_publish_every: Option<Duration>,
    /// A churner leaves this long after its fresh welcome, and rejoins.
    pub churn_every: Duration,
    /// HTTP publishes: the request timeout, and how many may be in flight.
    pub publish_timeout: Duration,
    pub publish_in_flight: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            welcome_timeout: Duration::from_secs(5),
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(10),
            stable_after: Duration::from_secs(1),
            moved_jitter: Duration::from_millis(250),
            ping_every: Some(Duration::from_secs(2)),
            pong_timeout: None,
            sse_idle_timeout: None,
            ws_publish_every: None,
            churn_every: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(5),
            publish_in_flight: 64,
        }
    }
}

/// What every client task shares.
struct Shared {
    history: Arc<History>,
    /// Base URLs of the balancers, e.g. `http://10.99.0.11:8080`.
    balancers: Vec<String>,
    options: ClientOptions,
    http: reqwest::Client,
}

impl Shared {
    /// A balancer at random, other than those in `avoid` (if any is left).
    fn pick(&self, avoid: &[usize]) -> usize {
        let left: Vec<usize> = (0..self.balancers.len())
            .filter(|b| !avoid.contains(b))
            .collect();
        match left.len() {
            0 => rand::rng().random_range(0..self.balancers.len().max(1)),
            n => left[rand::rng().random_range(0..n)],
        }
    }

    /// What to wait after `outcome` through balancer `b`, by PROTOCOL.md;
    /// keeps `avoid`, the balancers that said they reach no node since the
    /// last welcome or other failure.
    fn wait_after(
        &self,
        b: usize,
        outcome: &Outcome,
        attempt: &mut u32,
        avoid: &mut Vec<usize>,
    ) -> Duration {
        if let Outcome::NoNode(_) = outcome {
            avoid.push(b);
            if avoid.len() < self.balancers.len() {
                return jitter(self.options.moved_jitter);
            }
        }
        avoid.clear();
        next_wait(&self.options, outcome, attempt)
    }

    fn base(&self, i: usize) -> &str {
        self.balancers.get(i).map(String::as_str).unwrap_or("")
    }
}

/// A set of recording clients on one runtime. Dropping it stops them.
pub struct Clients {
    shared: Arc<Shared>,
    runtime: Handle,
    members: Mutex<Vec<JoinHandle<()>>>,
    publishers: Mutex<Vec<JoinHandle<()>>>,
}

impl Clients {
    /// Clients of the balancers at `balancers` (base URLs such as
    /// `http://127.0.0.1:8080`), recording into `history`, running on
    /// `runtime` (`Handle::current()` on loopback).
    pub fn new(history: &Arc<History>, balancers: Vec<String>, runtime: Handle) -> Clients {
        Self::with_options(history, balancers, runtime, ClientOptions::default())
    }

    /// [`Clients::new`] with other [`ClientOptions`].
    pub fn with_options(
        history: &Arc<History>,
        balancers: Vec<String>,
        runtime: Handle,
        options: ClientOptions,
    ) -> Clients {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(options.welcome_timeout)
            .build()
            .unwrap_or_default();
        Clients {
            shared: Arc::new(Shared {
                history: history.clone(),
                balancers,
                options,
                http,
            }),
            runtime,
            members: Mutex::new(Vec::new()),
            publishers: Mutex::new(Vec::new()),
        }
    }

    fn spawn(
        &self,
        list: &Mutex<Vec<JoinHandle<()>>>,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let handle = self.runtime.spawn(task);
        if let Ok(mut list) = list.lock() {
            list.push(handle);
        }
    }

    fn log(&self, kind: ClientKind, meeting: &str) -> ClientLog {
        self.shared.history.client(kind, meeting)
    }

    /// A WebSocket member of `meeting` that stays.
    pub fn ws_member(&self, meeting: &str) -> ClientLog {
        let log = self.log(ClientKind::WsMember, meeting);
        let publish = self.shared.options.ws_publish_every;
        let task = ws_member(
            self.shared.clone(),
            log.clone(),
            meeting.to_owned(),
            None,
            publish,
        );
        self.spawn(&self.members, task);
        log
    }

    /// An SSE member of `meeting` that stays.
    pub fn sse_member(&self, meeting: &str) -> ClientLog {
        let log = self.log(ClientKind::SseMember, meeting);
        self.spawn(
            &self.members,
            sse_member(self.shared.clone(), log.clone(), meeting.to_owned()),
        );
        log
    }

    /// A WebSocket member of `meeting` that leaves and rejoins fresh every
    /// `churn_every`.
    pub fn churner(&self, meeting: &str) -> ClientLog {
        let log = self.log(ClientKind::Churner, meeting);
        let every = Some(self.shared.options.churn_every);
        let task = ws_member(
            self.shared.clone(),
            log.clone(),
            meeting.to_owned(),
            every,
            None,
        );
        self.spawn(&self.members, task);
        log
    }

    /// A publisher of `per_second` messages, round robin over `meetings`.
    pub fn publisher(&self, meetings: &[String], per_second: f64) -> ClientLog {
        let log = self.log(ClientKind::Publisher, "");
        let task = publisher(
            self.shared.clone(),
            log.clone(),
            meetings.to_vec(),
            per_second,
        );
        self.spawn(&self.publishers, task);
        log
    }

    /// `ws` WebSocket members, `sse` SSE members and `churners` churners in
    /// each of `meetings`.
    pub fn populate(&self, meetings: &[String], ws: usize, sse: usize, churners: usize) {
        for m in meetings {
            for _ in 0..ws {
                self.ws_member(m);
            }
            for _ in 0..sse {
                self.sse_member(m);
            }
            for _ in 0..churners {
                self.churner(m);
            }
        }
    }

    /// Stops the publishers (so that the last deliveries can settle).
    pub fn stop_publishers(&self) {
        abort_all(&self.publishers);
    }

    /// Stops every client. Call [`History::finish`] first: connections cut
    /// here then count as open at the end, not as drops.
    pub fn stop(&self) {
        abort_all(&self.publishers);
        abort_all(&self.members);
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop();
    }
}

fn abort_all(list: &Mutex<Vec<JoinHandle<()>>>) {
    if let Ok(mut list) = list.lock() {
        for h in list.drain(..) {
            h.abort();
        }
    }
}

/// `meetings` meeting ids, `mtg-000` on.
pub fn meeting_ids(meetings: usize) -> Vec<String> {
    (0..meetings).map(|i| format!("mtg-{i:03}")).collect()
}

fn jitter(up_to: Duration) -> Duration {
    let max = up_to.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(0..=max))
}

/// Exponential backoff with full jitter; bumps `attempt`.
fn backoff(o: &ClientOptions, attempt: &mut u32) -> Duration {
    let ceiling = o
        .backoff_base
        .saturating_mul(1u32 << (*attempt).min(16))
        .min(o.backoff_cap);
    *attempt = attempt.saturating_add(1);
    jitter(ceiling)
}

/// How one connection went.
enum Outcome {
    /// No welcome: the reason.
    NoWelcome(String),
    /// The balancer answered that it reaches no chat node (its own `503`).
    NoNode(String),
    /// Welcomed, then ended like this after being up for that long.
    Ended(End, Duration),
}

/// Whether a refused request was a balancer's own 503 saying it reaches no
/// chat node (docs/PROTOCOL.md: try another balancer at once).
fn no_node(status: u16, body: Option<&[u8]>) -> bool {
    status == 503 && body.is_some_and(|b| b.starts_with(NO_NODE_REASON.as_bytes()))
}

/// Where a member resumes from: the last seq it saw, and its incarnation.
type Resume = Option<(u64, String)>;

/// After a welcome: a fresh join or `recovered: false` starts counting from
/// `welcome.seq` in `welcome.room`; `recovered: true` goes on from `since`.
fn on_welcome(resume: &mut Resume, room: &str, seq: u64, recovered: Option<bool>) {
    if recovered != Some(true) {
        *resume = Some((seq, room.to_owned()));
    }
}

/// What to wait before reconnecting after `outcome`, by PROTOCOL.md.
fn next_wait(o: &ClientOptions, outcome: &Outcome, attempt: &mut u32) -> Duration {
    match outcome {
        Outcome::NoWelcome(_) | Outcome::NoNode(_) => backoff(o, attempt),
        Outcome::Ended(end, up) => {
            if *up >= o.stable_after {
                *attempt = 0;
            }
            match end {
                End::Left => Duration::ZERO,
                End::Closed(close::ROOM_MOVED) | End::Moved => {
                    *attempt = 0;
                    jitter(o.moved_jitter)
                }
                End::Closed(close::SLOW_CONSUMER) => {
                    *attempt = 0;
                    Duration::ZERO
                }
                _ => backoff(o, attempt),
            }
        }
    }
}

fn member_url(
    base: &str,
    route: &str,
    meeting: &str,
    user: &str,
    resume: &Resume,
    since: bool,
) -> String {
    let mut url = format!("{base}/{route}?meeting_id={meeting}&user={user}");
    if let Some((seq, room)) = resume {
        if since {
            url.push_str(&format!("&since={seq}"));
        }
        url.push_str(&format!("&since_room={room}"));
    }
    url
}

fn ws_base(http_base: &str) -> String {
    if let Some(rest) = http_base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = http_base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        http_base.to_owned()
    }
}

fn user_name(log: &ClientLog) -> String {
    format!("c{}", log.id())
}

/// A WebSocket member; `churn` makes it a churner, `publish` a publisher
/// of its own messages.
async fn ws_member(
    shared: Arc<Shared>,
    log: ClientLog,
    meeting: String,
    churn: Option<Duration>,
    publish: Option<Duration>,
) {
    let user = user_name(&log);
    let mut resume: Resume = None;
    let mut attempt = 0u32;
    let mut avoid = Vec::new();
    loop {
        let b = shared.pick(&avoid);
        log.connect(b, Route::Ws, resume.as_ref().map(|(s, r)| (*s, r.as_str())));
        let url = member_url(
            &ws_base(shared.base(b)),
            "websocket",
            &meeting,
            &user,
            &resume,
            true,
        );
        let outcome = ws_session(&shared, &log, &meeting, &url, &mut resume, churn, publish).await;
        match &outcome {
            Outcome::NoWelcome(reason) | Outcome::NoNode(reason) => {
                log.connect_failed(reason.as_str())
            }
            Outcome::Ended(end, _) => {
                log.ended(*end);
                if *end == End::Left {
                    resume = None;
                }
            }
        }
        tokio::time::sleep(shared.wait_after(b, &outcome, &mut attempt, &mut avoid)).await;
    }
}

/// Ticks if set, else never.
async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn every(d: Option<Duration>) -> Option<Interval> {
    d.map(|d| {
        let mut i = tokio::time::interval_at(Instant::now() + d, d);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    })
}

async fn ws_session(
    shared: &Shared,
    log: &ClientLog,
    meeting: &str,
    url: &str,
    resume: &mut Resume,
    churn: Option<Duration>,
    publish: Option<Duration>,
) -> Outcome {
    let o = &shared.options;
    let connect = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp)
                    if no_node(resp.status().as_u16(), resp.body().as_deref()) =>
                {
                    Outcome::NoNode(format!("connect: 503 {NO_NODE_REASON}"))
                }
                e => Outcome::NoWelcome(format!("connect: {e}")),
            })?;
        loop {
            let reason = match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok((ws, t)),
                Some(Ok(Message::Close(f))) => {
                    format!("closed before welcome: {:?}", f.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => format!("before welcome: {e}"),
                None => "ended before welcome".to_owned(),
            };
            return Err(Outcome::NoWelcome(reason));
        }
    };
    let (mut ws, first) = match tokio::time::timeout(o.welcome_timeout, connect).await {
        Err(_) => return Outcome::NoWelcome(format!("no welcome within {:?}", o.welcome_timeout)),
        Ok(Err(outcome)) => return outcome,
        Ok(Ok(x)) => x,
    };
    let Ok(ServerEvent::Welcome {
        node,
        room,
        seq,
        recovered,
        ..
    }) = serde_json::from_str::<ServerEvent>(first.as_str())
    else {
        return Outcome::NoWelcome(format!("first frame is not a welcome: {}", first.as_str()));
    };
    log.welcome(&node, &room, seq, recovered);
    on_welcome(resume, &room, seq, recovered);
    let welcomed = Instant::now();
    let mut ping = every(o.ping_every);
    let mut publish = every(publish);
    let mut last_heard = Instant::now();
    let leave = churn.map(|d| welcomed + d);
    let leave_at = async {
        match leave {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(leave_at);
    let mut pending: HashSet<u64> = HashSet::new();
    let ended = |end| Outcome::Ended(end, welcomed.elapsed());
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    last_heard = Instant::now();
                    on_frame(log, meeting, &room, t.as_str(), resume, &mut pending);
                }
                Some(Ok(Message::Close(f))) => {
                    return ended(End::Closed(f.map_or(1005, |f| f.code.into())))
                }
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(_)) | None => return ended(End::Dropped),
            },
            _ = tick(&mut ping) => {
                if o.pong_timeout.is_some_and(|t| last_heard.elapsed() > t) {
                    return ended(End::Dropped);
                }
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    return ended(End::Dropped);
                }
            }
            _ = tick(&mut publish) => {
                let tag = shared.history.next_tag();
                log.publish_sent(meeting, tag);
                let frame = serde_json::json!({"type": "message", "text": tag_text(tag)});
                if ws.send(Message::text(frame.to_string())).await.is_err() {
                    log.publish_failed(meeting, tag, "send failed");
                    return ended(End::Dropped);
                }
                pending.insert(tag);
            }
            _ = &mut leave_at => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return ended(End::Left);
            }
        }
    }
}

/// Records one text frame of a welcomed connection in `room`.
fn on_frame(
    log: &ClientLog,
    meeting: &str,
    room: &str,
    text: &str,
    resume: &mut Resume,
    pending: &mut HashSet<u64>,
) {
    let Ok(event) = serde_json::from_str::<ServerEvent>(text) else {
        return;
    };
    let (seq, kind, ts, tag) = match &event {
        ServerEvent::Message { seq, text, ts, .. } => {
            (*seq, EventKind::Message, Some(*ts), parse_tag(text))
        }
        ServerEvent::Join { seq, .. } => (*seq, EventKind::Join, None, None),
        ServerEvent::Leave { seq, .. } => (*seq, EventKind::Leave, None, None),
        ServerEvent::Error { code, message } => {
            // A message refused during a move: the node says which frame
            // only by order, so the oldest pending one is refused.
            if code == error_code::ROOM_MOVED {
                if let Some(&tag) = pending.iter().min() {
                    pending.remove(&tag);
                    log.publish_failed(meeting, tag, format!("{code}: {message}"));
                }
            }
            return;
        }
        _ => return,
    };
    log.event(room, seq, kind, text, ts, tag);
    if let Some(r) = resume.as_mut() {
        r.0 = seq;
    }
    if let Some(tag) = tag.filter(|t| pending.remove(t)) {
        log.publish_acked(meeting, tag, room, seq);
    }
}

/// An SSE member that stays.
async fn sse_member(shared: Arc<Shared>, log: ClientLog, meeting: String) {
    let user = user_name(&log);
    let mut resume: Resume = None;
    let mut attempt = 0u32;
    let mut avoid = Vec::new();
    loop {
        let b = shared.pick(&avoid);
        log.connect(
            b,
            Route::Sse,
            resume.as_ref().map(|(s, r)| (*s, r.as_str())),
        );
        // `Last-Event-ID` carries the seq; `since_room` rides in the query.
        let url = member_url(shared.base(b), "sse", &meeting, &user, &resume, false);
        let outcome = sse_session(&shared, &log, &meeting, &url, &mut resume).await;
        match &outcome {
            Outcome::NoWelcome(reason) | Outcome::NoNode(reason) => {
                log.connect_failed(reason.as_str())
            }
            Outcome::Ended(end, _) => log.ended(*end),
        }
        tokio::time::sleep(shared.wait_after(b, &outcome, &mut attempt, &mut avoid)).await;
    }
}

async fn sse_session(
    shared: &Shared,
    log: &ClientLog,
    meeting: &str,
    url: &str,
    resume: &mut Resume,
) -> Outcome {
    let o = &shared.options;
    let mut req = shared.http.get(url);
    if let Some((seq, _)) = resume {
        req = req.header("Last-Event-ID", seq.to_string());
    }
    let deadline = Instant::now() + o.welcome_timeout;
    let resp = match tokio::time::timeout_at(deadline, req.send()).await {
        Err(_) => return Outcome::NoWelcome(format!("no response within {:?}", o.welcome_timeout)),
        Ok(Err(e)) => return Outcome::NoWelcome(format!("request: {e}")),
        Ok(Ok(r)) => r,
    };
    if resp.status() != reqwest::StatusCode::OK {
        let status = resp.status();
        let body = tokio::time::timeout_at(deadline, resp.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        if no_node(status.as_u16(), Some(body.as_bytes())) {
            return Outcome::NoNode(format!("status {status}: {}", body.trim()));
        }
        return Outcome::NoWelcome(format!("status {status}: {}", body.trim()));
    }
    let mut events = resp.bytes_stream().eventsource();
    let welcome = loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => return Outcome::NoWelcome("no welcome in time".into()),
            Ok(None) => return Outcome::NoWelcome("stream ended before welcome".into()),
            Ok(Some(Err(e))) => return Outcome::NoWelcome(format!("stream: {e}")),
            Ok(Some(Ok(e))) if e.data.is_empty() => continue,
            Ok(Some(Ok(e))) => break e.data,
        }
    };
    let Ok(ServerEvent::Welcome {
        node,
        room,
        seq,
        recovered,
        ..
    }) = serde_json::from_str::<ServerEvent>(&welcome)
    else {
        return Outcome::NoWelcome(format!("first event is not a welcome: {welcome}"));
    };
    log.welcome(&node, &room, seq, recovered);
    on_welcome(resume, &room, seq, recovered);
    let welcomed = Instant::now();
    let mut pending = HashSet::new();
    loop {
        let next = match o.sse_idle_timeout {
            Some(idle) => match tokio::time::timeout(idle, events.next()).await {
                Ok(next) => next,
                Err(_) => return Outcome::Ended(End::Dropped, welcomed.elapsed()),
            },
            None => events.next().await,
        };
        match next {
            Some(Ok(e)) if e.event == "moved" => {
                return Outcome::Ended(End::Moved, welcomed.elapsed())
            }
            Some(Ok(e)) => on_frame(log, meeting, &room, &e.data, resume, &mut pending),
            Some(Err(_)) | None => return Outcome::Ended(End::Dropped, welcomed.elapsed()),
        }
    }
}

/// POSTs `per_second` messages, round robin over `meetings`.
async fn publisher(shared: Arc<Shared>, log: ClientLog, meetings: Vec<String>, per_second: f64) {
    if meetings.is_empty() || per_second <= 0.0 {
        return;
    }
    let o = &shared.options;
    let period = Duration::from_secs_f64(1.0 / per_second);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let limit = Arc::new(tokio::sync::Semaphore::new(o.publish_in_flight.max(1)));
    // Dropped with this task, so aborting the publisher aborts its posts.
    let mut posts = JoinSet::new();
    for i in 0.. {
        tick.tick().await;
        while posts.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let meeting = meetings[i % meetings.len()].clone();
        let b = shared.pick(&[]);
        let url = format!("{}/messages?meeting_id={meeting}", shared.base(b));
        let tag = shared.history.next_tag();
        let body = PublishRequest {
            text: tag_text(tag),
            user: Some("publisher".into()),
        };
        let (http, log, timeout) = (shared.http.clone(), log.clone(), o.publish_timeout);
        log.publish_sent(&meeting, tag);
        posts.spawn(async move {
            let post = http.post(url).json(&body).timeout(timeout).send();
            match post.await {
                Ok(resp) if resp.status() == reqwest::StatusCode::ACCEPTED => {
                    match resp.json::<PublishAccepted>().await {
                        Ok(a) => log.publish_acked(&meeting, tag, &a.room, a.seq),
                        Err(e) => log.publish_failed(&meeting, tag, format!("bad 202 body: {e}")),
                    }
                }
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    log.publish_failed(&meeting, tag, format!("status {status}: {}", body.trim()));
                }
                Err(e) => log.publish_failed(&meeting, tag, format!("request: {e}")),
            }
            drop(permit);
        });
    }
}

/// Samples every node's `GET /control/rooms` into a history. Dropping it
/// stops the polls.
pub struct NodePoller {
    tasks: Vec<JoinHandle<()>>,
}

/// A poll that takes longer than this counts as failed (a paused node).
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

impl NodePoller {
    /// Polls each `(node id, base URL)` every `every` (50 ms in the issue's
    /// tests) with the control `token`, each node on its own task so that a
    /// stalled node does not delay the others' samples.
    pub fn spawn(
        history: &Arc<History>,
        nodes: &[(String, String)],
        token: &str,
        every: Duration,
        runtime: &Handle,
    ) -> NodePoller {
        let tasks = nodes
            .iter()
            .map(|(id, base)| {
                let task = poll_node(
                    history.clone(),
                    id.clone(),
                    base.clone(),
                    token.to_owned(),
                    every,
                );
                runtime.spawn(task)
            })
            .collect();
        NodePoller { tasks }
    }

    /// Stops every poll.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for NodePoller {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn poll_node(
    history: Arc<History>,
    id: String,
    base: String,
    token: String,
    every: Duration,
) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(POLL_TIMEOUT)
        .build()
        .unwrap_or_default();
    let url = format!("{base}{ROOMS_PATH}");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = history.now();
        let report = async {
            let resp = http.get(&url).bearer_auth(&token).send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            resp.json::<RoomsReport>().await.ok()
        };
        let report = report.await;
        let received = history.now();
        history.node_sample(
            &id,
            sent,
            received,
            report.as_ref().map(|r| r.rooms.as_slice()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A balancer that reaches no node is skipped at once for another;
    /// only when every balancer said so does the client back off.
    #[test]
    fn a_balancer_without_nodes_sends_the_client_to_another_at_once() {
        assert!(no_node(
            503,
            Some(b"no healthy chat node: try again shortly\n")
        ));
        assert!(!no_node(503, Some(b"meeting is moving")), "a node's 503");
        assert!(!no_node(502, Some(b"no healthy chat node")));
        assert!(!no_node(503, None));

        let shared = Shared {
            history: History::manual(),
            balancers: vec!["b1".into(), "b2".into(), "b3".into()],
            options: ClientOptions::default(),
            http: reqwest::Client::new(),
        };
        let o = &shared.options;
        let no = Outcome::NoNode("503".into());
        let (mut attempt, mut avoid) = (0u32, Vec::new());
        assert!(shared.wait_after(0, &no, &mut attempt, &mut avoid) <= o.moved_jitter);
        for _ in 0..50 {
            assert_ne!(shared.pick(&avoid), 0, "b1 just said it has no node");
        }
        assert!(shared.wait_after(2, &no, &mut attempt, &mut avoid) <= o.moved_jitter);
        for _ in 0..50 {
            assert_eq!(shared.pick(&avoid), 1);
        }
        assert_eq!(attempt, 0, "no attempt counted while others are left");
        // The last one says so too: back off, and start over.
        shared.wait_after(1, &no, &mut attempt, &mut avoid);
        assert_eq!((attempt, avoid.len()), (1, 0));
        // Any other failure clears the list.
        shared.wait_after(0, &no, &mut attempt, &mut avoid);
        shared.wait_after(1, &Outcome::NoWelcome("x".into()), &mut attempt, &mut avoid);
        assert!(avoid.is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let o = ClientOptions::default();
        let mut attempt = 0;
        for n in 0..40 {
            let ceiling = (o.backoff_base * 2u32.pow(n.min(16))).min(o.backoff_cap);
            let wait = backoff(&o, &mut attempt);
            assert!(wait <= ceiling, "attempt {n}: {wait:?} > {ceiling:?}");
        }
        assert_eq!(attempt, 40);
    }

    #[test]
    fn reconnect_waits_follow_the_close_codes() {
        let o = ClientOptions::default();
        let up = Duration::from_millis(10);
        let mut attempt = 5;
        let moved = next_wait(&o, &Outcome::Ended(End::Closed(4001), up), &mut attempt);
        assert!(moved <= o.moved_jitter);
        assert_eq!(attempt, 0, "4001 resets the backoff");
        attempt = 5;
        assert_eq!(
            next_wait(&o, &Outcome::Ended(End::Closed(4002), up), &mut attempt),
            Duration::ZERO
        );
        assert!(next_wait(&o, &Outcome::Ended(End::Moved, up), &mut attempt) <= o.moved_jitter);
        attempt = 3;
        let dropped = next_wait(&o, &Outcome::Ended(End::Dropped, up), &mut attempt);
        assert!(dropped <= o.backoff_base * 8);
        assert_eq!(attempt, 4, "a drop backs off further");
        let stable = Outcome::Ended(End::Closed(1001), o.stable_after);
        next_wait(&o, &stable, &mut attempt);
        assert_eq!(attempt, 1, "a connection that stayed up resets the backoff");
        assert_eq!(
            next_wait(&o, &Outcome::Ended(End::Left, up), &mut attempt),
            Duration::ZERO
        );
    }

    #[test]
    fn members_resume_from_what_they_saw_in_its_incarnation() {
        let mut resume: Resume = None;
        on_welcome(&mut resume, "R", 4, None);
        assert_eq!(resume, Some((4, "R".into())));
        resume = Some((9, "R".into()));
        on_welcome(&mut resume, "R", 12, Some(true));
        assert_eq!(resume, Some((9, "R".into())), "the replay follows");
        on_welcome(&mut resume, "S", 3, Some(false));
        assert_eq!(resume, Some((3, "S".into())), "the new numbering");
        let ws = member_url("ws://b:1", "websocket", "m", "c1", &resume, true);
        assert_eq!(
            ws,
            "ws://b:1/websocket?meeting_id=m&user=c1&since=3&since_room=S"
        );
        let sse = member_url("http://b:1", "sse", "m", "c1", &resume, false);
        assert_eq!(sse, "http://b:1/sse?meeting_id=m&user=c1&since_room=S");
        assert_eq!(ws_base("http://10.0.0.1:80"), "ws://10.0.0.1:80");
    }
}
