//! Components (CONTRACT.md §13) at the `Node` API: loaded where a core module
//! loads, called over JSON by their WIT types, calling and called by other
//! modules, running processes that migrate to and from core modules, and
//! refused — the old version serving — when the node cannot run them.

use zest_runtime::{
    BuildKind, CallError, FunctionChange, Node, NodeConfig, Reason, ReloadOptions, ReloadRequest, Scope, Signature,
    Status,
};

use super::support::{counter, limits, Fixture, BASE};

const KEEPER: &str = include_str!("components/keeper.wat");
const RELAY: &str = include_str!("components/relay.wat");

fn invalid_args(fixture: &Fixture, function: &str, args: &str) -> String {
    match fixture.node.call("keeper", function, args) {
        Err(CallError::InvalidArgs { message, .. }) => message,
        other => panic!("keeper.{function}({args}) should be refused as invalid args, got {other:?}"),
    }
}

#[test]
fn a_component_loads_as_a_module_and_its_functions_answer_over_json() {
    let fixture = Fixture::new();
    fixture.load("keeper", KEEPER);

    assert_eq!(fixture.call("keeper", "add", "[2, 3]"), "5");
    assert_eq!(fixture.call("keeper", "add", r#"{"b": 3, "a": 2}"#), "5", "args keyed by parameter name");
    assert_eq!(fixture.call("keeper", "echo", r#"["héllo \"there\""]"#), r#""héllo \"there\"""#);
    assert_eq!(fixture.call("keeper", "shop#total", "[[1, 2, 39]]"), "42", "an interface's function by short name");
    assert_eq!(fixture.call("keeper", "acme:store/shop@0.1.0#total", "[[]]"), "0", "and by its full name");
}

#[test]
fn status_names_a_components_kind_and_its_own_vsn_and_callables() {
    let fixture = Fixture::new();
    fixture.load("keeper", KEEPER);
    fixture.load("plain", &format!("(module {BASE})"));

    let status = fixture.node.status();
    let module = |name: &str| status.modules.iter().find(|m| m.name == name).expect("listed");
    let keeper = module("keeper");
    assert_eq!(keeper.current.kind, BuildKind::Component);
    assert_eq!(keeper.current.vsn, "c1", "from the component's `vsn` export");
    assert_eq!(
        keeper.functions,
        ["acme:store/shop@0.1.0#total", "add", "boom", "echo", "mirror", "shop#total", "spin"],
        "callables: top-level functions and interface functions; not vsn, not zest:guest/process"
    );
    assert_eq!(module("plain").current.kind, BuildKind::Module);
}

#[test]
fn wrong_args_are_refused_naming_the_parameter_and_the_type_expected() {
    let fixture = Fixture::new();
    fixture.load("keeper", KEEPER);

    let wrong_type = invalid_args(&fixture, "add", r#"["two", 3]"#);
    assert!(wrong_type.contains("parameter `a`: expected u32, got the string \"two\""), "{wrong_type}");
    let negative = invalid_args(&fixture, "add", "[-1, 3]");
    assert!(negative.contains("parameter `a`: -1 is out of the range of u32"), "{negative}");
    let fraction = invalid_args(&fixture, "add", "[1.5, 3]");
    assert!(fraction.contains("1.5 is not a whole number"), "{fraction}");
    let count = invalid_args(&fixture, "add", "[1]");
    assert!(count.contains("expected 2 argument(s) (a: u32, b: u32), got 1"), "{count}");
    let unknown = invalid_args(&fixture, "add", r#"{"a": 1, "b": 2, "c": 3}"#);
    assert!(unknown.contains("no parameter named `c`"), "{unknown}");
    let element = invalid_args(&fixture, "shop#total", r#"[[1, "x"]]"#);
    assert!(element.contains("parameter `prices`, element 1: expected u32"), "{element}");
    assert!(matches!(fixture.node.call("keeper", "nope", "null"), Err(CallError::FunctionNotFound { .. })));
    // Refused before anything ran: the next call is served.
    assert_eq!(fixture.call("keeper", "add", "[1, 1]"), "2");
}

#[test]
fn a_trap_or_a_loop_fails_only_its_own_call() {
    let fixture = Fixture::with_limits(limits(200, 64, 1_000));
    fixture.load("keeper", KEEPER);

    assert!(matches!(fixture.node.call("keeper", "boom", "null"), Err(CallError::Trap { .. })));
    assert!(matches!(fixture.node.call("keeper", "spin", "[]"), Err(CallError::Timeout { .. })));
    assert_eq!(fixture.call("keeper", "add", "[40, 2]"), "42", "a failed instance is never reused");
}

#[test]
fn modules_of_either_kind_call_each_other() {
    let fixture = Fixture::new();
    fixture.load("keeper", KEEPER);
    fixture.load("relay", RELAY);
    // A core module calling the component through the `"zest"` import.
    let core_caller = format!(
        r#"(module (import "zest" "call" (func $call (param i32 i32 i32 i32 i32 i32) (result i64))) {BASE}
          (data (i32.const 100) "keeperadd[1,2]")
          (func (export "sum") (param i32 i32) (result i64)
            (call $call (i32.const 100) (i32.const 6) (i32.const 106) (i32.const 3) (i32.const 109) (i32.const 5))))"#
    );
    fixture.load("summer", &core_caller);

    assert_eq!(fixture.call("relay", "relay", "null"), r#""42""#, "a component calling a component");
    assert_eq!(fixture.call("summer", "sum", "null"), "3", "a core module calling a component");
}

#[test]
fn a_process_migrates_from_a_core_module_to_a_component_and_back_with_its_state() {
    let fixture = Fixture::new();
    fixture.load("counter", &counter('1'));
    fixture.node.start_process("c", "counter", r#"{"start": 0}"#).expect("starts");
    assert_eq!(fixture.node.call_process("c", r#"{"add": 5}"#).unwrap(), r#"{"count":5}"#);

    // The same module's file now holds the component: the process moves to it,
    // handing its state (the core counter's `5`) to `code-change`.
    let up = fixture.load("counter", KEEPER);
    assert_eq!(up.metadata.swaps[0].new_vsn, "c1");
    assert_eq!(fixture.node.call_process("c", r#""get""#).unwrap(), "5", "the component keeps the core state");

    // And back: the component's `save-state` is the core module's state. The
    // core counter has none of the component's callables: a breaking change.
    let path = fixture.write("counter.wat", counter('2'));
    let refused = fixture.node.load_module("counter", &path, &ReloadOptions::default());
    assert_eq!(refused.errors[0].reason, Reason::BreakingChange, "{refused:#?}");
    assert!(refused.errors[0].message.contains("`add` func(a: u32, b: u32) -> u32 is removed"), "{refused:#?}");
    assert_eq!(fixture.node.call_process("c", r#""get""#).unwrap(), "5", "still on the component");
    let allowed = ReloadOptions { allow_breaking: true, ..ReloadOptions::default() };
    assert_eq!(fixture.node.load_module("counter", &path, &allowed).status(), Status::Ok);
    assert_eq!(fixture.node.call_process("c", r#""get""#).unwrap(), r#"{"count":5}"#);
}

#[test]
fn a_component_the_node_cannot_run_is_refused_and_the_old_version_keeps_serving() {
    let fixture = Fixture::new();
    fixture.load("keeper", KEEPER);
    let refuse = |file: &str, bytes: &[u8], expected: &str| {
        let path = fixture.write(file, bytes);
        let result = fixture.node.load_module("keeper", &path, &ReloadOptions::default());
        assert_eq!(result.status(), Status::Error, "{result:#?}");
        assert_eq!(result.errors[0].reason, Reason::InvalidModule, "{result:#?}");
        assert!(result.errors[0].message.contains(expected), "{}", result.errors[0].message);
        assert_eq!(fixture.call("keeper", "add", "[1, 2]"), "3", "the old version serves");
    };

    refuse(
        "keeper.wat",
        br#"(component (import "acme:missing/thing@1.0.0" (instance)))"#,
        "import `acme:missing/thing@1.0.0` is not provided",
    );
    refuse(
        "keeper.wat",
        br#"(component (import "zest:guest/host@1.0.0" (instance (export "spawn" (func)))))"#,
        "`zest:guest/host@1.0.0#spawn` is not part of the guest interface",
    );
    refuse(
        "keeper.wat",
        br#"(component
             (core module $m (func (export "v") (result i32) i32.const 0))
             (core instance $i (instantiate $m))
             (func (export "vsn") (result u32) (canon lift (core func $i "v"))))"#,
        "export `vsn` has type func() -> u32, expected func() -> string",
    );
    // A component's header, then bytes no engine takes.
    refuse("keeper.wasm", b"\0asm\x0d\x00\x01\x00\xff\xff\xff", "");
}

#[test]
fn a_component_comes_back_from_the_compile_cache_after_a_restart() {
    let fixture = Fixture::new();
    let path = fixture.write("keeper.wat", KEEPER);
    let config = || NodeConfig { data_dir: Some(fixture.path("cached")), ..NodeConfig::default() };
    {
        let node = Node::new(config()).expect("node starts");
        let first = node.load_module("keeper", &path, &ReloadOptions::default());
        assert!(first.metadata.swaps[0].compiled, "{first:#?}");
        node.flush_writes();
    }
    let node = Node::new(config()).expect("node starts again");
    let again = node.load_module("keeper", &path, &ReloadOptions::default());
    assert_eq!(again.status(), Status::Ok, "{again:#?}");
    assert!(!again.metadata.swaps[0].compiled, "machine code from the cache: {again:#?}");
    assert_eq!(node.call("keeper", "add", "[20, 22]").unwrap(), "42");
}

#[test]
fn a_quiet_component_tiers_up_to_cranelift_and_its_process_keeps_running() {
    let fixture = Fixture::new();
    let config = NodeConfig {
        data_dir: Some(fixture.path("tiered")),
        tier_up_after: Some(std::time::Duration::from_millis(50)),
        ..NodeConfig::default()
    };
    let node = Node::new(config).expect("node starts");
    let path = fixture.write("keeper.wat", KEEPER);
    assert_eq!(node.load_module("keeper", &path, &ReloadOptions::default()).status(), Status::Ok);
    node.start_process("k", "keeper", r#"{"kept": true}"#).expect("starts on the component");
    let compiler = || node.status().modules[0].current.compiler;
    assert_eq!(compiler(), zest_runtime::Compiler::Winch, "a new component serves on Winch code at once");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while compiler() != zest_runtime::Compiler::Cranelift {
        assert!(std::time::Instant::now() < deadline, "no tier-up within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(node.call("keeper", "add", "[40, 2]").unwrap(), "42", "new instances from Cranelift code");
    assert_eq!(node.call_process("k", r#""get""#).unwrap(), r#"{"kept": true}"#, "the process kept its instance");
}

#[test]
fn a_plugin_serves_the_names_its_dynamic_interface_lists() {
    let fixture = Fixture::new();
    fixture.load("plugin", include_str!("components/plugin.wat"));

    let status = fixture.node.status();
    assert_eq!(status.modules[0].functions, ["bye", "hello", "ping"], "its own export and the names `functions` lists");
    assert_eq!(fixture.call("plugin", "hello", r#"{"name": "ops"}"#), r#"{"name": "ops"}"#, "args in, JSON out");
    match fixture.node.call("plugin", "bye", "null") {
        Err(CallError::Failed { message, .. }) => assert_eq!(message, "bye bye"),
        other => panic!("`invoke`'s err fails the call with its message, got {other:?}"),
    }
    assert_eq!(fixture.call("plugin", "ping", "null"), r#""\"pong\"""#, "a string result is a JSON string");
    assert!(matches!(fixture.node.call("plugin", "nope", "null"), Err(CallError::FunctionNotFound { .. })));
}

/// `keeper`, its `add` on signed integers.
fn keeper_adding_signed() -> String {
    let unsigned = r#"(func (export "add") (param "a" u32) (param "b" u32) (result u32)"#;
    assert!(KEEPER.contains(unsigned), "keeper's add moved; update the fixture");
    KEEPER.replace(unsigned, r#"(func (export "add") (param "a" s32) (param "b" s32) (result s32)"#)
}

#[test]
fn a_build_changing_a_callables_type_is_refused_unless_allowed_and_a_dry_run_shows_the_change() {
    let fixture = Fixture::new();
    fixture.load("keeper", KEEPER);
    fixture.write("keeper.wat", keeper_adding_signed());
    let reload = |options: ReloadOptions| {
        let request = ReloadRequest { options, ..ReloadRequest::new(Scope::Module("keeper".into())) };
        fixture.node.reload(&request).expect("runs")
    };

    let dry = reload(ReloadOptions { dry_run: true, ..ReloadOptions::default() });
    assert_eq!(dry.errors[0].reason, Reason::BreakingChange, "a dry run reports what a reload would: {dry:#?}");
    let refused = reload(ReloadOptions::default());
    assert_eq!(refused.status(), Status::Error);
    assert_eq!(refused.errors[0].reason, Reason::BreakingChange);
    let message = &refused.errors[0].message;
    assert!(
        message.contains("`add` changes from func(a: u32, b: u32) -> u32 to func(a: s32, b: s32) -> s32"),
        "{message}"
    );
    assert!(matches!(fixture.node.call("keeper", "add", "[-1, 2]"), Err(CallError::InvalidArgs { .. })), "u32 still");

    let allowed = ReloadOptions { allow_breaking: true, ..ReloadOptions::default() };
    let planned = reload(ReloadOptions { dry_run: true, ..allowed.clone() });
    assert_eq!(planned.status(), Status::Ok, "{planned:#?}");
    assert_eq!(
        planned.metadata.plan[0].functions_changed,
        [FunctionChange {
            name: "add".into(),
            from: "func(a: u32, b: u32) -> u32".into(),
            to: "func(a: s32, b: s32) -> s32".into()
        }]
    );
    assert_eq!(reload(allowed).status(), Status::Ok);
    assert_eq!(fixture.call("keeper", "add", "[-1, 2]"), "1");
}

#[test]
fn describe_shows_each_callable_with_its_wit_type_and_a_core_modules_as_json() {
    let fixture = Fixture::new();
    fixture.load("keeper", KEEPER);
    fixture.load("plain", &super::support::versioned(1, 0));

    let keeper = fixture.node.describe("keeper").expect("loaded");
    assert_eq!((keeper.vsn.as_str(), keeper.kind), ("c1", BuildKind::Component));
    let of = |name: &str| keeper.functions.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone()).unwrap();
    assert_eq!(of("add").wit(), "func(a: u32, b: u32) -> u32");
    assert_eq!(of("echo").params, [("text".to_string(), "string".to_string())]);
    assert_eq!(of("shop#total").wit(), "func(prices: list<u32>) -> u32");
    assert_eq!(of("mirror").wit(), "func(d: direction) -> direction", "a named type by its name");
    assert_eq!(of("boom").result, None);

    let plain = fixture.node.describe("plain").expect("loaded");
    assert_eq!(plain.kind, BuildKind::Module);
    assert!(plain.functions.iter().all(|(_, signature)| *signature == Signature::json()));
    assert_eq!(plain.functions.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["echo", "get", "slow_get"]);
    assert!(fixture.node.describe("nope").is_none());
}

#[test]
fn an_embedder_calls_a_component_with_rust_types_on_whatever_version_is_current() {
    let fixture = Fixture::new();
    fixture.load("keeper", KEEPER);
    fixture.load("plain", &super::support::versioned(1, 0));

    assert_eq!(fixture.node.call_typed::<(u32, u32), (u32,)>("keeper", "add", (40, 2)).unwrap(), (42,));
    let echoed: (String,) = fixture.node.call_typed("keeper", "echo", ("hé".to_string(),)).unwrap();
    assert_eq!(echoed.0, "hé");
    let total: (u32,) = fixture.node.call_typed("keeper", "shop#total", (vec![1u32, 2, 3],)).unwrap();
    assert_eq!(total, (6,));

    let mismatch = fixture.node.call_typed::<(String,), (u32,)>("keeper", "add", ("2".into(),)).unwrap_err();
    assert!(
        matches!(&mismatch, CallError::InvalidArgs { message, .. } if message.contains("func(a: u32, b: u32) -> u32")),
        "{mismatch}"
    );
    let core = fixture.node.call_typed::<(u32,), (u32,)>("plain", "get", (1,)).unwrap_err();
    assert!(matches!(&core, CallError::InvalidArgs { message, .. } if message.contains("core module")), "{core}");
    assert!(matches!(fixture.node.call_typed::<(), ()>("keeper", "boom", ()), Err(CallError::Trap { .. })));

    // Each call finds the function on the current version: after a reload that
    // changes `add` to s32, the old types are refused and the new ones served.
    fixture.write("keeper.wat", keeper_adding_signed());
    let allowed = ReloadOptions { allow_breaking: true, ..ReloadOptions::default() };
    assert_eq!(fixture.node.reload_module("keeper", &allowed).status(), Status::Ok);
    assert!(fixture.node.call_typed::<(u32, u32), (u32,)>("keeper", "add", (1, 2)).is_err());
    assert_eq!(fixture.node.call_typed::<(i32, i32), (i32,)>("keeper", "add", (-5, 2)).unwrap(), (-3,));
}

/// A key-value store the test's "host program" keeps, as a capability.
fn kv_store(
) -> (zest_runtime::Capabilities, std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>) {
    use zest_runtime::wasmtime::StoreContextMut;
    let store = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let (get, set) = (std::sync::Arc::clone(&store), std::sync::Arc::clone(&store));
    let capabilities = zest_runtime::Capabilities::default().interface("acme:kv/store@1.0.0", move |kv| {
        // Each module's keys apart: the host sees which module calls.
        let get = std::sync::Arc::clone(&get);
        kv.func_wrap("get", move |caller: StoreContextMut<'_, zest_runtime::HostState>, (key,): (String,)| {
            Ok((get.lock().unwrap().get(&format!("{}/{key}", caller.data().module())).cloned(),))
        })?;
        let set = std::sync::Arc::clone(&set);
        kv.func_wrap(
            "set",
            move |caller: StoreContextMut<'_, zest_runtime::HostState>, (key, value): (String, String)| {
                set.lock().unwrap().insert(format!("{}/{key}", caller.data().module()), value);
                Ok(())
            },
        )
    });
    (capabilities, store)
}

#[test]
fn a_host_capability_serves_every_version_and_what_the_host_keeps_survives_reloads() {
    let fixture = Fixture::new();
    let (capabilities, store) = kv_store();
    let config = NodeConfig { data_dir: Some(fixture.path("capable")), ..NodeConfig::default() };
    let node = Node::with_capabilities(config, capabilities).expect("node starts");
    let memo = include_str!("components/memo.wat");
    let path = fixture.write("memo.wat", memo);
    assert_eq!(node.load_module("memo", &path, &ReloadOptions::default()).status(), Status::Ok);

    assert_eq!(node.call("memo", "recall", "null").unwrap(), "null");
    assert_eq!(node.call("memo", "remember", r#"["kept"]"#).unwrap(), "null");
    assert_eq!(store.lock().unwrap().get("memo/memo").map(String::as_str), Some("kept"), "the host saw who called");

    // A new build of the module: the host's store, and what it holds, stay.
    std::fs::write(
        &path,
        memo.replace(
            r#"(data (i32.const 100) "memo")"#,
            r#"(data (i32.const 100) "memo") (data (i32.const 120) "v2")"#,
        ),
    )
    .unwrap();
    let reloaded = node.reload_module("memo", &ReloadOptions::default());
    assert_eq!(reloaded.reloaded, ["memo"], "{reloaded:#?}");
    assert_eq!(node.call("memo", "recall", "null").unwrap(), r#""kept""#);

    // A node without the capability refuses the component, naming the import.
    let bare = Fixture::new();
    let path = bare.write("memo.wat", memo);
    let refused = bare.node.load_module("memo", &path, &ReloadOptions::default());
    assert_eq!(refused.errors[0].reason, Reason::InvalidModule);
    assert!(refused.errors[0].message.contains("import `acme:kv/store@1.0.0` is not provided"), "{refused:#?}");
}

#[test]
fn a_capability_whose_types_differ_from_the_import_is_refused_at_load() {
    use zest_runtime::wasmtime::StoreContextMut;
    let fixture = Fixture::new();
    let capabilities = zest_runtime::Capabilities::default().interface("acme:kv/store@1.0.0", |kv| {
        kv.func_wrap("get", |_: StoreContextMut<'_, zest_runtime::HostState>, (key,): (u32,)| Ok((key,)))?;
        kv.func_wrap("set", |_: StoreContextMut<'_, zest_runtime::HostState>, (): ()| Ok(()))
    });
    let config = NodeConfig { data_dir: Some(fixture.path("mismatched")), ..NodeConfig::default() };
    let node = Node::with_capabilities(config, capabilities).expect("node starts");
    let path = fixture.write("memo.wat", include_str!("components/memo.wat"));
    let refused = node.load_module("memo", &path, &ReloadOptions::default());
    assert_eq!(refused.errors[0].reason, Reason::InvalidModule, "{refused:#?}");
    assert!(refused.errors[0].message.contains("cannot link"), "{refused:#?}");

    let reserved = zest_runtime::Capabilities::default().interface("zest:guest/host@1.0.0", |_| Ok(()));
    let config = NodeConfig { data_dir: None, ..NodeConfig::default() };
    let err = Node::with_capabilities(config, reserved).expect_err("the node's own interface");
    assert!(err.to_string().contains("the node defines that interface itself"), "{err}");
}

#[test]
fn a_component_importing_wasi_runs_in_a_sandbox_with_random_but_no_environment() {
    let fixture = Fixture::new();
    fixture.load("sandboxed", include_str!("components/sandboxed.wat"));
    assert!(std::env::vars().count() > 0, "the test itself has an environment");

    assert_eq!(fixture.call("sandboxed", "seen", "null"), "0", "no environment variables, no arguments");
    let dice: std::collections::BTreeSet<String> = (0..4).map(|_| fixture.call("sandboxed", "dice", "null")).collect();
    assert!(dice.len() > 1, "random numbers vary: {dice:?}");

    // A WASI interface the node does not link (HTTP) cannot load.
    let path = fixture.write(
        "http.wat",
        r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func)))))"#,
    );
    let refused = fixture.node.load_module("http", &path, &ReloadOptions::default());
    assert_eq!(refused.errors[0].reason, Reason::InvalidModule, "{refused:#?}");
    assert!(refused.errors[0].message.contains("wasi:http/outgoing-handler@0.2.0"), "{refused:#?}");
}

/// A component that misbehaves: `grow()` asks for 200 more pages of memory,
/// and as a process its `handle` answers text that is not JSON.
const UNRULY: &str = r#"(component
  (core module $m
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 8192))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (global.set $heap (i32.add (global.get $heap) (i32.const 64))) (i32.sub (global.get $heap) (i32.const 64)))
    (data (i32.const 100) "oops")
    (func (export "grow") (result i32) (memory.grow (i32.const 200)))
    (func (export "ok") (param i32 i32) (result i32) (i32.store (i32.const 24) (i32.const 0)) (i32.const 24))
    (func (export "handle") (param i32 i32) (result i32)
      (i32.store (i32.const 32) (i32.const 0)) (i32.store (i32.const 36) (i32.const 100))
      (i32.store (i32.const 40) (i32.const 4)) (i32.const 32))
    (func (export "save") (result i32) (i32.store (i32.const 48) (i32.const 100)) (i32.store (i32.const 52) (i32.const 4))
      (i32.const 48))
    (func (export "change") (param i32 i32 i32 i32 i32 i32 i32) (result i32) (i32.store (i32.const 24) (i32.const 0))
      (i32.const 24)))
  (core instance $i (instantiate $m))
  (func (export "grow") (result s32) (canon lift (core func $i "grow")))
  (type $direction-def (enum "up" "down"))
  (export $direction "direction" (type $direction-def))
  (func $init (param "args" string) (result (result (error string)))
    (canon lift (core func $i "ok") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func $handle (param "message" string) (result (result string (error string)))
    (canon lift (core func $i "handle") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func $save (result string) (canon lift (core func $i "save") (memory (core memory $i "memory"))))
  (func $change (param "old-vsn" string) (param "direction" $direction) (param "state" string) (param "extra" string)
    (result (result (error string)))
    (canon lift (core func $i "change") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (instance $process (export "direction" (type $direction)) (export "init" (func $init))
    (export "handle" (func $handle)) (export "save-state" (func $save)) (export "code-change" (func $change)))
  (export "zest:guest/process@1.0.0" (instance $process)))"#;

#[test]
fn a_component_breaking_a_limit_or_answering_what_is_not_json_fails_only_that_call() {
    let fixture = Fixture::with_limits(limits(1_000, 2, 1_000));
    fixture.load("unruly", UNRULY);
    fixture.load("keeper", KEEPER);

    match fixture.node.call("unruly", "grow", "null") {
        Err(CallError::MemoryLimit { module, function, limit_mb }) => {
            assert_eq!((module.as_str(), function.as_str(), limit_mb), ("unruly", "grow", 2))
        }
        other => panic!("growing past limits.memory_mb is a MemoryLimit error, got {other:?}"),
    }

    fixture.node.start_process("u", "unruly", "null").expect("init answers ok");
    match fixture.node.call_process("u", r#""hello""#) {
        Err(zest_runtime::ProcessError::Crashed {
            cause: CallError::InvalidOutput { function, message, .. }, ..
        }) => {
            assert_eq!(function, "process#handle");
            assert!(message.contains("not JSON"), "{message}");
        }
        other => panic!("a reply that is not JSON crashes the handler, got {other:?}"),
    }
    assert_eq!(fixture.call("keeper", "add", "[1, 2]"), "3", "other modules are not affected");
}
