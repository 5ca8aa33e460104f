//! The component form of the guest ABI (CONTRACT.md §13, `wit/zest.wit`): which
//! imports a component may have, and what it exports — its callables by the
//! names `module.call` takes, its `vsn`, and the `zest:guest/process` functions.
//!
//! As [`super::abi::check`] does for core modules, the check runs once per
//! build, before it can serve, and a refusal names the import or export.

use rustc_hash::FxHashMap;
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::{Component, ComponentExportIndex};
use wasmtime::Engine;

use super::abi::{Exports, Signature};

/// The package every `zest:guest` interface belongs to.
const PACKAGE: &str = "zest:guest";

/// The interface of the types the others use (`direction`); a component
/// naming them imports it, and the node defines it, empty (types need no
/// definition).
pub(crate) const TYPES_INTERFACE: &str = "zest:guest/types@1.0.0";

/// The imports of `zest:guest/host` and their WIT types.
pub(crate) const HOST_FUNCTIONS: [(&str, &str); 3] = [
    ("log", "func(level: u8, message: string)"),
    ("now-ms", "func() -> u64"),
    ("call", "func(module: string, function: string, args: string) -> result<string, string>"),
];

/// The functions of `zest:guest/process` and their WIT types.
const PROCESS_FUNCTIONS: [(&str, &str); 4] = [
    ("init", "func(args: string) -> result<_, string>"),
    ("handle", "func(message: string) -> result<string, string>"),
    ("save-state", "func() -> string"),
    (
        "code-change",
        "func(old-vsn: string, direction: enum { up, down }, state: string, extra: string) -> result<_, string>",
    ),
];

/// The functions of `zest:guest/dynamic` and their WIT types.
const DYNAMIC_FUNCTIONS: [(&str, &str); 2] = [
    ("functions", "func() -> list<string>"),
    ("invoke", "func(function: string, args: string) -> result<string, string>"),
];

/// One function `module.call` reaches.
#[derive(Debug, Clone)]
pub(crate) struct Callable {
    pub(crate) index: ComponentExportIndex,
    pub(crate) ty: ComponentFunc,
    /// Why it cannot be called over JSON (it takes or returns a resource, a
    /// future or a stream); it still counts as the component's export.
    pub(crate) refused: Option<String>,
    pub(crate) signature: Signature,
}

/// `zest:guest/process`'s functions, when the component exports it.
#[derive(Debug, Clone)]
pub(crate) struct ProcessExports {
    pub(crate) init: ComponentExportIndex,
    pub(crate) handle: ComponentExportIndex,
    pub(crate) save_state: ComponentExportIndex,
    pub(crate) code_change: ComponentExportIndex,
}

/// `zest:guest/dynamic`'s functions, when the component exports it.
#[derive(Debug, Clone)]
pub(crate) struct DynamicExports {
    pub(crate) functions: ComponentExportIndex,
    pub(crate) invoke: ComponentExportIndex,
}

/// What a valid component exports.
#[derive(Debug, Clone, Default)]
pub(crate) struct ComponentExports {
    /// In the order of the names `functions` maps to.
    pub(crate) callables: Vec<Callable>,
    /// Each callable's name (and, for a function of an interface, its short
    /// name when unique) → its index in `callables`.
    pub(crate) functions: FxHashMap<Box<str>, usize>,
    /// `vsn: func() -> string`.
    pub(crate) vsn: Option<ComponentExportIndex>,
    pub(crate) process: Option<ProcessExports>,
    /// Names served through `invoke`: the names its `functions` returns, once
    /// an instance has said them (`code/version.rs`).
    pub(crate) dynamic: Option<DynamicExports>,
}

/// True for an interface of WASI 0.2 (`wasi:random/random@0.2.3`).
fn is_wasi_0_2(name: &str) -> bool {
    name.starts_with("wasi:") && name.split_once('@').is_some_and(|(_, version)| version.starts_with("0.2."))
}

/// The name of a `zest:guest` interface (`zest:guest/host@1.0.0` → `host`).
fn zest_interface(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    let (interface, version) = rest.split_once('@')?;
    version.starts_with("1.").then_some(interface)
}

/// Checks `component`'s imports and exports against the guest ABI's component
/// form — it may import `zest:guest/host` and the interfaces the host
/// capabilities `provided` — and lists what it exports.
pub(crate) fn check(engine: &Engine, component: &Component, provided: &[String]) -> Result<ComponentExports, String> {
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        match (zest_interface(name), item.ty) {
            (Some("host"), ComponentItem::ComponentInstance(instance)) => {
                for (function, item) in instance.exports(engine) {
                    let ComponentItem::ComponentFunc(func) = item.ty else {
                        return Err(format!("import `{name}` has `{function}`, which is not a function"));
                    };
                    let Some(&(_, want)) = HOST_FUNCTIONS.iter().find(|(known, _)| *known == function) else {
                        return Err(format!(
                            "import `{name}#{function}` is not part of the guest interface (known: log, now-ms, call)"
                        ));
                    };
                    let have = describe_func(&func);
                    if have != want {
                        return Err(format!("import `{name}#{function}` has type {have}, expected {want}"));
                    }
                }
            }
            // `zest:guest/types` holds only types (`direction`): a component
            // built against the world `server` imports it to name them.
            (Some("types"), ComponentItem::ComponentInstance(instance)) => {
                if let Some((item, _)) =
                    instance.exports(engine).find(|(_, item)| !matches!(item.ty, ComponentItem::Type(_)))
                {
                    return Err(format!("import `{name}` has `{item}`; `{TYPES_INTERFACE}` holds only types"));
                }
            }
            // WASI 0.2 and the host capabilities: the linker checks the
            // functions and their types.
            _ if is_wasi_0_2(name) || provided.iter().any(|interface| interface == name) => {}
            _ => {
                let also = if provided.is_empty() { String::new() } else { format!(" and {}", provided.join(", ")) };
                return Err(format!(
                    "import `{name}` is not provided: this node provides `zest:guest/host@1.0.0`, WASI 0.2{also}"
                ));
            }
        }
    }

    let names = type_names(engine, &ty);
    let mut exports = ComponentExports::default();
    let mut short: FxHashMap<Box<str>, Vec<usize>> = FxHashMap::default();
    for (name, item) in ty.exports(engine) {
        let index = component.get_export_index(None, name).ok_or_else(|| format!("export `{name}` cannot be found"))?;
        match item.ty {
            ComponentItem::ComponentFunc(func) => {
                if name == "vsn" {
                    let have = describe_func(&func);
                    if have != "func() -> string" {
                        return Err(format!("export `vsn` has type {have}, expected func() -> string"));
                    }
                    exports.vsn = Some(index);
                } else if !is_toolchain_hook(&func, name) {
                    exports.push(name.into(), index, func, &names);
                }
            }
            ComponentItem::ComponentInstance(instance) => {
                let interface = zest_interface(name);
                if interface == Some("process") {
                    let [init, handle, save_state, code_change] =
                        interface_exports(component, engine, name, &index, &instance, PROCESS_FUNCTIONS)?;
                    exports.process = Some(ProcessExports { init, handle, save_state, code_change });
                    continue;
                }
                if interface == Some("dynamic") {
                    let [functions, invoke] =
                        interface_exports(component, engine, name, &index, &instance, DYNAMIC_FUNCTIONS)?;
                    exports.dynamic = Some(DynamicExports { functions, invoke });
                    continue;
                }
                if interface.is_some() {
                    return Err(format!("export `{name}` is not an interface a guest exports (process, dynamic)"));
                }
                for (function, item) in instance.exports(engine) {
                    let ComponentItem::ComponentFunc(func) = item.ty else { continue };
                    if name == "exports" && is_toolchain_hook(&func, function) {
                        continue;
                    }
                    let Some(function_index) = component.get_export_index(Some(&index), function) else {
                        return Err(format!("export `{name}#{function}` cannot be found"));
                    };
                    let at = exports.push(format!("{name}#{function}").into(), function_index, func, &names);
                    let short_name = name.split_once('/').map_or(name, |(_, rest)| rest);
                    let short_name = short_name.split_once('@').map_or(short_name, |(interface, _)| interface);
                    if short_name != name {
                        short.entry(format!("{short_name}#{function}").into()).or_default().push(at);
                    }
                }
            }
            _ => {} // types, modules and resources are the component's own business
        }
    }
    for (name, at) in short {
        if let ([only], false) = (at.as_slice(), exports.functions.contains_key(&name)) {
            exports.functions.insert(name, *only);
        }
    }
    Ok(exports)
}

impl ComponentExports {
    /// What the node asks of any build's exports: callables by name — with
    /// `dynamic`, the names an instance's `zest:guest/dynamic` said it serves,
    /// past the component's own —, `vsn`, and the process functions (all four,
    /// as the interface has them).
    pub(crate) fn summary(&self, dynamic: Vec<String>) -> Result<Exports, String> {
        let mut functions = self.functions.clone();
        for name in dynamic {
            if name.is_empty() || name.len() > 256 {
                return Err(format!("`functions` of zest:guest/dynamic returned the name {name:?}"));
            }
            functions.entry(name.into()).or_insert(self.callables.len());
        }
        let process = self.process.is_some();
        Ok(Exports {
            functions,
            callables: Default::default(),
            vsn: self.vsn.is_some(),
            init: process,
            handle: process,
            state_save: process,
            code_change: process,
        })
    }

    /// Adds a callable; returns its index.
    fn push(&mut self, name: Box<str>, index: ComponentExportIndex, ty: ComponentFunc, names: &Names) -> usize {
        let refused = ty
            .params()
            .map(|(_, ty)| ty)
            .chain(ty.results())
            .find(|ty| !over_json(ty))
            .map(|ty| format!("it takes or returns {}, which JSON cannot carry", describe(&ty)));
        let at = self.callables.len();
        self.functions.insert(name, at);
        let signature = signature(&ty, names);
        self.callables.push(Callable { index, ty, refused, signature });
        at
    }
}

/// The parameters of the build-time hooks component toolchains export as
/// `init`: componentize-qjs 0.4's (top level) and componentize-py 0.25's (in
/// the interface `exports`), each returning `result<_, string>`.
const TOOLCHAIN_HOOK_PARAMS: [&[&str]; 2] =
    [&["shim", "script", "entry-path", "disable-gc"], &["app-name", "symbols", "stub-wasi"]];

/// An `init` that is a start-up hook component toolchains add for themselves
/// (componentize-py, componentize-qjs), not a callable: parameterless and
/// resultless, or a build-time hook with the parameters of
/// [`TOOLCHAIN_HOOK_PARAMS`].
fn is_toolchain_hook(func: &ComponentFunc, name: &str) -> bool {
    if name != "init" {
        return false;
    }
    let params: Vec<&str> = func.params().map(|(param, _)| param).collect();
    (params.is_empty() && func.results().len() == 0) || TOOLCHAIN_HOOK_PARAMS.contains(&params.as_slice())
}

/// The functions `wanted` of the exported `zest:guest` interface `name`, each
/// checked against its WIT type.
fn interface_exports<const N: usize>(
    component: &Component,
    engine: &Engine,
    name: &str,
    index: &ComponentExportIndex,
    instance: &wasmtime::component::types::ComponentInstance,
    wanted: [(&str, &str); N],
) -> Result<[ComponentExportIndex; N], String> {
    let mut found = Vec::with_capacity(N);
    for (function, want) in wanted {
        let Some(ComponentItem::ComponentFunc(func)) = instance.get_export(engine, function).map(|export| export.ty)
        else {
            return Err(format!("export `{name}` lacks `{function}`"));
        };
        let have = describe_func(&func);
        if have != want {
            return Err(format!("export `{name}#{function}` has type {have}, expected {want}"));
        }
        let found_index = component.get_export_index(Some(index), function);
        found.push(found_index.ok_or_else(|| format!("export `{name}#{function}` cannot be found"))?);
    }
    found.try_into().map_err(|_| format!("export `{name}`'s functions cannot be found"))
}

/// Whether values of `ty` can be written as JSON: no resource, future, stream
/// or error context anywhere inside.
fn over_json(ty: &Type) -> bool {
    match ty {
        Type::Own(_) | Type::Borrow(_) | Type::Future(_) | Type::Stream(_) | Type::ErrorContext => false,
        Type::List(list) => over_json(&list.ty()),
        Type::FixedLengthList(list) => over_json(&list.ty()),
        Type::Map(map) => over_json(&map.key()) && over_json(&map.value()),
        Type::Record(record) => record.fields().all(|field| over_json(&field.ty)),
        Type::Tuple(tuple) => tuple.types().all(|ty| over_json(&ty)),
        Type::Variant(variant) => variant.cases().all(|case| case.ty.as_ref().is_none_or(over_json)),
        Type::Option(option) => over_json(&option.ty()),
        Type::Result(result) => {
            result.ok().as_ref().is_none_or(over_json) && result.err().as_ref().is_none_or(over_json)
        }
        _ => true,
    }
}

/// The types the component names (exported or imported, at the top level or
/// in an interface), by which `module.describe` writes them.
type Names = Vec<(Type, String)>;

fn type_names(engine: &Engine, ty: &wasmtime::component::types::Component) -> Names {
    let mut names = Names::new();
    let mut add = |name: &str, item: ComponentItem| match item {
        ComponentItem::Type(ty) => names.push((ty, name.to_string())),
        ComponentItem::ComponentInstance(instance) => {
            for (name, item) in instance.exports(engine) {
                if let ComponentItem::Type(ty) = item.ty {
                    names.push((ty, name.to_string()));
                }
            }
        }
        _ => {}
    };
    for (name, item) in ty.imports(engine) {
        add(name, item.ty);
    }
    for (name, item) in ty.exports(engine) {
        add(name, item.ty);
    }
    names
}

/// What `module.describe` shows of `func`, and the shape `breaking_change`
/// compares.
fn signature(func: &ComponentFunc, names: &Names) -> Signature {
    let params = func.params().map(|(name, ty)| (name.to_string(), describe_in(&ty, names))).collect();
    let results: Vec<String> = func.results().map(|ty| describe_in(&ty, names)).collect();
    let result = match results.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        many => Some(format!("({})", many.join(", "))),
    };
    Signature { params, result, shape: describe_func(func) }
}

/// A function's WIT type: `func(name: string) -> string`.
pub(crate) fn describe_func(func: &ComponentFunc) -> String {
    let params: Vec<String> = func.params().map(|(name, ty)| format!("{name}: {}", describe(&ty))).collect();
    let results: Vec<String> = func.results().map(|ty| describe(&ty)).collect();
    match results.as_slice() {
        [] => format!("func({})", params.join(", ")),
        [one] => format!("func({}) -> {one}", params.join(", ")),
        many => format!("func({}) -> ({})", params.join(", "), many.join(", ")),
    }
}

/// A WIT type, written out structurally: `list<string>`, `record { id: u32 }`,
/// `enum { up, down }`.
pub(crate) fn describe(ty: &Type) -> String {
    describe_in(ty, &Names::new())
}

/// A WIT type as [`describe`] writes it, but a type the component names by
/// its name.
fn describe_in(ty: &Type, names: &Names) -> String {
    if let Some((_, name)) = names.iter().find(|(named, _)| named == ty) {
        return name.clone();
    }
    let describe = |ty: &Type| describe_in(ty, names);
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(list) => format!("list<{}>", describe(&list.ty())),
        Type::FixedLengthList(list) => format!("list<{}, {}>", describe(&list.ty()), list.len()),
        Type::Map(map) => format!("map<{}, {}>", describe(&map.key()), describe(&map.value())),
        Type::Record(record) => {
            let fields: Vec<String> =
                record.fields().map(|field| format!("{}: {}", field.name, describe(&field.ty))).collect();
            format!("record {{ {} }}", fields.join(", "))
        }
        Type::Tuple(tuple) => {
            format!("tuple<{}>", tuple.types().map(|ty| describe(&ty)).collect::<Vec<_>>().join(", "))
        }
        Type::Variant(variant) => {
            let cases: Vec<String> = variant
                .cases()
                .map(|case| match &case.ty {
                    Some(ty) => format!("{}({})", case.name, describe(ty)),
                    None => case.name.to_string(),
                })
                .collect();
            format!("variant {{ {} }}", cases.join(", "))
        }
        Type::Enum(cases) => format!("enum {{ {} }}", cases.names().collect::<Vec<_>>().join(", ")),
        Type::Option(option) => format!("option<{}>", describe(&option.ty())),
        Type::Result(result) => {
            let side = |ty: Option<Type>| ty.map_or_else(|| "_".to_string(), |ty| describe(&ty));
            match (result.ok(), result.err()) {
                (None, None) => "result".into(),
                (ok, err) => format!("result<{}, {}>", side(ok), side(err)),
            }
        }
        Type::Flags(flags) => format!("flags {{ {} }}", flags.names().collect::<Vec<_>>().join(", ")),
        Type::Own(_) => "own<resource>".into(),
        Type::Borrow(_) => "borrow<resource>".into(),
        Type::Future(_) => "future".into(),
        Type::Stream(_) => "stream".into(),
        Type::ErrorContext => "error-context".into(),
    }
}

/// True for a component binary (layer 1 of the header), as opposed to a core
/// module's.
pub(crate) fn is_component(bytes: &[u8]) -> bool {
    wasmparser::Parser::is_component(bytes)
}
