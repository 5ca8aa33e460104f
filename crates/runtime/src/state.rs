//! What the node's parts share ([`Shared`]): its configuration, engines,
//! code server, stores, background threads, telemetry, processes, apps and
//! extensions, the reload lock, request ids, and the trials' book. The phases
//! (`reload/`) work on it; the `Node` owns it; host functions reach the
//! registry only through `code::host::Callee`, weakly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::background::Background;
use crate::build::app::{AppManifest, UnloadedApps};
use crate::build::extension::{Extensions, RustBuilds};
use crate::build::source::SourceBuilds;
use crate::code::host::{Callee, Capabilities, Env, Linkers};
use crate::code::ledger::{ModuleCalls, Serving};
use crate::code::process::{Process, ProcessTable};
use crate::code::registry::Registry;
use crate::code::version::Version;
use crate::config::NodeConfig;
use crate::engine::Engines;
use crate::error::{NodeError, ProcessError};
use crate::lock::{LockError, LockGuard, ReloadLock};
use crate::report::{Kind, ReloadResult};
use crate::request::{BuildRef, TrialSpec};
use crate::store::artifact::Artifacts;
use crate::store::history::History;
use crate::store::retention::{self, KEEP_BUILDS_PER_MODULE};
use crate::telemetry::Telemetry;
use crate::wasm::abi::check_name;

/// What the node's parts share; host functions hold it weakly.
pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    /// Shared with the pieces worker's jobs, which must not keep the node
    /// (and its data directory's lock) alive while they compile.
    pub(crate) engines: Arc<Engines>,
    pub(crate) registry: Arc<Registry>,
    /// What every store shares (limits, clock, the registry for nested calls).
    pub(crate) env: Arc<Env>,
    pub(crate) artifacts: Artifacts,
    /// Every committed change of a module's build.
    pub(crate) history: History,
    /// Reloads on trial.
    pub(crate) trials: Trials,
    /// Writes that follow a swap (compile cache, builds on disk), off its path.
    pub(crate) background: Background,
    /// The data directory's sweeps (`store/retention.rs`).
    sweeps: retention::Sweeps,
    /// Recompiles quiet Winch builds with Cranelift (`Compiler::Auto`).
    pub(crate) tiering: Background,
    /// Per module, the build its one pending tier-up job is for: the latest
    /// scheduled (`reload/module.rs`, `schedule_tier_up`).
    pub(crate) tier_ups: Mutex<HashMap<String, Weak<Version>>>,
    /// Compiles the pieces a build compiled wide left for after its swap
    /// (`Engines::compile_later`), so the next edit finds them.
    pub(crate) pieces: Background,
    pub(crate) telemetry: Telemetry,
    pub(crate) processes: ProcessTable,
    pub(crate) extensions: Extensions,
    pub(crate) rust: RustBuilds,
    /// `.js` and `.py` extensions' builds.
    pub(crate) sources: SourceBuilds,
    lock: Box<dyn ReloadLock>,
    /// The data directory's lock (`retention::claim`), held while the node lives.
    _data_dir_lock: Option<std::fs::File>,
    /// Loaded apps by name, with the manifest as last applied.
    apps: Mutex<BTreeMap<String, AppManifest>>,
    /// Apps unloaded and not loaded again, with the manifest they had (read
    /// again from their directory after a restart): a rollback of the unload
    /// loads them back (`reload/rollback.rs`).
    unloaded_apps: Mutex<BTreeMap<String, AppManifest>>,
    /// Where `unloaded_apps` is kept across restarts.
    unloaded_file: UnloadedApps,
    requests: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("config", &self.config).field("registry", &self.registry).finish()
    }
}

impl Shared {
    /// Everything a node is made of, started: the data directory claimed,
    /// the engines and their ticker, the history read back, the background
    /// threads. `watch_trials` is the trial watcher's body (`reload/trial.rs`),
    /// started on a thread of its own once a trial begins.
    pub(crate) fn new(
        config: NodeConfig,
        lock: Box<dyn ReloadLock>,
        capabilities: &Capabilities,
        watch_trials: fn(Weak<Shared>),
    ) -> Result<Shared, NodeError> {
        let data_dir_lock = config.data_dir.as_deref().map(retention::claim).transpose()?;
        let engines = Arc::new(Engines::new(&config)?);
        let rust =
            RustBuilds::new(config.extensions.rustc.clone(), config.data_dir.as_deref()).map_err(NodeError::TempDir)?;
        let sources = SourceBuilds::new(
            config.extensions.javascript.clone(),
            config.extensions.python.clone(),
            config.data_dir.as_deref(),
        )
        .map_err(NodeError::TempDir)?;
        let registry = Arc::new(Registry::default());
        let (history, recovered) = History::open(config.data_dir.as_deref());
        for problem in recovered.problems {
            tracing::warn!(%problem, "reading the history back");
        }
        let unloaded_file = UnloadedApps::new(config.data_dir.as_deref());
        let (manifests, problems) = unloaded_file.recover();
        for problem in problems {
            tracing::warn!(%problem, "reading the unloaded apps back");
        }
        let unloaded = manifests.into_iter().map(|manifest| (manifest.name.clone(), manifest)).collect();
        let registry_weak: Weak<Registry> = Arc::downgrade(&registry);
        let callee: Weak<dyn Callee> = registry_weak;
        let env = Arc::new(Env {
            limits: config.limits.clone(),
            clock: Arc::clone(&engines.clock),
            callee,
            ledger: Arc::default(),
            linkers: Linkers::new(&engines, capabilities).map_err(NodeError::Engine)?,
        });
        Ok(Shared {
            extensions: Extensions::new(config.data_dir.as_deref()),
            artifacts: Artifacts::new(config.data_dir.as_deref()),
            history,
            trials: Trials::new(watch_trials),
            background: Background::start("zest-writer", 0).map_err(NodeError::Background)?,
            sweeps: retention::Sweeps::default(),
            tiering: Background::start("zest-tier-up", 10).map_err(NodeError::Background)?,
            tier_ups: Mutex::default(),
            pieces: Background::start("zest-pieces", 10).map_err(NodeError::Background)?,
            rust,
            sources,
            config,
            engines,
            registry,
            env,
            telemetry: Telemetry::default(),
            processes: ProcessTable::default(),
            lock,
            _data_dir_lock: data_dir_lock,
            apps: Mutex::new(BTreeMap::new()),
            unloaded_apps: Mutex::new(unloaded),
            unloaded_file,
            requests: AtomicU64::new(0),
        })
    }

    /// Takes the node's reload lock, waiting up to `wait`.
    pub(crate) fn acquire(&self, wait: Duration) -> Result<LockGuard, LockError> {
        self.lock.acquire(wait)
    }

    /// `given`, or a request id no other request of this node carries (`r1`,
    /// `r2`, …).
    pub(crate) fn request_id(&self, given: Option<&str>) -> String {
        match given {
            Some(id) => id.to_string(),
            None => self.next_request_id(),
        }
    }

    /// Where a build of `module` with `vsn` serves now.
    fn serving(&self, module: &str, vsn: &str) -> Option<Serving> {
        let slot = self.registry.slot(module)?;
        if slot.current().info.vsn == vsn {
            return Some(Serving::Current);
        }
        slot.canary().filter(|canary| canary.version.info.vsn == vsn).map(|_| Serving::Canary)
    }

    /// Hands the calls made so far to the places their builds hold now: done
    /// before places change (a commit, a settle), so each call counts under
    /// the place its build held when it ran.
    pub(crate) fn place_calls(&self) {
        self.env.ledger.place(&|module, vsn| self.serving(module, vsn));
    }

    /// Each module's calls by place, and its builds by place
    /// (`zest_calls_total`, `zest_module_version_info`).
    pub(crate) fn module_calls(&self) -> Vec<ModuleCalls> {
        let loaded = self
            .registry
            .modules()
            .into_iter()
            .map(|(name, slot)| {
                let mut versions = vec![(Serving::Current, slot.current().info.vsn.clone())];
                versions.extend(slot.canary().map(|canary| (Serving::Canary, canary.version.info.vsn.clone())));
                let mut old: Vec<String> = slot.old_versions().into_iter().map(|old| old.vsn).collect();
                // Two old builds of one vsn are one series.
                old.sort_unstable();
                old.dedup();
                versions.extend(old.into_iter().map(|vsn| (Serving::Old, vsn)));
                (name, versions)
            })
            .collect();
        self.env.ledger.module_calls(loaded, &|module, vsn| self.serving(module, vsn))
    }

    /// A request id no other request of this node carries (`r1`, `r2`, …).
    pub(crate) fn next_request_id(&self) -> String {
        format!("r{}", self.requests.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Starts a process (the API and app manifests alike).
    pub(crate) fn start_process(&self, name: &str, module: &str, init: &str) -> Result<(), ProcessError> {
        check_name(name).map_err(|message| ProcessError::Start { module: module.to_string(), message })?;
        if self.processes.get(name).is_some() {
            return Err(ProcessError::AlreadyExists { process: name.to_string() });
        }
        let Some(slot) = self.registry.slot(module) else {
            let message = format!("module `{module}` is not loaded");
            return Err(ProcessError::Start { module: module.to_string(), message });
        };
        let process = Process::start(name, &slot.current(), init, self.config.restart.clone())?;
        self.processes.insert(process)?;
        Ok(())
    }

    /// Queues a sweep of the data directory (`store/retention.rs`) after the
    /// writes already queued. The job holds the node weakly: a node gone by
    /// then sweeps nothing.
    pub(crate) fn sweep_later(self: &Arc<Self>) {
        let Some(data_dir) = self.config.data_dir.clone() else { return };
        let node = Arc::downgrade(self);
        self.sweeps.later(data_dir, &self.background, move || node.upgrade().map(|shared| shared.kept_builds()));
    }

    /// Hex sha256 of every build the node must keep: those of the newest
    /// builds each module's history names, and every build serving now.
    fn kept_builds(&self) -> HashSet<String> {
        let mut kept = self.history.recent_builds(KEEP_BUILDS_PER_MODULE);
        for (_, slot) in self.registry.modules() {
            kept.insert(slot.current().info.sha256.clone());
            if let Some(canary) = slot.canary() {
                kept.insert(canary.version.info.sha256.clone());
            }
            kept.extend(slot.old_versions().into_iter().map(|info| info.sha256));
        }
        kept
    }

    pub(crate) fn app(&self, name: &str) -> Option<AppManifest> {
        self.apps.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    pub(crate) fn apps(&self) -> Vec<AppManifest> {
        self.apps.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    pub(crate) fn app_names(&self) -> Vec<String> {
        self.apps.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// The app that declares module `module`, if any.
    pub(crate) fn app_declaring(&self, module: &str) -> Option<String> {
        let apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.values().find(|app| app.modules.iter().any(|m| m.name == module)).map(|app| app.name.clone())
    }

    pub(crate) fn record_app(&self, manifest: AppManifest) {
        self.unloaded_change(|unloaded| unloaded.remove(&manifest.name).is_some());
        self.apps.lock().unwrap_or_else(PoisonError::into_inner).insert(manifest.name.clone(), manifest);
    }

    /// Forgets loaded app `name` (an unload), keeping its manifest, on disk
    /// too, for a rollback of the unload.
    pub(crate) fn forget_app(&self, name: &str) {
        let manifest = self.apps.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        if let Some(manifest) = manifest {
            self.unloaded_change(|unloaded| {
                unloaded.insert(name.to_string(), manifest);
                true
            });
        }
    }

    /// Keeps `manifest` as an unloaded app (one a cluster member did not
    /// load), unless an app of its name is loaded.
    pub(crate) fn keep_unloaded_app(&self, manifest: AppManifest) {
        let apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        if !apps.contains_key(&manifest.name) {
            let dir = manifest.dir.clone();
            self.unloaded_change(|unloaded| {
                unloaded.insert(manifest.name.clone(), manifest).is_none_or(|before| before.dir != dir)
            });
        }
    }

    /// Changes the unloaded apps with `change`, and writes them to disk when
    /// it says that changed what the file holds.
    fn unloaded_change(&self, change: impl FnOnce(&mut BTreeMap<String, AppManifest>) -> bool) {
        let mut unloaded = self.unloaded_apps.lock().unwrap_or_else(PoisonError::into_inner);
        if change(&mut unloaded) {
            if let Err(problem) = self.unloaded_file.save(&unloaded) {
                tracing::warn!(%problem, "the unloaded apps are not kept on disk: after a restart a rollback cannot find them");
            }
        }
    }

    /// The manifest app `name` had when it was unloaded, if it was (and was
    /// not loaded again since).
    pub(crate) fn unloaded_app(&self, name: &str) -> Option<AppManifest> {
        self.unloaded_apps.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    /// The unloaded app whose manifest declared module `module`, if any.
    pub(crate) fn unloaded_app_declaring(&self, module: &str) -> Option<String> {
        let apps = self.unloaded_apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.values().find(|app| app.modules.iter().any(|m| m.name == module)).map(|app| app.name.clone())
    }
}

/// The trials' book: the reloads on trial, and whether their watcher runs.
#[derive(Debug)]
pub(crate) struct Trials {
    pub(crate) running: Mutex<Vec<Trial>>,
    watcher: Mutex<bool>,
    /// The watcher's body (`reload/trial.rs`): the book starts it, it drives
    /// the reverts and promotions. A function pointer turns the loop around:
    /// the phases record trials, the watcher drives the phases.
    watch: fn(Weak<Shared>),
}

#[derive(Debug)]
pub(crate) struct Trial {
    pub(crate) request_id: String,
    pub(crate) kind: Kind,
    pub(crate) target: String,
    pub(crate) spec: TrialSpec,
    pub(crate) until: Instant,
    pub(crate) until_wall: SystemTime,
    pub(crate) watched: Vec<Watched>,
    /// A canary: promoted at the end, dropped on failure.
    pub(crate) canary: bool,
}

#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) module: String,
    /// Weak: a newer reload of the module ends the trial (superseded).
    pub(crate) version: Weak<Version>,
    /// `(calls, failures)` when the trial started.
    pub(crate) baseline: (u64, u64),
    /// The build it replaced (`None` for a module new in this reload, which a
    /// revert leaves alone) .
    pub(crate) revert_to: Option<BuildRef>,
}

impl Trials {
    fn new(watch: fn(Weak<Shared>)) -> Trials {
        Trials { running: Mutex::default(), watcher: Mutex::new(false), watch }
    }

    /// When the trial watching `module` ends, if one does.
    pub(crate) fn until(&self, module: &str) -> Option<SystemTime> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.iter().find(|t| t.watched.iter().any(|w| w.module == module)).map(|t| t.until_wall)
    }
}

/// Starts watching what `result` (of a reload with `spec`) swapped in.
pub(crate) fn start_trial(
    shared: &Arc<Shared>,
    spec: &TrialSpec,
    canary: bool,
    request_id: &str,
    result: &ReloadResult,
) {
    let mut watched = Vec::new();
    for swap in &result.metadata.swaps {
        let Some(slot) = shared.registry.slot(&swap.module) else { continue };
        let version = if canary { slot.canary().map(|c| Arc::clone(&c.version)) } else { Some(slot.current()) };
        let Some(version) = version.filter(|v| v.info.sha256 == swap.sha256) else { continue };
        version.on_trial.store(true, std::sync::atomic::Ordering::Relaxed);
        let revert_to = swap.from.as_ref().map(|from| BuildRef {
            module: swap.module.clone(),
            sha256: from.sha256.clone(),
            vsn: from.vsn.clone(),
            source: from.source.clone(),
        });
        let baseline = version.counts.read();
        watched.push(Watched { module: swap.module.clone(), baseline, version: Arc::downgrade(&version), revert_to });
    }
    if watched.is_empty() {
        return;
    }
    let trial = Trial {
        request_id: request_id.to_string(),
        kind: result.kind,
        target: result.target.clone(),
        spec: spec.clone(),
        until: Instant::now() + spec.window,
        until_wall: SystemTime::now() + spec.window,
        watched,
        canary,
    };
    shared.trials.running.lock().unwrap_or_else(PoisonError::into_inner).push(trial);
    shared.env.ledger.alarm.armed.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut started = shared.trials.watcher.lock().unwrap_or_else(PoisonError::into_inner);
    if !*started {
        let (node, watch) = (Arc::downgrade(shared), shared.trials.watch);
        if std::thread::Builder::new().name("zest-trials".into()).spawn(move || watch(node)).is_ok() {
            *started = true;
        }
    }
    drop(started);
    shared.env.ledger.alarm.ring();
}
