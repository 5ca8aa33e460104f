//! Callables behind one export: the loader's rewrite of a module before it is
//! compiled, invisible to guests.
//!
//! wasmtime compiles, for every exported function, a host-to-wasm trampoline,
//! with Cranelift even when Winch compiles the bodies — about 85% of a cold
//! compile for a module of many small callables (`docs/benchmarks.md`, "Cold
//! reloads"). So before compiling, the loader takes every callable (a function
//! export whose name does not start with `zest_`, of type `(i32, i32) -> i64`)
//! out of the export section and exports instead one dispatcher,
//! [`DISPATCH`]`(index, ptr, len) -> i64`, which `br_table`s to a direct call of
//! callable number `index`. Their names, in that order, are kept as metadata
//! beside the compiled code. Function indices do not change (the dispatchers are
//! appended), so nothing else in the module needs rewriting; every other export
//! (memory, the reserved `zest_` functions, anything of another type, which
//! validation then refuses by name) stays as it was.
//!
//! Dispatchers handle [`CHUNK`] callables each; a module with more gets one
//! dispatcher per chunk and a top one choosing the chunk.

use std::borrow::Cow;

use wasm_encoder::{BlockType, ExportKind, ExportSection, Function, Instruction, RawSection};
use wasmparser::{CompositeInnerType, ExternalKind, Parser, Payload, TypeRef, ValType};

use super::abi::DISPATCH;

/// The dispatcher's type, `(i32 index, i32 ptr, i32 len) -> i64`, as a type
/// section entry.
pub(crate) const TYPE_ENTRY: [u8; 7] = [0x60, 0x03, 0x7f, 0x7f, 0x7f, 0x01, 0x7e];

/// How many callables one dispatcher function switches over.
const CHUNK: usize = 256;

/// A module rewritten for dispatch: its bytes, and its callables' names in
/// dispatch order (empty, and the bytes unchanged, when it has none).
#[derive(Debug)]
pub(crate) struct Dispatching {
    pub(crate) wasm: Vec<u8>,
    pub(crate) callables: Vec<Box<str>>,
    /// The largest initial size of the module's memories, in bytes.
    pub(crate) memory_min_bytes: u64,
}

/// Reads an unsigned LEB128 u32 at the start of `bytes`: the value and its length.
pub(crate) fn leb_u32(bytes: &[u8]) -> Result<(u32, usize), String> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().take(5).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return u32::try_from(value).map(|v| (v, i + 1)).map_err(|_| "a count overflows u32".to_string());
        }
    }
    Err("a malformed count".into())
}

pub(crate) fn push_leb(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A vector section (`count` entries) with `extra` entries appended.
fn extend_vector(section: &[u8], added: u32, extra: &[u8]) -> Result<Vec<u8>, String> {
    let (count, at) = leb_u32(section)?;
    let total = count.checked_add(added).ok_or("too many entries")?;
    let mut out = Vec::with_capacity(section.len() + extra.len() + 5);
    push_leb(&mut out, total);
    out.extend_from_slice(&section[at..]);
    out.extend_from_slice(extra);
    Ok(out)
}

/// Whether a function of this type is a callable: `(i32, i32) -> i64`.
pub(crate) fn is_callable_type(params: &[ValType], results: &[ValType]) -> bool {
    params == [ValType::I32, ValType::I32] && results == [ValType::I64]
}

/// Rewrites `wasm` (a binary module) so that its callables sit behind
/// [`DISPATCH`]. An error is a module that cannot be parsed.
pub(crate) fn rewrite(wasm: &[u8]) -> Result<Dispatching, String> {
    let parse = |err: wasmparser::BinaryReaderError| format!("failed to parse WebAssembly module: {err}");
    // Function types by type index (`None`: not a function type).
    let mut types: Vec<Option<(Vec<ValType>, Vec<ValType>)>> = Vec::new();
    // The type index of every function, imported ones first.
    let mut functions: Vec<u32> = Vec::new();
    let mut exports = Vec::new();
    let mut memory_min_bytes = 0u64;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(parse)? {
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(parse)?;
                    let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                    memory_min_bytes = memory_min_bytes.max(memory.initial.saturating_mul(page));
                }
            }
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub in group.map_err(parse)?.into_types() {
                        types.push(match &sub.composite_type.inner {
                            CompositeInnerType::Func(func) => Some((func.params().to_vec(), func.results().to_vec())),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    if let TypeRef::Func(ty) | TypeRef::FuncExact(ty) = import.map_err(parse)?.ty {
                        functions.push(ty);
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    functions.push(ty.map_err(parse)?);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(parse)?;
                    exports.push((export.name.to_string(), export.kind, export.index));
                }
            }
            Payload::Version { encoding: wasmparser::Encoding::Component, .. } => {
                // Not a core module: left for the engine to refuse.
                return Ok(Dispatching { wasm: wasm.to_vec(), callables: Vec::new(), memory_min_bytes: 0 });
            }
            _ => {}
        }
    }
    let callable_type = |index: u32| -> bool {
        let ty = functions.get(index as usize).and_then(|ty| types.get(*ty as usize)).and_then(Option::as_ref);
        ty.is_some_and(|(params, results)| is_callable_type(params, results))
    };
    let mut callables: Vec<(Box<str>, u32)> = Vec::new();
    let mut kept = Vec::new();
    {
        let mut names = std::collections::HashSet::new();
        if let Some((name, ..)) = exports.iter().find(|(name, ..)| !names.insert(name.as_str())) {
            return Err(format!("duplicate export name `{name}`"));
        }
    }
    for (name, kind, index) in exports {
        let function = matches!(kind, ExternalKind::Func | ExternalKind::FuncExact);
        if function && !name.starts_with("zest_") && callable_type(index) {
            callables.push((name.into_boxed_str(), index));
        } else {
            kept.push((name, kind, index));
        }
    }
    if callables.is_empty() {
        return Ok(Dispatching { wasm: wasm.to_vec(), callables: Vec::new(), memory_min_bytes });
    }
    let mut rewritten = encode(wasm, &types, functions.len(), &callables, &kept)?;
    rewritten.memory_min_bytes = memory_min_bytes;
    Ok(rewritten)
}

/// The rewritten module: every section as it was, but the type section with the
/// dispatcher's type appended, the function and code sections with the
/// dispatchers appended, and the export section without the callables.
fn encode(
    wasm: &[u8],
    types: &[Option<(Vec<ValType>, Vec<ValType>)>],
    function_count: usize,
    callables: &[(Box<str>, u32)],
    kept: &[(String, ExternalKind, u32)],
) -> Result<Dispatching, String> {
    let dispatch_type = u32::try_from(types.len()).map_err(|_| "too many types")?;
    let bodies = dispatchers(callables, u32::try_from(function_count).map_err(|_| "too many functions")?);
    let added = u32::try_from(bodies.len()).map_err(|_| "too many callables")?;
    let top = function_count as u32 + added - 1;
    let mut module = wasm_encoder::Module::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|err| err.to_string())?;
        let Some((id, range)) = payload.as_section() else { continue };
        let data = &wasm[range];
        match payload {
            Payload::TypeSection(_) => {
                let data = extend_vector(data, 1, &TYPE_ENTRY)?;
                module.section(&RawSection { id, data: &data });
            }
            Payload::FunctionSection(_) => {
                let mut entries = Vec::new();
                for _ in 0..added {
                    push_leb(&mut entries, dispatch_type);
                }
                let data = extend_vector(data, added, &entries)?;
                module.section(&RawSection { id, data: &data });
            }
            Payload::ExportSection(_) => {
                let mut section = ExportSection::new();
                for (name, kind, index) in kept {
                    section.export(name, export_kind(*kind)?, *index);
                }
                section.export(DISPATCH, ExportKind::Func, top);
                module.section(&section);
            }
            Payload::CodeSectionStart { .. } => {
                // Each body as the code section holds it: its size, then itself.
                let mut appended = Vec::new();
                for body in &bodies {
                    wasm_encoder::Encode::encode(body, &mut appended);
                }
                let data = extend_vector(data, added, &appended)?;
                module.section(&RawSection { id, data: &data });
            }
            _ => {
                module.section(&RawSection { id, data });
            }
        }
    }
    Ok(Dispatching {
        wasm: module.finish(),
        callables: callables.iter().map(|(name, _)| name.clone()).collect(),
        memory_min_bytes: 0,
    })
}

fn export_kind(kind: ExternalKind) -> Result<ExportKind, String> {
    Ok(match kind {
        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    })
}

/// The dispatcher functions, in the order they are appended (the top one
/// last). With at most [`CHUNK`] callables there is one; otherwise one per
/// chunk, taking the index within its chunk, and a top one that picks the chunk.
fn dispatchers(callables: &[(Box<str>, u32)], first_new: u32) -> Vec<Function> {
    let targets: Vec<u32> = callables.iter().map(|(_, index)| *index).collect();
    let dispatcher = |targets: &[u32], mask| {
        let cases: Vec<Case<'_>> = targets.iter().map(|&target| Case::Call(target)).collect();
        let mut function = Function::new([]);
        function.raw(switch(&cases, mask));
        function
    };
    if targets.len() <= CHUNK {
        return vec![dispatcher(&targets, None)];
    }
    let chunks: Vec<&[u32]> = targets.chunks(CHUNK).collect();
    let mut bodies: Vec<Function> = chunks.iter().map(|chunk| dispatcher(chunk, Some(CHUNK as i32 - 1))).collect();
    let chunk_functions: Vec<u32> = (0..chunks.len() as u32).map(|i| first_new + i).collect();
    bodies.push(select_chunk(&chunk_functions));
    bodies
}

/// What a dispatcher does for one callable.
pub(crate) enum Case<'a> {
    /// A direct call of this function with `(ptr, len)`.
    Call(u32),
    /// This function body's instructions (its final `end` included), run in
    /// place: locals as the dispatcher declares them, the callable's one
    /// index up (`split.rs`, `Cut::inlined`).
    Inline(&'a [u8]),
}

/// `(index, ptr, len)`: the instructions of a dispatcher running
/// `cases[index]` (`index & mask` when `mask` is given) and returning its
/// answer; an index out of range traps.
pub(crate) fn switch(cases: &[Case<'_>], mask: Option<i32>) -> Vec<u8> {
    fn emit(body: &mut Vec<u8>, instruction: Instruction<'_>) {
        wasm_encoder::Encode::encode(&instruction, body);
    }
    let mut body = Vec::new();
    let count = cases.len() as u32;
    for _ in 0..=count {
        emit(&mut body, Instruction::Block(BlockType::Empty));
    }
    emit(&mut body, Instruction::LocalGet(0));
    if let Some(mask) = mask {
        emit(&mut body, Instruction::I32Const(mask));
        emit(&mut body, Instruction::I32And);
    }
    emit(&mut body, Instruction::BrTable(Cow::Owned((0..count).collect()), count));
    for case in cases {
        emit(&mut body, Instruction::End);
        match case {
            Case::Call(target) => {
                emit(&mut body, Instruction::LocalGet(1));
                emit(&mut body, Instruction::LocalGet(2));
                emit(&mut body, Instruction::Call(*target));
            }
            Case::Inline(instructions) => {
                emit(&mut body, Instruction::Block(BlockType::Result(wasm_encoder::ValType::I64)));
                body.extend_from_slice(instructions);
            }
        }
        emit(&mut body, Instruction::Return);
    }
    emit(&mut body, Instruction::End);
    emit(&mut body, Instruction::Unreachable);
    emit(&mut body, Instruction::End);
    body
}

/// The top dispatcher: chunk `index >> 8` gets `(index, ptr, len)`.
fn select_chunk(chunk_functions: &[u32]) -> Function {
    let mut body = Function::new([]);
    let cases = chunk_functions.len() as u32;
    for _ in 0..=cases {
        body.instruction(&Instruction::Block(BlockType::Empty));
    }
    body.instruction(&Instruction::LocalGet(0));
    body.instruction(&Instruction::I32Const(CHUNK.trailing_zeros() as i32));
    body.instruction(&Instruction::I32ShrU);
    let labels: Vec<u32> = (0..cases).collect();
    body.instruction(&Instruction::BrTable(Cow::Owned(labels), cases));
    for &chunk in chunk_functions {
        body.instruction(&Instruction::End);
        body.instruction(&Instruction::LocalGet(0));
        body.instruction(&Instruction::LocalGet(1));
        body.instruction(&Instruction::LocalGet(2));
        body.instruction(&Instruction::Call(chunk));
        body.instruction(&Instruction::Return);
    }
    body.instruction(&Instruction::End);
    body.instruction(&Instruction::Unreachable);
    body.instruction(&Instruction::End);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(callables: usize) -> Vec<u8> {
        let mut wat = String::from(
            r#"(module (import "zest" "now_ms" (func $now (result i64)))
  (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
  (func (export "zest_vsn") (result i64) i64.const 0)
  (global (export "g") i32 (i32.const 1))
"#,
        );
        for k in 0..callables {
            wat.push_str(&format!(
                "  (func (export \"f{k}\") (param i32 i32) (result i64) (i64.add (i64.extend_i32_u (local.get 1)) (i64.const {})))\n",
                1000 * k
            ));
        }
        wat.push_str("  (func (export \"odd\") (param i32) (result i32) local.get 0))");
        wat::parse_str(wat).unwrap()
    }

    /// Calls every callable through the dispatcher with len = 7; each answers
    /// 1000·k + 7.
    fn check_dispatch(callables: usize) {
        let rewritten = rewrite(&module(callables)).unwrap();
        let names: Vec<String> = (0..callables).map(|k| format!("f{k}")).collect();
        assert_eq!(rewritten.callables.iter().map(|n| n.to_string()).collect::<Vec<_>>(), names);
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, &rewritten.wasm).expect("the rewrite validates");
        let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
        assert_eq!(exports, ["memory", "zest_alloc", "zest_vsn", "g", "odd", DISPATCH], "callables left the exports");
        let mut store = wasmtime::Store::new(&engine, ());
        let mut linker = wasmtime::Linker::new(&engine);
        linker.func_wrap("zest", "now_ms", || 0i64).unwrap();
        let instance = linker.instantiate(&mut store, &module).unwrap();
        let dispatch = instance.get_typed_func::<(i32, i32, i32), i64>(&mut store, DISPATCH).unwrap();
        for k in [0, 1, callables / 2, callables - 1] {
            assert_eq!(dispatch.call(&mut store, (k as i32, 0, 7)).unwrap(), 1000 * k as i64 + 7, "callable {k}");
        }
        assert!(dispatch.call(&mut store, (callables as i32, 0, 7)).is_err(), "an index out of range traps");
    }

    #[test]
    fn callables_leave_the_exports_and_answer_through_one_dispatcher() {
        check_dispatch(3);
        check_dispatch(256);
        check_dispatch(257);
        check_dispatch(1000);
    }

    #[test]
    fn a_module_without_callables_is_left_as_it_is_and_garbage_is_an_error() {
        let wasm = wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap();
        let same = rewrite(&wasm).unwrap();
        assert_eq!((same.wasm, same.callables.len()), (wasm, 0));
        assert!(rewrite(b"\0asm\x01\0\0\0\x01\xff").is_err());
    }
}
