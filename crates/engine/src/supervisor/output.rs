//! Workers' output: one pump task per pipe (a worker's stdout and stderr)
//! reads whole lines and delivers them as [`Event::Output`], with
//! backpressure: when the consumer is behind, the pump stops reading, the
//! pipe fills, and the worker waits in `write`, as on a slow terminal.
//! Nothing is dropped; a line is never split, except that one longer than
//! [`MAX_LINE`] is cut there (the rest follows as the next line).
//!
//! Runtime wiring only: a pump's state is the unfinished line in its buffer
//! and its task; the pipe's fd number is in the worker's record.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::events::{timed, Event, Stream, Timed, MAX_LINE};
use crate::machine::Slot;

/// A worker's output pump and what the exit report needs to know of it.
pub(crate) struct Pump {
    pub(crate) task: tokio::task::JoinHandle<Option<Paused>>,
    /// Stops the pump at a line boundary (an in-place upgrade).
    stop: Option<oneshot::Sender<()>>,
    /// Bumped on every read and every delivered batch.
    progress: Arc<AtomicU64>,
    /// True while it waits for room in the event channel.
    pub(crate) blocked: Arc<AtomicBool>,
}

/// Wait until a worker's pumps have delivered its output, so that its exit
/// is reported after it. A pump waiting for room in the event channel (a
/// slow consumer) is waited for as long as it takes; one that has read
/// nothing for a second is given up on: a grandchild that left the process
/// group may hold the pipe open.
pub(crate) async fn drained(pumps: [Pump; 2]) {
    let [mut stdout, mut stderr] = pumps;
    loop {
        let before =
            stdout.progress.load(Ordering::Relaxed) + stderr.progress.load(Ordering::Relaxed);
        let drained = async {
            let _ = (&mut stdout.task).await;
            let _ = (&mut stderr.task).await;
        };
        if tokio::time::timeout(Duration::from_secs(1), drained)
            .await
            .is_ok()
        {
            break;
        }
        let after =
            stdout.progress.load(Ordering::Relaxed) + stderr.progress.load(Ordering::Relaxed);
        let blocked =
            stdout.blocked.load(Ordering::Relaxed) || stderr.blocked.load(Ordering::Relaxed);
        if after == before && !blocked {
            break;
        }
    }
}

/// Where a pump stopped when asked to: its pipe, and what it read and did
/// not deliver yet (whole lines it was waiting to deliver, then the
/// unfinished line). A new pump goes on from there.
pub(crate) struct Paused {
    pub(crate) fd: OwnedFd,
    pub(crate) unsent: Vec<u8>,
}

impl Pump {
    /// A pump whose pipe has ended already.
    pub(crate) fn ended() -> Pump {
        Pump {
            task: tokio::spawn(async { None }),
            stop: None,
            progress: Arc::new(AtomicU64::new(0)),
            blocked: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stop the pump (it delivers nothing more): its pipe and what it holds.
    /// `None` if it had ended already (the pipe closed).
    pub(crate) async fn pause(mut self) -> Option<Paused> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.ok().flatten()
    }
}

/// Start a pump on a worker's pipe; `unsent` is what a previous pump held
/// (delivered first).
pub(crate) fn start_pump(
    fd: OwnedFd,
    slot: Slot,
    pid: u32,
    stream: Stream,
    events: mpsc::Sender<Timed>,
    unsent: Vec<u8>,
) -> Pump {
    let progress = Arc::new(AtomicU64::new(0));
    let blocked = Arc::new(AtomicBool::new(false));
    let (stop, stop_rx) = oneshot::channel();
    let task = tokio::spawn(pump(
        fd,
        PumpInfo {
            slot,
            pid,
            stream,
            progress: progress.clone(),
            blocked: blocked.clone(),
        },
        events,
        unsent,
        stop_rx,
    ));
    Pump {
        task,
        stop: Some(stop),
        progress,
        blocked,
    }
}

/// Resolves once a stop is asked for on `stop`; never if its sender is
/// dropped without asking (the receiver is then forgotten, so it is never
/// polled again after completing).
pub(crate) async fn stop_asked(stop: &mut Option<oneshot::Receiver<()>>) {
    if let Some(rx) = stop {
        if rx.await.is_ok() {
            return;
        }
        *stop = None;
    }
    std::future::pending::<()>().await
}

/// What became of a batch of lines.
enum Delivery {
    Sent,
    /// Nobody listens any more.
    Closed,
    /// The pump was stopped first: the lines are handed back.
    Stopped(Vec<u8>),
}

struct PumpInfo {
    slot: Slot,
    pid: u32,
    stream: Stream,
    progress: Arc<AtomicU64>,
    blocked: Arc<AtomicBool>,
}

impl PumpInfo {
    fn event(&self, lines: Vec<u8>) -> Timed {
        timed(Event::Output {
            slot: self.slot,
            pid: self.pid,
            stream: self.stream,
            lines,
        })
    }

    /// Deliver a batch of whole lines, waiting for room (unless stopped).
    async fn deliver(
        &self,
        events: &mpsc::Sender<Timed>,
        lines: Vec<u8>,
        stop: &mut Option<oneshot::Receiver<()>>,
    ) -> Delivery {
        let sent = match events.try_reserve() {
            Ok(permit) => {
                permit.send(self.event(lines));
                Delivery::Sent
            }
            Err(mpsc::error::TrySendError::Closed(())) => Delivery::Closed,
            Err(mpsc::error::TrySendError::Full(())) => {
                self.blocked.store(true, Ordering::Relaxed);
                let sent = tokio::select! {
                    biased;
                    () = stop_asked(stop) => Delivery::Stopped(lines),
                    room = events.reserve() => match room {
                        Ok(permit) => {
                            permit.send(self.event(lines));
                            Delivery::Sent
                        }
                        Err(_) => Delivery::Closed,
                    },
                };
                self.blocked.store(false, Ordering::Relaxed);
                sent
            }
        };
        self.progress.fetch_add(1, Ordering::Relaxed);
        sent
    }
}

/// Forward a worker's output as whole lines, with backpressure: the next
/// read waits until the batch before it found room in the event channel, so
/// a slow consumer leaves the data in the pipe and the worker waits in
/// `write`. A line is never split, except one longer than [`MAX_LINE`],
/// which is cut there (the rest follows as the next line). A last line
/// without a newline gets one. Memory: one unfinished line (at most
/// [`MAX_LINE`]); a read goes straight into the cutter's buffer, sized to
/// what the pipe holds, and leaves with the lines it completed.
///
/// `unsent` (what a previous pump held) is delivered before the first read.
/// `stop` ends the pump between reads or while it waits for room, handing
/// back its pipe and everything it holds ([`Paused`]).
async fn pump(
    fd: OwnedFd,
    info: PumpInfo,
    events: mpsc::Sender<Timed>,
    unsent: Vec<u8>,
    stop: oneshot::Receiver<()>,
) -> Option<Paused> {
    let mut stop = Some(stop);
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return None;
    };
    let paused = |pipe: tokio::net::unix::pipe::Receiver, unsent: Vec<u8>| {
        pipe.into_nonblocking_fd()
            .ok()
            .map(|fd| Paused { fd, unsent })
    };
    let mut cutter = LineCutter::new(MAX_LINE);
    // What was handed over goes first.
    let mut lines = cutter.push(&unsent);
    loop {
        if let Some(lines) = lines.take() {
            match info.deliver(&events, lines, &mut stop).await {
                Delivery::Sent => {}
                Delivery::Closed => return None,
                Delivery::Stopped(mut lines) => {
                    lines.extend_from_slice(cutter.held());
                    return paused(pipe, lines);
                }
            }
        }
        tokio::select! {
            biased;
            () = stop_asked(&mut stop) => return paused(pipe, cutter.held().to_vec()),
            readable = pipe.readable() => if readable.is_err() {
                break;
            },
        }
        // Read what the pipe holds (at most its 64 KiB) straight into the
        // cutter's buffer: no buffer stays with an idle pump.
        let read = cutter.read_with(
            crate::os::pending_bytes(std::os::fd::AsFd::as_fd(&pipe), 64 * 1024),
            |buf| pipe.try_read_buf(buf),
        );
        lines = match read {
            Ok((0, _)) => break,
            Ok((_, lines)) => lines,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        };
        info.progress.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(last) = cutter.finish() {
        info.deliver(&events, last, &mut stop).await;
    }
    None
}

/// Cuts a pipe's bytes into whole lines, however the reads split them:
/// pure, so the same bytes always make the same lines. A line ends at its
/// newline, or is cut after `max_line` bytes (a newline is put there; the
/// rest follows as the next line); the last line gets a newline if it has
/// none. Holds only the unfinished line between reads (at most `max_line`
/// bytes): an idle pipe's cutter holds no buffer.
pub(crate) struct LineCutter {
    buf: Vec<u8>,
    max_line: usize,
}

impl LineCutter {
    pub(crate) fn new(max_line: usize) -> LineCutter {
        LineCutter {
            buf: Vec::new(),
            max_line: max_line.max(1),
        }
    }

    /// Take the bytes of one read; the whole lines they complete (with the
    /// unfinished one before them), if any.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let held = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.cut(held)
    }

    /// [`push`](Self::push) without a copy: `read` appends up to `room`
    /// bytes to the cutter's buffer (a would-block or an error leaves it as
    /// it was); what it read and the whole lines that completes.
    pub(crate) fn read_with(
        &mut self,
        room: usize,
        read: impl FnOnce(&mut Vec<u8>) -> io::Result<usize>,
    ) -> io::Result<(usize, Option<Vec<u8>>)> {
        let held = self.buf.len();
        self.buf.reserve(room);
        let read = read(&mut self.buf);
        let lines = match read {
            Ok(n) if n > 0 => self.cut(held),
            _ => None,
        };
        // What stays is at most one unfinished line: not the read's room
        // with it (a long line still grows by doubling).
        if self.buf.capacity() > 2 * self.buf.len() + 4096 {
            self.buf.shrink_to_fit();
        }
        read.map(|n| (n, lines))
    }

    /// Cut the buffer's whole lines off, `held` bytes of it having been
    /// there (and searched) before.
    fn cut(&mut self, held: usize) -> Option<Vec<u8>> {
        // The unfinished line held no newline and was within the limit.
        let mut scan = held;
        // Where the unfinished line starts.
        let mut line_start = 0;
        loop {
            let limit = line_start + self.max_line;
            let end = self.buf.len().min(limit + 1);
            match self.buf[scan..end].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    line_start = scan + i + 1;
                    scan = line_start;
                }
                None if self.buf.len() > limit => {
                    self.buf.insert(limit, b'\n');
                    line_start = limit + 1;
                    scan = line_start;
                }
                None => break,
            }
        }
        if line_start == 0 {
            return None;
        }
        let rest = self.buf.split_off(line_start);
        Some(std::mem::replace(&mut self.buf, rest))
    }

    /// The unfinished line it holds.
    pub(crate) fn held(&self) -> &[u8] {
        &self.buf
    }

    /// The pipe ended: the unfinished line, with its newline.
    pub(crate) fn finish(&mut self) -> Option<Vec<u8>> {
        if self.buf.is_empty() {
            return None;
        }
        let mut last = std::mem::take(&mut self.buf);
        last.push(b'\n');
        Some(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::events::{Event, Events, EVENT_QUEUE};
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn pipe() -> (OwnedFd, std::fs::File) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let flags = nix::fcntl::OFlag::from_bits_retain(
            nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_GETFL).unwrap(),
        );
        nix::fcntl::fcntl(
            &r,
            nix::fcntl::FcntlArg::F_SETFL(flags | nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        (r, std::fs::File::from(w))
    }

    #[test]
    fn a_cutter_keeps_no_read_room_only_the_unfinished_line() {
        let mut cutter = LineCutter::new(MAX_LINE);
        let append = |bytes: &'static [u8]| {
            move |buf: &mut Vec<u8>| {
                buf.extend_from_slice(bytes);
                Ok(bytes.len())
            }
        };
        let (n, lines) = cutter.read_with(64 * 1024, append(b"abc")).unwrap();
        assert_eq!((n, lines), (3, None));
        assert_eq!(cutter.held(), b"abc");
        assert!(
            cutter.buf.capacity() < 8 * 1024,
            "{}",
            cutter.buf.capacity()
        );
        let (_, lines) = cutter.read_with(64 * 1024, append(b"def\ngh")).unwrap();
        assert_eq!(lines.as_deref(), Some(&b"abcdef\n"[..]));
        assert_eq!(cutter.held(), b"gh");
        assert!(
            cutter.buf.capacity() < 8 * 1024,
            "{}",
            cutter.buf.capacity()
        );
        // A would-block reads nothing and keeps what was held.
        let blocked = cutter.read_with(1, |_| Err(io::ErrorKind::WouldBlock.into()));
        assert_eq!(blocked.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(cutter.held(), b"gh");
    }

    /// Every line the pump delivered, in order.
    async fn lines_of(events: &mut Events) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(e) = events.recv().await {
            let Event::Output { lines, .. } = e else {
                panic!("not output")
            };
            assert!(lines.ends_with(b"\n"), "a batch holds whole lines");
            out.extend(lines.split_inclusive(|&b| b == b'\n').map(|l| l.to_vec()));
        }
        out
    }

    #[tokio::test]
    async fn output_carries_the_time_it_was_read() {
        let (r, mut w) = pipe();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let mut rx = Events::new(rx);
        let _pump = start_pump(r, 0, 1, Stream::Stdout, tx, Vec::new());
        let before = std::time::SystemTime::now();
        w.write_all(b"hello\n").unwrap();
        drop(w);
        let (at, event) = rx.recv_timed().await.expect("an event");
        assert!(matches!(event, Event::Output { .. }), "{event:?}");
        assert!(at >= before && at <= std::time::SystemTime::now());
    }

    #[tokio::test]
    async fn pump_cuts_long_lines_at_exactly_max_line_and_ends_the_last_one() {
        let (r, mut w) = pipe();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let mut rx = Events::new(rx);
        let pump = start_pump(r, 0, 1, Stream::Stdout, tx, Vec::new());
        let writer = std::thread::spawn(move || {
            let exact = vec![b'a'; MAX_LINE];
            w.write_all(&exact).unwrap();
            w.write_all(b"\n").unwrap();
            w.write_all(&vec![b'b'; MAX_LINE + 5]).unwrap();
            w.write_all(b"\nshort\ntail").unwrap();
        });
        let lines = lines_of(&mut rx).await;
        writer.join().unwrap();
        pump.task.await.unwrap();
        let shape: Vec<(u8, usize)> = lines.iter().map(|l| (l[0], l.len() - 1)).collect();
        assert_eq!(
            shape,
            vec![
                (b'a', MAX_LINE),
                (b'b', MAX_LINE),
                (b'b', 5),
                (b's', 5),
                (b't', 4)
            ],
            "a line of exactly MAX_LINE is whole; a longer one is cut there; the last gets its newline"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pump_stops_reading_while_the_consumer_is_behind_and_loses_nothing() {
        let (r, mut w) = pipe();
        let (tx, rx) = mpsc::channel(1);
        let mut rx = Events::new(rx);
        let pump = start_pump(r, 0, 1, Stream::Stdout, tx, Vec::new());
        const N: usize = 100_000;
        let writer = std::thread::spawn(move || {
            for i in 0..N {
                writeln!(w, "line {i:>8} {}", "x".repeat(80)).unwrap();
            }
        });
        // Nobody reads: the writer is held back by the full pipe (10 MB
        // cannot fit in a 64 KiB pipe and one queued batch).
        let stalled = Instant::now();
        while stalled.elapsed() < Duration::from_millis(300) {
            assert!(
                !writer.is_finished(),
                "the writer must wait for the consumer"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            pump.blocked.load(Ordering::Relaxed),
            "the pump waits for room"
        );
        let lines = lines_of(&mut rx).await;
        writer.join().unwrap();
        assert_eq!(lines.len(), N);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(
                *l,
                format!("line {i:>8} {}\n", "x".repeat(80)).into_bytes(),
                "line {i}"
            );
        }
    }
}
