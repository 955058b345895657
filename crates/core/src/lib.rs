//! The plain-Rust core of credential_rotate, shared by the extension and the
//! `credential-rotate` program: no pgrx, no I/O, unit-tested and fuzzed without a server.
//!
//! - [`envelope`]: the application's envelope format, its cipher and the rotation decision.
//! - [`key`]: parsing keys as the application reads them, fingerprints, generation.
//! - [`container`]: reading and splicing a stored jsonb container's bytes.
//! - [`stored`]: a stored jsonb container read as an envelope's fields.

pub mod container;
pub mod envelope;
pub mod key;
pub mod stored;
pub mod table;
