//! A [`Blueprint`]: what another node needs to stage exactly the builds a plan
//! staged — the plan's units, each module's build by sha256, the manifests and
//! extension records the plan applies, its `code_change` targets.
//!
//! The coordinator of a cluster reload takes one from its own plan
//! ([`crate::Plan::blueprint`]) and sends it to every member, which fetches the
//! builds it lacks and stages them ([`crate::Session::plan_blueprint`]); a member
//! catching up with the cluster stages the blueprint of what the cluster
//! committed. Blueprints are plain data: the cluster layer owns their wire form.

use std::path::PathBuf;
use std::sync::Arc;

use super::app::Record;
use super::module::{self, ModuleStep};
use super::plan::Unit;
use super::{CodeChangeTarget, Kind, ReloadOptions};
use crate::app::AppManifest;
use crate::extension::ExtensionRecord;
use crate::node::Shared;

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

pub(super) fn of_plan(
    shared: &Shared,
    kind: Kind,
    target: &str,
    units: &[Unit],
    code_change: &[CodeChangeTarget],
    options: &ReloadOptions,
) -> Blueprint {
    let units = units
        .iter()
        .map(|unit| {
            // A unit whose planning failed keeps nothing; nor does scope
            // `module` keep its manifest when its one module failed.
            let failed = !unit.result.errors.is_empty()
                || (unit.result.kind != Kind::App && unit.steps.iter().any(ModuleStep::failed));
            let record = if failed { None } else { unit.record.as_ref() };
            BlueprintUnit {
                kind: unit.result.kind,
                target: unit.result.target.clone(),
                builds: unit.steps.iter().filter_map(|step| step.build_ref(shared)).collect(),
                app: match record {
                    Some(Record::App(manifest)) => Some(manifest.clone()),
                    _ => None,
                },
                extension: match record {
                    Some(Record::Extension(record)) => Some(record.clone()),
                    _ => None,
                },
            }
        })
        .collect();
    Blueprint {
        kind,
        target: target.to_string(),
        units,
        code_change: code_change.to_vec(),
        force: options.force,
        atomic: options.atomic,
    }
}

/// Stages one unit of a blueprint from the builds the node holds.
pub(super) fn stage_unit(shared: &Arc<Shared>, unit: &BlueprintUnit, force: bool) -> Unit {
    let mut staged = Unit::new(unit.kind, &unit.target);
    staged.steps = unit.builds.iter().map(|build| module::plan_ref(shared, build, force)).collect::<Vec<ModuleStep>>();
    staged.record = match (&unit.app, &unit.extension) {
        (Some(manifest), _) => Some(Record::App(manifest.clone())),
        (None, Some(record)) => Some(Record::Extension(record.clone())),
        (None, None) => None,
    };
    staged
}
