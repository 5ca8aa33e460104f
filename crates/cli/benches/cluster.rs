//! Cluster benchmarks (issue 11; results in `docs/benchmarks.md`), against a
//! real etcd and real `zest serve` members (release builds) on this machine,
//! printed beside the BEAM's figures measured here:
//!
//! - `reload`: a coordinated reload of one module across 3 members, median and
//!   p99, for modules of 10, 1,000 and 10,000 functions — alternating two
//!   builds (every member has both compiled: the BEAM's `c:nl` loads compiled
//!   code too) and a new build each time (every member compiles it) — beside
//!   Erlang's `c:nl` on 3 distributed nodes (2.2, 11.9 and 105 ms; no prepare
//!   phase, no atomicity, no fencing). Target: median ≤ 25 ms for the small module.
//! - `lock`: the reload lock taken and released through etcd, beside
//!   `global:trans` on 3 nodes (206 µs).
//! - `takeover`: from SIGKILL of the lock holder to another holding the lock.
//! - `fleet`: the small module across 3, 6 and 10 members (`--sizes=3,10,30,100`
//!   for others): the client's round trip, the coordinator's own
//!   `duration_ms`, and the coordinator process's CPU time per reload and per
//!   target (from `/proc/<pid>/stat`) — what a fleet whose members run on
//!   machines of their own would still wait for (`--rounds=N` reloads per size).
//!
//! Run: `cargo bench -p zest --bench cluster` (`-- --quick` for fewer rounds;
//! `-- reload` etc. for one section).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Fleet, Served};
use zest_control::cluster::etcd::Store;

/// Erlang `c:nl` of a module of 10, 1,000, 10,000 functions on 3 nodes, ms.
const BEAM_NL_MS: [(usize, f64); 3] = [(10, 2.2), (1_000, 11.9), (10_000, 105.0)];
/// `global:trans` acquire and release on 3 nodes, µs.
const BEAM_TRANS_US: f64 = 206.0;

fn module_wat(functions: usize, marker: u64) -> String {
    let mut wat = String::with_capacity(functions * 96 + 512);
    wat.push_str(
        r#"(module (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
"#,
    );
    let marker_json = format!("1{marker:019}");
    wat.push_str(&format!(
        "  (data (i32.const 16) \"{marker_json}\")\n  (func (export \"get\") (param i32 i32) (result i64) i64.const {})\n",
        (16u64 << 32) | 20
    ));
    for k in 0..functions {
        wat.push_str(&format!(
            "  (func (export \"f{k}\") (param i32 i32) (result i64) (i64.add (i64.extend_i32_u (local.get 0)) (i64.const {k})))\n"
        ));
    }
    wat.push(')');
    wat
}

fn bench_app(functions: usize) -> Vec<(String, String)> {
    vec![
        ("zest.toml".into(), "[app]\nname = \"bench\"\n[[modules]]\nname = \"bench\"\npath = \"bench.wat\"\n".into()),
        ("bench.wat".into(), module_wat(functions, 0)),
    ]
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

/// Writes build `marker` on `coordinator` and reloads it across the fleet;
/// the time the request took, as its client saw it.
fn timed_reload(fleet: &Fleet, coordinator: &Served, functions: usize, marker: u64) -> f64 {
    let path = fleet.member_dir(&fleet.ids()[0]).join("app/bench.wat");
    std::fs::write(path, module_wat(functions, marker)).unwrap();
    let started = Instant::now();
    let result = coordinator.reload(json!({"scope": "module", "module": "bench", "lock_timeout_ms": 30000}));
    let ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(result["status"], "ok", "{result}");
    let nodes = result["results"].as_array().map_or(0, Vec::len);
    assert_eq!(nodes, fleet.ids().len(), "every member reloaded: {result}");
    ms
}

fn reload_section(quick: bool) {
    println!("\n## Coordinated reload across 3 members (client-side round trip of system.reload)\n");
    println!("| module | builds | samples | median ms | p99 ms | BEAM c:nl ms | median / BEAM |");
    println!("|---|---|---|---|---|---|---|");
    for (functions, beam) in BEAM_NL_MS {
        let fleet = Fleet::start_with(&["a", "b", "c"], bench_app(functions), Duration::from_secs(60), &[]);
        let a = fleet.member("a");
        // Both builds compiled on every member once, then alternated.
        timed_reload(&fleet, a, functions, 1);
        timed_reload(&fleet, a, functions, 2);
        let warm_rounds = if quick { 10 } else { 30 };
        let mut warm: Vec<f64> = (0..warm_rounds).map(|i| timed_reload(&fleet, a, functions, 1 + i % 2)).collect();
        let cold_rounds = match (functions, quick) {
            (10_000, true) => 3,
            (10_000, false) => 10,
            (_, true) => 10,
            (_, false) => 30,
        };
        let mut cold: Vec<f64> = (0..cold_rounds).map(|i| timed_reload(&fleet, a, functions, 100 + i)).collect();
        for (label, samples) in [("two, alternated", &mut warm), ("new each time", &mut cold)] {
            let (median, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
            println!(
                "| {functions} fns | {label} | {} | {median:.2} | {p99:.2} | {beam} | {:.2} |",
                samples.len(),
                median / beam
            );
        }
        let bytes = module_wat(functions, 0).len();
        println!("|  | (build of {bytes} bytes moved to each other member once per new build) | | | | | |");
    }
}

fn lock_section(quick: bool) {
    println!("\n## The reload lock through etcd (acquire + release, one client)\n");
    let etcd = support::Etcd::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rounds = if quick { 200 } else { 1000 };
    let mut samples = runtime.block_on(async {
        let store = Store::connect(std::slice::from_ref(&etcd.client), "bench").await.unwrap();
        let lease = store.grant(Duration::from_secs(10)).await.unwrap();
        let holder = json!({"node": "bench"});
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            let token = store.lock(lease, &holder, Duration::ZERO).await.unwrap();
            store.unlock(token).await.unwrap();
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        samples
    });
    let (median, p99) = (percentile(&mut samples, 0.5), percentile(&mut samples, 0.99));
    println!("| rounds | median µs | p99 µs | BEAM global:trans µs | median / BEAM |");
    println!("|---|---|---|---|---|");
    println!("| {rounds} | {median:.0} | {p99:.0} | {BEAM_TRANS_US} | {:.2} |", median / BEAM_TRANS_US);
}

fn takeover_section(quick: bool) {
    println!("\n## SIGKILL of the lock holder → another holder (lease TTL {} ms)\n", support::LEASE_TTL.as_millis());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rounds = if quick { 2 } else { 5 };
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let mut app = bench_app(10);
        app[0].1 =
            app[0].1.replace("name = \"bench\"\n[[modules]]", "name = \"bench\"\nbuild = \"sleep 60\"\n[[modules]]");
        let mut fleet = Fleet::start_with(&["a", "b"], app, Duration::from_secs(10), &[]);
        let url = fleet.member("a").url.clone();
        std::thread::spawn(move || {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "system.reload",
                              "params": {"scope": "app", "app": "bench", "compile": true}});
            let agent: ureq::Agent =
                ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(90))).build().into();
            let _ =
                agent.post(&url).header("authorization", &format!("Bearer {}", support::ADMIN)).send(body.to_string());
        });
        std::thread::sleep(Duration::from_millis(500));
        let taken = runtime.block_on(async {
            let store = Store::connect(std::slice::from_ref(&fleet.etcd.client), &fleet.name).await.unwrap();
            let lease = store.grant(Duration::from_secs(10)).await.unwrap();
            let busy = store.lock(lease, &json!({"node": "bench"}), Duration::ZERO).await;
            assert!(busy.is_err(), "a holds the lock while it builds");
            fleet.take("a").kill();
            let killed = Instant::now();
            store.lock(lease, &json!({"node": "bench"}), Duration::from_secs(30)).await.unwrap();
            killed.elapsed()
        });
        samples.push(taken.as_secs_f64() * 1e3);
    }
    let (median, max) = (percentile(&mut samples, 0.5), samples.iter().copied().fold(0.0, f64::max));
    let bound = (support::LEASE_TTL + Duration::from_secs(1)).as_secs_f64() * 1e3;
    println!("| rounds | median ms | max ms | bound: lease_ttl + 1 s | max / bound |");
    println!("|---|---|---|---|---|");
    println!("| {rounds} | {median:.0} | {max:.0} | {bound:.0} | {:.2} |", max / bound);
}

/// CPU time (user + system, every thread) process `pid` has used, in ms
/// (`/proc/<pid>/stat`, clock ticks of 10 ms).
fn cpu_ms(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1e3 / hz
}

/// One reload across the fleet: the client's round trip and the
/// coordinator's own `duration_ms`.
fn timed_fleet_reload(fleet: &Fleet, coordinator: &Served, marker: u64) -> (f64, f64) {
    let path = fleet.member_dir(&fleet.ids()[0]).join("app/bench.wat");
    std::fs::write(path, module_wat(10, marker)).unwrap();
    let started = Instant::now();
    let result = coordinator.reload(json!({"scope": "module", "module": "bench", "lock_timeout_ms": 30000}));
    let ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(result["status"], "ok", "{result}");
    let nodes = result["results"].as_array().map_or(0, Vec::len);
    assert_eq!(nodes, fleet.ids().len(), "every member reloaded: {result}");
    (ms, result["duration_ms"].as_f64().unwrap_or(f64::NAN))
}

fn fleet_section(rounds: usize, sizes: &[usize]) {
    println!("\n## The small module across more members (two builds, alternated)\n");
    println!("| members | samples | median ms | p90 ms | p99 ms | coordinator duration_ms (median) | coordinator CPU per reload ms | per target ms | per extra member ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut first: Option<(usize, f64)> = None;
    for &size in sizes {
        let ids: Vec<String> = (0..size).map(|i| format!("m{i:03}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let fleet = Fleet::start_with(&ids, bench_app(10), Duration::from_secs(60), &[]);
        let coordinator = fleet.member(ids[0]);
        timed_fleet_reload(&fleet, coordinator, 1);
        timed_fleet_reload(&fleet, coordinator, 2);
        let cpu_before = cpu_ms(coordinator.pid());
        let (mut samples, mut own): (Vec<f64>, Vec<f64>) =
            (0..rounds).map(|i| timed_fleet_reload(&fleet, coordinator, 1 + i as u64 % 2)).unzip();
        let cpu = (cpu_ms(coordinator.pid()) - cpu_before) / rounds as f64;
        let (median, p90, p99) =
            (percentile(&mut samples, 0.5), percentile(&mut samples, 0.9), percentile(&mut samples, 0.99));
        let own = percentile(&mut own, 0.5);
        let per = match first {
            None => {
                first = Some((size, median));
                String::from("—")
            }
            Some((base_size, base)) => format!("{:.2}", (median - base) / (size - base_size) as f64),
        };
        let per_target = cpu / size as f64;
        println!(
            "| {size} | {rounds} | {median:.2} | {p90:.2} | {p99:.2} | {own:.2} | {cpu:.2} | {per_target:.3} | {per} |"
        );
        drop(fleet);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let wanted: Vec<&str> = args.iter().filter(|arg| !arg.starts_with("--")).map(String::as_str).collect();
    let run = |section: &str| wanted.is_empty() || wanted.contains(&section);
    println!("# zest cluster benchmarks ({})", if quick { "quick" } else { "full" });
    if run("reload") {
        reload_section(quick);
    }
    if run("lock") {
        lock_section(quick);
    }
    if run("takeover") {
        takeover_section(quick);
    }
    if run("fleet") {
        // `--sizes=3,10,30,100` to choose the fleet sizes.
        let sizes: Vec<usize> = args
            .iter()
            .find_map(|arg| arg.strip_prefix("--sizes="))
            .map(|list| list.split(',').map(|n| n.parse().expect("--sizes=N,N,...")).collect())
            .unwrap_or_else(|| vec![3, 6, 10]);
        // `--rounds=N` for another number of reloads per size.
        let rounds = args
            .iter()
            .find_map(|arg| arg.strip_prefix("--rounds="))
            .map(|n| n.parse().expect("--rounds=N"))
            .unwrap_or(if quick { 10 } else { 30 });
        fleet_section(rounds, &sizes);
    }
}
