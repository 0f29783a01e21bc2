//! Gives the memory a burst freed back to the system, for both binaries
//! (issue 11: after an attack, RSS is back within 10% of where it
//! started; docs/SECURITY.md, "Memory after an attack").
//!
//! Both binaries allocate with glibc's malloc (Rust's system allocator).
//! glibc keeps its bookkeeping inside the chunks it hands out, so a page
//! with no live allocation holds nothing it needs, and `malloc_trim(0)`
//! gives every such page back (`MADV_DONTNEED`), in every arena, not just
//! the top of the heap. glibc never does that on its own; jemalloc, tried
//! before, purges on its own but keeps forever the metadata of every
//! extent it handed out at a peak (128 bytes each, plus the radix-tree
//! pages that mapped them): about 6 MB after a node held 15,000 half-open
//! heads, a third of the node's starting RSS, that no setting gives back.
//!
//! So a thread, [`spawn_trimmer`], wakes every second, compares what is
//! resident with what is allocated, and trims when the difference (memory
//! freed but still resident) grew by more than [`Trimmer`] allows since it
//! last trimmed, and the heap has settled. A steady load, whose freed
//! chunks are reused, never trims; a second or two after a flood ends, it
//! does (a heap that keeps shrinking fast is trimmed once it slows).
//!
//! Settled: what is allocated moved by less than that allowance since the
//! last look. While a burst is still under way (a reconnect wave after a
//! room move: thousands of connections closed and opened within a second)
//! the chunks it frees are about to be reused, and a trim would only make
//! the next allocations fault the pages in again, on the core that the
//! wave is already waiting for.

use std::time::Duration;

/// How often the trimmer looks.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Freed-but-resident memory, over what it was after the last trim, that
/// is worth a trim: 1 MiB, or 1/32 of what is allocated if more (a trim
/// walks the free chunks under each arena's lock: under 1 ms idle, some
/// ms on a heap of hundreds of MB, so a big heap trims for bigger gains).
pub const MIN_GAIN: u64 = 1 << 20;

/// The process's memory as the trimmer weighs it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Anonymous resident memory (`RssAnon`): the heap, thread stacks.
    pub resident: u64,
    /// What malloc has handed out and not had back (`mallinfo2`: the
    /// arenas' in-use chunks plus the mmapped ones).
    pub allocated: u64,
    /// Free bytes inside malloc's arenas, resident or already given back.
    pub free: u64,
}

impl Usage {
    /// Resident memory that no allocation holds: freed chunks still in
    /// RAM, thread stacks, malloc's slack. Only its growth matters.
    pub fn slack(&self) -> u64 {
        self.resident.saturating_sub(self.allocated)
    }
}

/// Decides when to trim: when the slack grew by more than
/// `max(MIN_GAIN, allocated / 32)` over the lowest it has been since the
/// last trim. The lowest, not the last: freed chunks that were reused and
/// then freed again count once more.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// The lowest slack seen since the last trim; `None` before the first
    /// look.
    floor: Option<u64>,
    /// What was allocated at the last look, to tell a settled heap.
    allocated: Option<u64>,
}

impl Trimmer {
    /// Whether `now` is worth a trim: the slack grew by more than the
    /// allowance, and the heap has settled (see the module's doc).
    pub fn should_trim(&mut self, now: Usage) -> bool {
        let allowance = MIN_GAIN.max(now.allocated / 32);
        let slack = now.slack();
        let floor = *self.floor.get_or_insert(slack);
        let floor = floor.min(slack);
        self.floor = Some(floor);
        let settled = self
            .allocated
            .replace(now.allocated)
            .is_some_and(|before| before.abs_diff(now.allocated) <= allowance);
        settled && slack - floor > allowance
    }

    /// Records what is left after a trim: the new floor.
    pub fn trimmed(&mut self, after: Usage) {
        self.floor = Some(after.slack());
    }
}

/// Reads [`Usage`]; `None` where it cannot (not glibc, no /proc).
pub fn usage() -> Option<Usage> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let resident = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())?
        * 1024;
    let (allocated, free) = sys::mallinfo()?;
    Some(Usage {
        resident,
        allocated,
        free,
    })
}

/// Starts the trimmer thread (`heap-trim`). It runs until the process
/// exits and holds nothing but its own stack, so it needs no shutdown.
/// Does nothing where [`usage`] cannot read (not glibc).
pub fn spawn_trimmer() -> std::io::Result<()> {
    if usage().is_none() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("heap-trim".into())
        // Its stack is touched by little more than `mallinfo2`.
        .stack_size(64 * 1024)
        .spawn(|| {
            let mut trimmer = Trimmer::default();
            loop {
                std::thread::sleep(PERIOD);
                let Some(now) = usage() else { continue };
                if trimmer.should_trim(now) {
                    sys::trim();
                    if let Some(after) = usage() {
                        trimmer.trimmed(after);
                    }
                }
            }
        })
        .map(|_| ())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod sys {
    /// (allocated, free) bytes, from glibc.
    pub fn mallinfo() -> Option<(u64, u64)> {
        // SAFETY: mallinfo2 takes no argument and returns a plain struct;
        // it locks each arena while it counts.
        let m = unsafe { libc::mallinfo2() };
        Some(((m.uordblks + m.hblkhd) as u64, m.fordblks as u64))
    }

    /// Gives every free page of every arena back to the system.
    pub fn trim() {
        // SAFETY: malloc_trim only returns free memory; 0 keeps no pad.
        unsafe { libc::malloc_trim(0) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod sys {
    pub fn mallinfo() -> Option<(u64, u64)> {
        None
    }

    pub fn trim() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn at(resident: u64, allocated: u64) -> Usage {
        Usage {
            resident: resident * MIB,
            allocated: allocated * MIB,
            free: 0,
        }
    }

    #[test]
    fn trims_when_freed_memory_stays_resident() {
        // (resident MiB, allocated MiB, trim?) in order, one look a second.
        let cases: &[(u64, u64, bool)] = &[
            (20, 18, false),   // first look: the floor, slack 2
            (300, 298, false), // a flood: all of it allocated
            (300, 250, false), // half freed, still moving: it may be reused
            (300, 250, true),  // settled, 50 MiB slack over the floor
        ];
        let mut t = Trimmer::default();
        for (i, &(r, a, want)) in cases.iter().enumerate() {
            assert_eq!(t.should_trim(at(r, a)), want, "look {i}: {r}/{a}");
        }
    }

    #[test]
    fn after_a_trim_the_floor_is_what_is_left() {
        let mut t = Trimmer::default();
        assert!(!t.should_trim(at(20, 18)));
        assert!(t.should_trim(at(300, 18)));
        t.trimmed(at(23, 20));
        // The flood's last frees: 1 MiB more slack is not worth a trim,
        // 2 MiB is.
        assert!(!t.should_trim(at(24, 20)));
        assert!(t.should_trim(at(25, 20)));
        t.trimmed(at(22, 20));
        assert!(!t.should_trim(at(22, 20)));
    }

    #[test]
    fn reused_then_freed_again_counts_from_the_lowest() {
        let mut t = Trimmer::default();
        assert!(!t.should_trim(at(100, 90))); // slack 10
        assert!(!t.should_trim(at(100, 99))); // reused: slack 1, the floor
        assert!(!t.should_trim(at(100, 90))); // freed again, still moving
        assert!(t.should_trim(at(100, 90))); // settled: 9 over the floor
    }

    #[test]
    fn a_burst_under_way_is_not_trimmed() {
        // A reconnect wave: allocations swing by several MiB a second, and
        // the slack with them. No trim until it stops.
        let mut t = Trimmer::default();
        assert!(!t.should_trim(at(60, 50))); // the floor: slack 10
        for (r, a) in [(80, 58), (90, 54), (95, 61), (95, 55)] {
            assert!(!t.should_trim(at(r, a)), "{r}/{a} during the wave");
        }
        assert!(t.should_trim(at(95, 55)), "the wave is over");
    }

    #[test]
    fn a_big_heap_waits_for_a_bigger_gain() {
        let mut t = Trimmer::default();
        // 3,200 MiB allocated: a trim needs 100 MiB of slack growth.
        assert!(!t.should_trim(at(3300, 3200)));
        assert!(!t.should_trim(at(3350, 3200)));
        assert!(t.should_trim(at(3401, 3200)));
    }

    #[test]
    fn reads_this_process() {
        // The test binary allocates with glibc too.
        let u = usage().expect("glibc and /proc");
        assert!(u.resident > 0 && u.allocated > 0, "{u:?}");
    }
}
