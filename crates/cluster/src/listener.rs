//! A worker's listener: an inherited socket (TCP or Unix), a socket bound
//! standalone, or the stream of connections herd hands over in round-robin
//! mode — one `accept()` for all of them, yielding a [`NetStream`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Where a listener's connections come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A socket herd (or systemd) bound and passed (`LISTEN_FDS`).
    Inherited,
    /// herd accepts and hands each connection over (round-robin).
    RoundRobin,
    /// Not under herd: this process bound the fallback address itself.
    Bound,
}

/// A connection herd handed over, with the `seq` of its `newconn`.
pub(crate) type HandedOver = (NetStream, serde_json::Value);

/// A connection as [`Listener::accept`] returns it: the stream and the
/// peer's address (`0.0.0.0:0` for a Unix socket's peer, which has none).
pub type Connection = (NetStream, SocketAddr);

/// A connection's stream: TCP, or a Unix socket's (`--listen unix:PATH`).
/// Both read and write alike ([`AsyncRead`], [`AsyncWrite`]).
#[derive(Debug)]
pub enum NetStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// What a Unix peer reports as its address.
fn no_addr() -> SocketAddr {
    ([0, 0, 0, 0], 0).into()
}

impl NetStream {
    /// Wrap a connected socket's fd (nonblocking), TCP or Unix by its family.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<NetStream> {
        if is_unix(&fd) {
            let std = std::os::unix::net::UnixStream::from(fd);
            std.set_nonblocking(true)?;
            Ok(NetStream::Unix(UnixStream::from_std(std)?))
        } else {
            let std = std::net::TcpStream::from(fd);
            std.set_nonblocking(true)?;
            Ok(NetStream::Tcp(TcpStream::from_std(std)?))
        }
    }

    /// TCP_NODELAY on a TCP stream; nothing to do on a Unix one.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self {
            NetStream::Tcp(s) => s.set_nodelay(nodelay),
            NetStream::Unix(_) => Ok(()),
        }
    }

    /// The peer's address (`0.0.0.0:0` for a Unix socket).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            NetStream::Tcp(s) => s.peer_addr(),
            NetStream::Unix(_) => Ok(no_addr()),
        }
    }

    /// Wait until the peer has sent something (or closed): e.g. a request.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            NetStream::Tcp(s) => s.readable().await,
            NetStream::Unix(s) => s.readable().await,
        }
    }

    /// The TCP stream, if it is one.
    pub fn into_tcp(self) -> Option<TcpStream> {
        match self {
            NetStream::Tcp(s) => Some(s),
            NetStream::Unix(_) => None,
        }
    }
}

impl AsyncRead for NetStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            NetStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NetStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            NetStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            NetStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            NetStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            NetStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            NetStream::Tcp(s) => s.is_write_vectored(),
            NetStream::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// Is this socket a Unix one (by its address family)?
fn is_unix(fd: &OwnedFd) -> bool {
    use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
    use std::os::fd::AsRawFd;
    getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .is_ok_and(|a| a.family() == Some(AddressFamily::Unix))
}

/// Accepts connections, wherever they come from.
#[derive(Debug)]
pub struct Listener {
    kind: Kind,
    source: Source,
}

#[derive(Debug)]
enum Kind {
    Socket(TcpListener),
    UnixSocket(UnixListener),
    Handed {
        rx: mpsc::UnboundedReceiver<HandedOver>,
        addr: SocketAddr,
        /// To the primary: `accepted` answers.
        outbox: Option<mpsc::UnboundedSender<Vec<u8>>>,
    },
}

fn answer(
    outbox: &Option<mpsc::UnboundedSender<Vec<u8>>>,
    seq: &serde_json::Value,
    accepted: bool,
) {
    if let Some(outbox) = outbox {
        let mut line = serde_json::to_vec(
            &serde_json::json!({"cmd": "NODE_CLUSTER", "ack": seq, "accepted": accepted}),
        )
        .expect("a JSON value serializes");
        line.push(b'\n');
        let _ = outbox.send(line);
    }
}

impl Drop for Listener {
    /// Connections handed over but not taken yet go back to the primary,
    /// which gives them to another worker.
    fn drop(&mut self) {
        if let Kind::Handed { rx, outbox, .. } = &mut self.kind {
            rx.close();
            while let Ok((stream, seq)) = rx.try_recv() {
                drop(stream);
                answer(outbox, &seq, false);
            }
        }
    }
}

impl Listener {
    /// An inherited listening socket: TCP or Unix, by its address family.
    pub(crate) fn inherited(fd: OwnedFd) -> io::Result<Listener> {
        if is_unix(&fd) {
            let std = std::os::unix::net::UnixListener::from(fd);
            std.set_nonblocking(true)?;
            return Listener::from_std_unix(std, Source::Inherited);
        }
        let std = std::net::TcpListener::from(fd);
        std.set_nonblocking(true)?;
        Listener::from_std(std, Source::Inherited)
    }

    pub(crate) fn from_std(std: std::net::TcpListener, source: Source) -> io::Result<Listener> {
        Ok(Listener {
            kind: Kind::Socket(TcpListener::from_std(std)?),
            source,
        })
    }

    pub(crate) fn from_std_unix(
        std: std::os::unix::net::UnixListener,
        source: Source,
    ) -> io::Result<Listener> {
        Ok(Listener {
            kind: Kind::UnixSocket(UnixListener::from_std(std)?),
            source,
        })
    }

    pub(crate) fn round_robin(
        rx: mpsc::UnboundedReceiver<HandedOver>,
        addr: SocketAddr,
        outbox: Option<mpsc::UnboundedSender<Vec<u8>>>,
    ) -> Listener {
        Listener {
            kind: Kind::Handed { rx, addr, outbox },
            source: Source::RoundRobin,
        }
    }

    /// Where connections come from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The next connection. A handed-over stream ends when the primary
    /// closes the channel: then this returns `ConnectionAborted`.
    pub async fn accept(&mut self) -> io::Result<Connection> {
        match &mut self.kind {
            Kind::Socket(l) => {
                let (stream, peer) = l.accept().await?;
                Ok((NetStream::Tcp(stream), peer))
            }
            Kind::UnixSocket(l) => {
                let (stream, _) = l.accept().await?;
                Ok((NetStream::Unix(stream), no_addr()))
            }
            Kind::Handed { rx, outbox, .. } => {
                let (stream, seq) = rx.recv().await.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the primary closed the channel",
                    )
                })?;
                answer(outbox, &seq, true);
                let peer = stream.peer_addr().unwrap_or_else(|_| no_addr());
                Ok((stream, peer))
            }
        }
    }

    /// The local address (for round-robin: the fallback address given). A
    /// Unix socket has none: an `Unsupported` error names its path.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.kind {
            Kind::Socket(l) => l.local_addr(),
            Kind::UnixSocket(l) => {
                let path = l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                    .unwrap_or_else(|| "?".into());
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the listener is the Unix socket {path}: it has no IP address"),
                ))
            }
            Kind::Handed { addr, .. } => Ok(*addr),
        }
    }
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for Listener {
    type Io = NetStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match Listener::accept(self).await {
                Ok(conn) => return conn,
                // Out of fds and the like: wait a little, as axum's own listener does.
                Err(e) if e.kind() != io::ErrorKind::ConnectionAborted => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                // The primary is gone: nothing more will come.
                Err(_) => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.kind {
            // axum asks only to report it: a Unix socket has no IP address.
            Kind::UnixSocket(_) => Ok(no_addr()),
            _ => Listener::local_addr(self),
        }
    }
}
