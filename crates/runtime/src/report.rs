//! Results as data: the one result shape of every reload (CONTRACT.md §5),
//! [`ReloadResult`] with its one status rule ([`ReloadResult::status`]), and
//! what it carries — swaps, metadata, a cluster's outcome, what a build did
//! ([`CompileReport`]) and the stream a build's line came on ([`Stream`]).
//!
//! Every layer above reports with these; none of them runs anything.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Compiler;
use crate::reason::{Failure, Skip};
use crate::store::history::BuildId;

/// What a reload was about (`kind` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Module,
    App,
    Extension,
    CodeChange,
    System,
    /// One member's part of a cluster reload (CONTRACT.md §10).
    Node,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Module => "module",
            Kind::App => "app",
            Kind::Extension => "extension",
            Kind::CodeChange => "code_change",
            Kind::System => "system",
            Kind::Node => "node",
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

/// One version swap a reload made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swap {
    pub module: String,
    /// `None` when the module was not loaded before.
    pub old_vsn: Option<String>,
    pub new_vsn: String,
    pub sha256: String,
    /// The build replaced (vsn, sha256 and source); `None` for a first load.
    pub from: Option<BuildId>,
    /// Where the new build was read.
    pub source: PathBuf,
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
    /// Modules that left the node (`system.unload`, or an app reload whose
    /// manifest no longer declares them): `metadata.unloaded`.
    pub unloaded: Vec<String>,
    /// A reload coordinated across a cluster (CONTRACT.md §10).
    pub cluster: Option<ClusterOutcome>,
    /// A rollback's result (`metadata.rollback`).
    pub rollback: bool,
    /// A dry run's result (`metadata.dry_run`): nothing was committed, and
    /// `plan` says what would have changed.
    pub dry_run: bool,
    pub plan: Vec<PlanEntry>,
}

/// What a dry run found for one module that would change (`metadata.plan[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEntry {
    pub module: String,
    /// `(vsn, sha256)` of the build serving now; `None` for a new module.
    pub from: Option<(String, String)>,
    pub to: (String, String),
    pub exports_added: Vec<String>,
    pub exports_removed: Vec<String>,
    /// Callables both builds have whose type changes (`functions_changed`).
    pub functions_changed: Vec<FunctionChange>,
    /// Each process of the module, and whether the new build can migrate it.
    pub processes: Vec<(String, bool)>,
}

/// A callable whose type a build changes: both types, as WIT writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionChange {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// `metadata.cluster`: which members a cluster reload reached, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOutcome {
    pub nodes: Vec<String>,
    pub phase: Phase,
    /// The etcd revision of the commit (`None` when aborted).
    pub revision: Option<i64>,
}

/// How a cluster reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Committed,
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Committed => "committed",
            Phase::Aborted => "aborted",
        }
    }
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
                Kind::Module | Kind::System | Kind::Node => {}
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
    /// holds at every level. A module reloaded by several children (the members
    /// of a cluster) is listed once in `reloaded`.
    pub fn absorb(&mut self, child: ReloadResult) {
        if child.kind == Kind::Node {
            for module in &child.reloaded {
                if !self.reloaded.contains(module) {
                    self.reloaded.push(module.clone());
                }
            }
            for module in &child.metadata.unchanged {
                if !self.metadata.unchanged.contains(module) {
                    self.metadata.unchanged.push(module.clone());
                }
            }
            for module in &child.metadata.unloaded {
                if !self.metadata.unloaded.contains(module) {
                    self.metadata.unloaded.push(module.clone());
                }
            }
            self.skipped.extend(child.skipped.iter().cloned());
            self.errors.extend(child.errors.iter().cloned());
            self.results.push(child);
            return;
        }
        self.reloaded.extend(child.reloaded.iter().cloned());
        self.skipped.extend(child.skipped.iter().cloned());
        self.errors.extend(child.errors.iter().cloned());
        self.metadata.unchanged.extend(child.metadata.unchanged.iter().cloned());
        self.metadata.unloaded.extend(child.metadata.unloaded.iter().cloned());
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
        self.metadata.unloaded.extend(child.metadata.unloaded);
        self.metadata.swaps.extend(child.metadata.swaps);
    }
}

/// What running a build did (`metadata.compile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileReport {
    /// False when the app declares no `build` command.
    pub ran: bool,
    pub command: Option<String>,
    pub duration: Duration,
    /// `None` when the build was killed (timeout) or ended by a signal.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The last lines of its output, stdout and stderr interleaved as they came.
    pub tail: Vec<String>,
}

impl CompileReport {
    /// A build that ran `command` for `duration` and succeeded.
    pub fn ran_ok(command: String, duration: Duration) -> Self {
        CompileReport {
            ran: true,
            command: Some(command),
            duration,
            exit_code: Some(0),
            timed_out: false,
            tail: Vec::new(),
        }
    }

    pub fn not_run() -> Self {
        CompileReport {
            ran: false,
            command: None,
            duration: Duration::ZERO,
            exit_code: None,
            timed_out: false,
            tail: Vec::new(),
        }
    }

    pub fn succeeded(&self) -> bool {
        !self.ran || self.exit_code == Some(0)
    }

    /// The human explanation of a failed build, with its last lines.
    pub fn failure_message(&self) -> String {
        let command = self.command.as_deref().unwrap_or("");
        let what = if self.timed_out {
            format!("build `{command}` was killed after {} ms (limits.build_timeout_ms)", self.duration.as_millis())
        } else {
            match self.exit_code {
                Some(code) => format!("build `{command}` exited with status {code}"),
                None => format!("build `{command}` was ended by a signal"),
            }
        };
        if self.tail.is_empty() {
            format!("{what} and printed nothing")
        } else {
            format!("{what}; its last lines:\n{}", self.tail.join("\n"))
        }
    }
}

/// Which output stream a build's line came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::Reason;

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
}
