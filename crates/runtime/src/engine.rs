//! The wasmtime engines, the epoch ticker that enforces call deadlines, and turning
//! a build's bytes into machine code (through the compile cache when it can).
//!
//! Two engines live side by side: Cranelift (optimising) and Winch (baseline, faster
//! to compile). Each version remembers which one compiled it; stores, linkers and
//! cache entries are per engine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{
    Config, InstanceAllocationStrategy, InstancePre, Linker, Module, OptLevel, PoolingAllocationConfig, Strategy,
};

use crate::background::Background;
use crate::cache::CompileCache;
use crate::config::{Compiler, NodeConfig};
use crate::dispatch::{self, Callables};
use crate::error::NodeError;
use crate::host::{self, HostState};
use crate::reason::Reason;

/// The epoch period: a running call notices its deadline or a hard purge within
/// about this long. Deadlines are counted in these ticks (milliseconds).
const TICK: Duration = Duration::from_millis(1);

/// Milliseconds since the node started, advanced by the epoch ticker. Reading it
/// is one atomic load, so a call's deadline costs no clock read.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    ticks: AtomicU64,
}

impl Clock {
    pub(crate) fn now(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// The tick at which a call starting now and allowed `timeout` is overdue.
    pub(crate) fn deadline(&self, timeout: Duration) -> u64 {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.now().saturating_add(ms).saturating_add(1)
    }
}

pub(crate) struct Engines {
    cranelift: Backend,
    winch: Backend,
    choice: Compiler,
    recent: Recent,
    pub(crate) clock: Arc<Clock>,
    _ticker: Ticker,
    /// `limits.memory_mb`: a build whose memory starts larger is refused.
    memory_mb: u32,
}

/// How many compiled builds [`Recent`] keeps, and how much machine code at most.
const RECENT_MAX_ENTRIES: usize = 32;
const RECENT_MAX_BYTES: usize = 256 << 20;

/// Machine code of the builds used most recently, kept in memory: a rollback or a
/// flip between two builds then maps no new code (and unmaps none), which would
/// otherwise stall every running thread for a TLB shootdown. This holds compiled
/// code only, never a version: instances and state still go with their version.
#[derive(Default)]
struct Recent {
    /// Most recent first.
    entries: Mutex<Vec<RecentEntry>>,
}

struct RecentEntry {
    key: [u8; 32],
    compiler: Compiler,
    module: Module,
    callables: Callables,
}

impl Recent {
    fn get(&self, key: &[u8; 32], compiler: Compiler) -> Option<(Module, Callables)> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let index = entries.iter().position(|e| &e.key == key && e.compiler == compiler)?;
        let entry = entries.remove(index);
        let found = (entry.module.clone(), Arc::clone(&entry.callables));
        entries.insert(0, entry);
        Some(found)
    }

    fn put(&self, key: &[u8; 32], compiler: Compiler, module: &Module, callables: &Callables) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|e| !(&e.key == key && e.compiler == compiler));
        let entry = RecentEntry { key: *key, compiler, module: module.clone(), callables: Arc::clone(callables) };
        entries.insert(0, entry);
        let mut bytes = 0;
        let keep = entries
            .iter()
            .take_while(|e| {
                bytes += code_size(&e.module);
                bytes <= RECENT_MAX_BYTES
            })
            .count()
            .clamp(1, RECENT_MAX_ENTRIES);
        entries.truncate(keep);
    }
}

fn code_size(module: &Module) -> usize {
    let range = module.image_range();
    range.end as usize - range.start as usize
}

/// How much of a freed instance's linear memory is zeroed in place rather than
/// handed back to the kernel, so the next instance in that slot takes no page
/// faults there. Measured best among 0, 8, 16 and 64 KiB for small processes.
const KEEP_RESIDENT: usize = 16 << 10;

/// Freed slots whose pages go back to the kernel are batched into one `madvise`
/// round this many at a time.
const DECOMMIT_BATCH: usize = 64;

struct Backend {
    engine: wasmtime::Engine,
    linker: Linker<HostState>,
    cache: Option<Arc<CompileCache>>,
}

/// A build turned into machine code.
pub(crate) struct Loaded {
    /// The build as rewritten for dispatch (`dispatch.rs`), compiled.
    pub(crate) module: Module,
    /// Its callables, in dispatch order.
    pub(crate) callables: Callables,
    pub(crate) compiler: Compiler,
    /// False when it came from the compile cache.
    pub(crate) compiled: bool,
}

impl Engines {
    pub(crate) fn new(config: &NodeConfig) -> Result<Engines, NodeError> {
        let cranelift = Backend::new(config, Compiler::Cranelift)?;
        let winch = Backend::new(config, Compiler::Winch)?;
        let clock = Arc::new(Clock::default());
        let ticker = Ticker::start(vec![cranelift.engine.clone(), winch.engine.clone()], Arc::clone(&clock))?;
        Ok(Engines {
            cranelift,
            winch,
            choice: config.compiler,
            recent: Recent::default(),
            clock,
            _ticker: ticker,
            memory_mb: config.limits.memory_mb,
        })
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
    /// `source` names the file in wat errors.
    pub(crate) fn load(
        &self,
        key: &[u8; 32],
        bytes: &[u8],
        is_text: bool,
        source: &std::path::Path,
    ) -> Result<Loaded, (Reason, String)> {
        let candidates: &[Compiler] = match self.choice {
            Compiler::Cranelift => &[Compiler::Cranelift],
            Compiler::Winch => &[Compiler::Winch],
            Compiler::Auto => &[Compiler::Cranelift, Compiler::Winch],
        };
        for &compiler in candidates {
            if let Some((module, callables)) = self.recent.get(key, compiler) {
                return Ok(Loaded { module, callables, compiler, compiled: false });
            }
        }
        for &compiler in candidates {
            let backend = self.backend(compiler);
            if let Some((module, callables)) = backend.cache.as_ref().and_then(|cache| cache.load(&backend.engine, key))
            {
                self.recent.put(key, compiler, &module, &callables);
                return Ok(Loaded { module, callables, compiler, compiled: false });
            }
        }
        let wasm = if is_text {
            wat::parse_bytes(bytes).map_err(|mut err| {
                err.set_path(source);
                (Reason::CompileError, err.to_string())
            })?
        } else {
            std::borrow::Cow::Borrowed(bytes)
        };
        // Auto: Winch at once; Cranelift later, by a tier-up (`reload/module.rs`).
        let compiler = match self.choice {
            Compiler::Auto => Compiler::Winch,
            fixed => fixed,
        };
        self.compile(&wasm, compiler)
    }

    /// The build (whose sha256 is `key`) compiled by `compiler`: from memory or
    /// the disk cache when there, else compiled now. A tier-up's path.
    pub(crate) fn load_with(
        &self,
        compiler: Compiler,
        key: &[u8; 32],
        bytes: &[u8],
    ) -> Result<Loaded, (Reason, String)> {
        if let Some((module, callables)) = self.recent.get(key, compiler) {
            return Ok(Loaded { module, callables, compiler, compiled: false });
        }
        let backend = self.backend(compiler);
        if let Some((module, callables)) = backend.cache.as_ref().and_then(|cache| cache.load(&backend.engine, key)) {
            self.recent.put(key, compiler, &module, &callables);
            return Ok(Loaded { module, callables, compiler, compiled: false });
        }
        let wasm = wat::parse_bytes(bytes).map_err(|err| (Reason::CompileError, err.to_string()))?;
        self.compile(&wasm, compiler)
    }

    fn compile(&self, wasm: &[u8], compiler: Compiler) -> Result<Loaded, (Reason, String)> {
        let rewritten = dispatch::rewrite(wasm).map_err(|message| (Reason::InvalidModule, message))?;
        if rewritten.memory_min_bytes > u64::from(self.memory_mb) << 20 {
            let message = format!(
                "its memory starts at {} MiB, over the limit of {} MiB (limits.memory_mb)",
                rewritten.memory_min_bytes >> 20,
                self.memory_mb
            );
            return Err((Reason::InvalidModule, message));
        }
        let module = Module::new(&self.backend(compiler).engine, &rewritten.wasm)
            .map_err(|err| (Reason::InvalidModule, format!("{err:#}")))?;
        Ok(Loaded { module, callables: rewritten.callables.into(), compiler, compiled: true })
    }

    /// Keeps freshly compiled machine code: in memory at once, and in the
    /// on-disk cache by `background` (a failure to write is logged).
    pub(crate) fn remember(
        &self,
        key: &[u8; 32],
        module: &Module,
        callables: &Callables,
        compiler: Compiler,
        background: &Background,
    ) {
        self.recent.put(key, compiler, module, callables);
        if let Some(cache) = self.backend(compiler).cache.clone() {
            let (key, module, callables) = (*key, module.clone(), Arc::clone(callables));
            background.run(move || cache.store(&key, &module, &callables));
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
        // Instances come from a pool of pre-reserved slots: a process migration
        // or a new pooled instance then maps and unmaps nothing, and a freed slot
        // is zeroed in place for the next instance (docs/benchmarks.md, "Process
        // migration"). Data segments are copied in rather than mapped
        // copy-on-write, which costs a page fault per touched page.
        let memory_bytes = config.limits.memory_bytes();
        let slots = config.limits.instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots)
            .max_memory_size(memory_bytes)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .decommit_batch_size(DECOMMIT_BATCH)
            .max_unused_warm_slots(0);
        wasm_config.memory_reservation(memory_bytes as u64);
        wasm_config.memory_init_cow(false);
        wasm_config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match compiler {
            Compiler::Winch => {
                wasm_config.strategy(Strategy::Winch);
            }
            Compiler::Cranelift | Compiler::Auto => {
                wasm_config.strategy(Strategy::Cranelift);
                wasm_config.cranelift_opt_level(OptLevel::Speed);
                // Under Auto, Cranelift only tiers up builds already serving, on
                // a low-priority thread: one core, leaving the other (and the
                // compile threads of a reload) alone.
                wasm_config.parallel_compilation(config.compiler != Compiler::Auto);
            }
        }
        let engine = wasmtime::Engine::new(&wasm_config).map_err(|err| NodeError::Engine(format!("{err:#}")))?;
        let mut linker = Linker::new(&engine);
        host::register(&mut linker).map_err(|err| NodeError::Engine(format!("{err:#}")))?;
        // `Auto` never reaches a backend: it picks Cranelift or Winch per build.
        let label = if compiler == Compiler::Winch { Compiler::Winch } else { Compiler::Cranelift }.as_str();
        let cache = match &config.data_dir {
            Some(dir) => Some(Arc::new(CompileCache::open(dir, &engine, label)?)),
            None => None,
        };
        Ok(Backend { engine, linker, cache })
    }
}

/// Advances every engine's epoch and the [`Clock`] each [`TICK`] until dropped.
/// The clock follows the wall clock even when a wake-up comes late.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engines: Vec<wasmtime::Engine>, clock: Arc<Clock>) -> Result<Ticker, NodeError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("zest-epoch".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    clock.ticks.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
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
