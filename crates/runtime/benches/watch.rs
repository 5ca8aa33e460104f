//! Watch mode (issue 14; results in `docs/benchmarks.md`): the time from a
//! module file written to the new code serving calls, against the target of
//! the debounce + 50 ms, for the default debounce (200 ms) and a short one
//! (50 ms), with a small module and one of 1,000 functions.
//!
//! Run: `cargo bench -p zest-runtime --bench watch` (`-- --quick` for fewer
//! rounds).

use std::path::Path;
use std::time::{Duration, Instant};

use zest_runtime::watch::WatchConfig;
use zest_runtime::{Node, NodeConfig, Status};

/// A module of `functions` small functions whose `get` answers `marker`.
fn module(functions: usize, marker: u64) -> String {
    let out = format!("1{marker:019}");
    let mut wat = format!(
        "(module (memory (export \"memory\") 1)\n  (func (export \"zest_alloc\") (param i32) (result i32) i32.const 8192)\n  \
         (data (i32.const 16) \"{out}\")\n  (func (export \"get\") (param i32 i32) (result i64) i64.const {})\n",
        (16u64 << 32) | 20
    );
    for k in 0..functions {
        wat.push_str(&format!(
            "  (func (export \"f{k}\") (param i32 i32) (result i64) (i64.add (i64.extend_i32_u (local.get 0)) (i64.const {k})))\n"
        ));
    }
    wat.push(')');
    wat
}

fn write_app(dir: &Path, wat: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("zest.toml"), "[app]\nname = \"bench\"\n\n[[modules]]\nname = \"m\"\npath = \"m.wat\"\n")
        .unwrap();
    std::fs::write(dir.join("m.wat"), wat).unwrap();
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let rounds = if quick { 5 } else { 20 };
    println!("## Watch mode: module file written → new code serving\n");
    println!("({rounds} rounds each; a new build every round, so each reload compiles)\n");
    println!("| module | debounce | median | p90 | max | target: debounce + 50 ms | max / target |");
    println!("|---|---|---|---|---|---|---|");
    let mut marker = 1u64;
    for functions in [10, 1_000] {
        for debounce_ms in [200u64, 50] {
            let dir = tempfile::tempdir().unwrap();
            let app = dir.path().join("app");
            write_app(&app, &module(functions, marker));
            let config = NodeConfig { data_dir: Some(dir.path().join("data")), ..NodeConfig::default() };
            let node = Node::new(config).unwrap();
            assert_eq!(node.load_app(&app).status(), Status::Ok);
            let debounce = Duration::from_millis(debounce_ms);
            let _watch = node.watch(WatchConfig { debounce }, |_| {}).unwrap();
            let mut samples = Vec::new();
            for _ in 0..rounds {
                marker += 1;
                let wat = module(functions, marker);
                let expected = format!("1{marker:019}");
                let started = Instant::now();
                std::fs::write(app.join("m.wat"), &wat).unwrap();
                loop {
                    if node.call("m", "get", "null").unwrap() == expected {
                        break;
                    }
                    assert!(started.elapsed() < Duration::from_secs(10), "the new build never served");
                    std::thread::sleep(Duration::from_micros(200));
                }
                samples.push(started.elapsed());
                // Let the tier-up and the writer settle between rounds.
                std::thread::sleep(Duration::from_millis(600));
            }
            let target = debounce_ms as f64 + 50.0;
            let (median, p90, max) =
                (percentile(&mut samples, 0.5), percentile(&mut samples, 0.9), percentile(&mut samples, 1.0));
            println!(
                "| {functions} fns | {debounce_ms} ms | {median:.1} ms | {p90:.1} ms | {max:.1} ms | {target:.0} ms | {:.3} |",
                max / target
            );
        }
    }
    println!();
}
