//! One instance of a version and the call protocol of guest ABI version 1:
//! `zest_alloc(len)`, write the input, call, read the packed output and check that
//! it is UTF-8 JSON; or, for a component (CONTRACT.md §13), its functions
//! called with values their WIT types read from JSON (`wit.rs`).

use std::sync::Arc;

use serde_json::value::RawValue;
use wasmtime::component::{
    self, ComponentExportIndex, ComponentNamedList, Lift, Lower, TypedFunc as TypedComponentFunc, Val,
};
use wasmtime::{Error, InstancePre, Linker, Memory, Module, Store, TypedFunc};

use super::host::{self, unpack, Abort, CallCtx, Env, GuestExports, HostState};
use super::wit;
use crate::config::Compiler;
use crate::engine::{Compiled, Pieces};
use crate::error::CallError;
use crate::request::Direction;
use crate::wasm;
use crate::wasm::abi::{CORE, DISPATCH};
use crate::wasm::component::ComponentExports;

/// `(index, ptr, len) -> packed`: the loader's dispatcher (`dispatch.rs`).
type Dispatch = TypedFunc<(i32, i32, i32), i64>;

/// What the instances of one build's code are made from: the build linked
/// against the `"zest"` imports.
pub(crate) enum Linked {
    Whole(InstancePre<HostState>),
    /// A component, with what it exports (the indices of its exports are its
    /// own: a tier-up's component has others).
    Component {
        pre: component::InstancePre<HostState>,
        exports: Arc<ComponentExports>,
    },
    /// A split build (`split.rs`): its core, which imports nothing, is linked
    /// ahead; each store links its parts to its own core.
    Split {
        core: InstancePre<HostState>,
        pieces: Arc<Pieces>,
        linker: Linker<HostState>,
    },
}

impl Linked {
    /// Links `code`, compiled by `compiler`, against the `"zest"` imports of
    /// its engine.
    pub(crate) fn new(env: &Env, code: &Compiled, compiler: Compiler) -> Result<Linked, String> {
        let linker = env.linkers.get(compiler);
        let pre = |module: &Module| -> Result<InstancePre<HostState>, String> {
            linker.instantiate_pre(module).map_err(|err| format!("cannot link: {err:#}"))
        };
        Ok(match code {
            Compiled::Component(component) => {
                let exports = wasm::component::check(component.engine(), component, env.linkers.provided())?;
                let pre = env
                    .linkers
                    .component(compiler)
                    .instantiate_pre(component)
                    .map_err(|err| format!("cannot link: {err:#}"))?;
                Linked::Component { pre, exports: Arc::new(exports) }
            }
            Compiled::Whole(module) => Linked::Whole(pre(module)?),
            Compiled::Split(pieces) => {
                Linked::Split { core: pre(&pieces.core)?, pieces: Arc::clone(pieces), linker: linker.clone() }
            }
        })
    }

    /// The machine code it links.
    pub(crate) fn compiled(&self) -> Compiled {
        match self {
            Linked::Whole(pre) => Compiled::Whole(pre.module().clone()),
            Linked::Split { pieces, .. } => Compiled::Split(Arc::clone(pieces)),
            Linked::Component { pre, .. } => Compiled::Component(pre.component().clone()),
        }
    }
}

pub(crate) struct Instance {
    store: Store<HostState>,
    guest: Guest,
    /// Which code of its version it runs (`Version::tier_up`).
    generation: u32,
}

/// The instance proper: of a core module (whole or split), or of a component.
enum Guest {
    Core(Core),
    Component {
        instance: component::Instance,
        exports: Arc<ComponentExports>,
        /// Each callable's function once looked up, by callable number.
        funcs: Box<[Option<component::Func>]>,
    },
}

/// A core module's instance and the exports the call protocol uses.
struct Core {
    /// The instance exports are found in: the one instance, or a split
    /// build's parts (its core's only export the guest sees is its memory).
    instances: Box<[wasmtime::Instance]>,
    pieces: Option<Arc<Pieces>>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    /// One per part (one for a whole build; none for a build without callables).
    dispatch: Box<[Dispatch]>,
}

impl Instance {
    /// Instantiates `linked`, the code of generation `generation` of its version.
    pub(crate) fn new(linked: &Linked, state: HostState, generation: u32) -> wasmtime::Result<Instance> {
        let engine = match linked {
            Linked::Whole(pre) => pre.module().engine(),
            Linked::Split { core, .. } => core.module().engine(),
            Linked::Component { pre, .. } => pre.component().engine(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(HostState::limiter);
        store.epoch_deadline_callback(host::on_epoch);
        // Set once: the callback re-arms it every tick, and checks the deadline of
        // whichever call is running.
        store.set_epoch_deadline(1);
        let no_memory = || Error::msg("the module exports no memory named `memory`");
        let (instances, memory, pieces) = match linked {
            Linked::Component { pre, exports } => {
                let instance = pre.instantiate(&mut store)?;
                let funcs = vec![None; exports.callables.len()].into_boxed_slice();
                let guest = Guest::Component { instance, exports: Arc::clone(exports), funcs };
                return Ok(Instance { store, guest, generation });
            }
            Linked::Whole(pre) => {
                let instance = pre.instantiate(&mut store)?;
                let memory = instance.get_memory(&mut store, "memory").ok_or_else(no_memory)?;
                (vec![instance], memory, None)
            }
            Linked::Split { core, pieces, linker } => {
                let core = core.instantiate(&mut store)?;
                let memory = core.get_memory(&mut store, "memory").ok_or_else(no_memory)?;
                // Every part imports the same list: the "zest" functions, then
                // the core's exports.
                let mut imports = Vec::new();
                for import in pieces.parts.first().map(|part| part.imports()).into_iter().flatten() {
                    let found = match import.module() {
                        CORE => core.get_export(&mut store, import.name()),
                        module => linker.get(&mut store, module, import.name()).ok(),
                    };
                    let missing = || Error::msg(format!("cannot link `{}.{}`", import.module(), import.name()));
                    imports.push(found.ok_or_else(missing)?);
                }
                let parts = pieces
                    .parts
                    .iter()
                    .map(|part| wasmtime::Instance::new(&mut store, part, &imports))
                    .collect::<wasmtime::Result<Vec<_>>>()?;
                (parts, memory, Some(Arc::clone(pieces)))
            }
        };
        let owner = pieces.as_ref().and_then(|pieces| pieces.owner("zest_alloc")).unwrap_or(0);
        let alloc = instances[owner].get_typed_func::<i32, i32>(&mut store, "zest_alloc")?;
        store.data_mut().guest = Some(GuestExports { memory, alloc: alloc.clone() });
        let mut dispatch = Vec::with_capacity(instances.len());
        for instance in &instances {
            if instance.get_export(&mut store, DISPATCH).is_some() {
                dispatch.push(instance.get_typed_func::<(i32, i32, i32), i64>(&mut store, DISPATCH)?);
            }
        }
        let instances = instances.into_boxed_slice();
        let core = Core { instances, pieces, memory, alloc, dispatch: dispatch.into_boxed_slice() };
        Ok(Instance { store, guest: Guest::Core(core), generation })
    }

    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    /// Calls `function` (callable number `index`) with `input` (UTF-8 JSON) and
    /// returns its output, checked.
    pub(crate) fn invoke(
        &mut self,
        index: usize,
        function: &str,
        input: &[u8],
        ctx: CallCtx,
    ) -> Result<String, CallError> {
        self.store.data_mut().ctx = ctx;
        let result = match &self.guest {
            Guest::Core(core) => core.invoke(&mut self.store, index, function, input),
            Guest::Component { .. } => return self.invoke_component(index, function, input),
        };
        result.map_err(|err| host::classify(err, self.store.data(), function))
    }

    /// Calls a component's callable number `index` with typed parameters and
    /// results. A core module, a name `zest:guest/dynamic` serves, or types
    /// that are not the function's are `InvalidArgs` saying what the function
    /// takes; nothing runs then.
    pub(crate) fn invoke_typed<P, R>(
        &mut self,
        index: usize,
        function: &str,
        params: P,
        ctx: CallCtx,
    ) -> Result<R, CallError>
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: ComponentNamedList + Lift + Send + Sync + 'static,
    {
        let Guest::Component { exports, .. } = &self.guest else {
            let message = "a typed call needs a component; this module is a core module (JSON in, JSON out)";
            return Err(invalid(self.store.data(), function, message.into()));
        };
        if index >= exports.callables.len() {
            let message = "it is served by name through zest:guest/dynamic (JSON in, JSON out)";
            return Err(invalid(self.store.data(), function, message.into()));
        }
        let func = self.component_func(index, function)?;
        let typed = func.typed::<P, R>(&self.store).map_err(|err| {
            let wit = match &self.guest {
                Guest::Component { exports, .. } => exports.callables[index].signature.wit(),
                Guest::Core(_) => String::new(),
            };
            let message = format!("the Rust types do not match its WIT type {wit}: {err:#}");
            invalid(self.store.data(), function, message)
        })?;
        self.store.data_mut().ctx = ctx;
        typed.call(&mut self.store, params).map_err(|err| host::classify(err, self.store.data(), function))
    }

    /// A component's callable number `index`, looked up once per instance.
    fn component_func(&mut self, index: usize, function: &str) -> Result<component::Func, CallError> {
        let Guest::Component { instance, exports, funcs } = &mut self.guest else {
            return Err(invalid(self.store.data(), function, "not a component".into()));
        };
        if let Some(func) = funcs[index] {
            return Ok(func);
        }
        let Some(func) = instance.get_func(&mut self.store, exports.callables[index].index) else {
            let message = "the export is gone".to_string();
            return Err(CallError::Engine {
                module: self.store.data().module.to_string(),
                function: function.into(),
                message,
            });
        };
        funcs[index] = Some(func);
        Ok(func)
    }

    /// Calls a component's callable number `index` with `input` (JSON text) by
    /// its WIT types (`wit.rs`).
    fn invoke_component(&mut self, index: usize, function: &str, input: &[u8]) -> Result<String, CallError> {
        let Guest::Component { instance, exports, .. } = &self.guest else {
            return Err(invalid(self.store.data(), function, "not a component".into()));
        };
        let (instance, exports) = (*instance, Arc::clone(exports));
        let input = match std::str::from_utf8(input) {
            Ok(input) => input,
            Err(err) => return Err(invalid(self.store.data(), function, format!("not UTF-8: {err}"))),
        };
        let Some(callable) = exports.callables.get(index) else {
            // Past the component's own callables: a name `zest:guest/dynamic` serves.
            let Some(dynamic) = &exports.dynamic else {
                return Err(invalid(self.store.data(), function, "no such callable".into()));
            };
            return dynamic_invoke(&mut self.store, instance, &dynamic.invoke, function, input);
        };
        if let Some(refused) = &callable.refused {
            return Err(invalid(self.store.data(), function, format!("it cannot be called over JSON: {refused}")));
        }
        let params =
            wit::params(&callable.ty, input).map_err(|message| invalid(self.store.data(), function, message))?;
        let func = self.component_func(index, function)?;
        let mut results = vec![Val::Bool(false); callable.ty.results().len()];
        let store = &mut self.store;
        func.call(&mut *store, &params, &mut results).map_err(|err| host::classify(err, store.data(), function))?;
        wit::results(&callable.ty, &results).map_err(|message| CallError::Failed {
            module: store.data().module.to_string(),
            function: function.into(),
            message,
        })
    }

    /// Calls a reserved `(ptr, len) -> i64` export (`zest_init`, `zest_handle`,
    /// `zest_code_change`) with `input`, or the `() -> i64` export `zest_state_save`
    /// when `input` is `None`, with a fresh call deadline; on a component, the
    /// `zest:guest/process` function of the same role. The caller checked that
    /// the export exists.
    pub(crate) fn invoke_reserved(&mut self, export: &str, input: Option<&[u8]>) -> Result<String, CallError> {
        let ctx = self.store.data().root_ctx();
        self.store.data_mut().ctx = ctx;
        let (result, function) = match (&self.guest, input) {
            (Guest::Core(core), Some(input)) => (core.invoke_reserved(&mut self.store, export, input), export),
            (Guest::Core(core), None) => (core.invoke_nullary(&mut self.store, export), export),
            (Guest::Component { instance, exports, .. }, input) => {
                let (instance, exports) = (*instance, Arc::clone(exports));
                let result = process_call(&mut self.store, instance, &exports, export, input.unwrap_or_default());
                (result, process_function(export))
            }
        };
        result.map_err(|err| host::classify(err, self.store.data(), function))
    }

    /// Hands a process's saved `state` (checked JSON text) to this fresh
    /// instance: `zest_code_change` with `{old_vsn, state, extra, direction}`,
    /// or a component's `code-change(old-vsn, direction, state, extra)`.
    pub(crate) fn code_change(
        &mut self,
        old_vsn: &str,
        direction: Direction,
        state: &str,
        extra: &serde_json::Value,
    ) -> Result<(), CallError> {
        let Guest::Component { instance, exports, .. } = &self.guest else {
            let state = RawValue::from_string(state.to_string()).map_err(|err| CallError::InvalidOutput {
                module: self.store.data().module.to_string(),
                function: "zest_state_save".into(),
                message: err.to_string(),
            })?;
            let input = serde_json::json!({"old_vsn": old_vsn, "state": state, "extra": extra,
                                           "direction": direction.as_str()});
            return self.invoke_reserved("zest_code_change", Some(input.to_string().as_bytes())).map(drop);
        };
        let (instance, process) = (*instance, exports.process.clone());
        self.store.data_mut().ctx = self.store.data().root_ctx();
        let called = (|| {
            let process = process.ok_or_else(|| Error::msg("the component exports no zest:guest/process"))?;
            let func = instance
                .get_func(&mut self.store, process.code_change)
                .ok_or_else(|| Error::msg("code-change is gone"))?;
            let params = [
                Val::String(old_vsn.to_string()),
                Val::Enum(direction.as_str().to_string()),
                Val::String(state.to_string()),
                Val::String(extra.to_string()),
            ];
            let mut result = [Val::Bool(false)];
            func.call(&mut self.store, &params, &mut result)?;
            match &result[0] {
                Val::Result(Err(message)) => {
                    let message = match message.as_deref() {
                        Some(Val::String(message)) => message.clone(),
                        _ => "code-change failed".to_string(),
                    };
                    Err(Error::new(Abort::Guest(message)))
                }
                _ => Ok(()),
            }
        })();
        called.map_err(|err| host::classify(err, self.store.data(), "process#code-change"))
    }

    /// The names a component's `zest:guest/dynamic` serves (its `functions`);
    /// none for anything else.
    pub(crate) fn dynamic_functions(&mut self) -> Result<Vec<String>, String> {
        let Guest::Component { instance, exports, .. } = &self.guest else { return Ok(Vec::new()) };
        let Some(dynamic) = &exports.dynamic else { return Ok(Vec::new()) };
        let (instance, index) = (*instance, dynamic.functions);
        self.store.data_mut().ctx = self.store.data().staging_ctx();
        let called = typed::<(), (Vec<String>,)>(&mut self.store, instance, &index)
            .and_then(|func| func.call(&mut self.store, ()));
        let (names,) = called.map_err(|err| {
            format!("`functions` of zest:guest/dynamic failed: {}", host::classify(err, self.store.data(), "functions"))
        })?;
        Ok(names)
    }

    /// Calls `zest_vsn` (a component's `vsn`) and checks what it returns.
    pub(crate) fn read_vsn(&mut self) -> Result<String, String> {
        self.store.data_mut().ctx = self.store.data().staging_ctx();
        let vsn = match &self.guest {
            Guest::Core(core) => {
                let memory = core.memory;
                let func = core
                    .owner("zest_vsn")
                    .get_typed_func::<(), i64>(&mut self.store, "zest_vsn")
                    .map_err(|err| format!("zest_vsn: {err:#}"))?;
                let packed = func.call(&mut self.store, ()).map_err(|err| {
                    format!("zest_vsn failed: {}", host::classify(err, self.store.data(), "zest_vsn"))
                })?;
                let vsn =
                    host::read_packed(memory.data(&self.store), packed).map_err(|err| format!("zest_vsn: {err}"))?;
                vsn.to_string()
            }
            Guest::Component { instance, exports, .. } => {
                let index = exports.vsn.ok_or("the component exports no `vsn`")?;
                let instance = *instance;
                let called = typed::<(), (String,)>(&mut self.store, instance, &index)
                    .and_then(|func| func.call(&mut self.store, ()));
                called.map_err(|err| format!("vsn failed: {}", host::classify(err, self.store.data(), "vsn")))?.0
            }
        };
        if vsn.is_empty() || vsn.len() > 128 || vsn.chars().any(char::is_control) {
            return Err(format!("zest_vsn returned {vsn:?}: a version is 1 to 128 printable characters"));
        }
        Ok(vsn)
    }
}

impl Core {
    /// The instance that defines export `name`.
    fn owner(&self, name: &str) -> wasmtime::Instance {
        let part = self.pieces.as_ref().and_then(|pieces| pieces.owner(name)).unwrap_or(0);
        self.instances[part]
    }

    fn invoke(
        &self,
        store: &mut Store<HostState>,
        index: usize,
        function: &str,
        input: &[u8],
    ) -> wasmtime::Result<String> {
        let (part, index) = match &self.pieces {
            Some(pieces) => pieces.route(index).ok_or_else(|| Error::msg("callable index out of range"))?,
            None => (0, i32::try_from(index).map_err(|_| Error::msg("callable index out of range"))?),
        };
        let Some(dispatch) = self.dispatch.get(part) else {
            return Err(Error::msg(format!("no callable `{function}`")));
        };
        let ptr = self.write_input(store, input)?;
        let len = input.len() as i32;
        let packed = dispatch.call(&mut *store, (index, ptr, len))?;
        read_output(&self.memory, store, packed)
    }

    fn invoke_reserved(&self, store: &mut Store<HostState>, export: &str, input: &[u8]) -> wasmtime::Result<String> {
        let func = self.owner(export).get_typed_func::<(i32, i32), i64>(&mut *store, export)?;
        let ptr = self.write_input(store, input)?;
        let packed = func.call(&mut *store, (ptr, input.len() as i32))?;
        read_output(&self.memory, store, packed)
    }

    fn invoke_nullary(&self, store: &mut Store<HostState>, export: &str) -> wasmtime::Result<String> {
        let func = self.owner(export).get_typed_func::<(), i64>(&mut *store, export)?;
        let packed = func.call(&mut *store, ())?;
        read_output(&self.memory, store, packed)
    }

    /// `input` written into the guest's memory through its `zest_alloc`; where.
    fn write_input(&self, store: &mut Store<HostState>, input: &[u8]) -> wasmtime::Result<i32> {
        let len = i32::try_from(input.len()).map_err(|_| Error::msg("input larger than 2 GiB"))?;
        let ptr = self.alloc.call(&mut *store, len)?;
        self.memory
            .write(&mut *store, ptr as u32 as usize, input)
            .map_err(|_| bad_output(format!("zest_alloc({len}) returned an out-of-bounds pointer {ptr}")))?;
        Ok(ptr)
    }
}

/// Calls `zest:guest/dynamic`'s `invoke` for `function` with `input` (JSON
/// text): its `ok` is the call's output (checked to be JSON), its `err` fails
/// the call with that message.
fn dynamic_invoke(
    store: &mut Store<HostState>,
    instance: component::Instance,
    invoke: &ComponentExportIndex,
    function: &str,
    input: &str,
) -> Result<String, CallError> {
    let called = typed::<(&str, &str), (Result<String, String>,)>(store, instance, invoke)
        .and_then(|func| func.call(&mut *store, (function, input)));
    let module = || store.data().module.to_string();
    match called.map_err(|err| host::classify(err, store.data(), function))?.0 {
        Ok(output) => match check_json(&output) {
            Ok(()) => Ok(output),
            Err(message) => Err(CallError::InvalidOutput { module: module(), function: function.into(), message }),
        },
        Err(message) => Err(CallError::Failed { module: module(), function: function.into(), message }),
    }
}

/// Calls the `zest:guest/process` function that plays the role of the core
/// export `export` (`zest_init`, …), with `input` as the core export takes it.
fn process_call(
    store: &mut Store<HostState>,
    instance: component::Instance,
    exports: &ComponentExports,
    export: &str,
    input: &[u8],
) -> wasmtime::Result<String> {
    let process = exports.process.as_ref().ok_or_else(|| Error::msg("the component exports no zest:guest/process"))?;
    let text = || std::str::from_utf8(input).map(str::to_string).map_err(|err| bad_output(format!("not UTF-8: {err}")));
    let failed = |message: String| Error::new(Abort::Guest(message));
    let output = match export {
        "zest_init" => {
            let func = typed::<(String,), (Result<(), String>,)>(store, instance, &process.init)?;
            func.call(&mut *store, (text()?,))?.0.map_err(failed)?;
            "null".to_string()
        }
        "zest_handle" => {
            let func = typed::<(String,), (Result<String, String>,)>(store, instance, &process.handle)?;
            func.call(&mut *store, (text()?,))?.0.map_err(failed)?
        }
        "zest_state_save" => {
            let func = typed::<(), (String,)>(store, instance, &process.save_state)?;
            func.call(&mut *store, ())?.0
        }
        other => return Err(Error::msg(format!("no process function plays `{other}`"))),
    };
    check_json(&output).map_err(bad_output)?;
    Ok(output)
}

/// `InvalidArgs` of the call of `function` on the store's module.
fn invalid(state: &HostState, function: &str, message: String) -> CallError {
    CallError::InvalidArgs { module: state.module.to_string(), function: function.into(), message }
}

/// The `zest:guest/process` function that plays the core export `export`, by
/// the name errors give it.
fn process_function(export: &str) -> &'static str {
    match export {
        "zest_init" => "process#init",
        "zest_handle" => "process#handle",
        "zest_state_save" => "process#save-state",
        "zest_code_change" => "process#code-change",
        _ => "process",
    }
}

/// The typed function at `index` of `instance`.
fn typed<P: ComponentNamedList + Lower, R: ComponentNamedList + Lift>(
    store: &mut Store<HostState>,
    instance: component::Instance,
    index: &ComponentExportIndex,
) -> wasmtime::Result<TypedComponentFunc<P, R>> {
    let func = instance.get_func(&mut *store, index).ok_or_else(|| Error::msg("the export is gone"))?;
    func.typed::<P, R>(&*store)
}

/// The checked JSON text at the packed `(ptr << 32) | len`; length 0 is `null`.
fn read_output(memory: &Memory, store: &Store<HostState>, packed: i64) -> wasmtime::Result<String> {
    if unpack(packed).1 == 0 {
        return Ok("null".to_string());
    }
    let text = host::read_packed(memory.data(store), packed).map_err(bad_output)?;
    check_json(text).map_err(bad_output)?;
    Ok(text.to_string())
}

fn bad_output(message: String) -> Error {
    Error::new(Abort::BadOutput(message))
}

/// Checks that `text` is one JSON value, without building it.
pub(crate) fn check_json(text: &str) -> Result<(), String> {
    serde_json::from_str::<&RawValue>(text).map(|_| ()).map_err(|err| format!("not JSON: {err}"))
}
