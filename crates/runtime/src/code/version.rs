//! One loaded build of a module: its compiled code, what it exports, its pool of
//! ready instances, and the signal that tells a reload when it is gone.
//!
//! A version's machine code can be replaced in place by the same build compiled
//! better ([`Version::tier_up`]): new instances come from the new code, idle
//! instances of the old code are dropped as they come back, and instances in
//! use (a call running, a process) keep the code they have. Nothing a guest can
//! see changes: same build, same vsn, same state.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use wasmtime::component::{ComponentNamedList, Lift, Lower};

use crossbeam_utils::CachePadded;

use super::host::{Abort, CallCtx, Env, HostState};
use super::instance::{Instance, Linked};
use super::ledger::{home_shard, CallCounts, SHARDS};
use super::life::Life;
use crate::config::Compiler;
use crate::engine::{Compiled, Loaded};
use crate::error::CallError;
use crate::wasm::abi::{self, Exports, Signature};

/// How many idle instances each shard keeps for reuse. Calls beyond that many at
/// once instantiate afresh and drop the extra instance afterwards.
const MAX_IDLE_PER_SHARD: usize = 8;

/// What status reports about a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub module: String,
    /// The build's own `zest_vsn`, or the first 16 hex digits of its sha256.
    pub vsn: String,
    /// Hex sha256 of the file the build was read from.
    pub sha256: String,
    pub loaded_at: SystemTime,
    /// The file the build was read from.
    pub source: PathBuf,
    pub compiler: Compiler,
    /// A core module or a component (CONTRACT.md §13).
    pub kind: BuildKind,
}

/// What kind of build a version runs (`"kind"` in `system.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildKind {
    Module,
    Component,
}

impl BuildKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildKind::Module => "module",
            BuildKind::Component => "component",
        }
    }
}

pub(crate) struct Version {
    /// As loaded (`compiler`: the code it was loaded with; [`Version::info`]
    /// says what new instances run).
    pub(crate) info: VersionInfo,
    pub(crate) sha256: [u8; 32],
    exports: Exports,
    code: ArcSwap<Code>,
    /// `code`'s generation, read on the call path without loading `code`.
    generation: AtomicU32,
    /// Its calls and failures (shared with any version of the same vsn).
    pub(crate) counts: Arc<CallCounts>,
    /// Its failures ring the trial watcher's alarm.
    pub(crate) on_trial: AtomicBool,
    #[expect(clippy::vec_box, reason = "a pool hit moves a pointer, not the whole instance")]
    /// Each shard on its own cache line: neighbours' locks do not bounce.
    idle: [CachePadded<Mutex<Vec<Box<Instance>>>>; SHARDS],
    life: Arc<Life>,
    env: Arc<Env>,
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Version").field("info", &self.info).finish_non_exhaustive()
    }
}

/// The machine code new instances come from.
struct Code {
    pre: Linked,
    compiler: Compiler,
    generation: u32,
}

impl Version {
    /// Validates `module` against the ABI and instantiates it once (which also reads
    /// its `zest_vsn`); the instance becomes the first idle one.
    pub(crate) fn new(
        env: &Arc<Env>,
        name: &str,
        source: &Path,
        sha256: [u8; 32],
        loaded: &Loaded,
    ) -> Result<Version, String> {
        let compiler = loaded.compiler;
        // A core module is checked before it links, so an import the ABI
        // refuses is named as the ABI names it; a component as it links (its
        // export indices are its own compile's).
        let core = match &loaded.code {
            Compiled::Component(_) => None,
            code => Some(abi::check(&code.modules(), code.is_split(), &loaded.callables)?),
        };
        let pre = Linked::new(env, &loaded.code, compiler)?;
        let life = Arc::new(Life::default());
        let state = HostState::new(Arc::from(name), env, Arc::clone(&life));
        let mut first = Instance::new(&pre, state, 0).map_err(|err| {
            // A start function (or data) that breaks a limit says which.
            match err.downcast_ref::<crate::code::host::Abort>() {
                Some(Abort::Timeout) => format!(
                    "cannot instantiate: its start function ran past the call deadline of {} ms (limits.call_timeout_ms)",
                    env.limits.call_timeout.as_millis()
                ),
                Some(Abort::MemoryLimit) => format!(
                    "cannot instantiate: it needs more memory than the limit of {} MiB (limits.memory_mb)",
                    env.limits.memory_mb
                ),
                _ => format!("cannot instantiate: {err:#}"),
            }
        })?;
        let (exports, kind) = match (&pre, core) {
            (Linked::Component { exports, .. }, _) => {
                (exports.summary(first.dynamic_functions()?)?, BuildKind::Component)
            }
            (_, core) => (core.unwrap_or_default(), BuildKind::Module),
        };
        let hex = hex::encode(sha256);
        let vsn = if exports.vsn { first.read_vsn()? } else { hex[..16].to_string() };
        let info = VersionInfo {
            module: name.to_string(),
            vsn,
            sha256: hex,
            loaded_at: SystemTime::now(),
            source: source.to_path_buf(),
            compiler,
            kind,
        };
        let idle = std::array::from_fn(|_| CachePadded::new(Mutex::new(Vec::new())));
        idle[home_shard()].lock().unwrap_or_else(PoisonError::into_inner).push(Box::new(first));
        let code = ArcSwap::from_pointee(Code { pre, compiler, generation: 0 });
        let counts = env.ledger.counts(name, &info.vsn);
        Ok(Version {
            info,
            sha256,
            exports,
            code,
            generation: AtomicU32::new(0),
            counts,
            on_trial: AtomicBool::new(false),
            idle,
            life,
            env: Arc::clone(env),
        })
    }

    /// The machine code new instances come from.
    pub(crate) fn compiled(&self) -> Compiled {
        self.code.load().pre.compiled()
    }

    /// What status reports: as loaded, with the compiler of the code new
    /// instances run.
    pub(crate) fn info(&self) -> VersionInfo {
        VersionInfo { compiler: self.code.load().compiler, ..self.info.clone() }
    }

    /// Replaces the machine code of this version by `module` (the same build,
    /// compiled by `compiler`): new instances come from it, idle instances of
    /// the old code are dropped.
    pub(crate) fn tier_up(&self, code: &Compiled, compiler: Compiler) -> Result<(), String> {
        let pre = Linked::new(&self.env, code, compiler)?;
        let generation = self.code.load().generation + 1;
        self.code.store(Arc::new(Code { pre, compiler, generation }));
        self.generation.store(generation, Ordering::Release);
        for shard in &self.idle {
            shard.lock().unwrap_or_else(PoisonError::into_inner).retain(|i| i.generation() == generation);
        }
        Ok(())
    }

    pub(crate) fn life(&self) -> Arc<Life> {
        Arc::clone(&self.life)
    }

    pub(crate) fn exports(&self) -> &Exports {
        &self.exports
    }

    /// Each callable's type, by name: JSON in and out for a core module's (and
    /// for the names a component's `zest:guest/dynamic` serves).
    pub(crate) fn signatures(&self) -> BTreeMap<&str, Signature> {
        let code = self.code.load();
        let component = match &code.pre {
            Linked::Component { exports, .. } => Some(exports),
            _ => None,
        };
        self.exports
            .functions
            .iter()
            .map(|(name, &index)| {
                let callable = component.and_then(|exports| exports.callables.get(index));
                (&**name, callable.map_or_else(Signature::json, |callable| callable.signature.clone()))
            })
            .collect()
    }

    /// True for a component's version.
    pub(crate) fn is_component(&self) -> bool {
        self.info.kind == BuildKind::Component
    }

    /// The names of its callable functions.
    pub(crate) fn functions(&self) -> impl Iterator<Item = &str> {
        self.exports.functions.keys().map(|name| &**name)
    }

    /// Runs `function` on an idle instance (or a fresh one). An instance whose call
    /// failed is dropped: its memory may be half-written.
    pub(crate) fn call(&self, function: &str, args: &str, ctx: CallCtx) -> Result<String, CallError> {
        let Some(&index) = self.exports.functions.get(function) else {
            return Err(CallError::FunctionNotFound {
                module: self.info.module.clone(),
                function: function.to_string(),
            });
        };
        if let Err(message) = crate::code::instance::check_json(args) {
            return Err(CallError::InvalidArgs {
                module: self.info.module.clone(),
                function: function.to_string(),
                message,
            });
        }
        self.on_instance(function, |instance| instance.invoke(index, function, args.as_bytes(), ctx))
    }

    /// Calls `function` of a component with typed parameters and results;
    /// see [`crate::Node::call_typed`].
    pub(crate) fn call_typed<P, R>(&self, function: &str, params: P, ctx: CallCtx) -> Result<R, CallError>
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: ComponentNamedList + Lift + Send + Sync + 'static,
    {
        let Some(&index) = self.exports.functions.get(function) else {
            return Err(CallError::FunctionNotFound {
                module: self.info.module.clone(),
                function: function.to_string(),
            });
        };
        self.on_instance(function, |instance| instance.invoke_typed(index, function, params, ctx))
    }

    /// Runs `call` on an idle instance (or a fresh one), counting its outcome,
    /// and keeps the instance for the next call unless the call failed (its
    /// memory may be half-written) or its code was replaced meanwhile.
    fn on_instance<T>(
        &self,
        function: &str,
        call: impl FnOnce(&mut Instance) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        let home = home_shard();
        let mut instance = match self.take_idle(home) {
            Some(instance) => instance,
            None => Box::new(self.instantiate(function).inspect_err(|_| self.failed())?),
        };
        let output = call(&mut instance).inspect_err(|_| self.failed())?;
        self.counts.ok(home);
        if instance.generation() != self.generation.load(Ordering::Acquire) {
            // Its code was replaced (a tier-up) while it ran.
            return Ok(output);
        }
        let mut idle = self.idle[home].lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_PER_SHARD {
            idle.push(instance);
        }
        Ok(output)
    }

    /// Counts a failed call (or a process crash) of this version.
    pub(crate) fn failed(&self) {
        self.counts.failure(home_shard());
        if self.on_trial.load(Ordering::Relaxed) {
            self.env.ledger.alarm.ring();
        }
    }

    /// An idle instance: from this thread's shard, else from any shard not busy.
    fn take_idle(&self, home: usize) -> Option<Box<Instance>> {
        if let Some(instance) = self.idle[home].lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Some(instance);
        }
        (1..SHARDS).find_map(|offset| self.idle[(home + offset) % SHARDS].try_lock().ok()?.pop())
    }

    /// A fresh instance of this version (`function` names the call it is for, in errors).
    pub(crate) fn instantiate(&self, function: &str) -> Result<Instance, CallError> {
        let module = &self.info.module;
        let state = HostState::new(Arc::from(module.as_str()), &self.env, Arc::clone(&self.life));
        let code = self.code.load();
        Instance::new(&code.pre, state, code.generation).map_err(|err| {
            let hint = if err.is::<wasmtime::PoolConcurrencyLimitError>() {
                format!(" (limits.instances is {}; raise it to run more at once)", self.env.limits.instances)
            } else {
                String::new()
            };
            CallError::Engine {
                module: module.clone(),
                function: function.to_string(),
                message: format!("cannot instantiate: {err:#}{hint}"),
            }
        })
    }
}

impl Drop for Version {
    fn drop(&mut self) {
        self.life.mark_gone();
    }
}
