//! Live edits of the upstream TOML: a file watch (notify) and SIGHUP both
//! reload it. A file that does not parse or validate is refused whole and
//! the running config stays; the log names the error and its line.

use notify::{RecursiveMode, Watcher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use arc_swap::ArcSwap;

use crate::capacity::Capacity;
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::routing::Membership;
use roompin_shared::config::{BalancerConfig, ConfigError};

/// Editors write a file in several steps; wait for them to settle.
const SETTLE: Duration = Duration::from_millis(100);

/// Where the config comes from: the file, with the command line's
/// overrides applied on top of every load (so one upstream TOML can serve
/// several balancers that listen on different addresses).
#[derive(Clone, Debug)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
}

impl ConfigSource {
    /// When the file was last written (Unix ms; 0 if its mtime cannot be
    /// read). Pushed to the nodes with the view (`RingView::config_ms`): of
    /// two balancers whose configured members differ, the one whose file
    /// was written later carries the edit that config management is rolling
    /// out, and rooms follow it at once instead of waiting for the other.
    /// It is the file's time, not the load's, so a balancer restarted on an
    /// old file does not pass for the newest edit.
    pub fn written_ms(&self) -> u64 {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    }

    pub fn load(&self) -> Result<BalancerConfig, ConfigError> {
        let mut config = BalancerConfig::load(&self.path)?;
        config.listen = self.listen.unwrap_or(config.listen);
        config.admin_listen = self.admin_listen.unwrap_or(config.admin_listen);
        config.validate().map_err(|message| ConfigError::Invalid {
            path: self.path.display().to_string(),
            message,
        })?;
        Ok(config)
    }
}

pub struct Reloader {
    pub source: ConfigSource,
    pub membership: Arc<Membership>,
    pub metrics: Metrics,
    /// The edge's access rules, rebuilt from each good config.
    pub gate: Arc<ArcSwap<Gate>>,
    pub capacity: Arc<Capacity>,
    /// The most connections the descriptor limit allows
    /// (`capacity::budget`): a reloaded `max_connections` is held to it.
    pub fd_budget: usize,
}

impl Reloader {
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (tx, mut rx) = mpsc::channel::<()>(1);
        // Watch the directory, not the file: editors and `mv` replace the
        // file, which would end a watch on the old inode.
        let _watcher = match self.watch(tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(path = %self.source.path.display(), error = %e, "cannot watch the config; SIGHUP still reloads");
                None
            }
        };
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        loop {
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(()) = rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                    self.reload("file changed");
                }
                _ = hangup => self.reload("SIGHUP"),
                _ = &mut shutdown => return,
            }
        }
    }

    fn watch(&self, tx: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
        let file = self.source.path.file_name().map(|f| f.to_owned());
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if event.kind.is_access() {
                    return;
                }
                if event.paths.iter().any(|p| p.file_name() == file.as_deref()) {
                    let _ = tx.try_send(());
                }
            })?;
        let dir = self
            .source
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    }

    fn reload(&self, why: &str) {
        // Before the read: an edit that lands meanwhile triggers another
        // reload, which stamps it.
        let written_ms = self.source.written_ms();
        let loaded = self
            .source
            .load()
            .map_err(|e| e.to_string())
            .and_then(|config| {
                // Key files are part of the config: a bad one refuses the edit.
                let gate = Gate::new(&config, &roompin_shared::auth::key_base(&self.source.path))
                    .map_err(|e| format!("{}: {e}", self.source.path.display()))?;
                Ok((config, gate))
            });
        match loaded {
            Ok((config, gate)) => {
                if config.tls != self.membership.routing().config.tls {
                    tracing::warn!(
                        "[tls] changes need a restart; the listener keeps its certificate"
                    );
                }
                self.gate.store(Arc::new(gate));
                self.capacity
                    .set_max(held_to_budget(config.max_connections, self.fd_budget));
                let before = self.membership.routing().epoch;
                self.membership.apply_config(config, written_ms);
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                let epoch = self.membership.routing().epoch;
                tracing::info!(why, path = %self.source.path.display(), epoch, changed = epoch != before, "config reloaded");
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(why, error = %e, "config reload refused; the running config stays");
            }
        }
    }
}

/// `max_connections`, or the descriptor budget if that is lower (with a
/// warning: the operator asked for more than the process can hold).
pub fn held_to_budget(max_connections: usize, budget: usize) -> usize {
    if max_connections > budget {
        tracing::warn!(
            max_connections,
            budget,
            "max_connections is more than the descriptor limit allows (two per proxied connection, plus a reserve); holding it to the budget"
        );
        budget
    } else {
        max_connections
    }
}
