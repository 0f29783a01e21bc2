//! Config files, as operators write them. Both sides parse with serde + toml
//! and refuse unknown keys, so a typo is an error with its line rather than a
//! silently ignored setting.

use crate::ring::Member;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Ring points per unit of weight. 160 (nginx's choice) leaves the busiest
/// of three nodes about 12% over the mean; 512 keeps it under 10% and still
/// costs only ~1,500 points, a few KiB, and a lookup of ~11 comparisons.
pub const DEFAULT_VNODES: u32 = 512;

/// A config that could not be used. The text names the problem and its place.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    // toml's message already carries "line N, column M" and the offending
    // snippet, so pass it through whole.
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// The balancer's file (`config/balancer.toml`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BalancerConfig {
    /// Public address for clients.
    pub listen: SocketAddr,
    /// Metrics and operator endpoints; never the public port.
    pub admin_listen: SocketAddr,
    /// The query parameter that is hashed.
    #[serde(default = "default_hash_param")]
    pub hash_param: String,
    /// Ring points per unit of weight.
    #[serde(default = "default_vnodes")]
    pub vnodes: u32,
    /// Names this balancer to the nodes; defaults to its admin address.
    #[serde(default)]
    pub balancer_id: Option<String>,
    /// Shared secret for the nodes' control endpoint. Without it the balancer
    /// cannot tell nodes to hand rooms over, and rooms split on changes; so
    /// it is required unless `moves = false`.
    #[serde(default)]
    pub control_token: Option<String>,
    /// Whether rooms move when the node set changes (the default). Only an
    /// operator who accepts split meetings on every change sets it to false,
    /// which lets the balancer run without `control_token`.
    #[serde(default = "default_moves")]
    pub moves: bool,
    /// How often the ownership view is pushed to every node even without a
    /// change, so that a restarted node learns it quickly.
    #[serde(default = "default_push_interval_ms")]
    pub push_interval_ms: u64,
    #[serde(default)]
    pub health: HealthConfig,
    /// Join tokens: when set, every member request needs one (`auth.rs`).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(rename = "upstream", default)]
    pub upstreams: Vec<UpstreamConfig>,

    // --- Edge hygiene of the public listener (balancer/src/head.rs). ---
    /// The largest request head (request line and headers) a client may
    /// send; a bigger one is answered 431 and the connection closed.
    #[serde(default = "default_max_request_head_bytes")]
    pub max_request_head_bytes: usize,
    /// How long a client has to send a whole request head, from the
    /// connection's start (or, on a kept-alive connection, from the head's
    /// first byte). A slower one (slowloris) is answered 408 and closed.
    #[serde(default = "default_request_head_timeout_ms")]
    pub request_head_timeout_ms: u64,

    // --- Facing the internet (docs/SECURITY.md). ---
    /// `[tls]`: with it the public listener speaks HTTPS and WSS only.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Origins (`https://chat.example.com`) whose pages may open
    /// `/websocket`, `/sse` and `/messages`. Empty: any origin. A request
    /// without `Origin` (a native client) always passes.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Client connections the public listener holds at once. At the cap a
    /// connection still waiting for its request head is closed to make
    /// room (the oldest first); with none to close, the new one gets 503.
    /// Held below the descriptor limit: a proxied connection costs two.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// `[tls]` of the balancer: PEM files, a relative path taken from the
/// config file's folder. Read once at start; a change needs a restart.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One chat node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub id: String,
    pub addr: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// Active health checks of each node's `/healthz`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures before a node leaves the ring. A node that
    /// answers 503 (draining) leaves at once.
    pub unhealthy_after: u32,
    /// Consecutive successes before a node returns; the guard against flapping.
    pub healthy_after: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: 1000,
            timeout_ms: 500,
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }
}

/// `[auth]`: the same section in the balancer's file and in each node's.
/// With it, every `/websocket`, `/sse` and `/messages` request needs a join
/// token (a JWT; `auth.rs` checks it). Secrets stay out of `Debug`, so a
/// config logged whole does not leak them.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secrets; a token signed with any of them verifies, so a secret
    /// rotates with the old and the new one listed together. The first one
    /// signs what `roompin-balancer token` mints.
    #[serde(default)]
    pub hs256_secrets: Vec<String>,
    /// PEM files of public keys (RSA for RS256, P-256 for ES256, Ed25519
    /// for EdDSA). A relative path is taken from the config file's folder.
    #[serde(default)]
    pub public_keys: Vec<PathBuf>,
    /// When set, a token's `iss` must be this.
    #[serde(default)]
    pub issuer: Option<String>,
    /// When set, a token's `aud` must name this.
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_seconds")]
    pub leeway_seconds: u64,
}

/// RFC 7518 3.2: an HS256 key must be at least as long as the hash, 256
/// bits; a shorter one can be brute-forced offline from any token.
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// The most clock skew `leeway_seconds` may allow.
pub const MAX_LEEWAY_SECONDS: u64 = 300;

fn default_leeway_seconds() -> u64 {
    30
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secrets",
                &format_args!("[{} redacted]", self.hs256_secrets.len()),
            )
            .field("public_keys", &self.public_keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_seconds", &self.leeway_seconds)
            .finish()
    }
}

impl AuthConfig {
    /// What can be checked without reading the key files (those are read
    /// and checked when the verifier is built, `auth::Verifier::new`).
    pub fn validate(&self) -> Result<(), String> {
        if self.hs256_secrets.is_empty() && self.public_keys.is_empty() {
            return Err(
                "[auth] has neither `hs256_secrets` nor `public_keys`: no token could ever verify"
                    .into(),
            );
        }
        for (i, secret) in self.hs256_secrets.iter().enumerate() {
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err(format!(
                    "[auth] hs256_secrets #{}: {} bytes; at least {MIN_HS256_SECRET_BYTES} are needed (RFC 7518 3.2)",
                    i + 1,
                    secret.len()
                ));
            }
        }
        if self.public_keys.iter().any(|p| p.as_os_str().is_empty()) {
            return Err("[auth] public_keys: an empty path".into());
        }
        for (key, value) in [("issuer", &self.issuer), ("audience", &self.audience)] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(format!("[auth] `{key}` is empty: leave it out instead"));
            }
        }
        if self.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(format!(
                "[auth] `leeway_seconds` = {} is over {MAX_LEEWAY_SECONDS}",
                self.leeway_seconds
            ));
        }
        Ok(())
    }
}

fn default_hash_param() -> String {
    "meeting_id".into()
}
fn default_vnodes() -> u32 {
    DEFAULT_VNODES
}
fn default_weight() -> u32 {
    1
}
fn default_push_interval_ms() -> u64 {
    2000
}
fn default_moves() -> bool {
    true
}
fn default_max_request_head_bytes() -> usize {
    16 * 1024
}
fn default_request_head_timeout_ms() -> u64 {
    10_000
}
/// With the 20,000 descriptors a process may hold and two per proxied
/// connection, 8,000 leaves room for probes, pushes and the admin listener.
pub const DEFAULT_BALANCER_MAX_CONNECTIONS: usize = 8_000;
fn default_max_connections() -> usize {
    DEFAULT_BALANCER_MAX_CONNECTIONS
}

/// Whether `origin` is a serialized origin as browsers send it:
/// `scheme://host[:port]`, lowercase scheme and host, nothing after.
pub fn validate_origin(origin: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "allowed_origins: {origin:?} {why}; write it as the browser sends it, e.g. \"https://chat.example.com\""
        ))
    };
    let Some((scheme, host)) = origin.split_once("://") else {
        return bad("has no scheme");
    };
    if scheme != "http" && scheme != "https" {
        return bad("is not http:// or https://");
    }
    if host.is_empty() || host.contains(['/', '?', '#', ' ', '@']) {
        return bad("must be scheme://host[:port] with no path");
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return bad("has uppercase letters (browsers send the host in lowercase)");
    }
    Ok(())
}

impl BalancerConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_toml(path, &read(path)?)
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: BalancerConfig = parse(path, text)?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Checks what serde cannot. Each message names the key or upstream.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen == self.admin_listen {
            return Err(format!(
                "`admin_listen` must differ from `listen` ({})",
                self.listen
            ));
        }
        if self.hash_param.is_empty() {
            return Err("`hash_param` is empty".into());
        }
        if self.vnodes == 0 || self.vnodes > 10_000 {
            return Err(format!(
                "`vnodes` = {} is out of range 1..=10000",
                self.vnodes
            ));
        }
        if self.push_interval_ms == 0 {
            return Err("`push_interval_ms` must be at least 1".into());
        }
        if self.moves && self.control_token.as_deref().is_none_or(str::is_empty) {
            return Err("`control_token` is not set: without it the nodes cannot be told to hand rooms over, so every membership change would split meetings. Set `control_token` to the nodes' token, or `moves = false` to run without room moves".into());
        }
        if !(1024..=1024 * 1024).contains(&self.max_request_head_bytes) {
            return Err(format!(
                "`max_request_head_bytes` = {} is out of range 1024..=1048576",
                self.max_request_head_bytes
            ));
        }
        if self.request_head_timeout_ms == 0 {
            return Err("`request_head_timeout_ms` must be at least 1".into());
        }
        let h = &self.health;
        if h.interval_ms == 0 || h.timeout_ms == 0 || h.unhealthy_after == 0 || h.healthy_after == 0
        {
            return Err("[health]: every value must be at least 1".into());
        }
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        if let Some(tls) = &self.tls {
            if tls.cert.as_os_str().is_empty() || tls.key.as_os_str().is_empty() {
                return Err("[tls]: `cert` and `key` must both name a PEM file".into());
            }
        }
        for origin in &self.allowed_origins {
            validate_origin(origin)?;
        }
        if self.max_connections == 0 {
            return Err("`max_connections` must be at least 1".into());
        }
        if self.upstreams.is_empty() {
            return Err("no [[upstream]]: at least one chat node is needed".into());
        }
        let mut ids = HashMap::new();
        let mut addrs = HashMap::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let at = format!("[[upstream]] #{} (id = {:?})", i + 1, u.id);
            validate_node_id(&u.id).map_err(|e| format!("{at}: {e}"))?;
            if u.weight == 0 || u.weight > 100 {
                return Err(format!("{at}: weight {} is out of range 1..=100", u.weight));
            }
            let addr: SocketAddr = u.addr.parse().map_err(|_| {
                format!(
                    "{at}: addr {:?} is not an IP:port address such as 127.0.0.1:9001",
                    u.addr
                )
            })?;
            if let Some(first) = ids.insert(u.id.clone(), i + 1) {
                return Err(format!(
                    "{at}: duplicate id, also used by [[upstream]] #{first}"
                ));
            }
            if let Some(first) = addrs.insert(addr, i + 1) {
                return Err(format!(
                    "{at}: duplicate addr {addr}, also used by [[upstream]] #{first}"
                ));
            }
        }
        Ok(())
    }

    /// The ring members, in file order.
    pub fn members(&self) -> Vec<Member> {
        self.upstreams
            .iter()
            .map(|u| Member {
                id: u.id.clone(),
                addr: u.addr.clone(),
                weight: u.weight,
            })
            .collect()
    }

    pub fn balancer_id(&self) -> String {
        self.balancer_id
            .clone()
            .unwrap_or_else(|| self.admin_listen.to_string())
    }
}

/// Node ids appear in URLs, logs and metric labels: keep them plain.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "id {id:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"
        ))
    }
}

/// A node's optional file (`roompin-node --config`). Command-line flags
/// override it; everything has a default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub id: Option<String>,
    pub listen: Option<SocketAddr>,
    /// The largest client frame; bigger ones close the connection with 1009.
    pub max_message_bytes: usize,
    /// How often idle clients are pinged; a client that has not answered by
    /// the next ping is dropped.
    pub ping_interval_ms: u64,
    /// Frames queued for one slow client before it is dropped with 4002.
    pub send_queue: usize,
    /// Events kept per room for `since` and `Last-Event-ID`.
    pub history_events: usize,
    /// Bytes of history kept by the whole node.
    pub history_bytes: usize,
    /// How long a room with no members keeps its history.
    pub room_idle_ms: u64,
    /// SSE heartbeat comment interval.
    pub sse_heartbeat_ms: u64,
    /// The bearer token the balancer must send to `/control/*`. Without it
    /// the control endpoint is off.
    pub control_token: Option<String>,
    /// On SIGTERM: how long to wait for the balancer to route away before
    /// closing the remaining clients anyway.
    pub drain_timeout_ms: u64,
    /// tungstenite read buffer per connection (its default is 128 KiB).
    pub ws_read_buffer: usize,
    /// TCP_USER_TIMEOUT of client sockets: a peer that leaves sent data
    /// unacknowledged (it vanished, or stopped reading and shut its window)
    /// this long is cut by the kernel, whatever the session is doing.
    pub tcp_user_timeout_ms: u64,
    /// tungstenite write buffer per connection.
    pub ws_write_buffer: usize,

    // What the node stands against when it faces the internet (issue 11,
    // docs/SECURITY.md). Kept together.
    /// Join tokens: with this section every member request needs one.
    pub auth: Option<AuthConfig>,
    /// WebSocket and SSE sessions at once; above it a new one gets 503.
    pub max_connections: usize,
    /// Rooms at once; above it a request that would open one gets 503.
    pub max_rooms: usize,
    /// TCP connections at once, of any kind. At the cap the oldest one that
    /// has no request in flight is closed to make room; with none to close,
    /// the new one gets 503. Held below the process's descriptor limit.
    pub max_sockets: usize,
    /// Frames a WebSocket client may send per second, on average...
    pub messages_per_second: u32,
    /// ...and at once, after a quiet spell (the token bucket's size).
    pub message_burst: u32,
    /// Frames over the limit in a row before the client is closed (1008).
    pub rate_limit_close_after: u32,
    /// A request head must arrive whole within this, counted from the
    /// connection's start or the previous response's end.
    pub request_head_timeout_ms: u64,
    /// A request body must arrive whole within this of its head.
    pub request_body_timeout_ms: u64,
    /// After a response, the next request's head must have arrived within
    /// this, else the connection is closed.
    pub keep_alive_timeout_ms: u64,
    /// The largest request head (request line and headers); a bigger one
    /// gets 431.
    pub max_request_head_bytes: usize,
    /// The most headers in a request head; more get 431.
    pub max_request_headers: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: None,
            listen: None,
            max_message_bytes: 64 * 1024,
            ping_interval_ms: 30_000,
            send_queue: 256,
            history_events: 1000,
            history_bytes: 64 * 1024 * 1024,
            room_idle_ms: 60_000,
            sse_heartbeat_ms: 15_000,
            control_token: None,
            drain_timeout_ms: 10_000,
            ws_read_buffer: 4096,
            ws_write_buffer: 0,
            tcp_user_timeout_ms: 30_000,
            auth: None,
            max_connections: 10_000,
            max_rooms: 10_000,
            max_sockets: 16_000,
            messages_per_second: 20,
            message_burst: 40,
            rate_limit_close_after: 100,
            request_head_timeout_ms: 10_000,
            request_body_timeout_ms: 30_000,
            keep_alive_timeout_ms: 5_000,
            max_request_head_bytes: 16 * 1024,
            max_request_headers: 100,
        }
    }
}

/// hyper refuses a read buffer below 8 KiB (and panics on one).
pub const MIN_REQUEST_HEAD_BYTES: usize = 8192;

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_toml(path, &read(path)?)
    }

    /// Parses and validates a node's file; `path` only names it in errors.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: NodeConfig = parse(path, text)?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(id) = &self.id {
            validate_node_id(id)?;
        }
        let positive = [
            ("max_message_bytes", self.max_message_bytes as u64),
            ("ping_interval_ms", self.ping_interval_ms),
            ("send_queue", self.send_queue as u64),
            ("room_idle_ms", self.room_idle_ms),
            ("sse_heartbeat_ms", self.sse_heartbeat_ms),
            ("ws_read_buffer", self.ws_read_buffer as u64),
            ("tcp_user_timeout_ms", self.tcp_user_timeout_ms),
            ("max_connections", self.max_connections as u64),
            ("max_rooms", self.max_rooms as u64),
            ("max_sockets", self.max_sockets as u64),
            ("messages_per_second", u64::from(self.messages_per_second)),
            ("message_burst", u64::from(self.message_burst)),
            (
                "rate_limit_close_after",
                u64::from(self.rate_limit_close_after),
            ),
            ("request_head_timeout_ms", self.request_head_timeout_ms),
            ("request_body_timeout_ms", self.request_body_timeout_ms),
            ("keep_alive_timeout_ms", self.keep_alive_timeout_ms),
            ("max_request_headers", self.max_request_headers as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("`{key}` must be at least 1"));
            }
        }
        if self.max_connections >= self.max_sockets {
            return Err(format!(
                "`max_connections` ({}) must be below `max_sockets` ({}): health checks, control and peers need sockets too",
                self.max_connections, self.max_sockets
            ));
        }
        if self.max_request_head_bytes < MIN_REQUEST_HEAD_BYTES {
            return Err(format!(
                "`max_request_head_bytes` = {} is below the least allowed, {MIN_REQUEST_HEAD_BYTES}",
                self.max_request_head_bytes
            ));
        }
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"
control_token = "t"

[[upstream]]
id = "node-a"
addr = "127.0.0.1:9001"

[[upstream]]
id = "node-b"
addr = "127.0.0.1:9002"
weight = 2
"#;

    fn load(text: &str) -> Result<BalancerConfig, String> {
        BalancerConfig::from_toml(Path::new("b.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_file_loads_with_defaults() {
        let c = load(GOOD).expect("valid");
        assert_eq!(c.hash_param, "meeting_id");
        assert_eq!(c.vnodes, DEFAULT_VNODES);
        assert_eq!(c.members()[1].weight, 2);
        assert_eq!(c.health, HealthConfig::default());
        assert_eq!(c.max_request_head_bytes, 16384);
        assert_eq!(c.request_head_timeout_ms, 10_000);
    }

    #[test]
    fn refusals_name_the_problem_and_place() {
        let err = load(&GOOD.replace("weight = 2", "wieght = 2")).unwrap_err();
        assert!(
            err.contains("unknown field `wieght`") && err.contains("line 13"),
            "{err}"
        );
        let err = load(&GOOD.replace("node-b", "node-a")).unwrap_err();
        assert!(err.contains("#2") && err.contains("duplicate id"), "{err}");
        let err = load(&GOOD.replace("9002", "9001")).unwrap_err();
        assert!(err.contains("duplicate addr"), "{err}");
        let err = load(&GOOD.replace("weight = 2", "weight = 0")).unwrap_err();
        assert!(err.contains("weight 0"), "{err}");
        let err = load(&GOOD.replace("127.0.0.1:9002", "nowhere")).unwrap_err();
        assert!(err.contains("not an IP:port"), "{err}");
        let err = load(GOOD.split("[[upstream]]").next().unwrap_or("")).unwrap_err();
        assert!(err.contains("no [[upstream]]"), "{err}");
        let err = load(&format!("max_request_head_bytes = 100\n{GOOD}")).unwrap_err();
        assert!(err.contains("max_request_head_bytes"), "{err}");
        let err = load(&format!("request_head_timeout_ms = 0\n{GOOD}")).unwrap_err();
        assert!(err.contains("request_head_timeout_ms"), "{err}");
        let err = load("listen = ").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn edge_keys_have_defaults_and_are_checked() {
        let c = load(GOOD).expect("valid");
        assert_eq!(c.max_connections, DEFAULT_BALANCER_MAX_CONNECTIONS);
        assert!(c.tls.is_none() && c.allowed_origins.is_empty());
        let with = |top: &str, tables: &str| load(&format!("{top}\n{GOOD}\n{tables}"));
        let c = with(
            "allowed_origins = [\"https://chat.example.com\", \"http://localhost:8080\"]\nmax_connections = 5",
            "[tls]\ncert = \"a.crt\"\nkey = \"a.key\"\n",
        )
        .expect("valid");
        assert_eq!(c.max_connections, 5);
        assert_eq!(
            c.tls,
            Some(TlsConfig {
                cert: "a.crt".into(),
                key: "a.key".into()
            })
        );
        for (top, tables, word) in [
            ("max_connections = 0", "", "max_connections"),
            ("allowed_origins = [\"chat.example.com\"]", "", "no scheme"),
            (
                "allowed_origins = [\"https://chat.example.com/\"]",
                "",
                "no path",
            ),
            (
                "allowed_origins = [\"https://Chat.example.com\"]",
                "",
                "uppercase",
            ),
            ("allowed_origins = [\"ftp://chat.example.com\"]", "", "http"),
            ("", "[tls]\ncert = \"a.crt\"\n", "missing field `key`"),
            ("", "[tls]\ncert = \"\"\nkey = \"k\"\n", "PEM file"),
            (
                "",
                "[tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"\n",
                "unknown field `ca`",
            ),
        ] {
            let err = with(top, tables).map(|_| ()).expect_err(word);
            assert!(err.contains(word), "{top} {tables}: {err}");
        }
    }

    #[test]
    fn room_moves_need_a_control_token_unless_switched_off() {
        let no_token = GOOD.replace("control_token = \"t\"\n", "");
        let err = load(&no_token).unwrap_err();
        assert!(
            err.contains("`control_token` is not set") && err.contains("moves = false"),
            "{err}"
        );
        let err = load(&GOOD.replace("\"t\"", "\"\"")).unwrap_err();
        assert!(err.contains("`control_token` is not set"), "{err}");
        let off = format!("moves = false\n{no_token}");
        let c = load(&off).expect("moves = false needs no token");
        assert!(!c.moves && c.control_token.is_none());
        assert!(load(GOOD).expect("valid").moves);
    }

    #[test]
    fn auth_is_the_same_section_in_both_files() {
        let section = "\n[auth]\nhs256_secrets = [\"0123456789abcdef0123456789abcdef\"]\npublic_keys = [\"keys/a.pem\"]\nissuer = \"backend\"\n";
        let b = load(
            &format!(
                "{}{section}",
                GOOD.split("[[upstream]]").next().unwrap_or("")
            )
            .replace(
                "[auth]",
                "[[upstream]]\nid = \"node-a\"\naddr = \"127.0.0.1:9001\"\n\n[auth]",
            ),
        )
        .expect("balancer with [auth]");
        let n = NodeConfig::from_toml(Path::new("n.toml"), section).expect("node with [auth]");
        assert_eq!(b.auth, n.auth);
        let auth = n.auth.expect("auth");
        assert_eq!(auth.public_keys, [PathBuf::from("keys/a.pem")]);
        assert_eq!(auth.leeway_seconds, 30);
        let short = NodeConfig::from_toml(Path::new("n.toml"), "[auth]\nhs256_secrets = [\"x\"]\n")
            .map(|_| ())
            .map_err(|e| e.to_string())
            .expect_err("short secret");
        assert!(
            short.contains("n.toml") && short.contains("at least 32"),
            "{short}"
        );
        let typo = NodeConfig::from_toml(Path::new("n.toml"), "[auth]\nhs256_secret = []\n")
            .map(|_| ())
            .map_err(|e| e.to_string())
            .expect_err("typo");
        assert!(typo.contains("unknown field"), "{typo}");
    }

    #[test]
    fn node_limits_have_defaults_and_bounds() {
        let n = NodeConfig::from_toml(Path::new("n.toml"), "").expect("defaults");
        assert_eq!(n, NodeConfig::default());
        assert!(n.max_connections < n.max_sockets);
        let refuse = |text: &str| {
            NodeConfig::from_toml(Path::new("n.toml"), text)
                .map(|_| ())
                .map_err(|e| e.to_string())
                .expect_err(text)
        };
        assert!(refuse("max_connections = 0").contains("max_connections"));
        assert!(refuse("max_connections = 20\nmax_sockets = 20").contains("below `max_sockets`"));
        assert!(refuse("message_burst = 0").contains("message_burst"));
        assert!(refuse("max_request_head_bytes = 4096").contains("8192"));
        assert!(refuse("request_head_timeout_ms = 0").contains("request_head_timeout_ms"));
    }
}
