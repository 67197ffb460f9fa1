//! Config files for `herd start FILE` (placeholder until the loader lands).

use std::path::{Path, PathBuf};

use crate::options::{AppOptions, DaemonOptions};
use crate::UsageError;

pub fn is_config_file(path: &Path) -> bool {
    let name = path.to_string_lossy();
    [
        ".toml",
        ".json",
        ".yaml",
        ".yml",
        ".config.js",
        ".config.cjs",
        ".config.mjs",
    ]
    .iter()
    .any(|e| name.ends_with(e))
}

pub struct FileApp {
    pub options: AppOptions,
    pub daemon: DaemonOptions,
    pub command: Vec<String>,
    pub base: PathBuf,
}

pub fn load(
    path: &Path,
    _profile: Option<&str>,
) -> Result<(Vec<FileApp>, Vec<String>), UsageError> {
    Err(UsageError(format!(
        "cannot read {}: config files are not supported yet",
        path.display()
    )))
}
