//! A pid file held locked by the one process it names (the daemon's
//! `herd.pid`, each app supervisor's `apps/<id>.pid`): an exclusive `flock`
//! for the holder's life, its pid written in just after it locks. Others
//! only probe it, by taking it shared for an instant. So two moments are
//! normal and must not be misread: a probe holding the lock while a holder
//! locks (the holder tries again for a moment, rather than take the probe
//! for another holder and give up), and a holder that has locked but not
//! written its pid yet (a probe waits a moment for the pid, rather than
//! take a running holder for none).

use std::fs::File;
use std::io::{Read, Seek};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// How long a lock busy for a moment (a probe), or a pid not written yet,
/// is waited for.
const SETTLE: Duration = Duration::from_millis(250);
const POLL: Duration = Duration::from_millis(2);

/// Why a pid file could not be taken.
#[derive(Debug)]
pub enum TakeError {
    /// Another holds it: what its file says (its pid, or nothing yet).
    Held(String),
    Other(Errno),
}

/// Take `file`'s lock exclusively (a probe in the way is waited out).
pub fn take(file: File) -> Result<Flock<File>, TakeError> {
    let deadline = Instant::now() + SETTLE;
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((busy, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = busy;
                std::thread::sleep(POLL);
            }
            Err((mut held, Errno::EWOULDBLOCK)) => {
                return Err(TakeError::Held(
                    written_pid(&mut held)
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                ))
            }
            Err((_, e)) => return Err(TakeError::Other(e)),
        }
    }
}

/// The pid of the process holding `file`'s lock; `None` when none does.
pub fn holder(file: File) -> Option<u32> {
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        // Free (the probe lock is released as it drops).
        Ok(_) => None,
        Err((mut held, Errno::EWOULDBLOCK)) => written_pid(&mut held),
        Err(_) => None,
    }
}

/// The pid in a held pid file, waited for a moment if the holder has not
/// written it yet.
fn written_pid(file: &mut File) -> Option<u32> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut text = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() {
            if let Ok(pid) = text.trim().parse() {
                return Some(pid);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn open(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    /// Regression, found by the kill loop (tests/it/kill_loop.rs): a daemon
    /// starting while a CLI probed `herd.pid` took the probe for another
    /// daemon and exited, and a probe of a lock just taken, its pid not yet
    /// written, said no daemon ran; the CLI then failed with "the herd
    /// daemon did not start: another herd daemon (pid ) already runs".
    #[test]
    fn a_probe_is_not_a_holder_and_a_holder_without_its_pid_yet_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        // A probe holds it shared for a moment: the holder still takes it.
        let probe = Flock::lock(open(&path), FlockArg::LockSharedNonblock).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(probe);
        });
        let mut held = take(open(&path)).expect("taken once the probe is gone");
        releaser.join().unwrap();
        // Locked, its pid written a moment later: a probe waits for it.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writeln!(held, "4242").unwrap();
            held
        });
        assert_eq!(holder(open(&path)), Some(4242));
        let held = writer.join().unwrap();
        // Held for good: another is refused, naming it.
        match take(open(&path)) {
            Err(TakeError::Held(pid)) => assert_eq!(pid, "4242"),
            other => panic!("{other:?}"),
        }
        drop(held);
        assert_eq!(holder(open(&path)), None);
    }
}
