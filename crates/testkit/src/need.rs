//! What a test needs from the machine, checked one way for every test of
//! the workspace: [`need!`] (or [`need()`]) with a [`Need`] — Node, the
//! example apps' npm packages, python3 and its packages, programs such as
//! curl, tmux or `script`, Chromium, PID and network namespaces, IPv6
//! loopback, Bun and Deno (from `tests/runtimes`).
//!
//! A missing prerequisite fails the test under CI (`CI` set, as every CI
//! service and `.ci/run` do): there it belongs to the setup, and a skip
//! would pass a test that did not run. Elsewhere the test is skipped, and
//! visibly so, although libtest hides everything a passing test prints:
//! - at once, a `SKIPPED <test>: <why>` line written straight to the
//!   process's stderr (not through `eprintln!`, which libtest captures), so
//!   it stands among cargo test's `test ... ok` lines;
//! - when the test binary exits, after libtest's `test result:` line, a
//!   summary of every test it skipped and why.
//!
//! Each check runs once per test process.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once, OnceLock};

/// Something a test needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Need {
    /// `node` on PATH (found: its version).
    Node,
    /// The example apps' npm packages: `examples/node/node_modules`.
    NodeModules,
    /// `python3` on PATH.
    Python,
    /// A package `python3` can import, by its import name (`prometheus_client`).
    PythonModule(&'static str),
    /// A program on PATH (`curl`, `tmux`, `script`, ...; found: its path).
    Program(&'static str),
    /// Chromium or Chrome, for headless page tests (found: its path).
    Chromium,
    /// `unshare --pid --fork --mount-proc` works: root, or user namespaces.
    PidNamespace,
    /// The IPv6 loopback address `[::1]` can be bound.
    Ipv6,
    /// `bun` or `deno` from the npm packages of `tests/runtimes` (found: its version).
    Runtime(&'static str),
    /// A thread can move into a fresh network namespace of its own (root),
    /// where it may set network sysctls without touching the machine's.
    NetNamespace,
}

impl Need {
    /// What was found, or why it is missing and how to get it.
    fn check(self) -> Result<String, String> {
        match self {
            Need::Node => {
                let out = Command::new("node").arg("--version").output();
                match out {
                    Ok(o) if o.status.success() => Ok(format!(
                        "node {}",
                        String::from_utf8_lossy(&o.stdout).trim()
                    )),
                    _ => Err("`node` is not on PATH; install Node.js to run the Node tests".into()),
                }
            }
            Need::NodeModules => {
                let dir = workspace_root().join("examples/node/node_modules");
                if dir.is_dir() {
                    Ok(dir.display().to_string())
                } else {
                    Err("examples/node/node_modules is missing; run `npm ci --prefix examples/node`"
                        .into())
                }
            }
            Need::Python => on_path("python3")
                .map(|p| p.display().to_string())
                .ok_or_else(|| "`python3` is not on PATH: apt-get install python3".into()),
            Need::PythonModule(module) => {
                Need::Python.check()?;
                let ok = Command::new("python3")
                    .args(["-c", &format!("import {module}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    Ok(format!("python3 module {module}"))
                } else {
                    Err(format!(
                        "python3 cannot import {module}: python3 -m pip install {}",
                        module.replace('_', "-")
                    ))
                }
            }
            Need::Program(name) => {
                on_path(name)
                    .map(|p| p.display().to_string())
                    .ok_or_else(|| {
                        let package = match name {
                            "script" | "unshare" => "util-linux",
                            other => other,
                        };
                        format!("`{name}` is not on PATH: apt-get install {package}")
                    })
            }
            Need::Chromium => ["chromium", "chromium-browser", "google-chrome"]
                .iter()
                .find_map(|name| on_path(name))
                .map(|p| p.display().to_string())
                .ok_or_else(|| "Chromium is not on PATH: apt-get install chromium".into()),
            Need::PidNamespace => {
                let out = Command::new("unshare")
                    .args(["--pid", "--fork", "--mount-proc", "true"])
                    .stdin(Stdio::null())
                    .output();
                match out {
                    Ok(o) if o.status.success() => Ok("PID namespaces".into()),
                    Ok(o) => Err(format!(
                        "`unshare --pid --fork --mount-proc true` failed ({}): {}; the PID-1 \
                         tests need root (or unprivileged user namespaces)",
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    Err(e) => Err(format!(
                        "cannot run `unshare` ({e}); install util-linux to run the PID-1 tests"
                    )),
                }
            }
            Need::Runtime(name) => {
                let bin = runtime_bin(name);
                let out = Command::new(&bin).arg("--version").output();
                match out {
                    Ok(o) if o.status.success() => Ok(format!(
                        "{name} {}",
                        String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim()
                    )),
                    _ => Err(format!(
                        "{} does not run; install the test runtimes: `npm ci --prefix tests/runtimes`",
                        bin.display()
                    )),
                }
            }
            Need::NetNamespace => std::thread::spawn(|| {
                // SAFETY: unshare(2) with one flag; it changes only this
                // short-lived thread's network namespace.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
                    Ok("a fresh network namespace".to_string())
                } else {
                    Err(format!(
                        "a thread cannot enter a fresh network namespace ({}); the tests that set \
                         net.ipv4 sysctls there need root (CAP_SYS_ADMIN)",
                        std::io::Error::last_os_error()
                    ))
                }
            })
            .join()
            .unwrap_or_else(|_| Err("the namespace check panicked".into())),
            Need::Ipv6 => match TcpListener::bind("[::1]:0") {
                Ok(_) => Ok("IPv6 loopback".into()),
                Err(e) => Err(format!("the IPv6 loopback [::1] cannot be bound here: {e}")),
            },
        }
    }
}

/// The workspace's root directory (where `examples/` is).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where `npm ci --prefix tests/runtimes` puts the binary of runtime `name`
/// (`bun`, `deno`: their npm packages ship the Linux binaries).
pub fn runtime_bin(name: &str) -> PathBuf {
    workspace_root()
        .join("tests/runtimes/node_modules/.bin")
        .join(name)
}

/// The first executable file named `program` in PATH's directories.
fn on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Is `need` here? `Some(what was found)`: a version, a path. When it is
/// not: under CI the test fails here; elsewhere the skip is reported (see
/// the module docs) and the answer is `None`, and the test should return.
/// [`need!`] does that return for you.
pub fn need(need: Need) -> Option<String> {
    static CHECKED: OnceLock<Mutex<HashMap<Need, Result<String, String>>>> = OnceLock::new();
    let checked = CHECKED.get_or_init(Mutex::default);
    let found = {
        let mut c = checked.lock().unwrap_or_else(|e| e.into_inner());
        c.entry(need).or_insert_with(|| need.check()).clone()
    };
    match found {
        Ok(what) => {
            eprintln!("  needs {what}: found");
            Some(what)
        }
        Err(why) => {
            skip_or_fail(&why);
            None
        }
    }
}

/// Start of a test that needs these ([`Need`]s): when one is missing it
/// fails the test under CI, or reports the skip and returns from the test.
///
/// ```text
/// need!(Need::Node, Need::NodeModules);
/// ```
#[macro_export]
macro_rules! need {
    ($($need:expr),+ $(,)?) => {
        $(
            if $crate::need($need).is_none() {
                return;
            }
        )+
    };
}

/// `need!(Need::Node)`, the most common one.
#[macro_export]
macro_rules! need_node {
    () => {
        $crate::need!($crate::Need::Node)
    };
}

/// Is this a CI run? `CI` set to anything but empty, `0` or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
}

/// Under CI: panic with `why`. Elsewhere: report the running test as
/// skipped, where `cargo test` shows it (see the module docs), and return;
/// the caller then returns from its test. [`need()`] calls this; call it
/// directly only for a prerequisite no [`Need`] names.
pub fn skip_or_fail(why: &str) {
    if in_ci() {
        panic!("{why} (CI is set: a missing prerequisite fails the test instead of skipping it)");
    }
    // libtest names each test's thread after the test.
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_string();
    // Straight to fd 2: `eprintln!` output of a passing test is swallowed.
    let _ = std::io::stderr().write_all(format!("SKIPPED {test}: {why}\n").as_bytes());
    SKIPPED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((test, why.to_string()));
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: registers a plain function with no preconditions; it
        // only takes a lock and writes to stderr, and never unwinds.
        unsafe { libc::atexit(print_skipped) };
    });
}

/// (test, why) of every test skipped in this process.
static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The summary at exit, after libtest's `test result:` line.
extern "C" fn print_skipped() {
    let skipped = match SKIPPED.try_lock() {
        Ok(s) => s,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if skipped.is_empty() {
        return;
    }
    let mut text = format!(
        "\nSKIPPED: {} test(s) of this binary passed without running, for want of a \
         prerequisite (under CI=true they fail instead):\n",
        skipped.len()
    );
    for (test, why) in skipped.iter() {
        text.push_str(&format!("  {test}: {why}\n"));
    }
    let _ = std::io::stderr().write_all(text.as_bytes());
}
