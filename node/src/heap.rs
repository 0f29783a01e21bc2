//! The heap as glibc's malloc and the kernel see it, read at each scrape
//! into `roompin_node_heap_bytes{kind}`. It tells an operator whether
//! memory taken by a flood was given back: `resident` falls back towards
//! `allocated` within seconds of the flood's end, when the heap trimmer
//! (`roompin_shared::heap`, docs/SECURITY.md) trims.

use prometheus::IntGaugeVec;

/// The `kind` label of `roompin_node_heap_bytes`: `allocated` (what
/// malloc handed out and has not had back), `free` (free bytes inside
/// malloc's arenas, resident or already given back), `resident` (the
/// process's anonymous resident memory: heap and thread stacks).
pub const KINDS: [&str; 3] = ["allocated", "free", "resident"];

/// Copies the heap's current [`roompin_shared::heap::Usage`] into
/// `gauge`; keeps the last values where it cannot be read (not glibc).
pub fn sample(gauge: &IntGaugeVec) {
    let Some(u) = roompin_shared::heap::usage() else {
        return;
    };
    for (kind, bytes) in KINDS.iter().zip([u.allocated, u.free, u.resident]) {
        gauge
            .with_label_values(&[kind])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}
