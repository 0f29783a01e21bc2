//! `roompin-balancer` as a library: the public listener (the front app,
//! its WebSocket tunnels, and the Pingora proxy for everything else),
//! membership and health, view pushes, config reloads and the admin
//! endpoints. The binary (`main.rs`) only parses the command line and calls
//! [`run`]. See docs/ARCHITECTURE.md.

pub mod admin;
pub mod capacity;
pub mod front;
pub mod gate;
pub mod head;
pub mod health;
pub mod metrics;
pub mod outcome;
pub mod page;
pub mod proxy;
pub mod push;
pub mod read_head;
pub mod reload;
pub mod replay;
pub mod respond;
pub mod route;
pub mod routing;
pub mod shortage;
pub mod tls;
pub mod tunnel;
pub mod tunnels;
pub mod websocket;

use anyhow::Context;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a balancer reads its config and how it runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The balancer TOML (see config/balancer.toml). Edits apply live.
    pub config: PathBuf,
    /// Overrides `listen` in the file.
    pub listen: Option<SocketAddr>,
    /// Overrides `admin_listen` in the file.
    pub admin_listen: Option<SocketAddr>,
    /// Worker threads of the proxy.
    pub threads: usize,
}

/// Runs the balancer until it is stopped: the public proxy, the admin
/// listener, and the health checks, view pushes and config reloads.
pub fn run(cli: Options) -> anyhow::Result<()> {
    let source = reload::ConfigSource {
        path: cli.config.clone(),
        listen: cli.listen,
        admin_listen: cli.admin_listen,
    };
    let written_ms = source.written_ms();
    let config = source.load()?;
    let key_base = roompin_shared::auth::key_base(&cli.config);
    // Everything the config names is read now, so a bad file stops the
    // start with its name rather than the first client.
    let gate = Arc::new(ArcSwap::from_pointee(
        gate::Gate::new(&config, &key_base).with_context(|| cli.config.display().to_string())?,
    ));
    let tls = match &config.tls {
        Some(t) => Some(tls::settings(t, &key_base)?),
        None => None,
    };
    let fd_budget = capacity::budget(raise_fd_limit());
    let metrics = metrics::Metrics::register()?;
    let capacity = capacity::Capacity::new(
        reload::held_to_budget(config.max_connections, fd_budget),
        metrics.clone(),
    );
    let (listen, admin_listen) = (config.listen, config.admin_listen);
    if !config.moves {
        tracing::warn!("moves = false: rooms do not move when the node set changes, so every change splits the meetings it reassigns");
    }
    let membership = routing::Membership::new(config, written_ms, metrics.clone());
    // The tunnels by upstream: the health checker ends a node's tunnels
    // when it stops reaching the node (`routing::paths_after`).
    let tunnels = Arc::new(tunnels::Tunnels::default());
    let health = Arc::new(health::HealthChecker::new(
        membership.clone(),
        metrics.clone(),
        tunnels.clone(),
    ));

    let tmp = std::env::temp_dir();
    let conf = ServerConf {
        threads: cli.threads.max(1),
        pid_file: tmp
            .join(format!("roompin-balancer-{}.pid", admin_listen.port()))
            .display()
            .to_string(),
        upgrade_sock: tmp
            .join(format!("roompin-balancer-{}.sock", admin_listen.port()))
            .display()
            .to_string(),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(2),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let proxy = proxy::Proxy {
        membership: membership.clone(),
        metrics: metrics.clone(),
    };
    let front = front::Front {
        http: Arc::new(pingora::proxy::http_proxy(&server.configuration, proxy)),
        membership: membership.clone(),
        metrics: metrics.clone(),
        tunnels,
        gate: gate.clone(),
        capacity: capacity.clone(),
    };
    let mut public = Service::new("roompin public".to_owned(), front);
    // No L4 buffers on client connections. Pingora's default read buffer
    // is 64 KiB per connection, zeroed at accept, and its write buffer
    // 1460 B; an idle WebSocket needs neither (heads are read into buffers
    // of their own, and a tunnel copies through a per-thread scratch).
    // roompin-bench's idle scenario measured ~60 KiB of RSS per proxied
    // WebSocket with them under Pingora's HTTP tunnel.
    let mut listener = ListenerConfig::tcp(listen.to_string());
    if let Some(settings) = tls {
        listener = listener.tls(settings);
    }
    public.add_listener(listener.l4_buffer(L4BufferSettings::unbuffered()));

    let admin = admin::Admin {
        membership: membership.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
    };
    let mut admin_service = Service::new(
        "roompin admin".to_owned(),
        pingora::apps::http_app::HttpServer::new_app(admin),
    );
    admin_service.threads = Some(1);
    admin_service.add_tcp(&admin_listen.to_string());

    let control = Control {
        health,
        pusher: push::ViewPusher::new(membership.clone(), metrics.clone()),
        reloader: reload::Reloader {
            source,
            membership,
            metrics,
            gate,
            capacity,
            fd_budget,
        },
    };
    server.add_service(public);
    server.add_service(admin_service);
    server.add_service(background_service("roompin control", control));
    tracing::info!(%listen, %admin_listen, config = %cli.config.display(), "roompin-balancer started");
    server.run_forever()
}

/// Raises the soft descriptor limit to the hard one (as nginx's
/// `worker_rlimit_nofile` does) and returns the limit in force: the
/// connection cap is held below it.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        tracing::debug!(from = soft, to = hard, "descriptor limit raised");
        return hard;
    }
    soft
}

/// Health checks, view pushes and config reloads, on one background runtime.
struct Control {
    health: Arc<health::HealthChecker>,
    pusher: push::ViewPusher,
    reloader: reload::Reloader,
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, shutdown: ShutdownWatch) {
        let stop = |mut s: ShutdownWatch| async move {
            let _ = s.changed().await;
        };
        tokio::join!(
            self.health.run(stop(shutdown.clone())),
            self.pusher.run(stop(shutdown.clone())),
            self.reloader.run(stop(shutdown)),
        );
    }
}
