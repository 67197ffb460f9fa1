//! A worker's IPC channel: one end of a `SOCK_STREAM` socketpair, carrying
//! newline-delimited JSON (Node's format), with fds passed as `SCM_RIGHTS`.
//!
//! This layer moves bytes and fds; it knows nothing about JSON or lines.
//! On a Unix stream socket, fds travel attached to the bytes of the
//! `sendmsg` that carried them, and the kernel never merges the fds of two
//! sends into one `recvmsg`: a [`Channel::recv`] that returns fds stops right
//! after the last byte sent with them. Bytes sent earlier without fds may
//! precede them in the same `recv`.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// The most bytes one `recvmsg` reads; each reads what the socket holds, up
/// to this (the room is zeroed before each read).
const RECV_CHUNK: usize = 64 * 1024;
/// Room for this many fds in one `recvmsg`: the kernel's limit for one
/// send (`SCM_MAX_FD`), so fds are never cut off (a cut-off control message
/// could not be read, and the fds that did arrive would leak).
const MAX_FDS: usize = 253;

/// Create the pair: (herd's end, nonblocking + close-on-exec; the worker's end,
/// blocking, close-on-exec — spawn clears that flag when it places the fd).
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (herd, worker) = socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot create an IPC channel: socketpair: {e}"),
        )
    })?;
    set_nonblocking(&herd)?;
    Ok((herd, worker))
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

/// herd's end of a channel.
///
/// `recv` and `send` may run concurrently (from two tasks sharing an
/// `Arc<Channel>`); concurrent `send`s are serialised, each writing its
/// whole `line` before the next starts.
#[derive(Debug)]
pub struct Channel {
    sock: UnixStream,
    /// Keeps one `send`'s bytes together when several tasks send.
    send_lock: tokio::sync::Mutex<()>,
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Channel {
    /// Wrap herd's end (made nonblocking if it is not). Must be called inside
    /// a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Channel> {
        set_nonblocking(&fd)?;
        let sock = UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))?;
        Ok(Channel {
            sock,
            send_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Give herd's end back as a plain fd (for an in-place upgrade); no
    /// send may be under way.
    pub(crate) fn into_fd(self) -> io::Result<OwnedFd> {
        Ok(self.sock.into_std()?.into())
    }

    /// Read whatever is available: bytes appended to `buf`, and any fds that
    /// came with them (close-on-exec). `Ok(0)` with no fds means EOF.
    ///
    /// A connection reset by the worker (ECONNRESET) is reported as EOF too.
    /// Cancel-safe: nothing is consumed unless the call returns it.
    pub async fn recv(&self, buf: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        loop {
            self.sock.readable().await?;
            let fd = self.sock.as_fd();
            match self
                .sock
                .try_io(Interest::READABLE, || recv_chunk(fd, buf, fds))
            {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Write all of `line` (one or more complete JSON lines) and, with the
    /// first byte, the fd if given. Waits while the socket is full.
    ///
    /// Not cancel-safe: dropping the future part-way leaves part of `line`
    /// written, which corrupts the stream. Run it to completion (e.g. in a
    /// writer task), not as a losing branch of `select!`. A closed peer is
    /// `BrokenPipe` (never SIGPIPE).
    pub async fn send(&self, line: &[u8], fd: Option<&OwnedFd>) -> io::Result<()> {
        if line.is_empty() {
            return match fd {
                None => Ok(()),
                Some(_) => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an fd can only be sent with at least one byte",
                )),
            };
        }
        let _serialised = self.send_lock.lock().await;
        let mut written = 0;
        let mut fd = fd.map(|f| f.as_raw_fd());
        while written < line.len() {
            self.sock.writable().await?;
            let sock = self.sock.as_fd();
            match self.sock.try_io(Interest::WRITABLE, || {
                send_chunk(sock, &line[written..], fd)
            }) {
                Ok(n) => {
                    written += n;
                    // The fd went with the first bytes; never attach it again.
                    fd = None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One `recvmsg` onto the end of `buf`, of what the socket holds (at most
/// [`RECV_CHUNK`]): `buf` grows by what comes, never by a fixed reserve.
fn recv_chunk(
    sock: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let start = buf.len();
    buf.resize(start + super::pending_bytes(sock, RECV_CHUNK), 0);
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let result = {
        let mut iov = [IoSliceMut::new(&mut buf[start..])];
        loop {
            match socket::recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                Err(Errno::ECONNRESET) => break Ok((0, Vec::new())),
                Err(e) => break Err(io::Error::from(e)),
                Ok(msg) => {
                    let mut got = Vec::new();
                    // Cut-off control data (MSG_CTRUNC) cannot be read, but
                    // the bytes can: fds never are cut off (room for
                    // SCM_MAX_FD), so what was cut is no fd of ours.
                    for c in msg.cmsgs().into_iter().flatten() {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            // SAFETY: fresh fds from the kernel, owned by nobody else.
                            got.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
                        }
                    }
                    break Ok((msg.bytes, got));
                }
            }
        }
    };
    match result {
        Ok((n, got)) => {
            buf.truncate(start + n);
            fds.extend(got);
            Ok(n)
        }
        Err(e) => {
            buf.truncate(start);
            Err(e)
        }
    }
}

/// One `sendmsg` of (a prefix of) `data`, with `fd` attached if given.
fn send_chunk(sock: BorrowedFd<'_>, data: &[u8], fd: Option<RawFd>) -> io::Result<usize> {
    let iov = [IoSlice::new(data)];
    let fds;
    let cmsgs: &[ControlMessage<'_>] = match fd {
        Some(f) => {
            fds = [f];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    loop {
        match socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            Ok(n) => return Ok(n),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream as StdUnixStream;
    use std::sync::Arc;

    fn flags(fd: &impl AsFd) -> (bool, bool) {
        let fl = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL).unwrap());
        let fdfl = fcntl(fd, FcntlArg::F_GETFD).unwrap();
        (fl.contains(OFlag::O_NONBLOCK), fdfl & libc::FD_CLOEXEC != 0)
    }

    fn setup() -> (Channel, StdUnixStream) {
        let (herd, worker) = pair().unwrap();
        (Channel::new(herd).unwrap(), StdUnixStream::from(worker))
    }

    #[tokio::test]
    async fn pair_flags() {
        let (herd, worker) = pair().unwrap();
        assert_eq!(flags(&herd), (true, true));
        assert_eq!(flags(&worker), (false, true));
    }

    #[tokio::test]
    async fn round_trip_both_ways() {
        let (ch, mut worker) = setup();
        ch.send(b"{\"cmd\":\"hello\"}\n", None).await.unwrap();
        let mut got = [0u8; 16];
        worker.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"{\"cmd\":\"hello\"}\n");

        worker.write_all(b"{\"cmd\":\"online\"}\n").unwrap();
        let (mut buf, mut fds) = (b"prefix:".to_vec(), Vec::new());
        while !buf.ends_with(b"\n") {
            ch.recv(&mut buf, &mut fds).await.unwrap();
        }
        assert_eq!(buf, b"prefix:{\"cmd\":\"online\"}\n");
        assert!(fds.is_empty());
    }

    #[tokio::test]
    async fn fd_passes_from_herd_to_worker() {
        let (ch, worker) = setup();
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        ch.send(b"{\"handle\":1}\n", Some(&w)).await.unwrap();
        drop(w);

        let mut data = [0u8; 64];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut data)];
        let msg = socket::recvmsg::<()>(
            worker.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut received = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                received.extend(raw);
            }
        }
        assert_eq!(msg.bytes, 13);
        assert_eq!(received.len(), 1);
        // SAFETY: a fresh fd from the kernel, owned by nobody else.
        let passed = unsafe { OwnedFd::from_raw_fd(received[0]) };
        nix::unistd::write(&passed, b"through").unwrap();
        drop(passed);
        let mut s = String::new();
        std::fs::File::from(r).read_to_string(&mut s).unwrap();
        assert_eq!(s, "through");
    }

    #[tokio::test]
    async fn fd_passes_from_worker_to_herd_cloexec() {
        let (ch, worker) = setup();
        let (r, w) = nix::unistd::pipe().unwrap();
        let raw = [w.as_raw_fd()];
        socket::sendmsg::<()>(
            worker.as_raw_fd(),
            &[IoSlice::new(b"{\"h\":1}\n")],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(w);
        let (mut buf, mut fds) = (Vec::new(), Vec::new());
        let n = ch.recv(&mut buf, &mut fds).await.unwrap();
        assert_eq!(n, 8);
        assert_eq!(buf, b"{\"h\":1}\n");
        assert_eq!(fds.len(), 1);
        assert!(flags(&fds[0]).1, "received fds are close-on-exec");
        nix::unistd::write(&fds[0], b"x").unwrap();
        fds.clear();
        let mut s = String::new();
        std::fs::File::from(r).read_to_string(&mut s).unwrap();
        assert_eq!(s, "x");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_message_with_concurrent_recv_and_send() {
        let (ch, worker) = setup();
        let ch = Arc::new(ch);
        // The worker echoes everything back, so herd must read while it writes.
        let echo = std::thread::spawn(move || {
            let mut w = worker;
            let mut r = w.try_clone().unwrap();
            std::io::copy(&mut r, &mut w).unwrap();
        });
        let payload: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let expected = payload.len();

        let reader = {
            let ch = ch.clone();
            tokio::spawn(async move {
                let (mut buf, mut fds) = (Vec::new(), Vec::new());
                while buf.len() < expected {
                    let n = ch.recv(&mut buf, &mut fds).await.unwrap();
                    assert!(n > 0, "early EOF at {}", buf.len());
                }
                buf
            })
        };
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        ch.send(&payload, Some(&w)).await.unwrap();
        let got = reader.await.unwrap();
        assert!(got == payload, "echoed bytes differ");
        drop((r, w));
        drop(ch); // closes herd's end: the echo thread sees EOF.
        echo.join().unwrap();
    }

    #[tokio::test]
    async fn eof_and_broken_pipe() {
        let (ch, worker) = setup();
        drop(worker);
        let (mut buf, mut fds) = (Vec::new(), Vec::new());
        assert_eq!(ch.recv(&mut buf, &mut fds).await.unwrap(), 0);
        assert!(buf.is_empty() && fds.is_empty());
        let err = ch.send(b"late\n", None).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn unread_data_then_close_is_eof() {
        let (ch, mut worker) = setup();
        ch.send(b"never read\n", None).await.unwrap();
        worker.write_all(b"bye\n").unwrap();
        drop(worker); // with unread data: herd may see ECONNRESET
        let (mut buf, mut fds) = (Vec::new(), Vec::new());
        loop {
            if ch.recv(&mut buf, &mut fds).await.unwrap() == 0 {
                break;
            }
        }
        assert!(buf.is_empty() || buf == b"bye\n", "{buf:?}");
    }

    /// Found by the bad-input corpus: 40 fds with one message overflowed
    /// the room for 16, the read failed, and herd took the channel for
    /// closed (and leaked the 16 fds that did arrive).
    #[tokio::test]
    async fn a_message_with_many_fds_keeps_the_channel_and_closes_them() {
        let (ch, worker) = setup();
        let pipes: Vec<_> = (0..40).map(|_| nix::unistd::pipe().unwrap()).collect();
        let raw: Vec<RawFd> = pipes.iter().map(|(_, w)| w.as_raw_fd()).collect();
        socket::sendmsg::<()>(
            worker.as_raw_fd(),
            &[IoSlice::new(b"{\"h\":1}\n")],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        (&worker).write_all(b"{\"after\":1}\n").unwrap();
        let (mut buf, mut fds) = (Vec::new(), Vec::new());
        while !buf.ends_with(b"{\"after\":1}\n") {
            assert!(ch.recv(&mut buf, &mut fds).await.unwrap() > 0, "EOF");
        }
        assert_eq!(buf, b"{\"h\":1}\n{\"after\":1}\n");
        assert_eq!(fds.len(), 40, "every fd arrives, to be closed by its owner");
    }

    #[tokio::test]
    async fn fd_without_bytes_is_rejected() {
        let (ch, _worker) = setup();
        let (_r, w) = nix::unistd::pipe().unwrap();
        assert_eq!(
            ch.send(b"", Some(&w)).await.unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
