//! The reload: the phases that turn a request (`request.rs`) into its one
//! result (`report.rs`), as an API a standalone node drives in one go and a
//! cluster drives on every member. From the bottom up:
//!
//! - `reload/migrate.rs`: moving processes onto a new version; explicit
//!   `code_change` targets;
//! - `reload/module.rs`: one module's step: stage a build off the call path,
//!   swap it in, migrate, settle, purge the old versions;
//! - `reload/unload.rs`: one module leaving the node (a purge that removes
//!   the name);
//! - `reload/unit.rs`: one child of a plan (an app, an extension, a module)
//!   and what it leaves behind once applied (manifests, records, processes);
//! - `reload/extension.rs`: units of extensions (loads and unloads);
//! - `reload/app.rs`: units of apps (manifests, builds, modules dropped,
//!   unloads) and of scope `module`;
//! - `reload/blueprint.rs`: a plan's builds for other members, and staging them;
//! - `reload/rollback.rs`: rollback requests into blueprints of earlier builds;
//! - `reload/plan.rs`: [`Session`] (the node's lock, held) and [`Plan`], the
//!   phases (stage → commit → settle or abort → finish);
//! - `reload/trial.rs`: the trial watcher, which drives sessions of its own to
//!   revert or promote.
//!
//! *Architecture invariant*: only `reload/` changes the registry, and it never
//! names `Node`: the driver wraps the phases, never the reverse.

mod app;
mod blueprint;
mod extension;
mod migrate;
mod module;
mod plan;
mod rollback;
pub(crate) mod trial;
mod unit;
mod unload;

pub use crate::reason::{Failure, Reason, Skip};
pub use crate::report::{
    ClusterOutcome, Counts, FunctionChange, Kind, Metadata, Phase, PlanEntry, ReloadResult, Status, Swap,
};
pub use crate::request::{
    AllScope, Blueprint, BlueprintUnit, BuildRef, CodeChangeTarget, ReloadError, ReloadOptions, ReloadRequest,
    RollbackRequest, RollbackTarget, Scope, TrialSpec, UnloadRequest, UnloadTarget,
};
pub(crate) use plan::Work;
pub use plan::{Plan, Session};
