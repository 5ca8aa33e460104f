//! One child of a plan ([`Unit`]): an app, an extension, or a module of scope
//! `module` — its result so far, its module steps and unloads — and what it
//! leaves behind once applied ([`Record`]): an app's manifest kept and its
//! declared processes started, an extension's durable record; or, for an
//! unload, the app forgotten, the extension's record removed.

use std::sync::Arc;
use std::time::Instant;

use super::module::ModuleStep;
use super::unload::UnloadStep;
use crate::build::app::AppManifest;
use crate::build::extension::ExtensionRecord;
use crate::reason::{Failure, Reason};
use crate::report::{Kind, ReloadResult};
use crate::state::Shared;

/// What an applied plan leaves behind: the app's manifest, or the extension's
/// durable record; or what it removes (an unload).
pub(crate) enum Record {
    App(AppManifest),
    Extension(ExtensionRecord),
    /// The app of this name is unloaded: forgotten (its manifest kept for a
    /// rollback).
    AppGone(String),
    /// The extension of this module name is unloaded: its record removed,
    /// durably.
    ExtensionGone(String),
}

/// One child of a plan: an app, an extension, or a module of scope `module` —
/// its result so far, its module steps, and what to keep once it is applied.
pub(crate) struct Unit {
    pub(crate) result: ReloadResult,
    pub(crate) steps: Vec<ModuleStep>,
    /// Modules this unit takes out (`system.unload`, modules an app's manifest
    /// dropped).
    pub(crate) unloads: Vec<UnloadStep>,
    pub(crate) record: Option<Record>,
    pub(crate) started: Instant,
}

impl Unit {
    pub(crate) fn new(kind: Kind, target: &str) -> Unit {
        Unit {
            result: ReloadResult::new(kind, target),
            steps: Vec::new(),
            unloads: Vec::new(),
            record: None,
            started: Instant::now(),
        }
    }

    /// The unit failed before any module was staged.
    pub(crate) fn error(mut self, failure: Failure) -> Unit {
        self.result.errors.push(failure);
        self
    }

    /// The unit's result with what it leaves behind recorded: an app's result
    /// has one child per module; an extension's or a module's step is its own
    /// result.
    pub(super) fn finish(self, shared: &Arc<Shared>) -> ReloadResult {
        let Unit { mut result, steps, unloads, record, started } = self;
        for step in steps {
            match result.kind {
                Kind::App => result.absorb(step.finish()),
                _ => result.merge(step.finish()),
            }
        }
        for unload in unloads {
            match result.kind {
                Kind::App => result.absorb(unload.finish()),
                _ => result.merge(unload.finish()),
            }
        }
        match (result.kind, record) {
            (Kind::App, Some(Record::App(manifest))) => {
                start_processes(shared, &manifest, &mut result);
                shared.record_app(manifest);
            }
            // Scope `module` keeps the manifest it read once its module applied.
            (_, Some(Record::App(manifest))) if result.errors.is_empty() => shared.record_app(manifest),
            (_, Some(Record::Extension(record))) => record_extension(shared, record, &mut result),
            (_, Some(Record::AppGone(name))) => shared.forget_app(&name),
            (_, Some(Record::ExtensionGone(name))) => {
                if let Err(message) = shared.extensions.forget(&name) {
                    tracing::error!(extension = %name, %message, "the extension is unloaded but still recorded");
                    let message = format!("unloaded, but still recorded for restarts: {message}");
                    result.errors.push(Failure::new(result.target.clone(), Reason::InternalError, message));
                }
            }
            _ => {}
        }
        result.duration = started.elapsed();
        result
    }
}

/// Starts the processes the manifest declares that are not running yet.
fn start_processes(shared: &Arc<Shared>, manifest: &AppManifest, result: &mut ReloadResult) {
    for decl in &manifest.processes {
        if let Some(process) = shared.processes.get(&decl.name) {
            if process.module != decl.module {
                let message = format!(
                    "{}: process `{}` already runs module `{}`, not `{}`",
                    manifest.file.display(),
                    decl.name,
                    process.module,
                    decl.module
                );
                result.errors.push(Failure::new(format!("process:{}", decl.name), Reason::InvalidModule, message));
            }
            continue;
        }
        if let Err(err) = shared.start_process(&decl.name, &decl.module, &decl.init.to_string()) {
            let message = format!("{}: {err}", manifest.file.display());
            result.errors.push(Failure::new(format!("process:{}", decl.name), Reason::NotRunning, message));
        }
    }
}

/// Records an applied extension, durably; lists its module in
/// `metadata.compiled_modules` when it was loaded.
fn record_extension(shared: &Arc<Shared>, record: ExtensionRecord, result: &mut ReloadResult) {
    if !result.errors.is_empty() {
        return;
    }
    if result.reloaded.contains(&record.name) {
        result.metadata.compiled_modules.push(record.name.clone());
    }
    let name = record.name.clone();
    if let Err(message) = shared.extensions.record(record) {
        tracing::error!(extension = %name, %message, "the extension is loaded but not recorded for restarts");
        let message = format!("loaded, but not recorded for restarts: {message}");
        result.errors.push(Failure::new(result.target.clone(), Reason::InternalError, message));
    }
}
