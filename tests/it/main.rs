//! herd's integration tests: one test binary with a module per area, so the
//! whole of herd is linked once rather than once per file. Each module runs
//! the real `herd` (and the fixture server `herd-test-worker`) over real
//! sockets, signals and processes, through `herd_testkit`.
//!
//! A new test goes into the module of its area; a new area gets a module
//! here. Run one area with a filter: `cargo test --test it node::`.

mod bad_inputs;
mod bounds;
mod chaos;
mod container;
mod daemon;
mod demo;
mod deploy;
mod faults;
mod fixture;
mod fuzz_regressions;
mod kill_loop;
mod logs;
mod metrics;
mod monit;
mod node;
mod pid1;
mod pm2_files;
mod pm2_verbs;
mod reload;
mod run;
mod runtime;
mod supervisor;
mod supervisors;
mod systemd;
mod triggers;
mod two_apps;
mod update;
mod upgrade;

/// What each fuzz target asserts of one input (`fuzz/src/lib.rs`), shared
/// with cargo-fuzz: `fuzz_regressions` runs it on every saved input.
#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz_checks;
