//! The balancer's edge (issue 10): it reads every request head itself and
//! tunnels WebSockets itself, so the HTTP/1 hygiene a proxy owes its nodes
//! is its own. Real balancer; real nodes, or a scripted fake node where a
//! test needs to control exactly what a node sends and sees.

use roompin_tests::cluster::BalancerProc;
use roompin_tests::process::{free_port, loopback, target_dir};
use roompin_tests::raw::{self, body, status};
use roompin_tests::{eventually, get, metric, Cluster, ClusterOptions, WsClient, PATIENCE};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const WITHIN: Duration = Duration::from_secs(10);

/// No node saw a request: none has a room.
async fn no_node_saw_it(cluster: &Cluster) {
    for node in &cluster.nodes {
        let (_, text) = get(&node.url("/metrics")).await.expect("node metrics");
        assert_eq!(
            metric(&text, "roompin_node_rooms"),
            Some(0.0),
            "{} got a request",
            node.id
        );
    }
}

/// Rewrites the cluster's balancer TOML with `extra` keys and waits until
/// the balancer has applied it.
async fn reconfigure(cluster: &Cluster, extra: &str) {
    let b = &cluster.balancer;
    let ok = |text: &str| {
        metric(text, "roompin_balancer_config_reloads_total{result=\"ok\"}").unwrap_or(0.0)
    };
    let before = ok(&b.metrics().await);
    cluster.write_config(&format!("{extra}\n{}", cluster.toml_with(&[0, 1, 2])));
    eventually(PATIENCE, "the config reload", || async {
        (ok(&b.metrics().await) > before).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_the_cap_gets_431_and_one_under_it_passes() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let b = &cluster.balancer;
    // The default cap is 16 KiB: a 12 KiB cookie is fine...
    let cookie = format!("Cookie: c={}\r\n", "x".repeat(12 * 1024));
    let mut s = TcpStream::connect(b.public).await.expect("connect");
    s.write_all(raw::upgrade("/websocket?meeting_id=big-ok", &cookie).as_bytes())
        .await
        .expect("write");
    let got = raw::read_until(&mut s, WITHIN, |b| raw::head_end(b).is_some())
        .await
        .expect("an answer");
    assert_eq!(status(&got), Some(101), "{}", String::from_utf8_lossy(&got));
    // ...20 KiB is not, and nothing of it reaches a node.
    let cookie = format!("Cookie: c={}\r\n", "x".repeat(20 * 1024));
    let req = raw::upgrade("/websocket?meeting_id=big-no", &cookie);
    let got = raw::exchange(b.public, req.as_bytes(), WITHIN)
        .await
        .expect("an answer");
    assert_eq!(status(&got), Some(431), "{}", String::from_utf8_lossy(&got));
    assert!(body(&got).contains("16384 bytes"), "{}", body(&got));
    // Too many header fields: 431 too.
    let many = "X-A: 1\r\n".repeat(150);
    let req = format!("GET /sse?meeting_id=many HTTP/1.1\r\nHost: b\r\n{many}\r\n");
    let got = raw::exchange(b.public, req.as_bytes(), WITHIN)
        .await
        .expect("an answer");
    assert_eq!(status(&got), Some(431), "{}", String::from_utf8_lossy(&got));
    let text = b.metrics().await;
    assert!(
        metric(
            &text,
            "roompin_balancer_requests_total{route=\"other\",status=\"431\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "431s are counted:\n{text}"
    );
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_trickles_in_past_the_timeout_is_closed() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    reconfigure(&cluster, "request_head_timeout_ms = 1000").await;
    let b = &cluster.balancer;
    let mut s = TcpStream::connect(b.public).await.expect("connect");
    let head = raw::upgrade("/websocket?meeting_id=slow", "");
    let started = Instant::now();
    let (mut rd, mut wr) = s.split();
    // One byte every 100 ms: the whole head would take over 15 s.
    let trickle = async {
        for byte in head.as_bytes() {
            if wr.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let read = async {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(WITHIN, rd.read_to_end(&mut got)).await;
        got
    };
    let got = tokio::select! {
        got = read => got,
        _ = trickle => panic!("the whole head went through"),
    };
    let took = started.elapsed();
    assert_eq!(
        status(&got),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the timeout"
    );
    assert!(took < Duration::from_secs(8), "closed only after {took:?}");
    no_node_saw_it(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_with_a_body_is_refused() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let b = &cluster.balancer;
    for extra in ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n"] {
        let mut req = raw::upgrade("/websocket?meeting_id=smuggle", extra).into_bytes();
        req.extend_from_slice(b"GET /x");
        let got = raw::exchange(b.public, &req, WITHIN)
            .await
            .expect("an answer");
        assert_eq!(
            status(&got),
            Some(400),
            "{extra}: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(body(&got).contains("must not carry"), "{}", body(&got));
    }
    no_node_saw_it(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_pipelined_behind_the_upgrade_reaches_the_node() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let b = &cluster.balancer;
    let mut req = raw::upgrade("/websocket?meeting_id=eager&user=ann", "").into_bytes();
    req.extend(raw::client_text(r#"{"type":"message","text":"early"}"#));
    let mut s = TcpStream::connect(b.public).await.expect("connect");
    // Head and frame in one write, so they reach the balancer together.
    s.write_all(&req).await.expect("write");
    let got = raw::read_until(&mut s, WITHIN, |bytes| {
        raw::head_end(bytes).is_some_and(|i| {
            raw::server_texts(&bytes[i..])
                .iter()
                .any(|t| t.contains("early"))
        })
    })
    .await
    .expect("the message echoed by the room");
    assert_eq!(status(&got), Some(101));
    let frames = raw::server_texts(&got[raw::head_end(&got).unwrap_or(0)..]);
    assert!(frames[0].contains("\"welcome\""), "{frames:?}");
    let echo = frames
        .iter()
        .find(|f| f.contains("early"))
        .cloned()
        .unwrap_or_default();
    assert!(
        echo.contains("\"message\"") && echo.contains("\"ann\""),
        "{echo}"
    );
}

/// What a scripted node saw of one upgrade.
struct Seen {
    head: String,
    /// Bytes after the head, up to the client's EOF.
    after: Vec<u8>,
}

/// A node that answers `/healthz` with 200 and an upgrade with its 101 and
/// a welcome frame in one write; on the client's EOF it writes
/// `after-eof` and closes. Each upgrade's head and bytes go to `seen`.
async fn scripted_node() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(got) = raw::read_until(&mut s, WITHIN, |b| raw::head_end(b).is_some()).await
                else {
                    return;
                };
                let end = raw::head_end(&got).unwrap_or(got.len());
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                if head.starts_with("GET /healthz") {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
                let mut answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {}\r\n\r\n",
                    raw::ACCEPT
                )
                .into_bytes();
                answer.extend(raw::server_text(r#"{"type":"welcome","seq":0}"#));
                if s.write_all(&answer).await.is_err() {
                    return;
                }
                let mut after = got[end..].to_vec();
                let _ = tokio::time::timeout(WITHIN, s.read_to_end(&mut after)).await;
                let _ = s.write_all(b"after-eof").await;
                let _ = s.shutdown().await;
                let _ = tx.send(Seen { head, after });
            });
        }
    });
    (addr, rx)
}

/// A balancer in front of one scripted node.
async fn balancer_for(node: SocketAddr) -> BalancerProc {
    let (public, admin) = (loopback(free_port()), loopback(free_port()));
    let config = target_dir().join("test-logs").join(format!(
        "edge-{}-{}.toml",
        admin.port(),
        std::process::id()
    ));
    let toml = format!(
        "listen = \"{public}\"\nadmin_listen = \"{admin}\"\nmoves = false\n\n[health]\ninterval_ms = 200\n\n\
         [[upstream]]\nid = \"scripted\"\naddr = \"{node}\"\n"
    );
    std::fs::write(&config, toml).expect("write config");
    let b = BalancerProc::start(config, public, admin).await;
    eventually(PATIENCE, "the scripted node owns meetings", || async {
        (b.owners().await.ok()? == ["scripted"]).then_some(())
    })
    .await;
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_welcome_sent_with_the_101_reaches_the_client_and_a_half_close_is_passed_on() {
    let (node, mut seen) = scripted_node().await;
    let b = balancer_for(node).await;
    let mut s = TcpStream::connect(b.public).await.expect("connect");
    let extra = "X-Roompin-Skipped: evil\r\nX-Forwarded-For: 6.6.6.6\r\n";
    s.write_all(raw::upgrade("/websocket?meeting_id=halfway", extra).as_bytes())
        .await
        .expect("write");
    let got = raw::read_until(&mut s, WITHIN, |bytes| {
        raw::head_end(bytes).is_some_and(|i| !raw::server_texts(&bytes[i..]).is_empty())
    })
    .await
    .expect("101 and welcome");
    assert_eq!(status(&got), Some(101));
    let end = raw::head_end(&got).unwrap_or(0);
    assert_eq!(
        raw::server_texts(&got[end..]),
        [r#"{"type":"welcome","seq":0}"#]
    );

    // The client sends one frame and then stops sending: the node sees the
    // frame, then EOF, and can still answer, which reaches the client.
    s.write_all(b"last words").await.expect("write");
    s.shutdown().await.expect("half-close");
    let rest = raw::read_to_close(&mut s, WITHIN)
        .await
        .expect("the node's answer, then close");
    assert_eq!(rest, b"after-eof");
    let seen = tokio::time::timeout(WITHIN, seen.recv())
        .await
        .ok()
        .flatten()
        .expect("the node's record");
    assert_eq!(seen.after, b"last words");

    // What the node got: HTTP/1.1, the balancer's headers, not the client's.
    let head = seen.head.to_ascii_lowercase();
    assert!(
        head.starts_with("get /websocket?meeting_id=halfway http/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("x-roompin-balancer: "), "{head}");
    assert!(head.contains("x-roompin-epoch: "), "{head}");
    assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
    assert!(
        !head.contains("6.6.6.6") && !head.contains("evil"),
        "{head}"
    );

    // The tunnel is counted while open and logged when done.
    eventually(PATIENCE, "the tunnel's log line", || async {
        b.proc
            .logs()
            .lines()
            .any(|l| l.contains("request done") && l.contains("\"halfway\"") && l.contains("101"))
            .then_some(())
    })
    .await;
    let text = b.metrics().await;
    assert_eq!(
        metric(&text, "roompin_balancer_connections{upstream=\"scripted\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "roompin_balancer_requests_total{route=\"websocket\",status=\"101\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_requests_get_an_answer() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let b = &cluster.balancer;
    // Absolute form is routed by its path, on both paths.
    let target = "http://roompin.test/websocket?meeting_id=absolute&user=a";
    let mut s = TcpStream::connect(b.public).await.expect("connect");
    s.write_all(raw::upgrade(target, "").as_bytes())
        .await
        .expect("write");
    let got = raw::read_until(&mut s, WITHIN, |bytes| {
        raw::head_end(bytes).is_some_and(|i| !raw::server_texts(&bytes[i..]).is_empty())
    })
    .await
    .expect("101 and welcome");
    assert_eq!(status(&got), Some(101), "{}", String::from_utf8_lossy(&got));
    let welcome = raw::server_texts(&got[raw::head_end(&got).unwrap_or(0)..]).remove(0);
    assert!(welcome.contains("\"meeting_id\":\"absolute\""), "{welcome}");
    let publish = r#"{"text":"hi","user":"absolute"}"#;
    let req = format!(
        "POST http://{0}/messages?meeting_id=absolute HTTP/1.1\r\nHost: {0}\r\nContent-Type: application/json\r\n\
         Content-Length: {1}\r\nConnection: close\r\n\r\n{publish}",
        b.public,
        publish.len()
    );
    let got = raw::exchange(b.public, req.as_bytes(), WITHIN)
        .await
        .expect("an answer");
    assert_eq!(status(&got), Some(202), "{}", String::from_utf8_lossy(&got));

    let cases = [
        ("GET /sse?meeting_id=m HTTP/1.1\r\nAccept: */*\r\n\r\n", "missing Host header"),
        ("GET /sse?meeting_id=m HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host header"),
        (
            "POST /messages?meeting_id=m HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "malformed request body",
        ),
    ];
    for (req, reason) in cases {
        let got = raw::exchange(b.public, req.as_bytes(), WITHIN)
            .await
            .expect("an answer");
        assert_eq!(
            status(&got),
            Some(400),
            "{req:?}: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(body(&got).contains(reason), "{req:?}: {}", body(&got));
    }
    // The same on the upgrade path.
    let req = raw::upgrade("/websocket?meeting_id=m", "").replace("Host: roompin.test\r\n", "");
    let got = raw::exchange(b.public, req.as_bytes(), WITHIN)
        .await
        .expect("an answer");
    assert_eq!(
        (status(&got), body(&got)),
        (Some(400), "missing Host header\n".to_owned())
    );
}

/// 2,000 WebSockets at once through one balancer: 1,000 meetings of two,
/// each member sends 100 messages, and each gets all 200 of its meeting,
/// in seq order, with none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_websockets_exchange_100_messages_each_with_none_lost() {
    const MEETINGS: usize = 1000;
    const MESSAGES: usize = 100;
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let b = &cluster.balancer;
    let base = b.ws_base();
    let connected = Arc::new(Mutex::new(Vec::new()));
    let mut joins = tokio::task::JoinSet::new();
    for m in 0..MEETINGS {
        let (base, connected) = (base.clone(), connected.clone());
        joins.spawn(async move {
            let meeting = format!("many-{m}");
            let a = WsClient::join(&base, &meeting, "a").await;
            let b = WsClient::join(&base, &meeting, "b").await;
            connected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((a, b));
        });
        if joins.len() >= 100 {
            joins.join_next().await.expect("a join").expect("joined");
        }
    }
    while let Some(r) = joins.join_next().await {
        r.expect("joined");
    }
    let pairs = std::mem::take(&mut *connected.lock().unwrap_or_else(|e| e.into_inner()));
    assert_eq!(pairs.len(), MEETINGS);
    let text = b.metrics().await;
    let open: f64 = ["node-a", "node-b", "node-c"]
        .iter()
        .filter_map(|n| {
            metric(
                &text,
                &format!("roompin_balancer_connections{{upstream=\"{n}\"}}"),
            )
        })
        .sum();
    assert_eq!(open, (2 * MEETINGS) as f64, "open tunnels in /metrics");

    let mut runs = tokio::task::JoinSet::new();
    for (mut a, mut b) in pairs {
        runs.spawn(async move {
            for i in 0..MESSAGES {
                a.send_text(&format!("a{i}")).await.expect("send");
                b.send_text(&format!("b{i}")).await.expect("send");
            }
            let mut counts = Vec::new();
            for c in [&mut a, &mut b] {
                let mut got = 0;
                while got < 2 * MESSAGES {
                    let v = c
                        .recv_next()
                        .await
                        .unwrap_or_else(|e| panic!("{}: {e}", c.conn_id()));
                    if v["type"] == "message" {
                        got += 1;
                    }
                }
                counts.push(got);
            }
            a.close().await;
            b.close().await;
            counts
        });
    }
    let mut delivered = 0;
    while let Some(r) = runs.join_next().await {
        delivered += r.expect("a meeting's exchange").iter().sum::<usize>();
    }
    assert_eq!(delivered, MEETINGS * 2 * 2 * MESSAGES);
}

/// SIGTERM: the balancer stops listening, ends its open tunnels (the
/// client sees its connection end) and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_tunnels_and_exits() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let url = cluster.balancer.ws_url("meeting_id=bye&user=a");
    let mut client = WsClient::connect(&url).await.expect("connect");
    client.recv_type("join").await.expect("own join");
    cluster
        .balancer
        .proc
        .signal(nix::sys::signal::Signal::SIGTERM);
    let (ended, _) = client.until_end(WITHIN).await.expect("the tunnel ends");
    assert_eq!(ended, roompin_tests::ws::Ended::Dropped);
    let status = cluster
        .balancer
        .proc
        .wait_exit(WITHIN)
        .await
        .expect("the balancer exits");
    assert!(
        status.success(),
        "{status:?}\n{}",
        cluster.balancer.proc.logs()
    );
}
