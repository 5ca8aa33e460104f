//! zest's fuzz targets: each takes arbitrary bytes and panics only when a
//! property the code promises is broken (a crash of the code under test is a
//! panic too). The same functions run
//!
//! - under AFL++, coverage-guided, for as long as asked:
//!   `scripts/fuzz.sh TARGET SECONDS` (`fuzz/afl/`, built with `cargo afl`);
//! - as a smoke in the test command (`tests/smoke.rs`): every input of the
//!   corpus in `fuzz/corpus/TARGET/`, then mutations of them.
//!
//! | target | what | properties |
//! |---|---|---|
//! | `manifest` | `zest.toml` parsing | no panic; an accepted manifest's names pass the name rules; an error names the file |
//! | `node_config` | the node configuration file | no panic; an accepted config keeps every limit in range |
//! | `reload_params` | `system.reload`/`rollback`/`promote`/`history` params into requests | no panic; an accepted canary is 1–99 %, a trial's window positive |
//! | `rpc_frame` | JSON-RPC framing before jsonrpsee (`frame.rs`) | no panic; every answer is JSON whose errors carry `data.code`; a passed body is JSON; odd ids come back as sent |
//! | `wasm_raw` | the module loader on raw bytes (validation, the dispatcher rewrite, the wrapping of a core module in the guest SDK's component form, compilation) | no panic; a refusal has a reason of the loader's; a build that loads answers every call (maybe with an error) |
//! | `wasm_smith` | the same on well-formed modules made by `wasm-smith` | as `wasm_raw` |
//! | `wasm_cut` | the loader's cut of a large module into pieces (`split.rs`) on `wasm-smith` modules of 65–200 functions (every item exported, or, for inputs whose first byte is odd, eight callables, which parts hold inside their dispatchers), run whole and cut on one engine | every exported function returns the same values (or traps the same way) whole and cut, calls the host the same way, and leaves the same memory (running out of fuel or stack excepted) |
//! | `wasm_split` | large `wasm-smith` modules (65–160 functions), which Winch compiles cut into pieces (`split.rs`) and Cranelift whole | both load or both refuse; every call answers the same on both, errors word for word (a timeout or a stack overflow, which differ between compilers, excepted) |
//! | `wat_splice` | the node's parse of a module's successive WAT texts (`text.rs`), which splices an edited body or data string into the binary of a text it parsed before, on a generated module (named and numbered calls, globals, types named and inline, labels, multi-value blocks, `call_indirect`, data and its count, comments, annotations, unresolved names) and a run of edits to it | every text gives byte for byte `wat`'s own binary, or the same error |
//! | `guest_json` | the guest SDK's JSON parser and printer | no panic; it accepts only what serde_json accepts; what it prints parses back to the same value |
//! | `extension_path` | extension path checks (§5.4) | no panic; an accepted path resolves inside a root and names a file with a module extension |
//! | `wit_json` | JSON ⇄ WIT values (§13, `code/wit.rs`) on generated types (records, variants, enums, flags, options in options, results, lists, tuples, every number type) and values | no panic; a value that fits its type is accepted and comes back as the same JSON; whatever is accepted reads back to itself |

pub mod drive;
mod wat_text;
mod wit_values;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use zest_control::frame::{self, Transport, Vetted};
use zest_runtime::{Node, NodeConfig, Reason, ReloadOptions, Status};

/// A fuzz target: bytes in, a panic when a promise is broken.
pub type Target = fn(&[u8]);

/// Every target by name.
pub const TARGETS: [(&str, Target); 12] = [
    ("manifest", manifest),
    ("node_config", node_config),
    ("reload_params", reload_params),
    ("rpc_frame", rpc_frame),
    ("wasm_raw", wasm_raw),
    ("wasm_smith", wasm_smith),
    ("wasm_split", wasm_split),
    ("wasm_cut", wasm_cut),
    ("wat_splice", wat_splice),
    ("guest_json", guest_json),
    ("extension_path", extension_path),
    ("wit_json", wit_json),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// A scratch directory that lives as long as the process.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::Builder::new().prefix("zest-fuzz-").tempdir().expect("a temp dir")).path()
}

pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let dir = scratch().join("app");
    match zest_runtime::AppManifest::parse(text, &dir) {
        Ok(manifest) => {
            zest_runtime::abi::check_name(&manifest.name).expect("an accepted app name passes the rules");
            for module in &manifest.modules {
                zest_runtime::abi::check_name(&module.name).expect("an accepted module name passes the rules");
            }
            for process in &manifest.processes {
                assert!(manifest.modules.iter().any(|m| m.name == process.module), "a process of an undeclared module");
            }
        }
        Err(err) => assert!(err.to_string().contains("zest.toml"), "an error names the file: {err}"),
    }
}

pub fn node_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = scratch().join("node.toml");
    let flags = zest_control::config::Flags { config: Some(path.clone()), ..Default::default() };
    match zest_control::config::ServeConfig::parse(text, &path, &flags) {
        Ok(config) => {
            let limits = &config.limits;
            assert!(limits.memory_mb >= 1 && limits.memory_mb <= 4096, "{limits:?}");
            assert!(limits.instances >= 1 && !limits.call_timeout.is_zero(), "{limits:?}");
            assert!(config.max_connections >= 32 && config.max_request_bytes >= 1024);
            if let Some(watch) = &config.watch {
                assert!(!watch.debounce.is_zero());
            }
        }
        Err(err) => assert!(err.contains("node.toml"), "an error names the file: {err}"),
    }
}

pub fn reload_params(data: &[u8]) {
    let Ok(params) = serde_json::from_slice::<Value>(data) else { return };
    if let Ok((request, _)) = zest_control::wire::reload_request(&params) {
        if let Some(percent) = request.options.canary {
            assert!((1..=99).contains(&percent), "canary {percent}");
        }
        if let Some(trial) = &request.options.trial {
            assert!(!trial.window.is_zero() && (0.0..=1.0).contains(&trial.max_failure_rate), "{trial:?}");
        }
    }
    let _ = zest_control::wire::rollback_request(&params);
    let _ = zest_control::wire::promote_request(&params);
    if let Ok(request) = zest_control::wire::unload_request(&params) {
        let known = ["extension", "app", "lock_timeout_ms"];
        assert!(params.as_object().is_none_or(|p| p.keys().all(|k| known.contains(&k.as_str()))), "{params}");
        let _ = request.kind_and_target();
    }
    if let Ok((_, limit)) = zest_control::wire::history_request(&params) {
        assert!(limit >= 1, "limit {limit}");
    }
}

/// Every error in an answer carries `data.code`.
fn check_answer(text: &str) {
    let answer: Value = serde_json::from_str(text).unwrap_or_else(|err| panic!("an answer is JSON ({err}): {text}"));
    let entries = match answer {
        Value::Array(items) => items,
        one => vec![one],
    };
    for entry in entries {
        if let Some(error) = entry.get("error") {
            assert!(error["data"]["code"].is_string(), "an error without data.code: {text}");
        }
    }
}

pub fn rpc_frame(data: &[u8]) {
    for transport in [Transport::Http, Transport::WebSocket] {
        match frame::vet(data, transport) {
            Vetted::Answer(text) => check_answer(&text),
            Vetted::Pass { body, fixes } => {
                // JSON by the grammar; a lone surrogate escape (`"\ud800"`)
                // is grammatical, though no string type holds it: jsonrpsee
                // then refuses the params, as the method would.
                serde_json::from_str::<Box<serde_json::value::RawValue>>(&body)
                    .unwrap_or_else(|err| panic!("a passed body is JSON ({err}): {body}"));
                let Ok(passed) = serde_json::from_str::<Value>(&body) else { continue };
                // Answer every request with its own id (as jsonrpsee would):
                // every id must come back as the client sent it.
                let echo = |request: &Value| {
                    request.get("id").map(|id| serde_json::json!({"jsonrpc": "2.0", "id": id, "result": null}))
                };
                let answer = match &passed {
                    Value::Array(items) => Value::Array(items.iter().filter_map(echo).collect()).to_string(),
                    one => echo(one).map(|a| a.to_string()).unwrap_or_default(),
                };
                let finished = frame::finish(&answer, &fixes);
                if !finished.is_empty() {
                    check_answer(&finished);
                    assert!(!finished.contains("\\u0001zest-id-"), "a placeholder left in: {finished}");
                }
            }
            Vetted::Subscription { id, .. } => {
                serde_json::from_str::<Value>(&id).unwrap_or_else(|_| panic!("a subscription's id is JSON: {id}"));
            }
        }
    }
}

/// One node for the wasm targets, with small limits so that a module that
/// loops or grows is stopped fast.
fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| fuzz_node(zest_runtime::Compiler::Winch))
}

/// A node compiling with `compiler` only (no tier-up), with small limits.
fn fuzz_node(compiler: zest_runtime::Compiler) -> Node {
    {
        let limits = zest_runtime::Limits {
            call_timeout: std::time::Duration::from_millis(100),
            memory_mb: 16,
            instances: 64,
            module_mb: 8,
            ..zest_runtime::Limits::default()
        };
        let config = NodeConfig { data_dir: None, limits, tier_up_after: None, compiler, ..NodeConfig::default() };
        Node::new(config).expect("a node starts")
    }
}

/// What the loader may refuse a build for.
const LOADER_REASONS: [Reason; 3] = [Reason::InvalidModule, Reason::CompileError, Reason::MissingExport];

fn load_and_call(wasm: &[u8]) {
    let node = node();
    let path = scratch().join("fuzzed.wasm");
    std::fs::write(&path, wasm).expect("the scratch directory is writable");
    // Each input replaces the last on one node: what it exports is its own.
    let options = ReloadOptions { force: true, allow_breaking: true, ..ReloadOptions::default() };
    let result = node.load_module("fuzzed", &path, &options);
    match result.status() {
        Status::Ok => {
            let functions =
                node.status().modules.into_iter().find(|m| m.name == "fuzzed").map(|m| m.functions).unwrap_or_default();
            for function in functions.iter().take(8) {
                // Any answer, or any error: not a panic, not a hang.
                let _ = node.call("fuzzed", function, "null");
            }
        }
        _ => {
            for error in &result.errors {
                assert!(LOADER_REASONS.contains(&error.reason), "an unexpected refusal: {error:?}");
            }
        }
    }
}

pub fn wasm_raw(data: &[u8]) {
    load_and_call(data);
}

/// The guest ABI's imports and a module shape that passes it, for
/// `wasm-smith` to build modules the node will load and call.
fn abi_shapes() -> &'static (Vec<u8>, Vec<u8>) {
    static SHAPES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    SHAPES.get_or_init(|| {
        let imports = wat::parse_str(
            r#"(module
                (import "zest" "error" (func (param i32 i32)))
                (import "zest" "log" (func (param i32 i32 i32)))
                (import "zest" "call" (func (param i32 i32 i32 i32 i32 i32) (result i64)))
                (import "zest" "now_ms" (func (result i64))))"#,
        )
        .expect("the imports parse");
        let exports = wat::parse_str(
            r#"(module
                (memory (export "memory") 1)
                (func (export "zest_alloc") (param i32) (result i32) unreachable)
                (func (export "zest_vsn") (result i64) unreachable)
                (func (export "f") (param i32 i32) (result i64) unreachable)
                (func (export "g") (param i32 i32) (result i64) unreachable))"#,
        )
        .expect("the exports parse");
        (imports, exports)
    })
}

/// Modules made by `wasm-smith`: with the first input byte even, shaped to
/// the guest ABI (so they load and their functions run); odd, free-form (so
/// validation and compilation see every construct).
pub fn wasm_smith(data: &[u8]) {
    let Some((&shape, rest)) = data.split_first() else { return };
    let mut input = arbitrary::Unstructured::new(rest);
    let (imports, exports) = abi_shapes();
    let abi = shape % 2 == 0;
    let config = wasm_smith::Config {
        max_memories: 1,
        max_tables: 2,
        max_funcs: 64,
        max_exports: 32,
        max_memory32_bytes: 1 << 24,
        memory64_enabled: false,
        threads_enabled: false,
        exceptions_enabled: false,
        gc_enabled: false,
        available_imports: abi.then(|| imports.clone()),
        exports: abi.then(|| exports.clone()),
        max_imports: if abi { 4 } else { 0 },
        export_everything: !abi,
        // An encoding newer than the engine's parser: every module with
        // imports would be refused before anything else is tried.
        compact_imports_enabled: false,
        ..wasm_smith::Config::default()
    };
    if let Ok(module) = wasm_smith::Module::new(config, &mut input) {
        load_and_call(&module.to_bytes());
    }
}

/// `wasm-smith` settings for modules the loader cuts into pieces
/// (`split.rs`): more than 64 functions, one memory, at most three `"zest"`
/// function imports, none of what the cut leaves whole (bulk memory,
/// reference types, tail calls, a start function), NaNs canonicalised so that
/// answers are deterministic, the import encoding the engine's parser reads.
fn cuttable() -> wasm_smith::Config {
    wasm_smith::Config {
        min_funcs: 65,
        max_memories: 1,
        max_tables: 1,
        max_imports: 3,
        memory64_enabled: false,
        threads_enabled: false,
        exceptions_enabled: false,
        gc_enabled: false,
        bulk_memory_enabled: false,
        reference_types_enabled: false,
        tail_call_enabled: false,
        allow_start_export: false,
        compact_imports_enabled: false,
        wide_arithmetic_enabled: false,
        canonicalize_nans: true,
        ..wasm_smith::Config::default()
    }
}

/// Large ABI-shaped modules, loaded on a Winch node (which cuts them into
/// pieces when it can) and a Cranelift node (which compiles them whole):
/// the two must agree on loading and on every call's answer. NaNs are
/// canonicalised and `now_ms` is not offered, so answers are deterministic;
/// the features the cut leaves whole (bulk memory, reference types, tail
/// calls, a start function) are off, so that most modules are cut.
pub fn wasm_split(data: &[u8]) {
    static NODES: OnceLock<(Node, Node)> = OnceLock::new();
    let (split, whole) =
        NODES.get_or_init(|| (fuzz_node(zest_runtime::Compiler::Winch), fuzz_node(zest_runtime::Compiler::Cranelift)));
    static SHAPES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    let (imports, exports) = SHAPES.get_or_init(|| {
        let imports = wat::parse_str(
            r#"(module
                (import "zest" "error" (func (param i32 i32)))
                (import "zest" "log" (func (param i32 i32 i32)))
                (import "zest" "call" (func (param i32 i32 i32 i32 i32 i32) (result i64))))"#,
        );
        // No `zest_vsn`: a random one traps, and the build is refused.
        let exports = wat::parse_str(
            r#"(module
                (memory (export "memory") 1)
                (func (export "zest_alloc") (param i32) (result i32) unreachable)
                (func (export "f") (param i32 i32) (result i64) unreachable)
                (func (export "g") (param i32 i32) (result i64) unreachable))"#,
        );
        (imports.expect("the imports parse"), exports.expect("the exports parse"))
    });
    let config = wasm_smith::Config {
        max_funcs: 160,
        max_exports: 32,
        max_memory32_bytes: 1 << 24,
        // Winch compiles no relaxed SIMD.
        relaxed_simd_enabled: false,
        available_imports: Some(imports.clone()),
        exports: Some(exports.clone()),
        ..cuttable()
    };
    let mut input = arbitrary::Unstructured::new(data);
    let Ok(module) = wasm_smith::Module::new(config, &mut input) else { return };
    let path = scratch().join("split.wasm");
    std::fs::write(&path, module.to_bytes()).expect("the scratch directory is writable");
    let force = ReloadOptions { force: true, allow_breaking: true, ..ReloadOptions::default() };
    let (a, b) = (split.load_module("fuzzed", &path, &force), whole.load_module("fuzzed", &path, &force));
    assert_eq!(
        a.status() == Status::Ok,
        b.status() == Status::Ok,
        "Winch (cut) and Cranelift (whole) disagree on loading: {:?} vs {:?}",
        a.errors,
        b.errors
    );
    if a.status() != Status::Ok {
        return;
    }
    // Either compiler may run out of time or stack where the other did not.
    let resources = |err: &str| err.contains("deadline") || err.contains("stack");
    for function in ["f", "g", "f", "g"] {
        // An answer, or an error with its words: a trap's kind, the guest's
        // own `error` message, what was wrong with its output.
        let answer = |node: &Node| node.call("fuzzed", function, "null").map_err(|err| err.to_string());
        match (answer(split), answer(whole)) {
            (Err(err), _) | (_, Err(err)) if resources(&err) => return,
            (x, y) => assert_eq!(x, y, "`{function}` answers differently cut (left) and whole (right)"),
        }
    }
}

/// `wasm-smith` modules shaped so the cut applies (one memory, `"zest"`
/// function imports, none of what the cut leaves whole), every item exported.
pub fn wasm_cut(data: &[u8]) {
    static IMPORTS: OnceLock<Vec<u8>> = OnceLock::new();
    let imports = IMPORTS.get_or_init(|| {
        wat::parse_str(
            r#"(module
                (import "zest" "a" (func (param i32 i32)))
                (import "zest" "b" (func (param i64) (result i32)))
                (import "zest" "c" (func (param f64 i32) (result f64))))"#,
        )
        .expect("the imports parse")
    });
    // Inputs whose first byte is odd ask for eight callables, `(i32, i32) ->
    // i64` functions that a part's dispatcher may hold inside it
    // (`split.rs`, `Cut::inlined`), instead of exporting everything.
    static CALLABLES: OnceLock<Vec<u8>> = OnceLock::new();
    let callables = CALLABLES.get_or_init(|| {
        let mut wat = String::from("(module (memory (export \"memory\") 1)\n");
        for k in 0..8 {
            wat.push_str(&format!("(func (export \"c{k}\") (param i32 i32) (result i64) unreachable)\n"));
        }
        wat.push(')');
        wat::parse_str(wat).expect("the callables parse")
    });
    let shaped = data.first().is_some_and(|byte| byte % 2 == 1);
    let config = wasm_smith::Config {
        max_funcs: 200,
        // The callables' shape brings its own memory.
        min_memories: u32::from(!shaped),
        max_memories: usize::from(!shaped),
        max_memory32_bytes: 1 << 20,
        available_imports: Some(imports.clone()),
        export_everything: !shaped,
        exports: shaped.then(|| callables.clone()),
        ..cuttable()
    };
    let mut input = arbitrary::Unstructured::new(data);
    if let Ok(module) = wasm_smith::Module::new(config, &mut input) {
        if let Err(difference) = zest_runtime::fuzzing::check_against_whole(&module.to_bytes()) {
            panic!("the cut module differs from the whole one: {difference}");
        }
    }
}

pub fn guest_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(value) = zest_guest::Json::parse(text) else { return };
    if let Err(err) = serde_json::from_str::<Value>(text) {
        // Within half an ulp of f64::MAX, Rust's parser rounds down to MAX
        // where serde_json calls the number out of range: not a fault.
        assert!(err.to_string().contains("number out of range"), "the SDK accepted what is not JSON ({err}): {text:?}");
    }
    let printed = value.to_json();
    serde_json::from_str::<Value>(&printed).unwrap_or_else(|err| panic!("the SDK printed bad JSON ({err}): {printed}"));
    let again = zest_guest::Json::parse(&printed).unwrap_or_else(|err| panic!("its own output did not parse: {err}"));
    assert_eq!(again.to_json(), printed, "printing is stable");
}

/// A root with a module, a directory, links in and out, for the path checks.
fn extension_root() -> &'static (PathBuf, PathBuf) {
    static ROOT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = scratch().join("extensions");
        let outside = scratch().join("outside");
        for dir in [&root, &outside, &root.join("sub")] {
            std::fs::create_dir_all(dir).expect("scratch dirs");
        }
        std::fs::write(root.join("hello.wat"), "(module)").expect("a file");
        std::fs::write(root.join("sub/deep.wasm"), "").expect("a file");
        std::fs::write(outside.join("evil.wat"), "(module)").expect("a file");
        let _ = std::os::unix::fs::symlink(outside.join("evil.wat"), root.join("link.wat"));
        let _ = std::os::unix::fs::symlink(root.join("hello.wat"), root.join("inner.wat"));
        (root, outside)
    })
}

pub fn wat_splice(data: &[u8]) {
    let mut input = arbitrary::Unstructured::new(data);
    let Ok(texts) = wat_text::texts(&mut input) else { return };
    if let Err(message) = zest_runtime::fuzzing::parse_texts_in_turn(&texts) {
        panic!("{message}");
    }
}

/// How many of the texts `data` stands for (as `wat_splice` reads it) were
/// spliced, and how many texts followed the first.
pub fn wat_splice_count(data: &[u8]) -> (u64, usize) {
    let mut input = arbitrary::Unstructured::new(data);
    let Ok(texts) = wat_text::texts(&mut input) else { return (0, 0) };
    let spliced = zest_runtime::fuzzing::parse_texts_in_turn(&texts).unwrap_or_else(|message| panic!("{message}"));
    (spliced, texts.len() - 1)
}

pub fn extension_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (root, _) = extension_root();
    // Relative paths are taken from the root, as a client's would be from
    // its working directory.
    let given = if Path::new(text).is_absolute() { PathBuf::from(text) } else { root.join(text) };
    if let Ok(checked) = zest_runtime::extension::check_path(std::slice::from_ref(root), &given) {
        let canonical_root = root.canonicalize().expect("the root exists");
        assert!(checked.file.starts_with(&canonical_root), "{} escaped the root", checked.file.display());
        assert!(checked.file.is_file(), "{} is not a file", checked.file.display());
        zest_runtime::abi::check_name(&checked.name).expect("an accepted extension's name passes the rules");
    }
}

pub fn wit_json(data: &[u8]) {
    let mut input = arbitrary::Unstructured::new(data);
    let Ok(case) = wit_values::case(&mut input) else { return };
    let args = case.args.to_string();
    let round_trip = |args: &str| zest_runtime::fuzzing::wit_params_round_trip(&case.component, args);
    match round_trip(&args) {
        Ok(None) => panic!("a generated component did not compile:\n{}", case.component),
        Ok(Some(back)) => {
            if !case.changed {
                let back: Value = serde_json::from_str(&back).expect("the mapping writes JSON");
                assert_eq!(back, case.args, "a value came back changed:\n{}", case.component);
            }
            let again = round_trip(&back).unwrap_or_else(|err| panic!("what was accepted is refused: {err}"));
            assert_eq!(again.as_deref(), Some(back.as_str()), "reading back is stable:\n{}", case.component);
        }
        Err(message) => {
            assert!(case.changed, "a value that fits was refused: {message}\n{}\n{args}", case.component)
        }
    }
}
