//! What a cluster worker's `listen()` or `bind()` gets: the listener that
//! serves a server. One of the app's own when the worker asks for the fd it
//! inherited, or for the address of one of them (the operator's choice of
//! socket wins); else one bound for it, as Node's primary does (falling
//! back to IPv4 when the machine has no IPv6).

use std::io;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::effect::{Effect, Effects};
use super::protocol::{self, ServerQuery, Wanted};
use crate::config::ListenAddr;
use crate::supervisor::events::Event;
use crate::supervisor::listeners::{ListenerId, Listeners};

/// A server, as Node names it: what a worker's `listen()` asked for.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Server {
    /// The listener that serves it.
    pub(super) listener: ListenerId,
    /// The first worker's `data`, echoed to every worker (TLS servers need it).
    pub(super) data: Value,
    /// Node's `sockname`, for round-robin answers.
    pub(super) sockname: Value,
}

/// Find (or bind) the listener for what a worker asked.
pub(super) fn open(
    query: &ServerQuery,
    listeners: &mut Listeners,
    fx: &mut Effects,
) -> io::Result<Server> {
    let data = query.data.clone();
    match query.wanted.as_ref().map_err(|e| io::Error::from(*e))? {
        // `listen({fd: N})`: the worker means the listener it inherited as N.
        Wanted::Inherited(fd) => match listeners.inherited_as(*fd) {
            Some(id) => Ok(borrowed(listeners, id, data)),
            None => Err(io::Error::from_raw_os_error(libc::EBADF)),
        },
        Wanted::Udp {
            addr,
            ipv6_only,
            reuse_addr,
        } => {
            let name = "udp, shared by the workers";
            let (id, bound) = listeners.bind_requested_udp(name, *addr, *ipv6_only, *reuse_addr)?;
            fx.push(Effect::Event(Event::Listening {
                name: name.into(),
                addr: bound,
            }));
            Ok(Server {
                listener: id,
                data,
                sockname: Value::Null,
            })
        }
        Wanted::Stream(addr) => {
            // One of the app's own listeners is the one the operator wants used.
            if let Some(id) = listeners.of_definition_for(addr) {
                return Ok(borrowed(listeners, id, data));
            }
            let (id, bound) = match listeners.bind_requested("node", addr) {
                Err(e) if matches!(addr, ListenAddr::Tcp(a) if a.ip().is_unspecified() && a.is_ipv6()) =>
                {
                    // No IPv6 on this machine: fall back to IPv4, as Node does.
                    let port = match addr {
                        ListenAddr::Tcp(a) => a.port(),
                        ListenAddr::Unix(_) => 0,
                    };
                    let v4 = ListenAddr::Tcp((Ipv4Addr::UNSPECIFIED, port).into());
                    listeners.bind_requested("node", &v4).map_err(|_| e)?
                }
                other => other?,
            };
            fx.push(Effect::Event(Event::Listening {
                name: "node".into(),
                addr: bound.clone(),
            }));
            Ok(Server {
                listener: id,
                data,
                sockname: protocol::sockname(&bound),
            })
        }
    }
}

/// A server served by one of the app's own listeners.
pub(super) fn borrowed(listeners: &Listeners, id: ListenerId, data: Value) -> Server {
    let sockname = listeners
        .get(id)
        .map_or(Value::Null, |l| protocol::sockname(&l.addr));
    Server {
        listener: id,
        data,
        sockname,
    }
}
