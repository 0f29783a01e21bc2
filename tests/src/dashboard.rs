//! config/grafana/roompin.json read back: its panels, their PromQL, and
//! the metric names that PromQL uses.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;

pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/grafana/roompin.json")
}

/// The dashboard as JSON.
pub fn load() -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path())?;
    Ok(serde_json::from_str(&text)?)
}

/// One chart (not a row) and its queries.
#[derive(Clone, Debug)]
pub struct Panel {
    pub id: u64,
    pub title: String,
    pub kind: String,
    pub json: Value,
    pub exprs: Vec<String>,
}

/// Every panel, rows' nested panels included, rows themselves left out.
pub fn panels(dashboard: &Value) -> Vec<Panel> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested.iter());
        }
        if p["type"] == "row" {
            continue;
        }
        let exprs = p["targets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| t["expr"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Panel {
            id: p["id"].as_u64().unwrap_or(0),
            title: p["title"].as_str().unwrap_or_default().to_owned(),
            kind: p["type"].as_str().unwrap_or_default().to_owned(),
            json: p.clone(),
            exprs,
        });
    }
    out.sort_by_key(|p| p.id);
    out
}

/// The `roompin_*` identifiers in a PromQL expression, as written (a
/// histogram's `_bucket`, `_sum` and `_count` included).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("roompin_") {
                names.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

/// The expression as Prometheus itself would get it from Grafana, with
/// Grafana's variables filled in.
pub fn for_prometheus(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$node", ".*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_skip_labels_functions_and_strings() {
        let names = metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(roompin_node_broadcast_seconds_bucket{node=~"$node"}[1m]))) / roompin_x"#,
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["roompin_node_broadcast_seconds_bucket", "roompin_x"]
        );
    }
}
