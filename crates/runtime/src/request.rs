//! Requests as data: what to reload and how ([`ReloadRequest`], [`Scope`],
//! [`ReloadOptions`], [`TrialSpec`]), rollbacks ([`RollbackRequest`]), the
//! blueprints other members stage the same builds from ([`Blueprint`]), and
//! which way processes migrate ([`Direction`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::build::app::AppManifest;
use crate::build::extension::ExtensionRecord;
use crate::lock::LockError;
use crate::report::Kind;

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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReloadOptions {
    /// Reload unchanged builds too, and hard-purge old versions.
    pub force: bool,
    /// All or nothing: one failed step and nothing of the request is swapped.
    pub atomic: bool,
    /// Run the app's `build` command first.
    pub compile: bool,
    /// How long to wait for the reload lock; zero answers at once.
    pub lock_timeout: Duration,
    /// Which way processes migrate (`Down` for a rollback).
    pub direction: Direction,
    /// Stage everything, commit nothing, say what would change.
    pub dry_run: bool,
    /// Let a build remove a callable the current version has, or change its
    /// type (CONTRACT.md §5, `breaking_change`).
    pub allow_breaking: bool,
    /// Revert by itself if the new builds fail too often within a window.
    pub trial: Option<TrialSpec>,
    /// Run the new builds beside the current ones for this share (1–99 %) of
    /// calls and processes.
    pub canary: Option<u8>,
}

/// `trial` of `system.reload` (CONTRACT.md §11).
#[derive(Debug, Clone, PartialEq)]
pub struct TrialSpec {
    pub window: Duration,
    /// Failed calls (and process crashes) over calls above which the node
    /// reverts; default 0.01.
    pub max_failure_rate: f64,
    /// Calls needed before the rate counts; default 20.
    pub min_calls: u64,
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

/// What to roll back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTarget {
    Module(String),
    App(String),
}

/// One `system.rollback` request.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackRequest {
    pub target: RollbackTarget,
    /// A history id: that entry's build (for an app: each module's build as of
    /// that entry) becomes current. `None`: the build the newest entry replaced.
    pub to: Option<u64>,
    /// `force`, `atomic` and `lock_timeout` as for a reload.
    pub options: ReloadOptions,
    pub request_id: Option<String>,
}

impl RollbackTarget {
    /// The kind and target a result about it carries.
    pub fn kind_and_name(&self) -> (Kind, String) {
        match self {
            RollbackTarget::Module(name) => (Kind::Module, name.clone()),
            RollbackTarget::App(name) => (Kind::App, name.clone()),
        }
    }
}

impl RollbackRequest {
    pub fn new(target: RollbackTarget) -> Self {
        RollbackRequest { target, to: None, options: ReloadOptions::default(), request_id: None }
    }

    pub fn kind_and_target(&self) -> (Kind, String) {
        self.target.kind_and_name()
    }
}

/// What `system.unload` takes out (CONTRACT.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnloadTarget {
    /// The extension loaded from this path (as given, checked against the
    /// extension roots).
    Extension(PathBuf),
    /// The loaded app of this name, with every module it declares.
    App(String),
}

/// One `system.unload` request.
#[derive(Debug, Clone, PartialEq)]
pub struct UnloadRequest {
    pub target: UnloadTarget,
    /// How long to wait for the reload lock; zero answers at once.
    pub lock_timeout: Duration,
    pub request_id: Option<String>,
}

impl UnloadRequest {
    pub fn new(target: UnloadTarget) -> Self {
        UnloadRequest { target, lock_timeout: Duration::ZERO, request_id: None }
    }

    /// The kind and target its result carries.
    pub fn kind_and_target(&self) -> (Kind, String) {
        match &self.target {
            UnloadTarget::Extension(path) => (Kind::Extension, path.display().to_string()),
            UnloadTarget::App(name) => (Kind::App, name.clone()),
        }
    }
}

/// A [`Blueprint`]: what another node needs to stage exactly the builds a plan
/// staged — the plan's units, each module's build by sha256, the manifests and
/// extension records the plan applies, its `code_change` targets. Plain data:
/// the cluster layer owns its wire form.
/// The builds of one reload, as another node stages them.
#[derive(Debug, Clone, PartialEq)]
pub struct Blueprint {
    /// The request's scope, so the result has the shape the scope's has.
    pub kind: Kind,
    pub target: String,
    pub units: Vec<BlueprintUnit>,
    pub code_change: Vec<CodeChangeTarget>,
    pub force: bool,
    pub atomic: bool,
    /// Builds may remove callables or change their types (a rollback's
    /// always may; CONTRACT.md §5).
    pub allow_breaking: bool,
}

/// One app, extension or module of a blueprint.
#[derive(Debug, Clone, PartialEq)]
pub struct BlueprintUnit {
    pub kind: Kind,
    pub target: String,
    pub builds: Vec<BuildRef>,
    /// The app's manifest as the coordinator read it: kept, and its processes
    /// started, once applied.
    pub app: Option<AppManifest>,
    /// The extension's record, kept once applied.
    pub extension: Option<ExtensionRecord>,
    /// Modules the coordinator unloads with this unit (its app's manifest
    /// dropped them): a cluster removes them from its desired state. Each
    /// member finds its own from the manifest it is given.
    pub unloads: Vec<String>,
}

/// One module's build, named by the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRef {
    pub module: String,
    /// Hex.
    pub sha256: String,
    pub vsn: String,
    /// Where the coordinator read it (recorded as the version's source).
    pub source: PathBuf,
}

impl Blueprint {
    /// True when committing it would change nothing anywhere: no build, no
    /// manifest, no record, no `code_change` target.
    pub fn is_empty(&self) -> bool {
        self.code_change.is_empty()
            && self.units.iter().all(|unit| unit.builds.is_empty() && unit.app.is_none() && unit.extension.is_none())
    }

    /// Every build the blueprint names.
    pub fn builds(&self) -> impl Iterator<Item = &BuildRef> {
        self.units.iter().flat_map(|unit| unit.builds.iter())
    }
}

/// Which way a migration goes (`direction` in `zest_code_change`'s input):
/// `Down` when a rollback moves a process back to an earlier build (OTP's
/// `{down, Vsn}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Direction {
    #[default]
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}
