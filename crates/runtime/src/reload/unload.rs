//! One module leaving the node ([`UnloadStep`]): a module of `system.unload`
//! (an extension's, or each of an app's), or a module an app reload finds its
//! manifest no longer declares (CONTRACT.md §4, §5).
//!
//! An unload is a purge that removes the name. Applied ([`apply`]), the
//! module leaves the registry — new calls, nested ones too, get
//! `ModuleNotFound` — and its processes are retired: each finishes the
//! message it is handling, and the messages queued behind get `NotFound`.
//! Drained ([`drain`]), every version of the module is waited for up to the
//! drain deadline, as a purge waits; one still busy then is skipped with
//! `in_use` and goes when its last call returns. Its call counts leave the
//! ledger. The build it ran stays kept (the history names it), so a rollback
//! can load it back.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use crate::build::app::AppManifest;
use crate::code::life::Life;
use crate::reason::{Failure, Reason, Skip};
use crate::report::{Kind, ReloadResult};
use crate::state::Shared;
use crate::store::history::{Action, BuildId, Change};

/// One module to unload, and once applied, what is left to drain.
pub(crate) struct UnloadStep {
    /// A child result of kind `module`.
    pub(crate) result: ReloadResult,
    /// The build serving when the step was planned (history's `from`);
    /// `None` for a module that was not loaded (a recorded extension that
    /// failed to load: only its record goes).
    from: Option<BuildId>,
    /// Once applied: the versions to wait for.
    lives: Vec<Arc<Life>>,
    applied: bool,
    elapsed: Duration,
}

/// The step of unloading module `name`.
pub(crate) fn plan(shared: &Shared, name: &str) -> UnloadStep {
    let from = shared.registry.slot(name).map(|slot| {
        let info = slot.current().info.clone();
        BuildId { vsn: info.vsn, sha256: info.sha256, source: info.source }
    });
    UnloadStep {
        result: ReloadResult::new(Kind::Module, name),
        from,
        lives: Vec::new(),
        applied: false,
        elapsed: Duration::ZERO,
    }
}

/// The modules app `manifest.name` declared as last applied that `manifest`
/// no longer declares and that are loaded: each to unload.
pub(crate) fn dropped(shared: &Shared, manifest: &AppManifest) -> Vec<UnloadStep> {
    let Some(previous) = shared.app(&manifest.name) else {
        return Vec::new();
    };
    previous
        .modules
        .iter()
        .filter(|old| !manifest.modules.iter().any(|new| new.name == old.name))
        .filter(|old| shared.registry.slot(&old.name).is_some())
        .map(|old| plan(shared, &old.name))
        .collect()
}

/// Takes the module out: out of the registry (new calls get
/// `ModuleNotFound`), its processes retired (queued messages get
/// `NotFound`), its pending tier-up forgotten. Returns at once; [`drain`]
/// waits for what still runs.
pub(crate) fn apply(shared: &Shared, step: &mut UnloadStep) {
    let started = Instant::now();
    let name = step.result.target.clone();
    if let Some(slot) = shared.registry.remove(&name) {
        step.lives = slot.lives();
    }
    for process in shared.processes.of_module(&name) {
        if let Some(process) = shared.processes.remove(&process.name) {
            process.retire();
        }
    }
    shared.tier_ups.lock().unwrap_or_else(PoisonError::into_inner).remove(&name);
    step.applied = true;
    step.result.metadata.unloaded.push(name);
    step.elapsed += started.elapsed();
}

/// Waits (until `deadline`) for every version of an applied step to go: the
/// calls in flight and the messages processes were handling finish on them.
/// One still busy after that is skipped with `in_use` and goes when it
/// drains. The module's call counts leave the ledger.
pub(crate) fn drain(shared: &Shared, step: &mut UnloadStep, deadline: Instant) {
    if !step.applied {
        return;
    }
    let started = Instant::now();
    let name = step.result.target.clone();
    for life in std::mem::take(&mut step.lives) {
        if !life.wait_gone(deadline) {
            tracing::warn!(module = %name, "an unloaded version is still in use after the drain timeout");
            step.result.skipped.push(Skip { target: name.clone(), reason: Reason::InUse });
        }
    }
    shared.env.ledger.forget(&name);
    step.elapsed += started.elapsed();
}

impl UnloadStep {
    /// Leaves the module as it is (an atomic request that failed, an aborted
    /// plan): `message` says why.
    pub(crate) fn roll_back(&mut self, message: &str) {
        let name = self.result.target.clone();
        self.result.errors.push(Failure::new(name, Reason::RolledBack, message));
    }

    /// The history entry of an applied step that unloaded a build.
    pub(crate) fn change(&self, request_id: &str) -> Option<Change> {
        let from = self.from.clone().filter(|_| self.applied)?;
        Some(Change {
            module: self.result.target.clone(),
            action: Action::Unload,
            from: Some(from),
            to: None,
            request_id: request_id.to_string(),
        })
    }

    /// The child result, with the time this step took.
    pub(crate) fn finish(mut self) -> ReloadResult {
        self.result.duration = self.elapsed;
        self.result
    }
}
