//! # herd-home: the directory herd keeps its state in
//!
//! `$HERD_HOME` (default `~/.herd`) holds the control socket `herd.sock`, the
//! pid lock `herd.pid`, the saved app list `dump.json`, the daemon's own log
//! `herd.log` and the apps' log files in `logs/`. Root's daemon writes there,
//! so no other user may decide what those names point at.
//!
//! ## Theory of operation
//!
//! - **Opening a home** ([`Home::open`]) walks its path from `/` one
//!   directory fd at a time (`openat`, never a path lookup we cannot
//!   check): every directory on the way must belong to root or to herd's
//!   user and be writable by no one else, or be sticky (`/tmp`: no one can
//!   move our entries there); a symbolic link on the way is followed only
//!   when one of those could have made it. The home itself and its `logs/`
//!   must belong to herd's user and be writable by no one else; they are
//!   created 0700, or made 0700 if others could read them. A home that fails is refused with an error that names
//!   the directory, its owner or mode, and what to do.
//! - **Every file of the home** is then reached through that checked
//!   directory's fd ([`Dir`]): `openat` with `O_NOFOLLOW | O_CLOEXEC`,
//!   created 0600 (older files of ours are made 0600 when opened), and
//!   refused unless it is a regular file of ours. Renames and removals are
//!   `renameat`/`unlinkat` in the same directory; the saved list is written
//!   whole and renamed into place. The control socket is bound and reached
//!   as `/proc/self/fd/N/herd.sock`, inside the checked directory.
//!
//! Nothing here belongs to the daemon alone: an app's supervisor that
//! writes its log files opens them through [`Home::logs`] the same way.

mod dir;
mod fault;
pub mod pidlock;
mod walk;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{fchmod, fstat, FileStat, Mode};

pub use dir::{Access, Dir, Opened};

/// The control socket's name in the home.
pub const SOCKET: &str = "herd.sock";
/// The pid lock's name in the home.
pub const PID_FILE: &str = "herd.pid";
/// The daemon's own log (when the CLI started it).
pub const DAEMON_LOG: &str = "herd.log";
/// The saved app list.
pub const DUMP: &str = "dump.json";
/// The directory of the apps' log files.
pub const LOGS: &str = "logs";

/// Why a home cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("no home directory: set HERD_HOME or HOME")]
    NoHome,
    #[error(
        "cannot create or open {path}: {error}; set HERD_HOME to a directory you may write to"
    )]
    Create { path: PathBuf, error: io::Error },
    #[error(
        "{path} belongs to uid {owner}, not to herd's user (uid {uid}), who could plant links there \
         for herd to write through: use a directory of your own as HERD_HOME (unset it for ~/.herd), \
         or `chown {uid} {path}` if it is yours to take"
    )]
    NotOwned { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "{path} is writable by other users (mode {mode:04o}), who could plant links there for herd \
         to write through: run `chmod go-w {path}`, or use another HERD_HOME"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error(
        "HERD_HOME {home} lies inside {path}, which uid {owner} can change (and so swap the home for \
         a directory of its choosing): keep HERD_HOME where only you or root can change the path"
    )]
    AncestorNotOwned {
        home: PathBuf,
        path: PathBuf,
        owner: u32,
    },
    #[error(
        "HERD_HOME {home} lies inside {path}, which other users can write (mode {mode:04o}, no \
         sticky bit) and so swap the home for a directory of their choosing: keep HERD_HOME where \
         only you or root can change the path, or `chmod o-w,g-w {path}`"
    )]
    AncestorWritable {
        home: PathBuf,
        path: PathBuf,
        mode: u32,
    },
    #[error(
        "HERD_HOME {home}: {path} is a symbolic link of uid {owner} in a directory others can write; \
         herd does not follow it: set HERD_HOME to the real directory"
    )]
    Link {
        home: PathBuf,
        path: PathBuf,
        owner: u32,
    },
    #[error("HERD_HOME {home}: too many symbolic links on the way; set it to the real directory")]
    TooManyLinks { home: PathBuf },
    #[error(
        "{path} is not a directory (herd follows no link there): point HERD_HOME at a directory"
    )]
    NotADirectory { path: PathBuf },
    #[error("another herd daemon (pid {pid}) already runs with HERD_HOME={home}; use it (herd list), or stop it with `herd kill`")]
    Running { pid: String, home: PathBuf },
    #[error("cannot lock {path}: {error}")]
    Lock { path: PathBuf, error: io::Error },
}

/// herd's user: the effective uid the files must belong to.
pub(crate) fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The rule for the home and its `logs/`: ours, writable by no one else;
/// then made private (0700) if others could read it.
pub(crate) fn check_own_dir(fd: &OwnedFd, path: &Path) -> Result<(), HomeError> {
    let io_err = |e: Errno| HomeError::Create {
        path: path.to_path_buf(),
        error: e.into(),
    };
    let stat = fstat(fd).map_err(io_err)?;
    check_own_dir_stat(&stat, path)?;
    if stat.st_mode & 0o077 != 0 {
        fchmod(fd, Mode::from_bits_truncate(0o700)).map_err(io_err)?;
    }
    Ok(())
}

fn check_own_dir_stat(stat: &FileStat, path: &Path) -> Result<(), HomeError> {
    if stat.st_uid != euid() {
        return Err(HomeError::NotOwned {
            path: path.to_path_buf(),
            owner: stat.st_uid,
            uid: euid(),
        });
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(HomeError::Writable {
            path: path.to_path_buf(),
            mode: stat.st_mode & 0o7777,
        });
    }
    Ok(())
}

/// A checked home: its directory and `logs/`, held open. Cheap to clone
/// (the fds are shared).
#[derive(Debug, Clone)]
pub struct Home {
    dir: Dir,
    logs: Dir,
}

impl Home {
    /// Where the home is: `$HERD_HOME`, else `~/.herd`, made absolute.
    pub fn location() -> Result<PathBuf, HomeError> {
        let path = match std::env::var_os("HERD_HOME").filter(|h| !h.is_empty()) {
            Some(h) => PathBuf::from(h),
            None => {
                let home = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .ok_or(HomeError::NoHome)?;
                Path::new(&home).join(".herd")
            }
        };
        absolute(path)
    }

    /// Open (creating it if missing) the home at [`Home::location`].
    pub fn from_env() -> Result<Home, HomeError> {
        Home::open(Home::location()?)
    }

    /// Open the home at `root`, creating it (0700) and `logs/` if missing;
    /// refused unless the rules of this crate's introduction hold.
    pub fn open(root: impl Into<PathBuf>) -> Result<Home, HomeError> {
        let root = absolute(root.into())?;
        match walk::open_dir(&root, true)? {
            Some(fd) => Home::checked(root, fd),
            None => unreachable!("open_dir creates what is missing"),
        }
    }

    /// Open the home at `root` if it exists (`None` if it does not), under
    /// the same rules; creates `logs/` in it if missing.
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Option<Home>, HomeError> {
        let root = absolute(root.into())?;
        walk::open_dir(&root, false)?
            .map(|fd| Home::checked(root, fd))
            .transpose()
    }

    fn checked(root: PathBuf, fd: OwnedFd) -> Result<Home, HomeError> {
        check_own_dir(&fd, &root)?;
        let dir = Dir::new(root, fd);
        let logs = dir.subdir(LOGS)?;
        Ok(Home { dir, logs })
    }

    /// The home's path, for messages and for `herd startup`'s unit.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The home directory itself.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// `logs/`, where apps' log files go unless told otherwise.
    pub fn logs(&self) -> &Dir {
        &self.logs
    }

    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }
    /// The socket's path, for messages.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }
    /// The path to bind or connect the socket by: through the checked
    /// directory's fd (and short, however long the home's path is).
    pub fn socket_address(&self) -> PathBuf {
        self.dir.fd_path(SOCKET)
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join(PID_FILE)
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join(DAEMON_LOG)
    }
    pub fn dump(&self) -> PathBuf {
        self.dir.join(DUMP)
    }

    /// `herd.log`, opened for appending (the auto-started daemon's output).
    pub fn open_daemon_log(&self) -> io::Result<File> {
        Ok(self.dir.open(DAEMON_LOG, Access::Append)?.file)
    }

    /// The home's directory holding `path` and the file's name in it, when
    /// `path` is a file directly in the home or in `logs/`: such a file is
    /// then opened through that directory, never by its path.
    pub fn dir_of<'a>(&self, path: &'a Path) -> Option<(&Dir, &'a OsStr)> {
        let name = path.file_name()?;
        let parent = path.parent()?;
        [&self.logs, &self.dir]
            .into_iter()
            .find(|d| d.path() == parent)
            .map(|d| (d, name))
    }

    /// Take the one-daemon-per-home lock (an `flock` on `herd.pid`, held
    /// until the returned guard drops) and write our pid into it.
    pub fn lock(&self) -> Result<PidLock, HomeError> {
        let path = self.pid_file();
        let lock_err = |error| HomeError::Lock {
            path: path.clone(),
            error,
        };
        let file = self
            .dir
            .open(PID_FILE, Access::ReadWrite)
            .map_err(lock_err)?
            .file;
        let mut file = match pidlock::take(file) {
            Ok(f) => f,
            Err(pidlock::TakeError::Held(pid)) => {
                return Err(HomeError::Running {
                    pid,
                    home: self.root().to_path_buf(),
                });
            }
            Err(pidlock::TakeError::Other(e)) => return Err(lock_err(e.into())),
        };
        file.set_len(0).map_err(lock_err)?;
        file.rewind().map_err(lock_err)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
        Ok(PidLock {
            _file: file,
            dir: self.dir.clone(),
        })
    }

    /// Take back the lock this daemon held before it executed a new binary
    /// in place (`herd update`): the fd was kept across the exec, and the
    /// lock belongs to its open file, so locking it again succeeds at once,
    /// and no other daemon could take it meanwhile. Refused if the fd is
    /// not this home's `herd.pid` or its lock is another's.
    pub fn lock_inherited(&self, fd: std::os::fd::OwnedFd) -> Result<PidLock, HomeError> {
        let path = self.pid_file();
        let lock_err = |error| HomeError::Lock {
            path: path.clone(),
            error,
        };
        let file = File::from(fd);
        let ours = file.metadata().map_err(lock_err)?;
        let named = self
            .dir
            .open(PID_FILE, Access::Read)
            .map_err(lock_err)?
            .file
            .metadata()
            .map_err(lock_err)?;
        use std::os::unix::fs::MetadataExt;
        if (ours.dev(), ours.ino()) != (named.dev(), named.ino()) {
            return Err(lock_err(std::io::Error::other(
                "the lock handed over is not this home's herd.pid",
            )));
        }
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| lock_err(e.into()))?;
        Ok(PidLock {
            _file: file,
            dir: self.dir.clone(),
        })
    }

    /// The pid of the daemon holding this home's lock, if one runs.
    pub fn running_pid(&self) -> Option<u32> {
        let file = self.dir.open(PID_FILE, Access::Read).ok()?.file;
        pidlock::holder(file)
    }

    /// Remove a socket left by a daemon that is gone (we hold the lock).
    pub fn remove_socket(&self) {
        let _ = self.dir.remove(SOCKET);
    }
}

/// Held while the daemon runs; removes the pid file when dropped.
#[derive(Debug)]
pub struct PidLock {
    _file: Flock<File>,
    dir: Dir,
}

impl PidLock {
    /// The lock's fd, to keep open across an in-place exec
    /// ([`Home::lock_inherited`] takes it back).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self._file.as_raw_fd()
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let _ = self.dir.remove(PID_FILE);
    }
}

fn absolute(path: PathBuf) -> Result<PathBuf, HomeError> {
    if path.is_absolute() {
        return Ok(path);
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(&path))
        .map_err(|error| HomeError::Create { path, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Tests that change owners need root; under CI they must run.
    fn root_or_skip() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs root (chown) and CI is set"
        );
        eprintln!("skipped: needs root");
        false
    }

    fn nobody() -> nix::unistd::Uid {
        nix::unistd::User::from_name("nobody")
            .unwrap()
            .map(|u| u.uid)
            .unwrap_or(nix::unistd::Uid::from_raw(65534))
    }

    #[test]
    fn one_lock_per_home_and_the_error_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path().join("h")).unwrap();
        let lock = home.lock().unwrap();
        let mode = std::fs::metadata(home.root()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let mode = std::fs::metadata(home.pid_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // flock locks belong to the open file description: a second open conflicts.
        let err = home.lock().unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        assert!(text.contains("herd kill"), "{text}");
        assert_eq!(home.running_pid(), Some(std::process::id()));
        drop(lock);
        assert_eq!(home.running_pid(), None);
        home.lock().unwrap();
    }

    #[test]
    fn a_missing_home_is_created_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b");
        assert!(Home::open_existing(&root).unwrap().is_none());
        assert!(!root.exists());
        let home = Home::open(&root).unwrap();
        assert!(home.log_dir().is_dir());
        for d in [dir.path().join("a"), root.clone(), root.join("logs")] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
        assert!(Home::open_existing(&root).unwrap().is_some());
    }

    #[test]
    fn a_home_owned_by_another_uid_is_refused() {
        if !root_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("h");
        std::fs::create_dir(&root).unwrap();
        nix::unistd::chown(&root, Some(nobody()), None).unwrap();
        let err = Home::open(&root).unwrap_err();
        assert!(matches!(err, HomeError::NotOwned { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("belongs to uid") && text.contains("chown"),
            "{text}"
        );
        assert!(!root.join("logs").exists());
    }

    #[test]
    fn a_group_or_world_writable_home_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("h");
        std::fs::create_dir(&root).unwrap();
        for mode in [0o777, 0o770, 0o1777] {
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Home::open(&root).unwrap_err();
            assert!(matches!(err, HomeError::Writable { .. }), "{mode:o}: {err}");
            assert!(err.to_string().contains("chmod go-w"), "{err}");
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        Home::open(&root).unwrap();
        let mode = std::fs::metadata(&root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "made private");
    }

    #[test]
    fn a_writable_logs_dir_or_a_link_in_its_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("h");
        let home = Home::open(&root).unwrap();
        std::fs::set_permissions(home.log_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Home::open(&root).unwrap_err();
        assert!(matches!(err, HomeError::Writable { .. }), "{err}");
        std::fs::remove_dir(home.log_dir()).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("logs")).unwrap();
        let err = Home::open(&root).unwrap_err();
        assert!(matches!(err, HomeError::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn a_home_inside_a_directory_others_can_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Home::open(open.join("h")).unwrap_err();
        assert!(matches!(err, HomeError::AncestorWritable { .. }), "{err}");
        // Sticky, like /tmp: no one can move our entries, so it is fine.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        Home::open(open.join("h")).unwrap();

        if !root_or_skip() {
            return;
        }
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(nobody()), None).unwrap();
        let err = Home::open(theirs.join("h")).unwrap_err();
        assert!(matches!(err, HomeError::AncestorNotOwned { .. }), "{err}");
    }

    #[test]
    fn links_on_the_way_are_followed_only_when_no_one_else_could_plant_them() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        // Our own link in our own directory: followed (~/.herd -> /data/herd).
        std::os::unix::fs::symlink(&real, dir.path().join("mine")).unwrap();
        let home = Home::open(dir.path().join("mine")).unwrap();
        assert!(real.join("logs").is_dir());
        drop(home);

        if !root_or_skip() {
            return;
        }
        // Another user's link in a sticky world-writable directory (/tmp):
        // the classic trap; not followed.
        let sticky = dir.path().join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let link = sticky.join("herd");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &link,
            Some(nobody()),
            None,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        let err = Home::open(&link).unwrap_err();
        assert!(matches!(err, HomeError::Link { .. }), "{err}");
    }

    #[test]
    fn a_planted_pid_link_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path().join("h")).unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "root's file").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, home.pid_file()).unwrap();
        let err = home.lock().unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(home.running_pid(), None);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root's file");
    }

    #[test]
    fn files_of_the_home_are_found_through_its_directories() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path().join("h")).unwrap();
        let log = home.log_dir().join("web-out.log");
        let (d, name) = home.dir_of(&log).unwrap();
        assert_eq!(d.path(), home.log_dir());
        assert_eq!(name, "web-out.log");
        assert!(home.dir_of(&home.dump()).is_some());
        assert!(home.dir_of(Path::new("/var/log/web.log")).is_none());
    }
}
