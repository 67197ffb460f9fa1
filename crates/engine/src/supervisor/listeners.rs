//! The listening sockets herd owns for an app (its *listeners*): those of
//! its definition (`--listen`), bound before any worker starts and
//! inherited by every worker as fds 3, 4, … in their order; and those bound
//! at a cluster worker's request (a Node app's `listen(8000)`), handed over
//! on the worker's channel. Also the errors that name why one cannot be
//! bound.
//!
//! Owns (plain data, [`Listeners`]): each listener's name, address and fds
//! — one socket, or with `--balance reuseport` one per slot, bound when the
//! slot first needs it and closed when the slot has no worker (a
//! reuseport socket nobody accepts on would take its share of the clients
//! and never answer). A listener of the definition is never closed while
//! the app runs, so no client is ever refused across restarts and reloads.
//!
//! Also the sockets *held* for the app while it had no supervisor
//! ([`Held`]): the daemon keeps a copy of each shared listening socket of a
//! supervisor (`herd_daemon`'s socket store), and when that supervisor dies
//! its successor is given them; the app takes each by its address instead
//! of binding it, so the clients who connected meanwhile waited in its
//! queue instead of being refused.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

use super::events::Event;
use super::fd::Fd;
use crate::config::{AppSpec, Balance, ListenAddr};
use crate::machine::Slot;
use crate::os::socket;

/// Why an app's own listeners cannot be bound (nothing is started then).
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        addr: ListenAddr,
        reason: String,
        source: io::Error,
    },
    #[error(
        "{0} is given twice: give each --listen address once (one socket serves every worker)"
    )]
    Duplicate(ListenAddr),
}

/// Names a listener while the app runs: those of the definition are 0, 1, …
/// in their order; those bound at a worker's request come after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct ListenerId(u32);

/// Where a listener comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Origin {
    /// The app's definition (`--listen`): inherited by every worker, open
    /// as long as the app runs.
    Definition,
    /// Bound when a cluster worker asked for it; closed when no worker
    /// uses it any more.
    Requested,
}

/// One listening socket (or, for reuseport, one per slot).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Listener {
    pub(crate) name: String,
    /// Where it is bound (the real port when port 0 was asked for).
    pub(crate) addr: ListenAddr,
    pub(crate) origin: Origin,
    /// One socket; with reuseport one per slot (`None`: not bound yet, or
    /// closed with its slot).
    fds: Vec<Option<Fd>>,
    /// Reuseport: the slot whose socket stays open with no worker, as the
    /// listener's last open one; the next slot to start takes it over.
    #[serde(default)]
    kept: Option<Slot>,
}

/// Every listener of one app.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Listeners {
    listeners: BTreeMap<ListenerId, Listener>,
    /// How many come from the definition (ids 0..n).
    from_definition: u32,
    next_id: u32,
    /// `--balance reuseport`: one socket per slot.
    reuseport: bool,
    /// Sockets held for the app while no supervisor ran, not taken yet
    /// (never carried across an upgrade: they are closed once every worker
    /// is ready, long before one).
    #[serde(skip)]
    held: Held,
    /// The app stops to start again (a restart): a listener no worker
    /// uses any more stays open for the next start.
    #[serde(skip)]
    keeping: bool,
}

/// Listening sockets bound by an earlier supervisor of the app, each with
/// where it is bound, to be taken instead of binding the same address.
#[derive(Debug, Default)]
pub struct Held(Vec<(ListenAddr, OwnedFd)>);

impl Held {
    pub fn new(sockets: Vec<(ListenAddr, OwnedFd)>) -> Held {
        Held(sockets)
    }

    /// The held socket bound at `addr`, taken out.
    fn take(&mut self, addr: &ListenAddr) -> Option<OwnedFd> {
        let i = self.0.iter().position(|(a, _)| a == addr)?;
        Some(self.0.swap_remove(i).1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Stop the sockets no one took, for good (the daemon's copies too),
    /// and remove the files of Unix ones: the app no longer listens there,
    /// and clients must not wait on them.
    fn shut_down(&mut self) {
        for (addr, fd) in self.0.drain(..) {
            socket::shut_down(&fd);
            if let ListenAddr::Unix(path) = &addr {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// [`shut_down`](Self::shut_down), consuming.
    pub fn into_shut_down(mut self) {
        self.shut_down();
    }
}

impl Listeners {
    /// Bind the app's own listeners (before any worker starts), with an
    /// event for each.
    #[cfg(test)]
    pub(crate) fn bind(spec: &AppSpec) -> Result<(Listeners, Vec<Event>), ListenError> {
        Listeners::bind_or_take(spec, Held::default())
    }

    /// [`bind`](Self::bind), taking the sockets `held` for the app instead
    /// of binding their addresses again (not for reuseport: each slot binds
    /// its own); what is left is kept for the workers' requests until
    /// [`drop_held`](Self::drop_held).
    pub(crate) fn bind_or_take(
        spec: &AppSpec,
        mut held: Held,
    ) -> Result<(Listeners, Vec<Event>), ListenError> {
        let reuseport = spec.balance == Balance::ReusePort;
        if reuseport {
            // Each slot binds its own; a shared socket held at the same
            // address would keep them from binding.
            held.shut_down();
        }
        let mut listeners = BTreeMap::new();
        let mut events = Vec::new();
        for (i, l) in spec.listeners.iter().enumerate() {
            let ephemeral = matches!(l.addr, ListenAddr::Tcp(a) if a.port() == 0);
            let taken =
                if !ephemeral && spec.listeners[..i].iter().any(|other| other.addr == l.addr) {
                    Err(ListenError::Duplicate(l.addr.clone()))
                } else {
                    match held.take(&l.addr) {
                        Some(fd) => Ok(fd),
                        None => bind(&l.addr, reuseport),
                    }
                };
            let fd = match taken {
                Ok(fd) => fd,
                Err(e) => {
                    // Nothing starts: what was held is not the app's any more.
                    for l in listeners.values() {
                        shut_down(l);
                    }
                    held.shut_down();
                    return Err(e);
                }
            };
            let addr = socket::local_addr(&fd).unwrap_or_else(|_| l.addr.clone());
            events.push(Event::Listening {
                name: l.name.clone(),
                addr: addr.clone(),
            });
            // A reuseport listener binds one socket per slot; slot 0 has this one.
            listeners.insert(
                ListenerId(i as u32),
                Listener {
                    name: l.name.clone(),
                    addr,
                    origin: Origin::Definition,
                    fds: vec![Some(Fd::new(fd))],
                    kept: None,
                },
            );
        }
        let n = listeners.len() as u32;
        Ok((
            Listeners {
                listeners,
                from_definition: n,
                next_id: n,
                reuseport,
                held,
                keeping: false,
            },
            events,
        ))
    }

    /// Close the held sockets no worker asked for (the app no longer
    /// listens there): a socket nobody accepts on must not keep clients
    /// waiting.
    pub(crate) fn drop_held(&mut self) {
        self.held.shut_down();
    }

    /// The shared listening sockets, each with where it is bound: what the
    /// daemon holds a copy of while the supervisor runs (none with
    /// reuseport, whose per-slot sockets must close with their slots). The
    /// held sockets not taken yet too: should this supervisor die before
    /// its workers ask for them, they stay open for the next.
    pub(crate) fn shared_sockets(&self) -> Vec<(ListenAddr, std::os::fd::RawFd)> {
        if self.reuseport {
            return Vec::new();
        }
        let bound = self
            .listeners
            .values()
            .filter_map(|l| Some((l.addr.clone(), l.fds.first()?.as_ref()?.raw())));
        let held = self
            .held
            .0
            .iter()
            .map(|(addr, fd)| (addr.clone(), fd.as_raw_fd()));
        bound.chain(held).collect()
    }

    pub(crate) fn get(&self, id: ListenerId) -> Option<&Listener> {
        self.listeners.get(&id)
    }

    /// The app's own listeners, in the order workers inherit them.
    pub(crate) fn of_definition(&self) -> impl Iterator<Item = (ListenerId, &Listener)> {
        self.listeners
            .range(..ListenerId(self.from_definition))
            .map(|(id, l)| (*id, l))
    }

    /// The app's own listener a worker inherited as fd `fd` (`listen({fd})`),
    /// if it is open.
    pub(crate) fn inherited_as(&self, fd: i64) -> Option<ListenerId> {
        let index = u32::try_from(fd - 3).ok()?;
        let id = ListenerId(index);
        (index < self.from_definition && self.fd(id).is_some()).then_some(id)
    }

    /// The app's own listener for `wanted` (the operator's choice of socket
    /// wins over a worker's): same Unix path, or same port and the same or
    /// an unspecified address.
    pub(crate) fn of_definition_for(&self, wanted: &ListenAddr) -> Option<ListenerId> {
        self.of_definition()
            .find(|(_, l)| match (&l.addr, wanted) {
                (ListenAddr::Unix(a), ListenAddr::Unix(b)) => a == b,
                (ListenAddr::Tcp(a), ListenAddr::Tcp(b)) => {
                    a.port() == b.port() && (b.ip().is_unspecified() || a.ip() == b.ip())
                }
                _ => false,
            })
            .map(|(id, _)| id)
    }

    /// The listener's socket (for reuseport: slot 0's), if open.
    pub(crate) fn fd(&self, id: ListenerId) -> Option<&Fd> {
        self.listeners.get(&id)?.fds.first()?.as_ref()
    }

    /// Bind a stream socket a worker asked for; its id and where it is bound.
    pub(crate) fn bind_requested(
        &mut self,
        name: &str,
        addr: &ListenAddr,
    ) -> io::Result<(ListenerId, ListenAddr)> {
        let fd = match self.held.take(addr) {
            Some(fd) => fd,
            None => socket::bind_listener(addr, false)?,
        };
        Ok(self.add_requested(name, fd, addr.clone()))
    }

    /// Bind a UDP socket a worker asked for (`dgram`), as Node's primary
    /// does: dual-stack unless `ipv6_only`; `reuse_addr` sets SO_REUSEADDR.
    pub(crate) fn bind_requested_udp(
        &mut self,
        name: &str,
        addr: std::net::SocketAddr,
        ipv6_only: bool,
        reuse_addr: bool,
    ) -> io::Result<(ListenerId, ListenAddr)> {
        let fd = socket::bind_udp(addr, ipv6_only, reuse_addr)?;
        Ok(self.add_requested(name, fd, ListenAddr::Tcp(addr)))
    }

    fn add_requested(
        &mut self,
        name: &str,
        fd: OwnedFd,
        asked: ListenAddr,
    ) -> (ListenerId, ListenAddr) {
        let addr = socket::local_addr(&fd).unwrap_or(asked);
        let id = ListenerId(self.next_id);
        self.next_id += 1;
        self.listeners.insert(
            id,
            Listener {
                name: name.to_string(),
                addr: addr.clone(),
                origin: Origin::Requested,
                fds: vec![Some(Fd::new(fd))],
                kept: None,
            },
        );
        (id, addr)
    }

    /// Close a listener bound at a worker's request (a Unix socket's file is
    /// removed). The app's own listeners stay open.
    pub(crate) fn close_requested(&mut self, id: ListenerId) {
        if self.keeping {
            return;
        }
        if self.get(id).is_some_and(|l| l.origin == Origin::Requested) {
            if let Some(l) = self.listeners.remove(&id) {
                shut_down(&l);
                remove_file_of(&l);
            }
        }
    }

    /// The sockets slot `slot` inherits (our own copies, open until the
    /// fork even if a socket closes meanwhile), binding a reuseport socket
    /// on the slot's first use.
    pub(crate) fn inherit(&mut self, slot: Slot) -> io::Result<Vec<OwnedFd>> {
        let index = if self.reuseport { slot } else { 0 };
        let ours = ..ListenerId(self.from_definition);
        let mut fds = Vec::new();
        for l in self.listeners.range_mut(ours).map(|(_, l)| l) {
            if l.fds.len() <= index {
                l.fds.resize_with(index + 1, || None);
            }
            if l.kept == Some(index) {
                l.kept = None;
            }
            // The socket an empty slot kept open (with the clients queued
            // on it) goes to the slot that starts first.
            if l.fds[index].is_none() {
                if let Some(kept) = l.kept.take() {
                    l.fds[index] = l.fds.get_mut(kept).and_then(Option::take);
                }
            }
            if l.fds[index].is_none() {
                let fd = socket::bind_listener(&l.addr, true).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot bind a reuseport socket on {}: {e}", l.addr),
                    )
                })?;
                l.fds[index] = Some(Fd::new(fd));
            }
            fds.push(l.fds[index].as_ref().expect("bound above").try_clone()?);
        }
        Ok(fds)
    }

    /// A reuseport socket whose slot has no worker would take its share of
    /// connections and never accept them: close it (it is bound again when
    /// the slot gets a worker). Shared sockets never close.
    pub(crate) fn close_slot(&mut self, slot: Slot) {
        if !self.reuseport {
            return;
        }
        let ours = ..ListenerId(self.from_definition);
        for l in self.listeners.range_mut(ours).map(|(_, l)| l) {
            if let Some(fd) = l.fds.get_mut(slot) {
                *fd = None;
            }
            if l.kept == Some(slot) {
                l.kept = None;
            }
        }
    }

    /// A slot whose worker is gone for a while (waiting out its backoff,
    /// or not restarted): close its reuseport socket — the kernel would
    /// keep hashing new clients to it, and they would hang until a worker
    /// accepts there (up to `max_restart_delay`) — unless it is the last
    /// socket of its listener still open, whose queue is better than a
    /// refused connection: that one the next slot to start takes over, with
    /// the clients queued on it. Connections waiting in a closed socket's queue are
    /// reset (or moved to another worker's socket with
    /// `net.ipv4.tcp_migrate_req=1`).
    pub(crate) fn close_slot_while_empty(&mut self, slot: Slot) {
        if !self.reuseport {
            return;
        }
        let ours = ..ListenerId(self.from_definition);
        for l in self.listeners.range_mut(ours).map(|(_, l)| l) {
            let others_open = l
                .fds
                .iter()
                .enumerate()
                .any(|(i, fd)| i != slot && fd.is_some());
            if others_open {
                if let Some(fd) = l.fds.get_mut(slot) {
                    *fd = None;
                }
            } else if l.fds.get(slot).is_some_and(Option::is_some) {
                l.kept = Some(slot);
            }
        }
    }

    /// Close the reuseport sockets of every slot from `slots` on (after
    /// scaling down to that many slots).
    pub(crate) fn close_slots_from(&mut self, slots: usize) {
        let bound = self
            .listeners
            .values()
            .map(|l| l.fds.len())
            .max()
            .unwrap_or(0);
        for slot in slots..bound {
            self.close_slot(slot);
        }
    }

    /// Take every socket out (the listeners keep their numbers only), as
    /// the fds a new binary would inherit.
    #[cfg(test)]
    pub(crate) fn take_fds(&mut self) -> Vec<OwnedFd> {
        self.listeners
            .values_mut()
            .flat_map(|l| l.fds.iter_mut())
            .filter_map(|fd| fd.take().map(Fd::into_owned))
            .collect()
    }

    /// The app is stopping to start again: keep every listener open, even
    /// one its workers stop using, for [`keep_for_next_start`](Self::keep_for_next_start).
    pub(crate) fn keep_all(&mut self) {
        self.keeping = true;
    }

    /// The app is done but starts again (a restart): its listening sockets,
    /// open, for the next start to take instead of binding (clients wait in
    /// their queues meanwhile). Reuseport sockets close with their slots,
    /// as always.
    pub(crate) fn keep_for_next_start(&mut self) -> Held {
        let mut held = std::mem::take(&mut self.held);
        if self.reuseport {
            self.close_all();
            return Held::default();
        }
        for l in std::mem::take(&mut self.listeners).into_values() {
            if let Some(fd) = l.fds.into_iter().next().flatten() {
                held.0.push((l.addr, fd.into_owned()));
            }
        }
        held
    }

    /// The app is done: stop its sockets for good (also the copies the
    /// daemon holds: the port is free and clients are refused, as with no
    /// app) and remove the files of its Unix sockets.
    pub(crate) fn close_all(&mut self) {
        for l in self.listeners.values() {
            shut_down(l);
            remove_file_of(l);
        }
        self.held.shut_down();
    }
}

/// Stop a listener's sockets for good, in the daemon's copies too (see
/// [`socket::shut_down`]).
fn shut_down(l: &Listener) {
    for fd in l.fds.iter().flatten() {
        socket::shut_down(fd.owned());
    }
}

fn remove_file_of(l: &Listener) {
    if let ListenAddr::Unix(path) = &l.addr {
        let _ = std::fs::remove_file(path);
    }
}

/// Bind one of the app's own listeners, with an error that says what to do.
fn bind(addr: &ListenAddr, reuseport: bool) -> Result<OwnedFd, ListenError> {
    socket::bind_listener(addr, reuseport).map_err(|source| {
        let reason = match source.kind() {
            io::ErrorKind::AddrInUse => match addr {
                ListenAddr::Tcp(_) => "the address is already in use; stop the program using it or choose another port".to_string(),
                // The OS layer says which: a live socket, or a file that is no socket.
                ListenAddr::Unix(_) => format!("{source}; choose another path, or stop or remove what is there"),
            },
            io::ErrorKind::PermissionDenied => match addr {
                ListenAddr::Tcp(_) => "permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE, so choose a port from 1024 up".to_string(),
                ListenAddr::Unix(_) => "permission denied; choose a directory herd may write to".to_string(),
            },
            io::ErrorKind::AddrNotAvailable => {
                "no interface of this machine has that address; use 127.0.0.1, 0.0.0.0 or one of its addresses".to_string()
            }
            _ => source.to_string(),
        };
        ListenError::Bind { addr: addr.clone(), reason, source }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The socket's inode: the same socket in two fds has one.
    fn inode(fd: &impl AsRawFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    }

    fn listening(addr: &str) -> (ListenAddr, OwnedFd) {
        let fd = socket::bind_listener(&addr.parse().unwrap(), false).unwrap();
        (socket::local_addr(&fd).unwrap(), fd)
    }

    #[test]
    fn held_sockets_are_taken_by_address_and_what_is_left_is_shut_down() {
        let (web, web_fd) = listening("127.0.0.1:0");
        let (other, other_fd) = listening("127.0.0.1:0");
        let (asked, asked_fd) = listening("127.0.0.1:0");
        // The daemon's copies, as it would keep them.
        let copies = [&web_fd, &other_fd, &asked_fd].map(|fd| fd.try_clone().unwrap());
        let mut spec = AppSpec::new("held", "/bin/true");
        spec.listeners.push(format!("web={web}").parse().unwrap());
        let held = Held::new(vec![
            (web.clone(), web_fd),
            (other.clone(), other_fd),
            (asked.clone(), asked_fd),
        ]);
        let (mut listeners, _) = Listeners::bind_or_take(&spec, held).unwrap();
        // The definition's listener is the held socket, not a new one.
        let id = listeners.of_definition_for(&web).unwrap();
        assert_eq!(inode(listeners.fd(id).unwrap()), inode(&copies[0]));
        // So is one a worker asks for.
        let (id, addr) = listeners.bind_requested("asked", &asked).unwrap();
        assert_eq!(addr, asked);
        assert_eq!(inode(listeners.fd(id).unwrap()), inode(&copies[2]));
        // Both (and the one not taken yet) are listed for the daemon.
        let listed: Vec<ListenAddr> = listeners
            .shared_sockets()
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        assert_eq!(listed, [web.clone(), asked.clone(), other.clone()]);
        // Every worker is ready: the one nobody took is stopped, copies too.
        listeners.drop_held();
        assert!(!socket::is_listening(&copies[1]), "{other} still listens");
        assert!(socket::is_listening(&copies[0]) && socket::is_listening(&copies[2]));
        // A requested listener closed on purpose stops in the copies too.
        listeners.close_requested(id);
        assert!(!socket::is_listening(&copies[2]), "{asked} still listens");
        // And the app's end stops the rest.
        listeners.close_all();
        assert!(!socket::is_listening(&copies[0]), "{web} still listens");
    }

    #[test]
    fn a_restart_keeps_every_listener_open_for_the_next_start() {
        let mut spec = AppSpec::new("restart", "/bin/true");
        spec.listeners.push("web=127.0.0.1:0".parse().unwrap());
        let (mut listeners, _) = Listeners::bind(&spec).unwrap();
        let web = listeners.fd(ListenerId(0)).unwrap().try_clone().unwrap();
        // A free port (bound and let go), for a worker to ask for.
        let (asked, probe) = listening("127.0.0.1:0");
        drop(probe);
        let (id, asked) = listeners.bind_requested("asked", &asked).unwrap();
        let requested = listeners.fd(id).unwrap().try_clone().unwrap();
        listeners.keep_all();
        // Its workers stop using it: it stays, open, while the app restarts.
        listeners.close_requested(id);
        let held = listeners.keep_for_next_start();
        assert!(socket::is_listening(&web) && socket::is_listening(&requested));
        // The next start takes both (the same sockets), binding nothing.
        spec.listeners[0].addr = socket::local_addr(&web).unwrap();
        let (mut next, _) = Listeners::bind_or_take(&spec, held).unwrap();
        assert_eq!(inode(next.fd(ListenerId(0)).unwrap()), inode(&web));
        let (id, _) = next.bind_requested("asked", &asked).unwrap();
        assert_eq!(inode(next.fd(id).unwrap()), inode(&requested));
    }

    #[test]
    fn reuseport_apps_shut_held_sockets_down_and_list_none() {
        let (web, web_fd) = listening("127.0.0.1:0");
        let copy = web_fd.try_clone().unwrap();
        let mut spec = AppSpec::new("held", "/bin/true");
        spec.balance = Balance::ReusePort;
        spec.listeners.push("web=127.0.0.1:0".parse().unwrap());
        let (listeners, _) =
            Listeners::bind_or_take(&spec, Held::new(vec![(web, web_fd)])).unwrap();
        assert!(listeners.shared_sockets().is_empty());
        assert!(listeners.held.is_empty());
        // Shut down (the daemon's copy too): a shared socket at the same
        // address would keep the slots' reuseport sockets from binding.
        assert!(!socket::is_listening(&copy));
    }
}
