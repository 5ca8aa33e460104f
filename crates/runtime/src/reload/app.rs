//! The units of apps (scope `app`, the apps of scope `all`, loading an app) and
//! of scope `module`, which finds its module in an app's manifest.
//!
//! An app's unit re-reads the manifest (so newly declared modules load), runs
//! the build first with `compile: true`, stages every module, and unloads the
//! modules the manifest no longer declares; the plan (`reload/plan.rs`)
//! commits, settles and finishes it like any other unit. Unloading an app
//! (`system.unload`) is a unit of unloads alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::extension::plan_extension;
use super::module;
use super::unit::{Record, Unit};
use super::unload;
use crate::build::app::AppManifest;
use crate::build::compile::{self, CompileReport};
use crate::reason::{Failure, Reason};
use crate::report::Kind;
use crate::request::ReloadOptions;
use crate::state::Shared;
use crate::telemetry::EventBody;

/// Where an app reload finds its manifest.
pub(crate) enum AppSource<'a> {
    /// A loaded app, by name.
    Name(&'a str),
    /// An app directory (loading an app for the first time).
    Dir(&'a Path),
}

/// An app's unit: its manifest read and checked, its build run (`compile:
/// true`), every module staged.
pub(crate) fn plan_app(shared: &Arc<Shared>, source: AppSource<'_>, options: &ReloadOptions, request_id: &str) -> Unit {
    let target = match source {
        AppSource::Name(name) => name.to_string(),
        AppSource::Dir(dir) => dir.display().to_string(),
    };
    let unit = Unit::new(Kind::App, &target);
    let dir: PathBuf = match source {
        // An app unloaded since the node started (or one a cluster member
        // did not load because its cluster unloaded it) loads again from its
        // directory.
        AppSource::Name(name) => match shared.app(name).or_else(|| shared.unloaded_app(name)) {
            Some(manifest) => manifest.dir,
            None => return unit.error(Failure::new(name, Reason::AppNotFound, format!("app `{name}` is not loaded"))),
        },
        AppSource::Dir(dir) => dir.to_path_buf(),
    };
    let manifest = match AppManifest::load(&dir) {
        Ok(manifest) => manifest,
        Err(err) => return unit.error(Failure::new(&target, err.reason, err.to_string())),
    };
    let mut unit = unit;
    unit.result.target = manifest.name.clone();
    if let AppSource::Name(name) = source {
        if manifest.name != name {
            let message = format!(
                "{} now names the app `{}`; rename apps by loading them anew",
                manifest.file.display(),
                manifest.name
            );
            return unit.error(Failure::new(name, Reason::InvalidModule, message));
        }
    }
    for module in &manifest.modules {
        if let Some(other) = shared.app_declaring(&module.name).filter(|other| *other != manifest.name) {
            let message = format!(
                "{}: module `{}` is already declared by app `{other}`; module names are unique on a node",
                manifest.file.display(),
                module.name
            );
            return unit.error(Failure::new(&manifest.name, Reason::InvalidModule, message));
        }
        if let Some(extension) = shared.extensions.get(&module.name) {
            let message = format!(
                "{}: module `{}` is already loaded as the extension {}; module names are unique on a node",
                manifest.file.display(),
                module.name,
                extension.path.display()
            );
            return unit.error(Failure::new(&manifest.name, Reason::InvalidModule, message));
        }
    }
    if options.compile {
        let report = build(shared, &manifest, request_id);
        let failed = build_failure(&manifest.name, &report);
        unit.result.metadata.compile = Some(report);
        if let Some(failure) = failed {
            return unit.error(failure);
        }
    }
    let rules = module::Rules::of(options);
    unit.steps = manifest.modules.iter().map(|m| module::plan(shared, &m.name, Some(&m.path), rules)).collect();
    unit.unloads = unload::dropped(shared, &manifest);
    unit.record = Some(Record::App(manifest));
    unit
}

/// The unit of unloading app `name`: every module its manifest declares that
/// is loaded, its processes with them; `app_not_found` when no app of that
/// name is loaded (never, or unloaded already). Nothing is taken out yet.
pub(crate) fn plan_unload_app(shared: &Arc<Shared>, name: &str) -> Unit {
    let unit = Unit::new(Kind::App, name);
    let Some(manifest) = shared.app(name) else {
        return unit.error(Failure::new(name, Reason::AppNotFound, format!("app `{name}` is not loaded")));
    };
    let mut unit = unit;
    unit.unloads = manifest
        .modules
        .iter()
        .filter(|m| shared.registry.slot(&m.name).is_some())
        .map(|m| unload::plan(shared, &m.name))
        .collect();
    unit.record = Some(Record::AppGone(manifest.name));
    unit
}

/// Runs the app's build (when it has one), publishing its output as events.
fn build(shared: &Arc<Shared>, manifest: &AppManifest, request_id: &str) -> CompileReport {
    let Some(command) = &manifest.build else {
        return CompileReport::not_run();
    };
    let on_line = |stream, line: &str| {
        let body = EventBody::BuildOutput { stream, line: line.to_string() };
        shared.telemetry.emit(Kind::App, &manifest.name, request_id, body);
    };
    match compile::run_build(command, &manifest.dir, shared.config.limits.build_timeout, &on_line) {
        Ok(report) => report,
        Err(err) => CompileReport {
            ran: true,
            command: Some(command.clone()),
            duration: Default::default(),
            exit_code: None,
            timed_out: false,
            tail: vec![format!("cannot start `sh`: {err}")],
        },
    }
}

fn build_failure(target: &str, report: &CompileReport) -> Option<Failure> {
    if report.succeeded() {
        return None;
    }
    let reason = if report.timed_out { Reason::Timeout } else { Reason::CompileFailed };
    Some(Failure::new(target, reason, report.failure_message()))
}

/// Scope `module`'s unit: the module's app manifest is read again, so a module
/// newly declared there loads (and one no longer declared is unloaded); an extension reloads from its file by the
/// extension rules; a module no app declares (loaded through the embedding API)
/// reloads from its file; anything else is `not_found`.
pub(crate) fn plan_module_scope(shared: &Arc<Shared>, name: &str, options: &ReloadOptions, request_id: &str) -> Unit {
    let unit = Unit::new(Kind::Module, name);
    let mut found = None;
    for recorded in shared.apps() {
        let manifest = match AppManifest::load(&recorded.dir) {
            Ok(manifest) => manifest,
            Err(err) if recorded.modules.iter().any(|m| m.name == name) => {
                return unit.error(Failure::new(name, err.reason, err.to_string()));
            }
            Err(_) => continue,
        };
        if let Some(decl) = manifest.modules.iter().find(|m| m.name == name).cloned() {
            found = Some((manifest, decl.path));
            break;
        }
    }
    let Some((manifest, path)) = found else {
        if let Some(record) = shared.extensions.get(name) {
            let mut unit = plan_extension(shared, &record.path, options, request_id);
            unit.result.kind = Kind::Module;
            unit.result.target = name.to_string();
            return unit;
        }
        if shared.registry.slot(name).is_none() {
            return unit.error(Failure::new(name, Reason::NotFound, format!("no loaded app declares module `{name}`")));
        }
        let mut unit = unit;
        unit.steps.push(module::plan(shared, name, None, module::Rules::of(options)));
        return unit;
    };
    let mut unit = unit;
    if options.compile {
        let report = build(shared, &manifest, request_id);
        let failure = build_failure(name, &report);
        unit.result.metadata.compile = Some(report);
        if let Some(failure) = failure {
            return unit.error(failure);
        }
    }
    unit.steps.push(module::plan(shared, name, Some(&path), module::Rules::of(options)));
    // The manifest it applies no longer declares these: they go, as in an
    // app reload, rather than run on outside any app.
    unit.unloads = unload::dropped(shared, &manifest);
    unit.record = Some(Record::App(manifest));
    unit
}
