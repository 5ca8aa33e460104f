//! The guest SDK's component form (`crates/guest`, `zest_guest::component!`):
//! a core module with the canonical ABI of the `zest:guest` worlds written by
//! hand, made into a component here, in-process, by `wit-component`.
//!
//! Rust 1.63 (Debian's `rustc`, the one these machines build wasm32 with) has
//! no `wit-bindgen`, so the SDK writes the canonical ABI's core names itself —
//! imports from `zest:guest/host@1.0.0`, exports `vsn`,
//! `zest:guest/process@1.0.0#handle`, `cabi_post_…`, `cabi_realloc` — and the
//! node supplies what `wit-component` needs besides: the WIT. The world is
//! chosen from what the module exports (`vsn`, `zest:guest/process`,
//! `zest:guest/dynamic`, any of them), importing `zest:guest/host`, so a
//! module exporting both a process and plugin functions is one component.
//!
//! A core module is in component form when it carries the SDK's marker (the
//! custom section [`MARKER`]) or names a `zest:guest` interface in an import
//! or export: any other core module is left to the core ABI (CONTRACT.md §2).
//! The engine wraps such a build before compiling it (`engine/engines.rs`),
//! wherever it came from — a `.rs` extension, a `.wasm` extension, an app's
//! build — and keeps the compiled component under the sha256 of the core
//! bytes, so the compile cache and the builds a cluster fetches by sha256 hold
//! the module as the user built it.

use wasmparser::{Chunk, Parser, Payload};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

/// The custom section `zest_guest::component!` leaves in a module.
pub(crate) const MARKER: &str = "zest:component-form";

/// The WIT package `zest:guest@1.0.0` (CONTRACT.md §13).
pub const ZEST_WIT: &str = include_str!("../../wit/zest.wit");

const HOST: &str = "zest:guest/host@1.0.0";
const PROCESS: &str = "zest:guest/process@1.0.0";
const DYNAMIC: &str = "zest:guest/dynamic@1.0.0";

/// What a core module in component form exports of the `zest:guest` worlds.
#[derive(Debug, Default, PartialEq, Eq)]
struct Form {
    vsn: bool,
    process: bool,
    dynamic: bool,
}

/// `Some` when `wasm` is a core module in the SDK's component form: the
/// component made of it, or why none can be (a message for `invalid_module`).
/// `None` for a component, a core module of the core ABI, or bytes that are
/// not wasm (the engine says what is wrong with those).
pub fn component_form(wasm: &[u8]) -> Option<Result<Vec<u8>, String>> {
    let form = match read_form(wasm)? {
        Ok(form) => form,
        Err(message) => return Some(Err(not_wrapped(&message))),
    };
    Some(wrap(wasm, &form).map_err(|message| not_wrapped(&message)))
}

fn not_wrapped(message: &str) -> String {
    format!("this core module is in the guest SDK's component form, but no component can be made of it: {message}")
}

/// Reads the module's marker, imports and exports: `None` when it is not in
/// component form.
fn read_form(wasm: &[u8]) -> Option<Result<Form, String>> {
    if Parser::is_component(wasm) || !Parser::is_core_wasm(wasm) {
        return None;
    }
    let mut marked = false;
    let mut imports: Vec<(&str, &str)> = Vec::new();
    // Function exports only: memory and globals (`__data_end`) are the
    // module's own business.
    let mut exports: Vec<&str> = Vec::new();
    let mut parser = Parser::new(0);
    let mut offset = 0;
    loop {
        // A module that does not parse (a section past the end, too) is the
        // engine's to refuse.
        let rest = wasm.get(offset..)?;
        let Ok(Chunk::Parsed { consumed, payload }) = parser.parse(rest, true) else { return None };
        offset += consumed;
        match payload {
            Payload::CustomSection(section) if section.name() == MARKER => marked = true,
            Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    let Ok(import) = import else { return None };
                    imports.push((import.module, import.name));
                }
            }
            Payload::ExportSection(section) => {
                for export in section {
                    let Ok(export) = export else { return None };
                    if export.kind == wasmparser::ExternalKind::Func {
                        exports.push(export.name);
                    }
                }
            }
            // Function bodies say nothing of the form: a large module's are
            // stepped over whole, as every cold compile of a core module
            // passes here.
            Payload::CodeSectionStart { size, .. } => {
                parser.skip_section();
                offset += size as usize;
            }
            Payload::End(_) => break,
            _ => {}
        }
    }
    let names_zest = |name: &str| name.starts_with("zest:guest/");
    if !marked && !imports.iter().any(|(module, _)| names_zest(module)) && !exports.iter().any(|name| names_zest(name))
    {
        return None;
    }
    Some(form_of(&imports, &exports))
}

/// Which parts of the `zest:guest` worlds the module's exports make, checked
/// against what a component of them may import and export.
fn form_of(imports: &[(&str, &str)], exports: &[&str]) -> Result<Form, String> {
    let mut form = Form::default();
    for name in exports {
        let interface = name.strip_prefix("cabi_post_").unwrap_or(name);
        if interface == "vsn" {
            form.vsn = true;
        } else if interface.starts_with(&format!("{PROCESS}#")) {
            form.process = true;
        } else if interface.starts_with(&format!("{DYNAMIC}#")) {
            form.dynamic = true;
        } else if interface.starts_with("zest:guest/") {
            return Err(format!(
                "it exports `{name}`, which is not a function of the `zest:guest` worlds (`vsn`, `{PROCESS}#…`, \
                 `{DYNAMIC}#…`)"
            ));
        } else if !is_machinery(name) {
            // The component would not export it: a core-form export left in
            // (`export!`, `process!`) would silently stop being callable.
            return Err(format!(
                "it exports `{name}`, which a component made of it cannot export: in component form, a function \
                 served by name goes in `component!`'s `functions`, a process is a `server` (the core form's \
                 `export!`, `process!` and `vsn!` do not mix with it)"
            ));
        }
    }
    if let Some((module, name)) = imports.iter().find(|(module, _)| *module != HOST) {
        let hint = if *module == super::abi::IMPORT_MODULE {
            " (the core form's import: in component form, use `zest_guest::component::log`, `call` and `now_ms`, and \
             an `Err` to fail a call)"
        } else {
            ""
        };
        return Err(format!(
            "it imports `{module}.{name}`; a module in component form imports only from `{HOST}`{hint}"
        ));
    }
    if form == Form::default() {
        return Err(format!("it exports none of `vsn`, `{PROCESS}` and `{DYNAMIC}`"));
    }
    Ok(form)
}

/// A function export that is not the guest's but its toolchain's or the
/// canonical ABI's: the SDK's `zest_alloc` (linked into every module),
/// `cabi_realloc` and its kin, a reactor's `_initialize`.
fn is_machinery(name: &str) -> bool {
    name == "zest_alloc" || name == "_initialize" || name.starts_with("cabi_") || name.starts_with("__")
}

/// The world of `form`'s exports, importing `zest:guest/host`, as WIT text.
fn world(form: &Form) -> String {
    let mut world = format!("package zest:wrapped;\nworld guest {{\n  import {HOST};\n");
    if form.vsn {
        world.push_str("  export vsn: func() -> string;\n");
    }
    if form.process {
        world.push_str(&format!("  export {PROCESS};\n"));
    }
    if form.dynamic {
        world.push_str(&format!("  export {DYNAMIC};\n"));
    }
    world.push_str("}\n");
    world
}

/// The component of `wasm`. The module is validated first (`wit-component`
/// assumes a valid one), and a panic inside `wit-component` is a refusal
/// like any other: bad input never takes the reload down.
fn wrap(wasm: &[u8], form: &Form) -> Result<Vec<u8>, String> {
    wasmparser::Validator::new().validate_all(wasm).map_err(|err| format!("the module is not valid: {err}"))?;
    std::panic::catch_unwind(|| encode(wasm, form))
        .unwrap_or_else(|_| Err("wit-component failed on this module (it panicked)".into()))
}

fn encode(wasm: &[u8], form: &Form) -> Result<Vec<u8>, String> {
    let mut resolve = Resolve::default();
    resolve.push_str("zest.wit", ZEST_WIT).map_err(|err| format!("the zest:guest WIT does not parse: {err:#}"))?;
    let package = resolve.push_str("wrapped.wit", &world(form)).map_err(|err| format!("{err:#}"))?;
    let world = resolve.select_world(&[package], Some("guest")).map_err(|err| format!("{err:#}"))?;
    let mut module = wasm.to_vec();
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .map_err(|err| format!("{err:#}"))?;
    let encoder = ComponentEncoder::default().module(&module).map_err(|err| format!("{err:#}"))?;
    encoder.validate(true).encode().map_err(|err| format!("{err:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module in component form, written by hand: `vsn` and
    /// `zest:guest/process`, importing `zest:guest/host`'s `log`.
    const SERVER: &str = r#"(module
      (import "zest:guest/host@1.0.0" "log" (func $log (param i32 i32 i32)))
      (memory (export "memory") 1)
      (global $heap (mut i32) (i32.const 1024))
      (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
        (local $ptr i32)
        (local.set $ptr (global.get $heap))
        (global.set $heap (i32.add (global.get $heap) (i32.add (local.get 3) (i32.const 8))))
        (local.get $ptr))
      (data (i32.const 8) "\50\00\00\00\02\00\00\00")
      (data (i32.const 80) "v1")
      (func (export "vsn") (result i32) (i32.const 8))
      (func (export "zest:guest/process@1.0.0#init") (param i32 i32) (result i32)
        (call $log (i32.const 2) (local.get 0) (local.get 1))
        (i32.store (i32.const 24) (i32.const 0)) (i32.const 24))
      (func (export "zest:guest/process@1.0.0#handle") (param i32 i32) (result i32)
        (i32.store (i32.const 32) (i32.const 0))
        (i32.store (i32.const 36) (local.get 0))
        (i32.store (i32.const 40) (local.get 1))
        (i32.const 32))
      (func (export "zest:guest/process@1.0.0#save-state") (result i32) (i32.const 8))
      (func (export "zest:guest/process@1.0.0#code-change") (param i32 i32 i32 i32 i32 i32 i32) (result i32)
        (i32.store (i32.const 24) (i32.const 0)) (i32.const 24)))"#;

    fn core(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn a_core_module_of_the_core_abi_or_a_component_is_left_alone() {
        let plain = core(
            r#"(module (memory (export "memory") 1) (func (export "zest_alloc") (param i32) (result i32) i32.const 0))"#,
        );
        assert!(component_form(&plain).is_none());
        let component = wat::parse_str("(component)").unwrap();
        assert!(component_form(&component).is_none());
        assert!(component_form(b"not wasm").is_none());
    }

    #[test]
    fn a_module_in_component_form_becomes_a_component_of_the_world_its_exports_make() {
        let wrapped = component_form(&core(SERVER)).expect("in component form").expect("wraps");
        assert!(Parser::is_component(&wrapped));
        let engine = wasmtime::Engine::default();
        let component = wasmtime::component::Component::new(&engine, &wrapped).unwrap();
        let ty = component.component_type();
        let exports: Vec<&str> = ty.exports(&engine).map(|(name, _)| name).collect();
        assert_eq!(exports, ["vsn", PROCESS]);
        let imports: Vec<&str> = ty.imports(&engine).map(|(name, _)| name).collect();
        assert_eq!(imports, [HOST, "zest:guest/types@1.0.0"], "the types `process` uses come with it");
    }

    #[test]
    fn exports_that_do_not_fit_the_world_are_refused_saying_which() {
        let missing = SERVER.replace(r#"(export "zest:guest/process@1.0.0#save-state")"#, "");
        let message = component_form(&core(&missing)).unwrap().unwrap_err();
        assert!(message.contains("component form") && message.contains("save-state"), "{message}");

        let wrong_type = SERVER.replace(
            r#"(func (export "vsn") (result i32) (i32.const 8))"#,
            r#"(func (export "vsn") (param i32) (result i32) (i32.const 8))"#,
        );
        let message = component_form(&core(&wrong_type)).unwrap().unwrap_err();
        assert!(message.contains("vsn"), "{message}");

        let unknown = SERVER.replace("process@1.0.0#handle", "proces@1.0.0#handle");
        let message = component_form(&core(&unknown)).unwrap().unwrap_err();
        assert!(message.contains("`zest:guest/proces@1.0.0#handle`, which is not a function"), "{message}");

        let core_export = SERVER.replace(r#"(export "vsn")"#, r#"(export "zest_vsn")"#);
        let message = component_form(&core(&core_export)).unwrap().unwrap_err();
        assert!(message.contains("exports `zest_vsn`, which a component made of it cannot export"), "{message}");

        let core_import = SERVER.replace(r#"(import "zest:guest/host@1.0.0" "log""#, r#"(import "zest" "log""#);
        let message = component_form(&core(&core_import)).unwrap().unwrap_err();
        assert!(message.contains("imports `zest.log`") && message.contains("zest_guest::component::log"), "{message}");
    }
}
