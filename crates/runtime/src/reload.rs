//! The reload orchestrator and its one result type (CONTRACT.md §5).
//!
//! Every reload, at every level, answers with a [`ReloadResult`] whose status
//! follows one rule ([`ReloadResult::status`]); a parent gathers its children's
//! outcomes ([`ReloadResult::absorb`]). A module reload runs in three steps
//! (`reload/module.rs`) so that apps and the system (`reload/app.rs`) can stage
//! everything before they swap anything:
//!
//! 1. **stage**: read the build, compare its sha256, compile (or load from the
//!    compile cache), validate against the ABI and instantiate once — all off the
//!    call path, while the current version keeps serving;
//! 2. **commit**: swap the staged version in; the next call gets it;
//! 3. **purge**: wait (up to `drain_timeout`) for calls still running on older
//!    versions; with `force`, interrupt them first.
//!
//! *Architecture invariant*: only this module changes the registry.

mod app;
mod extension;
mod migrate;
mod module;

pub(crate) use app::{reload_app, AppSource};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::compile::CompileReport;
use crate::config::Compiler;
use crate::lock::LockError;
use crate::node::Shared;

/// What a reload was about (`kind` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Module,
    App,
    Extension,
    CodeChange,
    System,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Module => "module",
            Kind::App => "app",
            Kind::Extension => "extension",
            Kind::CodeChange => "code_change",
            Kind::System => "system",
        }
    }
}

/// `ok`, `partial` or `error`; derived, never stored (see [`ReloadResult::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Partial,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Partial => "partial",
            Status::Error => "error",
        }
    }
}

/// The stable reason strings of CONTRACT.md §5.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotFound,
    AppNotFound,
    Unchanged,
    InUse,
    EmptyPath,
    Enoent,
    NotAFile,
    ForbiddenPath,
    UnsupportedExtension,
    CompileError,
    CompileFailed,
    InvalidModule,
    NotRunning,
    CodeChangeFailed,
    MissingExport,
    InvalidCodeChangeTarget,
    RolledBack,
    Timeout,
    /// Not in CONTRACT.md §5.1: a reload step panicked (a bug in zest). See
    /// `docs/reload.md`.
    InternalError,
}

impl Reason {
    pub const ALL: [Reason; 19] = [
        Reason::NotFound,
        Reason::AppNotFound,
        Reason::Unchanged,
        Reason::InUse,
        Reason::EmptyPath,
        Reason::Enoent,
        Reason::NotAFile,
        Reason::ForbiddenPath,
        Reason::UnsupportedExtension,
        Reason::CompileError,
        Reason::CompileFailed,
        Reason::InvalidModule,
        Reason::NotRunning,
        Reason::CodeChangeFailed,
        Reason::MissingExport,
        Reason::InvalidCodeChangeTarget,
        Reason::RolledBack,
        Reason::Timeout,
        Reason::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "not_found",
            Reason::AppNotFound => "app_not_found",
            Reason::Unchanged => "unchanged",
            Reason::InUse => "in_use",
            Reason::EmptyPath => "empty_path",
            Reason::Enoent => "enoent",
            Reason::NotAFile => "not_a_file",
            Reason::ForbiddenPath => "forbidden_path",
            Reason::UnsupportedExtension => "unsupported_extension",
            Reason::CompileError => "compile_error",
            Reason::CompileFailed => "compile_failed",
            Reason::InvalidModule => "invalid_module",
            Reason::NotRunning => "not_running",
            Reason::CodeChangeFailed => "code_change_failed",
            Reason::MissingExport => "missing_export",
            Reason::InvalidCodeChangeTarget => "invalid_code_change_target",
            Reason::RolledBack => "rolled_back",
            Reason::Timeout => "timeout",
            Reason::InternalError => "internal_error",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A target left alone, with why (`skipped[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub target: String,
    pub reason: Reason,
}

/// A target that failed, with why and the human detail (`errors[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub target: String,
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    pub fn new(target: impl Into<String>, reason: Reason, message: impl Into<String>) -> Self {
        Failure { target: target.into(), reason, message: message.into() }
    }
}

/// One version swap a reload made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swap {
    pub module: String,
    /// `None` when the module was not loaded before.
    pub old_vsn: Option<String>,
    pub new_vsn: String,
    pub sha256: String,
    /// The compiler that produced the machine code now serving.
    pub compiler: Compiler,
    /// False when the machine code came from the compile cache.
    pub compiled: bool,
}

/// Scope-specific details (`metadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Modules whose bytes did not change and were left alone (not a skip).
    pub unchanged: Vec<String>,
    pub swaps: Vec<Swap>,
    /// What the build of `compile: true` did.
    pub compile: Option<CompileReport>,
    /// Scope `all`: how its children fared.
    pub counts: Option<Counts>,
    /// Scope `extension` (and the extension children of `all`): the modules it
    /// loaded.
    pub compiled_modules: Vec<String>,
}

/// The one result shape of every reload (CONTRACT.md §5).
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadResult {
    pub kind: Kind,
    pub target: String,
    pub reloaded: Vec<String>,
    pub skipped: Vec<Skip>,
    pub errors: Vec<Failure>,
    pub duration: Duration,
    pub results: Vec<ReloadResult>,
    pub metadata: Metadata,
}

impl ReloadResult {
    pub fn new(kind: Kind, target: impl Into<String>) -> Self {
        ReloadResult {
            kind,
            target: target.into(),
            reloaded: Vec::new(),
            skipped: Vec::new(),
            errors: Vec::new(),
            duration: Duration::ZERO,
            results: Vec::new(),
            metadata: Metadata::default(),
        }
    }

    /// The status rule: `error` if anything failed, else `partial` if anything was
    /// skipped, else `ok`.
    pub fn status(&self) -> Status {
        if !self.errors.is_empty() {
            Status::Error
        } else if !self.skipped.is_empty() {
            Status::Partial
        } else {
            Status::Ok
        }
    }
}

/// What to reload (`scope` and its target).
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    Module(String),
    App(String),
    Extension(PathBuf),
    All(AllScope),
}

/// Scope `all`: apps (empty: every loaded app), extensions, and explicit
/// `code_change` targets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllScope {
    pub apps: Vec<String>,
    pub extensions: Vec<PathBuf>,
    pub code_change: Vec<CodeChangeTarget>,
}

/// An explicit state migration of scope `all`.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeChangeTarget {
    pub server: String,
    pub module: String,
    pub old_vsn: Option<String>,
    pub extra: serde_json::Value,
}

/// How a reload behaves (the `system.reload` params besides the scope).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOptions {
    /// Reload unchanged builds too, and hard-purge old versions.
    pub force: bool,
    /// All or nothing: one failed step and nothing of the request is swapped.
    pub atomic: bool,
    /// Run the app's `build` command first.
    pub compile: bool,
    /// How long to wait for the reload lock; zero answers at once.
    pub lock_timeout: Duration,
}

/// One `system.reload` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadRequest {
    pub scope: Scope,
    pub options: ReloadOptions,
    /// Carried in every telemetry event of the request; the node makes one up
    /// when `None`.
    pub request_id: Option<String>,
}

impl ReloadRequest {
    pub fn new(scope: Scope) -> Self {
        ReloadRequest { scope, options: ReloadOptions::default(), request_id: None }
    }
}

/// Why a reload request did not run at all (a request that runs answers with a
/// [`ReloadResult`], whatever happened inside).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The reload lock is held (`CONFLICT`), or could not be reached.
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// How the children of a `system` reload fared (`metadata.counts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub apps: usize,
    pub extensions: usize,
    pub code_change: usize,
    pub ok: usize,
    pub partial: usize,
    pub error: usize,
}

impl Counts {
    pub(crate) fn of(children: &[ReloadResult]) -> Counts {
        let mut counts = Counts::default();
        for child in children {
            match child.kind {
                Kind::App => counts.apps += 1,
                Kind::Extension => counts.extensions += 1,
                Kind::CodeChange => counts.code_change += 1,
                Kind::Module | Kind::System => {}
            }
            match child.status() {
                Status::Ok => counts.ok += 1,
                Status::Partial => counts.partial += 1,
                Status::Error => counts.error += 1,
            }
        }
        counts
    }
}

impl ReloadResult {
    /// Adds a child: its outcomes count for this result too, so the status rule
    /// holds at every level.
    pub(crate) fn absorb(&mut self, child: ReloadResult) {
        self.reloaded.extend(child.reloaded.iter().cloned());
        self.skipped.extend(child.skipped.iter().cloned());
        self.errors.extend(child.errors.iter().cloned());
        self.metadata.unchanged.extend(child.metadata.unchanged.iter().cloned());
        self.metadata.swaps.extend(child.metadata.swaps.iter().cloned());
        self.results.push(child);
    }

    /// Takes over a child's outcomes without listing it as a child (an
    /// extension's module step).
    pub(crate) fn merge(&mut self, child: ReloadResult) {
        self.reloaded.extend(child.reloaded);
        self.skipped.extend(child.skipped);
        self.errors.extend(child.errors);
        self.metadata.unchanged.extend(child.metadata.unchanged);
        self.metadata.swaps.extend(child.metadata.swaps);
    }
}

/// Runs a request whose lock is held, as one telemetry operation.
pub(crate) fn run(shared: &Arc<Shared>, request: &ReloadRequest, request_id: &str) -> ReloadResult {
    let options = &request.options;
    let (kind, target) = match &request.scope {
        Scope::Module(name) => (Kind::Module, name.clone()),
        Scope::App(name) => (Kind::App, name.clone()),
        Scope::Extension(path) => (Kind::Extension, path.display().to_string()),
        Scope::All(_) => (Kind::System, "system".to_string()),
    };
    shared.telemetry.step(kind, &target, request_id, || match &request.scope {
        Scope::Module(name) => app::reload_module_scope(shared, name, options, request_id),
        Scope::App(name) => app::reload_app(shared, app::AppSource::Name(name), options, request_id),
        Scope::All(all) => app::reload_system(shared, all, options, request_id),
        Scope::Extension(path) => reload_extension(shared, path, options, request_id),
    })
}

/// Reloads a module from `source` (or its own file), outside any app: the
/// embedding API's `load_module` and `reload_module`.
pub(crate) fn reload_loose_module(
    shared: &Arc<Shared>,
    name: &str,
    source: Option<&Path>,
    options: &ReloadOptions,
) -> ReloadResult {
    module::run(shared, name, source, options).finish()
}

/// Scope `extension`: the file at `path`, checked, built and loaded.
pub(crate) fn reload_extension(
    shared: &Arc<Shared>,
    path: &Path,
    options: &ReloadOptions,
    request_id: &str,
) -> ReloadResult {
    app::run_plan(shared, extension::plan_extension(shared, path, options, request_id), options)
}

/// Loads the recorded extensions again (a node starting): one child per record.
/// Records stay recorded whether or not they load, so fixing a source and
/// reloading it (or restarting) brings it back.
pub(crate) fn restore_extensions(shared: &Arc<Shared>, request_id: &str) -> ReloadResult {
    let started = std::time::Instant::now();
    let mut result = ReloadResult::new(Kind::System, "system");
    let recovered = shared.extensions.recover();
    for problem in recovered.problems {
        tracing::error!(%problem, "an extension record cannot be read");
        result.errors.push(Failure::new("extensions.json", Reason::InvalidModule, problem));
    }
    for record in &recovered.records {
        shared.extensions.remember(record.clone());
    }
    for record in recovered.records {
        let target = record.path.display().to_string();
        let child = shared.telemetry.step(Kind::Extension, &target, request_id, || {
            reload_extension(shared, &record.path, &ReloadOptions::default(), request_id)
        });
        for failure in &child.errors {
            tracing::error!(extension = %target, reason = %failure.reason, message = %failure.message,
                "a recorded extension did not load");
        }
        result.absorb(child);
    }
    result.metadata.counts = Some(Counts::of(&result.results));
    result.duration = started.elapsed();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_with(skips: usize, errors: usize) -> ReloadResult {
        let mut result = ReloadResult::new(Kind::Module, "clock");
        for _ in 0..skips {
            result.skipped.push(Skip { target: "clock".into(), reason: Reason::InUse });
        }
        for _ in 0..errors {
            result.errors.push(Failure::new("clock", Reason::InvalidModule, "bad"));
        }
        result
    }

    #[test]
    fn status_rule_prefers_error_then_partial_then_ok() {
        assert_eq!(result_with(0, 0).status(), Status::Ok);
        assert_eq!(result_with(1, 0).status(), Status::Partial);
        assert_eq!(result_with(0, 1).status(), Status::Error);
        assert_eq!(result_with(2, 1).status(), Status::Error);
    }

    #[test]
    fn unchanged_metadata_is_not_a_skip() {
        let mut result = ReloadResult::new(Kind::Module, "clock");
        result.metadata.unchanged.push("clock".into());
        assert_eq!(result.status(), Status::Ok);
    }

    #[test]
    fn reasons_are_the_contract_strings() {
        let strings: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            strings,
            [
                "not_found",
                "app_not_found",
                "unchanged",
                "in_use",
                "empty_path",
                "enoent",
                "not_a_file",
                "forbidden_path",
                "unsupported_extension",
                "compile_error",
                "compile_failed",
                "invalid_module",
                "not_running",
                "code_change_failed",
                "missing_export",
                "invalid_code_change_target",
                "rolled_back",
                "timeout",
                "internal_error",
            ]
        );
    }
}
