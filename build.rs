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

fn main() {
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    // A packager who prefers a randomised image to the memory: HERD_PIE=1.
    let pie = std::env::var_os("HERD_PIE").is_some_and(|v| v == "1");
    if linux && !pie {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HERD_PIE");
}
