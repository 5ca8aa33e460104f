//! The code server: load, call, swap, drain, purge, and what a bad build leaves.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use zest_runtime::{CallError, Reason, ReloadOptions, Status};

use super::support::{constant, limits, module, versioned, Fixture, BASE};

fn force() -> ReloadOptions {
    ReloadOptions { force: true, ..ReloadOptions::default() }
}

fn reload(fx: &Fixture, name: &str) -> zest_runtime::ReloadResult {
    fx.node.reload_module(name, &ReloadOptions::default())
}

#[test]
fn a_loaded_module_answers_calls_and_reports_its_version() {
    let fx = Fixture::new();
    let loaded = fx.load("clock", &versioned(1, 0));
    assert_eq!(loaded.reloaded, ["clock"]);
    assert_eq!(fx.call("clock", "get", "null"), r#"{"v":1}"#);
    assert_eq!(fx.call("clock", "echo", r#"{"a":[1,2]}"#), r#"{"a":[1,2]}"#);

    let status = fx.node.status();
    let clock = &status.modules[0];
    assert_eq!(clock.name, "clock");
    assert_eq!(clock.functions, ["echo", "get", "slow_get"]);
    // Without zest_vsn the vsn is the first 16 hex digits of the file's sha256.
    assert_eq!(clock.current.vsn, clock.current.sha256[..16]);
    assert_eq!(clock.current.source, fx.path("clock.wat"));
    assert!(clock.old.is_empty());
}

#[test]
fn a_swap_under_concurrent_callers_fails_no_call_and_both_versions_serve() {
    let fx = Arc::new(Fixture::new());
    fx.load("clock", &versioned(1, 0));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (fx, stop) = (Arc::clone(&fx), Arc::clone(&stop));
            thread::spawn(move || {
                let (mut seen, mut failures, mut calls) = (BTreeSet::new(), Vec::new(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match fx.node.call("clock", "get", "null") {
                        Ok(out) => {
                            seen.insert(out);
                        }
                        Err(err) => failures.push(err.to_string()),
                    }
                    calls += 1;
                }
                (seen, failures, calls)
            })
        })
        .collect();

    for round in 0..60u32 {
        let v = 1 + (round + 1) % 2;
        fx.write("clock.wat", versioned(v, 0));
        let result = reload(&fx, "clock");
        assert_eq!(result.status(), Status::Ok, "{result:#?}");
        assert_eq!(result.reloaded, ["clock"]);
        thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);

    let mut seen_all = BTreeSet::new();
    for caller in callers {
        let (seen, failures, calls) = caller.join().unwrap();
        assert!(failures.is_empty(), "failed calls: {failures:?}");
        assert!(calls > 100, "caller made only {calls} calls");
        seen_all.extend(seen);
    }
    assert_eq!(seen_all, BTreeSet::from([r#"{"v":1}"#.to_string(), r#"{"v":2}"#.to_string()]));
    // 60 rounds end on v1 (round 59 → v = 1 + 60 % 2).
    assert_eq!(fx.call("clock", "get", "null"), r#"{"v":1}"#);
    assert!(fx.node.status().modules[0].old.is_empty(), "every old version was purged");
}

#[test]
fn a_running_call_finishes_on_its_version_while_the_next_call_gets_the_new_one() {
    let fx = Arc::new(Fixture::new());
    fx.load("clock", &versioned(1, 300_000_000));
    let slow = {
        let fx = Arc::clone(&fx);
        thread::spawn(move || fx.node.call("clock", "slow_get", "null"))
    };
    thread::sleep(Duration::from_millis(30));
    fx.write("clock.wat", versioned(2, 0));
    let result = reload(&fx, "clock");
    // The reload waited for the slow call (well within the 5 s drain timeout).
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert_eq!(slow.join().unwrap().unwrap(), r#"{"v":1}"#);
    assert_eq!(fx.call("clock", "get", "null"), r#"{"v":2}"#);
    assert!(fx.node.status().modules[0].old.is_empty());
}

#[test]
fn an_old_version_busy_past_the_drain_timeout_is_in_use_and_purged_when_it_drains() {
    let fx = Arc::new(Fixture::with_limits(limits(5000, 256, 20)));
    fx.load("clock", &versioned(1, 400_000_000));
    let old_vsn = fx.node.status().modules[0].current.vsn.clone();
    let slow = {
        let fx = Arc::clone(&fx);
        thread::spawn(move || fx.node.call("clock", "slow_get", "null"))
    };
    thread::sleep(Duration::from_millis(30));
    fx.write("clock.wat", versioned(2, 0));
    let result = reload(&fx, "clock");
    assert_eq!(result.status(), Status::Partial, "{result:#?}");
    assert_eq!(result.reloaded, ["clock"]);
    assert_eq!(result.skipped.len(), 1);
    assert_eq!((result.skipped[0].target.as_str(), result.skipped[0].reason), ("clock", Reason::InUse));

    let during = fx.node.status();
    assert_eq!(during.modules[0].old.iter().map(|v| v.vsn.clone()).collect::<Vec<_>>(), [old_vsn]);
    assert_eq!(fx.call("clock", "get", "null"), r#"{"v":2}"#);

    assert_eq!(slow.join().unwrap().unwrap(), r#"{"v":1}"#);
    assert!(fx.node.status().modules[0].old.is_empty(), "the old version went with its last call");
}

#[test]
fn force_hard_purges_calls_running_on_the_old_version() {
    let fx = Arc::new(Fixture::with_limits(limits(60_000, 256, 5000)));
    fx.load("clock", &versioned(1, u64::MAX));
    let stuck = {
        let fx = Arc::clone(&fx);
        thread::spawn(move || fx.node.call("clock", "slow_get", "null"))
    };
    thread::sleep(Duration::from_millis(30));
    fx.write("clock.wat", versioned(2, 0));
    let result = fx.node.reload_module("clock", &force());
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert!(result.duration < Duration::from_secs(2), "hard purge took {:?}", result.duration);
    let err = stuck.join().unwrap().unwrap_err();
    assert!(matches!(err, CallError::Purged { .. }), "{err}");
    assert_eq!(fx.call("clock", "get", "null"), r#"{"v":2}"#);
}

#[test]
fn an_unchanged_build_is_left_alone_unless_forced() {
    let fx = Fixture::new();
    fx.load("clock", &versioned(1, 0));
    let loaded_at = fx.node.status().modules[0].current.loaded_at;

    let result = reload(&fx, "clock");
    assert_eq!(result.status(), Status::Ok);
    assert!(result.reloaded.is_empty());
    assert!(result.skipped.is_empty(), "unchanged is not a skip");
    assert_eq!(result.metadata.unchanged, ["clock"]);
    assert_eq!(fx.node.status().modules[0].current.loaded_at, loaded_at);

    let forced = fx.node.reload_module("clock", &force());
    assert_eq!(forced.reloaded, ["clock"]);
    assert!(forced.metadata.unchanged.is_empty());
    assert!(fx.node.status().modules[0].current.loaded_at > loaded_at);
}

#[test]
fn each_kind_of_bad_build_leaves_the_old_version_serving() {
    let fx = Fixture::new();
    fx.load("clock", &versioned(1, 0));
    let vsn = fx.node.status().modules[0].current.vsn.clone();
    let foreign_import = format!(r#"(module (import "env" "abort" (func)) {BASE})"#);
    let no_alloc = r#"(module (memory (export "memory") 1))"#;
    let cases: [(&str, &[u8], Reason, &str); 4] = [
        ("clock.wasm", b"\x00asm garbage bytes", Reason::InvalidModule, "failed to parse"),
        ("clock.wat", foreign_import.as_bytes(), Reason::InvalidModule, "`env.abort`"),
        ("clock.wat", no_alloc.as_bytes(), Reason::InvalidModule, "missing required export `zest_alloc`"),
        ("clock.wat", b"(module\n  (func (export \"x\") (result i32)\n    i32.bogus))", Reason::CompileError, ":3:"),
    ];
    for (file, bytes, reason, needle) in cases {
        let path = fx.write(file, bytes);
        let result = fx.node.load_module("clock", &path, &ReloadOptions::default());
        assert_eq!(result.status(), Status::Error, "{file}: {result:#?}");
        assert_eq!(result.errors[0].reason, reason, "{file}: {}", result.errors[0].message);
        assert!(result.errors[0].message.contains(needle), "{file}: {}", result.errors[0].message);
        assert!(result.reloaded.is_empty());
        assert_eq!(fx.call("clock", "get", "null"), r#"{"v":1}"#);
        assert_eq!(fx.node.status().modules[0].current.vsn, vsn);
    }
}

#[test]
fn reload_problems_with_the_file_have_their_own_reasons() {
    let fx = Fixture::new();
    fx.load("clock", &versioned(1, 0));
    let missing = fx.node.load_module("clock", fx.path("gone.wat"), &ReloadOptions::default());
    assert_eq!(missing.errors[0].reason, Reason::Enoent);
    std::fs::create_dir(fx.path("dir.wasm")).unwrap();
    let dir = fx.node.load_module("clock", fx.path("dir.wasm"), &ReloadOptions::default());
    assert_eq!(dir.errors[0].reason, Reason::NotAFile);
    let text = fx.write("clock.txt", "hello");
    let unsupported = fx.node.load_module("clock", &text, &ReloadOptions::default());
    assert_eq!(unsupported.errors[0].reason, Reason::UnsupportedExtension);
    let unknown = reload(&fx, "nope");
    assert_eq!((unknown.errors[0].target.as_str(), unknown.errors[0].reason), ("nope", Reason::NotFound));
    let bad_name = fx.node.load_module("9lives", fx.path("clock.wat"), &ReloadOptions::default());
    assert_eq!(bad_name.errors[0].reason, Reason::InvalidModule);
    assert!(bad_name.errors[0].message.contains("invalid name"), "{}", bad_name.errors[0].message);
    assert_eq!(fx.call("clock", "get", "null"), r#"{"v":1}"#);
}

#[test]
fn zest_vsn_names_the_version() {
    let fx = Fixture::new();
    let wat = module(&[&constant("zest_vsn_data", 16, b"unused"), &vsn_export("2.4.1")]);
    fx.load("tagged", &wat);
    assert_eq!(fx.node.status().modules[0].current.vsn, "2.4.1");
    let empty = module(&[&vsn_export("")]);
    let path = fx.write("tagged.wat", empty);
    let result = fx.node.load_module("tagged", &path, &ReloadOptions::default());
    assert_eq!(result.errors[0].reason, Reason::InvalidModule);
    assert!(result.errors[0].message.contains("zest_vsn returned"), "{}", result.errors[0].message);
}

fn vsn_export(vsn: &str) -> String {
    format!(
        r#"(data (i32.const 512) "{vsn}")
  (func (export "zest_vsn") (result i64) i64.const {packed})"#,
        packed = (512u64 << 32) | vsn.len() as u64
    )
}

#[test]
fn unknown_modules_functions_and_bad_arguments_are_told_apart() {
    let fx = Fixture::new();
    fx.load("clock", &versioned(1, 0));
    let err = fx.node.call("nope", "get", "null").unwrap_err();
    assert!(matches!(err, CallError::ModuleNotFound { .. }) && err.is_not_found(), "{err}");
    let err = fx.node.call("clock", "nope", "null").unwrap_err();
    assert!(matches!(err, CallError::FunctionNotFound { .. }) && err.is_not_found(), "{err}");
    // zest_* exports are the ABI's, never callable by name.
    let err = fx.node.call("clock", "zest_alloc", "null").unwrap_err();
    assert!(matches!(err, CallError::FunctionNotFound { .. }), "{err}");
    let err = fx.node.call("clock", "echo", "{not json").unwrap_err();
    assert!(matches!(err, CallError::InvalidArgs { .. }) && !err.is_not_found(), "{err}");
}

/// `relay` calls `callee.get` through the `call` import and returns what it got.
fn relay_module() -> String {
    module(&[
        r#"(import "zest" "call" (func $call (param i32 i32 i32 i32 i32 i32) (result i64)))"#,
        r#"(data (i32.const 16) "callee")"#,
        r#"(data (i32.const 32) "get")"#,
        r#"(data (i32.const 48) "fail")"#,
        r#"(data (i32.const 64) "null")"#,
        r#"(func (export "relay") (param i32 i32) (result i64)
             (call $call (i32.const 16) (i32.const 6) (i32.const 32) (i32.const 3) (i32.const 64) (i32.const 4)))"#,
        r#"(func (export "relay_fail") (param i32 i32) (result i64)
             (call $call (i32.const 16) (i32.const 6) (i32.const 48) (i32.const 4) (i32.const 64) (i32.const 4)))"#,
    ])
}

#[test]
fn a_call_into_another_module_reaches_its_current_version_across_reloads() {
    let fx = Fixture::new();
    fx.load("callee", &versioned(1, 0));
    fx.load("caller", &relay_module());
    assert_eq!(fx.call("caller", "relay", "null"), r#"{"v":1}"#);
    fx.write("callee.wat", versioned(2, 0));
    assert_eq!(reload(&fx, "callee").status(), Status::Ok);
    assert_eq!(fx.call("caller", "relay", "null"), r#"{"v":2}"#);
}

#[test]
fn a_failing_callee_fails_the_caller_with_the_callees_error() {
    let fx = Fixture::new();
    let callee = module(&[
        r#"(import "zest" "error" (func $error (param i32 i32)))"#,
        r#"(data (i32.const 16) "callee says no")"#,
        r#"(func (export "fail") (param i32 i32) (result i64)
             (call $error (i32.const 16) (i32.const 14)) i64.const 0)"#,
    ]);
    fx.load("callee", &callee);
    fx.load("caller", &relay_module());
    let err = fx.node.call("caller", "relay_fail", "null").unwrap_err();
    match err {
        CallError::Failed { module, function, message } => {
            assert_eq!((module.as_str(), function.as_str(), message.as_str()), ("callee", "fail", "callee says no"));
        }
        other => panic!("expected the callee's failure, got {other}"),
    }
    // This callee has no `get`: the caller fails with the callee's not-found.
    let err = fx.node.call("caller", "relay", "null").unwrap_err();
    assert!(
        matches!(&err, CallError::FunctionNotFound { module, function } if module == "callee" && function == "get"),
        "{err}"
    );
}

/// A module of `functions` small callables whose `get` answers `marker`.
fn large(functions: usize, marker: u32) -> String {
    let mut wat = String::from(
        r#"(module (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 1024)
"#,
    );
    wat.push_str(&format!(
        "  (data (i32.const 16) \"{marker}\")\n  (func (export \"get\") (param i32 i32) (result i64) i64.const {})\n",
        (16u64 << 32) | marker.to_string().len() as u64
    ));
    for k in 0..functions {
        wat.push_str(&format!(
            "  (func (export \"f{k}\") (param i32 i32) (result i64) (i64.add (i64.extend_i32_u (local.get 0)) (i64.const {k})))\n"
        ));
    }
    wat.push(')');
    wat
}

#[test]
fn a_reload_while_a_tier_up_compiles_drains_the_old_version_without_waiting_for_the_compile() {
    let dir = tempfile::tempdir().unwrap();
    let config = zest_runtime::NodeConfig {
        data_dir: Some(dir.path().join("data")),
        tier_up_after: Some(Duration::from_millis(1)),
        limits: limits(5000, 256, 50),
        ..zest_runtime::NodeConfig::default()
    };
    let node = zest_runtime::Node::new(config).unwrap();
    let path = dir.path().join("big.wat");
    std::fs::write(&path, large(6000, 1)).unwrap();
    assert_eq!(node.load_module("big", &path, &ReloadOptions::default()).status(), Status::Ok);
    // The wide build's pieces compile first; the tier-up starts right after.
    node.settle();
    thread::sleep(Duration::from_millis(20));
    let compiler = || node.status().modules[0].current.compiler;
    assert_eq!(compiler(), zest_runtime::Compiler::Winch, "the Cranelift compile of 6,000 functions is under way");

    std::fs::write(&path, large(6000, 2)).unwrap();
    let result = node.reload_module("big", &ReloadOptions::default());
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    // The old version drained within the drain timeout (50 ms): the tier-up
    // compiling its code does not keep it in use.
    assert!(result.skipped.is_empty(), "{result:#?}");
    assert!(node.status().modules[0].old.is_empty());
    assert_eq!(node.call("big", "get", "null").unwrap(), "2");
}

#[test]
fn a_quiet_winch_build_tiers_up_to_cranelift_code_that_callers_and_processes_never_notice() {
    let dir = tempfile::tempdir().unwrap();
    let config = zest_runtime::NodeConfig {
        data_dir: Some(dir.path().join("data")),
        tier_up_after: Some(Duration::from_millis(100)),
        ..zest_runtime::NodeConfig::default()
    };
    let node = Arc::new(zest_runtime::Node::new(config).unwrap());
    let clock = dir.path().join("clock.wat");
    std::fs::write(&clock, versioned(1, 0)).unwrap();
    assert_eq!(node.load_module("clock", &clock, &ReloadOptions::default()).status(), Status::Ok);
    let counter = dir.path().join("counter.wat");
    std::fs::write(&counter, super::support::counter('1')).unwrap();
    assert_eq!(node.load_module("counter", &counter, &ReloadOptions::default()).status(), Status::Ok);
    node.start_process("tally", "counter", "{}").unwrap();
    assert_eq!(node.call_process("tally", r#"{"add": 5}"#).unwrap(), r#"{"count":5}"#);
    let compiler = |module: &str| {
        let status = node.status();
        status.modules.iter().find(|m| m.name == module).unwrap().current.compiler
    };
    assert_eq!(compiler("clock"), zest_runtime::Compiler::Winch, "a new build serves on Winch code at once");

    // Callers all along: none fails, none sees anything but version 1.
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let (node, stop) = (Arc::clone(&node), Arc::clone(&stop));
        thread::spawn(move || {
            let mut calls = 0;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(node.call("clock", "get", "null").unwrap(), r#"{"v":1}"#);
                calls += 1;
            }
            calls
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while compiler("clock") != zest_runtime::Compiler::Cranelift
        || compiler("counter") != zest_runtime::Compiler::Cranelift
    {
        assert!(std::time::Instant::now() < deadline, "no tier-up within 20 s");
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(caller.join().unwrap() > 0);
    let status = node.status();
    let clock_status = status.modules.iter().find(|m| m.name == "clock").unwrap();
    assert!(clock_status.old.is_empty(), "the same version, its code replaced: {clock_status:?}");
    // The process kept its instance and state; new messages still reach it.
    assert_eq!(node.call_process("tally", r#"{"add": 1}"#).unwrap(), r#"{"count":6}"#);
    assert_eq!(status.processes[0].vsn.as_deref(), Some("1"));

    // A build whose Cranelift code is cached loads that directly.
    std::fs::write(&clock, versioned(2, 0)).unwrap();
    assert_eq!(node.reload_module("clock", &ReloadOptions::default()).status(), Status::Ok);
    std::fs::write(&clock, versioned(1, 0)).unwrap();
    let back = node.reload_module("clock", &ReloadOptions::default());
    assert_eq!(back.metadata.swaps[0].compiler, zest_runtime::Compiler::Cranelift, "{back:#?}");
    assert!(!back.metadata.swaps[0].compiled);

    // A burst of new builds, faster than the quiet period: the last one tiers up.
    for n in 3..23 {
        std::fs::write(&clock, versioned(n, 0)).unwrap();
        assert_eq!(node.reload_module("clock", &ReloadOptions::default()).status(), Status::Ok);
    }
    assert_eq!(compiler("clock"), zest_runtime::Compiler::Winch);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while compiler("clock") != zest_runtime::Compiler::Cranelift {
        assert!(std::time::Instant::now() < deadline, "the last build of a burst did not tier up within 20 s");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(node.call("clock", "get", "null").unwrap(), r#"{"v":22}"#);
}
