//! Processes and their migrations (`code_change`), at the `Node` API.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use zest_runtime::{
    AllScope, CodeChangeTarget, Node, NodeConfig, ProcessError, ProcessState, Reason, ReloadOptions, ReloadRequest,
    RestartPolicy, Scope, Status,
};

use super::support::{counter, counter_changing_with, versioned, with_import, Fixture};

fn count(reply: &str) -> i64 {
    let value: serde_json::Value = serde_json::from_str(reply).unwrap();
    value["count"].as_i64().unwrap_or_else(|| panic!("no count in {reply}"))
}

fn force() -> ReloadOptions {
    ReloadOptions { force: true, ..ReloadOptions::default() }
}

/// A fixture with module `counter` (vsn 1) and process `c` on it started at `start`.
fn counter_fixture(start: i64) -> Fixture {
    let fx = Fixture::new();
    fx.load("counter", &counter('1'));
    fx.node.start_process("c", "counter", &format!(r#"{{"start":{start}}}"#)).unwrap();
    fx
}

fn send(node: &Node, process: &str, message: &str) -> i64 {
    count(&node.call_process(process, message).unwrap_or_else(|err| panic!("{process}: {err}")))
}

fn process_vsn(node: &Node, name: &str) -> Option<String> {
    node.status().processes.into_iter().find(|p| p.name == name).and_then(|p| p.vsn)
}

#[test]
fn a_counter_keeps_its_state_across_1000_migrations() {
    let fx = counter_fixture(5);
    assert_eq!(send(&fx.node, "c", r#""get""#), 5);
    for i in 0..1000 {
        let vsn = if i % 2 == 0 { '2' } else { '1' };
        fx.write("counter.wat", counter(vsn));
        let result = fx.node.reload_module("counter", &ReloadOptions::default());
        assert_eq!(result.status(), Status::Ok, "reload {i}: {result:#?}");
        assert_eq!(process_vsn(&fx.node, "c").as_deref(), Some(vsn.to_string().as_str()));
        assert_eq!(send(&fx.node, "c", r#"{"add":1}"#), 6 + i);
    }
    assert_eq!(send(&fx.node, "c", r#""get""#), 1005);
    let status = fx.node.status();
    assert_eq!(status.processes[0].handled, 1002);
    assert!(status.modules[0].old.is_empty(), "no old version is kept: {:?}", status.modules[0].old);
}

#[test]
fn migrations_under_a_flood_lose_duplicate_and_reorder_nothing() {
    let fx = Arc::new(counter_fixture(0));
    const CALLERS: usize = 4;
    const MESSAGES: usize = 300;
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let fx = Arc::clone(&fx);
            thread::spawn(move || (0..MESSAGES).map(|_| send(&fx.node, "c", r#"{"add":1}"#)).collect::<Vec<i64>>())
        })
        .collect();
    let reloader = {
        let fx = Arc::clone(&fx);
        thread::spawn(move || {
            for i in 0..40 {
                fx.write("counter.wat", counter(if i % 2 == 0 { '2' } else { '1' }));
                let result = fx.node.reload_module("counter", &ReloadOptions::default());
                assert_eq!(result.status(), Status::Ok, "{result:#?}");
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    reloader.join().unwrap();
    let mut seen = BTreeSet::new();
    for caller in callers {
        let replies = caller.join().unwrap();
        assert!(replies.windows(2).all(|w| w[0] < w[1]), "one caller's messages were reordered: {replies:?}");
        for reply in replies {
            assert!(seen.insert(reply), "two messages got the same count {reply}: one was handled twice");
        }
    }
    let total = (CALLERS * MESSAGES) as i64;
    assert_eq!(seen, (1..=total).collect::<BTreeSet<_>>(), "every message was handled exactly once");
    assert_eq!(send(&fx.node, "c", r#""get""#), total);
}

#[test]
fn a_failing_or_trapping_code_change_leaves_the_process_on_its_old_version_until_a_good_one() {
    let fx = counter_fixture(10);
    send(&fx.node, "c", r#"{"add":5}"#);
    let failing = with_import(
        &counter_changing_with('2', "(call $error (i32.const 16) (i32.const 7))"),
        r#"(import "zest" "error" (func $error (param i32 i32)))"#,
    );
    for (wat, words) in [(failing, "\"state\""), (counter_changing_with('3', "unreachable"), "unreachable")] {
        fx.write("counter.wat", wat);
        let result = fx.node.reload_module("counter", &ReloadOptions::default());
        assert_eq!(result.status(), Status::Error);
        assert_eq!(result.reloaded, ["counter"], "the module itself is swapped");
        assert_eq!(result.errors.len(), 1, "{result:#?}");
        let error = &result.errors[0];
        assert_eq!((error.target.as_str(), error.reason), ("process:c", Reason::CodeChangeFailed));
        assert!(error.message.contains(words), "{}", error.message);

        assert_eq!(process_vsn(&fx.node, "c").as_deref(), Some("1"), "still on the old version");
        assert_eq!(send(&fx.node, "c", r#""get""#), 15, "with its state intact");
        let module = &fx.node.status().modules[0];
        assert_eq!(module.pinned_by, ["c"]);
        assert_eq!(module.old.iter().map(|v| v.vsn.as_str()).collect::<Vec<_>>(), ["1"]);
    }
    // The next good build takes the process along.
    fx.write("counter.wat", counter('4'));
    let result = fx.node.reload_module("counter", &ReloadOptions::default());
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert_eq!(process_vsn(&fx.node, "c").as_deref(), Some("4"));
    assert_eq!(send(&fx.node, "c", r#""get""#), 15);
    let module = &fx.node.status().modules[0];
    assert!(module.pinned_by.is_empty() && module.old.is_empty(), "{module:?}");
}

#[test]
fn a_new_version_without_code_change_is_a_missing_export_and_force_restarts_with_init_args() {
    let fx = counter_fixture(7);
    send(&fx.node, "c", r#"{"add":3}"#);
    let bare = counter('2').replace(r#"(func (export "zest_code_change")"#, r#"(func $no_code_change"#);
    fx.write("counter.wat", &bare);
    let result = fx.node.reload_module("counter", &ReloadOptions::default());
    assert_eq!(result.errors[0].target, "process:c");
    assert_eq!(result.errors[0].reason, Reason::MissingExport);
    assert!(result.errors[0].message.contains("zest_code_change"), "{}", result.errors[0].message);
    assert_eq!(send(&fx.node, "c", r#""get""#), 10);

    let result = fx.node.reload_module("counter", &force());
    assert_eq!(result.status(), Status::Ok, "force restarts what cannot migrate: {result:#?}");
    assert_eq!(process_vsn(&fx.node, "c").as_deref(), Some("2"));
    assert_eq!(send(&fx.node, "c", r#""get""#), 7, "restarted with its init args");
}

#[test]
fn an_atomic_app_reload_undoes_every_swap_and_migration_when_one_migration_fails() {
    let fx = Fixture::new();
    let app = fx.dir.path().join("pair");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("zest.toml"),
        r#"[app]
name = "pair"
[[modules]]
name = "a"
path = "a.wat"
[[modules]]
name = "b"
path = "b.wat"
[[processes]]
name = "pa"
module = "a"
init = { start = 100 }
[[processes]]
name = "pb"
module = "b"
init = { start = 200 }
"#,
    )
    .unwrap();
    std::fs::write(app.join("a.wat"), counter('1')).unwrap();
    std::fs::write(app.join("b.wat"), counter('1')).unwrap();
    assert_eq!(fx.node.load_app(&app).status(), Status::Ok);
    send(&fx.node, "pa", r#"{"add":1}"#);
    send(&fx.node, "pb", r#"{"add":2}"#);

    std::fs::write(app.join("a.wat"), counter('2')).unwrap();
    std::fs::write(app.join("b.wat"), counter_changing_with('2', "unreachable")).unwrap();
    let request = ReloadRequest {
        scope: Scope::App("pair".into()),
        options: ReloadOptions { atomic: true, ..ReloadOptions::default() },
        request_id: None,
    };
    let result = fx.node.reload(&request).unwrap();
    assert_eq!(result.status(), Status::Error);
    assert!(result.reloaded.is_empty(), "{:?}", result.reloaded);
    let mut errors: Vec<_> = result.errors.iter().map(|f| (f.target.as_str(), f.reason)).collect();
    errors.sort_by_key(|(target, _)| *target);
    assert_eq!(
        errors,
        [
            ("a", Reason::RolledBack),
            ("b", Reason::RolledBack),
            ("process:pa", Reason::RolledBack),
            ("process:pb", Reason::CodeChangeFailed),
        ]
    );
    let status = fx.node.status();
    for module in &status.modules {
        assert_eq!(module.current.vsn, "1", "{} is back on its old version", module.name);
    }
    assert_eq!(process_vsn(&fx.node, "pa").as_deref(), Some("1"));
    assert_eq!(send(&fx.node, "pa", r#""get""#), 101);
    assert_eq!(send(&fx.node, "pb", r#""get""#), 202);

    // Without the bad migration, the same request goes through.
    std::fs::write(app.join("b.wat"), counter('2')).unwrap();
    let result = fx.node.reload(&request).unwrap();
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert_eq!(process_vsn(&fx.node, "pa").as_deref(), Some("2"));
    assert_eq!(process_vsn(&fx.node, "pb").as_deref(), Some("2"));
    assert_eq!(send(&fx.node, "pb", r#""get""#), 202);
}

#[test]
fn a_crashing_process_restarts_with_its_init_args_and_is_given_up_on_after_too_many_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let restart = RestartPolicy {
        max_restarts: 2,
        window: Duration::from_secs(60),
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    };
    let config = NodeConfig { data_dir: Some(dir.path().join("data")), restart, ..NodeConfig::default() };
    let node = Node::new(config).unwrap();
    // Traps on any message once the count reaches 100.
    let fragile = counter('1').replace(
        r#"(local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (if (i32.ge_s"#,
        r#"(local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (if (i64.ge_s (global.get $count) (i64.const 100)) (then unreachable))
    (if (i32.ge_s"#,
    );
    assert_ne!(fragile, counter('1'));
    let path = dir.path().join("counter.wat");
    std::fs::write(&path, &fragile).unwrap();
    assert_eq!(node.load_module("counter", &path, &ReloadOptions::default()).status(), Status::Ok);
    node.start_process("c", "counter", r#"{"start":98}"#).unwrap();

    assert_eq!(send(&node, "c", r#"{"add":1}"#), 99);
    assert_eq!(send(&node, "c", r#"{"add":1}"#), 100);
    let crash = node.call_process("c", r#""get""#).unwrap_err();
    assert!(matches!(&crash, ProcessError::Crashed { .. }), "{crash}");
    assert!(crash.to_string().contains("unreachable"), "{crash}");
    assert_eq!(send(&node, "c", r#""get""#), 98, "restarted with its init args");

    for _ in 0..2 {
        send(&node, "c", r#"{"add":2}"#);
        node.call_process("c", r#""get""#).unwrap_err();
    }
    let down = node.call_process("c", r#""get""#).unwrap_err();
    assert!(matches!(&down, ProcessError::Down { .. }), "{down}");
    assert!(down.to_string().contains("gave up after 3 crashes"), "{down}");
    assert_eq!(node.status().processes[0].state, ProcessState::Down);

    // A reload of its module starts it again.
    std::fs::write(&path, counter('2')).unwrap();
    let result = node.reload_module("counter", &ReloadOptions::default());
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert_eq!(node.status().processes[0].state, ProcessState::Running);
    assert_eq!(send(&node, "c", r#"{"add":1}"#), 99);
}

/// A process module whose handler forwards its message to `clock.get`.
const RELAY: &str = r#"(module
  (import "zest" "call" (func $call (param i32 i32 i32 i32 i32 i32) (result i64)))
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 8192))
  (func (export "zest_alloc") (param $len i32) (result i32) (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (local.get $ptr))
  (data (i32.const 0) "clock")
  (data (i32.const 16) "get")
  (data (i32.const 32) "VSN")
  (func (export "zest_vsn") (result i64) i64.const 0x0000002000000003)
  (func (export "zest_init") (param i32 i32) (result i64) i64.const 0)
  (func (export "zest_state_save") (result i64) i64.const 0)
  (func (export "zest_code_change") (param i32 i32) (result i64) i64.const 0)
  (func (export "zest_handle") (param $ptr i32) (param $len i32) (result i64)
    (global.set $next (i32.const 16384))
    (call $call (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 3) (local.get $ptr) (local.get $len))))"#;

#[test]
fn a_process_whose_module_calls_another_module_migrates_and_follows_the_callee() {
    let fx = Fixture::new();
    fx.load("clock", &versioned(1, 0));
    fx.load("relay", &RELAY.replace("VSN", "r.1"));
    fx.node.start_process("p", "relay", "null").unwrap();
    assert_eq!(fx.node.call_process("p", "null").unwrap(), r#"{"v":1}"#);

    fx.write("relay.wat", RELAY.replace("VSN", "r.2"));
    assert_eq!(fx.node.reload_module("relay", &ReloadOptions::default()).status(), Status::Ok);
    assert_eq!(process_vsn(&fx.node, "p").as_deref(), Some("r.2"));
    assert_eq!(fx.node.call_process("p", "null").unwrap(), r#"{"v":1}"#);

    fx.write("clock.wat", versioned(2, 0));
    assert_eq!(fx.node.reload_module("clock", &ReloadOptions::default()).status(), Status::Ok);
    assert_eq!(fx.node.call_process("p", "null").unwrap(), r#"{"v":2}"#, "the callee's current version answers");
}

#[test]
fn explicit_code_change_targets_run_on_the_suspended_process_and_report_bad_targets() {
    let fx = counter_fixture(1);
    fx.load("other", &versioned(1, 0));
    let target = |server: &str, module: &str, extra: serde_json::Value| CodeChangeTarget {
        server: server.into(),
        module: module.into(),
        old_vsn: None,
        extra,
    };
    let request = ReloadRequest::new(Scope::All(AllScope {
        code_change: vec![
            // The counter's code_change reads the first "state" key of its input,
            // which (keys sorted) is the one inside `extra`: proof extra arrives.
            target("c", "counter", serde_json::json!({"state": 500})),
            target("ghost", "counter", serde_json::Value::Null),
            target("c", "other", serde_json::Value::Null),
            target("", "counter", serde_json::Value::Null),
        ],
        ..AllScope::default()
    }));
    let result = fx.node.reload(&request).unwrap();
    let children: Vec<_> = result.results.iter().map(|r| (r.target.as_str(), r.status())).collect();
    assert_eq!(
        children,
        [
            ("c:counter", Status::Ok),
            ("ghost:counter", Status::Partial),
            ("c:other", Status::Error),
            (":counter", Status::Error)
        ]
    );
    assert_eq!(result.results[1].skipped[0].reason, Reason::NotRunning);
    assert_eq!(result.results[2].errors[0].reason, Reason::InvalidCodeChangeTarget);
    assert_eq!(result.results[3].errors[0].reason, Reason::InvalidCodeChangeTarget);
    assert_eq!(result.metadata.counts.unwrap().code_change, 4);
    assert_eq!(send(&fx.node, "c", r#""get""#), 500);

    assert!(fx.node.stop_process("c"));
    assert!(!fx.node.stop_process("c"), "stopped once");
    let gone = fx.node.call_process("c", r#""get""#).unwrap_err();
    assert!(gone.is_not_found(), "{gone}");
    assert!(fx.node.status().processes.is_empty());
}

#[test]
fn the_demo_app_loads_and_its_counter_keeps_its_count_across_an_app_reload() {
    let fx = Fixture::new();
    let demo = fx.dir.path().join("demo");
    std::fs::create_dir_all(&demo).unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    for file in ["zest.toml", "clock.wat", "front.wat", "counter.wat"] {
        std::fs::copy(source.join(file), demo.join(file)).unwrap();
    }
    let loaded = fx.node.load_app(&demo);
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    assert_eq!(loaded.reloaded, ["clock", "front", "counter"]);
    assert!(fx.node.call("front", "time", "null").unwrap().starts_with(r#"{"now_ms":"#));
    assert_eq!(send(&fx.node, "counter", r#"{"add":5}"#), 5);

    std::fs::write(demo.join("counter.wat"), counter('2')).unwrap();
    let result = fx.node.reload(&ReloadRequest::new(Scope::App("demo".into()))).unwrap();
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert_eq!(result.reloaded, ["counter"]);
    assert_eq!(result.metadata.unchanged, ["clock", "front"]);
    assert_eq!(process_vsn(&fx.node, "counter").as_deref(), Some("2"));
    assert_eq!(send(&fx.node, "counter", r#""get""#), 5);
}

#[test]
fn running_out_of_instance_slots_is_a_clear_error_and_a_freed_slot_is_reused() {
    let limits = zest_runtime::Limits { instances: 4, ..zest_runtime::Limits::default() };
    let fx = Fixture::with_limits(limits);
    fx.load("counter", &counter('1'));
    // The version keeps one instance for calls; three processes take the rest.
    for name in ["a", "b", "c"] {
        fx.node.start_process(name, "counter", r#"{"start":1}"#).unwrap();
    }
    let err = fx.node.start_process("d", "counter", r#"{"start":1}"#).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("limits.instances is 4"), "{message}");
    assert!(fx.node.stop_process("a"));
    fx.node.start_process("d", "counter", r#"{"start":7}"#).unwrap();
    assert_eq!(count(&fx.node.call_process("d", r#""get""#).unwrap()), 7);
}

#[test]
fn many_processes_migrate_in_parallel_each_keeping_its_own_state() {
    let fx = Arc::new(Fixture::new());
    fx.load("counter", &counter('1'));
    let names: Vec<String> = (0..200).map(|i| format!("p{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        fx.node.start_process(name, "counter", &format!(r#"{{"start":{}}}"#, i * 10)).unwrap();
    }
    // A caller keeps adding to every process while the migration runs.
    let adder = {
        let (fx, names) = (Arc::clone(&fx), names.clone());
        thread::spawn(move || {
            for name in &names {
                send(&fx.node, name, r#"{"add":1}"#);
            }
        })
    };
    fx.write("counter.wat", counter('2'));
    let result = fx.node.reload_module("counter", &ReloadOptions::default());
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    adder.join().unwrap();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(process_vsn(&fx.node, name).as_deref(), Some("2"), "{name}");
        assert_eq!(send(&fx.node, name, r#""get""#), i as i64 * 10 + 1, "{name} kept its state and the add");
    }
}
