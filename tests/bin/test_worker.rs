//! `herd-test-worker`: the fixture the integration tests run under herd.
//!
//! A tiny HTTP/1.1 server (one thread per connection, `Connection: close`)
//! that takes its listening sockets the systemd way (`LISTEN_FDS`,
//! `LISTEN_PID`, `LISTEN_FDNAMES`, fds from 3), serves on every one of them
//! (TCP or Unix), and misbehaves on request.
//!
//! Routes:
//! - `GET /`            → `<pid>\n`
//! - `GET /slow?ms=N`   → sleeps N ms, then `<pid>\n`
//! - `GET /exit?code=N` → answers `<pid>\n`, then exits with N
//! - `GET /env`         → JSON of the environment herd gives a worker
//! - `GET /spam?n=N&len=L` → prints N numbered lines (`spam <i> <L x's> end`) on stdout
//! - `GET /exit?code=N&tail=T` → as /exit, after printing `last words T` with no newline
//!
//! Every answer carries `X-Worker-Id` and `X-Pid` headers.
//!
//! Flags:
//! - `--ignore-sigint`       ignore SIGINT and SIGTERM entirely (inherited by `--spawn-child`)
//! - `--spawn-child`         start a grandchild (`sleep 300`) in our process group; print `child <pid>`
//! - `--crash-after MS`      exit 1 after MS (0: at once, before listening) with `fatal: crashing on purpose`
//! - `--crash-slot N`        apply `--crash-after` only when `HERD_WORKER_ID` is N
//! - `--notify-ready`        send `READY=1` to `NOTIFY_SOCKET` once listening
//! - `--ready-after MS`      wait MS before that notification
//! - `--ready-file PATH`     notify only if PATH exists at that moment
//! - `--no-listen`           do not require `LISTEN_FDS`
//! - `--no-listen-pid-check` accept a missing `LISTEN_PID` (for running the fixture by hand)
//! - `--log-requests`        print `request <path>` on stdout when a request arrives
//! - `--require-file PATH`  exit 1 at once (`fatal: ... missing`) unless PATH exists
//! - `--touch PATH`          append `<pid>\n` to PATH at start (proof that a worker started)
//! - `--stop-delay MS`       on a graceful stop, wait MS more before exiting (a slow drain)
//! - `--max-lifetime S`      exit 0 after S seconds no matter what (default 600: no leaks)
//! - `--spam-lines N`        once serving, print N lines `spam <i> <L x's> end` on stdout as
//!   fast as possible, then `spam done` on stderr (`--spam-len L`, default 100)
//! - `--long-line BYTES`     once serving, print one line of BYTES `y`s, then `after long line`
//! - `--ipc-flood N`         once serving, send N messages `{"flood":i,"pad":"<L z's>"}` on the
//!   herd channel (`--ipc-len L`, default 100), then `{"flood":"done"}`
//! - `--ipc-huge BYTES`      once serving, send one message of BYTES bytes (a JSON string) on the
//!   herd channel, then `{"after":"huge"}`
//!
//! On SIGINT/SIGTERM (unless ignored): print `worker <id> pid <pid> stopping
//! on signal <n>`, stop accepting, finish in-flight requests, exit 0.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);
static INFLIGHT: AtomicUsize = AtomicUsize::new(0);
static SIGNO: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    SIGNO.store(sig, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
}

#[derive(Debug, Default)]
struct Opts {
    ignore_sigint: bool,
    spawn_child: bool,
    crash_after: Option<u64>,
    crash_slot: Option<String>,
    notify_ready: bool,
    ready_after: u64,
    ready_file: Option<String>,
    no_listen: bool,
    no_listen_pid_check: bool,
    log_requests: bool,
    touch: Option<String>,
    require_file: Option<String>,
    stop_delay: u64,
    max_lifetime: u64,
    spam_lines: u64,
    spam_len: u64,
    long_line: u64,
    ipc_flood: u64,
    ipc_len: u64,
    ipc_huge: u64,
}

fn die(msg: &str) -> ! {
    eprintln!("herd-test-worker: {msg}");
    process::exit(3);
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        max_lifetime: 600,
        spam_len: 100,
        ipc_len: 100,
        ..Opts::default()
    };
    let mut args = std::env::args().skip(1);
    let num = |name: &str, v: Option<String>| -> u64 {
        v.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| die(&format!("{name} needs a number")))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ignore-sigint" => o.ignore_sigint = true,
            "--spawn-child" => o.spawn_child = true,
            "--crash-after" => o.crash_after = Some(num(&a, args.next())),
            "--crash-slot" => {
                o.crash_slot = Some(
                    args.next()
                        .unwrap_or_else(|| die("--crash-slot needs a slot")),
                )
            }
            "--notify-ready" => o.notify_ready = true,
            "--ready-after" => o.ready_after = num(&a, args.next()),
            "--ready-file" => {
                o.ready_file = Some(
                    args.next()
                        .unwrap_or_else(|| die("--ready-file needs a path")),
                )
            }
            "--no-listen" => o.no_listen = true,
            "--no-listen-pid-check" => o.no_listen_pid_check = true,
            "--log-requests" => o.log_requests = true,
            "--require-file" => {
                o.require_file = Some(
                    args.next()
                        .unwrap_or_else(|| die("--require-file needs a path")),
                )
            }
            "--touch" => o.touch = Some(args.next().unwrap_or_else(|| die("--touch needs a path"))),
            "--stop-delay" => o.stop_delay = num(&a, args.next()),
            "--max-lifetime" => o.max_lifetime = num(&a, args.next()),
            "--spam-lines" => o.spam_lines = num(&a, args.next()),
            "--spam-len" => o.spam_len = num(&a, args.next()),
            "--long-line" => o.long_line = num(&a, args.next()),
            "--ipc-flood" => o.ipc_flood = num(&a, args.next()),
            "--ipc-len" => o.ipc_len = num(&a, args.next()),
            "--ipc-huge" => o.ipc_huge = num(&a, args.next()),
            other => die(&format!("unknown argument '{other}'")),
        }
    }
    o
}

/// One inherited listening socket.
#[derive(Debug, Clone, Copy)]
struct Listener {
    fd: RawFd,
    unix: bool,
}

fn set_cloexec(fd: RawFd) {
    // Like Node: inherited fds are not passed on to our own children.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

fn take_listeners(opts: &Opts) -> Vec<Listener> {
    let n: usize = match std::env::var("LISTEN_FDS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| die(&format!("LISTEN_FDS is not a number: '{v}'"))),
        Err(_) if opts.no_listen => return Vec::new(),
        Err(_) => die("LISTEN_FDS is not set (use --no-listen to run without listeners)"),
    };
    let me = process::id();
    match std::env::var("LISTEN_PID") {
        Ok(v) if v.parse::<u32>().ok() == Some(me) => {}
        Ok(v) => die(&format!("LISTEN_PID is {v}, but my pid is {me}")),
        Err(_) if opts.no_listen_pid_check => {}
        Err(_) => die("LISTEN_PID is not set"),
    }
    if n == 0 && !opts.no_listen {
        die("LISTEN_FDS is 0");
    }
    let mut out = Vec::new();
    for i in 0..n {
        let fd = 3 + i as RawFd;
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let rc =
            unsafe { libc::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) };
        if rc != 0 {
            die(&format!(
                "fd {fd} (of LISTEN_FDS={n}) is not a socket: {}",
                io::Error::last_os_error()
            ));
        }
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags & libc::O_NONBLOCK == 0 {
            // herd promises nonblocking fds; report it (the tests look for it).
            eprintln!("warning: inherited fd {fd} is blocking");
        }
        set_cloexec(fd);
        out.push(Listener {
            fd,
            unix: ss.ss_family as i32 == libc::AF_UNIX,
        });
    }
    out
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn set_timeouts(&self, t: Duration) {
        let _ = match self {
            Conn::Tcp(s) => s
                .set_read_timeout(Some(t))
                .and(s.set_write_timeout(Some(t))),
            Conn::Unix(s) => s
                .set_read_timeout(Some(t))
                .and(s.set_write_timeout(Some(t))),
        };
    }
    fn shutdown_write(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Ctx {
    id: String,
    pid: u32,
    log_requests: bool,
}

fn query_param<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    let q = path.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

fn env_json() -> String {
    let keys = [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "HERD_WORKER_ID",
        "NODE_APP_INSTANCE",
        "HERD_INSTANCES",
        "NOTIFY_SOCKET",
        "HERD_CHANNEL_FD",
    ];
    let map: BTreeMap<&str, Option<String>> =
        keys.iter().map(|k| (*k, std::env::var(k).ok())).collect();
    let mut s = serde_json::to_string(&map).expect("json");
    s.push('\n');
    s
}

fn handle(mut conn: Conn, ctx: &Ctx) {
    conn.set_timeouts(Duration::from_secs(10));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let first = head.lines().next().unwrap_or("");
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/").to_string();
    if ctx.log_requests {
        println!("request {path}");
    }
    let route = path.split('?').next().unwrap_or("");
    let pid_body = format!("{}\n", ctx.pid);
    let mut exit_code = None;
    let (status, body) = match (method, route) {
        ("GET", "/") => (200, pid_body),
        ("GET", "/slow") => {
            let ms = query_param(&path, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            thread::sleep(Duration::from_millis(ms));
            (200, pid_body)
        }
        ("GET", "/exit") => {
            exit_code = Some(
                query_param(&path, "code")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            );
            if let Some(tail) = query_param(&path, "tail") {
                // A last line with no newline, as a crashing program may leave.
                print!("last words {tail}");
                let _ = io::stdout().flush();
            }
            (200, pid_body)
        }
        ("GET", "/env") => (200, env_json()),
        ("GET", "/spam") => {
            // N numbered lines of about LEN bytes each, in one burst.
            let n: usize = query_param(&path, "n")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            let len: usize = query_param(&path, "len")
                .and_then(|v| v.parse().ok())
                .unwrap_or(80);
            let pad = "x".repeat(len);
            let out = io::stdout();
            let mut w = io::BufWriter::with_capacity(1 << 16, out.lock());
            for i in 0..n {
                let _ = writeln!(w, "spam {i} {pad} end");
            }
            let _ = w.flush();
            (200, pid_body)
        }
        ("GET", _) => (404, "not found\n".to_string()),
        _ => (405, "method not allowed\n".to_string()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\nX-Worker-Id: {}\r\nX-Pid: {}\r\n\r\n{body}",
        body.len(),
        ctx.id,
        ctx.pid
    );
    let _ = conn.write_all(resp.as_bytes());
    conn.shutdown_write();
    if let Some(code) = exit_code {
        if query_param(&path, "tail").is_none() {
            println!("exiting with code {code} on request");
        }
        process::exit(code);
    }
    // Let the client close first (no TIME_WAIT pile-up on the server side):
    // wait for its FIN or RST, briefly.
    conn.set_timeouts(Duration::from_secs(1));
    let _ = conn.read(&mut chunk);
}

fn accept_loop(l: Listener, ctx: Arc<Ctx>) {
    while !STOP.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: l.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let rc = unsafe { libc::poll(&mut pfd, 1, 50) };
        if rc <= 0 || STOP.load(Ordering::SeqCst) {
            continue;
        }
        let cfd = unsafe {
            libc::accept4(
                l.fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if cfd < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ECONNABORTED) => continue,
                _ => {
                    eprintln!("accept on fd {}: {e}", l.fd);
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        // Counted before the stop check in main can see zero.
        INFLIGHT.fetch_add(1, Ordering::SeqCst);
        // accept4 without SOCK_NONBLOCK gives a blocking socket on Linux.
        let conn = if l.unix {
            Conn::Unix(unsafe { UnixStream::from_raw_fd(cfd) })
        } else {
            Conn::Tcp(unsafe { TcpStream::from_raw_fd(cfd) })
        };
        let ctx = ctx.clone();
        thread::spawn(move || {
            handle(conn, &ctx);
            INFLIGHT.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn notify_ready(opts: &Opts) {
    if opts.ready_after > 0 {
        thread::sleep(Duration::from_millis(opts.ready_after));
    }
    if let Some(f) = &opts.ready_file {
        if !std::path::Path::new(f).exists() {
            println!("not ready: {f} does not exist");
            return;
        }
    }
    let Ok(target) = std::env::var("NOTIFY_SOCKET") else {
        eprintln!("NOTIFY_SOCKET is not set; cannot notify");
        return;
    };
    match sd_notify(&target, "READY=1") {
        Ok(()) => println!("notified READY=1"),
        Err(e) => eprintln!("sd_notify to {target}: {e}"),
    }
}

fn sd_notify(target: &str, msg: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), target)?;
    }
    Ok(())
}

/// Floods for the memory-bound tests, run in a thread once serving.
fn floods(
    spam_lines: u64,
    spam_len: u64,
    long_line: u64,
    ipc_flood: u64,
    ipc_len: u64,
    ipc_huge: u64,
) {
    if spam_lines > 0 {
        let pad = "x".repeat(spam_len as usize);
        let out = io::stdout();
        let mut w = io::BufWriter::with_capacity(1 << 16, out.lock());
        for i in 0..spam_lines {
            let _ = writeln!(w, "spam {i} {pad} end");
        }
        let _ = w.flush();
        drop(w);
        eprintln!("spam done");
    }
    if long_line > 0 {
        let out = io::stdout();
        let mut w = io::BufWriter::with_capacity(1 << 16, out.lock());
        let chunk = vec![b'y'; 1 << 16];
        let mut left = long_line as usize;
        while left > 0 {
            let n = left.min(chunk.len());
            let _ = w.write_all(&chunk[..n]);
            left -= n;
        }
        let _ = w.write_all(b"\nafter long line\n");
        let _ = w.flush();
    }
    if ipc_flood > 0 || ipc_huge > 0 {
        let Some(fd) = std::env::var("HERD_CHANNEL_FD")
            .ok()
            .and_then(|v| v.parse::<RawFd>().ok())
        else {
            die("HERD_CHANNEL_FD is not set: cannot send IPC messages");
        };
        // Borrowed: the channel stays open after the flood.
        let mut chan = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
        let mut w = io::BufWriter::with_capacity(1 << 16, &mut *chan);
        if ipc_flood > 0 {
            let pad = "z".repeat(ipc_len as usize);
            for i in 0..ipc_flood {
                let _ = writeln!(w, "{{\"flood\":{i},\"pad\":\"{pad}\"}}");
            }
            let _ = writeln!(w, "{{\"flood\":\"done\"}}");
        }
        if ipc_huge > 0 {
            let body = ipc_huge.saturating_sub(2) as usize;
            let _ = w.write_all(b"\"");
            let chunk = vec![b'z'; 1 << 16];
            let mut left = body;
            while left > 0 {
                let n = left.min(chunk.len());
                let _ = w.write_all(&chunk[..n]);
                left -= n;
            }
            let _ = w.write_all(b"\"\n{\"after\":\"huge\"}\n");
        }
        let _ = w.flush();
    }
}

fn main() {
    let opts = parse_opts();
    let id = std::env::var("HERD_WORKER_ID").unwrap_or_else(|_| "?".into());
    let pid = process::id();

    unsafe {
        if opts.ignore_sigint {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        } else {
            let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
    }

    let crash_here = match &opts.crash_slot {
        Some(slot) => *slot == id,
        None => true,
    };
    let crash_after = opts.crash_after.filter(|_| crash_here);
    if crash_after == Some(0) {
        eprintln!("fatal: crashing on purpose (worker {id} pid {pid})");
        process::exit(1);
    }

    if let Some(path) = &opts.require_file {
        if !std::path::Path::new(path).exists() {
            eprintln!("fatal: required file {path} is missing (worker {id} pid {pid})");
            process::exit(1);
        }
    }

    if let Some(path) = &opts.touch {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| die(&format!("--touch {path}: {e}")));
        let _ = writeln!(f, "{pid}");
    }

    if let Ok(v) = std::env::var("HERD_CHANNEL_FD") {
        if let Ok(fd) = v.parse::<RawFd>() {
            set_cloexec(fd);
        }
    }

    let listeners = take_listeners(&opts);
    println!("worker {id} pid {pid} serving");

    let flood = (
        opts.spam_lines,
        opts.spam_len,
        opts.long_line,
        opts.ipc_flood,
        opts.ipc_len,
        opts.ipc_huge,
    );
    if flood.0 + flood.2 + flood.3 + flood.5 > 0 {
        thread::spawn(move || floods(flood.0, flood.1, flood.2, flood.3, flood.4, flood.5));
    }

    let _child = if opts.spawn_child {
        let child = process::Command::new("sleep")
            .arg("300")
            .stdin(process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| die(&format!("cannot spawn child: {e}")));
        println!("child {}", child.id());
        Some(child)
    } else {
        None
    };

    if let Some(ms) = crash_after {
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            eprintln!("fatal: crashing on purpose (worker {id} pid {pid}, after {ms} ms)");
            process::exit(1);
        });
    }
    let lifetime = opts.max_lifetime;
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(lifetime));
        eprintln!("max lifetime of {lifetime} s reached; exiting");
        process::exit(0);
    });

    let ctx = Arc::new(Ctx {
        id: std::env::var("HERD_WORKER_ID").unwrap_or_else(|_| "?".into()),
        pid,
        log_requests: opts.log_requests,
    });
    let acceptors: Vec<_> = listeners
        .iter()
        .map(|&l| {
            let ctx = ctx.clone();
            thread::spawn(move || accept_loop(l, ctx))
        })
        .collect();

    let opts = Arc::new(opts);
    if opts.notify_ready {
        let o = opts.clone();
        thread::spawn(move || notify_ready(&o));
    }

    while !STOP.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(20));
    }
    let id = &ctx.id;
    let sig = SIGNO.load(Ordering::SeqCst);
    println!("worker {id} pid {pid} stopping on signal {sig}");
    for a in acceptors {
        let _ = a.join();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while INFLIGHT.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    if opts.stop_delay > 0 {
        thread::sleep(Duration::from_millis(opts.stop_delay));
    }
    println!("worker {id} pid {pid} drained");
    process::exit(0);
}
