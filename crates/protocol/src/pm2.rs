//! pm2 process-file keys that herd keeps with an app definition outside the
//! engine's spec and the log settings ([`Pm2Keys`]): each is parsed into its
//! type when the file is read (a wrong value is an error then), saved with
//! the definition and shown by `herd show`. Today that is `filter_env`,
//! which the CLI honours when it gives the app its environment.

use serde::{Deserialize, Serialize};

/// The pm2 keys of one app that herd keeps beside its spec.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Pm2Keys {
    /// `filter_env`: which of the CLI's variables never reach the app
    /// (honoured by the CLI, which gives the app its environment; kept for
    /// `--update-env`).
    pub filter_env: Option<FilterEnv>,
}

impl Pm2Keys {
    pub fn is_empty(&self) -> bool {
        *self == Pm2Keys::default()
    }
}

/// pm2's `filter_env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterEnv {
    /// `true`: none of the CLI's variables (pm2 documents this; its code
    /// does nothing for `true`).
    All,
    /// A string: that one variable.
    Exact(String),
    /// A list: every variable whose name contains one of these.
    Containing(Vec<String>),
}
