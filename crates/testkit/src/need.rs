//! The honest skip. A test whose prerequisite is missing on this machine
//! (Node, the example apps' npm packages, ...) is skipped with a `SKIPPED:`
//! note on stderr — but not under CI (`CI` set, as every CI service does),
//! where the prerequisite belongs to the setup and a skip would pass a test
//! that did not run: there it fails, naming what is missing.

use std::process::Command;
use std::sync::OnceLock;

/// Is this a CI run? `CI` set to anything but empty, `0` or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
}

/// Outside CI: print `SKIPPED: <why>` on stderr and return (the caller then
/// returns from its test). Under CI: panic with `why`.
pub fn skip_or_fail(why: &str) {
    if in_ci() {
        panic!("{why} (CI is set: a missing prerequisite fails the test instead of skipping it)");
    }
    eprintln!("SKIPPED: {why}");
}

/// `node --version`, once per process; `None` when there is no usable
/// `node` on PATH.
pub fn node_version() -> Option<&'static str> {
    static V: OnceLock<Option<String>> = OnceLock::new();
    V.get_or_init(|| {
        let out = Command::new("node").arg("--version").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
    .as_deref()
}

/// Start of a test that needs `node`: prints its version, or (see
/// [`skip_or_fail`]) skips the test — returning from it — or fails it in CI.
#[macro_export]
macro_rules! need_node {
    () => {
        match $crate::node_version() {
            Some(v) => eprintln!("  node {v}"),
            None => {
                $crate::skip_or_fail(
                    "`node` is not on PATH; install Node.js to run the Node tests",
                );
                return;
            }
        }
    };
}
