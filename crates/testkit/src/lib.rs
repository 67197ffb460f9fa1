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
    http_get, http_request, pid_in_body, pids_answering, unix_http_get, unix_http_request,
    wait_http, wait_http_ok, FailedAt, Load, LoadReport, Response,
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

/// A port that was free a moment ago on 127.0.0.1 (racy: prefer [`ANY`]).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
