//! Where the traffic goes, and from which local addresses.
//!
//! The target is resolved once, up front, so a run never wanders to another
//! address mid-way, and source binding is only allowed towards loopback
//! (binding to 127.0.0.k and connecting elsewhere cannot work anyway).

use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as the user wrote it: the Host header and the URL authority.
    pub authority: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Accepts `ws://host:port`, `http://host:port` or `host:port`.
    pub fn parse(raw: &str) -> anyhow::Result<Target> {
        let rest = if let Some(r) = raw.strip_prefix("ws://") {
            r
        } else if let Some(r) = raw.strip_prefix("http://") {
            r
        } else if raw.starts_with("wss://") || raw.starts_with("https://") {
            bail!(
                "--target {raw}: TLS is not supported; point at a plain ws:// or http:// listener"
            )
        } else if raw.contains("://") {
            bail!("--target {raw}: use ws://HOST:PORT, http://HOST:PORT or HOST:PORT")
        } else {
            raw
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.contains('?') {
            bail!(
                "--target {raw}: give only HOST:PORT; set paths with --ws-path, --sse-path, --publish-path"
            );
        }
        if authority.is_empty() {
            bail!("--target is empty");
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        use std::net::ToSocketAddrs;
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve --target {raw}"))?
            .next()
            .with_context(|| format!("--target {raw} resolves to no address"))?;
        Ok(Target {
            authority: with_port,
            addr,
        })
    }

    pub fn is_loopback(&self) -> bool {
        self.addr.ip().is_loopback()
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.authority)
    }
}

/// Round-robin over 127.0.0.A..=127.0.0.B. Each source address has its own
/// ~28,000 ephemeral ports, so tens of thousands of connections to one
/// loopback listener do not run out of ports.
#[derive(Debug)]
pub struct SourceIps {
    first: u8,
    count: usize,
    next: AtomicUsize,
}

impl SourceIps {
    /// `spec` is "auto", "none" or "A-B" (or a single "A").
    pub fn parse(spec: &str, target: &Target) -> anyhow::Result<SourceIps> {
        let none = SourceIps {
            first: 0,
            count: 0,
            next: AtomicUsize::new(0),
        };
        let (first, last) = match spec.trim() {
            "none" => return Ok(none),
            "auto" if !target.is_loopback() || !target.addr.is_ipv4() => return Ok(none),
            "auto" => (1, 50),
            range => {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                let parse = |s: &str| {
                    s.trim()
                        .parse::<u8>()
                        .ok()
                        .filter(|n| *n >= 1 && *n <= 254)
                        .with_context(|| {
                            format!("--source-ips {spec}: expected A-B with 1 <= A <= B <= 254, auto or none")
                        })
                };
                (parse(a)?, parse(b)?)
            }
        };
        if first > last {
            bail!("--source-ips {spec}: the range is backwards");
        }
        if !(target.is_loopback() && target.addr.is_ipv4()) {
            bail!(
                "--source-ips {spec}: source binding to 127.0.0.x only works towards an IPv4 loopback target, not {}",
                target.addr
            );
        }
        Ok(SourceIps {
            first,
            count: usize::from(last - first) + 1,
            next: AtomicUsize::new(0),
        })
    }

    /// The next source address, or `None` to let the kernel choose.
    pub fn next(&self) -> Option<IpAddr> {
        if self.count == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.count;
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, self.first + i as u8)))
    }

    pub fn describe(&self) -> String {
        match self.count {
            0 => "none".into(),
            n => format!(
                "127.0.0.{}-127.0.0.{}",
                self.first,
                self.first as usize + n - 1
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("ws://127.0.0.1:19001").map_err(|e| e.to_string());
        assert_eq!(t.map(|t| t.addr.port()), Ok(19001));
        assert!(Target::parse("wss://127.0.0.1:1").is_err());
        assert!(Target::parse("ws://127.0.0.1:1/websocket").is_err());
        let t = Target::parse("127.0.0.1:5").map_err(|e| e.to_string());
        assert_eq!(t.map(|t| t.authority), Ok("127.0.0.1:5".to_owned()));
    }

    #[test]
    fn source_ranges() -> anyhow::Result<()> {
        let lo = Target::parse("127.0.0.1:9")?;
        let s = SourceIps::parse("3-4", &lo)?;
        let got: Vec<_> = (0..3).filter_map(|_| s.next()).collect();
        assert_eq!(
            got,
            ["127.0.0.3", "127.0.0.4", "127.0.0.3"].map(|a| a
                .parse::<IpAddr>()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
        );
        assert_eq!(
            SourceIps::parse("auto", &lo)?.describe(),
            "127.0.0.1-127.0.0.50"
        );
        assert!(SourceIps::parse("0-3", &lo).is_err());
        assert!(SourceIps::parse("5-3", &lo).is_err());
        Ok(())
    }
}
