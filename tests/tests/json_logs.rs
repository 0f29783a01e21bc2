//! `--log-format json`: a node and a balancer carry a little traffic and
//! every line they write is one JSON object, with the connection lines
//! naming their meeting, node and connection. Text logs written to a file
//! carry no colour, and RUST_LOG filters both.

use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::process::Command;

use roompin_tests::process::{bin, free_port, loopback, target_dir, wait_healthy};
use roompin_tests::{eventually, Proc, SseClient, WsClient, PATIENCE};

const TOKEN: &str = "json-logs-token";

fn node(id: &str, addr: SocketAddr, format: &str, filter: &str) -> Proc {
    let mut cmd = Command::new(bin("roompin-node"));
    cmd.args([
        "--id",
        id,
        "--listen",
        &addr.to_string(),
        "--log-format",
        format,
    ]);
    cmd.env("ROOMPIN_CONTROL_TOKEN", TOKEN);
    Proc::spawn_filtered(&format!("json-logs-{id}-{}", addr.port()), cmd, filter)
}

fn balancer(public: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> Proc {
    let config = target_dir().join("test-logs").join(format!(
        "json-logs-balancer-{}-{}.toml",
        admin.port(),
        std::process::id()
    ));
    let toml = format!(
        "listen = \"{public}\"\nadmin_listen = \"{admin}\"\ncontrol_token = \"{TOKEN}\"\n\
         [health]\ninterval_ms = 200\n\n[[upstream]]\nid = \"node-j\"\naddr = \"{upstream}\"\n"
    );
    std::fs::write(&config, toml).expect("write balancer config");
    let mut cmd = Command::new(bin("roompin-balancer"));
    cmd.arg("--config")
        .arg(&config)
        .args(["--log-format", "json"]);
    Proc::spawn_filtered(&format!("json-logs-balancer-{}", admin.port()), cmd, "info")
}

/// Every line as a JSON object; panics naming the first that is not.
fn json_lines(proc: &Proc) -> Vec<Map<String, Value>> {
    proc.logs()
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(o)) => o,
            _ => panic!(
                "{}: a log line that is not a JSON object: {line:?}",
                proc.name
            ),
        })
        .collect()
}

/// An event's fields and those of the spans it happened in, innermost
/// winning: where a connection line's meeting, node and conn id are,
/// whether the event or its span carries them.
fn fields(line: &Map<String, Value>) -> Map<String, Value> {
    let mut all = Map::new();
    if let Some(Value::Array(spans)) = line.get("spans") {
        for span in spans {
            if let Value::Object(s) = span {
                all.extend(s.clone());
            }
        }
    }
    if let Some(Value::Object(span)) = line.get("span") {
        all.extend(span.clone());
    }
    all.extend(line.clone());
    all
}

/// The first line whose message is `message`, once it has been written.
async fn line_with(proc: &Proc, message: &str) -> Map<String, Value> {
    eventually(
        PATIENCE,
        &format!("{}: a {message:?} line", proc.name),
        || async {
            json_lines(proc)
                .into_iter()
                .find(|l| l.get("message").and_then(Value::as_str) == Some(message))
        },
    )
    .await
}

fn str_of<'a>(fields: &'a Map<String, Value>, key: &str) -> &'a str {
    fields.get(key).and_then(Value::as_str).unwrap_or_default()
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_connection_fields() {
    let node_addr = loopback(free_port());
    let node = node("node-j", node_addr, "json", "info");
    wait_healthy(node_addr, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.logs()));
    let (public, admin) = (loopback(free_port()), loopback(free_port()));
    let balancer = balancer(public, admin, node_addr);
    wait_healthy(admin, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", balancer.logs()));
    eventually(PATIENCE, "node-j owns meetings", || async {
        let ring = roompin_tests::get_json(&format!("http://{admin}/ring"))
            .await
            .ok()?;
        (ring["members"][0]["owner"] == true).then_some(())
    })
    .await;

    // A WebSocket and an SSE stream through the balancer, a message, a
    // refused request, and both clients leaving.
    let base = format!("ws://{public}/websocket");
    let mut ws = WsClient::join(&base, "json-room", "alice").await;
    let conn = ws.conn_id().to_owned();
    let sse = SseClient::connect(&format!("http://{public}/sse?meeting_id=json-room"), None)
        .await
        .expect("sse through the balancer");
    ws.send_text("hi").await.expect("send");
    ws.recv_type("message").await.expect("echo");
    let (status, _) = roompin_tests::get(&format!("http://{public}/sse?meeting_id=bad%20id"))
        .await
        .expect("a refused request");
    assert_eq!(status, 400);
    ws.close().await;
    drop(sse);

    // The node's connection lines carry their session span's meeting_id,
    // node and conn_id (`fields` merges the span's fields in).
    let joined = fields(&line_with(&node, "websocket joined").await);
    assert_eq!(str_of(&joined, "meeting_id"), "json-room", "{joined:?}");
    assert_eq!(str_of(&joined, "node"), "node-j", "{joined:?}");
    assert_eq!(str_of(&joined, "conn_id"), conn, "{joined:?}");
    assert_eq!(str_of(&joined, "level"), "INFO");
    assert!(
        joined.contains_key("timestamp") && joined.contains_key("target"),
        "{joined:?}"
    );
    let closed = fields(&line_with(&node, "websocket closed").await);
    assert_eq!(str_of(&closed, "conn_id"), conn, "{closed:?}");
    assert!(
        closed.contains_key("close"),
        "the close code is logged: {closed:?}"
    );
    let sse_joined = fields(&line_with(&node, "sse joined").await);
    assert_eq!(
        str_of(&sse_joined, "meeting_id"),
        "json-room",
        "{sse_joined:?}"
    );
    assert!(!str_of(&sse_joined, "conn_id").is_empty(), "{sse_joined:?}");

    // The balancer's request lines name the meeting and the node.
    eventually(
        PATIENCE,
        "the balancer logs the websocket request",
        || async {
            json_lines(&balancer)
                .into_iter()
                .map(|l| fields(&l))
                .find(|f| {
                    str_of(f, "message") == "request done"
                        && str_of(f, "route") == "websocket"
                        && str_of(f, "meeting") == "json-room"
                        && str_of(f, "node") == "node-j"
                        && f.get("status").and_then(Value::as_u64) == Some(101)
                })
        },
    )
    .await;
    // Pingora's own lines (through the `log` crate) are JSON too.
    assert!(
        json_lines(&balancer)
            .iter()
            .any(|l| str_of(l, "target").starts_with("pingora")),
        "no pingora line in the balancer's log"
    );
    // Every line, start-up to now, is one JSON object.
    assert!(json_lines(&node).len() >= 4);
    assert!(json_lines(&balancer).len() >= 4);
}

#[tokio::test]
async fn text_logs_to_a_file_have_no_colour_and_rust_log_filters() {
    let (loud_addr, quiet_addr) = (loopback(free_port()), loopback(free_port()));
    let loud = node("node-t", loud_addr, "text", "info");
    // Only the SSE module's info lines: the WebSocket join and the start-up
    // line must not appear.
    let quiet = node("node-q", quiet_addr, "text", "warn,roompin_node::sse=info");
    for addr in [loud_addr, quiet_addr] {
        wait_healthy(addr, PATIENCE).await.expect("node healthy");
    }
    let _loud_ws = WsClient::join(&format!("ws://{loud_addr}/websocket"), "t", "a").await;
    eventually(PATIENCE, "node-t logs the join", || async {
        loud.logs().contains("websocket joined").then_some(())
    })
    .await;
    let text = loud.logs();
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{text}"
    );
    assert!(
        text.contains("INFO") && text.contains("roompin-node started"),
        "{text}"
    );

    // The WebSocket joins first (its line, if any, is written before the
    // welcome), then the SSE stream, whose line shows the log is current.
    let _quiet_ws = WsClient::join(&format!("ws://{quiet_addr}/websocket"), "q", "a").await;
    let _sse = SseClient::connect(&format!("http://{quiet_addr}/sse?meeting_id=q"), None)
        .await
        .expect("sse");
    eventually(PATIENCE, "node-q logs the sse join", || async {
        quiet.logs().contains("sse joined").then_some(())
    })
    .await;
    let quiet_text = quiet.logs();
    assert!(
        !quiet_text.contains("websocket joined") && !quiet_text.contains("roompin-node started"),
        "RUST_LOG=warn,roompin_node::sse=info let other info lines through:\n{quiet_text}"
    );
}

#[tokio::test]
async fn a_bad_log_format_or_filter_is_refused_at_start() {
    for (args, filter, want) in [
        (vec!["--log-format", "xml"], "info", "text or json"),
        (vec![], "roompin_node=loud", "RUST_LOG"),
    ] {
        let out = Command::new(bin("roompin-node"))
            .args(["--id", "n", "--listen", "127.0.0.1:1"])
            .args(&args)
            .env("RUST_LOG", filter)
            .output()
            .expect("run roompin-node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {filter}: started");
        assert!(stderr.contains(want), "{args:?} {filter}: {stderr}");
    }
    let out = Command::new(bin("roompin-balancer"))
        .args(["--config", "/nonexistent.toml", "--log-format", "yaml"])
        .output()
        .expect("run roompin-balancer");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("text or json"));
}
