//! docs/METRICS.md read as data: one table per binary, one row per metric,
//! columns in a fixed order (metric, type, labels, status, meaning, question).

use std::collections::BTreeSet;
use std::path::PathBuf;

/// The table headings, as docs/METRICS.md writes them.
pub const NODE: &str = "roompin-node";
pub const BALANCER: &str = "roompin-balancer";

/// The header row every table starts with.
pub const HEADER: &str = "| metric | type | labels | status | meaning | answers |";

/// One catalogued metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: String,
    pub labels: BTreeSet<String>,
    /// `live`, or `pending` (defined but not yet observed by its code).
    pub pending: bool,
    pub meaning: String,
    pub question: String,
}

pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/METRICS.md")
}

/// The rows of the table under `## <binary>`; errors name the line.
pub fn entries(markdown: &str, binary: &str) -> anyhow::Result<Vec<Entry>> {
    let heading = format!("## {binary}");
    let mut lines = markdown
        .lines()
        .enumerate()
        .skip_while(|(_, l)| l.trim() != heading)
        .skip(1)
        .take_while(|(_, l)| !l.starts_with("## "))
        .filter(|(_, l)| l.starts_with('|'));
    let (_, header) = lines
        .next()
        .ok_or_else(|| anyhow::anyhow!("no table under {heading:?}"))?;
    anyhow::ensure!(
        squeeze(header) == HEADER,
        "the table under {heading:?} must start with {HEADER:?}, not {header:?}"
    );
    let mut out = Vec::new();
    for (i, line) in lines.skip(1) {
        let cells: Vec<&str> = line
            .trim()
            .trim_start_matches('|')
            .trim_end_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let at = format!("docs/METRICS.md line {}", i + 1);
        anyhow::ensure!(cells.len() == 6, "{at}: {} cells, want 6", cells.len());
        let name = unquote(cells[0]);
        let kind = cells[1].to_owned();
        anyhow::ensure!(
            ["counter", "gauge", "histogram"].contains(&kind.as_str()),
            "{at}: type {kind:?}"
        );
        let labels = match cells[2] {
            "-" | "" => BTreeSet::new(),
            list => list.split(',').map(|l| unquote(l.trim())).collect(),
        };
        let pending = match cells[3].split(':').next().map(str::trim) {
            Some("live") => false,
            Some("pending") => true,
            _ => anyhow::bail!("{at}: status must be live or pending, not {:?}", cells[3]),
        };
        anyhow::ensure!(
            !cells[4].is_empty() && !cells[5].is_empty(),
            "{at}: say what it means and which question it answers"
        );
        out.push(Entry {
            name,
            kind,
            labels,
            pending,
            meaning: cells[4].to_owned(),
            question: cells[5].to_owned(),
        });
    }
    Ok(out)
}

fn unquote(cell: &str) -> String {
    cell.trim_matches('`').to_owned()
}

/// A header row with single spaces, so column widths do not matter.
fn squeeze(row: &str) -> String {
    row.split('|')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" | ")
        .trim()
        .to_owned()
}
