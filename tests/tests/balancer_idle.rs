//! Proxied WebSockets live for hours: no Pingora timeout may cut one that is
//! quiet for longer than Pingora's defaults (its downstream read timeout is
//! 60 s). The node's pings are turned off here, so nothing at all crosses
//! the connection while it idles.

use roompin_tests::{Cluster, ClusterOptions, WsClient};
use std::time::Duration;

/// Longer than Pingora 0.9's 60 s default downstream read timeout.
const IDLE: Duration = Duration::from_secs(65);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_outlives_every_default_timeout() {
    let options = ClusterOptions {
        node_toml: "ping_interval_ms = 600000\n".into(),
        ..Default::default()
    };
    let cluster = Cluster::start(options).await;
    let url = cluster.balancer.ws_url("meeting_id=idle-test&user=sleeper");
    let mut sleeper = WsClient::connect(&url).await.expect("connect");
    sleeper.recv_type("join").await.expect("own join");

    // Nothing may arrive, and the connection must not end, while it idles.
    assert!(
        sleeper.silent_for(IDLE).await,
        "a frame or a close arrived while idle"
    );

    let mut waker = WsClient::connect(&url).await.expect("second client");
    let join = sleeper
        .recv_type("join")
        .await
        .expect("the idle client still receives");
    assert_eq!(join["members"], 2);
    waker.send_text("wake up").await.expect("send");
    let msg = sleeper
        .recv_type("message")
        .await
        .expect("message after the idle period");
    assert_eq!(msg["text"], "wake up");
    sleeper
        .send_text("awake")
        .await
        .expect("the idle client can still send");
    let reply = waker
        .recv_type("message")
        .await
        .expect("first message echo");
    assert_eq!(reply["text"], "wake up");
    let reply = waker.recv_type("message").await.expect("reply");
    assert_eq!(reply["text"], "awake");
}
