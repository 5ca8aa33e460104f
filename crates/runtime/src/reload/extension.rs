//! Scope `extension` (and the `extensions` of scope `all`): one source file
//! checked (CONTRACT.md §5.4), turned into a module build, and run through the
//! same module steps as an app's modules — so swap, drain and migration follow
//! the same rules. Unloading one (`system.unload`) is a unit too: its module
//! unloaded, its record removed.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::module::{self, Build};
use super::unit::{Record, Unit};
use super::unload;
use crate::build::compile::CompileReport;
use crate::build::extension::{self, ExtensionRecord, Format};
use crate::reason::{Failure, Reason};
use crate::report::{Kind, Stream};
use crate::request::ReloadOptions;
use crate::state::Shared;
use crate::telemetry::EventBody;

/// An extension's unit: the file at `given` checked, built and its module
/// staged. Nothing is swapped yet.
/// rustc's (or a source toolchain's) output is published as `zest.build.output` events of `request_id`.
pub(crate) fn plan_extension(shared: &Arc<Shared>, given: &Path, options: &ReloadOptions, request_id: &str) -> Unit {
    let started = Instant::now();
    let target = given.display().to_string();
    let unit = Unit::new(Kind::Extension, &target);
    let checked = match extension::check_path(&shared.config.extensions.roots, given) {
        Ok(checked) => checked,
        Err(failure) => return unit.error(failure),
    };
    if let Some(app) = shared.app_declaring(&checked.name) {
        let message = format!(
            "{target}: module `{}` belongs to app `{app}`, and an extension may not replace an app's module; \
             rename the file",
            checked.name
        );
        return unit.error(Failure::new(&target, Reason::InvalidModule, message));
    }
    let source = match std::fs::read(&checked.file) {
        Ok(source) => source,
        Err(err) => return unit.error(Failure::new(&target, Reason::Enoent, format!("cannot read {target}: {err}"))),
    };
    let record = ExtensionRecord {
        name: checked.name.clone(),
        path: std::env::current_dir().map(|cwd| cwd.join(given)).unwrap_or_else(|_| given.to_path_buf()),
        format: checked.format,
        source_sha256: hex::encode(Sha256::digest(&source)),
    };
    let mut unit = unit;
    let build = match checked.format {
        Format::Wat => Build { source: checked.file, bytes: source.into(), is_text: true },
        Format::Wasm => Build { source: checked.file, bytes: source.into(), is_text: false },
        Format::Rs => {
            let timeout = shared.config.limits.build_timeout;
            let on_line = |line: &str| {
                let body = EventBody::BuildOutput { stream: Stream::Stderr, line: line.to_string() };
                shared.telemetry.emit(Kind::Extension, &target, request_id, body);
            };
            match shared.rust.build(&target, &checked.file, &source, timeout, &on_line) {
                Ok(built) => {
                    unit.result.metadata.compile =
                        built.rustc.map(|run| CompileReport::ran_ok(run.command, run.duration));
                    Build { source: checked.file, bytes: built.wasm.into(), is_text: false }
                }
                Err(failure) => return unit.error(failure),
            }
        }
        Format::Js | Format::Py => {
            let rules = module::Rules::of(options);
            let language = checked.format.language().expect("a source format has a language");
            let timeout = shared.config.limits.build_timeout;
            let on_line = |stream: Stream, line: &str| {
                let body = EventBody::BuildOutput { stream, line: line.to_string() };
                shared.telemetry.emit(Kind::Extension, &target, request_id, body);
            };
            let build = |whole: bool| {
                shared.sources.build(&target, language, &checked.name, &checked.file, &source, whole, timeout, &on_line)
            };
            // The file deleted (or renamed away) while the tool ran or its
            // build compiled: nothing of it loads, as if it had been gone
            // before the reload (whatever the build said of it).
            let still_there = || {
                gone(&checked.file).map(|problem| {
                    let message =
                        format!("{target} {problem} while it was being built; nothing of that build is loaded");
                    Failure::new(&target, Reason::Enoent, message)
                })
            };
            let mut built = match build(false) {
                Ok(built) => built,
                Err(failure) => return unit.error(still_there().unwrap_or(failure)),
            };
            if let Some(failure) = still_there() {
                return unit.error(failure);
            }
            let stage = |built: &crate::build::source::SourceBuild| {
                let bytes = built.component.clone().into();
                module::plan_build(
                    shared,
                    &checked.name,
                    Build { source: checked.file.clone(), bytes, is_text: false },
                    rules,
                    started,
                )
            };
            let mut step = stage(&built);
            // A runner's build that does not load (a syntax error, an import
            // it lacks, an exception at import): the tool builds the file
            // whole, and its words are the report.
            if built.runner && step.result.errors.iter().any(|failure| failure.reason == Reason::InvalidModule) {
                built = match build(true) {
                    Ok(built) => built,
                    Err(failure) => return unit.error(still_there().unwrap_or(failure)),
                };
                step = stage(&built);
            }
            unit.result.metadata.compile = built.run.map(|run| CompileReport::ran_ok(run.command, run.duration));
            if let Some(failure) = still_there() {
                return unit.error(failure);
            }
            unit.steps.push(step);
            unit.record = Some(Record::Extension(record));
            return unit;
        }
    };
    unit.steps.push(module::plan_build(shared, &checked.name, build, module::Rules::of(options), started));
    unit.record = Some(Record::Extension(record));
    unit
}

/// Why `file`, read at the start of its build, is no longer there to load
/// from, if it is not.
fn gone(file: &Path) -> Option<String> {
    match std::fs::metadata(file) {
        Ok(meta) if meta.is_file() => None,
        Ok(_) => Some("was replaced by something that is not a regular file".into()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Some("was deleted or renamed away".into()),
        Err(err) => Some(format!("could no longer be read ({err})")),
    }
}

/// The unit of unloading the extension loaded from `given`: `empty_path` and
/// `forbidden_path` as for a load (the file itself may be gone), then
/// `not_found` when no extension is recorded from that file (never loaded,
/// or unloaded already). Nothing is taken out yet.
pub(crate) fn plan_unload_extension(shared: &Arc<Shared>, given: &Path) -> Unit {
    let target = given.display().to_string();
    let unit = Unit::new(Kind::Extension, &target);
    let file = match extension::locate(&shared.config.extensions.roots, given) {
        Ok(file) => file,
        Err(failure) => return unit.error(failure),
    };
    let Some(record) = shared.extensions.loaded_from(&file) else {
        let message = format!("no extension is loaded from {target} (resolved to {})", file.display());
        return unit.error(Failure::new(&target, Reason::NotFound, message));
    };
    unload_record(shared, unit, record)
}

/// The unit of unloading the extension recorded under `name`, reported under
/// `target`: a member of a cluster unloading what its coordinator unloads
/// (the record's path is the coordinator's, so the name identifies it);
/// `not_found` when no extension of that name is recorded.
pub(crate) fn plan_unload_extension_named(shared: &Arc<Shared>, name: &str, target: &str) -> Unit {
    let unit = Unit::new(Kind::Extension, target);
    match shared.extensions.named(name) {
        Some(record) => unload_record(shared, unit, record),
        None => {
            let message = format!("no extension named `{name}` is recorded on this node");
            unit.error(Failure::new(target, Reason::NotFound, message))
        }
    }
}

/// `unit` unloading the extension of `record`: its module, then its record.
fn unload_record(shared: &Arc<Shared>, unit: Unit, record: ExtensionRecord) -> Unit {
    let mut unit = unit;
    // A recorded extension that did not load (its name taken by an app's
    // module, say) has only its record to remove.
    if shared.app_declaring(&record.name).is_none() && shared.registry.slot(&record.name).is_some() {
        unit.unloads.push(unload::plan(shared, &record.name));
    } else {
        unit.result.metadata.unloaded.push(record.name.clone());
    }
    unit.record = Some(Record::ExtensionGone(record.name));
    unit
}
