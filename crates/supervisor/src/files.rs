//! One app's files in `$HERD_HOME` ([`AppFiles`]), as its supervisor
//! process and the daemon use them:
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
//! Every file is reached through the checked home's directory fds
//! ([`herd_home::Dir`]: `openat` with `O_NOFOLLOW`, created 0600, `apps/`
//! 0700 and held to the home's rules), never by a path a link could
//! redirect. Files are replaced by writing a temporary file and renaming it
//! over the old one, so a reader never sees half a file.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use herd_home::{Access, Dir, Home, HomeError};
use herd_protocol::supervisor::{AppFile, AppFileError};
use nix::fcntl::{Flock, FlockArg};

/// The directory of the apps' files in the home.
pub const APPS: &str = "apps";

/// Why an app's files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(transparent)]
    Home(#[from] HomeError),
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

/// The `apps/` directory of a home, checked and held open.
#[derive(Debug, Clone)]
pub struct AppsDir {
    home: Home,
    apps: Dir,
}

impl AppsDir {
    /// `apps/` in `home`, created 0700 if missing.
    pub fn open(home: &Home) -> Result<AppsDir, FilesError> {
        let apps = home.dir().subdir(APPS)?;
        Ok(AppsDir {
            home: home.clone(),
            apps,
        })
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The files of app `id`.
    pub fn app(&self, id: u32) -> AppFiles {
        AppFiles {
            dir: self.clone(),
            id,
        }
    }

    /// The ids that have an app file (`apps/<id>.json`), in order.
    pub fn ids(&self) -> io::Result<Vec<u32>> {
        let mut ids: Vec<u32> = std::fs::read_dir(self.apps.fd_path("."))?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }
}

/// One app's files in a home.
#[derive(Debug, Clone)]
pub struct AppFiles {
    dir: AppsDir,
    id: u32,
}

impl AppFiles {
    /// The files of app `id` in `home` (creating `apps/` if missing).
    pub fn open(home: &Home, id: u32) -> Result<AppFiles, FilesError> {
        Ok(AppsDir::open(home)?.app(id))
    }

    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn home(&self) -> &Home {
        &self.dir.home
    }

    fn name(&self, ext: &str) -> OsString {
        format!("{}.{ext}", self.id).into()
    }

    /// `apps/<id>.json`'s path, for messages.
    pub fn app_file(&self) -> PathBuf {
        self.dir.apps.join(self.name("json"))
    }
    /// `apps/<id>.pid`'s path, for messages and tests.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.apps.join(self.name("pid"))
    }
    /// `apps/<id>.sock`'s path, for messages.
    pub fn socket(&self) -> PathBuf {
        self.dir.apps.join(self.name("sock"))
    }
    /// The path to bind or connect the socket by: through the checked
    /// directory's fd (and short, however long the home's path is).
    pub fn socket_address(&self) -> PathBuf {
        self.dir.apps.fd_path(self.name("sock"))
    }
    /// `apps/<id>.groups`'s path, for messages.
    pub fn groups_file(&self) -> PathBuf {
        self.dir.apps.join(self.name("groups"))
    }

    /// Whether the app has a file.
    pub fn exists(&self) -> bool {
        self.dir.apps.exists(self.name("json"))
    }

    /// Read and check `apps/<id>.json`.
    pub fn read_app(&self) -> Result<AppFile, FilesError> {
        let path = self.app_file();
        let text = self
            .dir
            .apps
            .read(self.name("json"))
            .map_err(|error| FilesError::ReadApp {
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

    /// Replace `apps/<id>.json` (synced: it must survive the machine's crash).
    pub fn write_app(&self, app: &AppFile) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(app).map_err(io::Error::other)?;
        self.dir.apps.write_atomic(self.name("json"), &bytes)
    }

    /// `apps/<id>.groups`' content (`None`: there is none).
    pub fn read_groups(&self) -> io::Result<Option<Vec<u8>>> {
        match self.dir.apps.read(self.name("groups")) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replace `apps/<id>.groups`. Not synced: only a later supervisor on
    /// this running system reads it, and it is rewritten at each spawn.
    pub fn write_groups(&self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.name("groups.tmp");
        let mut file = self.dir.apps.open(&tmp, Access::ReadWrite)?.file;
        file.set_len(0)?;
        file.write_all(bytes)?;
        drop(file);
        self.dir.apps.rename(&tmp, self.name("groups"))
    }

    /// Remove the app's files (its app is deleted): the app file, the group
    /// record and the socket. The pid file goes with [`PidLock::remove`].
    pub fn remove_app(&self) {
        for ext in ["json", "groups", "groups.tmp", "sock"] {
            let _ = self.dir.apps.remove(self.name(ext));
        }
    }

    /// Remove the socket file (the supervisor is ending, or bound it anew).
    pub fn remove_socket(&self) {
        let _ = self.dir.apps.remove(self.name("sock"));
    }

    /// Give the just-bound socket its owner-only mode.
    pub fn protect_socket(&self) -> io::Result<()> {
        self.dir.apps.set_socket_mode(self.name("sock"), 0o600)
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
            let file = self
                .dir
                .apps
                .open(self.name("pid"), Access::ReadWrite)
                .map_err(lock_err)?
                .file;
            let file = match herd_home::pidlock::take(file) {
                Ok(f) => f,
                Err(herd_home::pidlock::TakeError::Held(pid)) => {
                    return Err(FilesError::Running {
                        pid,
                        id: self.id,
                        home: self.home().root().to_path_buf(),
                        socket: self.socket(),
                    });
                }
                Err(herd_home::pidlock::TakeError::Other(e)) => return Err(lock_err(e.into())),
            };
            // The holder before us may have removed the file as it exited:
            // then we locked a file nobody else will ever see. Try again.
            if self.is_pid_file(&file) {
                return Ok(PidLock {
                    file,
                    files: self.clone(),
                });
            }
        }
    }

    /// Take back the lock this process held before an in-place upgrade (the
    /// fd was kept across the exec; the lock belongs to its open file, so
    /// locking it again succeeds at once).
    pub fn lock_inherited(&self, fd: std::os::fd::OwnedFd) -> Result<PidLock, FilesError> {
        let lock_err = |error| FilesError::Lock {
            path: self.pid_file(),
            error,
        };
        let file = Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| lock_err(e.into()))?;
        Ok(PidLock {
            file,
            files: self.clone(),
        })
    }

    /// Whether `file` is (still) the entry `apps/<id>.pid`.
    fn is_pid_file(&self, file: &File) -> bool {
        let ours = file.metadata();
        let now = std::fs::symlink_metadata(self.dir.apps.fd_path(self.name("pid")));
        matches!((ours, now), (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino())
    }

    /// The pid of the supervisor holding the app's lock, if one runs.
    pub fn running_pid(&self) -> Option<u32> {
        let file = self
            .dir
            .apps
            .open(self.name("pid"), Access::Read)
            .ok()?
            .file;
        herd_home::pidlock::holder(file)
    }
}

/// The held lock of `apps/<id>.pid`.
#[derive(Debug)]
pub struct PidLock {
    file: Flock<File>,
    files: AppFiles,
}

impl PidLock {
    /// Write `pid` into the file (the process that will hold the lock).
    pub fn write_pid(&mut self, pid: u32) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        writeln!(self.file, "{pid}")
    }

    /// The fd holding the lock (kept across an in-place upgrade).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.file.as_raw_fd()
    }

    /// The parent of a fork that leaves the lock to its child: the lock
    /// belongs to the open file both share, and an unlock here (what
    /// dropping does) would release it for the child too. The fd closes
    /// with this process.
    pub fn leave_to_child(self) {
        std::mem::forget(self);
    }

    /// Remove the pid file, then let go of the lock (a supervisor that is
    /// done with its app). Another supervisor that opened the file before
    /// it was removed notices and opens the new one (see [`AppFiles::lock`]).
    pub fn remove(self) {
        let _ = self.files.dir.apps.remove(self.files.name("pid"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_engine::config::AppSpec;
    use herd_protocol::supervisor::Desired;
    use herd_protocol::AppDef;
    use std::os::unix::fs::PermissionsExt;

    fn app(id: u32) -> AppFile {
        let def = AppDef::from(AppSpec::new("web", "/bin/true"));
        AppFile::new(id, Desired::Running, def)
    }

    fn home() -> (tempfile::TempDir, Home) {
        let t = tempfile::tempdir().unwrap();
        let home = Home::open(t.path().join("home")).unwrap();
        (t, home)
    }

    #[test]
    fn the_app_file_is_written_owner_only_and_read_back_checked() {
        let (_t, home) = home();
        let apps = AppsDir::open(&home).unwrap();
        let files = apps.app(4);
        files.write_app(&app(4)).unwrap();
        let mode = std::fs::metadata(files.app_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(home.root().join(APPS))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(files.read_app().unwrap(), app(4));
        assert_eq!(apps.ids().unwrap(), vec![4]);
        // Copied over another id's file: refused, naming the id.
        std::fs::copy(files.app_file(), home.root().join("apps/5.json")).unwrap();
        let err = apps.app(5).read_app().unwrap_err();
        assert!(err.to_string().contains("app id 4"), "{err}");
        let err = apps.app(6).read_app().unwrap_err();
        assert!(matches!(err, FilesError::ReadApp { .. }), "{err}");
        assert_eq!(apps.ids().unwrap(), vec![4, 5]);
    }

    #[test]
    fn a_planted_link_is_not_followed() {
        let (t, home) = home();
        let files = AppFiles::open(&home, 1).unwrap();
        let target = t.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        std::os::unix::fs::symlink(&target, files.pid_file()).unwrap();
        let err = files.lock().unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        std::os::unix::fs::symlink(&target, files.app_file()).unwrap();
        assert!(files.read_app().is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }

    #[test]
    fn one_lock_per_app_and_a_removed_file_is_not_a_lock() {
        let (_t, home) = home();
        let files = AppFiles::open(&home, 1).unwrap();
        assert_eq!(files.running_pid(), None);
        let mut lock = files.lock().unwrap();
        lock.write_pid(4242).unwrap();
        let err = files.lock().unwrap_err();
        assert!(err.to_string().contains("pid 4242"), "{err}");
        assert_eq!(files.running_pid(), Some(4242));
        // Another id is another lock.
        AppFiles::open(&home, 2).unwrap().lock().unwrap();
        lock.remove();
        assert_eq!(files.running_pid(), None);
        files.lock().unwrap();
    }

    #[test]
    fn the_group_record_is_replaced_whole() {
        let (_t, home) = home();
        let files = AppFiles::open(&home, 3).unwrap();
        assert_eq!(files.read_groups().unwrap(), None);
        files.write_groups(b"a long first record").unwrap();
        files.write_groups(b"short").unwrap();
        assert_eq!(files.read_groups().unwrap().unwrap(), b"short");
        files.remove_app();
        assert_eq!(files.read_groups().unwrap(), None);
    }
}
