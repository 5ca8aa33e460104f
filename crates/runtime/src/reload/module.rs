//! One module's part of a reload: stage the new build off the call path, commit
//! (swap it in and migrate the module's processes), settle (keep or undo), purge
//! (wait for old versions to drain). `reload/plan.rs` drives these for every
//! module of a plan.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::migrate::{self, Held};
use crate::code::registry::Slot;
use crate::code::version::Version;
use crate::config::Compiler;
use crate::reason::{Failure, Reason, Skip};
use crate::report::{FunctionChange, Kind, PlanEntry, ReloadResult, Swap};
use crate::request::{BuildRef, Direction};
use crate::state::Shared;
use crate::store::artifact::{parse_sha256, Bytes};
use crate::store::history::BuildId;

/// What committing a step does to its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The staged build becomes current.
    Swap,
    /// The staged build runs beside the current one for this share (%).
    Canary(u32),
    /// The module's canary (staged here) becomes current for everyone.
    Promote,
    /// The module's canary stops; the current build (staged here) keeps serving.
    DropCanary,
}

/// A module step in progress: its child result and, once staged, the new build.
pub(crate) struct ModuleStep {
    pub(crate) result: ReloadResult,
    pub(crate) mode: Mode,
    staged: Option<Staged>,
    /// The canary's share, for undoing a promotion or a drop.
    canary_percent: u32,
    slot: Option<Arc<Slot>>,
    /// Once committed: the version now current, and the one it replaced (`None`
    /// for a module loaded for the first time), kept until the request settles.
    swapped: Option<(Arc<Version>, Option<Arc<Version>>)>,
    /// Processes migrated and held suspended until an atomic request settles.
    held: Vec<Held>,
    elapsed: Duration,
}

struct Staged {
    version: Arc<Version>,
    callables: crate::wasm::abi::Callables,
    compiled: bool,
    /// Pieces to compile after the swap ([`crate::engine::Loaded::later`]).
    later: Option<crate::wasm::split::Split>,
}

impl ModuleStep {
    pub(crate) fn failed(&self) -> bool {
        !self.result.errors.is_empty()
    }

    /// Whether settling this committed step waits for nothing now: it holds
    /// no process, and its module's old versions are drained but for the one
    /// it replaced, which nothing but this step holds any more.
    pub(crate) fn settles_at_once(&self) -> bool {
        let previous = self.swapped.as_ref().and_then(|(_, previous)| previous.as_ref());
        self.held.is_empty() && self.slot.as_ref().is_none_or(|slot| slot.drained_but(previous))
    }

    /// A build is staged and waits for commit.
    pub(crate) fn is_staged(&self) -> bool {
        self.staged.is_some()
    }

    /// The build this step stands for — the staged one, or the current one of a
    /// module found unchanged — as other members fetch it; `None` when it failed.
    pub(crate) fn build_ref(&self, shared: &Shared) -> Option<BuildRef> {
        if self.failed() {
            return None;
        }
        let version = match &self.staged {
            Some(staged) => Arc::clone(&staged.version),
            None => shared.registry.slot(&self.result.target)?.current(),
        };
        let info = &version.info;
        Some(BuildRef {
            module: info.module.clone(),
            sha256: info.sha256.clone(),
            vsn: info.vsn.clone(),
            source: info.source.clone(),
        })
    }

    /// What committing this step would change, for a dry run; `None` when
    /// nothing is staged.
    pub(crate) fn preview(&self, shared: &Shared) -> Option<PlanEntry> {
        let staged = &self.staged.as_ref()?.version;
        let current = shared.registry.slot(&self.result.target).map(|slot| slot.current());
        let names = |version: &Version| -> std::collections::BTreeSet<String> {
            version.functions().map(str::to_string).collect()
        };
        let (new, old) = (names(staged), current.as_deref().map(names).unwrap_or_default());
        let processes = shared
            .processes
            .of_module(&self.result.target)
            .iter()
            .map(|process| (process.name.clone(), process.can_migrate_to(staged)))
            .collect();
        Some(PlanEntry {
            module: self.result.target.clone(),
            from: current.as_ref().map(|c| (c.info.vsn.clone(), c.info.sha256.clone())),
            to: (staged.info.vsn.clone(), staged.info.sha256.clone()),
            exports_added: new.difference(&old).cloned().collect(),
            exports_removed: old.difference(&new).cloned().collect(),
            functions_changed: current.as_deref().map(|current| changed_types(current, staged)).unwrap_or_default(),
            processes,
        })
    }

    /// Drops the staged build, quietly (a dry run).
    pub(crate) fn discard(&mut self) {
        self.staged = None;
    }

    /// Drops the staged build without swapping it (`message` says why).
    pub(crate) fn roll_back(&mut self, message: &str) {
        if self.staged.take().is_some() {
            let name = self.result.target.clone();
            self.result.errors.push(Failure::new(name, Reason::RolledBack, message));
        }
    }

    /// The child result, with the time this step took.
    pub(crate) fn finish(mut self) -> ReloadResult {
        self.result.duration = self.elapsed;
        self.result
    }
}

/// How a step stages its build: `force` reloads an unchanged build too;
/// `allow_breaking` lets it remove a callable or change its type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rules {
    pub(crate) force: bool,
    pub(crate) allow_breaking: bool,
}

impl Rules {
    pub(crate) fn of(options: &crate::request::ReloadOptions) -> Rules {
        Rules { force: options.force, allow_breaking: options.allow_breaking }
    }
}

/// What `new` breaks of `old`'s callables (CONTRACT.md §5): each one it
/// removes, each whose type it changes, with both types; `None` when nothing.
fn breaks(old: &Version, new: &Version) -> Option<String> {
    let mut broken = Vec::new();
    if old.is_component() || new.is_component() {
        let new_types = new.signatures();
        for (name, from) in old.signatures() {
            match new_types.get(name) {
                None => broken.push(format!("`{name}` {} is removed", from.wit())),
                Some(to) if to.shape != from.shape => {
                    broken.push(format!("`{name}` changes from {} to {}", from.wit(), to.wit()))
                }
                Some(_) => {}
            }
        }
    } else {
        // Core modules' callables all take and return JSON: only a removal
        // breaks. Most builds keep the list as it was, which is quick to see.
        if old.exports().callables == new.exports().callables {
            return None;
        }
        let new_names = &new.exports().functions;
        let mut removed: Vec<&str> = old.functions().filter(|name| !new_names.contains_key(*name)).collect();
        removed.sort_unstable();
        broken.extend(removed.iter().map(|name| format!("`{name}` func(args: json) -> json is removed")));
    }
    (!broken.is_empty()).then(|| {
        format!("the new build breaks callers: {}; reload with allow_breaking to swap it anyway", broken.join("; "))
    })
}

/// The callables both builds have whose type `new` changes.
fn changed_types(old: &Version, new: &Version) -> Vec<FunctionChange> {
    if !old.is_component() && !new.is_component() {
        return Vec::new();
    }
    let new_types = new.signatures();
    old.signatures()
        .into_iter()
        .filter_map(|(name, from)| {
            let to = new_types.get(name).filter(|to| to.shape != from.shape)?;
            Some(FunctionChange { name: name.to_string(), from: from.wit(), to: to.wit() })
        })
        .collect()
}

/// A module's build, read: where it comes from (recorded as the version's
/// source), its bytes, and whether they are wat text.
pub(crate) struct Build {
    pub(crate) source: PathBuf,
    pub(crate) bytes: Bytes,
    pub(crate) is_text: bool,
}

/// Stages module `name` from `source` (or from where it was loaded from): reads
/// the build, then [`plan_build`].
pub(crate) fn plan(shared: &Arc<Shared>, name: &str, source: Option<&Path>, rules: Rules) -> ModuleStep {
    let started = Instant::now();
    match read_build(shared, name, source) {
        Ok(build) => plan_build(shared, name, build, rules, started),
        Err(failure) => {
            let mut result = ReloadResult::new(Kind::Module, name);
            result.errors.push(failure);
            ModuleStep::new(result, None, started)
        }
    }
}

/// Stages module `name` from `build`: compares its sha256 with the current
/// version's, compiles it or loads it from the compile cache, validates and
/// instantiates it. The registry is not touched.
pub(crate) fn plan_build(shared: &Arc<Shared>, name: &str, build: Build, rules: Rules, started: Instant) -> ModuleStep {
    let mut result = ReloadResult::new(Kind::Module, name);
    let staged = match stage(shared, name, build, rules) {
        Ok(Some(staged)) => Some(staged),
        Ok(None) => {
            result.metadata.unchanged.push(name.to_string());
            None
        }
        Err(failure) => {
            result.errors.push(failure);
            None
        }
    };
    ModuleStep::new(result, staged, started)
}

/// Stages module `build.module` from the build named by its sha256, as the
/// coordinator of a cluster staged it: unchanged when the module runs that
/// build already (unless `force`), else from the bytes the node holds.
pub(crate) fn plan_ref(shared: &Arc<Shared>, build: &BuildRef, rules: Rules) -> ModuleStep {
    let started = Instant::now();
    let name = build.module.as_str();
    let fail = |reason, message: String| {
        let mut result = ReloadResult::new(Kind::Module, name);
        result.errors.push(Failure::new(name, reason, message));
        ModuleStep::new(result, None, started)
    };
    if let Err(message) = crate::wasm::abi::check_name(name) {
        return fail(Reason::InvalidModule, message);
    }
    let Some(sha256) = parse_sha256(&build.sha256) else {
        return fail(Reason::InvalidModule, format!("`{}` is not a sha256", build.sha256));
    };
    let current = shared.registry.slot(name).map(|slot| slot.current());
    if !rules.force && current.is_some_and(|current| current.sha256 == sha256) {
        let mut result = ReloadResult::new(Kind::Module, name);
        result.metadata.unchanged.push(name.to_string());
        return ModuleStep::new(result, None, started);
    }
    let Some(bytes) = shared.artifacts.get(&sha256) else {
        let keeps = crate::store::retention::KEEP_BUILDS_PER_MODULE;
        let message = format!(
            "this node does not hold build {} of `{name}` (it keeps each module's last {keeps} builds)",
            build.sha256
        );
        return fail(Reason::NotFound, message);
    };
    let is_text = !bytes.starts_with(b"\0asm");
    let rules = Rules { force: true, ..rules };
    plan_build(shared, name, Build { source: build.source.clone(), bytes, is_text }, rules, started)
}

impl ModuleStep {
    fn new(result: ReloadResult, staged: Option<Staged>, started: Instant) -> ModuleStep {
        ModuleStep {
            result,
            mode: Mode::Swap,
            staged,
            canary_percent: 0,
            slot: None,
            swapped: None,
            held: Vec::new(),
            elapsed: started.elapsed(),
        }
    }

    /// A step that promotes module `name`'s canary, or drops it
    /// (`Mode::DropCanary`); an error when the module runs no canary.
    pub(crate) fn of_canary(shared: &Shared, name: &str, mode: Mode) -> ModuleStep {
        let started = Instant::now();
        let mut result = ReloadResult::new(Kind::Module, name);
        let slot = shared.registry.slot(name);
        let Some((slot, canary)) = slot.and_then(|slot| slot.canary().map(|canary| (slot, canary))) else {
            let what = if mode == Mode::Promote { "promote" } else { "drop" };
            result.errors.push(Failure::new(name, Reason::NotFound, format!("`{name}` runs no canary to {what}")));
            return ModuleStep::new(result, None, started);
        };
        let version = if mode == Mode::Promote { Arc::clone(&canary.version) } else { slot.current() };
        let staged = Staged { version, callables: Vec::new().into(), compiled: false, later: None };
        let mut step = ModuleStep::new(result, Some(staged), started);
        step.mode = mode;
        step.canary_percent = canary.percent;
        step
    }
}

fn stage(shared: &Arc<Shared>, name: &str, build: Build, rules: Rules) -> Result<Option<Staged>, Failure> {
    check_size(shared, name, &build.source, build.bytes.len() as u64)?;
    let sha256: [u8; 32] = Sha256::digest(&build.bytes).into();
    if let Some(canary) = shared.registry.slot(name).and_then(|slot| slot.canary()) {
        let message = format!(
            "`{name}` runs a canary (vsn {}, {}% of calls): promote it or roll it back before reloading",
            canary.version.info.vsn, canary.percent
        );
        return Err(Failure::new(name, Reason::InUse, message));
    }
    if let Some(slot) = shared.registry.slot(name) {
        let current = slot.current();
        if !rules.force && current.sha256 == sha256 && current.info.source == build.source {
            return Ok(None);
        }
    }
    let loaded = shared
        .engines
        .load(&sha256, &build.bytes, build.is_text, &build.source)
        .map_err(|(reason, message)| Failure::new(name, reason, message))?;
    if let Some((compiled, pieces)) = loaded.pieces {
        tracing::debug!(module = name, compiled, pieces, "compiled by pieces; the others were a recent build's");
    }
    let version = Version::new(&shared.env, name, &build.source, sha256, &loaded)
        .map_err(|message| Failure::new(name, Reason::InvalidModule, message))?;
    if !rules.allow_breaking {
        if let Some(message) = shared.registry.slot(name).and_then(|slot| breaks(&slot.current(), &version)) {
            return Err(Failure::new(name, Reason::BreakingChange, message));
        }
    }
    // Held for other members of a cluster, and for a later rollback.
    shared.artifacts.keep(&sha256, build.bytes);
    let version = Arc::new(version);
    Ok(Some(Staged { version, callables: loaded.callables, compiled: loaded.compiled, later: loaded.later }))
}

/// Swaps the staged build in; the next call gets it. No-op for a step that
/// staged nothing.
pub(crate) fn commit(shared: &Arc<Shared>, step: &mut ModuleStep) {
    let Some(staged) = step.staged.take() else {
        return;
    };
    let started = Instant::now();
    let name = step.result.target.clone();
    let current = shared.registry.slot(&name).map(|slot| slot.current());
    let canary = shared.registry.slot(&name).and_then(|slot| slot.canary());
    // What served before (for the history), and what undoing puts back.
    let previous = match step.mode {
        Mode::DropCanary => canary.as_ref().map(|canary| Arc::clone(&canary.version)),
        _ => current.clone(),
    };
    if let (Mode::Canary(_), None) = (step.mode, &current) {
        let message = format!("a canary runs beside a current build: load `{name}` first");
        step.result.errors.push(Failure::new(&name, Reason::NotFound, message));
        return;
    }
    let old_vsn = previous.as_ref().map(|version| version.info.vsn.clone());
    let from = previous.as_ref().map(|version| BuildId {
        vsn: version.info.vsn.clone(),
        sha256: version.info.sha256.clone(),
        source: version.info.source.clone(),
    });
    let info = staged.version.info.clone();
    step.swapped = Some((Arc::clone(&staged.version), previous));
    let slot = match step.mode {
        Mode::Swap => shared.registry.install(&name, Arc::clone(&staged.version)),
        Mode::Canary(percent) => {
            let slot = shared.registry.slot(&name).expect("checked above");
            slot.set_canary(Arc::clone(&staged.version), percent);
            slot
        }
        Mode::Promote => {
            let slot = shared.registry.slot(&name).expect("a promotion has its canary");
            slot.take_canary();
            shared.registry.install(&name, Arc::clone(&staged.version))
        }
        Mode::DropCanary => {
            let slot = shared.registry.slot(&name).expect("a drop has its canary");
            slot.clear_canary();
            slot
        }
    };
    if staged.compiled {
        // After the swap, so serialising never delays the new code; and only for a
        // build that validated, so a refused build is never cached.
        let background = &shared.background;
        shared.engines.remember(
            &staged.version.sha256,
            &staged.version.compiled(),
            &staged.callables,
            info.compiler,
            background,
        );
    }
    shared.artifacts.persist(&staged.version.sha256, &shared.background);
    let tiers_up = (shared.config.compiler, info.compiler) == (Compiler::Auto, Compiler::Winch);
    let tier_up_after = shared.config.tier_up_after.filter(|_| tiers_up);
    match staged.later {
        // A build compiled wide: its pieces first, for the next edit; the
        // quiet moment before a tier-up counts from when they are done.
        Some(split) => {
            // The job holds the engines, not the node: a node dropped
            // meanwhile lets go of its data directory at once, and the job
            // stops at the next piece.
            let (node, version, compiler) = (Arc::downgrade(shared), Arc::downgrade(&staged.version), info.compiler);
            let (engines, module) = (Arc::clone(&shared.engines), name.clone());
            shared.pieces.run(move || {
                let started = Instant::now();
                // Before each piece, it yields to any reload loading a build.
                let alive = || node.strong_count() > 0;
                let compiled = engines.compile_later(&split, compiler, || engines.wait_while_loading(alive));
                let ms = started.elapsed().as_secs_f64() * 1e3;
                tracing::debug!(%module, compiled, ms, "compiled a wide build's pieces");
                if let (Some(quiet), Some(shared), Some(version)) = (tier_up_after, node.upgrade(), version.upgrade()) {
                    schedule_tier_up(&shared, &version, quiet);
                }
            });
        }
        None => {
            if let Some(quiet) = tier_up_after {
                schedule_tier_up(shared, &staged.version, quiet);
            }
        }
    }
    step.result.reloaded.push(name.clone());
    step.result.metadata.swaps.push(Swap {
        module: name,
        old_vsn,
        new_vsn: info.vsn,
        sha256: info.sha256,
        from,
        source: info.source,
        compiler: info.compiler,
        compiled: staged.compiled,
    });
    step.slot = Some(slot);
    step.elapsed += started.elapsed();
}

/// Tiers `version` up ([`tier_up`]) once `quiet` has passed, and then no
/// reload has loaded a build for as long: a tier-up's compile is long, and
/// beside a reload's it would slow it.
///
/// A module has one pending job, for its latest build: a reload meanwhile
/// only names the new build (a job per reload held each build's allocation
/// for the quiet period: about 1 KB a reload when reloading fast).
fn schedule_tier_up(shared: &Arc<Shared>, version: &Arc<Version>, quiet: std::time::Duration) {
    let name = version.info.module.clone();
    let mut pending = shared.tier_ups.lock().unwrap_or_else(PoisonError::into_inner);
    if pending.insert(name.clone(), Arc::downgrade(version)).is_none() {
        drop(pending);
        schedule_tier_up_in(shared, name, quiet, quiet);
    }
}

fn schedule_tier_up_in(shared: &Arc<Shared>, name: String, wait: std::time::Duration, quiet: std::time::Duration) {
    let node = Arc::downgrade(shared);
    shared.tiering.run_at(Instant::now() + wait, move || {
        let Some(shared) = node.upgrade() else { return };
        let pending = || shared.tier_ups.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(version) = pending().get(&name).cloned() else { return };
        let current = version.upgrade().filter(|version| is_current(&shared, version));
        if let Some(wait) = current.as_ref().and_then(|_| shared.engines.busy_for(quiet)) {
            return schedule_tier_up_in(&shared, name, wait, quiet);
        }
        drop(current);
        // The job ends here, unless a reload named a newer build meanwhile.
        let mut jobs = pending();
        if !jobs.get(&name).is_some_and(|latest| latest.ptr_eq(&version)) {
            drop(jobs);
            return schedule_tier_up_in(&shared, name, quiet, quiet);
        }
        jobs.remove(&name);
        drop(jobs);
        tier_up(&shared, &version);
    });
}

/// Whether `version` is what its module runs.
fn is_current(shared: &Shared, version: &Arc<Version>) -> bool {
    let current = shared.registry.slot(&version.info.module).map(|slot| slot.current());
    current.is_some_and(|current| Arc::ptr_eq(&current, version))
}

/// Replaces a Winch build's machine code by Cranelift's, if its module still
/// runs it (a newer build has a tier-up of its own coming). The long compile
/// holds the version weakly: a reload meanwhile drains it without waiting for
/// the compile (it did wait, up to the drain timeout, when the compile held
/// it); the code then goes to the compile cache, and to the version if it is
/// still there.
fn tier_up(shared: &Shared, version: &Weak<Version>) {
    let Some((name, sha256)) =
        version.upgrade().filter(|version| is_current(shared, version)).map(|v| (v.info.module.clone(), v.sha256))
    else {
        return;
    };
    let Some(bytes) = shared.artifacts.get(&sha256) else {
        return;
    };
    let started = Instant::now();
    let loaded = match shared.engines.load_with(Compiler::Cranelift, &sha256, &bytes) {
        Ok(loaded) => loaded,
        Err((_, message)) => {
            tracing::warn!(module = %name, %message, "cannot tier up: the build stays on Winch code");
            return;
        }
    };
    if loaded.compiled {
        let background = &shared.background;
        shared.engines.remember(&sha256, &loaded.code, &loaded.callables, Compiler::Cranelift, background);
    }
    let Some(version) = version.upgrade() else {
        return;
    };
    match version.tier_up(&loaded.code, Compiler::Cranelift) {
        Ok(()) => tracing::debug!(module = %name, vsn = %version.info.vsn, ms = started.elapsed().as_secs_f64() * 1e3,
            "tiered up to Cranelift code"),
        Err(message) => tracing::warn!(module = %name, %message, "cannot tier up"),
    }
}

/// Moves the module's processes onto the version the step made current (and any
/// process left behind by an earlier failed migration). With `hold` (an atomic
/// request) they stay suspended until [`settle`].
pub(crate) fn migrate(shared: &Arc<Shared>, step: &mut ModuleStep, force: bool, hold: bool, direction: Direction) {
    if step.failed() {
        return;
    }
    // Unchanged, the current version: processes left behind by a failed
    // migration still move on (unless a canary runs: its processes are where
    // they belong).
    let slot = shared.registry.slot(&step.result.target);
    let target = match &step.swapped {
        Some((version, _)) => Arc::clone(version),
        None => match &slot {
            Some(slot) if slot.canary().is_none() => slot.current(),
            _ => return,
        },
    };
    let started = Instant::now();
    let canary = |percent: u32| move |name: &str| crate::code::registry::process_to_canary(name, percent);
    let chosen = match step.mode {
        Mode::Canary(percent) => Some(canary(percent)),
        _ => None,
    };
    let chosen = chosen.as_ref().map(|f| f as &(dyn Fn(&str) -> bool + Sync));
    step.held = migrate::processes(shared, &target, force, hold, direction, chosen, &mut step.result);
    step.elapsed += started.elapsed();
}

/// Ends the step's part of the request: resumes held processes on their new
/// instances, or (`undo`, an atomic request that failed) on their old ones, and
/// puts the replaced version back.
pub(crate) fn settle(shared: &Arc<Shared>, step: &mut ModuleStep, undo: Option<&str>) {
    let Some(because) = undo else {
        step.held.drain(..).for_each(Held::commit);
        // The replaced version must not outlive what runs on it.
        step.swapped = None;
        return;
    };
    let message = format!("undone: {because}, and the reload is atomic");
    for held in step.held.drain(..) {
        let target = format!("process:{}", held.name());
        held.roll_back();
        step.result.errors.push(Failure::new(target, Reason::RolledBack, message.clone()));
    }
    if let Some((version, previous)) = step.swapped.take() {
        let name = step.result.target.clone();
        let slot = shared.registry.slot(&name);
        match (step.mode, previous, slot) {
            (Mode::Canary(_), _, Some(slot)) => {
                slot.clear_canary();
            }
            (Mode::Promote, Some(previous), Some(slot)) => {
                slot.restore(previous);
                slot.set_canary(version, step.canary_percent);
            }
            (Mode::DropCanary, Some(canary), Some(slot)) => slot.set_canary(canary, step.canary_percent),
            (_, Some(previous), Some(slot)) => slot.restore(previous),
            (_, None, _) => {
                shared.registry.remove(&name);
            }
            (_, Some(_), None) => {}
        }
        step.result.reloaded.retain(|module| *module != name);
        step.result.metadata.swaps.clear();
        step.result.errors.push(Failure::new(&name, Reason::RolledBack, message));
    }
}

/// Waits (until `deadline`) for the old versions of a committed step to drain;
/// with `hard`, interrupts what runs on them first. Those still busy are skipped
/// with `in_use` and go when they drain.
pub(crate) fn purge(step: &mut ModuleStep, deadline: Instant, hard: bool) {
    let Some(slot) = step.slot.take() else {
        return;
    };
    let started = Instant::now();
    let name = step.result.target.clone();
    for busy in slot.purge(deadline, hard) {
        tracing::warn!(module = %name, vsn = %busy.vsn, "old version still in use after the drain timeout");
        step.result.skipped.push(Skip { target: name.clone(), reason: Reason::InUse });
    }
    step.elapsed += started.elapsed();
}

/// Reads module `name`'s build from `source`, or from the file its current
/// version came from.
/// Refuses a build larger than `limits.module_mb`.
fn check_size(shared: &Shared, name: &str, source: &Path, bytes: u64) -> Result<(), Failure> {
    let limit = shared.config.limits.module_bytes();
    if bytes <= limit {
        return Ok(());
    }
    let message = format!(
        "{} is {:.1} MiB, over the limit of {} MiB (limits.module_mb)",
        source.display(),
        bytes as f64 / f64::from(1 << 20),
        shared.config.limits.module_mb
    );
    Err(Failure::new(name, Reason::InvalidModule, message))
}

fn read_build(shared: &Arc<Shared>, name: &str, source: Option<&Path>) -> Result<Build, Failure> {
    crate::wasm::abi::check_name(name).map_err(|message| Failure::new(name, Reason::InvalidModule, message))?;
    let path: PathBuf = match source {
        Some(path) => path.to_path_buf(),
        None => match shared.registry.slot(name) {
            Some(slot) => slot.current().info.source.clone(),
            None => return Err(Failure::new(name, Reason::NotFound, format!("module `{name}` is not loaded"))),
        },
    };
    let is_text = match path.extension().and_then(|ext| ext.to_str()) {
        Some("wat") => true,
        Some("wasm") => false,
        _ => {
            let message = format!("{}: a module must be a .wasm or .wat file", path.display());
            return Err(Failure::new(name, Reason::UnsupportedExtension, message));
        }
    };
    // The size first: a huge file is refused before it is read.
    if let Ok(meta) = std::fs::metadata(&path) {
        if meta.is_file() {
            check_size(shared, name, &path, meta.len())?;
        }
    }
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Build { source: path, bytes: bytes.into(), is_text }),
        Err(err) if err.kind() == std::io::ErrorKind::IsADirectory => {
            let message = format!("{}: is a directory, not a module file", path.display());
            Err(Failure::new(name, Reason::NotAFile, message))
        }
        Err(err) => {
            let message = format!("cannot read {}: {err}", path.display());
            Err(Failure::new(name, Reason::Enoent, message))
        }
    }
}
