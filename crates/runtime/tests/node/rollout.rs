//! History, rollback, dry runs, trials and canaries (CONTRACT.md §11) at the
//! `Node` API.

use std::path::Path;

use zest_runtime::{
    Action, Node, NodeConfig, Reason, ReloadOptions, ReloadRequest, RollbackRequest, RollbackTarget, Scope, Status,
};

use super::support::{counter, counter_changing_with, versioned};

fn node(data: &Path) -> Node {
    Node::new(NodeConfig { data_dir: Some(data.to_path_buf()), ..NodeConfig::default() }).unwrap()
}

fn reload(node: &Node, module: &str) -> zest_runtime::ReloadResult {
    node.reload(&ReloadRequest::new(Scope::Module(module.into()))).unwrap()
}

fn rollback(node: &Node, module: &str, to: Option<u64>) -> zest_runtime::ReloadResult {
    let mut request = RollbackRequest::new(RollbackTarget::Module(module.into()));
    request.to = to;
    node.rollback(&request).unwrap()
}

fn get(node: &Node) -> String {
    node.call("clock", "get", "null").unwrap()
}

#[test]
fn reloads_are_recorded_and_rollback_toggles_to_the_replaced_build_even_after_the_file_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clock.wat");
    std::fs::write(&path, versioned(1, 0)).unwrap();
    let node = node(&dir.path().join("data"));
    assert_eq!(node.load_module("clock", &path, &ReloadOptions::default()).status(), Status::Ok);
    assert!(node.history(None, 10).is_empty(), "the first load of a module is not a change");

    std::fs::write(&path, versioned(2, 0)).unwrap();
    let result = node.reload(&ReloadRequest {
        request_id: Some("req-2".into()),
        ..ReloadRequest::new(Scope::Module("clock".into()))
    });
    assert_eq!(result.unwrap().status(), Status::Ok);
    let history = node.history(Some("clock"), 10);
    assert_eq!(history.len(), 1);
    let entry = &history[0];
    assert_eq!((entry.id, entry.action, entry.request_id.as_str()), (1, Action::Reload, "req-2"));
    assert_eq!(entry.from.as_ref().unwrap().sha256, zest_sha(&versioned(1, 0)));
    assert_eq!(entry.to.as_ref().unwrap().sha256, zest_sha(&versioned(2, 0)));

    // The file moves on; the rollback still finds build 1.
    std::fs::write(&path, versioned(3, 0)).unwrap();
    let back = rollback(&node, "clock", None);
    assert_eq!((back.status(), back.metadata.rollback), (Status::Ok, true), "{back:#?}");
    assert_eq!(get(&node), r#"{"v":1}"#);
    let again = rollback(&node, "clock", None);
    assert_eq!(again.status(), Status::Ok, "{again:#?}");
    assert_eq!(get(&node), r#"{"v":2}"#, "two rollbacks in a row toggle");
    let actions: Vec<(u64, Action)> = node.history(None, 10).iter().map(|e| (e.id, e.action)).collect();
    assert_eq!(actions, [(3, Action::Rollback), (2, Action::Rollback), (1, Action::Reload)]);

    // To a history id: that entry's build.
    let to_first = rollback(&node, "clock", Some(2));
    assert_eq!(to_first.status(), Status::Ok);
    assert_eq!(get(&node), r#"{"v":1}"#);

    // Bad input: nothing changes, each says why.
    let none = rollback(&node, "front", None);
    assert_eq!((none.status(), none.errors[0].reason), (Status::Error, Reason::NotFound));
    let unknown = rollback(&node, "clock", Some(99));
    assert!(unknown.errors[0].message.contains("no entry 99"), "{unknown:#?}");
    let app = node.rollback(&RollbackRequest::new(RollbackTarget::App("nope".into()))).unwrap();
    assert_eq!(app.errors[0].reason, Reason::AppNotFound);
    assert_eq!(get(&node), r#"{"v":1}"#);
}

fn zest_sha(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[test]
fn history_and_kept_builds_survive_a_restart_between_a_reload_and_its_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = dir.path().join("clock.wat");
    std::fs::write(&path, versioned(1, 0)).unwrap();
    {
        let first = node(&data);
        assert_eq!(first.load_module("clock", &path, &ReloadOptions::default()).status(), Status::Ok);
        std::fs::write(&path, versioned(2, 0)).unwrap();
        assert_eq!(first.reload_module("clock", &ReloadOptions::default()).status(), Status::Ok);
    }
    std::fs::write(&path, versioned(3, 0)).unwrap();
    let second = node(&data);
    assert_eq!(second.load_module("clock", &path, &ReloadOptions::default()).status(), Status::Ok);
    assert_eq!(get(&second), r#"{"v":3}"#);
    assert_eq!(second.history(None, 10).len(), 1, "the restart's load is not recorded; the earlier reload is");
    let back = rollback(&second, "clock", None);
    assert_eq!(back.status(), Status::Ok, "{back:#?}");
    assert_eq!(get(&second), r#"{"v":1}"#, "the build replaced before the restart, kept by sha256");
}

/// Files of one store in the data directory.
fn store_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map_or(0, |entries| entries.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
}

#[test]
fn the_data_directory_keeps_the_last_builds_of_each_module_not_every_build_ever() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = dir.path().join("clock.wat");
    std::fs::write(&path, versioned(1, 0)).unwrap();
    let first = node(&data);
    assert_eq!(first.load_module("clock", &path, &ReloadOptions::default()).status(), Status::Ok);
    for v in 2..=20 {
        std::fs::write(&path, versioned(v, 0)).unwrap();
        assert_eq!(reload(&first, "clock").status(), Status::Ok);
    }
    first.flush_writes();
    // The newest 8 distinct builds the history names (v13..v20), the current among them.
    assert_eq!(store_files(&data.join("artifacts")), 8);
    let caches: Vec<_> = std::fs::read_dir(data.join("cache")).unwrap().flatten().map(|e| e.path()).collect();
    let cached: usize = caches.iter().map(|cache| store_files(cache)).sum();
    assert!((1..=8 * caches.len()).contains(&cached), "{cached} compile-cache entries in {caches:?}");

    // After a restart (builds from memory gone), the last builds roll back as
    // ever; one swept answers not_found and changes nothing.
    let first_reload = first.history(Some("clock"), 100).last().unwrap().id;
    let kept = first.history(Some("clock"), 100)[6].id; // newest first: v20, v19, … v14
    drop(first);
    std::fs::write(&path, versioned(21, 0)).unwrap();
    let restarted = node(&data);
    assert_eq!(restarted.load_module("clock", &path, &ReloadOptions::default()).status(), Status::Ok);
    let gone = rollback(&restarted, "clock", Some(first_reload));
    assert_eq!(gone.errors[0].reason, Reason::NotFound, "{gone:#?}");
    assert_eq!(get(&restarted), r#"{"v":21}"#);
    let back = rollback(&restarted, "clock", Some(kept));
    assert_eq!(back.status(), Status::Ok, "{back:#?}");
    assert_eq!(get(&restarted), r#"{"v":14}"#);
}

#[test]
fn a_rollback_migrates_processes_with_direction_down() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counter.wat");
    // Build 1 adds 1000 to the count when it migrates a process down.
    let down_aware = counter_changing_with(
        '1',
        r#"(global.set $count (call $after (local.get $ptr) (local.get $len) (i32.const 16) (i32.const 7)))
    (if (i32.ge_s (call $find (local.get $ptr) (i32.add (local.get $ptr) (local.get $len)) (i32.const 200) (i32.const 6)) (i32.const 0))
      (then (global.set $count (i64.add (global.get $count) (i64.const 1000)))))"#,
    )
    .replace(r#"(data (i32.const 80) "\"start\"")"#, r#"(data (i32.const 80) "\"start\"") (data (i32.const 200) "\"down\"")"#);
    std::fs::write(&path, &down_aware).unwrap();
    let node = node(&dir.path().join("data"));
    assert_eq!(node.load_module("counter", &path, &ReloadOptions::default()).status(), Status::Ok);
    node.start_process("tally", "counter", "{}").unwrap();
    assert_eq!(node.call_process("tally", r#"{"add": 5}"#).unwrap(), r#"{"count":5}"#);
    std::fs::write(&path, counter('2')).unwrap();
    assert_eq!(node.reload_module("counter", &ReloadOptions::default()).status(), Status::Ok);
    assert_eq!(node.call_process("tally", "\"get\"").unwrap(), r#"{"count":5}"#, "up: the state as it was");
    let back = rollback(&node, "counter", None);
    assert_eq!(back.status(), Status::Ok, "{back:#?}");
    assert_eq!(node.call_process("tally", "\"get\"").unwrap(), r#"{"count":1005}"#, "build 1 saw direction down");
}

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zest_runtime::{CallError, EventBody, ReloadResult, TrialSpec};

use super::support::module;

fn reload_with(node: &Node, module: &str, options: ReloadOptions) -> ReloadResult {
    node.reload(&ReloadRequest { options, ..ReloadRequest::new(Scope::Module(module.into())) }).unwrap()
}

fn loose(dir: &Path, node: &Node, name: &str, wat: &str) {
    let path = dir.join(format!("{name}.wat"));
    std::fs::write(&path, wat).unwrap();
    assert_eq!(node.load_module(name, &path, &ReloadOptions::default()).status(), Status::Ok);
}

#[test]
fn a_canary_takes_its_share_of_calls_and_processes_until_promoted_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(&dir.path().join("data"));
    loose(dir.path(), &node, "clock", &versioned(1, 0));
    loose(dir.path(), &node, "counter", &counter('1'));
    let names: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
    for name in &names {
        node.start_process(name, "counter", "{}").unwrap();
        node.call_process(name, r#"{"add": 3}"#).unwrap();
    }

    std::fs::write(dir.path().join("clock.wat"), versioned(2, 0)).unwrap();
    let canary = ReloadOptions { canary: Some(30), ..ReloadOptions::default() };
    let started = reload_with(&node, "clock", canary.clone());
    assert_eq!(started.status(), Status::Ok, "{started:#?}");
    let answers: Vec<String> = (0..1000).map(|_| get(&node)).collect();
    assert_eq!(answers.iter().filter(|a| *a == r#"{"v":2}"#).count(), 300, "exactly 30% on one thread");
    let status = node.status();
    let clock = status.modules.iter().find(|m| m.name == "clock").unwrap();
    let running = clock.canary.as_ref().expect("status shows the canary");
    assert_eq!((clock.share, running.share), (70, 30));
    assert_ne!(running.version.sha256, clock.current.sha256, "the canary is the new build");
    assert_eq!((clock.calls, running.calls), (700, 300));

    // A canary of a process module takes its share of processes, by name.
    std::fs::write(dir.path().join("counter.wat"), counter('2')).unwrap();
    assert_eq!(
        reload_with(&node, "counter", ReloadOptions { canary: Some(50), ..ReloadOptions::default() }).status(),
        Status::Ok
    );
    let on_two: Vec<String> =
        node.status().processes.iter().filter(|p| p.vsn.as_deref() == Some("2")).map(|p| p.name.clone()).collect();
    assert!(!on_two.is_empty() && on_two.len() < names.len(), "some, not all: {on_two:?}");
    let again = node.status().processes.iter().filter(|p| p.vsn.as_deref() == Some("2")).count();
    assert_eq!(again, on_two.len(), "stable");
    for name in &names {
        assert_eq!(node.call_process(name, "\"get\"").unwrap(), r#"{"count":3}"#, "{name} kept its state");
    }

    // While a canary runs, a plain reload is refused; promote and drop answer.
    let refused = reload(&node, "clock");
    assert_eq!(refused.errors[0].reason, Reason::InUse, "{refused:#?}");
    let promoted = node.promote(&RollbackTarget::Module("clock".into()), &ReloadOptions::default()).unwrap();
    assert_eq!(promoted.status(), Status::Ok, "{promoted:#?}");
    assert!((0..100).all(|_| get(&node) == r#"{"v":2}"#));
    assert!(node.status().modules.iter().find(|m| m.name == "clock").unwrap().canary.is_none());
    let nothing = node.promote(&RollbackTarget::Module("clock".into()), &ReloadOptions::default()).unwrap();
    assert_eq!(nothing.errors[0].reason, Reason::NotFound);

    let dropped = rollback(&node, "counter", None);
    assert_eq!(dropped.status(), Status::Ok, "{dropped:#?}");
    assert!(node.status().processes.iter().all(|p| p.vsn.as_deref() == Some("1")), "all back on build 1");
    for name in &names {
        assert_eq!(node.call_process(name, "\"get\"").unwrap(), r#"{"count":3}"#);
    }
    let actions: Vec<Action> = node.history(None, 10).iter().map(|e| e.action).collect();
    assert_eq!(actions, [Action::Rollback, Action::Promote, Action::Canary, Action::Canary]);
}

/// The clock whose `get` traps: every call of it fails.
/// `versioned(1, 0)`'s callables, `get` trapping: a broken build that keeps
/// every callable (removing one would be a `breaking_change`).
fn broken_clock() -> String {
    let slow_get = super::support::slow_constant("slow_get", 64, br#"{"v":1}"#, 0);
    module(&[r#"(func (export "get") (param i32 i32) (result i64) unreachable)"#, &slow_get, super::support::ECHO])
}

#[test]
fn a_trial_reverts_at_once_under_callers_and_only_the_broken_build_fails_calls() {
    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(node(&dir.path().join("data")));
    loose(dir.path(), &node, "clock", &versioned(1, 0));
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    node.telemetry().attach(move |event| sink.lock().unwrap().push(event.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (node, stop) = (Arc::clone(&node), Arc::clone(&stop));
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match node.call("clock", "get", "null") {
                        Ok(out) => {
                            assert_eq!(out, r#"{"v":1}"#);
                            ok += 1;
                        }
                        Err(CallError::Trap { module, function, .. }) => {
                            assert_eq!((module.as_str(), function.as_str()), ("clock", "get"));
                            failed += 1;
                        }
                        Err(other) => panic!("a call failed for another reason than the broken build: {other}"),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    std::fs::write(dir.path().join("clock.wat"), broken_clock()).unwrap();
    let trial = TrialSpec { window: Duration::from_secs(30), max_failure_rate: 0.05, min_calls: 20 };
    let started = Instant::now();
    let result = reload_with(&node, "clock", ReloadOptions { trial: Some(trial), ..ReloadOptions::default() });
    assert_eq!(result.status(), Status::Ok);
    let reverted = loop {
        if node.status().modules[0].current.vsn != result.metadata.swaps[0].new_vsn {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no revert");
        std::thread::sleep(Duration::from_millis(1));
    };
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for caller in callers {
        let (o, f) = caller.join().unwrap();
        ok += o;
        failed += f;
    }
    assert!(failed >= 20, "the broken build failed {failed} calls before the revert");
    assert!(ok > failed, "{ok} ok, {failed} failed");
    assert!(reverted < Duration::from_secs(1), "reverted after {reverted:?}");
    assert_eq!(get(&node), r#"{"v":1}"#);
    let history = node.history(Some("clock"), 1);
    assert_eq!(history[0].action, Action::Revert);
    let names: Vec<&str> = events.lock().unwrap().iter().map(|e| e.name()).collect();
    assert!(names.contains(&"zest.reload.reverted"), "{names:?}");
    assert!(node.status().modules[0].trial_until.is_none());
}

#[test]
fn a_healthy_trial_becomes_permanent_when_its_window_ends() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(&dir.path().join("data"));
    loose(dir.path(), &node, "clock", &versioned(1, 0));
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    node.telemetry().attach(move |event| {
        if let EventBody::Permanent { calls, .. } = event.body {
            sink.lock().unwrap().push(calls);
        }
    });
    std::fs::write(dir.path().join("clock.wat"), versioned(2, 0)).unwrap();
    let trial = TrialSpec { window: Duration::from_millis(300), max_failure_rate: 0.01, min_calls: 20 };
    assert_eq!(
        reload_with(&node, "clock", ReloadOptions { trial: Some(trial), ..ReloadOptions::default() }).status(),
        Status::Ok
    );
    assert!(node.status().modules[0].trial_until.is_some(), "status shows the trial");
    for _ in 0..50 {
        assert_eq!(get(&node), r#"{"v":2}"#);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while events.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no zest.reload.permanent");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(*events.lock().unwrap(), [50]);
    assert_eq!(get(&node), r#"{"v":2}"#);
    assert!(node.status().modules[0].trial_until.is_none());
}

#[test]
fn a_dry_run_stages_and_reports_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(&dir.path().join("data"));
    loose(dir.path(), &node, "counter", &counter('1'));
    node.start_process("tally", "counter", "{}").unwrap();
    let with_extra = counter('2').replacen(
        "(func $reply",
        "(func (export \"peek\") (param i32 i32) (result i64) (call $reply))\n  (func $reply",
        1,
    );
    std::fs::write(dir.path().join("counter.wat"), with_extra).unwrap();
    let result = reload_with(&node, "counter", ReloadOptions { dry_run: true, ..ReloadOptions::default() });
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert!(result.metadata.dry_run && result.reloaded.is_empty());
    let plan = &result.metadata.plan[0];
    assert_eq!(
        (plan.module.as_str(), plan.from.as_ref().unwrap().0.as_str(), plan.to.0.as_str()),
        ("counter", "1", "2")
    );
    assert_eq!(plan.exports_added, ["peek"]);
    assert_eq!(plan.processes, [("tally".to_string(), true)]);
    assert_eq!(node.status().modules[0].current.vsn, "1", "nothing committed");
    assert!(node.history(None, 10).is_empty(), "nothing recorded");

    std::fs::write(dir.path().join("counter.wat"), "(module (func $broken").unwrap();
    let broken = reload_with(&node, "counter", ReloadOptions { dry_run: true, ..ReloadOptions::default() });
    assert_eq!(broken.errors[0].reason, Reason::CompileError, "a failing build reports as a real reload would");
}
