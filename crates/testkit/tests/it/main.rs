//! The testkit's own tests, one binary with a module per area (see herd's
//! `tests/it/main.rs`): its honesty guarantees and the kernel probes.

mod honesty;
mod probes;
