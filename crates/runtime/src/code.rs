//! The code server: running guests. From the bottom up: a version's life
//! (`life.rs`: purge flag, pins, gone signal), the ledger of calls
//! (`ledger.rs`), the `"zest"` imports and per-store state (`host.rs`), one
//! instance and the call protocol (`instance.rs`, with `wit.rs` mapping JSON
//! to a component's WIT values), one build with its pool of
//! instances (`version.rs`), the registry of modules (`registry.rs`), and
//! processes (`process.rs`).
//!
//! *Architecture invariant*: `code/` never names the node's shared state, a
//! reload, or a request beyond plain types (`Direction`); nested calls reach
//! the registry through `host::Callee`, which the registry implements.

pub(crate) mod host;
pub(crate) mod instance;
pub(crate) mod ledger;
pub(crate) mod life;
pub mod process;
pub(crate) mod registry;
pub(crate) mod version;
pub(crate) mod wasi;
pub(crate) mod wit;
