//! The saved app list (`$HERD_HOME/dump.json`): written whole to a temporary
//! file, synced, then renamed over the old one, so a crash mid-save leaves
//! the previous list intact, never a torn or empty file.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use herd_protocol::AppDef;

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

/// Write `apps` to `path` atomically.
pub fn save(path: &Path, apps: &[AppDef]) -> Result<(), DumpError> {
    let write_err = |source| DumpError::Write {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_vec_pretty(&Dump {
        format: FORMAT,
        apps: apps.to_vec(),
    })
    .expect("app definitions serialize");
    let tmp = path.with_extension("json.tmp");
    let mut file = File::create(&tmp).map_err(write_err)?;
    file.write_all(&text).map_err(write_err)?;
    file.write_all(b"\n").map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(write_err)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Read the saved list.
pub fn load(path: &Path) -> Result<Vec<AppDef>, DumpError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DumpError::Missing(path.to_path_buf()))
        }
        Err(source) => {
            return Err(DumpError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let dump: Dump = serde_json::from_slice(&bytes).map_err(|source| DumpError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(dump.apps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_engine::config::AppSpec;

    #[test]
    fn round_trip_and_no_temp_file_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dump.json");
        assert!(matches!(load(&path), Err(DumpError::Missing(_))));
        let mut spec = AppSpec::new("web", "/bin/sleep");
        spec.env = vec![("PORT".into(), "8000".into())];
        let def = AppDef {
            spec,
            logs: Default::default(),
            max_memory_restart: None,
            instances_max: false,
            script: None,
            namespace: None,
        };
        save(&path, std::slice::from_ref(&def)).unwrap();
        assert_eq!(load(&path).unwrap(), vec![def]);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        fs::write(&path, b"[]").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("not a saved herd app list"), "{err}");
    }
}
