//! The `wat_splice` target's inputs: a WAT module and a run of edits to it,
//! drawn from the fuzzer's bytes. The module is not meant to validate — the
//! text parser never type-checks — but to use what the splice must get right
//! or refuse: named and numbered functions before and after an edit, globals,
//! types named and inline, labels, multi-value blocks, `call_indirect`, data
//! segments and the instructions that need their count, strings and comments
//! full of parens, annotations, names that resolve nowhere.

use arbitrary::{Result, Unstructured};

struct Module {
    /// Imported functions, `$i0`…, before the functions defined here.
    imports: usize,
    /// A function named by an export and an element segment of their own.
    named_elsewhere: Option<usize>,
    globals: Vec<i32>,
    data: Vec<String>,
    functions: Vec<Function>,
    /// A comment between fields, which moves.
    comment_at: usize,
}

struct Function {
    id: Option<String>,
    export: bool,
    /// Index into [`SIGNATURES`].
    signature: usize,
    named_params: bool,
    locals: usize,
    body: Vec<String>,
}

const SIGNATURES: [&str; 4] = ["(param i32) (result i32)", "(param i32 i32) (result i32)", "(result i32)", ""];

/// Texts: the module, then each edit of the one before.
pub(crate) fn texts(u: &mut Unstructured<'_>) -> Result<Vec<String>> {
    let mut module = Module::arbitrary(u)?;
    let mut texts = vec![module.render()];
    for _ in 0..u.int_in_range(1..=6)? {
        module.edit(u)?;
        texts.push(module.render());
    }
    Ok(texts)
}

impl Module {
    fn arbitrary(u: &mut Unstructured<'_>) -> Result<Module> {
        let globals = (0..u.int_in_range(0..=3)?).map(|_| u.int_in_range(-5..=5)).collect::<Result<_>>()?;
        let data = (0..u.int_in_range(0..=3)?).map(|_| string(u)).collect::<Result<_>>()?;
        let count = u.int_in_range(1..=24)?;
        let mut module = Module {
            imports: u.int_in_range(0..=2)?,
            named_elsewhere: if u.arbitrary()? { Some(u.choose_index(count)?) } else { None },
            globals,
            data,
            functions: Vec::new(),
            comment_at: u.int_in_range(0..=count)?,
        };
        for index in 0..count {
            let function = module.function(u, index)?;
            module.functions.push(function);
        }
        Ok(module)
    }

    fn function(&self, u: &mut Unstructured<'_>, index: usize) -> Result<Function> {
        let mut function = Function {
            id: if u.ratio(3, 4)? { Some(format!("$f{index}")) } else { None },
            export: u.arbitrary()?,
            signature: u.choose_index(SIGNATURES.len())?,
            named_params: u.arbitrary()?,
            locals: u.int_in_range(0..=2)?,
            body: Vec::new(),
        };
        function.body = self.body(u, &function)?;
        Ok(function)
    }

    /// An edit: most often a body, sometimes anything else.
    fn edit(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let at = u.choose_index(self.functions.len())?;
        match u.int_in_range(0..=11)? {
            0..=5 => {
                let body = self.body(u, &self.functions[at])?;
                self.functions[at].body = body;
            }
            6 if !self.data.is_empty() => {
                let segment = u.choose_index(self.data.len())?;
                self.data[segment] = string(u)?;
            }
            7 => self.functions[at].locals = u.int_in_range(0..=2)?,
            8 => self.functions[at].export = !self.functions[at].export,
            9 if !self.globals.is_empty() => self.globals[0] += 1,
            10 => self.comment_at = u.int_in_range(0..=self.functions.len())?,
            _ => {
                let index = self.functions.len();
                let function = self.function(u, index)?;
                self.functions.insert(at, function);
            }
        }
        Ok(())
    }

    fn body(&self, u: &mut Unstructured<'_>, function: &Function) -> Result<Vec<String>> {
        let imported: Vec<String> = (0..self.imports).map(|i| format!("$i{i}")).collect();
        let named: Vec<&String> = self.functions.iter().filter_map(|f| f.id.as_ref()).chain(&imported).collect();
        let mut body = Vec::new();
        for _ in 0..u.int_in_range(1..=8)? {
            // Now and then, what the splice must refuse, or what fails.
            let instruction = if u.ratio(1, 16)? {
                match u.int_in_range(0..=8)? {
                    0 => "(block $out (br $out))".to_string(),
                    1 => "(block (result i32 i32) (i32.const 1) (i32.const 2)) drop".to_string(),
                    2 => "(i32.const 0) (block (param i32) (result i32))".to_string(),
                    3 => "(call_indirect (type $sig) (i32.const 0) (i32.const 0))".to_string(),
                    4 => "(call_indirect (param i32) (result i64) (i32.const 0) (i32.const 0)) drop".to_string(),
                    5 if !self.data.is_empty() => {
                        "(memory.init 0 (i32.const 0) (i32.const 0) (i32.const 0))".to_string()
                    }
                    6 => "(@metadata.code.branch_hint \"\\01\") (if (i32.const 1) (then))".to_string(),
                    7 => "(call $nowhere)".to_string(),
                    _ => "(block (result i32) (result i32) (i32.const 1))".to_string(),
                }
            } else {
                match u.int_in_range(0..=13)? {
                    0..=3 => format!("(i32.const {})", u.int_in_range(-100..=100)?),
                    4 => "(local.get 0)".to_string(),
                    5 if function.named_params && function.signature < 2 => "(local.get $a)".to_string(),
                    6 | 7 if !named.is_empty() => format!("(call {})", u.choose(&named)?),
                    8 => format!("(call {})", u.int_in_range(0..=self.functions.len())?),
                    9 if !self.globals.is_empty() => "(global.get $g0)".to_string(),
                    10 => "(block (result i32) (i32.const 1))".to_string(),
                    11 => "(; a ( comment ;) nop ;; and ) another\n".to_string(),
                    12 => "(if (result i32) (i32.const 1) (then (i32.const 2)) (else (i32.const 3)))".to_string(),
                    13 if function.locals > 0 => "(local.set $l0 (i64.const 7))".to_string(),
                    _ => "nop".to_string(),
                }
            };
            body.push(instruction);
        }
        Ok(body)
    }

    fn render(&self) -> String {
        let mut text = String::from("(module $m\n  (type $sig (func (param i32) (result i32)))\n");
        for import in 0..self.imports {
            // Both ways of importing a function.
            if import % 2 == 0 {
                text.push_str(&format!("  (import \"zest\" \"i{import}\" (func $i{import} (param i32)))\n"));
            } else {
                text.push_str(&format!("  (func $i{import} (import \"zest\" \"i{import}\") (result i32))\n"));
            }
        }
        text.push_str("  (memory 1)\n  (table 2 funcref)\n");
        if let Some(index) = self.named_elsewhere.filter(|&i| i < self.functions.len()) {
            let name = self.functions[index].id.clone().unwrap_or_else(|| index.to_string());
            text.push_str(&format!("  (export \"x\" (func {name}))\n  (elem (i32.const 0) func {name})\n"));
        }
        for (index, value) in self.globals.iter().enumerate() {
            text.push_str(&format!("  (global $g{index} (mut i32) (i32.const {value}))\n"));
        }
        for (index, data) in self.data.iter().enumerate() {
            text.push_str(&format!("  (data $d{index} (i32.const {}) \"{data}\")\n", 16 * index));
        }
        for (index, function) in self.functions.iter().enumerate() {
            if index == self.comment_at {
                text.push_str("  ;; a comment ) between fields\n");
            }
            text.push_str("  (func");
            if let Some(id) = &function.id {
                text.push_str(&format!(" {id}"));
            }
            if function.export {
                text.push_str(&format!(" (export \"e{index}\")"));
            }
            let signature = SIGNATURES[function.signature];
            text.push(' ');
            if function.named_params && function.signature < 2 {
                text.push_str(&signature.replacen("(param i32", "(param $a i32) (param", 1).replace("(param)", ""));
            } else {
                text.push_str(signature);
            }
            for local in 0..function.locals {
                text.push_str(&format!(" (local $l{local} i64)"));
            }
            text.push_str("\n    ");
            text.push_str(&function.body.join(" "));
            text.push_str(")\n");
        }
        text.push_str(")\n");
        text
    }
}

/// A data string: escapes, quotes, parens and semicolons among plain bytes.
fn string(u: &mut Unstructured<'_>) -> Result<String> {
    const PIECES: [&str; 9] = ["a", "b c", "(", ")", ";;", "(;", "\\\"", "\\\\", "\\01"];
    (0..u.int_in_range(0..=8)?).map(|_| u.choose(&PIECES).map(|s| s.to_string())).collect()
}
