//! The engine's parsers of what a worker sends, reachable from outside the
//! crate for the fuzz targets (`fuzz/`) and their regression tests only:
//! how a channel's bytes become messages ([`ipc_messages`]), how a message
//! of Node's cluster protocol is read and answered ([`cluster_message`]),
//! and how a pipe's bytes become output lines ([`output_lines`]). Each runs
//! the engine's own code, with no process, socket or task. Not an API.

use serde_json::{json, Value};

use super::cluster::protocol::{self, Incoming, Wanted};
use super::ipc::{Lines, Piece};
use super::output::LineCutter;

/// What a channel's bytes, read in `reads` (one slice per `recvmsg`), hand
/// the app: one line per message (`message <json>`, `bad <error>`,
/// `oversized <size> <complete>`), with messages capped at `max` bytes.
pub fn ipc_messages<'a>(reads: impl IntoIterator<Item = &'a [u8]>, max: usize) -> Vec<String> {
    let mut lines = Lines::new(max);
    let mut out = Vec::new();
    let render = |p: Piece| match p {
        Piece::Message(v) => format!("message {v}"),
        Piece::Bad(e) => format!("bad {e}"),
        Piece::Oversized { size, complete } => format!("oversized {size} {complete}"),
    };
    for read in reads {
        lines.buffer().extend_from_slice(read);
        while let Some((p, _)) = lines.next_piece() {
            out.push(render(p));
        }
        // The buffer never holds more than one capped message and one read.
        assert!(
            lines.buffer().len() <= max + read.len(),
            "the channel's buffer grew past its cap"
        );
    }
    out.extend(lines.finish().map(render));
    out
}

/// Read one message a worker sent on its channel as herd does (`bytes`:
/// one line's JSON), and build every answer herd could send to it; what
/// herd understood, as text.
pub fn cluster_message(bytes: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    if !protocol::is_internal(&value) {
        return Some("app message".into());
    }
    Some(match protocol::parse(&value) {
        Incoming::HandleAck => "handle ack".into(),
        Incoming::HandleNack => "handle nack".into(),
        Incoming::Handle { kind, message } => {
            // The message that came with a handle is read again as one.
            let inner = message.map(|m| serde_json::to_vec(&m).expect("a value serializes"));
            let inner = inner.and_then(|m| cluster_message(&m));
            format!("handle {kind}: {inner:?}")
        }
        Incoming::QueryServer(q) => {
            let answer = protocol::reply(&q.seq, 1, json!({"errno": 0, "key": q.key.as_str()}));
            let socket = protocol::listening_socket(&q.key, &q.seq, &q.data, 2, q.udp);
            let conn = protocol::new_connection(&q.key, 3);
            for line in [&answer, &socket, &conn] {
                let back: Value = serde_json::from_slice(line).expect("herd's answers are JSON");
                assert!(protocol::is_internal(&back), "an answer is internal");
                assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            }
            let wanted = match &q.wanted {
                Ok(Wanted::Inherited(fd)) => format!("inherited fd {fd}"),
                Ok(Wanted::Udp { addr, .. }) => format!("udp {addr}"),
                Ok(Wanted::Stream(addr)) => {
                    let _ = protocol::sockname(addr);
                    format!("stream {addr:?}")
                }
                Err(e) => format!("refused {e}"),
            };
            format!("query {} ({}): {wanted}", q.key.as_str(), q.described)
        }
        Incoming::Listening => "listening".into(),
        Incoming::Close { key } => format!("close {}", key.as_str()),
        Incoming::ExitedAfterDisconnect { seq } => {
            let _ = protocol::reply(&seq, 1, json!({}));
            "exited after disconnect".into()
        }
        Incoming::Answer { seq, accepted } => format!("answer {seq} {accepted}"),
        Incoming::Ignored => "ignored".into(),
    })
}

/// The output lines a pipe's bytes, read in `reads`, become (each batch as
/// delivered), with lines cut at `max_line` bytes.
pub fn output_lines<'a>(
    reads: impl IntoIterator<Item = &'a [u8]>,
    max_line: usize,
) -> Vec<Vec<u8>> {
    let mut cutter = LineCutter::new(max_line);
    let mut out = Vec::new();
    for read in reads {
        // As the pump reads: the bytes appended to the cutter's own buffer.
        let (_, lines) = cutter
            .read_with(read.len(), |buf| {
                buf.extend_from_slice(read);
                Ok(read.len())
            })
            .expect("appending cannot fail");
        out.extend(lines);
    }
    out.extend(cutter.finish());
    out
}
