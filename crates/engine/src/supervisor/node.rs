//! herd as a Node.js cluster primary: Node's cluster protocol.
//!
//! A Node worker started with `NODE_UNIQUE_ID` and an IPC channel believes it
//! is a `cluster` worker: when the app calls `server.listen(8000)` or
//! `socket.bind(41234)` it asks its primary for the socket (`queryServer`).
//! herd binds one socket per distinct address/port/type/fd/index, as Node's
//! primary does (or reuses a matching `--listen` socket), and either sends
//! the handle (`shared`, Node's SCHED_NONE; UDP sockets always, in every
//! balance mode, as under Node) or accepts connections itself and hands each
//! one over (`round-robin`, SCHED_RR: see [`super::round_robin`]). A socket
//! herd bound for workers is closed once no worker uses it any more (a Unix
//! socket's file removed). Everything is JSON lines on the channel; handles
//! travel as `NODE_HANDLE` messages with `SCM_RIGHTS`, each acknowledged by
//! the worker's `NODE_HANDLE_ACK`.
//!
//! Apps that pass `exclusive: true` (or `reusePort`) bind their own socket
//! and never ask, as under Node; herd then is not told when they listen.
//!
//! Stopping a Node worker without losing a connection: first the cluster
//! `disconnect` (the worker closes its servers, so the kernel stops queueing
//! connections for it; in round-robin it also leaves the rotation at once),
//! then, once it has closed them and a short settle time has passed, the
//! kill signal. That phase is bounded by the machine's settle timeout
//! ([`DISCONNECT_GRACE`]; `Action::Signal` cuts it short), and the kill
//! timeout counts only from the signal (`Input::StopSignalled`).

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::round_robin::{Conn, RoundRobin};
use super::{App, Internal, Outgoing};
use crate::config::{Balance, ListenAddr};
use crate::machine::{Input, WorkerId};
use crate::os::socket;

/// After a Node worker closed its servers, wait this long before the kill
/// signal, so connections it accepted a moment ago can deliver their request
/// before the app's shutdown handler closes idle sockets.
pub(super) const SETTLE: Duration = Duration::from_millis(200);
/// Send the kill signal at the latest this long after `disconnect`, even if
/// the worker never confirmed it closed its servers (the machine's
/// `settle_timeout`, which asks for the signal with `Action::Signal`).
pub(super) const DISCONNECT_GRACE: Duration = Duration::from_secs(1);
/// A handle the worker refuses (NACK) is sent again this many times.
const HANDLE_RETRIES: u8 = 3;

/// A listening socket shared by the workers that asked for it.
pub(super) struct Server {
    /// The socket; `None` when it is one of the app's `--listen` sockets.
    own: Option<OwnedFd>,
    /// Index into the app's `--listen` listeners when borrowed from there.
    listener: Option<usize>,
    /// The file of a Unix socket herd bound: removed when the socket closes.
    unix_path: Option<PathBuf>,
    /// The first worker's `data`, echoed to every worker (TLS servers need it).
    data: Value,
    sockname: Value,
    pub(super) round_robin: Option<RoundRobin>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let (Some(_), Some(path)) = (&self.own, &self.unix_path) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A handle message on its way to a worker.
pub(super) struct Handoff {
    line: Vec<u8>,
    /// `None` once herd gave up on the connection (it is not sent again).
    pub(super) fd: Option<Arc<OwnedFd>>,
    tries: u8,
    /// For a connection: its round-robin key and `newconn` seq.
    pub(super) conn: Option<(String, u64)>,
}

impl Handoff {
    pub(super) fn new(line: Vec<u8>, fd: Arc<OwnedFd>, conn: Option<(String, u64)>) -> Handoff {
        Handoff {
            line,
            fd: Some(fd),
            tries: 0,
            conn,
        }
    }
}

/// A Node (or herd-cluster) worker's side of the protocol.
#[derive(Default)]
pub(super) struct Peer {
    /// Our next outgoing `seq`.
    seq: u64,
    /// Handles sent and not yet acknowledged, in the order sent (the worker
    /// acknowledges them in that order).
    pub(super) handles_in_flight: VecDeque<Handoff>,
    /// Connections handed over whose `accepted` reply has not come: by seq.
    pub(super) unacked: HashMap<u64, (String, Conn)>,
    /// When each of those was handed over, oldest first.
    pub(super) handed_at: VecDeque<(u64, Instant)>,
    /// It left a connection unanswered too long: it gets no more until it
    /// answers again.
    pub(super) hung: bool,
    /// A check of its oldest unanswered connection is on its way.
    pub(super) check_armed: bool,
    /// The servers (keys) it listens on.
    pub(super) keys: Vec<String>,
    /// A graceful stop began with `disconnect`; the signal follows.
    pub(super) disconnecting: bool,
    signalled: bool,
    /// The message "shutdown" went out already (before a `disconnect`).
    shutdown_sent: bool,
    pub(super) channel_open: bool,
    /// It was told once that herd keeps no handles it sends.
    warned_handle: bool,
    /// Round-robin connections handed to it so far (for metrics).
    pub(super) handed_over: u64,
}

impl Peer {
    pub(super) fn new() -> Peer {
        Peer {
            channel_open: true,
            ..Peer::default()
        }
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq += 1;
        s
    }
}

/// Is this a message of Node's internal protocol (never shown to the app)?
pub(super) fn is_internal(value: &Value) -> bool {
    value
        .get("cmd")
        .and_then(Value::as_str)
        .is_some_and(|c| c.starts_with("NODE_"))
}

pub(super) fn line(value: &Value) -> Vec<u8> {
    let mut l = serde_json::to_vec(value).expect("a JSON value serializes");
    l.push(b'\n');
    l
}

impl App {
    /// Handle an internal message from a worker.
    pub(super) fn node_message(&mut self, worker: WorkerId, value: Value) {
        match value.get("cmd").and_then(Value::as_str) {
            Some("NODE_HANDLE_ACK") => self.handle_acked(worker),
            Some("NODE_HANDLE_NACK") => self.handle_refused(worker),
            Some("NODE_HANDLE") => {
                // A worker sent us a handle (`process.send(msg, socket)`): we
                // keep no handles (the channel reader closed its fd), but must
                // acknowledge it or the worker holds back every later
                // message. The message itself is delivered.
                self.send_line(worker, line(&json!({"cmd": "NODE_HANDLE_ACK"})));
                if let Some(p) = self.procs.get_mut(&worker) {
                    if !std::mem::replace(&mut p.peer.warned_handle, true) {
                        let kind = value.get("type").and_then(Value::as_str).unwrap_or("?");
                        let slot = p.slot;
                        self.event(super::Event::Warning(format!(
                            "worker {slot} sent a handle ({kind}) with a message: herd keeps no \
                             handles, so it closed it and passed on the message alone (said once \
                             per worker)"
                        )));
                    }
                }
                if let Some(inner) = value.get("msg").cloned() {
                    self.message(worker, inner);
                }
            }
            Some("NODE_CLUSTER") => self.cluster_message(worker, &value),
            _ => {}
        }
    }

    fn cluster_message(&mut self, worker: WorkerId, msg: &Value) {
        let act = msg.get("act").and_then(Value::as_str);
        match act {
            Some("queryServer") => self.query_server(worker, msg),
            Some("listening") => {
                if !self.spec.ready.wait_ready {
                    self.input(Input::Ready { worker });
                }
            }
            Some("close") => {
                let key = msg
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                self.leave(worker, &key);
            }
            Some("exitedAfterDisconnect") => {
                // `cluster.worker.disconnect()`: it waits for our ack.
                self.reply(worker, msg, json!({}));
            }
            Some("online") | None => {
                if act.is_none() {
                    if let Some(seq) = msg.get("ack").and_then(Value::as_u64) {
                        let accepted = msg
                            .get("accepted")
                            .and_then(Value::as_bool)
                            .unwrap_or(false);
                        self.conn_answered(worker, seq, accepted);
                    }
                }
            }
            Some(_) => {}
        }
    }

    /// Reply to a request of the worker's (its `seq` becomes our `ack`).
    fn reply(&mut self, worker: WorkerId, request: &Value, mut body: Value) {
        let Some(peer) = self.procs.get_mut(&worker).map(|p| &mut p.peer) else {
            return;
        };
        let seq = peer.next_seq();
        body["cmd"] = json!("NODE_CLUSTER");
        body["ack"] = request.get("seq").cloned().unwrap_or(Value::Null);
        body["seq"] = json!(seq);
        self.send_line(worker, line(&body));
    }

    pub(super) fn send_line(&self, worker: WorkerId, line: Vec<u8>) {
        if let Some(p) = self.procs.get(&worker) {
            let _ = p.outbox.send(Outgoing { line, fd: None });
        }
    }

    fn query_server(&mut self, worker: WorkerId, msg: &Value) {
        // One socket per address/port/type/fd and per the worker's index of
        // it (a second `listen(0)` in one worker is a second socket), as
        // Node's primary keys them.
        let key = format!(
            "{}:{}:{}:{}:{}",
            msg.get("address").unwrap_or(&Value::Null),
            msg.get("port").unwrap_or(&Value::Null),
            msg.get("addressType").unwrap_or(&Value::Null),
            msg.get("fd").unwrap_or(&Value::Null),
            msg.get("index").unwrap_or(&Value::Null),
        );
        let data = msg.get("data").cloned().unwrap_or(Value::Null);
        let udp = is_udp(msg);
        if !self.servers.contains_key(&key) {
            match self.open_server(msg, data.clone()) {
                Ok(server) => {
                    self.servers.insert(key.clone(), server);
                    // UDP has no connections to hand over: always shared.
                    if self.spec.balance == Balance::RoundRobin && !udp {
                        self.start_accepting(&key);
                    }
                }
                Err(e) => return self.refuse_query(worker, msg, &key, &e),
            }
        }
        let server = &self.servers[&key];
        let data = server.data.clone();
        if server.round_robin.is_some() {
            let sockname = server.sockname.clone();
            self.uses(worker, &key);
            self.reply(
                worker,
                msg,
                json!({"errno": Value::Null, "key": key, "data": data, "sockname": sockname}),
            );
            if let Some(rr) = self
                .servers
                .get_mut(&key)
                .and_then(|s| s.round_robin.as_mut())
            {
                rr.rotation.add(worker);
            }
            self.flush_backlog(&key);
            return;
        }
        let fd = match self.server_fd(&key).map(|fd| fd.try_clone()) {
            Some(Ok(fd)) => Arc::new(fd),
            Some(Err(e)) => return self.refuse_query(worker, msg, &key, &e),
            None => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "herd has no open socket for it (closed with its slot)",
                );
                return self.refuse_query(worker, msg, &key, &e);
            }
        };
        self.uses(worker, &key);
        let Some(peer) = self.procs.get_mut(&worker).map(|p| &mut p.peer) else {
            return;
        };
        let seq = peer.next_seq();
        let inner = json!({
            "cmd": "NODE_CLUSTER", "errno": 0, "key": key,
            "ack": msg.get("seq").cloned().unwrap_or(Value::Null), "data": data, "seq": seq,
        });
        let kind = if udp { "dgram.Native" } else { "net.Native" };
        let body = json!({"cmd": "NODE_HANDLE", "type": kind, "msg": inner});
        self.send_handle(worker, Handoff::new(line(&body), fd, None));
    }

    /// The worker now uses server `key`.
    fn uses(&mut self, worker: WorkerId, key: &str) {
        if let Some(p) = self.procs.get_mut(&worker) {
            if !p.peer.keys.iter().any(|k| k == key) {
                p.peer.keys.push(key.to_string());
            }
        }
    }

    /// Answer a query with an error, so that the app's `listen()` or
    /// `bind()` fails with it (as under Node) instead of waiting for ever.
    fn refuse_query(&mut self, worker: WorkerId, msg: &Value, key: &str, e: &std::io::Error) {
        let errno = -e.raw_os_error().unwrap_or(match e.kind() {
            std::io::ErrorKind::NotFound => libc::EBADF,
            _ => libc::EINVAL,
        });
        let slot = self.procs.get(&worker).map(|p| p.slot).unwrap_or_default();
        self.event(super::Event::Warning(format!(
            "worker {slot} asked to listen on {}: {e}; told it so (errno {errno})",
            describe_query(msg)
        )));
        // Like Node's primary: a failed socket is forgotten, so a later
        // query tries again.
        if !self
            .procs
            .values()
            .any(|p| p.peer.keys.iter().any(|k| k == key))
        {
            self.servers.remove(key);
        }
        self.reply(
            worker,
            msg,
            json!({"errno": errno, "key": key, "data": Value::Null}),
        );
    }

    /// Close the sockets herd bound for workers that no worker uses any
    /// more (as Node's primary does); `--listen` sockets stay.
    fn release_unused(&mut self, keys: &[String]) {
        for key in keys {
            let owned = self.servers.get(key).is_some_and(|s| s.own.is_some());
            let used = self
                .procs
                .values()
                .any(|p| p.peer.keys.iter().any(|k| k == key));
            if owned && !used {
                self.servers.remove(key);
            }
        }
    }

    pub(super) fn server_fd(&self, key: &str) -> Option<&OwnedFd> {
        let s = self.servers.get(key)?;
        match (&s.own, s.listener) {
            (Some(fd), _) => Some(fd),
            (None, Some(i)) => self.listeners.get(i)?.fds.first()?.as_ref(),
            _ => None,
        }
    }

    /// Bind (or borrow) the socket a worker asked for.
    fn open_server(&mut self, msg: &Value, data: Value) -> std::io::Result<Server> {
        let address = msg.get("address").and_then(Value::as_str);
        let port = msg.get("port").and_then(Value::as_i64).unwrap_or(-1);
        let address_type = msg.get("addressType").and_then(Value::as_i64).unwrap_or(4);
        let fd = msg.get("fd").and_then(Value::as_i64);
        let invalid = || std::io::Error::from_raw_os_error(libc::EINVAL);
        // `listen({fd: N})`: the worker means the N-th inherited listener.
        if let Some(fd) = fd.filter(|&fd| fd >= 0) {
            let index = usize::try_from(fd - 3)
                .ok()
                .filter(|&i| i < self.listeners.len());
            return match index {
                Some(i) if self.listeners[i].fds.first().is_some_and(Option::is_some) => {
                    Ok(self.borrowed_server(i, data))
                }
                _ => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
            };
        }
        if is_udp(msg) {
            let v6 = msg.get("addressType").and_then(Value::as_str) == Some("udp6");
            let ip: std::net::IpAddr = match address {
                Some(a) => a.parse().map_err(|_| invalid())?,
                None if v6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
                None => std::net::Ipv4Addr::UNSPECIFIED.into(),
            };
            let port = u16::try_from(port).map_err(|_| invalid())?;
            // libuv's UV_UDP_IPV6ONLY (1) and UV_UDP_REUSEADDR (4).
            let flags = msg.get("flags").and_then(Value::as_i64).unwrap_or(0);
            let fd = socket::bind_udp((ip, port).into(), flags & 1 != 0, flags & 4 != 0)?;
            let bound = socket::local_addr(&fd).unwrap_or(ListenAddr::Tcp((ip, port).into()));
            self.event(super::Event::Listening {
                name: "udp, shared by the workers".into(),
                addr: bound,
            });
            return Ok(Server {
                own: Some(fd),
                listener: None,
                unix_path: None,
                data,
                sockname: Value::Null,
                round_robin: None,
            });
        }
        let wanted: Option<ListenAddr> = if address_type == -1 || (port < 0 && address.is_some()) {
            address.map(|p| ListenAddr::Unix(p.into()))
        } else {
            let port = u16::try_from(port).map_err(|_| invalid())?;
            let ip: std::net::IpAddr = match address {
                Some(a) => a.parse().map_err(|_| invalid())?,
                // No address: every interface, dual-stack, as Node does.
                None => std::net::Ipv6Addr::UNSPECIFIED.into(),
            };
            Some(ListenAddr::Tcp((ip, port).into()))
        };
        let Some(addr) = wanted else {
            return Err(invalid());
        };
        // A matching `--listen` socket is the one the operator wants used.
        if let Some(i) = self.matching_listener(&addr) {
            return Ok(self.borrowed_server(i, data));
        }
        let fd = match socket::bind_listener(&addr, false) {
            Err(e) if matches!(&addr, ListenAddr::Tcp(a) if a.ip().is_unspecified() && a.is_ipv6()) =>
            {
                // No IPv6 on this machine: fall back to IPv4, as Node does.
                let v4 =
                    ListenAddr::Tcp((std::net::Ipv4Addr::UNSPECIFIED, addr_port(&addr)).into());
                socket::bind_listener(&v4, false).map_err(|_| e)?
            }
            other => other?,
        };
        let bound = socket::local_addr(&fd).unwrap_or(addr);
        self.event(super::Event::Listening {
            name: "node".into(),
            addr: bound.clone(),
        });
        let unix_path = match &bound {
            ListenAddr::Unix(path) => Some(path.clone()),
            ListenAddr::Tcp(_) => None,
        };
        Ok(Server {
            own: Some(fd),
            listener: None,
            unix_path,
            data,
            sockname: sockname(&bound),
            round_robin: None,
        })
    }

    pub(super) fn borrowed_server(&self, i: usize, data: Value) -> Server {
        let sockname = sockname(&self.listeners[i].addr);
        Server {
            own: None,
            listener: Some(i),
            unix_path: None,
            data,
            sockname,
            round_robin: None,
        }
    }

    fn matching_listener(&self, wanted: &ListenAddr) -> Option<usize> {
        self.listeners.iter().position(|l| match (&l.addr, wanted) {
            (ListenAddr::Unix(a), ListenAddr::Unix(b)) => a == b,
            (ListenAddr::Tcp(a), ListenAddr::Tcp(b)) => {
                a.port() == b.port() && (b.ip().is_unspecified() || a.ip() == b.ip())
            }
            _ => false,
        })
    }

    /// Send a handle message. Handles are not held back until the previous
    /// one is acknowledged (Node's own sender does that): the kernel never
    /// merges two `SCM_RIGHTS` sends into one read, so the receiver sees at
    /// most one handle message per read and pairs it with its fd, and the
    /// hand-over is pipelined instead of costing a round trip per connection.
    pub(super) fn send_handle(&mut self, worker: WorkerId, handoff: Handoff) {
        let Some(p) = self.procs.get_mut(&worker) else {
            return;
        };
        if handoff.fd.is_none() {
            return;
        }
        let _ = p.outbox.send(Outgoing {
            line: handoff.line.clone(),
            fd: handoff.fd.clone(),
        });
        p.peer.handles_in_flight.push_back(handoff);
    }

    fn handle_acked(&mut self, worker: WorkerId) {
        if let Some(p) = self.procs.get_mut(&worker) {
            p.peer.handles_in_flight.pop_front();
        }
    }

    /// The worker got a handle message without its fd: send it again, and
    /// after a few tries give a connection to another worker.
    fn handle_refused(&mut self, worker: WorkerId) {
        let Some(p) = self.procs.get_mut(&worker) else {
            return;
        };
        let Some(mut handoff) = p.peer.handles_in_flight.pop_front() else {
            return;
        };
        handoff.tries += 1;
        if handoff.tries <= HANDLE_RETRIES {
            self.send_handle(worker, handoff);
            return;
        }
        match handoff.conn {
            Some((key, seq)) => self.conn_undelivered(worker, &key, seq),
            None => self.socket_undelivered(worker, &handoff.line),
        }
    }

    /// A listening socket never reached the worker: answer its query with an
    /// error, so that its `listen()` fails instead of waiting for ever.
    fn socket_undelivered(&mut self, worker: WorkerId, line_sent: &[u8]) {
        let Ok(sent) = serde_json::from_slice::<Value>(line_sent) else {
            return;
        };
        let key = sent["msg"]["key"].as_str().unwrap_or_default().to_string();
        let query = json!({"seq": sent["msg"]["ack"].clone()});
        let slot = self.procs.get(&worker).map(|p| p.slot).unwrap_or_default();
        self.event(super::Event::Warning(format!(
            "worker {slot} did not receive its listening socket after {HANDLE_RETRIES} tries; \
             told it so (errno -{})",
            libc::EIO
        )));
        self.reply(
            worker,
            &query,
            json!({"errno": -libc::EIO, "key": key, "data": Value::Null}),
        );
        self.leave(worker, &key);
    }

    /// The worker closed its server `key` (or went away): it leaves the rotation.
    fn leave(&mut self, worker: WorkerId, key: &str) {
        if let Some(rr) = self
            .servers
            .get_mut(key)
            .and_then(|s| s.round_robin.as_mut())
        {
            rr.rotation.remove(worker);
        }
        let Some(p) = self.procs.get_mut(&worker) else {
            return;
        };
        p.peer.keys.retain(|k| k != key);
        if p.peer.disconnecting && p.peer.keys.is_empty() {
            self.signal_after(worker, SETTLE);
        }
        self.release_unused(&[key.to_string()]);
    }

    /// The worker's channel closed: it can take no more connections.
    pub(super) fn channel_closed(&mut self, worker: WorkerId) {
        let Some(p) = self.procs.get_mut(&worker) else {
            return;
        };
        p.peer.channel_open = false;
        let keys = std::mem::take(&mut p.peer.keys);
        let disconnecting = p.peer.disconnecting;
        for key in &keys {
            if let Some(rr) = self
                .servers
                .get_mut(key)
                .and_then(|s| s.round_robin.as_mut())
            {
                rr.rotation.remove(worker);
            }
        }
        self.requeue(worker);
        if disconnecting {
            self.signal_after(worker, SETTLE);
        }
        // Its sockets stay open (unlike under Node's primary): a worker that
        // died is replaced, and until its successor asks for them again the
        // kernel queues new clients instead of refusing them. Only a
        // deliberate `close` (a server.close() in the app) releases one.
    }

    /// Begin the graceful stop of a worker that speaks the cluster protocol,
    /// so that it takes no new connection before the kill signal:
    /// - round-robin: it leaves the rotation at once; the signal follows once
    ///   the connections already handed to it were taken, after the settle
    ///   time (no `disconnect`: the app's own `server.close()` works as usual);
    /// - shared (Node): the cluster `disconnect` makes it close its servers;
    ///   the signal follows once it has, after a short settle time.
    ///
    /// Returns false when neither applies (the caller signals at once).
    pub(super) fn node_stop(&mut self, worker: WorkerId) -> bool {
        let round_robin = self.spec.balance == Balance::RoundRobin;
        let node = self.spec.kind == crate::config::WorkerKind::Node;
        let Some(p) = self.procs.get_mut(&worker) else {
            return false;
        };
        if !p.peer.channel_open {
            return false;
        }
        if round_robin {
            p.peer.disconnecting = true;
            let waiting = !p.peer.unacked.is_empty();
            let keys = p.peer.keys.clone();
            for key in &keys {
                if let Some(rr) = self
                    .servers
                    .get_mut(key)
                    .and_then(|s| s.round_robin.as_mut())
                {
                    rr.rotation.remove(worker);
                }
            }
            // Requests already on their way (a keep-alive client's next
            // one) get the settle time to arrive before the app drains; a
            // worker still holding handed connections gets the signal once
            // it took them (`conn_answered`), or at the machine's settle
            // bound (DISCONNECT_GRACE).
            if !waiting {
                self.signal_after(worker, SETTLE);
            }
            return true;
        }
        if !node || p.peer.keys.is_empty() {
            return false;
        }
        p.peer.disconnecting = true;
        let seq = p.peer.next_seq();
        let shutdown_message = self.spec.stop.shutdown_with_message;
        if shutdown_message {
            // Before disconnect, which closes the channel.
            self.send_line(worker, b"\"shutdown\"\n".to_vec());
            if let Some(p) = self.procs.get_mut(&worker) {
                p.peer.shutdown_sent = true;
            }
        }
        self.send_line(
            worker,
            line(&json!({"cmd": "NODE_CLUSTER", "act": "disconnect", "seq": seq})),
        );
        if shutdown_message {
            // The message is the stop signal: the kill timeout starts now.
            self.input(Input::StopSignalled { worker });
        }
        // The signal follows once it closed its servers, or at the
        // machine's settle bound (DISCONNECT_GRACE).
        true
    }

    pub(super) fn signal_after(&self, worker: WorkerId, after: Duration) {
        let tx = self.internal.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Internal::StopSignal { worker });
        });
    }

    /// The delayed half of a Node worker's graceful stop.
    pub(super) fn stop_signal(&mut self, worker: WorkerId) {
        let Some(p) = self.procs.get_mut(&worker) else {
            return;
        };
        if p.peer.signalled {
            return;
        }
        p.peer.signalled = true;
        if !p.peer.shutdown_sent {
            self.signal_stop(worker);
        }
        self.input(Input::StopSignalled { worker });
    }
}

fn addr_port(addr: &ListenAddr) -> u16 {
    match addr {
        ListenAddr::Tcp(a) => a.port(),
        ListenAddr::Unix(_) => 0,
    }
}

/// Node's `sockname` object for a round-robin reply.
fn sockname(addr: &ListenAddr) -> Value {
    match addr {
        ListenAddr::Tcp(a) => json!({
            "address": a.ip().to_string(),
            "family": if a.is_ipv4() { "IPv4" } else { "IPv6" },
            "port": a.port(),
        }),
        ListenAddr::Unix(_) => Value::Null,
    }
}

/// Is this query for a UDP socket (`dgram`)?
fn is_udp(msg: &Value) -> bool {
    matches!(
        msg.get("addressType").and_then(Value::as_str),
        Some("udp4" | "udp6")
    )
}

fn describe_query(msg: &Value) -> String {
    let address = msg.get("address").and_then(Value::as_str).unwrap_or("*");
    match msg.get("port").and_then(Value::as_i64) {
        Some(p) if p >= 0 => format!("{address}:{p}"),
        _ => address.to_string(),
    }
}
