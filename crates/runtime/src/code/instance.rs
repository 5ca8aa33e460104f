//! One instance of a version and the call protocol of guest ABI version 1:
//! `zest_alloc(len)`, write the input, call, read the packed output and check that
//! it is UTF-8 JSON.

use std::sync::Arc;

use serde_json::value::RawValue;
use wasmtime::{Error, InstancePre, Linker, Memory, Module, Store, TypedFunc};

use super::host::{self, unpack, Abort, CallCtx, Env, GuestExports, HostState};
use crate::config::Compiler;
use crate::engine::{Compiled, Pieces};
use crate::error::CallError;
use crate::wasm::abi::{CORE, DISPATCH};

/// `(index, ptr, len) -> packed`: the loader's dispatcher (`dispatch.rs`).
type Dispatch = TypedFunc<(i32, i32, i32), i64>;

/// What the instances of one build's code are made from: the build linked
/// against the `"zest"` imports.
pub(crate) enum Linked {
    Whole(InstancePre<HostState>),
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
        }
    }
}

pub(crate) struct Instance {
    store: Store<HostState>,
    /// The instance exports are found in: the one instance, or a split
    /// build's parts (its core's only export the guest sees is its memory).
    instances: Box<[wasmtime::Instance]>,
    pieces: Option<Arc<Pieces>>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    /// One per part (one for a whole build; none for a build without callables).
    dispatch: Box<[Dispatch]>,
    /// Which code of its version it runs (`Version::tier_up`).
    generation: u32,
}

impl Instance {
    /// Instantiates `linked`, the code of generation `generation` of its version.
    pub(crate) fn new(linked: &Linked, state: HostState, generation: u32) -> wasmtime::Result<Instance> {
        let engine = match linked {
            Linked::Whole(pre) => pre.module().engine(),
            Linked::Split { core, .. } => core.module().engine(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(HostState::limiter);
        store.epoch_deadline_callback(host::on_epoch);
        // Set once: the callback re-arms it every tick, and checks the deadline of
        // whichever call is running.
        store.set_epoch_deadline(1);
        let no_memory = || Error::msg("the module exports no memory named `memory`");
        let (instances, memory, pieces) = match linked {
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
        Ok(Instance { store, instances, pieces, memory, alloc, dispatch: dispatch.into_boxed_slice(), generation })
    }

    /// The instance that defines export `name`.
    fn owner(&self, name: &str) -> wasmtime::Instance {
        let part = self.pieces.as_ref().and_then(|pieces| pieces.owner(name)).unwrap_or(0);
        self.instances[part]
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
        match self.invoke_inner(index, function, input) {
            Ok(output) => Ok(output),
            Err(err) => Err(host::classify(err, self.store.data(), function)),
        }
    }

    fn invoke_inner(&mut self, index: usize, function: &str, input: &[u8]) -> wasmtime::Result<String> {
        let Instance { store, memory, alloc, dispatch, pieces, .. } = self;
        let (part, index) = match pieces {
            Some(pieces) => pieces.route(index).ok_or_else(|| Error::msg("callable index out of range"))?,
            None => (0, i32::try_from(index).map_err(|_| Error::msg("callable index out of range"))?),
        };
        let Some(dispatch) = dispatch.get(part) else {
            return Err(Error::msg(format!("no callable `{function}`")));
        };
        let len = i32::try_from(input.len()).map_err(|_| Error::msg("input larger than 2 GiB"))?;
        let ptr = alloc.call(&mut *store, len)?;
        memory
            .write(&mut *store, ptr as u32 as usize, input)
            .map_err(|_| bad_output(format!("zest_alloc({len}) returned an out-of-bounds pointer {ptr}")))?;
        let packed = dispatch.call(&mut *store, (index, ptr, len))?;
        read_output(memory, &*store, packed)
    }

    /// Calls a reserved `(ptr, len) -> i64` export (`zest_init`, `zest_handle`,
    /// `zest_code_change`) with `input`, or the `() -> i64` export `zest_state_save`
    /// when `input` is `None`, with a fresh call deadline. The caller checked that
    /// the export exists.
    pub(crate) fn invoke_reserved(&mut self, export: &str, input: Option<&[u8]>) -> Result<String, CallError> {
        let ctx = self.store.data().root_ctx();
        self.store.data_mut().ctx = ctx;
        let result = match input {
            Some(input) => self.invoke_reserved_inner(export, input),
            None => self.invoke_nullary(export),
        };
        result.map_err(|err| host::classify(err, self.store.data(), export))
    }

    fn invoke_reserved_inner(&mut self, export: &str, input: &[u8]) -> wasmtime::Result<String> {
        let func = self.owner(export).get_typed_func::<(i32, i32), i64>(&mut self.store, export)?;
        let len = i32::try_from(input.len()).map_err(|_| Error::msg("input larger than 2 GiB"))?;
        let ptr = self.alloc.call(&mut self.store, len)?;
        self.memory
            .write(&mut self.store, ptr as u32 as usize, input)
            .map_err(|_| bad_output(format!("zest_alloc({len}) returned an out-of-bounds pointer {ptr}")))?;
        let packed = func.call(&mut self.store, (ptr, len))?;
        read_output(&self.memory, &self.store, packed)
    }

    fn invoke_nullary(&mut self, export: &str) -> wasmtime::Result<String> {
        let func = self.owner(export).get_typed_func::<(), i64>(&mut self.store, export)?;
        let packed = func.call(&mut self.store, ())?;
        read_output(&self.memory, &self.store, packed)
    }

    /// Calls `zest_vsn` and checks what it returns.
    pub(crate) fn read_vsn(&mut self) -> Result<String, String> {
        self.store.data_mut().ctx = self.store.data().root_ctx();
        let memory = self.memory;
        let func = self
            .owner("zest_vsn")
            .get_typed_func::<(), i64>(&mut self.store, "zest_vsn")
            .map_err(|err| format!("zest_vsn: {err:#}"))?;
        let packed = func
            .call(&mut self.store, ())
            .map_err(|err| format!("zest_vsn failed: {}", host::classify(err, self.store.data(), "zest_vsn")))?;
        let vsn = host::read_packed(memory.data(&self.store), packed).map_err(|err| format!("zest_vsn: {err}"))?;
        if vsn.is_empty() || vsn.len() > 128 || vsn.chars().any(char::is_control) {
            return Err(format!("zest_vsn returned {vsn:?}: a version is 1 to 128 printable characters"));
        }
        Ok(vsn.to_string())
    }
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
