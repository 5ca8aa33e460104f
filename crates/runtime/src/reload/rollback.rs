//! Rollback (CONTRACT.md §11): a module, or every module of an app, back to an
//! earlier build the history names — by default the build the newest entry
//! replaced, so two rollbacks in a row toggle, like `kubectl rollout undo`.
//!
//! A rollback is a reload like any other: a [`Blueprint`] of the earlier builds
//! (which the node keeps by sha256, whatever the files say now), staged under
//! the lock, committed, settled, purged — with processes migrating
//! `"direction": "down"` and the history recording `rollback`.
//!
//! A rollback also undoes an unload: an `unload` entry has no build after it,
//! so rolling back to it (`to` its id) or past it (the default, its `from`)
//! loads the build it unloaded. An extension comes back recorded again (its
//! record rebuilt from the build's source file, which must still be inside
//! the extension roots); an unloaded app comes back with the manifest it had
//! (after a restart: read again from its directory, which the node kept on
//! disk), its declared processes started afresh (their state went with the
//! unload). A module of an unloaded app comes back only with its app, and a
//! module an app's manifest dropped only by declaring it again. An app's
//! rollback `to` an entry goes back to how the request that recorded it left
//! the app (one request records an entry per module).

use sha2::{Digest, Sha256};

use crate::build::extension::{self, ExtensionRecord, Format};
use crate::reason::{Failure, Reason};
use crate::request::{Blueprint, BlueprintUnit, BuildRef, RollbackRequest, RollbackTarget};
use crate::state::Shared;
use crate::store::history::{BuildId, History, HistoryEntry};

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
    let (mut app, mut extension) = (None, None);
    let builds = match &request.target {
        RollbackTarget::Module(module) => {
            let build = module_build(history, module, request.to, true, &not_found)?;
            if shared.registry.slot(module).is_none() && shared.app_declaring(module).is_none() {
                extension = Some(unloaded_extension(shared, &build, &not_found)?);
            }
            vec![build]
        }
        RollbackTarget::App(name) => {
            let manifest = match shared.app(name) {
                Some(manifest) => manifest,
                None => {
                    let Some(manifest) = shared.unloaded_app(name) else {
                        return Err(Failure::new(name, Reason::AppNotFound, format!("app `{name}` is not loaded")));
                    };
                    // An unloaded app comes back whole, manifest and processes.
                    app = Some(manifest.clone());
                    manifest
                }
            };
            // An app goes back to how the whole request of entry `to` left
            // it: `to` an unload's entry, every module it unloaded comes back.
            let to = request.to.map(|id| history.last_of_request(id));
            let builds: Vec<BuildRef> = manifest
                .modules
                .iter()
                .filter_map(|decl| module_build(history, &decl.name, to, false, &not_found).ok())
                .collect();
            if builds.is_empty() {
                return Err(not_found(format!("no module of app `{name}` has an earlier build recorded")));
            }
            builds
        }
    };
    Ok(Blueprint {
        kind,
        target: target.clone(),
        units: vec![BlueprintUnit { kind, target, builds, app, extension, unloads: Vec::new() }],
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
            Some(entry) if entry.module == module => Ok(build_ref(module, as_of(&entry))),
            Some(entry) => Err(not_found(format!("history entry {id} is about `{}`, not `{module}`", entry.module))),
            None => Err(not_found(format!("history has no entry {id}"))),
        };
    }
    match history.latest(module, Some(id)) {
        Some(entry) => Ok(build_ref(module, as_of(&entry))),
        None => Err(not_found(format!("`{module}` has no build recorded up to history entry {id}"))),
    }
}

/// The build a rollback to `entry` loads: the one it made current, or for an
/// unload (which made none current), the one it unloaded.
fn as_of(entry: &HistoryEntry) -> &BuildId {
    entry.to.as_ref().or(entry.from.as_ref()).expect("every history entry names a build, before or after")
}

/// The record of an unloaded extension that a rollback loads back: rebuilt
/// from the build's source file, which must still be inside the extension
/// roots. Any other module that is not loaded and that no loaded app
/// declares cannot come back by itself (`not_found`, saying how it can).
fn unloaded_extension(
    shared: &Shared,
    build: &BuildRef,
    not_found: &dyn Fn(String) -> Failure,
) -> Result<ExtensionRecord, Failure> {
    let module = &build.module;
    if let Some(app) = shared.unloaded_app_declaring(module) {
        return Err(not_found(format!(
            "`{module}` was unloaded with app `{app}`: roll back the app (`{{\"app\": \"{app}\"}}`) to load it again"
        )));
    }
    let format = Format::of(&build.source);
    let inside = extension::locate(&shared.config.extensions.roots, &build.source).is_ok();
    let (Some(format), true) = (format, inside) else {
        return Err(not_found(format!(
            "`{module}` is not loaded, and its build {} was not an extension's: declare the module in its app's \
             manifest and reload the app",
            build.source.display()
        )));
    };
    // The source as it is now, or (gone) the build's own hash, which is the
    // source's for a .wat or .wasm file.
    let source_sha256 =
        std::fs::read(&build.source).map(|bytes| hex::encode(Sha256::digest(bytes))).unwrap_or(build.sha256.clone());
    Ok(ExtensionRecord { name: module.clone(), path: build.source.clone(), format, source_sha256 })
}
