//! Rust guests in the SDK's component form (`zest_guest::component!`), built
//! by a real wasm32 `rustc` (Debian's 1.63 does) and made components by the
//! node as it loads them: as `.rs` extensions, as an app's `.wasm` builds,
//! running processes that move between core modules and components, calling
//! other modules, and refused clearly when their exports do not fit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zest_runtime::toolchain::Rustc;
use zest_runtime::{
    BuildKind, CallError, ExtensionsConfig, Node, NodeConfig, Reason, ReloadOptions, ReloadRequest, ReloadResult,
    Scope, Signature, Status,
};

use super::support::{versioned, write_at};

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(path)
}

/// A node whose extension root is `<tmp>/extensions` and data dir `<tmp>/data`.
struct Setup {
    dir: tempfile::TempDir,
    node: Node,
    rustc: Rustc,
}

impl Setup {
    fn new() -> Setup {
        Setup::with(NodeConfig::default())
    }

    /// A setup whose node has `config`, its directories aside.
    fn with(config: NodeConfig) -> Setup {
        let rustc = Rustc::find(None).unwrap_or_else(|err| {
            panic!("this test needs a wasm32-capable rustc (scripts/test.sh installs one): {err}")
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("extensions")).unwrap();
        let config = NodeConfig {
            data_dir: Some(dir.path().join("data")),
            extensions: ExtensionsConfig { roots: vec![dir.path().join("extensions")], ..ExtensionsConfig::default() },
            ..config
        };
        let node = Node::new(config).unwrap();
        Setup { dir, node, rustc }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn write(&self, relative: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        write_at(self.path(relative), bytes)
    }

    fn extension(&self, path: &Path) -> ReloadResult {
        let request = ReloadRequest::new(Scope::Extension(path.to_path_buf()));
        self.node.reload(&request).expect("the reload runs")
    }

    /// `source` built into `<tmp>/<output>` by the test's rustc.
    fn build(&self, source: &Path, output: &str) -> PathBuf {
        let wasm = self.path(output);
        self.rustc
            .compile_module(
                source,
                &wasm,
                &self.path("build"),
                source.parent().unwrap(),
                Duration::from_secs(300),
                &|_| {},
            )
            .unwrap_or_else(|err| panic!("{} could not build {}: {err}", self.rustc.version(), source.display()));
        wasm
    }

    fn call(&self, module: &str, function: &str, args: &str) -> String {
        self.node.call(module, function, args).unwrap_or_else(|err| panic!("{module}.{function}: {err}"))
    }

    fn kind(&self, module: &str) -> BuildKind {
        let status = self.node.status();
        status.modules.iter().find(|m| m.name == module).expect("listed").current.kind
    }
}

#[test]
fn a_rust_extension_in_component_form_loads_as_a_component_and_answers_over_json() {
    let setup = Setup::new();
    let source = std::fs::read_to_string(example("components/greeter.rs")).unwrap();
    let path = setup.write("extensions/greeter.rs", &source);
    let loaded = setup.extension(&path);
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    assert!(loaded.metadata.compile.as_ref().is_some_and(|rustc| rustc.ran), "{loaded:#?}");

    assert_eq!(setup.kind("greeter"), BuildKind::Component, "the core module rustc made was wrapped");
    let described = setup.node.describe("greeter").expect("described");
    assert_eq!(described.vsn, "greeter-1", "from the component's `vsn`");
    let names: Vec<&str> = described.functions.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["greet", "now", "relay", "sum"], "the names `zest:guest/dynamic` lists");
    assert!(described.functions.iter().all(|(_, signature)| *signature == Signature::json()));

    assert_eq!(setup.call("greeter", "greet", r#"{"name":"ops"}"#), r#"{"greeting":"hello, ops"}"#);
    assert_eq!(setup.call("greeter", "sum", "[1, 2, 3.5]"), "6.5");
    match setup.node.call("greeter", "sum", r#"[1, "two"]"#) {
        Err(CallError::Failed { message, .. }) => assert_eq!(message, r#"not a number: "two""#),
        other => panic!("an `Err` of the function fails the call with its message, got {other:?}"),
    }
    assert!(matches!(setup.node.call("greeter", "nope", "null"), Err(CallError::FunctionNotFound { .. })));

    // Many calls on pooled instances: the SDK frees what crosses.
    for i in 0..2000 {
        let out = setup.call("greeter", "greet", &format!(r#"{{"name":"n{i}"}}"#));
        assert_eq!(out, format!(r#"{{"greeting":"hello, n{i}"}}"#));
    }

    // An edit is a new component; an unchanged source is not rebuilt.
    setup.write("extensions/greeter.rs", source.replace("hello, {}", "hi, {}"));
    let edited = setup.extension(&path);
    assert_eq!(edited.reloaded, ["greeter"], "{edited:#?}");
    assert_eq!(setup.call("greeter", "greet", r#"{"name":"ops"}"#), r#"{"greeting":"hi, ops"}"#);
    assert_eq!(setup.kind("greeter"), BuildKind::Component);
}

#[test]
fn a_rust_component_calls_other_modules_through_the_host_and_gets_their_failures() {
    let setup = Setup::new();
    let path = setup.write("extensions/greeter.rs", std::fs::read_to_string(example("components/greeter.rs")).unwrap());
    assert_eq!(setup.extension(&path).status(), Status::Ok);
    let clock = setup.write("clock.wat", versioned(7, 0));
    assert_eq!(setup.node.load_module("clock", &clock, &ReloadOptions::default()).status(), Status::Ok);

    let relayed = setup.call("greeter", "relay", r#"{"module":"clock","function":"get"}"#);
    assert_eq!(relayed, r#"{"relayed":{"v":7}}"#, "a component calling a core module");
    let itself = setup.call("greeter", "relay", r#"{"module":"greeter","function":"sum","args":[20,22]}"#);
    assert_eq!(itself, r#"{"relayed":42}"#, "and a component (another instance of itself)");
    match setup.node.call("greeter", "relay", r#"{"module":"greeter","function":"sum","args":"x"}"#) {
        Err(CallError::Failed { message, .. }) => {
            assert_eq!(
                message, "greeter.sum failed: sum takes an array of numbers",
                "the callee's failure, as an `Err`"
            )
        }
        other => panic!("expected the relayed failure, got {other:?}"),
    }
    match setup.node.call("greeter", "relay", r#"{"module":"absent","function":"get"}"#) {
        Err(CallError::Failed { message, .. }) => assert!(message.contains("absent"), "{message}"),
        other => panic!("expected the relayed failure, got {other:?}"),
    }
    let now: i64 = setup.call("greeter", "now", "null").parse().unwrap();
    let host_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((host_now - now).abs() < 5_000, "guest clock {now} vs host {host_now}");
}

#[test]
fn a_process_moves_from_a_core_module_to_a_rust_component_and_back_with_its_state() {
    let setup = Setup::new();
    let core = setup.build(&example("guests/tally.rs"), "tally-core.wasm");
    let component = setup.build(&example("components/tally.rs"), "tally-component.wasm");
    let module = setup.path("tally.wasm");
    let swap_to = |build: &Path| {
        std::fs::copy(build, &module).unwrap();
        let result = setup.node.load_module("tally", &module, &ReloadOptions::default());
        assert_eq!(result.status(), Status::Ok, "{result:#?}");
        result
    };

    swap_to(&core);
    assert_eq!(setup.kind("tally"), BuildKind::Module);
    setup.node.start_process("t", "tally", r#"{"start": 10}"#).unwrap();
    assert_eq!(setup.node.call_process("t", r#"{"add": 5}"#).unwrap(), r#"{"count":15,"moves":[]}"#);

    let up = swap_to(&component);
    assert_eq!(setup.kind("tally"), BuildKind::Component);
    assert_eq!(up.metadata.swaps[0].new_vsn, "tally-component-1");
    assert_eq!(
        setup.node.call_process("t", r#"{"add": 1}"#).unwrap(),
        r#"{"count":16,"moves":["up from tally-1"]}"#,
        "the component took the core module's state"
    );

    swap_to(&core);
    assert_eq!(setup.kind("tally"), BuildKind::Module);
    assert_eq!(
        setup.node.call_process("t", "null").unwrap(),
        r#"{"count":16,"moves":["up from tally-1","up from tally-component-1"]}"#,
        "and the core module took the component's"
    );

    // A rollback moves it down to the component again, `direction` down.
    let back = setup
        .node
        .rollback(&zest_runtime::RollbackRequest::new(zest_runtime::RollbackTarget::Module("tally".into())))
        .unwrap();
    assert_eq!(back.status(), Status::Ok, "{back:#?}");
    assert_eq!(setup.kind("tally"), BuildKind::Component);
    assert_eq!(
        setup.node.call_process("t", "null").unwrap(),
        r#"{"count":16,"moves":["up from tally-1","up from tally-component-1","down from tally-1"]}"#
    );
}

#[test]
fn an_apps_component_form_builds_are_wrapped_at_load_and_come_back_from_the_compile_cache() {
    let setup = Setup::new();
    let app = setup.path("components");
    std::fs::create_dir_all(&app).unwrap();
    for file in ["zest.toml", "build.sh", "greeter.rs", "tally.rs"] {
        std::fs::copy(example("components").join(file), app.join(file)).unwrap();
    }
    // build.sh builds ../guests/tally.rs too: give the copy its neighbour.
    std::fs::create_dir_all(setup.path("guests")).unwrap();
    std::fs::copy(example("guests/tally.rs"), setup.path("guests/tally.rs")).unwrap();
    let built = std::process::Command::new("sh")
        .arg(app.join("build.sh"))
        .env("ZEST_GUEST_SRC", Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/src"))
        .env("RUSTC", setup.rustc.path())
        .output()
        .unwrap();
    assert!(built.status.success(), "build.sh: {}", String::from_utf8_lossy(&built.stderr));

    let loaded = setup.node.load_app(&app);
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    assert_eq!(setup.kind("greeter"), BuildKind::Component);
    assert_eq!(setup.kind("tally"), BuildKind::Module, "the core build at first");
    assert_eq!(setup.node.call_process("tally", r#"{"add": 3}"#).unwrap(), r#"{"count":3,"moves":[]}"#);

    std::fs::copy(app.join("build/tally-component.wasm"), app.join("build/tally.wasm")).unwrap();
    let up = setup.node.reload(&ReloadRequest::new(Scope::App("components".into()))).unwrap();
    assert_eq!(up.status(), Status::Ok, "{up:#?}");
    assert_eq!(setup.kind("tally"), BuildKind::Component);
    assert_eq!(setup.node.call_process("tally", "null").unwrap(), r#"{"count":3,"moves":["up from tally-1"]}"#);
    setup.node.flush_writes();

    // A node started afresh on the same data directory loads the wrapped
    // build's machine code from the compile cache (keyed by the core bytes).
    let Setup { dir, node, .. } = setup;
    drop(node);
    let node = Node::new(NodeConfig { data_dir: Some(dir.path().join("data")), ..NodeConfig::default() }).unwrap();
    let again = node.load_module("tally", app.join("build/tally.wasm"), &ReloadOptions::default());
    assert_eq!(again.status(), Status::Ok, "{again:#?}");
    assert!(!again.metadata.swaps[0].compiled, "machine code from the cache: {again:#?}");
    assert_eq!(node.status().modules[0].current.kind, BuildKind::Component);
    assert_eq!(node.describe("tally").unwrap().vsn, "tally-component-1");
}

/// A component-form module defining its own `zest:guest/process` export,
/// `handle` alone and of the wrong type.
const MISFIT: &str = r#"use zest_guest::Json;

#[export_name = "zest:guest/process@1.0.0#handle"]
extern "C" fn handle(ptr: i32) -> i32 {
    ptr
}

fn echo(args: Json) -> Result<Json, String> {
    Ok(args)
}

zest_guest::component! {
    vsn: "misfit",
    functions: [echo],
}
"#;

/// A component-form module calling the core form's `log` import.
const CORE_IMPORT: &str = r#"use zest_guest::{Json, Level};

fn echo(args: Json) -> Result<Json, String> {
    zest_guest::log(Level::Info, "the core form's import");
    Ok(args)
}

zest_guest::component! {
    functions: [echo],
}
"#;

/// The core form's `export!` beside the component form: `shout` would not be
/// callable on the component.
const MIXED: &str = r#"use zest_guest::{export, Json};

fn echo(args: Json) -> Result<Json, String> {
    Ok(args)
}

fn shout(args: Json) -> Result<Json, String> {
    Ok(args)
}

export!(shout);

zest_guest::component! {
    functions: [echo],
}
"#;

#[test]
fn a_component_form_source_whose_exports_do_not_fit_is_refused_and_the_old_version_keeps_serving() {
    let setup = Setup::new();
    let greeter = std::fs::read_to_string(example("components/greeter.rs")).unwrap();
    let path = setup.write("extensions/greeter.rs", &greeter);
    assert_eq!(setup.extension(&path).status(), Status::Ok);

    let refused = |source: &str, expected: &[&str]| {
        setup.write("extensions/greeter.rs", source);
        let result = setup.extension(&path);
        assert_eq!(result.status(), Status::Error, "{result:#?}");
        let failure = result.errors.last().expect("an error");
        assert_eq!(failure.reason, Reason::InvalidModule, "{result:#?}");
        assert_eq!(failure.target, "greeter", "the failure names the module");
        for words in expected {
            assert!(failure.message.contains(words), "`{words}` in: {}", failure.message);
        }
        assert_eq!(setup.call("greeter", "sum", "[1, 2]"), "3", "the old version serves");
        assert_eq!(setup.kind("greeter"), BuildKind::Component);
    };
    refused(MISFIT, &["in the guest SDK's component form", "zest:guest/process@1.0.0"]);
    refused(CORE_IMPORT, &["imports `zest.log`", "zest_guest::component::log"]);
    refused(MIXED, &["exports `shout`, which a component made of it cannot export", "`functions`"]);
    // A source using `component!` wrongly does not compile: rustc's words.
    setup.write("extensions/greeter.rs", greeter.replace("functions: [", "handlers: ["));
    let result = setup.extension(&path);
    assert_eq!(result.errors[0].reason, Reason::CompileError, "{result:#?}");
    assert!(result.errors[0].message.contains("unknown key `handlers`"), "{}", result.errors[0].message);
}

#[test]
fn a_quiet_rust_component_tiers_up_to_cranelift_and_its_process_keeps_its_state() {
    let setup = Setup::with(NodeConfig { tier_up_after: Some(Duration::from_millis(50)), ..NodeConfig::default() });
    let component = setup.build(&example("components/tally.rs"), "tally.wasm");
    assert_eq!(setup.node.load_module("tally", &component, &ReloadOptions::default()).status(), Status::Ok);
    setup.node.start_process("t", "tally", r#"{"start": 1}"#).unwrap();
    let compiler = || setup.node.status().modules[0].current.compiler;
    assert_eq!(compiler(), zest_runtime::Compiler::Winch, "served on Winch code at once");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while compiler() != zest_runtime::Compiler::Cranelift {
        assert!(std::time::Instant::now() < deadline, "no tier-up within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(setup.kind("tally"), BuildKind::Component, "wrapped again for Cranelift");
    assert_eq!(setup.node.call_process("t", r#"{"add": 2}"#).unwrap(), r#"{"count":3,"moves":[]}"#);
    // A new process starts on an instance of the Cranelift code.
    setup.node.start_process("u", "tally", r#"{"start": 40}"#).unwrap();
    assert_eq!(setup.node.call_process("u", r#"{"add": 2}"#).unwrap(), r#"{"count":42,"moves":[]}"#);
}

/// One module both a process and a plugin: the world made of its exports
/// holds `zest:guest/process` and `zest:guest/dynamic`.
const BOTH: &str = r#"use zest_guest::component::Server;
use zest_guest::{Change, Json};

struct Last(Json);

impl Server for Last {
    fn init(args: Json) -> Result<Last, String> {
        Ok(Last(args))
    }
    fn handle(&mut self, message: Json) -> Result<Json, String> {
        Ok(std::mem::replace(&mut self.0, message))
    }
    fn save_state(&self) -> Json {
        self.0.clone()
    }
    fn code_change(change: Change) -> Result<Last, String> {
        Ok(Last(change.state))
    }
}

fn double(args: Json) -> Result<Json, String> {
    let n = args.as_i64().ok_or("double takes an integer")?;
    Ok(Json::from(n * 2))
}

zest_guest::component! {
    functions: [double],
    server: Last,
}
"#;

#[test]
fn one_rust_component_is_a_process_and_a_plugin_at_once() {
    let setup = Setup::new();
    let path = setup.write("extensions/both.rs", BOTH);
    let loaded = setup.extension(&path);
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    assert_eq!(setup.kind("both"), BuildKind::Component);
    assert_eq!(setup.call("both", "double", "21"), "42");
    setup.node.start_process("p", "both", r#"{"first": true}"#).unwrap();
    assert_eq!(setup.node.call_process("p", "2").unwrap(), r#"{"first":true}"#);
    assert_eq!(setup.node.call_process("p", "3").unwrap(), "2");
    let status = setup.node.status();
    let vsn = &status.modules[0].current.vsn;
    assert_eq!(vsn.len(), 16, "no `vsn` key: the first 16 hex digits of the build's sha256, got {vsn}");
}
