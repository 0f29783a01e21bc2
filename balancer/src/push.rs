//! Pushes this balancer's ownership view to every node: at once after each
//! ring change, and every `push_interval_ms` besides (a restarted node has
//! no view until it gets one, and a node that hears no view at all fences
//! itself). Each node is pushed to on its own, so one that does not answer
//! never delays the views of the others. Nodes answer with a typed
//! [`ViewAck`]; a failing push (a wrong token, a node out of reach) is an
//! error the operator sees in the log, in `/ring` and in the metrics.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::routing::{Membership, PushOutcome};
use roompin_shared::control::{ViewAck, AUTHORIZATION, VIEW_PATH};
use roompin_shared::Member;

const PUSH_TIMEOUT: Duration = Duration::from_millis(1000);

pub struct ViewPusher {
    membership: Arc<Membership>,
    metrics: Metrics,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Nodes with a push out: not pushed to again until it ends.
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// The last epoch whose moves were summed up in the log.
    logged_epoch: Arc<Mutex<u64>>,
}

impl ViewPusher {
    pub fn new(membership: Arc<Membership>, metrics: Metrics) -> ViewPusher {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(300)));
        ViewPusher {
            membership,
            metrics,
            client: Client::builder(TokioExecutor::new()).build(connector),
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            logged_epoch: Arc::new(Mutex::new(0)),
        }
    }

    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let routing = self.membership.routing();
            if routing.config.moves {
                self.push_all(routing.config.control_token.clone());
            }
            let every = Duration::from_millis(routing.config.push_interval_ms);
            tokio::select! {
                _ = self.membership.changed.notified() => {}
                _ = tokio::time::sleep(every) => {}
                _ = &mut shutdown => return,
            }
        }
    }

    /// Starts a push of the current view to every member and every member
    /// removed lately, except those whose last push is still out.
    fn push_all(&self, token: Option<String>) {
        let view = self.membership.view();
        let Ok(body) = serde_json::to_vec(&view) else {
            return;
        };
        let body = Bytes::from(body);
        let targets: Vec<Member> = view.members.iter().chain(&view.departed).cloned().collect();
        let mut round = Vec::new();
        for target in targets {
            if !self.in_flight.lock().insert(target.id.clone()) {
                continue;
            }
            let (client, membership, metrics, in_flight) = (
                self.client.clone(),
                self.membership.clone(),
                self.metrics.clone(),
                self.in_flight.clone(),
            );
            let (body, token, epoch) = (body.clone(), token.clone(), view.epoch);
            round.push(tokio::spawn(async move {
                let started = Instant::now();
                let outcome = push(&client, &target.addr, body, token.as_deref()).await;
                in_flight.lock().remove(&target.id);
                let (outcome, moving) = match outcome {
                    Ok(ack) => {
                        metrics.view_pushes.with_label_values(&["ok"]).inc();
                        metrics.rooms_moved.inc_by(ack.moving);
                        if ack.moving > 0 {
                            tracing::debug!(upstream = %target.id, epoch, moving = ack.moving, "node is handing rooms over");
                        }
                        (PushOutcome::Applied, Some(ack.moving))
                    }
                    Err(outcome @ PushOutcome::NotSent(_)) => {
                        metrics.local_shortages.with_label_values(&["push"]).inc();
                        tracing::warn!(upstream = %target.id, epoch, ?outcome, "view push not sent: no local resource");
                        (outcome, None)
                    }
                    Err(outcome) => {
                        metrics.view_pushes.with_label_values(&["error"]).inc();
                        tracing::debug!(upstream = %target.id, epoch, ?outcome, "view push failed");
                        (outcome, None)
                    }
                };
                membership.record_push(&target.id, started, &outcome);
                moving
            }));
        }
        // The first round of a new epoch: sum up what it moved, once.
        let logged = self.logged_epoch.clone();
        let first = {
            let mut last = logged.lock();
            let first = view.epoch > *last;
            *last = (*last).max(view.epoch);
            first
        };
        if first {
            let (epoch, nodes) = (view.epoch, round.len());
            tokio::spawn(async move {
                let answers = futures_util::future::join_all(round).await;
                let moving: u64 = answers
                    .iter()
                    .filter_map(|a| a.as_ref().ok().copied().flatten())
                    .sum();
                let answered = answers.iter().filter(|a| matches!(a, Ok(Some(_)))).count();
                tracing::info!(
                    epoch,
                    rooms_moving = moving,
                    answered,
                    nodes,
                    "membership change pushed"
                );
            });
        }
    }
}

/// One push; a failure says whether the view may have reached the node.
async fn push(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: &str,
    body: Bytes,
    token: Option<&str>,
) -> Result<ViewAck, PushOutcome> {
    let mut req = http::Request::post(format!("http://{addr}{VIEW_PATH}"))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| PushOutcome::Unreached(e.to_string()))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            if crate::shortage::is_local(&e) {
                PushOutcome::NotSent(e.to_string())
            } else if e.is_connect() {
                PushOutcome::Unreached(e.to_string())
            } else {
                PushOutcome::Lost(e.to_string())
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| PushOutcome::Lost(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let why = format!("{status} {}", String::from_utf8_lossy(&bytes).trim());
            return Err(PushOutcome::Rejected(why));
        }
        serde_json::from_slice::<ViewAck>(&bytes)
            .map_err(|e| PushOutcome::Rejected(format!("not a view ack: {e}")))
    };
    match tokio::time::timeout(PUSH_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(PushOutcome::Lost(format!(
            "no answer within {PUSH_TIMEOUT:?}"
        ))),
    }
}
