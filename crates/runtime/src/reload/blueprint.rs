//! Blueprints (`request.rs`) made and staged: a plan's units as the builds by
//! sha256, manifests and records another node needs to stage exactly the
//! same ([`of_plan`]), and one unit of a blueprint staged here
//! ([`stage_unit`]).
//!
//! The coordinator of a cluster reload takes one from its own plan
//! (`Plan::blueprint`) and sends it to every member, which fetches the builds
//! it lacks and stages them (`Session::plan_blueprint`); a member catching up
//! with the cluster stages the blueprint of what the cluster committed.

use std::sync::Arc;

use super::module::{self, ModuleStep};
use super::unit::{Record, Unit};
use super::unload;
use crate::report::Kind;
use crate::request::{Blueprint, BlueprintUnit, CodeChangeTarget, ReloadOptions};
use crate::state::Shared;

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
                unloads: if failed {
                    Vec::new()
                } else {
                    unit.unloads.iter().map(|u| u.result.target.clone()).collect()
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
        allow_breaking: options.allow_breaking,
        atomic: options.atomic,
    }
}

/// Stages one unit of a blueprint from the builds the node holds.
pub(super) fn stage_unit(shared: &Arc<Shared>, unit: &BlueprintUnit, rules: module::Rules) -> Unit {
    let mut staged = Unit::new(unit.kind, &unit.target);
    staged.steps = unit.builds.iter().map(|build| module::plan_ref(shared, build, rules)).collect::<Vec<ModuleStep>>();
    if let Some(manifest) = &unit.app {
        // The modules the app's manifest no longer declares leave every
        // member alike.
        staged.unloads = unload::dropped(shared, manifest);
    }
    staged.record = match (&unit.app, &unit.extension) {
        (Some(manifest), _) => Some(Record::App(manifest.clone())),
        (None, Some(record)) => Some(Record::Extension(record.clone())),
        (None, None) => None,
    };
    staged
}
