//! herd as a Node.js cluster primary, and the round-robin hand-over.
//!
//! A Node worker started with `NODE_UNIQUE_ID` and an IPC channel believes it
//! is a `cluster` worker: when the app calls `server.listen(8000)` it asks its
//! primary for the socket (`queryServer`). herd binds one socket per distinct
//! address/port/type/fd (or reuses a matching `--listen` socket) and either
//! sends the listening handle (`shared`, Node's SCHED_NONE) or accepts
//! connections itself and hands each one over (`round-robin`, SCHED_RR, with
//! `newconn`). Everything is JSON lines on the channel; handles travel as
//! `NODE_HANDLE` messages with `SCM_RIGHTS`, one at a time per worker, each
//! waiting for the worker's `NODE_HANDLE_ACK`.
//!
//! Round-robin is also how herd feeds Rust workers built on `herd-cluster`:
//! they speak the same `newconn` subset, keyed by listener name.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{App, Internal, Outgoing};
use crate::config::{Balance, ListenAddr};
use crate::machine::{Input, WorkerId};
use crate::os::socket;
use crate::rotation::Rotation;

/// After a Node worker closed its servers, wait this long before the kill
/// signal, so connections it accepted a moment ago can deliver their request
/// before the app's shutdown handler closes idle sockets.
const SETTLE: Duration = Duration::from_millis(200);
/// Send the kill signal at the latest this long after `disconnect`, even if
/// the worker never confirmed it closed its servers (the machine's
/// `settle_timeout`, which asks for the signal with `Action::Signal`).
pub(super) const DISCONNECT_GRACE: Duration = Duration::from_secs(1);
/// A worker that has not answered for a connection handed to it this long
/// is busy (a CPU-bound handler, like the tutorials' `/check`): it gets no
/// more while another worker can take them. Node acknowledges a connection
/// within microseconds when its event loop is free.
const STUCK: Duration = Duration::from_millis(50);
/// A handle the worker refuses (NACK) is sent again this many times.
const HANDLE_RETRIES: u8 = 3;

/// A listening socket shared by the workers that asked for it.
pub(super) struct Server {
    /// The socket; `None` when it is one of the app's `--listen` sockets.
    own: Option<OwnedFd>,
    /// Index into the app's `--listen` listeners when borrowed from there.
    listener: Option<usize>,
    /// The first worker's `data`, echoed to every worker (TLS servers need it).
    data: Value,
    sockname: Value,
    round_robin: Option<RoundRobin>,
}

pub(super) struct RoundRobin {
    pub(super) rotation: Rotation<WorkerId>,
    /// Connections accepted while no worker could take one.
    backlog: VecDeque<Arc<OwnedFd>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// A handle message on its way to a worker.
pub(super) struct Handoff {
    line: Vec<u8>,
    fd: Arc<OwnedFd>,
    tries: u8,
    /// For a connection: its round-robin key and `newconn` seq.
    conn: Option<(String, u64)>,
}

/// A Node (or herd-cluster) worker's side of the protocol.
#[derive(Default)]
pub(super) struct Peer {
    /// Our next outgoing `seq`.
    seq: u64,
    /// Handles sent and not yet acknowledged, in the order sent (the worker
    /// acknowledges them in that order).
    handles_in_flight: VecDeque<Handoff>,
    /// Connections handed over whose `accepted` reply has not come: by seq.
    pub(super) unacked: HashMap<u64, (String, Arc<OwnedFd>)>,
    /// When each of those was handed over, oldest first.
    handed_at: VecDeque<(u64, Instant)>,
    /// The servers (keys) it listens on.
    keys: Vec<String>,
    /// A graceful stop began with `disconnect`; the signal follows.
    disconnecting: bool,
    signalled: bool,
    /// The message "shutdown" went out already (before a `disconnect`).
    shutdown_sent: bool,
    pub(super) channel_open: bool,
}

impl Peer {
    pub(super) fn new() -> Peer {
        Peer {
            channel_open: true,
            ..Peer::default()
        }
    }

    /// How long the oldest connection handed over has waited for its answer.
    fn oldest_unacked(&self, now: Instant) -> Option<Duration> {
        self.handed_at
            .iter()
            .find(|(seq, _)| self.unacked.contains_key(seq))
            .map(|(_, at)| now.saturating_duration_since(*at))
    }

    /// Take a connection's answer: forget when it was handed over.
    fn answered(&mut self, seq: u64) -> Option<(String, Arc<OwnedFd>)> {
        let conn = self.unacked.remove(&seq)?;
        while self
            .handed_at
            .front()
            .is_some_and(|(s, _)| !self.unacked.contains_key(s))
        {
            self.handed_at.pop_front();
        }
        Some(conn)
    }

    fn next_seq(&mut self) -> u64 {
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

fn line(value: &Value) -> Vec<u8> {
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
                // keep no handles, but must acknowledge it or the worker holds
                // back every later message.
                self.send_line(worker, line(&json!({"cmd": "NODE_HANDLE_ACK"})));
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
        let key = format!(
            "{}:{}:{}:{}",
            msg.get("address").unwrap_or(&Value::Null),
            msg.get("port").unwrap_or(&Value::Null),
            msg.get("addressType").unwrap_or(&Value::Null),
            msg.get("fd").unwrap_or(&Value::Null),
        );
        let data = msg.get("data").cloned().unwrap_or(Value::Null);
        if !self.servers.contains_key(&key) {
            match self.open_server(msg, data.clone()) {
                Ok(server) => {
                    self.servers.insert(key.clone(), server);
                    if self.spec.balance == Balance::RoundRobin {
                        self.start_accepting(&key);
                    }
                }
                Err(e) => {
                    let errno = -e.raw_os_error().unwrap_or(libc::EINVAL);
                    let slot = self.procs.get(&worker).map(|p| p.slot).unwrap_or_default();
                    self.event(super::Event::Warning(format!(
                        "worker {slot} asked to listen on {}: {e}; told it so (errno {errno})",
                        describe_query(msg)
                    )));
                    self.reply(
                        worker,
                        msg,
                        json!({"errno": errno, "key": key, "data": Value::Null}),
                    );
                    return;
                }
            }
        }
        let server = &self.servers[&key];
        let data = server.data.clone();
        if let Some(p) = self.procs.get_mut(&worker) {
            if !p.peer.keys.contains(&key) {
                p.peer.keys.push(key.clone());
            }
        }
        if server.round_robin.is_some() {
            let sockname = server.sockname.clone();
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
        } else {
            let fd = match self.server_fd(&key).map(|fd| fd.try_clone()) {
                Some(Ok(fd)) => Arc::new(fd),
                _ => return,
            };
            let Some(peer) = self.procs.get_mut(&worker).map(|p| &mut p.peer) else {
                return;
            };
            let seq = peer.next_seq();
            let inner = json!({
                "cmd": "NODE_CLUSTER", "errno": 0, "key": key,
                "ack": msg.get("seq").cloned().unwrap_or(Value::Null), "data": data, "seq": seq,
            });
            let body = json!({"cmd": "NODE_HANDLE", "type": "net.Native", "msg": inner});
            self.send_handle(
                worker,
                Handoff {
                    line: line(&body),
                    fd,
                    tries: 0,
                    conn: None,
                },
            );
        }
    }

    fn server_fd(&self, key: &str) -> Option<&OwnedFd> {
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
        // `listen({fd: N})`: the worker means the N-th inherited listener.
        let wanted: Option<ListenAddr> = if let Some(fd) = fd.filter(|&fd| fd >= 0) {
            let index = usize::try_from(fd - 3)
                .ok()
                .filter(|&i| i < self.listeners.len());
            return match index {
                Some(i) => Ok(self.borrowed_server(i, data)),
                None => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
            };
        } else if address_type == -1 || (port < 0 && address.is_some()) {
            address.map(|p| ListenAddr::Unix(p.into()))
        } else {
            let port =
                u16::try_from(port).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
            let ip: std::net::IpAddr = match address {
                Some(a) => a
                    .parse()
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?,
                // No address: every interface, dual-stack, as Node does.
                None => std::net::Ipv6Addr::UNSPECIFIED.into(),
            };
            Some(ListenAddr::Tcp((ip, port).into()))
        };
        let Some(addr) = wanted else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
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
        Ok(Server {
            own: Some(fd),
            listener: None,
            data,
            sockname: sockname(&bound),
            round_robin: None,
        })
    }

    fn borrowed_server(&self, i: usize, data: Value) -> Server {
        let sockname = sockname(&self.listeners[i].addr);
        Server {
            own: None,
            listener: Some(i),
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

    /// Start herd's accept loop for a round-robin server.
    fn start_accepting(&mut self, key: &str) {
        let Some(fd) = self.server_fd(key).and_then(|fd| fd.try_clone().ok()) else {
            return;
        };
        let tx = self.internal.clone();
        let key_owned = key.to_string();
        let accept_task = tokio::spawn(accept_loop(fd, key_owned, tx));
        if let Some(s) = self.servers.get_mut(key) {
            s.round_robin = Some(RoundRobin {
                rotation: Rotation::default(),
                backlog: VecDeque::new(),
                accept_task,
            });
        }
    }

    /// Round-robin servers for the app's own `--listen` sockets (Rust workers
    /// built on herd-cluster): keyed by listener name, every worker a member.
    pub(super) fn open_listener_servers(&mut self) {
        for i in 0..self.listeners.len() {
            let key = self.listeners[i].name.clone();
            if !self.servers.contains_key(&key) {
                let server = self.borrowed_server(i, Value::Null);
                self.servers.insert(key.clone(), server);
                self.start_accepting(&key);
            }
        }
    }

    /// A generic round-robin worker joins every listener's rotation.
    pub(super) fn join_listener_servers(&mut self, worker: WorkerId) {
        let keys: Vec<String> = self.listeners.iter().map(|l| l.name.clone()).collect();
        for key in keys {
            if let Some(rr) = self
                .servers
                .get_mut(&key)
                .and_then(|s| s.round_robin.as_mut())
            {
                rr.rotation.add(worker);
            }
            if let Some(p) = self.procs.get_mut(&worker) {
                p.peer.keys.push(key);
            }
        }
    }

    /// A connection herd accepted for `key`: hand it to a worker, or hold it
    /// until one can take it.
    pub(super) fn dispatch(&mut self, key: &str, conn: Arc<OwnedFd>) {
        let Some(server) = self.servers.get_mut(key) else {
            return;
        };
        let Some(rr) = server.round_robin.as_mut() else {
            return;
        };
        let machine = &self.machine;
        let procs = &self.procs;
        let now = Instant::now();
        #[derive(PartialEq, PartialOrd)]
        enum Want {
            /// Ready, and taking its connections.
            Ready,
            /// Ready, but sitting on a connection for a while (blocked on CPU?).
            Stuck,
            /// Listening, not ready yet.
            Listening,
        }
        let load = |w: WorkerId, want: Want| {
            let p = procs.get(&w)?;
            let up = !p.peer.disconnecting && p.peer.channel_open && !machine.is_stopping(w);
            let stuck = p.peer.oldest_unacked(now).is_some_and(|age| age >= STUCK);
            let class = match (machine.accepting(w), stuck) {
                (true, false) => Want::Ready,
                (true, true) => Want::Stuck,
                (false, _) => Want::Listening,
            };
            // Fewest unanswered connections first; on a tie, the worker that
            // answered most recently (its oldest unanswered one is youngest):
            // a worker that just blocked loses the tie before it looks stuck.
            let age = p.peer.oldest_unacked(now).unwrap_or_default();
            (up && class <= want).then_some((p.peer.unacked.len(), age))
        };
        // The least loaded of the workers that take their connections; a
        // worker that sits on one is skipped while anyone else can take it;
        // when none is ready, one that listens but has not said it is ready
        // (as a shared socket would let it accept), rather than holding the
        // connection for ever.
        let picked = rr
            .rotation
            .pick(|w| load(w, Want::Ready))
            .or_else(|| rr.rotation.pick(|w| load(w, Want::Stuck)))
            .or_else(|| rr.rotation.pick(|w| load(w, Want::Listening)));
        let Some(worker) = picked else {
            rr.backlog.push_back(conn);
            return;
        };
        let Some(peer) = self.procs.get_mut(&worker).map(|p| &mut p.peer) else {
            return;
        };
        let seq = peer.next_seq();
        peer.unacked.insert(seq, (key.to_string(), conn.clone()));
        peer.handed_at.push_back((seq, now));
        let body = json!({
            "cmd": "NODE_HANDLE", "type": "net.Native",
            "msg": {"cmd": "NODE_CLUSTER", "act": "newconn", "key": key, "seq": seq},
        });
        self.send_handle(
            worker,
            Handoff {
                line: line(&body),
                fd: conn,
                tries: 0,
                conn: Some((key.to_string(), seq)),
            },
        );
    }

    /// Hand held connections to workers that can now take them.
    pub(super) fn flush_backlog(&mut self, key: &str) {
        loop {
            let Some(rr) = self
                .servers
                .get_mut(key)
                .and_then(|s| s.round_robin.as_mut())
            else {
                return;
            };
            let Some(conn) = rr.backlog.pop_front() else {
                return;
            };
            let before = rr.backlog.len();
            self.dispatch(key, conn);
            let after = self
                .servers
                .get(key)
                .and_then(|s| s.round_robin.as_ref())
                .map_or(0, |rr| rr.backlog.len());
            if after > before {
                return; // nobody could take it: it went back to the queue
            }
        }
    }

    pub(super) fn flush_all_backlogs(&mut self) {
        let keys: Vec<String> = self
            .servers
            .iter()
            .filter(|(_, s)| {
                s.round_robin
                    .as_ref()
                    .is_some_and(|rr| !rr.backlog.is_empty())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.flush_backlog(&key);
        }
    }

    fn conn_answered(&mut self, worker: WorkerId, seq: u64, accepted: bool) {
        let Some(p) = self.procs.get_mut(&worker) else {
            return;
        };
        let Some((key, conn)) = p.peer.answered(seq) else {
            return;
        };
        let drained = p.peer.disconnecting && p.peer.unacked.is_empty();
        if accepted {
            drop(conn); // the worker has its own copy now
        } else {
            self.dispatch(&key, conn);
        }
        self.flush_backlog(&key);
        if drained {
            // A stopping round-robin worker took its last connection.
            self.signal_after(worker, SETTLE);
        }
    }

    /// Send a handle message. Handles are not held back until the previous
    /// one is acknowledged (Node's own sender does that): the kernel never
    /// merges two `SCM_RIGHTS` sends into one read, so the receiver sees at
    /// most one handle message per read and pairs it with its fd, and the
    /// hand-over is pipelined instead of costing a round trip per connection.
    fn send_handle(&mut self, worker: WorkerId, handoff: Handoff) {
        let Some(p) = self.procs.get_mut(&worker) else {
            return;
        };
        let _ = p.outbox.send(Outgoing {
            line: handoff.line.clone(),
            fd: Some(handoff.fd.clone()),
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
        if let Some((key, seq)) = handoff.conn {
            if let Some((_, conn)) = p.peer.answered(seq) {
                self.dispatch(&key, conn);
            }
        }
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
    }

    /// Connections handed to a worker that never took them go to another.
    pub(super) fn requeue(&mut self, worker: WorkerId) {
        let Some(p) = self.procs.get_mut(&worker) else {
            return;
        };
        p.peer.handles_in_flight.clear();
        p.peer.handed_at.clear();
        let unacked: Vec<(String, Arc<OwnedFd>)> = p.peer.unacked.drain().map(|(_, c)| c).collect();
        for (key, conn) in unacked {
            self.dispatch(&key, conn);
        }
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

    fn signal_after(&self, worker: WorkerId, after: Duration) {
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

fn describe_query(msg: &Value) -> String {
    let address = msg.get("address").and_then(Value::as_str).unwrap_or("*");
    match msg.get("port").and_then(Value::as_i64) {
        Some(p) if p >= 0 => format!("{address}:{p}"),
        _ => address.to_string(),
    }
}

/// herd's accept loop for one round-robin socket (TCP or Unix alike): one
/// `accept4` per connection, which arrives nonblocking and close-on-exec and
/// goes to the app task.
async fn accept_loop(fd: OwnedFd, key: String, tx: tokio::sync::mpsc::UnboundedSender<Internal>) {
    use std::os::fd::{AsRawFd, FromRawFd};
    use tokio::io::unix::AsyncFd;
    // SAFETY: the OwnedFd is moved in, so the fd stays open and the same for
    // as long as the AsyncFd lives.
    let registered = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
    let Ok(listener) = registered else {
        return;
    };
    let flags =
        nix::sys::socket::SockFlag::SOCK_NONBLOCK | nix::sys::socket::SockFlag::SOCK_CLOEXEC;
    loop {
        let Ok(mut ready) = listener.readable().await else {
            return;
        };
        let accepted = ready.try_io(|fd| {
            nix::sys::socket::accept4(fd.as_raw_fd(), flags)
                // SAFETY: accept4 returned a new fd that nothing else owns.
                .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) })
                .map_err(std::io::Error::from)
        });
        match accepted {
            Ok(Ok(conn)) => {
                if tx
                    .send(Internal::Accepted {
                        key: key.clone(),
                        conn,
                    })
                    .is_err()
                {
                    return;
                }
            }
            // The client gave up before we accepted: nothing to do.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
            Ok(Err(_)) => accept_backoff().await,
            Err(_would_block) => {}
        }
    }
}

/// Out of fds or memory: back off a little instead of spinning.
async fn accept_backoff() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}
