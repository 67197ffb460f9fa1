//! herd for Rust servers.
