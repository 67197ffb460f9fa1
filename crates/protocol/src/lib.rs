//! # herd-protocol: how the `herd` CLI talks to the herd daemon
//!
//! One module both sides compile, so a request can never be built by one and
//! misread by the other:
//!
//! - **Transport**: a Unix socket (`$HERD_HOME/herd.sock`, mode 0600), one
//!   connection per CLI command. Each message is a frame: a 4-byte big-endian
//!   length, then that many bytes of JSON. A frame over [`MAX_FRAME`] is an
//!   error that closes that one connection ([`Connection`]).
//! - **Hello**: the client's first frame is [`Request::Hello`] with its
//!   [`VERSION`]; the daemon answers [`Response::Hello`] with its own, and a
//!   mismatch is refused with a message that says what to do, never misparsed.
//! - **Then** one [`Request`], answered by one [`Response`] (or, for
//!   [`Request::Logs`]-style streams, none here: the CLI reads log files
//!   itself, so the daemon never buffers lines for a slow reader).
//!
//! [`AppInfo`] and [`WorkerInfo`] are also the stable schema of `--json`.
//!
//! [`secrets`] is the one rule for which environment values are hidden in
//! what the daemon answers.
//!
//! [`supervisor`] is the protocol of one app's supervisor process (`herd
//! supervise`) and the app's file in `$HERD_HOME/apps/`, on the same frames.

mod frame;
mod message;
mod pm2;
pub mod secrets;
mod state;
pub mod supervisor;

pub use frame::{Connection, FrameError, MAX_DEFINITION, MAX_FRAME};
pub use message::*;
pub use pm2::{FilterEnv, Pm2Keys};
pub use secrets::SecretNames;
pub use state::{AppState, ExecMode, Signal, WorkerRole, WorkerState};

/// The protocol version; both sides must agree exactly.
pub const VERSION: u32 = 3;
