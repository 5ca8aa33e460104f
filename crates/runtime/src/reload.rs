//! The reload orchestrator and its one result type (CONTRACT.md §5).
//!
//! Every reload, at every level, answers with a [`ReloadResult`] whose status
//! follows one rule ([`ReloadResult::status`]). A module reload runs in three
//! steps so that larger scopes can compose them:
//!
//! 1. **stage**: read the build, compare its sha256, compile (or load from the
//!    compile cache), validate against the ABI and instantiate once — all off the
//!    call path, while the current version keeps serving;
//! 2. **commit**: swap the staged version in; the next call gets it;
//! 3. **purge**: wait (up to `drain_timeout`) for calls still running on older
//!    versions; with `force`, interrupt them first.
//!
//! *Architecture invariant*: only this module changes the registry.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::Compiler;
use crate::node::Shared;
use crate::registry::Slot;
use crate::version::Version;

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
}

impl Reason {
    pub const ALL: [Reason; 18] = [
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

    fn failed(mut self, failure: Failure) -> Self {
        self.errors.push(failure);
        self
    }
}

/// How a reload behaves (the `system.reload` params that reach the runtime).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOptions {
    /// Reload unchanged builds too, and hard-purge old versions.
    pub force: bool,
}

/// A new build, compiled, validated and instantiated, not yet serving.
pub(crate) struct Staged {
    pub(crate) version: Arc<Version>,
    pub(crate) compiled: bool,
}

pub(crate) enum Stage {
    /// Same sha256 as the current version, and no `force`.
    Unchanged,
    Ready(Staged),
}

/// Reloads (or loads for the first time) module `name` from `source`, or from the
/// source it was loaded from when `source` is `None`.
pub(crate) fn reload_module(
    shared: &Arc<Shared>,
    name: &str,
    source: Option<&Path>,
    options: &ReloadOptions,
) -> ReloadResult {
    let started = Instant::now();
    let result = ReloadResult::new(Kind::Module, name);
    let mut result = reload_module_inner(shared, name, source, options, result);
    result.duration = started.elapsed();
    result
}

fn reload_module_inner(
    shared: &Arc<Shared>,
    name: &str,
    source: Option<&Path>,
    options: &ReloadOptions,
    mut result: ReloadResult,
) -> ReloadResult {
    if let Err(message) = crate::abi::check_name(name) {
        return result.failed(Failure::new(name, Reason::InvalidModule, message));
    }
    let slot = shared.registry.slot(name);
    let path: PathBuf = match (source, &slot) {
        (Some(path), _) => path.to_path_buf(),
        (None, Some(slot)) => slot.current().info.source.clone(),
        (None, None) => {
            let message = format!("module `{name}` is not loaded");
            return result.failed(Failure::new(name, Reason::NotFound, message));
        }
    };
    let staged = match stage(shared, name, &path, slot.as_deref(), options.force) {
        Ok(Stage::Unchanged) => {
            result.metadata.unchanged.push(name.to_string());
            return result;
        }
        Ok(Stage::Ready(staged)) => staged,
        Err(failure) => return result.failed(failure),
    };
    let old_vsn = slot.as_ref().map(|slot| slot.current().info.vsn.clone());
    let info = staged.version.info.clone();
    let slot = commit(shared, name, Arc::clone(&staged.version));
    if staged.compiled {
        // After the swap, so serialising never delays the new code; and only for a
        // build that validated, so a refused build is never cached.
        shared.engines.remember(&staged.version.sha256, staged.version.module(), info.compiler);
    }
    result.reloaded.push(name.to_string());
    result.metadata.swaps.push(Swap {
        module: name.to_string(),
        old_vsn,
        new_vsn: info.vsn.clone(),
        sha256: info.sha256.clone(),
        compiler: info.compiler,
        compiled: staged.compiled,
    });
    drop(staged); // our reference to the new version; the registry holds it now
    let deadline = Instant::now() + shared.config.limits.drain_timeout;
    for busy in slot.purge(deadline, options.force) {
        tracing::warn!(module = name, vsn = %busy.vsn, "old version still in use after the drain timeout");
        result.skipped.push(Skip { target: name.to_string(), reason: Reason::InUse });
    }
    result
}

/// Reads, compiles, validates and instantiates the build at `path`, leaving the
/// registry untouched.
pub(crate) fn stage(
    shared: &Arc<Shared>,
    name: &str,
    path: &Path,
    slot: Option<&Slot>,
    force: bool,
) -> Result<Stage, Failure> {
    let bytes = read_build(name, path)?;
    let sha256: [u8; 32] = Sha256::digest(&bytes).into();
    if let Some(slot) = slot {
        if !force && slot.current().sha256 == sha256 {
            return Ok(Stage::Unchanged);
        }
    }
    let is_text = path.extension().is_some_and(|ext| ext == "wat");
    let loaded = shared
        .engines
        .load(&sha256, &bytes, is_text)
        .map_err(|(reason, message)| Failure::new(name, reason, message))?;
    let version = Version::new(shared, name, path, sha256, loaded.module, loaded.compiler)
        .map_err(|message| Failure::new(name, Reason::InvalidModule, message))?;
    Ok(Stage::Ready(Staged { version: Arc::new(version), compiled: loaded.compiled }))
}

/// Makes `version` current for module `name`; returns its slot.
pub(crate) fn commit(shared: &Arc<Shared>, name: &str, version: Arc<Version>) -> Arc<Slot> {
    shared.registry.install(name, version)
}

fn read_build(name: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    match path.extension().and_then(|ext| ext.to_str()) {
        Some("wasm" | "wat") => {}
        _ => {
            let message = format!("{}: a module must be a .wasm or .wat file", path.display());
            return Err(Failure::new(name, Reason::UnsupportedExtension, message));
        }
    }
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
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
            ]
        );
    }
}
