//! File descriptors: every connection is one (two for an SSE publisher), and
//! a process here may have 20,000. The plan refuses more than
//! [`MAX_SOCKETS_PER_PROCESS`] per process, leaving room for the runtime,
//! stdio and connections that are still closing.

/// The most sockets a plan may put in one process.
pub const MAX_SOCKETS_PER_PROCESS: u64 = 19_000;

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the soft
/// limit now in force (`None` if it cannot be read).
pub fn raise_nofile() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    Some(lim.rlim_cur as u64)
}
