//! Benchmarks of safe rollout (issue 13; results in `docs/benchmarks.md`):
//!
//! - call throughput with a canary running beside the current build (10 % and
//!   50 % of calls) against the same node with none, on 1 and 2 threads
//!   (target ≥ 0.97×): choosing a version per call must cost next to nothing;
//! - how long a failing trial keeps failing calls: from the moment its failure
//!   threshold is crossed (the `min_calls`-th failed call of the broken build
//!   returns) to the last call the broken build answers (after it, the old
//!   build serves every call), for a plain trial and a canary on trial, under
//!   two calling threads (target ≤ 50 ms).
//!
//! Both are measured from outside, by the calling threads, in this process.
//!
//! Run: `cargo bench -p zest-runtime --bench rollout` (`-- --quick` for a
//! shorter pass; `-- canary` or `-- revert` for one section).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use zest_runtime::{
    CallError, Node, NodeConfig, ReloadOptions, ReloadRequest, RollbackRequest, RollbackTarget, Scope, Status,
    TrialSpec,
};

/// A build whose `get` answers `{"v":marker}` and whose `echo` returns its
/// argument; `broken` makes `get` trap instead.
fn build(marker: u32, broken: bool) -> String {
    let out = format!("{{\"v\":{marker}}}");
    let get = if broken {
        r#"(func (export "get") (param i32 i32) (result i64) unreachable)"#.to_string()
    } else {
        format!(
            "(data (i32.const 16) \"{}\")\n(func (export \"get\") (param i32 i32) (result i64) i64.const {})",
            out.replace('"', "\\\""),
            (16u64 << 32) | out.len() as u64
        )
    };
    format!(
        r#"(module (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
  (func (export "echo") (param $p i32) (param $l i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $l))))
  {get})"#
    )
}

fn node(data: &Path) -> Node {
    Node::new(NodeConfig { data_dir: Some(data.to_path_buf()), ..NodeConfig::default() }).unwrap()
}

fn reload(node: &Node, options: ReloadOptions) {
    let result = node.reload(&ReloadRequest { options, ..ReloadRequest::new(Scope::Module("m".into())) }).unwrap();
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
}

fn rollback(node: &Node) {
    let result = node.rollback(&RollbackRequest::new(RollbackTarget::Module("m".into()))).unwrap();
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
}

/// Calls `m.echo` on `threads` threads for `window`; calls per second.
fn run_calls(node: &Arc<Node>, threads: usize, window: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..threads)
        .map(|_| {
            let (node, stop) = (Arc::clone(node), Arc::clone(&stop));
            thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        node.call("m", "echo", r#"{"n":1}"#).unwrap();
                    }
                    calls += 64;
                }
                calls
            })
        })
        .collect();
    let started = Instant::now();
    thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = callers.into_iter().map(|c| c.join().unwrap()).sum();
    calls as f64 / started.elapsed().as_secs_f64()
}

/// Baseline/canary run pairs per row; the median pair is reported.
const PAIRS: usize = 9;

fn canary_section(quick: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.wat");
    let node = Arc::new(node(&dir.path().join("data")));
    // Both builds in the compile cache, build 1 current.
    std::fs::write(&path, build(2, false)).unwrap();
    let loaded = node.load_module("m", &path, &ReloadOptions::default());
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    std::fs::write(&path, build(1, false)).unwrap();
    reload(&node, ReloadOptions::default());
    let window = Duration::from_millis(if quick { 300 } else { 1_000 });
    println!("## Call throughput, `echo {{\"n\":1}}`, a canary running vs none (same process)\n");
    println!(
        "(median of {PAIRS} pairs of {} ms runs, which first alternating; the canary is started before and dropped after each of its runs)\n",
        window.as_millis()
    );
    println!("| canary | threads | calls/s, no canary | calls/s, canary | ratio |\n|---|---|---|---|---|");
    for percent in [10u8, 50] {
        for threads in [1, 2] {
            run_calls(&node, threads, Duration::from_millis(200)); // warm up
            let mut pairs = Vec::new();
            let with_canary = || {
                std::fs::write(&path, build(2, false)).unwrap();
                reload(&node, ReloadOptions { canary: Some(percent), ..ReloadOptions::default() });
                let rate = run_calls(&node, threads, window);
                let status = node.status();
                let m = status.modules.iter().find(|m| m.name == "m").unwrap();
                let running = m.canary.as_ref().expect("the canary runs");
                assert!(running.calls > 0 && m.calls > 0, "both builds took calls");
                rollback(&node); // drops the canary
                std::fs::write(&path, build(1, false)).unwrap();
                rate
            };
            for pair in 0..PAIRS {
                // Which run goes first alternates, so drift hits both alike.
                let (base, canary) = if pair % 2 == 0 {
                    let base = run_calls(&node, threads, window);
                    (base, with_canary())
                } else {
                    let canary = with_canary();
                    (run_calls(&node, threads, window), canary)
                };
                pairs.push((base, canary));
            }
            pairs.sort_by(|a, b| (a.1 / a.0).total_cmp(&(b.1 / b.0)));
            let (base, canary) = pairs[PAIRS / 2];
            println!("| {percent} % | {threads} | {base:.0} | {canary:.0} | {:.3} |", canary / base);
        }
    }
    println!();
}

/// One failing trial under two calling threads: from the threshold crossed to
/// the last call the broken build answered, and how many calls failed.
fn one_revert(node: &Arc<Node>, path: &Path, canary: Option<u8>, min_calls: u64) -> (Duration, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (node, stop) = (Arc::clone(node), Arc::clone(&stop));
            thread::spawn(move || {
                // Only failures are kept (when each returned): a few thousand
                // at most, where every call would be millions.
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match node.call("m", "get", "null") {
                        Ok(out) => assert_eq!(out, r#"{"v":1}"#),
                        Err(CallError::Trap { .. }) => failures.push(Instant::now()),
                        Err(other) => panic!("a call failed for another reason than the broken build: {other}"),
                    }
                }
                failures
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(20));
    std::fs::write(path, build(9, true)).unwrap();
    let trial = TrialSpec { window: Duration::from_secs(30), max_failure_rate: 0.05, min_calls };
    reload(node, ReloadOptions { trial: Some(trial), canary, ..ReloadOptions::default() });
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.status().modules.iter().any(|m| m.name == "m" && (m.trial_until.is_some() || m.canary.is_some())) {
        assert!(Instant::now() < deadline, "the trial never reverted");
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(20)); // calls after the revert: all must answer
    stop.store(true, Ordering::Relaxed);
    let mut failures: Vec<Instant> = callers.into_iter().flat_map(|c| c.join().unwrap()).collect();
    failures.sort();
    assert!(failures.len() as u64 >= min_calls, "{} failures", failures.len());
    assert_eq!(node.call("m", "get", "null").unwrap(), r#"{"v":1}"#, "the old build serves");
    // Every call of the broken build fails, so the rate passes the threshold
    // with the `min_calls`-th failure. (The trial counts from the moment it
    // starts, a little after the swap, so this start is early: the figure is
    // an upper bound.)
    let crossed = failures[min_calls as usize - 1];
    (*failures.last().unwrap() - crossed, failures.len())
}

fn revert_section(quick: bool) {
    let rounds = if quick { 5 } else { 30 };
    let min_calls = 20;
    println!("## A failing trial: threshold crossed → old build serving every call\n");
    println!("(two threads calling `get` nonstop; the new build traps on every call; `min_calls` {min_calls},");
    println!("`max_failure_rate` 0.05; {rounds} rounds each)\n");
    println!("| case | median | p90 | max | failed calls per round, median |\n|---|---|---|---|---|");
    for (label, canary) in [("trial", None), ("canary 50 % on trial", Some(50u8))] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.wat");
        let node = Arc::new(node(&dir.path().join("data")));
        std::fs::write(&path, build(1, false)).unwrap();
        let loaded = node.load_module("m", &path, &ReloadOptions::default());
        assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
        let mut latencies = Vec::new();
        let mut failed = Vec::new();
        for _ in 0..rounds {
            let (latency, failures) = one_revert(&node, &path, canary, min_calls);
            latencies.push(latency);
            failed.push(failures);
            std::fs::write(&path, build(1, false)).unwrap();
        }
        latencies.sort();
        failed.sort();
        let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
        println!(
            "| {label} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            at(0.5),
            at(0.9),
            at(1.0),
            failed[failed.len() / 2]
        );
    }
    println!();
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let only: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with('-')).collect();
    let wants = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    if wants("canary") {
        canary_section(quick);
    }
    if wants("revert") {
        revert_section(quick);
    }
}
