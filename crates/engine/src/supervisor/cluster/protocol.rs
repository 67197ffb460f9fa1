//! Node's cluster protocol on a worker's channel, as typed messages: what a
//! cluster worker (a Node worker, or a Rust one built on herd-cluster) asks
//! herd, and the messages herd sends back. Pure: no state and no I/O.
//!
//! Every message is one JSON line. Node's internal messages have a `cmd`
//! starting with `NODE_` and never reach the app: `NODE_CLUSTER` carries the
//! cluster's requests and answers (`act`: `queryServer`, `listening`,
//! `close`, …; `seq` numbers a message, `ack` names the `seq` it answers),
//! and `NODE_HANDLE` a message with an fd alongside (`SCM_RIGHTS`), which
//! the receiver acknowledges with `NODE_HANDLE_ACK` (or refuses with
//! `NODE_HANDLE_NACK` when the fd did not arrive).
//!
//! A worker names each server it listens on by a *server key*; herd serves
//! it with one of its listeners (a socket herd owns).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::errno::Errno;

use serde_json::{json, Value};

use crate::config::ListenAddr;

/// Node's name for a server a worker listens on:
/// `address:port:addressType:fd:index` (a second `listen(0)` in one worker
/// is a second server). For a herd-cluster worker in round-robin, the name
/// of one of the app's own listeners.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub(crate) struct ServerKey(String);

impl ServerKey {
    /// The key of one of the app's own listeners (herd-cluster workers).
    pub(crate) fn of_listener(name: &str) -> ServerKey {
        ServerKey(name.to_string())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The message "shutdown" (`--shutdown-with-message`, pm2's graceful stop).
pub(crate) const SHUTDOWN: &[u8] = b"\"shutdown\"\n";

/// A message from a worker, as herd understands it.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// The worker got the fd of our last handle message.
    HandleAck,
    /// The fd of our last handle message did not arrive.
    HandleNack,
    /// The worker sent a handle with a message (`process.send(msg, socket)`):
    /// the handle's type, and the message to deliver.
    Handle {
        kind: String,
        message: Option<Value>,
    },
    /// A `listen()` or `bind()` asks for a server.
    QueryServer(ServerQuery),
    /// The worker listens (Node's readiness).
    Listening,
    /// The worker closed its server `key`.
    Close { key: ServerKey },
    /// `cluster.worker.disconnect()`: it waits for our answer to `seq`.
    ExitedAfterDisconnect { seq: Value },
    /// Its answer for the client connection handed to it as `seq`.
    Answer { seq: u64, accepted: bool },
    /// Nothing herd acts on.
    Ignored,
}

/// Is this a message of Node's internal protocol (never shown to the app)?
pub(crate) fn is_internal(value: &Value) -> bool {
    value
        .get("cmd")
        .and_then(Value::as_str)
        .is_some_and(|c| c.starts_with("NODE_"))
}

/// Read an internal message.
pub(crate) fn parse(msg: &Value) -> Incoming {
    match msg.get("cmd").and_then(Value::as_str) {
        Some("NODE_HANDLE_ACK") => Incoming::HandleAck,
        Some("NODE_HANDLE_NACK") => Incoming::HandleNack,
        Some("NODE_HANDLE") => Incoming::Handle {
            kind: msg
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            message: msg.get("msg").cloned(),
        },
        Some("NODE_CLUSTER") => {
            let act = msg.get("act").and_then(Value::as_str);
            match act {
                Some("queryServer") => Incoming::QueryServer(ServerQuery::parse(msg)),
                Some("listening") => Incoming::Listening,
                Some("close") => Incoming::Close {
                    key: ServerKey(
                        msg.get("key")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    ),
                },
                Some("exitedAfterDisconnect") => Incoming::ExitedAfterDisconnect {
                    seq: msg.get("seq").cloned().unwrap_or(Value::Null),
                },
                None => match msg.get("ack").and_then(Value::as_u64) {
                    Some(seq) => Incoming::Answer {
                        seq,
                        accepted: msg
                            .get("accepted")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    },
                    None => Incoming::Ignored,
                },
                Some(_) => Incoming::Ignored,
            }
        }
        _ => Incoming::Ignored,
    }
}

/// What a worker's `listen()` or `bind()` asked for.
#[derive(Debug)]
pub(crate) struct ServerQuery {
    pub(crate) key: ServerKey,
    /// Its `seq`: our answer's `ack`.
    pub(crate) seq: Value,
    /// The first worker's `data`, echoed to every worker (TLS servers need it).
    pub(crate) data: Value,
    /// A UDP socket (`dgram`): shared in every balance mode, as under Node.
    pub(crate) udp: bool,
    /// The socket wanted, or why the query makes no sense (`EINVAL`).
    pub(crate) wanted: Result<Wanted, Errno>,
    /// The address as a person reads it (`127.0.0.1:8000`, a path, `*`).
    pub(crate) described: String,
}

/// The socket a query asks for.
#[derive(Debug)]
pub(crate) enum Wanted {
    /// `listen({fd: N})`: the listener the worker inherited as fd N.
    Inherited(i64),
    /// A UDP socket; libuv's `UV_UDP_IPV6ONLY` and `UV_UDP_REUSEADDR` flags.
    Udp {
        addr: SocketAddr,
        ipv6_only: bool,
        reuse_addr: bool,
    },
    /// A TCP or Unix listening socket.
    Stream(ListenAddr),
}

impl ServerQuery {
    fn parse(msg: &Value) -> ServerQuery {
        // One server per address/port/type/fd and per the worker's index of
        // it, as Node's primary keys them.
        let key = format!(
            "{}:{}:{}:{}:{}",
            msg.get("address").unwrap_or(&Value::Null),
            msg.get("port").unwrap_or(&Value::Null),
            msg.get("addressType").unwrap_or(&Value::Null),
            msg.get("fd").unwrap_or(&Value::Null),
            msg.get("index").unwrap_or(&Value::Null),
        );
        let udp = matches!(
            msg.get("addressType").and_then(Value::as_str),
            Some("udp4" | "udp6")
        );
        ServerQuery {
            key: ServerKey(key),
            seq: msg.get("seq").cloned().unwrap_or(Value::Null),
            data: msg.get("data").cloned().unwrap_or(Value::Null),
            udp,
            wanted: wanted(msg, udp),
            described: describe(msg),
        }
    }
}

fn wanted(msg: &Value, udp: bool) -> Result<Wanted, Errno> {
    let address = msg.get("address").and_then(Value::as_str);
    let port = msg.get("port").and_then(Value::as_i64).unwrap_or(-1);
    let address_type = msg.get("addressType").and_then(Value::as_i64).unwrap_or(4);
    let invalid = || Errno::EINVAL;
    if let Some(fd) = msg.get("fd").and_then(Value::as_i64).filter(|&fd| fd >= 0) {
        return Ok(Wanted::Inherited(fd));
    }
    if udp {
        let v6 = msg.get("addressType").and_then(Value::as_str) == Some("udp6");
        let ip: IpAddr = match address {
            Some(a) => a.parse().map_err(|_| invalid())?,
            None if v6 => Ipv6Addr::UNSPECIFIED.into(),
            None => Ipv4Addr::UNSPECIFIED.into(),
        };
        let port = u16::try_from(port).map_err(|_| invalid())?;
        let flags = msg.get("flags").and_then(Value::as_i64).unwrap_or(0);
        return Ok(Wanted::Udp {
            addr: (ip, port).into(),
            ipv6_only: flags & 1 != 0,
            reuse_addr: flags & 4 != 0,
        });
    }
    if address_type == -1 || (port < 0 && address.is_some()) {
        return address
            .map(|p| Wanted::Stream(ListenAddr::Unix(p.into())))
            .ok_or_else(invalid);
    }
    let port = u16::try_from(port).map_err(|_| invalid())?;
    let ip: IpAddr = match address {
        Some(a) => a.parse().map_err(|_| invalid())?,
        // No address: every interface, dual-stack, as Node does.
        None => Ipv6Addr::UNSPECIFIED.into(),
    };
    Ok(Wanted::Stream(ListenAddr::Tcp((ip, port).into())))
}

fn describe(msg: &Value) -> String {
    let address = msg.get("address").and_then(Value::as_str).unwrap_or("*");
    match msg.get("port").and_then(Value::as_i64) {
        Some(p) if p >= 0 => format!("{address}:{p}"),
        _ => address.to_string(),
    }
}

/// One JSON line.
pub(crate) fn line(value: &Value) -> Vec<u8> {
    let mut l = serde_json::to_vec(value).expect("a JSON value serializes");
    l.push(b'\n');
    l
}

/// Our answer (numbered `seq`) to the worker's request numbered `ack`.
pub(crate) fn reply(ack: &Value, seq: u64, mut body: Value) -> Vec<u8> {
    body["cmd"] = json!("NODE_CLUSTER");
    body["ack"] = ack.clone();
    body["seq"] = json!(seq);
    line(&body)
}

/// We got the fd of the worker's handle message.
pub(crate) fn handle_ack() -> Vec<u8> {
    line(&json!({"cmd": "NODE_HANDLE_ACK"}))
}

/// The answer to a query, with the listening socket alongside (shared
/// balance, and UDP always).
pub(crate) fn listening_socket(
    key: &ServerKey,
    ack: &Value,
    data: &Value,
    seq: u64,
    udp: bool,
) -> Vec<u8> {
    let inner = json!({
        "cmd": "NODE_CLUSTER", "errno": 0, "key": key.as_str(),
        "ack": ack, "data": data, "seq": seq,
    });
    let kind = if udp { "dgram.Native" } else { "net.Native" };
    line(&json!({"cmd": "NODE_HANDLE", "type": kind, "msg": inner}))
}

/// A client connection for server `key`, the fd alongside (round-robin).
pub(crate) fn new_connection(key: &ServerKey, seq: u64) -> Vec<u8> {
    line(&json!({
        "cmd": "NODE_HANDLE", "type": "net.Native",
        "msg": {"cmd": "NODE_CLUSTER", "act": "newconn", "key": key.as_str(), "seq": seq},
    }))
}

/// Close your servers: the first half of a graceful stop.
pub(crate) fn disconnect(seq: u64) -> Vec<u8> {
    line(&json!({"cmd": "NODE_CLUSTER", "act": "disconnect", "seq": seq}))
}

/// Node's `sockname` object for a round-robin answer.
pub(crate) fn sockname(addr: &ListenAddr) -> Value {
    match addr {
        ListenAddr::Tcp(a) => json!({
            "address": a.ip().to_string(),
            "family": if a.is_ipv4() { "IPv4" } else { "IPv6" },
            "port": a.port(),
        }),
        ListenAddr::Unix(_) => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_names_its_server_and_the_socket_it_wants() {
        let msg = json!({"cmd": "NODE_CLUSTER", "act": "queryServer", "seq": 4,
            "address": "127.0.0.1", "port": 8000, "addressType": 4, "fd": null, "index": 0});
        let Incoming::QueryServer(q) = parse(&msg) else {
            panic!("a query")
        };
        assert_eq!(q.key.as_str(), "\"127.0.0.1\":8000:4:null:0");
        assert_eq!(q.seq, json!(4));
        assert!(!q.udp);
        assert!(matches!(q.wanted, Ok(Wanted::Stream(ListenAddr::Tcp(a))) if a.port() == 8000));
        assert_eq!(q.described, "127.0.0.1:8000");

        let fd =
            json!({"cmd": "NODE_CLUSTER", "act": "queryServer", "fd": 3, "addressType": "udp4"});
        let Incoming::QueryServer(q) = parse(&fd) else {
            panic!("a query")
        };
        assert!(matches!(q.wanted, Ok(Wanted::Inherited(3))), "an fd wins");

        let bad = json!({"cmd": "NODE_CLUSTER", "act": "queryServer", "port": 70000});
        let Incoming::QueryServer(q) = parse(&bad) else {
            panic!("a query")
        };
        assert_eq!(q.wanted.unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn answers_and_acknowledgements_are_told_apart() {
        assert!(matches!(
            parse(&json!({"cmd": "NODE_CLUSTER", "ack": 7, "accepted": true})),
            Incoming::Answer {
                seq: 7,
                accepted: true
            }
        ));
        assert!(matches!(
            parse(&json!({"cmd": "NODE_CLUSTER", "act": "online"})),
            Incoming::Ignored
        ));
        assert!(matches!(
            parse(&json!({"cmd": "NODE_HANDLE_NACK"})),
            Incoming::HandleNack
        ));
        assert!(!is_internal(&json!({"cmd": "hello"})));
    }
}
