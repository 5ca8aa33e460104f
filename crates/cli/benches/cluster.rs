//! Cluster benchmarks (issue 11; results in `docs/benchmarks.md`), against a
//! real etcd and real `zest serve` members (release builds) on this machine,
//! printed beside the BEAM's figures measured here:
//!
//! - `reload`: a coordinated reload of one module across 3 members, median and
//!   p99, for modules of 10, 1,000 and 10,000 functions — alternating two
//!   builds (every member has both compiled: the BEAM's `c:nl` loads compiled
//!   code too), and a new build each time that every member fetches and
//!   compiles: its data string edited, or one function's body edited (so each
//!   member's split compile recompiles the one part that holds it) — beside
//!   Erlang's `c:nl` on 3 distributed nodes (2.2, 11.9 and 105 ms, measured
//!   on this machine on 2026-11-25 and kept as constants here; no prepare
//!   phase, no atomicity, no fencing). Targets: median ≤ 25 ms for the small
//!   module; a one-function edit ≤ 1× `c:nl` at 1,000 and 10,000 functions.
//! - `lock`: the reload lock taken and released through etcd, beside
//!   `global:trans` on 3 nodes (206 µs).
//! - `takeover`: from SIGKILL of the lock holder to another holding the lock.
//! - `fleet`: the small module across 3, 6 and 10 members (`--sizes=3,10,30,100`
//!   for others): the client's round trip, the coordinator's own
//!   `duration_ms`, and the coordinator process's CPU time per reload and per
//!   target (from `/proc/<pid>/stat`) — what a fleet whose members run on
//!   machines of their own would still wait for (`--rounds=N` reloads per size;
//!   `--new-builds` for a build every member fetches, in waves, each time).
//!
//! - `pool`: one real coordinator on a core of its own against 2, 99 and 999
//!   stand-in members (`--pool=3,100,1000`: fleet sizes) answering from
//!   this process on the other core — the fleet as if every member had a
//!   machine of its own, and the 1,000-member figure measured.
//! - `idle`: 100 members doing nothing — CPU per member, etcd writes per second.
//!
//! Run: `cargo bench -p zest --bench cluster` (`-- --quick` for fewer rounds;
//! `-- reload` etc. for one section).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{Fleet, Served};
use zest_control::cluster::etcd::Store;

/// Erlang `c:nl` of a module of 10, 1,000, 10,000 functions on 3 nodes, ms.
const BEAM_NL_MS: [(usize, f64); 3] = [(10, 2.2), (1_000, 11.9), (10_000, 105.0)];
/// `global:trans` acquire and release on 3 nodes, µs.
const BEAM_TRANS_US: f64 = 206.0;

/// A build of the bench's module: `functions` small functions besides `get`
/// (which returns the marker, a data string). Function `f{k}` adds `k` to its
/// input, except `f{edited}` when given, which adds `marker`: two builds with
/// an edit then differ in that one function's body (and the data string), as
/// when a developer edits one function.
fn module_wat(functions: usize, marker: u64, edited: Option<usize>) -> String {
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
        let constant = if edited == Some(k) { marker } else { k as u64 };
        wat.push_str(&format!(
            "  (func (export \"f{k}\") (param i32 i32) (result i64) (i64.add (i64.extend_i32_u (local.get 0)) (i64.const {constant})))\n"
        ));
    }
    wat.push(')');
    wat
}

fn bench_app(functions: usize) -> Vec<(String, String)> {
    vec![
        ("zest.toml".into(), "[app]\nname = \"bench\"\n[[modules]]\nname = \"bench\"\npath = \"bench.wat\"\n".into()),
        ("bench.wat".into(), module_wat(functions, 0, None)),
    ]
}

/// One size's row of a fleet table: the round trip's median, p90 and p99,
/// the coordinator's own median, and the time each member adds over the
/// first size measured (`first`, set by the first row), in `digits`.
struct Row {
    median: f64,
    p90: f64,
    p99: f64,
    own: f64,
    per: String,
}

fn row(samples: &mut [f64], own: &mut [f64], first: &mut Option<(usize, f64)>, size: usize, digits: usize) -> Row {
    let (median, p90, p99) = (percentile(samples, 0.5), percentile(samples, 0.9), percentile(samples, 0.99));
    let per = match *first {
        None => {
            *first = Some((size, median));
            String::from("—")
        }
        Some((base_size, base)) => format!("{:.digits$}", (median - base) / (size - base_size) as f64),
    };
    Row { median, p90, p99, own: percentile(own, 0.5), per }
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

/// Writes `build` on `coordinator` and reloads it across the fleet; the time
/// the request took, as its client saw it.
fn timed_reload(fleet: &Fleet, coordinator: &Served, build: String) -> f64 {
    fleet_reload(fleet, coordinator, build).0
}

/// Writes `build` (the module's text) on `coordinator`, reloads it across
/// the fleet and checks every member took it: the client's time, and the
/// result.
fn fleet_reload(fleet: &Fleet, coordinator: &Served, build: String) -> (f64, Value) {
    let path = fleet.member_dir(&fleet.ids()[0]).join("app/bench.wat");
    std::fs::write(path, build).unwrap();
    let started = Instant::now();
    let result = coordinator.reload(json!({"scope": "module", "module": "bench", "lock_timeout_ms": 30000}));
    let ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(result["status"], "ok", "{result}");
    let nodes = result["results"].as_array().map_or(0, Vec::len);
    assert_eq!(nodes, fleet.ids().len(), "every member reloaded: {result}");
    (ms, result)
}

fn reload_section(quick: bool) {
    println!("\n## Coordinated reload across 3 members (client-side round trip of system.reload)\n");
    println!("| module | builds | samples | median ms | p99 ms | BEAM c:nl ms | median / BEAM |");
    println!("|---|---|---|---|---|---|---|");
    for (functions, beam) in BEAM_NL_MS {
        let fleet = Fleet::start_with(&["a", "b", "c"], bench_app(functions), Duration::from_secs(60), &[]);
        let a = fleet.member("a");
        let reload =
            |marker: u64, edited: Option<usize>| timed_reload(&fleet, a, module_wat(functions, marker, edited));
        // Both builds compiled on every member once, then alternated.
        reload(1, None);
        reload(2, None);
        let warm_rounds = if quick { 10 } else { 30 };
        let mut warm: Vec<f64> = (0..warm_rounds).map(|i| reload(1 + i as u64 % 2, None)).collect();
        let cold_rounds = match (functions, quick) {
            (10_000, true) => 3,
            (10_000, false) => 10,
            (_, true) => 10,
            (_, false) => 30,
        };
        // A build no member holds, each time: its data string changed...
        let mut data: Vec<f64> = (0..cold_rounds).map(|i| reload(100 + i as u64, None)).collect();
        // ...or one function's body (and the data string), as a developer's
        // edit of one function: each member's split compile recompiles the
        // part that holds it.
        let edit_rounds = if quick { 10 } else { 30 };
        let mut edited: Vec<f64> = (0..edit_rounds).map(|i| reload(10_000 + i as u64, Some(functions / 2))).collect();
        for (label, samples) in [
            ("two, alternated", &mut warm),
            ("new each time, data string edited", &mut data),
            ("new each time, one function's body edited", &mut edited),
        ] {
            let (median, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
            println!(
                "| {functions} fns | {label} | {} | {median:.2} | {p99:.2} | {beam} | {:.2} |",
                samples.len(),
                median / beam
            );
        }
        let bytes = module_wat(functions, 0, None).len();
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

/// Context switches (voluntary and not) of every live thread of process
/// `pid` so far (`/proc/<pid>/task/*/status`).
fn context_switches(pid: i32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// CPU ms and context switches of every member but the coordinator, summed.
fn members_usage(fleet: &Fleet, coordinator: &Served) -> (f64, f64) {
    fleet
        .ids()
        .iter()
        .map(|id| fleet.member(id).pid())
        .filter(|&pid| pid != coordinator.pid())
        .map(|pid| (cpu_ms(pid), context_switches(pid)))
        .fold((0.0, 0.0), |(cpu, switches), (c, s)| (cpu + c, switches + s))
}

/// How many builds `node` has served to other members
/// (`zest_cluster_builds_served_total`).
fn builds_served(node: &Served) -> f64 {
    let (_, metrics) = node.get("/metrics", Some(support::ADMIN));
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("zest_cluster_builds_served_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One reload across the fleet: the client's round trip and the
/// coordinator's own `duration_ms`.
fn timed_fleet_reload(fleet: &Fleet, coordinator: &Served, marker: u64) -> (f64, f64) {
    let (ms, result) = fleet_reload(fleet, coordinator, module_wat(10, marker, None));
    (ms, result["duration_ms"].as_f64().unwrap_or(f64::NAN))
}

fn fleet_section(rounds: usize, sizes: &[usize], new_builds: bool) {
    let builds = if new_builds { "a new build each time, fetched by every member" } else { "two builds, alternated" };
    println!("\n## The small module across more members ({builds})\n");
    println!("| members | samples | median ms | p90 ms | p99 ms | coordinator duration_ms (median) | coordinator CPU per reload ms | per target ms | per extra member ms | other member's CPU per reload ms | its context switches per reload |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut first: Option<(usize, f64)> = None;
    for &size in sizes {
        let ids: Vec<String> = (0..size).map(|i| format!("m{i:03}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let fleet = Fleet::start_with(&ids, bench_app(10), Duration::from_secs(60), &[]);
        let coordinator = fleet.member(ids[0]);
        timed_fleet_reload(&fleet, coordinator, 1);
        timed_fleet_reload(&fleet, coordinator, 2);
        let cpu_before = cpu_ms(coordinator.pid());
        let served_before = builds_served(coordinator);
        let members_before = members_usage(&fleet, coordinator);
        let (mut samples, mut own): (Vec<f64>, Vec<f64>) = (0..rounds)
            .map(|i| {
                let marker = if new_builds { 100 + i as u64 } else { 1 + i as u64 % 2 };
                timed_fleet_reload(&fleet, coordinator, marker)
            })
            .unzip();
        let cpu = (cpu_ms(coordinator.pid()) - cpu_before) / rounds as f64;
        let members_after = members_usage(&fleet, coordinator);
        let per_member_reload = ((size - 1) * rounds) as f64;
        let member_cpu = (members_after.0 - members_before.0) / per_member_reload;
        let member_switches = (members_after.1 - members_before.1) / per_member_reload;
        let Row { median, p90, p99, own, per } = row(&mut samples, &mut own, &mut first, size, 2);
        let per_target = cpu / size as f64;
        println!(
            "| {size} | {rounds} | {median:.2} | {p90:.2} | {p99:.2} | {own:.2} | {cpu:.2} | {per_target:.3} | {per} | {member_cpu:.3} | {member_switches:.1} |"
        );
        if new_builds {
            let served = (builds_served(coordinator) - served_before) / rounds as f64;
            println!("|  | (the coordinator served the build {served:.1} times per reload) | | | | | | | | | |");
        }
        drop(fleet);
    }
}

/// Pins every thread of process `pid` to CPU `cpu`.
fn pin(pid: i32, cpu: usize) {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(tid) = task.unwrap().file_name().to_string_lossy().parse::<i32>() else { continue };
        // SAFETY: a zeroed cpu_set_t is an empty set; sched_setaffinity reads
        // `size_of::<cpu_set_t>()` bytes of it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// A pool of stand-in members in this process: each registered in etcd
/// (`members/<id>` on one shared lease) and answering `cluster.prepare`,
/// `.commit`, `.settle` and `.abort` on its own loopback port at once,
/// doing nothing else — members on machines of their own, as far as the
/// coordinator can tell, whose work costs nothing here.
mod pool {
    use std::time::Duration;

    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use zest_control::cluster::etcd::{MemberRecord, Store};

    pub async fn start(endpoints: Vec<String>, cluster: String, size: usize) -> Store {
        let store = Store::connect(&endpoints, &cluster).await.unwrap();
        let lease = store.grant(Duration::from_secs(30)).await.unwrap();
        let keeper = store.clone();
        tokio::spawn(async move {
            loop {
                let _ = keeper.keep_alive(lease, Duration::from_secs(5), || {}).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        for i in 0..size {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let advertise = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream));
                }
            });
            let record = MemberRecord {
                node: format!("p{i:04}"),
                advertise,
                since: "2026-12-07T00:00:00.000Z".into(),
                instance: format!("pool-{i}"),
                lease: 0,
            };
            assert!(store.register(&record, lease).await.unwrap().is_none(), "{} registered", record.node);
        }
        store
    }

    fn answer(method: &str) -> Value {
        match method {
            "cluster.prepare" => json!({"prepared": true}),
            _ => json!({"kind": "module", "target": "bench", "status": "ok", "reloaded": ["bench"], "skipped": [],
                        "errors": [], "duration_ms": 0.1, "results": [], "metadata": {}}),
        }
    }

    /// HTTP/1.1 with keep-alive, bodies by content-length (as the
    /// coordinator's client sends them).
    async fn serve(mut stream: TcpStream) {
        let mut buf: Vec<u8> = Vec::with_capacity(8192);
        loop {
            let head_end = loop {
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + length {
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            let request: Value = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
            buf.drain(..head_end + length);
            let method = request["method"].as_str().unwrap_or("");
            let body = json!({"jsonrpc": "2.0", "id": request["id"], "result": answer(method)}).to_string();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// A real coordinator (release `zest serve`, its threads pinned to CPU 0)
/// against `size - 1` stand-in members (this process, pinned with etcd to
/// CPU 1): what the coordinator itself costs per target, and the fleet's
/// time when members' work does not share its core.
fn pool_section(rounds: usize, sizes: &[usize]) {
    println!("\n## One coordinator against stand-in members on another core (two builds, alternated)\n");
    println!("| members | samples | median ms | p90 ms | p99 ms | coordinator duration_ms (median) | coordinator CPU per reload ms | per target ms | per extra member ms | other member's CPU per reload ms | its context switches per reload |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut first: Option<(usize, f64)> = None;
    for &size in sizes {
        let fleet = Fleet::start_with(&["a"], bench_app(10), Duration::from_secs(60), &[]);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let _store = runtime.block_on(pool::start(fleet.etcd.endpoints(), fleet.name.clone(), size - 1));
        let coordinator = fleet.member("a");
        let listed = support::eventually(Duration::from_secs(60), || {
            let members = coordinator.status()["cluster"]["members"].as_array().map_or(0, Vec::len);
            (members == size).then_some(())
        });
        assert!(listed.is_some(), "the coordinator lists {size} members");
        pin(coordinator.pid(), 0);
        pin(std::process::id() as i32, 1);
        for pid in fleet.etcd.pids() {
            pin(pid, 1);
        }
        let timed = |marker: u64| -> (f64, f64) {
            let path = fleet.member_dir("a").join("app/bench.wat");
            std::fs::write(path, module_wat(10, marker, None)).unwrap();
            let started = Instant::now();
            let result = coordinator.reload(json!({"scope": "module", "module": "bench", "lock_timeout_ms": 30000}));
            let ms = started.elapsed().as_secs_f64() * 1e3;
            assert_eq!(result["status"], "ok", "{result}");
            assert_eq!(result["results"].as_array().map_or(0, Vec::len), size, "every member: {result}");
            (ms, result["duration_ms"].as_f64().unwrap_or(f64::NAN))
        };
        timed(1);
        timed(2);
        let cpu_before = cpu_ms(coordinator.pid());
        let (mut samples, mut own): (Vec<f64>, Vec<f64>) = (0..rounds).map(|i| timed(1 + i as u64 % 2)).unzip();
        let cpu = (cpu_ms(coordinator.pid()) - cpu_before) / rounds as f64;
        let Row { median, p90, p99, own, per } = row(&mut samples, &mut own, &mut first, size, 3);
        println!(
            "| {size} | {rounds} | {median:.2} | {p90:.2} | {p99:.2} | {own:.2} | {cpu:.2} | {:.3} | {per} |",
            cpu / size as f64
        );
        drop(fleet);
        runtime.shutdown_background();
    }
}

/// etcd's committed raft proposals (its writes) so far, from its `/metrics`.
fn etcd_proposals(etcd: &support::Etcd) -> f64 {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
    let text = agent.get(&format!("{}/metrics", etcd.client)).call().unwrap().body_mut().read_to_string().unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("etcd_server_proposals_committed_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("etcd reports etcd_server_proposals_committed_total")
}

/// What idle members cost: CPU per member and etcd writes per second, over
/// `window`, `size` members that do nothing (their leases renewed, their
/// watches open, their catch-up safety net running).
fn idle_section(size: usize, window: Duration) {
    println!("\n## {size} idle members (lease TTL {} ms)\n", support::LEASE_TTL.as_millis());
    let ids: Vec<String> = (0..size).map(|i| format!("m{i:03}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let fleet = Fleet::start_with(&ids, bench_app(10), Duration::from_secs(60), &[]);
    std::thread::sleep(Duration::from_secs(3));
    let cpu = |fleet: &Fleet| -> f64 { ids.iter().map(|id| cpu_ms(fleet.member(id).pid())).sum() };
    let (cpu_before, writes_before) = (cpu(&fleet), etcd_proposals(&fleet.etcd));
    std::thread::sleep(window);
    let (cpu_after, writes_after) = (cpu(&fleet), etcd_proposals(&fleet.etcd));
    let seconds = window.as_secs_f64();
    let per_member = (cpu_after - cpu_before) / seconds / 1e3 / size as f64 * 100.0;
    let writes = (writes_after - writes_before) / seconds;
    println!("| members | window s | CPU per idle member % | all members' CPU % | etcd writes/s |");
    println!("|---|---|---|---|---|");
    println!("| {size} | {seconds:.0} | {per_member:.3} | {:.1} | {writes:.2} |", per_member * size as f64);
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
    if run("idle") {
        idle_section(100, Duration::from_secs(if quick { 10 } else { 30 }));
    }
    if run("pool") {
        let sizes: Vec<usize> = args
            .iter()
            .find_map(|arg| arg.strip_prefix("--pool="))
            .map(|list| list.split(',').map(|n| n.parse().expect("--pool=N,N,...")).collect())
            .unwrap_or_else(|| vec![3, 100, 1000]);
        pool_section(if quick { 10 } else { 30 }, &sizes);
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
        // `--new-builds`: a build no member holds, every reload.
        fleet_section(rounds, &sizes, args.iter().any(|arg| arg == "--new-builds"));
    }
}
