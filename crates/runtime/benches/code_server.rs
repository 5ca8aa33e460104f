//! The code server's benchmarks (issue 2; results in `docs/benchmarks.md`):
//!
//! - reload latency, file changed → next call served by the new code, for modules
//!   of 10, 1,000 and 10,000 small functions: cold (compiling; all functions
//!   new, and one function's body edited; compiled `.wasm` builds and WAT
//!   text), with Cranelift, Winch and `auto`
//!   (the default: Winch now, Cranelift after a quiet moment), and warm (a build
//!   used recently, still in memory; and a build only the on-disk compile cache
//!   holds, as after a restart), as ratios to the BEAM's code server — run in
//!   the same bench, by `beam_reload.escript`, before and after each size's
//!   rows, when `escript` is on the PATH (Debian: `erlang-base`), else the
//!   figures measured on 2026-11-25;
//! - call throughput of a function with a small JSON argument on 1 and 2 threads,
//!   without and with a reload every 10 ms, as a ratio to the run without;
//! - resident memory after 1,000 reloads against after the first.
//!
//! Run: `cargo bench -p zest-runtime --bench code_server` (`-- --quick` for a
//! shorter pass; `-- memory`, `-- latency` or `-- throughput` for one section;
//! with `latency`, sizes and compilers narrow it: `-- latency 1000 winch`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use zest_runtime::{Compiler, Node, NodeConfig, ReloadOptions, Status};

mod beam;
use beam::{Beam, BEAM_RELOAD_MS};

/// The functions' bodies of a build.
#[derive(Clone, Copy)]
enum Bodies {
    /// `f{k}` returns its input pointer plus `k`, in every build.
    Same,
    /// Every function's constant depends on `get`'s marker: no body is the
    /// same as in any other build.
    AllNew,
    /// As `Same`, but function `f{.0}` adds `.1` instead of its index: one
    /// function's body differs between two builds.
    Edited(usize, u64),
}

fn module_wat(functions: usize, marker: u64) -> String {
    module_wat_with(functions, marker, Bodies::Same)
}

/// A build of `functions` small functions besides `get` (which returns the
/// marker, a data constant, so that a reload is seen) and `echo`.
fn module_wat_with(functions: usize, marker: u64, bodies: Bodies) -> String {
    let mut wat = String::with_capacity(functions * 96 + 512);
    wat.push_str(
        r#"(module (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
  (func (export "echo") (param $p i32) (param $l i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $l))))
"#,
    );
    let marker_json = format!("1{marker:019}");
    wat.push_str(&format!(
        "  (data (i32.const 16) \"{marker_json}\")\n  (func (export \"get\") (param i32 i32) (result i64) i64.const {})\n",
        (16u64 << 32) | 20
    ));
    for k in 0..functions {
        let constant = match bodies {
            Bodies::Edited(at, value) if at == k => value,
            Bodies::AllNew => marker * 1_000_000 + k as u64,
            _ => k as u64,
        };
        wat.push_str(&format!(
            "  (func (export \"f{k}\") (param i32 i32) (result i64) (i64.add (i64.extend_i32_u (local.get 0)) (i64.const {constant})))\n"
        ));
    }
    wat.push(')');
    wat
}

fn node(data: &Path, compiler: Compiler) -> Node {
    Node::new(NodeConfig { data_dir: Some(data.to_path_buf()), compiler, ..NodeConfig::default() }).unwrap()
}

/// Writes `build` to `path`, reloads, and calls `get` until it answers `marker`:
/// the time from "file changed" to "new code served". The node first finishes
/// the work that followed its last swap (writes, a wide build's pieces): a
/// reload on a node at rest, as an edit comes seconds after the last one.
fn timed_reload(node: &Node, name: &str, path: &Path, build: impl AsRef<[u8]>, marker: u64) -> Duration {
    let expected = format!("1{marker:019}");
    node.settle();
    let started = Instant::now();
    std::fs::write(path, build).unwrap();
    let result = node.reload_module(name, &ReloadOptions::default());
    assert_eq!(result.status(), Status::Ok, "{result:?}");
    assert_eq!(node.call(name, "get", "null").unwrap(), expected);
    started.elapsed()
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1e3
}

struct Row {
    what: String,
    median_ms: f64,
    p99_ms: f64,
    beam_ms: f64,
}

impl Row {
    fn of(what: String, samples: &mut [Duration], beam_ms: f64) -> Row {
        Row { what, median_ms: percentile(samples, 0.5), p99_ms: percentile(samples, 0.99), beam_ms }
    }
}

/// Which sizes and compilers the latency section measures (all when the
/// command line names none).
struct Only {
    sizes: Vec<usize>,
    compilers: Vec<String>,
}

fn reload_latency(quick: bool, only: &Only, beam: Option<&Beam>) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    let mut marker = 1_000u64;
    for (functions, fixed_beam_ms) in BEAM_RELOAD_MS {
        if !only.sizes.is_empty() && !only.sizes.contains(&functions) {
            continue;
        }
        let rounds = match (functions, quick) {
            (10, false) => 200,
            (1_000, false) => 50,
            (_, false) => 8,
            (10, true) => 40,
            (_, true) => 4,
        };
        // The BEAM runs half its rounds before this size's rows and half
        // after, so that a machine's drift over the minutes between weighs on
        // both sides alike.
        let beam_rounds = (rounds / 2).max(4);
        let mut beam_samples = beam.map(|b| b.samples(functions, beam_rounds)).unwrap_or_default();
        let first_row = rows.len();
        let path = dir.path().join(format!("m{functions}.wat"));
        for (label, compiler) in
            [("cranelift", Compiler::Cranelift), ("winch", Compiler::Winch), ("auto", Compiler::Auto)]
        {
            if !only.compilers.is_empty() && !only.compilers.iter().any(|c| c == label) {
                continue;
            }
            let data = dir.path().join(format!("data-{label}-{functions}"));
            let node = node(&data, compiler);
            std::fs::write(&path, module_wat(functions, marker)).unwrap();
            assert_eq!(node.load_module("m", &path, &ReloadOptions::default()).status(), Status::Ok);

            // Cold: every build is new, every function's body too, so every
            // reload compiles all of it. Compiled `.wasm` builds, as the BEAM
            // loads compiled `.beam` files (neither side's compiler from
            // source is timed), then the same as WAT text, which the node
            // parses first.
            // The `.wasm` rows run on a node of their own, dropped before the
            // WAT rows, so that a tier-up of its module (`auto`, once quiet)
            // does not land in them.
            let wasm_path = dir.path().join(format!("w{functions}.wasm"));
            let first = wat::parse_str(module_wat(functions, marker)).unwrap();
            std::fs::write(&wasm_path, first).unwrap();
            for format in [".wasm", "WAT"] {
                let wasm_node = (format == ".wasm").then(|| {
                    let wasm_node = self::node(&dir.path().join(format!("data-{label}-{functions}-wasm")), compiler);
                    assert_eq!(wasm_node.load_module("w", &wasm_path, &ReloadOptions::default()).status(), Status::Ok);
                    wasm_node
                });
                let (node, module, path) = match &wasm_node {
                    Some(wasm_node) => (wasm_node, "w", &wasm_path),
                    None => (&node, "m", &path),
                };
                let build = |wat: String| match format {
                    ".wasm" => wat::parse_str(wat).unwrap(),
                    _ => wat.into_bytes(),
                };
                // All new, then one function edited: each build differs from
                // the last in one function's body.
                for edit in [false, true] {
                    let mut samples = Vec::new();
                    for _ in 0..rounds {
                        marker += 1;
                        let bodies = if edit { Bodies::Edited(functions / 2, marker) } else { Bodies::AllNew };
                        let bytes = build(module_wat_with(functions, marker, bodies));
                        samples.push(timed_reload(node, module, path, &bytes, marker));
                    }
                    let case =
                        if edit { format!("one fn edited ({format})") } else { format!("cold (all new, {format})") };
                    rows.push(Row::of(format!("{functions} fns, {case}, {label}"), &mut samples, fixed_beam_ms));
                }
            }

            // Warm: alternate between two builds already in the compile cache.
            let builds = [(marker - 1, module_wat(functions, marker - 1)), (marker, module_wat(functions, marker))];
            for (m, wat) in &builds {
                timed_reload(&node, "m", &path, wat, *m);
            }
            let mut warm = Vec::new();
            for round in 0..rounds.max(20) {
                let (m, wat) = &builds[round % 2];
                warm.push(timed_reload(&node, "m", &path, wat, *m));
            }
            rows.push(Row::of(format!("{functions} fns, warm (in memory), {label}"), &mut warm, fixed_beam_ms));
            drop(node);

            // Warm from disk: a restarted node (nothing in memory) reloads to a build
            // its on-disk compile cache holds.
            let mut disk = Vec::new();
            for round in 0..rounds.clamp(4, 40) {
                let fresh = self::node(&data, compiler);
                let (from, to) = (&builds[round % 2], &builds[(round + 1) % 2]);
                std::fs::write(&path, &from.1).unwrap();
                assert_eq!(fresh.load_module("m", &path, &ReloadOptions::default()).status(), Status::Ok);
                disk.push(timed_reload(&fresh, "m", &path, &to.1, to.0));
            }
            rows.push(Row::of(format!("{functions} fns, warm (disk cache), {label}"), &mut disk, fixed_beam_ms));
        }
        if let Some(beam) = beam {
            beam_samples.extend(beam.samples(functions, beam_rounds));
            let beam_ms = percentile(&mut beam_samples, 0.5);
            let what = format!("{functions} fns, the BEAM (same protocol, this run)");
            rows.insert(first_row, Row::of(what, &mut beam_samples, beam_ms));
            for row in &mut rows[first_row..] {
                row.beam_ms = beam_ms;
            }
        }
    }
    rows
}

struct Throughput {
    threads: usize,
    calls_per_s: f64,
    reloading_calls_per_s: f64,
    reloads: u64,
    failed: u64,
}

/// Calls `m.echo {"n":1}` from `threads` threads for `window`; with `reload_every`,
/// a separate thread reloads `m` (alternating two cached builds) at that period.
fn run_calls(
    node: &Arc<Node>,
    path: &Path,
    threads: usize,
    window: Duration,
    reload_every: Option<Duration>,
) -> (f64, u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..threads)
        .map(|_| {
            let (node, stop, failed) = (Arc::clone(node), Arc::clone(&stop), Arc::clone(&failed));
            thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        if node.call("m", "echo", r#"{"n":1}"#).is_err() {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    calls += 64;
                }
                calls
            })
        })
        .collect();
    let reloader = reload_every.map(|period| {
        let (node, stop, path) = (Arc::clone(node), Arc::clone(&stop), path.to_path_buf());
        thread::spawn(move || {
            let builds = [module_wat(10, 1), module_wat(10, 2)];
            let mut reloads = 0u64;
            let mut next = Instant::now() + period;
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(next.saturating_duration_since(Instant::now()));
                next += period;
                std::fs::write(&path, &builds[reloads as usize % 2]).unwrap();
                let result = node.reload_module("m", &ReloadOptions::default());
                assert_eq!(result.status(), Status::Ok, "{result:?}");
                reloads += 1;
            }
            reloads
        })
    });
    let started = Instant::now();
    thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = callers.into_iter().map(|c| c.join().unwrap()).sum();
    let elapsed = started.elapsed().as_secs_f64();
    let reloads = reloader.map(|r| r.join().unwrap()).unwrap_or(0);
    (calls as f64 / elapsed, reloads, failed.load(Ordering::Relaxed))
}

/// Baseline/reloading run pairs per thread count; the median pair is reported.
const PAIRS: usize = 5;

fn call_throughput(quick: bool) -> Vec<Throughput> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.wat");
    let node = Arc::new(node(&dir.path().join("data"), Compiler::Auto));
    // Put both builds in the compile cache, then start from build 1.
    for marker in [2, 1] {
        std::fs::write(&path, module_wat(10, marker)).unwrap();
        assert_eq!(node.load_module("m", &path, &ReloadOptions::default()).status(), Status::Ok);
    }
    let window = Duration::from_millis(if quick { 400 } else { 1_500 });
    let mut rows = Vec::new();
    for threads in [1, 2] {
        run_calls(&node, &path, threads, Duration::from_millis(200), None); // warm up
                                                                            // Interleave baseline and reloading runs so drift hits both alike, and take
                                                                            // the median pair: on two cores a stray scheduling hiccup moves one pair by
                                                                            // several percent either way.
        let mut pairs = Vec::new();
        let (mut reloads, mut failed) = (0, 0);
        for _ in 0..PAIRS {
            let base = run_calls(&node, &path, threads, window, None).0;
            let (rate, r, f) = run_calls(&node, &path, threads, window, Some(Duration::from_millis(10)));
            pairs.push((base, rate));
            reloads += r;
            failed += f;
        }
        pairs.sort_by(|a, b| (a.1 / a.0).total_cmp(&(b.1 / b.0)));
        let (calls_per_s, reloading_calls_per_s) = pairs[PAIRS / 2];
        rows.push(Throughput { threads, calls_per_s, reloading_calls_per_s, reloads, failed });
    }
    rows
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn reload_memory() -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("m.wat");
    let node = node(&dir.path().join("data"), Compiler::Auto);
    let builds = [module_wat(100, 1), module_wat(100, 2)];
    std::fs::write(&path, &builds[0]).unwrap();
    assert_eq!(node.load_module("m", &path, &ReloadOptions::default()).status(), Status::Ok);
    let reload = |i: usize| {
        std::fs::write(&path, &builds[i % 2]).unwrap();
        assert_eq!(node.reload_module("m", &ReloadOptions::default()).status(), Status::Ok);
        node.call("m", "echo", "[1]").unwrap();
    };
    reload(1);
    let after_first = rss_kib();
    for i in 2..1_002 {
        reload(i);
    }
    (after_first, rss_kib())
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo bench -- --list` probes harness-less benches this way
    }

    let sections: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    let named = |s: &String| ["memory", "latency", "throughput"].contains(&s.as_str());
    let run = |section: &str| !sections.iter().any(named) || sections.iter().any(|s| s == section);

    // Memory first, while the process is small and nothing else has run.
    if run("memory") {
        memory_section();
    }
    if run("latency") {
        let only = Only {
            sizes: sections.iter().filter_map(|s| s.parse().ok()).collect(),
            compilers: sections
                .iter()
                .filter(|s| ["cranelift", "winch", "auto"].contains(&s.as_str()))
                .cloned()
                .collect(),
        };
        latency_section(quick, &only);
    }
    if run("throughput") {
        throughput_section(quick);
    }
}

fn memory_section() {
    let (first, after) = reload_memory();
    println!("## Resident memory, 1,000 reloads of one 100-function module\n");
    println!("| after the first reload | after 1,000 more | ratio | target |");
    println!("|---|---|---|---|");
    println!("| {} KiB | {} KiB | {:.3} | ≤ 1.10 |\n", first, after, after as f64 / first as f64);
}

fn latency_section(quick: bool, only: &Only) {
    println!("## Reload latency: file changed → next call served by the new code\n");
    let beam = Beam::find();
    match &beam {
        Some(_) => println!("BEAM: measured in this run (`beam_reload.escript`, same protocol)\n"),
        None => println!("BEAM: the figures of 2026-11-25 (`escript` not found, or ZEST_BENCH_BEAM=fixed)\n"),
    }
    println!("| module | median ms | p99 ms | BEAM ms | median / BEAM |");
    println!("|---|---|---|---|---|");
    for row in reload_latency(quick, only, beam.as_ref()) {
        println!(
            "| {} | {:.3} | {:.3} | {:.2} | {:.3} |",
            row.what,
            row.median_ms,
            row.p99_ms,
            row.beam_ms,
            row.median_ms / row.beam_ms
        );
    }
}

fn throughput_section(quick: bool) {
    println!("\n## Call throughput, `echo {{\"n\":1}}`, reload every 10 ms vs none (same process)\n");
    println!("(median of {PAIRS} interleaved pairs; reloads and failed calls summed over all pairs)\n");
    println!("| threads | calls/s, no reloads | calls/s, reloading | ratio | lost | reloads | failed calls |");
    println!("|---|---|---|---|---|---|---|");
    for row in call_throughput(quick) {
        let ratio = row.reloading_calls_per_s / row.calls_per_s;
        println!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.1}% | {} | {} |",
            row.threads,
            row.calls_per_s,
            row.reloading_calls_per_s,
            ratio,
            (1.0 - ratio) * 100.0,
            row.reloads,
            row.failed
        );
    }
}
