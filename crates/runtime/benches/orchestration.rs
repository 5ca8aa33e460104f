//! Benchmarks of the orchestration layer (issues 3 and 4; results in
//! `docs/benchmarks.md`):
//!
//! - the reload lock: acquire + release, uncontended, against the BEAM's
//!   `global:trans` (4.4 µs here);
//! - reloading an app of 100 small modules, warm (every build in the compile
//!   cache) and cold (compiling), against the BEAM's 48–75 ms (about 10 ms when
//!   it prepares all and commits once);
//! - migrating 1, 1,000 and 10,000 processes of one module (suspend,
//!   `zest_state_save`, a fresh instance, `zest_code_change`, resume), against
//!   the BEAM's `sys:suspend` + `sys:change_code` + `sys:resume`;
//! - resident memory of an idle process.
//!
//! Run: `cargo bench -p zest-runtime --bench orchestration` (`-- --quick` for a
//! shorter pass).

use std::path::Path;
use std::time::{Duration, Instant};

use zest_runtime::{
    AllScope, CodeChangeTarget, LocalLock, Node, NodeConfig, ReloadLock, ReloadOptions, ReloadRequest, Scope, Status,
};

const BEAM_LOCK_US: f64 = 4.4;
/// The BEAM reloading 100 modules one by one (middle of 48–75 ms).
const BEAM_APP_MS: f64 = 61.5;
/// The BEAM's migration of N gen_servers, middle of the measured ranges, in ms.
const BEAM_MIGRATE_MS: [(usize, f64); 3] = [(1, 0.0255), (1_000, 8.4), (10_000, 137.5)];

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn lock_section(quick: bool) {
    let lock = LocalLock::default();
    let rounds = if quick { 100_000 } else { 1_000_000 };
    let mut samples = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..rounds {
            let guard = lock.acquire(Duration::ZERO).unwrap();
            std::hint::black_box(guard.token());
        }
        samples.push(started.elapsed().as_secs_f64() * 1e6 / rounds as f64);
    }
    let us = median(&mut samples);
    println!("## Reload lock\n");
    println!("| operation | zest | BEAM `global:trans` | ratio |\n|---|---|---|---|");
    println!("| acquire + release | {:.3} µs | {BEAM_LOCK_US} µs | {:.3} |\n", us, us / BEAM_LOCK_US);
}

/// A small module whose `get` answers `{"v":V}` (V has a fixed width).
fn small_module(v: u32) -> String {
    format!(
        r#"(module (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
  (data (i32.const 16) "{{\"v\":{v:06}}}")
  (func (export "get") (param i32 i32) (result i64) i64.const {packed}))"#,
        packed = (16u64 << 32) | 12
    )
}

fn write_app(dir: &Path, modules: usize, v: u32) {
    let mut manifest = String::from("[app]\nname = \"hundred\"\n");
    for m in 0..modules {
        manifest.push_str(&format!("[[modules]]\nname = \"m{m}\"\npath = \"m{m}.wat\"\n"));
        std::fs::write(dir.join(format!("m{m}.wat")), small_module(v * 1000 + m as u32)).unwrap();
    }
    std::fs::write(dir.join("zest.toml"), manifest).unwrap();
}

fn app_section(quick: bool) {
    const MODULES: usize = 100;
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    write_app(&app, MODULES, 0);
    let node = Node::new(NodeConfig { data_dir: Some(tmp.path().join("data")), ..NodeConfig::default() }).unwrap();
    assert_eq!(node.load_app(&app).status(), Status::Ok);
    let rounds = if quick { 4 } else { 10 };
    let reload = |v: u32| {
        write_app(&app, MODULES, v);
        let started = Instant::now();
        let result = node.reload(&ReloadRequest::new(Scope::App("hundred".into()))).unwrap();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!((result.status(), result.reloaded.len()), (Status::Ok, MODULES), "{result:#?}");
        ms
    };
    // Cold: builds never seen. Warm: alternating between two builds seen before.
    let mut cold: Vec<f64> = (0..rounds).map(|round| reload(10 + round)).collect();
    reload(1);
    let mut warm: Vec<f64> = (0..rounds).map(|round| reload(if round % 2 == 0 { 0 } else { 1 })).collect();
    println!("## Reload of an app of {MODULES} modules\n");
    println!("| case | zest median | BEAM | ratio |\n|---|---|---|---|");
    for (case, samples) in [("warm (compile cache)", &mut warm), ("cold (compiling)", &mut cold)] {
        let ms = median(samples);
        println!("| {case} | {ms:.2} ms | {BEAM_APP_MS} ms | {:.3} |", ms / BEAM_APP_MS);
    }
    println!();
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn migrate_section(quick: bool) {
    let counter = include_str!("../../../examples/demo/counter.wat");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("counter.wat");
    let node = Node::new(NodeConfig { data_dir: Some(tmp.path().join("data")), ..NodeConfig::default() }).unwrap();
    std::fs::write(&path, counter).unwrap();
    assert_eq!(node.load_module("counter", &path, &ReloadOptions::default()).status(), Status::Ok);
    println!("## Process migration\n");
    println!("| processes | zest total | per process | BEAM | ratio |\n|---|---|---|---|---|");
    let mut started_processes = 0;
    let mut idle_kib = 0.0;
    let sizes: &[usize] = if quick { &[1, 1_000] } else { &[1, 1_000, 10_000] };
    let mut flip = false;
    for &n in sizes {
        let before = rss_kib();
        while started_processes < n {
            node.start_process(&format!("p{started_processes}"), "counter", r#"{"start":1}"#).unwrap();
            started_processes += 1;
        }
        if n == 1_000 {
            idle_kib = (rss_kib() - before) as f64 / 999.0;
        }
        let mut samples = Vec::new();
        for _ in 0..if quick { 3 } else { 5 } {
            flip = !flip;
            std::fs::write(
                &path,
                counter.replace(
                    r#"(data (i32.const 0) "1")"#,
                    if flip { r#"(data (i32.const 0) "2")"# } else { r#"(data (i32.const 0) "1")"# },
                ),
            )
            .unwrap();
            let started = Instant::now();
            let result = node.reload_module("counter", &ReloadOptions::default());
            samples.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(result.status(), Status::Ok, "{result:#?}");
        }
        let ms = median(&mut samples);
        let beam = BEAM_MIGRATE_MS.iter().find(|(size, _)| *size == n).unwrap().1;
        println!("| {n} | {ms:.3} ms | {:.2} µs | {beam} ms | {:.3} |", ms * 1e3 / n as f64, ms / beam);
    }
    // The BEAM's one-process figure is `sys:change_code` alone, with the new
    // code already loaded; the rows above include reloading the module. The
    // same work here is an explicit `code_change` target on one process.
    let target = CodeChangeTarget {
        server: "p0".into(),
        module: "counter".into(),
        old_vsn: None,
        extra: serde_json::Value::Null,
    };
    let request = ReloadRequest::new(Scope::All(AllScope { code_change: vec![target], ..AllScope::default() }));
    let mut samples = Vec::new();
    for _ in 0..if quick { 200 } else { 2_000 } {
        let started = Instant::now();
        let results = node.reload(&request).unwrap();
        samples.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(results.status(), Status::Ok, "{results:#?}");
    }
    let ms = median(&mut samples);
    let beam = BEAM_MIGRATE_MS[0].1;
    println!("| 1, code_change target alone | {ms:.4} ms | {:.2} µs | {beam} ms | {:.3} |", ms * 1e3, ms / beam);
    println!("\nIdle process: {idle_kib:.1} KiB resident each (1,000 processes of the counter).\n");
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let only: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with('-')).collect();
    let wants = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    if wants("lock") {
        lock_section(quick);
    }
    if wants("app") {
        app_section(quick);
    }
    if wants("migrate") {
        migrate_section(quick);
    }
}
