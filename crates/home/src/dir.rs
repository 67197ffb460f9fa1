//! [`Dir`]: a directory opened once and checked, and every file operation
//! herd does inside it, each relative to the directory's fd (`openat`,
//! `renameat`, `unlinkat`, `mkdirat`). A file is opened with `O_NOFOLLOW` and
//! `O_CLOEXEC`, created 0600, and kept only if it is a regular file of ours:
//! a symbolic link, a fifo or another user's file planted under one of
//! herd's names is refused with an error that says so, never followed.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{fcntl, openat, renameat, AtFlags, FcntlArg, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fsync, unlinkat, UnlinkatFlags};

use crate::{check_own_dir, HomeError};

/// A directory checked once (ours, writable by no one else) and held open:
/// the names in it are looked up relative to this fd, so renaming or
/// replacing the path afterwards changes nothing for us.
#[derive(Debug, Clone)]
pub struct Dir {
    path: PathBuf,
    fd: Arc<OwnedFd>,
}

/// How [`Dir::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only; the file must exist.
    Read,
    /// Append only, created (0600) if missing.
    Append,
    /// Read and write from the start, created (0600) if missing, never truncated.
    ReadWrite,
}

/// A file [`Dir::open`] opened, and whether this call created it.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub created: bool,
}

impl Dir {
    /// Wrap a directory fd the caller has already checked.
    pub(crate) fn new(path: PathBuf, fd: OwnedFd) -> Dir {
        Dir {
            path,
            fd: Arc::new(fd),
        }
    }

    /// The directory's path, for messages (files are never opened by it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name`'s path in this directory, for messages.
    pub fn join(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }

    /// A path that reaches `name` through this directory's fd
    /// (`/proc/self/fd/N/name`), for what only takes a path: binding and
    /// connecting a Unix socket. Without `/proc`, the plain path.
    pub fn fd_path(&self, name: impl AsRef<OsStr>) -> PathBuf {
        let via_fd = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        if via_fd.is_dir() {
            via_fd.join(name.as_ref())
        } else {
            self.join(name)
        }
    }

    /// Open `name` (one path component) in this directory; see [`Access`].
    pub fn open(&self, name: impl AsRef<OsStr>, access: Access) -> io::Result<Opened> {
        let name = one_component(name.as_ref())?;
        // O_NONBLOCK: a fifo planted under our name must not hang the open.
        let base = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
        let private = Mode::from_bits_truncate(0o600);
        let (fd, created) = match access {
            Access::Read => (
                openat(&*self.fd, name, base | OFlag::O_RDONLY, Mode::empty()),
                false,
            ),
            Access::Append | Access::ReadWrite => {
                let how = if access == Access::Append {
                    OFlag::O_WRONLY | OFlag::O_APPEND
                } else {
                    OFlag::O_RDWR
                };
                // Exclusive first, to know whether we made it; an existing
                // entry is then opened as it is (a link fails with ELOOP).
                match openat(
                    &*self.fd,
                    name,
                    base | how | OFlag::O_CREAT | OFlag::O_EXCL,
                    private,
                ) {
                    Ok(fd) => (Ok(fd), true),
                    Err(Errno::EEXIST) => {
                        (openat(&*self.fd, name, base | how, Mode::empty()), false)
                    }
                    Err(e) => (Err(e), false),
                }
            }
        };
        let fd = fd.map_err(refusal)?;
        let stat = fstat(&fd)?;
        own_regular_file(&stat)?;
        if stat.st_mode & 0o077 != 0 {
            // Written by an older herd (0644): ours, so make it private.
            fchmod(&fd, private)?;
        }
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
        Ok(Opened {
            file: File::from(fd),
            created,
        })
    }

    /// The whole content of `name`.
    pub fn read(&self, name: impl AsRef<OsStr>) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open(name, Access::Read)?
            .file
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Replace `name` with `bytes` atomically: a private temporary file
    /// (`name.tmp`), written, synced, renamed over `name`, then the directory
    /// synced. A crash at any point leaves the old content or the new, whole
    /// (a stale `name.tmp` is removed by the next write); a failed write
    /// (a full disk) leaves the old content and no temporary file.
    pub fn write_atomic(&self, name: impl AsRef<OsStr>, bytes: &[u8]) -> io::Result<()> {
        let name = one_component(name.as_ref())?;
        let mut tmp = name.to_os_string();
        tmp.push(".tmp");
        match unlinkat(&*self.fd, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let fd = openat(
            &*self.fd,
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        let mut file = File::from(fd);
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written {
            // A full disk, say: the old content stays, and no partial
            // temporary file is left to take the room.
            let _ = unlinkat(&*self.fd, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        crate::fault::point(&format!("before-rename:{}", name.to_string_lossy()));
        renameat(&*self.fd, tmp.as_os_str(), &*self.fd, name)?;
        fsync(&*self.fd)?;
        Ok(())
    }

    /// Rename `from` to `to`, both in this directory (a link is moved, not followed).
    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> io::Result<()> {
        let (from, to) = (one_component(from.as_ref())?, one_component(to.as_ref())?);
        Ok(renameat(&*self.fd, from, &*self.fd, to)?)
    }

    /// Remove the entry `name` (a link is removed, not followed).
    pub fn remove(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = one_component(name.as_ref())?;
        Ok(unlinkat(&*self.fd, name, UnlinkatFlags::NoRemoveDir)?)
    }

    /// Whether an entry `name` exists (of any kind; links are not followed).
    pub fn exists(&self, name: impl AsRef<OsStr>) -> bool {
        one_component(name.as_ref())
            .is_ok_and(|n| fstatat(&*self.fd, n, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok())
    }

    /// Give the Unix socket `name` (just bound here) the mode `mode`.
    pub fn set_socket_mode(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<()> {
        let name = one_component(name.as_ref())?;
        // O_PATH: a socket cannot be opened for I/O, but it can be pinned
        // (without following a link) and checked before it is changed.
        let fd = openat(
            &*self.fd,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let stat = fstat(&fd)?;
        if stat.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFSOCK.bits()
            || stat.st_uid != crate::euid()
        {
            return Err(refused("it is not the socket herd just made"));
        }
        // fchmod does not take O_PATH fds; its /proc/self/fd link does.
        std::fs::set_permissions(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
    }

    /// The directory `name` in this one, created 0700 if missing, and held
    /// to the same rule as the home: ours, writable by no one else.
    pub fn subdir(&self, name: impl AsRef<OsStr>) -> Result<Dir, HomeError> {
        let path = self.join(name.as_ref());
        let io_err = |error: io::Error| HomeError::Create {
            path: path.clone(),
            error,
        };
        let name = one_component(name.as_ref()).map_err(io_err)?;
        match mkdirat(&*self.fd, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io_err(e.into())),
        }
        let fd = openat(
            &*self.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => HomeError::NotADirectory { path: path.clone() },
            e => io_err(e.into()),
        })?;
        check_own_dir(&fd, &path)?;
        Ok(Dir::new(path, fd))
    }
}

/// `name` as one path component: no `/`, not empty, not `.` or `..`.
fn one_component(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}' is not a file name", name.to_string_lossy()),
        ));
    }
    Ok(name)
}

/// A regular file owned by us, or the reason it is refused.
fn own_regular_file(stat: &FileStat) -> io::Result<()> {
    let kind = stat.st_mode & SFlag::S_IFMT.bits();
    if kind != SFlag::S_IFREG.bits() {
        let what = match kind {
            k if k == SFlag::S_IFDIR.bits() => "a directory",
            k if k == SFlag::S_IFIFO.bits() => "a fifo",
            k if k == SFlag::S_IFSOCK.bits() => "a socket",
            _ => "a device",
        };
        return Err(refused(&format!(
            "it is {what}, not a regular file; herd writes only its own files here: remove it"
        )));
    }
    if stat.st_uid != crate::euid() {
        return Err(refused(&format!(
            "it belongs to uid {}, not to herd's user (uid {}); remove it",
            stat.st_uid,
            crate::euid()
        )));
    }
    Ok(())
}

fn refused(text: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, text.to_string())
}

/// An open's errno, said plainly where it means something was planted.
fn refusal(e: Errno) -> io::Error {
    match e {
        Errno::ELOOP => {
            refused("it is a symbolic link, and herd follows no link in its home; remove it")
        }
        Errno::ENXIO => refused("it is a fifo, not a regular file; remove it"),
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Home;
    use std::os::unix::fs::PermissionsExt;

    fn home() -> (tempfile::TempDir, Home) {
        let t = tempfile::tempdir().unwrap();
        let home = Home::open(t.path().join("h")).unwrap();
        (t, home)
    }

    #[test]
    fn files_are_created_private_and_older_ones_made_private() {
        let (_t, home) = home();
        let dir = home.dir();
        let o = dir.open("a.log", Access::Append).unwrap();
        assert!(o.created);
        let mode = o.file.metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(o);
        assert!(!dir.open("a.log", Access::Append).unwrap().created);

        std::fs::write(dir.join("old"), "x").unwrap();
        std::fs::set_permissions(dir.join("old"), std::fs::Permissions::from_mode(0o644)).unwrap();
        dir.open("old", Access::Read).unwrap();
        let mode = std::fs::metadata(dir.join("old"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_planted_link_or_fifo_is_refused_and_its_target_untouched() {
        let (t, home) = home();
        let dir = home.dir();
        let target = t.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("x.log")).unwrap();
        for access in [Access::Read, Access::Append, Access::ReadWrite] {
            let err = dir.open("x.log", access).unwrap_err().to_string();
            assert!(err.contains("symbolic link"), "{err}");
        }
        assert!(
            dir.write_atomic("x.log", b"new").is_ok(),
            "rename replaces the link itself"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");

        nix::unistd::mkfifo(&dir.join("f.log"), Mode::from_bits_truncate(0o600)).unwrap();
        let err = dir.open("f.log", Access::Append).unwrap_err().to_string();
        assert!(err.contains("fifo"), "{err}");
        let err = dir.open("f.log", Access::Read).unwrap_err().to_string();
        assert!(err.contains("fifo"), "{err}");
    }

    #[test]
    fn names_are_one_component() {
        let (_t, home) = home();
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(home.dir().open(bad, Access::Append).is_err(), "{bad}");
        }
    }

    #[test]
    fn atomic_write_replaces_whole_and_leaves_no_temp() {
        let (_t, home) = home();
        let dir = home.dir();
        dir.write_atomic("d.json", b"one").unwrap();
        dir.write_atomic("d.json", b"two").unwrap();
        assert_eq!(dir.read("d.json").unwrap(), b"two");
        assert!(!dir.exists("d.json.tmp"));
        let mode = std::fs::metadata(dir.join("d.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rotation_moves_entries_not_link_targets() {
        let (t, home) = home();
        let dir = home.logs();
        let target = t.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("a.log.1")).unwrap();
        dir.rename("a.log.1", "a.log.2").unwrap();
        dir.remove("a.log.2").unwrap();
        assert!(!dir.exists("a.log.2"));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }
}
