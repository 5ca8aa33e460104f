//! Guest ABI version 1 (CONTRACT.md §2, `docs/abi.md`): which imports a module may
//! have and which exports it must and may have, with their types.
//!
//! Validation runs once per build, before the build can serve; a module that fails
//! it is refused with `invalid_module` and a message naming the import or export.

use rustc_hash::FxHashMap;
use wasmtime::{ExternType, FuncType, Module, ValType};

/// The import module every import must come from.
pub const IMPORT_MODULE: &str = "zest";

/// The one export the host calls callables through: the loader's dispatcher
/// (`dispatch.rs`), not the guest's.
pub(crate) const DISPATCH: &str = "zest$dispatch";

/// The import module under which a split build's parts import the core's
/// exports (`split.rs`): the loader's, not the guest's.
pub(crate) const CORE: &str = "zest$core";

/// The imports a module may have, with their types.
const IMPORTS: [(&str, &str); 4] = [
    ("error", "(i32, i32) -> ()"),
    ("log", "(i32, i32, i32) -> ()"),
    ("call", "(i32, i32, i32, i32, i32, i32) -> i64"),
    ("now_ms", "() -> i64"),
];

/// The type of every callable function and of `zest_init`, `zest_handle` and
/// `zest_code_change`.
const CALLABLE: &str = "(i32, i32) -> i64";

/// The reserved exports, with their types.
const RESERVED: [(&str, &str); 6] = [
    ("zest_alloc", "(i32) -> i32"),
    ("zest_vsn", "() -> i64"),
    ("zest_init", CALLABLE),
    ("zest_handle", CALLABLE),
    ("zest_state_save", "() -> i64"),
    ("zest_code_change", CALLABLE),
];

/// The names of a build's callables, in dispatch order (`dispatch.rs`).
pub(crate) type Callables = std::sync::Arc<[Box<str>]>;

/// What a valid module exports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Exports {
    /// Callable functions (every function export whose name does not start with
    /// `zest_`), each with its index into an instance's table of typed handles.
    pub(crate) functions: FxHashMap<Box<str>, usize>,
    /// A core module's callables in dispatch order (the keys of `functions`,
    /// as a list two builds compare cheaply); empty for a component.
    pub(crate) callables: Callables,
    pub(crate) vsn: bool,
    pub(crate) init: bool,
    pub(crate) handle: bool,
    pub(crate) state_save: bool,
    pub(crate) code_change: bool,
}

/// A callable's type, as `module.describe` shows it (CONTRACT.md §4): a core
/// module's callables (and the names a component's `zest:guest/dynamic`
/// serves) take JSON and return JSON; a component's have their WIT types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Each parameter's name and type, as WIT writes it (a record by its name).
    pub params: Vec<(String, String)>,
    /// The result's type; `None` for a function without one.
    pub result: Option<String>,
    /// The type written out structurally, names of types aside: what the
    /// `breaking_change` rule compares (a type renamed is not a change).
    pub(crate) shape: String,
}

impl Signature {
    /// JSON in, JSON out.
    pub fn json() -> Signature {
        Signature {
            params: vec![("args".into(), "json".into())],
            result: Some("json".into()),
            shape: "func(args: json) -> json".into(),
        }
    }

    /// As WIT writes a function type: `func(a: u32) -> u32`.
    pub fn wit(&self) -> String {
        let params: Vec<String> = self.params.iter().map(|(name, ty)| format!("{name}: {ty}")).collect();
        match &self.result {
            Some(result) => format!("func({}) -> {result}", params.join(", ")),
            None => format!("func({})", params.join(", ")),
        }
    }
}

/// Checks a module or app name against `^[A-Za-z_][A-Za-z0-9_.]{0,127}$`.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if first_ok && rest_ok && name.len() <= 128 {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: a name starts with a letter or `_`, continues with letters, digits, `_` or `.`, \
             and has at most 128 characters"
        ))
    }
}

/// Validates a compiled build (its `modules`: the whole one, or a split
/// build's core then parts, when `split`) against ABI version 1. `callables` are the
/// callable exports the loader moved behind the dispatcher (`dispatch.rs`),
/// in dispatch order; every other function export is checked here. A split
/// build (`split.rs`) is checked as the module it was cut from: the imports
/// its parts make of its core are the loader's, not the guest's.
pub(crate) fn check(modules: &[&Module], split: bool, callables: &Callables) -> Result<Exports, String> {
    let imports = modules.iter().flat_map(|module| module.imports());
    for import in imports.filter(|import| !(split && import.module() == CORE)) {
        let ty = import.ty();
        if import.module() != IMPORT_MODULE {
            return Err(format!(
                "import `{}.{}` is not allowed: a module may import only from \"{IMPORT_MODULE}\"",
                import.module(),
                import.name()
            ));
        }
        let Some(&(_, want)) = IMPORTS.iter().find(|(name, _)| *name == import.name()) else {
            return Err(format!(
                "import `{IMPORT_MODULE}.{}` is not part of the guest ABI (known: error, log, call, now_ms)",
                import.name()
            ));
        };
        let have = describe(&ty);
        if have != want {
            return Err(format!("import `{IMPORT_MODULE}.{}` has type {have}, expected {want}", import.name()));
        }
    }

    let mut exports = Exports { callables: Callables::clone(callables), ..Exports::default() };
    for (index, name) in callables.iter().enumerate() {
        exports.functions.insert(name.clone(), index);
    }
    let mut has_memory = false;
    for export in modules.iter().flat_map(|module| module.exports()) {
        let name = export.name();
        let ty = export.ty();
        if name == "memory" {
            match &ty {
                ExternType::Memory(memory) if memory.is_64() => {
                    return Err("export `memory` is a 64-bit memory; the guest ABI is wasm32".into())
                }
                ExternType::Memory(_) => has_memory = true,
                _ => return Err(format!("export `memory` must be a memory, not {}", describe(&ty))),
            }
            continue;
        }
        let ExternType::Func(_) = &ty else {
            continue; // globals and tables are the guest's own business
        };
        if name == DISPATCH {
            continue; // the loader's, not the guest's
        }
        let have = describe(&ty);
        if let Some(&(reserved, want)) = RESERVED.iter().find(|(reserved, _)| *reserved == name) {
            if have != want {
                return Err(format!("export `{name}` has type {have}, expected {want}"));
            }
            match reserved {
                "zest_vsn" => exports.vsn = true,
                "zest_init" => exports.init = true,
                "zest_handle" => exports.handle = true,
                "zest_state_save" => exports.state_save = true,
                "zest_code_change" => exports.code_change = true,
                _ => {}
            }
        } else if name.starts_with("zest_") {
            tracing::warn!(export = name, "ignoring an unknown export in the reserved `zest_` namespace");
        } else {
            // A callable of the right type was moved behind the dispatcher.
            return Err(format!("export `{name}` has type {have}; a callable function has type {CALLABLE}"));
        }
    }
    if !has_memory {
        return Err("missing required export `memory`".into());
    }
    if !modules.iter().flat_map(|module| module.exports()).any(|export| export.name() == "zest_alloc") {
        return Err("missing required export `zest_alloc` of type (i32) -> i32".into());
    }
    Ok(exports)
}

/// Renders an extern type the way the ABI tables write it, e.g. `(i32, i32) -> i64`.
fn describe(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(func) => describe_func(func),
        ExternType::Memory(_) => "a memory".into(),
        ExternType::Table(_) => "a table".into(),
        ExternType::Global(_) => "a global".into(),
        ExternType::Tag(_) => "a tag".into(),
    }
}

fn describe_func(func: &FuncType) -> String {
    let params: Vec<String> = func.params().map(|ty| describe_val(&ty)).collect();
    let results: Vec<String> = func.results().map(|ty| describe_val(&ty)).collect();
    let results = match results.len() {
        0 => "()".to_string(),
        1 => results[0].clone(),
        _ => format!("({})", results.join(", ")),
    };
    format!("({}) -> {results}", params.join(", "))
}

fn describe_val(ty: &ValType) -> String {
    match ty {
        ValType::I32 => "i32".into(),
        ValType::I64 => "i64".into(),
        ValType::F32 => "f32".into(),
        ValType::F64 => "f64".into(),
        ValType::V128 => "v128".into(),
        ValType::Ref(_) => "ref".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_wat(body: &str) -> Result<Exports, String> {
        let engine = wasmtime::Engine::default();
        let rewritten = crate::wasm::dispatch::rewrite(&wat::parse_str(format!("(module {body})")).unwrap())?;
        let module = wasmtime::Module::new(&engine, rewritten.wasm).unwrap();
        check(&[&module], false, &rewritten.callables.into())
    }

    const BASE: &str = r#"(memory (export "memory") 1)
        (func (export "zest_alloc") (param i32) (result i32) i32.const 0)"#;

    #[test]
    fn names_follow_the_contract_pattern() {
        for good in ["clock", "_x", "a.b_c9", &"a".repeat(128)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "9lives", "a-b", "a b", ".x", &"a".repeat(129), "é"] {
            assert!(check_name(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn collects_callable_functions_and_reserved_exports() {
        let exports = check_wat(&format!(
            r#"{BASE}
            (func (export "tick") (param i32 i32) (result i64) i64.const 0)
            (func (export "zest_handle") (param i32 i32) (result i64) i64.const 0)
            (func (export "zest_state_save") (result i64) i64.const 0)
            (global (export "__heap_base") i32 (i32.const 0))"#
        ))
        .unwrap();
        assert_eq!(exports.functions.keys().collect::<Vec<_>>(), [&Box::from("tick")]);
        assert!(exports.handle && exports.state_save);
        assert!(!exports.init && !exports.code_change && !exports.vsn);
    }

    #[test]
    fn refuses_foreign_and_unknown_imports_by_name() {
        let foreign = check_wat(&format!(r#"(import "env" "abort" (func)) {BASE}"#)).unwrap_err();
        assert!(foreign.contains("`env.abort`"), "{foreign}");
        let unknown = check_wat(&format!(r#"(import "zest" "spawn" (func)) {BASE}"#)).unwrap_err();
        assert!(unknown.contains("`zest.spawn`"), "{unknown}");
        let mistyped = check_wat(&format!(r#"(import "zest" "now_ms" (func (result i32))) {BASE}"#)).unwrap_err();
        assert!(mistyped.contains("has type () -> i32, expected () -> i64"), "{mistyped}");
    }

    #[test]
    fn refuses_missing_and_mistyped_exports() {
        let no_alloc = check_wat(r#"(memory (export "memory") 1)"#).unwrap_err();
        assert!(no_alloc.contains("missing required export `zest_alloc`"), "{no_alloc}");
        let no_memory = check_wat(r#"(func (export "zest_alloc") (param i32) (result i32) i32.const 0)"#).unwrap_err();
        assert!(no_memory.contains("missing required export `memory`"), "{no_memory}");
        let bad_fn =
            check_wat(&format!(r#"{BASE} (func (export "tick") (param i32) (result i64) i64.const 0)"#)).unwrap_err();
        assert!(bad_fn.contains("export `tick` has type (i32) -> i64"), "{bad_fn}");
        let bad_vsn = check_wat(&format!(r#"{BASE} (func (export "zest_vsn") (result i32) i32.const 0)"#)).unwrap_err();
        assert!(bad_vsn.contains("export `zest_vsn` has type () -> i32, expected () -> i64"), "{bad_vsn}");
    }
}
