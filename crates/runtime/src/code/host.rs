//! The `"zest"` imports of guest ABI version 1 (CONTRACT.md §2), and the per-store
//! state they work on.
//!
//! [`register`] defines exactly the four imports of the contract, in its order:
//! `error`, `log`, `call`, `now_ms`. A host function that must fail the current
//! call returns an [`Abort`], which unwinds the guest; [`classify`] turns whatever
//! unwound a call into a typed [`CallError`].

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::component;
use wasmtime::{Caller, Error, Linker, Memory, ResourceLimiter, StoreContextMut, Trap, TypedFunc, UpdateDeadline};

use super::ledger::Ledger;
use super::life::Life;
use super::wasi::WasiState;
use crate::config::{Compiler, Limits};
use crate::engine::{Clock, Engines};
use crate::error::CallError;
use crate::wasm::abi::IMPORT_MODULE;

/// How deep module-to-module calls may nest before the innermost one fails.
pub(crate) const MAX_CALL_DEPTH: u32 = 64;

/// The most table elements one instance may grow its tables to.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The deadline (a [`Clock`] tick) and nesting depth of one call; nested calls
/// inherit the deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallCtx {
    pub(crate) deadline: u64,
    pub(crate) depth: u32,
}

impl CallCtx {
    pub(crate) fn root(clock: &Clock, timeout: Duration) -> Self {
        CallCtx { deadline: clock.deadline(timeout), depth: 0 }
    }

    /// The deadline of a call a reload makes while staging a version
    /// ([`Clock::staging_deadline`]).
    pub(crate) fn staging(clock: &Clock, timeout: Duration) -> Self {
        CallCtx { deadline: clock.staging_deadline(timeout), depth: 0 }
    }
}

pub(crate) fn pack(ptr: u32, len: u32) -> i64 {
    (((ptr as u64) << 32) | len as u64) as i64
}

pub(crate) fn unpack(packed: i64) -> (u32, u32) {
    ((packed as u64 >> 32) as u32, packed as u64 as u32)
}

/// Where a guest's `call` goes: the code server, which calls the callee's
/// current version. The host layer names no registry; the registry
/// implements this (as wasmtime's VM layer calls its `Store` through
/// `VMStore`).
pub(crate) trait Callee: Send + Sync {
    fn call(&self, module: &str, function: &str, args: &str, ctx: CallCtx) -> Result<String, CallError>;
}

/// Why a host function, the epoch callback or the memory limiter stopped a call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Abort {
    #[error("the guest called `error`: {0}")]
    Guest(String),
    #[error(transparent)]
    Callee(CallError),
    #[error("the call deadline passed")]
    Timeout,
    #[error("the version was hard-purged")]
    Purged,
    #[error("the memory limit was reached")]
    MemoryLimit,
    #[error("{0}")]
    BadOutput(String),
}

/// The guest exports the host needs between calls.
#[derive(Clone)]
pub(crate) struct GuestExports {
    pub(crate) memory: Memory,
    pub(crate) alloc: TypedFunc<i32, i32>,
}

impl std::fmt::Debug for GuestExports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestExports").field("memory", &self.memory).finish_non_exhaustive()
    }
}

/// What each store carries: who it is, its limits, and the call now running.
/// Host capabilities ([`Capabilities`]) are written against it; they see the
/// module's name ([`HostState::module`]).
#[derive(Debug)]
pub struct HostState {
    pub(crate) module: Arc<str>,
    pub(crate) guest: Option<GuestExports>,
    /// Deadline and nesting depth of the call now running.
    pub(crate) ctx: CallCtx,
    call_timeout: Duration,
    memory: MemoryLimiter,
    clock: Arc<Clock>,
    life: Arc<Life>,
    env: Arc<Env>,
    /// A component's WASI context, made at its first WASI call (`wasi.rs`).
    wasi: Option<Box<WasiState>>,
}

impl wasmtime_wasi::WasiView for HostState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        let module = &self.module;
        let wasi = self.wasi.get_or_insert_with(|| Box::new(WasiState::new(module)));
        wasmtime_wasi::WasiCtxView { ctx: &mut wasi.ctx, table: &mut wasi.table }
    }
}

/// What every store of one node shares: its limits, its clock, the way back to
/// its code server for nested calls — weak, so stores never keep the node
/// alive —, the ledger its versions count calls into, and the `"zest"`
/// imports linked for each engine.
#[derive(Debug)]
pub(crate) struct Env {
    pub(crate) limits: Limits,
    pub(crate) clock: Arc<Clock>,
    pub(crate) callee: Weak<dyn Callee>,
    /// Calls and failures per version.
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) linkers: Linkers,
}

/// The `"zest"` imports, defined once per engine: a build links against the
/// linker of the engine that compiled it.
pub(crate) struct Linkers {
    cranelift: Linker<HostState>,
    winch: Linker<HostState>,
    /// `zest:guest/host` and the host capabilities for components, per
    /// engine likewise.
    components: [component::Linker<HostState>; 2],
    /// The interfaces the capabilities define, by name.
    provided: Vec<String>,
}

/// The host capabilities of a node (CONTRACT.md §13): WIT interfaces the
/// embedding program implements with Rust functions, which any component may
/// import — every version alike, so what the host keeps (a pool, a cache)
/// survives reloads. Each is defined on wasmtime's linker for the interface,
/// as spin and wasmtime's own `add_to_linker` functions do:
///
/// ```no_run
/// use zest_runtime::{Capabilities, Node, NodeConfig};
/// use zest_runtime::wasmtime::StoreContextMut;
///
/// let capabilities = Capabilities::default().interface("acme:kv/store@1.0.0", |store| {
///     store.func_wrap("get", |_: StoreContextMut<'_, _>, (key,): (String,)| Ok((Some(key),)))
/// });
/// let node = Node::with_capabilities(NodeConfig::default(), capabilities)?;
/// # Ok::<(), zest_runtime::NodeError>(())
/// ```
#[derive(Default)]
pub struct Capabilities {
    interfaces: Vec<(String, Define)>,
}

/// Defines one interface's functions on its linker instance.
type Define = Box<dyn Fn(&mut component::LinkerInstance<'_, HostState>) -> wasmtime::Result<()> + Send + Sync>;

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.interfaces.iter().map(|(name, _)| name)).finish()
    }
}

impl Capabilities {
    /// Adds interface `name` (`package/interface@version`), whose functions
    /// `define` puts on the linker instance it is handed.
    pub fn interface(
        mut self,
        name: impl Into<String>,
        define: impl Fn(&mut component::LinkerInstance<'_, HostState>) -> wasmtime::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.interfaces.push((name.into(), Box::new(define)));
        self
    }
}

impl std::fmt::Debug for Linkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linkers").finish_non_exhaustive()
    }
}

impl Linkers {
    pub(crate) fn new(engines: &Engines, capabilities: &Capabilities) -> Result<Linkers, String> {
        let linker = |compiler| -> wasmtime::Result<Linker<HostState>> {
            let mut linker = Linker::new(engines.engine(compiler));
            register(&mut linker)?;
            Ok(linker)
        };
        let component_linker = |compiler| -> Result<component::Linker<HostState>, String> {
            let mut linker = component::Linker::new(engines.engine(compiler));
            register_component(&mut linker).map_err(|err| format!("{err:#}"))?;
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|err| format!("WASI: {err:#}"))?;
            for (name, define) in &capabilities.interfaces {
                if name.starts_with("zest:guest/") || name.starts_with("wasi:") {
                    return Err(format!("capability `{name}`: the node defines that interface itself"));
                }
                let mut instance = linker.instance(name).map_err(|err| format!("capability `{name}`: {err:#}"))?;
                define(&mut instance).map_err(|err| format!("capability `{name}`: {err:#}"))?;
            }
            Ok(linker)
        };
        let core = |compiler| linker(compiler).map_err(|err| format!("{err:#}"));
        Ok(Linkers {
            cranelift: core(Compiler::Cranelift)?,
            winch: core(Compiler::Winch)?,
            components: [component_linker(Compiler::Cranelift)?, component_linker(Compiler::Winch)?],
            provided: capabilities.interfaces.iter().map(|(name, _)| name.clone()).collect(),
        })
    }

    /// The interfaces the host capabilities define, by name.
    pub(crate) fn provided(&self) -> &[String] {
        &self.provided
    }

    /// The component linker of the engine `compiler` names (`Auto`: Cranelift's).
    pub(crate) fn component(&self, compiler: Compiler) -> &component::Linker<HostState> {
        match compiler {
            Compiler::Winch => &self.components[1],
            Compiler::Cranelift | Compiler::Auto => &self.components[0],
        }
    }

    /// The linker of the engine `compiler` names (`Auto`: Cranelift's).
    pub(crate) fn get(&self, compiler: Compiler) -> &Linker<HostState> {
        match compiler {
            Compiler::Winch => &self.winch,
            Compiler::Cranelift | Compiler::Auto => &self.cranelift,
        }
    }
}

impl HostState {
    /// The name of the module whose guest is calling.
    pub fn module(&self) -> &str {
        &self.module
    }

    pub(crate) fn new(module: Arc<str>, env: &Arc<Env>, life: Arc<Life>) -> Self {
        let limits = &env.limits;
        HostState {
            module,
            guest: None,
            ctx: CallCtx::staging(&env.clock, limits.call_timeout),
            call_timeout: limits.call_timeout,
            memory: MemoryLimiter { max_bytes: limits.memory_bytes() },
            clock: Arc::clone(&env.clock),
            life,
            env: Arc::clone(env),
            wasi: None,
        }
    }

    /// A fresh deadline for a call starting now.
    pub(crate) fn root_ctx(&self) -> CallCtx {
        CallCtx::root(&self.clock, self.call_timeout)
    }

    /// A fresh deadline for a call a reload makes while staging a version.
    pub(crate) fn staging_ctx(&self) -> CallCtx {
        CallCtx::staging(&self.clock, self.call_timeout)
    }

    pub(crate) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.memory
    }
}

#[derive(Debug)]
struct MemoryLimiter {
    max_bytes: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            return Err(Error::new(Abort::MemoryLimit));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Runs at every epoch tick while a guest runs (and once at the start of a call on
/// a reused instance, whose previous deadline has passed): stops it when its call
/// deadline has passed or its version was hard-purged.
pub(crate) fn on_epoch(store: StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline> {
    let state = store.data();
    state.clock.saw_running();
    if state.life.is_killed() {
        return Err(Error::new(Abort::Purged));
    }
    if state.clock.now() >= state.ctx.deadline {
        return Err(Error::new(Abort::Timeout));
    }
    Ok(UpdateDeadline::Continue(1))
}

/// Defines the `"zest"` imports in `linker`.
pub(crate) fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(IMPORT_MODULE, "error", guest_error)?;
    linker.func_wrap(IMPORT_MODULE, "log", guest_log)?;
    linker.func_wrap(IMPORT_MODULE, "call", guest_call)?;
    linker.func_wrap(IMPORT_MODULE, "now_ms", now_ms)?;
    Ok(())
}

/// `error(ptr, len)`: fails the current call with the guest's message.
fn guest_error(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let message = read_string(&mut caller, ptr, len, "error")?;
    Err(Error::new(Abort::Guest(message)))
}

/// `log(level, ptr, len)`: 0 trace, 1 debug, 2 info, 3 warn, 4 error. A level out
/// of range is logged at `warn` with the level it gave.
fn guest_log(mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let message = read_string(&mut caller, ptr, len, "log")?;
    log(&caller.data().module, level, &message);
    Ok(())
}

/// A guest's log line, at its level, with its module's name.
fn log(module: &str, level: i32, message: &str) {
    match level {
        0 => tracing::trace!(target: "zest::guest", module, "{message}"),
        1 => tracing::debug!(target: "zest::guest", module, "{message}"),
        2 => tracing::info!(target: "zest::guest", module, "{message}"),
        3 => tracing::warn!(target: "zest::guest", module, "{message}"),
        4 => tracing::error!(target: "zest::guest", module, "{message}"),
        _ => tracing::warn!(target: "zest::guest", module, level, "(log level out of range) {message}"),
    }
}

/// `call(mod, fn, args) -> packed`: calls another module's current version and
/// writes its output into the caller's memory through the caller's `zest_alloc`.
fn guest_call(
    mut caller: Caller<'_, HostState>,
    mod_ptr: i32,
    mod_len: i32,
    fn_ptr: i32,
    fn_len: i32,
    args_ptr: i32,
    args_len: i32,
) -> wasmtime::Result<i64> {
    let module = read_string(&mut caller, mod_ptr, mod_len, "call")?;
    let function = read_string(&mut caller, fn_ptr, fn_len, "call")?;
    let args = read_string(&mut caller, args_ptr, args_len, "call")?;
    let callee_failed = |err: CallError| Error::new(Abort::Callee(err));
    let Some(guest) = caller.data().guest.clone() else {
        let message = "`call` is not available while the caller is being instantiated".to_string();
        return Err(callee_failed(CallError::Engine { module, function, message }));
    };
    let output = nested_call(caller.data(), module, function, &args).map_err(callee_failed)?;
    let len = i32::try_from(output.len()).map_err(|_| Error::new(Abort::BadOutput("output too large".into())))?;
    let ptr = guest.alloc.call(&mut caller, len)?;
    guest
        .memory
        .write(&mut caller, ptr as u32 as usize, output.as_bytes())
        .map_err(|_| Error::new(Abort::BadOutput(format!("zest_alloc({len}) returned an out-of-bounds pointer"))))?;
    Ok(pack(ptr as u32, len as u32))
}

/// Calls `module.function` with `args` (JSON text; empty is `null`) on the
/// callee's current version, within the caller's deadline, one level deeper.
fn nested_call(state: &HostState, module: String, function: String, args: &str) -> Result<String, CallError> {
    if state.ctx.depth + 1 >= MAX_CALL_DEPTH {
        return Err(CallError::DepthExceeded { module, function, limit: MAX_CALL_DEPTH });
    }
    let Some(callee) = state.env.callee.upgrade() else {
        return Err(CallError::Engine { module, function, message: "the node is shutting down".to_string() });
    };
    let ctx = CallCtx { deadline: state.ctx.deadline, depth: state.ctx.depth + 1 };
    let args = if args.is_empty() { "null" } else { args };
    callee.call(&module, &function, args, ctx)
}

/// The `zest:guest/host` interface components import (CONTRACT.md §13).
pub(crate) const HOST_INTERFACE: &str = "zest:guest/host@1.0.0";

/// Defines `zest:guest/host` in `linker`: the component form of the imports,
/// `log`, `now-ms` and `call`, whose `err` holds the callee's failure as the
/// caller's own call would report it; and `zest:guest/types`, which has
/// nothing to define.
pub(crate) fn register_component(linker: &mut component::Linker<HostState>) -> wasmtime::Result<()> {
    // Types only (`direction`): what a component built against the world
    // `server` imports to name them; types need no definition.
    linker.instance(crate::wasm::component::TYPES_INTERFACE)?;
    let mut host = linker.instance(HOST_INTERFACE)?;
    host.func_wrap("log", |store: StoreContextMut<'_, HostState>, (level, message): (u8, String)| {
        log(&store.data().module, i32::from(level), &message);
        Ok(())
    })?;
    host.func_wrap("now-ms", |_: StoreContextMut<'_, HostState>, (): ()| Ok((now_ms() as u64,)))?;
    host.func_wrap(
        "call",
        |store: StoreContextMut<'_, HostState>, (module, function, args): (String, String, String)| {
            Ok((nested_call(store.data(), module, function, &args).map_err(|err| err.to_string()),))
        },
    )?;
    Ok(())
}

/// `now_ms() -> i64`: wall-clock milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Copies `[ptr, ptr+len)` out of the caller's memory as UTF-8 (lossy: these are
/// names and messages, and a mangled byte should not hide the rest).
fn read_string(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32, import: &str) -> wasmtime::Result<String> {
    let memory = match &caller.data().guest {
        Some(guest) => guest.memory,
        None => match caller.get_export("memory").and_then(|export| export.into_memory()) {
            Some(memory) => memory,
            None => return Err(Error::new(Abort::BadOutput(format!("`{import}` called without an exported memory")))),
        },
    };
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    let bytes = memory.data(&caller).get(start..start.saturating_add(len)).ok_or_else(|| {
        Error::new(Abort::BadOutput(format!("`{import}` was passed the out-of-bounds range {start}+{len}")))
    })?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// Turns whatever stopped a call into a typed [`CallError`].
pub(crate) fn classify(err: Error, state: &HostState, function: &str) -> CallError {
    let module = state.module.to_string();
    let function = function.to_string();
    if let Some(abort) = err.downcast_ref::<Abort>() {
        return match abort {
            Abort::Guest(message) => CallError::Failed { module, function, message: message.clone() },
            Abort::Callee(inner) => inner.clone(),
            Abort::Timeout => {
                CallError::Timeout { module, function, timeout_ms: state.call_timeout.as_millis() as u64 }
            }
            Abort::Purged => CallError::Purged { module, function },
            Abort::MemoryLimit => {
                CallError::MemoryLimit { module, function, limit_mb: (state.memory.max_bytes >> 20) as u32 }
            }
            Abort::BadOutput(message) => CallError::InvalidOutput { module, function, message: message.clone() },
        };
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return CallError::Trap { module, function, trap: *trap };
    }
    CallError::Engine { module, function, message: format!("{err:#}") }
}

/// Reads a packed `(ptr << 32) | len` string out of the instance's memory.
pub(crate) fn read_packed(memory: &[u8], packed: i64) -> Result<&str, String> {
    let (ptr, len) = unpack(packed);
    let (start, len) = (ptr as usize, len as usize);
    let bytes = memory
        .get(start..start + len)
        .ok_or_else(|| format!("the output range {start}+{len} is outside linear memory"))?;
    std::str::from_utf8(bytes).map_err(|err| format!("the output is not UTF-8: {err}"))
}
