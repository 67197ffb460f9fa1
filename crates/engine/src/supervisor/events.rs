//! What an app tells the outside world: its [`Event`]s, through the bounded
//! [`Events`] receiver that [`super::start`] returns, and its status
//! ([`AppStatus`]) when asked.

use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::config::ListenAddr;
use crate::machine::{Outcome, Report, Slot};

/// An event and the wall-clock time it happened (for logs and history).
pub type Timed = (SystemTime, Event);

pub(crate) fn timed(event: Event) -> Timed {
    (SystemTime::now(), event)
}

/// Events waiting for the consumer. An output batch is at most one pipe read
/// (64 KiB) plus a cut line ([`MAX_LINE`]), usually a few KiB: some MiB in all.
pub const EVENT_QUEUE: usize = 64;
/// A worker output line longer than this is cut here; the rest follows as
/// the next line.
pub const MAX_LINE: usize = 1 << 20;

/// The events of one app, as [`super::start`] returns them. Bounded (see
/// [`EVENT_QUEUE`]): a consumer that reads slowly slows the workers' output
/// down instead of letting herd's memory grow. Each event carries the time
/// it happened ([`Events::recv_timed`]), not the time it was read.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Timed>,
}

impl Events {
    pub(crate) fn new(rx: mpsc::Receiver<Timed>) -> Events {
        Events { rx }
    }

    /// The next event; `None` once the app's task has ended.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await.map(|(_, event)| event)
    }

    /// The next event with the time it happened.
    pub async fn recv_timed(&mut self) -> Option<Timed> {
        self.rx.recv().await
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What an app tells the outside world. As JSON (`{"lifecycle": {"ready": {…}}}`),
/// a worker's output is text (invalid UTF-8 replaced).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A listener is bound (before any worker starts, or when a worker asks for one).
    Listening { name: String, addr: ListenAddr },
    /// A lifecycle event from the machine.
    Lifecycle(Report),
    /// Complete lines a worker wrote (each ends with '\n').
    Output {
        slot: Slot,
        pid: u32,
        stream: Stream,
        #[serde(with = "lines_text")]
        lines: Vec<u8>,
    },
    /// A message a worker sent on its IPC channel (`process.send(x)`).
    Message {
        slot: Slot,
        pid: u32,
        message: serde_json::Value,
    },
    /// Something went wrong that herd handled, worth telling the user.
    Warning(String),
    /// The app is finished; no event follows.
    Exit(Outcome),
}

/// Serde for a worker's output as text.
mod lines_text {
    pub(super) fn serialize<S: serde::Serializer>(lines: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(lines))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        <String as serde::Deserialize>::deserialize(d).map(String::into_bytes)
    }
}

/// An app's workers as they are now, from [`super::AppHandle::status`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AppStatus {
    pub name: String,
    /// Where each of the app's own listeners (`--listen`) is bound (the real
    /// port for port 0).
    pub listeners: Vec<(String, ListenAddr)>,
    #[serde(flatten)]
    pub machine: crate::machine::Snapshot,
    /// Per worker, the client connections herd's round-robin handed over
    /// (empty when the app has no round-robin listener).
    #[serde(default)]
    pub round_robin: Vec<RoundRobinStats>,
    /// The app's shared listening sockets, each with its fd in this
    /// process: what the daemon keeps a copy of, so that clients queue
    /// rather than be refused while a dead supervisor is replaced.
    #[serde(default)]
    pub sockets: Vec<(ListenAddr, i32)>,
}

/// One worker's share of herd's round-robin accepting.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoundRobinStats {
    pub slot: usize,
    pub pid: u32,
    /// Client connections handed to it since it started.
    pub handed_over: u64,
    /// Client connections handed to it and not acknowledged yet.
    pub pending: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitStatus;
    use crate::machine::Next;
    use nix::sys::signal::Signal;
    use std::time::Duration;

    #[test]
    fn events_round_trip_as_json() {
        let events = vec![
            Event::Lifecycle(Report::Exited {
                slot: 1,
                pid: 42,
                status: ExitStatus::Signal(Signal::SIGKILL),
                uptime: Duration::from_millis(1500),
                next: Next::RestartIn(Duration::from_millis(100)),
            }),
            Event::Output {
                slot: 0,
                pid: 7,
                stream: Stream::Stderr,
                lines: b"oops\n".to_vec(),
            },
            Event::Exit(Outcome::Stopped),
        ];
        let text = serde_json::to_string(&events).unwrap();
        assert!(text.contains(r#""uptime":1500"#), "{text}");
        assert!(text.contains(r#""signal":"SIGKILL""#), "{text}");
        assert!(text.contains(r#""lines":"oops\n""#), "{text}");
        let back: Vec<Event> = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }
}
