//! zest-runtime: the embeddable zest node.
//!
//! A [`Node`] hosts *modules* (WebAssembly core modules speaking the guest ABI of
//! `docs/abi.md`), calls their functions and replaces their code while calls keep
//! flowing. Any Rust program can embed it; the `zest` binary is one such program.
//!
//! The crate is organised after the concepts of CONTRACT.md:
//!
//! - [`node`]: the [`Node`] type, the API boundary;
//! - `registry`: the code server, module name → current version plus old versions
//!   that something still runs on;
//! - `version`: one loaded build of a module and its pool of instances;
//! - `engine`: wasmtime engines, the epoch ticker and the compile cache;
//! - [`app`]: app manifests (`zest.toml`);
//! - [`compile`]: running an app's build (`compile: true`);
//! - [`extension`]: extension path checks, builds and durable records;
//! - [`process`]: stateful processes, their mailboxes and migrations;
//! - [`lock`]: the reload lock;
//! - [`telemetry`]: reload events, their subscribers and metrics;
//! - `abi`: validation of a module against guest ABI version 1;
//! - `host`: the `"zest"` imports;
//! - [`reload`]: the reload request, its one result type, and the [`Plan`] API
//!   of its phases (stage, commit, settle or undo, finish);
//! - [`reason`]: the reason strings every report uses;
//! - `artifact`: builds by sha256, for other members and later rollbacks;
//! - [`toolchain`]: finding a wasm32-capable `rustc` and running it.

pub mod abi;
pub mod app;
mod artifact;
mod background;
mod cache;
pub mod compile;
pub mod config;
mod dispatch;
mod engine;
pub mod error;
pub mod extension;
pub mod history;
mod host;
mod instance;
mod ledger;
pub mod lock;
pub mod node;
pub mod process;
pub mod reason;
mod registry;
pub mod reload;
mod retention;
mod split;
pub mod telemetry;
mod text;
pub mod toolchain;
mod version;
pub mod watch;

pub use app::{AppManifest, ManifestError};
pub use artifact::Bytes;
pub use compile::CompileReport;
pub use config::ExtensionsConfig;
pub use config::RestartPolicy;
pub use config::{Compiler, Limits, NodeConfig};
pub use error::{CallError, NodeError, ProcessError};
pub use extension::{ExtensionRecord, Format};
pub use history::{Action, BuildId, HistoryEntry};
pub use lock::{LocalLock, LockError, LockGuard, ReloadLock};
pub use node::{AppStatus, CanaryStatus, ExtensionStatus, ModuleStatus, Node, NodeStatus, VersionInfo};
pub use process::{Direction, ProcessState, ProcessStatus};
pub use reason::{Failure, Reason, Skip};
pub use reload::{
    AllScope, Blueprint, BlueprintUnit, BuildRef, ClusterOutcome, CodeChangeTarget, Counts, Kind, Metadata, Phase,
    Plan, PlanEntry, ReloadError, ReloadOptions, ReloadRequest, ReloadResult, RollbackRequest, RollbackTarget, Scope,
    Session, Status, Swap, TrialSpec,
};
pub use telemetry::{Event, EventBody, Telemetry};

/// For the fuzz targets (`crates/fuzz`), not for embedders.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::split::check_against_whole;

    /// Parses `texts` in turn, as a node parses a module's successive WAT
    /// builds (`text.rs`): each result is `wat`'s own parse of that text, or
    /// the same error. Returns how many were spliced rather than parsed whole.
    pub fn parse_texts_in_turn(texts: &[String]) -> Result<u64, String> {
        let cache = crate::text::Texts::default();
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
