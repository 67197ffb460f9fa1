//! herd-testkit: the one harness of herd's tests, used by every crate's
//! integration-test binary (`tests/it/main.rs` in the root package,
//! herd-cluster, herd-demo and this crate) and by unit tests that need the
//! machine. It owns
//! - the binaries under test, `herd`, the fixture server `herd-test-worker`
//!   (crates/test-worker) and the examples, built up to date by one
//!   `cargo build` per test process ([`herd_bin`], [`worker_bin`],
//!   [`example_bin`]): a failed build fails the test with the build's error,
//!   never falls back to an old binary;
//! - a primary under test ([`Herd`]: `herd run`, or a program that is its own
//!   cluster primary), with its output captured line by line, lines awaited
//!   with deadlines ([`pat`] names the lines), signals, and cleanup of every
//!   process it started even when a test panics; a daemon in a home of its
//!   own ([`Daemon`]);
//! - an HTTP client and a bounded load generator ([`http_request`],
//!   [`Load`]), and the kernel's view of processes and sockets
//!   ([`process_alive`], [`tcp_port_state`], [`CpuWatch`]);
//! - the prerequisites ([`need!`], [`Need`]): a test whose prerequisite
//!   (Node, python3, tmux, ...) is missing fails under `CI`, and elsewhere is
//!   skipped visibly, where `cargo test` shows it.
//!
//! Every wait polls against a deadline; nothing sleeps a fixed time for
//! correctness. A test file needs only `use herd_testkit::*;`.

use std::collections::{BTreeSet, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

mod bins;
mod capture;
mod daemon;
mod herd;
mod http;
mod need;
pub mod pat;
mod procs;

pub use bins::{cargo_built, example_bin, herd_bin, until_executable, worker_bin};
pub use daemon::{end_supervisors, worker_pids, Daemon};
pub use herd::Herd;
pub use http::{
    answers_from, http_get, http_request, pid_in_body, pids_answering, unix_http_get,
    unix_http_request, wait_http, wait_http_ok, FailedAt, Load, LoadReport, Response, KERNEL_PICKS,
    KERNEL_PICKS_PATIENCE,
};
pub use need::{in_ci, need, runtime_bin, skip_or_fail, Need};
pub use pat::match_pat;
pub use procs::{
    cpu_time, group_empty, group_members, holders_of_listening_port, process_alive, start_time,
    tcp_port_state, zombie_children, CpuWatch, PortState,
};

/// `herd run OPTS -- herd-test-worker WORKER_ARGS`
pub fn run_args(opts: &[&str], worker_args: &[&str]) -> Vec<String> {
    let mut v = vec!["run".to_string()];
    v.extend(opts.iter().map(|s| s.to_string()));
    v.push("--".into());
    v.push(worker_bin().into());
    v.extend(worker_args.iter().map(|s| s.to_string()));
    v
}

/// `cluster ARGS`: the fixture's arguments for its herd-cluster mode.
pub fn fixture_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["cluster"];
    v.extend_from_slice(args);
    v
}

/// Tests that measure time or generate load take this, so they do not
/// compete for the CPU with each other.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Poll `cond` until it holds or the timeout passes; true if it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Listen on any free port: read the real one with [`Herd::listen_addr`].
pub const ANY: &str = "127.0.0.1:0";

/// A port free on 127.0.0.1 that nothing else will be handed: prefer
/// [`ANY`] where the program under test can say which port it bound.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive ports free on 127.0.0.1 that nothing else
/// will be handed (an app whose worker `i` listens on `PORT + i`).
///
/// A port the kernel picks for `bind(:0)` comes from the ephemeral range,
/// which is also where every outgoing connection's local port comes from:
/// between that pick and herd's bind, a parallel test's load generator could
/// take it ("address already in use", seen in CI). So the picks come from
/// below that range, where the kernel never hands ports out; each pick of
/// this process takes ports no other pick of it gets (a counter, from a
/// start that depends on the pid so that test processes spread out), and
/// only ports that all bind right now are returned.
pub fn free_ports(n: u16) -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let (low, high) = unassigned_ports();
    let span = usize::from(high - low);
    let n = usize::from(n.max(1));
    let start = std::process::id() as usize * 7919;
    for _ in 0..span / n {
        let first = (start + NEXT.fetch_add(n, Ordering::SeqCst)) % span;
        if first + n > span {
            continue;
        }
        let base = low + first as u16;
        if (base..base + n as u16).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!(
        "no {n} consecutive ports in {low}..{high} bind on 127.0.0.1: is something holding them?"
    );
}

/// Ports the kernel does not hand out on its own: from 10000 up to the
/// ephemeral range (`net.ipv4.ip_local_port_range`), or the ephemeral range
/// itself on a machine whose range starts too low to leave room below it.
fn unassigned_ports() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let mut bounds = range
        .iter()
        .flat_map(|r| r.split_whitespace())
        .filter_map(|p| p.parse::<u16>().ok());
    match (bounds.next(), bounds.next()) {
        (Some(eph_low), _) if eph_low >= 12000 => (10000, eph_low),
        (Some(eph_low), Some(eph_high)) if eph_high > eph_low => (eph_low, eph_high),
        _ => (32768, 60999),
    }
}

pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A scratch directory for this test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "herd-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run herd to completion (for bad-input cases): status and stderr.
pub fn run_to_exit<S: AsRef<str>>(args: &[S], timeout: Duration) -> (ExitStatus, String, String) {
    let mut h = Herd::start(args);
    let st = h.wait_exit(timeout);
    (st, h.stdout_lines().join("\n"), h.stderr_text())
}

/// The distinct values of a set of pids, as a sorted list (for messages).
pub fn pid_set<'a>(it: impl IntoIterator<Item = &'a i32>) -> BTreeSet<i32> {
    it.into_iter().copied().collect()
}

pub fn unique<T: std::hash::Hash + Eq + Clone>(v: &[T]) -> HashSet<T> {
    v.iter().cloned().collect()
}
