//! `$HERD_HOME`: where the daemon keeps its socket, pid lock, logs and
//! saved app list, and the lock that allows one daemon per home.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the home cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("cannot create {path}: {source}; set HERD_HOME to a directory you may write to")]
    Create { path: PathBuf, source: io::Error },
    #[error("another herd daemon (pid {pid}) already runs with HERD_HOME={home}; use it (herd list), or stop it with `herd kill`")]
    Running { pid: String, home: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("no home directory: set HERD_HOME or HOME")]
    NoHome,
}

/// The daemon's directory and the files in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// `$HERD_HOME`, else `~/.herd`.
    pub fn from_env() -> Result<Home, HomeError> {
        if let Some(h) = std::env::var_os("HERD_HOME").filter(|h| !h.is_empty()) {
            return Ok(Home::new(h));
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or(HomeError::NoHome)?;
        Ok(Home::new(Path::new(&home).join(".herd")))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn socket(&self) -> PathBuf {
        self.root.join("herd.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("herd.pid")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.root.join("herd.log")
    }
    pub fn dump(&self) -> PathBuf {
        self.root.join("dump.json")
    }

    /// Create the home (0700) and its log directory if they are missing.
    pub fn create(&self) -> Result<(), HomeError> {
        for dir in [self.root.clone(), self.log_dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| HomeError::Create {
                    path: dir.clone(),
                    source,
                })?;
        }
        // An existing home keeps its files, but never readable by others.
        let _ = fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700));
        Ok(())
    }

    /// Take the one-daemon-per-home lock (an `flock` on `herd.pid`, held
    /// until the returned guard drops) and write our pid into it.
    pub fn lock(&self) -> Result<PidLock, HomeError> {
        self.create()?;
        let path = self.pid_file();
        let lock_err = |source| HomeError::Lock {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_err)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(HomeError::Running {
                    pid: pid.trim().to_string(),
                    home: self.root.clone(),
                });
            }
            return Err(lock_err(e));
        }
        file.set_len(0).map_err(lock_err)?;
        file.rewind().map_err(lock_err)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
        Ok(PidLock {
            _file: file,
            path: path.clone(),
        })
    }

    /// The pid of the daemon holding this home's lock, if one runs.
    pub fn running_pid(&self) -> Option<u32> {
        let file = File::open(self.pid_file()).ok()?;
        // SAFETY: flock on an fd we own; a shared probe lock released at once.
        let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
        if free {
            return None;
        }
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// Held while the daemon runs; removes the pid file when dropped.
#[derive(Debug)]
pub struct PidLock {
    _file: File,
    path: PathBuf,
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_per_home_and_the_error_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("h"));
        let lock = home.lock().unwrap();
        let mode = fs::metadata(home.root()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
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
}
