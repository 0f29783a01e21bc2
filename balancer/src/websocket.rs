//! A WebSocket upgrade, from its request head to its tunnel: the meeting is
//! validated and routed (`route.rs`, as for every route), the owner is
//! connected to (and, if it refuses, the next node of the ring, named in
//! `x-roompin-skipped`), the head goes on over HTTP/1.1 with the
//! balancer's headers and whatever the client sent right behind it, and the
//! node's answer comes back with whatever the node sent right behind *it*
//! (its `welcome`). After a 101 the two sockets are handed to a tunnel task
//! (`tunnel.rs`) registered per upstream (`tunnels.rs`), and this
//! connection's own task ends.

use pingora::protocols::Stream;
use prometheus::{IntCounter, IntGauge};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::front::Front;
use crate::head::{self, Inspected};
use crate::outcome::Outcome;
use crate::read_head::{read_response_head, Head, NoHead};
use crate::respond;
use crate::route::{self, Refusal, Route};
use crate::tunnel::{Duplex, End, Side};
use roompin_shared::control::{BALANCER_HEADER, EPOCH_HEADER, SKIPPED_HEADER};
use roompin_shared::Member;

/// Connecting to a node on the same network should take milliseconds; a
/// node that does not answer in this time is treated like one that refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a node may take to answer an upgrade it has received.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer head a node may send.
const MAX_ANSWER_HEAD: usize = 16 * 1024;
/// How long the body of a refusal from a node (a 421, a 400) may take.
const REFUSAL_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one upgrade request; returns once its tunnel runs on its own
/// task, or once it has been answered otherwise.
pub async fn serve(
    front: &Front,
    mut client: Stream,
    head: Head,
    req: Inspected,
    started: Instant,
) {
    let mut outcome = Outcome::new(Route::WebSocket, started);
    let routing = front.membership.routing();
    let plan = match route::plan(&routing, req.query.as_deref()) {
        Ok(p) => p,
        Err(r) => return refuse(front, &mut client, r, outcome, None).await,
    };
    outcome.meeting = Some(plan.meeting.as_str().to_owned());
    let target = route::upstream_target(&req.path, req.query.as_deref(), &plan);

    // Connect, passing over the nodes that refuse.
    let mut refused: Vec<String> = Vec::new();
    let (mut upstream, mut epoch, mut balancer_id) =
        (plan.owner, plan.epoch, routing.balancer_id.clone());
    drop(routing);
    let mut node = loop {
        let connecting = Instant::now();
        match connect(&upstream).await {
            Ok(s) => {
                front
                    .metrics
                    .upstream_connect_seconds
                    .with_label_values(&[&upstream.id])
                    .observe(connecting.elapsed().as_secs_f64());
                break s;
            }
            Err(e) => {
                tracing::warn!(upstream = %upstream.id, error = %e, "connection to chat node failed; trying the next");
                front
                    .metrics
                    .upstream_errors
                    .with_label_values(&[&upstream.id])
                    .inc();
                front.membership.suspect(&upstream.id);
                refused.push(upstream.id.clone());
                let routing = front.membership.routing();
                match route::next_owner(&routing, plan.meeting.as_str(), &refused) {
                    Some(next) => {
                        upstream = next.clone();
                        epoch = routing.epoch;
                        balancer_id.clone_from(&routing.balancer_id);
                    }
                    None => {
                        let r = Refusal::new(502, "chat node unavailable: every healthy chat node refused the connection\n");
                        return refuse(front, &mut client, r, outcome, Some("ConnectRefused"))
                            .await;
                    }
                }
            }
        }
    };
    outcome.node = Some(upstream.id.clone());

    // The head, as the node gets it.
    let epoch = epoch.to_string();
    let skipped = refused.join(",");
    let client_ip = client.get_socket_digest().and_then(|d| {
        d.peer_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
    });
    let mut add = vec![
        (BALANCER_HEADER, balancer_id.as_str()),
        (EPOCH_HEADER, epoch.as_str()),
    ];
    if !refused.is_empty() {
        add.push((SKIPPED_HEADER, skipped.as_str()));
    }
    if let Some(ip) = &client_ip {
        add.push(("x-forwarded-for", ip.as_str()));
    }
    let mut out = match head::upstream_head(&head.buf[..head.head_len], &target, &add) {
        Ok(out) => out,
        Err(r) => return refuse(front, &mut client, r, outcome, None).await,
    };
    // Bytes the client sent right behind its head (its first frames) go
    // right behind it.
    out.extend_from_slice(&head.buf[head.head_len..]);
    drop(head);
    if let Err(e) = node.write_all(&out).await {
        let what = format!("the connection broke ({e})");
        return node_failed(front, &mut client, outcome, &upstream, &what).await;
    }
    drop(out);

    // The node's answer, with whatever came right behind it (the welcome).
    let answer = match read_response_head(&mut node, MAX_ANSWER_HEAD, ANSWER_TIMEOUT).await {
        Ok(a) => a,
        Err(NoHead::TimedOut { .. }) => {
            front
                .metrics
                .upstream_errors
                .with_label_values(&[&upstream.id])
                .inc();
            let r = Refusal::new(504, "chat node did not answer the upgrade in time\n");
            return refuse(front, &mut client, r, outcome, Some("ReadTimedout")).await;
        }
        Err(e) => {
            let what = format!("no answer to the upgrade ({e:?})");
            return node_failed(front, &mut client, outcome, &upstream, &what).await;
        }
    };
    let Some(status) = head::parse_response(&answer.buf[..answer.head_len]) else {
        return node_failed(front, &mut client, outcome, &upstream, "a malformed answer").await;
    };
    outcome.status = status.status;
    let sent = async {
        client.write_all(&answer.buf).await?;
        client.flush().await
    };
    if let Err(e) = sent.await {
        outcome.status = 0;
        outcome.record(&front.metrics, Some(&format!("client gone: {e}")));
        return;
    }
    if status.status != 101 {
        // A refusal from the node (421, 400, 503): pass its body on, then
        // close both; the client reconnects on a fresh connection.
        let already = (answer.buf.len() - answer.head_len) as u64;
        drop(answer);
        let _ = tokio::time::timeout(REFUSAL_BODY_TIMEOUT, async {
            match status.content_length {
                Some(len) => {
                    tokio::io::copy(
                        &mut (&mut node).take(len.saturating_sub(already)),
                        &mut client,
                    )
                    .await
                }
                None => tokio::io::copy(&mut node, &mut client).await,
            }
        })
        .await;
        respond::and_close(&mut client, b"").await;
        outcome.record(&front.metrics, None);
        return;
    }
    drop(answer);

    let open = Open {
        gauge: front.metrics.connections.with_label_values(&[&upstream.id]),
        requests: front
            .metrics
            .requests
            .with_label_values(&[Route::WebSocket.label(), "101"]),
        outcome,
        end: None,
    };
    open.gauge.inc();
    front
        .tunnels
        .spawn(&upstream.id, move |registration| async move {
            let _registration = registration;
            let mut open = open;
            open.end = Some(Duplex::new(&mut *client, &mut node).await);
        });
}

/// An open tunnel's bookkeeping, done when its task ends however it ends
/// (both sides closed, an error, or cut by `Tunnels`).
struct Open {
    gauge: IntGauge,
    requests: IntCounter,
    outcome: Outcome,
    end: Option<End>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
        self.requests.inc();
        let error = match &self.end {
            None => Some("cut".to_owned()),
            Some(End::Closed) => None,
            Some(End::Failed(Side::Client, e)) => Some(format!("client: {e}")),
            Some(End::Failed(Side::Node, e)) => Some(format!("node: {e}")),
        };
        let o = &self.outcome;
        tracing::info!(
            route = o.route.label(),
            meeting = o.meeting.as_deref().unwrap_or("-"),
            node = o.node.as_deref().unwrap_or("-"),
            status = o.status,
            secs = o.started.elapsed().as_secs_f64(),
            error,
            "request done"
        );
    }
}

async fn connect(upstream: &Member) -> io::Result<TcpStream> {
    let addr: SocketAddr = upstream
        .addr
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not an IP:port address"))?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The node failed after the connection was made: 502, as Pingora answers.
async fn node_failed(
    front: &Front,
    client: &mut Stream,
    outcome: Outcome,
    upstream: &Member,
    what: &str,
) {
    front
        .metrics
        .upstream_errors
        .with_label_values(&[&upstream.id])
        .inc();
    let r = Refusal::new(502, format!("chat node unavailable: {what}\n"));
    refuse(front, client, r, outcome, Some(what)).await
}

async fn refuse(
    front: &Front,
    client: &mut Stream,
    r: Refusal,
    mut outcome: Outcome,
    error: Option<&str>,
) {
    outcome.status = r.status;
    outcome.record(&front.metrics, error);
    respond::and_close(client, &respond::plain(r.status, &r.reason)).await;
}
