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

use tokio::sync::mpsc;

use super::events::{timed, Event, Stream, Timed, MAX_LINE};
use crate::machine::Slot;

/// A worker's output pump and what the exit report needs to know of it.
pub(crate) struct Pump {
    pub(crate) task: tokio::task::JoinHandle<()>,
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

pub(crate) fn start_pump(
    fd: OwnedFd,
    slot: Slot,
    pid: u32,
    stream: Stream,
    events: mpsc::Sender<Timed>,
) -> Pump {
    let progress = Arc::new(AtomicU64::new(0));
    let blocked = Arc::new(AtomicBool::new(false));
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
    ));
    Pump {
        task,
        progress,
        blocked,
    }
}

struct PumpInfo {
    slot: Slot,
    pid: u32,
    stream: Stream,
    progress: Arc<AtomicU64>,
    blocked: Arc<AtomicBool>,
}

impl PumpInfo {
    /// Deliver a batch of whole lines, waiting for room; false when nobody
    /// listens any more.
    async fn deliver(&self, events: &mpsc::Sender<Timed>, lines: Vec<u8>) -> bool {
        let event = timed(Event::Output {
            slot: self.slot,
            pid: self.pid,
            stream: self.stream,
            lines,
        });
        let sent = match events.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.blocked.store(true, Ordering::Relaxed);
                let sent = events.send(event).await.is_ok();
                self.blocked.store(false, Ordering::Relaxed);
                sent
            }
        };
        self.progress.fetch_add(1, Ordering::Relaxed);
        sent
    }
}

thread_local! {
    /// One pipe read's worth of room, shared by the output pumps that run on
    /// this thread (a read copies out what it got before the next await).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

/// Forward a worker's output as whole lines, with backpressure: the next
/// read waits until the batch before it found room in the event channel, so
/// a slow consumer leaves the data in the pipe and the worker waits in
/// `write`. A line is never split, except one longer than [`MAX_LINE`],
/// which is cut there (the rest follows as the next line). A last line
/// without a newline gets one. Memory: one unfinished line (at most
/// [`MAX_LINE`]); reads go through the thread's shared scratch buffer.
async fn pump(fd: OwnedFd, info: PumpInfo, events: mpsc::Sender<Timed>) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    // Only an unfinished line stays here between reads: an idle worker's
    // pumps hold no buffer (a daemon runs hundreds of them).
    let mut buf: Vec<u8> = Vec::new();
    // Where the unfinished line starts in `buf`.
    let mut line_start = 0;
    loop {
        if pipe.readable().await.is_err() {
            break;
        }
        let mut scan = buf.len();
        // Read into the thread's scratch buffer, keep just the bytes read.
        let read = SCRATCH.with_borrow_mut(|scratch| {
            let n = pipe.try_read(scratch)?;
            buf.extend_from_slice(&scratch[..n]);
            Ok::<_, io::Error>(n)
        });
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        info.progress.fetch_add(1, Ordering::Relaxed);
        loop {
            // A line ends at its newline, or is cut after MAX_LINE bytes.
            let limit = line_start + MAX_LINE;
            let end = buf.len().min(limit + 1);
            match buf[scan..end].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    line_start = scan + i + 1;
                    scan = line_start;
                }
                None if buf.len() > limit => {
                    buf.insert(limit, b'\n');
                    line_start = limit + 1;
                    scan = line_start;
                }
                None => break,
            }
        }
        if line_start == 0 {
            continue;
        }
        let rest = buf.split_off(line_start);
        let lines = std::mem::replace(&mut buf, rest);
        line_start = 0;
        if !info.deliver(&events, lines).await {
            return;
        }
    }
    if !buf.is_empty() {
        buf.push(b'\n');
        info.deliver(&events, buf).await;
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
        let _pump = start_pump(r, 0, 1, Stream::Stdout, tx);
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
        let pump = start_pump(r, 0, 1, Stream::Stdout, tx);
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
        let pump = start_pump(r, 0, 1, Stream::Stdout, tx);
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
