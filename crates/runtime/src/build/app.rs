//! Apps: directories with a `zest.toml` manifest declaring modules and processes
//! (CONTRACT.md §3).
//!
//! [`AppManifest::load`] reads and checks a manifest. Every problem is refused
//! with a [`ManifestError`] naming the file, the key and the problem: unknown keys,
//! bad or duplicate names, missing module files, a process of an undeclared
//! module. A module name declared by two apps of one node is refused when the
//! second app loads (by the node, which knows the other apps).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::extension::write_durably;

use crate::reason::Reason;
use crate::wasm::abi::check_name;

/// The manifest's file name inside an app directory.
pub const MANIFEST: &str = "zest.toml";

/// A checked app manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct AppManifest {
    pub name: String,
    /// The app directory (builds run here; module paths are relative to it).
    pub dir: PathBuf,
    /// The manifest file.
    pub file: PathBuf,
    /// `app.build`: the command `compile: true` runs, through `sh -c`.
    pub build: Option<String>,
    /// `app.watch`: globs, relative to the app directory, of sources whose
    /// change makes watch mode reload the app with `compile: true`.
    pub watch: Vec<String>,
    pub modules: Vec<ModuleDecl>,
    pub processes: Vec<ProcessDecl>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleDecl {
    pub name: String,
    /// Absolute (the app directory joined with the manifest's `path`).
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessDecl {
    pub name: String,
    pub module: String,
    /// `init`, converted from TOML to JSON; `null` when absent.
    pub init: serde_json::Value,
}

/// A manifest that cannot be loaded: `{file}: {key}: {problem}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// The key at fault, like `modules[1].path`; empty when the file as a whole is.
    pub key: String,
    pub problem: String,
    /// `enoent` for a missing file (the manifest or a module), else `invalid_module`.
    pub reason: Reason,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.problem)
        }
    }
}

impl std::error::Error for ManifestError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    app: AppTable,
    #[serde(default)]
    modules: Vec<ModuleTable>,
    #[serde(default)]
    processes: Vec<ProcessTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppTable {
    name: String,
    build: Option<String>,
    #[serde(default)]
    watch: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleTable {
    name: String,
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessTable {
    name: String,
    module: String,
    init: Option<toml::Value>,
}

impl AppManifest {
    /// Reads `dir/zest.toml` and checks it.
    pub fn load(dir: &Path) -> Result<AppManifest, ManifestError> {
        let file = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&file).map_err(|err| ManifestError {
            file: file.clone(),
            key: String::new(),
            problem: format!("cannot read: {err}"),
            reason: Reason::Enoent,
        })?;
        AppManifest::parse(&text, dir)
    }

    /// Checks `text` as the manifest of an app in `dir` (module files are
    /// looked for there).
    pub fn parse(text: &str, dir: &Path) -> Result<AppManifest, ManifestError> {
        let file = dir.join(MANIFEST);
        let fail = |key: &str, problem: String, reason: Reason| ManifestError {
            file: file.clone(),
            key: key.to_string(),
            problem,
            reason,
        };
        let parsed: File = toml::from_str(text).map_err(|err| {
            let at = err.span().map(|span| line_col(text, span.start)).unwrap_or_default();
            fail("", format!("{at}{}", err.message()), Reason::InvalidModule)
        })?;
        let invalid = |key: &str, problem: String| fail(key, problem, Reason::InvalidModule);

        check_name(&parsed.app.name).map_err(|problem| invalid("app.name", problem))?;
        if let Some(build) = &parsed.app.build {
            if build.trim().is_empty() {
                return Err(invalid("app.build", "an empty build command".into()));
            }
        }
        for (i, pattern) in parsed.app.watch.iter().enumerate() {
            check_watch_glob(pattern).map_err(|problem| invalid(&format!("app.watch[{i}]"), problem))?;
        }
        if !parsed.app.watch.is_empty() && parsed.app.build.is_none() {
            let problem = "watched sources need a build: add app.build, the command that turns them into modules";
            return Err(invalid("app.watch", problem.into()));
        }
        let mut modules = Vec::new();
        let mut module_names = BTreeSet::new();
        for (i, module) in parsed.modules.iter().enumerate() {
            check_name(&module.name).map_err(|problem| invalid(&format!("modules[{i}].name"), problem))?;
            if !module_names.insert(module.name.as_str()) {
                let problem = format!("module `{}` is declared twice", module.name);
                return Err(invalid(&format!("modules[{i}].name"), problem));
            }
            let path = dir.join(&module.path);
            if !path.is_file() {
                let problem = format!("{} does not exist or is not a file", path.display());
                return Err(fail(&format!("modules[{i}].path"), problem, Reason::Enoent));
            }
            modules.push(ModuleDecl { name: module.name.clone(), path });
        }
        let mut processes = Vec::new();
        let mut process_names = BTreeSet::new();
        for (i, process) in parsed.processes.iter().enumerate() {
            check_name(&process.name).map_err(|problem| invalid(&format!("processes[{i}].name"), problem))?;
            if !process_names.insert(process.name.as_str()) {
                let problem = format!("process `{}` is declared twice", process.name);
                return Err(invalid(&format!("processes[{i}].name"), problem));
            }
            if !module_names.contains(process.module.as_str()) {
                let problem = format!("module `{}` is not declared in [[modules]]", process.module);
                return Err(invalid(&format!("processes[{i}].module"), problem));
            }
            let init = match &process.init {
                Some(value) => serde_json::to_value(value).map_err(|err| {
                    invalid(&format!("processes[{i}].init"), format!("not representable as JSON: {err}"))
                })?,
                None => serde_json::Value::Null,
            };
            processes.push(ProcessDecl { name: process.name.clone(), module: process.module.clone(), init });
        }
        Ok(AppManifest {
            name: parsed.app.name,
            dir: dir.to_path_buf(),
            file,
            build: parsed.app.build,
            watch: parsed.app.watch,
            modules,
            processes,
        })
    }
}

/// A watch glob must be a valid glob, relative, and stay inside the app
/// directory.
fn check_watch_glob(pattern: &str) -> Result<(), String> {
    if pattern.trim().is_empty() {
        return Err("an empty glob".into());
    }
    if Path::new(pattern).is_absolute() {
        return Err(format!("`{pattern}` is absolute; globs are relative to the app directory"));
    }
    if Path::new(pattern).components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("`{pattern}` leaves the app directory (`..`)"));
    }
    globset::Glob::new(pattern).map(drop).map_err(|err| format!("`{pattern}` is not a glob: {}", err.kind()))
}

/// `line L, column C: ` for a byte offset into `text`.
fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: ")
}

/// The apps a node unloaded and has not loaded again, kept on disk
/// (`<data_dir>/unloaded-apps.json`: each app's name and the directory it was
/// loaded from), so that a rollback of the unload finds the app after a
/// restart: its manifest is read again from that directory then.
#[derive(Debug)]
pub(crate) struct UnloadedApps {
    /// `None`: nothing is kept across restarts.
    file: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct UnloadedFile {
    version: u32,
    /// Name → directory.
    apps: BTreeMap<String, PathBuf>,
}

const UNLOADED_VERSION: u32 = 1;

impl UnloadedApps {
    pub(crate) fn new(data_dir: Option<&Path>) -> UnloadedApps {
        UnloadedApps { file: data_dir.map(|dir| dir.join("unloaded-apps.json")) }
    }

    /// The manifests of the apps on file, read again from their
    /// directories, and what could not be read (an app whose directory or
    /// manifest is gone, or names another app now, is left out).
    pub(crate) fn recover(&self) -> (Vec<AppManifest>, Vec<String>) {
        let (mut manifests, mut problems) = (Vec::new(), Vec::new());
        let Some(file) = &self.file else {
            return (manifests, problems);
        };
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return (manifests, problems),
            Err(err) => {
                problems.push(format!("cannot read {}: {err}", file.display()));
                return (manifests, problems);
            }
        };
        let apps = match serde_json::from_str::<UnloadedFile>(&text) {
            Ok(doc) if doc.version == UNLOADED_VERSION => doc.apps,
            Ok(doc) => {
                problems.push(format!("{} has version {}, not {UNLOADED_VERSION}", file.display(), doc.version));
                return (manifests, problems);
            }
            Err(err) => {
                problems.push(format!("{}: {err}", file.display()));
                return (manifests, problems);
            }
        };
        for (name, dir) in apps {
            match AppManifest::load(&dir) {
                Ok(manifest) if manifest.name == name => manifests.push(manifest),
                Ok(manifest) => problems.push(format!(
                    "unloaded app `{name}`: {} now names the app `{}`; it cannot be rolled back",
                    manifest.file.display(),
                    manifest.name
                )),
                Err(err) => problems.push(format!("unloaded app `{name}`: {err}; it cannot be rolled back")),
            }
        }
        (manifests, problems)
    }

    /// Writes `apps` (the unloaded apps, by name) to the file durably.
    pub(crate) fn save(&self, apps: &BTreeMap<String, AppManifest>) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let apps = apps.iter().map(|(name, manifest)| (name.clone(), manifest.dir.clone())).collect();
        let text = serde_json::to_string_pretty(&UnloadedFile { version: UNLOADED_VERSION, apps })
            .map_err(|err| format!("cannot write {}: {err}", file.display()))?;
        write_durably(file, text.as_bytes()).map_err(|err| format!("cannot write {}: {err}", file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(manifest: &str, files: &[&str]) -> (tempfile::TempDir, Result<AppManifest, ManifestError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST), manifest).unwrap();
        for file in files {
            std::fs::write(dir.path().join(file), "(module)").unwrap();
        }
        let loaded = AppManifest::load(dir.path());
        (dir, loaded)
    }

    #[test]
    fn a_full_manifest_loads_with_paths_and_init_as_json() {
        let (dir, loaded) = app(
            r#"
[app]
name = "demo"
build = "make"

[[modules]]
name = "clock"
path = "clock.wat"

[[modules]]
name = "counter"
path = "counter.wat"

[[processes]]
name = "tally"
module = "counter"
init = { start = 5, tags = ["a"] }
"#,
            &["clock.wat", "counter.wat"],
        );
        let manifest = loaded.unwrap();
        assert_eq!(manifest.name, "demo");
        assert_eq!(manifest.build.as_deref(), Some("make"));
        assert_eq!(manifest.modules[1], ModuleDecl { name: "counter".into(), path: dir.path().join("counter.wat") });
        assert_eq!(manifest.processes[0].init, serde_json::json!({"start": 5, "tags": ["a"]}));
    }

    /// Each broken manifest and the `key: problem` its error must carry.
    #[test]
    fn each_problem_names_the_file_the_key_and_the_problem() {
        let cases: [(&str, &[&str], &str, &str, Reason); 13] = [
            ("[app]\nname = \"demo\"\nversion = 2\n", &[], "", "line 3, column 1: unknown field `version`", Reason::InvalidModule),
            ("[app]\nname = \"9x\"\n", &[], "app.name", "invalid name \"9x\"", Reason::InvalidModule),
            ("[[modules]]\nname = \"a\"\npath = \"a.wat\"\n", &["a.wat"], "", "missing field `app`", Reason::InvalidModule),
            ("[app]\nname = \"d\"\n[[modules]]\nname = \"a\"\npath = \"gone.wat\"\n", &[], "modules[0].path", "gone.wat does not exist", Reason::Enoent),
            ("[app]\nname = \"d\"\n[[modules]]\nname = \"a-b\"\npath = \"a.wat\"\n", &["a.wat"], "modules[0].name", "invalid name \"a-b\"", Reason::InvalidModule),
            (
                "[app]\nname = \"d\"\n[[modules]]\nname = \"a\"\npath = \"a.wat\"\n[[modules]]\nname = \"a\"\npath = \"a.wat\"\n",
                &["a.wat"],
                "modules[1].name",
                "module `a` is declared twice",
                Reason::InvalidModule,
            ),
            ("[app]\nname = \"d\"\n[[modules]]\nname = \"a\"\npth = \"a.wat\"\n", &["a.wat"], "", "unknown field `pth`", Reason::InvalidModule),
            (
                "[app]\nname = \"d\"\n[[processes]]\nname = \"p\"\nmodule = \"nope\"\n",
                &[],
                "processes[0].module",
                "module `nope` is not declared",
                Reason::InvalidModule,
            ),
            ("[app]\nname = \"d\"\nbuild = \"  \"\n", &[], "app.build", "an empty build command", Reason::InvalidModule),
            ("[app]\nname = \"d\"\nbuild = \"make\"\nwatch = [\"src/*.rs\", \"src/{a\"]\n", &[], "app.watch[1]", "`src/{a` is not a glob", Reason::InvalidModule),
            ("[app]\nname = \"d\"\nbuild = \"make\"\nwatch = [\"/etc/*\"]\n", &[], "app.watch[0]", "is absolute", Reason::InvalidModule),
            ("[app]\nname = \"d\"\nbuild = \"make\"\nwatch = [\"../x/*.rs\"]\n", &[], "app.watch[0]", "leaves the app directory", Reason::InvalidModule),
            ("[app]\nname = \"d\"\nwatch = [\"src/*.rs\"]\n", &[], "app.watch", "watched sources need a build", Reason::InvalidModule),
        ];
        for (manifest, files, key, problem, reason) in cases {
            let (dir, loaded) = app(manifest, files);
            let err = loaded.expect_err(manifest);
            assert_eq!(err.file, dir.path().join(MANIFEST));
            assert_eq!(err.key, key, "{err}");
            assert!(err.problem.contains(problem), "{manifest:?}: {err}");
            assert_eq!(err.reason, reason, "{err}");
            assert!(err.to_string().starts_with(&dir.path().join(MANIFEST).display().to_string()));
        }
    }

    #[test]
    fn a_missing_manifest_is_enoent() {
        let dir = tempfile::tempdir().unwrap();
        let err = AppManifest::load(dir.path()).unwrap_err();
        assert_eq!(err.reason, Reason::Enoent);
        assert!(err.to_string().contains("zest.toml: cannot read"), "{err}");
    }
}
