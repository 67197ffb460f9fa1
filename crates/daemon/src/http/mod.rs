//! The daemon's HTTP listener (`herd daemon --metrics ADDR`), off by default:
//! Prometheus metrics, health probes, a status page and its JSON.
//!
//! HTTP/1.1 by hyper on the daemon's own runtime, one request per
//! connection, bounded in every way a client can push ([`listener`]: the
//! connection limit, timeouts and what happens to idle connections). Every
//! request's `Host` is checked, and every POST's `Origin` ([`host_check`]),
//! before [`route`] sends it to a handler:
//!
//! - `GET /metrics` — OpenMetrics text ([`metrics`]);
//! - `GET /healthz`, `GET /readyz[?app=NAME]` — probes ([`health`]);
//! - `GET /` and `GET /api/apps` — the status page and its data ([`page`]);
//! - `POST /api/apps/NAME/{reload,restart,stop}` — only with
//!   `--metrics-admin`, else 403 ([`page`]).

mod health;
mod host_check;
mod listener;
mod metrics;
mod page;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN};
use hyper::{Method, StatusCode, Version};
use tokio::net::TcpListener;

use crate::handlers::Ctx;
pub use host_check::{AllowedHost, HostError};

/// How the listener behaves.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The page's buttons and the POST endpoints are allowed.
    pub admin: bool,
    /// Names the listener answers to besides its own address (`--metrics-host`).
    pub hosts: Vec<AllowedHost>,
}

/// Bind the listener (so a bad address fails the daemon's start at once).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve until the daemon ends.
pub async fn serve(ctx: Arc<Ctx>, listener: TcpListener, settings: Settings) {
    listener::serve(ctx, listener, Arc::new(settings)).await
}

/// The parts of a request the handlers read: its path percent-decoded and
/// its query string form-decoded.
#[derive(Debug)]
pub(crate) struct HttpRequest {
    pub method: Method,
    pub version: Version,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The host an absolute-form target names (`GET http://host/…`).
    pub authority: Option<String>,
    pub headers: HeaderMap,
    /// The socket address the client connected to.
    pub local: SocketAddr,
}

impl HttpRequest {
    fn new(head: &hyper::http::request::Parts, local: SocketAddr) -> HttpRequest {
        let path = percent_encoding::percent_decode_str(head.uri.path())
            .decode_utf8_lossy()
            .into_owned();
        let query = form_urlencoded::parse(head.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
        HttpRequest {
            method: head.method.clone(),
            version: head.version,
            path,
            query,
            authority: head.uri.authority().map(|a| a.to_string()),
            headers: head.headers.clone(),
            local,
        }
    }

    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A header's value, when it is text.
    pub fn header(&self, name: impl hyper::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A response to send.
pub(crate) struct HttpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse {
            status,
            content_type,
            body: body.into(),
        }
    }

    pub fn json(status: u16, value: &impl serde::Serialize) -> HttpResponse {
        let mut body = serde_json::to_vec(value).unwrap_or_default();
        body.push(b'\n');
        HttpResponse::new(status, "application/json", body)
    }

    pub fn error(status: u16, message: &str) -> HttpResponse {
        HttpResponse::json(status, &serde_json::json!({ "error": message }))
    }

    /// For hyper (which adds Content-Length, and `Connection: close`).
    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut response = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

async fn route(ctx: &Arc<Ctx>, request: &HttpRequest, settings: &Settings) -> HttpResponse {
    // One Host, as text (RFC 9112 §3.2); an absolute-form target names the
    // host itself, and then it is the one that counts (§3.2.2).
    let mut hosts = request.headers.get_all(HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return HttpResponse::error(400, "more than one Host header: send one");
    }
    let host = match first.map(|v| v.to_str()) {
        Some(Err(_)) => return HttpResponse::error(400, "the Host header is not ASCII text"),
        Some(Ok(h)) => Some(h),
        None => None,
    };
    let host = request.authority.as_deref().or(host);
    let http10 = request.version == Version::HTTP_10;
    if let Err(why) = host_check::check_host(host, http10, request.local, &settings.hosts) {
        return HttpResponse::error(421, &why);
    }
    let get = matches!(request.method, Method::GET | Method::HEAD);
    match (get, request.path.as_str()) {
        (true, "/metrics") => metrics::render(ctx).await,
        (true, "/healthz") => health::healthz(ctx),
        (true, "/readyz") => health::readyz(ctx, request.query("app")).await,
        (true, "/" | "/index.html") => page::page(settings),
        (true, "/api/apps") => page::apps(ctx).await,
        (false, path) if request.method == Method::POST && path.starts_with("/api/apps/") => {
            if request.headers.get_all(ORIGIN).iter().count() > 1 {
                return HttpResponse::error(403, "more than one Origin header: refused");
            }
            if let Err(why) = host_check::check_origin(request.header(ORIGIN), host) {
                return HttpResponse::error(403, &why);
            }
            page::action(ctx, request, settings).await
        }
        (false, _) => {
            HttpResponse::error(405, "only GET (and POST for the admin actions) is served")
        }
        (true, _) => HttpResponse::error(
            404,
            "not found: try /, /metrics, /healthz, /readyz or /api/apps",
        ),
    }
}

/// The HTTP parsing herd does itself (Host and Origin checks, the path and
/// query decoding), for the fuzz targets (`fuzz/`) only. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::net::SocketAddr;

    pub use super::host_check::AllowedHost;

    /// [`super::host_check::check_host`].
    pub fn check_host(
        host: Option<&str>,
        http10: bool,
        local: SocketAddr,
        allowed: &[AllowedHost],
    ) -> Result<(), String> {
        super::host_check::check_host(host, http10, local, allowed)
    }

    /// [`super::host_check::check_origin`].
    pub fn check_origin(origin: Option<&str>, host: Option<&str>) -> Result<(), String> {
        super::host_check::check_origin(origin, host)
    }

    /// The path and `app` query parameter the handlers read from a request
    /// for `target` (`None`: not a request target hyper takes).
    pub fn path_and_app(target: &str) -> Option<(String, Option<String>)> {
        let (head, ()) = hyper::Request::get(target).body(()).ok()?.into_parts();
        let r = super::HttpRequest::new(&head, SocketAddr::from(([127, 0, 0, 1], 9209)));
        let app = r.query("app").map(str::to_string);
        Some((r.path, app))
    }
}
