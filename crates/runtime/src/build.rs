//! Where builds come from: app manifests (`app.rs`), an app's own build
//! command (`compile.rs`), extensions' path checks, Rust builds and records
//! (`extension.rs`), the wasm32 `rustc` (`toolchain.rs`), and `.js` and `.py`
//! extensions built into components by their toolchains (`source.rs`).
//!
//! *Architecture invariant*: `build/` never names the code server or the
//! node: it turns files into bytes, manifests and records.

pub mod app;
pub mod compile;
pub mod extension;
pub mod source;
pub mod toolchain;
