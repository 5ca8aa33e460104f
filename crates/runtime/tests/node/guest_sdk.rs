//! A module written with the Rust guest SDK (`examples/guests/hello.rs`), built by
//! a real `rustc` for wasm32 and loaded into a node.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zest_runtime::toolchain::Rustc;
use zest_runtime::CallError;

use super::support::{versioned, Fixture};

#[test]
fn the_example_rust_module_builds_loads_and_calls_other_modules() {
    let rustc = Rustc::find(None)
        .unwrap_or_else(|err| panic!("this test needs a wasm32-capable rustc (scripts/test.sh installs one): {err}"));
    let fx = Fixture::new();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/guests/hello.rs");
    let wasm = fx.path("hello.wasm");
    rustc
        .compile_module(&source, &wasm, &fx.path("build"), source.parent().unwrap(), Duration::from_secs(300), &|_| {})
        .unwrap_or_else(|err| panic!("{} could not build the example: {err}", rustc.version()));

    let result = fx.node.load_module("hello", &wasm, &Default::default());
    assert_eq!(result.status(), zest_runtime::Status::Ok, "{result:#?}");
    assert_eq!(fx.node.status().modules[0].current.vsn, "hello-1.0.0");
    assert_eq!(fx.call("hello", "greet", r#"{"name":"ops"}"#), r#"{"greeting":"hello, ops"}"#);
    assert_eq!(fx.call("hello", "greet", "null"), r#"{"greeting":"hello, world"}"#);
    assert_eq!(fx.call("hello", "sum", "[1, 2, 3.5]"), "6.5");

    let err = fx.node.call("hello", "sum", r#"[1, "two"]"#).unwrap_err();
    assert!(matches!(&err, CallError::Failed { message, .. } if message == r#"not a number: "two""#), "{err}");

    fx.load("clock", &versioned(7, 0));
    let relayed = fx.call("hello", "relay", r#"{"module":"clock","function":"get"}"#);
    assert_eq!(relayed, r#"{"relayed":{"v":7}}"#);

    let now: i64 = fx.call("hello", "now", "null").parse().unwrap();
    let host_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((host_now - now).abs() < 5_000, "guest clock {now} vs host {host_now}");

    // Many calls on pooled instances: the SDK frees its inputs and outputs.
    for i in 0..2000 {
        let out = fx.call("hello", "greet", &format!(r#"{{"name":"n{i}"}}"#));
        assert_eq!(out, format!(r#"{{"greeting":"hello, n{i}"}}"#));
    }
}

#[test]
fn a_rust_module_that_does_not_compile_reports_rustcs_words() {
    let rustc = Rustc::find(None).expect("a wasm32-capable rustc");
    let fx = Fixture::new();
    let source = fx.write("broken.rs", "fn main() {\n    let x: u32 = \"nope\";\n}\n");
    let err = rustc
        .compile_module(
            &source,
            &fx.path("broken.wasm"),
            &fx.path("build"),
            fx.dir.path(),
            Duration::from_secs(300),
            &|_| {},
        )
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("mismatched types") && message.contains("broken.rs:2"), "{message}");
}

#[test]
fn an_sdk_process_keeps_its_state_up_and_down_and_sees_the_direction() {
    let rustc = Rustc::find(None).expect("a wasm32-capable rustc");
    let fx = Fixture::new();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/guests/tally.rs");
    let text = std::fs::read_to_string(&source).unwrap();
    let build = |vsn: &str| {
        let file =
            fx.write(&format!("tally-{vsn}.rs"), text.replace("vsn!(\"tally-1\")", &format!("vsn!(\"tally-{vsn}\")")));
        let wasm = fx.path(&format!("tally-{vsn}.wasm"));
        rustc
            .compile_module(&file, &wasm, &fx.path("build"), fx.dir.path(), Duration::from_secs(300), &|_| {})
            .unwrap_or_else(|err| panic!("{err}"));
        wasm
    };
    let (one, two) = (build("1"), build("2"));
    let module = fx.path("tally.wasm");
    std::fs::copy(&one, &module).unwrap();
    assert_eq!(fx.node.load_module("tally", &module, &Default::default()).status(), zest_runtime::Status::Ok);
    fx.node.start_process("t", "tally", r#"{"start": 10}"#).unwrap();
    assert_eq!(fx.node.call_process("t", r#"{"add": 5}"#).unwrap(), r#"{"count":15,"moves":[]}"#);

    std::fs::copy(&two, &module).unwrap();
    let up = fx.node.reload(&zest_runtime::ReloadRequest::new(zest_runtime::Scope::Module("tally".into()))).unwrap();
    assert_eq!(up.status(), zest_runtime::Status::Ok, "{up:#?}");
    let back = fx
        .node
        .rollback(&zest_runtime::RollbackRequest::new(zest_runtime::RollbackTarget::Module("tally".into())))
        .unwrap();
    assert_eq!(back.status(), zest_runtime::Status::Ok, "{back:#?}");
    assert_eq!(
        fx.node.call_process("t", "null").unwrap(),
        r#"{"count":15,"moves":["up from tally-1","down from tally-2"]}"#
    );
}
