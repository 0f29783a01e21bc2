//! A real Prometheus scrapes a cluster with the shipped config/prometheus.yml
//! (its addresses rewritten to the test's ports, a short interval). With a
//! known number of connections open in known meetings, its query API says:
//! every target is up, `sum(roompin_node_connections)` is what the test
//! holds, and each node's own counts match the balancer's per-upstream ones.
//! Every query of the Grafana dashboard runs there too.

use std::collections::BTreeMap;
use std::path::PathBuf;

use roompin_shared::config::BalancerConfig;
use roompin_tests::exercise::meetings_per_node;
use roompin_tests::prometheus::PrometheusProc;
use roompin_tests::{dashboard, eventually, Cluster, ClusterOptions, SseClient, WsClient};

/// Generous: a debug-build cluster and Prometheus share two busy cores.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The shipped scrape config, pointed at this cluster: every address of
/// config/balancer.toml (the local cluster it is written for) replaced by
/// the test's, and the intervals shortened.
fn rewrite(shipped: &str, local: &BalancerConfig, cluster: &Cluster) -> String {
    let mut out = shipped.to_owned();
    let admin = format!("\"{}\"", local.admin_listen);
    assert!(
        out.contains(&admin),
        "config/prometheus.yml does not scrape the balancer's admin_listen {admin}"
    );
    out = out.replace(&admin, &format!("\"{}\"", cluster.balancer.admin));
    for u in &local.upstreams {
        let target = format!("\"{}\"", u.addr);
        let at = out.find(&target).unwrap_or_else(|| {
            panic!("config/prometheus.yml does not scrape {} at {target}", u.id)
        });
        let block = out[at..].split("- targets").next().unwrap_or_default();
        assert!(
            block.contains(&format!("node: {}", u.id)),
            "config/prometheus.yml: the target {target} has no `node: {}` label",
            u.id
        );
        let node = cluster
            .node(&u.id)
            .unwrap_or_else(|| panic!("the test cluster has no {}", u.id));
        out = out.replace(&target, &format!("\"{}\"", node.addr));
    }
    out.lines()
        .map(|line| {
            let indent = &line[..line.len() - line.trim_start().len()];
            let key = line.trim_start().split(':').next().unwrap_or_default();
            match key {
                "scrape_interval" | "evaluation_interval" => format!("{indent}{key}: 500ms"),
                "scrape_timeout" => format!("{indent}{key}: 400ms"),
                _ => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn prometheus_sees_what_the_cluster_holds() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let local = BalancerConfig::load(&repo("config/balancer.toml")).expect("config/balancer.toml");
    let shipped =
        std::fs::read_to_string(repo("config/prometheus.yml")).expect("config/prometheus.yml");
    let config = rewrite(&shipped, &local, &cluster);
    let prometheus = PrometheusProc::start(&config).await;

    // A known number of connections in known meetings, all through the
    // balancer: per meeting 1 to 3 WebSockets and 0 or 1 SSE stream.
    let b = &cluster.balancer;
    let meetings = meetings_per_node(&cluster, "prom", 2).await;
    let mut want_ws: BTreeMap<String, f64> = BTreeMap::new();
    let mut want_sse: BTreeMap<String, f64> = BTreeMap::new();
    let (mut ws, mut sse) = (Vec::new(), Vec::new());
    for (k, (node, meeting)) in meetings
        .iter()
        .flat_map(|(n, ms)| ms.iter().map(move |m| (n, m)))
        .enumerate()
    {
        for u in 0..(1 + k % 3) {
            ws.push(WsClient::join(&b.ws_base(), meeting, &format!("u{u}")).await);
            *want_ws.entry(node.clone()).or_default() += 1.0;
        }
        if k % 2 == 0 {
            let url = b.url(&format!("/sse?meeting_id={meeting}"));
            sse.push(SseClient::connect(&url, None).await.expect("sse"));
            *want_sse.entry(node.clone()).or_default() += 1.0;
        }
        want_sse.entry(node.clone()).or_default();
    }
    let held = (ws.len() + sse.len()) as f64;
    let want_all: BTreeMap<String, f64> = want_ws
        .iter()
        .map(|(n, w)| (n.clone(), w + want_sse[n]))
        .collect();

    // Every target up, under the job and node labels the config gives.
    eventually(WITHIN, "every target up", || async {
        let up = prometheus.query("up").await.ok()?;
        let mut jobs: BTreeMap<String, usize> = BTreeMap::new();
        for s in &up {
            if s.value() != Some(1.0) {
                return None;
            }
            *jobs.entry(s.metric.get("job")?.clone()).or_default() += 1;
        }
        (jobs == BTreeMap::from([("roompin-balancer".into(), 1), ("roompin-node".into(), 3)]))
            .then_some(())
    })
    .await;
    let nodes = prometheus
        .by("up{job=\"roompin-node\"}", "node")
        .await
        .expect("up of the nodes");
    assert_eq!(
        nodes.keys().cloned().collect::<Vec<_>>(),
        ["node-a", "node-b", "node-c"]
    );

    // What the test holds, as Prometheus has it.
    eventually(
        WITHIN,
        &format!("sum(roompin_node_connections) = {held}"),
        || async {
            let total = prometheus
                .query("sum(roompin_node_connections)")
                .await
                .ok()?;
            (total.first()?.value()? == held).then_some(())
        },
    )
    .await;
    let q = |promql: &'static str, label: &'static str| {
        let p = &prometheus;
        async move { p.by(promql, label).await.ok() }
    };
    eventually(WITHIN, "per-node counts, node and balancer side", || async {
        let node_ws = q(r#"sum by (node) (roompin_node_connections{transport="websocket"})"#, "node").await?;
        let node_sse = q(r#"sum by (node) (roompin_node_connections{transport="sse"})"#, "node").await?;
        let node_all = q("sum by (node) (roompin_node_connections)", "node").await?;
        let bal_ws = q("sum by (upstream) (roompin_balancer_connections)", "upstream").await?;
        let bal_sse = q("sum by (upstream) (roompin_balancer_sse_streams)", "upstream").await?;
        let bal_all = q(
            "sum by (upstream) (roompin_balancer_connections) + on (upstream) sum by (upstream) (roompin_balancer_sse_streams)",
            "upstream",
        )
        .await?;
        (node_ws == want_ws
            && node_sse == want_sse
            && node_all == want_all
            && bal_ws == want_ws
            && bal_sse == want_sse
            && bal_all == node_all)
            .then_some(())
    })
    .await;

    // The dashboard's PromQL is valid for this Prometheus, and its load and
    // health panels have data.
    let d = dashboard::load().expect("dashboard parses");
    for p in dashboard::panels(&d) {
        for e in &p.exprs {
            let series = prometheus
                .query(&dashboard::for_prometheus(e))
                .await
                .unwrap_or_else(|err| panic!("panel {:?}: {err}", p.title));
            if [
                "Connections per node",
                "Rooms per node",
                "Upstream health",
                "Ring epoch",
            ]
            .contains(&p.title.as_str())
            {
                assert!(!series.is_empty(), "panel {:?}: no data for {e}", p.title);
            }
        }
    }
    drop((ws, sse));
}
