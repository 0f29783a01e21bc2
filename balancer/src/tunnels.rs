//! The open tunnels, by upstream: so that the balancer can end every
//! tunnel to a node it no longer reaches (its clients see the connection
//! end and reconnect, to the node that owns their meeting now), and end
//! them all at shutdown. SSE streams, which Pingora's proxy serves, are
//! registered the same way (`Tunnels::run`).
//!
//! Each tunnel runs as a task of its own; the registry keeps its abort
//! handle. Ending a tunnel aborts its task, which drops (and so closes)
//! both of its sockets and runs its `Drop` bookkeeping: gauge, log line,
//! removal from here. An open tunnel costs the registry one map entry and
//! nothing per byte.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::task::AbortHandle;

#[derive(Default)]
pub struct Tunnels {
    /// `None` for a moment: registered, its task not spawned yet.
    by_upstream: Mutex<HashMap<String, HashMap<u64, Option<AbortHandle>>>>,
    next_id: AtomicU64,
}

/// A tunnel's place in the registry; dropping it (when the tunnel's task
/// ends, however it ends) takes the tunnel out.
pub struct Registration {
    tunnels: Arc<Tunnels>,
    upstream: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.tunnels.by_upstream.lock();
        if let Some(open) = map.get_mut(&self.upstream) {
            open.remove(&self.id);
            if open.is_empty() {
                map.remove(&self.upstream);
            }
        }
    }
}

impl Tunnels {
    /// Spawns `tunnel` (given its registration, to hold for its life) as a
    /// task registered under `upstream`.
    pub fn spawn<F, Fut>(self: &Arc<Self>, upstream: &str, tunnel: F)
    where
        F: FnOnce(Registration) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let registration = Registration {
            tunnels: self.clone(),
            upstream: upstream.to_owned(),
            id,
        };
        self.by_upstream
            .lock()
            .entry(upstream.to_owned())
            .or_default()
            .insert(id, None);
        let handle = tokio::spawn(tunnel(registration));
        let mut map = self.by_upstream.lock();
        match map.get_mut(upstream).and_then(|open| open.get_mut(&id)) {
            Some(slot) => *slot = Some(handle.abort_handle()),
            // Gone already: the task has ended (then this does nothing) or
            // its upstream was cut in between (then this ends it).
            None => handle.abort(),
        }
    }

    /// Runs `work` as a task registered under `upstream` and waits for
    /// it: `None` if it was cut (the task, and every socket it owned, is
    /// gone then).
    pub async fn run<T, Fut>(self: &Arc<Self>, upstream: &str, work: Fut) -> Option<T>
    where
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn(upstream, move |registration| async move {
            let _registration = registration;
            let _ = tx.send(work.await);
        });
        rx.await.ok()
    }

    /// Ends every tunnel to `upstream_id`, closing both of its sides so the
    /// client sees its connection end. Returns how many were ended.
    pub fn cut_upstream(&self, upstream_id: &str) -> usize {
        let open = self.by_upstream.lock().remove(upstream_id);
        let handles: Vec<AbortHandle> = open
            .into_iter()
            .flat_map(HashMap::into_values)
            .flatten()
            .collect();
        for h in &handles {
            h.abort();
        }
        if !handles.is_empty() {
            tracing::info!(
                upstream = upstream_id,
                tunnels = handles.len(),
                "tunnels cut"
            );
        }
        handles.len()
    }

    /// Ends every tunnel (shutdown).
    pub fn cut_all(&self) -> usize {
        let all = std::mem::take(&mut *self.by_upstream.lock());
        let mut n = 0;
        for h in all.into_values().flat_map(HashMap::into_values).flatten() {
            h.abort();
            n += 1;
        }
        n
    }

    /// Tunnels open to `upstream_id`.
    pub fn open(&self, upstream_id: &str) -> usize {
        self.by_upstream
            .lock()
            .get(upstream_id)
            .map_or(0, HashMap::len)
    }
}

impl crate::health::PathCutter for Tunnels {
    fn cut(&self, upstream: &str) -> usize {
        self.cut_upstream(upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::Duplex;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    /// A real tunnel between a client socket and a node socket, registered
    /// under `upstream`; returns the outer ends.
    async fn tunnel(tunnels: &Arc<Tunnels>, upstream: &str) -> (TcpStream, TcpStream) {
        let (client, mut edge_c) = pair().await;
        let (mut edge_n, node) = pair().await;
        tunnels.spawn(upstream, |registration| async move {
            let _registration = registration;
            Duplex::new(&mut edge_c, &mut edge_n).await;
        });
        (client, node)
    }

    async fn ended(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 8];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn cut_upstream_ends_its_tunnels_on_both_sides_and_only_those() {
        let tunnels = Arc::new(Tunnels::default());
        let mut a = Vec::new();
        for _ in 0..3 {
            a.push(tunnel(&tunnels, "node-a").await);
        }
        let (mut bc, mut bn) = tunnel(&tunnels, "node-b").await;
        assert_eq!((tunnels.open("node-a"), tunnels.open("node-b")), (3, 1));

        assert_eq!(tunnels.cut_upstream("node-a"), 3);
        for (client, node) in &mut a {
            assert!(ended(client).await, "a client of node-a still open");
            assert!(ended(node).await, "node-a's side still open");
        }
        assert_eq!(tunnels.open("node-a"), 0);
        assert_eq!(tunnels.cut_upstream("node-a"), 0);

        // node-b's tunnel still carries bytes.
        bc.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        bn.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        assert_eq!(tunnels.open("node-b"), 1);

        // A tunnel that ends by itself leaves the registry.
        drop(bc);
        drop(bn);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tunnels.open("node-b") > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "an ended tunnel stayed registered"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(tunnels.cut_all(), 0);
    }

    #[tokio::test]
    async fn run_returns_the_result_or_none_when_cut() {
        let tunnels = Arc::new(Tunnels::default());
        assert_eq!(tunnels.run("node-a", async { 7 }).await, Some(7));
        assert_eq!(tunnels.open("node-a"), 0, "done: out of the registry");
        let (mut client, mut edge) = pair().await;
        let waiting = {
            let tunnels = tunnels.clone();
            tokio::spawn(async move {
                tunnels
                    .run("node-a", async move {
                        let mut b = [0u8; 1];
                        let _ = edge.read(&mut b).await;
                    })
                    .await
            })
        };
        while tunnels.open("node-a") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(tunnels.cut_upstream("node-a"), 1);
        assert_eq!(waiting.await.expect("join"), None);
        assert!(ended(&mut client).await, "the cut closed the socket");
    }
}
