//! What the cluster primary asks of the app's run loop. The cluster's parts
//! (`Cluster`, `RoundRobin`) change only their own state; everything else —
//! writing on a worker's channel, telling the machine or the consumer,
//! timers, signals, accept loops — they return as [`Effect`]s, which the
//! loop carries out in order.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use super::protocol::ServerKey;
use crate::machine::{Input, WorkerId};
use crate::supervisor::events::Event;
use crate::supervisor::fd::Fd;
use crate::supervisor::timers::Wake;

/// One thing for the run loop to do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Write a message (one JSON line) on a worker's channel, with an fd
    /// alongside if given.
    Send {
        worker: WorkerId,
        line: Vec<u8>,
        fd: Option<Arc<Fd>>,
    },
    /// Tell the machine.
    Input(Input),
    /// Tell the consumer.
    Event(Event),
    /// Come back with `wake` after `after`.
    Wake { after: Duration, wake: Wake },
    /// Send the worker its stop signal (or the message "shutdown" with
    /// `--shutdown-with-message`).
    SendStop { worker: WorkerId },
    /// Start herd's accept loop for a round-robin server, on this copy of
    /// its listener's socket.
    StartAccepting { key: ServerKey, fd: OwnedFd },
    /// Stop that accept loop (the server is gone).
    StopAccepting { key: ServerKey },
}

/// The effects of one call, in order.
#[derive(Debug, Default)]
pub(crate) struct Effects(Vec<Effect>);

impl Effects {
    pub(crate) fn push(&mut self, effect: Effect) {
        self.0.push(effect);
    }

    pub(crate) fn send(&mut self, worker: WorkerId, line: Vec<u8>) {
        self.push(Effect::Send {
            worker,
            line,
            fd: None,
        });
    }

    pub(crate) fn input(&mut self, input: Input) {
        self.push(Effect::Input(input));
    }

    pub(crate) fn warn(&mut self, text: String) {
        self.push(Effect::Event(Event::Warning(text)));
    }

    pub(crate) fn wake(&mut self, after: Duration, wake: Wake) {
        self.push(Effect::Wake { after, wake });
    }
}

impl IntoIterator for Effects {
    type Item = Effect;
    type IntoIter = std::vec::IntoIter<Effect>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
