//! Guest faults fail the call with a typed error, never the node, and the next
//! call is served.

use std::time::{Duration, Instant};

use zest_runtime::CallError;

use super::support::{limits, module, versioned, Fixture};

fn faulty() -> String {
    module(&[
        r#"(import "zest" "error" (func $error (param i32 i32)))"#,
        r#"(data (i32.const 16) "bad input: expected a name")"#,
        r#"(data (i32.const 64) "\ff\fe")"#,
        r#"(data (i32.const 80) "hello")"#,
        r#"(data (i32.const 96) "{\"ok\":true}")"#,
        r#"(func (export "ok") (param i32 i32) (result i64) i64.const 0x600000000b)"#,
        r#"(func (export "trap") (param i32 i32) (result i64) unreachable)"#,
        r#"(func (export "fail") (param i32 i32) (result i64)
             (call $error (i32.const 16) (i32.const 26)) i64.const 0)"#,
        r#"(func (export "bad_utf8") (param i32 i32) (result i64) i64.const 0x4000000002)"#,
        r#"(func (export "not_json") (param i32 i32) (result i64) i64.const 0x5000000005)"#,
        r#"(func (export "out_of_bounds") (param i32 i32) (result i64) i64.const 0x7fff000000000010)"#,
        r#"(func (export "spin") (param i32 i32) (result i64) (loop $l (br $l)) i64.const 0)"#,
        r#"(func (export "grow") (param i32 i32) (result i64)
             (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
             i64.const 0)"#,
        r#"(func $recurse (export "recurse") (param i32 i32) (result i64)
             (call $recurse (local.get 0) (local.get 1)))"#,
    ])
}

#[test]
fn each_guest_fault_fails_only_its_call() {
    let fx = Fixture::with_limits(limits(300, 4, 5000));
    fx.load("faulty", &faulty());
    assert_eq!(fx.call("faulty", "ok", "null"), r#"{"ok":true}"#);

    type Check = Box<dyn Fn(&CallError) -> bool>;
    let cases: Vec<(&str, Check, &str)> = vec![
        (
            "trap",
            Box::new(|e| matches!(e, CallError::Trap { trap: wasmtime::Trap::UnreachableCodeReached, .. })),
            "trapped",
        ),
        (
            "fail",
            Box::new(|e| matches!(e, CallError::Failed { message, .. } if message == "bad input: expected a name")),
            "failed: bad input",
        ),
        ("bad_utf8", Box::new(|e| matches!(e, CallError::InvalidOutput { .. })), "not UTF-8"),
        ("not_json", Box::new(|e| matches!(e, CallError::InvalidOutput { .. })), "not JSON"),
        ("out_of_bounds", Box::new(|e| matches!(e, CallError::InvalidOutput { .. })), "outside linear memory"),
        ("spin", Box::new(|e| matches!(e, CallError::Timeout { timeout_ms: 300, .. })), "deadline of 300 ms"),
        ("grow", Box::new(|e| matches!(e, CallError::MemoryLimit { limit_mb: 4, .. })), "memory limit of 4 MiB"),
        ("recurse", Box::new(|e| matches!(e, CallError::Trap { trap: wasmtime::Trap::StackOverflow, .. })), "stack"),
    ];
    for (function, is_expected, text) in cases {
        let started = Instant::now();
        let err = fx.node.call("faulty", function, "null").unwrap_err();
        assert!(is_expected(&err), "{function}: unexpected error {err:?}");
        let message = err.to_string();
        assert!(message.contains(text) && message.contains(&format!("faulty.{function}")), "{function}: {message}");
        assert!(started.elapsed() < Duration::from_secs(3), "{function} took {:?}", started.elapsed());
        assert_eq!(fx.call("faulty", "ok", "null"), r#"{"ok":true}"#, "after {function}");
    }
}

#[test]
fn the_deadline_covers_nested_calls() {
    let fx = Fixture::with_limits(limits(200, 256, 5000));
    fx.load("faulty", &faulty());
    let caller = module(&[
        r#"(import "zest" "call" (func $call (param i32 i32 i32 i32 i32 i32) (result i64)))"#,
        r#"(data (i32.const 16) "faulty")"#,
        r#"(data (i32.const 32) "spin")"#,
        r#"(func (export "relay") (param i32 i32) (result i64)
             (call $call (i32.const 16) (i32.const 6) (i32.const 32) (i32.const 4) (i32.const 0) (i32.const 0)))"#,
    ]);
    fx.load("caller", &caller);
    let started = Instant::now();
    let err = fx.node.call("caller", "relay", "null").unwrap_err();
    assert!(matches!(&err, CallError::Timeout { module, .. } if module == "faulty"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// An idle node's epoch ticker slows down; a call that starts then still gets
/// its whole deadline (the clock is brought up to the time), and no more.
#[test]
fn a_call_on_a_node_idle_for_a_while_gets_its_whole_deadline() {
    let fx = Fixture::with_limits(limits(200, 64, 5000));
    fx.load("faulty", &faulty());
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let err = fx.node.call("faulty", "spin", "null").unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, CallError::Timeout { timeout_ms: 200, .. }), "{err}");
        assert!(took >= Duration::from_millis(195), "stopped early, after {took:?}");
        assert!(took < Duration::from_secs(1), "stopped late, after {took:?}");
    }
}

#[test]
fn call_chains_deeper_than_the_limit_fail_cleanly() {
    let fx = Fixture::new();
    // `loop.again` calls itself through the host forever.
    let looping = module(&[
        r#"(import "zest" "call" (func $call (param i32 i32 i32 i32 i32 i32) (result i64)))"#,
        r#"(data (i32.const 16) "loop")"#,
        r#"(data (i32.const 32) "again")"#,
        r#"(func (export "again") (param i32 i32) (result i64)
             (call $call (i32.const 16) (i32.const 4) (i32.const 32) (i32.const 5) (i32.const 0) (i32.const 0)))"#,
    ]);
    fx.load("loop", &looping);
    let err = fx.node.call("loop", "again", "null").unwrap_err();
    assert!(matches!(err, CallError::DepthExceeded { limit: 64, .. }), "{err}");
    fx.load("clock", &versioned(1, 0));
    assert_eq!(fx.call("clock", "get", "null"), r#"{"v":1}"#);
}

#[test]
fn a_start_function_that_never_returns_fails_its_load_and_the_old_build_serves() {
    let fx = Fixture::with_limits(limits(300, 64, 5000));
    fx.load("clock", &versioned(1, 0));
    let looping = module(&[
        r#"(func $forever (loop $l (br $l)))"#,
        r#"(start $forever)"#,
        r#"(func (export "get") (param i32 i32) (result i64) i64.const 0)"#,
    ]);
    std::fs::write(fx.path("clock.wat"), &looping).unwrap();
    let started = Instant::now();
    let result = fx.node.reload_module("clock", &zest_runtime::ReloadOptions::default());
    assert!(started.elapsed() < Duration::from_secs(2), "the reload took {:?}", started.elapsed());
    assert_eq!(result.errors[0].reason, zest_runtime::Reason::InvalidModule, "{result:#?}");
    assert!(result.errors[0].message.contains("start function ran past the call deadline of 300 ms"), "{result:#?}");
    assert_eq!(fx.call("clock", "get", "null"), r#"{"v":1}"#, "the old build serves");

    // A build whose memory is larger than the limit from the start.
    let greedy = module(&[r#"(func (export "get") (param i32 i32) (result i64) i64.const 0)"#])
        .replace("(memory (export \"memory\") 1)", "(memory (export \"memory\") 2000)");
    std::fs::write(fx.path("clock.wat"), &greedy).unwrap();
    let result = fx.node.reload_module("clock", &zest_runtime::ReloadOptions::default());
    assert!(result.errors[0].message.contains("memory starts at 125 MiB, over the limit of 64 MiB"), "{result:#?}");
    assert_eq!(fx.call("clock", "get", "null"), r#"{"v":1}"#);
}

#[test]
fn a_build_over_the_size_limit_is_refused_before_it_is_compiled() {
    let fx = Fixture::with_limits(zest_runtime::Limits { module_mb: 1, ..limits(5000, 64, 5000) });
    fx.load("clock", &versioned(1, 0));
    // 40,000 exports and a 600 KB data segment: about 2.5 MB of text.
    let mut parts = vec![format!(r#"(data (i32.const 0) "{}")"#, "x".repeat(600_000))];
    for k in 0..40_000 {
        parts.push(format!(r#"(func (export "f{k}") (param i32 i32) (result i64) i64.const 0)"#));
    }
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    std::fs::write(fx.path("clock.wat"), module(&parts)).unwrap();
    let started = Instant::now();
    let result = fx.node.reload_module("clock", &zest_runtime::ReloadOptions::default());
    assert!(started.elapsed() < Duration::from_millis(500), "refused late: {:?}", started.elapsed());
    assert_eq!(result.errors[0].reason, zest_runtime::Reason::InvalidModule, "{result:#?}");
    assert!(result.errors[0].message.contains("over the limit of 1 MiB (limits.module_mb)"), "{result:#?}");
    assert_eq!(fx.call("clock", "get", "null"), r#"{"v":1}"#);
}
