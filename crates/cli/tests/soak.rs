//! The soak: a real `zest serve` under concurrent calls over HTTP and
//! WebSocket and a stream of process messages, while a reload lands every
//! 50 ms — new builds of a module, new builds of a process's module (its state
//! migrates each time), builds that fail to compile, extension reloads. It
//! prints calls, failed calls, messages lost or duplicated, reloads, and the
//! node's RSS and open file descriptors after a warm-up and at the end.
//!
//! `ZEST_SOAK_SECONDS` sets the length (default 15: the smoke in the test
//! command); `scripts/soak.sh MINUTES` runs it long, on a release build. Any
//! failed call, lost or duplicated message or unexpected reload answer fails
//! it; from 60 s on, so does an RSS or descriptor ratio above 1.1.

mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Served;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

/// What every worker counts.
#[derive(Default)]
struct Tally {
    http_calls: AtomicU64,
    http_failed: AtomicU64,
    ws_calls: AtomicU64,
    ws_failed: AtomicU64,
    messages: AtomicU64,
    messages_failed: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    reloads_ok: AtomicU64,
    refused_as_meant: AtomicU64,
    unexpected: AtomicU64,
    /// The first few problems, word for word.
    problems: Mutex<Vec<String>>,
}

impl Tally {
    fn problem(&self, what: String) {
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < 10 {
            problems.push(what);
        }
    }
}

/// The node's resident memory (KiB) and open descriptors.
fn resources(pid: i32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    (rss, fds)
}

fn rpc(agent: &ureq::Agent, url: &str, token: &str, method: &str, params: Value) -> Result<Value, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let mut response = agent
        .post(url)
        .header("authorization", &format!("Bearer {token}"))
        .send(body.to_string())
        .map_err(|err| err.to_string())?;
    let text = response.body_mut().read_to_string().map_err(|err| err.to_string())?;
    serde_json::from_str(&text).map_err(|err| format!("{err}: {text}"))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into()
}

fn extension_wat(build: u64) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 4096)
  (data (i32.const 0) "{{\"build\":{build}}}")
  (func (export "get") (param i32 i32) (result i64) i64.const 11)
  (func (export "zest_vsn") (result i64) i64.const 0x0000020000000001)
  (data (i32.const 512) "{build}"))"#
    )
}

#[test]
fn a_node_under_calls_messages_and_a_reload_every_50_ms_fails_nothing_and_does_not_grow() {
    let seconds: u64 = std::env::var("ZEST_SOAK_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    let node = Served::start(&[], |dir| {
        std::fs::create_dir_all(dir.join("extensions")).unwrap();
        std::fs::write(dir.join("extensions/ext.wat"), extension_wat(0)).unwrap();
    });
    let dir = node.dir.clone();
    let (url, token, pid) = (node.url.clone(), node.token.clone(), node.pid());
    let loaded = node.reload(json!({"scope": "extension", "path": "extensions/ext.wat"}));
    assert_eq!(loaded["status"], "ok", "{loaded}");
    let start_count = node.rpc("process.call", json!({"process": "counter", "message": "get"}))["result"]["count"]
        .as_u64()
        .expect("the demo counter answers");

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (url, token, tally, stop) = (url.clone(), token.clone(), tally.clone(), stop.clone());
        workers.push(std::thread::spawn(move || http_caller(&url, &token, &tally, &stop)));
    }
    {
        let (url, token, tally, stop) = (url.clone(), token.clone(), tally.clone(), stop.clone());
        workers.push(std::thread::spawn(move || ws_caller(&url, &token, &tally, &stop)));
    }
    let messenger = {
        let (url, token, tally, stop) = (url.clone(), token.clone(), tally.clone(), stop.clone());
        std::thread::spawn(move || messenger(&url, &token, start_count, &tally, &stop))
    };
    {
        let (url, token, tally, stop, dir) = (url.clone(), token.clone(), tally.clone(), stop.clone(), dir.clone());
        workers.push(std::thread::spawn(move || reloader(&url, &token, &dir, &tally, &stop)));
    }

    // Resources are read after a warm-up, then at the end. Pools, caches and
    // the allocator's arenas fill first, and the history, which takes about
    // 135 s to reach its 2,000 entries at this rate (15 commits a second): a
    // quarter of the run, at most 3 minutes.
    let started = Instant::now();
    let warm_up = Duration::from_secs(seconds).mul_f64(0.25).min(Duration::from_secs(180));
    // An early reading too, to show how much the warm-up took.
    let early_at = warm_up.min(Duration::from_secs(30));
    std::thread::sleep(early_at);
    let rss_early = resources(pid).0;
    std::thread::sleep(warm_up - early_at);
    let (rss_start, fds_start) = resources(pid);
    // Nine more readings, evenly spread, to show a trend (or a plateau).
    let mut series = vec![rss_start];
    let rest = Duration::from_secs(seconds).saturating_sub(started.elapsed());
    for _ in 0..9 {
        std::thread::sleep(rest / 9);
        series.push(resources(pid).0);
    }
    let (rss_end, fds_end) = resources(pid);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let acknowledged = messenger.join().unwrap();
    let final_count = node.rpc("process.call", json!({"process": "counter", "message": "get"}))["result"]["count"]
        .as_u64()
        .unwrap_or(0);
    let elapsed = started.elapsed();

    let t = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let (rss_ratio, fds_ratio) = (rss_end as f64 / rss_start as f64, fds_end as f64 / fds_start as f64);
    let reloads = t(&tally.reloads_ok) + t(&tally.refused_as_meant) + t(&tally.unexpected);
    println!("soak: {:.1} s against zest pid {pid}", elapsed.as_secs_f64());
    println!(
        "calls: {} over HTTP ({} failed), {} over WebSocket ({} failed)",
        t(&tally.http_calls),
        t(&tally.http_failed),
        t(&tally.ws_calls),
        t(&tally.ws_failed)
    );
    println!(
        "process messages: {} answered ({} failed), lost {}, duplicated {}; count {} → {} ({} added)",
        t(&tally.messages),
        t(&tally.messages_failed),
        t(&tally.lost),
        t(&tally.duplicated),
        start_count,
        final_count,
        acknowledged
    );
    println!(
        "reloads: {reloads} ({:.1}/s): {} ok, {} failing builds refused, {} unexpected",
        reloads as f64 / elapsed.as_secs_f64(),
        t(&tally.reloads_ok),
        t(&tally.refused_as_meant),
        t(&tally.unexpected)
    );
    println!(
        "rss: {:.1} MiB after {:.0} s, {:.1} MiB after the warm-up of {:.0} s → {:.1} MiB at the end ({rss_ratio:.2}×); open fds: {fds_start} → {fds_end} ({fds_ratio:.2}×)",
        rss_early as f64 / 1024.0,
        early_at.as_secs_f64(),
        rss_start as f64 / 1024.0,
        warm_up.as_secs_f64(),
        rss_end as f64 / 1024.0
    );
    let series: Vec<String> = series.iter().map(|kib| format!("{:.1}", *kib as f64 / 1024.0)).collect();
    println!("rss over the run (MiB): {}", series.join(" "));
    let problems = tally.problems.lock().unwrap().join("\n  ");
    assert_eq!(t(&tally.http_failed) + t(&tally.ws_failed), 0, "failed calls:\n  {problems}");
    assert_eq!(t(&tally.messages_failed) + t(&tally.lost) + t(&tally.duplicated), 0, "messages:\n  {problems}");
    assert_eq!(final_count, start_count + acknowledged, "the count is every acknowledged message, once");
    assert_eq!(t(&tally.unexpected), 0, "unexpected reload answers:\n  {problems}");
    assert!(t(&tally.http_calls) > 0 && t(&tally.ws_calls) > 0 && t(&tally.messages) > 0, "every worker ran");
    assert!(t(&tally.reloads_ok) > 0 && t(&tally.refused_as_meant) > 0, "reloads of both kinds ran");
    if seconds >= 60 {
        assert!(rss_ratio <= 1.1, "RSS grew {rss_ratio:.2}×");
        assert!(fds_ratio <= 1.1, "open descriptors grew {fds_ratio:.2}×");
    }
}

fn http_caller(url: &str, token: &str, tally: &Tally, stop: &AtomicBool) {
    let agent = agent();
    while !stop.load(Ordering::Relaxed) {
        let answer = rpc(&agent, url, token, "module.call", json!({"module": "front", "function": "time"}));
        tally.http_calls.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok(answer) if answer["result"]["now_ms"].is_i64() => {}
            other => {
                tally.http_failed.fetch_add(1, Ordering::Relaxed);
                tally.problem(format!("HTTP front.time: {other:?}"));
            }
        }
    }
}

fn ws_caller(url: &str, token: &str, tally: &Tally, stop: &AtomicBool) {
    let mut request = url.replace("http://", "ws://").into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tungstenite::connect(request).expect("a WebSocket");
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = ws.get_ref() {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let mut id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": "module.call",
                             "params": {"module": "clock", "function": "now"}});
        tally.ws_calls.fetch_add(1, Ordering::Relaxed);
        let answer = ws.send(Message::text(request.to_string())).map_err(|err| err.to_string()).and_then(|()| {
            read_text(&mut ws).and_then(|text| serde_json::from_str::<Value>(&text).map_err(|err| err.to_string()))
        });
        match answer {
            Ok(answer) if answer["id"] == id && answer["result"]["now_ms"].is_i64() => {}
            other => {
                tally.ws_failed.fetch_add(1, Ordering::Relaxed);
                tally.problem(format!("WebSocket clock.now: {other:?}"));
            }
        }
    }
    let _ = ws.close(None);
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn read_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.read().map_err(|err| err.to_string())? {
            Message::Text(text) => return Ok(text.to_string()),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return Err(format!("unexpected frame {other:?}")),
        }
    }
}

/// Adds 1 to the counter, one message at a time: each reply must be the
/// count before plus one (a lost message shows as no change, a duplicate as
/// two). Returns the messages acknowledged.
fn messenger(url: &str, token: &str, start: u64, tally: &Tally, stop: &AtomicBool) -> u64 {
    let agent = agent();
    let (mut expected, mut acknowledged) = (start, 0);
    while !stop.load(Ordering::Relaxed) {
        let answer = rpc(&agent, url, token, "process.call", json!({"process": "counter", "message": {"add": 1}}));
        match answer.as_ref().ok().and_then(|a| a["result"]["count"].as_u64()) {
            Some(count) => {
                tally.messages.fetch_add(1, Ordering::Relaxed);
                acknowledged += 1;
                expected += 1;
                if count < expected {
                    tally.lost.fetch_add(expected - count, Ordering::Relaxed);
                    tally.problem(format!("the count is {count} after message {acknowledged}; {expected} expected"));
                } else if count > expected {
                    tally.duplicated.fetch_add(count - expected, Ordering::Relaxed);
                    tally.problem(format!("the count is {count} after message {acknowledged}; {expected} expected"));
                }
                expected = count;
            }
            None => {
                tally.messages_failed.fetch_add(1, Ordering::Relaxed);
                tally.problem(format!("process.call counter: {answer:?}"));
            }
        }
    }
    acknowledged
}

/// A reload every 50 ms, in turn: a new clock build, a new counter build (its
/// process's state migrates), a clock that does not compile (refused; the old
/// one keeps serving), a new extension build.
fn reloader(url: &str, token: &str, dir: &Path, tally: &Tally, stop: &AtomicBool) {
    let agent = agent();
    let demo: PathBuf = dir.join(".zest/demo");
    let clock = demo.join("clock.wat");
    let good_clock = std::fs::read_to_string(&clock).unwrap();
    let mut next = Instant::now();
    for turn in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        next += Duration::from_millis(50);
        let (params, meant_to_fail) = match turn % 4 {
            0 => {
                std::fs::write(&clock, &good_clock).unwrap();
                support::set_data(&clock, 512, if turn % 8 == 0 { "1.0.1" } else { "1.0.0" });
                (json!({"scope": "module", "module": "clock"}), false)
            }
            1 => {
                support::set_data(&demo.join("counter.wat"), 0, if turn % 8 == 1 { "2" } else { "1" });
                (json!({"scope": "module", "module": "counter"}), false)
            }
            2 => {
                std::fs::write(&clock, good_clock.replace("(module", "(module (func $broken")).unwrap();
                (json!({"scope": "module", "module": "clock"}), true)
            }
            _ => {
                std::fs::write(dir.join("extensions/ext.wat"), extension_wat(turn / 4 % 2)).unwrap();
                (json!({"scope": "extension", "path": "extensions/ext.wat"}), false)
            }
        };
        let answer = rpc(&agent, url, token, "system.reload", params.clone());
        let status = answer.as_ref().ok().and_then(|a| a["result"]["status"].as_str().map(str::to_string));
        match (status.as_deref(), meant_to_fail) {
            (Some("ok"), false) => tally.reloads_ok.fetch_add(1, Ordering::Relaxed),
            (Some("error"), true) => tally.refused_as_meant.fetch_add(1, Ordering::Relaxed),
            _ => {
                tally.problem(format!("reload {params}: {answer:?}"));
                tally.unexpected.fetch_add(1, Ordering::Relaxed)
            }
        };
        if turn % 4 == 2 {
            std::fs::write(&clock, &good_clock).unwrap();
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}
