//! The harness of the root package's integration tests: all of it lives in
//! `crates/testkit` (herd-testkit), shared with herd-cluster's tests. This
//! module only re-exports it, so tests keep writing `mod support;` and
//! `use support::*;` (or `support::Herd`, ...).

#[allow(unused_imports)]
pub use herd_testkit::*;
