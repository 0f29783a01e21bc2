//! The request body's deadline: a body must arrive whole within
//! `request_body_timeout_ms` of its head, else the request gets 408 and
//! its connection closes. hyper bounds the head (`header_read_timeout`)
//! but not the body, and a chunked body that never ends would otherwise
//! hold its handler, its connection and whatever it buffered for ever.
//!
//! This is the outermost layer, so its 408 wins over what a handler or
//! `edge::rules` made of the failed read.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

use crate::metrics::Metrics;

/// The `phase` label of `roompin_node_http_timeouts_total`.
pub const PHASE_HEAD: &str = "head";
pub const PHASE_BODY: &str = "body";
pub const PHASE_KEEP_ALIVE: &str = "keep_alive";
pub const PHASES: [&str; 3] = [PHASE_HEAD, PHASE_BODY, PHASE_KEEP_ALIVE];

#[derive(Clone)]
pub struct BodyDeadline {
    pub timeout: Duration,
    pub metrics: Metrics,
}

/// The error a body read gets once the deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("request body not received whole within {0:?}")]
pub struct TooSlow(Duration);

pub async fn body(State(deadline): State<Arc<BodyDeadline>>, req: Request, next: Next) -> Response {
    let fired = Arc::new(AtomicBool::new(false));
    let timeout = deadline.timeout;
    let flag = fired.clone();
    let req = req.map(move |inner| {
        Body::new(Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            fired: flag,
        })
    });
    let response = next.run(req).await;
    if !fired.load(Ordering::Acquire) {
        return response;
    }
    deadline
        .metrics
        .http_timeouts
        .with_label_values(&[PHASE_BODY])
        .inc();
    let mut resp = (
        StatusCode::REQUEST_TIMEOUT,
        format!("request body not received whole within {timeout:?}\n"),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

struct Deadline {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
    fired: Arc<AtomicBool>,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.fired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(axum::Error::new(TooSlow(self.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
