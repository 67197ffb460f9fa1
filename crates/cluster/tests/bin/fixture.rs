//! The test fixture for herd-cluster's integration tests: a tiny HTTP server
//! built on the library, which can also be its own embedded primary.
//!
//! ```text
//! herd-cluster-fixture --addr HOST:PORT [--name web]        a worker (or standalone)
//!     [--startup-ms N]          take the listener, then wait N ms before serving
//! herd-cluster-fixture --primary N --addr ..  [primary opts]   Primary::run()
//! herd-cluster-fixture --events N --addr ..   [primary opts]   Primary::start(), events
//!     printed, commands read from stdin: `send-all JSON`, `send SLOT JSON`,
//!     `reload`, `stop`, `scale N`
//! primary opts: --balance MODE, --kill-timeout-ms N, --shutdown-with-message, --wait-ready
//! ```
//!
//! Worker output (one line each, on stdout):
//! `fixture serving id=<id> pid=<pid> source=<Source> addr=<addr>`,
//! `fixture pid=<pid> got <json>` (and it sends `{"echo": <json>, "pid": <pid>}` back),
//! `fixture shutting down pid=<pid> in_flight=<n>`, `fixture exiting pid=<pid>`.
//! It sends `{"hello": <id>, "pid": <pid>}` once serving.
//!
//! Routes (every answer closes its connection; the body is JSON with `pid`, `id`):
//! `/`, `/slow?ms=N` (sleeps, other requests go on), `/block?ms=N` (spins the
//! CPU: the worker is single-threaded, so it answers nothing else meanwhile),
//! `/exit?code=N` (answers, then exits), anything else 404.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use herd_cluster::{Balance, Event, Primary, Target, Worker};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

#[derive(Debug, Default, Clone)]
struct Opts {
    addr: String,
    name: String,
    primary: Option<usize>,
    events: Option<usize>,
    balance: Option<Balance>,
    kill_timeout_ms: Option<u64>,
    shutdown_with_message: bool,
    wait_ready: bool,
    startup_ms: u64,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        addr: "127.0.0.1:0".into(),
        name: "web".into(),
        ..Opts::default()
    };
    let mut args = std::env::args().skip(1);
    let usage = |what: &str| -> ! {
        eprintln!("herd-cluster-fixture: {what}");
        std::process::exit(2)
    };
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        let num = |v: String| -> u64 { v.parse().unwrap_or_else(|_| usage("not a number")) };
        match a.as_str() {
            "--addr" => o.addr = value(),
            "--name" => o.name = value(),
            "--primary" => o.primary = Some(num(value()) as usize),
            "--events" => o.events = Some(num(value()) as usize),
            "--balance" => {
                o.balance = Some(value().parse().unwrap_or_else(|_| usage("bad balance")))
            }
            "--kill-timeout-ms" => o.kill_timeout_ms = Some(num(value())),
            "--startup-ms" => o.startup_ms = num(value()),
            "--shutdown-with-message" => o.shutdown_with_message = true,
            "--wait-ready" => o.wait_ready = true,
            other => usage(&format!("unknown argument {other}")),
        }
    }
    o
}

fn main() {
    let opts = parse_args();
    let code = if herd_cluster::is_primary() && opts.primary.is_some() {
        primary_run(&opts)
    } else if herd_cluster::is_primary() && opts.events.is_some() {
        primary_events(&opts)
    } else {
        worker(&opts)
    };
    std::process::exit(code);
}

fn primary(opts: &Opts, n: usize) -> Primary {
    let mut p = Primary::new().workers(n).listen(&opts.name, &opts.addr);
    if let Some(b) = opts.balance {
        p = p.balance(b);
    }
    if opts.kill_timeout_ms.is_some() || opts.shutdown_with_message {
        // herd-cluster does not re-export StopPolicy: reach into herd-engine.
        let mut stop = herd_engine::config::StopPolicy {
            shutdown_with_message: opts.shutdown_with_message,
            ..Default::default()
        };
        if let Some(ms) = opts.kill_timeout_ms {
            stop.kill_timeout = Duration::from_millis(ms);
        }
        p = p.stop_policy(stop);
    }
    if opts.wait_ready {
        p = p.wait_ready(Duration::from_secs(5));
    }
    p
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `Primary::run()`: herd run's foreground loop, in this program.
fn primary_run(opts: &Opts) -> i32 {
    let p = primary(opts, opts.primary.unwrap_or(2));
    runtime().block_on(p.run()).unwrap_or_else(|e| {
        eprintln!("herd-cluster-fixture: primary: {e}");
        2
    })
}

/// `Primary::start()`: events printed, commands from stdin.
fn primary_events(opts: &Opts) -> i32 {
    let p = primary(opts, opts.events.unwrap_or(2));
    runtime().block_on(async {
        let (handle, mut events) = match p.start() {
            Ok(x) => x,
            Err(e) => {
                eprintln!("herd-cluster-fixture: start: {e}");
                return 2;
            }
        };
        let (cmd_tx, mut cmds) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if cmd_tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    None => {
                        eprintln!("herd: the event stream ended without Exit");
                        return 1;
                    }
                    Some(Event::Listening { name, addr }) => eprintln!("herd: listening on {addr} ({name})"),
                    Some(Event::Lifecycle(report)) => eprintln!("herd: {report}"),
                    Some(Event::Output { slot, lines, .. }) => {
                        for l in String::from_utf8_lossy(&lines).lines() {
                            println!("[{slot}] {l}");
                        }
                    }
                    Some(Event::Message { slot, pid, message }) => {
                        println!("event message slot={slot} pid={pid} {message}");
                    }
                    Some(Event::Warning(w)) => eprintln!("herd: warning: {w}"),
                    Some(Event::Exit(outcome)) => {
                        eprintln!("herd: exiting: {outcome}");
                        return 0;
                    }
                },
                Some(cmd) = cmds.recv() => {
                    let (verb, rest) = cmd.split_once(' ').unwrap_or((cmd.as_str(), ""));
                    match verb {
                        "send-all" => handle.send(Target::All, parse_json(rest)),
                        "send" => {
                            let (slot, json) = rest.split_once(' ').unwrap_or((rest, "null"));
                            handle.send(Target::Slot(slot.parse().unwrap_or(0)), parse_json(json));
                        }
                        "reload" => handle.reload(),
                        "stop" => handle.stop(),
                        "scale" => handle.scale(rest.trim().parse().unwrap_or(1)),
                        other => eprintln!("herd-cluster-fixture: unknown command {other:?}"),
                    }
                    println!("command done: {cmd}");
                }
            }
        }
    })
}

fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

/// The worker (or a standalone server): single-threaded, like a Node process.
fn worker(opts: &Opts) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(serve(opts))
}

async fn serve(opts: &Opts) -> i32 {
    let pid = std::process::id();
    let worker = Worker::get();
    let mut listener = match worker.listener(&opts.name, &opts.addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("herd-cluster-fixture: {e}");
            return 3;
        }
    };
    let id = worker.id();
    let id_text = id.map_or("none".to_string(), |i| i.to_string());
    let source = format!("{:?}", listener.source());
    let addr = listener
        .local_addr()
        .map_or("?".to_string(), |a| a.to_string());

    // Echo every message from the primary back to it.
    tokio::spawn(async move {
        while let Some(v) = Worker::get().recv().await {
            println!("fixture pid={pid} got {v}");
            Worker::get().send(&json!({"echo": v, "pid": pid}));
        }
        println!("fixture pid={pid} channel closed");
    });

    if opts.startup_ms > 0 {
        println!("fixture pid={pid} starting up");
        tokio::time::sleep(Duration::from_millis(opts.startup_ms)).await;
    }

    // `shutdown()` takes over SIGINT/SIGTERM only once it is polled, and its
    // signal task registers once that task runs: do both before announcing
    // that we serve, so a signal right after the announcement is ours.
    let mut shutdown = pin!(worker.shutdown());
    let early = std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await;
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;

    let mut conns = JoinSet::new();
    if !early {
        worker.ready().ok();
        worker.send(&json!({"hello": id, "pid": pid}));
        println!("fixture serving id={id_text} pid={pid} source={source} addr={addr}");
        loop {
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let ctx = (pid, id, source.clone());
                        conns.spawn(handle(stream, ctx));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {
                        println!("fixture pid={pid} accept ended: {e}");
                        break;
                    }
                    Err(e) => {
                        println!("fixture pid={pid} accept error: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }
    println!("fixture shutting down pid={pid} in_flight={}", conns.len());
    drop(listener);
    while conns.join_next().await.is_some() {}
    println!("fixture exiting pid={pid}");
    0
}

async fn handle(
    mut stream: herd_cluster::NetStream,
    (pid, id, source): (u32, Option<usize>, String),
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let param = |name: &str| -> u64 {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    let mut body = json!({"pid": pid, "id": id, "source": source, "path": path});
    let mut status = "200 OK";
    let mut exit_code = None;
    match path {
        "/" => {}
        "/slow" => {
            let ms = param("ms");
            println!("fixture pid={pid} slow request started ({ms} ms)");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            body["slept_ms"] = json!(ms);
        }
        "/block" => {
            let ms = param("ms");
            println!("fixture pid={pid} blocking for {ms} ms");
            let start = Instant::now();
            let mut x = 0u64;
            while start.elapsed() < Duration::from_millis(ms) {
                for _ in 0..1000 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
            body["blocked_ms"] = json!(start.elapsed().as_millis() as u64);
        }
        "/exit" => exit_code = Some(param("code") as i32),
        _ => status = "404 Not Found",
    }
    let body = body.to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nX-Pid: {pid}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    if let Some(code) = exit_code {
        println!("fixture pid={pid} exiting with code {code} on request");
        std::process::exit(code);
    }
}
