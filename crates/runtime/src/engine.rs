//! Machine code: the wasmtime engines and the epoch ticker (`engines.rs`),
//! compiled builds as plain types (`compiled.rs`) and the on-disk compile
//! cache (`cache.rs`).
//!
//! *Architecture invariant*: `engine/` never names host state or the code
//! server. It compiles; the running side (`code/`) links.

mod cache;
mod compiled;
mod engines;

pub(crate) use compiled::{Compiled, Loaded, Pieces};
pub(crate) use engines::{Clock, Engines};
