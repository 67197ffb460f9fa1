//! The kit's honesty guarantees, shown: a Node-needing test with `node` off
//! PATH is skipped with a note that `cargo test` shows outside CI (a line at
//! once and a summary at the end, though libtest hides a passing test's
//! output) and fails under `CI=true`; a binary whose build fails fails the
//! test with the build's error.
//!
//! The Node cases run this test binary again (only [`probe_needs_node`],
//! with PATH pointing nowhere and `CI` set or not) and look at the outcome.

use std::process::Command;

const PROBE: &str = "HERD_TESTKIT_PROBE";

/// A test that needs Node; it does something only when the other tests run
/// it in a child process (`HERD_TESTKIT_PROBE` set).
#[test]
fn probe_needs_node() {
    if std::env::var_os(PROBE).is_none() {
        return;
    }
    herd_testkit::need_node!();
    println!("PROBE RAN: node was found");
}

/// Run [`probe_needs_node`] with no `node` reachable, its output captured
/// by libtest as in a plain `cargo test`: (passed, its output).
fn run_probe(ci: Option<&str>) -> (bool, String) {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "honesty::probe_needs_node"])
        .env(PROBE, "1")
        .env("PATH", "/nonexistent/herd-testkit-no-node")
        .env_remove("CI");
    if let Some(v) = ci {
        cmd.env("CI", v);
    }
    let out = cmd.output().expect("run the probe");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("--- probe (CI={ci:?}): {}\n{text}", out.status);
    (out.status.success(), text)
}

#[test]
fn under_ci_a_test_that_needs_a_missing_node_fails() {
    let (passed, out) = run_probe(Some("true"));
    assert!(
        !passed,
        "the probe passed under CI=true without node:\n{out}"
    );
    assert!(
        out.contains("`node` is not on PATH") && out.contains("CI is set"),
        "the failure names what is missing:\n{out}"
    );
    assert!(!out.contains("PROBE RAN"), "{out}");
}

#[test]
fn outside_ci_a_test_that_needs_a_missing_node_is_skipped_with_a_note() {
    for ci in [None, Some("false"), Some("")] {
        let (passed, out) = run_probe(ci);
        assert!(passed, "CI={ci:?}: the probe failed:\n{out}");
        assert!(
            out.contains("SKIPPED honesty::probe_needs_node: `node` is not on PATH"),
            "CI={ci:?}: the skip says so, visibly, naming the test:\n{out}"
        );
        let summary = out
            .find("SKIPPED: 1 test(s) of this binary passed without running")
            .unwrap_or_else(|| panic!("CI={ci:?}: no summary of the skips:\n{out}"));
        assert!(
            out.find("test result: ok").is_some_and(|r| r < summary),
            "CI={ci:?}: the summary follows libtest's result line:\n{out}"
        );
        assert!(!out.contains("PROBE RAN"), "{out}");
    }
}

#[test]
fn a_failed_build_fails_the_test_with_the_build_error() {
    let err = std::panic::catch_unwind(|| {
        herd_testkit::cargo_built("nothing", &["-p", "herd-testkit-no-such-package"])
    })
    .expect_err("a failed build must not hand back a path");
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        msg.contains("failed") && msg.contains("herd-testkit-no-such-package"),
        "the panic carries cargo's error: {msg}"
    );
}
