//! The worker side: what herd passes a worker (listeners, the IPC channel,
//! the notify socket, its id) behind one process-wide handle.

use std::collections::HashMap;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock};

use herd_engine::Channel;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::listener::{Listener, Source};

/// This process's view of the cluster: one per process ([`Worker::get`]).
pub struct Worker {
    id: Option<usize>,
    instances: Option<usize>,
    /// Inherited listening fds by name, each taken once.
    inherited: Mutex<Vec<(String, Option<OwnedFd>)>>,
    /// Round-robin listeners: herd hands their connections over the channel.
    round_robin: Mutex<HashMap<String, mpsc::UnboundedReceiver<crate::listener::HandedOver>>>,
    outbox: Option<mpsc::UnboundedSender<Vec<u8>>>,
    messages: tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>,
    shutdown: watch::Sender<bool>,
    signals: OnceLock<()>,
}

static WORKER: OnceLock<Worker> = OnceLock::new();

impl Worker {
    /// The handle for this process. The first call (which must be inside a
    /// tokio runtime) takes the fds herd passed and starts reading the channel.
    pub fn get() -> &'static Worker {
        WORKER.get_or_init(Worker::from_env)
    }

    fn from_env() -> Worker {
        let env_num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        let (shutdown, _) = watch::channel(false);
        let (messages_tx, messages_rx) = mpsc::unbounded_channel();
        let mut senders = HashMap::new();
        let mut receivers = HashMap::new();
        if let Ok(names) = std::env::var("HERD_ROUND_ROBIN") {
            for name in names.split(':').filter(|n| !n.is_empty()) {
                let (tx, rx) = mpsc::unbounded_channel();
                senders.insert(name.to_string(), tx);
                receivers.insert(name.to_string(), rx);
            }
        }
        let outbox = take_channel().map(|channel| {
            let channel = Arc::new(channel);
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_loop(channel.clone(), rx));
            tokio::spawn(read_loop(
                channel,
                tx.clone(),
                messages_tx,
                senders,
                shutdown.clone(),
            ));
            tx
        });
        Worker {
            id: env_num("HERD_WORKER_ID"),
            instances: env_num("HERD_INSTANCES"),
            inherited: Mutex::new(take_listen_fds()),
            round_robin: Mutex::new(receivers),
            outbox,
            messages: tokio::sync::Mutex::new(messages_rx),
            shutdown,
            signals: OnceLock::new(),
        }
    }

    /// This worker's slot, 0..N-1 (`HERD_WORKER_ID`); `None` when not run by herd.
    pub fn id(&self) -> Option<usize> {
        self.id
    }

    /// How many workers the cluster has (`HERD_INSTANCES`).
    pub fn instances(&self) -> Option<usize> {
        self.instances
    }

    /// The listener called `name`: the socket herd passed under that name
    /// (or the only one, if herd passed a single unnamed socket), the
    /// connections herd hands over in round-robin mode, or — not under herd —
    /// a socket this process binds on `fallback` (`HOST:PORT`, or
    /// `unix:PATH`) itself.
    /// Each listener can be taken once.
    pub fn listener(&self, name: &str, fallback: &str) -> io::Result<Listener> {
        if let Some(rx) = self.round_robin.lock().expect("lock").remove(name) {
            let addr = fallback
                .parse()
                .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
            return Ok(Listener::round_robin(rx, addr, self.outbox.clone()));
        }
        let mut inherited = self.inherited.lock().expect("lock");
        let only_unnamed = inherited.len() == 1 && inherited[0].0 == "unknown";
        if let Some((_, fd)) = inherited
            .iter_mut()
            .find(|(n, _)| n == name || only_unnamed)
        {
            let fd = fd.take().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("the listener '{name}' was already taken"),
                )
            })?;
            return Listener::inherited(fd);
        }
        if !inherited.is_empty() {
            let names: Vec<&str> = inherited.iter().map(|(n, _)| n.as_str()).collect();
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("herd passed no listener named '{name}' (it passed: {}); name it with --listen {name}=ADDR", names.join(", ")),
            ));
        }
        let cannot =
            |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {fallback}: {e}"));
        if let Some(path) = fallback.strip_prefix("unix:") {
            let std = std::os::unix::net::UnixListener::bind(path).map_err(cannot)?;
            std.set_nonblocking(true)?;
            return Listener::from_std_unix(std, Source::Bound);
        }
        let std = std::net::TcpListener::bind(fallback).map_err(cannot)?;
        std.set_nonblocking(true)?;
        Listener::from_std(std, Source::Bound)
    }

    /// Tell the primary this worker is ready for traffic (`READY=1` on
    /// `NOTIFY_SOCKET`). A no-op when not under herd or systemd.
    pub fn ready(&self) -> io::Result<()> {
        notify("READY=1")
    }

    /// Resolves when this worker should stop: SIGINT, SIGTERM, the message
    /// `"shutdown"`, or the primary going away (its channel closed). The
    /// first call takes over SIGINT and SIGTERM for this process at once
    /// (they no longer end it by themselves), even before the future is
    /// polled.
    pub fn shutdown(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.signals.get_or_init(|| {
            use herd_signals::Signal;
            // Registered here, synchronously: a signal from now on is seen.
            let (Ok(mut int), Ok(mut term)) =
                (Signal::new(libc::SIGINT), Signal::new(libc::SIGTERM))
            else {
                return;
            };
            let tx = self.shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                // send_replace: stored even when no shutdown() is awaited right now.
                tx.send_replace(true);
            });
        });
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Send a JSON message to the primary (`process.send`). Returns false when
    /// there is no primary to send to.
    pub fn send(&self, message: &Value) -> bool {
        let Some(outbox) = &self.outbox else {
            return false;
        };
        let mut line = serde_json::to_vec(message).expect("a JSON value serializes");
        line.push(b'\n');
        outbox.send(line).is_ok()
    }

    /// The next message from the primary (`process.on('message')`); `None`
    /// once the channel is closed (or there is none).
    pub async fn recv(&self) -> Option<Value> {
        self.messages.lock().await.recv().await
    }
}

/// Send a sd_notify datagram to `NOTIFY_SOCKET`, if set.
pub(crate) fn notify(state: &str) -> io::Result<()> {
    herd_engine::sd_notify(state)
}

/// The listening fds of `LISTEN_FDS`, if they are meant for this process.
fn take_listen_fds() -> Vec<(String, Option<OwnedFd>)> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<RawFd>().ok())
        .unwrap_or(0);
    if !for_us || count <= 0 {
        return Vec::new();
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(String::from).collect())
        .unwrap_or_default();
    (0..count)
        .map(|i| {
            let fd = 3 + i;
            // SAFETY: LISTEN_FDS/LISTEN_PID say fds 3..3+n were passed to this
            // process to own; they are taken once (inside a OnceLock).
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            set_cloexec(&owned);
            let name = names
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            (name, Some(owned))
        })
        .collect()
}

fn take_channel() -> Option<Channel> {
    let fd: RawFd = std::env::var("HERD_CHANNEL_FD").ok()?.parse().ok()?;
    // SAFETY: F_GETFD on an fd number only asks whether it is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: open (checked above), placed there by herd for this process to
    // own, and taken once (inside a OnceLock): nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(&owned);
    Channel::new(owned).ok()
}

/// Keep an inherited fd from leaking into this worker's own children.
fn set_cloexec(fd: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
        let flags = FdFlag::from_bits_retain(flags) | FdFlag::FD_CLOEXEC;
        let _ = fcntl(fd, FcntlArg::F_SETFD(flags));
    }
}

async fn write_loop(channel: Arc<Channel>, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(line) = rx.recv().await {
        if channel.send(&line, None).await.is_err() {
            return;
        }
    }
}

/// Route what the primary sends: handed-over connections to their listener,
/// `"shutdown"` to the shutdown future, the rest to `recv`.
async fn read_loop(
    channel: Arc<Channel>,
    outbox: mpsc::UnboundedSender<Vec<u8>>,
    messages: mpsc::UnboundedSender<Value>,
    listeners: HashMap<String, mpsc::UnboundedSender<crate::listener::HandedOver>>,
    shutdown: watch::Sender<bool>,
) {
    let reply = |v: Value| {
        let mut line = serde_json::to_vec(&v).expect("a JSON value serializes");
        line.push(b'\n');
        let _ = outbox.send(line);
    };
    let mut buf = Vec::new();
    let mut fds: std::collections::VecDeque<OwnedFd> = Default::default();
    let mut received = Vec::new();
    loop {
        match channel.recv(&mut buf, &mut received).await {
            Ok(0) if received.is_empty() => break,
            Ok(_) => fds.extend(received.drain(..)),
            Err(_) => break,
        }
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let Ok(value) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if value.get("cmd").and_then(Value::as_str) == Some("NODE_HANDLE") {
                // One fd per handle message, in order, as Node matches them.
                let fd = fds.pop_front();
                let Some(fd) = fd else {
                    reply(json!({"cmd": "NODE_HANDLE_NACK"}));
                    continue;
                };
                reply(json!({"cmd": "NODE_HANDLE_ACK"}));
                let msg = &value["msg"];
                if msg["act"] == "newconn" {
                    let key = msg["key"].as_str().unwrap_or_default();
                    // TCP or Unix, as the listener herd accepted it on.
                    // `accepted: true` goes out when the app takes it (Listener::accept);
                    // a listener dropped with it still queued answers `false`.
                    let queued = crate::listener::NetStream::from_fd(fd)
                        .ok()
                        .and_then(|s| {
                            listeners
                                .get(key)
                                .map(|tx| tx.send((s, msg["seq"].clone())).is_ok())
                        })
                        .unwrap_or(false);
                    if !queued {
                        reply(json!({"cmd": "NODE_CLUSTER", "ack": msg["seq"], "accepted": false}));
                    }
                }
                continue;
            }
            if value
                .get("cmd")
                .and_then(Value::as_str)
                .is_some_and(|c| c.starts_with("NODE_"))
            {
                continue;
            }
            if value == "shutdown" {
                // Not `send`: that drops the value when no `shutdown()` is
                // awaited at this moment, and a later one would never resolve.
                shutdown.send_replace(true);
            }
            let _ = messages.send(value);
        }
    }
    // The primary is gone (or let go of us): finish, as a Node cluster
    // worker does when its channel closes.
    shutdown.send_replace(true);
}
