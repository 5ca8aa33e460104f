//! zest-runtime: the embeddable zest node.
//!
//! A [`Node`] hosts *modules* (WebAssembly core modules speaking the guest ABI of
//! `docs/abi.md`), calls their functions and replaces their code while calls keep
//! flowing. Any Rust program can embed it; the `zest` binary is one such program.
//!
//! The crate is a stack of layers, each using only those below it
//! (`docs/ARCHITECTURE.md` has the map and what each may not name; a tidy
//! test keeps it free of import circles). From the bottom up:
//!
//! - vocabulary every layer may use: [`error`], [`reason`], [`lock`] (the
//!   reload lock), [`config`], `background` (worker threads);
//! - `wasm/`: the bytes of a build — [`abi`] (names and checks of guest ABI
//!   version 1), the loader's dispatch rewrite and cut, WAT text;
//! - `engine/`: machine code — the wasmtime engines, the epoch ticker, the
//!   compile caches;
//! - `store/`: what the data directory keeps — builds by sha256, the
//!   [`history`], retention and the directory's lock;
//! - `report.rs`: the one result type and what it carries; [`telemetry`]:
//!   events over reports;
//! - `build/`: where builds come from — [`app`] manifests, [`compile`] (an
//!   app's build command), [`extension`]s, the wasm32 [`toolchain`];
//! - `request.rs`: requests, options, scopes, trials, blueprints;
//! - `code/`: the code server — the `"zest"` imports, instances, versions,
//!   the registry, [`process`]es;
//! - `state.rs`: what the node's parts share;
//! - [`reload`]: the phases, as the [`Plan`] API (stage, commit, settle or
//!   undo, finish), and the trial watcher;
//! - [`node`] (the [`Node`], the API boundary) and [`watch`] mode on top.

mod background;
mod build;
mod code;
pub mod config;
mod engine;
pub mod error;
pub mod lock;
pub mod node;
pub mod reason;
pub mod reload;
mod report;
mod request;
mod state;
mod store;
pub mod telemetry;
mod wasm;
pub mod watch;

// The public paths of the modules that moved into layers.
pub use build::{app, compile, extension, source, toolchain};
pub use code::process;
pub use store::history;
pub use wasm::abi;

pub use abi::Signature;
pub use app::{AppManifest, ManifestError};
pub use code::host::{Capabilities, HostState};
pub use code::ledger::{ModuleCalls, Serving};
pub use compile::CompileReport;
pub use config::ExtensionsConfig;
pub use config::RestartPolicy;
pub use config::{Compiler, Limits, NodeConfig};
pub use error::{CallError, NodeError, ProcessError};
pub use extension::{ExtensionRecord, Format};
pub use history::{Action, BuildId, HistoryEntry};
pub use lock::{LocalLock, LockError, LockGuard, ReloadLock};
pub use node::{
    AppStatus, BuildKind, CanaryStatus, ExtensionStatus, ModuleDescription, ModuleStatus, Node, NodeStatus, VersionInfo,
};
pub use process::{Direction, ProcessState, ProcessStatus};
pub use reason::{Failure, Reason, Skip};
pub use reload::{
    AllScope, Blueprint, BlueprintUnit, BuildRef, ClusterOutcome, CodeChangeTarget, Counts, FunctionChange, Kind,
    Metadata, Phase, Plan, PlanEntry, ReloadError, ReloadOptions, ReloadRequest, ReloadResult, RollbackRequest,
    RollbackTarget, Scope, Session, Status, Swap, TrialSpec, UnloadRequest, UnloadTarget,
};
pub use source::{Language, Tool, ToolError, ToolchainStatus};
pub use store::artifact::Bytes;
pub use telemetry::{Event, EventBody, Telemetry};
/// The wasmtime this node runs on: the types of [`Node::call_typed`] come from it.
pub use wasmtime;

/// For the fuzz targets (`crates/fuzz`), not for embedders.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::wasm::split::check_against_whole;
    /// The guest SDK's component form made a component (`wasm/wrap.rs`), for
    /// the `rust_component` benchmark (which times the wrapping alone).
    pub use crate::wasm::wrap::component_form;

    /// Reads `args` (JSON text) as the parameters of the function `f` that
    /// the component `component_wat` (WAT text) imports, by §13's mapping, and
    /// writes them back as JSON (the fuzz target `wit_json`). `Ok(None)` when
    /// the component is not one to test with (it does not parse or compile,
    /// or imports no function `f`); `Err` with the mapping's refusal.
    pub fn wit_params_round_trip(component_wat: &str, args: &str) -> Result<Option<String>, String> {
        use wasmtime::component::types::ComponentItem;
        let Ok(wasm) = wat::parse_str(component_wat) else { return Ok(None) };
        let engine = wasmtime::Engine::default();
        let Ok(component) = wasmtime::component::Component::new(&engine, wasm) else { return Ok(None) };
        let Some(ComponentItem::ComponentFunc(func)) =
            component.component_type().get_import(&engine, "f").map(|import| import.ty)
        else {
            return Ok(None);
        };
        let vals = crate::code::wit::params(&func, args)?;
        Ok(Some(crate::code::wit::params_json(&func, &vals).to_string()))
    }

    /// Parses `texts` in turn, as a node parses a module's successive WAT
    /// builds (`text.rs`): each result is `wat`'s own parse of that text, or
    /// the same error. Returns how many were spliced rather than parsed whole.
    pub fn parse_texts_in_turn(texts: &[String]) -> Result<u64, String> {
        let cache = crate::wasm::text::Texts::default();
        for (index, text) in texts.iter().enumerate() {
            let ours = cache.parse(text.as_bytes()).map_err(|err| err.to_string());
            let whole = wat::parse_str(text).map_err(|err| err.to_string());
            if ours != whole {
                return Err(format!("text {index} parses differently through the kept texts:\n{text}"));
            }
        }
        Ok(cache.spliced())
    }
}
