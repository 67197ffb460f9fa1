//! How a reload replaces the app's workers: the [`ReloadOrder`] the driver
//! gives the machine before each reload or replacement, chosen from what
//! the running workers really listen on (`os::listening`); when a
//! successor counts as ready; and what the user is told.
//!
//! A socket herd hands a worker (`--listen`, or one it binds as a Node
//! cluster primary) is herd's and stays open across a reload, so a new
//! worker always starts beside the old one. A worker that listens by itself
//! (fork mode, an app that binds its own port, a Node worker's
//! `exclusive: true`) is different: its successor can listen beside it only
//! if the socket has `SO_REUSEPORT` (Bun's and Deno's `reusePort`, Node ≥
//! 23's, most Go and Rust servers). If every socket a worker holds alone
//! admits a second listener, the reload starts each new worker first (no
//! downtime); if one does not, or herd cannot tell, it stops each worker
//! before starting its successor — pm2's restart, said as such — so a
//! reload never ends with the old code still running for want of a port.
//!
//! Readiness: a successor whose predecessor listened by itself is ready
//! once its ready delay has passed *and* it listens on as many sockets of
//! its own as the predecessor did (a slow start is waited for; a new
//! version that never listens is not taken for ready). The driver holds the
//! machine's ready-delay timer until then, polling every
//! [`LISTEN_POLL`], and past `--listen-timeout` hands the machine the
//! listen timeout instead, which aborts the reload.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::clock::MonoTime;
use crate::machine::{ReloadOrder, Slot, WorkerId};
use crate::os::listening::{self, Endpoint};

/// How often a held successor is checked for its listening sockets.
pub(crate) const LISTEN_POLL: Duration = Duration::from_millis(50);

/// What the user is told to do for a zero-downtime reload.
const ZERO_DOWNTIME: &str = "For a zero-downtime reload, let herd hold the socket (cluster mode for a Node app, --listen for any app) or listen with reusePort (Bun, Deno, Node >= 23, most Go and Rust servers)";

/// The order for the next reload, and what to tell the user about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    pub(crate) order: ReloadOrder,
    pub(crate) notes: Vec<String>,
}

/// The reload part's state, as plain data.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Reloads {
    /// The note on `tcp_migrate_req` was given (it is given once per app).
    migrate_note_given: bool,
    /// How many sockets each slot's worker listened on by itself when the
    /// last reload was chosen: its successor listens on as many before it
    /// is ready.
    listened: BTreeMap<Slot, usize>,
    /// Successors whose ready delay has passed, held until they listen:
    /// the deadline of each.
    held: BTreeMap<WorkerId, MonoTime>,
}

/// What became of a held successor at a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Not held (any more): nothing to do.
    NotHeld,
    /// It listens: feed the machine its ready delay now.
    Ready,
    /// Not yet: check again after [`LISTEN_POLL`].
    Again,
    /// Its time is up: feed the machine its listen timeout.
    TimedOut { listening: usize, wanted: usize },
}

impl Reloads {
    /// Choose how to replace `workers` (slot, pid: each leads its process
    /// group). `what` names the operation for the user ("reload",
    /// "replacing worker 1").
    pub(crate) fn choose(&mut self, what: &str, workers: &[(Slot, Pid)]) -> Choice {
        let stop_first = |why: String| {
            Choice {
            order: ReloadOrder::StopFirst,
            notes: vec![format!(
                "{what} is a restart, one worker at a time (stop, then start, as pm2 does for such apps): {why}. {ZERO_DOWNTIME}"
            )],
        }
        };
        self.listened.clear();
        let pgids: Vec<Pid> = workers.iter().map(|&(_, pid)| pid).collect();
        let found = match listening::own_listeners(&pgids) {
            Ok(found) => found,
            Err(e) => {
                return stop_first(format!(
                    "herd cannot tell whether a new worker could listen beside the old ones ({e})"
                ))
            }
        };
        for &(slot, pgid) in workers {
            let n = found.get(&pgid).map_or(0, Vec::len);
            if n > 0 {
                self.listened.insert(slot, n);
            }
        }
        let mut shared = None;
        for &(slot, pgid) in workers {
            for own in found.get(&pgid).into_iter().flatten() {
                let who = format!("worker {slot} (pid {})", own.pid);
                match &own.endpoint {
                    Endpoint::Tcp(addr) => match listening::can_listen_beside(*addr) {
                        Ok(true) => {
                            shared.get_or_insert((who, addr.to_string()));
                        }
                        Ok(false) => {
                            return stop_first(format!(
                                "{who} listens on {addr} by itself, without SO_REUSEPORT, so a new worker could not listen beside it"
                            ))
                        }
                        Err(e) => {
                            return stop_first(format!(
                                "herd cannot tell whether a new worker could listen on {addr} beside {who} ({e})"
                            ))
                        }
                    },
                    Endpoint::Unix(path) => {
                        return stop_first(format!(
                            "{who} listens on the Unix socket {path} by itself, and a Unix socket has one listener"
                        ))
                    }
                }
            }
        }
        let mut notes = Vec::new();
        if let Some((who, addr)) = shared {
            if !self.migrate_note_given {
                if let Some(note) = migrate_note(&who, &addr) {
                    self.migrate_note_given = true;
                    notes.push(note);
                }
            }
        }
        Choice {
            order: ReloadOrder::StartFirst,
            notes,
        }
    }

    /// The ready delay of `worker`, the successor of `slot` (its process
    /// group `pgid`), has passed: true if it must wait until it listens
    /// (it is then held until `deadline`).
    pub(crate) fn hold(
        &mut self,
        worker: WorkerId,
        slot: Slot,
        pgid: Pid,
        deadline: MonoTime,
    ) -> bool {
        let wanted = self.listened.get(&slot).copied().unwrap_or(0);
        if wanted == 0 || listening_count(pgid) >= wanted {
            return false;
        }
        self.held.insert(worker, deadline);
        true
    }

    /// Check a held successor (`None`: it has no process any more).
    pub(crate) fn check(
        &mut self,
        worker: WorkerId,
        running: Option<(Slot, Pid)>,
        now: MonoTime,
    ) -> Check {
        let Some(&deadline) = self.held.get(&worker) else {
            return Check::NotHeld;
        };
        let Some((slot, pgid)) = running else {
            // It exited: the machine hears of that on its own.
            self.held.remove(&worker);
            return Check::NotHeld;
        };
        let wanted = self.listened.get(&slot).copied().unwrap_or(0);
        let listening = listening_count(pgid);
        if listening >= wanted {
            self.held.remove(&worker);
            Check::Ready
        } else if now >= deadline {
            self.held.remove(&worker);
            Check::TimedOut { listening, wanted }
        } else {
            Check::Again
        }
    }
}

/// How many sockets the group `pgid` listens on by itself; when herd
/// cannot tell, as many as it could want (it is not held back).
fn listening_count(pgid: Pid) -> usize {
    match listening::own_listeners(&[pgid]) {
        Ok(found) => found.get(&pgid).map_or(0, Vec::len),
        Err(_) => usize::MAX,
    }
}

/// What a reload beside a worker's own `SO_REUSEPORT` socket costs when the
/// kernel resets the connections queued on a listener that closes.
fn migrate_note(who: &str, addr: &str) -> Option<String> {
    let setting = match listening::tcp_migrate_req() {
        Ok(Some(true)) => return None,
        Ok(Some(false)) => "net.ipv4.tcp_migrate_req is 0 here",
        Ok(None) => "this kernel has no net.ipv4.tcp_migrate_req (Linux 5.14 and later have it)",
        Err(_) => "net.ipv4.tcp_migrate_req cannot be read here",
    };
    Some(format!(
        "{who} listens on {addr} by itself with SO_REUSEPORT, so a reload starts each new worker beside the old one; but {setting}, so the connections still waiting in the accept queue of a worker that stops are reset (a few per reload under load). `sysctl -w net.ipv4.tcp_migrate_req=1` (kept in /etc/sysctl.d/) moves them to the new worker instead; herd never changes it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::listening::child_holding;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// Choose for one worker (a child in its own group) holding `listener` alone.
    fn choose_for(listener: TcpListener, reloads: &mut Reloads) -> Choice {
        let mut child = child_holding(&[listener.as_raw_fd()]);
        drop(listener);
        let workers = [(0, Pid::from_raw(child.id() as i32))];
        let choice = reloads.choose("reload", &workers);
        let _ = child.kill();
        let _ = child.wait();
        choice
    }

    #[test]
    fn a_worker_with_its_own_plain_listener_is_restarted_and_told_why() {
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        let mut reloads = Reloads::default();
        let choice = choose_for(plain, &mut reloads);
        assert_eq!(choice.order, ReloadOrder::StopFirst);
        assert_eq!(choice.notes.len(), 1);
        let note = &choice.notes[0];
        assert!(note.starts_with("reload is a restart"), "{note}");
        assert!(
            note.contains(&format!(
                "listens on {addr} by itself, without SO_REUSEPORT"
            )),
            "{note}"
        );
        assert!(
            note.contains("--listen") && note.contains("reusePort"),
            "{note}"
        );
    }

    #[test]
    fn a_worker_with_its_own_reuseport_listener_is_replaced_start_first() {
        let mut reloads = Reloads::default();
        for round in 0..2 {
            let fd =
                crate::os::socket::bind_listener(&"127.0.0.1:0".parse().unwrap(), true).unwrap();
            let choice = choose_for(TcpListener::from(fd), &mut reloads);
            assert_eq!(choice.order, ReloadOrder::StartFirst, "{:?}", choice.notes);
            let migrate = listening::tcp_migrate_req().unwrap();
            if round == 0 && migrate != Some(true) {
                assert_eq!(choice.notes.len(), 1, "{:?}", choice.notes);
                assert!(
                    choice.notes[0].contains("tcp_migrate_req"),
                    "{:?}",
                    choice.notes
                );
                assert!(reloads.migrate_note_given);
            } else {
                assert!(choice.notes.is_empty(), "said once: {:?}", choice.notes);
            }
        }
    }

    #[test]
    fn workers_that_hold_nothing_alone_are_replaced_start_first() {
        // A socket herd holds too (handed over), and a group that is gone.
        let shared = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut child = child_holding(&[shared.as_raw_fd()]);
        let workers = [
            (0, Pid::from_raw(child.id() as i32)),
            (1, Pid::from_raw(i32::MAX - 7)),
        ];
        let mut reloads = Reloads::default();
        let choice = reloads.choose("reload", &workers);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            choice,
            Choice {
                order: ReloadOrder::StartFirst,
                notes: vec![]
            }
        );
    }

    #[test]
    fn a_successor_is_held_until_it_listens_as_much_as_its_predecessor() {
        let mut reloads = Reloads::default();
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        choose_for(plain, &mut reloads);
        let now = MonoTime::now();
        let later = now + Duration::from_secs(3);
        // A successor that does not listen (yet): held, then out of time.
        let mut idle = child_holding(&[]);
        let idle_pid = Pid::from_raw(idle.id() as i32);
        let w = WorkerId(7);
        assert!(reloads.hold(w, 0, idle_pid, later));
        assert_eq!(reloads.check(w, Some((0, idle_pid)), now), Check::Again);
        assert_eq!(
            reloads.check(w, Some((0, idle_pid)), later),
            Check::TimedOut {
                listening: 0,
                wanted: 1
            }
        );
        assert_eq!(reloads.check(w, Some((0, idle_pid)), later), Check::NotHeld);
        // One that exited is let go (the machine hears of its exit).
        assert!(reloads.hold(w, 0, idle_pid, later));
        assert_eq!(reloads.check(w, None, now), Check::NotHeld);
        let _ = idle.kill();
        let _ = idle.wait();
        // One that listens by itself is ready; a slot whose worker did not
        // listen by itself holds nobody.
        let own = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut serving = child_holding(&[own.as_raw_fd()]);
        drop(own);
        let serving_pid = Pid::from_raw(serving.id() as i32);
        assert!(!reloads.hold(WorkerId(8), 0, serving_pid, later));
        assert!(!reloads.hold(WorkerId(9), 1, idle_pid, later));
        let _ = serving.kill();
        let _ = serving.wait();
    }
}
