//! The wasmtime engines, the epoch ticker that enforces call deadlines, and turning
//! a build's bytes into machine code (through the compile cache when it can).
//!
//! Two engines live side by side: Cranelift (optimising) and Winch (baseline, faster
//! to compile). Each version remembers which one compiled it; stores, linkers (`code/`) and
//! cache entries are per engine.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{
    Config, InstanceAllocationStrategy, Module, OptLevel, PoolingAllocationConfig, RegallocAlgorithm, Strategy,
};

use rayon::prelude::*;
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};

use super::cache::CompileCache;
use super::compiled::{code_size, Compiled, Loaded, Pieces};
use crate::background::Background;
use crate::config::{Compiler, NodeConfig};
use crate::error::NodeError;
use crate::reason::Reason;
use crate::wasm::abi::Callables;
use crate::wasm::component;
use crate::wasm::dispatch;
use crate::wasm::split;
use crate::wasm::text::Texts;
use crate::wasm::wrap;

/// The epoch period while calls start: a running call notices its deadline or a
/// hard purge within about this long. Deadlines are counted in milliseconds.
const TICK: Duration = Duration::from_millis(1);

/// The epoch period once no call has started for [`SLOW_AFTER`] while guest
/// code still runs (a call running alone, or a reload's staging call): it
/// notices its deadline or a purge within this long.
const IDLE_TICK: Duration = Duration::from_millis(10);

/// The epoch period once no call has started for [`SLOW_AFTER`] and no guest
/// code ran at the last tick: nothing is there to stop, so the ticker wakes
/// ten times a second (a hundred members on one machine spent 28 % of their
/// context switches on 10 ms ticks). A call starting wakes it at once; guest
/// code that runs without a call starting (a call that waited long in a host
/// function, a reload's staging call) is seen by the second tick at most, and
/// the ticker is back at [`IDLE_TICK`] from there: such code stops within
/// `2 × DEEP_TICK` of its deadline.
const DEEP_TICK: Duration = Duration::from_millis(100);

/// How long without a call starting before the ticker slows to [`IDLE_TICK`].
const SLOW_AFTER: Duration = Duration::from_millis(50);

/// The ticker's period: [`TICK`] while calls start, [`IDLE_TICK`] while
/// guest code runs without calls starting, [`DEEP_TICK`] when none runs.
fn period(quiet: Duration, running: bool) -> Duration {
    match (quiet >= SLOW_AFTER, running) {
        (false, _) => TICK,
        (true, true) => IDLE_TICK,
        (true, false) => DEEP_TICK,
    }
}

/// Milliseconds since the node started, advanced by the epoch ticker. Reading it
/// is one atomic load, so a call's deadline costs no clock read (but the first
/// call after a tick's, which reads the time: the ticker may be slow).
#[derive(Debug)]
pub(crate) struct Clock {
    ticks: AtomicU64,
    /// Set when a call starts, cleared at each tick: while it stays clear, the
    /// ticker slows down.
    calls: AtomicBool,
    /// Set when a running call sees a tick (the epoch callback), cleared at
    /// each tick: while it stays clear too, the ticker sleeps [`DEEP_TICK`].
    running: AtomicBool,
    /// Whether the ticker sleeps [`DEEP_TICK`] now: the first call to start
    /// then wakes it.
    deep: AtomicBool,
    ticker: std::sync::OnceLock<std::thread::Thread>,
    started: std::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            ticks: AtomicU64::new(0),
            calls: AtomicBool::new(false),
            running: AtomicBool::new(false),
            deep: AtomicBool::new(false),
            ticker: std::sync::OnceLock::new(),
            started: std::time::Instant::now(),
        }
    }
}

impl Clock {
    pub(crate) fn now(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// The tick at which a call starting now and allowed `timeout` is overdue.
    pub(crate) fn deadline(&self, timeout: Duration) -> u64 {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let now = if self.calls.load(Ordering::Relaxed) {
            self.now()
        } else {
            // SeqCst, as the ticker's `deep` then `calls` (Dekker's pattern): a
            // call either sees the ticker gone deep and wakes it, or the
            // ticker sees the call and does not go deep.
            self.calls.store(true, Ordering::SeqCst);
            if self.deep.load(Ordering::SeqCst) {
                self.wake_ticker();
            }
            self.advance()
        };
        now.saturating_add(ms).saturating_add(1)
    }

    /// Noted by a running call at a tick (the epoch callback): guest code
    /// runs, so the ticker keeps ticking at [`IDLE_TICK`] or faster.
    pub(crate) fn saw_running(&self) {
        self.running.store(true, Ordering::Relaxed);
    }

    fn wake_ticker(&self) {
        self.deep.store(false, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.get() {
            ticker.unpark();
        }
    }

    /// As [`Clock::deadline`], for the calls a reload makes while it stages a
    /// version (creating its store, `zest_vsn`, a component's `functions`):
    /// the time is read, so the deadline is never shortened, but the ticker
    /// is not woken to its fast period, so a reload on a node that serves no
    /// calls costs no burst of 1 ms wake-ups (a hundred members on one
    /// machine spent 13 % of their CPU there during back-to-back cluster
    /// reloads). Such a call that runs past its deadline is stopped within
    /// [`IDLE_TICK`] of it, as any call running alone past [`SLOW_AFTER`] is.
    pub(crate) fn staging_deadline(&self, timeout: Duration) -> u64 {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.advance().saturating_add(ms).saturating_add(1)
    }

    /// Brings the clock up to the time, and reads it (the ticks alone may be
    /// [`DEEP_TICK`] behind).
    pub(crate) fn advance(&self) -> u64 {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.ticks.fetch_max(ms, Ordering::Relaxed).max(ms)
    }
}

pub(crate) struct Engines {
    cranelift: Backend,
    winch: Backend,
    choice: Compiler,
    recent: Recent,
    pieces: PieceCache,
    /// The WAT texts parsed last, for an edit's parse to reuse (`text.rs`).
    texts: Texts,
    /// Compile threads: how many parts a build compiled wide is cut into.
    workers: usize,
    /// Reloads' loads under way, and when the last one ended.
    activity: Activity,
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
    code: Compiled,
    callables: Callables,
}

impl Recent {
    fn contains(&self, key: &[u8; 32], compiler: Compiler) -> bool {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.iter().any(|e| &e.key == key && e.compiler == compiler)
    }

    fn get(&self, key: &[u8; 32], compiler: Compiler) -> Option<(Compiled, Callables)> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let index = entries.iter().position(|e| &e.key == key && e.compiler == compiler)?;
        let entry = entries.remove(index);
        let found = (entry.code.clone(), Arc::clone(&entry.callables));
        entries.insert(0, entry);
        Some(found)
    }

    fn put(&self, key: &[u8; 32], compiler: Compiler, code: &Compiled, callables: &Callables) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|e| !(&e.key == key && e.compiler == compiler));
        let entry = RecentEntry { key: *key, compiler, code: code.clone(), callables: Arc::clone(callables) };
        entries.insert(0, entry);
        let mut bytes = 0;
        let keep = entries
            .iter()
            .take_while(|e| {
                bytes += e.code.code_size();
                bytes <= RECENT_MAX_BYTES
            })
            .count()
            .clamp(1, RECENT_MAX_ENTRIES);
        entries.truncate(keep);
    }
}

/// How many compiled pieces of split builds [`PieceCache`] keeps, and how much
/// machine code at most.
const PIECES_MAX_ENTRIES: usize = 8192;
const PIECES_MAX_BYTES: usize = 256 << 20;

/// Machine code of the pieces of recent split builds, by the sha256 of each
/// piece's bytes: a build that differs from one of them in a function's body
/// compiles only the part that holds it (`split.rs`).
#[derive(Default)]
struct PieceCache {
    inner: Mutex<PieceMap>,
}

#[derive(Default)]
struct PieceMap {
    /// Piece → its code and when it was last used.
    entries: FxHashMap<([u8; 32], Compiler), (Module, u64)>,
    clock: u64,
    bytes: usize,
}

impl PieceCache {
    fn get(&self, key: &[u8; 32], compiler: Compiler) -> Option<Module> {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        map.clock += 1;
        let clock = map.clock;
        let (module, used) = map.entries.get_mut(&(*key, compiler))?;
        *used = clock;
        Some(module.clone())
    }

    /// Keeps every piece of `pieces`.
    fn put(&self, pieces: &Pieces, compiler: Compiler) {
        let modules = std::iter::once(&pieces.core).chain(&pieces.parts);
        self.put_each(pieces.keys.iter().zip(modules), compiler);
    }

    /// Keeps each (key, piece); the least recently used go first when the
    /// cache is over its bounds (down to three quarters of them).
    fn put_each<'m>(&self, pieces: impl Iterator<Item = (&'m [u8; 32], &'m Module)>, compiler: Compiler) {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        map.clock += 1;
        let clock = map.clock;
        for (key, module) in pieces {
            if let Some((_, used)) = map.entries.get_mut(&(*key, compiler)) {
                *used = clock;
            } else {
                map.bytes += code_size(module);
                map.entries.insert((*key, compiler), (module.clone(), clock));
            }
        }
        if map.entries.len() > PIECES_MAX_ENTRIES || map.bytes > PIECES_MAX_BYTES {
            let mut ages: Vec<u64> = map.entries.values().map(|(_, used)| *used).collect();
            ages.sort_unstable();
            let keep = (ages.len() * 3 / 4).min(PIECES_MAX_ENTRIES * 3 / 4);
            let cutoff = ages[ages.len() - keep.max(1)];
            map.entries.retain(|_, (_, used)| *used >= cutoff);
            map.bytes = map.entries.values().map(|(module, _)| code_size(module)).sum();
        }
    }
}

/// Loads of builds under way, and when the last one ended (clock ms).
#[derive(Default)]
struct Activity {
    running: AtomicUsize,
    last_end: AtomicU64,
}

impl Activity {
    fn start<'a>(&'a self, clock: &'a Clock) -> impl Drop + 'a {
        struct Running<'a>(&'a Activity, &'a Clock);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.last_end.fetch_max(self.1.advance(), Ordering::Relaxed);
                self.0.running.fetch_sub(1, Ordering::Release);
            }
        }
        self.running.fetch_add(1, Ordering::Acquire);
        Running(self, clock)
    }

    fn busy_for(&self, clock: &Clock, quiet: Duration) -> Option<Duration> {
        if self.running.load(Ordering::Acquire) > 0 {
            return Some(quiet);
        }
        let since = clock.advance().saturating_sub(self.last_end.load(Ordering::Relaxed));
        let quiet_ms = u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX);
        (since < quiet_ms).then(|| Duration::from_millis(quiet_ms - since))
    }
}

/// The sha256 of each piece of `split`: the core's, then each part's.
fn piece_keys(split: &split::Split) -> Vec<[u8; 32]> {
    let bytes: Vec<&[u8]> = std::iter::once(&split.core).chain(&split.parts).map(Vec::as_slice).collect();
    bytes.par_iter().map(|piece| Sha256::digest(piece).into()).collect()
}

fn compile_piece(engine: &wasmtime::Engine, piece: &[u8]) -> Option<Module> {
    Module::new(engine, piece)
        .inspect_err(|err| tracing::debug!(error = %format!("{err:#}"), "a piece did not compile"))
        .ok()
}

/// How much of a freed instance's linear memory is zeroed in place rather than
/// handed back to the kernel, so the next instance in that slot takes no page
/// faults there. Measured best among 0, 8, 16 and 64 KiB for small processes.
const KEEP_RESIDENT: usize = 16 << 10;

/// Freed slots whose pages go back to the kernel are batched into one `madvise`
/// round this many at a time.
const DECOMMIT_BATCH: usize = 64;

/// Core instances counted per instance slot: a split build's store holds
/// its core and every part.
const CORE_INSTANCES_PER_SLOT: u32 = 256;

struct Backend {
    engine: wasmtime::Engine,
    cache: Option<Arc<CompileCache>>,
}

/// Whether a build of `total` pieces, `fresh` of them not compiled by any
/// recent build, compiles faster cut into one part per compile thread
/// (`workers`) than by its pieces: when there are more parts than threads and
/// at most a fifth of the pieces are known. Fewer, larger parts cost less
/// than many small ones (a piece has a fixed cost: trampolines, its
/// dispatcher, publishing its code), but are shared by no later build.
fn goes_wide(fresh: usize, total: usize, workers: usize) -> bool {
    total - 1 > workers && fresh * 5 >= total * 4
}

/// The most functions a part of a wide build holds, short of one part per
/// thread: a part's dispatcher is one function with a branch and a call per
/// callable, which Winch compiles as one (at 10,000 functions, six parts
/// were served in 177–187 ms where two took 183–234 and ten 194–254;
/// `docs/benchmarks.md`, "Cold reloads").
const WIDE_PART_FUNCTIONS: usize = 2048;

/// How many parts a wide build of `functions` is cut into: a multiple of the
/// compile threads, so that each thread gets as much.
fn wide_parts(functions: usize, workers: usize) -> usize {
    let workers = workers.max(1);
    workers * functions.div_ceil(workers * WIDE_PART_FUNCTIONS).max(1)
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
            pieces: PieceCache::default(),
            texts: Texts::default(),
            workers: rayon::current_num_threads(),
            activity: Activity::default(),
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
        let _loading = self.activity.start(&self.clock);
        for &compiler in self.candidates() {
            if let Some(loaded) = self.cached(key, compiler) {
                return Ok(loaded);
            }
        }
        let wasm = if is_text {
            std::borrow::Cow::Owned(self.texts.parse(bytes).map_err(|mut err| {
                err.set_path(source);
                (Reason::CompileError, err.to_string())
            })?)
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

    /// The compilers whose code [`Engines::load`] takes, in its order.
    fn candidates(&self) -> &'static [Compiler] {
        match self.choice {
            Compiler::Cranelift => &[Compiler::Cranelift],
            Compiler::Winch => &[Compiler::Winch],
            Compiler::Auto => &[Compiler::Cranelift, Compiler::Winch],
        }
    }

    /// Whether [`Engines::load`] would compile nothing for build `key`: a
    /// compiler it takes has the build's code in memory. (It may still look
    /// for a preferred compiler's code in the disk cache first.)
    pub(crate) fn holds_compiled(&self, key: &[u8; 32]) -> bool {
        self.candidates().iter().any(|&compiler| self.recent.contains(key, compiler))
    }

    /// How much longer to wait before no reload has loaded a build for
    /// `quiet`: `None` when that is already so. A tier-up waits for it, so
    /// that its long compile does not run beside a reload's.
    pub(crate) fn busy_for(&self, quiet: Duration) -> Option<Duration> {
        self.activity.busy_for(&self.clock, quiet)
    }

    /// Waits while a reload loads a build (and `alive` holds): background
    /// compiles yield the cores to it. Returns `alive()`.
    pub(crate) fn wait_while_loading(&self, alive: impl Fn() -> bool) -> bool {
        while self.activity.running.load(Ordering::Acquire) > 0 && alive() {
            std::thread::sleep(Duration::from_millis(2));
        }
        alive()
    }

    /// The build (whose sha256 is `key`) compiled by `compiler`: from memory or
    /// the disk cache when there, else compiled now. A tier-up's path.
    pub(crate) fn load_with(
        &self,
        compiler: Compiler,
        key: &[u8; 32],
        bytes: &[u8],
    ) -> Result<Loaded, (Reason, String)> {
        if let Some(loaded) = self.cached(key, compiler) {
            return Ok(loaded);
        }
        let wasm = self.texts.parse(bytes).map_err(|err| (Reason::CompileError, err.to_string()))?;
        self.compile(&wasm, compiler)
    }

    /// The build `key` compiled by `compiler`, from memory or the disk cache.
    fn cached(&self, key: &[u8; 32], compiler: Compiler) -> Option<Loaded> {
        if let Some((code, callables)) = self.recent.get(key, compiler) {
            return Some(Loaded { code, callables, compiler, compiled: false, pieces: None, later: None });
        }
        let backend = self.backend(compiler);
        let (code, callables) = backend.cache.as_ref()?.load(&backend.engine, key)?;
        self.keep_in_memory(key, compiler, &code, &callables);
        Some(Loaded { code, callables, compiler, compiled: false, pieces: None, later: None })
    }

    fn compile(&self, wasm: &[u8], compiler: Compiler) -> Result<Loaded, (Reason, String)> {
        // A core module in the guest SDK's component form is a component
        // once wrapped (`wasm/wrap.rs`); the caches keep it under its own
        // bytes' sha256, so the wrapping runs only when it compiles.
        let wrapped = match wrap::component_form(wasm) {
            Some(wrapped) => Some(wrapped.map_err(|message| (Reason::InvalidModule, message))?),
            None => None,
        };
        let wasm = wrapped.as_deref().unwrap_or(wasm);
        // A component compiles whole: the loader's rewrite and cut are of
        // core modules (and its callables are named by its own exports).
        if component::is_component(wasm) {
            let component = wasmtime::component::Component::new(&self.backend(compiler).engine, wasm)
                .map_err(|err| (Reason::InvalidModule, format!("{err:#}")))?;
            let code = Compiled::Component(component);
            return Ok(Loaded { code, callables: Arc::from([]), compiler, compiled: true, pieces: None, later: None });
        }
        // A baseline compile of a large build goes by pieces, so that the next
        // edit recompiles only what changed; a piece the engine refuses sends
        // the build down the whole path, which says why.
        if compiler == Compiler::Winch {
            if let Some(module) = split::Cuttable::read(wasm) {
                if let Some(split) = module.cut(None) {
                    self.check_memory(split.memory_min_bytes)?;
                    if let Some(loaded) = self.compile_split(&module, split, compiler) {
                        return Ok(loaded);
                    }
                }
            }
        }
        let rewritten = dispatch::rewrite(wasm).map_err(|message| (Reason::InvalidModule, message))?;
        self.check_memory(rewritten.memory_min_bytes)?;
        let module = Module::new(&self.backend(compiler).engine, &rewritten.wasm)
            .map_err(|err| (Reason::InvalidModule, format!("{err:#}")))?;
        let callables = rewritten.callables.into();
        Ok(Loaded { code: Compiled::Whole(module), callables, compiler, compiled: true, pieces: None, later: None })
    }

    fn check_memory(&self, memory_min_bytes: u64) -> Result<(), (Reason, String)> {
        if memory_min_bytes > u64::from(self.memory_mb) << 20 {
            let message = format!(
                "its memory starts at {} MiB, over the limit of {} MiB (limits.memory_mb)",
                memory_min_bytes >> 20,
                self.memory_mb
            );
            return Err((Reason::InvalidModule, message));
        }
        Ok(())
    }

    /// Compiles the pieces of `split` that no recent build had, in parallel;
    /// or, when almost none is known ([`goes_wide`]), `module` cut into one
    /// part per compile thread, leaving `split`'s pieces for after the swap.
    /// `None` when the engine refuses a piece.
    fn compile_split(&self, module: &split::Cuttable, split: split::Split, compiler: Compiler) -> Option<Loaded> {
        let keys = piece_keys(&split);
        let cached: Vec<Option<Module>> = keys.iter().map(|key| self.pieces.get(key, compiler)).collect();
        let fresh = cached.iter().filter(|module| module.is_none()).count();
        if goes_wide(fresh, keys.len(), self.workers) {
            if let Some(wide) = module.cut(Some(wide_parts(module.functions(), self.workers))) {
                let keys = piece_keys(&wide);
                let none = vec![None; keys.len()];
                let mut loaded = self.compile_pieces(wide, keys, none, compiler)?;
                loaded.later = Some(split);
                return Some(loaded);
            }
        }
        self.compile_pieces(split, keys, cached, compiler)
    }

    /// Compiles the pieces of `split` not in `cached`, in parallel.
    fn compile_pieces(
        &self,
        split: split::Split,
        keys: Vec<[u8; 32]>,
        cached: Vec<Option<Module>>,
        compiler: Compiler,
    ) -> Option<Loaded> {
        let engine = &self.backend(compiler).engine;
        let fresh = cached.iter().filter(|module| module.is_none()).count();
        let bytes: Vec<&[u8]> = std::iter::once(&split.core).chain(&split.parts).map(Vec::as_slice).collect();
        let modules: Vec<Option<Module>> = bytes
            .par_iter()
            .zip(cached)
            .map(|(piece, cached)| match cached {
                Some(module) => Some(module),
                None => compile_piece(engine, piece),
            })
            .collect();
        let mut modules = modules.into_iter().collect::<Option<Vec<Module>>>()?;
        let core = modules.remove(0);
        let pieces = Pieces::new(core, modules, keys, split.counts).ok()?;
        let total = pieces.parts.len() + 1;
        let code = Compiled::Split(Arc::new(pieces));
        let callables = split.callables.into();
        Some(Loaded { code, callables, compiler, compiled: true, pieces: Some((fresh, total)), later: None })
    }

    /// Compiles, one at a time, the pieces of `split` that no recent build
    /// had, and keeps them for the next edit: the work a build compiled wide
    /// left for after its swap ([`Loaded::later`]). Stops at a piece the
    /// engine refuses, or before a piece once `go_on` says no. Returns how
    /// many it compiled.
    pub(crate) fn compile_later(&self, split: &split::Split, compiler: Compiler, go_on: impl Fn() -> bool) -> usize {
        let engine = &self.backend(compiler).engine;
        let pieces = std::iter::once(&split.core).chain(&split.parts);
        let mut compiled = 0;
        for (key, piece) in piece_keys(split).iter().zip(pieces) {
            if !go_on() {
                break;
            }
            if self.pieces.get(key, compiler).is_some() {
                continue;
            }
            let Some(module) = compile_piece(engine, piece) else {
                break;
            };
            self.pieces.put_each(std::iter::once((key, &module)), compiler);
            compiled += 1;
        }
        compiled
    }

    fn keep_in_memory(&self, key: &[u8; 32], compiler: Compiler, code: &Compiled, callables: &Callables) {
        self.recent.put(key, compiler, code, callables);
        if let Compiled::Split(pieces) = code {
            self.pieces.put(pieces, compiler);
        }
    }

    /// Keeps freshly compiled machine code: in memory at once, and in the
    /// on-disk cache by `background` (a failure to write is logged).
    pub(crate) fn remember(
        &self,
        key: &[u8; 32],
        code: &Compiled,
        callables: &Callables,
        compiler: Compiler,
        background: &Background,
    ) {
        self.keep_in_memory(key, compiler, code, callables);
        if let Some(cache) = self.backend(compiler).cache.clone() {
            let (key, code, callables) = (*key, code.clone(), Arc::clone(callables));
            background.run(move || cache.store(&key, &code, &callables));
        }
    }

    /// The wasmtime engine of `compiler` (`Auto`: Cranelift's), for the
    /// code server to link against.
    pub(crate) fn engine(&self, compiler: Compiler) -> &wasmtime::Engine {
        &self.backend(compiler).engine
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
        // A split build's store holds a core and its parts (`split.rs`): the
        // number of core instances is a counter, not a reserved slot, so it is
        // counted generously; memories and tables are the reserved slots.
        // A component's instance counts once among the components, and its
        // core instances, memories and tables among the rest (a JavaScript
        // component takes three of each): `limits.instances` bounds both.
        pool.total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
            .total_component_instances(slots)
            .total_memories(slots)
            .total_tables(slots.saturating_mul(2))
            .max_tables_per_module(2)
            .table_elements(split::MAX_TABLE_ELEMENTS as usize)
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
                // Cranelift still compiles the trampolines between the host
                // and wasm, a few instructions each: its fastest settings
                // cost those nothing at run time and halve a small module's
                // compile (docs/benchmarks.md, "Cold reloads").
                wasm_config.cranelift_opt_level(OptLevel::None);
                wasm_config.cranelift_regalloc_algorithm(RegallocAlgorithm::SinglePass);
                // A large build compiles by pieces, in parallel across them
                // (`split.rs`); within one small module, rayon's hand-offs
                // cost more than they save.
                wasm_config.parallel_compilation(false);
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
        // `Auto` never reaches a backend: it picks Cranelift or Winch per build.
        let label = if compiler == Compiler::Winch { Compiler::Winch } else { Compiler::Cranelift }.as_str();
        let cache = match &config.data_dir {
            Some(dir) => Some(Arc::new(CompileCache::open(dir, &engine, label)?)),
            None => None,
        };
        Ok(Backend { engine, cache })
    }
}

/// Advances every engine's epoch and the [`Clock`] each [`period`], until
/// dropped. The clock follows the wall clock even when a wake-up comes late.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engines: Vec<wasmtime::Engine>, clock: Arc<Clock>) -> Result<Ticker, NodeError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let ticking = Arc::clone(&clock);
        let thread = std::thread::Builder::new()
            .name("zest-epoch".into())
            .spawn(move || {
                let clock = ticking;
                let (mut quiet, mut running) = (Duration::ZERO, true);
                while !stopped.load(Ordering::Relaxed) {
                    let period = period(quiet, running);
                    if period == DEEP_TICK {
                        clock.deep.store(true, Ordering::SeqCst);
                    }
                    // A call that started since the last tick may have seen
                    // `deep` clear: the ticker does not sleep long then.
                    if period != DEEP_TICK || !clock.calls.load(Ordering::SeqCst) {
                        std::thread::park_timeout(period);
                    }
                    clock.deep.store(false, Ordering::Relaxed);
                    clock.advance();
                    for engine in &engines {
                        engine.increment_epoch();
                    }
                    let started = clock.calls.swap(false, Ordering::Relaxed);
                    quiet = if started { Duration::ZERO } else { quiet + period };
                    running = clock.running.swap(false, Ordering::Relaxed);
                }
            })
            .map_err(NodeError::Ticker)?;
        let _ = clock.ticker.set(thread.thread().clone());
        Ok(Ticker { stop, thread: Some(thread) })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module of `functions` small callables; `f{edit.0}` returns `edit.1`.
    fn build(functions: usize, edit: (usize, u32)) -> Vec<u8> {
        let mut wat = String::from(
            r#"(module (memory (export "memory") 1) (data (i32.const 16) "1")
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
"#,
        );
        for k in 0..functions {
            let value = if k == edit.0 { edit.1 as usize } else { k };
            wat.push_str(&format!("  (func (export \"f{k}\") (param i32 i32) (result i64) i64.const {value})\n"));
        }
        wat.push(')');
        wat.into_bytes()
    }

    fn load(engines: &Engines, wasm: &[u8]) -> Loaded {
        let key: [u8; 32] = Sha256::digest(wasm).into();
        let loaded = engines.load(&key, wasm, true, std::path::Path::new("m.wat")).unwrap();
        engines.keep_in_memory(&key, loaded.compiler, &loaded.code, &loaded.callables);
        loaded
    }

    #[test]
    fn the_ticker_sleeps_long_only_while_no_call_starts_and_no_guest_code_runs() {
        assert_eq!(period(Duration::ZERO, false), TICK);
        assert_eq!(period(SLOW_AFTER - TICK, true), TICK);
        assert_eq!(period(SLOW_AFTER, true), IDLE_TICK);
        assert_eq!(period(SLOW_AFTER, false), DEEP_TICK);
    }

    #[test]
    fn a_call_starting_wakes_a_ticker_gone_deep() {
        let clock = Arc::new(Clock::default());
        let _ticker = Ticker::start(Vec::new(), Arc::clone(&clock)).unwrap();
        let deep = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            clock.deep.load(Ordering::SeqCst)
        });
        assert!(deep, "an idle ticker goes deep within 2 s");
        clock.deadline(Duration::from_millis(100));
        assert!(!clock.deep.load(Ordering::SeqCst), "the call woke it");
        // Woken, it ticks every millisecond again: the clock keeps up.
        std::thread::sleep(Duration::from_millis(50));
        let wall = u64::try_from(clock.started.elapsed().as_millis()).unwrap();
        assert!(clock.now() + 40 >= wall, "ticks {} against {wall} ms", clock.now());
    }

    #[test]
    fn a_staging_deadline_reads_the_time_but_leaves_the_ticker_slow() {
        let clock = Clock::default();
        std::thread::sleep(Duration::from_millis(30));
        // No tick has run: the deadline still counts from now, not from 0.
        let deadline = clock.staging_deadline(Duration::from_millis(100));
        assert!(deadline >= 131, "a staging call's deadline is never shortened: {deadline}");
        assert!(!clock.calls.load(Ordering::Relaxed), "staging a version is not a call that speeds the ticker up");
        let deadline = clock.deadline(Duration::from_millis(100));
        assert!(deadline >= 131, "{deadline}");
        assert!(clock.calls.load(Ordering::Relaxed), "a call speeds the ticker up");
    }

    #[test]
    fn an_edit_of_one_function_compiles_one_part_and_a_small_module_stays_whole() {
        let config = NodeConfig { compiler: Compiler::Winch, ..NodeConfig::default() };
        let mut engines = Engines::new(&config).unwrap();
        engines.workers = 2;
        // 301 functions: five parts of 64 (the last of 45) and a core. None
        // is known, so the first build compiles as two halves and a core,
        // leaving its six pieces for later; so does an edit that comes first.
        let first = load(&engines, &build(300, (0, 0)));
        assert_eq!(first.pieces, Some((3, 3)));
        let early = load(&engines, &build(300, (150, 8)));
        assert_eq!(early.pieces, Some((3, 3)), "the first build's pieces are not compiled yet");
        let later = first.later.expect("a build compiled wide leaves its pieces for later");
        assert_eq!(later.parts.len(), 5);
        // The five parts: the core (no call crosses a part here) is the
        // halves' own, already kept.
        assert_eq!(engines.compile_later(&later, Compiler::Winch, || false), 0, "told to stop, it compiles none");
        assert_eq!(engines.compile_later(&later, Compiler::Winch, || true), 5);
        assert_eq!(engines.compile_later(&later, Compiler::Winch, || true), 0, "pieces already kept compile once");

        let edited = load(&engines, &build(300, (150, 7)));
        assert_eq!(edited.pieces, Some((1, 6)), "only the part holding f150 compiles again");
        assert!(edited.later.is_none());
        let back = load(&engines, &build(300, (0, 0)));
        assert_eq!((back.compiled, back.pieces), (false, None), "a recent build is reused whole");
        let small = load(&engines, &build(10, (0, 0)));
        assert!(matches!(small.code, Compiled::Whole(_)) && small.pieces.is_none());

        for loaded in [&edited, &early] {
            let Compiled::Split(pieces) = &loaded.code else { panic!("a large build is split") };
            assert_eq!(pieces.counts.iter().sum::<u32>(), 300);
            assert_eq!(loaded.callables.len(), 300);
            // Callable k is f{k}, at its place among its part's callables
            // (zest_alloc is part 0's first function, not a callable).
            assert_eq!(&*loaded.callables[150], "f150");
        }
        let Compiled::Split(pieces) = &edited.code else { unreachable!() };
        assert_eq!(pieces.route(150), Some((2, 150 - 127)), "parts of 64");
        let Compiled::Split(halves) = &early.code else { unreachable!() };
        assert_eq!(halves.route(150), Some((1, 150 - 150)), "halves of 151 functions");
    }

    #[test]
    fn background_compiles_wait_while_a_reload_loads_a_build() {
        let config = NodeConfig { compiler: Compiler::Winch, ..NodeConfig::default() };
        let engines = Engines::new(&config).unwrap();
        assert!(engines.wait_while_loading(|| true), "nothing loads: no wait");
        assert!(!engines.wait_while_loading(|| false), "the node is gone");
        let loading = engines.activity.start(&engines.clock);
        let started = std::time::Instant::now();
        let waited = std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                engines.wait_while_loading(|| true);
                started.elapsed()
            });
            std::thread::sleep(Duration::from_millis(50));
            drop(loading);
            waiter.join().unwrap()
        });
        assert!(waited >= Duration::from_millis(50), "it waited for the load to end: {waited:?}");
        assert!(engines.busy_for(Duration::from_secs(60)).is_some(), "a load just ended");
    }

    #[test]
    fn a_build_goes_wide_when_it_has_more_parts_than_threads_and_almost_none_is_known() {
        // (fresh, total pieces with the core, threads)
        assert!(goes_wide(17, 17, 2), "all new: wide");
        assert!(goes_wide(14, 17, 2), "14 of 17 new (82%): wide");
        assert!(!goes_wide(13, 17, 2), "13 of 17 new (76%): by pieces");
        assert!(!goes_wide(1, 17, 2), "an edit: by pieces");
        assert!(!goes_wide(3, 3, 2), "two parts on two threads: nothing to gain");
        assert!(goes_wide(3, 3, 1), "two parts on one thread: one part");
        assert!(!goes_wide(17, 17, 16), "sixteen parts on sixteen threads");
        assert_eq!(wide_parts(1_000, 2), 2);
        assert_eq!(wide_parts(4_096, 2), 2);
        assert_eq!(wide_parts(4_097, 2), 4);
        assert_eq!(wide_parts(10_000, 2), 6, "parts of 1,667");
        assert_eq!(wide_parts(1_000, 1), 1);
        assert_eq!(wide_parts(10_000, 0), 5, "no thread count counts as one: five parts of at most 2,048");
    }
}
