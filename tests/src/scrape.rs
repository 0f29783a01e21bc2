//! A `/metrics` exposition read back into metric families (name, type,
//! label names), parsed by `prometheus-parse`.

use prometheus_parse::{Scrape, Value};
use std::collections::{BTreeMap, BTreeSet};

/// One metric family as exposed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Family {
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub kind: String,
    /// Label names over all its series (without histograms' `le`).
    pub labels: BTreeSet<String>,
    /// Distinct values seen per label.
    pub values: BTreeMap<String, BTreeSet<String>>,
    /// Number of series.
    pub series: usize,
}

/// The families of one or more scrapes, by name.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    /// Parses one scrape's text.
    pub fn parse(text: &str) -> anyhow::Result<Exposition> {
        let mut e = Exposition::default();
        e.add(text)?;
        Ok(e)
    }

    /// Adds another scrape (e.g. a second node's) to these families.
    pub fn add(&mut self, text: &str) -> anyhow::Result<()> {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
        let histograms: BTreeSet<String> = scrape
            .samples
            .iter()
            .filter(|s| matches!(s.value, Value::Histogram(_)))
            .map(|s| s.metric.clone())
            .collect();
        for s in &scrape.samples {
            // prometheus-parse folds `_bucket` lines into the histogram and
            // leaves `_sum` and `_count` as untyped samples of their own.
            let folded = ["_sum", "_count"].iter().any(|suffix| {
                s.metric
                    .strip_suffix(suffix)
                    .is_some_and(|base| histograms.contains(base))
            });
            if folded {
                continue;
            }
            let kind = match s.value {
                Value::Counter(_) => "counter",
                Value::Gauge(_) => "gauge",
                Value::Histogram(_) => "histogram",
                Value::Summary(_) => "summary",
                Value::Untyped(_) => "untyped",
            };
            let family = self.families.entry(s.metric.clone()).or_default();
            anyhow::ensure!(
                family.kind.is_empty() || family.kind == kind,
                "{} is a {} in one scrape and a {kind} in another",
                s.metric,
                family.kind
            );
            family.kind = kind.to_owned();
            family.series += 1;
            for (name, value) in s.labels.iter() {
                family.labels.insert(name.clone());
                family
                    .values
                    .entry(name.clone())
                    .or_default()
                    .insert(value.clone());
            }
        }
        Ok(())
    }

    pub fn names(&self) -> BTreeSet<String> {
        self.families.keys().cloned().collect()
    }
}

/// The value of one series of a gauge or counter in a scrape's text: the
/// sample named `name` whose labels include every pair of `labels`.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    scrape.samples.iter().find_map(|s| {
        if s.metric != name || !labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) {
            return None;
        }
        match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        }
    })
}

/// The sum over every series of a gauge or counter (`sum(name)` in PromQL),
/// or `None` when the scrape has no such metric.
pub fn sum(text: &str, name: &str) -> Option<f64> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    let values: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter_map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
