//! Fixtures: small WAT modules built from parts, and a node in a temp directory.

use std::path::PathBuf;
use std::time::Duration;

use zest_runtime::{Limits, Node, NodeConfig, ReloadOptions, ReloadResult, Status};

/// The ABI's required parts: a memory and a `zest_alloc` that hands out a fixed
/// input area at 8192 (fixtures take inputs up to 56 KiB).
pub const BASE: &str = r#"
  (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
"#;

/// Escapes bytes for a WAT data string.
fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A function `name` that returns the constant output `bytes` stored at `offset`.
pub fn constant(name: &str, offset: u32, bytes: &[u8]) -> String {
    format!(
        r#"(data (i32.const {offset}) "{data}")
  (func (export "{name}") (param i32 i32) (result i64)
    i64.const {packed})"#,
        data = wat_bytes(bytes),
        packed = ((offset as u64) << 32) | bytes.len() as u64,
    )
}

/// A function `name` that spins `iterations` times, then returns `bytes` at `offset`.
pub fn slow_constant(name: &str, offset: u32, bytes: &[u8], iterations: u64) -> String {
    format!(
        r#"(data (i32.const {offset}) "{data}")
  (func (export "{name}") (param i32 i32) (result i64) (local $i i64)
    (loop $spin
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $spin (i64.lt_u (local.get $i) (i64.const {iterations}))))
    i64.const {packed})"#,
        data = wat_bytes(bytes),
        packed = ((offset as u64) << 32) | bytes.len() as u64,
    )
}

/// A function `echo` that returns its input.
pub const ECHO: &str = r#"
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))"#;

/// A module (as WAT) with the ABI base, `get` returning `{"v":N}`, `slow_get`
/// doing the same after `spin` iterations, and `echo`.
pub fn versioned(v: u32, spin: u64) -> String {
    let out = format!("{{\"v\":{v}}}");
    format!(
        "(module {BASE} {} {} {ECHO})",
        constant("get", 16, out.as_bytes()),
        slow_constant("slow_get", 64, out.as_bytes(), spin)
    )
}

/// A module of the ABI base and `parts`; imports go first, as WAT requires.
pub fn module(parts: &[&str]) -> String {
    let (imports, rest): (Vec<&str>, Vec<&str>) = parts.iter().partition(|part| part.starts_with("(import"));
    format!("(module {} {BASE} {})", imports.join("\n"), rest.join("\n"))
}

/// A node whose data directory and module files live in a temp directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub node: Node,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = NodeConfig { data_dir: Some(dir.path().join("data")), limits, ..NodeConfig::default() };
        let node = Node::new(config).expect("node starts");
        Fixture { dir, node }
    }

    /// Writes `text` to `file` in the fixture directory and returns its path.
    pub fn write(&self, file: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).expect("write fixture");
        path
    }

    /// Writes and loads module `name` from `name.wat`, asserting success.
    pub fn load(&self, name: &str, wat: &str) -> ReloadResult {
        let path = self.write(&format!("{name}.wat"), wat);
        let result = self.node.load_module(name, &path, &ReloadOptions::default());
        assert_eq!(result.status(), Status::Ok, "{result:#?}");
        result
    }

    pub fn call(&self, module: &str, function: &str, args: &str) -> String {
        self.node.call(module, function, args).unwrap_or_else(|err| panic!("{module}.{function}: {err}"))
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// Writes `bytes` to `path`, creating its directory first, and returns the path.
pub fn write_at(path: PathBuf, bytes: impl AsRef<[u8]>) -> PathBuf {
    std::fs::create_dir_all(path.parent().expect("a file's directory")).expect("create the fixture's directory");
    std::fs::write(&path, bytes).expect("write fixture");
    path
}

pub fn limits(call_timeout_ms: u64, memory_mb: u32, drain_timeout_ms: u64) -> Limits {
    Limits {
        call_timeout: Duration::from_millis(call_timeout_ms),
        memory_mb,
        drain_timeout: Duration::from_millis(drain_timeout_ms),
        ..Limits::default()
    }
}

/// The demo's counter process module (`examples/demo/counter.wat`) with version
/// string `vsn` (one character).
pub fn counter(vsn: char) -> String {
    let wat = include_str!("../../../../examples/demo/counter.wat");
    let vsn_data = r#"(data (i32.const 0) "1")"#;
    assert!(wat.contains(vsn_data), "the counter's vsn data moved; update the fixture");
    wat.replace(vsn_data, &format!(r#"(data (i32.const 0) "{vsn}")"#))
}

/// The counter's `zest_code_change` body that reads the state.
const COUNTER_CODE_CHANGE: &str =
    "(global.set $count (call $after (local.get $ptr) (local.get $len) (i32.const 16) (i32.const 7)))";

/// The counter with version `vsn` whose `zest_code_change` runs `body` instead.
pub fn counter_changing_with(vsn: char, body: &str) -> String {
    let wat = counter(vsn);
    assert!(wat.contains(COUNTER_CODE_CHANGE), "the counter's code_change moved; update the fixture");
    wat.replace(COUNTER_CODE_CHANGE, body)
}

/// The counter with `import` added first.
pub fn with_import(wat: &str, import: &str) -> String {
    wat.replacen("(module", &format!("(module\n  {import}"), 1)
}
