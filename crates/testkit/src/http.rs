//! The tests' HTTP/1.1 client, std only: one GET per fresh connection
//! (`Connection: close`, read to the end, closed with an RST so that load
//! does not exhaust loopback ports in TIME_WAIT), the waits built on it, and
//! a bounded load generator ([`Load`]). The fixture answers with its pid (a
//! plain body in its plain mode, JSON and an `X-Pid` header in its cluster
//! mode): [`Response::pid`] reads either.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::wait_until;

/// A parsed HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long the exchange took, from connect to the end of the answer.
    pub elapsed: Duration,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The pid that answered, as the tests' servers say it: the fixture's
    /// plain body (just the pid) or its cluster mode's `X-Pid` header; the
    /// Node apps' `X-Worker-Pid` header, or their body ([`pid_in_body`]).
    pub fn pid(&self) -> Option<i32> {
        self.body
            .trim()
            .parse()
            .ok()
            .or_else(|| self.header("x-pid")?.parse().ok())
            .or_else(|| self.header("x-worker-pid")?.parse().ok())
            .or_else(|| pid_in_body(&self.body))
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn exchange<S: Read + Write>(s: &mut S, host: &str, path: &str) -> io::Result<Response> {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let (status, headers, body) = parse_http(&raw)?;
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        elapsed: Duration::ZERO,
    })
}

/// Header (name, value) pairs, in order.
type Headers = Vec<(String, String)>;

/// A whole HTTP/1.1 answer: (status, headers, body). An error when it is
/// cut short (no end of head, or less body than `Content-Length`).
fn parse_http(raw: &[u8]) -> io::Result<(u16, Headers, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short response ({} bytes)", raw.len()),
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    if let Some(len) = len.filter(|&len| body.len() < len) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("truncated body ({} of {len} bytes)", body.len()),
        ));
    }
    Ok((status, headers, body))
}

/// Close without TIME_WAIT (an RST): keeps fresh-connection load from
/// exhausting loopback ports.
fn abortive_close(s: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt::Linger};
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(s, Linger, &l);
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))
}

/// One GET on a fresh TCP connection.
pub fn http_request(addr: &str, path: &str, timeout: Duration) -> io::Result<Response> {
    let start = Instant::now();
    let sa = resolve(addr)?;
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let r = exchange(&mut s, addr, path);
    abortive_close(&s);
    let mut r = r?;
    r.elapsed = start.elapsed();
    Ok(r)
}

/// One GET on a fresh TCP connection: (status, body).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    http_request(addr, path, timeout).map(|r| (r.status, r.body))
}

/// One GET over a Unix stream socket.
pub fn unix_http_request(sock: &Path, path: &str, timeout: Duration) -> io::Result<Response> {
    let start = Instant::now();
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut r = exchange(&mut s, "localhost", path)?;
    r.elapsed = start.elapsed();
    Ok(r)
}

pub fn unix_http_get(sock: &Path, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    unix_http_request(sock, path, timeout).map(|r| (r.status, r.body))
}

/// The pid in a Node app's answer: the word after `process` (`hello from
/// process 1234`), else a JSON body's `pid`.
pub fn pid_in_body(body: &str) -> Option<i32> {
    let mut words = body.split_whitespace();
    while let Some(w) = words.next() {
        if w == "process" {
            return words.next()?.parse().ok();
        }
    }
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("pid")?
        .as_i64()
        .map(|p| p as i32)
}

/// GET `path` until it answers 200 or the timeout passes: that answer.
pub fn wait_http(addr: &str, path: &str, timeout: Duration) -> Response {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        match http_request(addr, path, Duration::from_secs(2)) {
            Ok(r) if r.status == 200 => return r,
            Ok(r) => last = Some(format!("status {}", r.status)),
            Err(e) => last = Some(format!("{:?}: {e}", e.kind())),
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{addr}{path} did not answer 200 within {timeout:?}; last: {last:?}");
}

/// GET / until it answers 200 or the timeout passes; the pid that answered.
pub fn wait_http_ok(addr: &str, timeout: Duration) -> i32 {
    let r = wait_http(addr, "/", timeout);
    r.pid()
        .unwrap_or_else(|| panic!("{addr}/ answered without a pid: {r:?}"))
}

/// Fresh-connection GET / until the set of pids answering 200 covers `want`
/// (or `attempts` run out); returns every pid seen. Patient with the
/// kernel's balancing as [`answers_from`] is.
pub fn pids_answering(addr: &str, want: &BTreeSet<i32>, attempts: usize) -> BTreeSet<i32> {
    answers_from(want, attempts, || answering_pid(addr).map(|p| (p, ())))
        .into_keys()
        .collect()
}

/// Ask `ask` (one fresh connection each: who answered, and what) until the
/// answers cover every key in `want`, or `attempts` run out; every answer
/// seen, the last of each key.
///
/// With a shared socket the kernel picks the worker, and on a busy machine
/// one worker can win a long run of sequential accepts (CI saw 200 in a
/// row). So a large `attempts` (≥ [`KERNEL_PICKS`]) is only the least tried:
/// if a key is still missing, asking goes on from several threads at once
/// (so one worker is busy while the next connection waits) for up to
/// [`KERNEL_PICKS_PATIENCE`]. A small `attempts` is exact: a test of strict
/// turns, or of who must *not* answer, gets just that many.
pub fn answers_from<K, V>(
    want: &BTreeSet<K>,
    attempts: usize,
    ask: impl Fn() -> Option<(K, V)> + Sync,
) -> BTreeMap<K, V>
where
    K: Ord + Send + Sync,
    V: Send,
{
    let start = Instant::now();
    let mut seen = BTreeMap::new();
    let covered = |seen: &BTreeMap<K, V>| want.iter().all(|k| seen.contains_key(k));
    for _ in 0..attempts {
        seen.extend(ask());
        if covered(&seen) {
            return seen;
        }
    }
    if attempts < KERNEL_PICKS {
        return seen;
    }
    let seen = Mutex::new(seen);
    let deadline = start + KERNEL_PICKS_PATIENCE;
    let done = || covered(&seen.lock().unwrap()) || Instant::now() >= deadline;
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !done() {
                    if let Some((k, v)) = ask() {
                        seen.lock().unwrap().insert(k, v);
                    }
                }
            });
        }
    });
    seen.into_inner().unwrap()
}

/// From this many `attempts` on, [`answers_from`] is asking the kernel's
/// balancing, and is patient.
pub const KERNEL_PICKS: usize = 100;

/// How long [`answers_from`] goes on for a worker the kernel has not picked.
pub const KERNEL_PICKS_PATIENCE: Duration = Duration::from_secs(15);

/// One fresh-connection GET /: the pid that answered 200, if one did.
fn answering_pid(addr: &str) -> Option<i32> {
    let r = http_request(addr, "/", Duration::from_secs(2)).ok()?;
    r.pid().filter(|_| r.status == 200)
}

/// The outcome of a load run.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: usize,
    /// Error kind (or "status N") → count.
    pub failures: BTreeMap<String, usize>,
    /// A few failure messages, for the report.
    pub samples: Vec<String>,
    pub pids: BTreeSet<i32>,
    /// How long each answered request took, connect to last byte.
    pub latencies: Vec<Duration>,
    /// When each failed request ran, and how it failed: a test that causes
    /// an outage on purpose tells the failures it explains from the others.
    pub failed_at: Vec<FailedAt>,
}

/// One failed request of a [`Load`].
#[derive(Debug, Clone)]
pub struct FailedAt {
    /// When it began to connect.
    pub started: Instant,
    /// When it failed.
    pub ended: Instant,
    /// Its error kind (or "status N"), as counted in `failures`.
    pub kind: String,
}

impl LoadReport {
    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }
    pub fn count(&self, kind: &str) -> usize {
        self.failures.get(kind).copied().unwrap_or(0)
    }

    /// The latency under which `pct` percent of the answered requests fell
    /// (`percentile(99.0)` is the p99); zero with no answer.
    pub fn percentile(&self, pct: f64) -> Duration {
        let mut all = self.latencies.clone();
        all.sort();
        match all.len() {
            0 => Duration::ZERO,
            n => all[((n as f64 * pct / 100.0).ceil() as usize).clamp(1, n) - 1],
        }
    }
}

/// A load generator: `threads` threads making fresh-connection requests to
/// `addr` until stopped, bounded by `max_duration` and `max_requests`.
pub struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<LoadReport>>,
    /// Answers so far and the pids that gave them, while it runs.
    live: Arc<Mutex<(usize, BTreeSet<i32>)>>,
}

impl Load {
    pub fn start(addr: &str, path: &str, threads: usize, pause: Duration) -> Load {
        Load::start_bounded(addr, path, threads, pause, Duration::from_secs(60), 100_000)
    }

    pub fn start_bounded(
        addr: &str,
        path: &str,
        threads: usize,
        pause: Duration,
        max_duration: Duration,
        max_requests: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<(usize, BTreeSet<i32>)>> = Arc::default();
        let handles = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                let live = live.clone();
                let addr = addr.to_string();
                let path = path.to_string();
                let per_thread = max_requests.div_ceil(threads);
                thread::spawn(move || {
                    let mut rep = LoadReport::default();
                    let end = Instant::now() + max_duration;
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < end && n < per_thread {
                        n += 1;
                        let started = Instant::now();
                        let failed = |rep: &mut LoadReport, kind: String| {
                            *rep.failures.entry(kind.clone()).or_default() += 1;
                            rep.failed_at.push(FailedAt {
                                started,
                                ended: Instant::now(),
                                kind,
                            });
                        };
                        match http_request(&addr, &path, Duration::from_secs(5)) {
                            Ok(r) if r.status == 200 => {
                                rep.ok += 1;
                                rep.latencies.push(r.elapsed);
                                let mut l = live.lock().unwrap();
                                l.0 += 1;
                                if let Some(p) = r.pid() {
                                    rep.pids.insert(p);
                                    l.1.insert(p);
                                }
                            }
                            Ok(r) => failed(&mut rep, format!("status {}", r.status)),
                            Err(e) => {
                                failed(&mut rep, format!("{:?}", e.kind()));
                                if rep.samples.len() < 5 {
                                    rep.samples.push(e.to_string());
                                }
                            }
                        }
                        if !pause.is_zero() {
                            thread::sleep(pause);
                        }
                    }
                    rep
                })
            })
            .collect();
        Load {
            stop,
            handles,
            live,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok_so_far(&self) -> usize {
        self.live.lock().unwrap().0
    }

    /// The pids that have answered so far.
    pub fn pids_so_far(&self) -> BTreeSet<i32> {
        self.live.lock().unwrap().1.clone()
    }

    /// Wait until `cond(answers so far, pids so far)` holds; panics naming
    /// `what` at the deadline. For "under load" that really is: wait for
    /// answers rather than sleep.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(usize, &BTreeSet<i32>) -> bool,
    ) {
        let ok = wait_until(timeout, || {
            let l = self.live.lock().unwrap();
            cond(l.0, &l.1)
        });
        let l = self.live.lock().unwrap();
        assert!(
            ok,
            "load: {what}: not within {timeout:?} ({} answers so far, from {:?})",
            l.0, l.1
        );
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    /// Wait for the load to end by its own bounds.
    pub fn join(mut self) -> LoadReport {
        let mut total = LoadReport::default();
        for h in self.handles.drain(..) {
            let r = h.join().expect("load thread");
            total.ok += r.ok;
            for (k, v) in r.failures {
                *total.failures.entry(k).or_default() += v;
            }
            total.samples.extend(r.samples);
            total.pids.extend(r.pids);
            total.latencies.extend(r.latencies);
            total.failed_at.extend(r.failed_at);
        }
        eprintln!(
            "  load: {} ok, {} failed {:?} {:?}, pids {:?}",
            total.ok,
            total.failed(),
            total.failures,
            total.samples,
            total.pids
        );
        total
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
