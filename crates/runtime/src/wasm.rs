//! The bytes of a build, before any engine sees them: the guest ABI's names
//! and checks (`abi.rs` for core modules, `component.rs` for components), the loader's rewrite behind one dispatcher
//! (`dispatch.rs`), its cut of a large build into a core and parts
//! (`split.rs`), WAT text to binary (`text.rs`), and a core module in the guest
//! SDK's component form made into a component (`wrap.rs`).
//!
//! *Architecture invariant*: `wasm/` names nothing else of the crate: it is
//! bytes in, bytes (or a verdict) out.

pub mod abi;
pub(crate) mod component;
pub(crate) mod dispatch;
pub(crate) mod split;
pub(crate) mod text;
pub(crate) mod wrap;
