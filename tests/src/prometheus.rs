//! A real Prometheus server (Debian's `prometheus` package, installed by
//! `scripts/prereqs test`) on a loopback port, with its HTTP query API.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{free_port, loopback, target_dir, Proc};

/// Prometheus can take a few seconds to open its storage and get ready.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

pub struct PrometheusProc {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    client: reqwest::Client,
}

/// One series of an instant query's answer.
#[derive(Clone, Debug, Deserialize)]
pub struct Series {
    pub metric: BTreeMap<String, String>,
    /// `[timestamp, "value"]`.
    pub value: (f64, String),
}

impl Series {
    pub fn value(&self) -> Option<f64> {
        self.value.1.parse().ok()
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

impl PrometheusProc {
    /// Starts Prometheus with `config` (YAML text) on a free port and waits
    /// until it is ready. Panics with a hint when it is not installed.
    pub async fn start(config: &str) -> PrometheusProc {
        let exe = which("prometheus").unwrap_or_else(|| {
            panic!("no `prometheus` on PATH: install it with `scripts/prereqs test` (Debian's prometheus package)")
        });
        let addr = loopback(free_port());
        let dir = target_dir().join("test-logs").join(format!(
            "prometheus-{}-{}",
            addr.port(),
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the Prometheus dir");
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("write prometheus.yml");
        let mut cmd = Command::new(exe);
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let proc = Proc::spawn(&format!("prometheus-{}", addr.port()), cmd);
        let p = PrometheusProc {
            proc,
            addr,
            dir,
            client: reqwest::Client::new(),
        };
        let ready = format!("http://{addr}/-/ready");
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if let Ok(r) = p.client.get(&ready).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus not ready after {READY_WITHIN:?}:\n{}",
                p.proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p
    }

    /// An instant query; errors carry Prometheus's own message (a PromQL
    /// syntax error, say).
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Series>> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let answer: Answer = self
            .client
            .get(&url)
            .query(&[("query", promql)])
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(
            answer.status == "success",
            "{promql}: {}",
            answer.error.unwrap_or_default()
        );
        let data = answer
            .data
            .ok_or_else(|| anyhow::anyhow!("{promql}: no data"))?;
        match data.result_type.as_str() {
            "vector" => Ok(serde_json::from_value(data.result)?),
            "scalar" => {
                let value: (f64, String) = serde_json::from_value(data.result)?;
                Ok(vec![Series {
                    metric: BTreeMap::new(),
                    value,
                }])
            }
            other => anyhow::bail!("{promql}: a {other}, not a vector"),
        }
    }

    /// A query's answer as label value → value, for one label.
    pub async fn by(&self, promql: &str, label: &str) -> anyhow::Result<BTreeMap<String, f64>> {
        Ok(self
            .query(promql)
            .await?
            .into_iter()
            .filter_map(|s| Some((s.metric.get(label)?.clone(), s.value()?)))
            .collect())
    }
}

impl Drop for PrometheusProc {
    /// Its samples are of no use after the test; its config and log stay.
    fn drop(&mut self) {
        self.proc.kill9();
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
