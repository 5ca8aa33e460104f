//! Extensions: single source files an operator drops on the node (CONTRACT.md
//! §5.4). This file holds what is particular to them — the path checks, turning a
//! `.wat`, `.wasm` or `.rs` file into a module build, and the durable records —
//! (`.js` and `.py` files are built by `source.rs`)
//! while `reload::extension` runs them through the same module steps as any
//! other reload.
//!
//! A `.rs` build is keyed by the sha256 of the source, the compiler's version and
//! the guest SDK it links against; the wasm it produces is kept under that key,
//! so an unchanged source never runs `rustc` again, not even after a restart.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::toolchain::{OnLine, Rustc, Spare, ToolchainError};
pub use crate::config::ExtensionsConfig;
use crate::reason::{Failure, Reason};

/// What an extension file is written in, from its file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Wat,
    Wasm,
    Rs,
    Js,
    Py,
}

impl Format {
    /// Its name on the wire and in the records: the file extension.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Wat => "wat",
            Format::Wasm => "wasm",
            Format::Rs => "rs",
            Format::Js => "js",
            Format::Py => "py",
        }
    }

    /// The language a source extension of this format is written in, for
    /// those built by a component toolchain (`source.rs`).
    pub fn language(self) -> Option<super::source::Language> {
        match self {
            Format::Js => Some(super::source::Language::JavaScript),
            Format::Py => Some(super::source::Language::Python),
            Format::Wat | Format::Wasm | Format::Rs => None,
        }
    }

    pub(crate) fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "wat" => Some(Format::Wat),
            "wasm" => Some(Format::Wasm),
            "rs" => Some(Format::Rs),
            "js" => Some(Format::Js),
            "py" => Some(Format::Py),
            _ => None,
        }
    }
}

/// A path that passed every check of §5.4 up to compiling.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The module name: the file stem.
    pub name: String,
    /// The file, links resolved.
    pub file: PathBuf,
    pub format: Format,
}

/// Runs the checks of §5.4 in their order — `empty_path`, `forbidden_path`,
/// `enoent`, `not_a_file`, `unsupported_extension` — on `given` (relative paths
/// are taken from the working directory). The failures name `given`. Public
/// for tools and the fuzz targets (`crates/fuzz`).
pub fn check_path(roots: &[PathBuf], given: &Path) -> Result<Checked, Failure> {
    let target = given.display().to_string();
    let fail = |reason, message: String| Failure::new(&target, reason, message);
    let file = locate(roots, given)?;
    let metadata = match fs::metadata(&file) {
        Ok(metadata) => metadata,
        Err(err) => return Err(fail(Reason::Enoent, format!("cannot read {target}: {err}"))),
    };
    if !metadata.is_file() {
        return Err(fail(Reason::NotAFile, format!("{target} is not a regular file")));
    }
    let Some(format) = Format::of(given) else {
        let message = format!("{target}: an extension is a .wat, .wasm, .rs, .js or .py file");
        return Err(fail(Reason::UnsupportedExtension, message));
    };
    let name = given.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    crate::wasm::abi::check_name(&name).map_err(|message| {
        fail(Reason::InvalidModule, format!("{target}: the file stem names the module, and it is an {message}"))
    })?;
    Ok(Checked { name, file, format })
}

/// The first two checks of §5.4 — `empty_path`, `forbidden_path` — on
/// `given` (relative paths are taken from the working directory): the file it
/// names, links resolved, whether or not it exists. Unloading an extension
/// whose file is gone runs these alone.
pub(crate) fn locate(roots: &[PathBuf], given: &Path) -> Result<PathBuf, Failure> {
    let target = given.display().to_string();
    let fail = |reason, message: String| Failure::new(&target, reason, message);
    if target.trim().is_empty() {
        return Err(fail(Reason::EmptyPath, "the extension path is empty".into()));
    }
    let cwd = std::env::current_dir().map_err(|err| fail(Reason::Enoent, format!("no working directory: {err}")))?;
    let file = resolve_links(&cwd.join(given)).map_err(|message| fail(Reason::ForbiddenPath, message))?;
    let roots: Vec<PathBuf> = roots.iter().filter_map(|root| resolve_links(&cwd.join(root)).ok()).collect();
    if !roots.iter().any(|root| file.starts_with(root)) {
        let roots: Vec<String> = roots.iter().map(|root| root.display().to_string()).collect();
        let message = format!(
            "{target} resolves to {}, which is outside the extension roots ({})",
            file.display(),
            roots.join(", ")
        );
        return Err(fail(Reason::ForbiddenPath, message));
    }
    Ok(file)
}

/// `path` (absolute) with every symbolic link resolved, component by component,
/// whether or not the whole path exists; `..` after a missing component is taken
/// lexically (nothing below a missing directory can be a link).
fn resolve_links(path: &Path) -> Result<PathBuf, String> {
    const MAX_LINKS: usize = 40;
    let mut resolved = PathBuf::from("/");
    let mut pending: Vec<PathBuf> = path.components().rev().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.components().next() {
            Some(Component::RootDir | Component::Prefix(_)) => resolved = PathBuf::from("/"),
            Some(Component::CurDir) | None => {}
            Some(Component::ParentDir) => {
                resolved.pop();
            }
            Some(Component::Normal(name)) => {
                let candidate = resolved.join(name);
                match fs::symlink_metadata(&candidate) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        links += 1;
                        if links > MAX_LINKS {
                            return Err(format!("{} has more than {MAX_LINKS} levels of links", path.display()));
                        }
                        let link = fs::read_link(&candidate)
                            .map_err(|err| format!("cannot read the link {}: {err}", candidate.display()))?;
                        pending.extend(link.components().rev().map(|c| PathBuf::from(c.as_os_str())));
                    }
                    _ => resolved = candidate,
                }
            }
        }
    }
    Ok(resolved)
}

/// The durable record of one loaded extension (`<data_dir>/extensions.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionRecord {
    pub name: String,
    /// The path as given in the request that loaded it, made absolute against the
    /// working directory of then (links are not resolved: the root check runs
    /// again on every load).
    pub path: PathBuf,
    pub format: Format,
    /// sha256 of the source file, hex.
    pub source_sha256: String,
}

/// What the records file holds.
#[derive(Debug, Serialize)]
struct RecordsFile<'a> {
    version: u32,
    extensions: Vec<&'a ExtensionRecord>,
}

/// Records read back at start: the good ones, and what could not be read.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) records: Vec<ExtensionRecord>,
    pub(crate) problems: Vec<String>,
}

/// The extensions the node has loaded, by module name, kept on disk.
#[derive(Debug)]
pub(crate) struct Extensions {
    records: Mutex<Records>,
    /// `None`: nothing is kept across restarts.
    file: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct Records {
    by_name: BTreeMap<String, ExtensionRecord>,
    /// The file lags behind `by_name` (its last write failed).
    unsaved: bool,
}

const RECORDS_VERSION: u32 = 1;

impl Extensions {
    pub(crate) fn new(data_dir: Option<&Path>) -> Extensions {
        Extensions { records: Mutex::default(), file: data_dir.map(|dir| dir.join("extensions.json")) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, name: &str) -> Option<ExtensionRecord> {
        self.lock().by_name.get(name).cloned()
    }

    pub(crate) fn all(&self) -> Vec<ExtensionRecord> {
        self.lock().by_name.values().cloned().collect()
    }

    /// Keeps `record` in memory only (a record read back at start).
    pub(crate) fn remember(&self, record: ExtensionRecord) {
        self.lock().by_name.insert(record.name.clone(), record);
    }

    /// Records `record` and writes the file: a temporary file, fsync, rename,
    /// fsync of the directory. A record already on disk as it is (an unchanged
    /// extension reloaded) writes nothing. A failure to write is returned; the
    /// record is kept in memory either way, and the next record retries.
    pub(crate) fn record(&self, record: ExtensionRecord) -> Result<(), String> {
        let mut records = self.lock();
        if records.by_name.get(&record.name) == Some(&record) && !records.unsaved {
            return Ok(());
        }
        records.by_name.insert(record.name.clone(), record);
        self.save(&mut records)
    }

    /// The record of the extension loaded from `file` (links resolved, as
    /// [`locate`] gives it), if one is.
    pub(crate) fn loaded_from(&self, file: &Path) -> Option<ExtensionRecord> {
        let records = self.lock();
        let same = |record: &ExtensionRecord| resolve_links(&record.path).is_ok_and(|path| path == file);
        records.by_name.values().find(|record| same(record)).cloned()
    }

    /// The record of extension `name`, if one is.
    pub(crate) fn named(&self, name: &str) -> Option<ExtensionRecord> {
        self.lock().by_name.get(name).cloned()
    }

    /// Removes the record of extension `name` and writes the file as
    /// [`Extensions::record`] does (fsync, rename, fsync of the directory), so
    /// a restart, even right after a SIGKILL, does not load it again. A
    /// failure to write is returned; the record is gone from memory either
    /// way, and the next write retries.
    pub(crate) fn forget(&self, name: &str) -> Result<(), String> {
        let mut records = self.lock();
        if records.by_name.remove(name).is_none() && !records.unsaved {
            return Ok(());
        }
        self.save(&mut records)
    }

    /// Writes every record to the file (fsync, rename, fsync of the
    /// directory), remembering whether that failed so the next change retries.
    fn save(&self, records: &mut Records) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let body = RecordsFile { version: RECORDS_VERSION, extensions: records.by_name.values().collect() };
        let text = serde_json::to_string_pretty(&body).expect("records serialise");
        let written = write_durably(file, text.as_bytes());
        records.unsaved = written.is_err();
        written.map_err(|err| format!("cannot write {}: {err}", file.display()))
    }

    /// Reads the records file. A record that cannot be read is reported and left
    /// out; a file that cannot be parsed at all is kept aside as
    /// `extensions.json.broken` so nothing is lost when the next load rewrites it.
    pub(crate) fn recover(&self) -> Recovered {
        let mut recovered = Recovered::default();
        let Some(file) = &self.file else {
            return recovered;
        };
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return recovered,
            Err(err) => {
                recovered.problems.push(format!("cannot read {}: {err}", file.display()));
                return recovered;
            }
        };
        let entries = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|doc| {
            (doc.get("version")? == RECORDS_VERSION).then_some(())?;
            doc.get("extensions")?.as_array().cloned()
        });
        let Some(entries) = entries else {
            let aside = file.with_extension("json.broken");
            let kept = fs::rename(file, &aside).map(|()| format!("; kept as {}", aside.display())).unwrap_or_default();
            recovered
                .problems
                .push(format!("{} is not a version-{RECORDS_VERSION} extension record file{kept}", file.display()));
            return recovered;
        };
        for (index, entry) in entries.into_iter().enumerate() {
            match serde_json::from_value::<ExtensionRecord>(entry) {
                Ok(record) => recovered.records.push(record),
                Err(err) => recovered.problems.push(format!("record {index} of {}: {err}", file.display())),
            }
        }
        recovered
    }
}

/// Writes `bytes` to `file` durably: a temporary file beside it, fsync,
/// rename, fsync of the directory.
pub(crate) fn write_durably(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(file).map_err(|err| err.error)?;
    fs::File::open(dir)?.sync_all()
}

/// Turns `.rs` sources into wasm with a `rustc` child process, keeping each
/// artifact under the key of its source, compiler and SDK.
#[derive(Debug)]
pub(crate) struct RustBuilds {
    configured: Option<PathBuf>,
    /// The compiler found on first use (probing it spawns two processes).
    rustc: Mutex<Option<Rustc>>,
    /// The guest SDK build and the artifacts; a temporary directory of the node
    /// when it keeps nothing on disk.
    dir: PathBuf,
    /// `rustc`s started ahead, each for the next build of one file
    /// (`toolchain/spare.rs`), the latest last; at most [`SPARES`].
    spares: Mutex<Vec<Spare>>,
    _temp: Option<tempfile::TempDir>,
}

/// How many files at most have a `rustc` waiting for their next build (each
/// holds about 12 MB of memory while it waits).
const SPARES: usize = 2;

/// A `.rs` build: the wasm, and what running `rustc` took (`None` when the
/// artifact was already there).
#[derive(Debug)]
pub(crate) struct RustBuild {
    pub(crate) wasm: Vec<u8>,
    pub(crate) rustc: Option<RustcRun>,
}

#[derive(Debug)]
pub(crate) struct RustcRun {
    pub(crate) command: String,
    pub(crate) duration: std::time::Duration,
}

impl RustBuilds {
    pub(crate) fn new(configured: Option<PathBuf>, data_dir: Option<&Path>) -> std::io::Result<RustBuilds> {
        let (dir, temp) = match data_dir {
            Some(dir) => (dir.join("rust"), None),
            None => {
                let temp = tempfile::Builder::new().prefix("zest-rust-").tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        // A spare's directory outlives it only when the node did not end
        // cleanly; nothing in it is kept.
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("spare-") {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(RustBuilds { configured, rustc: Mutex::new(None), dir, spares: Mutex::default(), _temp: temp })
    }

    fn rustc(&self) -> Result<Rustc, ToolchainError> {
        let mut found = self.rustc.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rustc) = &*found {
            return Ok(rustc.clone());
        }
        let rustc = Rustc::find(self.configured.as_deref())?;
        *found = Some(rustc.clone());
        Ok(rustc)
    }

    /// The wasm for `source` (the text of `file`): the kept artifact when there
    /// is one, else `rustc` runs in a private temporary directory, killed after
    /// `timeout`, each line it prints going to `on_line`. Errors: `compile_error` with the compiler's words (its paths
    /// name `file`), `timeout`, or `compile_failed` when no compiler can run.
    pub(crate) fn build(
        &self,
        target: &str,
        file: &Path,
        source: &[u8],
        timeout: std::time::Duration,
        on_line: OnLine<'_>,
    ) -> Result<RustBuild, Failure> {
        let failed = |err: ToolchainError| {
            let reason = match &err {
                ToolchainError::Failed { .. } => Reason::CompileError,
                ToolchainError::TimedOut { .. } => Reason::Timeout,
                _ => Reason::CompileFailed,
            };
            Failure::new(target, reason, err.to_string())
        };
        let rustc = self.rustc().map_err(failed)?;
        let mut key = Sha256::new();
        key.update(rustc.build_tag());
        key.update(source);
        let artifact = self.dir.join("artifacts").join(format!("{}.wasm", hex::encode(key.finalize())));
        if let Ok(wasm) = fs::read(&artifact) {
            return Ok(RustBuild { wasm, rustc: None });
        }
        let io = |err: std::io::Error| {
            Failure::new(target, Reason::CompileFailed, format!("cannot prepare {}: {err}", self.dir.display()))
        };
        fs::create_dir_all(self.dir.join("artifacts")).map_err(io)?;
        let private = tempfile::Builder::new().prefix("build-").tempdir_in(&self.dir).map_err(io)?;
        let file_name = file.file_name().unwrap_or(std::ffi::OsStr::new("extension.rs"));
        let out = private.path().join("out.wasm");
        let shown_as = file.parent().unwrap_or(Path::new("/"));
        let started = std::time::Instant::now();
        let spare = {
            let mut spares = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
            let at = spares.iter().position(|spare| spare.serves(file_name, shown_as));
            at.map(|at| spares.remove(at))
        };
        let built = match spare.and_then(|spare| spare.compile(source, &out, timeout, on_line)) {
            Some(built) => built.map(|()| rustc.command_line(file, shown_as)),
            None => {
                let copy = private.path().join(file_name);
                fs::write(&copy, source).map_err(io)?;
                rustc.compile_module(&copy, &out, &self.dir, shown_as, timeout, on_line)
            }
        };
        let duration = started.elapsed();
        // The next build of this file likely comes soon (an edit, or the fix
        // of this one): its rustc loads itself while this build's module
        // compiles (on the other core, when one piece changed).
        if matches!(built, Ok(_) | Err(ToolchainError::Failed { .. })) {
            self.start_spare(&rustc, file_name, shown_as);
        }
        let command = built.map_err(failed)?;
        let wasm = fs::read(&out).map_err(io)?;
        // Keep the artifact (tmp + rename, so a crash never leaves half a file).
        let staged = private.path().join("artifact.wasm");
        if fs::write(&staged, &wasm).and_then(|()| fs::rename(&staged, &artifact)).is_err() {
            tracing::warn!(artifact = %artifact.display(), "cannot keep the compiled extension; it will be rebuilt");
        }
        Ok(RustBuild { wasm, rustc: Some(RustcRun { command, duration }) })
    }

    /// Starts a `rustc` for the next build of the file `file_name` shown as in
    /// `shown_as`, unless one waits already; the oldest spare goes beyond
    /// [`SPARES`]. Returns at once. A spare that cannot start is left out: the
    /// next build starts its own `rustc`.
    fn start_spare(&self, rustc: &Rustc, file_name: &std::ffi::OsStr, shown_as: &Path) {
        let mut spares = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
        if spares.iter().any(|spare| spare.serves(file_name, shown_as)) {
            return;
        }
        match rustc.spare(file_name, &self.dir, shown_as) {
            Ok(spare) => {
                spares.push(spare);
                // Dropped (killed and reaped) once the list is free again.
                let evicted = (spares.len() > SPARES).then(|| spares.remove(0));
                drop(spares);
                drop(evicted);
            }
            Err(err) => tracing::debug!(file = ?file_name, %err, "no rustc started ahead for the next build"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_component_by_component() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        fs::create_dir(root.join("inside")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("inside/escape")).unwrap();
        std::os::unix::fs::symlink("../inside", root.join("inside/again")).unwrap();
        assert_eq!(resolve_links(&root.join("inside/escape/passwd")).unwrap(), Path::new("/etc/passwd"));
        assert_eq!(resolve_links(&root.join("inside/again/x.wat")).unwrap(), root.join("inside/x.wat"));
        assert_eq!(resolve_links(&root.join("inside/missing/../y.wat")).unwrap(), root.join("inside/y.wat"));
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_links(&root.join("loop")).unwrap_err().contains("levels of links"));
    }
}
