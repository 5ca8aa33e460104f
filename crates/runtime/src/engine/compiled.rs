//! The machine code of one build, as plain types: [`Compiled`] (one module,
//! or a split build's [`Pieces`]) and [`Loaded`] (what a load produced). The
//! engine makes them; the code server links and runs them (`code/`).

use std::sync::Arc;

use wasmtime::Module;

use crate::config::Compiler;
use crate::wasm::abi::Callables;
use crate::wasm::abi::DISPATCH;
use crate::wasm::split;

/// Bytes of machine code of one module.
pub(crate) fn code_size(module: &Module) -> usize {
    let range = module.image_range();
    range.end as usize - range.start as usize
}

/// The machine code of one build.
#[derive(Clone)]
pub(crate) enum Compiled {
    /// One module: the build as `dispatch.rs` rewrote it.
    Whole(Module),
    /// The build cut into a core and parts (`split.rs`).
    Split(Arc<Pieces>),
    /// A component (CONTRACT.md §13), compiled whole.
    Component(wasmtime::component::Component),
}

impl Compiled {
    /// Its core modules: the whole one, or the core then every part (none
    /// for a component).
    pub(crate) fn modules(&self) -> Vec<&Module> {
        match self {
            Compiled::Whole(module) => vec![module],
            Compiled::Split(pieces) => std::iter::once(&pieces.core).chain(&pieces.parts).collect(),
            Compiled::Component(_) => Vec::new(),
        }
    }

    /// True for a split build.
    pub(crate) fn is_split(&self) -> bool {
        matches!(self, Compiled::Split(_))
    }

    /// Bytes of machine code.
    pub(crate) fn code_size(&self) -> usize {
        match self {
            Compiled::Component(component) => {
                let range = component.image_range();
                range.end as usize - range.start as usize
            }
            _ => self.modules().into_iter().map(code_size).sum(),
        }
    }
}

/// A split build compiled: its pieces' machine code, and how calls find them.
pub(crate) struct Pieces {
    pub(crate) core: wasmtime::Module,
    pub(crate) parts: Vec<wasmtime::Module>,
    /// The sha256 of each piece's bytes: the core's, then each part's.
    pub(crate) keys: Vec<[u8; 32]>,
    /// How many callables each part's dispatcher switches over.
    pub(crate) counts: Vec<u32>,
    /// Callable number → (part, index within that part's dispatcher).
    route: Vec<(u32, u32)>,
    /// Every function export of the parts (the reserved `zest_` ones, and any
    /// the ABI refuses) → the part that defines it.
    owners: rustc_hash::FxHashMap<Box<str>, u32>,
}

impl std::fmt::Debug for Pieces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pieces").field("parts", &self.parts.len()).finish_non_exhaustive()
    }
}

impl Pieces {
    pub(crate) fn new(
        core: wasmtime::Module,
        parts: Vec<wasmtime::Module>,
        keys: Vec<[u8; 32]>,
        counts: Vec<u32>,
    ) -> Result<Pieces, String> {
        if counts.len() != parts.len() || keys.len() != parts.len() + 1 {
            return Err("a split build's pieces do not add up".into());
        }
        let route =
            counts.iter().enumerate().flat_map(|(part, &count)| (0..count).map(move |k| (part as u32, k))).collect();
        let mut owners = rustc_hash::FxHashMap::default();
        for (part, module) in parts.iter().enumerate() {
            for export in module.exports() {
                if export.name() != DISPATCH {
                    owners.insert(Box::from(export.name()), part as u32);
                }
            }
        }
        Ok(Pieces { core, parts, keys, counts, route, owners })
    }

    /// Where callable number `index` is: its part, and its index there.
    pub(crate) fn route(&self, index: usize) -> Option<(usize, i32)> {
        self.route.get(index).map(|&(part, local)| (part as usize, local as i32))
    }

    /// The part that defines export `name`.
    pub(crate) fn owner(&self, name: &str) -> Option<usize> {
        self.owners.get(name).map(|&part| part as usize)
    }
}

/// A build turned into machine code.
pub(crate) struct Loaded {
    /// The build as rewritten for dispatch (`dispatch.rs`), or cut into
    /// pieces (`split.rs`), compiled.
    pub(crate) code: Compiled,
    /// Its callables, in dispatch order.
    pub(crate) callables: Callables,
    pub(crate) compiler: Compiler,
    /// False when it came from the compile cache.
    pub(crate) compiled: bool,
    /// For a build compiled by pieces: how many were compiled now (the others
    /// were a recent build's), of how many.
    pub(crate) pieces: Option<(usize, usize)>,
    /// For a build compiled wide (none of its pieces known): its pieces of the
    /// usual size, to compile after the swap ([`Engines::compile_later`]) so
    /// that the next edit finds them.
    pub(crate) later: Option<split::Split>,
}
