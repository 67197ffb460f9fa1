//! The demo HTTP server behind `herd demo`: herd's one-command showcase.
//!
//! This crate owns the *worker side* of the demo — the small web application that every worker
//! process runs, so a person can watch herd spread requests over processes, replace a worker that
//! dies, and turn CPU-bound work that queues up on one process into work that runs in parallel on
//! several. It knows nothing about supervision: the herd binary creates a [`Demo`] in each worker
//! process and hands it connections, either from a listener ([`serve`], [`serve_unix`]) or one by
//! one ([`serve_connection`], [`serve_connection_until`]) when the supervisor accepts them itself
//! and passes them on round-robin.
//!
//! # Routes
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | `worker <id> (pid <pid>) has answered <n> requests` |
//! | `GET /stop` | `worker <id> (pid <pid>) is stopping`, then the stop hook runs (by default the process exits with code 1) |
//! | `GET /check[?ms=N]` | spins this worker's CPU for 3 s (or `N` ms, at most 60 000), then says how long it spun |
//! | `GET /flip[?format=none]` | flips the demo image vertically and answers it as `image/png` |
//! | `GET /health` | `ok` |
//! | anything else | 404 with the list of routes |
//!
//! Every answer carries `X-Response-Time: <ms>ms` (whole milliseconds since the request reached
//! the handler), `X-Worker-Id` and `X-Worker-Pid`, and `Cache-Control: no-store` so that a
//! browser's refresh really asks again. `HEAD` is accepted wherever `GET` is, and `/flip` also
//! takes `POST` (the tutorial this demo retells flipped an image on `POST /flip`).
//!
//! The counter shown by `/` is per process and counts the requests this process has answered on
//! the demo's own routes (`/`, `/stop`, `/check`, `/flip`), the current one included. `/health`
//! probes and unknown paths (a browser's `/favicon.ico`) are not counted, so refreshing `/` in a
//! browser moves it by one.
//!
//! # Blocking on purpose: run it on a current-thread runtime
//!
//! `/check` and `/flip` do their CPU work *on the thread that serves the request*, inside the
//! request's future, without `spawn_blocking`. That is the point of the demo: like a Node handler
//! that blocks its event loop, a busy worker answers nothing else until it is done, so ten
//! concurrent `/flip`s against one worker take ten times as long as one, and a cluster of N
//! workers takes about a N-th of that. For this to hold, **the caller must run the worker on a
//! tokio `current_thread` runtime** (`tokio::runtime::Builder::new_current_thread()`); on a
//! multi-thread runtime a single process would spread the work over its threads and the
//! comparison with a cluster would be meaningless.
//!
//! # `/flip`
//!
//! The image is made in memory when the [`Demo`] is created: a deterministic 1024×1024 RGB
//! pattern (colour gradients, rings and a light texture, with an arrow near the top that points
//! up, so a flipped copy shows it pointing down). Nothing is read from disk or downloaded. Each
//! request flips it with `image::imageops::flip_vertical` and encodes the result as PNG at zlib
//! level [`FLIP_PNG_LEVEL`] with adaptive filtering; that encode is most of the cost (see the crate's
//! `flip_cost` example). `?format=none` flips without encoding and answers a line of text with
//! the size of the flipped image in bytes, for measuring the flip alone.
//!
//! # `/stop`
//!
//! `/stop` answers with `Connection: close`. Once the answer has been written and the connection
//! closed, the [`Demo`]'s stop hook runs. The default hook ([`Demo::new`]) prints a line to
//! stderr and exits the process with code 1, so a supervisor sees a crash and starts a new worker;
//! tests and embedders pass their own hook with [`Demo::with_stop_hook`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, RgbImage};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Width and height of the demo image, in pixels.
pub const IMAGE_SIZE: u32 = 1024;

/// How long `/check` spins when no `?ms=` is given.
pub const CHECK_DEFAULT_MS: u64 = 3_000;

/// The largest `?ms=` that `/check` accepts; larger values are clamped to it.
pub const CHECK_MAX_MS: u64 = 60_000;

/// The zlib level (1–9) at which `/flip` encodes its PNG. Chosen so that one `/flip` costs about
/// 120–180 ms of CPU in a release build on a 2-core machine (level 1 is ~25 ms, level 6
/// ~250 ms); a debug build is roughly 8× slower.
pub const FLIP_PNG_LEVEL: u8 = 5;

const ROUTES: &str = "\
routes:
  GET /              which worker answered, and how many requests it has answered
  GET /stop          answer, then exit with code 1 (the supervisor starts a new worker)
  GET /check?ms=N    block this worker's CPU for N ms (default 3000, at most 60000)
  GET /flip          flip an image vertically on the CPU and answer it as image/png
  GET /flip?format=none  flip only, answer the byte count
  GET /health        ok
";

type StopHook = Box<dyn Fn() + Send + Sync + 'static>;

/// One worker's demo application: its identity, its request counter and the prepared image.
///
/// Create one per worker process and share it (it is behind an [`Arc`]) among all the
/// connections that process serves.
pub struct Demo {
    worker_id: String,
    pid: u32,
    requests: AtomicU64,
    image: RgbImage,
    on_stop: StopHook,
    id_header: HeaderValue,
    pid_header: HeaderValue,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("worker_id", &self.worker_id)
            .field("pid", &self.pid)
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

impl Demo {
    /// A demo whose `/stop` exits the process with code 1 once the answer has been written.
    ///
    /// `worker_id` is what the supervisor calls this worker (shown in answers and in
    /// `X-Worker-Id`); `None` shows as `-`.
    pub fn new(worker_id: Option<String>) -> Arc<Demo> {
        Demo::with_stop_hook(worker_id, || {
            eprintln!(
                "herd-demo: pid {} stopping on /stop (exit code 1)",
                std::process::id()
            );
            std::process::exit(1);
        })
    }

    /// A demo whose `/stop` calls `on_stop` instead of exiting, once the `/stop` answer has been
    /// written and its connection closed. The server keeps serving after the hook returns.
    pub fn with_stop_hook(
        worker_id: Option<String>,
        on_stop: impl Fn() + Send + Sync + 'static,
    ) -> Arc<Demo> {
        let worker_id = worker_id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| "-".to_owned());
        let pid = std::process::id();
        let id_header = HeaderValue::from_str(&worker_id)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        Arc::new(Demo {
            pid,
            requests: AtomicU64::new(0),
            image: make_image(IMAGE_SIZE, IMAGE_SIZE),
            on_stop: Box::new(on_stop),
            id_header,
            pid_header: HeaderValue::from(pid),
            worker_id,
        })
    }

    /// The worker id shown in answers (`-` when none was given).
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The id of the process serving the demo.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How many requests this process has answered on the demo's routes so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Width and height of the image `/flip` flips.
    pub fn image_dimensions(&self) -> (u32, u32) {
        self.image.dimensions()
    }

    /// One pixel of the (unflipped) image `/flip` flips, as RGB. Panics outside the image.
    pub fn source_pixel(&self, x: u32, y: u32) -> [u8; 3] {
        self.image.get_pixel(x, y).0
    }

    /// Flip the image vertically and encode it as PNG: the work of one `/flip`, on the calling
    /// thread.
    pub fn flip_png(&self) -> Vec<u8> {
        let flipped = image::imageops::flip_vertical(&self.image);
        let (w, h) = flipped.dimensions();
        let mut png = Vec::with_capacity(flipped.as_raw().len() / 2);
        PngEncoder::new_with_quality(
            &mut png,
            CompressionType::Level(FLIP_PNG_LEVEL),
            FilterType::Adaptive,
        )
        .write_image(flipped.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .expect("encoding a PNG into memory cannot fail");
        png
    }

    /// Flip the image vertically without encoding it: the work of one `/flip?format=none`.
    /// Returns the size of the flipped image in bytes.
    pub fn flip_only(&self) -> usize {
        let flipped = image::imageops::flip_vertical(&self.image);
        std::hint::black_box(&flipped);
        flipped.as_raw().len()
    }

    fn who(&self) -> String {
        format!("worker {} (pid {})", self.worker_id, self.pid)
    }

    fn count(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The deterministic demo picture: gradients, rings, a light texture and an upward arrow.
fn make_image(width: u32, height: u32) -> RgbImage {
    let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
    RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let dist = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
        let ring = if (dist as u32 / 24) & 1 == 0 { 24 } else { 0 };
        // A cheap hash for a light, deterministic texture, so the PNG encoder has real work.
        let mut h = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77);
        h ^= h >> 15;
        h = h.wrapping_mul(0x2C1B_3C6D);
        h ^= h >> 13;
        let noise = (h & 0x0F) as i32 - 8;
        let shade = |v: f32| ((v * 200.0) as i32 + ring + noise).clamp(0, 255) as u8;
        let mut px = [shade(fx), shade(fy), shade(1.0 - (fx + fy) / 2.0)];
        if in_arrow(x, y, width, height) {
            px = [250, 250, 250];
        }
        image::Rgb(px)
    })
}

/// An arrow pointing up, in the top part of the picture.
fn in_arrow(x: u32, y: u32, width: u32, height: u32) -> bool {
    let (x, y) = (x as i64, y as i64);
    let (w, h) = (width as i64, height as i64);
    let mid = w / 2;
    let (tip, head_end, shaft_end) = (h / 16, h / 4, h * 7 / 16);
    // The head: a triangle from the tip down to `head_end`, widening by one pixel per row.
    if (tip..head_end).contains(&y) && (x - mid).abs() <= y - tip {
        return true;
    }
    // The shaft.
    (head_end..shaft_end).contains(&y) && (x - mid).abs() <= w / 32
}

/// Serve every connection accepted from `listener` until `shutdown` resolves; then stop
/// accepting, tell every open connection to close once its in-flight request is answered
/// (idle keep-alive connections close at once), and return when they all have.
///
/// Each connection is a task spawned on the current runtime (see the crate docs: use a
/// `current_thread` runtime). Transient accept errors (an aborted connection, running out of
/// file descriptors) are waited out; another error stops accepting, drains the open connections
/// and is returned. To bound the drain, wrap the call in `tokio::time::timeout`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    demo: Arc<Demo>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_accepting(listener, demo, shutdown).await
}

/// [`serve`] for a unix-domain stream socket.
#[cfg(unix)]
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    demo: Arc<Demo>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_accepting(listener, demo, shutdown).await
}

/// A listener [`serve_accepting`] can take connections from.
trait Accept {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Io>>;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<Self::Io> {
        let (stream, _) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

#[cfg(unix)]
impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<Self::Io> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

async fn serve_accepting<L: Accept>(
    listener: L,
    demo: Arc<Demo>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            accepted = listener.accept_one() => match accepted {
                Ok(io) => {
                    let demo = demo.clone();
                    let mut stop_rx = stop_rx.clone();
                    connections.spawn(async move {
                        let stopped = async move {
                            let _ = stop_rx.wait_for(|stop| *stop).await;
                        };
                        serve_connection_until(io, demo, stopped).await;
                    });
                }
                Err(e) if is_transient(&e) => {
                    if is_resource_exhaustion(&e) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Err(e) => break Err(e),
            },
            // Reap finished connections as we go so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    // Stop accepting: close our copy of the listening socket, so that connections still
    // arriving go to other workers sharing it (or are refused), not into our backlog.
    drop(listener);
    // Then let in-flight requests finish; idle keep-alive connections close at once.
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    result
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    ) || is_resource_exhaustion(e)
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM on Linux and the BSDs.
    matches!(e.raw_os_error(), Some(23 | 24 | 55 | 105 | 12))
        || e.kind() == io::ErrorKind::OutOfMemory
}

/// Serve one already-accepted connection (HTTP/1.1 with keep-alive) until the peer closes it.
pub async fn serve_connection<IO>(io: IO, demo: Arc<Demo>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_until(io, demo, std::future::pending()).await
}

/// Serve one already-accepted connection until the peer closes it or, once `shutdown` has
/// resolved, until its in-flight request (if any) has been answered.
pub async fn serve_connection_until<IO>(io: IO, demo: Arc<Demo>, shutdown: impl Future<Output = ()>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stop_requested = Arc::new(AtomicBool::new(false));
    let service = {
        let demo = demo.clone();
        let stop_requested = stop_requested.clone();
        hyper::service::service_fn(move |req| {
            let demo = demo.clone();
            let stop_requested = stop_requested.clone();
            async move { Ok::<_, Infallible>(handle(&demo, &req, &stop_requested)) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service);
    let mut conn = pin!(conn);
    let mut shutdown = pin!(shutdown);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = &mut shutdown => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
    // The connection is closed: a /stop answer on it has been written (or could not be).
    if stop_requested.load(Ordering::SeqCst) {
        (demo.on_stop)();
    }
}

/// Answer one request. CPU work happens right here, on the serving thread.
fn handle(
    demo: &Demo,
    req: &Request<Incoming>,
    stop_requested: &AtomicBool,
) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let method = req.method();
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let readable = method == Method::GET || method == Method::HEAD;

    let mut response = match path {
        "/" | "/stop" | "/check" | "/health" if !readable => method_not_allowed("GET, HEAD"),
        "/flip" if !(readable || method == Method::POST) => method_not_allowed("GET, HEAD, POST"),
        "/health" => text(StatusCode::OK, "ok\n".to_owned()),
        "/" => {
            let n = demo.count();
            text(
                StatusCode::OK,
                format!("{} has answered {n} requests\n", demo.who()),
            )
        }
        "/stop" => {
            demo.count();
            stop_requested.store(true, Ordering::SeqCst);
            let mut r = text(StatusCode::OK, format!("{} is stopping\n", demo.who()));
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        "/check" => match check_ms(query) {
            Ok(ms) => {
                demo.count();
                let spun = spin(Duration::from_millis(ms));
                text(
                    StatusCode::OK,
                    format!("{} spun its CPU for {} ms\n", demo.who(), spun.as_millis()),
                )
            }
            Err(msg) => text(StatusCode::BAD_REQUEST, msg),
        },
        "/flip" => match query_param(query, "format") {
            None | Some("png") => {
                demo.count();
                let png = demo.flip_png();
                let mut r = Response::new(Full::new(Bytes::from(png)));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
                r
            }
            Some("none") => {
                demo.count();
                let bytes = demo.flip_only();
                let (w, h) = demo.image_dimensions();
                text(
                    StatusCode::OK,
                    format!("{} flipped a {w}x{h} image: {bytes} bytes\n", demo.who()),
                )
            }
            Some(other) => text(
                StatusCode::BAD_REQUEST,
                format!("unknown format {other:?}: use format=png (the default) or format=none\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            format!("not found: {path}\n{ROUTES}"),
        ),
    };

    let headers = response.headers_mut();
    headers.insert("x-worker-id", demo.id_header.clone());
    headers.insert("x-worker-pid", demo.pid_header.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let ms = start.elapsed().as_millis() as u64;
    headers.insert(
        "x-response-time",
        HeaderValue::from_str(&format!("{ms}ms")).expect("digits are a valid header value"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed: use {allow}\n"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// The first value of `name` in a query string (no percent-decoding: the demo's values are plain).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// `/check`'s duration: `?ms=N`, clamped to [`CHECK_MAX_MS`], or [`CHECK_DEFAULT_MS`].
fn check_ms(query: &str) -> Result<u64, String> {
    match query_param(query, "ms") {
        None => Ok(CHECK_DEFAULT_MS),
        Some(v) => v
            .parse::<u64>()
            .map(|ms| ms.min(CHECK_MAX_MS))
            .map_err(|_| format!("bad ms={v:?}: want a whole number of milliseconds\n")),
    }
}

/// Keep this thread busy for `d`, the way a synchronous loop blocks Node's event loop.
fn spin(d: Duration) -> Duration {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        for _ in 0..1_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    std::hint::black_box(x);
    start.elapsed()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(query_param("ms=200", "ms"), Some("200"));
        assert_eq!(query_param("a=1&ms=5&ms=6", "ms"), Some("5"));
        assert_eq!(query_param("format", "format"), Some(""));
        assert_eq!(query_param("", "ms"), None);
        assert_eq!(check_ms(""), Ok(CHECK_DEFAULT_MS));
        assert_eq!(check_ms("ms=999999"), Ok(CHECK_MAX_MS));
        assert!(check_ms("ms=-1").is_err());
    }

    #[test]
    fn image_is_deterministic_and_has_an_upward_arrow() {
        let a = make_image(64, 64);
        assert_eq!(a, make_image(64, 64));
        // The arrow's tip is near the top, its shaft reaches below the middle of the top half.
        assert_eq!(a.get_pixel(32, 8).0, [250, 250, 250]);
        assert_ne!(a.get_pixel(32, 60).0, [250, 250, 250]);
    }
}
