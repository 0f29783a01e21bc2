//! Floods of half-open request heads from helper processes: one process may
//! hold at most 20,000 descriptors, so a test that needs more spawns its own
//! binary several times, each running an ignored test that calls
//! [`hold_half_open_from_env`] from its own 127.0.0.x source address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

/// Opens `HOLDER_COUNT` connections from `HOLDER_SOURCE` to `HOLDER_TARGET`,
/// sends half a request head on each, holds them `HOLDER_MS`, then prints
/// how many it opened and how many the server closed. Does nothing without
/// those variables (a plain `--ignored` run).
pub async fn hold_half_open_from_env() {
    let (Ok(target), Ok(source), Ok(count), Ok(hold)) = (
        std::env::var("HOLDER_TARGET"),
        std::env::var("HOLDER_SOURCE"),
        std::env::var("HOLDER_COUNT"),
        std::env::var("HOLDER_MS"),
    ) else {
        return;
    };
    let target: SocketAddr = target.parse().expect("target");
    let source: IpAddr = source.parse().expect("source");
    let count: usize = count.parse().expect("count");
    let hold = Duration::from_millis(hold.parse().expect("ms"));
    let closed = Arc::new(AtomicUsize::new(0));
    let mut opened = 0;
    let mut tasks = Vec::new();
    for _ in 0..count {
        let Ok(sock) = TcpSocket::new_v4() else { break };
        if sock.bind(SocketAddr::new(source, 0)).is_err() {
            break;
        }
        let Ok(Ok(mut tcp)) =
            tokio::time::timeout(Duration::from_secs(5), sock.connect(target)).await
        else {
            continue;
        };
        if tcp
            .write_all(b"GET /websocket?meeting_id=held HTTP/1.1\r\nHost: roompin.test\r\n")
            .await
            .is_err()
        {
            continue;
        }
        opened += 1;
        let closed = closed.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = [0u8; 512];
            // The server ends it (an eviction or a deadline closes it; at
            // the cap with evictions in flight it answers 503 and closes),
            // or it is dropped when the hold ends. This client never sent
            // a whole head, so any answer at all is the server's ending.
            if tokio::time::timeout(hold, tcp.read(&mut b)).await.is_ok() {
                closed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    println!("holder: opened {opened}");
    for t in tasks {
        let _ = t.await;
    }
    println!("holder: closed {}", closed.load(Ordering::Relaxed));
}

/// Spawns the holder process: the current test binary, running its
/// ignored test `name`, which calls [`hold_half_open_from_env`].
pub fn spawn_holder(
    name: &str,
    target: SocketAddr,
    source: Ipv4Addr,
    count: usize,
    hold_ms: u64,
) -> tokio::process::Child {
    let exe = std::env::current_exe().expect("test binary");
    tokio::process::Command::new(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOLDER_TARGET", target.to_string())
        .env("HOLDER_SOURCE", source.to_string())
        .env("HOLDER_COUNT", count.to_string())
        .env("HOLDER_MS", hold_ms.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn a holder")
}

/// Half-open heads held against one server from several holder processes
/// (one per source address, 127.0.0.2 upwards).
pub struct Flood {
    holders: Vec<(
        tokio::process::Child,
        BufReader<tokio::process::ChildStdout>,
    )>,
    /// Connections the holders opened.
    pub opened: usize,
    hold_ms: u64,
}

impl Flood {
    /// Starts `holders` processes running the ignored test `name`, each
    /// opening `per_holder` heads held `hold_ms`, and returns once every one
    /// has reported what it opened.
    pub async fn start(
        name: &str,
        target: SocketAddr,
        holders: u8,
        per_holder: usize,
        hold_ms: u64,
    ) -> Flood {
        let mut flood = Flood {
            holders: Vec::new(),
            opened: 0,
            hold_ms,
        };
        for i in 0..holders {
            let source = Ipv4Addr::new(127, 0, 0, 2 + i);
            let mut child = spawn_holder(name, target, source, per_holder, hold_ms);
            let mut out = BufReader::new(child.stdout.take().expect("stdout"));
            let mut line = String::new();
            loop {
                line.clear();
                let n = tokio::time::timeout(Duration::from_secs(60), out.read_line(&mut line))
                    .await
                    .expect("a holder reports in time")
                    .expect("read");
                assert!(n > 0, "a holder ended before it opened its connections");
                // libtest prints the test's name on the same line.
                if let Some(n) = line.split("holder: opened ").nth(1) {
                    flood.opened += n.trim().parse::<usize>().expect("count");
                    break;
                }
            }
            flood.holders.push((child, out));
        }
        flood
    }

    /// Waits for the holders to end; how many of their connections the
    /// server closed (evicted, or timed out) while they were held.
    pub async fn closed(self) -> usize {
        let mut closed = 0;
        for (mut child, mut out) in self.holders {
            let mut rest = String::new();
            let _ = tokio::time::timeout(
                Duration::from_millis(self.hold_ms + 30_000),
                out.read_to_string(&mut rest),
            )
            .await;
            let _ = child.wait().await;
            closed += rest
                .lines()
                .find_map(|l| l.split("holder: closed ").nth(1))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
        }
        closed
    }
}
