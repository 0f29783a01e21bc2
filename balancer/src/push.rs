//! Pushes this balancer's ownership view to every node: at once after each
//! ring change, and every `push_interval_ms` besides (a restarted node has
//! no view until it gets one). Nodes answer how many rooms they moved.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::routing::Membership;
use roompin_shared::control::{RingView, AUTHORIZATION, VIEW_PATH};

const PUSH_TIMEOUT: Duration = Duration::from_millis(1000);

pub struct ViewPusher {
    membership: Arc<Membership>,
    metrics: Metrics,
    client: Client<HttpConnector, Full<Bytes>>,
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
        }
    }

    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let routing = self.membership.routing();
            if routing.config.control_token.is_some() {
                self.push_all(routing.view(), routing.config.control_token.as_deref())
                    .await;
            }
            let every = Duration::from_millis(routing.config.push_interval_ms);
            tokio::select! {
                _ = self.membership.changed.notified() => {}
                _ = tokio::time::sleep(every) => {}
                _ = &mut shutdown => return,
            }
        }
    }

    async fn push_all(&self, view: RingView, token: Option<&str>) {
        let Ok(body) = serde_json::to_vec(&view) else {
            return;
        };
        let body = Bytes::from(body);
        let mut targets: Vec<String> = view.members.iter().map(|m| m.addr.clone()).collect();
        targets.extend(self.membership.departed().into_iter().map(|m| m.addr));
        let pushes = targets
            .iter()
            .map(|addr| self.push(addr, body.clone(), token));
        for result in futures_util::future::join_all(pushes).await {
            match result {
                Ok(moved) => {
                    self.metrics.view_pushes.with_label_values(&["ok"]).inc();
                    self.metrics.rooms_moved.inc_by(moved);
                }
                Err(e) => {
                    self.metrics.view_pushes.with_label_values(&["error"]).inc();
                    tracing::debug!(error = %e, epoch = view.epoch, "view push failed");
                }
            }
        }
    }

    /// Returns the number of rooms the node moved.
    async fn push(&self, addr: &str, body: Bytes, token: Option<&str>) -> anyhow::Result<u64> {
        let mut req = http::Request::post(format!("http://{addr}{VIEW_PATH}"))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let resp = tokio::time::timeout(
            PUSH_TIMEOUT,
            self.client.request(req.body(Full::new(body))?),
        )
        .await??;
        let status = resp.status();
        let body = tokio::time::timeout(PUSH_TIMEOUT, resp.into_body().collect())
            .await??
            .to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "{addr} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        Ok(answer["moved"].as_u64().unwrap_or(0))
    }
}
