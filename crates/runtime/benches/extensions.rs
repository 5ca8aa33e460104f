//! Benchmarks of extensions (issue 5; results in `docs/benchmarks.md`):
//! compile-and-load of a small `.wat` and a small `.rs` extension through
//! `system.reload` scope `extension`, cold (a source never seen) and unchanged
//! (the same file again), against Erlang's `compile:file` + load (3.1–3.5 ms)
//! and Elixir's `Code.compile_file` (8.9–9.3 ms). For `.rs`, rustc's share
//! (`metadata.compile.duration_ms`) and ours are reported separately, for an
//! edit saved right after the last reload and for one saved 300 ms later (by
//! which time the node has the next build's rustc waiting, `toolchain/spare.rs`),
//! and for a file the node never built (no rustc waits for it; a new module).
//!
//! Run: `cargo bench -p zest-runtime --bench extensions` (`-- --quick` for a
//! shorter pass). Needs a wasm32-capable rustc (`scripts/test.sh` installs one).

use std::path::Path;
use std::time::Instant;

use zest_runtime::{ExtensionsConfig, Node, NodeConfig, ReloadRequest, ReloadResult, Scope, Status};

const ERLANG_MS: f64 = 3.3;
const ELIXIR_MS: f64 = 9.1;

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// A small counter-like module whose `get` answers `{"v":N}`.
fn wat_source(n: u32) -> String {
    format!(
        r#"(module (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
  (data (i32.const 16) "{{\"v\":{n:08}}}")
  (func (export "get") (param i32 i32) (result i64) i64.const {packed})
  (func (export "add") (param i32 i32) (result i64) i64.const {packed}))"#,
        packed = (16u64 << 32) | 14
    )
}

fn rs_source(n: u32) -> String {
    format!(
        r#"use zest_guest::{{export, Json}};

fn get(_args: Json) -> Result<Json, String> {{
    Ok(Json::object(vec![("v", Json::from({n}i64))]))
}}

export!(get);
"#
    )
}

fn reload(node: &Node, path: &Path) -> (f64, ReloadResult) {
    let started = Instant::now();
    let result = node.reload(&ReloadRequest::new(Scope::Extension(path.to_path_buf()))).unwrap();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    (ms, result)
}

fn row(case: &str, ms: f64) {
    println!("| {case} | {ms:.3} ms | {:.3} | {:.3} |", ms / ERLANG_MS, ms / ELIXIR_MS);
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("extensions");
    std::fs::create_dir(&root).unwrap();
    let config = NodeConfig {
        data_dir: Some(tmp.path().join("data")),
        extensions: ExtensionsConfig { roots: vec![root.clone()], rustc: None, javascript: None, python: None },
        ..NodeConfig::default()
    };
    let node = Node::new(config).unwrap();
    let rounds = if quick { 5 } else { 21 };

    println!("## Extensions\n");
    println!("| case | zest (median) | / Erlang `compile:file` 3.3 ms | / Elixir `Code.compile_file` 9.1 ms |");
    println!("|---|---|---|---|");
    let wat = root.join("small.wat");
    let (mut cold, mut unchanged) = (Vec::new(), Vec::new());
    for n in 0..rounds {
        std::fs::write(&wat, wat_source(n)).unwrap();
        cold.push(reload(&node, &wat).0);
        let (ms, result) = reload(&node, &wat);
        assert_eq!(result.metadata.unchanged, ["small"]);
        unchanged.push(ms);
    }
    row(".wat, cold (new source)", median(&mut cold));
    row(".wat, unchanged", median(&mut unchanged));

    let rs = root.join("tiny.rs");
    // The first build also builds the guest SDK, once per compiler.
    std::fs::write(&rs, rs_source(u32::MAX)).unwrap();
    let (first_ms, _) = reload(&node, &rs);
    let edits = rounds.min(if quick { 3 } else { 7 });
    // Saved again at once, the next build's rustc has had no time to start
    // ahead; after a pause (a person's edit), it waits for the source.
    for (pause_ms, case, first) in [(0, "saved again at once", 0), (300, "saved after 300 ms", 1000)] {
        let (mut total, mut rustc, mut ours, mut unchanged) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for n in first..first + edits {
            std::thread::sleep(std::time::Duration::from_millis(pause_ms));
            std::fs::write(&rs, rs_source(n)).unwrap();
            let (ms, result) = reload(&node, &rs);
            let compile = result.metadata.compile.expect("rustc ran for a new source");
            let rustc_ms = compile.duration.as_secs_f64() * 1e3;
            total.push(ms);
            rustc.push(rustc_ms);
            ours.push(ms - rustc_ms);
            let (ms, result) = reload(&node, &rs);
            assert!(result.metadata.compile.is_none() && result.metadata.unchanged == ["tiny"]);
            unchanged.push(ms);
        }
        row(&format!(".rs, cold, {case}: total"), median(&mut total));
        row(&format!(".rs, cold, {case}: rustc's share"), median(&mut rustc));
        row(&format!(".rs, cold, {case}: ours (total − rustc)"), median(&mut ours));
        row(&format!(".rs, unchanged ({case})"), median(&mut unchanged));
    }
    // A file this node never built: no rustc waits for it, and its module is
    // new (every piece compiled).
    let (mut total, mut rustc) = (Vec::new(), Vec::new());
    for n in 0..edits {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let file = root.join(format!("first{n}.rs"));
        std::fs::write(&file, rs_source(2000 + n)).unwrap();
        let (ms, result) = reload(&node, &file);
        total.push(ms);
        rustc.push(result.metadata.compile.expect("rustc ran for a new file").duration.as_secs_f64() * 1e3);
    }
    row(".rs, cold, a file never built before: total", median(&mut total));
    row(".rs, cold, a file never built before: rustc's share", median(&mut rustc));
    println!("\nFirst .rs build, guest SDK included: {first_ms:.1} ms.");
}
