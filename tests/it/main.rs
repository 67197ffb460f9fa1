//! herd's integration tests: one test binary with a module per area, so the
//! whole of herd is linked once rather than once per file. Each module runs
//! the real `herd` (and the fixture server `herd-test-worker`) over real
//! sockets, signals and processes, through `herd_testkit`.
//!
//! A new test goes into the module of its area; a new area gets a module
//! here. Run one area with a filter: `cargo test --test it node::`.

mod bounds;
mod daemon;
mod demo;
mod deploy;
mod fixture;
mod metrics;
mod monit;
mod node;
mod pid1;
mod pm2_verbs;
mod run;
mod supervisor;
mod supervisors;
mod systemd;
