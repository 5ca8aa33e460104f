//! Source extensions in JavaScript and Python (CONTRACT.md §13, "Source
//! extensions"): built inside the node by `componentize-qjs` and
//! `componentize-py`, served through the glue's `dynamic` export, run as
//! processes that migrate between the languages, and every bad input a clear
//! report with the old version serving.
//!
//! A Python component takes seconds to build and compile, so each test builds
//! few: one file serves several checks, and the node compiles with Winch only.

use std::path::{Path, PathBuf};

use zest_runtime::{
    CallError, Compiler, EventBody, ExtensionsConfig, Language, Node, NodeConfig, Reason, ReloadOptions, ReloadRequest,
    ReloadResult, Scope, Status, Tool,
};

/// The tool for `language`: on the `PATH`, or where `pip install --user`
/// puts it; a test without it fails saying what to install.
fn tool(language: Language) -> PathBuf {
    if let Ok(tool) = Tool::find(language, None) {
        return tool.path;
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let user_bin = home.join(".local/bin").join(language.tool());
    match Tool::find(language, Some(&user_bin)) {
        Ok(tool) => tool.path,
        Err(err) => panic!("this test needs {} (scripts/test.sh installs it): {err}", language.tool()),
    }
}

/// A node whose extension root is `<tmp>/extensions`, with both toolchains.
struct Poly {
    dir: tempfile::TempDir,
    node: Node,
}

impl Poly {
    fn new() -> Poly {
        Poly::with_tools(Some(tool(Language::JavaScript)), Some(tool(Language::Python)))
    }

    fn with_tools(javascript: Option<PathBuf>, python: Option<PathBuf>) -> Poly {
        Poly::with_limits(javascript, python, zest_runtime::Limits::default())
    }

    fn with_limits(javascript: Option<PathBuf>, python: Option<PathBuf>, limits: zest_runtime::Limits) -> Poly {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("extensions")).unwrap();
        let config = NodeConfig {
            data_dir: Some(dir.path().join("data")),
            extensions: ExtensionsConfig {
                roots: vec![dir.path().join("extensions")],
                rustc: None,
                javascript,
                python,
            },
            // Winch only: the tests check behaviour, and a Cranelift tier-up
            // of an interpreter would only take the other core.
            compiler: Compiler::Winch,
            tier_up_after: None,
            limits,
            ..NodeConfig::default()
        };
        Poly { node: Node::new(config).unwrap(), dir }
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join("extensions").join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn reload(&self, path: &Path) -> ReloadResult {
        let request = ReloadRequest {
            scope: Scope::Extension(path.to_path_buf()),
            options: ReloadOptions::default(),
            request_id: None,
        };
        self.node.reload(&request).expect("the reload runs")
    }

    fn load(&self, file: &str, text: &str) -> ReloadResult {
        let result = self.reload(&self.write(file, text));
        assert_eq!(result.status(), Status::Ok, "{result:#?}");
        result
    }

    fn call(&self, module: &str, function: &str, args: &str) -> Result<String, CallError> {
        self.node.call(module, function, args)
    }
}

fn only_error(result: &ReloadResult) -> (Reason, &str) {
    assert_eq!(result.errors.len(), 1, "{result:#?}");
    (result.errors[0].reason, &result.errors[0].message)
}

fn failure(result: Result<String, CallError>) -> String {
    match result {
        Err(CallError::Failed { message, .. }) => message,
        other => panic!("a failed call, not {other:?}"),
    }
}

const HELLO_PY: &str = r#"import json

GREETING = "hello"


def greet(name):
    return f"{GREETING}, {name}"


def add(a, b=0):
    return a + b


def parse(text):
    return int(text)


def pair():
    return {1, 2}


def _private():
    return "not served"
"#;

#[test]
fn a_python_file_serves_its_top_level_functions_and_a_broken_edit_leaves_it_serving() {
    let poly = Poly::new();
    // The first Python file builds the runner its source is handed to.
    let loaded = poly.load("hello.py", HELLO_PY);
    let compile = loaded.metadata.compile.as_ref().expect("componentize-py ran");
    assert!(compile.command.as_deref().unwrap().ends_with("(the runner of world plugin)"), "{compile:?}");
    let status = poly.node.status();
    let module = status.modules.iter().find(|m| m.name == "hello").unwrap();
    assert_eq!(module.functions, ["add", "greet", "pair", "parse"], "top-level public functions only");

    assert_eq!(poly.call("hello", "greet", r#"["bob"]"#).unwrap(), r#""hello, bob""#);
    assert_eq!(poly.call("hello", "add", r#"{"a": 2, "b": 3}"#).unwrap(), "5", "an object is keyword arguments");
    assert_eq!(poly.call("hello", "add", "[2]").unwrap(), "2");
    let raised = failure(poly.call("hello", "parse", r#"["x"]"#));
    assert!(raised.contains("ValueError: invalid literal for int()"), "{raised}");
    assert!(raised.contains("hello.py:15 in parse"), "the line that raised: {raised}");
    assert_eq!(poly.call("hello", "parse", r#"["12"]"#).unwrap(), "12", "a raise fails its call alone");
    let not_json = failure(poly.call("hello", "pair", "null"));
    assert!(not_json.contains("pair returned a value that is not JSON") && not_json.contains("set"), "{not_json}");
    assert!(poly.call("hello", "_private", "null").is_err());

    // A syntax error: the tool's words with the line, the old code serving.
    let broken = poly.reload(&poly.write("hello.py", &HELLO_PY.replace("def pair():", "def pair(:")));
    let (reason, message) = only_error(&broken);
    assert_eq!(reason, Reason::CompileError);
    assert!(message.contains("SyntaxError") && message.contains("line 18"), "{message}");
    assert!(message.contains("extensions/hello.py"), "names the user's file: {message}");
    assert!(!message.contains("Stack backtrace"), "{message}");
    // An exception while the module is imported (at build time).
    let raising = poly.reload(&poly.write("hello.py", &format!("{HELLO_PY}\nraise RuntimeError(\"no config\")\n")));
    let (reason, message) = only_error(&raising);
    assert_eq!(reason, Reason::CompileError);
    let line = format!("line {}", HELLO_PY.lines().count() + 2);
    assert!(message.contains("RuntimeError: no config") && message.contains(&line), "{message}");
    assert_eq!(poly.call("hello", "greet", r#"["still"]"#).unwrap(), r#""hello, still""#);
    assert_eq!(poly.node.status().modules.len(), 1);

    // An edit runs no tool: the runner takes the new source.
    let edited = poly.load("hello.py", &HELLO_PY.replace("\"hello\"", "\"howdy\""));
    assert!(edited.metadata.compile.is_none(), "{edited:#?}");
    assert_eq!(poly.call("hello", "greet", r#"["bob"]"#).unwrap(), r#""howdy, bob""#);

    // A module the runner has not imported: the file is built whole.
    let csv =
        poly.load("hello.py", &format!("import csv\n{HELLO_PY}\n\ndef dialects():\n    return csv.list_dialects()\n"));
    let compile = csv.metadata.compile.as_ref().expect("componentize-py built the file");
    assert!(compile.command.as_deref().unwrap().ends_with("extensions/hello.py"), "{compile:?}");
    assert!(poly.call("hello", "dialects", "null").unwrap().contains("excel"));
}

const HELLO_JS: &str = r#"const GREETING = "hello";

export function greet(name) {
  return `${GREETING}, ${name}`;
}

export function add(a, b = 0) {
  return a + b;
}

export function parse(text) {
  const n = Number(text);
  if (Number.isNaN(n)) throw new TypeError(`not a number: ${text}`);
  return n;
}

export function big() {
  return 10n;
}

function hidden() {
  return "not exported";
}
"#;

#[test]
fn a_javascript_file_serves_its_exported_functions_and_a_broken_edit_leaves_it_serving() {
    let poly = Poly::new();
    let output = std::sync::Mutex::new(Vec::new());
    let loaded = {
        let mut events = poly.node.telemetry().subscribe();
        let loaded = poly.load("hello.js", HELLO_JS);
        while let Ok(event) = events.try_recv() {
            if let EventBody::BuildOutput { line, .. } = &event.body {
                output.lock().unwrap().push(line.clone());
            }
        }
        loaded
    };
    // The first JavaScript file builds the runner its source is handed to.
    let compile = loaded.metadata.compile.as_ref().expect("componentize-qjs ran");
    assert!(compile.command.as_deref().unwrap().ends_with("(the runner of world plugin)"), "{compile:?}");
    let output = output.into_inner().unwrap();
    assert!(output.iter().any(|line| line.contains("Component written")), "the tool's output streams: {output:?}");

    assert_eq!(poly.call("hello", "greet", r#"["ann"]"#).unwrap(), r#""hello, ann""#);
    assert_eq!(poly.call("hello", "add", r#"{"a": 2, "b": 3}"#).unwrap(), "5", "an object by parameter names");
    let thrown = failure(poly.call("hello", "parse", r#"["x"]"#));
    assert!(thrown.contains("TypeError: not a number: x") && thrown.contains("hello.js:13"), "{thrown}");
    assert_eq!(poly.call("hello", "parse", r#"["12"]"#).unwrap(), "12", "a throw fails its call alone");
    let not_json = failure(poly.call("hello", "big", "null"));
    assert!(not_json.contains("big returned a value that is not JSON"), "{not_json}");
    assert!(poly.call("hello", "hidden", "null").is_err());

    // An edit runs no tool: the runner takes the new source, its exports
    // written every way a module may (the host's functions imported).
    let edited = format!(
        "import {{ nowMs as now }} from \"./zest.js\";\n{}\nexport const later = () => now() > 0;\n\
         const twice = (n) => 2 * n;\nexport {{ twice as double, hidden }};\n",
        HELLO_JS.replace("\"hello\"", "\"howdy\"")
    );
    let loaded = poly.load("hello.js", &edited);
    assert!(loaded.metadata.compile.is_none(), "{loaded:#?}");
    assert_eq!(poly.call("hello", "greet", r#"["ann"]"#).unwrap(), r#""howdy, ann""#);
    assert_eq!(poly.call("hello", "double", "[21]").unwrap(), "42");
    assert_eq!(poly.call("hello", "hidden", "null").unwrap(), r#""not exported""#);
    assert_eq!(poly.call("hello", "later", "null").unwrap(), "true");
    // Lines as the user's file has them, through the runner too.
    let thrown = failure(poly.call("hello", "parse", r#"["y"]"#));
    assert!(thrown.contains("TypeError: not a number: y") && thrown.contains("hello.js:14"), "{thrown}");
    let module = poly.node.status().modules.into_iter().find(|m| m.name == "hello").unwrap();
    assert_eq!(module.functions, ["add", "big", "double", "greet", "hidden", "later", "parse"]);

    // A default export is a module's alone: the file is built whole, and serves.
    let whole = format!("{}\nexport default function main() {{\n  return 1;\n}}\n", edited.replace("howdy", "hi"));
    let whole = poly.load("hello.js", &whole);
    let compile = whole.metadata.compile.as_ref().expect("componentize-qjs built the file");
    assert!(compile.command.as_deref().unwrap().ends_with("extensions/hello.js"), "{compile:?}");
    assert_eq!(poly.call("hello", "greet", r#"["ann"]"#).unwrap(), r#""hi, ann""#);
    assert_eq!(poly.call("hello", "double", "[4]").unwrap(), "8");

    let broken =
        poly.reload(&poly.write("hello.js", &HELLO_JS.replace("export function big() {", "export function big( {")));
    let (reason, message) = only_error(&broken);
    assert_eq!(reason, Reason::CompileError);
    // The runner's script does not evaluate, so the tool builds the file
    // whole, and its words name the line (where QuickJS notices).
    assert!(message.contains("extensions/hello.js:18:"), "the file and line: {message}");
    assert!(!message.contains("Output:"), "{message}");
    let raising = poly.reload(&poly.write("hello.js", &format!("{HELLO_JS}\nthrow new Error(\"no config\");\n")));
    let (reason, message) = only_error(&raising);
    assert_eq!(reason, Reason::CompileError);
    let line = format!("hello.js:{}:", HELLO_JS.lines().count() + 2);
    assert!(message.contains("no config") && message.contains(&line), "{message}");
    assert_eq!(poly.call("hello", "greet", r#"["still"]"#).unwrap(), r#""hi, still""#);
}

/// A counter process; each language's `code_change` appends to `trail` the
/// language whose state it received.
const COUNTER_PY: &str = r#"state = {"count": 0, "trail": []}


def init(args):
    state["count"] = args.get("start", 0)


def handle(message):
    if message == "get":
        return state
    state["count"] += message["add"]
    return state["count"]


def save_state():
    return dict(state, lang="python")


def code_change(old_vsn, direction, old, extra):
    state.update(count=old["count"], trail=old["trail"] + [old.get("lang", "?") + "->python"])
"#;

const COUNTER_JS: &str = r#"let state = { count: 0, trail: [] };

export function init(args) {
  state.count = args.start || 0;
}

export function handle(message) {
  if (message === "get") return state;
  state.count += message.add;
  return state.count;
}

export function save_state() {
  return { ...state, lang: "javascript" };
}

export function code_change(oldVsn, direction, old, extra) {
  state = { count: old.count, trail: [...old.trail, `${old.lang}->javascript`] };
}
"#;

#[test]
fn a_process_moves_from_python_to_javascript_and_back_with_its_state() {
    let poly = Poly::new();
    poly.load("counter.py", COUNTER_PY);
    let py = poly.path("counter.py");
    poly.node.start_process("c", "counter", r#"{"start": 5}"#).expect("starts");
    assert_eq!(poly.node.call_process("c", r#"{"add": 2}"#).unwrap(), "7");

    // The module `counter` now comes from counter.js: the process moves, its
    // state going through Python's save_state into JavaScript's code_change.
    std::fs::remove_file(&py).unwrap();
    let js = poly.load("counter.js", COUNTER_JS);
    let compile = js.metadata.compile.as_ref().expect("componentize-qjs built the runner");
    assert!(compile.command.as_deref().unwrap().ends_with("(the runner of world server)"), "{compile:?}");
    assert_eq!(poly.node.call_process("c", r#"{"add": 1}"#).unwrap(), "8");
    let state = poly.node.call_process("c", r#""get""#).unwrap();
    assert_eq!(state, r#"{"count":8,"trail":["python->javascript"]}"#);

    // An edit of the JavaScript file runs no tool: the process moves through
    // the runner, its state through both versions' functions.
    let edited = poly.load("counter.js", &COUNTER_JS.replace("count: old.count,", "count: old.count + 100,"));
    assert!(edited.metadata.compile.is_none(), "{edited:#?}");
    let state = poly.node.call_process("c", r#""get""#).unwrap();
    assert_eq!(state, r#"{"count":108,"trail":["python->javascript","javascript->javascript"]}"#);

    // And back to the Python file (its build kept: no tool runs).
    let back = poly.load("counter.py", COUNTER_PY);
    assert!(back.metadata.compile.is_none(), "{back:#?}");
    let state = poly.node.call_process("c", r#""get""#).unwrap();
    let trail = r#"["python->javascript", "javascript->javascript", "javascript->python"]"#;
    assert_eq!(state, format!(r#"{{"count": 108, "trail": {trail}}}"#));
}

#[test]
fn a_missing_toolchain_and_a_bad_wit_are_clear_errors_and_a_good_wit_types_the_functions() {
    let dir = tempfile::tempdir().unwrap();
    let poly = Poly::with_tools(Some(tool(Language::JavaScript)), Some(dir.path().join("componentize-py")));
    let missing = poly.reload(&poly.write("hello.py", HELLO_PY));
    let (reason, message) = only_error(&missing);
    assert_eq!(reason, Reason::CompileFailed);
    assert!(message.contains("pip install componentize-py") && message.contains("extensions.python"), "{message}");
    let toolchains = poly.node.toolchains();
    assert_eq!(toolchains.len(), 2);
    assert_eq!(toolchains[0].language, Language::JavaScript);
    assert!(toolchains[0].found.as_ref().is_ok_and(|tool| tool.version.starts_with("componentize-qjs ")));
    assert!(toolchains[1].found.is_err());

    // A NAME.wit beside the file: the file implements that world.
    let wit = SUM_WIT;
    poly.write("sum.wit", wit);
    poly.load("sum.js", "export function add(a, b) {\n  return a + b;\n}\n");
    assert_sum_is_typed(&poly);

    // A WIT that does not parse, and one whose world the file does not fit.
    poly.write("sum.wit", &wit.replace("-> u32", "-> u3"));
    let bad = poly.reload(&poly.path("sum.js"));
    let (reason, message) = only_error(&bad);
    assert_eq!(reason, Reason::CompileError);
    assert!(message.contains("u3"), "{message}");
    // A world the file does not implement: componentize-qjs would build it
    // (the export left out trapping when called); the node's entry fails
    // the build naming what is missing.
    poly.write("sum.wit", &wit.replace("export add", "export total"));
    let unfit = poly.reload(&poly.path("sum.js"));
    let (reason, message) = only_error(&unfit);
    assert_eq!(reason, Reason::CompileError, "{message}");
    assert!(message.contains("sum.js does not implement the world of sum.wit: it lacks total"), "{message}");
    assert_eq!(poly.call("sum", "add", "[2, 3]").unwrap(), "5", "the old version serves");

    // A first load of a file lacking a function of its world, one of an
    // exported interface, or the interface's object: nothing is loaded.
    let stats_wit = "package acme:stats;\n\ninterface summary {\n  mean-of: func(xs: list<f64>) -> f64;\n  count-of: func(xs: list<f64>) -> u32;\n}\n\nworld stats {\n  export total-of: func(xs: list<u32>) -> u32;\n  export summary;\n}\n";
    poly.write("stats.wit", stats_wit);
    let js = "export function totalOf(xs) {\n  return xs.reduce((a, b) => a + b, 0);\n}\n\nexport const summary = {\n  meanOf(xs) {\n    return xs.reduce((a, b) => a + b, 0) / xs.length;\n  },\n  countOf(xs) {\n    return xs.length;\n  },\n};\n";
    let unfits = [
        (js.replace("totalOf", "sumOf"), "it lacks totalOf"),
        (js.replace("countOf", "lengthOf"), "it lacks summary.countOf"),
        (js.replace("summary", "stats"), "it lacks summary (an object with meanOf, countOf)"),
    ];
    for (unfit, lacks) in &unfits {
        let result = poly.reload(&poly.write("stats.js", unfit));
        let (reason, message) = only_error(&result);
        assert_eq!(reason, Reason::CompileError, "{message}");
        assert!(message.contains(&format!("stats.js does not implement the world of stats.wit: {lacks}")), "{message}");
        assert!(!message.contains("zest-own.js"), "the node's entry is no news to the user: {message}");
        assert!(poly.node.describe("stats").is_none(), "nothing of the failed build is loaded");
        assert!(matches!(poly.call("stats", "total-of", "[[1]]"), Err(CallError::ModuleNotFound { .. })));
    }
    // A syntax error in the file still names its line.
    let result = poly.reload(&poly.write("stats.js", &js.replace("return xs.length;", "return xs.length +;")));
    let (reason, message) = only_error(&result);
    assert_eq!(reason, Reason::CompileError, "{message}");
    assert!(message.contains("extensions/stats.js:10:"), "{message}");
    // The file that fits serves its typed functions, the interface's too.
    poly.load("stats.js", js);
    assert_eq!(poly.call("stats", "total-of", "[[1, 2, 3]]").unwrap(), "6");
    assert_eq!(poly.call("stats", "summary#mean-of", "[[1, 2]]").unwrap(), "1.5");
    assert_eq!(poly.call("stats", "summary#count-of", "[[1, 2]]").unwrap(), "2");
    assert!(matches!(poly.call("stats", "total-of", "[[-1]]"), Err(CallError::InvalidArgs { .. })));
}

impl Poly {
    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join("extensions").join(file)
    }
}

#[test]
fn watch_mode_rebuilds_a_javascript_file_and_its_wit_when_either_is_saved() {
    let poly = Poly::new();
    let wit = "package acme:w;\n\nworld w {\n  export get: func() -> u32;\n}\n";
    let js = "export function get() {\n  return 1;\n}\n\nexport function twice(n) {\n  return 2 * n;\n}\n";
    poly.write("w.wit", wit);
    poly.load("w.js", js);
    let (_watch, reloads) = watch_saying(&poly, |event| match event {
        zest_runtime::watch::WatchEvent::Reloaded { result, .. } => Some(result.status()),
        _ => None,
    });
    let eventually = |what: &str, check: &dyn Fn() -> bool| wait_until(what, &reloads, check);

    poly.write("w.js", &js.replace("return 1", "return 2"));
    eventually("the edit serves", &|| poly.call("w", "get", "null").is_ok_and(|out| out == "2"));

    // The WIT beside it saved: its new export serves.
    poly.write("w.wit", &wit.replace("}\n", "  export twice: func(n: u32) -> u32;\n}\n"));
    eventually("the WIT's new function serves", &|| poly.call("w", "twice", "[4]").is_ok_and(|out| out == "8"));
    assert_eq!(poly.call("w", "get", "null").unwrap(), "2");
    assert!(reloads.lock().unwrap().iter().all(|status| *status == Status::Ok), "{:?}", reloads.lock().unwrap());
}

/// The processes whose working directory is under `dir` (a tool's build runs
/// in a private directory there).
fn processes_in(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|entry| std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir)))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_file_named_like_the_glue_is_refused_before_any_tool_runs() {
    let poly = Poly::new();
    for file in ["zest.py", "zest_glue.js", "zest_own.py"] {
        let result = poly.reload(&poly.write(file, "def f():\n    return 1\n"));
        let (reason, message) = only_error(&result);
        assert_eq!(reason, Reason::CompileError, "{file}: {message}");
        assert!(message.contains("rename the file"), "{file}: {message}");
        assert!(result.metadata.compile.is_none(), "{file}: no tool ran: {result:#?}");
    }
    assert!(poly.node.status().modules.is_empty(), "nothing was loaded");
}

#[test]
fn a_build_past_the_timeout_is_killed_with_its_children_and_leaves_nothing_behind() {
    let limits = zest_runtime::Limits { build_timeout: std::time::Duration::from_millis(300), ..Default::default() };
    let poly = Poly::with_limits(Some(tool(Language::JavaScript)), Some(tool(Language::Python)), limits);
    let started = std::time::Instant::now();
    let result = poly.reload(&poly.write("slow.py", "def f():\n    return 1\n"));
    let (reason, message) = only_error(&result);
    assert_eq!(reason, Reason::Timeout, "{message}");
    assert!(message.contains("limits.build_timeout_ms"), "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    let sources = poly.dir.path().join("data/sources");
    assert_eq!(processes_in(&sources), Vec::<String>::new(), "a tool's process outlived the kill");
    let left: Vec<_> = std::fs::read_dir(&sources)
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("build-"))
        .collect();
    assert!(left.is_empty(), "the private build directory goes with the build: {left:?}");
    assert!(poly.node.status().modules.is_empty());
}

/// Module `sum` serves `add` as [`SUM_WIT`] types it: typed functions, and
/// arguments its types refuse are `InvalidArgs`.
fn assert_sum_is_typed(poly: &Poly) {
    assert_eq!(poly.call("sum", "add", "[2, 3]").unwrap(), "5");
    let description = poly.node.describe("sum").unwrap();
    let (name, signature) = &description.functions[0];
    assert_eq!((name.as_str(), signature.result.as_deref()), ("add", Some("u32")));
    assert_eq!(signature.params, [("a".to_string(), "u32".to_string()), ("b".to_string(), "u32".to_string())]);
    assert!(matches!(poly.call("sum", "add", "[-1, 3]"), Err(CallError::InvalidArgs { .. })));
}

/// Watch mode on `poly` (100 ms debounce), keeping what `say` makes of
/// each event.
fn watch_saying<T: Send + 'static>(
    poly: &Poly,
    say: impl Fn(&zest_runtime::watch::WatchEvent) -> Option<T> + Send + 'static,
) -> (zest_runtime::watch::Watch, std::sync::Arc<std::sync::Mutex<Vec<T>>>) {
    let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&said);
    let config = zest_runtime::watch::WatchConfig { debounce: std::time::Duration::from_millis(100) };
    let watch = poly
        .node
        .watch(config, move |event| {
            if let Some(what) = say(event) {
                seen.lock().unwrap().push(what);
            }
        })
        .unwrap();
    (watch, said)
}

/// Polls `check` every 50 ms for up to 120 s; fails saying `what` and what
/// the watch said so far.
fn wait_until<T: std::fmt::Debug>(what: &str, said: &std::sync::Mutex<Vec<T>>, check: &dyn Fn() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        let waited = started.elapsed();
        assert!(waited < std::time::Duration::from_secs(120), "{what}; the watch said: {:?}", said.lock().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A node whose `language` tool is [`slow_tool`] (`delay` seconds), the
/// other one real: the tools' directory (kept while the node lives), the log
/// of builds started, the node.
fn slowed(language: Language, delay: &str) -> (tempfile::TempDir, PathBuf, Poly) {
    let tools = tempfile::tempdir().unwrap();
    let log = tools.path().join("builds.log");
    let slow = slow_tool(tools.path(), &tool(language), &log, delay);
    let poly = match language {
        Language::JavaScript => Poly::with_tools(Some(slow), Some(tool(Language::Python))),
        Language::Python => Poly::with_tools(Some(tool(Language::JavaScript)), Some(slow)),
    };
    (tools, log, poly)
}

/// `real` behind a shell script that appends its pid to `log` at each build
/// (not at the `--help` and `--version` probes) and waits `delay` seconds
/// before becoming the tool, in the same process and group: a build a test
/// can act during.
fn slow_tool(dir: &Path, real: &Path, log: &Path, delay: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join(format!("slow-{}", real.file_name().unwrap().to_string_lossy()));
    let text = format!(
        "#!/bin/sh\ncase \"$1\" in --help|--version) exec {real} \"$@\";; esac\necho $$ >> {log}\nsleep {delay}\nexec {real} \"$@\"\n",
        real = real.display(),
        log = log.display(),
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The pids `slow_tool` logged, once there are at least `count` (a minute at most).
fn builds_started(log: &Path, count: usize) -> Vec<u32> {
    let started = std::time::Instant::now();
    loop {
        let pids: Vec<u32> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|line| line.trim().parse().expect("a pid"))
            .collect();
        if pids.len() >= count {
            return pids;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "build {count} never started: {pids:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// No build process is left: none works under the node's build directory,
/// and the tools `pids` started as are gone (reaped, not zombies).
fn no_build_left(poly: &Poly, pids: &[u32]) {
    let sources = poly.dir.path().join("data/sources");
    assert_eq!(processes_in(&sources), Vec::<String>::new(), "a tool's process outlived its build");
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the build {pid} is still there");
    }
}

/// The version the glue gives a file without its own `vsn`.
fn vsn_of(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))[..16].to_string()
}

/// The module's current vsn, and how many versions it has (current and old).
fn serving(poly: &Poly, module: &str) -> (String, usize) {
    let status = poly.node.status();
    let found = status.modules.iter().find(|m| m.name == module).unwrap_or_else(|| panic!("{module}: {status:#?}"));
    (found.current.vsn.clone(), 1 + found.old.len())
}

/// The vsns the history says module `module` went to, oldest first.
fn history_vsns(poly: &Poly, module: &str) -> Vec<String> {
    let mut entries = poly.node.history(Some(module), 100);
    entries.sort_by_key(|entry| entry.id);
    entries.iter().map(|entry| entry.to.as_ref().map_or("-".to_string(), |to| to.vsn.clone())).collect()
}

/// A file the JavaScript runner does not take (a default export is a
/// module's alone), so every save of it runs the tool, which the tests slow.
const GET_JS: &str = "export function get() {\n  return 1;\n}\nexport default get;\n";

#[test]
fn a_file_deleted_while_it_builds_loads_nothing_and_watch_mode_serves_the_last_of_two_saves_during_one_build() {
    let (_tools, log, poly) = slowed(Language::JavaScript, "1");
    let path = poly.write("w.js", GET_JS);
    assert_eq!(poly.reload(&path).status(), Status::Ok);
    let version = |n: u32| GET_JS.replace("return 1", &format!("return {n}"));

    // A reload whose file is deleted while the tool builds it.
    std::fs::write(&path, version(2)).unwrap();
    let result = std::thread::scope(|scope| {
        let reload = scope.spawn(|| poly.reload(&path));
        builds_started(&log, 2);
        std::fs::remove_file(&path).unwrap();
        reload.join().unwrap()
    });
    let (reason, message) = only_error(&result);
    assert_eq!(reason, Reason::Enoent, "{message}");
    assert!(message.contains("w.js was deleted or renamed away while it was being built"), "{message}");
    assert!(result.reloaded.is_empty(), "{result:#?}");
    assert_eq!(serving(&poly, "w"), (vsn_of(GET_JS), 1), "the old version serves, alone");
    assert_eq!(poly.call("w", "get", "null").unwrap(), "1");
    assert_eq!(history_vsns(&poly, "w"), [vsn_of(GET_JS)], "nothing of the deleted file's build was committed");
    no_build_left(&poly, &builds_started(&log, 2));
    std::fs::write(&path, GET_JS).unwrap();

    // Watch mode: save 3 starts a build; saves 4 and 5 come while it runs.
    let (_watch, events) = watch_saying(&poly, |event| {
        use zest_runtime::watch::WatchEvent;
        Some(match event {
            WatchEvent::Reloaded { result, .. } => match result.errors.first() {
                Some(error) => format!("error {}: {}", error.reason.as_str(), error.message),
                None => format!("reloaded {:?}", result.reloaded),
            },
            WatchEvent::Missing { problem, .. } => format!("missing: {problem}"),
            other => format!("{other:?}"),
        })
    });
    let eventually = |what: &str, check: &dyn Fn() -> bool| wait_until(what, &events, check);
    std::fs::write(&path, version(3)).unwrap();
    builds_started(&log, 3);
    std::fs::write(&path, version(4)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(&path, version(5)).unwrap();
    eventually("the last save serves", &|| poly.call("w", "get", "null").is_ok_and(|out| out == "5"));
    // Quiet for longer than a debounce and a build's start: nothing more runs.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let builds = builds_started(&log, 4);
    assert_eq!(builds.len(), 4, "save 3's build and one build of the last save: {builds:?}");
    assert_eq!(serving(&poly, "w"), (vsn_of(&version(5)), 1));
    assert_eq!(
        history_vsns(&poly, "w"),
        [vsn_of(GET_JS), vsn_of(&version(3)), vsn_of(&version(5))],
        "each build that served, in order; save 4 never did"
    );
    assert_eq!(events.lock().unwrap().len(), 2, "{:?}", events.lock().unwrap());
    no_build_left(&poly, &builds);

    // A save whose file is deleted while it builds: reported, save 5 serving.
    std::fs::write(&path, version(6)).unwrap();
    builds_started(&log, 5);
    std::fs::remove_file(&path).unwrap();
    eventually("the deletion is reported", &|| events.lock().unwrap().iter().any(|said| said.starts_with("missing")));
    let said = events.lock().unwrap().clone();
    assert!(said[2].starts_with("error enoent: ") && said[2].contains("while it was being built"), "{said:?}");
    assert_eq!(said[3], "missing: was deleted or renamed away", "{said:?}");
    assert_eq!(poly.call("w", "get", "null").unwrap(), "5");
    assert_eq!(serving(&poly, "w"), (vsn_of(&version(5)), 1));
    assert_eq!(history_vsns(&poly, "w").len(), 3);
    no_build_left(&poly, &builds_started(&log, 5));
}

const SUM_WIT: &str = "package acme:sum;\n\nworld sum {\n  export add: func(a: u32, b: u32) -> u32;\n}\n";

const SUM_PY: &str = "class WitWorld:\n    def add(self, a, b):\n        return a + b\n";

#[test]
fn a_python_file_with_a_wit_has_typed_functions_and_a_wit_it_does_not_fit_or_a_deletion_loads_nothing() {
    let (_tools, log, poly) = slowed(Language::Python, "0");
    poly.write("sum.wit", SUM_WIT);
    let loaded = poly.load("sum.py", SUM_PY);
    let compile = loaded.metadata.compile.as_ref().expect("componentize-py built the file");
    assert!(compile.command.as_deref().unwrap().ends_with("extensions/sum.py"), "built whole: {compile:?}");
    assert_sum_is_typed(&poly);
    let first = serving(&poly, "sum");
    let path = poly.path("sum.py");
    let old_serves = |after: &str| {
        assert_eq!(poly.call("sum", "add", "[2, 3]").unwrap(), "5", "after {after}");
        assert_eq!(serving(&poly, "sum"), first, "after {after}: the first build serves, alone");
        assert_eq!(poly.node.history(Some("sum"), 100).len(), 1, "after {after}");
    };

    // A WIT that does not parse: the parser's words, naming the type.
    poly.write("sum.wit", &SUM_WIT.replace("-> u32", "-> u3"));
    let refused = poly.reload(&path);
    let (reason, message) = only_error(&refused);
    assert_eq!(reason, Reason::CompileError);
    assert!(message.contains("u3") && message.contains("sum.wit"), "{message}");
    old_serves("a WIT that does not parse");

    // A world whose function the file lacks: refused at build time, naming it
    // (componentize-py alone would build it, and the call would trap).
    poly.write("sum.wit", &SUM_WIT.replace("}\n", "  export total: func(xs: list<u32>) -> u64;\n}\n"));
    let refused = poly.reload(&path);
    let (reason, message) = only_error(&refused);
    assert_eq!(reason, Reason::CompileError);
    assert!(message.contains("sum.py does not implement the world of sum.wit: it lacks WitWorld.total"), "{message}");
    assert!(!message.contains("Stack backtrace"), "{message}");
    old_serves("a WIT whose world the file does not fit");

    // The file deleted while componentize-py builds it.
    poly.write("sum.wit", SUM_WIT);
    std::fs::write(&path, SUM_PY.replace("a + b", "b + a")).unwrap();
    let builds = builds_started(&log, 1).len();
    let result = std::thread::scope(|scope| {
        let reload = scope.spawn(|| poly.reload(&path));
        builds_started(&log, builds + 1);
        std::fs::remove_file(&path).unwrap();
        reload.join().unwrap()
    });
    let (reason, message) = only_error(&result);
    assert_eq!(reason, Reason::Enoent, "{message}");
    assert!(message.contains("sum.py was deleted or renamed away while it was being built"), "{message}");
    old_serves("the file deleted while it was built");
    no_build_left(&poly, &builds_started(&log, builds + 1));
}
