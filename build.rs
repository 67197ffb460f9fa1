//! Link the `herd` binary as a position-dependent executable (`-no-pie`).
//!
//! herd runs one supervisor process per app, all of them the same binary. In
//! a position-independent executable the loader writes every pointer in the
//! read-only data (vtables, string tables, panic locations: 220 kB here) at
//! start, so each process holds a private copy of those pages. Linked at a
//! fixed address those pages stay clean and are shared by every herd
//! process: a supervisor's PSS drops from 885 to 667 kB (20 apps; the
//! README's memory section has the figures against pm2).
//!
//! The price: the binary's own image is not placed at a random address
//! (the stack, heap, mmaps and shared libraries still are). That is Go's
//! default for Linux executables, which containerd's per-container shims
//! (the model of herd's supervisors) run with; herd is memory-safe Rust, for
//! which a fixed image address matters less than for C. `HERD_PIE=1 cargo
//! build --release` links a position-independent binary instead.
//!
//! The code is still compiled position-independent, so the linker only
//! resolves the addresses at link time; libraries, tests and the fuzz
//! targets are not affected (`rustc-link-arg-bins` applies to this
//! package's binaries only).
//!
//! # Hot code first
//!
//! A release build also asks the linker to place the functions that herd's
//! daemon and app supervisors run (`scripts/hot-code/hot-code.order`, about
//! 1,800 of the binary's functions) together at the start of the code. The
//! kernel maps code into a process 64 KiB around each page it runs, so
//! spread among the CLI's, the TUI's and the config parsers' code, those
//! functions kept 4–5 MB of the binary mapped (in the daemon alone 4.4 MB
//! of 8.4); packed, 1.7 MB. The list names symbols, whose hashes change with
//! the Rust toolchain and Cargo.lock (and a function's name with a change
//! that makes or unmakes it; fat LTO, Cargo.toml, keeps the others'):
//! `scripts/hot-code/profile.sh` makes it again (`bench/daemon.sh` reports
//! how much of it the binary still has). A
//! stale list costs memory, never correctness: the linker skips names it
//! does not find. Only rust-lld (rustc's default linker for this target
//! since 1.90) takes the list, so it is passed only when that is the linker;
//! `HERD_HOT_CODE=0` leaves it out.

fn main() {
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    // A packager who prefers a randomised image to the memory: HERD_PIE=1.
    let pie = std::env::var_os("HERD_PIE").is_some_and(|v| v == "1");
    if linux && !pie {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    if std::env::var("PROFILE").as_deref() == Ok("release") && takes_symbol_order() {
        let order = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
            .join("scripts/hot-code/hot-code.order");
        if order.is_file() {
            println!(
                "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
                order.display()
            );
            println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        }
        println!("cargo:rerun-if-changed={}", order.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HERD_PIE");
    println!("cargo:rerun-if-env-changed=HERD_HOT_CODE");
}

/// Whether the binary is linked by rust-lld, which takes a symbol order
/// (GNU ld does not, and would fail the link): rustc's own default for
/// x86_64 Linux since 1.90, unless a linker is configured.
fn takes_symbol_order() -> bool {
    if std::env::var_os("HERD_HOT_CODE").is_some_and(|v| v == "0") {
        return false;
    }
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || std::env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    // -C linker=…, -C link-self-contained=…, -C linker-flavor=…, -Z linker-features=…
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("link") {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    let release = version
        .lines()
        .find_map(|l| l.strip_prefix("release: "))
        .unwrap_or("");
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
