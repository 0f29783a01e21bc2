//! The end-to-end harness: start the real `roompin-node` and
//! `roompin-balancer` binaries on loopback ports, wait for `/healthz`, and
//! talk to them over real WebSocket, SSE and HTTP.
//!
//! The binaries are the ones `cargo test` builds beside this test binary
//! (`target/<profile>/`), so a test always runs the code it was built with.

pub mod catalogue;
pub mod cluster;
pub mod dashboard;
pub mod edge;
pub mod exercise;
pub mod flood;
pub mod history;
pub mod netbed;
pub mod process;
pub mod prometheus;
pub mod raw;
pub mod reconnect;
pub mod recorder;
pub mod scrape;
pub mod sse;
pub mod tokens;
pub mod traffic;
pub mod ws;

pub use cluster::{BalancerProc, Cluster, ClusterOptions};
pub use process::{free_port, wait_healthy, NodeOptions, NodeProc, Proc};
pub use sse::SseClient;
pub use ws::WsClient;

/// Default patience for anything that should happen "soon".
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// GET a URL and return (status, body).
pub async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let resp = reqwest::get(url).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// GET a URL and parse its JSON body.
pub async fn get_json(url: &str) -> anyhow::Result<serde_json::Value> {
    let resp = reqwest::get(url).await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "{url} answered {}",
        resp.status()
    );
    Ok(resp.json().await?)
}

/// Reads one sample of a Prometheus text exposition: `name{labels}` exactly
/// as exposed (labels in the order the exporter writes them), or the bare
/// name for an unlabelled metric.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `within`.
pub async fn eventually<T, F, Fut>(within: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
