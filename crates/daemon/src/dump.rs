//! The saved app list (`$HERD_HOME/dump.json`): written whole to a temporary
//! file, synced, then renamed over the old one, so a crash mid-save leaves
//! the previous list intact, never a torn or empty file. It keeps every
//! environment value (resurrect needs them), so it is owner-only (0600) and
//! reached only through the checked home ([`Home::dir`]).

use std::io;
use std::path::PathBuf;

use herd_protocol::AppDef;

use crate::Home;

/// The file's format version.
const FORMAT: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct Dump {
    format: u32,
    apps: Vec<AppDef>,
}

/// Why the saved list cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("nothing saved yet at {0}: run `herd save` first")]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a saved herd app list ({source}); fix or remove it, then `herd save` again"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Write `apps` to the home's `dump.json` atomically.
pub fn save(home: &Home, apps: &[AppDef]) -> Result<(), DumpError> {
    let mut text = serde_json::to_vec_pretty(&Dump {
        format: FORMAT,
        apps: apps.to_vec(),
    })
    .expect("app definitions serialize");
    text.push(b'\n');
    home.dir()
        .write_atomic(crate::home::DUMP, &text)
        .map_err(|source| DumpError::Write {
            path: home.dump(),
            source,
        })
}

/// Whether a list was saved.
pub fn exists(home: &Home) -> bool {
    home.dir().exists(crate::home::DUMP)
}

/// Read the saved list.
pub fn load(home: &Home) -> Result<Vec<AppDef>, DumpError> {
    let path = home.dump();
    let bytes = match home.dir().read(crate::home::DUMP) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(DumpError::Missing(path)),
        Err(source) => return Err(DumpError::Read { path, source }),
    };
    let dump: Dump =
        serde_json::from_slice(&bytes).map_err(|source| DumpError::Parse { path, source })?;
    Ok(dump.apps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_engine::config::AppSpec;

    #[test]
    fn round_trip_owner_only_and_no_temp_file_left() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path().join("h")).unwrap();
        let path = home.dump();
        assert!(matches!(load(&home), Err(DumpError::Missing(_))));
        let mut spec = AppSpec::new("web", "/bin/sleep");
        spec.env = vec![("PORT".into(), "8000".into())].into();
        let def = AppDef::from(spec);
        save(&home, std::slice::from_ref(&def)).unwrap();
        assert_eq!(load(&home).unwrap(), vec![def]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut names: Vec<_> = std::fs::read_dir(home.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["dump.json", "logs"]);
        std::fs::write(&path, b"[]").unwrap();
        let err = load(&home).unwrap_err().to_string();
        assert!(err.contains("not a saved herd app list"), "{err}");
    }
}
