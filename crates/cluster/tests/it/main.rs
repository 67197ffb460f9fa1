//! herd-cluster's integration tests, one binary with a module per area (see
//! herd's `tests/it/main.rs`). `primary_in_test.rs` stays a binary of its
//! own: its workers re-execute the test binary, so it must hold that one
//! test alone.

mod axum_example;
mod embedded;
mod standalone;
mod under_herd;
