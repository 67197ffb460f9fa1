//! The demo's routes over real sockets on 127.0.0.1, with a tiny HTTP/1.1 client.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_demo::Demo;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A response as the tiny client read it.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    /// `X-Response-Time: <ms>ms`, parsed.
    fn response_ms(&self) -> u64 {
        let v = self.header("x-response-time").expect("X-Response-Time");
        v.strip_suffix("ms")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("X-Response-Time {v:?} is not <n>ms"))
    }
}

/// One keep-alive connection.
struct Client<S> {
    io: BufReader<S>,
}

impl Client<TcpStream> {
    async fn connect(addr: SocketAddr) -> Self {
        Client::new(TcpStream::connect(addr).await.expect("connect"))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(io: S) -> Self {
        Client {
            io: BufReader::new(io),
        }
    }

    async fn send(&mut self, method: &str, path: &str) {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n");
        self.io.get_mut().write_all(req.as_bytes()).await.unwrap();
    }

    async fn read_response(&mut self, head_only: bool) -> Resp {
        let mut line = String::new();
        self.io.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("HTTP/1.1 "), "status line {line:?}");
        let status = line[9..12].parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.io.read_line(&mut line).await.unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').expect("header line");
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if !head_only {
            let len: usize = resp
                .header("content-length")
                .expect("content-length")
                .parse()
                .unwrap();
            resp.body = vec![0; len];
            self.io.read_exact(&mut resp.body).await.unwrap();
        }
        resp
    }

    async fn request(&mut self, method: &str, path: &str) -> Resp {
        self.send(method, path).await;
        self.read_response(method == "HEAD").await
    }

    async fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path).await
    }

    /// True when the server has closed the connection (EOF with nothing more to read).
    async fn closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.io.read(&mut buf)).await,
            Ok(Ok(0))
        )
    }
}

async fn get(addr: SocketAddr, path: &str) -> Resp {
    Client::connect(addr).await.get(path).await
}

/// Poll `cond` until it holds; panics naming `what` after 10 s.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A demo server on its own thread and `current_thread` runtime, as a worker process runs it.
struct Server {
    addr: SocketAddr,
    demo: Arc<Demo>,
    stops: mpsc::Receiver<()>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Returns what `serve` returned, and when.
    thread: Option<std::thread::JoinHandle<(std::io::Result<()>, Instant)>>,
}

impl Server {
    fn start() -> Server {
        Server::start_on(tokio::runtime::Builder::new_current_thread())
    }

    fn start_on(mut builder: tokio::runtime::Builder) -> Server {
        let (stop_tx, stops) = mpsc::channel();
        let demo = Demo::with_stop_hook(Some("w7".into()), move || {
            let _ = stop_tx.send(());
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let rt = builder.enable_all().build().unwrap();
        let served = demo.clone();
        let thread = std::thread::spawn(move || {
            let result = rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener)?;
                herd_demo::serve(listener, served, async {
                    let _ = shutdown_rx.await;
                })
                .await
            });
            (result, Instant::now())
        });
        Server {
            addr,
            demo,
            stops,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    fn begin_shutdown(&mut self) {
        let _ = self.shutdown.take().unwrap().send(());
    }

    /// Wait (off the async runtime) for `serve` to return; returns its result and when.
    async fn join(&mut self) -> (std::io::Result<()>, Instant) {
        let thread = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap()
    }

    /// Shut down and wait for `serve` to return.
    async fn stop(mut self) -> std::io::Result<()> {
        self.begin_shutdown();
        self.join().await.0
    }
}

fn assert_common_headers(r: &Resp) {
    assert_eq!(r.header("x-worker-id"), Some("w7"));
    assert_eq!(
        r.header("x-worker-pid"),
        Some(std::process::id().to_string().as_str())
    );
    r.response_ms();
}

#[tokio::test]
async fn root_counts_requests_per_process() {
    let server = Server::start();
    let pid = std::process::id();

    let first = get(server.addr, "/").await;
    assert_eq!(first.status, 200);
    assert_common_headers(&first);
    assert_eq!(first.header("cache-control"), Some("no-store"));
    assert_eq!(
        first.text(),
        format!("worker w7 (pid {pid}) has answered 1 requests\n")
    );

    // Keep-alive: several requests on one connection, each counted.
    let mut c = Client::connect(server.addr).await;
    for n in 2..=4 {
        let r = c.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.text(),
            format!("worker w7 (pid {pid}) has answered {n} requests\n")
        );
    }
    // Health probes and unknown paths do not move the counter; HEAD does.
    assert_eq!(c.get("/health").await.status, 200);
    assert_eq!(c.get("/favicon.ico").await.status, 404);
    let head = c.request("HEAD", "/").await;
    assert_eq!(head.status, 200);
    assert_common_headers(&head);
    assert!(c
        .get("/")
        .await
        .text()
        .ends_with("has answered 6 requests\n"));
    assert_eq!(server.demo.requests(), 6);

    server.stop().await.unwrap();
}

#[tokio::test]
async fn health_is_ok() {
    let server = Server::start();
    let r = get(server.addr, "/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok\n");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_common_headers(&r);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn check_spins_for_the_asked_time() {
    let server = Server::start();
    let start = Instant::now();
    let r = get(server.addr, "/check?ms=200").await;
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    assert_common_headers(&r);
    assert!(took >= Duration::from_millis(200), "took {took:?}");
    assert!(
        r.response_ms() >= 200,
        "X-Response-Time {}",
        r.response_ms()
    );
    let pid = std::process::id();
    let body = r.text();
    assert!(
        body.starts_with(&format!("worker w7 (pid {pid}) spun its CPU for "))
            && body.ends_with(" ms\n"),
        "{body:?}"
    );
    let spun: u64 = body
        .rsplit(" for ")
        .next()
        .unwrap()
        .trim_end_matches(" ms\n")
        .parse()
        .unwrap();
    assert!(spun >= 200, "{body:?}");

    let bad = get(server.addr, "/check?ms=soon").await;
    assert_eq!(bad.status, 400);
    assert_common_headers(&bad);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn check_blocks_the_whole_worker() {
    // While one connection's /check spins, another connection's /health waits for it:
    // the worker is single-threaded, like a Node process.
    let server = Server::start();
    let addr = server.addr;
    let start = Instant::now();
    let check = tokio::spawn(async move { get(addr, "/check?ms=300").await });
    // /check counts its request, then spins.
    wait_until("/check started", || server.demo.requests() == 1).await;
    let health = get(server.addr, "/health").await;
    let health_at = start.elapsed();
    assert_eq!(health.status, 200);
    assert!(
        health_at >= Duration::from_millis(300),
        "health answered after {health_at:?}"
    );
    assert_eq!(check.await.unwrap().status, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn flip_returns_the_image_upside_down_as_png() {
    let server = Server::start();
    let r = get(server.addr, "/flip").await;
    assert_eq!(r.status, 200);
    assert_common_headers(&r);
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(&r.body[..8], b"\x89PNG\r\n\x1a\n");

    let png = image::load_from_memory_with_format(&r.body, image::ImageFormat::Png)
        .expect("a PNG that decodes")
        .to_rgb8();
    let (w, h) = server.demo.image_dimensions();
    assert_eq!(png.dimensions(), (w, h));
    for x in [0, w / 3, w / 2, w - 1] {
        assert_eq!(png.get_pixel(x, 0).0, server.demo.source_pixel(x, h - 1));
        assert_eq!(png.get_pixel(x, h - 1).0, server.demo.source_pixel(x, 0));
    }
    // The arrow pointed up in the source, so it points down in the flip.
    assert_eq!(png.get_pixel(w / 2, h - 1 - h / 16).0, [250, 250, 250]);

    // The tutorial's POST /flip works too, and ?format=none skips the encoding.
    let mut c = Client::connect(server.addr).await;
    let post = c.request("POST", "/flip").await;
    assert_eq!(post.status, 200);
    assert_eq!(post.body, r.body);
    let none = c.get("/flip?format=none").await;
    assert_eq!(none.status, 200);
    assert_common_headers(&none);
    assert!(
        none.text()
            .ends_with(&format!("flipped a {w}x{h} image: {} bytes\n", w * h * 3)),
        "{:?}",
        none.text()
    );
    assert_eq!(c.get("/flip?format=gif").await.status, 400);
    assert_eq!(server.demo.requests(), 3);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn stop_answers_then_runs_the_stop_hook() {
    let server = Server::start();
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.get("/").await.status, 200);
    let r = c.get("/stop").await;
    assert_eq!(r.status, 200);
    assert_common_headers(&r);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(
        r.text(),
        format!("worker w7 (pid {}) is stopping\n", std::process::id())
    );
    // The server closes the connection after the answer, then calls the hook (not exit).
    assert!(c.closed_by_server().await);
    server
        .stops
        .recv_timeout(Duration::from_secs(5))
        .expect("the stop hook ran");
    assert!(server.stops.try_recv().is_err(), "the hook ran once");
    // With a hook that does not exit, the worker goes on serving.
    assert!(get(server.addr, "/")
        .await
        .text()
        .ends_with("has answered 3 requests\n"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let server = Server::start();
    let r = get(server.addr, "/nope").await;
    assert_eq!(r.status, 404);
    assert_common_headers(&r);
    for route in ["/stop", "/check", "/flip", "/health"] {
        assert!(r.text().contains(route), "{:?}", r.text());
    }
    let mut c = Client::connect(server.addr).await;
    let r = c.request("DELETE", "/").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_common_headers(&r);
    assert_eq!(server.demo.requests(), 0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    // Two runtime threads, so the accept loop sees the shutdown while the request still spins.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2);
    let mut server = Server::start_on(builder);
    let addr = server.addr;

    let mut idle = Client::connect(addr).await;
    assert_eq!(idle.get("/health").await.status, 200);

    let start = Instant::now();
    let in_flight = tokio::spawn(async move { get(addr, "/check?ms=300").await });
    // /check counts its request, then spins (/health is not counted).
    wait_until("/check started", || server.demo.requests() == 1).await;
    server.begin_shutdown();

    // The idle keep-alive connection is closed at once.
    assert!(idle.closed_by_server().await);
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("spun its CPU for 3"), "{:?}", r.text());

    let (result, returned_at) = server.join().await;
    result.unwrap();
    // serve waited for the request in flight before returning.
    let returned_after = returned_at - start;
    assert!(
        returned_after >= Duration::from_millis(300),
        "serve returned after {returned_after:?}"
    );
    // serve has returned and closed the listener: nothing accepts any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn serve_connection_takes_any_stream() {
    // A connection handed over from elsewhere: here, an in-memory pipe.
    let (client_end, server_end) = tokio::io::duplex(1 << 16);
    let (stop_tx, stop_rx) = mpsc::channel();
    let demo = Demo::with_stop_hook(None, move || {
        let _ = stop_tx.send(());
    });
    let served = tokio::spawn(herd_demo::serve_connection(server_end, demo));
    let mut c = Client::new(client_end);
    let r = c.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-worker-id"), Some("-"));
    assert!(r.text().starts_with("worker - (pid "));
    assert_eq!(c.get("/stop").await.status, 200);
    assert!(c.closed_by_server().await);
    served.await.unwrap();
    stop_rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn serve_unix_serves_and_shuts_down() {
    let dir = std::env::temp_dir().join(format!("herd-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("demo.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(herd_demo::serve_unix(
        listener,
        Demo::with_stop_hook(Some("u1".into()), || {}),
        async {
            let _ = rx.await;
        },
    ));
    let mut c = Client::new(tokio::net::UnixStream::connect(&path).await.unwrap());
    let r = c.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-worker-id"), Some("u1"));
    tx.send(()).unwrap();
    assert!(c.closed_by_server().await);
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
