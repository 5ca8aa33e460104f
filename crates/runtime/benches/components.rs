//! Benchmarks of components (issue 26, CONTRACT.md §13; results in
//! `docs/benchmarks.md`), each printed as a ratio to the same work done by a
//! core module in the same run:
//!
//! - call overhead: `echo` of a short string and `add` of two integers on a
//!   component, over JSON (`Node::call`) and typed (`Node::call_typed`),
//!   against the core module's `echo` over JSON (the cheapest core call: no
//!   parsing, its input is its output) and against `add` as a core module
//!   (built from Rust by the guest SDK when a wasm32 `rustc` is found: the
//!   same function, JSON in and out), and wasmtime's own typed call with no
//!   node around it;
//! - reload latency, file changed → next call served: a new build of the
//!   component, cold (compiled) and warm (its machine code in memory), against
//!   the same for a core module and the BEAM's code server (`beam/mod.rs`);
//! - process migration: 1,000 processes moved core → component → core,
//!   against core → core.
//!
//! Run: `cargo bench -p zest-runtime --bench components` (`-- --quick` for a
//! shorter pass).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zest_runtime::toolchain::Rustc;
use zest_runtime::wasmtime::component::{Component, Linker};
use zest_runtime::wasmtime::{Engine, Store};
use zest_runtime::{Node, NodeConfig, ReloadOptions, Status};

mod measure;
use measure::{median, per_call};

mod beam;
use beam::{Beam, BEAM_RELOAD_MS};

const KEEPER: &str = include_str!("../tests/node/components/keeper.wat");

/// A core module whose `echo` answers its input (`{"v":N}`'s N marks a build).
fn core_module(v: u32) -> String {
    format!(
        r#"(module (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
  (data (i32.const 16) "{{\"v\":{v:06}}}")
  (func (export "get") (param i32 i32) (result i64) i64.const {packed})
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32)) (i64.extend_i32_u (local.get $len)))))"#,
        packed = (16u64 << 32) | 12
    )
}

/// `keeper` with a build mark (a data segment nothing reads).
fn component(v: u32) -> String {
    KEEPER.replacen(
        "(memory (export \"memory\") 1)",
        &format!("(memory (export \"memory\") 1) (data (i32.const 96) \"{v:06}\")"),
        1,
    )
}

/// `add` as a core module must be: the guest reads `[a, b]` as JSON and
/// writes the sum (the guest SDK's core form, built by a wasm32 `rustc`).
const CORE_ADD: &str = r#"
use zest_guest::{export, Json};

fn add(args: Json) -> Result<Json, String> {
    let items = args.as_array().ok_or("add takes [a, b]")?;
    match items {
        [a, b] => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => Ok(Json::from(a + b)),
            _ => Err("add takes two integers".to_string()),
        },
        _ => Err("add takes [a, b]".to_string()),
    }
}

export!(add);
"#;

/// [`CORE_ADD`] built into `dir` and loaded as module `core_add`; `None` (with
/// a word why) when no wasm32-capable `rustc` is found.
fn load_core_add(node: &Node, dir: &Path) -> Option<()> {
    let rustc = match Rustc::find(None) {
        Ok(rustc) => rustc,
        Err(err) => {
            println!("(no core `add` row: {err})\n");
            return None;
        }
    };
    let source = dir.join("core_add.rs");
    std::fs::write(&source, CORE_ADD).unwrap();
    let out = dir.join("core_add.wasm");
    rustc
        .compile_module(&source, &out, &dir.join("build"), dir, Duration::from_secs(300), &|_| {})
        .unwrap_or_else(|err| panic!("core_add.rs: {err}"));
    assert_eq!(node.load_module("core_add", &out, &ReloadOptions::default()).status(), Status::Ok);
    Some(())
}

fn node(dir: &std::path::Path) -> Node {
    Node::new(NodeConfig { data_dir: Some(dir.join("data")), ..NodeConfig::default() }).unwrap()
}

/// A node in `tmp` running the core module `core` and the component `keeper`,
/// with their files.
fn both(tmp: &tempfile::TempDir) -> (Node, PathBuf, PathBuf) {
    let node = node(tmp.path());
    let (core, keeper) = (tmp.path().join("core.wat"), tmp.path().join("keeper.wat"));
    std::fs::write(&core, core_module(1)).unwrap();
    std::fs::write(&keeper, component(1)).unwrap();
    assert_eq!(node.load_module("core", &core, &ReloadOptions::default()).status(), Status::Ok);
    assert_eq!(node.load_module("keeper", &keeper, &ReloadOptions::default()).status(), Status::Ok);
    (node, core, keeper)
}

fn calls_section(quick: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (node, _, _) = both(&tmp);
    let rounds = if quick { 20_000 } else { 200_000 };

    let baseline = per_call(rounds, || {
        std::hint::black_box(node.call("core", "echo", r#""hello""#).unwrap());
    });
    let mut rows: Vec<(&str, f64)> = vec![
        ("core module `echo`, JSON", baseline),
        (
            "component `echo`, JSON",
            per_call(rounds, || {
                std::hint::black_box(node.call("keeper", "echo", r#"["hello"]"#).unwrap());
            }),
        ),
        (
            "component `echo`, typed",
            per_call(rounds, || {
                let out: (String,) = node.call_typed("keeper", "echo", ("hello",)).unwrap();
                std::hint::black_box(out);
            }),
        ),
        (
            "component `add`, JSON",
            per_call(rounds, || {
                std::hint::black_box(node.call("keeper", "add", "[2, 3]").unwrap());
            }),
        ),
        (
            "component `add`, typed",
            per_call(rounds, || {
                let out: (u32,) = node.call_typed("keeper", "add", (2u32, 3u32)).unwrap();
                std::hint::black_box(out);
            }),
        ),
        ("wasmtime alone: component `add`, typed, one instance", wasmtime_floor(rounds)),
    ];
    if load_core_add(&node, tmp.path()).is_some() {
        assert_eq!(node.call("core_add", "add", "[2, 3]").unwrap(), "5");
        let core_add = per_call(rounds, || {
            std::hint::black_box(node.call("core_add", "add", "[2, 3]").unwrap());
        });
        rows.insert(1, ("core module `add`, JSON (the guest parses `[2, 3]`, writes `5`)", core_add));
    }
    println!("## Call overhead (one thread, an idle instance reused)\n");
    let core_add = rows.iter().find(|(what, _)| what.starts_with("core module `add`")).map(|&(_, ns)| ns);
    println!("| call | ns | / core `echo` | / core `add` |\n|---|---|---|---|");
    for (what, ns) in rows {
        let to_add = core_add.map_or_else(|| "—".to_string(), |add| format!("{:.2}", ns / add));
        println!("| {what} | {ns:.0} | {:.2} | {to_add} |", ns / baseline);
    }
    println!();
}

/// What a component call costs in wasmtime itself: `keeper`'s `add` through a
/// `TypedFunc` looked up once, on one instance, with no node around it (no
/// version to find, no instance pool, no deadline, no call counts).
fn wasmtime_floor(rounds: usize) -> f64 {
    let engine = Engine::default();
    let component = Component::new(&engine, wat::parse_str(component(1)).unwrap()).unwrap();
    let mut store = Store::new(&engine, ());
    let instance = Linker::new(&engine).instantiate(&mut store, &component).unwrap();
    let add = instance.get_typed_func::<(u32, u32), (u32,)>(&mut store, "add").unwrap();
    per_call(rounds, || {
        std::hint::black_box(add.call(&mut store, (2, 3)).unwrap());
    })
}

/// The median time, in ms, of `rounds` reloads of module `name` from `path`
/// and its next call of `echo` with `args` (the BEAM's protocol), each with a
/// build `write(round)` never seen before (cold) or one of two builds seen
/// before (warm).
fn reloads(
    node: &Node,
    (name, args): (&str, &str),
    path: &std::path::Path,
    rounds: u32,
    write: impl Fn(u32) -> String,
) -> (f64, f64) {
    let time = |text: String| {
        std::fs::write(path, text).unwrap();
        let started = Instant::now();
        let result = node.reload_module(name, &ReloadOptions::default());
        node.call(name, "echo", args).unwrap();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(result.status(), Status::Ok, "{result:#?}");
        node.settle();
        ms
    };
    let mut cold: Vec<f64> = (0..rounds).map(|round| time(write(100 + round))).collect();
    let mut warm: Vec<f64> = (0..rounds).map(|round| time(write(100 + round % 2))).collect();
    (median(&mut cold), median(&mut warm))
}

fn reload_section(quick: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (node, core, keeper) = both(&tmp);
    let rounds = if quick { 9 } else { 31 };
    let (core_cold, core_warm) = reloads(&node, ("core", r#""hi""#), &core, rounds, core_module);
    let (cold, warm) = reloads(&node, ("keeper", r#"["hi"]"#), &keeper, rounds, component);
    // The BEAM reloading a module of 10 functions (keeper has 9 exports).
    let (beam_ms, beam_source) = match Beam::find() {
        Some(beam) => (
            median(&mut beam.samples(10, rounds as usize).iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>()),
            "run now",
        ),
        None => (BEAM_RELOAD_MS[0].1, "measured 2026-11-25"),
    };
    println!("## Reload latency (file changed → the next call served by the new build; Winch first, as `auto` does)\n");
    println!("The BEAM's code server reloading a module of 10 functions ({beam_source}): {beam_ms:.2} ms.\n");
    println!("| build | component | core module | component / core | component / BEAM |\n|---|---|---|---|---|");
    println!("| new (compiled) | {cold:.2} ms | {core_cold:.2} ms | {:.2} | {:.2} |", cold / core_cold, cold / beam_ms);
    println!(
        "| seen before (in memory) | {warm:.2} ms | {core_warm:.2} ms | {:.2} | {:.2} |\n",
        warm / core_warm,
        warm / beam_ms
    );
}

/// The demo's counter with version `vsn`.
fn counter(vsn: char) -> String {
    include_str!("../../../examples/demo/counter.wat")
        .replace(r#"(data (i32.const 0) "1")"#, &format!(r#"(data (i32.const 0) "{vsn}")"#))
}

fn migration_section(quick: bool) {
    let processes = if quick { 200 } else { 1_000 };
    let tmp = tempfile::tempdir().unwrap();
    let node = node(tmp.path());
    let path = tmp.path().join("counter.wat");
    std::fs::write(&path, counter('1')).unwrap();
    assert_eq!(node.load_module("counter", &path, &ReloadOptions::default()).status(), Status::Ok);
    for p in 0..processes {
        node.start_process(&format!("p{p}"), "counter", r#"{"start": 7}"#).unwrap();
    }
    let allowed = ReloadOptions { allow_breaking: true, ..ReloadOptions::default() };
    let migrate = |text: String| {
        std::fs::write(&path, text).unwrap();
        let started = Instant::now();
        let result = node.reload_module("counter", &allowed);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(result.status(), Status::Ok, "{result:#?}");
        ms
    };
    let core_to_core = migrate(counter('2'));
    let core_to_component = migrate(component(1));
    assert_eq!(node.call_process("p0", r#""get""#).unwrap(), "7", "the state moved to the component");
    let component_to_core = migrate(counter('3'));
    assert_eq!(node.call_process("p0", r#""get""#).unwrap(), r#"{"count":7}"#, "and back");
    println!("## Process migration ({processes} processes, one reload each way)\n");
    println!("| migration | ms | / core → core |\n|---|---|---|");
    for (what, ms) in [
        ("core → core", core_to_core),
        ("core → component", core_to_component),
        ("component → core", component_to_core),
    ] {
        println!("| {what} | {ms:.1} | {:.2} |", ms / core_to_core);
    }
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let only = |section: &str| {
        !args.iter().any(|a| ["calls", "reload", "migration"].contains(&a.as_str()))
            || args.iter().any(|a| a == section)
    };
    if only("calls") {
        calls_section(quick);
    }
    if only("reload") {
        reload_section(quick);
    }
    if only("migration") {
        migration_section(quick);
    }
}
