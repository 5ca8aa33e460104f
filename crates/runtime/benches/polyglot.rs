//! Benchmarks of source extensions in JavaScript and Python (issue 27; results
//! in `docs/benchmarks.md`, "Guests in JavaScript and Python"):
//!
//! - **Edit → new code serving**, end to end (the tool's build, the node's
//!   compile, the swap, and a call answering with the edited constant), for a
//!   small `.js` and `.py` extension (each both through its runner and built
//!   whole) beside the same edit of a `.rs` one, each
//!   split into the tool's share and the node's; and the restart a peer would
//!   do instead (the tool's build, then a fresh node compiling the component
//!   with Cranelift and answering a first call).
//! - **Compile** of each component alone, by Winch and by Cranelift.
//! - **Calls per second** of a small function in each language, beside Rust.
//! - With `ZEST_BENCH_JCO=<path to componentize-js>` (jco's SpiderMonkey
//!   backend, `npm install @bytecodealliance/componentize-js`): the same
//!   plugin built by it and by componentize-qjs — build time, size, compile
//!   time, calls per second.
//!
//! Ratios are against the `.rs` edit (and Rust's calls) measured in the same
//! process. Run: `cargo bench -p zest-runtime --bench polyglot` (`-- --quick`
//! for one edit each). Needs componentize-qjs, componentize-py and a wasm32
//! rustc (`scripts/test.sh` installs them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zest_runtime::wasmtime::{self, component::Component};
use zest_runtime::{
    Compiler, ExtensionsConfig, Language, Node, NodeConfig, ReloadOptions, ReloadRequest, ReloadResult, Scope, Status,
    Tool,
};

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn tool(language: Language) -> PathBuf {
    if let Ok(tool) = Tool::find(language, None) {
        return tool.path;
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    match Tool::find(language, Some(&home.join(".local/bin").join(language.tool()))) {
        Ok(tool) => tool.path,
        Err(err) => panic!("this benchmark needs {}: {err}", language.tool()),
    }
}

/// The same small extension in each language: `get` answers `n`, `add` sums.
fn source(suffix: &str, n: u32) -> String {
    match suffix {
        "rs" => format!(
            "use zest_guest::{{export, Json}};\n\nfn get(_args: Json) -> Result<Json, String> {{\n    Ok(Json::from({n}i64))\n}}\n\n\
             fn add(args: Json) -> Result<Json, String> {{\n    let a = args.as_array().and_then(|a| a.first()).and_then(Json::as_i64).unwrap_or(0);\n    \
             let b = args.as_array().and_then(|a| a.get(1)).and_then(Json::as_i64).unwrap_or(0);\n    Ok(Json::from(a + b))\n}}\n\nexport!(get, add);\n"
        ),
        "js" => format!("export function get() {{\n  return {n};\n}}\n\nexport function add(a, b) {{\n  return a + b;\n}}\n"),
        "py" => format!("def get():\n    return {n}\n\n\ndef add(a, b):\n    return a + b\n"),
        // A module the Python runner has not imported: built whole.
        "whole" => format!("import csv\n\n\n{}", source("py", n)),
        // A default export, which only a module holds: built whole.
        "jswhole" => format!("{}\nexport default add;\n", source("js", n)),
        _ => unreachable!(),
    }
}

fn reload(node: &Node, path: &Path) -> (f64, ReloadResult) {
    let started = Instant::now();
    let request = ReloadRequest {
        scope: Scope::Extension(path.to_path_buf()),
        options: ReloadOptions::default(),
        request_id: None,
    };
    let result = node.reload(&request).unwrap();
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    (ms(started.elapsed()), result)
}

struct Edit {
    total: f64,
    tool: f64,
}

/// `rounds` edits of `NAME.SUFFIX`, each timed from the save to the first call
/// answering the new constant.
fn edits(node: &Node, root: &Path, suffix: &str, rounds: u32) -> Vec<Edit> {
    let extension = match suffix {
        "whole" => "py",
        "jswhole" => "js",
        suffix => suffix,
    };
    let file = root.join(format!("small_{suffix}.{extension}"));
    let module = format!("small_{suffix}");
    std::fs::write(&file, source(suffix, 0)).unwrap();
    reload(node, &file);
    (1..=rounds)
        .map(|n| {
            // A person's pause between saves: the last build tiers up meanwhile.
            std::thread::sleep(Duration::from_millis(1500));
            std::fs::write(&file, source(suffix, n)).unwrap();
            let started = Instant::now();
            let (_, result) = reload(node, &file);
            assert_eq!(node.call(&module, "get", "null").unwrap(), n.to_string());
            let total = ms(started.elapsed());
            let tool = result.metadata.compile.map_or(0.0, |run| ms(run.duration));
            Edit { total, tool }
        })
        .collect()
}

/// What a peer does instead of a hot swap: the tool builds the component
/// (run here through a throwaway node's build, which runs it the same way),
/// and a fresh host compiles it with Cranelift and answers a first call.
fn restart(root: &Path, suffix: &str, tools: &ExtensionsConfig) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        data_dir: Some(dir.path().join("data")),
        extensions: ExtensionsConfig { roots: vec![root.to_path_buf()], ..tools.clone() },
        compiler: Compiler::Winch,
        tier_up_after: None,
        ..NodeConfig::default()
    };
    // A peer builds the file whole: a source the runner cannot take.
    let file = root.join(format!("peer_{suffix}.{suffix}"));
    std::fs::write(&file, source(if suffix == "py" { "whole" } else { "jswhole" }, 77)).unwrap();
    let builder = Node::new(config).unwrap();
    let (_, result) = reload(&builder, &file);
    let tool = result.metadata.compile.map_or(0.0, |run| ms(run.duration));
    drop(builder);
    // The newest: the whole build after the runner's.
    let built = std::fs::read_dir(dir.path().join("data/sources/artifacts"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .max_by_key(|path| std::fs::metadata(path).unwrap().modified().unwrap())
        .expect("the built component");
    let component = root.join(format!("peer_{suffix}.wasm"));
    std::fs::copy(built, &component).unwrap();
    let started = Instant::now();
    let peer = Node::new(NodeConfig {
        data_dir: None,
        extensions: ExtensionsConfig { roots: vec![root.to_path_buf()], ..tools.clone() },
        compiler: Compiler::Cranelift,
        ..NodeConfig::default()
    })
    .unwrap();
    reload(&peer, &component);
    assert_eq!(peer.call(&format!("peer_{suffix}"), "get", "null").unwrap(), "77");
    (tool, ms(started.elapsed()))
}

/// Compile time of the component `bytes` by `strategy`, median of 3.
fn compile(bytes: &[u8], strategy: wasmtime::Strategy) -> f64 {
    let mut config = wasmtime::Config::new();
    config.strategy(strategy);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let mut samples: Vec<f64> = (0..3)
        .map(|_| {
            let started = Instant::now();
            Component::new(&engine, bytes).unwrap();
            ms(started.elapsed())
        })
        .collect();
    median(&mut samples)
}

fn calls_per_second(node: &Node, module: &str) -> f64 {
    let window = Duration::from_millis(1000);
    let started = Instant::now();
    let mut calls = 0u32;
    while started.elapsed() < window {
        assert_eq!(node.call(module, "add", "[2, 3]").unwrap(), "5");
        calls += 1;
    }
    f64::from(calls) / started.elapsed().as_secs_f64()
}

/// A plugin written against `zest:guest`'s world `plugin` directly (what the
/// node's glue makes of a file defining `add`), for both JavaScript tools.
const PLUGIN_JS: &str = r#"export function vsn() { return "1"; }
export const dynamic = {
  functions() { return ["add"]; },
  invoke(name, args) {
    const [a, b] = JSON.parse(args);
    return JSON.stringify(a + b);
  },
};
"#;

/// jco's SpiderMonkey backend against componentize-qjs on the same plugin.
fn javascript_engines(jco: &Path, qjs: &Path, root: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let wit = dir.path().join("zest.wit");
    std::fs::write(&wit, zest_runtime::source::ZEST_WIT).unwrap();
    std::fs::write(dir.path().join("plugin.js"), PLUGIN_JS).unwrap();
    println!("\n## jco (SpiderMonkey) against componentize-qjs (QuickJS), the same plugin\n");
    println!("| tool | build | size | Winch | Cranelift | calls/s |");
    println!("|---|---|---|---|---|---|");
    let node = Node::new(NodeConfig {
        data_dir: None,
        extensions: ExtensionsConfig { roots: vec![root.to_path_buf()], ..ExtensionsConfig::default() },
        ..NodeConfig::default()
    })
    .unwrap();
    for (name, program, args) in [
        ("componentize-qjs", qjs, &["--sync", "-w", "zest.wit", "-n", "plugin", "-j", "plugin.js", "-o"][..]),
        // Without wasi:http, which the node does not provide.
        (
            "jco componentize-js",
            jco,
            &["plugin.js", "-w", "zest.wit", "-n", "plugin", "-d", "http", "fetch-event", "-o"],
        ),
    ] {
        let out = root.join(format!("engine_{}.wasm", if name.starts_with("jco") { "jco" } else { "qjs" }));
        let started = Instant::now();
        let status = std::process::Command::new(program)
            .args(args)
            .arg(&out)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        let build = ms(started.elapsed());
        assert!(status.success(), "{name} failed");
        let bytes = std::fs::read(&out).unwrap();
        let winch = compile(&bytes, wasmtime::Strategy::Winch);
        let cranelift = compile(&bytes, wasmtime::Strategy::Cranelift);
        let module = out.file_stem().unwrap().to_string_lossy().into_owned();
        let (_, result) = reload(&node, &out);
        assert_eq!(result.status(), Status::Ok);
        std::thread::sleep(Duration::from_secs(if bytes.len() > 4_000_000 { 15 } else { 4 }));
        let rate = calls_per_second(&node, &module);
        println!(
            "| {name} | {build:.0} ms | {:.1} MB | {winch:.0} ms | {cranelift:.0} ms | {rate:.0} |",
            bytes.len() as f64 / 1e6
        );
    }
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let rounds = if quick { 1 } else { 3 };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("extensions");
    std::fs::create_dir(&root).unwrap();
    let tools = ExtensionsConfig {
        roots: vec![root.clone()],
        rustc: None,
        javascript: Some(tool(Language::JavaScript)),
        python: Some(tool(Language::Python)),
    };
    let config =
        NodeConfig { data_dir: Some(tmp.path().join("data")), extensions: tools.clone(), ..NodeConfig::default() };
    let node = Node::new(config).unwrap();

    println!("## Edit → new code serving (median of {rounds}; compiler auto: Winch, then Cranelift when quiet)\n");
    println!("| extension | total | the tool's share | the node's share | / the .rs edit |");
    println!("|---|---|---|---|---|");
    let mut rs_total = 0.0;
    let cases = [
        ("rs", ".rs (rustc)"),
        ("js", ".js (the runner: no tool)"),
        ("jswhole", ".js built whole (componentize-qjs; `export default`)"),
        ("py", ".py (the runner: no tool)"),
        ("whole", ".py built whole (componentize-py; `import csv`)"),
    ];
    for (suffix, label) in cases {
        let runs = edits(&node, &root, suffix, rounds);
        let mut totals: Vec<f64> = runs.iter().map(|edit| edit.total).collect();
        let mut tools: Vec<f64> = runs.iter().map(|edit| edit.tool).collect();
        let mut ours: Vec<f64> = runs.iter().map(|edit| edit.total - edit.tool).collect();
        let total = median(&mut totals);
        if suffix == "rs" {
            rs_total = total;
        }
        println!(
            "| {label} | {total:.0} ms | {:.0} ms | {:.0} ms | {:.1} |",
            median(&mut tools),
            median(&mut ours),
            total / rs_total
        );
    }

    println!("\n## The restart a peer does instead (tool build + fresh host, Cranelift, first call)\n");
    println!("| extension | tool | fresh host to first call | total | / the .rs edit |");
    println!("|---|---|---|---|---|");
    for suffix in ["js", "py"] {
        let (tool_ms, host_ms) = restart(&root, suffix, &tools);
        let total = tool_ms + host_ms;
        println!("| .{suffix} | {tool_ms:.0} ms | {host_ms:.0} ms | {total:.0} ms | {:.1} |", total / rs_total);
    }

    println!("\n## Compiling each component alone (median of 3)\n");
    println!("| component | size | Winch | Cranelift | Cranelift / Winch |");
    println!("|---|---|---|---|---|");
    for suffix in ["js", "py"] {
        let bytes = std::fs::read(root.join(format!("peer_{suffix}.wasm"))).unwrap();
        let winch = compile(&bytes, wasmtime::Strategy::Winch);
        let cranelift = compile(&bytes, wasmtime::Strategy::Cranelift);
        println!(
            "| .{suffix} | {:.1} MB | {winch:.0} ms | {cranelift:.0} ms | {:.1} |",
            bytes.len() as f64 / 1e6,
            cranelift / winch
        );
    }

    // Calls once every build has tiered up to Cranelift.
    std::thread::sleep(Duration::from_secs(if quick { 8 } else { 15 }));
    println!("\n## Calls per second of `add(2, 3)` through `Node::call` (1 s each)\n");
    println!("| extension | calls/s | / Rust |");
    println!("|---|---|---|");
    let rust = calls_per_second(&node, "small_rs");
    let languages = [
        ("rs", "Rust"),
        ("js", "JavaScript (QuickJS, the runner)"),
        ("jswhole", "JavaScript (QuickJS, built whole)"),
        ("py", "Python (CPython, the runner)"),
        ("whole", "Python (CPython, built whole)"),
    ];
    for (suffix, label) in languages {
        let rate = if suffix == "rs" { rust } else { calls_per_second(&node, &format!("small_{suffix}")) };
        println!("| {label} | {rate:.0} | {:.3} |", rate / rust);
    }

    if let Some(jco) = std::env::var_os("ZEST_BENCH_JCO") {
        javascript_engines(Path::new(&jco), tools.javascript.as_deref().unwrap(), &root);
    }
}
