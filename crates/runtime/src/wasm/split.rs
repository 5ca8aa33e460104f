//! A large build cut into separately compiled pieces, so that an edit of one
//! function recompiles one piece: the loader's second rewrite, invisible to
//! guests.
//!
//! wasmtime compiles a module as a whole and reuses nothing below it, so an
//! edit of one function in a module of 10,000 costs what an all-new build
//! costs (`docs/benchmarks.md`, "Cold reloads"). Before a baseline (Winch)
//! compile, the loader therefore cuts a module of more than [`PART_FUNCTIONS`]
//! defined functions (64) into:
//!
//! - a **core** holding everything that is not code: the memory, the tables,
//!   the globals and the data segments, exported under internal names;
//! - **parts** of consecutive functions, 64 each (128 above 4,096), or fewer
//!   when their code is large ([`usual_starts`]: a part also ends after a body
//!   of 512 bytes or more once it holds 2 KiB of code), importing the
//!   `"zest"` host functions and the core's memory, tables and globals (so
//!   every index a body uses means what it meant), each exporting its own
//!   dispatcher ([`dispatch::DISPATCH`]) over the callables it defines, and
//!   the reserved `zest_` exports it defines under their own names; of the
//!   guest's types each keeps those it names (`Cut::type_section`).
//!
//! A body's bytes are copied as they are, but for `call`s: a call of a
//! function in the same part gets the part's index; a call of a function in
//! another part becomes `i32.const <index>; call_indirect` through a *cross*
//! table the core holds, in which the callee's part places it at its original
//! index. A callable nothing else reaches (no call, element segment or other
//! export) is not a function of its part at all: its body sits in its case of
//! the dispatcher, locals one index up ([`Cut::inlined`]), since Winch's
//! fixed cost per function is most of a small function's compile. Each piece
//! is compiled and cached by its own sha256, so a build that differs from a
//! recent one in one function's body compiles one part (and the core when
//! data changed too).
//!
//! The same module can also be cut into a few large parts
//! ([`Cuttable::cut`] with a part count): what a build none of whose pieces
//! the node knows is served from, one part per compile thread (`engine.rs`,
//! "wide"), while its pieces of the usual size compile after the swap.
//!
//! Anything the cut does not handle — a start function, instructions that
//! use passive segments (`memory.init`, `data.drop`, `table.init`),
//! `ref.func`, tail calls, imports other than `"zest"` functions, tags,
//! element segments that overlap or reach past their table (whose order of
//! writing, or whose trap, the parts would not keep) — leaves the module whole
//! ([`Cuttable::read`] or [`Cuttable::cut`] answers `None`), and so does any
//! malformed input: the whole path then reports it as it always did.

use std::ops::Range;

use rayon::prelude::*;

use wasm_encoder::{
    ConstExpr, ElementSection, Elements, EntityType, ExportKind, ExportSection, FunctionSection, GlobalType,
    ImportSection, MemoryType, Module, RawSection, RefType, TableSection, TableType,
};
use wasmparser::{
    BlockType, CompositeInnerType, ElementItems, ElementKind, ExternalKind, HeapType, Operator, Parser, Payload,
    SubType, TableInit, TryTable, TypeRef, ValType,
};

use super::abi::{CORE, DISPATCH, IMPORT_MODULE};
use super::dispatch::{self, Case};

mod check;
pub use check::check_against_whole;

/// How many consecutive defined functions make one part of a module of up to
/// [`LARGE`] functions; a larger module's parts hold twice as many (fewer
/// pieces to compile when everything is new, at a small cost to an edit).
pub(crate) const PART_FUNCTIONS: usize = 64;
const LARGE: usize = 4096;

/// The part size for a module of `defined` functions.
fn part_size(defined: usize) -> usize {
    if defined > LARGE {
        2 * PART_FUNCTIONS
    } else {
        PART_FUNCTIONS
    }
}

/// A part also ends after a body of at least [`BIG_BODY`] bytes once it holds
/// this much code: Winch compiles about 1.5 KB of code a millisecond, so a
/// part of 64 functions of real code (a guest SDK's JSON parser, say) took
/// 12–15 ms where a part of small functions takes 2–3 (`docs/benchmarks.md`,
/// "Extensions", item 3).
const PART_BYTES: usize = 2048;

/// See [`PART_BYTES`]. Only a large body ends a part early, so that a module
/// of small functions is cut every [`part_size`] functions as before, and an
/// edit of one small body never moves a boundary.
const BIG_BODY: usize = 512;

/// Where the usual cut's parts begin, ending with the number of functions: a
/// part ends after [`part_size`] functions, or after a body of [`BIG_BODY`]
/// bytes or more once it holds [`PART_BYTES`] of code. An edit of one body
/// moves at most the boundary of its own part (and so, within a run of
/// [`part_size`] functions, the next ones up to the next boundary it cannot
/// move).
fn usual_starts(layout: &Layout<'_>) -> Vec<usize> {
    let defined = layout.functions.len();
    let cap = part_size(defined);
    let mut starts = vec![0];
    let (mut count, mut bytes) = (0, 0);
    for (function, (body, _)) in layout.bodies.iter().enumerate() {
        count += 1;
        bytes += body.len();
        if function + 1 < defined && (count == cap || (body.len() >= BIG_BODY && bytes >= PART_BYTES)) {
            starts.push(function + 1);
            (count, bytes) = (0, 0);
        }
    }
    starts.push(defined);
    starts
}

/// The core's memory, as parts import it.
const CORE_MEMORY: &str = "zest$memory";

/// The cross table, as parts import it.
const CROSS: &str = "zest$cross";

/// The largest cross table the cut makes (wasmtime's pooling allocator caps a
/// table's elements; `engine.rs` configures the same number).
pub(crate) const MAX_TABLE_ELEMENTS: u32 = 20_000;

/// A build cut into a core and parts.
#[derive(Debug)]
pub(crate) struct Split {
    pub(crate) core: Vec<u8>,
    pub(crate) parts: Vec<Vec<u8>>,
    /// The callables in dispatch order: part 0's (in export order), then part 1's…
    pub(crate) callables: Vec<Box<str>>,
    /// How many callables each part's dispatcher switches over.
    pub(crate) counts: Vec<u32>,
    /// The largest initial size of the module's memories, in bytes.
    pub(crate) memory_min_bytes: u64,
}

/// A module as the cut needs it, read in one pass.
#[derive(Default)]
struct Layout<'a> {
    types: Vec<Option<(Vec<ValType>, Vec<ValType>)>>,
    type_section: Option<Range<usize>>,
    /// Names of the `"zest"` function imports, with their type indices.
    imports: Vec<(&'a str, u32)>,
    /// The type index of every defined function.
    functions: Vec<u32>,
    tables: Vec<TableType>,
    memory: Option<MemoryType>,
    memory_section: Option<Range<usize>>,
    globals: Vec<GlobalType>,
    global_section: Option<Range<usize>>,
    exports: Vec<(&'a str, ExternalKind, u32)>,
    /// Active element segments: table, constant offset, function indices.
    elements: Vec<(u32, u32, Vec<u32>)>,
    data_count: Option<Range<usize>>,
    data: Option<Range<usize>>,
    /// Each body's bytes (locals and operators) and its calls: where the
    /// `call` instruction starts and ends, and the callee.
    bodies: Vec<(Range<usize>, Vec<Call>)>,
    /// Per body: the type indices it names (`call_indirect`, block types,
    /// typed references in its locals and instructions).
    body_types: Vec<Vec<u32>>,
    /// Per body: where its instructions start (after its locals), its
    /// `local.get`/`set`/`tee` instructions (start, end, local index), and
    /// its declared locals one by one (`None`: more than [`INLINE_LOCALS`]).
    /// What a dispatcher needs to hold the body itself ([`Cut::inlined`]).
    body_locals: Vec<BodyLocals>,
    /// Whether every type is a plain function type of numbers and vectors, in
    /// a group of its own: what lets a part replace the types it does not use
    /// ([`Cut::type_section`]).
    plain_types: bool,
}

/// A `call` instruction in a body: where it starts and ends, and the callee.
type Call = (usize, usize, u32);

/// A body's locals, as [`Layout::body_locals`] keeps them.
#[derive(Default)]
struct BodyLocals {
    operators: usize,
    uses: Vec<(usize, usize, u32)>,
    declared: Option<Vec<ValType>>,
}

/// A callable with more declared locals than this keeps its own function.
const INLINE_LOCALS: u32 = 64;

/// A module read for cutting, which can be cut more than one way.
pub(crate) struct Cuttable<'a> {
    wasm: &'a [u8],
    layout: Layout<'a>,
}

impl<'a> Cuttable<'a> {
    /// `None` when `wasm` is small, has no memory, or uses something the cut
    /// does not handle.
    pub(crate) fn read(wasm: &'a [u8]) -> Option<Cuttable<'a>> {
        let layout = read(wasm)?;
        if layout.functions.len() <= PART_FUNCTIONS || layout.memory.is_none() {
            return None;
        }
        Some(Cuttable { wasm, layout })
    }

    /// How many functions the module defines.
    pub(crate) fn functions(&self) -> usize {
        self.layout.functions.len()
    }

    /// The cut into the usual parts ([`usual_starts`], the pieces later builds
    /// share), or (`Some(n)`) into `n` parts of as many functions.
    pub(crate) fn cut(&self, parts: Option<usize>) -> Option<Split> {
        let defined = self.layout.functions.len();
        let starts = match parts {
            Some(parts) => {
                let size = defined.div_ceil(parts.clamp(1, defined));
                (0..defined).step_by(size).chain(std::iter::once(defined)).collect()
            }
            None => usual_starts(&self.layout),
        };
        self.cut_at(starts)
    }

    /// The cut into parts beginning at `starts` (ascending from 0, then the
    /// number of functions); `None` when they are not such.
    pub(crate) fn cut_at(&self, starts: Vec<usize>) -> Option<Split> {
        let defined = self.layout.functions.len();
        let well_formed = starts.first() == Some(&0)
            && starts.last() == Some(&defined)
            && starts.windows(2).all(|pair| pair[0] < pair[1]);
        if !well_formed {
            return None;
        }
        Cut::new(self.wasm, &self.layout, starts)?.encode()
    }
}

fn read(wasm: &[u8]) -> Option<Layout<'_>> {
    let mut layout = Layout::default();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.ok()? {
            Payload::Version { encoding: wasmparser::Encoding::Module, .. } => {}
            Payload::TypeSection(reader) => {
                layout.type_section = Some(reader.range());
                layout.plain_types = true;
                for group in reader {
                    let group = group.ok()?;
                    let alone = !group.is_explicit_rec_group();
                    for sub in group.into_types() {
                        layout.plain_types &= alone && sub.is_final && sub.supertype_idx.is_none() && is_plain(&sub);
                        layout.types.push(match &sub.composite_type.inner {
                            CompositeInnerType::Func(func) => Some((func.params().to_vec(), func.results().to_vec())),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.ok()?;
                    match import.ty {
                        TypeRef::Func(ty) if import.module == IMPORT_MODULE => layout.imports.push((import.name, ty)),
                        _ => return None,
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    layout.functions.push(ty.ok()?);
                }
            }
            Payload::TableSection(reader) => {
                for table in reader {
                    let table = table.ok()?;
                    let ty = table.ty;
                    if !matches!(table.init, TableInit::RefNull)
                        || ty.table64
                        || ty.shared
                        || !ty.element_type.is_func_ref()
                    {
                        return None;
                    }
                    layout.tables.push(TableType {
                        element_type: RefType::FUNCREF,
                        table64: false,
                        minimum: ty.initial,
                        maximum: ty.maximum,
                        shared: false,
                    });
                }
            }
            Payload::MemorySection(reader) => {
                layout.memory_section = Some(reader.range());
                for memory in reader {
                    let memory = memory.ok()?;
                    if layout.memory.is_some() || memory.memory64 || memory.shared {
                        return None;
                    }
                    layout.memory = Some(MemoryType {
                        minimum: memory.initial,
                        maximum: memory.maximum,
                        memory64: false,
                        shared: false,
                        page_size_log2: memory.page_size_log2,
                    });
                }
            }
            Payload::GlobalSection(reader) => {
                layout.global_section = Some(reader.range());
                for global in reader {
                    let ty = global.ok()?.ty;
                    if ty.shared {
                        return None;
                    }
                    let val_type = match ty.content_type {
                        ValType::I32 => wasm_encoder::ValType::I32,
                        ValType::I64 => wasm_encoder::ValType::I64,
                        ValType::F32 => wasm_encoder::ValType::F32,
                        ValType::F64 => wasm_encoder::ValType::F64,
                        ValType::V128 => wasm_encoder::ValType::V128,
                        ValType::Ref(_) => return None,
                    };
                    layout.globals.push(GlobalType { val_type, mutable: ty.mutable, shared: false });
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.ok()?;
                    layout.exports.push((export.name, export.kind, export.index));
                }
            }
            Payload::ElementSection(reader) => {
                for element in reader {
                    let element = element.ok()?;
                    let ElementKind::Active { table_index, offset_expr } = element.kind else {
                        return None;
                    };
                    let mut ops = offset_expr.get_operators_reader();
                    let (Operator::I32Const { value }, Operator::End) = (ops.read().ok()?, ops.read().ok()?) else {
                        return None;
                    };
                    let ElementItems::Functions(items) = element.items else {
                        return None;
                    };
                    let items = items.into_iter().collect::<Result<Vec<u32>, _>>().ok()?;
                    layout.elements.push((table_index.unwrap_or(0), value as u32, items));
                }
            }
            Payload::DataCountSection { range, .. } => layout.data_count = Some(range),
            Payload::DataSection(reader) => layout.data = Some(reader.range()),
            Payload::CodeSectionStart { .. } => {}
            Payload::CodeSectionEntry(body) => {
                let mut calls = Vec::new();
                let mut types = Vec::new();
                let mut locals = BodyLocals { declared: Some(Vec::new()), ..BodyLocals::default() };
                let mut declared = 0u32;
                for local in body.get_locals_reader().ok()? {
                    let (count, ty) = local.ok()?;
                    named_by(ty, &mut types)?;
                    declared = declared.saturating_add(count);
                    match &mut locals.declared {
                        Some(list) if declared <= INLINE_LOCALS => list.extend((0..count).map(|_| ty)),
                        _ => locals.declared = None,
                    }
                }
                let mut ops = body.get_operators_reader().ok()?;
                locals.operators = ops.original_position();
                while !ops.eof() {
                    let (op, at) = ops.read_with_offset().ok()?;
                    match op {
                        Operator::Call { function_index } => {
                            calls.push((at, ops.original_position(), function_index));
                        }
                        Operator::LocalGet { local_index }
                        | Operator::LocalSet { local_index }
                        | Operator::LocalTee { local_index } => {
                            locals.uses.push((at, ops.original_position(), local_index));
                        }
                        Operator::CallIndirect { type_index, .. } => types.push(type_index),
                        Operator::Block { blockty }
                        | Operator::Loop { blockty }
                        | Operator::If { blockty }
                        | Operator::TryTable { try_table: TryTable { ty: blockty, .. } }
                        | Operator::Try { blockty } => match blockty {
                            BlockType::FuncType(ty) => types.push(ty),
                            BlockType::Type(ty) => named_by(ty, &mut types)?,
                            BlockType::Empty => {}
                        },
                        Operator::RefNull { hty } => named_by_heap(hty, &mut types)?,
                        Operator::TypedSelect { ty } => named_by(ty, &mut types)?,
                        Operator::TypedSelectMulti { tys } => {
                            for ty in tys {
                                named_by(ty, &mut types)?;
                            }
                        }
                        Operator::ReturnCall { .. }
                        | Operator::ReturnCallIndirect { .. }
                        | Operator::ReturnCallRef { .. }
                        | Operator::CallRef { .. }
                        | Operator::RefFunc { .. }
                        | Operator::MemoryInit { .. }
                        | Operator::DataDrop { .. }
                        | Operator::TableInit { .. }
                        | Operator::ElemDrop { .. } => return None,
                        _ => {}
                    }
                }
                layout.bodies.push((body.range(), calls));
                layout.body_types.push(types);
                layout.body_locals.push(locals);
            }
            Payload::CustomSection(_) => {}
            Payload::End(_) => {}
            // A start function, tags, anything newer: left whole.
            _ => return None,
        }
    }
    (layout.bodies.len() == layout.functions.len()).then_some(layout)
}

/// Adds the type index a value type names (a typed reference's) to `types`;
/// `None` for an index the cut cannot read.
fn named_by(ty: ValType, types: &mut Vec<u32>) -> Option<()> {
    match ty {
        ValType::Ref(reference) => named_by_heap(reference.heap_type(), types),
        _ => Some(()),
    }
}

/// As [`named_by`], for a heap type (`ref.null`'s).
fn named_by_heap(heap: HeapType, types: &mut Vec<u32>) -> Option<()> {
    if let HeapType::Concrete(index) | HeapType::Exact(index) = heap {
        types.push(index.as_module_index()?);
    }
    Some(())
}

/// Whether `sub` is a function type of numbers and vectors only.
fn is_plain(sub: &SubType) -> bool {
    let CompositeInnerType::Func(func) = &sub.composite_type.inner else {
        return false;
    };
    !sub.composite_type.shared
        && func
            .params()
            .iter()
            .chain(func.results())
            .all(|ty| matches!(ty, ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64 | ValType::V128))
}

/// The cut being made: which part each function goes to, and which functions
/// other parts call.
struct Cut<'a> {
    wasm: &'a [u8],
    layout: &'a Layout<'a>,
    imported: u32,
    parts: usize,
    /// Where each part's defined functions begin, then their number.
    starts: Vec<usize>,
    /// Per defined function: its part.
    owners: Vec<u32>,
    /// The cross table's size (0: no function is called across parts).
    cross_len: u32,
    /// Per defined function: whether another part calls it.
    called_across: Vec<bool>,
    /// Per defined function: whether anything but its one callable export
    /// reaches it (a call, an element segment, another export), which keeps
    /// it out of its dispatcher ([`Cut::inlined`]).
    reached: Vec<bool>,
    /// Per part: its callables (name, function index), in export order. An
    /// exported import is part 0's (every part imports the same).
    callables: Vec<Vec<(&'a str, u32)>>,
    /// Per part: its other function exports (name, function index).
    exports: Vec<Vec<(&'a str, u32)>>,
    memory_names: Vec<&'a str>,
}

impl<'a> Cut<'a> {
    fn new(wasm: &'a [u8], layout: &'a Layout<'a>, starts: Vec<usize>) -> Option<Cut<'a>> {
        let imported = u32::try_from(layout.imports.len()).ok()?;
        let defined = layout.functions.len();
        let parts = starts.len() - 1;
        let mut owners = Vec::with_capacity(defined);
        for (part, functions) in starts.windows(2).enumerate() {
            owners.extend(std::iter::repeat_n(u32::try_from(part).ok()?, functions[1] - functions[0]));
        }
        let part_of = |function: u32| part_of(&owners, function, imported);
        let total = imported as usize + defined;
        let mut called_across = vec![false; defined];
        let mut cross_len = 0;
        for (caller, (_, calls)) in layout.bodies.iter().enumerate() {
            for &(_, _, callee) in calls {
                if callee as usize >= total {
                    return None;
                }
                if callee >= imported && part_of(callee) != owners[caller] as usize {
                    called_across[(callee - imported) as usize] = true;
                    cross_len = cross_len.max(callee + 1);
                }
            }
        }
        if cross_len > MAX_TABLE_ELEMENTS || layout.tables.len() + usize::from(cross_len > 0) > 2 {
            return None;
        }
        // A segment past its table's initial size fails the whole module's
        // instantiation (even an empty one); cut, only the parts holding its
        // items would write it, and a segment or a part of one could pass.
        // Such a module stays whole, which reports the trap as it always did.
        for (table, offset, items) in &layout.elements {
            let minimum = layout.tables.get(*table as usize)?.minimum;
            if u64::from(*offset) + items.len() as u64 > minimum || items.iter().any(|&f| f as usize >= total) {
                return None;
            }
        }
        // Segments are written in order, a later one over an earlier one; cut,
        // each part writes its share and the part order would decide. Modules
        // whose segments overlap stay whole.
        let mut spans: Vec<(u32, u64, u64)> = layout
            .elements
            .iter()
            .filter(|(_, _, items)| !items.is_empty())
            .map(|(table, offset, items)| (*table, u64::from(*offset), u64::from(*offset) + items.len() as u64))
            .collect();
        spans.sort_unstable();
        if spans.windows(2).any(|pair| pair[0].0 == pair[1].0 && pair[1].1 < pair[0].2) {
            return None;
        }
        let mut callables = vec![Vec::new(); parts];
        let mut exports = vec![Vec::new(); parts];
        let mut memory_names = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for &(name, kind, index) in &layout.exports {
            if !seen.insert(name) {
                return None;
            }
            match kind {
                ExternalKind::Func => {
                    let ty = match index.checked_sub(imported) {
                        Some(defined) => *layout.functions.get(defined as usize)?,
                        None => layout.imports[index as usize].1,
                    };
                    let callable = !name.starts_with("zest_")
                        && layout
                            .types
                            .get(ty as usize)
                            .and_then(Option::as_ref)
                            .is_some_and(|(params, results)| dispatch::is_callable_type(params, results));
                    let list = if callable { &mut callables } else { &mut exports };
                    list[part_of(index)].push((name, index));
                }
                ExternalKind::Memory => memory_names.push(name),
                // The guest's globals and tables are its own business: the
                // ABI ignores them, and nothing outside reads them.
                ExternalKind::Global | ExternalKind::Table => {}
                _ => return None,
            }
        }
        let mut reached = vec![false; defined];
        let mut reach = |function: u32| {
            if let Some(defined) = function.checked_sub(imported) {
                reached[defined as usize] = true;
            }
        };
        layout.bodies.iter().flat_map(|(_, calls)| calls).for_each(|&(_, _, callee)| reach(callee));
        layout.elements.iter().flat_map(|(_, _, items)| items).for_each(|&function| reach(function));
        exports.iter().flatten().for_each(|&(_, function)| reach(function));
        let mut exported = std::collections::HashSet::new();
        for &(_, function) in callables.iter().flatten() {
            if !exported.insert(function) {
                reach(function);
            }
        }
        Some(Cut {
            wasm,
            layout,
            imported,
            parts,
            starts,
            owners,
            cross_len,
            called_across,
            reached,
            callables,
            exports,
            memory_names,
        })
    }

    /// See [`part_of`].
    fn part_of(&self, function: u32) -> usize {
        part_of(&self.owners, function, self.imported)
    }

    fn encode(&self) -> Option<Split> {
        let page = 1u64 << self.layout.memory?.page_size_log2.unwrap_or(16);
        let memory_min_bytes = self.layout.memory?.minimum.saturating_mul(page);
        let parts = (0..self.parts).into_par_iter().map(|part| self.part(part)).collect::<Option<Vec<_>>>()?;
        let mut callables = Vec::new();
        let mut counts = Vec::new();
        for list in &self.callables {
            counts.push(u32::try_from(list.len()).ok()?);
            callables.extend(list.iter().map(|(name, _)| Box::from(*name)));
        }
        Some(Split { core: self.core(), parts, callables, counts, memory_min_bytes })
    }

    fn raw(&self, module: &mut Module, id: u8, range: &Option<Range<usize>>) {
        if let Some(range) = range {
            module.section(&RawSection { id, data: &self.wasm[range.clone()] });
        }
    }

    /// The core: tables (the cross table last), memory, globals and data,
    /// exported for the parts (and the memory under its own names too).
    fn core(&self) -> Vec<u8> {
        let mut module = Module::new();
        let mut tables = TableSection::new();
        for table in &self.layout.tables {
            tables.table(*table);
        }
        if let Some(cross) = self.cross_table() {
            tables.table(cross);
        }
        if !tables.is_empty() {
            module.section(&tables);
        }
        self.raw(&mut module, wasm_encoder::SectionId::Memory as u8, &self.layout.memory_section);
        self.raw(&mut module, wasm_encoder::SectionId::Global as u8, &self.layout.global_section);
        let mut exports = ExportSection::new();
        exports.export(CORE_MEMORY, ExportKind::Memory, 0);
        for name in &self.memory_names {
            exports.export(name, ExportKind::Memory, 0);
        }
        for index in 0..self.layout.tables.len() as u32 {
            exports.export(&format!("zest$table{index}"), ExportKind::Table, index);
        }
        if self.cross_len > 0 {
            exports.export(CROSS, ExportKind::Table, self.layout.tables.len() as u32);
        }
        for index in 0..self.layout.globals.len() as u32 {
            exports.export(&format!("zest$global{index}"), ExportKind::Global, index);
        }
        module.section(&exports);
        self.raw(&mut module, wasm_encoder::SectionId::DataCount as u8, &self.layout.data_count);
        self.raw(&mut module, wasm_encoder::SectionId::Data as u8, &self.layout.data);
        module.finish()
    }

    fn cross_table(&self) -> Option<TableType> {
        (self.cross_len > 0).then_some(TableType {
            element_type: RefType::FUNCREF,
            table64: false,
            minimum: u64::from(self.cross_len),
            maximum: Some(u64::from(self.cross_len)),
            shared: false,
        })
    }

    /// Which of part `part`'s callables its dispatcher holds inline, in
    /// place of a call, and the function whose declared locals the dispatcher
    /// declares for them (`None`: none). Winch's fixed cost per function is
    /// most of a small function's compile: a dispatcher holding 2,000 small
    /// bodies compiled in a ninth of the time of 2,000 functions and a
    /// dispatcher calling them (`docs/benchmarks.md`, "Callables inside
    /// their dispatcher"). A callable goes inline when nothing else reaches
    /// it and its declared locals begin the dispatcher's, so its locals keep
    /// their types one index up (the dispatcher's first parameter is the
    /// callable's number); each call of the dispatcher runs one body, on
    /// locals zeroed at its entry as the function's own were.
    fn inlined(&self, part: usize) -> (Vec<bool>, Option<u32>) {
        let layout = self.layout;
        let candidate = |function: u32| -> Option<&Vec<ValType>> {
            let defined = function.checked_sub(self.imported)? as usize;
            if self.reached[defined] {
                return None;
            }
            layout.body_locals[defined].declared.as_ref()
        };
        let callables = &self.callables[part];
        // The dispatcher's locals: those of the candidate that the most
        // candidates' locals begin (ties: the shortest), among the 16 most
        // common.
        let mut common: Vec<(&Vec<ValType>, u32, usize)> = Vec::new();
        for &(_, function) in callables {
            if let Some(declared) = candidate(function) {
                match common.iter_mut().find(|(seen, ..)| *seen == declared) {
                    Some((_, _, count)) => *count += 1,
                    None => common.push((declared, function, 1)),
                }
            }
        }
        common.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.len().cmp(&b.0.len())));
        common.truncate(16);
        let begins = |declared: &Vec<ValType>, chosen: &Vec<ValType>| chosen.starts_with(declared);
        let best = common
            .iter()
            .map(|&(chosen, donor, _)| {
                let served =
                    common.iter().filter(|(declared, ..)| begins(declared, chosen)).map(|c| c.2).sum::<usize>();
                (served, std::cmp::Reverse(chosen.len()), chosen, donor)
            })
            .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let Some((_, _, chosen, donor)) = best else {
            return (vec![false; callables.len()], None);
        };
        let inline = callables
            .iter()
            .map(|&(_, function)| candidate(function).is_some_and(|declared| begins(declared, chosen)))
            .collect();
        (inline, (!chosen.is_empty()).then_some(donor))
    }

    /// The instructions of defined function `defined` from `from` (its
    /// locals' start, or its instructions' when it goes inline) to its end,
    /// calls rewritten for part `part` (`in_part`), local indices moved up by
    /// `shift`.
    fn body(
        &self,
        part: usize,
        defined: usize,
        from: usize,
        shift: u32,
        in_part: &impl Fn(u32) -> u32,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let layout = self.layout;
        let (range, calls) = &layout.bodies[defined];
        let uses: &[(usize, usize, u32)] = if shift == 0 { &[] } else { &layout.body_locals[defined].uses };
        let imported = self.imported;
        let cross_table = layout.tables.len() as u32;
        let (mut calls, mut uses) = (calls.iter().peekable(), uses.iter().peekable());
        let mut at = from;
        loop {
            let call_first = match (calls.peek(), uses.peek()) {
                (Some(call), Some(local)) => call.0 < local.0,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if call_first {
                let &(start, stop, callee) = calls.next()?;
                out.extend_from_slice(self.wasm.get(at..start)?);
                at = stop;
                if callee < imported || self.part_of(callee) == part {
                    out.push(0x10);
                    dispatch::push_leb(out, in_part(callee));
                } else {
                    // i32.const callee; call_indirect (type of callee) (cross table)
                    out.push(0x41);
                    push_sleb(out, callee as i32);
                    out.push(0x11);
                    dispatch::push_leb(out, layout.functions[(callee - imported) as usize]);
                    dispatch::push_leb(out, cross_table);
                }
            } else {
                let &(start, stop, index) = uses.next()?;
                out.extend_from_slice(self.wasm.get(at..start)?);
                at = stop;
                // The opcode stays (get, set or tee); the index moves.
                out.push(self.wasm[start]);
                dispatch::push_leb(out, index.checked_add(shift)?);
            }
        }
        out.extend_from_slice(self.wasm.get(at..range.end)?);
        Some(())
    }

    /// Part `part`: its functions, with calls rewritten, and its dispatcher,
    /// holding inline the callables [`Cut::inlined`] chose.
    fn part(&self, part: usize) -> Option<Vec<u8>> {
        let layout = self.layout;
        let (first, end) = (self.starts[part], self.starts[part + 1]);
        let imported = self.imported;
        let callables = &self.callables[part];
        let (inline, donor) = self.inlined(part);
        let mut gone = vec![false; end - first];
        for (&(_, function), _) in callables.iter().zip(&inline).filter(|(_, inline)| **inline) {
            gone[(function - imported) as usize - first] = true;
        }
        // Each defined function's index in this part, those gone inline skipped.
        let mut kept = 0u32;
        let index: Vec<u32> = gone
            .iter()
            .map(|&gone| {
                let at = imported + kept;
                kept += u32::from(!gone);
                at
            })
            .collect();
        let local = |defined: u32| index[(defined - first as u32) as usize];
        // A function's index in this part: imports keep theirs.
        let in_part = |function: u32| match function.checked_sub(imported) {
            Some(defined) => local(defined),
            None => function,
        };
        let mut module = Module::new();

        let dispatch_type = u32::try_from(layout.types.len()).ok()?;
        let types = self.type_section(part, first..end)?;
        module.section(&RawSection { id: wasm_encoder::SectionId::Type as u8, data: &types });

        let mut imports = ImportSection::new();
        for &(name, ty) in &layout.imports {
            imports.import(IMPORT_MODULE, name, EntityType::Function(ty));
        }
        imports.import(CORE, CORE_MEMORY, layout.memory?);
        for (index, table) in layout.tables.iter().enumerate() {
            imports.import(CORE, &format!("zest$table{index}"), *table);
        }
        if let Some(cross) = self.cross_table() {
            imports.import(CORE, CROSS, cross);
        }
        for (index, global) in layout.globals.iter().enumerate() {
            imports.import(CORE, &format!("zest$global{index}"), *global);
        }
        module.section(&imports);

        let mut functions = FunctionSection::new();
        for (&ty, _) in layout.functions[first..end].iter().zip(&gone).filter(|(_, gone)| !**gone) {
            functions.function(ty);
        }
        functions.function(dispatch_type);
        module.section(&functions);

        let mut exports = ExportSection::new();
        for &(name, function) in &self.exports[part] {
            exports.export(name, ExportKind::Func, in_part(function));
        }
        exports.export(DISPATCH, ExportKind::Func, imported + kept);
        module.section(&exports);

        let mut elements = ElementSection::new();
        // This part's functions that others call, at their original index.
        let cross_table = layout.tables.len() as u32;
        let mut defined = first;
        while defined < end {
            if !self.called_across[defined] {
                defined += 1;
                continue;
            }
            let start = defined;
            while defined < end && self.called_across[defined] {
                defined += 1;
            }
            let funcs: Vec<u32> = (start..defined).map(|d| local(d as u32)).collect();
            let at = ConstExpr::i32_const((imported as usize + start) as i32);
            elements.active(Some(cross_table), &at, Elements::Functions(funcs.into()));
        }
        // This part's share of the guest's own element segments.
        let owner = |function: u32| self.part_of(function);
        for (table, offset, items) in &layout.elements {
            let mut at = 0;
            while at < items.len() {
                if owner(items[at]) != part {
                    at += 1;
                    continue;
                }
                let start = at;
                while at < items.len() && owner(items[at]) == part {
                    at += 1;
                }
                let funcs: Vec<u32> =
                    items[start..at].iter().map(|&f| if f < imported { f } else { local(f - imported) }).collect();
                let offset = offset.checked_add(start as u32)?;
                elements.active(Some(*table), &ConstExpr::i32_const(offset as i32), Elements::Functions(funcs.into()));
            }
        }
        if !elements.is_empty() {
            module.section(&elements);
        }

        let mut code = Vec::new();
        dispatch::push_leb(&mut code, kept.checked_add(1)?);
        let mut body = Vec::new();
        for defined in (first..end).filter(|&defined| !gone[defined - first]) {
            body.clear();
            self.body(part, defined, layout.bodies[defined].0.start, 0, &in_part, &mut body)?;
            dispatch::push_leb(&mut code, u32::try_from(body.len()).ok()?);
            code.extend_from_slice(&body);
        }
        // The dispatcher: the callables gone inline run in their cases, on
        // the locals it declares (the donor's).
        let mut inlined = Vec::with_capacity(callables.len());
        for (&(_, function), &inline) in callables.iter().zip(&inline) {
            let mut instructions = Vec::new();
            if inline {
                let defined = (function - imported) as usize;
                self.body(part, defined, layout.body_locals[defined].operators, 1, &in_part, &mut instructions)?;
            }
            inlined.push(instructions);
        }
        let cases: Vec<Case<'_>> = callables
            .iter()
            .zip(&inline)
            .zip(&inlined)
            .map(
                |((&(_, function), &inline), instructions)| {
                    if inline {
                        Case::Inline(instructions)
                    } else {
                        Case::Call(in_part(function))
                    }
                },
            )
            .collect();
        body.clear();
        match donor {
            Some(donor) => {
                let defined = (donor - imported) as usize;
                body.extend_from_slice(
                    self.wasm.get(layout.bodies[defined].0.start..layout.body_locals[defined].operators)?,
                );
            }
            None => body.push(0),
        }
        body.extend_from_slice(&dispatch::switch(&cases, None));
        dispatch::push_leb(&mut code, u32::try_from(body.len()).ok()?);
        code.extend_from_slice(&body);
        module.section(&RawSection { id: wasm_encoder::SectionId::Code as u8, data: &code });
        Some(module.finish())
    }

    /// The type section of part `part` (defining `functions`): the guest's
    /// types, then the dispatcher's. wasmtime compiles a trampoline for every
    /// distinct function type in a module (Cranelift, even under Winch), so a
    /// type the part does not use becomes a copy of the dispatcher's: the
    /// indices stay, every instruction means what it did, and a Rust guest's
    /// two dozen types cost each part two or three trampolines instead.
    /// Which indices a part may use: its functions' and imports' types, and
    /// those its instructions name — `call_indirect`, block types, and the
    /// callee's type in a call across parts. Anything else that could name a
    /// type (typed references, GC) is refused by the baseline compiler either
    /// way; types that are not [plain](is_plain) are kept as they are.
    fn type_section(&self, part: usize, functions: Range<usize>) -> Option<Vec<u8>> {
        let layout = self.layout;
        let dispatch = dispatch::TYPE_ENTRY;
        let mut data = Vec::new();
        let Some(range) = &layout.type_section else {
            dispatch::push_leb(&mut data, 1);
            data.extend_from_slice(&dispatch);
            return Some(data);
        };
        let section = &self.wasm[range.clone()];
        let (count, at) = dispatch::leb_u32(section).ok()?;
        dispatch::push_leb(&mut data, count.checked_add(1)?);
        if !layout.plain_types {
            data.extend_from_slice(&section[at..]);
            data.extend_from_slice(&dispatch);
            return Some(data);
        }
        let mut used = vec![false; layout.types.len()];
        let mut mark = |ty: u32| {
            if let Some(slot) = used.get_mut(ty as usize) {
                *slot = true;
            }
        };
        layout.imports.iter().for_each(|&(_, ty)| mark(ty));
        layout.functions[functions.clone()].iter().for_each(|&ty| mark(ty));
        for defined in functions {
            layout.body_types[defined].iter().for_each(|&ty| mark(ty));
            for &(_, _, callee) in &layout.bodies[defined].1 {
                if callee >= self.imported && self.part_of(callee) != part {
                    mark(layout.functions[(callee - self.imported) as usize]);
                }
            }
        }
        for (ty, used) in layout.types.iter().zip(used) {
            match (ty, used) {
                (Some((params, results)), true) => {
                    data.push(0x60);
                    for list in [params, results] {
                        dispatch::push_leb(&mut data, u32::try_from(list.len()).ok()?);
                        for &ty in list {
                            data.push(plain_val_type(ty)?);
                        }
                    }
                }
                (Some(_), false) => data.extend_from_slice(&dispatch),
                (None, _) => return None,
            }
        }
        data.extend_from_slice(&dispatch);
        Some(data)
    }
}

/// A plain value type's byte in the binary format.
fn plain_val_type(ty: ValType) -> Option<u8> {
    Some(match ty {
        ValType::I32 => 0x7f,
        ValType::I64 => 0x7e,
        ValType::F32 => 0x7d,
        ValType::F64 => 0x7c,
        ValType::V128 => 0x7b,
        ValType::Ref(_) => return None,
    })
}

/// The part that holds function `function` (an index over imports and
/// definitions, below their number) by `owners`, each defined function's part:
/// imported functions, the same in every part, count as part 0's.
fn part_of(owners: &[u32], function: u32, imported: u32) -> usize {
    function.checked_sub(imported).map_or(0, |defined| owners[defined as usize] as usize)
}

fn push_sleb(out: &mut Vec<u8>, mut value: i32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use wasmparser::{Parser, Payload};

    use super::{usual_starts, BIG_BODY, PART_BYTES, PART_FUNCTIONS};

    /// The function types of a piece's type section, as (params, results).
    fn types_of(piece: &[u8]) -> Vec<String> {
        let mut types = Vec::new();
        for payload in Parser::new(0).parse_all(piece) {
            if let Payload::TypeSection(reader) = payload.unwrap() {
                for ty in reader.into_iter_err_on_gc_types() {
                    let ty = ty.unwrap();
                    types.push(format!("{:?} -> {:?}", ty.params(), ty.results()));
                }
            }
        }
        types
    }

    #[test]
    fn a_part_keeps_the_types_it_names_and_copies_the_dispatchers_into_the_others() {
        let mut wat = String::from(
            r#"(module
  (type $t (func (param i32) (result i32)))
  (type $wide (func (param i64 i64) (result i64)))
  (type $pair (func (param i32 i32) (result i32)))
  (type $float (func (param f32) (result f32)))
  (memory 1)
  (table 1 funcref)
"#,
        );
        for k in 0..70 {
            wat.push_str(&format!("  (func (type $t) (i32.add (local.get 0) (i32.const {k})))\n"));
        }
        // The second part: six of those and `check`, naming $wide and $pair
        // in its body only.
        wat.push_str(
            r#"  (func (export "check") (param i32 i32) (result i64)
    local.get 0
    local.get 1
    block (type $pair)
      i32.add
    end
    drop
    (call_indirect (type $wide) (i64.const 1) (i64.const 2) (i32.const 0)))
)"#,
        );
        let wasm = wat::parse_str(wat).unwrap();
        let cut = super::Cuttable::read(&wasm).and_then(|m| m.cut(None)).expect("a module of 71 functions is cut");
        assert_eq!(cut.parts.len(), 2);
        let dispatcher = "[I32, I32, I32] -> [I64]";
        let first = types_of(&cut.parts[0]);
        assert_eq!(first, ["[I32] -> [I32]", dispatcher, dispatcher, dispatcher, dispatcher, dispatcher]);
        let second = types_of(&cut.parts[1]);
        assert_eq!(
            second,
            [
                "[I32] -> [I32]",
                "[I64, I64] -> [I64]",
                "[I32, I32] -> [I32]",
                dispatcher,
                "[I32, I32] -> [I64]",
                dispatcher
            ]
        );
    }

    /// How many functions a piece defines.
    fn defined_in(piece: &[u8]) -> u32 {
        Parser::new(0)
            .parse_all(piece)
            .find_map(|payload| match payload.unwrap() {
                Payload::FunctionSection(reader) => Some(reader.count()),
                _ => None,
            })
            .unwrap_or(0)
    }

    #[test]
    fn callables_nothing_else_reaches_go_inside_their_dispatcher_and_answer_as_before() {
        // 80 callables: most with no locals or an i64 and an i32 (in that
        // order), one with an f64 first, one with 70 locals; every tenth
        // calls the next one, which then keeps its function; some bodies
        // return early or branch out of their function, the others loop on
        // a parameter; those with an i64 first add it to their answer.
        let mut wat = String::from("(module (memory (export \"memory\") 1)\n");
        for k in 0..80 {
            let locals = match k {
                7 => "(local f64 i64)".to_string(),
                9 => format!("(local {})", "i32 ".repeat(70)),
                _ if k % 3 == 0 => "(local i64 i32)".to_string(),
                _ => String::new(),
            };
            let call = if k % 10 == 0 {
                format!("(drop (call {} (local.get 0) (local.get 1)))", k + 1)
            } else {
                String::new()
            };
            // Declared locals in use: set, then read into the result.
            let (set, add) = if k % 3 == 0 && k != 9 {
                (format!("(local.set 2 (i64.const {}))", 3 * k), "(local.get 2)")
            } else {
                (String::new(), "(i64.const 0)")
            };
            wat.push_str(&format!(
                "(func (export \"c{k}\") (param i32 i32) (result i64) {locals}
                   {call} {set}
                   (if (i32.eq (i32.const {}) (i32.const 1)) (then (return (i64.const -1))))
                   (if (i32.eq (i32.const {}) (i32.const 2)) (then (br 1 (i64.const -2))))
                   (loop $again
                     (local.set 0 (i32.add (local.get 0) (i32.const {})))
                     (br_if $again (i32.lt_u (local.get 0) (i32.const 200))))
                   (i64.add {add} (i64.add (i64.extend_i32_u (local.get 0)) (i64.extend_i32_u (local.get 1)))))\n",
                k % 5,
                k % 5,
                k + 1
            ));
        }
        wat.push(')');
        let wasm = wat::parse_str(&wat).unwrap();
        for module in every_cut(&wasm) {
            assert_eq!(super::check_against_whole(&module), Ok(true));
        }
        let cut = super::Cuttable::read(&wasm).unwrap().cut(None).unwrap();
        // Part 0: of its 64 callables, the 7 called ones (1, 11, …, 61) and
        // the two whose locals do not fit (7, 9) keep their functions.
        assert_eq!(defined_in(&cut.parts[0]), 7 + 2 + 1);
        // Part 1 (64–79): 71 is called, so stays.
        assert_eq!(defined_in(&cut.parts[1]), 1 + 1);
    }

    /// `wasm` with custom sections that give its length each remainder by 3:
    /// the check cuts the usual way, in two halves, or at drawn boundaries.
    fn every_cut(wasm: &[u8]) -> Vec<Vec<u8>> {
        [&[][..], &[0, 2, 0, 0], &[0, 3, 0, 0, 0]].iter().map(|extra| [wasm, extra].concat()).collect()
    }

    /// A module of `n` callables; those `big` says have bodies of about
    /// `600 + 8 * k` bytes, the others a few bytes; every fifth calls the
    /// next, so calls cross parts; callable `edited` answers `1000 + k`.
    fn code_heavy(n: usize, big: impl Fn(usize) -> bool, edited: usize) -> Vec<u8> {
        let mut wat = String::from("(module (memory (export \"memory\") 1)\n");
        for k in 0..n {
            let body = if big(k) {
                // Stores that the answer then reads back: code that cannot fold.
                let stores: String =
                    (0..60 + k).map(|i| format!("(i32.store (i32.const {}) (local.get 0))", 4 * (i % 64))).collect();
                format!("{stores} (i64.load (i32.const 8))")
            } else {
                "(i64.extend_i32_u (local.get 1))".to_string()
            };
            let call = if k % 5 == 0 && k + 1 < n {
                format!("(drop (call {} (local.get 0) (local.get 1)))", k + 1)
            } else {
                String::new()
            };
            let answer = if k == edited { 1000 + k } else { k };
            wat.push_str(&format!(
                "(func (export \"c{k}\") (param i32 i32) (result i64) {call} (i64.add (i64.const {answer}) {body}))\n"
            ));
        }
        wat.push(')');
        wat::parse_str(&wat).unwrap()
    }

    #[test]
    fn parts_end_after_a_large_body_once_they_hold_enough_code_and_answer_as_before() {
        let big = |k: usize| k % 9 == 4;
        let wasm = code_heavy(100, big, usize::MAX);
        for module in every_cut(&wasm) {
            assert_eq!(super::check_against_whole(&module), Ok(true));
        }
        let module = super::Cuttable::read(&wasm).unwrap();
        let starts = usual_starts(&module.layout);
        let sizes: Vec<usize> = module.layout.bodies.iter().map(|(body, _)| body.len()).collect();
        assert!(sizes.iter().filter(|&&size| size >= BIG_BODY).count() > 8, "{sizes:?}");
        assert_eq!((starts[0], starts.last()), (0, Some(&100)));
        assert!(starts.len() > 3, "code cuts more parts than 64 functions would: {starts:?}");
        for part in starts.windows(2) {
            let (last, code) = (part[1] - 1, sizes[part[0]..part[1]].iter().sum::<usize>());
            let full = part[1] - part[0] == PART_FUNCTIONS;
            let ends_on_code = sizes[last] >= BIG_BODY && code >= PART_BYTES;
            assert!(full || ends_on_code || part[1] == 100, "part {part:?} of {code} bytes");
            // No earlier large body could have ended it.
            let mut held = 0;
            for (function, &size) in sizes.iter().enumerate().take(last).skip(part[0]) {
                held += size;
                assert!(!(size >= BIG_BODY && held >= PART_BYTES), "part {part:?} ran past {function}");
            }
        }

        // Small modules of small functions are cut every 64 functions, as before.
        let small = code_heavy(150, |_| false, usize::MAX);
        assert_eq!(usual_starts(&super::Cuttable::read(&small).unwrap().layout), [0, 64, 128, 150]);

        // An edit of one body, its size kept, changes one part and no boundary.
        let parts = |wasm: &[u8]| super::Cuttable::read(wasm).unwrap().cut(None).unwrap().parts;
        let (before, after) = (parts(&wasm), parts(&code_heavy(100, big, 40)));
        assert_eq!(before.len(), after.len());
        assert_eq!(before.iter().zip(&after).filter(|(a, b)| a != b).count(), 1);
    }
}
