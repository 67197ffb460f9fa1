//! herd-signals: Unix signals as async streams on tokio, for processes that
//! must stay small.
//!
//! Why not `tokio::signal`: with tokio's `signal` (or `process`) feature in
//! the build, every runtime with I/O sets up a registry entry for each of
//! the 64 signals (22 kB of heap) whether or not a signal is ever listened
//! to. herd runs one supervisor process per app, so that was paid once per
//! app. Here a process pays for the signals it listens to: a few bytes of
//! static table, and a pipe per listener.
//!
//! # Theory of operation
//!
//! [`Signal::new`] takes a free slot of a static table ([`MAX_LISTENERS`]
//! slots), gives it a pipe (created once per slot, never closed) and the
//! signal's number, and installs this crate's handler for that signal (once
//! per signal, `SA_RESTART`). The handler runs on whatever thread the kernel
//! picks: for each slot listening to that signal it writes one byte to the
//! slot's pipe (`write` is async-signal-safe; a full pipe already says
//! "delivered") and restores `errno`. A listener waits, in the tokio reactor
//! (`AsyncFd`), for its pipe's read end to be readable, drains it, and
//! reports one delivery: several deliveries before it looked count as one,
//! as with tokio's streams.
//!
//! The pipes stay open for the process's life: a handler running on another
//! thread at the moment a listener is dropped may still write to the slot's
//! pipe, which must never be an fd meanwhile reused for something else. A
//! dropped listener's slot (and pipe, drained first) goes to the next
//! listener of the same signal. The handlers stay installed, as tokio's do; a signal whose
//! listeners are all gone is then ignored.
//!
//! Children: exec resets handled signals to their default action, and no
//! signal mask is changed here, so workers start with the dispositions they
//! would have had.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How many listeners may exist at once in a process (herd's processes use
/// up to 7; tests running in parallel more).
pub const MAX_LISTENERS: usize = 64;

/// One slot of the table the handler reads. `signo` 0: free.
struct Slot {
    signo: AtomicI32,
    /// The signal this slot's pipe has been for (0: none yet). A slot goes
    /// back only to a listener of the same signal: a handler that was still
    /// writing as the previous listener went away can then only have told
    /// of a delivery of that same signal.
    used_for: AtomicI32,
    read: AtomicI32,
    write: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)] // a template for the array
const FREE: Slot = Slot {
    signo: AtomicI32::new(0),
    used_for: AtomicI32::new(0),
    read: AtomicI32::new(-1),
    write: AtomicI32::new(-1),
};

static SLOTS: [Slot; MAX_LISTENERS] = [FREE; MAX_LISTENERS];

/// Which signals have the handler installed (index: the signal's number).
static INSTALLED: [AtomicBool; 65] = [const { AtomicBool::new(false) }; 65];

/// Taking and freeing slots, installing handlers: one at a time.
static SETUP: Mutex<()> = Mutex::new(());

extern "C" fn on_signal(signo: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno, always valid.
    let saved = unsafe { *libc::__errno_location() };
    for slot in &SLOTS {
        if slot.signo.load(Ordering::Acquire) != signo {
            continue;
        }
        let fd = slot.write.load(Ordering::Acquire);
        if fd >= 0 {
            // SAFETY: write(2) is async-signal-safe; `fd` is the slot's
            // pipe, open for the process's life; one byte from a static.
            unsafe {
                libc::write(fd, b"s".as_ptr().cast(), 1);
            }
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// A stream of deliveries of one signal to this process.
#[derive(Debug)]
pub struct Signal {
    slot: usize,
    signo: libc::c_int,
    /// Always there until the drop, which takes it out of the reactor
    /// before the slot (and this fd) can go to another listener.
    pipe: Option<AsyncFd<PipeEnd>>,
}

/// The read end of a slot's pipe, never closed (see the crate's docs).
#[derive(Debug)]
struct PipeEnd(RawFd);

impl AsRawFd for PipeEnd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Signal {
    /// Listen to `signo` from now on (deliveries before this call are not
    /// seen). Must be called within a tokio runtime with I/O enabled.
    /// Signals that cannot be handled (`SIGKILL`, `SIGSTOP`) and those that
    /// report a fault of the thread itself (`SIGSEGV`, `SIGBUS`, `SIGILL`,
    /// `SIGFPE`) are refused, as is a number out of range.
    pub fn new(signo: libc::c_int) -> io::Result<Signal> {
        let forbidden = [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
        ];
        if !(1..INSTALLED.len() as libc::c_int).contains(&signo) || forbidden.contains(&signo) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("signal {signo} cannot be listened to"),
            ));
        }
        let _setup = SETUP.lock().unwrap_or_else(|e| e.into_inner());
        let (slot, read) = take_slot(signo)?;
        if let Err(e) = install(signo) {
            release(slot);
            return Err(e);
        }
        // From here on the handler writes to this slot's pipe.
        SLOTS[slot].signo.store(signo, Ordering::Release);
        // SAFETY: the slot's read end is never closed (see the crate's
        // docs) and PipeEnd always gives that same fd.
        match unsafe { AsyncFd::register_with_interest(PipeEnd(read), Interest::READABLE) } {
            Ok(pipe) => Ok(Signal {
                slot,
                signo,
                pipe: Some(pipe),
            }),
            Err(e) => {
                release(slot);
                Err(io::Error::from(e))
            }
        }
    }

    /// The signal this listens to.
    pub fn signo(&self) -> libc::c_int {
        self.signo
    }

    /// The next delivery (those since the last call count as one). `None`
    /// only if the reactor is gone (the runtime is shutting down).
    pub async fn recv(&mut self) -> Option<()> {
        let pipe = self.pipe.as_ref()?;
        loop {
            let mut ready = pipe.readable().await.ok()?;
            if drain(pipe.get_ref().0) > 0 {
                return Some(());
            }
            ready.clear_ready();
        }
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        // Out of the reactor first: the next listener of this slot
        // registers the same fd.
        drop(self.pipe.take());
        let _setup = SETUP.lock().unwrap_or_else(|e| e.into_inner());
        release(self.slot);
    }
}

/// A free slot for `signo` with its pipe (made now if the slot never had
/// one), drained of what a previous listener left: one that was used for
/// this signal before, else one never used. Under SETUP.
fn take_slot(signo: libc::c_int) -> io::Result<(usize, RawFd)> {
    let free_for = |wanted: libc::c_int| {
        SLOTS.iter().position(|s| {
            s.signo.load(Ordering::Acquire) == 0 && s.used_for.load(Ordering::Acquire) == wanted
        })
    };
    let slot = free_for(signo).or_else(|| free_for(0)).ok_or_else(|| {
        io::Error::other(format!(
            "more than {MAX_LISTENERS} signal listeners at once in this process"
        ))
    })?;
    let s = &SLOTS[slot];
    let mut read = s.read.load(Ordering::Acquire);
    if read < 0 {
        let mut fds = [-1; 2];
        // SAFETY: pipe2 writes two fds into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        s.read.store(fds[0], Ordering::Release);
        s.write.store(fds[1], Ordering::Release);
        read = fds[0];
    }
    drain(read);
    s.used_for.store(signo, Ordering::Release);
    // Taken, not yet listening: no signal has this number.
    s.signo.store(-1, Ordering::Release);
    Ok((slot, read))
}

/// Give a slot back (its pipe stays open for the next). Under SETUP.
fn release(slot: usize) {
    SLOTS[slot].signo.store(0, Ordering::Release);
}

/// Install the handler for `signo` once. Under SETUP.
fn install(signo: libc::c_int) -> io::Result<()> {
    let installed = &INSTALLED[signo as usize];
    if installed.load(Ordering::Acquire) {
        return Ok(());
    }
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // the handler is an `extern "C" fn(c_int)` that only does
    // async-signal-safe work (atomics, write, errno).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signo, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    installed.store(true, Ordering::Release);
    Ok(())
}

/// Read everything the pipe holds; how many bytes that was.
fn drain(fd: RawFd) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reads into a local buffer of the length given.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return total;
        }
        total += n as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn raise(signo: libc::c_int) {
        // SAFETY: raise sends a signal to this process's calling thread.
        assert_eq!(unsafe { libc::raise(signo) }, 0);
    }

    async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .unwrap_or_else(|_| panic!("{what} within 10 s"))
    }

    #[tokio::test]
    async fn a_delivery_is_seen_even_before_recv_is_polled() {
        let mut usr1 = Signal::new(libc::SIGUSR1).unwrap();
        raise(libc::SIGUSR1);
        raise(libc::SIGUSR1);
        within("the delivery", usr1.recv()).await.unwrap();
        // The two deliveries were one: nothing more is pending.
        let more = tokio::time::timeout(Duration::from_millis(50), usr1.recv()).await;
        assert!(more.is_err(), "a second delivery was reported");
        raise(libc::SIGUSR1);
        within("the next delivery", usr1.recv()).await.unwrap();
    }

    #[tokio::test]
    async fn every_listener_of_a_signal_sees_each_delivery() {
        let mut a = Signal::new(libc::SIGUSR2).unwrap();
        let mut b = Signal::new(libc::SIGUSR2).unwrap();
        assert_eq!(a.signo(), libc::SIGUSR2);
        raise(libc::SIGUSR2);
        within("a's delivery", a.recv()).await.unwrap();
        within("b's delivery", b.recv()).await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_listeners_slot_is_reused_without_its_old_deliveries() {
        let first = Signal::new(libc::SIGWINCH).unwrap();
        let slot = first.slot;
        raise(libc::SIGWINCH); // left unread in the slot's pipe
        drop(first);
        let mut taken = Vec::new();
        let mut next = loop {
            let s = Signal::new(libc::SIGWINCH).unwrap();
            if s.slot == slot {
                break s;
            }
            taken.push(s); // another test's free slot came first: hold it
        };
        let old = tokio::time::timeout(Duration::from_millis(50), next.recv()).await;
        assert!(
            old.is_err(),
            "the previous listener's delivery was reported"
        );
        raise(libc::SIGWINCH);
        within("the new delivery", next.recv()).await.unwrap();
    }

    #[tokio::test]
    async fn signals_that_cannot_be_listened_to_are_refused() {
        for signo in [libc::SIGKILL, libc::SIGSTOP, libc::SIGSEGV, 0, 65, -3] {
            let e = Signal::new(signo).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{signo}");
        }
    }
}
