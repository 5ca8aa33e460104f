//! What the data directory keeps: builds by sha256 (`artifact.rs`), the
//! history of committed swaps (`history.rs`), and what is kept or swept, with
//! the directory's lock (`retention.rs`).
//!
//! *Architecture invariant*: `store/` never names the code server or the
//! node's shared state: it is handed paths, bytes and records.

pub(crate) mod artifact;
pub mod history;
pub(crate) mod retention;
