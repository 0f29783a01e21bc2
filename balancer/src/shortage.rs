//! Telling the balancer's own shortage from a node's failure.
//!
//! A connect that fails with EMFILE (no descriptor left in this process),
//! ENFILE (none in the system), ENOBUFS/ENOMEM (no kernel memory) or
//! EADDRNOTAVAIL (no local port) says nothing about the node: it never got
//! a packet. Counting it as a failed health check would let an attack on
//! the balancer's descriptors empty the ring; counting it as a refused
//! connection would mark a healthy node suspect. So probes, pushes and the
//! proxy paths ask [`is_local`] first and, if it says yes, leave the node's
//! record alone.

use std::error::Error;
use std::io;

/// The errno values that are this host's shortage, not the peer's answer.
pub fn is_local_errno(code: i32) -> bool {
    use nix::errno::Errno;
    matches!(
        Errno::from_raw(code),
        Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM | Errno::EADDRNOTAVAIL
    )
}

/// Whether `e`, or any error it was caused by, is a local shortage.
pub fn is_local(e: &(dyn Error + 'static)) -> bool {
    let mut next: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.raw_os_error().is_some_and(is_local_errno) {
                return true;
            }
            // `io::Error::source` skips the error it wraps: look inside.
            if let Some(inner) = io.get_ref() {
                if is_local(inner) {
                    return true;
                }
            }
        }
        next = err.source();
    }
    false
}

/// [`is_local`] for an `io::Error` the caller holds.
pub fn is_local_io(e: &io::Error) -> bool {
    is_local(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(Box<dyn Error + Send + Sync>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "wrapped")
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn shortages_are_ours_refusals_are_the_nodes() {
        let os = |code| io::Error::from_raw_os_error(code);
        #[rustfmt::skip]
        let cases: Vec<(&str, Box<dyn Error + Send + Sync>, bool)> = vec![
            ("EMFILE", Box::new(os(24)), true),
            ("ENFILE", Box::new(os(23)), true),
            ("ENOBUFS", Box::new(os(105)), true),
            ("ENOMEM", Box::new(os(12)), true),
            ("EADDRNOTAVAIL", Box::new(os(99)), true),
            ("EMFILE inside a wrapper", Box::new(Wrap(Box::new(os(24)))), true),
            ("EMFILE inside an io::Error", Box::new(io::Error::other(os(24))), true),
            ("ECONNREFUSED: the node's answer", Box::new(os(111)), false),
            ("ETIMEDOUT", Box::new(os(110)), false),
            ("EHOSTUNREACH", Box::new(os(113)), false),
            ("a timeout of our own", Box::new(io::Error::new(io::ErrorKind::TimedOut, "t")), false),
            ("ECONNRESET, wrapped", Box::new(Wrap(Box::new(os(104)))), false),
        ];
        for (what, e, want) in cases {
            assert_eq!(is_local(&*e), want, "{what}");
        }
    }
}
