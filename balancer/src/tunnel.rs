//! The byte copy of an upgraded WebSocket: everything a proxied WebSocket
//! costs the balancer after its 101.
//!
//! Both directions run in one future on the two streams, readiness-driven:
//! a read goes into a scratch buffer that belongs to the worker thread, not
//! to the connection, and is written on at once. Only when the other side
//! cannot take all of it does the connection get a buffer of its own, for
//! the rest, and that buffer is freed as soon as it has been written. An
//! idle tunnel therefore holds no buffer at all (HAProxy's approach; nginx
//! keeps a page per side), and a busy one holds at most one read's worth
//! per direction, while the kernel's socket buffers do the real buffering.
//!
//! A side that ends its sending (EOF) is passed on as a half-close (the
//! other side's write is shut down) and the other direction keeps flowing
//! until it ends too. An error on either side ends both. There is no
//! timeout: the node's WebSocket pings find dead peers.
//!
//! Generic over `AsyncRead + AsyncWrite`, so the client side can be any
//! Pingora `Stream`, TLS included.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The scratch buffer of each worker thread. 16 KiB is a TLS record and
/// HAProxy's `tune.bufsize`; chat frames are far smaller.
const SCRATCH: usize = 16 * 1024;

/// Reads per direction per poll before yielding to other tasks.
const READS_PER_POLL: usize = 16;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Which side failed.
#[derive(Debug)]
pub enum Side {
    Client,
    Node,
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum End {
    /// Both sides finished sending and every byte was delivered.
    Closed,
    /// A read or write on `Side` failed; the other side is closed as well.
    Failed(Side, io::Error),
}

/// One direction: bytes from `src` to `dst`.
#[derive(Default)]
struct Flow {
    /// Bytes read but not yet written: empty (and unallocated) unless the
    /// destination pushed back.
    pending: Vec<u8>,
    at: usize,
    /// Something was written since the last flush.
    unflushed: bool,
    /// `src` has ended: shut `dst`'s write side down once `pending` is out.
    eof: bool,
    done: bool,
}

/// What went wrong in a flow, by stream.
enum FlowError {
    Src(io::Error),
    Dst(io::Error),
}

impl Flow {
    fn poll<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
    ) -> Poll<Result<(), FlowError>>
    where
        S: AsyncRead + Unpin + ?Sized,
        D: AsyncWrite + Unpin + ?Sized,
    {
        let mut reads = 0;
        loop {
            while self.at < self.pending.len() {
                match Pin::new(&mut *dst).poll_write(cx, &self.pending[self.at..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(FlowError::Dst(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => {
                        self.at += n;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(FlowError::Dst(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.pending.is_empty() {
                // Written: give the memory back.
                self.pending = Vec::new();
                self.at = 0;
            }
            if self.unflushed {
                match Pin::new(&mut *dst).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(FlowError::Dst(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.eof {
                return match Pin::new(&mut *dst).poll_shutdown(cx) {
                    // The peer may be gone already; the half-close is moot then.
                    Poll::Ready(Ok(())) | Poll::Ready(Err(_)) => {
                        self.done = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            if reads == READS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            reads += 1;
            match self.read_and_write(cx, src, dst) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
    }

    /// One read into the thread's scratch buffer, written on at once; what
    /// the destination does not take is kept in `pending`.
    fn read_and_write<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
    ) -> Poll<Result<(), FlowError>>
    where
        S: AsyncRead + Unpin + ?Sized,
        D: AsyncWrite + Unpin + ?Sized,
    {
        SCRATCH_BUF.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.copy_once(cx, src, dst, &mut scratch),
            // Not reachable (a poll never nests another on this thread),
            // but a borrowed scratch must not panic: use a buffer of our own.
            Err(_) => self.copy_once(cx, src, dst, &mut vec![0; SCRATCH]),
        })
    }

    fn copy_once<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        scratch: &mut [u8],
    ) -> Poll<Result<(), FlowError>>
    where
        S: AsyncRead + Unpin + ?Sized,
        D: AsyncWrite + Unpin + ?Sized,
    {
        let mut rb = ReadBuf::new(scratch);
        match Pin::new(&mut *src).poll_read(cx, &mut rb) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(FlowError::Src(e))),
            Poll::Ready(Ok(())) => {}
        }
        let n = rb.filled().len();
        if n == 0 {
            self.eof = true;
            return Poll::Ready(Ok(()));
        }
        let read = &rb.filled()[..n];
        let written = match Pin::new(&mut *dst).poll_write(cx, read) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(FlowError::Dst(io::ErrorKind::WriteZero.into())))
            }
            Poll::Ready(Ok(m)) => m,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(FlowError::Dst(e))),
            Poll::Pending => 0,
        };
        if written > 0 {
            self.unflushed = true;
        }
        if written < n {
            self.pending = read[written..].to_vec();
            self.at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// Copies between `client` and `node` until both have finished sending, or
/// either fails.
pub struct Duplex<'a, C: ?Sized, N: ?Sized> {
    client: &'a mut C,
    node: &'a mut N,
    up: Flow,
    down: Flow,
}

impl<'a, C, N> Duplex<'a, C, N>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    N: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    pub fn new(client: &'a mut C, node: &'a mut N) -> Self {
        Duplex {
            client,
            node,
            up: Flow::default(),
            down: Flow::default(),
        }
    }
}

impl<C, N> Future for Duplex<'_, C, N>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    N: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let me = self.get_mut();
        if !me.up.done {
            if let Poll::Ready(Err(e)) = me.up.poll(cx, me.client, me.node) {
                return Poll::Ready(match e {
                    FlowError::Src(e) => End::Failed(Side::Client, e),
                    FlowError::Dst(e) => End::Failed(Side::Node, e),
                });
            }
        }
        if !me.down.done {
            if let Poll::Ready(Err(e)) = me.down.poll(cx, me.node, me.client) {
                return Poll::Ready(match e {
                    FlowError::Src(e) => End::Failed(Side::Node, e),
                    FlowError::Dst(e) => End::Failed(Side::Client, e),
                });
            }
        }
        if me.up.done && me.down.done {
            Poll::Ready(End::Closed)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_half_closes_are_passed_on() {
        let (mut client, mut edge_c) = pair().await;
        let (mut edge_n, mut node) = pair().await;
        let tunnel = tokio::spawn(async move { Duplex::new(&mut edge_c, &mut edge_n).await });
        client.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        node.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
        // The client stops sending: the node sees EOF but can still answer.
        client.shutdown().await.expect("shutdown");
        assert_eq!(node.read(&mut got).await.expect("eof"), 0);
        node.write_all(b"bye")
            .await
            .expect("write after half-close");
        let mut back = [0u8; 3];
        client.read_exact(&mut back).await.expect("read");
        assert_eq!(&back, b"bye");
        node.shutdown().await.expect("shutdown");
        assert_eq!(client.read(&mut back).await.expect("eof"), 0);
        assert!(matches!(tunnel.await.expect("join"), End::Closed));
    }

    /// More than the sockets hold: the tunnel keeps what a socket refuses
    /// and delivers every byte, in order.
    #[tokio::test]
    async fn a_slow_side_gets_every_byte() {
        let (mut client, mut edge_c) = pair().await;
        let (mut edge_n, mut node) = pair().await;
        let tunnel = tokio::spawn(async move { Duplex::new(&mut edge_c, &mut edge_n).await });
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("shutdown");
            client
        });
        let mut got = Vec::new();
        node.read_to_end(&mut got).await.expect("read");
        assert!(
            got == data,
            "{} of {} bytes, or out of order",
            got.len(),
            data.len()
        );
        drop(node);
        drop(writer.await.expect("join"));
        assert!(matches!(
            tunnel.await.expect("join"),
            End::Closed | End::Failed(..)
        ));
    }
}
