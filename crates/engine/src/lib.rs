//! herd's supervisor engine.
pub mod config;
pub mod cpus;
pub mod machine;
pub mod os;
