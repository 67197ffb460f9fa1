//! Which `Host` and `Origin` a request may carry: the listener's defence
//! against DNS rebinding and cross-site requests.
//!
//! A web page the operator visits can make the browser send requests to the
//! daemon (a name the attacker controls that resolves to 127.0.0.1), but the
//! browser then sends the attacker's name in `Host`, and the page's origin
//! in `Origin`. So:
//!
//! - `Host` must name the address the client connected to (the socket's
//!   local `IP:PORT`, which is the listen address unless it is a wildcard),
//!   `localhost:PORT` on a loopback address, or a name given with
//!   `--metrics-host` ([`AllowedHost`]); anything else gets 421.
//! - A state-changing request (POST) may carry no `Origin` (not a browser)
//!   or one whose authority is the request's own (already checked) `Host`;
//!   anything else gets 403.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use hyper::http::uri::Authority;

/// A name the listener answers to besides its own address, from
/// `--metrics-host NAME[:PORT]` or `HERD_METRICS_HOST`: without a port it
/// matches the name with any port (a reverse proxy may drop or change it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// Lower case; an IPv6 address without its brackets.
    host: String,
    port: Option<u16>,
}

/// Why a `--metrics-host` value was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid host name '{given}' for --metrics-host/HERD_METRICS_HOST: {why}; give a name as it appears in the Host header, e.g. herd.internal or herd.internal:9209")]
pub struct HostError {
    given: String,
    why: &'static str,
}

impl FromStr for AllowedHost {
    type Err = HostError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = |why| HostError {
            given: s.to_string(),
            why,
        };
        if s.contains("://") || s.contains('/') {
            return Err(error("a host name, not a URL"));
        }
        if s.contains('@') {
            return Err(error("no user name"));
        }
        let authority: Authority = s.parse().map_err(|_| error("not a host name"))?;
        let host = unbracket(authority.host());
        if host.is_empty() {
            return Err(error("empty"));
        }
        // The URI grammar lets a name hold `=`, `[`, `!` …; a Host header
        // that names a host never does.
        let name = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        let bracketed = authority.host().starts_with('[');
        let ip = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => bracketed,
            Ok(IpAddr::V4(_)) => !bracketed,
            Err(_) => false,
        };
        if !ip && (bracketed || !name) {
            return Err(error(
                "not a host name (letters, digits, '-', '.' and '_'; an IPv6 address in brackets)",
            ));
        }
        if authority.port().is_some() && authority.port_u16().is_none() {
            return Err(error("a bad port"));
        }
        Ok(AllowedHost {
            host: host.to_ascii_lowercase(),
            port: authority.port_u16(),
        })
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        match self.port {
            Some(port) => write!(f, "{host}:{port}"),
            None => f.write_str(&host),
        }
    }
}

/// Check the `Host` header of a request that reached the socket at `local`.
/// `None`: no Host header (only HTTP/1.0 may omit it).
pub(crate) fn check_host(
    host: Option<&str>,
    http10: bool,
    local: SocketAddr,
    allowed: &[AllowedHost],
) -> Result<(), String> {
    let Some(given) = host else {
        return match http10 {
            true => Ok(()),
            false => Err("an HTTP/1.1 request needs a Host header".into()),
        };
    };
    let refused = || {
        let mut names = vec![local.to_string()];
        if local.ip().is_loopback() {
            names.push(format!("localhost:{}", local.port()));
        }
        names.extend(allowed.iter().map(|a| a.to_string()));
        format!(
            "this listener does not answer to Host '{given}' (it answers to {}); \
             to reach it by that name, start the daemon with --metrics-host NAME \
             (or HERD_METRICS_HOST=NAME)",
            names.join(", ")
        )
    };
    if given.contains('@') {
        // A user name has no place in a Host header.
        return Err(refused());
    }
    let authority: Authority = given.parse().map_err(|_| refused())?;
    let name = unbracket(authority.host());
    let port = authority.port_u16().unwrap_or(80);
    let own = match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical() == local.ip().to_canonical(),
        Err(_) => name.eq_ignore_ascii_case("localhost") && local.ip().is_loopback(),
    };
    if own && port == local.port() {
        return Ok(());
    }
    let configured = allowed.iter().any(|a| {
        a.host.eq_ignore_ascii_case(name) && a.port.is_none_or(|p| Some(p) == authority.port_u16())
    });
    match configured {
        true => Ok(()),
        false => Err(refused()),
    }
}

/// Check the `Origin` of a state-changing request whose `Host` (`host`) has
/// passed [`check_host`]: absent, or the same authority over http(s).
pub(crate) fn check_origin(origin: Option<&str>, host: Option<&str>) -> Result<(), String> {
    let Some(origin) = origin else {
        return Ok(());
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (authority, host) {
        (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(format!(
            "refused: a request from the page at '{origin}' cannot change apps here; \
             only the status page served by this listener (or a client that sends no \
             Origin, such as curl) can"
        )),
    }
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    fn allowed(names: &[&str]) -> Vec<AllowedHost> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn host_is_the_address_the_client_reached() {
        let local = at("127.0.0.1:9209");
        for ok in ["127.0.0.1:9209", "localhost:9209", "LocalHost:9209"] {
            assert_eq!(check_host(Some(ok), false, local, &[]), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9209",
            "127.0.0.1:9300",
            "127.0.0.1",
            "0.0.0.0:9209",
            "127.0.0.2:9209",
            "localhost",
            "",
            "a b",
        ] {
            let e = check_host(Some(bad), false, local, &[]).unwrap_err();
            assert!(e.contains("--metrics-host"), "{e}");
        }
        // No Host: only HTTP/1.0 may.
        assert!(check_host(None, false, local, &[]).is_err());
        assert!(check_host(None, true, local, &[]).is_ok());
    }

    /// Found by the bad-input corpus: `Host: user@127.0.0.1:9209` passed.
    #[test]
    fn a_host_with_a_user_name_is_refused() {
        let local = at("127.0.0.1:9209");
        let e = check_host(Some("user@127.0.0.1:9209"), false, local, &[]).unwrap_err();
        assert!(
            e.contains("does not answer to Host 'user@127.0.0.1:9209'"),
            "{e}"
        );
    }

    #[test]
    fn localhost_only_on_a_loopback_address() {
        let local = at("10.1.2.3:9209");
        assert!(check_host(Some("10.1.2.3:9209"), false, local, &[]).is_ok());
        assert!(check_host(Some("localhost:9209"), false, local, &[]).is_err());
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let local = at("[::1]:9209");
        assert!(check_host(Some("[::1]:9209"), false, local, &[]).is_ok());
        assert!(check_host(Some("localhost:9209"), false, local, &[]).is_ok());
        // A dual-stack socket sees an IPv4 client as ::ffff:a.b.c.d.
        let mapped = at("[::ffff:10.0.0.5]:9209");
        assert!(check_host(Some("10.0.0.5:9209"), false, mapped, &[]).is_ok());
    }

    #[test]
    fn configured_names_with_or_without_a_port() {
        let local = at("10.0.0.5:9209");
        let names = allowed(&["Herd.Internal", "proxy.example:8443"]);
        for ok in [
            "herd.internal",
            "herd.internal:9209",
            "HERD.internal:80",
            "proxy.example:8443",
        ] {
            assert!(check_host(Some(ok), false, local, &names).is_ok(), "{ok}");
        }
        for bad in ["proxy.example", "proxy.example:9209", "evil.example"] {
            assert!(
                check_host(Some(bad), false, local, &names).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_configured_names_are_refused() {
        for bad in [
            "http://herd.internal",
            "herd.internal/x",
            "a@herd",
            "",
            ":9209",
            "a b",
        ] {
            let e = bad.parse::<AllowedHost>().unwrap_err().to_string();
            assert!(e.contains("--metrics-host"), "{bad}: {e}");
        }
        let h: AllowedHost = "[::1]:80".parse().unwrap();
        assert_eq!(h.to_string(), "[::1]:80");
        let h: AllowedHost = "Herd.Internal".parse().unwrap();
        assert_eq!(h.to_string(), "herd.internal");
    }

    /// Found by the config_values fuzz target: `web=[::1]:8000` was taken
    /// as the host `web=[::1]`, which printed as a name it then refused.
    #[test]
    fn a_metrics_host_with_characters_no_host_name_has_is_refused() {
        for bad in [
            "web=[::1]:8000",
            "a!b",
            "[herd.internal]",
            "[10.0.0.1]:80",
            "a,b",
        ] {
            let e = bad.parse::<AllowedHost>().unwrap_err().to_string();
            assert!(e.contains("not a host name"), "{bad}: {e}");
        }
        for ok in [
            "herd-1.internal_x",
            "10.0.0.1:80",
            "[::1]",
            "[fe80::1]:9209",
        ] {
            let h: AllowedHost = ok.parse().unwrap();
            assert_eq!(h.to_string().parse::<AllowedHost>().unwrap(), h, "{ok}");
        }
    }

    #[test]
    fn origin_must_be_absent_or_the_same() {
        let host = Some("127.0.0.1:9209");
        assert!(check_origin(None, host).is_ok());
        assert!(check_origin(Some("http://127.0.0.1:9209"), host).is_ok());
        assert!(check_origin(Some("https://127.0.0.1:9209"), host).is_ok());
        for bad in [
            "http://evil.example",
            "http://127.0.0.1:9300",
            "null",
            "file://",
            "http://127.0.0.1:9209.evil.example",
        ] {
            assert!(check_origin(Some(bad), host).is_err(), "{bad}");
        }
        // An HTTP/1.0 request without Host cannot prove its Origin.
        assert!(check_origin(Some("http://127.0.0.1:9209"), None).is_err());
    }
}
