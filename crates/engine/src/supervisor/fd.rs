//! An fd held in an app's state, written out as its number.
//!
//! The in-place upgrade (issue 14) keeps an app's fds open across `exec`
//! and hands the new binary its state: the numbers in that state are the
//! same fds in the new process. Reading the state back adopts each number
//! once, from the fds the new process was told it inherited ([`adopting`]);
//! a number that is not among them is an error, never a guess.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

/// An fd owned by a part of an app's state (a listening socket, a client
/// connection herd holds). As JSON: its number.
#[derive(Debug)]
pub(crate) struct Fd(OwnedFd);

impl Fd {
    pub(crate) fn new(fd: OwnedFd) -> Fd {
        Fd(fd)
    }

    pub(crate) fn into_owned(self) -> OwnedFd {
        self.0
    }

    /// The fd itself, for calls that take an [`OwnedFd`].
    pub(crate) fn owned(&self) -> &OwnedFd {
        &self.0
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    pub(crate) fn try_clone(&self) -> std::io::Result<OwnedFd> {
        self.0.try_clone()
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl serde::Serialize for Fd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WRITTEN.with_borrow_mut(|w| {
            if let Some(w) = w {
                w.insert(self.raw());
            }
        });
        s.serialize_i32(self.raw())
    }
}

impl<'de> serde::Deserialize<'de> for Fd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fd, D::Error> {
        let n = <RawFd as serde::Deserialize>::deserialize(d)?;
        ADOPTABLE
            .with_borrow_mut(|fds| fds.remove(&n))
            .map(Fd)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "the state names fd {n}, which is not among the fds handed over (or is named twice)"
                ))
            })
    }
}

thread_local! {
    /// The fds that the state being read may adopt, by number.
    static ADOPTABLE: RefCell<BTreeMap<RawFd, OwnedFd>> = const { RefCell::new(BTreeMap::new()) };
    /// The fds shared by several parts of the state being read ([`shared`]),
    /// once adopted.
    static SHARED: RefCell<BTreeMap<RawFd, Arc<Fd>>> = const { RefCell::new(BTreeMap::new()) };
    /// The numbers of the fds written so far, while [`writing`] records them.
    static WRITTEN: RefCell<Option<BTreeSet<RawFd>>> = const { RefCell::new(None) };
}

/// Write state (`write`), recording the number of every [`Fd`] it holds:
/// the fds a new binary must inherit.
pub(crate) fn writing<R>(write: impl FnOnce() -> R) -> (R, BTreeSet<RawFd>) {
    WRITTEN.with_borrow_mut(|w| *w = Some(BTreeSet::new()));
    let result = write();
    let written = WRITTEN.with_borrow_mut(|w| w.take()).unwrap_or_default();
    (result, written)
}

/// An fd shared by two parts of the state (a client connection handed to a
/// worker is held by its handoff and by the handle message that carries
/// it): written as its number by each, read back as one [`Arc`].
/// Use as `#[serde(with = "fd::shared")]`.
pub(crate) mod shared {
    use super::*;

    pub(crate) fn serialize<S: serde::Serializer>(fd: &Arc<Fd>, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&**fd, s)
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<Fd>, D::Error> {
        let n = <RawFd as serde::Deserialize>::deserialize(d)?;
        if let Some(fd) = SHARED.with_borrow(|m| m.get(&n).cloned()) {
            return Ok(fd);
        }
        let fd = ADOPTABLE
            .with_borrow_mut(|fds| fds.remove(&n))
            .map(|fd| Arc::new(Fd(fd)))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "the state names fd {n}, which is not among the fds handed over"
                ))
            })?;
        SHARED.with_borrow_mut(|m| m.insert(n, fd.clone()));
        Ok(fd)
    }
}

/// [`shared`] for an `Option<Arc<Fd>>`.
pub(crate) mod shared_opt {
    use super::*;

    pub(crate) fn serialize<S: serde::Serializer>(
        fd: &Option<Arc<Fd>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match fd {
            Some(fd) => s.serialize_some(&**fd),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Arc<Fd>>, D::Error> {
        #[derive(serde::Deserialize)]
        struct Wrap(#[serde(with = "shared")] Arc<Fd>);
        Ok(<Option<Wrap> as serde::Deserialize>::deserialize(d)?.map(|w| w.0))
    }
}

/// Read state (`read`) that may adopt `fds`, each at most once; the fds it
/// did not adopt are returned (and stay open) for the caller to deal with.
pub(crate) fn adopting<R>(fds: Vec<OwnedFd>, read: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    ADOPTABLE.with_borrow_mut(|m| m.extend(fds.into_iter().map(|fd| (fd.as_raw_fd(), fd))));
    let result = read();
    SHARED.with_borrow_mut(std::mem::take);
    let left = ADOPTABLE.with_borrow_mut(std::mem::take);
    (result, left.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_fd_is_written_as_its_number_and_adopted_once_when_read() {
        let (a, b) = nix::unistd::pipe().unwrap();
        let number = a.as_raw_fd();
        let held = vec![Fd::new(a)];
        let text = serde_json::to_string(&held).unwrap();
        assert_eq!(text, format!("[{number}]"));
        // Hand the same fd "across exec": the reader adopts it by number.
        let fd = held.into_iter().next().unwrap().0;
        let (back, left) = adopting(vec![fd], || serde_json::from_str::<Vec<Fd>>(&text));
        assert_eq!(back.unwrap()[0].raw(), number);
        assert!(left.is_empty());
        // A number nobody handed over is an error.
        let (again, _) = adopting(vec![], || serde_json::from_str::<Vec<Fd>>(&text));
        assert!(again.unwrap_err().to_string().contains("not among the fds"));
        drop(b);
    }
}
