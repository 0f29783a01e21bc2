//! The node's client for its peers' `/control/*`: where-is questions
//! (batched per peer, so a membership change that makes hundreds of rooms
//! change hands costs a few requests, not hundreds), handoff batches, the
//! settlement of a handoff whose answer was lost, and publishes passed on
//! to a room's new holder. Connections are kept alive between requests.
//!
//! Every call tells a refused connection (no process listening, so no room
//! there) apart from no answer (the peer may be alive and hold rooms).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::claim::ANSWER_TIMEOUT;
use crate::tasks;
use prometheus::IntCounterVec;
use roompin_shared::control::{
    AbortReply, AbortRequest, ForwardedPublish, Handoff, HandoffAck, HandoffBatch, HandoffOutcome,
    Holding, NodeRef, PublishBatch, PublishReply, Published, WhereReply, WhereRequest, ABORT_PATH,
    AUTHORIZATION, HANDOFF_PATH, PUBLISH_PATH, WHERE_PATH,
};
use roompin_shared::MeetingId;

/// What a peer said about a meeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Holding(Holding),
    /// The connection was refused: nothing runs there, so no room is there.
    Refused,
    /// No usable answer in time: the peer may hold the room.
    Unknown,
    /// It has no room, but it started within the time the asker asked it
    /// to vouch for: what it held before, it cannot say.
    Forgot,
}

/// Why a call to a peer failed.
#[derive(Debug)]
pub enum PeerError {
    /// Nothing listens there.
    Refused,
    /// It answered with an error status before acting (a 4xx: bad token,
    /// body refused): it did nothing.
    Rejected(String),
    /// No answer, or one that cannot be read: it may or may not have acted.
    Unknown(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Refused => write!(f, "connection refused"),
            PeerError::Rejected(why) => write!(f, "rejected: {why}"),
            PeerError::Unknown(why) => write!(f, "no answer: {why}"),
        }
    }
}

/// Meetings asked about in one request, at most.
const WHERE_BATCH: usize = 1000;
/// Requests in flight to one peer, at most.
const IN_FLIGHT: usize = 4;
/// Bytes of handoffs per request, about.
pub const HANDOFF_BATCH_BYTES: usize = 4 << 20;

struct Question {
    meeting: String,
    /// Whether the peer must remember this far back for "absent" to count.
    vouch: Option<Duration>,
    reply: oneshot::Sender<Answer>,
}

/// One batching queue per peer address.
type Queues = Mutex<HashMap<String, mpsc::UnboundedSender<Question>>>;

pub struct Peers {
    me: NodeRef,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
    queues: Queues,
    tasks: TaskTracker,
    panics: IntCounterVec,
    shutdown: CancellationToken,
}

impl Peers {
    pub fn new(
        me: NodeRef,
        token: Option<String>,
        tasks: TaskTracker,
        panics: IntCounterVec,
        shutdown: CancellationToken,
    ) -> Arc<Peers> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        Arc::new(Peers {
            me,
            token,
            client: Client::builder(TokioExecutor::new())
                // Below the peers' keep_alive_timeout_ms (5 s by default), so
                // that a pooled connection is never reused as the peer closes it.
                .pool_idle_timeout(Duration::from_secs(4))
                .build(connector),
            queues: Mutex::new(HashMap::new()),
            tasks,
            panics,
            shutdown,
        })
    }

    fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        tasks::spawn_on(
            &self.tasks,
            &self.panics,
            tasks::PEER,
            tracing::Span::none(),
            fut,
        );
    }

    /// The pooled HTTP client, for forwarding member requests too.
    pub fn client(&self) -> &Client<HttpConnector, Full<Bytes>> {
        &self.client
    }

    /// Asks `peer` what it has of `meeting`. Questions to the same peer that
    /// arrive while one request is out travel together in the next one.
    /// With `vouch`, an "absent" from a peer whose memory is shorter than
    /// that comes back as [`Answer::Forgot`].
    pub async fn where_is(
        self: &Arc<Self>,
        peer: &NodeRef,
        meeting: &MeetingId,
        vouch: Option<Duration>,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let question = Question {
            meeting: meeting.to_string(),
            vouch,
            reply,
        };
        if self.queue(peer).send(question).is_err() {
            return Answer::Unknown;
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(a)) => a,
            _ => Answer::Unknown,
        }
    }

    fn queue(self: &Arc<Self>, peer: &NodeRef) -> mpsc::UnboundedSender<Question> {
        let mut queues = self.queues.lock();
        if let Some(q) = queues.get(&peer.addr).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        queues.insert(peer.addr.clone(), tx.clone());
        let peers = self.clone();
        let addr = peer.addr.clone();
        self.spawn(async move { peers.ask_loop(addr, rx).await });
        tx
    }

    async fn ask_loop(self: Arc<Self>, addr: String, mut rx: mpsc::UnboundedReceiver<Question>) {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        loop {
            let first = tokio::select! {
                q = rx.recv() => match q { Some(q) => q, None => return },
                _ = self.shutdown.cancelled() => return,
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < WHERE_BATCH {
                match rx.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            let peers = self.clone();
            let addr = addr.clone();
            self.spawn(async move {
                let request = WhereRequest {
                    from: peers.me.clone(),
                    meetings: batch.iter().map(|q| q.meeting.clone()).collect(),
                };
                let result: Result<WhereReply, PeerError> = peers
                    .post(&addr, WHERE_PATH, &request, ANSWER_TIMEOUT)
                    .await;
                match result {
                    Ok(reply) if reply.answers.len() == batch.len() => {
                        let memory = reply.memory_ms.map(Duration::from_millis);
                        for (q, a) in batch.into_iter().zip(reply.answers) {
                            let forgot = a == Holding::Absent
                                && q.vouch.is_some_and(|v| memory.is_none_or(|m| m < v));
                            let _ = q.reply.send(if forgot {
                                Answer::Forgot
                            } else {
                                Answer::Holding(a)
                            });
                        }
                    }
                    other => {
                        let answer = match &other {
                            Err(PeerError::Refused) => Answer::Refused,
                            _ => Answer::Unknown,
                        };
                        if let Err(e) = &other {
                            tracing::debug!(%addr, error = %e, "where-is question failed");
                        }
                        for q in batch {
                            let _ = q.reply.send(answer.clone());
                        }
                    }
                }
                drop(slot);
            });
        }
    }

    /// Hands rooms to `peer`; one outcome per room, in order.
    pub async fn handoff(
        &self,
        peer: &NodeRef,
        rooms: Vec<Handoff>,
    ) -> Result<Vec<HandoffOutcome>, PeerError> {
        let bytes: usize = rooms
            .iter()
            .map(|h| h.events.iter().map(String::len).sum::<usize>())
            .sum();
        // A big batch takes longer to send and to adopt.
        let timeout =
            Duration::from_secs(2) + Duration::from_millis((bytes / (1 << 20)) as u64 * 200);
        let n = rooms.len();
        let batch = HandoffBatch {
            from: self.me.clone(),
            rooms,
        };
        let ack: HandoffAck = self.post(&peer.addr, HANDOFF_PATH, &batch, timeout).await?;
        if ack.outcomes.len() != n {
            return Err(PeerError::Unknown(format!(
                "{} outcomes for {n} rooms",
                ack.outcomes.len()
            )));
        }
        Ok(ack.outcomes)
    }

    /// Asks `peer` whether it adopted `room`, and if not, never to.
    pub async fn abort(
        &self,
        peer: &NodeRef,
        meeting: &MeetingId,
        room: &str,
    ) -> Result<bool, PeerError> {
        let request = AbortRequest {
            from: self.me.clone(),
            meeting_id: meeting.to_string(),
            room: room.to_owned(),
        };
        let reply: AbortReply = self
            .post(&peer.addr, ABORT_PATH, &request, ANSWER_TIMEOUT)
            .await?;
        Ok(reply.adopted)
    }

    /// Passes publishes on to a room's new holder.
    pub async fn forward(
        &self,
        peer: &NodeRef,
        publishes: Vec<ForwardedPublish>,
        hops: u8,
    ) -> Result<Vec<Published>, PeerError> {
        let n = publishes.len();
        let batch = PublishBatch {
            from: self.me.clone(),
            publishes,
            hops,
        };
        let reply: PublishReply = self
            .post(&peer.addr, PUBLISH_PATH, &batch, Duration::from_secs(2))
            .await?;
        if reply.results.len() != n {
            return Err(PeerError::Unknown(format!(
                "{} results for {n} publishes",
                reply.results.len()
            )));
        }
        Ok(reply.results)
    }

    async fn post<Q: Serialize, A: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Q,
        timeout: Duration,
    ) -> Result<A, PeerError> {
        let body = serde_json::to_vec(body).map_err(|e| PeerError::Rejected(e.to_string()))?;
        let mut req = http::Request::post(format!("http://{addr}{path}"))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PeerError::Rejected(e.to_string()))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if refused(&e) {
                    PeerError::Refused
                } else {
                    PeerError::Unknown(e.to_string())
                }
            })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| PeerError::Unknown(e.to_string()))?
                .to_bytes();
            if status.is_client_error() {
                return Err(PeerError::Rejected(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&bytes).trim()
                )));
            }
            if !status.is_success() {
                return Err(PeerError::Unknown(format!("{status}")));
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| PeerError::Unknown(format!("bad answer: {e}")))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PeerError::Unknown(format!("no answer within {timeout:?}")))?
    }
}

/// Whether a client error is a refused connection (nothing listens).
pub fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    false
}
