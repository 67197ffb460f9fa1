//! The daemon's HTTP listener (`herd daemon --metrics ADDR`), off by default:
//! Prometheus metrics, health probes, a status page and its JSON.
//!
//! A deliberately small HTTP/1.1 server on the daemon's own runtime: one
//! request per connection (`Connection: close`), hand-parsed, and bounded —
//! a request head of at most [`MAX_REQUEST`] bytes read within
//! [`READ_TIMEOUT`], at most [`MAX_CONNECTIONS`] connections at once (more
//! wait in the kernel's queue). Routes:
//!
//! - `GET /metrics` — OpenMetrics text ([`metrics`]);
//! - `GET /healthz`, `GET /readyz[?app=NAME]` — probes ([`health`]);
//! - `GET /` and `GET /api/apps` — the status page and its data ([`page`]);
//! - `POST /api/apps/NAME/{reload,restart,stop}` — only with
//!   `--metrics-admin`, else 403 ([`page`]).

mod health;
mod metrics;
mod page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::handlers::Ctx;

/// The largest request (head and body) taken; larger ones get 431/413.
const MAX_REQUEST: usize = 16 * 1024;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its whole request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the response may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the listener behaves.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The page's buttons and the POST endpoints are allowed.
    pub admin: bool,
}

/// Bind the listener (so a bad address fails the daemon's start at once).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve until the daemon ends.
pub async fn serve(ctx: Arc<Ctx>, listener: TcpListener, settings: Settings) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    connection(&ctx, stream, settings).await;
                    drop(permit);
                });
            }
            Err(e) => {
                crate::say!("metrics listener: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One parsed request.
#[derive(Debug, PartialEq)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response to send.
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        let mut body = serde_json::to_vec(value).unwrap_or_default();
        body.push(b'\n');
        Response::new(status, "application/json", body)
    }

    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }
}

/// Why a request could not be read.
#[derive(Debug, PartialEq)]
enum ReadError {
    /// The connection ended or timed out: nothing to answer.
    Gone,
    TooLarge,
    Malformed(&'static str),
}

async fn connection(ctx: &Arc<Ctx>, mut stream: TcpStream, settings: Settings) {
    let request = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(ReadError::Gone)) | Err(_) => return,
        Ok(Err(ReadError::TooLarge)) => {
            let r = Response::error(431, "the request is too large");
            write(&mut stream, &r, false).await;
            return linger(&mut stream).await;
        }
        Ok(Err(ReadError::Malformed(why))) => {
            let r = Response::error(400, why);
            write(&mut stream, &r, false).await;
            return linger(&mut stream).await;
        }
    };
    let head_only = request.method == "HEAD";
    let response = route(ctx, &request, settings).await;
    write(&mut stream, &response, head_only).await;
}

/// After answering a request that was not read to its end: read (and drop)
/// what the client still sends, a little and briefly, so that closing with
/// unread data does not reset the connection before it read the answer.
async fn linger(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut total = 0;
        while total < 4 * MAX_REQUEST {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

async fn route(ctx: &Arc<Ctx>, request: &Request, settings: Settings) -> Response {
    let get = matches!(request.method.as_str(), "GET" | "HEAD");
    match (get, request.path.as_str()) {
        (true, "/metrics") => metrics::render(ctx).await,
        (true, "/healthz") => health::healthz(ctx),
        (true, "/readyz") => health::readyz(ctx, request.query("app")).await,
        (true, "/" | "/index.html") => page::page(settings),
        (true, "/api/apps") => page::apps(ctx).await,
        (false, path) if request.method == "POST" && path.starts_with("/api/apps/") => {
            page::action(ctx, request, settings).await
        }
        (false, _) => Response::error(405, "only GET (and POST for the admin actions) is served"),
        (true, _) => Response::error(
            404,
            "not found: try /, /metrics, /healthz, /readyz or /api/apps",
        ),
    }
}

async fn write(stream: &mut TcpStream, response: &Response, head_only: bool) {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(head.as_bytes()).await?;
        if !head_only {
            stream.write_all(&response.body).await?;
        }
        stream.shutdown().await
    })
    .await;
}

/// Read one request: its head, and the body its Content-Length announces
/// (read and dropped: no route needs one).
async fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() >= MAX_REQUEST {
            return Err(ReadError::TooLarge);
        }
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Gone)?;
        if n == 0 {
            return Err(ReadError::Gone);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let request = parse_head(&buf[..head_end])?;
    let length: usize = match request.header("content-length") {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ReadError::Malformed("bad Content-Length"))?,
        None => 0,
    };
    if request.header("transfer-encoding").is_some() {
        return Err(ReadError::Malformed("chunked bodies are not taken"));
    }
    if head_end + length > MAX_REQUEST {
        return Err(ReadError::TooLarge);
    }
    let mut have = buf.len() - head_end;
    while have < length {
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Gone)?;
        if n == 0 {
            return Err(ReadError::Gone);
        }
        have += n;
    }
    Ok(request)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Result<Request, ReadError> {
    let text = std::str::from_utf8(head).map_err(|_| ReadError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed("bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Malformed("only HTTP/1.x is spoken"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::Malformed("bad method"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once(':')
            .ok_or(ReadError::Malformed("bad header line"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(Request {
        method: method.to_string(),
        path: percent_decode(path),
        query,
        headers,
    })
}

/// `%XX` and `+` (in queries) decoded; invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_head() {
        let r = parse_head(
            b"GET /readyz?app=my%20api&x HTTP/1.1\r\nHost: a\r\nX-Herd-Admin: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/readyz");
        assert_eq!(r.query("app"), Some("my api"));
        assert_eq!(r.query("x"), Some(""));
        assert_eq!(r.header("x-herd-admin"), Some("1"));
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_head(b"GET /\r\n\r\n").is_err());
        assert!(parse_head(b"get / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"GET / SPDY/3\r\n\r\n").is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nno colon\r\n\r\n").is_err());
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
