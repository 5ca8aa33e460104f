//! The wasmtime engines, the epoch ticker that enforces call deadlines, and turning
//! a build's bytes into machine code (through the compile cache when it can).
//!
//! Two engines live side by side: Cranelift (optimising) and Winch (baseline, faster
//! to compile). Each version remembers which one compiled it; stores, linkers and
//! cache entries are per engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, InstancePre, Linker, Module, OptLevel, Strategy};

use crate::cache::CompileCache;
use crate::config::{Compiler, NodeConfig};
use crate::error::NodeError;
use crate::host::{self, HostState};
use crate::reload::Reason;

/// The epoch period: a running call notices its deadline or a hard purge within
/// about this long.
const TICK: Duration = Duration::from_millis(1);

/// With [`Compiler::Auto`], builds of at least this many bytes of wasm are compiled
/// by Winch, smaller ones by Cranelift (`docs/benchmarks.md` has the measurements).
pub(crate) const AUTO_WINCH_FROM_BYTES: usize = 64 * 1024;

pub(crate) struct Engines {
    cranelift: Backend,
    winch: Backend,
    choice: Compiler,
    _ticker: Ticker,
}

struct Backend {
    engine: wasmtime::Engine,
    linker: Linker<HostState>,
    cache: Option<CompileCache>,
}

/// A build turned into machine code.
pub(crate) struct Loaded {
    pub(crate) module: Module,
    pub(crate) compiler: Compiler,
    /// False when it came from the compile cache.
    pub(crate) compiled: bool,
}

impl Engines {
    pub(crate) fn new(config: &NodeConfig) -> Result<Engines, NodeError> {
        let cranelift = Backend::new(config, Compiler::Cranelift)?;
        let winch = Backend::new(config, Compiler::Winch)?;
        let ticker = Ticker::start(vec![cranelift.engine.clone(), winch.engine.clone()])?;
        Ok(Engines { cranelift, winch, choice: config.compiler, _ticker: ticker })
    }

    fn backend(&self, compiler: Compiler) -> &Backend {
        match compiler {
            Compiler::Winch => &self.winch,
            Compiler::Cranelift | Compiler::Auto => &self.cranelift,
        }
    }

    /// Machine code for the build `bytes` (wat text when `is_text`) whose sha256 is
    /// `key`: from the cache when an engine allowed by the node's choice has it,
    /// else compiled now. Errors carry `compile_error` (wat text that does not
    /// parse) or `invalid_module` (bytes the engine refuses).
    pub(crate) fn load(&self, key: &[u8; 32], bytes: &[u8], is_text: bool) -> Result<Loaded, (Reason, String)> {
        let candidates: &[Compiler] = match self.choice {
            Compiler::Cranelift => &[Compiler::Cranelift],
            Compiler::Winch => &[Compiler::Winch],
            Compiler::Auto => &[Compiler::Cranelift, Compiler::Winch],
        };
        for &compiler in candidates {
            let backend = self.backend(compiler);
            if let Some(module) = backend.cache.as_ref().and_then(|cache| cache.load(&backend.engine, key)) {
                return Ok(Loaded { module, compiler, compiled: false });
            }
        }
        let wasm = if is_text {
            wat::parse_bytes(bytes).map_err(|err| (Reason::CompileError, err.to_string()))?
        } else {
            std::borrow::Cow::Borrowed(bytes)
        };
        let compiler = match self.choice {
            Compiler::Auto if wasm.len() >= AUTO_WINCH_FROM_BYTES => Compiler::Winch,
            Compiler::Auto => Compiler::Cranelift,
            fixed => fixed,
        };
        let module = Module::new(&self.backend(compiler).engine, &wasm)
            .map_err(|err| (Reason::InvalidModule, format!("{err:#}")))?;
        Ok(Loaded { module, compiler, compiled: true })
    }

    /// Stores freshly compiled machine code in the cache (failures are logged).
    pub(crate) fn remember(&self, key: &[u8; 32], module: &Module, compiler: Compiler) {
        if let Some(cache) = &self.backend(compiler).cache {
            cache.store(key, module);
        }
    }

    /// Links `module` against the `"zest"` imports of its engine.
    pub(crate) fn instance_pre(&self, module: &Module, compiler: Compiler) -> Result<InstancePre<HostState>, String> {
        self.backend(compiler).linker.instantiate_pre(module).map_err(|err| format!("cannot link: {err:#}"))
    }
}

impl Backend {
    fn new(config: &NodeConfig, compiler: Compiler) -> Result<Backend, NodeError> {
        let mut wasm_config = Config::new();
        wasm_config.epoch_interruption(true);
        match compiler {
            Compiler::Winch => {
                wasm_config.strategy(Strategy::Winch);
            }
            Compiler::Cranelift | Compiler::Auto => {
                wasm_config.strategy(Strategy::Cranelift);
                wasm_config.cranelift_opt_level(OptLevel::Speed);
            }
        }
        let engine = wasmtime::Engine::new(&wasm_config).map_err(|err| NodeError::Engine(format!("{err:#}")))?;
        let mut linker = Linker::new(&engine);
        host::register(&mut linker).map_err(|err| NodeError::Engine(format!("{err:#}")))?;
        let label = match compiler {
            Compiler::Winch => "winch",
            Compiler::Cranelift | Compiler::Auto => "cranelift",
        };
        let cache = match &config.data_dir {
            Some(dir) => Some(CompileCache::open(dir, &engine, label)?),
            None => None,
        };
        Ok(Backend { engine, linker, cache })
    }
}

/// Advances every engine's epoch each [`TICK`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engines: Vec<wasmtime::Engine>) -> Result<Ticker, NodeError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("zest-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    for engine in &engines {
                        engine.increment_epoch();
                    }
                }
            })
            .map_err(NodeError::Ticker)?;
        Ok(Ticker { stop, thread: Some(thread) })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
