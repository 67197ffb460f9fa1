//! The harness of herd-cluster's integration tests: all of it lives in
//! `crates/testkit` (`herd_testkit::cluster`), shared with the root
//! package's tests. This module only re-exports it, so tests keep writing
//! `mod common;` and `use common::*;`.

#[allow(unused_imports)]
pub use herd_testkit::cluster::*;
