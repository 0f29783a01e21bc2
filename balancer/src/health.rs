//! Active health checks: `GET /healthz` on every member each
//! `health.interval_ms`, and at once (then every 100 ms) while a member is
//! suspect after a refused connection. Results go to `Membership`, which
//! applies the unhealthy-after / healthy-after counts.

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::routing::Membership;

/// The outcome of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Ok,
    /// No answer in time, refused, or an error status: maybe a blip, so it
    /// counts toward `unhealthy_after`.
    Failed,
    /// 503: the node says it is draining. That is no blip: it leaves the
    /// ring at once, so its rooms move while it still hands them over.
    Draining,
    /// The probe never left: this balancer had no descriptor, port or
    /// buffer for it (`shortage.rs`). It says nothing about the node, so
    /// it changes nothing: an attack on the balancer must not empty the
    /// ring.
    NotSent,
}

/// Probe cadence while some member is suspect.
const SUSPECT_INTERVAL: Duration = Duration::from_millis(100);

pub struct HealthChecker {
    membership: Arc<Membership>,
    metrics: Metrics,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// Set after the first round, so `/healthz` of the balancer means "I
    /// know which nodes are up".
    pub checked_once: AtomicBool,
}

impl HealthChecker {
    pub fn new(membership: Arc<Membership>, metrics: Metrics) -> HealthChecker {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // No pooling: each probe is a fresh connection, as a client's would be.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        HealthChecker {
            membership,
            metrics,
            client,
            checked_once: AtomicBool::new(false),
        }
    }

    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            self.round().await;
            self.checked_once.store(true, Ordering::Release);
            let routing = self.membership.routing();
            let mut wait = Duration::from_millis(routing.config.health.interval_ms);
            if self.membership.has_suspects() {
                wait = wait.min(SUSPECT_INTERVAL);
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.membership.probe_now.notified() => {}
                _ = &mut shutdown => return,
            }
        }
    }

    async fn round(&self) {
        let routing = self.membership.routing();
        let timeout = Duration::from_millis(routing.config.health.timeout_ms);
        let probes = routing.config.upstreams.iter().map(|u| async move {
            let check = self.probe(&u.addr, timeout).await;
            (u.id.clone(), check)
        });
        for (id, check) in futures_util::future::join_all(probes).await {
            self.membership.record_check(&id, check);
        }
    }

    async fn probe(&self, addr: &str, timeout: Duration) -> Check {
        let Ok(uri) = format!("http://{addr}/healthz").parse::<http::Uri>() else {
            return Check::Failed;
        };
        match tokio::time::timeout(timeout, self.client.get(uri)).await {
            Ok(Ok(resp)) if resp.status().is_success() => Check::Ok,
            Ok(Ok(resp)) if resp.status() == http::StatusCode::SERVICE_UNAVAILABLE => {
                Check::Draining
            }
            Ok(Err(e)) if crate::shortage::is_local(&e) => {
                self.metrics
                    .local_shortages
                    .with_label_values(&["probe"])
                    .inc();
                tracing::warn!(%addr, error = %e, "health probe not sent: no local resource; the node's health stays as it was");
                Check::NotSent
            }
            _ => Check::Failed,
        }
    }
}
