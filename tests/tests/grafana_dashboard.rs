//! config/grafana/roompin.json is an importable dashboard whose every query
//! uses metrics that a live cluster exposes, and it has the panels an
//! operator needs on the first day (issue 13).

use std::collections::BTreeSet;

use roompin_tests::dashboard::{self, metric_names};
use roompin_tests::exercise::exercise;
use roompin_tests::scrape::Exposition;

/// A name as written in PromQL, resolved to its family: a histogram's
/// `_bucket`, `_sum` and `_count` series belong to the histogram.
fn family_of<'a>(name: &'a str, exposed: &Exposition) -> Option<&'a str> {
    if exposed.families.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (exposed.families.get(base)?.kind == "histogram").then_some(base)
    })
}

#[test]
fn the_dashboard_is_importable_grafana_json() {
    let d = dashboard::load().expect("config/grafana/roompin.json parses");
    assert!(
        d["title"].is_string() && d["uid"].is_string(),
        "a title and a uid"
    );
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 30),
        "a current schema"
    );
    // The data source is a variable, so an import asks for none by uid and
    // works on any Grafana with a Prometheus data source.
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let panels = dashboard::panels(&d);
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in &panels {
        assert!(ids.insert(p.id), "panel id {} twice", p.id);
        assert!(!p.title.is_empty(), "panel {} has no title", p.id);
        assert!(!p.exprs.is_empty(), "{}: no query", p.title);
        assert_eq!(p.json["datasource"]["uid"], "${datasource}", "{}", p.title);
        let grid = &p.json["gridPos"];
        for k in ["x", "y", "w", "h"] {
            assert!(grid[k].is_u64(), "{}: gridPos.{k}", p.title);
        }
        let refs: BTreeSet<&str> = p.json["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["refId"].as_str())
            .collect();
        assert_eq!(
            refs.len(),
            p.exprs.len(),
            "{}: one refId per query",
            p.title
        );
    }
}

/// The panels issue 13 lists, each as the metric its query must chart.
#[test]
fn the_dashboard_has_the_panels_operators_asked_for() {
    let d = dashboard::load().expect("dashboard parses");
    let exprs: Vec<String> = dashboard::panels(&d)
        .into_iter()
        .flat_map(|p| p.exprs)
        .collect();
    let uses = |needle: &str| exprs.iter().any(|e| e.contains(needle));
    let wanted = [
        ("connections per node", "roompin_node_connections"),
        ("rooms per node", "roompin_node_rooms{"),
        ("messages/s in", "rate(roompin_node_events_received_total"),
        ("frames/s out", "rate(roompin_node_frames_delivered_total"),
        ("upstream health", "roompin_balancer_upstream_healthy"),
        ("ring epoch", "roompin_balancer_ring_epoch"),
        ("rooms moved", "roompin_balancer_rooms_moved_total"),
        ("reloads", "roompin_balancer_config_reloads_total"),
        (
            "handoff failures",
            "roompin_node_handoffs_total{direction=\"sent\",result!~",
        ),
        ("slow consumers", "roompin_node_slow_consumers_total"),
    ];
    for (panel, needle) in wanted {
        assert!(
            uses(needle),
            "no panel for {panel} (a query with {needle:?})"
        );
    }
    for q in ["0.5", "0.99"] {
        let fanout = format!(
            "histogram_quantile({q}, sum by (le) (rate(roompin_node_broadcast_seconds_bucket"
        );
        assert!(uses(&fanout), "no fan-out p{q} query");
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_in_a_live_scrape() {
    let d = dashboard::load().expect("dashboard parses");
    let observed = exercise().await;
    let mut exposed = observed.nodes.clone();
    for (name, f) in &observed.balancer.families {
        exposed.families.insert(name.clone(), f.clone());
    }
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for p in dashboard::panels(&d) {
        for e in &p.exprs {
            for name in metric_names(e) {
                match family_of(&name, &exposed) {
                    Some(f) => {
                        used.insert(f.to_owned());
                    }
                    None => missing.push(format!("{}: {name}", p.title)),
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no binary exposes:\n  {}",
        missing.join("\n  ")
    );
    // The node variable's query, too.
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let q = v["definition"].as_str().unwrap_or_default();
        for name in metric_names(q) {
            assert!(
                family_of(&name, &exposed).is_some(),
                "variable {}: {name}",
                v["name"]
            );
        }
    }
    assert!(used.len() >= 15, "the dashboard charts only {used:?}");
}
