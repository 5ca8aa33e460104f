//! The [`Node`]: the API boundary of the runtime. Any Rust program can embed one;
//! `zest serve` is one such program.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::NodeConfig;
use crate::engine::Engines;
use crate::error::{CallError, NodeError};
use crate::instance::CallCtx;
use crate::registry::Registry;
use crate::reload::{self, ReloadOptions, ReloadResult};

pub use crate::version::VersionInfo;

/// A running zest node: loaded modules, their versions, and calls into them.
///
/// `Node` is cheap to share across threads (`&Node` is `Send + Sync`); every method
/// takes `&self`. Calls never wait for reloads, and reloads never wait for calls
/// (except, bounded by `drain_timeout`, to report that an old version drained).
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
}

/// What the node's parts share; host functions hold it weakly.
pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    pub(crate) engines: Engines,
    pub(crate) registry: Registry,
    /// Keeps reloads one at a time within this node.
    reloads: Mutex<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("config", &self.config).field("registry", &self.registry).finish()
    }
}

/// A snapshot of the node (`system.status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub modules: Vec<ModuleStatus>,
}

/// One module in [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleStatus {
    pub name: String,
    pub current: VersionInfo,
    /// Old versions that something still runs on, oldest first.
    pub old: Vec<VersionInfo>,
    /// Its callable functions, sorted.
    pub functions: Vec<String>,
}

impl Node {
    pub fn new(config: NodeConfig) -> Result<Node, NodeError> {
        let engines = Engines::new(&config)?;
        let shared = Shared { config, engines, registry: Registry::default(), reloads: Mutex::new(()) };
        Ok(Node { shared: Arc::new(shared) })
    }

    pub fn config(&self) -> &NodeConfig {
        &self.shared.config
    }

    /// Loads module `name` from `path` (`.wasm` or `.wat`), or, when it is loaded
    /// already, reloads it from `path` (which becomes its source).
    pub fn load_module(&self, name: &str, path: impl AsRef<Path>, options: &ReloadOptions) -> ReloadResult {
        let path: PathBuf = path.as_ref().to_path_buf();
        let _reloading = self.shared.reloads.lock().unwrap_or_else(PoisonError::into_inner);
        reload::reload_module(&self.shared, name, Some(&path), options)
    }

    /// Reloads module `name` from the file it was loaded from (scope `module`).
    pub fn reload_module(&self, name: &str, options: &ReloadOptions) -> ReloadResult {
        let _reloading = self.shared.reloads.lock().unwrap_or_else(PoisonError::into_inner);
        reload::reload_module(&self.shared, name, None, options)
    }

    /// Calls `module.function` on the module's current version with `args` (JSON
    /// text) and returns its output (JSON text).
    pub fn call(&self, module: &str, function: &str, args: &str) -> Result<String, CallError> {
        let ctx = CallCtx::root(&self.shared.engines.clock, self.shared.config.limits.call_timeout);
        self.shared.registry.call(module, function, args, ctx)
    }

    pub fn status(&self) -> NodeStatus {
        let modules = self
            .shared
            .registry
            .modules()
            .into_iter()
            .map(|(name, slot)| {
                let current = slot.current();
                let mut functions: Vec<String> = current.functions().map(str::to_string).collect();
                functions.sort();
                ModuleStatus { name, current: current.info.clone(), old: slot.old_versions(), functions }
            })
            .collect();
        NodeStatus { modules }
    }
}
