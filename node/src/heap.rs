//! The allocator's own view of the node's memory, read at each scrape into
//! `roompin_node_heap_bytes{kind}`. It tells an operator whether memory
//! taken by a flood was given back (`resident` falls back towards
//! `allocated`), and what part of a resident set stays after an attack:
//! jemalloc's `metadata` (its bookkeeping of the extents it handed out)
//! is kept for reuse, never unmapped.
//!
//! The binary's allocator is jemalloc (main.rs, docs/SECURITY.md). Inside
//! a test of this library it is not, and every kind reads 0.

use prometheus::IntGaugeVec;
use tikv_jemalloc_ctl::{epoch, stats};

/// The `kind` label of `roompin_node_heap_bytes`, as jemalloc names them.
pub const KINDS: [&str; 5] = ["allocated", "active", "resident", "metadata", "retained"];

/// Refreshes jemalloc's statistics and copies them into `gauge`. A kind
/// jemalloc cannot read (stats compiled out) keeps its last value.
pub fn sample(gauge: &IntGaugeVec) {
    if epoch::advance().is_err() {
        return;
    }
    let reads = [
        stats::allocated::read(),
        stats::active::read(),
        stats::resident::read(),
        stats::metadata::read(),
        stats::retained::read(),
    ];
    for (kind, value) in KINDS.iter().zip(reads) {
        if let Ok(bytes) = value {
            gauge
                .with_label_values(&[kind])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }
}

/// The settings that make jemalloc give memory back, as it runs them:
/// whether its background thread purges, and the decay times of dirty and
/// muzzy pages (ms). Logged at start, so an operator can see that
/// `_RJEM_MALLOC_CONF` or the built-in `malloc_conf` took effect. `None`
/// when the allocator is not jemalloc.
pub fn purging() -> Option<(bool, isize, isize)> {
    let background = tikv_jemalloc_ctl::background_thread::read().ok()?;
    // SAFETY: both are `ssize_t` options jemalloc always defines, read
    // with their own type.
    let (dirty, muzzy) = unsafe {
        (
            tikv_jemalloc_ctl::raw::read::<isize>(b"opt.dirty_decay_ms\0").ok()?,
            tikv_jemalloc_ctl::raw::read::<isize>(b"opt.muzzy_decay_ms\0").ok()?,
        )
    };
    Some((background, dirty, muzzy))
}
