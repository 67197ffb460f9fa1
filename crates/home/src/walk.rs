//! Finding the home's directory from its path without trusting any part of
//! the path another user can change: from `/`, one directory fd at a time.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};

use crate::{euid, HomeError};

/// Links followed before giving up (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Whether only root or herd's user can change entries of this directory:
/// owned by one of them, and writable by no one else unless sticky.
fn check_ancestor(stat: &FileStat, path: &Path, home: &Path) -> Result<(), HomeError> {
    if stat.st_uid != 0 && stat.st_uid != euid() {
        return Err(HomeError::AncestorNotOwned {
            home: home.to_path_buf(),
            path: path.to_path_buf(),
            owner: stat.st_uid,
        });
    }
    if others_may_write(stat) && !sticky(stat) {
        return Err(HomeError::AncestorWritable {
            home: home.to_path_buf(),
            path: path.to_path_buf(),
            mode: stat.st_mode & 0o7777,
        });
    }
    Ok(())
}

fn others_may_write(stat: &FileStat) -> bool {
    stat.st_mode & 0o022 != 0
}

fn sticky(stat: &FileStat) -> bool {
    stat.st_mode & libc::S_ISVTX != 0
}

fn kind(stat: &FileStat) -> u32 {
    stat.st_mode & SFlag::S_IFMT.bits()
}

/// The path's components as names to look up (`..` kept, `.` dropped).
fn names(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// Open the directory at the absolute `home` under the rules of the crate's
/// introduction, creating missing directories (0700) when `create`;
/// `Ok(None)` when it is missing and `create` is false. The home itself is
/// checked by the caller (it has its own, stricter rule).
pub(crate) fn open_dir(home: &Path, create: bool) -> Result<Option<OwnedFd>, HomeError> {
    let io_err = |path: &Path, e: Errno| HomeError::Create {
        path: path.to_path_buf(),
        error: e.into(),
    };
    let root = PathBuf::from("/");
    let root_fd = open(
        "/",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(&root, e))?;
    // The directories we are in, from `/` down (the physical path, for messages).
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(root_fd, root)];
    let mut todo: VecDeque<OsString> = names(home).collect();
    let mut links = 0;
    let mut created = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let (parent, parent_path) = stack.last().expect("never empty");
        let parent_stat = fstat(parent).map_err(|e| io_err(parent_path, e))?;
        check_ancestor(&parent_stat, parent_path, home)?;
        let here = parent_path.join(&name);
        let stat = match fstatat(parent, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(Errno::ENOENT) if create && created <= MAX_LINKS => {
                created += 1;
                match mkdirat(parent, name.as_os_str(), Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_err(&here, e)),
                }
                todo.push_front(name);
                continue;
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(io_err(&here, e)),
        };
        match kind(&stat) {
            k if k == SFlag::S_IFLNK.bits() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(HomeError::TooManyLinks {
                        home: home.to_path_buf(),
                    });
                }
                // In a directory others may write (sticky, else it was
                // refused above), only a link of ours or root's is ours.
                let owner_ok = stat.st_uid == 0 || stat.st_uid == euid();
                if others_may_write(&parent_stat) && !owner_ok {
                    return Err(HomeError::Link {
                        home: home.to_path_buf(),
                        path: here,
                        owner: stat.st_uid,
                    });
                }
                let target = PathBuf::from(
                    readlinkat(parent, name.as_os_str()).map_err(|e| io_err(&here, e))?,
                );
                if target.is_absolute() {
                    stack.truncate(1);
                }
                for n in names(&target).collect::<Vec<_>>().into_iter().rev() {
                    todo.push_front(n);
                }
            }
            k if k == SFlag::S_IFDIR.bits() => {
                let fd = openat(
                    parent,
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| match e {
                    // Swapped for a link or a file since we looked.
                    Errno::ELOOP | Errno::ENOTDIR => {
                        HomeError::NotADirectory { path: here.clone() }
                    }
                    e => io_err(&here, e),
                })?;
                stack.push((fd, here));
            }
            _ => return Err(HomeError::NotADirectory { path: here }),
        }
    }
    Ok(stack.pop().map(|(fd, _)| fd))
}
