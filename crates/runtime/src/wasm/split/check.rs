//! The cut checked against the module it was cut from, for the fuzz target
//! `wasm_cut`: one engine, the same calls, the same answers.

use super::{Cuttable, CORE_MEMORY};
use crate::wasm::abi::{CORE, DISPATCH, IMPORT_MODULE};

/// For fuzzing (`crates/fuzz`, target `wasm_cut`): runs `wasm` whole and cut
/// into pieces (the usual parts, two halves, or parts at boundaries drawn
/// from its bytes, by its length) on one engine, calling every function it exports with the
/// same arguments on both, and compares what they return (values, or the
/// kind of trap), what they asked of the host, and their memory afterwards.
/// The pieces must instantiate exactly when the whole module does.
/// `Ok(false)` when the module is not cut, does not compile, instantiates
/// neither way, or runs out of fuel or stack (where the two may differ: a
/// call across parts costs more); an error says where the two differ.
#[doc(hidden)]
pub fn check_against_whole(wasm: &[u8]) -> Result<bool, String> {
    use wasmtime::{Engine, Extern, Func, Instance, Memory, Store, Trap, Val};
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        Engine::new(&config).expect("an engine")
    });
    // Cut into the usual parts; into two halves as a build compiled wide is;
    // or at boundaries drawn from the module's bytes (any boundaries must
    // serve, whatever the rule that places them).
    let Some(module) = Cuttable::read(wasm) else { return Ok(false) };
    let cut = match wasm.len() % 3 {
        0 => module.cut(None),
        1 => module.cut(Some(2)),
        _ => {
            let defined = module.functions();
            let mut starts = vec![0];
            starts.extend((1..defined).filter(|&function| wasm[function * 7919 % wasm.len()].is_multiple_of(5)));
            starts.push(defined);
            module.cut_at(starts)
        }
    };
    let Some(cut) = cut else { return Ok(false) };
    let compile = |bytes: &[u8]| wasmtime::Module::new(engine, bytes).map_err(|err| format!("{err:#}"));
    // A feature the engine lacks: nothing to compare.
    let Ok(whole) = compile(wasm) else { return Ok(false) };
    let core = compile(&cut.core).map_err(|err| format!("the core does not compile: {err}"))?;
    let parts = cut.parts.iter().map(|part| compile(part)).collect::<Result<Vec<_>, _>>();
    let parts = parts.map_err(|err| format!("a part does not compile: {err}"))?;

    type Log = Vec<String>;
    // Host functions that log what they were given and answer zeros.
    let host = |store: &mut Store<Log>, module: &wasmtime::Module, name: &str| -> Option<Extern> {
        let ty = module.imports().find(|i| i.module() == IMPORT_MODULE && i.name() == name)?.ty();
        let ty = ty.func()?.clone();
        let name = name.to_string();
        let func = Func::new(&mut *store, ty.clone(), move |mut caller, params, results| {
            caller.data_mut().push(format!("{name}{params:?}"));
            for (result, ty) in results.iter_mut().zip(ty.results()) {
                *result = Val::default_for_ty(&ty).unwrap_or(Val::I32(0));
            }
            Ok(())
        });
        Some(Extern::Func(func))
    };
    let fuel = |store: &mut Store<Log>| store.set_fuel(200_000).expect("fuel is on");

    // The whole module.
    let mut one: Store<Log> = Store::new(engine, Vec::new());
    fuel(&mut one);
    let mut imports = Vec::new();
    for import in whole.imports() {
        imports.push(host(&mut one, &whole, import.name()).ok_or("an import that is not a function")?);
    }
    let whole_instance = Instance::new(&mut one, &whole, &imports).map_err(|err| format!("{err:#}"));

    // The pieces: they instantiate exactly when the whole module does.
    let mut many: Store<Log> = Store::new(engine, Vec::new());
    fuel(&mut many);
    let Ok(core_instance) = Instance::new(&mut many, &core, &[]) else {
        return match whole_instance {
            Ok(_) => Err("the whole module instantiates, its core does not".into()),
            Err(_) => Ok(false),
        };
    };
    let mut part_instances = Vec::new();
    for part in &parts {
        let mut imports = Vec::new();
        for import in part.imports() {
            let found = match import.module() {
                CORE => core_instance.get_export(&mut many, import.name()),
                _ => host(&mut many, part, import.name()),
            };
            imports.push(found.ok_or_else(|| format!("a part's import {} is not there", import.name()))?);
        }
        match (Instance::new(&mut many, part, &imports), &whole_instance) {
            (Ok(instance), _) => part_instances.push(instance),
            (Err(_), Err(_)) => return Ok(false),
            (Err(err), Ok(_)) => return Err(format!("the whole module instantiates, a part does not: {err:#}")),
        }
    }
    let whole_instance = match whole_instance {
        Ok(instance) => instance,
        Err(err) => return Err(format!("the whole module does not instantiate ({err}), its pieces do")),
    };

    // Where each callable sits: its part and its index in the part's dispatcher.
    let mut route = std::collections::HashMap::new();
    let mut at = 0;
    for (part, &count) in cut.counts.iter().enumerate() {
        for local in 0..count {
            route.insert(cut.callables[at].to_string(), (part, local as i32));
            at += 1;
        }
    }
    let exports: Vec<(String, wasmtime::FuncType)> = whole
        .exports()
        .filter_map(|export| export.ty().func().map(|ty| (export.name().to_string(), ty.clone())))
        .collect();
    let outcome = |result: wasmtime::Result<Vec<Val>>| -> Result<String, Option<Trap>> {
        match result {
            Ok(values) => Ok(format!("{values:?}")),
            Err(err) => Err(err.downcast_ref::<Trap>().copied()),
        }
    };
    for (name, ty) in &exports {
        let args: Vec<Val> = ty
            .params()
            .enumerate()
            .map(|(k, ty)| match ty {
                wasmtime::ValType::I32 => Val::I32(k as i32 * 7 + 1),
                wasmtime::ValType::I64 => Val::I64(k as i64 * 11 + 2),
                wasmtime::ValType::F32 => Val::F32((1.5f32 + k as f32).to_bits()),
                wasmtime::ValType::F64 => Val::F64((2.5f64 + k as f64).to_bits()),
                other => Val::default_for_ty(&other).unwrap_or(Val::I32(0)),
            })
            .collect();
        let mut results = vec![Val::I32(0); ty.results().len()];
        let func = whole_instance.get_func(&mut one, name).expect("an export of the module");
        let expected = outcome(func.call(&mut one, &args, &mut results).map(|()| results.clone()));
        let got = match route.get(name) {
            Some(&(part, local)) => {
                let dispatch =
                    part_instances[part].get_func(&mut many, DISPATCH).ok_or("a part without a dispatcher")?;
                let (Val::I32(ptr), Val::I32(len)) = (args[0], args[1]) else {
                    return Err(format!("callable `{name}` takes other than (i32, i32)"));
                };
                let mut out = vec![Val::I64(0)];
                outcome(
                    dispatch.call(&mut many, &[Val::I32(local), Val::I32(ptr), Val::I32(len)], &mut out).map(|()| out),
                )
            }
            None => {
                let owner = part_instances.iter().find_map(|instance| instance.get_func(&mut many, name));
                match owner {
                    Some(func) => {
                        let mut results = vec![Val::I32(0); ty.results().len()];
                        outcome(func.call(&mut many, &args, &mut results).map(|()| results))
                    }
                    // An export the cut leaves to nobody: only a guest's own
                    // tables and globals are, never a function.
                    None => return Err(format!("function `{name}` is exported by no part")),
                }
            }
        };
        let resources = |outcome: &Result<String, Option<Trap>>| {
            matches!(outcome, Err(Some(Trap::OutOfFuel | Trap::StackOverflow)))
        };
        if resources(&expected) || resources(&got) {
            return Ok(false);
        }
        if expected != got {
            return Err(format!("`{name}`: whole {expected:?}, cut {got:?}"));
        }
    }
    if one.data() != many.data() {
        return Err(format!("host calls differ: whole {:?}, cut {:?}", one.data(), many.data()));
    }
    let whole_memory: Option<Memory> = whole.exports().find_map(|e| whole_instance.get_memory(&mut one, e.name()));
    let cut_memory = core_instance.get_memory(&mut many, CORE_MEMORY);
    if let (Some(a), Some(b)) = (whole_memory, cut_memory) {
        if a.data(&one) != b.data(&many) {
            return Err("memory differs after the calls".into());
        }
    }
    Ok(true)
}
