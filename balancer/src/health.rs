//! Active health checks: `GET /healthz` on every member each
//! `health.interval_ms`, and at once (then every 100 ms) while a member is
//! suspect after a refused connection. Results go to `Membership`, which
//! applies the unhealthy-after / healthy-after counts and decides whether
//! the member's open connections are on a dead path; the checker then ends
//! them through a [`PathCutter`] (the tunnel registry, `tunnels.rs`).

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::routing::{Membership, Paths};

/// Ends every open client connection to one upstream, so that its clients
/// reconnect (through some balancer, to a node they can reach). Returns how
/// many it ended.
pub trait PathCutter: Send + Sync {
    fn cut(&self, upstream: &str) -> usize;
}

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
    paths: Arc<dyn PathCutter>,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// Set after the first round, so `/healthz` of the balancer means "I
    /// know which nodes are up".
    pub checked_once: AtomicBool,
}

impl HealthChecker {
    pub fn new(
        membership: Arc<Membership>,
        metrics: Metrics,
        paths: Arc<dyn PathCutter>,
    ) -> HealthChecker {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // No pooling: each probe is a fresh connection, as a client's would be.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        HealthChecker {
            membership,
            metrics,
            paths,
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
            if self.membership.record_check(&id, check) == Paths::Cut {
                let cut = self.paths.cut(&id);
                tracing::warn!(
                    upstream = %id,
                    connections = cut,
                    "upstream out of reach: its connections ended so that their clients reconnect"
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use parking_lot::Mutex;
    use roompin_shared::config::BalancerConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Records which upstreams it was asked to cut.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<String>>);

    impl PathCutter for Recorded {
        fn cut(&self, upstream: &str) -> usize {
            self.0.lock().push(upstream.to_owned());
            7
        }
    }

    /// A node whose `/healthz` answers 200 while `answering`, and otherwise
    /// takes the connection and says nothing (a dead path, not a refusal).
    async fn node(answering: Arc<AtomicBool>) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let answering = answering.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    if answering.load(Ordering::Acquire) {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_node_that_fails_out_of_the_ring_has_its_connections_cut_once() {
        let up_a = Arc::new(AtomicBool::new(true));
        let a = node(up_a.clone()).await;
        let b = node(Arc::new(AtomicBool::new(true))).await;
        let toml = format!(
            "listen = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\ncontrol_token = \"t\"\n\
             [health]\ntimeout_ms = 200\nunhealthy_after = 2\n\
             [[upstream]]\nid = \"a\"\naddr = \"{a}\"\n\
             [[upstream]]\nid = \"b\"\naddr = \"{b}\"\n"
        );
        let config =
            BalancerConfig::from_toml(std::path::Path::new("t.toml"), &toml).expect("config");
        let membership = Membership::new(config, 0, Metrics::for_tests());
        let cutter = Arc::new(Recorded::default());
        let checker = HealthChecker::new(membership.clone(), Metrics::for_tests(), cutter.clone());
        let cuts = || cutter.0.lock().clone();

        checker.round().await;
        assert_eq!(membership.routing().owners.members().len(), 2);
        // a stops answering: one failure is a blip, the second takes it out
        // and ends its connections; later failures cut nothing more.
        up_a.store(false, Ordering::Release);
        checker.round().await;
        assert!(cuts().is_empty(), "cut after one failure: {:?}", cuts());
        checker.round().await;
        assert_eq!(cuts(), vec!["a"]);
        assert_eq!(membership.routing().owners.members().len(), 1);
        checker.round().await;
        assert_eq!(cuts(), vec!["a"], "cut again while already out");
        // It comes back (failback) and goes again: cut again.
        up_a.store(true, Ordering::Release);
        checker.round().await;
        checker.round().await;
        assert_eq!(membership.routing().owners.members().len(), 2);
        up_a.store(false, Ordering::Release);
        checker.round().await;
        checker.round().await;
        assert_eq!(cuts(), vec!["a", "a"]);
        // b never failed: it stayed in, and its connections were never cut.
        assert_eq!(
            membership.routing().health_of("b"),
            crate::routing::Health::Healthy
        );
    }
}
