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
use std::sync::Arc;

use tokio::sync::mpsc;

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
/// (through the bounded message queue).
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
    /// The channel reached EOF.
    Closed { worker: WorkerId },
}

/// Write queued messages to a worker, one whole line at a time.
pub(crate) async fn write_channel(
    channel: Arc<Channel>,
    mut outbox: mpsc::UnboundedReceiver<Outgoing>,
) {
    while let Some(out) = outbox.recv().await {
        let fd: Option<&OwnedFd> = out.fd.as_deref().map(Fd::owned);
        if channel.send(&out.line, fd).await.is_err() {
            break;
        }
    }
}

/// Read a worker's channel: newline-delimited JSON, fds alongside. One
/// message is at most `max` bytes: a longer one is refused (reported as
/// `Oversized`) and skipped up to its newline without being kept, so memory
/// stays at `max` plus one read. Each message waits for room in the bounded
/// queue to the app task before the next read: a flood backs up into the
/// socket and then into the worker's `send`.
pub(crate) async fn read_channel(
    channel: Arc<Channel>,
    worker: WorkerId,
    max: usize,
    tx: mpsc::Sender<FromWorker>,
) {
    let mut buf = Vec::with_capacity(4096);
    let mut fds = Vec::new();
    // Complete messages before `start` were handled; `scanned` bytes of the
    // current one hold no newline.
    let mut scanned = 0;
    // Bytes of an oversized message dropped so far (skipping to its newline).
    let mut skipped: Option<usize> = None;
    loop {
        let closed = match channel.recv(&mut buf, &mut fds).await {
            Ok(0) => fds.is_empty(),
            Ok(_) => false,
            Err(_) => true,
        };
        if closed {
            if let Some(size) = skipped {
                let _ = tx
                    .send(FromWorker::Oversized {
                        worker,
                        size: size + buf.len(),
                        complete: false,
                    })
                    .await;
            }
            let _ = tx.send(FromWorker::Closed { worker }).await;
            break;
        }
        // No fd is expected from a worker yet; closing them keeps us from leaking.
        fds.clear();
        let mut start = 0;
        while let Some(i) = buf[start + scanned..].iter().position(|&b| b == b'\n') {
            let end = start + scanned + i;
            let msg = if let Some(dropped) = skipped.take() {
                Some(FromWorker::Oversized {
                    worker,
                    size: dropped + (end - start),
                    complete: true,
                })
            } else if end - start > max {
                Some(FromWorker::Oversized {
                    worker,
                    size: end - start,
                    complete: true,
                })
            } else if buf[start..end].iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                Some(
                    match serde_json::from_slice::<serde_json::Value>(&buf[start..end]) {
                        Ok(value) => FromWorker::Message { worker, value },
                        Err(e) => FromWorker::BadMessage {
                            worker,
                            error: e.to_string(),
                        },
                    },
                )
            };
            if let Some(msg) = msg {
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            start = end + 1;
            scanned = 0;
        }
        buf.drain(..start);
        scanned = buf.len();
        if skipped.is_some() || buf.len() > max {
            // Over the cap with no end in sight: drop it as it comes.
            skipped = Some(skipped.unwrap_or(0) + buf.len());
            buf.clear();
            scanned = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::channel;
    use std::io::Write;

    /// Everything the reader hands over, rendered for comparison.
    async fn read_all(
        worker_side: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
        max: usize,
    ) -> Vec<String> {
        let (ours, theirs) = channel::pair().unwrap();
        let channel = Arc::new(Channel::new(ours).unwrap());
        let (tx, mut rx) = mpsc::channel(MESSAGE_QUEUE);
        let reader = tokio::spawn(read_channel(channel, WorkerId(7), max, tx));
        let writer = std::thread::spawn(move || worker_side(theirs.into()));
        let mut out = Vec::new();
        while let Some(m) = rx.recv().await {
            out.push(match m {
                FromWorker::Message { value, .. } => format!("message {value}"),
                FromWorker::BadMessage { .. } => "bad".to_string(),
                FromWorker::Oversized { size, complete, .. } => {
                    format!("oversized {size} {complete}")
                }
                FromWorker::Closed { .. } => "closed".to_string(),
            });
        }
        writer.join().unwrap();
        reader.await.unwrap();
        out
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
