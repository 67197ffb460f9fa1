//! Accepting and serving the HTTP listener's connections, bounded in
//! number, size and time, so that no client (or crowd of them) can grow the
//! daemon or keep a health probe waiting.
//!
//! - **Connections**: at most [`MAX_CONNECTIONS`] open. The accept loop never
//!   waits for room while a connection that is not being answered exists:
//!   when a new connection needs the room, the *oldest* connection that has
//!   not delivered a whole request yet (idle, or sending slowly) is closed
//!   for it. So a flood of idle connections costs a probe nothing; only
//!   [`MAX_CONNECTIONS`] requests being answered at once make a new
//!   connection wait, and only until the first of them ends.
//! - **Time**: the request head must arrive within [`HEAD_TIMEOUT`] of the
//!   connection's start (hyper's header-read timeout), its body within
//!   [`BODY_TIMEOUT`]; a response write that makes no progress for
//!   [`WRITE_STALL`] ends the connection.
//! - **Size**: a head of at most [`MAX_HEAD`] bytes (else 431), a body of at
//!   most [`MAX_BODY`] (else 413; no route reads one). One request per
//!   connection (`Connection: close`), as Prometheus and probes expect to
//!   be served anyway.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::time::{Instant, Sleep};

use super::{HttpRequest, HttpResponse, Settings};
use crate::handlers::Ctx;

/// Connections open at once (an idle one costs the daemon about 1 KiB, one
/// being read or answered about 20 KiB).
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head taken (431 beyond).
pub const MAX_HEAD: usize = 16 * 1024;
/// How long a request may take to send its body, once its head is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request body taken (413 beyond).
pub const MAX_BODY: usize = 16 * 1024;
/// How long a response write may wait for a client that does not read.
const WRITE_STALL: Duration = Duration::from_secs(10);
/// After answering: how long, and how much, the client's unread bytes are
/// read and dropped, so that closing does not reset the connection before
/// the client has read the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 4 * MAX_HEAD;

/// Accept and serve connections until the daemon ends.
pub(super) async fn serve(ctx: Arc<Ctx>, listener: TcpListener, settings: Arc<Settings>) {
    let slots = Slots::new(MAX_CONNECTIONS);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                crate::say!("metrics listener: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (slot, evicted) = slots.admit().await;
        tokio::spawn(connection(
            ctx.clone(),
            settings.clone(),
            stream,
            slot,
            evicted,
        ));
    }
}

/// hyper's settings for a connection with `head_time` left to send its head.
fn builder(head_time: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_time)
        .max_header_size(MAX_HEAD)
        .max_buf_size(2 * MAX_HEAD)
        // A client that closes its side once its request is sent (`nc -N`,
        // some probes) still gets its answer: without this hyper drops the
        // connection as soon as it reads that EOF, answer or not.
        .half_close(true)
        .keep_alive(false);
    builder
}

/// Serve one connection: one request, unless it is closed for a newer one.
async fn connection(
    ctx: Arc<Ctx>,
    settings: Arc<Settings>,
    mut stream: TcpStream,
    slot: Arc<Slot>,
    mut evicted: oneshot::Receiver<()>,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    // Until it sends something, a connection costs only its socket and this
    // task: hyper's buffers (16 KiB) come with the first byte.
    // (`peek`, not `readable`: tokio deems a new socket readable at first.)
    let head_deadline = Instant::now() + HEAD_TIMEOUT;
    let mut first = [0u8; 1];
    tokio::select! {
        sent = tokio::time::timeout_at(head_deadline, stream.peek(&mut first)) => {
            if !matches!(sent, Ok(Ok(1))) {
                return;
            }
        }
        _ = &mut evicted => return,
    }
    {
        let answering = slot.clone();
        let service = service_fn(move |request| {
            answer(
                ctx.clone(),
                settings.clone(),
                answering.clone(),
                local,
                request,
            )
        });
        let io = TokioIo::new(StallLimit::new(&mut stream, WRITE_STALL));
        let head_time = head_deadline.saturating_duration_since(Instant::now());
        let served = builder(head_time).serve_connection(io, service);
        tokio::select! {
            _ = served => {}
            _ = &mut evicted => return,
        }
    }
    slot.set_answering(false);
    tokio::select! {
        _ = linger(&mut stream) => {}
        _ = &mut evicted => {}
    }
}

/// hyper's service: the body read (and dropped), then the route's answer.
async fn answer(
    ctx: Arc<Ctx>,
    settings: Arc<Settings>,
    slot: Arc<Slot>,
    local: std::net::SocketAddr,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (head, body) = request.into_parts();
    let response = match tokio::time::timeout(BODY_TIMEOUT, drain(body)).await {
        Err(_) => HttpResponse::error(
            408,
            &format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        ),
        Ok(Err(BodyError::TooLarge)) => HttpResponse::error(
            413,
            &format!("the request body is over {} KiB", MAX_BODY / 1024),
        ),
        Ok(Err(BodyError::Broken)) => {
            HttpResponse::error(400, "the request body could not be read")
        }
        Ok(Ok(())) => {
            // The whole request is in: from now on this connection is
            // being answered, and is not closed for a newer one.
            slot.set_answering(true);
            super::route(&ctx, &HttpRequest::new(&head, local), &settings).await
        }
    };
    Ok(response.into_hyper())
}

enum BodyError {
    TooLarge,
    Broken,
}

/// Read a request's body to its end, keeping nothing.
async fn drain(mut body: Incoming) -> Result<(), BodyError> {
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(BodyError::TooLarge);
    }
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        if let Some(data) = frame.data_ref() {
            total += data.len();
            if total > MAX_BODY {
                return Err(BodyError::TooLarge);
            }
        }
    }
    Ok(())
}

/// After the answer: end our side, then read and drop what the client
/// still sends (a little, briefly) until it closes its side.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// The open connections, oldest first, and which are being answered.
struct Slots {
    max: usize,
    table: Mutex<Table>,
    /// Told when a connection ends (the accept loop may wait for one).
    freed: Notify,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// By id: ids grow, so the first entries are the oldest connections.
    open: BTreeMap<u64, Entry>,
}

struct Entry {
    /// Its whole request is in and it is being answered.
    answering: bool,
    /// Closes the connection to make room for a newer one.
    close: oneshot::Sender<()>,
}

/// A connection's place in [`Slots`], given up when dropped.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
}

impl Slots {
    fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            table: Mutex::new(Table::default()),
            freed: Notify::new(),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room for a new connection: at once while fewer than `max` are open;
    /// else by closing the oldest one not being answered; else (all are
    /// being answered) as soon as one ends. The receiver fires when the
    /// connection is closed to make room for a newer one.
    async fn admit(self: &Arc<Slots>) -> (Arc<Slot>, oneshot::Receiver<()>) {
        loop {
            if let Some(admitted) = self.try_admit() {
                return admitted;
            }
            self.freed.notified().await;
        }
    }

    fn try_admit(self: &Arc<Slots>) -> Option<(Arc<Slot>, oneshot::Receiver<()>)> {
        let mut table = self.table();
        if table.open.len() >= self.max {
            let oldest_waiting = table
                .open
                .iter()
                .find(|(_, e)| !e.answering)
                .map(|(id, _)| *id);
            if let Some(entry) = oldest_waiting.and_then(|id| table.open.remove(&id)) {
                let _ = entry.close.send(());
            }
        }
        if table.open.len() >= self.max {
            return None;
        }
        let id = table.next_id;
        table.next_id += 1;
        let (close, closed) = oneshot::channel();
        table.open.insert(
            id,
            Entry {
                answering: false,
                close,
            },
        );
        let slot = Slot {
            slots: self.clone(),
            id,
        };
        Some((Arc::new(slot), closed))
    }
}

impl Slot {
    fn set_answering(&self, answering: bool) {
        if let Some(e) = self.slots.table().open.get_mut(&self.id) {
            e.answering = answering;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.table().open.remove(&self.id);
        self.slots.freed.notify_one();
    }
}

/// A stream whose writes fail with `TimedOut` once the peer has taken no
/// data for `limit` (a client that does not read its answer).
struct StallLimit<S> {
    io: S,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> StallLimit<S> {
    fn new(io: S, limit: Duration) -> StallLimit<S> {
        StallLimit {
            io,
            limit,
            stalled: None,
        }
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallLimit<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallLimit<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(slots: &Arc<Slots>) -> (Arc<Slot>, oneshot::Receiver<()>) {
        slots.try_admit().expect("room")
    }

    #[tokio::test]
    async fn a_new_connection_closes_the_oldest_one_not_being_answered() {
        let slots = Slots::new(3);
        let (a, mut a_closed) = admitted(&slots);
        let (b, mut b_closed) = admitted(&slots);
        let (c, mut c_closed) = admitted(&slots);
        a.set_answering(true);
        // Full: the oldest that is not answered (b) makes room.
        let (_d, _) = admitted(&slots);
        assert!(a_closed.try_recv().is_err());
        assert!(b_closed.try_recv().is_ok());
        assert!(c_closed.try_recv().is_err());
        drop(b); // its task ends
        assert_eq!(slots.table().open.len(), 3);
        // Next: c.
        let (_e, _) = admitted(&slots);
        assert!(c_closed.try_recv().is_ok());
        drop((a, c));
    }

    #[tokio::test]
    async fn when_all_are_answered_a_new_one_waits_for_the_first_to_end() {
        let slots = Slots::new(2);
        let (a, _) = admitted(&slots);
        let (b, _) = admitted(&slots);
        a.set_answering(true);
        b.set_answering(true);
        assert!(slots.try_admit().is_none());
        let mut waiting = Box::pin(slots.admit());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        drop(a);
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
        drop(b);
    }
}
