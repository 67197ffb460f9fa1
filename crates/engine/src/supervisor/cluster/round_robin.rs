//! Round-robin: herd accepts on a listening socket and hands each client
//! connection to one worker over its channel (`newconn`, the fd alongside),
//! for Node workers under `--balance round-robin` and for Rust workers built
//! on `herd-cluster` alike — one mechanism for both.
//!
//! Owns (plain data, [`RoundRobin`]) the client connections herd holds, per
//! server: whose turn it is ([`Picker`]) and the connections no worker could
//! take yet (the backlog, oldest first); per worker, its *handoffs* — the
//! connections handed to it that it has not answered for, by `seq`, with the
//! time each was handed over. And the bounds on them:
//! - a server holds at most [`MAX_HELD`] connections (in its backlog or
//!   handed over and not answered yet); when it is full herd stops
//!   accepting, so further clients wait in the kernel's queue as they would
//!   with no supervisor, and it resumes as soon as one is let go;
//! - a worker has at most [`MAX_IN_FLIGHT`] connections unanswered;
//! - a worker that leaves a connection unanswered for [`ANSWER_TIMEOUT`]
//!   gets no more until it answers again, and the connections it sits on are
//!   closed;
//! - a connection every worker refused (`accepted: false`) is closed.
//!
//! The accept loop itself ([`accept_loop`]) is runtime wiring: the run loop
//! starts one per round-robin server and gives it room for as many
//! connections as the server may still hold ([`Accepting`]).

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::effect::Effects;
use super::picker::{Picker, WorkerLoad};
use super::protocol::ServerKey;
use crate::clock::MonoTime;
use crate::machine::WorkerId;
use crate::os;
use crate::supervisor::fd::Fd;
use crate::supervisor::timers::Wake;

/// Client connections one round-robin server holds at most: in its backlog
/// plus handed over and not answered yet. Beyond that the kernel's listen
/// queue holds them.
pub(crate) const MAX_HELD: usize = 512;
/// Client connections handed to one worker and not answered yet, at most.
/// Node's own primary hands a worker one at a time; herd pipelines a few.
/// (Which worker gets the next one, and when a busy one is skipped: the
/// picker.)
pub(crate) const MAX_IN_FLIGHT: usize = 128;
/// A worker that has not answered for a client connection this long is
/// treated as hung: the connections it sits on are closed and it gets no
/// more until it answers again.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A client connection herd accepted and still holds.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ClientConn {
    /// Shared with the message that hands it over, until it is written.
    #[serde(with = "crate::supervisor::fd::shared")]
    fd: Arc<Fd>,
    /// Workers that answered `accepted: false` for it.
    refused_by: Vec<WorkerId>,
}

impl ClientConn {
    pub(crate) fn new(fd: OwnedFd) -> ClientConn {
        ClientConn {
            fd: Arc::new(Fd::new(fd)),
            refused_by: Vec::new(),
        }
    }

    /// Close the connection for every copy (a worker may hold one in its
    /// channel's queue): the client sees it closed.
    fn shut(self) {
        let _ = nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

/// A client connection handed to a worker, until it answers for it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Handoff {
    key: ServerKey,
    conn: ClientConn,
    /// When it was handed over.
    since: MonoTime,
}

/// One round-robin server: whose turn it is, and what it holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Server {
    picker: Picker<WorkerId>,
    /// Client connections accepted while no worker could take one, oldest first.
    backlog: VecDeque<ClientConn>,
    /// Its client connections handed over and not answered yet (in the
    /// workers' handoffs).
    handed: usize,
}

/// One worker's handoffs.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerHandoffs {
    /// By the `seq` it will answer with; in the order handed over.
    pending: BTreeMap<u64, Handoff>,
    /// It left a connection unanswered too long: it gets no more until it
    /// answers again.
    hung: bool,
    /// A check of its oldest unanswered connection is on its way.
    check_armed: bool,
    /// Client connections handed to it so far (for metrics).
    handed_over: u64,
}

impl WorkerHandoffs {
    /// How long the oldest connection handed over has waited for its answer.
    fn oldest(&self, now: MonoTime) -> Option<Duration> {
        self.pending
            .values()
            .next()
            .map(|h| now.saturating_duration_since(h.since))
    }
}

/// How round-robin sees the rest of the cluster primary while it hands out
/// client connections.
pub(crate) trait Handover {
    /// Whether the worker may take a connection as far as the rest of herd
    /// knows (its channel is open, it is not stopping) and whether it said
    /// it is ready; `None` for a worker herd no longer knows.
    fn standing(&self, worker: WorkerId) -> Option<Standing>;
    /// Send the connection to the worker as `newconn` for server `key`;
    /// the `seq` it will answer with (`None`: the worker is gone).
    fn hand(&mut self, worker: WorkerId, key: &ServerKey, fd: &Arc<Fd>) -> Option<u64>;
    /// Where round-robin's own effects go.
    fn effects(&mut self) -> &mut Effects;
}

/// See [`Handover::standing`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Standing {
    pub(crate) may_take: bool,
    pub(crate) ready: bool,
}

/// What the check of a worker's oldest unanswered connection found.
pub(crate) enum AnswerCheck {
    /// Nothing waits, or it has time left (checked again then).
    Fine,
    /// It waited too long: the worker is hung; the connections it sat on
    /// were closed.
    Hung { closed: usize, waited: Duration },
}

/// herd's round-robin accepting, for every round-robin server of one app.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct RoundRobin {
    servers: BTreeMap<ServerKey, Server>,
    workers: BTreeMap<WorkerId, WorkerHandoffs>,
}

impl RoundRobin {
    /// Start holding connections for server `key`.
    pub(crate) fn open(&mut self, key: &ServerKey) {
        self.servers.entry(key.clone()).or_default();
    }

    /// Server `key` is gone: its backlog is closed.
    pub(crate) fn close(&mut self, key: &ServerKey) {
        self.servers.remove(key);
    }

    pub(crate) fn serves(&self, key: &ServerKey) -> bool {
        self.servers.contains_key(key)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Client connections server `key` holds (backlog and handed over).
    pub(crate) fn held(&self, key: &ServerKey) -> usize {
        self.servers
            .get(key)
            .map_or(0, |s| s.backlog.len() + s.handed)
    }

    /// The worker takes turns on server `key`.
    pub(crate) fn join(&mut self, key: &ServerKey, worker: WorkerId) {
        if let Some(s) = self.servers.get_mut(key) {
            s.picker.add(worker);
        }
    }

    /// The worker takes no more turns on server `key`.
    pub(crate) fn leave(&mut self, key: &ServerKey, worker: WorkerId) {
        if let Some(s) = self.servers.get_mut(key) {
            s.picker.remove(worker);
        }
    }

    /// Does the worker sit on connections it has not answered for?
    pub(crate) fn has_handoffs(&self, worker: WorkerId) -> bool {
        self.workers
            .get(&worker)
            .is_some_and(|w| !w.pending.is_empty())
    }

    /// Client connections handed to the worker so far, and not answered yet.
    pub(crate) fn stats(&self, worker: WorkerId) -> (u64, u64) {
        self.workers
            .get(&worker)
            .map_or((0, 0), |w| (w.handed_over, w.pending.len() as u64))
    }

    /// Forget a worker that is gone (its handoffs went elsewhere already).
    pub(crate) fn remove_worker(&mut self, worker: WorkerId) {
        for seq in self.pending_seqs(worker) {
            self.take_handoff(worker, seq);
        }
        self.workers.remove(&worker);
    }

    fn pending_seqs(&self, worker: WorkerId) -> Vec<u64> {
        self.workers
            .get(&worker)
            .map(|w| w.pending.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Take one of the worker's handoffs off the books.
    fn take_handoff(&mut self, worker: WorkerId, seq: u64) -> Option<Handoff> {
        let handoff = self.workers.get_mut(&worker)?.pending.remove(&seq)?;
        if let Some(s) = self.servers.get_mut(&handoff.key) {
            s.handed = s.handed.saturating_sub(1);
        }
        Some(handoff)
    }

    /// A client connection herd accepted (or got back) for server `key`:
    /// hand it to a worker, or hold it until one can take it.
    pub(crate) fn dispatch(&mut self, key: &ServerKey, conn: ClientConn, h: &mut dyn Handover) {
        if let Err(conn) = self.try_hand(key, conn, h) {
            if let Some(s) = self.servers.get_mut(key) {
                s.backlog.push_back(conn);
            }
        }
    }

    /// Hand `conn` to the best worker for it; `Err` gives it back when none
    /// can take it now. A connection every worker refused is closed.
    fn try_hand(
        &mut self,
        key: &ServerKey,
        conn: ClientConn,
        h: &mut dyn Handover,
    ) -> Result<(), ClientConn> {
        let Some(server) = self.servers.get_mut(key) else {
            return Ok(()); // the server is gone: so is the connection
        };
        let now = MonoTime::now();
        let refused = &conn.refused_by;
        let workers = &self.workers;
        // What the picker needs to know of each worker (see the picker:
        // prompt workers take turns; one that sits on a connection is
        // skipped while anyone else can take it; when none is ready, one
        // that listens but has not said it is ready, as a shared socket
        // would let it accept, rather than holding the connection for ever).
        let picked = server.picker.pick(|w| {
            let standing = h.standing(w)?;
            let (hung, unanswered, oldest) = match workers.get(&w) {
                Some(t) => (t.hung, t.pending.len(), t.oldest(now)),
                None => (false, 0, None),
            };
            Some(WorkerLoad {
                eligible: standing.may_take
                    && !hung
                    && unanswered < MAX_IN_FLIGHT
                    && !refused.contains(&w),
                ready: standing.ready,
                unanswered,
                oldest,
            })
        });
        let Some(worker) = picked else {
            let everyone = server.picker.workers();
            if !refused.is_empty() && everyone.iter().all(|w| refused.contains(w)) {
                // Every worker there is refused it: bouncing it on would
                // never end.
                conn.shut();
                return Ok(());
            }
            return Err(conn);
        };
        let Some(seq) = h.hand(worker, key, &conn.fd) else {
            return Err(conn);
        };
        server.handed += 1;
        let t = self.workers.entry(worker).or_default();
        t.pending.insert(
            seq,
            Handoff {
                key: key.clone(),
                conn,
                since: now,
            },
        );
        t.handed_over += 1;
        if !std::mem::replace(&mut t.check_armed, true) {
            h.effects().wake(ANSWER_TIMEOUT, Wake::AnswerDue(worker));
        }
        Ok(())
    }

    /// Hand held connections to workers that can now take them, oldest first.
    pub(crate) fn flush(&mut self, key: &ServerKey, h: &mut dyn Handover) {
        loop {
            let Some(conn) = self
                .servers
                .get_mut(key)
                .and_then(|s| s.backlog.pop_front())
            else {
                return;
            };
            if let Err(conn) = self.try_hand(key, conn, h) {
                if let Some(s) = self.servers.get_mut(key) {
                    s.backlog.push_front(conn);
                }
                return;
            }
        }
    }

    /// [`RoundRobin::flush`] every server that holds a backlog.
    pub(crate) fn flush_all(&mut self, h: &mut dyn Handover) {
        let keys: Vec<ServerKey> = self
            .servers
            .iter()
            .filter(|(_, s)| !s.backlog.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.flush(&key, h);
        }
    }

    /// The worker answered for connection `seq`: taken, or refused (then it
    /// goes to another worker, or is closed when every one refused it).
    /// Returns whether the worker had been hung (it answers again now) and
    /// whether `seq` was one of its handoffs.
    pub(crate) fn answered(
        &mut self,
        worker: WorkerId,
        seq: u64,
        accepted: bool,
        h: &mut dyn Handover,
    ) -> (bool, bool) {
        let was_hung = self
            .workers
            .get_mut(&worker)
            .is_some_and(|t| std::mem::replace(&mut t.hung, false));
        let Some(handoff) = self.take_handoff(worker, seq) else {
            return (was_hung, false);
        };
        if !accepted {
            let Handoff { key, mut conn, .. } = handoff;
            conn.refused_by.push(worker);
            self.dispatch(&key, conn, h);
        }
        // Accepted: the worker has its own copy now; ours closes here.
        (was_hung, true)
    }

    /// The message handing over connection `seq` never reached the worker:
    /// it goes to another.
    pub(crate) fn undelivered(&mut self, worker: WorkerId, seq: u64, h: &mut dyn Handover) {
        if let Some(Handoff { key, conn, .. }) = self.take_handoff(worker, seq) {
            self.dispatch(&key, conn, h);
        }
    }

    /// Connections handed to a worker that will never take them (its
    /// channel closed) go to another.
    pub(crate) fn requeue(&mut self, worker: WorkerId, h: &mut dyn Handover) {
        for seq in self.pending_seqs(worker) {
            self.undelivered(worker, seq, h);
        }
    }

    /// Has the worker left a connection unanswered too long? Then close the
    /// connections it sits on and give it no more until it answers again.
    /// A check that comes early is armed again for the rest of the time.
    pub(crate) fn answer_due(
        &mut self,
        worker: WorkerId,
        now: MonoTime,
        fx: &mut Effects,
    ) -> AnswerCheck {
        let Some(t) = self.workers.get_mut(&worker) else {
            return AnswerCheck::Fine;
        };
        t.check_armed = false;
        let Some(waited) = t.oldest(now) else {
            return AnswerCheck::Fine;
        };
        if waited < ANSWER_TIMEOUT {
            t.check_armed = true;
            fx.wake(ANSWER_TIMEOUT - waited, Wake::AnswerDue(worker));
            return AnswerCheck::Fine;
        }
        t.hung = true;
        let seqs = self.pending_seqs(worker);
        let closed = seqs.len();
        for seq in seqs {
            if let Some(handoff) = self.take_handoff(worker, seq) {
                handoff.conn.shut();
            }
        }
        AnswerCheck::Hung { closed, waited }
    }
}

/// The wiring of one round-robin server's accept loop: its task, and the
/// room it has to accept (one permit per connection the server may still
/// hold). The loop takes a permit for good with each connection; the run
/// loop gives them back as the server lets connections go
/// ([`Accepting::settle`]), so what the server holds is counted once, in
/// the state.
pub(crate) struct Accepting {
    task: tokio::task::JoinHandle<()>,
    room: Arc<Semaphore>,
    /// Connections the loop accepted and the server has not let go.
    taken: usize,
}

impl Accepting {
    /// Start accepting on `fd` (a copy of the server's listening socket);
    /// each connection goes to `deliver`, which says whether anyone still
    /// takes them.
    pub(crate) fn start(
        fd: OwnedFd,
        held: usize,
        deliver: impl Fn(OwnedFd) -> bool + Send + 'static,
    ) -> Accepting {
        let room = Arc::new(Semaphore::new(MAX_HELD.saturating_sub(held)));
        let task = tokio::spawn(accept_loop(fd, room.clone(), deliver));
        Accepting {
            task,
            room,
            taken: held,
        }
    }

    /// The loop delivered one more connection.
    pub(crate) fn delivered(&mut self) {
        self.taken += 1;
    }

    /// The server now holds `held` connections: give the loop back the
    /// room of those it let go.
    pub(crate) fn settle(&mut self, held: usize) {
        if self.taken > held {
            self.room.add_permits(self.taken - held);
            self.taken = held;
        }
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// herd's accept loop for one round-robin socket (TCP or Unix alike): one
/// `accept4` per connection, which arrives nonblocking and close-on-exec and
/// goes to `deliver`. It accepts only while it has room (a permit, taken
/// for good): otherwise it waits, and the clients wait in the kernel's
/// queue.
async fn accept_loop(fd: OwnedFd, room: Arc<Semaphore>, deliver: impl Fn(OwnedFd) -> bool) {
    let Ok(listener) = os::watch(fd, tokio::io::Interest::READABLE) else {
        return;
    };
    loop {
        let Ok(place) = room.acquire().await else {
            return;
        };
        place.forget();
        let conn = loop {
            let Ok(mut ready) = listener.readable().await else {
                return;
            };
            let accepted = ready.try_io(|fd| os::socket::accept(fd.get_ref()));
            match accepted {
                Ok(Ok(conn)) => break conn,
                // The client gave up before we accepted: nothing to do.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                // Out of fds or memory: back off a little instead of spinning.
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_would_block) => {}
            }
        };
        if !deliver(conn) {
            return;
        }
    }
}
