//! The [`Node`]: the API boundary of the runtime. Any Rust program can embed one;
//! `zest serve` is one such program.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{ComponentNamedList, Lift, Lower};

use crate::build::app::AppManifest;
use crate::build::extension::ExtensionRecord;
use crate::code::host::{CallCtx, Capabilities};
use crate::code::ledger::ModuleCalls;
use crate::code::process::ProcessStatus;
use crate::config::NodeConfig;
use crate::error::{CallError, NodeError, ProcessError};
use crate::lock::{LocalLock, LockError, ReloadLock};
use crate::reload::{
    Failure, Kind, Reason, ReloadError, ReloadOptions, ReloadRequest, ReloadResult, RollbackRequest, RollbackTarget,
    Scope, Session, UnloadRequest, Work,
};
use crate::state::Shared;
use crate::store::artifact::{parse_sha256, Bytes};
use crate::store::history::HistoryEntry;
use crate::telemetry::{Role, Telemetry};
use crate::wasm::abi::Signature;

pub use crate::code::version::{BuildKind, VersionInfo};

/// A running zest node: apps, modules, their versions, and calls into them.
///
/// `Node` is cheap to share across threads (`&Node` is `Send + Sync`); every method
/// takes `&self`. Calls never wait for reloads, and reloads never wait for calls
/// (except, bounded by `drain_timeout`, to report that an old version drained).
/// Reloads run one at a time under the reload lock.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
}

/// A snapshot of the node (`system.status`).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    pub apps: Vec<AppStatus>,
    pub modules: Vec<ModuleStatus>,
    pub extensions: Vec<ExtensionStatus>,
    pub processes: Vec<ProcessStatus>,
}

/// One recorded extension in [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionStatus {
    pub record: ExtensionRecord,
    /// False when it is recorded but failed to load (at start, say).
    pub loaded: bool,
}

/// One app in [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppStatus {
    pub name: String,
    pub dir: PathBuf,
    pub modules: Vec<String>,
}

/// One module in [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleStatus {
    pub name: String,
    /// The app that declares it; `None` for a module loaded through the API.
    pub app: Option<String>,
    pub current: VersionInfo,
    /// Old versions that something still runs on, oldest first.
    pub old: Vec<VersionInfo>,
    /// Processes of the module that run on an old version (a failed migration
    /// left them there), sorted.
    pub pinned_by: Vec<String>,
    /// Its callable functions, sorted.
    pub functions: Vec<String>,
    /// The current version's share of calls (100 without a canary), its calls
    /// and failures since the node started.
    pub share: u32,
    pub calls: u64,
    pub failures: u64,
    /// A canary running beside it.
    pub canary: Option<CanaryStatus>,
    /// A trial watches it until then.
    pub trial_until: Option<std::time::SystemTime>,
}

/// What `module.call` can call on a module's current version
/// (`module.describe`): each callable function, by name, with its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleDescription {
    pub module: String,
    pub vsn: String,
    pub kind: BuildKind,
    /// Sorted by name.
    pub functions: Vec<(String, Signature)>,
}

/// A module's canary in [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryStatus {
    pub version: VersionInfo,
    pub share: u32,
    pub calls: u64,
    pub failures: u64,
}

/// How many bytes of builds [`Node::stages_at_once`] lets a quick staging
/// hash (about a millisecond's work).
pub const AT_ONCE_MAX_BYTES: usize = 1 << 20;

impl Node {
    /// A node with the in-process reload lock.
    pub fn new(config: NodeConfig) -> Result<Node, NodeError> {
        Node::with_lock(config, Box::new(LocalLock::default()))
    }

    /// A node whose reloads take `lock` (a cluster-wide lock, say).
    pub fn with_lock(config: NodeConfig, lock: Box<dyn ReloadLock>) -> Result<Node, NodeError> {
        Node::with(config, lock, &Capabilities::default())
    }

    /// A node whose components may import `capabilities`, the interfaces this
    /// program implements (CONTRACT.md §13).
    pub fn with_capabilities(config: NodeConfig, capabilities: Capabilities) -> Result<Node, NodeError> {
        Node::with(config, Box::new(LocalLock::default()), &capabilities)
    }

    fn with(config: NodeConfig, lock: Box<dyn ReloadLock>, capabilities: &Capabilities) -> Result<Node, NodeError> {
        let shared = Shared::new(config, lock, capabilities, crate::reload::trial::watch)?;
        Ok(Node { shared: Arc::new(shared) })
    }

    /// The node of `shared` (watch mode's thread holds the node weakly).
    pub(crate) fn from_shared(shared: &Arc<Shared>) -> Node {
        Node { shared: Arc::clone(shared) }
    }

    /// What the node's parts share, for the drivers above it (watch mode).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn config(&self) -> &NodeConfig {
        &self.shared.config
    }

    /// Telemetry: attach handlers, subscribe to the event feed.
    pub fn telemetry(&self) -> &Telemetry {
        &self.shared.telemetry
    }

    /// Runs one `system.reload` request: takes the reload lock, then stages,
    /// commits, settles and finishes the plan (`reload/plan.rs`) as one
    /// telemetry operation. Errors only when it cannot run at all: the lock is
    /// held past `lock_timeout` (`CONFLICT`).
    pub fn reload(&self, request: &ReloadRequest) -> Result<ReloadResult, ReloadError> {
        let since = Instant::now();
        let session = self.session(request.options.lock_timeout, request.request_id.as_deref())?;
        let (kind, target) = match &request.scope {
            Scope::Module(name) => (Kind::Module, name.clone()),
            Scope::App(name) => (Kind::App, name.clone()),
            Scope::Extension(path) => (Kind::Extension, path.display().to_string()),
            Scope::All(_) => (Kind::System, "system".to_string()),
        };
        let request_id = session.request_id().to_string();
        let telemetry = &self.shared.telemetry;
        Ok(telemetry.step_since(Role::Coordinator, since, kind, &target, &request_id, || session.plan(request).run()))
    }

    /// Runs one `system.rollback` request (CONTRACT.md §11) as one telemetry
    /// operation: an earlier build becomes current by every rule of a reload.
    /// Errors only when the lock is held past `lock_timeout` (`CONFLICT`).
    pub fn rollback(&self, request: &RollbackRequest) -> Result<ReloadResult, ReloadError> {
        let since = Instant::now();
        let session = self.session(request.options.lock_timeout, request.request_id.as_deref())?;
        let (kind, target) = request.kind_and_target();
        let request_id = session.request_id().to_string();
        let telemetry = &self.shared.telemetry;
        Ok(telemetry.step_since(Role::Coordinator, since, kind, &target, &request_id, || session.rollback(request)))
    }

    /// Runs one `system.unload` request (CONTRACT.md §4) as one telemetry
    /// operation of kind `extension` or `app`: the modules leave the
    /// registry once their calls in flight finish (as a purge, up to the
    /// drain timeout), their processes stop after the message they are
    /// handling, an extension's record is removed durably, and the history
    /// records `unload` (`to` null). The result lists the modules in
    /// `metadata.unloaded`. Errors only when the lock is held past
    /// `lock_timeout` (`CONFLICT`).
    pub fn unload(&self, request: &UnloadRequest) -> Result<ReloadResult, ReloadError> {
        let session = self.session(request.lock_timeout, request.request_id.as_deref())?;
        let (kind, target) = request.kind_and_target();
        let request_id = session.request_id().to_string();
        Ok(self.shared.telemetry.step(kind, &target, &request_id, || session.unload(request)))
    }

    /// Runs one `system.promote` request: the canary of a module (or of every
    /// module of an app) becomes current for everyone. Errors only when the
    /// lock is held past `options.lock_timeout` (`CONFLICT`).
    pub fn promote(&self, target: &RollbackTarget, options: &ReloadOptions) -> Result<ReloadResult, ReloadError> {
        let session = self.session(options.lock_timeout, None)?;
        Ok(session.promote_step(target, options))
    }

    /// Takes the node's reload lock, waiting up to `wait`, for a plan driven
    /// step by step (a cluster drives its phases on every member this way).
    /// `request_id` is carried in every event; the node makes one up when `None`.
    pub fn session(&self, wait: Duration, request_id: Option<&str>) -> Result<Session, LockError> {
        Session::acquire(&self.shared, wait, request_id)
    }

    /// Loads the app in `dir` (its `zest.toml` and every module it declares), or
    /// reloads it when an app of that name is loaded. Waits for the reload lock.
    pub fn load_app(&self, dir: impl AsRef<Path>) -> ReloadResult {
        let dir = dir.as_ref();
        let target = dir.display().to_string();
        self.with_lock_waited(Kind::App, &target, Work::LoadApp(dir), &ReloadOptions::default())
    }

    /// Loads module `name` from `path` (`.wasm` or `.wat`) outside any app, or
    /// reloads it from `path` (which becomes its source). Waits for the reload lock.
    pub fn load_module(&self, name: &str, path: impl AsRef<Path>, options: &ReloadOptions) -> ReloadResult {
        self.with_lock_waited(Kind::Module, name, Work::Loose { name, source: Some(path.as_ref()) }, options)
    }

    /// Loads (or reloads) the extension at `path` (scope `extension`). Waits
    /// for the reload lock.
    pub fn load_extension(&self, path: impl AsRef<Path>, options: &ReloadOptions) -> ReloadResult {
        let path = path.as_ref().to_path_buf();
        let target = path.display().to_string();
        self.with_lock_waited(Kind::Extension, &target, Work::Scope(&Scope::Extension(path.clone())), options)
    }

    /// Loads again the extensions recorded in the data directory, as at start:
    /// one child result per extension. A record that cannot be read, or an
    /// extension that no longer loads, is an error in the result, never a reason
    /// not to go on. Load the node's apps first, so name clashes are seen.
    pub fn restore_extensions(&self) -> ReloadResult {
        self.with_lock_waited(Kind::System, "system", Work::RecordedExtensions, &ReloadOptions::default())
    }

    /// Reloads module `name` from the file it was loaded from. Waits for the
    /// reload lock. (Scope `module` of `system.reload`, which also re-reads app
    /// manifests, is [`Node::reload`].)
    pub fn reload_module(&self, name: &str, options: &ReloadOptions) -> ReloadResult {
        self.with_lock_waited(Kind::Module, name, Work::Loose { name, source: None }, options)
    }

    /// Runs one reload operation of the embedding API: waits for the reload lock
    /// as long as it takes, then runs the plan between its telemetry events. A
    /// lock that cannot be had at all is a `timeout` error.
    fn with_lock_waited(&self, kind: Kind, target: &str, work: Work<'_>, options: &ReloadOptions) -> ReloadResult {
        let since = Instant::now();
        let session = match self.session(Duration::MAX, None) {
            Ok(session) => session,
            Err(err) => {
                let mut result = ReloadResult::new(kind, target);
                result.errors.push(Failure::new(target, Reason::Timeout, err.to_string()));
                return result;
            }
        };
        let request_id = session.request_id().to_string();
        let telemetry = &self.shared.telemetry;
        telemetry.step_since(Role::Coordinator, since, kind, target, &request_id, || session.stage(work, options).run())
    }

    /// A request id no other request of this node carries (`r1`, `r2`, …).
    pub fn next_request_id(&self) -> String {
        self.shared.next_request_id()
    }

    /// Reads the app in `dir` and keeps it as unloaded, without loading it:
    /// a cluster member does so with an app its configuration lists that its
    /// cluster unloaded. As for an app unloaded since the node started, a
    /// reload of the app by name loads it again from `dir`, and
    /// `system.rollback {"app"}` loads back the builds history names. An app
    /// of that name that is loaded stays loaded. Returns the manifest read.
    pub fn keep_unloaded_app(&self, dir: impl AsRef<Path>) -> Result<AppManifest, crate::build::app::ManifestError> {
        let manifest = AppManifest::load(dir.as_ref())?;
        self.shared.keep_unloaded_app(manifest.clone());
        Ok(manifest)
    }

    /// The manifest of loaded app `name`, as last applied.
    pub fn app_manifest(&self, name: &str) -> Option<AppManifest> {
        self.shared.app(name)
    }

    /// The manifest app `name` had when it was unloaded (or was kept
    /// unloaded, [`Node::keep_unloaded_app`]) since the node started, unless
    /// it was loaded again since.
    pub fn unloaded_app_manifest(&self, name: &str) -> Option<AppManifest> {
        self.shared.unloaded_app(name)
    }

    /// History entries, newest first: of `module` only when given, at most `limit`.
    pub fn history(&self, module: Option<&str>, limit: usize) -> Vec<HistoryEntry> {
        self.shared.history.list(module, limit)
    }

    /// Each loaded module's calls since the node started, by the place
    /// (current, canary, old) of the build that ran them and by outcome, with
    /// the builds in each place now (`zest_calls_total` and
    /// `zest_module_version_info`; each count only grows). A module
    /// unloaded stays listed while the ledger keeps any of its counts.
    pub fn call_counts(&self) -> Vec<ModuleCalls> {
        self.shared.module_calls()
    }

    /// Waits until the writes that follow earlier swaps are on disk: compile
    /// cache entries and builds (they run off the reload's path).
    pub fn flush_writes(&self) {
        self.shared.background.flush();
    }

    /// Waits until the work that follows earlier swaps is done: the writes
    /// of [`Node::flush_writes`], and the pieces of builds compiled wide
    /// compiled for the next edit (`docs/benchmarks.md`, "Cold reloads").
    /// Tier-ups, which wait for a module to be quiet, are not waited for.
    pub fn settle(&self) {
        self.shared.pieces.flush();
        self.shared.background.flush();
    }

    /// The build whose sha256 is `sha256` (hex), if the node holds it: one it
    /// staged, runs, ran, or was given ([`Node::add_build`]).
    pub fn build(&self, sha256: &str) -> Option<Bytes> {
        self.shared.artifacts.get(&parse_sha256(sha256)?)
    }

    /// Holds `bytes` as a build (fetched from another node), returning its
    /// sha256 (hex), so that a blueprint naming it can be staged.
    pub fn add_build(&self, bytes: Bytes) -> String {
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        self.shared.artifacts.keep(&sha256, bytes);
        hex::encode(sha256)
    }

    /// Whether staging `blueprint` ([`Session::plan_blueprint`]) is quick work
    /// that waits for nothing, fit for an async runtime's thread: every build
    /// it names runs already, or is held in memory and compiled there, and
    /// those to stage come to at most [`AT_ONCE_MAX_BYTES`] (each is hashed).
    /// A hint, not a hold: should the memory caches drop a build before it
    /// is staged (another build kept, a tier-up's code), staging reads it
    /// from disk (a cluster member fetches one not on disk yet) or compiles
    /// it on the caller's thread — slower, and never waiting for the lock.
    pub fn stages_at_once(&self, blueprint: &crate::request::Blueprint) -> bool {
        let mut bytes = 0;
        blueprint.builds().all(|build| {
            if !blueprint.force && self.runs_build(&build.module, &build.sha256) {
                return true;
            }
            let Some(sha256) = parse_sha256(&build.sha256) else { return true };
            let held = self.shared.artifacts.size_in_memory(&sha256);
            bytes += held.unwrap_or(0);
            held.is_some() && self.shared.engines.holds_compiled(&sha256) && bytes <= AT_ONCE_MAX_BYTES
        })
    }

    /// True when module `module` runs the build `sha256` (hex) now.
    pub fn runs_build(&self, module: &str, sha256: &str) -> bool {
        self.shared.registry.slot(module).is_some_and(|slot| slot.current().info.sha256 == sha256)
    }

    /// Calls `module.function` on the module's current version with `args` (JSON
    /// text) and returns its output (JSON text).
    pub fn call(&self, module: &str, function: &str, args: &str) -> Result<String, CallError> {
        let ctx = CallCtx::root(&self.shared.engines.clock, self.shared.config.limits.call_timeout);
        self.shared.registry.call(module, function, args, ctx)
    }

    /// Calls `module.function` of a component with Rust values and returns Rust
    /// values: the component model's types as wasmtime maps them (`u32`,
    /// `String`, `Vec<T>`, `Option<T>`, `Result<T, E>`, tuples, and types
    /// deriving `ComponentType`, `Lift` and `Lower`), parameters and results
    /// each as a tuple — `node.call_typed::<(u32, u32), (u32,)>("keeper",
    /// "add", (2, 3))`. The function is found on the module's current version
    /// at each call, so a reload never leaves a stale handle. Types that are
    /// not the function's are `InvalidArgs` naming its WIT type.
    pub fn call_typed<P, R>(&self, module: &str, function: &str, params: P) -> Result<R, CallError>
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: ComponentNamedList + Lift + Send + Sync + 'static,
    {
        let ctx = CallCtx::root(&self.shared.engines.clock, self.shared.config.limits.call_timeout);
        self.shared.registry.with_version(module, |version| version.call_typed(function, params, ctx))
    }

    pub fn status(&self) -> NodeStatus {
        let apps = self
            .shared
            .apps()
            .into_iter()
            .map(|app| AppStatus {
                modules: app.modules.iter().map(|m| m.name.clone()).collect(),
                name: app.name,
                dir: app.dir,
            })
            .collect();
        let modules = self
            .shared
            .registry
            .modules()
            .into_iter()
            .map(|(name, slot)| {
                let current = slot.current();
                let mut functions: Vec<String> = current.functions().map(str::to_string).collect();
                functions.sort();
                let pinned_by = self
                    .shared
                    .processes
                    .of_module(&name)
                    .into_iter()
                    .filter(|process| {
                        let on_canary = slot.canary().is_some_and(|canary| process.runs_on(&canary.version));
                        !process.runs_on(&current) && !on_canary && process.status().vsn.is_some()
                    })
                    .map(|process| process.name.clone())
                    .collect();
                let canary = slot.canary().map(|canary| {
                    let (calls, failures) = canary.version.counts.read();
                    CanaryStatus { version: canary.version.info(), share: canary.percent, calls, failures }
                });
                let (calls, failures) = current.counts.read();
                ModuleStatus {
                    app: self.shared.app_declaring(&name),
                    trial_until: self.shared.trials.until(&name),
                    share: 100 - canary.as_ref().map_or(0, |canary| canary.share),
                    calls,
                    failures,
                    canary,
                    name,
                    current: current.info(),
                    old: slot.old_versions(),
                    pinned_by,
                    functions,
                }
            })
            .collect();
        let extensions = self
            .shared
            .extensions
            .all()
            .into_iter()
            .map(|record| ExtensionStatus { loaded: self.shared.registry.slot(&record.name).is_some(), record })
            .collect();
        let processes = self.shared.processes.all().iter().map(|process| process.status()).collect();
        NodeStatus { apps, modules, extensions, processes }
    }

    /// The toolchains of `.js` and `.py` extensions (`extensions.javascript`,
    /// `extensions.python`): the tool each uses, or why there is none. A tool
    /// found is probed once (its version); a missing one is looked for again
    /// at each call.
    pub fn toolchains(&self) -> Vec<crate::build::source::ToolchainStatus> {
        self.shared.sources.status()
    }

    /// What `module.call` can call on module `module`'s current version, with
    /// the types; `None` when no such module is loaded.
    pub fn describe(&self, module: &str) -> Option<ModuleDescription> {
        let version = self.shared.registry.slot(module)?.current();
        let functions =
            version.signatures().into_iter().map(|(name, signature)| (name.to_string(), signature)).collect();
        Some(ModuleDescription {
            module: module.to_string(),
            vsn: version.info.vsn.clone(),
            kind: version.info.kind,
            functions,
        })
    }

    /// Starts process `name` on module `module`'s current version, passing `init`
    /// (JSON text) to its `zest_init`.
    pub fn start_process(&self, name: &str, module: &str, init: &str) -> Result<(), ProcessError> {
        self.shared.start_process(name, module, init)
    }

    /// Sends `message` (JSON text) to process `name` and waits for its reply, up
    /// to the call timeout (its turn in the mailbox included).
    pub fn call_process(&self, name: &str, message: &str) -> Result<String, ProcessError> {
        self.call_process_timeout(name, message, self.shared.config.limits.call_timeout)
    }

    /// [`Node::call_process`] with its own timeout.
    pub fn call_process_timeout(&self, name: &str, message: &str, timeout: Duration) -> Result<String, ProcessError> {
        let Some(process) = self.shared.processes.get(name) else {
            return Err(ProcessError::NotFound { process: name.to_string() });
        };
        process.call(message, timeout)
    }

    /// Stops process `name` once its current message is handled; messages still
    /// queued get `Down`. False when there is no such process.
    pub fn stop_process(&self, name: &str) -> bool {
        match self.shared.processes.remove(name) {
            Some(process) => {
                process.stop();
                true
            }
            None => false,
        }
    }

    /// Stops every process (a clean shutdown).
    pub fn stop_all_processes(&self) {
        for process in self.shared.processes.all() {
            self.stop_process(&process.name);
        }
    }
}
