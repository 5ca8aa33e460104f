//! One loaded build of a module: its compiled code, what it exports, its pool of
//! ready instances, and the signal that tells a reload when it is gone.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Instant, SystemTime};

use wasmtime::{InstancePre, Module};

use crate::abi::{self, Exports};
use crate::config::Compiler;
use crate::error::CallError;
use crate::host::HostState;
use crate::instance::{CallCtx, Instance};
use crate::node::Shared;

/// How many idle instances a version keeps for reuse. Calls beyond that many at
/// once instantiate afresh and drop the extra instance afterwards.
const MAX_IDLE_INSTANCES: usize = 32;

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
}

pub(crate) struct Version {
    pub(crate) info: VersionInfo,
    pub(crate) sha256: [u8; 32],
    exports: Exports,
    pre: InstancePre<HostState>,
    idle: Mutex<Vec<Instance>>,
    life: Arc<Life>,
    node: Weak<Shared>,
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Version").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Version {
    /// Validates `module` against the ABI and instantiates it once (which also reads
    /// its `zest_vsn`); the instance becomes the first idle one.
    pub(crate) fn new(
        shared: &Arc<Shared>,
        name: &str,
        source: &Path,
        sha256: [u8; 32],
        module: Module,
        compiler: Compiler,
    ) -> Result<Version, String> {
        let exports = abi::check(&module)?;
        let pre = shared.engines.instance_pre(&module, compiler)?;
        let life = Arc::new(Life::default());
        let node = Arc::downgrade(shared);
        let module_name: Arc<str> = Arc::from(name);
        let state = HostState::new(module_name, &shared.config.limits, Arc::clone(&life), node.clone());
        let mut first = Instance::new(&pre, state).map_err(|err| format!("cannot instantiate: {err:#}"))?;
        let hex = hex::encode(sha256);
        let vsn = if exports.vsn { first.read_vsn(&shared.config.limits)? } else { hex[..16].to_string() };
        let info = VersionInfo {
            module: name.to_string(),
            vsn,
            sha256: hex,
            loaded_at: SystemTime::now(),
            source: source.to_path_buf(),
            compiler,
        };
        Ok(Version { info, sha256, exports, pre, idle: Mutex::new(vec![first]), life, node })
    }

    pub(crate) fn module(&self) -> &Module {
        self.pre.module()
    }

    pub(crate) fn life(&self) -> Arc<Life> {
        Arc::clone(&self.life)
    }

    pub(crate) fn functions(&self) -> &HashSet<Box<str>> {
        &self.exports.functions
    }

    /// Runs `function` on an idle instance (or a fresh one). An instance whose call
    /// failed is dropped: its memory may be half-written.
    pub(crate) fn call(&self, function: &str, args: &str, ctx: CallCtx) -> Result<String, CallError> {
        if !self.exports.functions.contains(function) {
            return Err(CallError::FunctionNotFound {
                module: self.info.module.clone(),
                function: function.to_string(),
            });
        }
        if let Err(message) = crate::instance::check_json(args) {
            return Err(CallError::InvalidArgs {
                module: self.info.module.clone(),
                function: function.to_string(),
                message,
            });
        }
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => self.instantiate(function)?,
        };
        let output = instance.invoke(function, args.as_bytes(), ctx)?;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_INSTANCES {
            idle.push(instance);
        }
        Ok(output)
    }

    fn instantiate(&self, function: &str) -> Result<Instance, CallError> {
        let module = &self.info.module;
        let Some(shared) = self.node.upgrade() else {
            return Err(CallError::Engine {
                module: module.clone(),
                function: function.to_string(),
                message: "the node is shutting down".into(),
            });
        };
        let state = HostState::new(
            Arc::from(module.as_str()),
            &shared.config.limits,
            Arc::clone(&self.life),
            self.node.clone(),
        );
        Instance::new(&self.pre, state).map_err(|err| CallError::Engine {
            module: module.clone(),
            function: function.to_string(),
            message: format!("cannot instantiate: {err:#}"),
        })
    }
}

impl Drop for Version {
    fn drop(&mut self) {
        self.life.mark_gone();
    }
}

/// Shared between a version and the registry: the hard-purge flag that running
/// calls check at every epoch tick, and the "gone" signal a purge waits on.
#[derive(Debug, Default)]
pub(crate) struct Life {
    killed: AtomicBool,
    gone: Mutex<bool>,
    changed: Condvar,
}

impl Life {
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    pub(crate) fn is_gone(&self) -> bool {
        *self.gone.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mark_gone(&self) {
        *self.gone.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_all();
    }

    /// Blocks until the version is gone or `deadline` passes.
    pub(crate) fn wait_gone(&self, deadline: Instant) -> bool {
        let mut gone = self.gone.lock().unwrap_or_else(PoisonError::into_inner);
        while !*gone {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            gone = self.changed.wait_timeout(gone, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }
}
