//! herd as a cluster primary, for workers that speak Node's cluster protocol
//! on their channel: Node apps, and Rust apps built on `herd-cluster`.
//!
//! A Node worker started with `NODE_UNIQUE_ID` and a channel believes it is
//! a `cluster` worker: when the app calls `server.listen(8000)` or
//! `socket.bind(41234)` it asks its primary for the socket (`queryServer`).
//! herd serves each *server* (by its server key) with one listener: one of
//! the app's own when it matches (or when the app asks for an inherited fd),
//! else one bound for it, as Node's primary does. Then it either sends the
//! socket (`shared`, Node's SCHED_NONE; UDP sockets always, in every balance
//! mode, as under Node) or accepts client connections itself and hands each
//! over (`round-robin`, SCHED_RR: [`round_robin`]). A listener herd bound for
//! workers is closed once no worker uses its server any more. Apps that pass
//! `exclusive: true` (or `reusePort`) bind their own socket and never ask, as
//! under Node; herd then is not told when they listen.
//!
//! Stopping a cluster worker without losing a connection: first the cluster
//! `disconnect` (the worker closes its servers, so the kernel stops queueing
//! connections for it; in round-robin it leaves the rotation at once), then,
//! once it has closed them and a short settle time has passed, the stop
//! signal. That phase is bounded by the machine's settle timeout
//! ([`DISCONNECT_GRACE`]; `Action::Signal` cuts it short), and the kill
//! timeout counts only from the signal (`Input::StopSignalled`).
//!
//! Owns (plain data, [`Cluster`]): the servers (key → listener, Node's
//! `data`; which listener serves a query: `servers`), what it knows of each
//! worker ([`ClusterWorker`]: the servers it listens on, our message
//! numbers, the handle messages it has not acknowledged, how far its
//! graceful stop has come), and the round-robin state (`round_robin`). It
//! changes nothing else: the rest are [`Effect`]s. The messages themselves
//! are `protocol`'s.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub(crate) mod effect;
pub(crate) mod picker;
pub(crate) mod protocol;
pub(crate) mod round_robin;
mod servers;

pub(crate) use effect::{Effect, Effects};
use protocol::{Incoming, ServerKey, ServerQuery};
use round_robin::{AnswerCheck, ClientConn, Handover, RoundRobin, Standing};
use servers::{borrowed, Server};

use super::fd::Fd;
use super::listeners::{ListenerId, Listeners, Origin};
use super::timers::Wake;
use crate::clock::MonoTime;
use crate::config::{AppSpec, Balance, WorkerKind};
use crate::machine::{Input, Machine, Slot, WorkerId};

/// After a cluster worker closed its servers, wait this long before the
/// stop signal, so connections it accepted a moment ago can deliver their
/// request before the app's shutdown handler closes idle sockets.
pub(crate) const SETTLE: Duration = Duration::from_millis(200);
/// Send the stop signal at the latest this long after `disconnect`, even if
/// the worker never confirmed it closed its servers (the machine's
/// `settle_timeout`, which asks for the signal with `Action::Signal`).
pub(crate) const DISCONNECT_GRACE: Duration = Duration::from_secs(1);
/// A handle the worker refuses (NACK) is sent again this many times.
const HANDLE_RETRIES: u8 = 3;
/// The most servers (distinct `listen()`s) an app's workers may have herd
/// open: each is a socket in herd's process, and a worker asking for more
/// in a loop would otherwise run herd out of fds (a soft limit of 1024 is
/// common); Node apps listen on a few.
pub(crate) const MAX_SERVERS: usize = 256;
/// The most listening sockets sent to one worker and not yet acknowledged
/// (`NODE_HANDLE_ACK`, which Node sends as each arrives): herd keeps a copy
/// of each until then, so a worker that asks again and again and never
/// acknowledges could make herd hold fds without end. As many as servers:
/// an app within that limit is never refused for acknowledging late.
const MAX_UNACKNOWLEDGED_SOCKETS: usize = MAX_SERVERS;

/// What the cluster primary takes from the app's definition.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct ClusterConfig {
    /// `--balance round-robin`.
    round_robin: bool,
    /// The workers are Node programs (else: any program, herd-cluster ones
    /// among them).
    node: bool,
    /// Ready on `process.send('ready')`, not on `listening`.
    wait_ready: bool,
    /// Stopped by the message "shutdown" instead of the signal.
    shutdown_with_message: bool,
}

impl ClusterConfig {
    pub(crate) fn of(spec: &AppSpec) -> ClusterConfig {
        ClusterConfig {
            round_robin: spec.balance == Balance::RoundRobin,
            node: spec.kind == WorkerKind::Node,
            wait_ready: spec.ready.wait_ready,
            shutdown_with_message: spec.stop.shutdown_with_message,
        }
    }

    /// Round-robin for workers that are not Node: herd accepts on the app's
    /// own listeners and hands the connections over the channel.
    pub(crate) fn listener_round_robin(&self) -> bool {
        self.round_robin && !self.node
    }
}

/// What the cluster primary knows of one worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ClusterWorker {
    slot: Slot,
    /// Our next outgoing `seq`.
    seq: u64,
    /// Handle messages sent and not acknowledged yet, in the order sent (the
    /// worker acknowledges them in that order).
    sent_handles: VecDeque<SentHandle>,
    /// The servers it listens on.
    servers: Vec<ServerKey>,
    channel_open: bool,
    /// It was told once that herd keeps no handles it sends.
    warned_handle: bool,
    /// A graceful stop began (`disconnect`, or leaving the rotation); the
    /// signal follows.
    disconnecting: bool,
    /// The stop signal went out.
    signalled: bool,
    /// The message "shutdown" went out already (before a `disconnect`).
    shutdown_sent: bool,
}

impl ClusterWorker {
    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq += 1;
        s
    }
}

/// A handle message on its way to a worker, until it acknowledges it.
#[derive(Debug, Serialize, Deserialize)]
struct SentHandle {
    line: String,
    /// `None` once herd gave up on a client connection (it is not sent again).
    #[serde(with = "crate::supervisor::fd::shared_opt")]
    fd: Option<Arc<Fd>>,
    tries: u8,
    carries: Carried,
}

/// What a handle message hands over.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Carried {
    /// The listening socket for server `key`, answering the query `ack`.
    Listener { key: ServerKey, ack: Value },
    /// A client connection for server `key` (round-robin), numbered `seq`.
    Connection { key: ServerKey, seq: u64 },
}

/// What a cluster call may read and change besides the cluster itself.
pub(crate) struct Cx<'a> {
    pub(crate) machine: &'a Machine,
    pub(crate) listeners: &'a mut Listeners,
    pub(crate) fx: &'a mut Effects,
}

/// The cluster primary of one app.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Cluster {
    config: ClusterConfig,
    servers: BTreeMap<ServerKey, Server>,
    workers: BTreeMap<WorkerId, ClusterWorker>,
    round_robin: RoundRobin,
}

/// Round-robin's view of the rest of the cluster (see [`Handover`]).
struct Hands<'a> {
    workers: &'a mut BTreeMap<WorkerId, ClusterWorker>,
    machine: &'a Machine,
    fx: &'a mut Effects,
}

impl Handover for Hands<'_> {
    fn standing(&self, worker: WorkerId) -> Option<Standing> {
        let w = self.workers.get(&worker)?;
        Some(Standing {
            may_take: !w.disconnecting && w.channel_open && !self.machine.is_stopping(worker),
            ready: self.machine.accepting(worker),
        })
    }

    fn hand(&mut self, worker: WorkerId, key: &ServerKey, fd: &Arc<Fd>) -> Option<u64> {
        let w = self.workers.get_mut(&worker)?;
        let seq = w.next_seq();
        let handle = SentHandle {
            line: String::from_utf8(protocol::new_connection(key, seq)).expect("JSON is UTF-8"),
            fd: Some(fd.clone()),
            tries: 0,
            carries: Carried::Connection {
                key: key.clone(),
                seq,
            },
        };
        send_handle(w, worker, handle, self.fx);
        Some(seq)
    }

    fn effects(&mut self) -> &mut Effects {
        self.fx
    }
}

/// Send a handle message. Handles are not held back until the previous one
/// is acknowledged (Node's own sender does that): the kernel never merges
/// two `SCM_RIGHTS` sends into one read, so the receiver sees at most one
/// handle message per read and pairs it with its fd, and the hand-over is
/// pipelined instead of costing a round trip per connection.
fn send_handle(w: &mut ClusterWorker, worker: WorkerId, handle: SentHandle, fx: &mut Effects) {
    let Some(fd) = handle.fd.clone() else {
        return;
    };
    fx.push(Effect::Send {
        worker,
        line: handle.line.clone().into_bytes(),
        fd: Some(fd),
    });
    w.sent_handles.push_back(handle);
}

impl Cluster {
    pub(crate) fn new(config: ClusterConfig) -> Cluster {
        Cluster {
            config,
            servers: BTreeMap::new(),
            workers: BTreeMap::new(),
            round_robin: RoundRobin::default(),
        }
    }

    /// Take a new definition (a reload onto it); the balance mode stays.
    pub(crate) fn configure(&mut self, config: ClusterConfig) {
        self.config = config;
    }

    pub(crate) fn config(&self) -> ClusterConfig {
        self.config
    }

    /// Split off round-robin's view of the workers, and round-robin itself.
    fn hands<'a>(&'a mut self, cx: &'a mut Cx<'_>) -> (&'a mut RoundRobin, Hands<'a>) {
        (
            &mut self.round_robin,
            Hands {
                workers: &mut self.workers,
                machine: cx.machine,
                fx: cx.fx,
            },
        )
    }

    /// A worker's exec succeeded: its channel is open.
    pub(crate) fn add_worker(&mut self, worker: WorkerId, slot: Slot) {
        self.workers.insert(
            worker,
            ClusterWorker {
                slot,
                seq: 0,
                sent_handles: VecDeque::new(),
                servers: Vec::new(),
                channel_open: true,
                warned_handle: false,
                disconnecting: false,
                signalled: false,
                shutdown_sent: false,
            },
        );
    }

    /// A worker is gone (after [`Cluster::channel_closed`]).
    pub(crate) fn remove_worker(&mut self, worker: WorkerId) {
        self.workers.remove(&worker);
        self.round_robin.remove_worker(worker);
    }

    /// Does any server hand over client connections?
    pub(crate) fn has_round_robin(&self) -> bool {
        !self.round_robin.is_empty()
    }

    /// Client connections server `key` holds (round-robin).
    pub(crate) fn held(&self, key: &ServerKey) -> usize {
        self.round_robin.held(key)
    }

    /// Client connections handed to the worker so far, and not answered yet.
    pub(crate) fn round_robin_stats(&self, worker: WorkerId) -> (u64, u64) {
        self.round_robin.stats(worker)
    }

    /// Round-robin servers for the app's own listeners (Rust workers built
    /// on herd-cluster): keyed by listener name, every worker taking turns.
    pub(crate) fn open_listener_servers(&mut self, cx: &mut Cx) {
        let ours: Vec<(ListenerId, String)> = cx
            .listeners
            .of_definition()
            .map(|(id, l)| (id, l.name.clone()))
            .collect();
        for (id, name) in ours {
            let key = ServerKey::of_listener(&name);
            if !self.servers.contains_key(&key) {
                let server = borrowed(cx.listeners, id, Value::Null);
                self.servers.insert(key.clone(), server);
                self.start_accepting(&key, cx);
            }
        }
    }

    /// A herd-cluster worker in round-robin takes turns on every one of the
    /// app's own listeners.
    pub(crate) fn join_listener_servers(&mut self, worker: WorkerId, cx: &mut Cx) {
        let keys: Vec<ServerKey> = cx
            .listeners
            .of_definition()
            .map(|(_, l)| ServerKey::of_listener(&l.name))
            .collect();
        for key in keys {
            self.round_robin.join(&key, worker);
            if let Some(w) = self.workers.get_mut(&worker) {
                w.servers.push(key);
            }
        }
    }

    /// Start the accept loop of every round-robin server again (an app
    /// resumed by a new herd binary: the loops are wiring, the servers state).
    pub(crate) fn resume_accepting(&mut self, cx: &mut Cx) {
        let keys: Vec<ServerKey> = self
            .servers
            .keys()
            .filter(|k| self.round_robin.serves(k))
            .cloned()
            .collect();
        for key in keys {
            self.start_accepting(&key, cx);
        }
    }

    /// Start herd's accept loop for a round-robin server.
    fn start_accepting(&mut self, key: &ServerKey, cx: &mut Cx) {
        let Some(fd) = self
            .servers
            .get(key)
            .and_then(|s| cx.listeners.fd(s.listener))
            .and_then(|fd| fd.try_clone().ok())
        else {
            return;
        };
        self.round_robin.open(key);
        cx.fx.push(Effect::StartAccepting {
            key: key.clone(),
            fd,
        });
    }

    /// A message of Node's internal protocol from a worker. Returns the
    /// message a worker sent along with a handle, for the app to deliver.
    pub(crate) fn message(
        &mut self,
        worker: WorkerId,
        value: &Value,
        cx: &mut Cx,
    ) -> Option<Value> {
        match protocol::parse(value) {
            Incoming::HandleAck => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.sent_handles.pop_front();
                }
            }
            Incoming::HandleNack => self.handle_refused(worker, cx),
            Incoming::Handle { kind, message } => {
                // A worker sent us a handle (`process.send(msg, socket)`): we
                // keep no handles (the channel reader closed its fd), but must
                // acknowledge it or the worker holds back every later
                // message. The message itself is delivered.
                if let Some(w) = self.workers.get_mut(&worker) {
                    cx.fx.send(worker, protocol::handle_ack());
                    if !std::mem::replace(&mut w.warned_handle, true) {
                        cx.fx.warn(format!(
                            "worker {} sent a handle ({kind}) with a message: herd keeps no \
                             handles, so it closed it and passed on the message alone (said once \
                             per worker)",
                            w.slot
                        ));
                    }
                }
                return message;
            }
            Incoming::QueryServer(query) => self.query_server(worker, query, cx),
            Incoming::Listening => {
                if !self.config.wait_ready {
                    cx.fx.input(Input::Ready { worker });
                }
            }
            Incoming::Close { key } => self.leave(worker, &key, cx),
            Incoming::ExitedAfterDisconnect { seq } => {
                // `cluster.worker.disconnect()`: it waits for our answer.
                self.reply(worker, &seq, json!({}), cx.fx);
            }
            Incoming::Answer { seq, accepted } => self.answered(worker, seq, accepted, cx),
            Incoming::Ignored => {}
        }
        None
    }

    /// Answer a request of the worker's (its `seq` becomes our `ack`).
    fn reply(&mut self, worker: WorkerId, ack: &Value, body: Value, fx: &mut Effects) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let seq = w.next_seq();
        fx.send(worker, protocol::reply(ack, seq, body));
    }

    fn query_server(&mut self, worker: WorkerId, query: ServerQuery, cx: &mut Cx) {
        let key = query.key.clone();
        if !self.servers.contains_key(&key) && self.servers.len() >= MAX_SERVERS {
            let e = io::Error::new(
                io::ErrorKind::QuotaExceeded,
                format!(
                    "the app's workers already have {MAX_SERVERS} servers open, herd's limit \
                     (each listen() with another address or port is one)"
                ),
            );
            return self.refuse_query(worker, &query, &e, cx);
        }
        if !self.servers.contains_key(&key) {
            match servers::open(&query, cx.listeners, cx.fx) {
                Ok(server) => {
                    self.servers.insert(key.clone(), server);
                    // UDP has no connections to hand over: always shared.
                    if self.config.round_robin && !query.udp {
                        self.start_accepting(&key, cx);
                    }
                }
                Err(e) => return self.refuse_query(worker, &query, &e, cx),
            }
        }
        let server = &self.servers[&key];
        let data = server.data.clone();
        if self.round_robin.serves(&key) {
            let sockname = server.sockname.clone();
            self.uses(worker, &key);
            self.reply(
                worker,
                &query.seq,
                json!({"errno": Value::Null, "key": key.as_str(), "data": data, "sockname": sockname}),
                cx.fx,
            );
            self.round_robin.join(&key, worker);
            let (rr, mut hands) = self.hands(cx);
            rr.flush(&key, &mut hands);
            return;
        }
        let unacknowledged = self.workers.get(&worker).map_or(0, |w| {
            w.sent_handles
                .iter()
                .filter(|h| matches!(h.carries, Carried::Listener { .. }) && h.fd.is_some())
                .count()
        });
        if unacknowledged >= MAX_UNACKNOWLEDGED_SOCKETS {
            let e = io::Error::new(
                io::ErrorKind::QuotaExceeded,
                format!(
                    "it has not acknowledged the last {unacknowledged} listening sockets herd \
                     sent it (NODE_HANDLE_ACK)"
                ),
            );
            return self.refuse_query(worker, &query, &e, cx);
        }
        let fd = match cx.listeners.fd(server.listener).map(Fd::try_clone) {
            Some(Ok(fd)) => Arc::new(Fd::new(fd)),
            Some(Err(e)) => return self.refuse_query(worker, &query, &e, cx),
            None => {
                let e = io::Error::new(
                    io::ErrorKind::NotFound,
                    "herd has no open socket for it (closed with its slot)",
                );
                return self.refuse_query(worker, &query, &e, cx);
            }
        };
        self.uses(worker, &key);
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let seq = w.next_seq();
        let line = protocol::listening_socket(&key, &query.seq, &data, seq, query.udp);
        let handle = SentHandle {
            line: String::from_utf8(line).expect("JSON is UTF-8"),
            fd: Some(fd),
            tries: 0,
            carries: Carried::Listener {
                key,
                ack: query.seq,
            },
        };
        send_handle(w, worker, handle, cx.fx);
    }

    /// The worker's slot, for messages (0 for one that is gone).
    fn slot_of(&self, worker: WorkerId) -> Slot {
        self.workers
            .get(&worker)
            .map(|w| w.slot)
            .unwrap_or_default()
    }

    /// The worker now uses server `key`.
    fn uses(&mut self, worker: WorkerId, key: &ServerKey) {
        if let Some(w) = self.workers.get_mut(&worker) {
            if !w.servers.contains(key) {
                w.servers.push(key.clone());
            }
        }
    }

    fn is_used(&self, key: &ServerKey) -> bool {
        self.workers.values().any(|w| w.servers.contains(key))
    }

    /// Answer a query with an error, so that the app's `listen()` or
    /// `bind()` fails with it (as under Node) instead of waiting for ever.
    fn refuse_query(&mut self, worker: WorkerId, query: &ServerQuery, e: &io::Error, cx: &mut Cx) {
        let errno = -e.raw_os_error().unwrap_or(match e.kind() {
            io::ErrorKind::NotFound => libc::EBADF,
            io::ErrorKind::QuotaExceeded => libc::EMFILE,
            _ => libc::EINVAL,
        });
        let slot = self.slot_of(worker);
        cx.fx.warn(format!(
            "worker {slot} asked to listen on {}: {e}; told it so (errno {errno})",
            query.described
        ));
        // Like Node's primary: a failed server is forgotten, so a later
        // query tries again.
        if !self.is_used(&query.key) {
            self.forget_server(&query.key, cx);
        }
        self.reply(
            worker,
            &query.seq,
            json!({"errno": errno, "key": query.key.as_str(), "data": Value::Null}),
            cx.fx,
        );
    }

    /// Drop a server: its round-robin accepting stops, and a listener bound
    /// for it is closed.
    fn forget_server(&mut self, key: &ServerKey, cx: &mut Cx) {
        let Some(server) = self.servers.remove(key) else {
            return;
        };
        if self.round_robin.serves(key) {
            self.round_robin.close(key);
            cx.fx.push(Effect::StopAccepting { key: key.clone() });
        }
        cx.listeners.close_requested(server.listener);
    }

    /// Close what herd bound for a server no worker uses any more (as
    /// Node's primary does); the app's own listeners stay.
    fn release_if_unused(&mut self, key: &ServerKey, cx: &mut Cx) {
        let requested = self.servers.get(key).is_some_and(|s| {
            cx.listeners
                .get(s.listener)
                .is_some_and(|l| l.origin == Origin::Requested)
        });
        if requested && !self.is_used(key) {
            self.forget_server(key, cx);
        }
    }

    /// The worker got a handle message without its fd: send it again, and
    /// after a few tries give a client connection to another worker.
    fn handle_refused(&mut self, worker: WorkerId, cx: &mut Cx) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let Some(mut handle) = w.sent_handles.pop_front() else {
            return;
        };
        handle.tries += 1;
        if handle.tries <= HANDLE_RETRIES {
            send_handle(w, worker, handle, cx.fx);
            return;
        }
        match handle.carries {
            Carried::Connection { seq, .. } => {
                let (rr, mut hands) = self.hands(cx);
                rr.undelivered(worker, seq, &mut hands);
            }
            Carried::Listener { key, ack } => self.socket_undelivered(worker, &key, &ack, cx),
        }
    }

    /// A listening socket never reached the worker: answer its query with an
    /// error, so that its `listen()` fails instead of waiting for ever.
    fn socket_undelivered(&mut self, worker: WorkerId, key: &ServerKey, ack: &Value, cx: &mut Cx) {
        let slot = self.slot_of(worker);
        cx.fx.warn(format!(
            "worker {slot} did not receive its listening socket after {HANDLE_RETRIES} tries; \
             told it so (errno -{})",
            libc::EIO
        ));
        self.reply(
            worker,
            ack,
            json!({"errno": -libc::EIO, "key": key.as_str(), "data": Value::Null}),
            cx.fx,
        );
        self.leave(worker, key, cx);
    }

    /// The worker closed its server `key` (or went away): it leaves the rotation.
    fn leave(&mut self, worker: WorkerId, key: &ServerKey, cx: &mut Cx) {
        self.round_robin.leave(key, worker);
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.servers.retain(|k| k != key);
        if w.disconnecting && w.servers.is_empty() {
            cx.fx.wake(SETTLE, Wake::StopSignal(worker));
        }
        self.release_if_unused(key, cx);
    }

    /// The worker's channel closed: it can take no more connections.
    pub(crate) fn channel_closed(&mut self, worker: WorkerId, cx: &mut Cx) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.channel_open = false;
        let keys = std::mem::take(&mut w.servers);
        let disconnecting = w.disconnecting;
        w.sent_handles.clear();
        for key in &keys {
            self.round_robin.leave(key, worker);
        }
        // Connections it never took go to the others.
        let (rr, mut hands) = self.hands(cx);
        rr.requeue(worker, &mut hands);
        if disconnecting {
            cx.fx.wake(SETTLE, Wake::StopSignal(worker));
        }
        // Its listeners stay open (unlike under Node's primary): a worker
        // that died is replaced, and until its successor asks for them again
        // the kernel queues new clients instead of refusing them. Only a
        // deliberate `close` (a server.close() in the app) releases one.
    }

    /// Begin the graceful stop of a worker that speaks the cluster protocol,
    /// so that it takes no new connection before the stop signal:
    /// - round-robin: it leaves the rotation at once; the signal follows once
    ///   the connections already handed to it were taken, after the settle
    ///   time (no `disconnect`: the app's own `server.close()` works as usual);
    /// - shared (Node): the cluster `disconnect` makes it close its servers;
    ///   the signal follows once it has, after a short settle time.
    ///
    /// Returns false when neither applies (the caller signals at once).
    pub(crate) fn begin_stop(&mut self, worker: WorkerId, cx: &mut Cx) -> bool {
        let Some(w) = self.workers.get_mut(&worker) else {
            return false;
        };
        if !w.channel_open {
            return false;
        }
        if self.config.round_robin {
            w.disconnecting = true;
            for key in &w.servers {
                self.round_robin.leave(key, worker);
            }
            // Requests already on their way (a keep-alive client's next
            // one) get the settle time to arrive before the app drains; a
            // worker still holding handed connections gets the signal once
            // it took them (`answered`), or at the machine's settle bound
            // (DISCONNECT_GRACE).
            if !self.round_robin.has_handoffs(worker) {
                cx.fx.wake(SETTLE, Wake::StopSignal(worker));
            }
            return true;
        }
        if !self.config.node || w.servers.is_empty() {
            return false;
        }
        w.disconnecting = true;
        let seq = w.next_seq();
        if self.config.shutdown_with_message {
            // Before disconnect, which closes the channel.
            cx.fx.send(worker, protocol::SHUTDOWN.to_vec());
            w.shutdown_sent = true;
        }
        cx.fx.send(worker, protocol::disconnect(seq));
        if self.config.shutdown_with_message {
            // The message is the stop signal: the kill timeout starts now.
            cx.fx.input(Input::StopSignalled { worker });
        }
        // The signal follows once it closed its servers, or at the
        // machine's settle bound (DISCONNECT_GRACE).
        true
    }

    /// The delayed half of a graceful stop: the stop signal, once.
    pub(crate) fn stop_signal(&mut self, worker: WorkerId, cx: &mut Cx) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if std::mem::replace(&mut w.signalled, true) {
            return;
        }
        if !w.shutdown_sent {
            cx.fx.push(Effect::SendStop { worker });
        }
        cx.fx.input(Input::StopSignalled { worker });
    }

    /// herd accepted a client connection for round-robin server `key`.
    pub(crate) fn accepted(&mut self, key: &ServerKey, fd: std::os::fd::OwnedFd, cx: &mut Cx) {
        let (rr, mut hands) = self.hands(cx);
        rr.dispatch(key, ClientConn::new(fd), &mut hands);
    }

    /// A worker became ready: held connections may go to it now.
    pub(crate) fn flush_all(&mut self, cx: &mut Cx) {
        let (rr, mut hands) = self.hands(cx);
        rr.flush_all(&mut hands);
    }

    /// The worker answered for client connection `seq`.
    fn answered(&mut self, worker: WorkerId, seq: u64, accepted: bool, cx: &mut Cx) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        // Answered: its handle message (should the worker never acknowledge
        // it) keeps no copy of the fd, and a worker that never acknowledges
        // handles does not make that queue grow without bound.
        if let Some(h) = w
            .sent_handles
            .iter_mut()
            .find(|h| matches!(h.carries, Carried::Connection { seq: s, .. } if s == seq))
        {
            h.fd = None;
        }
        while w.sent_handles.len() > 2 * round_robin::MAX_IN_FLIGHT
            && w.sent_handles.front().is_some_and(|h| h.fd.is_none())
        {
            w.sent_handles.pop_front();
        }
        let (slot, disconnecting) = (w.slot, w.disconnecting);
        let (rr, mut hands) = self.hands(cx);
        let (was_hung, matched) = rr.answered(worker, seq, accepted, &mut hands);
        let drained = disconnecting && !rr.has_handoffs(worker);
        if was_hung {
            cx.fx.warn(format!(
                "worker {slot} answers again: it gets connections again"
            ));
        }
        self.flush_all(cx);
        if drained && matched {
            // A stopping round-robin worker took its last connection.
            cx.fx.wake(SETTLE, Wake::StopSignal(worker));
        }
    }

    /// Has the worker left a client connection unanswered too long?
    pub(crate) fn answer_due(&mut self, worker: WorkerId, now: MonoTime, cx: &mut Cx) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let AnswerCheck::Hung { closed, waited } = self.round_robin.answer_due(worker, now, cx.fx)
        else {
            return;
        };
        // Its handle messages not acknowledged yet keep no copy either.
        for h in &mut w.sent_handles {
            if matches!(h.carries, Carried::Connection { .. }) {
                h.fd = None;
            }
        }
        let (slot, keys) = (w.slot, w.servers.clone());
        cx.fx.warn(format!(
            "worker {slot} has not answered for a connection handed to it {} s ago: \
             closed the {closed} connection(s) it did not take; it gets no more until it answers \
             (is it stopped, or blocked in a long computation?)",
            waited.as_secs()
        ));
        let (rr, mut hands) = self.hands(cx);
        for key in keys {
            rr.flush(&key, &mut hands);
        }
    }
}
