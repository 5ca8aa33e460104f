//! WAT text to a binary module, reusing the texts parsed last.
//!
//! Parsing is most of an edit's reload when a large module is written as
//! text: the `wast` parser takes about 7 µs a function, where the node
//! compiles only the edited piece of the build (docs/benchmarks.md, "A WAT
//! edit parses only what it changed"). So [`Texts`] keeps the last few texts it
//! parsed, cut into their top-level fields, with their binaries. A new text
//! whose fields are a kept text's but for the bodies of a few functions (their
//! headers — id, exports, type, params, results, locals — unchanged) and the
//! strings of some data segments is not parsed whole. A small module is parsed
//! instead: every other kind of field as it is, the edited functions, and in
//! their places empty stubs of the functions before them that any of those may
//! name. The edited bodies' code entries and the data section it gives replace
//! theirs in the kept binary.
//!
//! The result is byte for byte what `wat` gives for the whole text: checked on
//! every splice in debug builds (so by every test), and by the `wat_splice`
//! fuzz target. What could make a body's edit reach outside its code entry
//! takes the long way, in the old body or the new: a type named inline (a block
//! with parameters or several results, `call_indirect`), an instruction that
//! needs the data count section, a label's name (the name section lists it),
//! an annotation. So does anything unexpected — a text that is not one
//! `(module ...)`, a field that does not scan, a stub module that does not
//! parse — and the errors reported are always the whole text's.

use std::collections::{HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use wasm_encoder::RawSection;
use wasmparser::Parser;

use super::dispatch::{leb_u32, push_leb};

/// How many parsed texts [`Texts`] keeps, and how many bytes of text and
/// binary at most.
const KEEP: usize = 8;
const KEEP_BYTES: usize = 64 << 20;

/// At most this many function bodies are spliced; more parse the whole text.
const MAX_EDITED: usize = 64;

/// The texts parsed last, most recent first.
#[derive(Default)]
pub(crate) struct Texts {
    kept: Mutex<VecDeque<Arc<Parsed>>>,
    /// How many texts were spliced rather than parsed whole.
    spliced: AtomicU64,
}

struct Parsed {
    text: Box<str>,
    outline: Outline,
    wasm: Box<[u8]>,
}

impl Texts {
    /// The binary module `bytes` (WAT text) stands for.
    pub(crate) fn parse(&self, bytes: &[u8]) -> Result<Vec<u8>, wat::Error> {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return wat::parse_bytes(bytes).map(|wasm| wasm.into_owned());
        };
        let Some(outline) = Outline::read(text) else {
            return wat::parse_str(text);
        };
        let kept: Vec<Arc<Parsed>> = self.kept.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect();
        let spliced = kept.iter().find_map(|old| splice(old, text, &outline));
        let wasm = match spliced {
            Some(wasm) => {
                #[cfg(debug_assertions)]
                assert_eq!(wasm, wat::parse_str(text).unwrap_or_default(), "a spliced text differs from its parse");
                self.spliced.fetch_add(1, Ordering::Relaxed);
                wasm
            }
            None => wat::parse_str(text)?,
        };
        self.keep(Parsed { text: text.into(), outline, wasm: wasm.as_slice().into() });
        Ok(wasm)
    }

    /// How many texts were spliced rather than parsed whole.
    pub(crate) fn spliced(&self) -> u64 {
        self.spliced.load(Ordering::Relaxed)
    }

    fn keep(&self, parsed: Parsed) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.retain(|old| old.text != parsed.text);
        kept.push_front(Arc::new(parsed));
        let mut bytes = 0;
        let within = kept
            .iter()
            .take_while(|p| {
                bytes += p.text.len() + p.wasm.len();
                bytes <= KEEP_BYTES
            })
            .count();
        kept.truncate(within.clamp(1, KEEP));
    }
}

/// The binary of `text` (outlined as `outline`) made from `old`'s, when the two
/// differ only where a splice can follow (the module doc); `None` otherwise.
fn splice(old: &Parsed, text: &str, outline: &Outline) -> Option<Vec<u8>> {
    let (was, now) = (old.text.as_bytes(), text.as_bytes());
    if old.outline.fields.len() != outline.fields.len() || was[old.outline.head.clone()] != now[outline.head.clone()] {
        return None;
    }
    let mut edited = Vec::new();
    let mut data_edited = false;
    for (index, (before, after)) in old.outline.fields.iter().zip(&outline.fields).enumerate() {
        let (a, b) = (&was[before.span.clone()], &now[after.span.clone()]);
        if a == b {
            continue;
        }
        match (&before.kind, &after.kind) {
            (Kind::Func { body: x, .. }, Kind::Func { body: y, .. }) => {
                let same_header = was[before.span.start..*x] == now[after.span.start..*y];
                let bodies_stay_inside =
                    stays_inside(&was[*x..before.span.end - 1])? && stays_inside(&now[*y..after.span.end - 1])?;
                if !same_header || !bodies_stay_inside {
                    return None;
                }
                edited.push(index);
            }
            (Kind::Data, Kind::Data) if strings_only_differ(a, b)? => data_edited = true,
            _ => return None,
        }
    }
    if edited.len() > MAX_EDITED {
        return None;
    }
    if edited.is_empty() && !data_edited {
        return Some(old.wasm.to_vec());
    }
    let stubbed = Stubbed::of(now, outline, &edited)?;
    let small = wat::parse_str(&stubbed.text).ok()?;
    let small_code = section(&small, SECTION_CODE).and_then(entries)?;

    // The kept binary, its edited code entries and (when a segment changed)
    // its data section replaced.
    let ordinal = |field: usize| outline.fields[..field].iter().filter(|f| matches!(f.kind, Kind::Func { .. })).count();
    let mut module = wasm_encoder::Module::new();
    for payload in Parser::new(0).parse_all(&old.wasm) {
        let Some((id, range)) = payload.ok()?.as_section() else { continue };
        let data = &old.wasm[range];
        if id == SECTION_CODE {
            let mut code = entries(data)?;
            for (&field, &at) in edited.iter().zip(&stubbed.ordinals) {
                *code.get_mut(ordinal(field))? = *small_code.get(at)?;
            }
            let mut bytes = Vec::with_capacity(data.len() + 64);
            push_leb(&mut bytes, u32::try_from(code.len()).ok()?);
            code.iter().for_each(|entry| bytes.extend_from_slice(entry));
            module.section(&RawSection { id, data: &bytes });
        } else if id == SECTION_DATA && data_edited {
            module.section(&RawSection { id, data: section(&small, SECTION_DATA)? });
        } else {
            module.section(&RawSection { id, data });
        }
    }
    Some(module.finish())
}

const SECTION_CODE: u8 = 10;
const SECTION_DATA: u8 = 11;

/// The contents of `wasm`'s section `id`.
fn section(wasm: &[u8], id: u8) -> Option<&[u8]> {
    Parser::new(0).parse_all(wasm).find_map(|payload| match payload.ok()?.as_section() {
        Some((found, range)) if found == id => Some(&wasm[range]),
        _ => None,
    })
}

/// A code section's entries, each with its size.
fn entries(section: &[u8]) -> Option<Vec<&[u8]>> {
    let (count, mut at) = leb_u32(section).ok()?;
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (size, width) = leb_u32(section.get(at..)?).ok()?;
        let end = at.checked_add(width)?.checked_add(size as usize)?;
        entries.push(section.get(at..end)?);
        at = end;
    }
    (at == section.len()).then_some(entries)
}

/// The small module a splice parses.
struct Stubbed {
    text: String,
    /// Where each edited function is among its defined functions.
    ordinals: Vec<usize>,
}

impl Stubbed {
    fn of(text: &[u8], outline: &Outline, edited: &[usize]) -> Option<Stubbed> {
        // The ids the edited bodies and the other fields may name; a
        // function before the last one so named keeps its place, as a stub.
        let mut named: HashSet<&[u8]> = HashSet::new();
        for (index, field) in outline.fields.iter().enumerate() {
            let naming = match field.kind {
                Kind::Func { body, .. } if edited.contains(&index) => body..field.span.end,
                Kind::Func { .. } => continue,
                _ => field.span.clone(),
            };
            for token in Lexer::new(&text[naming]) {
                let token = token.ok()?;
                if token.kind == Token::Atom && token.bytes.starts_with(b"$") {
                    named.insert(token.bytes);
                }
            }
        }
        let functions = outline.fields.iter().filter_map(|field| match &field.kind {
            Kind::Func { id, .. } => Some(id.clone()),
            _ => None,
        });
        let placed = functions
            .enumerate()
            .filter(|(_, id)| id.as_ref().is_some_and(|id| named.contains(&text[id.clone()])))
            .last()
            .map_or(0, |(ordinal, _)| ordinal + 1);

        let mut stubbed = String::with_capacity(64 + 16 * placed);
        stubbed.push_str("(module\n");
        let verbatim = |out: &mut String, span: &Range<usize>| -> Option<()> {
            out.push_str(std::str::from_utf8(&text[span.clone()]).ok()?);
            out.push('\n');
            Some(())
        };
        let mut ordinals = vec![0; edited.len()];
        let mut later = Vec::new();
        let mut ordinal = 0;
        for (index, field) in outline.fields.iter().enumerate() {
            let Kind::Func { id, .. } = &field.kind else {
                verbatim(&mut stubbed, &field.span)?;
                continue;
            };
            match edited.iter().position(|&e| e == index) {
                Some(at) if ordinal < placed => {
                    verbatim(&mut stubbed, &field.span)?;
                    ordinals[at] = ordinal;
                }
                Some(at) => later.push(at),
                None if ordinal < placed => {
                    stubbed.push_str("(func ");
                    if let Some(id) = id {
                        stubbed.push_str(std::str::from_utf8(&text[id.clone()]).ok()?);
                    }
                    stubbed.push_str(")\n");
                }
                None => {}
            }
            ordinal += 1;
        }
        for (next, at) in later.into_iter().enumerate() {
            verbatim(&mut stubbed, &outline.fields[edited[at]].span)?;
            ordinals[at] = placed + next;
        }
        stubbed.push(')');
        Some(Stubbed { text: stubbed, ordinals })
    }
}

/// Whether a function body (its instructions, as text) encodes into its own
/// code entry alone: `None` when it does not scan.
fn stays_inside(body: &[u8]) -> Option<bool> {
    const REACHING: [&[u8]; 6] = [
        b"call_indirect",
        b"return_call_indirect",
        b"memory.init",
        b"data.drop",
        b"array.new_data",
        b"array.init_data",
    ];
    const BLOCKS: [&[u8]; 5] = [b"block", b"loop", b"if", b"try", b"try_table"];
    let mut tokens = Lexer::new(body).peekable();
    let mut previous: &[u8] = b"";
    let mut after_result = false;
    while let Some(token) = tokens.next() {
        let token = token.ok()?;
        match token.kind {
            Token::Annotation => return Some(false),
            Token::Atom if REACHING.contains(&token.bytes) => return Some(false),
            // A labelled block: the name section lists its label.
            Token::Atom if token.bytes.starts_with(b"$") && BLOCKS.contains(&previous) => return Some(false),
            Token::Open => {
                let keyword = match tokens.peek() {
                    Some(Ok(next)) => next.bytes,
                    _ => return None,
                };
                if keyword == b"param" {
                    return Some(false);
                }
                if keyword == b"result" {
                    // One result: no type of its own. Two in a row, or one
                    // listing several, would add a type.
                    tokens.next();
                    let mut count = 0;
                    loop {
                        match tokens.next()?.ok()? {
                            Lexed { kind: Token::Close, .. } => break,
                            Lexed { kind: Token::Atom, .. } => count += 1,
                            _ => return Some(false),
                        }
                    }
                    if count != 1 || after_result {
                        return Some(false);
                    }
                    after_result = true;
                    previous = b"";
                    continue;
                }
            }
            _ => {}
        }
        after_result = false;
        previous = token.bytes;
    }
    Some(true)
}

/// Whether two data fields differ only in their strings: `None` when either
/// does not scan.
fn strings_only_differ(a: &[u8], b: &[u8]) -> Option<bool> {
    let (mut a, mut b) = (Lexer::new(a), Lexer::new(b));
    loop {
        match (a.next().transpose().ok()?, b.next().transpose().ok()?) {
            (None, None) => return Some(true),
            (Some(x), Some(y)) if x.kind == y.kind && (x.kind == Token::String || x.bytes == y.bytes) => {}
            _ => return Some(false),
        }
    }
}

/// A module's text cut into its top-level fields.
struct Outline {
    /// `(module` and its id, up to the first field.
    head: Range<usize>,
    fields: Vec<Field>,
}

struct Field {
    /// From its `(` to its `)`, both included.
    span: Range<usize>,
    kind: Kind,
}

enum Kind {
    /// A function defined here (not imported).
    Func {
        /// Its `$id`, if it has one.
        id: Option<Range<usize>>,
        /// Where its instructions start, after its header.
        body: usize,
    },
    Data,
    Other,
}

impl Outline {
    /// `None` for a text that is not one `(module ...)` of fields that scan.
    fn read(text: &str) -> Option<Outline> {
        let bytes = text.as_bytes();
        let mut lexer = Lexer::new(bytes);
        let open = lexer.next()?.ok()?;
        let module = lexer.next()?.ok()?;
        if open.kind != Token::Open || module.bytes != b"module" {
            return None;
        }
        let mut head_end = module.end;
        let mut token = lexer.next()?.ok()?;
        if token.kind == Token::Atom && token.bytes.starts_with(b"$") {
            head_end = token.end;
            token = lexer.next()?.ok()?;
        }
        let mut fields = Vec::new();
        loop {
            match token.kind {
                Token::Close => break,
                Token::Open | Token::Annotation => {
                    let start = token.start;
                    let end = form_end(bytes, start + 1)?;
                    fields.push(Field { span: start..end, kind: Kind::of(&bytes[start..end], start)? });
                    lexer.at = end;
                }
                _ => return None,
            }
            token = lexer.next()?.ok()?;
        }
        // Nothing but blanks and comments after the module.
        if lexer.next().is_some() {
            return None;
        }
        Some(Outline { head: 0..head_end, fields })
    }
}

/// The offset after the `)` closing the form whose `(` is just before `at`:
/// a plain scan of the bytes, for the bulk of a text (the outline lexes only
/// its fields' heads).
fn form_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    let mut depth = 1usize;
    loop {
        // Skip what cannot open or close anything.
        while !matches!(*bytes.get(at)?, b'(' | b')' | b'"' | b';') {
            at += 1;
        }
        match (bytes[at], bytes.get(at + 1)) {
            (b'(', Some(b';')) | (b';', Some(b';')) => {
                let mut lexer = Lexer { bytes, at };
                lexer.skip_blanks().ok()?;
                at = lexer.at;
            }
            (b'(', _) => {
                depth += 1;
                at += 1;
            }
            (b')', _) => {
                depth -= 1;
                at += 1;
                if depth == 0 {
                    return Some(at);
                }
            }
            (b'"', _) => at = Lexer { bytes, at }.string_end(at).ok()?,
            _ => at += 1,
        }
    }
}

/// Reads up to the `)` closing a form just opened; returns the offset after it.
fn close<'a>(next: &mut impl FnMut() -> Option<Lexed<'a>>, opened: Token) -> Option<usize> {
    debug_assert!(matches!(opened, Token::Open | Token::Annotation));
    let mut depth = 1usize;
    loop {
        let token = next()?;
        match token.kind {
            Token::Open | Token::Annotation => depth += 1,
            Token::Close => {
                depth -= 1;
                if depth == 0 {
                    return Some(token.end);
                }
            }
            _ => {}
        }
    }
}

impl Kind {
    /// The kind of the field `field` (its text), which starts at `offset`;
    /// `None` for a function whose header holds what the outline cannot place
    /// (an annotation, a string).
    fn of(field: &[u8], offset: usize) -> Option<Kind> {
        let mut lexer = Lexer::new(field);
        let mut next = || lexer.next().and_then(Result::ok);
        if next()?.kind != Token::Open {
            return Some(Kind::Other);
        }
        match next()?.bytes {
            b"data" => return Some(Kind::Data),
            b"func" => {}
            _ => return Some(Kind::Other),
        }
        let mut id = None;
        let mut token = next()?;
        if token.kind == Token::Atom && token.bytes.starts_with(b"$") {
            id = Some(offset + token.start..offset + token.end);
            token = next()?;
        }
        loop {
            match token.kind {
                Token::Open => match next()?.bytes {
                    b"import" => return Some(Kind::Other),
                    b"export" | b"type" | b"param" | b"result" | b"local" => {
                        close(&mut next, Token::Open)?;
                    }
                    _ => return Some(Kind::Func { id, body: offset + token.start }),
                },
                Token::Atom | Token::Close => return Some(Kind::Func { id, body: offset + token.start }),
                Token::Annotation | Token::String => return None,
            }
            token = next()?;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// `(`
    Open,
    /// `(@`: an annotation's opening.
    Annotation,
    /// `)`
    Close,
    /// One string, alone.
    String,
    /// Anything else: a keyword, an id, a number, idchars and strings run
    /// together.
    Atom,
}

#[derive(Clone, Copy, Debug)]
struct Lexed<'a> {
    kind: Token,
    bytes: &'a [u8],
    start: usize,
    end: usize,
}

/// The tokens of WAT text, blanks and comments skipped, cut as `wast`'s lexer
/// cuts a text it accepts. An `Err` is a string or block comment left open.
struct Lexer<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Lexer<'a> {
    fn new(bytes: &'a [u8]) -> Lexer<'a> {
        Lexer { bytes, at: 0 }
    }

    /// Skips blanks and comments; `Err` for a block comment left open.
    fn skip_blanks(&mut self) -> Result<(), ()> {
        let bytes = self.bytes;
        while let Some(&byte) = bytes.get(self.at) {
            match (byte, bytes.get(self.at + 1)) {
                (b' ' | b'\t' | b'\n' | b'\r', _) => self.at += 1,
                (b';', Some(b';')) => {
                    let rest = &bytes[self.at..];
                    self.at += rest.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(rest.len());
                }
                (b'(', Some(b';')) => {
                    let mut depth = 1;
                    let mut at = self.at + 2;
                    while depth > 0 {
                        match (bytes.get(at), bytes.get(at + 1)) {
                            (None, _) => return Err(()),
                            (Some(b'('), Some(b';')) => {
                                depth += 1;
                                at += 2;
                            }
                            (Some(b';'), Some(b')')) => {
                                depth -= 1;
                                at += 2;
                            }
                            _ => at += 1,
                        }
                    }
                    self.at = at;
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Skips a string whose opening quote is at `at`; returns the offset after
    /// its closing quote.
    fn string_end(&self, mut at: usize) -> Result<usize, ()> {
        at += 1;
        loop {
            match self.bytes.get(at) {
                None => return Err(()),
                Some(b'"') => return Ok(at + 1),
                Some(b'\\') => at += 2,
                Some(_) => at += 1,
            }
        }
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Result<Lexed<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.skip_blanks().is_err() {
            self.at = self.bytes.len();
            return Some(Err(()));
        }
        let start = self.at;
        let byte = *self.bytes.get(start)?;
        let (kind, end) = match byte {
            b'(' if self.bytes.get(start + 1) == Some(&b'@') => (Token::Annotation, start + 1),
            b'(' => (Token::Open, start + 1),
            b')' => (Token::Close, start + 1),
            // A lone `;` (not a comment): a token of its own.
            b';' => (Token::Atom, start + 1),
            _ => {
                let mut at = start;
                let mut strings = 0;
                let mut other = false;
                while let Some(&byte) = self.bytes.get(at) {
                    match byte {
                        b'"' => {
                            let Ok(end) = self.string_end(at) else {
                                self.at = self.bytes.len();
                                return Some(Err(()));
                            };
                            strings += 1;
                            at = end;
                        }
                        b' ' | b'\t' | b'\n' | b'\r' | b'(' | b')' | b';' => break,
                        _ => {
                            other = true;
                            at += 1;
                        }
                    }
                }
                let kind = if strings == 1 && !other { Token::String } else { Token::Atom };
                (kind, at)
            }
        };
        self.at = end;
        Some(Ok(Lexed { kind, bytes: &self.bytes[start..end], start, end }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module of `functions` small functions, function `edited` returning
    /// `value`, and a data segment holding `marker`.
    fn module(functions: usize, edited: usize, value: u64, marker: &str) -> String {
        let mut wat = String::from(
            "(module $m ;; a comment\n (type $t (func (param i32) (result i32)))\n (memory (export \"memory\") 1)\n",
        );
        wat.push_str(&format!(" (data (i32.const 16) \"{marker}\")\n (global $g (mut i32) (i32.const 0))\n"));
        for k in 0..functions {
            let constant = if k == edited { value } else { k as u64 };
            wat.push_str(&format!(
                " (func $f{k} (export \"f{k}\") (param i32 i32) (result i64) (local $x i32)\n   (i64.add (i64.extend_i32_u (local.get 0)) (i64.const {constant})))\n"
            ));
        }
        wat.push_str(" (func (export \"g\") (result i32) (call $h) (global.get $g) (i32.add))\n (func $h (result i32) i32.const 7)\n)");
        wat
    }

    /// Parses `texts` in turn with one [`Texts`]; returns how many were spliced
    /// (each result is checked against `wat` by `parse` itself in debug builds,
    /// and here again).
    fn spliced(texts: &[String]) -> u64 {
        let cache = Texts::default();
        for text in texts {
            assert_eq!(cache.parse(text.as_bytes()).unwrap(), wat::parse_str(text).unwrap());
        }
        cache.spliced()
    }

    #[test]
    fn an_edited_body_and_a_data_string_splice_into_the_kept_binary() {
        let texts =
            [module(50, 7, 1, "one"), module(50, 7, 2, "two"), module(50, 30, 9, "two"), module(50, 30, 9, "x")];
        assert_eq!(spliced(&texts), 3);
    }

    #[test]
    fn edits_reaching_outside_a_body_parse_the_whole_text() {
        let base = module(20, 99, 0, "m");
        let edit = |from: &str, to: &str| {
            assert!(base.contains(from), "{from}");
            base.replacen(from, to, 1)
        };
        let body = "(i64.add (i64.extend_i32_u (local.get 0)) (i64.const 3))";
        let cases = [
            // A new header (here a local's name).
            edit(
                "(local $x i32)\n   (i64.add (i64.extend_i32_u (local.get 0)) (i64.const 3))",
                "(local $y i32) (i64.const 3)",
            ),
            // A label's name, a multi-value block, a block with parameters.
            edit(body, "(block $out (result i64) (i64.const 3))"),
            edit(body, "(block (result i64 i64) (i64.const 3) (i64.const 4)) (drop)"),
            edit(body, "(block (result i64) (result i64) (i64.const 3))"),
            edit(body, "(i32.const 1) (block (param i32) (result i64) (drop) (i64.const 3))"),
            // A type named inline, data count, an annotation.
            edit(body, "(call_indirect (param i32) (result i64) (i32.const 0) (i32.const 0))"),
            edit(body, "(memory.init 0 (i32.const 0) (i32.const 0) (i32.const 0)) (i64.const 3)"),
            edit(body, "(@metadata.code.branch_hint \"\\01\") (i64.const 3)"),
            // A field other than a function's body or a data string.
            edit("(i32.const 16)", "(i32.const 32)"),
            edit("(global $g (mut i32) (i32.const 0))", "(global $g (mut i32) (i32.const 1))"),
            edit("(module $m", "(module $n"),
        ];
        for case in &cases {
            assert_eq!(spliced(&[base.clone(), case.clone()]), 0, "{case}");
        }
        // A plain edit of the same body does splice.
        assert_eq!(spliced(&[base.clone(), edit(body, "(i64.const 4)")]), 1);
    }

    #[test]
    fn an_edited_body_naming_functions_and_globals_encodes_their_indices() {
        let base = module(30, 99, 0, "m");
        let body = "(i64.add (i64.extend_i32_u (local.get 0)) (i64.const 28))";
        let calls = "(drop (call $h)) (global.set $g (i32.const 5)) (i64.extend_i32_u (call $f29 (local.get $x) (i32.const 1)))";
        let text = base.replacen(body, &calls.replace("$f29 (local.get $x) (i32.const 1)", "$h"), 1);
        assert_eq!(spliced(&[base.clone(), text]), 1);
        // A function named after the edited one, and by the edited one.
        let later = base.replacen("(i64.const 3)))", "(i64.extend_i32_u (call $h))))", 1);
        assert_eq!(spliced(&[base.clone(), later]), 1);
        // The edited function naming itself, then one before it.
        let itself = base.replacen(body, "(call $f28 (local.get 0) (local.get 1))", 1);
        let before = base.replacen(body, "(call $f2 (local.get 0) (local.get 1))", 1);
        assert_eq!(spliced(&[base, itself, before]), 2);
    }

    #[test]
    fn the_outline_follows_strings_comments_and_annotations() {
        let text = r#"(module $m (; a (block (; nested ;) comment ;)
  ;; a line ) comment
  (data (i32.const 0) "a \" ) ( string" "\\")
  (@custom "x" "y")
  (func $f (export "f") (type 0) (param $p i32) (local i32) local.get 0 drop)
  (func $i (import "m" "n"))
)"#;
        let outline = Outline::read(text).unwrap();
        let kinds: Vec<&str> = outline
            .fields
            .iter()
            .map(|f| match f.kind {
                Kind::Func { .. } => "func",
                Kind::Data => "data",
                Kind::Other => "other",
            })
            .collect();
        assert_eq!(kinds, ["data", "other", "func", "other"]);
        let Kind::Func { id, body } = &outline.fields[2].kind else { unreachable!() };
        assert_eq!(&text[id.clone().unwrap()], "$f");
        assert!(text[*body..].starts_with("local.get 0 drop)"));
        for broken in [
            "(module (func)",
            "(module (func \"open)",
            "(module) (module)",
            "(module (; open",
            "(func)",
            "(module (func (@name \"f\") (import \"m\" \"n\")))",
        ] {
            assert!(Outline::read(broken).is_none(), "{broken}");
        }
    }

    #[test]
    fn a_bad_edit_reports_the_whole_texts_error() {
        let base = module(5, 99, 0, "m");
        let broken = base.replacen("(i64.const 3)", "(i64.const $nope)", 1);
        let cache = Texts::default();
        cache.parse(base.as_bytes()).unwrap();
        let err = cache.parse(broken.as_bytes()).unwrap_err().to_string();
        assert_eq!(err, wat::parse_str(&broken).unwrap_err().to_string());
    }
}
