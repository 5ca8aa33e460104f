//! Rollback (CONTRACT.md §11): a module, or every module of an app, back to an
//! earlier build the history names — by default the build the newest entry
//! replaced, so two rollbacks in a row toggle, like `kubectl rollout undo`.
//!
//! A rollback is a reload like any other: a [`Blueprint`] of the earlier builds
//! (which the node keeps by sha256, whatever the files say now), staged under
//! the lock, committed, settled, purged — with processes migrating
//! `"direction": "down"` and the history recording `rollback`.

use crate::reason::{Failure, Reason};
use crate::request::{Blueprint, BlueprintUnit, BuildRef, RollbackRequest, RollbackTarget};
use crate::state::Shared;
use crate::store::history::{BuildId, History};

/// Whether the module, or a module of the app, runs a canary (a rollback then
/// drops the canaries).
pub(crate) fn runs_canary(shared: &Shared, target: &RollbackTarget) -> bool {
    let runs = |module: &str| shared.registry.slot(module).is_some_and(|slot| slot.canary().is_some());
    match target {
        RollbackTarget::Module(module) => runs(module),
        RollbackTarget::App(app) => shared.app(app).is_some_and(|m| m.modules.iter().any(|d| runs(&d.name))),
    }
}

fn build_ref(module: &str, build: &BuildId) -> BuildRef {
    BuildRef {
        module: module.to_string(),
        sha256: build.sha256.clone(),
        vsn: build.vsn.clone(),
        source: build.source.clone(),
    }
}

/// The blueprint of a rollback, or why there is none (`not_found`,
/// `app_not_found`).
pub(crate) fn blueprint(shared: &Shared, request: &RollbackRequest) -> Result<Blueprint, Failure> {
    let (kind, target) = request.kind_and_target();
    let history: &History = &shared.history;
    let not_found = |message: String| Failure::new(&target, Reason::NotFound, message);
    if let Some(id) = request.to {
        if history.get(id).is_none() {
            return Err(not_found(format!("history has no entry {id}")));
        }
    }
    let builds = match &request.target {
        RollbackTarget::Module(module) => vec![module_build(history, module, request.to, true, &not_found)?],
        RollbackTarget::App(app) => {
            let Some(manifest) = shared.app(app) else {
                return Err(Failure::new(app, Reason::AppNotFound, format!("app `{app}` is not loaded")));
            };
            let builds: Vec<BuildRef> = manifest
                .modules
                .iter()
                .filter_map(|decl| module_build(history, &decl.name, request.to, false, &not_found).ok())
                .collect();
            if builds.is_empty() {
                return Err(not_found(format!("no module of app `{app}` has an earlier build recorded")));
            }
            builds
        }
    };
    Ok(Blueprint {
        kind,
        target: target.clone(),
        units: vec![BlueprintUnit { kind, target, builds, app: None, extension: None }],
        code_change: Vec::new(),
        force: request.options.force,
        atomic: request.options.atomic,
        // A rollback puts back what served before: it may take back callables.
        allow_breaking: true,
    })
}

/// The build module `module` rolls back to: with `to`, the one it had as of
/// history entry `to` (`exact`: entry `to` itself must be about `module`);
/// without, the one its newest entry replaced.
fn module_build(
    history: &History,
    module: &str,
    to: Option<u64>,
    exact: bool,
    not_found: &dyn Fn(String) -> Failure,
) -> Result<BuildRef, Failure> {
    let Some(id) = to else {
        let Some(latest) = history.latest(module, None) else {
            return Err(not_found(format!("no change of `{module}` is recorded: nothing to roll back to")));
        };
        return match &latest.from {
            Some(from) => Ok(build_ref(module, from)),
            None => Err(not_found(format!(
                "`{module}` had no build before history entry {}: nothing to roll back to",
                latest.id
            ))),
        };
    };
    if exact {
        return match history.get(id) {
            Some(entry) if entry.module == module => Ok(build_ref(module, &entry.to)),
            Some(entry) => Err(not_found(format!("history entry {id} is about `{}`, not `{module}`", entry.module))),
            None => Err(not_found(format!("history has no entry {id}"))),
        };
    }
    match history.latest(module, Some(id)) {
        Some(entry) => Ok(build_ref(module, &entry.to)),
        None => Err(not_found(format!("`{module}` has no build recorded up to history entry {id}"))),
    }
}
