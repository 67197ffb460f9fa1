//! The `herd` command's library half: how an app's definition is read from
//! the command line's options ([`options`]) and from config files
//! ([`appfile`]: `herd.toml` and pm2's process files), and the error a user
//! mistake becomes ([`UsageError`]). The binary (`src/main.rs`) is the rest:
//! the verbs, the terminal and the daemon's client.
//!
//! It is a library only so that the fuzz targets (`fuzz/`) and tests reach
//! the parsers without a process per input: not a stable API.

pub mod appfile;
pub mod options;

/// An error the user caused: printed, then herd exits with status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
