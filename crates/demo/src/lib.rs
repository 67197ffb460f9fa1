//! The demo server.
