//! Large builds compiled by pieces (`split.rs`): a module of many functions,
//! cut into a core and parts under Winch, answers exactly as the whole module
//! does — calls across parts, tables, globals, data, processes and their
//! migrations — and a broken one is refused as before.

use zest_runtime::{Compiler, Node, NodeConfig, Reason, ReloadOptions, Status};

use super::support::counter;

fn node(dir: &std::path::Path, compiler: Compiler) -> Node {
    let config =
        NodeConfig { data_dir: Some(dir.join(format!("data-{compiler:?}"))), compiler, ..NodeConfig::default() };
    Node::new(config).unwrap()
}

/// `count` functions nobody exports, `$pad{from}`…, each `(i32) -> i32`.
fn padding(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|k| format!("  (func $pad{k} (param i32) (result i32) (i32.add (local.get 0) (i32.const {k})))\n"))
        .collect()
}

/// The demo counter with 70 unexported functions before each of three of its
/// own: its handlers and the helpers they call land in different parts.
fn padded_counter(vsn: char) -> String {
    let wat = counter(vsn);
    let mut out = String::new();
    for (index, line) in wat.lines().enumerate() {
        if line.contains("(func $reply") || line.contains("(func $int") || line.contains("(func (export \"zest_vsn\")")
        {
            out.push_str(&padding(index * 100, 70));
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A module whose callable `check` (in the last part) adds what a function
/// of the first part, one of its own part and one reached through the guest's
/// table (in a middle part) return, plus a mutable global it bumps, and
/// answers `true` when each call of it sees the sum it should.
fn cross_calls() -> String {
    let mut wat = String::from(
        r#"(module
  (import "zest" "now_ms" (func $now (result i64)))
  (type $t (func (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  (table 4 funcref)
  (elem (i32.const 1) $f0 $f150)
  (data (i32.const 16) "true")
  (data (i32.const 32) "false")
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
"#,
    );
    for k in 0..200 {
        wat.push_str(&format!("  (func $f{k} (type $t) (i32.add (local.get 0) (i32.const {k})))\n"));
    }
    wat.push_str(&format!(
        r#"  (func (export "check") (param i32 i32) (result i64) (local $sum i32)
    (drop (call $now))
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (local.set $sum (i32.add (call $f0 (i32.const 1)) (call $f199 (i32.const 1))))
    (local.set $sum (i32.add (local.get $sum) (call_indirect (type $t) (i32.const 5) (i32.const 2))))
    (local.set $sum (i32.add (local.get $sum) (global.get $calls)))
    (if (result i64) (i32.eq (local.get $sum) (i32.add (global.get $calls) (i32.const {expected})))
      (then (i64.const 0x0000001000000004))
      (else (i64.const 0x0000002000000005))))
)"#,
        expected = 1 + 200 + 155,
    ));
    wat
}

#[test]
fn a_large_module_cut_into_parts_answers_as_the_whole_module_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cross.wat");
    for compiler in [Compiler::Winch, Compiler::Cranelift] {
        std::fs::write(&path, cross_calls()).unwrap();
        let node = node(dir.path(), compiler);
        let loaded = node.load_module("cross", &path, &ReloadOptions::default());
        assert_eq!(loaded.status(), Status::Ok, "{compiler:?}: {loaded:#?}");
        for round in 0..3 {
            // Every call (on a pooled instance or a fresh one) sees its global.
            assert_eq!(node.call("cross", "check", "null").unwrap(), "true", "{compiler:?}, call {round}");
        }
        let status = node.status();
        let module = status.modules.iter().find(|m| m.name == "cross").unwrap();
        assert_eq!(module.current.compiler, compiler);

        // A build none of whose pieces the node knew compiled wide (a part
        // per compile thread, `engine.rs`); once its pieces of the usual
        // size are compiled, an edit of one function compiles by them, and
        // both answer alike.
        node.settle();
        let edited = cross_calls().replace("(i32.const 100))", "(i32.const 7100))");
        assert_ne!(edited, cross_calls());
        std::fs::write(&path, edited).unwrap();
        let reloaded = node.reload_module("cross", &ReloadOptions::default());
        assert_eq!(reloaded.status(), Status::Ok, "{compiler:?}: {reloaded:#?}");
        assert!(reloaded.metadata.swaps.first().is_some_and(|swap| swap.compiled), "{reloaded:#?}");
        for round in 0..3 {
            assert_eq!(node.call("cross", "check", "null").unwrap(), "true", "{compiler:?}, edited, call {round}");
        }
    }
}

#[test]
fn a_process_on_a_split_build_runs_and_migrates_with_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), Compiler::Winch);
    let path = dir.path().join("counter.wat");
    std::fs::write(&path, padded_counter('1')).unwrap();
    assert_eq!(node.load_module("counter", &path, &ReloadOptions::default()).status(), Status::Ok);
    node.start_process("c", "counter", r#"{"start":40}"#).unwrap();
    assert_eq!(node.call_process("c", r#"{"add":2}"#).unwrap(), r#"{"count":42}"#);

    std::fs::write(&path, padded_counter('2')).unwrap();
    let reloaded = node.reload_module("counter", &ReloadOptions::default());
    assert_eq!(reloaded.status(), Status::Ok, "{reloaded:#?}");
    assert_eq!(reloaded.metadata.swaps[0].new_vsn, "2");
    assert_eq!(node.call_process("c", r#""get""#).unwrap(), r#"{"count":42}"#, "the state migrated");
    let status = node.status();
    let process = status.processes.iter().find(|p| p.name == "c").unwrap();
    assert_eq!(process.vsn.as_deref(), Some("2"));
}

#[test]
fn a_broken_large_build_is_refused_as_a_whole_one_is_and_the_old_one_serves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cross.wat");
    std::fs::write(&path, cross_calls()).unwrap();
    let mut messages = Vec::new();
    for compiler in [Compiler::Winch, Compiler::Cranelift] {
        let node = node(dir.path(), compiler);
        std::fs::write(&path, cross_calls()).unwrap();
        assert_eq!(node.load_module("cross", &path, &ReloadOptions::default()).status(), Status::Ok);
        // Function 120 now returns an i64 where its type says i32.
        let broken = cross_calls().replace("(i32.add (local.get 0) (i32.const 120))", "(i64.const 120)");
        std::fs::write(&path, broken).unwrap();
        let result = node.reload_module("cross", &ReloadOptions::default());
        assert_eq!(result.status(), Status::Error, "{result:#?}");
        assert_eq!(result.errors[0].reason, Reason::InvalidModule);
        messages.push(result.errors[0].message.clone());
        assert_eq!(node.call("cross", "check", "null").unwrap(), "true", "the old build serves");
    }
    for message in &messages {
        // Named as in the module the user wrote, not as in a part.
        assert!(message.contains("function[122]::f120") && message.contains("type mismatch"), "{message}");
    }
}

/// Element segments are written in order, a later one over an earlier one;
/// cut, each part writes its own share, so the part order would decide.
#[test]
fn overlapping_element_segments_end_as_the_last_one_says_on_both_compilers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cross.wat");
    // The second segment puts $f3 (first part) where the first put $f150
    // (a middle part): `check`'s indirect call then adds 8, not 155.
    let wat = cross_calls()
        .replace("(elem (i32.const 1) $f0 $f150)", "(elem (i32.const 1) $f0 $f150) (elem (i32.const 2) $f3)");
    std::fs::write(&path, wat).unwrap();
    for compiler in [Compiler::Winch, Compiler::Cranelift] {
        let node = node(dir.path(), compiler);
        let loaded = node.load_module("cross", &path, &ReloadOptions::default());
        assert_eq!(loaded.status(), Status::Ok, "{compiler:?}: {loaded:#?}");
        assert_eq!(node.call("cross", "check", "null").unwrap(), "false", "{compiler:?}: table[2] is $f3");
    }
}

/// Found by the `wasm_split` fuzz target: a segment past its table's end
/// fails the whole module's instantiation, even an empty one; cut, the
/// segment was written only by the parts holding its items, so such a build
/// loaded under Winch and was refused under Cranelift.
#[test]
fn a_large_build_with_an_element_segment_past_its_table_is_refused_on_both_compilers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cross.wat");
    let segments = ["(elem (i32.const 9))", "(elem (i32.const 3) $f0 $f150)"];
    for compiler in [Compiler::Winch, Compiler::Cranelift] {
        let node = node(dir.path(), compiler);
        std::fs::write(&path, cross_calls()).unwrap();
        assert_eq!(node.load_module("cross", &path, &ReloadOptions::default()).status(), Status::Ok);
        for segment in segments {
            // The table holds 4 elements: one past its end, or none at all.
            std::fs::write(&path, cross_calls().replace("(elem (i32.const 1) $f0 $f150)", segment)).unwrap();
            let result = node.reload_module("cross", &ReloadOptions::default());
            assert_eq!(result.status(), Status::Error, "{compiler:?}, {segment}: {result:#?}");
            assert_eq!(result.errors[0].reason, Reason::InvalidModule);
            let message = &result.errors[0].message;
            assert!(message.contains("out of bounds table access"), "{compiler:?}, {segment}: {message}");
            assert_eq!(node.call("cross", "check", "null").unwrap(), "true", "the old build serves");
        }
    }
}

#[test]
fn a_split_build_comes_back_from_the_disk_cache_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cross.wat");
    std::fs::write(&path, cross_calls()).unwrap();
    let first = node(dir.path(), Compiler::Winch);
    let loaded = first.load_module("cross", &path, &ReloadOptions::default());
    assert!(loaded.metadata.swaps[0].compiled, "{loaded:#?}");
    first.flush_writes();
    drop(first);

    let restarted = node(dir.path(), Compiler::Winch);
    let again = restarted.load_module("cross", &path, &ReloadOptions::default());
    assert_eq!(again.status(), Status::Ok, "{again:#?}");
    assert!(!again.metadata.swaps[0].compiled, "the pieces came from the disk cache: {again:#?}");
    assert_eq!(restarted.call("cross", "check", "null").unwrap(), "true");
}

/// A module of many types, where the last part names two of them only in
/// its instructions: an indirect call of type `$wide` (its target, in the
/// first part, is reached through the guest's table) and a block of type
/// `$pair` taking two values. Each part keeps the types it names and makes
/// the rest copies of its dispatcher's (fewer trampolines to compile); every
/// instruction must still mean what it did.
fn many_types() -> String {
    let mut wat = String::from(
        r#"(module
  (type $t (func (param i32) (result i32)))
  (type $wide (func (param i64 i64) (result i64)))
  (type $pair (func (param i32 i32) (result i32)))
  (type (func (param f32) (result f32)))
  (type (func (param f64 f64) (result f64)))
  (type (func (param i64) (result i32)))
  (type (func (param f32 i32)))
  (type (func (result f64)))
  (memory (export "memory") 1)
  (table 2 funcref)
  (elem (i32.const 1) $mul)
  (data (i32.const 16) "true")
  (data (i32.const 32) "false")
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
  (func $mul (type $wide) (i64.mul (local.get 0) (local.get 1)))
  (func $unused (param f64 f64) (result f64) (f64.add (local.get 0) (local.get 1)))
"#,
    );
    for k in 0..140 {
        wat.push_str(&format!("  (func $f{k} (type $t) (i32.add (local.get 0) (i32.const {k})))\n"));
    }
    wat.push_str(
        r#"  (func (export "check") (param i32 i32) (result i64)
    i64.const 6
    i64.const 7
    i32.const 1
    call_indirect (type $wide)
    i32.const 40
    i32.const 2
    block (type $pair)
      i32.add
    end
    i64.extend_i32_u
    i64.eq
    (if (result i64) (then (i64.const 0x0000001000000004)) (else (i64.const 0x0000002000000005))))
)"#,
    );
    wat
}

#[test]
fn types_a_part_names_only_in_its_instructions_keep_their_meaning_on_both_compilers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("types.wat");
    std::fs::write(&path, many_types()).unwrap();
    for compiler in [Compiler::Winch, Compiler::Cranelift] {
        let node = node(dir.path(), compiler);
        let loaded = node.load_module("types", &path, &ReloadOptions::default());
        assert_eq!(loaded.status(), Status::Ok, "{compiler:?}: {loaded:#?}");
        assert_eq!(node.call("types", "check", "null").unwrap(), "true", "{compiler:?}: 6 × 7 = 40 + 2");
        // The same indirect call reaching a function of another type traps
        // as the whole module would.
        std::fs::write(&path, many_types().replace("(elem (i32.const 1) $mul)", "(elem (i32.const 1) $unused)"))
            .unwrap();
        assert_eq!(node.reload_module("types", &ReloadOptions::default()).status(), Status::Ok);
        let trapped = node.call("types", "check", "null").unwrap_err().to_string();
        assert!(trapped.contains("indirect call type mismatch"), "{compiler:?}: {trapped}");
        std::fs::write(&path, many_types()).unwrap();
    }
}

/// A large build none of whose pieces the node knew compiles wide, and its
/// pieces of the usual size compile after the swap; a node dropped while
/// they do lets go of its data directory at once (a new node waits at most
/// two seconds for it), so a new node can take it.
#[test]
fn a_node_dropped_while_a_wide_builds_pieces_compile_frees_its_data_directory_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.wat");
    let big = format!(
        "(module (memory (export \"memory\") 1)\n  (func (export \"zest_alloc\") (param i32) (result i32) i32.const 8192)\n{})",
        padding(0, 6000)
    );
    std::fs::write(&path, &big).unwrap();
    let first = node(dir.path(), Compiler::Winch);
    let loaded = first.load_module("big", &path, &ReloadOptions::default());
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    // The pieces worker (at a low priority) is under way by now, with
    // seconds of work left: 47 pieces of 128 functions, unoptimised.
    std::thread::sleep(std::time::Duration::from_millis(500));
    drop(first);
    let config = NodeConfig {
        data_dir: Some(dir.path().join(format!("data-{:?}", Compiler::Winch))),
        compiler: Compiler::Winch,
        ..NodeConfig::default()
    };
    let again = Node::new(config).expect("the data directory is free");
    let reloaded = again.load_module("big", &path, &ReloadOptions::default());
    assert_eq!(reloaded.status(), Status::Ok, "{reloaded:#?}");
    assert!(!reloaded.metadata.swaps[0].compiled, "the build came from the disk cache");
}
