//! herd-demo's integration tests, one binary with a module per area (see
//! herd's `tests/it/main.rs`).

mod routes;
