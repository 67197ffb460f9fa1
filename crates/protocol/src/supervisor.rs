//! How a client (the daemon, a test, an operator's tool) talks to one app's
//! supervisor process (`herd supervise`), and the app's file in
//! `$HERD_HOME/apps/`.
//!
//! - **Transport**: the supervisor's Unix socket `$HERD_HOME/apps/<id>.sock`
//!   (mode 0600), the same frames as the CLI's protocol ([`crate::Connection`]:
//!   a 4-byte big-endian length, then JSON; at most [`crate::MAX_FRAME`]).
//! - **Hello**: the client's first frame is a [`Hello`], the supervisor's a
//!   [`Welcome`]. Their shape never changes between versions, so a client
//!   and a supervisor of different versions always understand *that* they
//!   differ: the supervisor refuses a client of another [`VERSION`] in its
//!   welcome (and closes), and the client refuses a supervisor of another.
//!   Nothing after the hello is read by a side that speaks another version.
//! - **Then** any number of [`Request`]s, each answered by one [`Response`]
//!   in order: [`Request::Status`], [`Request::Definition`], and
//!   [`Request::Command`], answered by its own [`Ticket`] once the command
//!   is done, aborted or refused (commands run strictly one after another,
//!   so a reload's answer may take a while: ask for status on another
//!   connection meanwhile). [`Request::Follow`] turns the connection into a
//!   stream of [`Response::Event`]s until the client closes it.

use std::path::PathBuf;

use herd_engine::machine::{Outcome, Report};
use serde::{Deserialize, Serialize};

use crate::{AppDef, AppDetail, AppInfo, ScaleTo, Signal, SlotDetail};

/// The version of this protocol; both sides must agree exactly.
pub const VERSION: u32 = 1;

/// What [`Hello::protocol`] and [`Welcome::protocol`] say, so that a client
/// of the CLI's protocol (or anything else) on this socket is told apart.
pub const PROTOCOL: &str = "herd-supervisor";

/// The client's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: String,
    pub version: u32,
}

impl Hello {
    pub fn new() -> Hello {
        Hello {
            protocol: PROTOCOL.to_string(),
            version: VERSION,
        }
    }
}

impl Default for Hello {
    fn default() -> Self {
        Hello::new()
    }
}

/// The supervisor's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: String,
    pub version: u32,
    /// The supervisor's pid.
    pub pid: u32,
    /// Set when the supervisor will not serve this client (another
    /// version): why, and what to do. The connection closes after it.
    #[serde(default)]
    pub refused: Option<String>,
}

/// One request after the hello.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The app as it is now: answered at once, even while a command runs.
    Status,
    /// The app's file: its definition, id, name and desired state.
    Definition,
    /// Do something; answered with [`Response::Ticket`] when it has ended.
    Command { command: Command },
    /// From now on, the app's lifecycle events and warnings, as they happen.
    Follow,
}

/// What can be asked of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Start it if it is stopped.
    Start,
    /// Stop its workers gracefully; the supervisor stays, holding the app.
    Stop,
    /// Stop then start; with a slot, replace only its worker (zero-downtime).
    Restart {
        slot: Option<usize>,
    },
    /// Stop then start on a new definition (a stopped app is just started
    /// on it): pm2's `restart FILE`. The listeners may change this way.
    RestartWith {
        definition: Box<AppDef>,
    },
    /// Rolling reload, onto a new definition if one is given (which the
    /// supervisor then keeps in the app's file).
    Reload {
        definition: Option<Box<AppDef>>,
    },
    /// Zero the restart counters shown (pm2's `reset`); the workers are untouched.
    Reset,
    /// Stop the app, remove its files; the supervisor exits.
    Delete,
    /// Empty the app's log files.
    Flush,
    Scale {
        to: ScaleTo,
    },
    /// A JSON message to the workers (`process.on('message')`), or to one slot's.
    Send {
        slot: Option<usize>,
        message: serde_json::Value,
    },
    /// A signal to the workers' process groups.
    Signal {
        signal: Signal,
    },
    /// Open the log files again (after logrotate moved them).
    ReopenLogs,
    /// Replace the supervisor's binary by the one at `exe`, in place (same
    /// pid, same workers; `herd update`). `Done` is said just before the
    /// exec: the caller then sees the same pid serve on the new binary, or,
    /// if the new binary could not take the app over, the old one again.
    Upgrade {
        exe: std::path::PathBuf,
    },
}

/// How one command ended: the answer to *that* command, never guessed from
/// the event stream. A refusal changed nothing: the command does not apply
/// to the app as it is (the CLI reports it as a usage mistake, exit 2); an
/// abort is a failure (exit 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ticket", rename_all = "snake_case")]
pub enum Ticket {
    /// It did what it was asked; what that was, for the user.
    Done { message: String },
    /// It began and was abandoned (a reload whose replacement failed, a
    /// start whose socket could not be bound …).
    Aborted { why: String },
    /// It does not apply (no such worker, the app is stopped …).
    Refused { why: String },
}

impl Ticket {
    pub fn is_done(&self) -> bool {
        matches!(self, Ticket::Done { .. })
    }
}

/// One answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status {
        status: Box<Status>,
    },
    Definition {
        app: Box<AppFile>,
    },
    Ticket {
        ticket: Ticket,
    },
    /// One event of a [`Request::Follow`] stream.
    Event {
        event: Event,
    },
    /// The request could not be read (the connection closes after this).
    Error {
        message: String,
    },
}

/// What a follower hears.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A worker lifecycle event (the engine's report; as `herd run` prints them).
    Lifecycle { report: Report },
    /// A listener is bound.
    Listening { addr: String },
    /// Something went wrong that herd handled.
    Warning { text: String },
    /// The app's workers were started (a start, a restart).
    Started,
    /// The app's workers are all gone, and how that came about.
    Ended { outcome: Outcome },
    /// The app was deleted: the supervisor exits; nothing follows.
    Deleted,
    /// This follower read too slowly and missed this many events (the
    /// supervisor never holds more than a bounded number for it): ask for
    /// the status to catch up.
    Lagged { missed: u64 },
}

/// How the workers of an exit count ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitCause {
    Code,
    Signal,
}

impl ExitCause {
    /// `code` or `signal`, as metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitCause::Code => "code",
            ExitCause::Signal => "signal",
        }
    }
}

/// Worker exits of one slot that ended alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitCount {
    pub slot: usize,
    pub cause: ExitCause,
    /// The exit code, or the signal's name (`SIGKILL`).
    pub what: String,
    pub count: u64,
}

/// Bytes or lines, per output stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerStream {
    pub stdout: u64,
    pub stderr: u64,
}

/// What the app counted since its supervisor started (for metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub exits: Vec<ExitCount>,
    /// Reloads (and one-worker replacements) that ended, and those of them
    /// that were aborted.
    pub reloads: u64,
    pub reloads_failed: u64,
    /// Written to the log files.
    pub log_bytes: PerStream,
    pub log_lines: PerStream,
}

/// What [`Request::Status`] answers: the app, and the process supervising it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub app: App,
    pub supervisor: SupervisorInfo,
}

/// The app as its supervisor sees it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// As `herd list` shows it: its summary (state, ready count) and its
    /// workers with their roles and last samples, computed here once.
    pub info: AppInfo,
    /// What the app counted since its supervisor started.
    pub counters: Counters,
    /// When the supervisor took the app, or it was last restarted, reloaded
    /// or reset (pm2's `created_at`), in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Each slot's crash-loop count and last exit, in slot order.
    pub slots: Vec<SlotDetail>,
    /// What only metrics show, per live worker process.
    pub processes: Vec<Process>,
    /// The app's shared listening sockets, by their fd in the supervisor:
    /// the daemon keeps a copy of each (taken with `pidfd_getfd`) and gives
    /// them to the next supervisor if this one dies, so that clients wait
    /// in the sockets' queues instead of being refused meanwhile.
    #[serde(default)]
    pub sockets: Vec<Socket>,
}

/// The variable that gives `herd supervise` the sockets the daemon held for
/// the app while no supervisor ran: a JSON list of [`Socket`]s, each fd
/// inherited at that number.
pub const HELD_SOCKETS_ENV: &str = "HERD_HELD_SOCKETS";

/// One listening socket of an app, in its supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Socket {
    /// Where it is bound (`127.0.0.1:8000`, `[::]:8000`, `unix:/path`).
    pub addr: herd_engine::config::ListenAddr,
    /// Its number in the supervisor process.
    pub fd: i32,
}

impl App {
    /// The app with its definition, as pm2's `jlist` and `herd env` read it.
    pub fn detail(&self, def: AppDef) -> AppDetail {
        AppDetail {
            info: self.info.clone(),
            def,
            created_at_ms: self.created_at_ms,
            slots: self.slots.clone(),
        }
    }

    /// The figures of the worker process `pid`, if it has some.
    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.iter().find(|p| p.pid == pid)
    }
}

/// One live worker process's figures beyond the list's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// CPU time (user + system) it used so far, in seconds.
    pub cpu_seconds: f64,
    /// Round-robin only: connections handed to it so far, and not answered yet.
    #[serde(default)]
    pub handed_over: Option<u64>,
    #[serde(default)]
    pub pending_connections: Option<u64>,
}

/// The supervisor process itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorInfo {
    pub pid: u32,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    pub uptime_ms: u64,
    pub binary: Binary,
    /// How it makes sure no process of the app outlives it.
    pub containment: Containment,
}

/// Which program a supervisor runs (for `herd update`: has the file on disk
/// been replaced since?).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binary {
    /// Where it was started from (the kernel adds ` (deleted)` once the file
    /// was replaced or removed).
    pub path: PathBuf,
    pub device: u64,
    pub inode: u64,
    /// herd's version.
    pub version: String,
    /// This protocol's [`VERSION`].
    pub protocol: u32,
}

/// How the app's processes are kept together, so that a new supervisor ends
/// whatever an old one left behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Containment {
    /// A cgroup (v2) of the app's own: the supervisor and every process it
    /// starts, however they detach, until `cgroup.kill`.
    Cgroup { path: PathBuf },
    /// The workers' process groups, recorded in `apps/<id>.groups`: a
    /// worker's children that stay in its group are ended with it; one that
    /// makes a session or group of its own is not found.
    ProcessGroups,
}

/// `apps/<id>.json`: one app as the daemon hands it to its supervisor (and
/// the supervisor keeps it: a reload onto a new definition, a scale, a stop
/// or a start rewrite it, write-temp then rename).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppFile {
    /// This file's format; see [`AppFile::FORMAT`].
    pub format: u32,
    /// The app's id, for life (the daemon chooses it; adoption keeps it).
    pub id: u32,
    /// The app's name (the definition's, repeated for people reading the file).
    pub name: String,
    /// Whether the app should run: a new supervisor starts it if so.
    pub desired: Desired,
    pub definition: AppDef,
}

/// Whether an app should be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Running,
    Stopped,
}

/// Why an app's file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppFileError {
    #[error(
        "it is in format {found}, and this herd reads format {}: use the herd that wrote it",
        AppFile::FORMAT
    )]
    Format { found: u32 },
    #[error("it is for app id {found}, not {expected}: the file was renamed or copied; put it back as apps/{found}.json")]
    Id { expected: u32, found: u32 },
    #[error("its name {name:?} differs from its definition's {definition:?}: correct one of them")]
    Name { name: String, definition: String },
}

impl AppFile {
    /// The format this herd writes and reads.
    pub const FORMAT: u32 = 1;

    pub fn new(id: u32, desired: Desired, definition: AppDef) -> AppFile {
        AppFile {
            format: AppFile::FORMAT,
            id,
            name: definition.spec.name.clone(),
            desired,
            definition,
        }
    }

    /// Check what serde cannot: the format, the id (the file's name says
    /// which it must be) and the name.
    pub fn check(&self, id: u32) -> Result<(), AppFileError> {
        if self.format != AppFile::FORMAT {
            return Err(AppFileError::Format { found: self.format });
        }
        if self.id != id {
            return Err(AppFileError::Id {
                expected: id,
                found: self.id,
            });
        }
        if self.name != self.definition.spec.name {
            return Err(AppFileError::Name {
                name: self.name.clone(),
                definition: self.definition.spec.name.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_engine::config::AppSpec;

    #[test]
    fn a_hello_of_any_version_parses_and_requests_are_tagged() {
        let future: Hello =
            serde_json::from_str(r#"{"protocol":"herd-supervisor","version":7,"more":1}"#).unwrap();
        assert_eq!(future.version, 7);
        // The CLI's hello is not a supervisor hello.
        assert!(serde_json::from_str::<Hello>(r#"{"request":"hello","version":1}"#).is_err());
        let r = Request::Command {
            command: Command::Scale {
                to: ScaleTo::Exactly(3),
            },
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"request":"command","command":{"command":"scale","to":{"exactly":3}}}"#
        );
        let t = Response::Ticket {
            ticket: Ticket::Aborted { why: "no".into() },
        };
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(
            text,
            r#"{"response":"ticket","ticket":{"ticket":"aborted","why":"no"}}"#
        );
        assert!(matches!(
            serde_json::from_str::<Response>(&text).unwrap(),
            Response::Ticket {
                ticket: Ticket::Aborted { .. }
            }
        ));
    }

    #[test]
    fn the_app_file_round_trips_and_is_checked() {
        let def = AppDef::from(AppSpec::new("web", "/usr/bin/node"));
        let file = AppFile::new(3, Desired::Running, def);
        let text = serde_json::to_string(&file).unwrap();
        let back: AppFile = serde_json::from_str(&text).unwrap();
        assert_eq!(back, file);
        back.check(3).unwrap();
        assert!(matches!(back.check(4), Err(AppFileError::Id { .. })));
        let mut renamed = back.clone();
        renamed.name = "api".into();
        assert!(renamed.check(3).unwrap_err().to_string().contains("web"));
        let mut future = back;
        future.format = 2;
        assert!(future
            .check(3)
            .unwrap_err()
            .to_string()
            .contains("format 2"));
    }
}
