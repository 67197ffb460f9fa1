//! Round-robin: herd accepts on a listening socket and hands each
//! connection to one worker over its channel (`newconn`, the fd alongside),
//! for Node workers under `--balance round-robin` and for Rust workers built
//! on `herd-cluster` alike — one mechanism for both.
//!
//! This module owns the connections herd holds and the bounds on them:
//! - a socket holds at most [`MAX_HELD`] connections (waiting for a worker,
//!   or handed over and not answered yet); when it is full herd stops
//!   accepting, so further clients wait in the kernel's queue as they would
//!   with no supervisor, and it resumes as soon as one is let go;
//! - a worker has at most [`MAX_IN_FLIGHT`] connections unanswered;
//! - a worker that leaves a connection unanswered for [`ANSWER_TIMEOUT`]
//!   gets no more until it answers again, and the connections it sits on are
//!   closed;
//! - a connection every worker refused (`accepted: false`) is closed.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::node::{line, Handoff, Peer, SETTLE};
use super::{App, Internal};
use crate::machine::WorkerId;
use crate::rotation::{Member, Rotation};

/// Connections one round-robin socket holds at most: waiting for a worker
/// plus handed over and not answered yet. Beyond that the kernel's listen
/// queue holds them.
pub(super) const MAX_HELD: usize = 512;
/// Connections handed to one worker and not answered yet, at most. Node's
/// own primary hands a worker one at a time; herd pipelines a few. (Which
/// worker gets the next one, and when a busy one is skipped: `rotation`.)
const MAX_IN_FLIGHT: usize = 128;
/// A worker that has not answered for a connection this long is treated as
/// hung: the connections it sits on are closed and it gets no more until it
/// answers again.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection herd accepted and still holds. Its permit is one of the
/// socket's [`MAX_HELD`]: dropping the connection frees the place.
pub(super) struct Conn {
    fd: Arc<OwnedFd>,
    /// Workers that answered `accepted: false` for it.
    refused_by: Vec<WorkerId>,
    _held: OwnedSemaphorePermit,
}

impl Conn {
    /// Close the connection for every copy (a worker may hold one in its
    /// channel's queue): the client sees it closed.
    fn shut(self) {
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&*self.fd),
            nix::sys::socket::Shutdown::Both,
        );
    }
}

/// herd accepting on one socket and handing the connections over.
pub(super) struct RoundRobin {
    pub(super) rotation: Rotation<WorkerId>,
    /// Connections accepted while no worker could take one.
    backlog: VecDeque<Conn>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Peer {
    /// How long the oldest connection handed over has waited for its answer.
    fn oldest_unacked(&self, now: Instant) -> Option<Duration> {
        self.handed_at
            .iter()
            .find(|(seq, _)| self.unacked.contains_key(seq))
            .map(|(_, at)| now.saturating_duration_since(*at))
    }

    /// Take a connection's answer: forget when it was handed over.
    fn answered(&mut self, seq: u64) -> Option<(String, Conn)> {
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
}

impl App {
    /// Start herd's accept loop for a round-robin server.
    pub(super) fn start_accepting(&mut self, key: &str) {
        let Some(fd) = self.server_fd(key).and_then(|fd| fd.try_clone().ok()) else {
            return;
        };
        let tx = self.internal.clone();
        let held = Arc::new(Semaphore::new(MAX_HELD));
        let accept_task = tokio::spawn(accept_loop(fd, key.to_string(), tx, held));
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

    /// A connection herd accepted (or got back) for `key`: hand it to a
    /// worker, or hold it until one can take it.
    pub(super) fn dispatch(&mut self, key: &str, conn: Conn) {
        if let Err(conn) = self.try_hand(key, conn) {
            if let Some(rr) = self
                .servers
                .get_mut(key)
                .and_then(|s| s.round_robin.as_mut())
            {
                rr.backlog.push_back(conn);
            }
        }
    }

    /// Hand `conn` to the best worker for it; `Err` gives it back when none
    /// can take it now. A connection every member refused is closed.
    fn try_hand(&mut self, key: &str, conn: Conn) -> Result<(), Conn> {
        let Some(rr) = self
            .servers
            .get_mut(key)
            .and_then(|s| s.round_robin.as_mut())
        else {
            return Ok(()); // the socket is gone: so is the connection
        };
        let machine = &self.machine;
        let procs = &self.procs;
        let now = Instant::now();
        let refused = &conn.refused_by;
        // What the picker needs to know of each worker (see `rotation`:
        // prompt workers take turns; one that sits on a connection is
        // skipped while anyone else can take it; when none is ready, one that
        // listens but has not said it is ready, as a shared socket would let
        // it accept, rather than holding the connection for ever).
        let member = |w: WorkerId| {
            let p = procs.get(&w)?;
            let t = &p.peer;
            Some(Member {
                eligible: !t.disconnecting
                    && t.channel_open
                    && !machine.is_stopping(w)
                    && !t.hung
                    && t.unacked.len() < MAX_IN_FLIGHT
                    && !refused.contains(&w),
                ready: machine.accepting(w),
                unanswered: t.unacked.len(),
                oldest: t.oldest_unacked(now),
            })
        };
        let picked = rr.rotation.pick_conn(member);
        let Some(worker) = picked else {
            let members = rr.rotation.members();
            if !refused.is_empty() && members.iter().all(|w| refused.contains(w)) {
                // Every worker there is refused it: bouncing it on would
                // never end.
                conn.shut();
                return Ok(());
            }
            return Err(conn);
        };
        let Some(peer) = self.procs.get_mut(&worker).map(|p| &mut p.peer) else {
            return Err(conn);
        };
        let seq = peer.next_seq();
        let fd = conn.fd.clone();
        peer.unacked.insert(seq, (key.to_string(), conn));
        peer.handed_at.push_back((seq, now));
        peer.handed_over += 1;
        let arm = !std::mem::replace(&mut peer.check_armed, true);
        let body = json!({
            "cmd": "NODE_HANDLE", "type": "net.Native",
            "msg": {"cmd": "NODE_CLUSTER", "act": "newconn", "key": key, "seq": seq},
        });
        self.send_handle(
            worker,
            Handoff::new(line(&body), fd, Some((key.to_string(), seq))),
        );
        if arm {
            self.answer_check(worker, ANSWER_TIMEOUT);
        }
        Ok(())
    }

    /// Hand held connections to workers that can now take them, oldest first.
    pub(super) fn flush_backlog(&mut self, key: &str) {
        loop {
            let Some(conn) = self
                .servers
                .get_mut(key)
                .and_then(|s| s.round_robin.as_mut())
                .and_then(|rr| rr.backlog.pop_front())
            else {
                return;
            };
            if let Err(conn) = self.try_hand(key, conn) {
                if let Some(rr) = self
                    .servers
                    .get_mut(key)
                    .and_then(|s| s.round_robin.as_mut())
                {
                    rr.backlog.push_front(conn);
                }
                return;
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

    /// The worker answered for connection `seq`: taken, or refused (then it
    /// goes to another worker, or is closed when every one refused it).
    pub(super) fn conn_answered(&mut self, worker: WorkerId, seq: u64, accepted: bool) {
        let Some(p) = self.procs.get_mut(&worker) else {
            return;
        };
        let was_hung = std::mem::replace(&mut p.peer.hung, false);
        let answer = p.peer.answered(seq);
        let matched = answer.is_some();
        // Answered: its handle message (should the worker never acknowledge
        // it) keeps no copy of the fd, and a worker that never acknowledges
        // handles does not make that queue grow without bound.
        if let Some(h) = p
            .peer
            .handles_in_flight
            .iter_mut()
            .find(|h| h.conn.as_ref().is_some_and(|(_, s)| *s == seq))
        {
            h.fd = None;
        }
        while p.peer.handles_in_flight.len() > 2 * MAX_IN_FLIGHT
            && p.peer
                .handles_in_flight
                .front()
                .is_some_and(|h| h.fd.is_none())
        {
            p.peer.handles_in_flight.pop_front();
        }
        let drained = p.peer.disconnecting && p.peer.unacked.is_empty();
        match answer {
            Some((_, conn)) if accepted => drop(conn), // the worker has its own copy now
            Some((key, mut conn)) => {
                conn.refused_by.push(worker);
                self.dispatch(&key, conn);
            }
            None => {}
        }
        if was_hung {
            let slot = self.procs.get(&worker).map(|p| p.slot).unwrap_or_default();
            self.event(super::Event::Warning(format!(
                "worker {slot} answers again: it gets connections again"
            )));
        }
        self.flush_all_backlogs();
        if drained && matched {
            // A stopping round-robin worker took its last connection.
            self.signal_after(worker, SETTLE);
        }
    }

    /// Arm the check of a worker's oldest unanswered connection.
    fn answer_check(&self, worker: WorkerId, after: Duration) {
        let tx = self.internal.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Internal::AnswerDue { worker });
        });
    }

    /// Has the worker left a connection unanswered too long? Then close the
    /// connections it sits on and give it no more until it answers again.
    pub(super) fn answer_due(&mut self, worker: WorkerId) {
        let Some(p) = self.procs.get_mut(&worker) else {
            return;
        };
        let t = &mut p.peer;
        t.check_armed = false;
        let Some(age) = t.oldest_unacked(Instant::now()) else {
            return;
        };
        if age < ANSWER_TIMEOUT {
            t.check_armed = true;
            self.answer_check(worker, ANSWER_TIMEOUT - age);
            return;
        }
        t.hung = true;
        t.handed_at.clear();
        // Its handle messages not acknowledged yet keep no copy either.
        for handoff in &mut t.handles_in_flight {
            if handoff.conn.is_some() {
                handoff.fd = None;
            }
        }
        let conns: Vec<(String, Conn)> = t.unacked.drain().map(|(_, c)| c).collect();
        let n = conns.len();
        for (_, conn) in conns {
            conn.shut();
        }
        let keys = p.peer.keys.clone();
        let slot = p.slot;
        self.event(super::Event::Warning(format!(
            "worker {slot} has not answered for a connection handed to it {} s ago: \
             closed the {n} connection(s) it did not take; it gets no more until it answers \
             (is it stopped, or blocked in a long computation?)",
            age.as_secs()
        )));
        for key in keys {
            self.flush_backlog(&key);
        }
    }

    /// Connections handed to a worker that never took them go to another.
    pub(super) fn requeue(&mut self, worker: WorkerId) {
        let Some(p) = self.procs.get_mut(&worker) else {
            return;
        };
        p.peer.handles_in_flight.clear();
        p.peer.handed_at.clear();
        let unacked: Vec<(String, Conn)> = p.peer.unacked.drain().map(|(_, c)| c).collect();
        for (key, conn) in unacked {
            self.dispatch(&key, conn);
        }
    }

    /// A handle message the worker refused too often: a connection goes to
    /// another worker.
    pub(super) fn conn_undelivered(&mut self, worker: WorkerId, key: &str, seq: u64) {
        let Some(p) = self.procs.get_mut(&worker) else {
            return;
        };
        if let Some((_, conn)) = p.peer.answered(seq) {
            self.dispatch(key, conn);
        }
    }
}

/// herd's accept loop for one round-robin socket (TCP or Unix alike): one
/// `accept4` per connection, which arrives nonblocking and close-on-exec and
/// goes to the app task. It accepts only while the socket holds fewer than
/// [`MAX_HELD`] connections: otherwise it waits for a place, and the clients
/// wait in the kernel's queue.
async fn accept_loop(
    fd: OwnedFd,
    key: String,
    tx: tokio::sync::mpsc::UnboundedSender<Internal>,
    held: Arc<Semaphore>,
) {
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
        let Ok(place) = held.clone().acquire_owned().await else {
            return;
        };
        let conn = loop {
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
                Ok(Ok(conn)) => break conn,
                // The client gave up before we accepted: nothing to do.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                // Out of fds or memory: back off a little instead of spinning.
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_would_block) => {}
            }
        };
        let conn = Conn {
            fd: Arc::new(conn),
            refused_by: Vec::new(),
            _held: place,
        };
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
}
