//! Reloading apps (scope `app`), the module scope's manifest lookup, and the
//! system (scope `all`).
//!
//! An app reload re-reads the manifest (so newly declared modules load), runs the
//! build first with `compile: true`, stages every module, and only then commits
//! them one after the other and purges. With `atomic`, one failed stage means no
//! module is swapped: the staged ones report `rolled_back`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::migrate::{self, Held};
use super::module::{self, ModuleStep};
use super::{AllScope, Counts, Failure, Kind, Reason, ReloadOptions, ReloadResult};
use crate::app::AppManifest;
use crate::compile::{self, CompileReport};
use crate::extension::ExtensionRecord;
use crate::node::Shared;
use crate::telemetry::EventBody;

/// Where an app reload finds its manifest.
pub(crate) enum AppSource<'a> {
    /// A loaded app, by name.
    Name(&'a str),
    /// An app directory (loading an app for the first time).
    Dir(&'a Path),
}

/// One app or extension, planned: its result so far, its module steps, and what
/// to record once it is applied.
pub(crate) struct Plan {
    pub(super) result: ReloadResult,
    pub(super) steps: Vec<ModuleStep>,
    pub(super) record: Option<Record>,
    pub(super) started: Instant,
}

/// What an applied plan leaves behind: the app's manifest, or the extension's
/// durable record.
pub(crate) enum Record {
    App(AppManifest),
    Extension(ExtensionRecord),
}

impl Plan {
    pub(super) fn new(kind: Kind, target: &str, started: Instant) -> Plan {
        Plan { result: ReloadResult::new(kind, target), steps: Vec::new(), record: None, started }
    }

    pub(super) fn error(mut self, failure: Failure) -> Plan {
        self.result.errors.push(failure);
        self
    }
}

pub(crate) fn plan_app(shared: &Arc<Shared>, source: AppSource<'_>, options: &ReloadOptions, request_id: &str) -> Plan {
    let started = Instant::now();
    let target = match source {
        AppSource::Name(name) => name.to_string(),
        AppSource::Dir(dir) => dir.display().to_string(),
    };
    let plan = Plan::new(Kind::App, &target, started);
    let dir: PathBuf = match source {
        AppSource::Name(name) => match shared.app(name) {
            Some(manifest) => manifest.dir,
            None => return plan.error(Failure::new(name, Reason::AppNotFound, format!("app `{name}` is not loaded"))),
        },
        AppSource::Dir(dir) => dir.to_path_buf(),
    };
    let manifest = match AppManifest::load(&dir) {
        Ok(manifest) => manifest,
        Err(err) => return plan.error(Failure::new(&target, err.reason, err.to_string())),
    };
    let mut plan = plan;
    plan.result.target = manifest.name.clone();
    if let AppSource::Name(name) = source {
        if manifest.name != name {
            let message = format!(
                "{} now names the app `{}`; rename apps by loading them anew",
                manifest.file.display(),
                manifest.name
            );
            return plan.error(Failure::new(name, Reason::InvalidModule, message));
        }
    }
    for module in &manifest.modules {
        if let Some(other) = shared.app_declaring(&module.name).filter(|other| *other != manifest.name) {
            let message = format!(
                "{}: module `{}` is already declared by app `{other}`; module names are unique on a node",
                manifest.file.display(),
                module.name
            );
            return plan.error(Failure::new(&manifest.name, Reason::InvalidModule, message));
        }
        if let Some(extension) = shared.extensions.get(&module.name) {
            let message = format!(
                "{}: module `{}` is already loaded as the extension {}; module names are unique on a node",
                manifest.file.display(),
                module.name,
                extension.path.display()
            );
            return plan.error(Failure::new(&manifest.name, Reason::InvalidModule, message));
        }
    }
    if options.compile {
        let report = build(shared, &manifest, request_id);
        let failed = build_failure(&manifest.name, &report);
        plan.result.metadata.compile = Some(report);
        if let Some(failure) = failed {
            return plan.error(failure);
        }
    }
    plan.steps = manifest.modules.iter().map(|m| module::plan(shared, &m.name, Some(&m.path), options.force)).collect();
    plan.record = Some(Record::App(manifest));
    plan
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

/// Commits every staged module of the plans and migrates their processes; with
/// `atomic`, the migrated processes stay suspended until [`settle`].
fn apply(shared: &Arc<Shared>, plans: &mut [Plan], options: &ReloadOptions) {
    for step in plans.iter_mut().flat_map(|plan| plan.steps.iter_mut()) {
        module::commit(shared, step);
    }
    for step in plans.iter_mut().flat_map(|plan| plan.steps.iter_mut()) {
        module::migrate(shared, step, options.force, options.atomic);
    }
}

/// Ends the request's changes: keeps them, or with `undo` (an atomic request
/// with a failed step) puts every swap and migration back; then purges (one
/// drain deadline for the lot).
fn settle(shared: &Arc<Shared>, plans: &mut [Plan], held: Vec<Held>, undo: Option<&str>, options: &ReloadOptions) {
    for step in plans.iter_mut().flat_map(|plan| plan.steps.iter_mut()) {
        module::settle(shared, step, undo);
    }
    for held in held {
        match undo {
            Some(_) => held.roll_back(),
            None => held.commit(),
        }
    }
    if undo.is_some() {
        for plan in plans.iter_mut() {
            plan.record = None;
        }
    }
    let deadline = shared.config.limits.drain_deadline();
    for step in plans.iter_mut().flat_map(|plan| plan.steps.iter_mut()) {
        module::purge(step, deadline, options.force);
    }
}

/// What failed in the plans, as `a, b failed`; `None` when nothing did.
fn culprits<'a>(plans: &[Plan], others: impl Iterator<Item = &'a ReloadResult>) -> Option<String> {
    let mut culprits: Vec<String> = Vec::new();
    for plan in plans {
        culprits.extend(plan.result.errors.iter().map(|f| f.target.clone()));
        for step in &plan.steps {
            culprits.extend(step.result.errors.iter().map(|f| f.target.clone()));
        }
    }
    for other in others {
        culprits.extend(other.errors.iter().map(|f| f.target.clone()));
    }
    culprits.dedup();
    (!culprits.is_empty()).then(|| format!("{} failed", culprits.join(", ")))
}

/// With `atomic`, before anything is swapped: if any plan failed to stage, drops
/// every staged build and says why. Returns true when the plans may be applied.
fn settle_staging(plans: &mut [Plan]) -> bool {
    let Some(because) = culprits(plans, std::iter::empty()) else {
        return true;
    };
    for plan in plans.iter_mut() {
        for step in &mut plan.steps {
            step.roll_back(&because);
        }
        plan.record = None;
    }
    false
}

/// The plan's result, with what it leaves behind recorded. An app's result has
/// one child per module; an extension's module step is its own result.
fn finish(shared: &Arc<Shared>, plan: Plan) -> ReloadResult {
    let Plan { mut result, steps, record, started } = plan;
    for step in steps {
        match result.kind {
            Kind::App => result.absorb(step.finish()),
            _ => result.merge(step.finish()),
        }
    }
    match record {
        Some(Record::App(manifest)) => {
            start_processes(shared, &manifest, &mut result);
            shared.record_app(manifest);
        }
        Some(Record::Extension(record)) => super::extension::record(shared, record, &mut result),
        None => {}
    }
    result.duration = started.elapsed();
    result
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
        if let Err(err) = crate::node::start_process(shared, &decl.name, &decl.module, &decl.init.to_string()) {
            let message = format!("{}: {err}", manifest.file.display());
            result.errors.push(Failure::new(format!("process:{}", decl.name), Reason::NotRunning, message));
        }
    }
}

/// Scope `app` (and loading an app).
pub(crate) fn reload_app(
    shared: &Arc<Shared>,
    source: AppSource<'_>,
    options: &ReloadOptions,
    request_id: &str,
) -> ReloadResult {
    run_plan(shared, plan_app(shared, source, options, request_id), options)
}

/// One planned app or extension, to the end: with `atomic`, nothing is swapped
/// unless every module staged; then apply, settle, finish.
pub(crate) fn run_plan(shared: &Arc<Shared>, plan: Plan, options: &ReloadOptions) -> ReloadResult {
    let mut plans = [plan];
    if !options.atomic || settle_staging(&mut plans) {
        apply(shared, &mut plans, options);
        let undo = if options.atomic { culprits(&plans, std::iter::empty()) } else { None };
        settle(shared, &mut plans, Vec::new(), undo.as_deref(), options);
    }
    let [plan] = plans;
    finish(shared, plan)
}

/// Scope `module`: the module's app manifest is read again, so a module newly
/// declared there loads; a module no app declares (loaded through the embedding
/// API) reloads from its file; anything else is `not_found`.
pub(crate) fn reload_module_scope(
    shared: &Arc<Shared>,
    name: &str,
    options: &ReloadOptions,
    request_id: &str,
) -> ReloadResult {
    let started = Instant::now();
    let mut found = None;
    for recorded in shared.apps() {
        let manifest = match AppManifest::load(&recorded.dir) {
            Ok(manifest) => manifest,
            Err(err) if recorded.modules.iter().any(|m| m.name == name) => {
                let mut result = ReloadResult::new(Kind::Module, name);
                result.errors.push(Failure::new(name, err.reason, err.to_string()));
                result.duration = started.elapsed();
                return result;
            }
            Err(_) => continue,
        };
        if let Some(decl) = manifest.modules.iter().find(|m| m.name == name).cloned() {
            found = Some((manifest, decl.path));
            break;
        }
    }
    if found.is_none() {
        if let Some(record) = shared.extensions.get(name) {
            // An extension: loaded again from its file, by the extension rules.
            let mut result = super::reload_extension(shared, &record.path, options, request_id);
            result.kind = Kind::Module;
            result.target = name.to_string();
            return result;
        }
    }
    let mut compile_report = None;
    let source = match &found {
        Some((manifest, path)) => {
            if options.compile {
                let report = build(shared, manifest, request_id);
                let failure = build_failure(name, &report);
                compile_report = Some(report);
                if let Some(failure) = failure {
                    let mut result = ReloadResult::new(Kind::Module, name);
                    result.errors.push(failure);
                    result.metadata.compile = compile_report;
                    result.duration = started.elapsed();
                    return result;
                }
            }
            Some(path.as_path())
        }
        None if shared.registry.slot(name).is_some() => None,
        None => {
            let mut result = ReloadResult::new(Kind::Module, name);
            result.errors.push(Failure::new(name, Reason::NotFound, format!("no loaded app declares module `{name}`")));
            result.duration = started.elapsed();
            return result;
        }
    };
    let step = module::run(shared, name, source, options);
    let applied = !step.failed();
    let mut result = step.finish();
    result.metadata.compile = compile_report;
    if let (true, Some((manifest, _))) = (applied, found) {
        shared.record_app(manifest);
    }
    result.duration = started.elapsed();
    result
}

/// Scope `all`: every requested app (default: every loaded app), every listed
/// extension, then every explicit `code_change` target, each as a child step
/// with its own telemetry, under the one lock the request holds. With `atomic`,
/// every app and extension is staged before anything is swapped, and one failed
/// step undoes every swap and migration of the request.
pub(crate) fn reload_system(
    shared: &Arc<Shared>,
    all: &AllScope,
    options: &ReloadOptions,
    request_id: &str,
) -> ReloadResult {
    let started = Instant::now();
    let apps: Vec<String> = if all.apps.is_empty() { shared.app_names() } else { all.apps.clone() };
    let children: Vec<Child<'_>> = apps
        .iter()
        .map(|name| Child::App(name))
        .chain(all.extensions.iter().map(|path| Child::Extension(path)))
        .collect();
    let mut result = ReloadResult::new(Kind::System, "system");
    let telemetry = &shared.telemetry;
    if options.atomic {
        let start = || EventBody::Start { system_time: std::time::SystemTime::now() };
        let mut plans = Vec::new();
        for child in &children {
            telemetry.emit(child.kind(), &child.target(), request_id, start());
            plans.push(child.plan(shared, options, request_id));
        }
        let mut changes = Vec::new();
        let mut held = Vec::new();
        if settle_staging(&mut plans) {
            apply(shared, &mut plans, options);
            for target in &all.code_change {
                telemetry.emit(Kind::CodeChange, &format!("{}:{}", target.server, target.module), request_id, start());
                let (child, hold) = migrate::code_change(shared, target, true);
                held.extend(hold.map(|hold| (changes.len(), hold)));
                changes.push(child);
            }
            let undo = culprits(&plans, changes.iter());
            if let Some(because) = &undo {
                for (index, _) in &held {
                    let child = &mut changes[*index];
                    child.reloaded.clear();
                    let message = format!("undone: {because}, and the reload is atomic");
                    child.errors.push(Failure::new(child.target.clone(), Reason::RolledBack, message));
                }
            }
            let held = held.into_iter().map(|(_, held)| held).collect();
            settle(shared, &mut plans, held, undo.as_deref(), options);
        }
        for (child, plan) in children.iter().zip(plans) {
            let done = finish(shared, plan);
            let body = EventBody::Stop { duration: done.duration, status: done.status() };
            telemetry.emit(child.kind(), &child.target(), request_id, body);
            result.absorb(done);
        }
        for child in changes {
            let body = EventBody::Stop { duration: child.duration, status: child.status() };
            telemetry.emit(Kind::CodeChange, &child.target.clone(), request_id, body);
            result.absorb(child);
        }
    } else {
        for child in &children {
            let done = telemetry.step(child.kind(), &child.target(), request_id, || {
                run_plan(shared, child.plan(shared, options, request_id), options)
            });
            result.absorb(done);
        }
        for target in &all.code_change {
            let name = format!("{}:{}", target.server, target.module);
            let child =
                telemetry.step(Kind::CodeChange, &name, request_id, || migrate::code_change(shared, target, false).0);
            result.absorb(child);
        }
    }
    result.metadata.counts = Some(Counts::of(&result.results));
    result.duration = started.elapsed();
    result
}

/// An app or extension child of scope `all`.
enum Child<'a> {
    App(&'a str),
    Extension(&'a Path),
}

impl Child<'_> {
    fn kind(&self) -> Kind {
        match self {
            Child::App(_) => Kind::App,
            Child::Extension(_) => Kind::Extension,
        }
    }

    fn target(&self) -> String {
        match self {
            Child::App(name) => name.to_string(),
            Child::Extension(path) => path.display().to_string(),
        }
    }

    fn plan(&self, shared: &Arc<Shared>, options: &ReloadOptions, request_id: &str) -> Plan {
        match self {
            Child::App(name) => plan_app(shared, AppSource::Name(name), options, request_id),
            Child::Extension(path) => super::extension::plan_extension(shared, path, options, request_id),
        }
    }
}
