//! The words both protocols use for what an app and its workers are doing,
//! as enums: one definition, read by the CLI, the daemon, its HTTP pages
//! and the supervisors alike. They serialize as the lowercase words
//! `herd list --json` has always shown (`"online"`, `"waiting"` …), so the
//! JSON a script reads does not change.
//!
//! An app's summary (its [`AppState`] and its count of ready workers) is
//! computed once, by the app's supervisor, from the engine's snapshot; a
//! reader matches on these enums and on [`WorkerRole::Current`] to find
//! each slot's serving worker, never on words or on the order of a list.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `cluster` (the workers share listening sockets, or herd is their Node
/// cluster primary) or `fork` (independent processes): the engine's.
pub use herd_engine::config::ExecMode;

/// The app's state as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// Every worker is ready.
    Online,
    /// Some worker is not ready yet (starting, or waiting out a restart
    /// delay), or the app's supervisor is being started again.
    Launching,
    Reloading,
    Stopping,
    Stopped,
    /// Every worker crashed too often in a row (or the last run ended so).
    Errored,
}

impl AppState {
    /// Every state, in the order metrics list them.
    pub const ALL: [AppState; 6] = [
        AppState::Online,
        AppState::Launching,
        AppState::Reloading,
        AppState::Stopping,
        AppState::Stopped,
        AppState::Errored,
    ];

    /// The word `herd list` shows (and the JSON carries).
    pub fn as_str(self) -> &'static str {
        match self {
            AppState::Online => "online",
            AppState::Launching => "launching",
            AppState::Reloading => "reloading",
            AppState::Stopping => "stopping",
            AppState::Stopped => "stopped",
            AppState::Errored => "errored",
        }
    }

    /// Whether the app is meant to serve at all now (not stopped, stopping
    /// or errored): a probe waits for such an app; the others are not ready.
    pub fn is_up(self) -> bool {
        matches!(
            self,
            AppState::Online | AppState::Launching | AppState::Reloading
        )
    }
}

impl fmt::Display for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One worker's state (or an empty slot's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Ready for traffic.
    Online,
    /// Started, not ready yet.
    Launching,
    /// Asked to stop; draining.
    Stopping,
    /// No process: the slot waits out a restart delay.
    Waiting,
    /// No process: the slot crashed too often in a row.
    Errored,
    /// No process: the app is stopped, or the slot's worker ended for good.
    Stopped,
}

impl WorkerState {
    /// Every state, in the order metrics list them.
    pub const ALL: [WorkerState; 6] = [
        WorkerState::Online,
        WorkerState::Launching,
        WorkerState::Waiting,
        WorkerState::Stopping,
        WorkerState::Stopped,
        WorkerState::Errored,
    ];

    /// The word `herd list` shows (and the JSON carries).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Online => "online",
            WorkerState::Launching => "launching",
            WorkerState::Stopping => "stopping",
            WorkerState::Waiting => "waiting",
            WorkerState::Errored => "errored",
            WorkerState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part a worker plays in its slot (see the engine's glossary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerRole {
    /// The slot's worker (or, with no pid, the empty slot itself): exactly
    /// one per slot.
    Current,
    /// Its successor during a reload or a replacement: starting, until it
    /// is ready and takes over.
    Successor,
    /// Left its slot (a reload's predecessor, a removed slot's worker):
    /// being stopped.
    Draining,
}

impl WorkerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerRole::Current => "current",
            WorkerRole::Successor => "successor",
            WorkerRole::Draining => "draining",
        }
    }
}

/// A signal, by its name on the wire (`"SIGUSR2"`); parsed from a name with
/// or without `SIG`, in any case, or a number (`usr2`, `12`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(pub nix::sys::signal::Signal);

impl Signal {
    pub fn as_str(self) -> &'static str {
        self.0.as_str()
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Signal {
    type Err = String;

    fn from_str(text: &str) -> Result<Signal, String> {
        let text = text.trim();
        let unknown = || {
            format!(
                "unknown signal '{text}': use a name such as SIGUSR2, SIGHUP, SIGTERM, or a number"
            )
        };
        if let Ok(n) = text.parse::<i32>() {
            return nix::sys::signal::Signal::try_from(n)
                .map(Signal)
                .map_err(|_| unknown());
        }
        let upper = text.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        name.parse().map(Signal).map_err(|_| unknown())
    }
}

impl From<nix::sys::signal::Signal> for Signal {
    fn from(s: nix::sys::signal::Signal) -> Signal {
        Signal(s)
    }
}

impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_the_words_list_json_always_showed() {
        for s in AppState::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
            let back: AppState = serde_json::from_str(&format!("\"{s}\"")).unwrap();
            assert_eq!(back, s);
        }
        for s in WorkerState::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(
            serde_json::to_string(&WorkerRole::Successor).unwrap(),
            "\"successor\""
        );
        assert_eq!(serde_json::to_string(&ExecMode::Fork).unwrap(), "\"fork\"");
    }

    #[test]
    fn signals_by_name_or_number_and_on_the_wire_by_name() {
        use nix::sys::signal::Signal as S;
        for (text, sig) in [
            ("SIGUSR2", S::SIGUSR2),
            ("usr2", S::SIGUSR2),
            ("Hup", S::SIGHUP),
            ("9", S::SIGKILL),
        ] {
            assert_eq!(text.parse::<Signal>().unwrap(), Signal(sig), "{text}");
        }
        for bad in ["SIGNOPE", "999", ""] {
            let err = bad.parse::<Signal>().unwrap_err();
            assert!(err.contains("unknown signal"), "{err}");
        }
        let text = serde_json::to_string(&Signal(S::SIGUSR2)).unwrap();
        assert_eq!(text, "\"SIGUSR2\"");
        assert_eq!(
            serde_json::from_str::<Signal>(&text).unwrap(),
            Signal(S::SIGUSR2)
        );
        assert!(serde_json::from_str::<Signal>("\"SIGNOPE\"").is_err());
    }
}
