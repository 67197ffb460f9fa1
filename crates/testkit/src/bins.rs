//! The binaries the tests run — `herd`, the fixture server
//! `herd-test-worker` (crates/test-worker) and the workspace's examples — as
//! they are built from the sources now.
//!
//! The first test of a process that asks for one runs one
//! `cargo build --workspace --all-features --bins --examples` into the
//! running test's own target directory and profile. Cargo hands a package's
//! tests only that package's own binaries, and the fixture is not part of
//! the `herd` package (so `cargo install herd` does not ship it): the kit
//! builds them itself. It asks for exactly the crates and features that
//! `cargo test --workspace --all-features` (the README's and CI's test
//! command) resolves — examples switch the dev-dependencies' features on,
//! as tests do — so after that command this build only links the two
//! binaries, instead of compiling herd and its dependencies a second time
//! with other features. When the build fails, every test asking for a binary
//! fails with the build's error. There is no fallback to whatever binary an
//! earlier build left.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The one build of the binaries and examples under test (see the module docs).
const WORKSPACE_BUILD: &[&str] = &["--workspace", "--all-features", "--bins", "--examples"];

/// The `herd` binary. `HERD_BIN` overrides it (e.g. a release build to
/// test); otherwise see the module docs. Panics with the build's error when
/// it cannot be built.
pub fn herd_bin() -> &'static str {
    static HERD: OnceLock<String> = OnceLock::new();
    HERD.get_or_init(|| match std::env::var("HERD_BIN") {
        Ok(bin) if !bin.is_empty() => bin,
        _ => cargo_built("herd", WORKSPACE_BUILD)
            .to_string_lossy()
            .into_owned(),
    })
}

/// The fixture server `herd-test-worker` (crates/test-worker): its plain
/// mode by default, `herd-test-worker cluster ...` (see
/// [`crate::fixture_args`]) for its herd-cluster mode.
pub fn worker_bin() -> &'static str {
    static WORKER: OnceLock<String> = OnceLock::new();
    WORKER.get_or_init(|| {
        cargo_built("herd-test-worker", WORKSPACE_BUILD)
            .to_string_lossy()
            .into_owned()
    })
}

/// The workspace's example `name` (e.g. herd-cluster's `axum`), built with
/// every feature its crate has.
pub fn example_bin(name: &str) -> PathBuf {
    cargo_built(&format!("examples/{name}"), WORKSPACE_BUILD)
}

/// `path` (relative to `<target>/<profile>/`, e.g. `examples/axum`), built
/// first with `cargo build BUILD_ARGS` (once per test process for the same
/// arguments). Panics with the build's error when the build fails.
pub fn cargo_built(path: &str, build_args: &[&str]) -> PathBuf {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static BUILT: Mutex<BTreeMap<Vec<String>, Result<PathBuf, String>>> =
        Mutex::new(BTreeMap::new());
    let key: Vec<String> = build_args.iter().map(|s| s.to_string()).collect();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let dir = built
        .entry(key)
        .or_insert_with(|| cargo_build(build_args))
        .clone();
    drop(built);
    match dir {
        Ok(d) => d.join(path),
        Err(e) => panic!("{e}"),
    }
}

/// Run `cargo build BUILD_ARGS` for the workspace into the target directory
/// and profile of the running test (`<target>/<profile>/deps/<test>`): the
/// directory the binaries land in (`<target>/<profile>`), or the build's
/// error. Cargo releases its build lock before it runs tests, so this does
/// not deadlock under `cargo test`.
fn cargo_build(build_args: &[&str]) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in <target>/<profile>/deps", exe.display()))?
        .to_path_buf();
    let target = profile_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent", profile_dir.display()))?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .args(build_args)
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let shown = format!("cargo build {}", build_args.join(" "));
    eprintln!("  testkit: {shown} (into {})", target.display());
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run `{shown}`: {e}; is cargo on PATH?"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "`{shown}` failed ({}): the tests will not run an old binary; fix the build. \
             Its output:\n{stderr}",
            out.status
        ));
    }
    Ok(profile_dir)
}

/// Wait until the program just written at `path` can be executed: run it
/// once (with `--herd-versions`, which a herd answers at once; a script
/// ignores it), again while the kernel says `ETXTBSY`. A test thread's
/// `fork` that happened while another thread was writing the copy holds the
/// copy's write fd until that child's `exec`, and an `exec` of the copy
/// meanwhile fails with "Text file busy" (seen once in CI on
/// `update::a_broken_binary_changes_nothing_and_says_what_failed`). Once an
/// `exec` succeeds no writer is left, so later ones succeed too.
pub fn until_executable(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Command::new(path)
            .arg("--herd-versions")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("cannot run {}: {e}", path.display()),
            Ok(_) => return,
        }
    }
}
