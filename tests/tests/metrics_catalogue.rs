//! docs/METRICS.md against a live scrape of both binaries: every exposed
//! metric is catalogued with its type and label names, every `live` one is
//! exposed, and no label can take a meeting's or a connection's id.

use std::collections::BTreeSet;

use roompin_tests::catalogue::{self, Entry, BALANCER, NODE};
use roompin_tests::exercise::exercise;
use roompin_tests::scrape::Exposition;

/// Label names that would make a series per meeting, connection or user.
const UNBOUNDED: &[&str] = &["meeting_id", "meeting", "conn_id", "conn", "user", "room"];

/// More distinct values than this in one label of a small test cluster
/// means the label is not bounded.
const MAX_VALUES: usize = 20;

/// The differences between a catalogue table and an exposition, as lines
/// for the failure message; empty when they agree.
fn drift(binary: &str, entries: &[Entry], exposed: &Exposition) -> Vec<String> {
    let prefix = format!("{}_", binary.replace('-', "_"));
    let mut problems = Vec::new();
    let listed: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    for (name, family) in &exposed.families {
        if !listed.contains(name.as_str()) {
            problems.push(format!(
                "{binary} exposes {name} ({} {:?}) but docs/METRICS.md does not list it: add a row",
                family.kind, family.labels
            ));
        }
    }
    for e in entries {
        if !e.name.starts_with(&prefix) {
            problems.push(format!(
                "{} is in the {binary} table but not named {prefix}*",
                e.name
            ));
        }
        for label in &e.labels {
            if UNBOUNDED.contains(&label.as_str()) {
                problems.push(format!("{} has the unbounded label {label}", e.name));
            }
        }
        match exposed.families.get(&e.name) {
            None if e.pending => {}
            None => problems.push(format!(
                "{} is catalogued as live but {binary} does not expose it (removed? renamed? or mark it pending)",
                e.name
            )),
            Some(f) => {
                if f.kind != e.kind {
                    problems.push(format!("{}: catalogued as a {}, exposed as a {}", e.name, e.kind, f.kind));
                }
                if f.labels != e.labels {
                    problems.push(format!(
                        "{}: catalogued with labels {:?}, exposed with {:?}",
                        e.name, e.labels, f.labels
                    ));
                }
                if e.pending {
                    problems.push(format!(
                        "{} is exposed now: mark it live in docs/METRICS.md",
                        e.name
                    ));
                }
                for (label, values) in &f.values {
                    if values.len() > MAX_VALUES {
                        problems.push(format!(
                            "{}: label {label} took {} values in a small test cluster; labels must be bounded",
                            e.name,
                            values.len()
                        ));
                    }
                }
            }
        }
    }
    problems
}

#[tokio::test]
async fn the_catalogue_matches_what_both_binaries_expose() {
    let markdown = std::fs::read_to_string(catalogue::path()).expect("read docs/METRICS.md");
    let node_entries = catalogue::entries(&markdown, NODE).expect("the node table parses");
    let balancer_entries =
        catalogue::entries(&markdown, BALANCER).expect("the balancer table parses");
    let observed = exercise().await;

    let mut problems = drift(NODE, &node_entries, &observed.nodes);
    problems.extend(drift(BALANCER, &balancer_entries, &observed.balancer));
    for (name, family) in observed
        .nodes
        .families
        .iter()
        .chain(&observed.balancer.families)
    {
        for label in &family.labels {
            if UNBOUNDED.contains(&label.as_str()) {
                problems.push(format!(
                    "{name} is exposed with the unbounded label {label}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/METRICS.md and /metrics disagree:\n  {}\n\nbalancer scrape:\n{}",
        problems.join("\n  "),
        observed.balancer_text
    );

    // The traffic did reach the labelled series the catalogue promises.
    let transports = &observed.nodes.families["roompin_node_connections"].values["transport"];
    assert_eq!(
        transports.iter().map(String::as_str).collect::<Vec<_>>(),
        ["sse", "websocket"]
    );
}

/// The checker itself: it notices each kind of drift.
#[test]
fn drift_is_noticed() {
    let markdown = format!(
        "## {NODE}\n\n{}\n| --- | --- | --- | --- | --- | --- |\n\
         | `roompin_node_a` | gauge | `x` | live | m | q |\n\
         | `roompin_node_b` | counter | - | live | m | q |\n\
         | `roompin_node_c` | histogram | - | pending: later | m | q |\n\
         | `roompin_node_d` | counter | - | pending: later | m | q |\n\n## next\n",
        catalogue::HEADER
    );
    let entries = catalogue::entries(&markdown, NODE).expect("parses");
    assert_eq!(entries.len(), 4);
    let text = "# TYPE roompin_node_a counter\nroompin_node_a{y=\"1\"} 1\n\
                # TYPE roompin_node_d counter\nroompin_node_d 1\n\
                # TYPE roompin_node_e gauge\nroompin_node_e 1\n";
    let exposed = Exposition::parse(text).expect("parses");
    let problems = drift(NODE, &entries, &exposed).join("\n");
    for want in [
        "roompin_node_a: catalogued as a gauge, exposed as a counter",
        "roompin_node_a: catalogued with labels",
        "roompin_node_b is catalogued as live but",
        "roompin_node_d is exposed now: mark it live",
        "exposes roompin_node_e",
    ] {
        assert!(problems.contains(want), "missing {want:?} in:\n{problems}");
    }
    assert!(
        !problems.contains("roompin_node_c"),
        "a pending metric may be absent:\n{problems}"
    );

    let bad = markdown.replace(
        "| live | m | q |\n| `roompin_node_b`",
        "| maybe | m | q |\n| `roompin_node_b`",
    );
    assert!(
        catalogue::entries(&bad, NODE).is_err(),
        "an unknown status is refused"
    );
}
