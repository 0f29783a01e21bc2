//! The balancer's request-head handling (balancer/src/head.rs and
//! read_head.rs): finding a head's end as it trickles in, the checks every
//! head passes, the head sent on to a node, and a node's answer.
//!
//! The first bytes of the input steer the run: the cap on the head's size
//! and how the rest is cut into reads. Beyond "never panics", it checks
//! what the front relies on:
//! - `head_end` scanned read by read (as `read_head` calls it) finds the
//!   same end as one scan of the whole buffer;
//! - `read_head` returns exactly that head, or `TooLarge` when it passes
//!   the cap, or `Closed` when the input ends first;
//! - a head `inspect` accepts as a WebSocket upgrade can be rewritten for
//!   the node, and the rewrite is itself a head that passes `inspect`
//!   (431 aside: the added headers can take it past `MAX_HEADERS`), with
//!   the balancer's own headers once each and a client's never.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roompin_balancer::head::{head_end, inspect, parse_response, upstream_head, Kind};
use roompin_balancer::read_head::{read_head, Deadline, NoHead};
use roompin_shared::control::{BALANCER_HEADER, EPOCH_HEADER, SKIPPED_HEADER};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out its bytes in the given read sizes, then end of stream.
struct Chunks {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = self.sizes.get(self.next).copied().unwrap_or(usize::MAX);
        self.next += 1;
        let n = size
            .max(1)
            .min(buf.remaining())
            .min(self.data.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // The cap: 16 bytes to 64 KiB.
    let max = 16 + (usize::from(u16::from_le_bytes([data[0], data[1]])) % (64 << 10));
    // Read sizes: 1 to 16 bytes each, or everything at once.
    let step = usize::from(data[2] % 17);
    let input = &data[3..];

    // One scan of the whole against read-by-read scans.
    let whole = head_end(input, 0);
    let sizes: Vec<usize> = if step == 0 {
        vec![input.len().max(1)]
    } else {
        input.chunks(step).map(<[u8]>::len).collect()
    };
    let mut seen = 0;
    let mut incremental = None;
    for size in &sizes {
        let before = seen;
        // An empty input still gets one (empty) read, as a socket at EOF.
        seen = (seen + size).min(input.len());
        if let Some(end) = head_end(&input[..seen], before) {
            incremental = Some(end);
            break;
        }
    }
    assert_eq!(incremental, whole, "read by read vs at once");
    if let Some(end) = whole {
        assert!(end <= input.len());
        assert!(input[..end].ends_with(b"\n\n") || input[..end].ends_with(b"\n\r\n"));
    }

    // read_head over the same reads.
    let mut stream = Chunks {
        data: input.to_vec(),
        at: 0,
        sizes,
        next: 0,
    };
    let far = Deadline::Whole(tokio::time::Instant::now() + Duration::from_secs(3600));
    let read = runtime().block_on(read_head(&mut stream, max, far, std::future::pending()));
    match (&read, whole) {
        (Ok(h), Some(end)) => {
            assert_eq!(h.head_len, end);
            assert!(end <= max);
            assert_eq!(&h.buf[..], &input[..h.buf.len()]);
        }
        (Err(NoHead::TooLarge), _) => {
            assert!(whole.is_none_or(|end| end > max) || input.len() > max);
        }
        (Err(NoHead::Closed { .. }), None) => {}
        (other, _) => panic!("read_head: {other:?} for a head ending at {whole:?}"),
    }

    // The checks, and the head a node gets.
    let head = match whole {
        Some(end) => &input[..end],
        None => input,
    };
    let _ = parse_response(head);
    let Ok(inspected) = inspect(head) else {
        return;
    };
    if inspected.kind != Kind::WebSocket {
        return;
    }
    let target = match &inspected.query {
        Some(q) => format!("{}?{q}", inspected.path),
        None => inspected.path.clone(),
    };
    let added = [(BALANCER_HEADER, "fuzz"), (EPOCH_HEADER, "7")];
    let Ok(upstream) = upstream_head(head, &target, &added) else {
        panic!("an upgrade that passed inspect cannot be rewritten");
    };
    let again = match inspect(&upstream) {
        Ok(again) => again,
        // The two added headers can take a head of 99 or 100 fields past
        // MAX_HEADERS: the node then refuses it with 431, which is fine.
        Err((_, refusal)) if refusal.status == 431 => return,
        Err((_, refusal)) => panic!("the rewritten head is refused: {refusal:?}"),
    };
    assert_eq!(again.kind, Kind::WebSocket);
    assert_eq!(again.path, inspected.path);
    assert_eq!(again.query, inspected.query);
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    assert!(matches!(req.parse(&upstream), Ok(httparse::Status::Complete(_))));
    for (name, want) in [(BALANCER_HEADER, 1), (EPOCH_HEADER, 1), (SKIPPED_HEADER, 0)] {
        let n = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count();
        assert_eq!(n, want, "{name} in the head sent to the node");
    }
});
