//! Source extensions (CONTRACT.md §13): a `NAME.js` or `NAME.py` file built
//! into a component inside the node by its language's toolchain —
//! `componentize-qjs` (QuickJS) for JavaScript, `componentize-py` for Python.
//!
//! With no `NAME.wit` beside the file, the node writes glue around it (the
//! templates in `source/`): against the world `plugin` of `zest:guest`, whose
//! `dynamic` export serves the file's top-level functions with JSON in and out,
//! or, when the file defines `init`, `handle`, `save_state` and `code_change`,
//! against the world `server`. With a `NAME.wit`, the file implements the world
//! that file declares, in the tool's own idiom, and no glue is written (its
//! entry, `source/own.py` or `source/own.js`, checks at build time that it has
//! each function of that world: both tools would build it without one).
//!
//! The tool runs as a child process in a private directory, leading its own
//! process group, killed with its children after the build timeout; each line
//! it prints goes to the caller (telemetry). A build is keyed by the sha256 of
//! everything it reads — the tool and its version, the glue, the WIT, the
//! source — and its component is kept under that key, so an unchanged file
//! never runs the tool again, not even after a restart.
//!
//! A plugin or process is first handed to a [`Runner`]: the tool run once on
//! glue that reads the source from a slot of bytes at its first call, so that
//! an edit writes the source into a copy of those bytes and runs no tool. A
//! JavaScript module is first turned into a script QuickJS can evaluate at
//! run time (`source/script.rs`). A source the runner cannot take is built
//! whole (the caller, `reload/extension.rs`, asks for that when the runner's
//! build fails to load).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::compile::run_process;
use crate::reason::{Failure, Reason};
use crate::report::Stream;

mod script;

/// The WIT package `zest:guest@1.0.0` (`wit/zest.wit`, CONTRACT.md §13).
pub use crate::wasm::wrap::ZEST_WIT;

const GLUE_PY: &str = include_str!("source/glue.py");
const IMPORT_PY: &str = include_str!("source/import.py");
const OWN_PY: &str = include_str!("source/own.py");
const RUNNER_PY: &str = include_str!("source/runner.py");
const PLUGIN_PY: &str = include_str!("source/plugin.py");
const SERVER_PY: &str = include_str!("source/server.py");
const ZEST_PY: &str = include_str!("source/zest.py");
const GLUE_JS: &str = include_str!("source/glue.js");
const IMPORT_JS: &str = include_str!("source/import.js");
const OWN_JS: &str = include_str!("source/own.js");
const RUNNER_JS: &str = include_str!("source/runner.js");
const PLUGIN_JS: &str = include_str!("source/plugin.js");
const SERVER_JS: &str = include_str!("source/server.js");
const ZEST_JS: &str = include_str!("source/zest.js");

/// How many lines of a failed build's output its error keeps (the first ones:
/// a compiler names the first error first).
const ERROR_LINES: usize = 200;

/// A language whose source files the node builds into components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Language {
    JavaScript,
    Python,
}

impl Language {
    /// Its key under `[extensions]` and in status: `javascript`, `python`.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::JavaScript => "javascript",
            Language::Python => "python",
        }
    }

    /// The program `auto` looks for on the `PATH`.
    pub fn tool(self) -> &'static str {
        match self {
            Language::JavaScript => "componentize-qjs",
            Language::Python => "componentize-py",
        }
    }

    /// How a user installs the tool.
    pub fn install_hint(self) -> &'static str {
        match self {
            Language::JavaScript => "npm install -g componentize-qjs",
            Language::Python => "pip install componentize-py",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Language::JavaScript => "js",
            Language::Python => "py",
        }
    }

    /// The names a file defines at its top level that make it a process
    /// (the world `server`), each with the spellings accepted.
    fn process_names(self) -> [&'static [&'static str]; 4] {
        match self {
            Language::JavaScript => {
                [&["init"], &["handle"], &["save_state", "saveState"], &["code_change", "codeChange"]]
            }
            Language::Python => [&["init"], &["handle"], &["save_state"], &["code_change"]],
        }
    }
}

/// Why a toolchain cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("no {tool} found on the PATH for .{suffix} extensions; install it with `{install}` (or set extensions.{key} to its path)")]
    NotFound { tool: &'static str, suffix: &'static str, install: &'static str, key: &'static str },
    #[error("extensions.{key} = {path}: cannot run it ({message}); install {tool} with `{install}`")]
    Broken { key: &'static str, path: String, message: String, tool: &'static str, install: &'static str },
}

/// A toolchain found and probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub language: Language,
    pub path: PathBuf,
    /// `componentize-py 0.25.1`, `componentize-qjs 0.3.0`.
    pub version: String,
}

/// What `system.status` says of one language's toolchain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolchainStatus {
    pub language: Language,
    /// The configured path; `None` is `auto`.
    pub configured: Option<PathBuf>,
    /// The tool in use, or why there is none.
    pub found: Result<Tool, ToolError>,
}

impl Tool {
    /// `configured` is `extensions.javascript` / `extensions.python`: a path (a
    /// bare name is looked up on the `PATH`), or `None` for `auto`.
    pub fn find(language: Language, configured: Option<&Path>) -> Result<Tool, ToolError> {
        let broken = |path: &Path, message: String| ToolError::Broken {
            key: language.as_str(),
            path: path.display().to_string(),
            message,
            tool: language.tool(),
            install: language.install_hint(),
        };
        let path = match configured {
            Some(path) if path.components().count() > 1 => path.to_path_buf(),
            Some(name) => on_path(name).ok_or_else(|| broken(name, "not found on the PATH".into()))?,
            None => on_path(Path::new(language.tool())).ok_or(ToolError::NotFound {
                tool: language.tool(),
                suffix: language.suffix(),
                install: language.install_hint(),
                key: language.as_str(),
            })?,
        };
        let version = version_of(language, &path).map_err(|message| broken(&path, message))?;
        Ok(Tool { language, path, version })
    }
}

/// The first executable file named `name` in the `PATH`'s directories.
fn on_path(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs).map(|dir| dir.join(name)).find(|candidate| {
        fs::metadata(candidate).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

/// The tool's version: `componentize-py --version`; componentize-qjs has no
/// such flag, so its npm package's `package.json` (beside the script the link
/// leads to) says it, after `--help` showed the program runs.
fn version_of(language: Language, path: &Path) -> Result<String, String> {
    let run = |arg: &str| {
        let output = Command::new(path)
            .arg(arg)
            .stdin(Stdio::null())
            .output()
            .map_err(|err| format!("cannot run {}: {err}", path.display()))?;
        if !output.status.success() {
            let words = String::from_utf8_lossy(&output.stderr).trim().to_string();
            return Err(format!("`{} {arg}` failed: {words}", path.display()));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    match language {
        Language::Python => run("--version"),
        Language::JavaScript => {
            run("--help")?;
            let script = fs::canonicalize(path).map_err(|err| format!("cannot resolve {}: {err}", path.display()))?;
            let package = script.ancestors().skip(1).map(|dir| dir.join("package.json")).find(|file| file.is_file());
            let version = package
                .and_then(|file| fs::read(file).ok())
                .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
                .and_then(|doc| doc.get("version")?.as_str().map(str::to_string));
            Ok(match version {
                Some(version) => format!("componentize-qjs {version}"),
                // A build outside npm: its bytes name it.
                None => {
                    let bytes = fs::read(&script).map_err(|err| format!("cannot read {}: {err}", script.display()))?;
                    format!("componentize-qjs sha256:{}", &hex::encode(Sha256::digest(bytes))[..16])
                }
            })
        }
    }
}

/// The world a source file is built against.
#[derive(Debug, Clone, PartialEq, Eq)]
enum World {
    Plugin,
    Server,
    /// The text of the `NAME.wit` beside the file.
    Own(String),
}

impl World {
    fn name(&self) -> &str {
        match self {
            World::Plugin => "plugin",
            World::Server => "server",
            World::Own(_) => "own",
        }
    }
}

/// Whether `source` defines each of the process functions at its top level:
/// `def NAME(` in Python; `export function NAME(` (or `async function`,
/// `const`, `let`) in JavaScript.
fn defines_process(language: Language, source: &str) -> bool {
    let defines = |name: &str| {
        source.lines().any(|line| {
            let rest = match language {
                Language::Python => line.strip_prefix("def "),
                Language::JavaScript => line.strip_prefix("export ").map(|rest| {
                    let rest = rest.trim_start();
                    let rest = rest.strip_prefix("async ").map(str::trim_start).unwrap_or(rest);
                    ["function ", "const ", "let ", "var "]
                        .iter()
                        .find_map(|word| rest.strip_prefix(word))
                        .unwrap_or("")
                        .trim_start_matches(['*', ' '])
                }),
            };
            rest.and_then(|rest| rest.strip_prefix(name))
                .is_some_and(|after| after.trim_start().starts_with(['(', '=']))
        })
    };
    language.process_names().iter().all(|names| names.iter().any(|name| defines(name)))
}

/// A source extension's build: the component, and what running the tool took
/// (`None` when the component was already kept).
#[derive(Debug)]
pub(crate) struct SourceBuild {
    pub(crate) component: Vec<u8>,
    pub(crate) run: Option<ToolRun>,
    /// The source was handed to a runner ([`Runner`]): a build that does not
    /// load may load when built whole (its imports, say).
    pub(crate) runner: bool,
}

#[derive(Debug)]
pub(crate) struct ToolRun {
    pub(crate) command: String,
    pub(crate) duration: Duration,
}

/// Builds `.js` and `.py` extensions, keeping each component under the key of
/// what it was built from.
#[derive(Debug)]
pub(crate) struct SourceBuilds {
    javascript: Option<PathBuf>,
    python: Option<PathBuf>,
    /// Tools found, by language (a missing one is looked for again at the
    /// next build: it may have been installed since).
    found: Mutex<Vec<Tool>>,
    /// Runners by language and world name, built or read back on first use.
    runners: Mutex<Vec<RunnerKept>>,
    /// `artifacts/` and the private build directories; a temporary
    /// directory of the node when it keeps nothing on disk.
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl SourceBuilds {
    pub(crate) fn new(
        javascript: Option<PathBuf>,
        python: Option<PathBuf>,
        data_dir: Option<&Path>,
    ) -> std::io::Result<SourceBuilds> {
        let (dir, temp) = match data_dir {
            Some(dir) => (dir.join("sources"), None),
            None => {
                let temp = tempfile::Builder::new().prefix("zest-sources-").tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        // A build directory outlives its build only when the node did not end
        // cleanly; nothing in it is kept.
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("build-") {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(SourceBuilds { javascript, python, found: Mutex::default(), runners: Mutex::default(), dir, _temp: temp })
    }

    fn configured(&self, language: Language) -> Option<&Path> {
        match language {
            Language::JavaScript => self.javascript.as_deref(),
            Language::Python => self.python.as_deref(),
        }
    }

    /// The tool for `language`: the one found before, or looked for now.
    pub(crate) fn tool(&self, language: Language) -> Result<Tool, ToolError> {
        let mut found = self.found.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tool) = found.iter().find(|tool| tool.language == language) {
            return Ok(tool.clone());
        }
        let tool = Tool::find(language, self.configured(language))?;
        found.push(tool.clone());
        Ok(tool)
    }

    /// Both toolchains, as status reports them.
    pub(crate) fn status(&self) -> Vec<ToolchainStatus> {
        [Language::JavaScript, Language::Python]
            .into_iter()
            .map(|language| ToolchainStatus {
                language,
                configured: self.configured(language).map(Path::to_path_buf),
                found: self.tool(language),
            })
            .collect()
    }

    /// The component for `source` (the text of `file`, module `name`): the
    /// kept one when there is one, else the tool runs, killed after
    /// `timeout`, each line it prints going to `on_line`. A plugin or
    /// process, unless `whole`, is handed to the runner instead ([`Runner`]):
    /// no tool runs but the runner's first build. Errors: `compile_error`
    /// with the tool's words (paths shown as in `file`'s directory),
    /// `timeout`, or `compile_failed` when no tool can run.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        &self,
        target: &str,
        language: Language,
        name: &str,
        file: &Path,
        source: &[u8],
        whole: bool,
        timeout: Duration,
        on_line: &dyn Fn(Stream, &str),
    ) -> Result<SourceBuild, Failure> {
        let fail = |reason, message: String| Failure::new(target, reason, message);
        if GLUE_NAMES.contains(&name) {
            return Err(fail(
                Reason::CompileError,
                format!(
                    "{target}: the node's glue writes a file named `{name}` beside the source it builds; rename the file (the names {} are taken)",
                    GLUE_NAMES.join(", ")
                ),
            ));
        }
        let tool = self.tool(language).map_err(|err| fail(Reason::CompileFailed, err.to_string()))?;
        let text = std::str::from_utf8(source)
            .map_err(|err| fail(Reason::CompileError, format!("{target} is not UTF-8 text: {err}")))?;
        let wit_file = file.with_extension("wit");
        let world = match fs::read_to_string(&wit_file) {
            Ok(wit) => World::Own(wit),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if defines_process(language, text) {
                    World::Server
                } else {
                    World::Plugin
                }
            }
            Err(err) => return Err(fail(Reason::CompileError, format!("cannot read {}: {err}", wit_file.display()))),
        };
        let vsn = hex::encode(Sha256::digest(source))[..16].to_string();
        if !whole && !matches!(world, World::Own(_)) {
            let handed = match language {
                Language::Python => Ok(text.to_string()),
                Language::JavaScript => script::script(text),
            };
            match handed {
                Ok(handed) => {
                    if let Some((runner, run)) = self.runner(target, &tool, &world, timeout, on_line)? {
                        if let Some(component) = runner.hand(name, &vsn, &handed) {
                            return Ok(SourceBuild { component, run, runner: true });
                        }
                    }
                }
                Err(why) => {
                    tracing::debug!(file = %file.display(), why, "the JavaScript runner cannot take the file; it is built whole");
                }
            }
        }
        let inputs = inputs(language, Some(name), &world, &vsn);
        let artifact = self.artifact(&tool, &world, &inputs, source);
        if let Ok(component) = fs::read(&artifact) {
            return Ok(SourceBuild { component, run: None, runner: false });
        }
        let source_file = Some((format!("{name}.{}", language.suffix()), source));
        let entry = match (&world, language) {
            (World::Own(_), Language::Python) => "zest_own".to_string(),
            // The entry that checks the file against its world, unless the
            // WIT did not parse here (the tool then says why).
            (World::Own(_), Language::JavaScript) if inputs.iter().any(|(file, _)| file == OWN_JS_ENTRY) => {
                OWN_JS_ENTRY.to_string()
            }
            (World::Own(_), Language::JavaScript) => format!("{name}.js"),
            (_, Language::Python) => "zest_glue".to_string(),
            (_, Language::JavaScript) => "zest_glue.js".to_string(),
        };
        let build = ToolBuild { target, tool: &tool, world: &world, inputs: &inputs, source_file, entry, file };
        let (component, run) = self.run_tool(&build, &artifact, timeout, on_line)?;
        Ok(SourceBuild { component, run: Some(run), runner: false })
    }

    /// Where the build of these inputs is kept.
    fn artifact(&self, tool: &Tool, world: &World, inputs: &[(String, String)], source: &[u8]) -> PathBuf {
        let mut key = Sha256::new();
        for part in [tool.version.as_bytes(), tool.path.as_os_str().as_encoded_bytes(), world.name().as_bytes()] {
            key.update((part.len() as u64).to_le_bytes());
            key.update(part);
        }
        for (file_name, text) in inputs {
            key.update((file_name.len() as u64).to_le_bytes());
            key.update(file_name.as_bytes());
            key.update((text.len() as u64).to_le_bytes());
            key.update(text.as_bytes());
        }
        key.update(source);
        self.dir.join("artifacts").join(format!("{}.wasm", hex::encode(key.finalize())))
    }

    /// The runner of `tool`'s language for `world`: the one in memory, the
    /// one kept on disk, or built now by the tool (once per tool version and
    /// world; the tool's run is returned then). `None` when its build has no one slot
    /// to write (a tool that snapshots differently): files are built whole.
    fn runner(
        &self,
        target: &str,
        tool: &Tool,
        world: &World,
        timeout: Duration,
        on_line: &dyn Fn(Stream, &str),
    ) -> Result<Option<RunnerFound>, Failure> {
        let language = tool.language;
        let mut runners = self.runners.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((.., runner)) = runners.iter().find(|(of, kind, _)| *of == language && kind == world.name()) {
            return Ok(runner.clone().map(|runner| (runner, None)));
        }
        let inputs = inputs(language, None, world, "");
        let artifact = self.artifact(tool, world, &inputs, b"runner");
        let (bytes, run) = match fs::read(&artifact) {
            Ok(bytes) => (bytes, None),
            Err(_) => {
                let file = self.dir.join(format!("runner-{}.{}", world.name(), language.suffix()));
                let entry = match language {
                    Language::Python => "zest_glue",
                    Language::JavaScript => "zest_glue.js",
                };
                let build = ToolBuild {
                    target,
                    tool,
                    world,
                    inputs: &inputs,
                    source_file: None,
                    entry: entry.to_string(),
                    file: &file,
                };
                let (bytes, run) = self.run_tool(&build, &artifact, timeout, on_line)?;
                (bytes, Some(run))
            }
        };
        let runner = Runner::find_slot(&bytes).map(|slot| Arc::new(Runner { bytes, slot }));
        if runner.is_none() {
            tracing::warn!(tool = %tool.version, world = world.name(), "the runner has no one slot; files are built whole");
        }
        runners.push((language, world.name().to_string(), runner.clone()));
        Ok(runner.map(|runner| (runner, run)))
    }

    /// Runs the tool on `build` in a private directory; the component is kept
    /// at `artifact`.
    fn run_tool(
        &self,
        build: &ToolBuild<'_>,
        artifact: &Path,
        timeout: Duration,
        on_line: &dyn Fn(Stream, &str),
    ) -> Result<(Vec<u8>, ToolRun), Failure> {
        let ToolBuild { target, tool, world, inputs, file, .. } = *build;
        let language = tool.language;
        let fail = |reason, message: String| Failure::new(target, reason, message);
        let io =
            |err: std::io::Error| fail(Reason::CompileFailed, format!("cannot prepare {}: {err}", self.dir.display()));
        fs::create_dir_all(self.dir.join("artifacts")).map_err(io)?;
        let private = tempfile::Builder::new().prefix("build-").tempdir_in(&self.dir).map_err(io)?;
        let work = private.path();
        for (file_name, text) in inputs {
            let path = work.join(file_name);
            fs::create_dir_all(path.parent().unwrap_or(work)).map_err(io)?;
            fs::write(path, text).map_err(io)?;
        }
        let source_name = match &build.source_file {
            Some((source_name, source)) => {
                fs::write(work.join(source_name), source).map_err(io)?;
                source_name.clone()
            }
            None => String::new(),
        };
        let out = work.join("out.wasm");
        let mut command = Command::new(&tool.path);
        command.current_dir(work);
        let own = matches!(world, World::Own(_));
        match language {
            Language::Python => {
                command.arg("-d").arg("wit");
                if !own {
                    command.args(["-w", world.name()]);
                }
                command.args(["componentize", "-p", ".", &build.entry, "-o"]).arg(&out);
            }
            Language::JavaScript => {
                // Without component-model async: wasmtime 48 as the node
                // configures it runs synchronous components.
                command.args(["--sync", "-w", "wit"]);
                if !own {
                    command.args(["-n", world.name()]);
                }
                command.args(["-j", &build.entry, "-o"]).arg(&out);
            }
        }
        let command_line = match &build.source_file {
            Some(_) => format!("{} {}", tool.path.display(), file.display()),
            None => format!("{} (the runner of world {})", tool.path.display(), world.name()),
        };
        // Not the tool's own Rust backtrace: the user's error is the news.
        command.env("RUST_BACKTRACE", "0");
        let names = Names { copy: work.join(&source_name), file: file.to_path_buf(), source_name: source_name.clone() };
        let output = Mutex::new(Vec::new());
        let started = Instant::now();
        let report = run_process(command, timeout, &|stream, line| {
            let line = names.shown(language, line);
            on_line(stream, &line);
            let mut output = output.lock().unwrap_or_else(PoisonError::into_inner);
            if output.len() < ERROR_LINES {
                output.push(line);
            }
        })
        .map_err(|err| fail(Reason::CompileFailed, format!("cannot run {}: {err}", tool.path.display())))?;
        let duration = started.elapsed();
        if report.timed_out {
            let message =
                format!("{} was killed after {} s (limits.build_timeout_ms)", tool.path.display(), timeout.as_secs());
            return Err(fail(Reason::Timeout, message));
        }
        let output = output.into_inner().unwrap_or_else(PoisonError::into_inner);
        if !report.succeeded() || !out.is_file() {
            let status =
                report.exit_code.map_or("was killed by a signal".to_string(), |code| format!("exited with {code}"));
            let words = tool_words(language, &output);
            return Err(fail(Reason::CompileError, format!("{target}: {} {status}\n{words}", tool.version)));
        }
        let component = fs::read(&out).map_err(io)?;
        // Keep the component (tmp + rename, so a crash never leaves half a file).
        let staged = work.join("artifact.wasm");
        if fs::write(&staged, &component).and_then(|()| fs::rename(&staged, artifact)).is_err() {
            tracing::warn!(artifact = %artifact.display(), "cannot keep the built extension; it will be rebuilt");
        }
        Ok((component, ToolRun { command: command_line, duration }))
    }
}

/// A runner of a language and world (`None`: its build has no one slot).
type RunnerKept = (Language, String, Option<Arc<Runner>>);

/// A runner, and the tool's run when it was built just now.
type RunnerFound = (Arc<Runner>, Option<ToolRun>);

/// One run of a tool: what it builds from.
struct ToolBuild<'a> {
    target: &'a str,
    tool: &'a Tool,
    world: &'a World,
    /// The WIT and glue files.
    inputs: &'a [(String, String)],
    /// The user's file as the tool sees it (`NAME.py`) and its text; `None`
    /// for a runner.
    source_file: Option<(String, &'a [u8])>,
    /// What the tool is pointed at: a Python module, a JavaScript file.
    entry: String,
    /// The file the build is for, as its messages and report name it.
    file: &'a Path,
}

/// The marker before a runner's slot, XOR 0x2A (as `runner.py` and
/// `runner.js` write it, so the literal in the glue's code is not the marker
/// itself).
const SLOT_MARK: &[u8; 20] = b"pOYZ\x07y_MZOO\x07tSjXkx`{";

/// How many bytes of header and source a runner's slot holds.
const SLOT_BYTES: usize = 256 * 1024;

/// An interpreter (CPython, QuickJS) and the glue of one world, built once
/// per tool version, to which an extension's source is handed as data: the
/// node writes it into the bytes of the runner's slot (a buffer the glue made
/// while the tool snapshotted it, now a data segment of the component), and
/// an instance runs it at its first call. An edit then costs no tool run and
/// a compile of the same interpreter (docs/benchmarks.md, "Guests in
/// JavaScript and Python").
#[derive(Debug)]
struct Runner {
    bytes: Vec<u8>,
    /// Where the slot's length digits start in `bytes`.
    slot: usize,
}

impl Runner {
    fn mark() -> Vec<u8> {
        SLOT_MARK.iter().map(|byte| byte ^ 0x2A).collect()
    }

    /// The offset after the marker that is followed by the empty slot, when
    /// exactly one place in `bytes` is (two would leave the node guessing
    /// which one the glue reads).
    fn find_slot(bytes: &[u8]) -> Option<usize> {
        let mut empty = Runner::mark();
        empty.extend_from_slice(b"00000000");
        empty.extend_from_slice(&[b'#'; 64]);
        let mut found = bytes.windows(empty.len()).enumerate().filter(|(_, window)| *window == empty.as_slice());
        let (at, _) = found.next()?;
        if found.next().is_some() {
            return None;
        }
        let slot = at + SLOT_MARK.len();
        (bytes.len() >= slot + 8 + SLOT_BYTES && bytes[slot + 8..slot + 8 + SLOT_BYTES].iter().all(|b| *b == b'#'))
            .then_some(slot)
    }

    /// A copy of the runner holding module `name`'s `source` (for JavaScript,
    /// the script made of it); `None` when it does not fit the slot.
    fn hand(&self, name: &str, vsn: &str, source: &str) -> Option<Vec<u8>> {
        let header = serde_json::json!({"module": name, "vsn": vsn}).to_string();
        let payload = format!("{header}\n{source}");
        if payload.len() > SLOT_BYTES {
            return None;
        }
        let mut bytes = self.bytes.clone();
        let at = self.slot;
        bytes[at..at + 8].copy_from_slice(format!("{:08}", payload.len()).as_bytes());
        bytes[at + 8..at + 8 + payload.len()].copy_from_slice(payload.as_bytes());
        Some(bytes)
    }
}

/// How a tool names the file it builds (its private copy, under the names
/// its sandbox gives it), and the file the user wrote.
struct Names {
    copy: PathBuf,
    file: PathBuf,
    source_name: String,
}

impl Names {
    /// `line` with the file named as the user knows it: componentize-py shows
    /// the build directory as `/0`, componentize-qjs its module root as `/`.
    fn shown(&self, language: Language, line: &str) -> String {
        // A runner's build has no user file to name.
        if self.source_name.is_empty() {
            return line.to_string();
        }
        let file = self.file.display().to_string();
        let line = line.replace(&self.copy.display().to_string(), &file);
        match language {
            Language::Python => line.replace(&format!("\"/0/{}\"", self.source_name), &format!("\"{file}\"")),
            Language::JavaScript => line
                .replace(&format!(" /{}:", self.source_name), &format!(" {file}:"))
                .replace(&format!("(/{}:", self.source_name), &format!("({file}:")),
        }
    }
}

/// A failed build's output as the error shows it: the tool's own words, less
/// its wrapping — componentize-qjs's banner (the paths of the build
/// directory) and the stack line of the node's entry (`source/own.js`),
/// componentize-py's own traceback around the user's one.
fn tool_words(language: Language, output: &[String]) -> String {
    let lines: Vec<&str> = match language {
        Language::JavaScript => output
            .iter()
            .map(String::as_str)
            .filter(|line| {
                *line != "componentize-qjs"
                    && !["  WIT:", "  JS:", "  Output:"].iter().any(|p| line.starts_with(p))
                    && !(line.trim_start().starts_with("at ") && line.contains(&format!("(/{OWN_JS_ENTRY}:")))
            })
            .collect(),
        Language::Python => {
            let start = output.iter().position(|line| line.starts_with("AssertionError: Traceback"));
            match start {
                Some(start) => {
                    let end = output[start..]
                        .iter()
                        .position(|line| line == "Caused by:")
                        .map_or(output.len(), |n| start + n);
                    let mut lines: Vec<&str> = output[start..end].iter().map(String::as_str).collect();
                    lines[0] = "Traceback (most recent call last):";
                    lines
                }
                None => output.iter().map(String::as_str).collect(),
            }
        }
    };
    lines.join("\n").trim().to_string()
}

/// The files a build writes beside the source, as `(path in the build
/// directory, text)`: the WIT, and the glue unless the file brings its own
/// WIT (then a Python file gets only the entry that checks it against that
/// WIT's world). `name` `None` is a runner's glue.
fn inputs(language: Language, name: Option<&str>, world: &World, vsn: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    match world {
        World::Own(wit) => {
            files.push((format!("wit/{}.wit", name.unwrap_or("world")), wit.clone()));
            files.push(("wit/deps/zest-guest/zest.wit".to_string(), ZEST_WIT.to_string()));
            // The file's entry checks it implements the world.
            let module = name.unwrap_or("world");
            match language {
                Language::Python => files.push(("zest_own.py".to_string(), OWN_PY.replace("@MODULE@", module))),
                Language::JavaScript => match js_wanted(wit) {
                    Ok(wanted) => files.push((OWN_JS_ENTRY.to_string(), own_js(module, &wanted))),
                    Err(why) => {
                        tracing::debug!(module, why, "the WIT does not parse here; componentize-qjs will say why")
                    }
                },
            }
        }
        World::Plugin | World::Server => {
            files.push(("wit/zest.wit".to_string(), ZEST_WIT.to_string()));
            let server = *world == World::Server;
            let (glue, helper, entry, helper_name) = match language {
                Language::Python => {
                    let loader = match name {
                        Some(_) => IMPORT_PY.to_string(),
                        None => RUNNER_PY
                            .replace("@MARK@", &format!("b\"{}\"", SLOT_MARK.escape_ascii()))
                            .replace("@SLOT@", &SLOT_BYTES.to_string()),
                    };
                    let world_part = if server { SERVER_PY } else { PLUGIN_PY };
                    (
                        format!("{}{world_part}", GLUE_PY.replace("@LOADER@", &loader)),
                        ZEST_PY,
                        "zest_glue.py",
                        "zest.py",
                    )
                }
                Language::JavaScript => {
                    let loader = match name {
                        Some(_) => IMPORT_JS.to_string(),
                        None => {
                            let mark: Vec<String> = SLOT_MARK.iter().map(u8::to_string).collect();
                            RUNNER_JS
                                .replace("@MARK@", &format!("[{}]", mark.join(", ")))
                                .replace("@SLOT@", &SLOT_BYTES.to_string())
                        }
                    };
                    let world_part = if server { SERVER_JS } else { PLUGIN_JS };
                    (
                        format!("{}{world_part}", GLUE_JS.replace("@LOADER@", &loader)),
                        ZEST_JS,
                        "zest_glue.js",
                        "zest.js",
                    )
                }
            };
            let glue = glue
                .replace("@MODULE@", name.unwrap_or("runner"))
                .replace("@WORLD@", world.name())
                .replace("@VSN@", vsn);
            files.push((entry.to_string(), glue));
            files.push((helper_name.to_string(), helper.to_string()));
        }
    }
    files
}

/// The entry of a JavaScript file with its own WIT: a name no module has
/// (module names have no `-`), so it never is the user's file.
const OWN_JS_ENTRY: &str = "zest-own.js";

/// The module names of the files [`inputs`] writes beside a source (in
/// either language): a source by one of these names would be overwritten by
/// them, or overwrite them, so it is refused with a clear reason.
const GLUE_NAMES: &[&str] = &["zest", "zest_glue", "zest_own", "zest-own"];

/// A scope of a JavaScript module (`None` its own exports, else an exported
/// interface's object) and the paths that must be functions in it.
type JsScope = (Option<String>, Vec<String>);

/// What componentize-qjs looks up by name in a JavaScript file implementing
/// the world of `wit`, per scope: `None` the module's own exports, else an
/// exported interface's object (its name without package and version, in
/// lower camel case), each with the paths that must be functions there — a
/// function's name in lower camel case, a resource's class in upper camel
/// case when it has a constructor, and its static functions on that class.
/// Methods are not checked: the tool finds them on each object at its call
/// (an object a function returns need not be of the class). `Err` with the
/// parser's words when the WIT does not parse here.
fn js_wanted(wit: &str) -> Result<Vec<JsScope>, String> {
    use heck::ToLowerCamelCase;
    use wit_parser::{Resolve, WorldItem};
    let mut resolve = Resolve::default();
    resolve.push_str("zest.wit", ZEST_WIT).map_err(|err| format!("{err:#}"))?;
    let package = resolve.push_str("world.wit", wit).map_err(|err| format!("{err:#}"))?;
    let world = resolve.select_world(&[package], None).map_err(|err| format!("{err:#}"))?;
    let mut own = Vec::new();
    let mut interfaces = Vec::new();
    for (key, item) in &resolve.worlds[world].exports {
        match item {
            WorldItem::Function(function) => own.extend(js_path(&resolve, function)),
            WorldItem::Interface { id, .. } => {
                let name = resolve.name_world_key(key);
                let short = name.rsplit_once('/').map_or(name.as_str(), |(_, short)| short);
                let short = short.split('@').next().unwrap_or(short).to_lower_camel_case();
                let paths: Vec<String> =
                    resolve.interfaces[*id].functions.values().filter_map(|f| js_path(&resolve, f)).collect();
                if !paths.is_empty() {
                    interfaces.push((Some(short), paths));
                }
            }
            WorldItem::Type { .. } => {}
        }
    }
    let mut wanted = Vec::new();
    if !own.is_empty() {
        wanted.push((None, own));
    }
    wanted.extend(interfaces);
    Ok(wanted)
}

/// The path under its scope at which componentize-qjs calls `function`
/// (`None`: a method, looked up on the object it is called on).
fn js_path(resolve: &wit_parser::Resolve, function: &wit_parser::Function) -> Option<String> {
    use heck::{ToLowerCamelCase, ToUpperCamelCase};
    use wit_parser::FunctionKind;
    let class = |id: wit_parser::TypeId| resolve.types[id].name.as_deref().unwrap_or_default().to_upper_camel_case();
    match function.kind {
        FunctionKind::Freestanding | FunctionKind::AsyncFreestanding => Some(function.name.to_lower_camel_case()),
        FunctionKind::Constructor(id) => Some(class(id)),
        FunctionKind::Static(id) | FunctionKind::AsyncStatic(id) => {
            Some(format!("{}.{}", class(id), function.item_name().to_lower_camel_case()))
        }
        FunctionKind::Method(_) | FunctionKind::AsyncMethod(_) => None,
    }
}

/// The entry (`source/own.js`) of the file `module`.js, checking that it
/// exports what `wanted` lists.
fn own_js(module: &str, wanted: &[JsScope]) -> String {
    // `export *` passes on every export but the default one.
    let default = wanted.iter().any(|(at, paths)| match at {
        Some(at) => at == "default",
        None => paths.iter().any(|path| path.split('.').next() == Some("default")),
    });
    let default = if default { format!("export {{ default }} from \"./{module}.js\";") } else { String::new() };
    let wanted = serde_json::json!(wanted).to_string();
    OWN_JS.replace("@MODULE@", module).replace("@DEFAULT@", &default).replace("@WANTED@", &wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_glue_names_cover_every_file_the_glue_writes() {
        for language in [Language::Python, Language::JavaScript] {
            for world in [World::Plugin, World::Server, World::Own("package a:b;\nworld w {}\n".to_string())] {
                for (file, _) in inputs(language, Some("hello"), &world, "v") {
                    if file.starts_with("wit/") {
                        continue;
                    }
                    let stem = file.rsplit_once('.').map_or(file.as_str(), |(stem, _)| stem);
                    assert!(
                        GLUE_NAMES.contains(&stem),
                        "{file} is written beside a source but not refused as its name"
                    );
                }
            }
        }
    }

    #[test]
    fn a_file_defining_the_four_process_functions_is_a_server() {
        let py = "import json\n\ndef init(args):\n    pass\ndef handle(m): return m\ndef save_state():\n    return 1\ndef code_change (old, way, state, extra):\n    pass\n";
        assert!(defines_process(Language::Python, py));
        assert!(!defines_process(Language::Python, &py.replace("def handle", "def handled")));
        assert!(!defines_process(Language::Python, &py.replace("def init", "    def init")), "nested is not top level");
        let js = "export function init(a) {}\nexport async function handle(m) {}\nexport const saveState = () => 1;\nexport function codeChange(o, d, s, e) {}\n";
        assert!(defines_process(Language::JavaScript, js));
        assert!(defines_process(Language::JavaScript, &js.replace("saveState", "save_state")));
        assert!(!defines_process(Language::JavaScript, &js.replace("export function init", "function init")));
    }

    #[test]
    fn a_runner_takes_a_source_into_its_slot_and_refuses_one_too_big() {
        let mut bytes = b"\0asm and the marker's literal: ".to_vec();
        bytes.extend_from_slice(SLOT_MARK);
        let start = bytes.len();
        bytes.extend(Runner::mark());
        bytes.extend_from_slice(b"00000000");
        bytes.extend(std::iter::repeat_n(b'#', SLOT_BYTES));
        bytes.extend_from_slice(b"after");
        let slot = Runner::find_slot(&bytes).expect("the empty slot");
        assert_eq!(slot, start + SLOT_MARK.len());
        let runner = Runner { bytes: bytes.clone(), slot };
        let handed = runner.hand("hello", "0123456789abcdef", "def hi():\n    return 1\n").unwrap();
        assert_eq!(handed.len(), bytes.len(), "the same bytes, the slot written");
        let payload = "{\"module\":\"hello\",\"vsn\":\"0123456789abcdef\"}\ndef hi():\n    return 1\n";
        assert_eq!(&handed[slot..slot + 8], format!("{:08}", payload.len()).as_bytes());
        assert_eq!(&handed[slot + 8..slot + 8 + payload.len()], payload.as_bytes());
        assert!(handed.ends_with(b"#after"));
        assert!(runner.hand("hello", "v", &"x".repeat(SLOT_BYTES)).is_none());
        // A build whose slot was written (or cut short) is no runner.
        assert!(Runner::find_slot(&handed).is_none());
        assert!(Runner::find_slot(&bytes[..bytes.len() - 100]).is_none());
        let twice = [bytes.as_slice(), bytes.as_slice()].concat();
        assert!(Runner::find_slot(&twice).is_none(), "two empty slots: which one?");
    }

    #[test]
    fn a_worlds_exports_are_named_as_componentize_qjs_looks_them_up() {
        let wit = "package acme:shapes@0.1.0;\n\ninterface geometry-kit {\n  resource shape {\n    constructor(sides: u32);\n    area: func() -> f64;\n    make-square: static func() -> shape;\n  }\n  scale-all: func(k: f64);\n}\n\ninterface types-only {\n  type id = u32;\n}\n\nworld shapes {\n  import zest:guest/host@1.0.0;\n  export double-add: func(a: s32, b: s32) -> s32;\n  export geometry-kit;\n  export types-only;\n  export zest:guest/dynamic@1.0.0;\n}\n";
        let wanted = js_wanted(wit).unwrap();
        let strings = |names: &[&str]| names.iter().map(|name| name.to_string()).collect::<Vec<_>>();
        assert_eq!(
            wanted,
            [
                (None, strings(&["doubleAdd"])),
                (Some("geometryKit".to_string()), strings(&["Shape", "Shape.makeSquare", "scaleAll"])),
                (Some("dynamic".to_string()), strings(&["functions", "invoke"])),
            ],
            "methods are looked up on the object at the call; an interface of types only asks for nothing"
        );
        let entry = own_js("shapes", &wanted);
        assert!(entry.contains("import * as user from \"./shapes.js\";"), "{entry}");
        assert!(entry.contains(
            r#"const WANTED = [[null,["doubleAdd"]],["geometryKit",["Shape","Shape.makeSquare","scaleAll"]]"#
        ));
        assert!(!entry.contains("export { default }") && !entry.contains('@'), "{entry}");
        let default = own_js("d", &[(None, strings(&["default"]))]);
        assert!(default.contains("export { default } from \"./d.js\";"), "{default}");
        assert!(js_wanted(&wit.replace("-> s32;", "-> s3;")).unwrap_err().contains("s3"));
    }

    #[test]
    fn a_missing_tool_names_the_package_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tool::find(Language::Python, Some(&dir.path().join("nope"))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("pip install componentize-py") && text.contains("extensions.python"), "{text}");
        let err = Tool::find(Language::JavaScript, Some(Path::new("no-such-componentize-qjs"))).unwrap_err();
        assert!(err.to_string().contains("npm install -g componentize-qjs"), "{err}");
    }
}
