//! A client stream with the bytes the front already read put back in front
//! of it, so Pingora's `HttpProxy` parses a request the front has looked at
//! as if nothing had read it.
//!
//! Pingora's own `rewind` exists only on its plain TCP stream; this wraps
//! any [`Stream`] (plain TCP now, its rustls stream later) and passes every
//! other trait of the transport through, so `HttpProxy` still sees the
//! client's address, TLS digest and timings.

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub struct Replayed {
    /// Read before `inner`; freed once it has been read.
    front: Vec<u8>,
    at: usize,
    inner: Stream,
}

impl Replayed {
    pub fn new(front: Vec<u8>, inner: Stream) -> Replayed {
        Replayed {
            front,
            at: 0,
            inner,
        }
    }

    /// The stream to read the next request from: the plain inner stream if
    /// every replayed byte has been read, else this one still.
    pub fn into_stream(self: Box<Self>) -> Stream {
        if self.at >= self.front.len() {
            self.inner
        } else {
            self
        }
    }

    /// Unwraps a stream that may be a `Replayed` (as `HttpProxy` hands a
    /// kept-alive connection back). `None` only if the checked downcast
    /// failed after all, which leaves no stream to return.
    pub fn unwrap(stream: Stream) -> Option<Stream> {
        if !stream.as_any().is::<Replayed>() {
            return Some(stream);
        }
        stream
            .into_any()
            .downcast::<Replayed>()
            .ok()
            .map(Replayed::into_stream)
    }
}

impl AsyncRead for Replayed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if me.at < me.front.len() {
            let n = (me.front.len() - me.at).min(buf.remaining());
            buf.put_slice(&me.front[me.at..me.at + n]);
            me.at += n;
            if me.at == me.front.len() {
                me.front = Vec::new();
                me.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Replayed {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Replayed {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Replayed {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Replayed {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Replayed {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Replayed {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// Peeking is not offered (Pingora only peeks for an h2c preface, which
/// this listener does not accept).
impl Peek for Replayed {}
