//! One app's files in `$HERD_HOME` ([`AppFiles`]), as its supervisor
//! process uses them:
//!
//! ```text
//! apps/<id>.json    the app (herd_protocol::supervisor::AppFile): written by the
//!                   daemon before it starts the supervisor, rewritten by the
//!                   supervisor when the definition or the desired state changes
//! apps/<id>.pid     the supervisor's pid, flock'd while it runs: one per app
//! apps/<id>.sock    the supervisor's control socket
//! apps/<id>.groups  what the app's processes are contained by (see `contain`)
//! logs/             the app's log files (unless its definition names others)
//! herd.log          herd's own log; the supervisor appends its lines
//! ```
//!
//! Files are created owner-only (0600, directories 0700) and replaced by
//! writing a temporary file, syncing it and renaming it over the old one, so
//! a reader never sees half a file.
//!
//! Next phase this moves onto the daemon's verified `Home` (a directory fd,
//! `openat`, `O_NOFOLLOW`); the paths and formats stay.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use herd_protocol::supervisor::{AppFile, AppFileError};

/// Why an app's files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot create {path}: {error}; give a home directory you may write to")]
    Create { path: PathBuf, error: io::Error },
    #[error("cannot read {path}: {error}; the daemon writes it before it starts the app's supervisor (is the id right?)")]
    ReadApp { path: PathBuf, error: io::Error },
    #[error(
        "{path} is not an app file: {error}; correct it, or delete the app and start it again"
    )]
    ParseApp {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("{path}: {error}")]
    CheckApp { path: PathBuf, error: AppFileError },
    #[error("a supervisor (pid {pid}) already runs app {id} in {home}: use it (its socket is {socket}), or stop it first")]
    Running {
        pid: String,
        id: u32,
        home: PathBuf,
        socket: PathBuf,
    },
    #[error("cannot lock {path}: {error}")]
    Lock { path: PathBuf, error: io::Error },
}

/// The paths of one app's files in a home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppFiles {
    home: PathBuf,
    id: u32,
}

impl AppFiles {
    pub fn new(home: impl Into<PathBuf>, id: u32) -> AppFiles {
        AppFiles {
            home: home.into(),
            id,
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn home(&self) -> &Path {
        &self.home
    }
    pub fn apps_dir(&self) -> PathBuf {
        self.home.join("apps")
    }
    pub fn app_file(&self) -> PathBuf {
        self.apps_dir().join(format!("{}.json", self.id))
    }
    pub fn pid_file(&self) -> PathBuf {
        self.apps_dir().join(format!("{}.pid", self.id))
    }
    pub fn socket(&self) -> PathBuf {
        self.apps_dir().join(format!("{}.sock", self.id))
    }
    pub fn groups_file(&self) -> PathBuf {
        self.apps_dir().join(format!("{}.groups", self.id))
    }
    pub fn log_dir(&self) -> PathBuf {
        self.home.join("logs")
    }
    pub fn herd_log(&self) -> PathBuf {
        self.home.join("herd.log")
    }

    /// Create the home, `apps/` and `logs/` (0700) if they are missing.
    pub fn create_dirs(&self) -> Result<(), FilesError> {
        for dir in [self.home.clone(), self.apps_dir(), self.log_dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|error| FilesError::Create {
                    path: dir.clone(),
                    error,
                })?;
        }
        let _ = fs::set_permissions(self.apps_dir(), fs::Permissions::from_mode(0o700));
        Ok(())
    }

    /// Read and check `apps/<id>.json`.
    pub fn read_app(&self) -> Result<AppFile, FilesError> {
        let path = self.app_file();
        let text = fs::read(&path).map_err(|error| FilesError::ReadApp {
            path: path.clone(),
            error,
        })?;
        let app: AppFile = serde_json::from_slice(&text).map_err(|error| FilesError::ParseApp {
            path: path.clone(),
            error,
        })?;
        app.check(self.id)
            .map_err(|error| FilesError::CheckApp { path, error })?;
        Ok(app)
    }

    /// Replace `apps/<id>.json`.
    pub fn write_app(&self, app: &AppFile) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(app).map_err(io::Error::other)?;
        write_replacing(&self.app_file(), &bytes, Sync::ToDisk)
    }

    /// Take the one-supervisor-per-app lock: an `flock` on `apps/<id>.pid`,
    /// held as long as the returned lock (or a copy of its fd in a forked
    /// child) is open. The pid is written with [`PidLock::write_pid`].
    pub fn lock(&self) -> Result<PidLock, FilesError> {
        let path = self.pid_file();
        let lock_err = |error| FilesError::Lock {
            path: path.clone(),
            error,
        };
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(lock_err)?;
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    return Err(FilesError::Running {
                        pid: pid.trim().to_string(),
                        id: self.id,
                        home: self.home.clone(),
                        socket: self.socket(),
                    });
                }
                return Err(lock_err(e));
            }
            // The holder before us may have removed the file as it exited:
            // then we locked a file nobody else will ever see. Try again.
            let ours = file.metadata().map_err(lock_err)?;
            match fs::metadata(&path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {
                    return Ok(PidLock { file, path })
                }
                _ => continue,
            }
        }
    }
}

/// The held lock of `apps/<id>.pid`.
#[derive(Debug)]
pub struct PidLock {
    file: File,
    path: PathBuf,
}

impl PidLock {
    /// Write `pid` into the file (the process that will hold the lock).
    pub fn write_pid(&mut self, pid: u32) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        writeln!(self.file, "{pid}")
    }

    /// Remove the pid file, then let go of the lock (a supervisor that is
    /// done with its app). Another supervisor that opened the file before
    /// it was removed notices and opens the new one (see [`AppFiles::lock`]).
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether a replaced file must survive the machine's crash, or only the
/// writer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// `fsync` before the rename (an app's definition).
    ToDisk,
    /// The page cache is enough (what only a later supervisor on this
    /// running system reads: the group record).
    Cache,
}

/// Replace `path` with `bytes` (mode 0600): write a temporary file beside
/// it, sync it if asked, rename it over `path`.
pub fn write_replacing(path: &Path, bytes: &[u8], sync: Sync) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if sync == Sync::ToDisk {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_engine::config::AppSpec;
    use herd_protocol::supervisor::Desired;
    use herd_protocol::AppDef;

    fn app(id: u32) -> AppFile {
        let def = AppDef {
            spec: AppSpec::new("web", "/bin/true"),
            logs: Default::default(),
            max_memory_restart: None,
            instances_max: false,
        };
        AppFile::new(id, Desired::Running, def)
    }

    #[test]
    fn the_app_file_is_written_owner_only_and_read_back_checked() {
        let dir = tempfile::tempdir().unwrap();
        let files = AppFiles::new(dir.path().join("home"), 4);
        files.create_dirs().unwrap();
        files.write_app(&app(4)).unwrap();
        let mode = fs::metadata(files.app_file()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(files.read_app().unwrap(), app(4));
        // Copied over another id's file: refused, naming the id.
        fs::copy(files.app_file(), files.apps_dir().join("5.json")).unwrap();
        let err = AppFiles::new(files.home(), 5).read_app().unwrap_err();
        assert!(err.to_string().contains("app id 4"), "{err}");
        let err = AppFiles::new(files.home(), 6).read_app().unwrap_err();
        assert!(matches!(err, FilesError::ReadApp { .. }), "{err}");
    }

    #[test]
    fn one_lock_per_app_and_a_removed_file_is_not_a_lock() {
        let dir = tempfile::tempdir().unwrap();
        let files = AppFiles::new(dir.path(), 1);
        files.create_dirs().unwrap();
        let mut lock = files.lock().unwrap();
        lock.write_pid(4242).unwrap();
        let err = files.lock().unwrap_err();
        assert!(err.to_string().contains("pid 4242"), "{err}");
        // Another id is another lock.
        AppFiles::new(dir.path(), 2).lock().unwrap();
        lock.remove();
        files.lock().unwrap();
    }
}
