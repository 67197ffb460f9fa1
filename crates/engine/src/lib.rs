//! herd's supervisor engine.
pub mod clock;
pub mod config;
pub mod cpus;
pub mod describe;
pub mod exit;
pub mod machine;
pub mod os;
pub mod supervisor;
