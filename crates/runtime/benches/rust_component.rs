//! Rust guests in the SDK's component form (issue 26; results in
//! `docs/benchmarks.md`, "Rust components"), each printed as a ratio to the
//! same Rust code built as a core module, in the same run:
//!
//! - a process's `handle`: `examples/components/tally.rs` (component) against
//!   `examples/guests/tally.rs` (core), `Node::call_process` on one thread;
//! - a function called over JSON: `greet` of `examples/components/greeter.rs`
//!   (served through `zest:guest/dynamic`) against `greet` of
//!   `examples/guests/hello.rs` (a core callable);
//! - a new build loaded (read, wrap, compile with Winch, validate,
//!   instantiate, swap), the tally's two forms, and the wrapping alone.
//!
//! Needs a wasm32-capable `rustc` (Debian's 1.63 does). Run: `cargo bench -p
//! zest-runtime --bench rust_component` (`-- --quick` for a shorter pass).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zest_runtime::toolchain::Rustc;
use zest_runtime::{BuildKind, Node, NodeConfig, ReloadOptions, Status};

mod measure;
use measure::{median, per_call};

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(path)
}

/// `wasm` with a custom section holding `mark`: the same code, another build.
fn marked(wasm: &[u8], mark: u32) -> Vec<u8> {
    let name = b"bench-mark";
    let payload = mark.to_le_bytes();
    let mut out = wasm.to_vec();
    out.push(0);
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

struct Builds {
    tally_core: Vec<u8>,
    tally_component: Vec<u8>,
    hello: Vec<u8>,
    greeter: Vec<u8>,
}

fn build(dir: &Path) -> Builds {
    let rustc = Rustc::find(None).unwrap_or_else(|err| panic!("this benchmark needs a wasm32-capable rustc: {err}"));
    let one = |source: &str| {
        let source = example(source);
        let out = dir.join("out.wasm");
        rustc
            .compile_module(
                &source,
                &out,
                &dir.join("build"),
                source.parent().unwrap(),
                Duration::from_secs(300),
                &|_| {},
            )
            .unwrap_or_else(|err| panic!("{}: {err}", source.display()));
        std::fs::read(&out).unwrap()
    };
    Builds {
        tally_core: one("guests/tally.rs"),
        tally_component: one("components/tally.rs"),
        hello: one("guests/hello.rs"),
        greeter: one("components/greeter.rs"),
    }
}

fn node(dir: &Path) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    Node::new(NodeConfig { data_dir: Some(dir.join("data")), ..NodeConfig::default() }).unwrap()
}

fn load(node: &Node, dir: &Path, name: &str, wasm: &[u8]) -> f64 {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    let started = Instant::now();
    let result = node.load_module(name, &path, &ReloadOptions::default());
    let ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    ms
}

fn kind(node: &Node, name: &str) -> BuildKind {
    node.status().modules.into_iter().find(|m| m.name == name).expect("loaded").current.kind
}

fn calls_section(builds: &Builds, dir: &Path, quick: bool) {
    let rounds = if quick { 5_000 } else { 50_000 };
    let node = node(dir);
    load(&node, dir, "tally_core", &builds.tally_core);
    load(&node, dir, "tally_component", &builds.tally_component);
    load(&node, dir, "hello", &builds.hello);
    load(&node, dir, "greeter", &builds.greeter);
    assert_eq!(kind(&node, "tally_component"), BuildKind::Component);
    assert_eq!(kind(&node, "greeter"), BuildKind::Component);
    node.start_process("core", "tally_core", r#"{"start": 0}"#).unwrap();
    node.start_process("component", "tally_component", r#"{"start": 0}"#).unwrap();
    let send = |process: &str| {
        let reply = node.call_process(process, r#"{"add": 1}"#).unwrap();
        assert!(reply.starts_with(r#"{"count":"#), "{reply}");
    };
    let core_handle = per_call(rounds, || send("core"));
    let component_handle = per_call(rounds, || send("component"));
    // Both greet log a line: the same host call on each side. The log goes
    // nowhere (no subscriber), as in an embedder without tracing.
    let greet = |module: &str| {
        let out = node.call(module, "greet", r#"{"name":"bench"}"#).unwrap();
        assert_eq!(out, r#"{"greeting":"hello, bench"}"#);
    };
    let core_greet = per_call(rounds, || greet("hello"));
    let component_greet = per_call(rounds, || greet("greeter"));
    println!("## Calls (one thread, an idle instance reused; {rounds} calls a round, median of 5)\n");
    println!("| call | core module ns | component ns | component / core |\n|---|---|---|---|");
    println!(
        "| process `handle` (`{{\"add\": 1}}`) | {core_handle:.0} | {component_handle:.0} | {:.2} |",
        component_handle / core_handle
    );
    println!(
        "| `greet` over JSON (a `log` inside) | {core_greet:.0} | {component_greet:.0} | {:.2} |\n",
        component_greet / core_greet
    );
}

fn reload_section(builds: &Builds, dir: &Path, quick: bool) {
    let rounds = if quick { 3 } else { 7 };
    let node = node(dir);
    let mut core = Vec::new();
    let mut component = Vec::new();
    for round in 0..rounds {
        core.push(load(&node, dir, "tally_core", &marked(&builds.tally_core, round)));
        component.push(load(&node, dir, "tally_component", &marked(&builds.tally_component, round)));
    }
    let (core, component) = (median(&mut core), median(&mut component));
    let mut wrap = Vec::new();
    for _ in 0..rounds * 3 {
        let started = Instant::now();
        let wrapped = zest_runtime::fuzzing::component_form(&builds.tally_component);
        wrap.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(matches!(wrapped, Some(Ok(_))), "the tally wraps");
    }
    let wrap = median(&mut wrap);
    println!("## A new build loaded (Winch, as `auto` does first; median of {rounds})\n");
    println!(
        "| build | core module | component form | component / core |\n|---|---|---|---|\n\
         | tally ({} KB core) | {core:.1} ms | {component:.1} ms | {:.2} |\n\
         | of which wrapping (`wit-component`) | | {wrap:.1} ms | |\n",
        builds.tally_component.len() / 1024,
        component / core
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let tmp = tempfile::tempdir().unwrap();
    let builds = build(tmp.path());
    calls_section(&builds, &tmp.path().join("calls"), quick);
    reload_section(&builds, &tmp.path().join("reloads"), quick);
}
