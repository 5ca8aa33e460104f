//! Crash safety: a real `zest serve` SIGKILLed at random moments while it
//! reloads as fast as it can — new builds of an app module and of an
//! extension, so that every kill may land in a history append, an extension
//! record write, a compile-cache write or an artifact write — always starts
//! again, serves exactly the builds on disk, keeps a readable history with
//! nothing answered lost, and answers calls; and the rustc it started ahead of
//! an extension's next build dies with it.
//!
//! `ZEST_CRASH_ITERATIONS` sets the number of kills (default 30); the figures
//! in docs/reliability.md come from longer runs of this same test.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Served;

/// An extension whose vsn and answer are both `n` (six digits).
fn extension_wat(n: u64) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 4096)
  (data (i32.const 0) "{{\"n\":\"{n:06}\"}}")
  (func (export "get") (param i32 i32) (result i64) i64.const 14)
  (func (export "zest_vsn") (result i64) i64.const 0x0000020000000006)
  (data (i32.const 512) "{n:06}"))"#
    )
}

fn module<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["modules"].as_array()?.iter().find(|m| m["name"] == name)
}

/// Posts `body` until the node dies; counts the answers with status ok.
fn hammer(url: String, token: String, stop: Arc<AtomicBool>, body: impl Fn(u64) -> Option<Value>) -> u64 {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
    let mut answered = 0;
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(body) = body(i) else { continue };
        let sent = agent.post(&url).header("authorization", &format!("Bearer {token}")).send(body.to_string());
        match sent.ok().and_then(|mut response| response.body_mut().read_to_string().ok()) {
            Some(text) if text.contains("\"ok\"") => answered += 1,
            Some(_) => {}
            None => break,
        }
    }
    answered
}

#[test]
fn a_node_killed_at_random_moments_of_its_writes_always_starts_again_serving_what_is_on_disk() {
    let iterations: u64 = std::env::var("ZEST_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("crash test: {iterations} kills, seed {seed}");
    let mut rng = seed;
    let mut random = move |below: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % below
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    std::fs::create_dir_all(dir.join("extensions")).unwrap();
    std::fs::write(dir.join("extensions/ext.wat"), extension_wat(0)).unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0"];
    // Every build gets a number of its own, across rounds.
    let next_build = Arc::new(AtomicU64::new(1));
    let mut last_history_id = 0;
    let mut restarts = Vec::new();
    let mut reloads = 0;
    let mut extension_answered = false;
    for round in 0..iterations {
        let started = Instant::now();
        let node = Served::spawn(dir.clone(), None, &args, ".zest/admin.token");
        restarts.push(started.elapsed());
        let why = |what: &str, seen: &dyn std::fmt::Display| format!("round {round} (seed {seed}): {what}: {seen}");

        // The builds that serve are the ones on disk, whole.
        let status = node.status();
        let clock = module(&status, "clock").unwrap_or_else(|| panic!("{}", why("no clock", &status)));
        assert_eq!(
            clock["current"]["vsn"],
            support::data(&dir.join(".zest/demo/clock.wat"), 512),
            "{}",
            why("clock", &status)
        );
        if extension_answered {
            let ext = module(&status, "ext").unwrap_or_else(|| panic!("{}", why("the extension's record", &status)));
            let on_disk = std::fs::read_to_string(dir.join("extensions/ext.wat")).unwrap();
            let vsn = ext["current"]["vsn"].as_str().unwrap_or_default().to_string();
            assert!(on_disk.contains(&format!("(data (i32.const 512) \"{vsn}\")")), "{}", why("ext", &status));
            let answer = node.rpc("module.call", json!({"module": "ext", "function": "get"}));
            assert_eq!(answer["result"]["n"], vsn, "{}", why("ext answers", &answer));
        }
        let time = node.rpc("module.call", json!({"module": "front", "function": "time"}));
        assert!(time["result"]["now_ms"].is_i64(), "{}", why("calls work", &time));

        // The history reads whole, and keeps every commit that was answered.
        let history = node.rpc("system.history", json!({"limit": 100000}));
        let entries = history["result"]["entries"].as_array().unwrap_or_else(|| panic!("{}", why("history", &history)));
        let ids: Vec<u64> = entries.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "{}", why("history ids strictly decrease", &format!("{ids:?}")));
        let newest = ids.first().copied().unwrap_or(0);
        assert!(
            newest >= last_history_id,
            "{}",
            why("an answered commit was lost", &format!("{newest} < {last_history_id}"))
        );

        // Nothing half-written is left about: a temp file of an interrupted
        // write is cleared at start.
        let strays = stray_temp_files(&dir.join(".zest"));
        assert!(strays.is_empty(), "{}", why("temporary files left from before the restart", &format!("{strays:?}")));

        // Reload new builds as fast as the node takes them, and die at a
        // random moment of it.
        let stop = Arc::new(AtomicBool::new(false));
        let clock_loader = {
            let (url, token, stop, next, dir) =
                (node.url.clone(), node.token.clone(), stop.clone(), next_build.clone(), dir.clone());
            std::thread::spawn(move || {
                hammer(url, token, stop, |_| {
                    let n = next.fetch_add(1, Ordering::Relaxed) % 100_000;
                    support::set_clock(&dir.join(".zest/demo"), &format!("{n:05}"));
                    Some(json!({"jsonrpc": "2.0", "id": 1, "method": "system.reload",
                                "params": {"scope": "module", "module": "clock"}}))
                })
            })
        };
        let extension_loader = {
            let (url, token, stop, next, dir) =
                (node.url.clone(), node.token.clone(), stop.clone(), next_build.clone(), dir.clone());
            std::thread::spawn(move || {
                hammer(url, token, stop, |_| {
                    let n = next.fetch_add(1, Ordering::Relaxed) % 1_000_000;
                    std::fs::write(dir.join("extensions/ext.wat"), extension_wat(n)).unwrap();
                    Some(json!({"jsonrpc": "2.0", "id": 2, "method": "system.reload",
                                "params": {"scope": "extension", "path": "extensions/ext.wat"}}))
                })
            })
        };
        std::thread::sleep(Duration::from_millis(20 + random(400)));
        node.kill();
        stop.store(true, Ordering::Relaxed);
        let extension_loads = extension_loader.join().unwrap();
        // Once a load was answered, its record must bring the extension back.
        extension_answered |= extension_loads > 0;
        let answered = clock_loader.join().unwrap() + extension_loads;
        reloads += answered;
        last_history_id = newest + answered;
    }
    // The kills landed in the middle of work, not between requests.
    assert!(reloads >= iterations, "only {reloads} reloads answered in {iterations} rounds");
    restarts.sort();
    eprintln!(
        "crash test: {iterations} kills during {reloads} answered reloads, every restart served; \
         restart median {:?}, max {:?}",
        restarts[restarts.len() / 2],
        restarts.last().unwrap()
    );
}

/// Files under `dir` that a write through a temporary file leaves behind
/// when it is interrupted (`tempfile`'s `.tmpXXXXXX`).
fn stray_temp_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if entry.file_name().to_string_lossy().starts_with(".tmp") {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn a_second_node_on_the_same_data_directory_is_refused_and_the_first_keeps_serving() {
    let first = Served::start(&[], |_| {});
    let token_before = std::fs::read_to_string(first.path(".zest/admin.token")).unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0"];
    let refused = Served::try_spawn(first.dir.clone(), None, &args, ".zest/admin.token", &[])
        .err()
        .expect("a second node on the same data directory is refused");
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(refused.stderr.contains("is in use by another zest node"), "{}", refused.stderr);
    assert_eq!(std::fs::read_to_string(first.path(".zest/admin.token")).unwrap(), token_before);
    let time = first.rpc("module.call", json!({"module": "front", "function": "time"}));
    assert!(time["result"]["now_ms"].is_i64(), "{time}");
}

/// Whether process `pid` runs (a zombie, killed and not yet reaped, does not).
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z")
}

/// The children of `parent` whose command line includes `needle`.
fn children_running(parent: u32, needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(parent.to_string()) && String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// The rustc a node starts ahead of the next build of a `.rs` extension
/// (`toolchain/spare.rs`) dies with it, even when the node is SIGKILLed.
#[test]
fn a_node_killed_outright_leaves_no_rustc_waiting() {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/guests/hello.rs");
    let source = std::fs::read_to_string(guest).unwrap();
    let served = Served::start(&[], |dir| {
        std::fs::create_dir_all(dir.join("extensions")).unwrap();
        std::fs::write(dir.join("extensions/orphan_check.rs"), &source).unwrap();
    });
    let result = served.reload(json!({"scope": "extension", "path": "extensions/orphan_check.rs"}));
    assert_eq!(result["status"].as_str(), Some("ok"), "{result}");
    let node = served.pid() as u32;
    let waiting = support::eventually(Duration::from_secs(10), || {
        children_running(node, "orphan_check.rs").into_iter().find(|&pid| running(pid))
    })
    .expect("a rustc waits for the next build of orphan_check.rs");
    // Let it load itself and block on its source; keep its directory, so that
    // nothing but its node's death can end it.
    std::thread::sleep(Duration::from_secs(1));
    assert!(running(waiting));
    let (_dir, _temp) = served.kill_keeping_dir();
    let gone = support::eventually(Duration::from_secs(10), || (!running(waiting)).then_some(()));
    if gone.is_none() {
        // SAFETY: kill(2) on the rustc the test found; no memory is involved.
        unsafe { libc::kill(waiting as i32, libc::SIGKILL) };
        panic!("rustc {waiting} outlived its SIGKILLed node");
    }
}
