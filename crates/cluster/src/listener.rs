//! A worker's listener: an inherited socket, a socket bound standalone, or
//! the stream of connections herd hands over in round-robin mode — one
//! `accept()` for all three.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use tokio::net::{TcpListener, TcpStream};
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
pub(crate) type HandedOver = (TcpStream, serde_json::Value);

/// A connection as [`Listener::accept`] returns it.
pub type Connection = (TcpStream, SocketAddr);

/// Accepts connections, wherever they come from.
#[derive(Debug)]
pub struct Listener {
    kind: Kind,
    source: Source,
}

#[derive(Debug)]
enum Kind {
    Socket(TcpListener),
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
    pub(crate) fn inherited(fd: OwnedFd) -> io::Result<Listener> {
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
            Kind::Socket(l) => l.accept().await,
            Kind::Handed { rx, outbox, .. } => {
                let (stream, seq) = rx.recv().await.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the primary closed the channel",
                    )
                })?;
                answer(outbox, &seq, true);
                let peer = stream
                    .peer_addr()
                    .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
                Ok((stream, peer))
            }
        }
    }

    /// The local address (for round-robin: the fallback address given).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.kind {
            Kind::Socket(l) => l.local_addr(),
            Kind::Handed { addr, .. } => Ok(*addr),
        }
    }
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for Listener {
    type Io = TcpStream;
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
        Listener::local_addr(self)
    }
}
