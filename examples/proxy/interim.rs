//! Interim (`1xx`) responses from the upstream, relayed to HTTP/1.1 clients ahead of the
//! final response; never stored (they never reach the cache layer).
//!
//! hyper 1.x's server cannot send them: a service answers a request with exactly one
//! response, and its HTTP/1 encoder replaces a `1xx` response with a `500`
//! (hyper 1.12.0, `src/proto/h1/role.rs`, `Server::encode`: "hyper currently doesn't support
//! returning 1xx status codes as a Response", logged as "response with 1xx status code not
//! supported"); only its automatic `100 Continue` is ever written. The client side can read
//! them (`hyper::ext::on_informational`). So the proxy writes them itself, beneath hyper:
//! each connection's socket is wrapped in [`InterimIo`], and each request carries an
//! [`Interim`] handle (a request extension) that the forwarding service gives the upstream
//! client's `on_informational` callback. The encoded `1xx` heads queue in the handle and are
//! written to the socket before any byte hyper writes next.
//!
//! Why the order is right: on an HTTP/1.1 connection hyper writes nothing for a request
//! until its service has answered, and the service answers only after the upstream's final
//! response head, which follows every `1xx` the upstream sent; hyper serves one request at
//! a time per connection and flushes each response before reading the next request's head
//! (its pipelined-flush mode is off), so a queued head can only precede this request's final
//! response. Heads are also written as soon as the connection is next polled for reading,
//! which hyper does while it waits (and [`Interim::send`] wakes it), so `103 Early Hints`
//! arrive early. HTTP/1.0 clients get none (RFC 9110 §15.2), nor do HTTP/2 clients (hyper's
//! HTTP/2 server has no way to send them). `100` and `101` are never relayed: hyper answers
//! `Expect: 100-continue` itself, and upgrades are tunnelled.

use futures_util::task::AtomicWaker;
use http::{HeaderMap, StatusCode};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the handles and the socket share: encoded heads not yet written (with a flag, so the
/// socket's every read and write costs one atomic load, not a lock, while none is queued), the
/// connection task's waker (to make it write them), and how many of the connection's requests
/// have been answered: a handle whose request is answered sends nothing more (a background
/// refresh that kept the request's extensions must not put its `1xx` before another response).
#[derive(Default)]
struct Queue {
    queued: AtomicBool,
    bytes: Mutex<Vec<u8>>,
    waker: AtomicWaker,
    answered: AtomicU64,
}

/// A request extension: sends interim responses to the request's client connection while
/// the request is unanswered.
#[derive(Clone)]
pub(crate) struct Interim {
    queue: Arc<Queue>,
    /// This request's number on its connection, from 1.
    request: u64,
}

impl Interim {
    /// Queues an interim response for the client. `100`, `101` and non-`1xx` statuses are
    /// ignored, and so is everything once the request is answered. (A header value with a
    /// line break cannot exist in a `HeaderMap`, so no head can smuggle in another.)
    pub(crate) fn send(&self, status: StatusCode, headers: &HeaderMap) {
        if !status.is_informational()
            || status == StatusCode::CONTINUE
            || status == StatusCode::SWITCHING_PROTOCOLS
        {
            return;
        }
        let head = encode(status, headers);
        // A poisoned lock means a panic elsewhere mid-push: drop the hint, not the request.
        let Ok(mut bytes) = self.queue.bytes.lock() else {
            return;
        };
        // The request's own upstream call reports its interim responses before its final
        // one, so before the request is answered; only a later call (a background refresh
        // that kept the request's extensions) finds it answered.
        if self.queue.answered.load(Ordering::Acquire) >= self.request {
            return;
        }
        bytes.extend_from_slice(&head);
        self.queue.queued.store(true, Ordering::Release);
        drop(bytes);
        self.queue.waker.wake();
    }

    /// A guard that marks this request answered when dropped (with the service's future:
    /// answered, failed or cancelled).
    pub(crate) fn answered_on_drop(&self) -> AnsweredOnDrop {
        AnsweredOnDrop(self.clone())
    }
}

/// See [`Interim::answered_on_drop`].
pub(crate) struct AnsweredOnDrop(Interim);

impl Drop for AnsweredOnDrop {
    fn drop(&mut self) {
        self.0
            .queue
            .answered
            .fetch_max(self.0.request, Ordering::AcqRel);
    }
}

/// A connection's source of per-request [`Interim`] handles.
pub(crate) struct InterimSource {
    queue: Arc<Queue>,
    requests: AtomicU64,
}

impl InterimSource {
    /// The handle of the connection's next request.
    pub(crate) fn next_request(&self) -> Interim {
        let request = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        Interim {
            queue: Arc::clone(&self.queue),
            request,
        }
    }
}

/// The HTTP/1.1 head of an interim response. Hop-by-hop fields are left out, as for any
/// response the proxy forwards.
fn encode(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Informational")
    )
    .into_bytes();
    let mut headers = headers.clone();
    crate::sanitize::strip_hop_by_hop(&mut headers);
    for (name, value) in &headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A client connection's socket, writing queued interim heads before anything else.
pub(crate) struct InterimIo<T> {
    inner: T,
    queue: Arc<Queue>,
    /// Heads taken from the queue and partly written.
    pending: Vec<u8>,
    written: usize,
}

impl<T> InterimIo<T> {
    /// Wraps a socket; the source hands out its requests' handles.
    pub(crate) fn new(inner: T) -> (Self, InterimSource) {
        let queue = Arc::new(Queue::default());
        let io = Self {
            inner,
            queue: Arc::clone(&queue),
            pending: Vec::new(),
            written: 0,
        };
        let source = InterimSource {
            queue,
            requests: AtomicU64::new(0),
        };
        (io, source)
    }
}

impl<T: AsyncWrite + Unpin> InterimIo<T> {
    /// Writes every queued head; `Ready(Ok)` once none is left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.written == self.pending.len() {
                self.pending.clear();
                self.written = 0;
                // Remember whom to wake when a head is queued later (a no-op when the waker
                // is the same as last time), then look.
                self.queue.waker.register(cx.waker());
                if !self.queue.queued.swap(false, Ordering::AcqRel) {
                    return Poll::Ready(Ok(()));
                }
                let Ok(mut bytes) = self.queue.bytes.lock() else {
                    return Poll::Ready(Ok(()));
                };
                std::mem::swap(&mut self.pending, &mut bytes);
                if self.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for InterimIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper polls the read side while it waits for the service: the moment to send a
        // head early. Not being able to write yet is fine: the next write drains first.
        if let Poll::Ready(Err(error)) = this.poll_drain(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for InterimIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn queued_heads_go_out_before_the_next_write_and_only_1xx_beyond_100_and_101() {
        let (near, mut far) = tokio::io::duplex(1024);
        let (mut io, source) = InterimIo::new(near);
        let interim = source.next_request();
        let mut headers = HeaderMap::new();
        headers.insert("link", "</a.css>; rel=preload".parse().unwrap());
        headers.insert("connection", "close".parse().unwrap());
        interim.send(StatusCode::EARLY_HINTS, &headers);
        interim.send(StatusCode::CONTINUE, &headers);
        interim.send(StatusCode::SWITCHING_PROTOCOLS, &headers);
        interim.send(StatusCode::OK, &headers);
        interim.send(StatusCode::PROCESSING, &HeaderMap::new());
        drop(interim.answered_on_drop());
        // Answered: a late head (a background refresh's) is not sent.
        interim.send(StatusCode::EARLY_HINTS, &HeaderMap::new());
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        io.flush().await.unwrap();
        drop(io);
        let mut seen = String::new();
        far.read_to_string(&mut seen).await.unwrap();
        assert_eq!(
            seen,
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n\
             HTTP/1.1 102 Processing\r\n\r\n\
             HTTP/1.1 200 OK\r\n\r\n"
        );
    }
}
