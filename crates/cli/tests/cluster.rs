//! A cluster (CONTRACT.md §10) of real `zest serve` members on one machine,
//! coordinated through a real etcd started by the test on free ports: one
//! reload reaches every member or none, a member that stops answering aborts
//! it, a restarted member catches up whatever its files say, the lock of a
//! killed holder frees, etcd can go away and come back (and, as three members,
//! lose its leader mid-stream), a lock whose release failed is released once
//! etcd answers, atomic holds across
//! members, and calls never fail while reloads run.
//!
//! The tests run one at a time (they time leases and deadlines, which two
//! cores shared by many processes would blur).

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::{eventually, module_vsn, Fleet, Served};

const LEASE_TTL: Duration = support::LEASE_TTL;
const PREPARE_TIMEOUT: Duration = support::PREPARE_TIMEOUT;
const ADMIN: &str = support::ADMIN;
const READER: &str = support::READER;
const PEER: &str = support::PEER;

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn node_targets(result: &Value) -> Vec<String> {
    result["results"].as_array().unwrap().iter().map(|r| r["target"].as_str().unwrap().to_string()).collect()
}

fn reasons(result: &Value) -> Vec<(String, String)> {
    result["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["target"].as_str().unwrap().to_string(), e["reason"].as_str().unwrap().to_string()))
        .collect()
}

fn members_of(status: &Value) -> Vec<String> {
    status["cluster"]["members"].as_array().unwrap().iter().map(|m| m["node"].as_str().unwrap().to_string()).collect()
}

fn error_code(response: &Value) -> &str {
    response["error"]["data"]["code"].as_str().unwrap_or_else(|| panic!("not an error: {response}"))
}

#[test]
fn one_reload_reaches_every_member_through_prepare_and_commit() {
    let _serial = one_at_a_time();
    let fleet = Fleet::start(&["a", "b", "c"]);
    let a = fleet.member("a");
    let status = a.status();
    assert_eq!(status["cluster"]["name"], fleet.name.as_str());
    assert_eq!((status["cluster"]["node"].as_str(), status["cluster"]["available"].as_bool()), (Some("a"), Some(true)));
    assert_eq!(members_of(&status), ["a", "b", "c"]);

    // The events of the coordinator, over its WebSocket subscription.
    let mut events = Subscription::open(a);
    fleet.set_clock("a", "1.0.1");
    let result = a.reload(json!({"scope": "module", "module": "clock"}));
    assert_eq!((result["status"].as_str(), result["kind"].as_str()), (Some("ok"), Some("module")), "{result}");
    assert_eq!(result["reloaded"], json!(["clock"]), "each module once, however many members reloaded it");
    assert_eq!(node_targets(&result), ["a", "b", "c"]);
    for child in result["results"].as_array().unwrap() {
        assert_eq!((child["kind"].as_str(), child["status"].as_str()), (Some("node"), Some("ok")), "{child}");
        assert_eq!(child["reloaded"], json!(["clock"]));
    }
    let cluster = &result["metadata"]["cluster"];
    assert_eq!((cluster["phase"].as_str(), &cluster["nodes"]), (Some("committed"), &json!(["a", "b", "c"])));
    let revision = cluster["revision"].as_i64().unwrap();
    for id in ["a", "b", "c"] {
        let status = fleet.member(id).status();
        assert_eq!(module_vsn(&status, "clock"), "1.0.1", "member {id}");
        assert_eq!(status["cluster"]["revision"], revision, "member {id} shows the commit it applied");
    }
    let names = events.until("zest.cluster.commit");
    assert!(names.contains(&"zest.cluster.prepare".to_string()), "{names:?}");
    let (_, metrics) = a.get("/metrics", Some(READER));
    assert!(metrics.contains("zest_cluster_prepares_total{role=\"coordinator\"} 1"), "{metrics}");
    assert!(metrics.contains("zest_cluster_commits_total{role=\"coordinator\"} 1"), "{metrics}");
    assert!(
        metrics.contains("zest_reload_duration_seconds_bucket{kind=\"module\",role=\"coordinator\",le=\"0.005\"}"),
        "{metrics}"
    );
    // Each target counts its part too.
    let (_, metrics) = fleet.member("b").get("/metrics", Some(READER));
    assert!(metrics.contains("zest_cluster_prepares_total{role=\"member\"} 1"), "{metrics}");
    assert!(metrics.contains("zest_cluster_commits_total{role=\"member\"} 1"), "{metrics}");
    assert!(metrics.contains("zest_reloads_total{kind=\"module\",status=\"ok\",role=\"member\"} 1"), "{metrics}");

    // Listed members only: a canary on b.
    fleet.set_clock("a", "1.0.2");
    let canary = a.reload(json!({"scope": "module", "module": "clock", "nodes": ["b"]}));
    assert_eq!((canary["status"].as_str(), node_targets(&canary)), (Some("ok"), vec!["b".to_string()]), "{canary}");
    assert_eq!(
        [fleet.vsn("a", "clock"), fleet.vsn("b", "clock"), fleet.vsn("c", "clock")],
        ["1.0.1", "1.0.2", "1.0.1"]
    );
    let b_revision = fleet.member("b").status()["cluster"]["revision"].as_i64().unwrap();
    assert!(b_revision > revision);
    assert_eq!(a.status()["cluster"]["revision"], revision, "a was not part of it");

    // This member only: never recorded, and status says it diverged.
    let c = fleet.member("c");
    fleet.set_clock("c", "9.9.9");
    let local = c.reload(json!({"scope": "module", "module": "clock", "nodes": "local"}));
    assert_eq!((local["status"].as_str(), node_targets(&local)), (Some("ok"), vec!["c".to_string()]), "{local}");
    assert_eq!([fleet.vsn("a", "clock"), fleet.vsn("c", "clock")], ["1.0.1", "9.9.9"]);
    assert_eq!(c.status()["cluster"]["diverged"], true);

    // Bad `nodes`.
    let unknown = a.rpc("system.reload", json!({"scope": "module", "module": "clock", "nodes": ["b", "zz"]}));
    assert_eq!(error_code(&unknown), "INVALID_PARAMS");
    assert!(unknown["error"]["message"].as_str().unwrap().contains("`zz` is not a member"), "{unknown}");
    let empty = a.rpc("system.reload", json!({"scope": "module", "module": "clock", "nodes": []}));
    assert_eq!(error_code(&empty), "INVALID_PARAMS");

    // Builds by sha256, for tokens with the cluster (or admin) scope only.
    let sha = a.status()["modules"].as_array().unwrap().iter().find(|m| m["name"] == "clock").unwrap()["current"]
        ["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, bytes) = a.get_bytes(&format!("/artifacts/{sha}"), Some(PEER));
    assert_eq!(code, 200);
    assert_eq!(hex(&Sha256::digest(&bytes)), sha, "the bytes are the build");
    assert_eq!(a.get_bytes(&format!("/artifacts/{sha}"), None).0, 401);
    assert_eq!(a.get_bytes(&format!("/artifacts/{sha}"), Some(READER)).0, 403);
    assert_eq!(a.get_bytes(&format!("/artifacts/{sha}"), Some(ADMIN)).0, 200);
    assert_eq!(a.get_bytes(&format!("/artifacts/{}", "0".repeat(64)), Some(PEER)).0, 404);
    // The cluster token reaches nothing else.
    assert_eq!(error_code(&a.rpc_as(Some(PEER), "system.status", json!(null))), "FORBIDDEN");
    assert_eq!(error_code(&a.rpc_as(Some(PEER), "system.reload", json!({}))), "FORBIDDEN");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `system.subscribe_events` subscription over WebSocket.
struct Subscription {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
}

impl Subscription {
    fn open(node: &Served) -> Subscription {
        let url = node.url.replace("http://", "ws://");
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
        let (mut ws, _) = tungstenite::connect(request).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = ws.get_ref() {
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        let subscribe = json!({"jsonrpc": "2.0", "id": 1, "method": "system.subscribe_events"});
        ws.send(tungstenite::Message::text(subscribe.to_string())).unwrap();
        let answer: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
        assert!(answer.get("result").is_some(), "{answer}");
        Subscription { ws }
    }

    /// Event names, up to and including the first `name`.
    fn until(&mut self, name: &str) -> Vec<String> {
        let mut names = Vec::new();
        loop {
            let message: Value = serde_json::from_str(self.ws.read().unwrap().to_text().unwrap()).unwrap();
            if let Some(event) = message["params"]["result"]["event"].as_str() {
                names.push(event.to_string());
                if event == name {
                    return names;
                }
            }
        }
    }
}

#[test]
fn a_member_that_stops_answering_aborts_the_reload_on_every_member() {
    let _serial = one_at_a_time();
    let fleet = Fleet::start(&["a", "b", "c"]);
    let b = fleet.member("b");
    b.signal(libc::SIGSTOP);
    fleet.set_clock("a", "1.0.1");
    let started = Instant::now();
    let result = fleet.member("a").reload(json!({"scope": "module", "module": "clock"}));
    assert!(started.elapsed() < PREPARE_TIMEOUT + Duration::from_secs(3), "{:?}", started.elapsed());
    b.signal(libc::SIGCONT);
    assert_eq!(result["status"], "error", "{result}");
    assert_eq!(result["metadata"]["cluster"]["phase"], "aborted");
    let errors = reasons(&result);
    assert!(errors.contains(&("b".into(), "node_unreachable".into())), "{errors:?}");
    assert!(
        errors.contains(&("clock".into(), "rolled_back".into())),
        "prepared members dropped their build: {errors:?}"
    );
    for id in ["a", "b", "c"] {
        assert_eq!(fleet.vsn(id, "clock"), "1.0.0", "member {id} swapped nothing");
    }
    let (_, metrics) = fleet.member("a").get("/metrics", Some(READER));
    let aborted = "zest_cluster_aborts_total{reason=\"node_unreachable\",role=\"coordinator\"} 1";
    assert!(metrics.contains(aborted), "{metrics}");
    // Nothing was left holding a lock or a process: the next reload runs.
    let again = fleet.member("a").reload(json!({"scope": "module", "module": "clock", "lock_timeout_ms": 10000}));
    assert_eq!(again["status"], "ok", "{again}");
    for id in ["a", "b", "c"] {
        assert_eq!(fleet.vsn(id, "clock"), "1.0.1", "member {id}");
    }
}

#[test]
fn a_restarted_member_serves_what_the_cluster_committed_whatever_its_files_say() {
    let _serial = one_at_a_time();
    let mut fleet = Fleet::start(&["a", "b", "c"]);
    fleet.take("b").kill();
    let killed = Instant::now();
    let gone = eventually(Duration::from_secs(10), || {
        (members_of(&fleet.member("a").status()) == ["a", "c"]).then(|| killed.elapsed())
    });
    let gone = gone.expect("b leaves the member list");
    assert!(gone <= LEASE_TTL + Duration::from_secs(1) + Duration::from_millis(300), "b left after {gone:?}");

    fleet.set_clock("a", "2.0.0");
    let result = fleet.member("a").reload(json!({"scope": "module", "module": "clock"}));
    // b is known (it never stopped cleanly) but not live: reported, not left out.
    assert_eq!((result["status"].as_str(), node_targets(&result)), (Some("partial"), vec!["a".into(), "c".into()]));
    assert_eq!(result["skipped"], json!([{"target": "b", "reason": "node_unreachable"}]), "{result}");
    let revision = result["metadata"]["cluster"]["revision"].as_i64().unwrap();

    // b's own files still say 1.0.0.
    fleet.spawn("b", &[]);
    let restarted = Instant::now();
    let caught_up = eventually(Duration::from_secs(10), || {
        let status = fleet.member("b").status();
        (module_vsn(&status, "clock") == "2.0.0" && status["cluster"]["revision"] == revision).then_some(())
    });
    assert!(caught_up.is_some(), "b did not catch up: {}", fleet.member("b").status());
    assert!(restarted.elapsed() < Duration::from_secs(10));
    let source =
        fleet.member("b").status()["modules"].as_array().unwrap().iter().find(|m| m["name"] == "clock").unwrap()
            ["current"]["source"]
            .clone();
    assert_eq!(source, fleet.member_dir("a").join("app/clock.wat").display().to_string(), "a's build, fetched");
}

#[test]
fn the_lock_of_a_killed_holder_frees_within_its_lease_and_a_stalled_holder_cannot_commit() {
    let _serial = one_at_a_time();
    let mut fleet = Fleet::start(&["a", "b", "c"]);
    // a builds for a long time under the lock.
    let manifest = fleet.member_dir("a").join("app/zest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("name = \"demo\"", "name = \"demo\"\nbuild = \"sleep 30\"")).unwrap();
    let url = fleet.member("a").url.clone();
    let builder = std::thread::spawn(move || {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "system.reload",
                          "params": {"scope": "app", "app": "demo", "compile": true}});
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(60))).build().into();
        agent.post(&url).header("authorization", &format!("Bearer {ADMIN}")).send(body.to_string()).is_ok()
    });
    std::thread::sleep(Duration::from_millis(700));
    let busy = fleet.member("b").rpc("system.reload", json!({"scope": "module", "module": "clock"}));
    assert_eq!(error_code(&busy), "CONFLICT", "a holds the lock: {busy}");
    fleet.take("a").kill();
    let killed = Instant::now();
    let result = fleet.member("b").reload(json!({"scope": "module", "module": "clock", "lock_timeout_ms": 15000}));
    let waited = killed.elapsed();
    assert_eq!(result["status"], "partial", "{result}");
    assert_eq!(node_targets(&result), ["b", "c"], "a left with its lease");
    assert_eq!(result["skipped"], json!([{"target": "a", "reason": "node_unreachable"}]), "{result}");
    assert!(
        waited <= LEASE_TTL + Duration::from_secs(1) + Duration::from_millis(700),
        "the lock freed after {waited:?}"
    );
    assert!(!builder.join().unwrap(), "a's request died with it");

    // A holder that stalls past its lease (SIGSTOP mid-build) finds its lock
    // gone when it comes back, and commits nothing.
    let manifest = fleet.member_dir("b").join("app/zest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("name = \"demo\"", "name = \"demo\"\nbuild = \"sleep 1.5\"")).unwrap();
    fleet.set_clock("b", "3.0.0");
    let url = fleet.member("b").url.clone();
    let stalled = std::thread::spawn(move || {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "system.reload",
                          "params": {"scope": "app", "app": "demo", "compile": true}});
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(60))).build().into();
        let mut response =
            agent.post(&url).header("authorization", &format!("Bearer {ADMIN}")).send(body.to_string()).unwrap();
        serde_json::from_str::<Value>(&response.body_mut().read_to_string().unwrap()).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let b = fleet.member("b");
    b.signal(libc::SIGSTOP);
    std::thread::sleep(LEASE_TTL + Duration::from_millis(2500));
    b.signal(libc::SIGCONT);
    let response = stalled.join().unwrap();
    let result = &response["result"];
    let errors = reasons(result);
    assert!(errors.iter().any(|(_, reason)| reason == "lease_lost"), "{response}");
    assert_eq!(result["metadata"]["cluster"]["phase"], "aborted");
    assert_eq!(fleet.vsn("c", "clock"), "1.0.0", "nothing was committed");
}

#[test]
fn with_etcd_gone_reloads_answer_cluster_unavailable_calls_go_on_and_members_rejoin() {
    let _serial = one_at_a_time();
    let mut fleet = Fleet::start(&["a", "b"]);
    fleet.etcd.stop();
    let a = fleet.member("a");
    let started = Instant::now();
    let result = a.reload(json!({"scope": "module", "module": "clock", "force": true}));
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    assert_eq!(reasons(&result), [("clock".to_string(), "cluster_unavailable".to_string())], "{result}");
    let call = a.rpc("module.call", json!({"module": "front", "function": "time"}));
    assert!(call["result"]["now_ms"].is_i64(), "calls are served: {call}");
    let down = eventually(Duration::from_secs(8), || (a.status()["cluster"]["available"] == false).then_some(()));
    assert!(down.is_some(), "status says etcd is unreachable: {}", a.status());

    fleet.etcd.resume();
    let up = eventually(Duration::from_secs(15), || {
        let (a, b) = (fleet.member("a").status(), fleet.member("b").status());
        (a["cluster"]["available"] == true && members_of(&a) == ["a", "b"] && b["cluster"]["available"] == true)
            .then_some(())
    });
    assert!(up.is_some(), "members rejoin: {}", fleet.member("a").status());
    fleet.set_clock("a", "1.2.3");
    let result = fleet.member("a").reload(json!({"scope": "module", "module": "clock", "lock_timeout_ms": 5000}));
    assert_eq!((result["status"].as_str(), node_targets(&result)), (Some("ok"), vec!["a".into(), "b".into()]));
}

#[test]
fn a_second_member_with_an_id_already_alive_refuses_to_start() {
    let _serial = one_at_a_time();
    let fleet = Fleet::start(&["a"]);
    // Another directory (another member instance) claiming id `a`.
    let twin = fleet.dir.path().join("twin");
    std::fs::create_dir_all(&twin).unwrap();
    std::fs::copy(fleet.member_dir("a").join("node.toml"), twin.join("node.toml")).unwrap();
    copy_dir(&fleet.member_dir("a").join("app"), &twin.join("app"));
    let refused = Served::try_spawn(twin, None, &["serve", "--config", "node.toml"], "", &[]);
    let refused = refused.err().expect("the twin must not start");
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("a member with id `a` is already alive"), "{}", refused.stderr);
    assert_eq!(members_of(&fleet.member("a").status()), ["a"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn calls_never_fail_on_any_member_while_ten_cluster_reloads_run() {
    let _serial = one_at_a_time();
    let fleet = Fleet::start(&["a", "b", "c"]);
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            let (url, stop) = (fleet.member(id).url.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let agent: ureq::Agent =
                    ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
                let body = json!({"jsonrpc": "2.0", "id": 1, "method": "module.call",
                                  "params": {"module": "front", "function": "time"}})
                .to_string();
                let (mut calls, mut failed) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let answer = agent
                        .post(&url)
                        .header("authorization", &format!("Bearer {ADMIN}"))
                        .send(body.as_str())
                        .map_err(|err| err.to_string())
                        .and_then(|mut r| r.body_mut().read_to_string().map_err(|err| err.to_string()));
                    calls += 1;
                    match answer.map(|text| serde_json::from_str::<Value>(&text)) {
                        Ok(Ok(value)) if value["result"]["now_ms"].is_i64() => {}
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (calls, failed)
            })
        })
        .collect();
    for round in 0..10 {
        fleet.set_clock("a", if round % 2 == 0 { "1.0.1" } else { "1.0.2" });
        let result = fleet.member("a").reload(json!({"scope": "module", "module": "clock", "lock_timeout_ms": 5000}));
        assert_eq!(result["status"], "ok", "round {round}: {result}");
        assert_eq!(node_targets(&result), ["a", "b", "c"]);
    }
    stop.store(true, Ordering::Relaxed);
    for (caller, id) in callers.into_iter().zip(["a", "b", "c"]) {
        let (calls, failed) = caller.join().unwrap();
        assert!(calls > 20, "member {id} was called {calls} times");
        assert!(failed.is_empty(), "member {id}: {} of {calls} calls failed: {:?}", failed.len(), &failed[..1]);
    }
    for id in ["a", "b", "c"] {
        assert_eq!(fleet.vsn(id, "clock"), "1.0.2");
    }
}

#[test]
fn a_coordinator_killed_after_its_commit_cannot_stop_the_others_and_one_killed_before_changes_nothing() {
    let _serial = one_at_a_time();
    // Killed after the commit: the others apply it on their own.
    let mut fleet = Fleet::start(&["a", "b", "c"]);
    fleet.take("a").kill();
    kill_coordinator_paused(&mut fleet, "after-commit:20000", "4.0.0");
    let applied = eventually(Duration::from_secs(12), || {
        (fleet.vsn("b", "clock") == "4.0.0" && fleet.vsn("c", "clock") == "4.0.0").then_some(())
    });
    assert!(applied.is_some(), "b and c apply the commit: b {} c {}", fleet.vsn("b", "clock"), fleet.vsn("c", "clock"));

    // Killed before the commit: nothing applies, and the members are free again.
    kill_coordinator_paused(&mut fleet, "before-commit:20000", "5.0.0");
    std::thread::sleep(PREPARE_TIMEOUT + LEASE_TTL + Duration::from_secs(1));
    assert_eq!([fleet.vsn("b", "clock"), fleet.vsn("c", "clock")], ["4.0.0", "4.0.0"], "nothing of 5.0.0 applied");
    let result = fleet
        .member("b")
        .reload(json!({"scope": "module", "module": "clock", "force": true, "lock_timeout_ms": 10000}));
    assert_eq!(result["metadata"]["cluster"]["phase"], "committed", "b's node lock was released: {result}");
    assert_eq!(result["skipped"], json!([{"target": "a", "reason": "node_unreachable"}]), "a was killed: {result}");
}

/// Plans a coordinator killed before its commit left on the others would
/// hold their nodes until their deadline (a minute here); the next reload does
/// not wait for it: its fencing token proves the old lock gone, so each
/// member decides the old plan by etcd at once (not committed: dropped).
#[test]
fn the_next_reload_decides_the_plans_of_a_coordinator_killed_before_its_commit_at_once() {
    let _serial = one_at_a_time();
    let mut fleet = Fleet::start_with(&["a", "b", "c"], support::demo_app(), Duration::from_secs(60), &[]);
    fleet.take("a").kill();
    // b and c prepare 5.0.0 and wait for a, which pauses before its commit.
    kill_coordinator_paused(&mut fleet, "before-commit:60000", "5.0.0");

    fleet.set_clock("b", "6.0.0");
    let started = Instant::now();
    let result = fleet.member("b").reload(json!({"scope": "module", "module": "clock", "lock_timeout_ms": 10000}));
    let took = started.elapsed();
    assert_eq!(result["metadata"]["cluster"]["phase"], "committed", "{result}");
    assert!(took < Duration::from_secs(15), "the reload waited {took:?}: for the old plans' deadline?");
    assert_eq!([fleet.vsn("b", "clock"), fleet.vsn("c", "clock")], ["6.0.0", "6.0.0"], "{result}");
}

/// Starts member `a` (stopped) with `ZEST_CLUSTER_PAUSE=pause`, has it
/// coordinate a reload of clock `vsn`, and kills it 1.5 s into the request,
/// while it pauses.
fn kill_coordinator_paused(fleet: &mut Fleet, pause: &str, vsn: &str) {
    fleet.spawn("a", &[("ZEST_CLUSTER_PAUSE", pause)]);
    fleet.set_clock("a", vsn);
    let url = fleet.member("a").url.clone();
    let request = std::thread::spawn(move || send_reload(&url, json!({"scope": "module", "module": "clock"})));
    std::thread::sleep(Duration::from_millis(1500));
    fleet.take("a").kill();
    let _ = request.join();
}

fn send_reload(url: &str, params: Value) -> Option<Value> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "system.reload", "params": params});
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(60))).build().into();
    let mut response =
        agent.post(url).header("authorization", &format!("Bearer {ADMIN}")).send(body.to_string()).ok()?;
    serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
}

#[test]
fn atomic_holds_across_members_a_migration_failing_on_one_undoes_every_member() {
    let _serial = one_at_a_time();
    let fleet = Fleet::start(&["a", "b", "c"]);
    // b's counter holds more than the new version can take.
    let b = fleet.member("b");
    let count = b.rpc("process.call", json!({"process": "counter", "message": {"add": 500}}));
    assert_eq!(count["result"], json!({"count": 500}));
    let counter = fleet.member_dir("a").join("app/counter.wat");
    let wat = std::fs::read_to_string(&counter).unwrap();
    let refusing = wat.replace(r#"(data (i32.const 0) "1")"#, r#"(data (i32.const 0) "2")"#).replace(
        "(global.set $count (call $after (local.get $ptr) (local.get $len) (i32.const 16) (i32.const 7)))",
        "(global.set $count (call $after (local.get $ptr) (local.get $len) (i32.const 16) (i32.const 7)))
    (if (i64.gt_s (global.get $count) (i64.const 100)) (then unreachable))",
    );
    assert_ne!(refusing, wat, "the counter's code_change moved; update the test");
    std::fs::write(&counter, refusing).unwrap();
    fleet.set_clock("a", "1.0.1");

    let result = fleet.member("a").reload(json!({"scope": "app", "app": "demo", "atomic": true}));
    assert_eq!(result["status"], "error", "{result}");
    assert_eq!(result["metadata"]["cluster"]["phase"], "aborted", "{result}");
    let errors = reasons(&result);
    assert!(errors.contains(&("process:counter".into(), "code_change_failed".into())), "{errors:?}");
    assert!(errors.iter().filter(|(_, reason)| reason == "rolled_back").count() >= 3, "{errors:?}");
    for id in ["a", "b", "c"] {
        let status = fleet.member(id).status();
        assert_eq!(
            (module_vsn(&status, "clock"), module_vsn(&status, "counter")),
            ("1.0.0".into(), "1".into()),
            "{id}"
        );
    }
    let kept = fleet.member("b").rpc("process.call", json!({"process": "counter", "message": "get"}));
    assert_eq!(kept["result"], json!({"count": 500}), "b's counter kept its state on its old version");

    // Without atomic, the members that can migrate do, and b reports why it could not.
    let result = fleet.member("a").reload(json!({"scope": "app", "app": "demo"}));
    assert_eq!(result["metadata"]["cluster"]["phase"], "committed", "{result}");
    assert!(reasons(&result).contains(&("process:counter".into(), "code_change_failed".into())));
    assert_eq!([fleet.vsn("a", "counter"), fleet.vsn("c", "counter")], ["2", "2"]);
}

#[test]
fn a_members_override_survives_its_restart_until_a_reload_for_everyone_replaces_it() {
    let _serial = one_at_a_time();
    let mut fleet = Fleet::start(&["a", "b"]);
    fleet.set_clock("a", "1.0.2");
    let canary = fleet.member("a").reload(json!({"scope": "module", "module": "clock", "nodes": ["b"]}));
    assert_eq!(canary["status"], "ok", "{canary}");
    let restart = |fleet: &mut Fleet, expected: &str| {
        fleet.take("b").kill();
        std::thread::sleep(LEASE_TTL + Duration::from_millis(500));
        fleet.spawn("b", &[]);
        let seen = eventually(Duration::from_secs(10), || (fleet.vsn("b", "clock") == expected).then_some(()));
        assert!(seen.is_some(), "b serves {} after its restart, not {expected}", fleet.vsn("b", "clock"));
    };
    // b's own files say 1.0.0; the cluster committed 1.0.2 for b alone.
    restart(&mut fleet, "1.0.2");
    assert_eq!(fleet.vsn("a", "clock"), "1.0.0");

    fleet.set_clock("a", "1.0.3");
    let all = fleet.member("a").reload(json!({"scope": "module", "module": "clock", "lock_timeout_ms": 5000}));
    assert_eq!(all["status"], "ok", "{all}");
    restart(&mut fleet, "1.0.3");
    assert_eq!(fleet.vsn("a", "clock"), "1.0.3");
}

#[test]
fn an_extension_and_scope_all_with_a_code_change_target_reach_every_member() {
    let _serial = one_at_a_time();
    let fleet = Fleet::start(&["a", "b", "c"]);
    let extension = fleet.member_dir("a").join("extensions/shout.wat");
    std::fs::create_dir_all(extension.parent().unwrap()).unwrap();
    std::fs::write(
        &extension,
        r#"(module (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
  (data (i32.const 16) "\"HEY\"")
  (func (export "shout") (param i32 i32) (result i64) i64.const 68719476741))"#,
    )
    .unwrap();
    let path = extension.display().to_string();
    let result = fleet.member("a").reload(json!({"scope": "extension", "path": path}));
    assert_eq!((result["status"].as_str(), result["kind"].as_str()), (Some("ok"), Some("extension")), "{result}");
    assert_eq!(node_targets(&result), ["a", "b", "c"]);
    for id in ["a", "b", "c"] {
        let call = fleet.member(id).rpc("module.call", json!({"module": "shout", "function": "shout"}));
        assert_eq!(call["result"], "HEY", "member {id}: {call}");
        let extensions = fleet.member(id).status()["extensions"].clone();
        assert_eq!(extensions[0]["name"], "shout", "member {id} records the extension: {extensions}");
    }

    // Scope all, with an explicit state migration of every member's counter.
    for id in ["a", "b", "c"] {
        fleet.member(id).rpc("process.call", json!({"process": "counter", "message": {"add": 7}}));
    }
    let all = fleet.member("a").reload(json!({
        "scope": "all", "force": true,
        "code_change": [{"server": "counter", "module": "counter", "extra": {"why": "test"}}],
    }));
    assert_eq!((all["status"].as_str(), all["kind"].as_str()), (Some("ok"), Some("system")), "{all}");
    for child in all["results"].as_array().unwrap() {
        let kinds: Vec<&str> =
            child["results"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["app", "code_change"], "member {}: {child}", child["target"]);
        assert!(child["reloaded"].as_array().unwrap().contains(&json!("process:counter")), "{child}");
    }
    for id in ["a", "b", "c"] {
        let count = fleet.member(id).rpc("process.call", json!({"process": "counter", "message": "get"}));
        assert_eq!(count["result"], json!({"count": 7}), "member {id} kept its counter's state");
    }
}

/// One `system.reload` of the clock (alternating two vsns by `round`) on
/// `node`: `Ok(result)` or `Err(error code)`.
fn reload_round(fleet: &Fleet, node: &str, round: usize) -> Result<Value, String> {
    fleet.set_clock(node, if round.is_multiple_of(2) { "1.0.1" } else { "1.0.2" });
    let params = json!({"scope": "module", "module": "clock", "lock_timeout_ms": 3000});
    let response = fleet.member(node).rpc("system.reload", params);
    match response.get("result") {
        Some(result) => Ok(result.clone()),
        None => Err(error_code(&response).to_string()),
    }
}

fn committed(result: &Value) -> bool {
    result["status"] == "ok" && result["metadata"]["cluster"]["phase"] == "committed"
}

#[test]
fn with_the_etcd_leader_killed_mid_stream_reloads_commit_again_within_seconds_on_every_member() {
    let _serial = one_at_a_time();
    // etcd as three members; every zest member is given all three endpoints,
    // the leader's first.
    let mut etcd = support::Etcd::start_cluster(3);
    etcd.lead_first();
    let mut fleet = Fleet::start_on(etcd, &["a", "b", "c"], support::demo_app(), PREPARE_TIMEOUT, &[]);
    for round in 0..3 {
        let result = reload_round(&fleet, "a", round).unwrap();
        assert!(committed(&result), "round {round}: {result}");
    }
    assert_eq!(fleet.etcd.leader(), Some(0));
    fleet.etcd.kill_member(0);
    let killed = Instant::now();
    let mut recovered = None;
    let mut after: Vec<Result<Value, String>> = Vec::new();
    let mut round = 3;
    let mut failed_first = 0;
    while after.len() < 8 && killed.elapsed() < Duration::from_secs(25) {
        let outcome = reload_round(&fleet, "a", round);
        round += 1;
        match (&outcome, recovered) {
            (Ok(result), None) if committed(result) => {
                recovered = Some(killed.elapsed());
                after.push(outcome);
            }
            (_, None) => {
                failed_first += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (_, Some(_)) => after.push(outcome),
        }
    }
    let recovered = recovered.expect("no reload committed in the 25 s after the etcd leader was killed");
    eprintln!(
        "the first reload committed {recovered:?} after the etcd leader was killed, {failed_first} failed before"
    );
    assert!(recovered < Duration::from_secs(6), "the first reload committed {recovered:?} after the kill");
    let new_leader = fleet.etcd.leader();
    assert!(matches!(new_leader, Some(1 | 2)), "a surviving member leads: {new_leader:?}");
    // From then on every reload commits, on every member: no lock kept by a
    // release that failed, no member whose lease lapsed.
    for (i, outcome) in after.iter().enumerate() {
        let result = outcome.as_ref().unwrap_or_else(|code| panic!("reload {i} after recovery: {code}"));
        assert!(committed(result), "reload {i} after recovery: {result}");
        assert_eq!(node_targets(result), ["a", "b", "c"], "reload {i} after recovery: {result}");
    }
    let last = if (round - 1).is_multiple_of(2) { "1.0.1" } else { "1.0.2" };
    for id in ["a", "b", "c"] {
        assert_eq!(fleet.vsn(id, "clock"), last, "member {id}");
    }
}

#[test]
fn a_lock_whose_release_failed_is_released_once_etcd_answers_again() {
    let _serial = one_at_a_time();
    // A lease that outlives the outage below (which one release attempt lasts).
    let ttl = Duration::from_secs(5);
    let mut fleet =
        Fleet::start_leased(support::Etcd::start(), &["a", "b"], support::demo_app(), PREPARE_TIMEOUT, ttl, &[]);
    // a commits, then etcd goes away before a releases the lock, and stays
    // away longer than one release attempt.
    fleet.take("a").kill();
    fleet.spawn("a", &[("ZEST_CLUSTER_PAUSE", "after-commit:2000")]);
    fleet.set_clock("a", "4.0.0");
    let url = fleet.member("a").url.clone();
    let request = std::thread::spawn(move || send_reload(&url, json!({"scope": "module", "module": "clock"})));
    std::thread::sleep(Duration::from_millis(1000));
    fleet.etcd.stop();
    let result = request.join().unwrap().expect("a answers");
    assert_eq!(result["result"]["metadata"]["cluster"]["phase"], "committed", "{result}");
    std::thread::sleep(Duration::from_millis(200));
    fleet.etcd.resume();
    let back = Instant::now();
    let rejoined = eventually(Duration::from_secs(10), || {
        ["a", "b"].iter().all(|id| fleet.member(id).status()["cluster"]["available"] == true).then_some(())
    });
    assert!(rejoined.is_some(), "a and b answer again: {}", fleet.member("b").status());
    // a is alive and keeps its lease: the lock must not stay with it.
    fleet.set_clock("b", "5.0.0");
    let next =
        fleet.member("b").rpc("system.reload", json!({"scope": "module", "module": "clock", "lock_timeout_ms": 8000}));
    let next = next.get("result").unwrap_or_else(|| panic!("b cannot take the lock: {next}"));
    assert!(committed(next), "{next}");
    assert!(back.elapsed() < Duration::from_secs(8), "the lock freed {:?} after etcd came back", back.elapsed());
    for id in ["a", "b"] {
        assert_eq!(fleet.vsn(id, "clock"), "5.0.0", "member {id}");
    }
}

#[test]
fn a_coordinator_silent_after_its_commit_reports_each_member_as_it_serves() {
    let _serial = one_at_a_time();
    let mut fleet = Fleet::start(&["a", "b", "c"]);
    // a goes silent right after its etcd commit, past the members' deadline:
    // they apply on their own; its answer must then say what they serve.
    fleet.take("a").kill();
    let pause = format!("after-commit:{}", (PREPARE_TIMEOUT + Duration::from_millis(1500)).as_millis());
    fleet.spawn("a", &[("ZEST_CLUSTER_PAUSE", pause.as_str())]);
    fleet.set_clock("a", "4.0.0");
    let result = fleet.member("a").reload(json!({"scope": "module", "module": "clock"}));
    assert_eq!(result["metadata"]["cluster"]["phase"], "committed", "{result}");
    let revision = result["metadata"]["cluster"]["revision"].as_i64().unwrap();
    for id in ["a", "b", "c"] {
        let status = fleet.member(id).status();
        assert_eq!(module_vsn(&status, "clock"), "4.0.0", "member {id}");
        assert_eq!(status["cluster"]["revision"], revision, "member {id}");
    }
    assert_eq!(node_targets(&result), ["a", "b", "c"]);
    for child in result["results"].as_array().unwrap() {
        assert_eq!(child["status"], "ok", "each member serves the new build, and its child says so: {result}");
        assert_eq!(child["reloaded"], json!(["clock"]), "{child}");
    }
    assert_eq!(result["status"], "ok", "{result}");
}

#[test]
fn with_the_etcd_member_every_node_talks_to_stopped_every_lease_lives_on_and_no_member_drops_out() {
    let _serial = one_at_a_time();
    // Every zest member's first endpoint is an etcd follower, which is then
    // stopped (SIGSTOP: connections stay open, nothing answers) for three
    // lease TTLs, with no reload meanwhile: the leases must be renewed
    // through the other endpoints.
    let mut etcd = support::Etcd::start_cluster(3);
    etcd.follower_first();
    let live = etcd.endpoints()[1..].to_vec();
    let fleet = Fleet::start_on(etcd, &["a", "b", "c"], support::demo_app(), PREPARE_TIMEOUT, &[]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = runtime.block_on(zest_control::cluster::etcd::Store::connect(&live, &fleet.name)).unwrap();
    let leases = || -> Vec<(String, i64)> {
        let (members, _) = runtime.block_on(store.members()).unwrap();
        members.into_iter().map(|m| (m.node, m.lease)).collect()
    };
    let before = leases();
    assert_eq!(before.len(), 3, "{before:?}");
    fleet.etcd.signal_member(0, libc::SIGSTOP);
    let stopped = Instant::now();
    let mut seen = Vec::new();
    while stopped.elapsed() < LEASE_TTL * 3 {
        let now = leases();
        if now != before {
            seen.push((stopped.elapsed(), now));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fleet.etcd.signal_member(0, libc::SIGCONT);
    assert!(seen.is_empty(), "members lost their leases (before: {before:?}): {seen:?}");
    let result = reload_round(&fleet, "a", 0).unwrap();
    assert!(committed(&result), "{result}");
    assert_eq!(node_targets(&result), ["a", "b", "c"], "{result}");
}

#[test]
fn a_member_that_is_away_is_reported_skipped_catches_up_and_once_stopped_cleanly_is_not_reported() {
    let _serial = one_at_a_time();
    let mut fleet = Fleet::start(&["a", "b", "c"]);
    // c stalls past its lease: up, but no longer a live member.
    let c = fleet.member("c");
    c.signal(libc::SIGSTOP);
    let gone =
        eventually(Duration::from_secs(10), || (members_of(&fleet.member("a").status()) == ["a", "b"]).then_some(()));
    assert!(gone.is_some(), "c's lease lapses: {}", fleet.member("a").status());
    fleet.set_clock("a", "1.0.1");
    let all = fleet.member("a").reload(json!({"scope": "module", "module": "clock"}));
    assert_eq!((all["status"].as_str(), node_targets(&all)), (Some("partial"), vec!["a".into(), "b".into()]), "{all}");
    assert_eq!(all["skipped"], json!([{"target": "c", "reason": "node_unreachable"}]), "{all}");
    assert_eq!(all["metadata"]["cluster"]["phase"], "committed", "{all}");
    // A listed member that is away: its override is recorded, and it is skipped.
    fleet.set_clock("a", "1.0.2");
    let listed = fleet.member("a").reload(json!({"scope": "module", "module": "clock", "nodes": ["c"]}));
    assert_eq!(listed["status"], "partial", "{listed}");
    assert_eq!(listed["skipped"], json!([{"target": "c", "reason": "node_unreachable"}]), "{listed}");
    assert_eq!(listed["metadata"]["cluster"]["phase"], "committed", "{listed}");

    // Back, c converges by itself on what was committed for it.
    fleet.member("c").signal(libc::SIGCONT);
    let resumed = Instant::now();
    let converged = eventually(Duration::from_secs(10), || (fleet.vsn("c", "clock") == "1.0.2").then_some(()));
    assert!(converged.is_some(), "c serves {} 10 s after it resumed", fleet.vsn("c", "clock"));
    eprintln!("c converged {:?} after it resumed", resumed.elapsed());
    assert_eq!([fleet.vsn("a", "clock"), fleet.vsn("b", "clock")], ["1.0.1", "1.0.1"]);
    let back = eventually(Duration::from_secs(10), || {
        (members_of(&fleet.member("a").status()) == ["a", "b", "c"]).then_some(())
    });
    assert!(back.is_some(), "c rejoins");
    let every = fleet.member("a").reload(json!({"scope": "module", "module": "clock", "force": true}));
    assert_eq!(
        (every["status"].as_str(), node_targets(&every)),
        (Some("ok"), vec!["a".into(), "b".into(), "c".into()])
    );
    assert_eq!(every["skipped"], json!([]), "{every}");

    // Stopped cleanly, c is forgotten: not reported, now or later.
    assert_eq!(fleet.take("c").stop(), 0);
    fleet.set_clock("a", "1.0.3");
    let after = fleet.member("a").reload(json!({"scope": "module", "module": "clock"}));
    assert_eq!((after["status"].as_str(), node_targets(&after)), (Some("ok"), vec!["a".into(), "b".into()]), "{after}");
    assert_eq!(after["skipped"], json!([]), "{after}");
}
