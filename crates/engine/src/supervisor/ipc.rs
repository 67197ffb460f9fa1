//! A worker's channel, read and written by two tasks of its own: the writer
//! sends the app's messages in order, whole lines at a time (an fd along
//! with one, `SCM_RIGHTS`); the reader splits what arrives into JSON
//! messages and hands them to the app through a bounded queue.
//!
//! Memory is bounded: one message is at most the app's `max_message_bytes`
//! (a longer one is refused and skipped up to its newline, never buffered),
//! and each message waits for room in the queue before the next read, so a
//! flood backs up into the socket and then into the worker's `send`.
//!
//! Runtime wiring only; the channel's fd number is in the worker's record.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::fd::Fd;
use crate::machine::WorkerId;
use crate::os::channel::Channel;

/// Worker messages (all workers together) waiting for the app task.
pub(crate) const MESSAGE_QUEUE: usize = 32;

/// One message (or several whole lines) on its way to a worker.
pub(crate) struct Outgoing {
    pub(crate) line: Vec<u8>,
    /// An fd sent along (a listening socket or a client connection), shared
    /// with the state that holds it until the worker acknowledges it.
    pub(crate) fd: Option<Arc<Fd>>,
}

/// What a worker's channel reader hands the app task, in the channel's order
/// (through the bounded message queue). Plain data: the messages still
/// queued at an in-place upgrade are handed to the new binary.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FromWorker {
    /// A JSON value arrived.
    Message {
        worker: WorkerId,
        value: serde_json::Value,
    },
    /// Something that is not JSON arrived.
    BadMessage { worker: WorkerId, error: String },
    /// A message over the size cap was refused and skipped; `size` is its
    /// length in bytes (`complete`: up to its newline; else the channel
    /// ended first and it was at least that long).
    Oversized {
        worker: WorkerId,
        size: usize,
        complete: bool,
    },
    /// `count` fds came with a message that is no handle message (or more
    /// than the one a handle message carries): closed, never used.
    StrayFds { worker: WorkerId, count: usize },
    /// The channel reached EOF.
    Closed { worker: WorkerId },
}

/// Write queued messages to a worker, one whole line at a time; `unsent`
/// counts the messages queued and not written yet (the sender adds them).
pub(crate) async fn write_channel(
    channel: Arc<Channel>,
    mut outbox: mpsc::UnboundedReceiver<Outgoing>,
    unsent: Arc<AtomicUsize>,
) {
    while let Some(out) = outbox.recv().await {
        let fd: Option<&OwnedFd> = out.fd.as_deref().map(Fd::owned);
        let sent = channel.send(&out.line, fd).await;
        unsent.fetch_sub(1, Ordering::Relaxed);
        if sent.is_err() {
            break;
        }
    }
    // The channel is closed: nothing queued will be written.
    unsent.store(0, Ordering::Relaxed);
}

/// Where a channel reader stopped when asked to (an in-place upgrade): the
/// bytes it read and has not made messages of yet, and how much of an
/// oversized message it was skipping. A new reader goes on from there.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Unread {
    pub(crate) bytes: Vec<u8>,
    pub(crate) skipped: Option<usize>,
}

/// What a channel reader hands back when it ends.
pub(crate) struct ReaderEnd {
    pub(crate) channel: Arc<Channel>,
    /// `Some` when it was stopped (not at the channel's end).
    pub(crate) unread: Option<Unread>,
    /// Messages it had made and not delivered when it was stopped, in order
    /// (they follow the ones in the queue).
    pub(crate) undelivered: Vec<FromWorker>,
}

/// Hand `msgs` to the app task in order, each waiting for room unless the
/// reader is stopped: then the ones not delivered are given back.
async fn deliver(
    tx: &mpsc::Sender<FromWorker>,
    msgs: Vec<FromWorker>,
    stop: &mut Option<oneshot::Receiver<()>>,
) -> Result<(), Option<Vec<FromWorker>>> {
    let mut msgs = msgs.into_iter();
    while let Some(msg) = msgs.next() {
        let msg = match tx.try_send(msg) {
            Ok(()) => continue,
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(None),
            Err(mpsc::error::TrySendError::Full(msg)) => msg,
        };
        tokio::select! {
            biased;
            () = super::output::stop_asked(stop) => {
                let mut back = vec![msg];
                back.extend(msgs);
                return Err(Some(back));
            }
            room = tx.reserve() => match room {
                Ok(permit) => permit.send(msg),
                Err(_) => return Err(None),
            },
        }
    }
    Ok(())
}

/// Read a worker's channel: newline-delimited JSON, fds alongside. One
/// message is at most `max` bytes: a longer one is refused (reported as
/// `Oversized`) and skipped up to its newline without being kept, so memory
/// stays at `max` plus one read. Each message waits for room in the bounded
/// queue to the app task before the next read: a flood backs up into the
/// socket and then into the worker's `send`.
///
/// `from` is where a previous reader stopped (empty for a new worker);
/// `stop` ends the reader between reads or while it waits for room,
/// handing back what it has not delivered ([`ReaderEnd`]).
pub(crate) async fn read_channel(
    channel: Arc<Channel>,
    worker: WorkerId,
    max: usize,
    tx: mpsc::Sender<FromWorker>,
    from: Unread,
    stop: oneshot::Receiver<()>,
) -> ReaderEnd {
    let mut stop = Some(stop);
    let mut lines = Lines::resume(max, from);
    let mut fds = Vec::new();
    let end =
        |channel: Arc<Channel>, lines: &Lines, undelivered: Option<Vec<FromWorker>>| ReaderEnd {
            channel,
            unread: undelivered.as_ref().map(|_| lines.leftover()),
            undelivered: undelivered.unwrap_or_default(),
        };
    // What was left over is handled before the first read.
    let mut first = true;
    loop {
        if !first {
            let got = tokio::select! {
                biased;
                () = super::output::stop_asked(&mut stop) => return end(channel, &lines, Some(Vec::new())),
                got = channel.recv(lines.buffer(), &mut fds) => got,
            };
            let closed = match got {
                Ok(0) => fds.is_empty(),
                Ok(_) => false,
                Err(_) => true,
            };
            if closed {
                let mut last: Vec<FromWorker> =
                    lines.finish().map(|p| p.from(worker)).into_iter().collect();
                last.push(FromWorker::Closed { worker });
                return match deliver(&tx, last, &mut stop).await {
                    Err(Some(back)) => end(channel, &lines, Some(back)),
                    _ => end(channel, &lines, None),
                };
            }
            // herd keeps no fd a worker sends (the handle message says so);
            // closing them keeps us from leaking. Which message they came with
            // is known once its line is complete.
            if !fds.is_empty() {
                lines.fds_arrived(fds.len());
                fds.clear();
            }
        }
        first = false;
        while let Some((piece, carried)) = lines.next_piece() {
            let handle = matches!(&piece, Piece::Message(v)
                if v.get("cmd").and_then(serde_json::Value::as_str) == Some("NODE_HANDLE"));
            let mut msgs = Vec::new();
            if carried > usize::from(handle) {
                msgs.push(FromWorker::StrayFds {
                    worker,
                    count: carried,
                });
            }
            msgs.push(piece.from(worker));
            match deliver(&tx, msgs, &mut stop).await {
                Ok(()) => {}
                Err(None) => return end(channel, &lines, None),
                Err(Some(back)) => return end(channel, &lines, Some(back)),
            }
        }
    }
}

/// One thing a channel's bytes held (see [`Lines`]).
#[derive(Debug, PartialEq)]
pub(crate) enum Piece {
    /// A JSON value.
    Message(serde_json::Value),
    /// A line that is not JSON, and why.
    Bad(String),
    /// A message over the cap, `size` bytes long (`complete`: up to its
    /// newline; else the channel ended first and it was at least that long).
    Oversized { size: usize, complete: bool },
}

impl Piece {
    fn from(self, worker: WorkerId) -> FromWorker {
        match self {
            Piece::Message(value) => FromWorker::Message { worker, value },
            Piece::Bad(error) => FromWorker::BadMessage { worker, error },
            Piece::Oversized { size, complete } => FromWorker::Oversized {
                worker,
                size,
                complete,
            },
        }
    }
}

/// Splits a channel's bytes into messages, one per line: pure, so that
/// how the bytes arrive (one read or many) never changes what comes out.
/// Holds at most `max` bytes of an unfinished message (plus one read): a
/// longer one is counted and dropped as it comes, up to its newline.
pub(crate) struct Lines {
    buf: Vec<u8>,
    /// Complete messages before `start` were handed out.
    start: usize,
    /// `scanned` bytes from `start` hold no newline.
    scanned: usize,
    /// Bytes of an oversized message dropped so far (skipping to its newline).
    skipped: Option<usize>,
    /// Fds that came with the bytes before this position in `buf`: they
    /// belong to the message whose line holds the byte before it.
    fds_at: Option<(usize, usize)>,
    max: usize,
}

impl Lines {
    pub(crate) fn new(max: usize) -> Lines {
        Lines {
            buf: Vec::with_capacity(4096),
            start: 0,
            scanned: 0,
            skipped: None,
            fds_at: None,
            max,
        }
    }

    /// Go on from where another splitter stopped ([`Lines::leftover`]).
    pub(crate) fn resume(max: usize, from: Unread) -> Lines {
        let mut lines = Lines::new(max);
        lines.buf.extend_from_slice(&from.bytes);
        lines.skipped = from.skipped;
        lines
    }

    /// What it holds and has not made messages of yet.
    pub(crate) fn leftover(&self) -> Unread {
        Unread {
            bytes: self.buf[self.start..].to_vec(),
            skipped: self.skipped,
        }
    }

    /// `count` fds came with the bytes read last.
    pub(crate) fn fds_arrived(&mut self, count: usize) {
        let before = self.fds_at.map_or(0, |(_, n)| n);
        self.fds_at = Some((self.buf.len(), before + count));
    }

    /// Where the next read appends its bytes. Call [`Lines::next_piece`]
    /// until it returns `None` before reading again.
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The next message now complete, with the number of fds that came
    /// with it; `None` when the bytes read so far hold no more (what is
    /// left of an unfinished one stays, or is dropped when it is already
    /// over the cap).
    pub(crate) fn next_piece(&mut self) -> Option<(Piece, usize)> {
        while let Some(i) = self.buf[self.start + self.scanned..]
            .iter()
            .position(|&b| b == b'\n')
        {
            let (start, end) = (self.start, self.start + self.scanned + i);
            self.start = end + 1;
            self.scanned = 0;
            let carried = match self.fds_at {
                Some((at, n)) if at <= end + 1 => {
                    self.fds_at = None;
                    n
                }
                _ => 0,
            };
            let line = &self.buf[start..end];
            if let Some(dropped) = self.skipped.take() {
                let size = dropped + line.len();
                return Some((
                    Piece::Oversized {
                        size,
                        complete: true,
                    },
                    carried,
                ));
            }
            if line.len() > self.max {
                let size = line.len();
                return Some((
                    Piece::Oversized {
                        size,
                        complete: true,
                    },
                    carried,
                ));
            }
            if line.iter().all(u8::is_ascii_whitespace) && carried == 0 {
                continue;
            }
            let piece = match serde_json::from_slice(line) {
                Ok(value) => Piece::Message(value),
                Err(e) => Piece::Bad(e.to_string()),
            };
            return Some((piece, carried));
        }
        self.buf.drain(..self.start);
        if self.buf.is_empty() {
            // Every message read is handed out: an idle channel holds no
            // buffer (the next read sizes one by what comes).
            self.buf = Vec::new();
        }
        if let Some((at, _)) = &mut self.fds_at {
            *at -= self.start;
        }
        self.start = 0;
        self.scanned = self.buf.len();
        if self.skipped.is_some() || self.buf.len() > self.max {
            // Over the cap with no end in sight: drop it as it comes.
            self.skipped = Some(self.skipped.unwrap_or(0) + self.buf.len());
            self.buf.clear();
            self.scanned = 0;
            if let Some((at, _)) = &mut self.fds_at {
                *at = 0;
            }
        }
        None
    }

    /// The channel ended: an oversized message it cut short, if any (an
    /// unfinished message within the cap is dropped: it was never sent whole).
    pub(crate) fn finish(&mut self) -> Option<Piece> {
        let size = self.skipped.take()? + self.buf.len() - self.start;
        Some(Piece::Oversized {
            size,
            complete: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::channel;
    use std::io::Write;

    /// An idle worker's channel holds no buffer: once every message read is
    /// handed out, the bytes' room goes (it was 8 KiB a worker for life).
    #[test]
    fn lines_keep_no_buffer_once_every_message_is_out() {
        let mut lines = Lines::new(1024);
        lines.buffer().extend_from_slice(b"{\"a\":1}\n{\"b\"");
        assert!(matches!(lines.next_piece(), Some((Piece::Message(_), 0))));
        assert!(lines.next_piece().is_none());
        // The unfinished message stays.
        assert_eq!(lines.leftover().bytes, b"{\"b\"");
        lines.buffer().extend_from_slice(b":2}\n");
        assert!(matches!(lines.next_piece(), Some((Piece::Message(_), 0))));
        assert!(lines.next_piece().is_none());
        assert_eq!(lines.buffer().capacity(), 0);
    }

    /// Everything the reader hands over, rendered for comparison.
    async fn read_all(
        worker_side: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
        max: usize,
    ) -> Vec<String> {
        let (ours, theirs) = channel::pair().unwrap();
        let channel = Arc::new(Channel::new(ours).unwrap());
        let (tx, mut rx) = mpsc::channel(MESSAGE_QUEUE);
        let (_stop, stop_rx) = oneshot::channel();
        let reader = tokio::spawn(read_channel(
            channel,
            WorkerId(7),
            max,
            tx,
            Unread::default(),
            stop_rx,
        ));
        let writer = std::thread::spawn(move || worker_side(theirs.into()));
        let mut out = Vec::new();
        while let Some(m) = rx.recv().await {
            out.push(match m {
                FromWorker::Message { value, .. } => format!("message {value}"),
                FromWorker::BadMessage { .. } => "bad".to_string(),
                FromWorker::Oversized { size, complete, .. } => {
                    format!("oversized {size} {complete}")
                }
                FromWorker::StrayFds { count, .. } => format!("stray fds {count}"),
                FromWorker::Closed { .. } => "closed".to_string(),
            });
        }
        writer.join().unwrap();
        reader.await.unwrap();
        out
    }

    /// Found by the bad-input corpus: fds sent with a message that is no
    /// handle message were closed without a word.
    #[tokio::test]
    async fn fds_with_a_message_that_is_no_handle_message_are_reported() {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;
        let got = read_all(
            |w| {
                let send = |bytes: &[u8], n: usize| {
                    let pipes: Vec<_> = (0..n).map(|_| nix::unistd::pipe().unwrap()).collect();
                    let raw: Vec<i32> = pipes.iter().map(|(_, w)| w.as_raw_fd()).collect();
                    let cmsg = [ControlMessage::ScmRights(&raw)];
                    let cmsgs: &[ControlMessage] = if n > 0 { &cmsg } else { &[] };
                    let iov = [IoSlice::new(bytes)];
                    sendmsg::<()>(w.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).unwrap();
                };
                send(b"{\"plain\":1}\n", 2);
                send(b"{\"cmd\":\"NODE_HANDLE\",\"msg\":1}\n", 1);
                // A handle message whose line ends in a later send.
                send(b"{\"cmd\":\"NODE_HANDLE\",", 1);
                send(b"\"msg\":2}\n{\"after\":1}\n", 0);
            },
            1000,
        )
        .await;
        assert_eq!(
            got,
            vec![
                "stray fds 2".to_string(),
                "message {\"plain\":1}".into(),
                "message {\"cmd\":\"NODE_HANDLE\",\"msg\":1}".into(),
                "message {\"cmd\":\"NODE_HANDLE\",\"msg\":2}".into(),
                "message {\"after\":1}".into(),
                "closed".into(),
            ]
        );
    }

    #[tokio::test]
    async fn channel_refuses_oversized_messages_and_resynchronises() {
        let got = read_all(
            |mut w| {
                w.write_all(b"{\"a\":1}\n").unwrap();
                // Over the cap, sent in pieces; then one exactly at the cap.
                let big = format!("\"{}\"\n", "z".repeat(3_000_000));
                for piece in big.as_bytes().chunks(100_000) {
                    w.write_all(piece).unwrap();
                }
                w.write_all(format!("\"{}\"\n{{\"b\":2}}\n", "y".repeat(1000 - 2)).as_bytes())
                    .unwrap();
                w.write_all(b"not json\n\"cut\"").unwrap();
                // Closed in the middle of an oversized message.
                w.write_all(&vec![b'q'; 5000]).unwrap();
            },
            1000,
        )
        .await;
        let y = format!("message \"{}\"", "y".repeat(998));
        assert_eq!(
            got,
            vec![
                "message {\"a\":1}".to_string(),
                "oversized 3000002 true".into(),
                y,
                "message {\"b\":2}".into(),
                "bad".into(),
                "oversized 5005 false".into(),
                "closed".into(),
            ]
        );
    }
}
