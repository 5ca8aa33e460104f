//! A JavaScript extension's ES module turned into a script the JavaScript
//! runner can evaluate (`runner.js`): QuickJS, as componentize-qjs builds it,
//! evaluates modules only while the tool snapshots it, but at run time it
//! still has indirect `eval`. So the module's top level becomes the body of a
//! strict function, evaluated by the runner and called once with zest's host
//! functions:
//!
//! - `export function f` / `export async function` / `export function*` /
//!   `export class C` / `export const|let|var x` lose their `export`;
//!   `export { a, b as c };` is blanked; each exported name is read back
//!   through a getter of the table the function returns (live, as a module's
//!   bindings are);
//! - `import { call, log as l } from "./zest.js"` and
//!   `import * as zest from "./zest.js"` become bindings of the host
//!   functions, declared before the first line (imports are hoisted).
//!
//! Every rewrite keeps the lines where they were (a removed word becomes
//! spaces), so an error names the line of the user's file. Anything else
//! that only a module may hold, or that a function body would read
//! differently — another import, `export default`, `export * from`, a
//! top-level `return`, `await` or `arguments`, a comma between exported
//! declarations, an HTML comment — and
//! anything the scanner is not sure of (an unterminated string, unbalanced
//! brackets) is refused with the reason: the node then builds the file whole
//! with the tool, which evaluates it as the module it is.
//!
//! The scanner reads tokens only as far as the rewrite needs: where strings,
//! templates, comments and regular expressions start and end, and how deep
//! in brackets each token is. A JavaScript parser crate would do it fully,
//! at the cost of a large dependency for the node; the scanner refuses what
//! it cannot place instead.

use std::fmt::Write as _;

/// The name the script's function takes zest's host functions by.
const HOST: &str = "__zest_host__";

/// The one module an extension may import, as it imports it in a whole
/// build (`zest.js`, written beside the file).
const ZEST_MODULE: &str = "./zest.js";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An identifier, keyword or private name.
    Name,
    Punct(u8),
    Str,
    /// A template literal, or its part up to a `${`.
    Template,
    Regex,
    Number,
}

#[derive(Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
    /// Brackets open around it (a bracket itself counts outside).
    depth: usize,
    /// A `)` closing the condition of `if`, `while`, `for` or `with`: a `/`
    /// after it starts a regular expression.
    condition: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Paren {
        condition: bool,
    },
    Bracket,
    Brace,
    /// A template's `${`.
    Substitution,
}

/// The words after which a `/` starts a regular expression, not a division.
const BEFORE_EXPRESSION: &[&str] = &[
    "return",
    "typeof",
    "instanceof",
    "in",
    "of",
    "new",
    "delete",
    "void",
    "throw",
    "case",
    "do",
    "else",
    "yield",
    "await",
];

fn name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte == b'\\' || byte >= 0x80
}

/// The end of the template text starting at `at` (after a backtick or a
/// substitution's `}`), and whether it stops at a `${` rather than at the
/// closing backtick.
fn template_end(bytes: &[u8], mut at: usize) -> Result<(usize, bool), String> {
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'`' => return Ok((at + 1, false)),
            b'$' if bytes.get(at + 1) == Some(&b'{') => return Ok((at + 2, true)),
            _ => at += 1,
        }
    }
    Err("a template literal is not closed".into())
}

/// The tokens of `source`, or why the scanner cannot place them.
fn tokens(source: &str) -> Result<Vec<Token>, String> {
    let bytes = source.as_bytes();
    let mut tokens: Vec<Token> = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    let mut at = 0;
    if source.starts_with("#!") {
        return Err("a `#!` line".into());
    }
    while at < bytes.len() {
        let byte = bytes[at];
        let next = bytes.get(at + 1).copied();
        let start = at;
        let depth = open.len();
        let mut condition = false;
        let kind = match byte {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                at += 1;
                continue;
            }
            b'/' if next == Some(b'/') => {
                at = source[at..].find('\n').map_or(bytes.len(), |n| at + n);
                continue;
            }
            b'/' if next == Some(b'*') => {
                at = source[at + 2..].find("*/").map(|n| at + 2 + n + 2).ok_or("a comment is not closed")?;
                continue;
            }
            b'\'' | b'"' => {
                at += 1;
                loop {
                    match bytes.get(at) {
                        None | Some(b'\n' | b'\r') => return Err("a string is not closed on its line".into()),
                        Some(b'\\') => at += 2,
                        Some(quote) if *quote == byte => break,
                        Some(_) => at += 1,
                    }
                }
                at += 1;
                Kind::Str
            }
            b'`' => {
                let (end, substitution) = template_end(bytes, at + 1)?;
                at = end;
                if substitution {
                    open.push(Open::Substitution);
                }
                Kind::Template
            }
            b'/' if regex_may_start(source, &tokens) => {
                at += 1;
                let mut class = false;
                loop {
                    match bytes.get(at) {
                        None | Some(b'\n' | b'\r') => return Err("a regular expression is not closed".into()),
                        Some(b'\\') => at += 2,
                        Some(b'[') => {
                            class = true;
                            at += 1;
                        }
                        Some(b']') => {
                            class = false;
                            at += 1;
                        }
                        Some(b'/') if !class => break,
                        Some(_) => at += 1,
                    }
                }
                at += 1;
                while bytes.get(at).is_some_and(|b| b.is_ascii_alphabetic()) {
                    at += 1;
                }
                Kind::Regex
            }
            b'0'..=b'9' => {
                while bytes.get(at).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.') {
                    at += 1;
                }
                Kind::Number
            }
            b'#' => {
                at += 1;
                while bytes.get(at).copied().is_some_and(name_byte) {
                    at += 1;
                }
                Kind::Name
            }
            _ if name_byte(byte) => {
                while bytes.get(at).copied().is_some_and(name_byte) {
                    at += 1;
                }
                Kind::Name
            }
            b'<' if source[at..].starts_with("<!--") => return Err("an HTML comment (`<!--`)".into()),
            b'-' if source[at..].starts_with("-->") => return Err("an HTML comment (`-->`)".into()),
            b'(' | b'[' | b'{' => {
                at += 1;
                let after_keyword = tokens.last().is_some_and(|token| {
                    token.kind == Kind::Name
                        && ["if", "while", "for", "with"].contains(&&source[token.start..token.end])
                });
                open.push(match byte {
                    b'(' => Open::Paren { condition: after_keyword },
                    b'[' => Open::Bracket,
                    _ => Open::Brace,
                });
                Kind::Punct(byte)
            }
            b')' | b']' | b'}' => {
                at += 1;
                match (open.pop(), byte) {
                    (Some(Open::Paren { condition: was }), b')') => condition = was,
                    (Some(Open::Bracket), b']') | (Some(Open::Brace), b'}') => {}
                    (Some(Open::Substitution), b'}') => {
                        let (end, substitution) = template_end(bytes, at)?;
                        at = end;
                        if substitution {
                            open.push(Open::Substitution);
                        }
                        tokens.push(Token { kind: Kind::Template, start, end, depth: open.len(), condition });
                        continue;
                    }
                    _ => return Err(format!("a `{}` closes nothing open", byte as char)),
                }
                Kind::Punct(byte)
            }
            _ => {
                at += 1;
                Kind::Punct(byte)
            }
        };
        let depth = match kind {
            Kind::Punct(b')' | b']' | b'}') => open.len(),
            _ => depth,
        };
        tokens.push(Token { kind, start, end: at.min(bytes.len()), depth, condition });
    }
    if !open.is_empty() {
        return Err("a bracket is not closed".into());
    }
    Ok(tokens)
}

/// Whether a `/` after `tokens` starts a regular expression.
fn regex_may_start(source: &str, tokens: &[Token]) -> bool {
    let Some((previous, before)) = tokens.split_last() else { return true };
    let after_dot = before.last().is_some_and(|token| token.kind == Kind::Punct(b'.'));
    match previous.kind {
        // `a.return / 2` divides a property.
        Kind::Name => !after_dot && BEFORE_EXPRESSION.contains(&&source[previous.start..previous.end]),
        Kind::Str | Kind::Template | Kind::Regex | Kind::Number => false,
        Kind::Punct(b')') => previous.condition,
        Kind::Punct(b']') => false,
        // `i++ / 2`: a postfix `++` or `--` ends an operand.
        Kind::Punct(sign @ (b'+' | b'-')) => match before.split_last() {
            Some((same, rest)) if same.kind == Kind::Punct(sign) && same.end == previous.start => {
                rest.split_last().is_none_or(|(operand, _)| regex_may_start(source, std::slice::from_ref(operand)))
            }
            _ => true,
        },
        // The end of a block, far likelier at a statement's start than the
        // end of an object literal divided by something.
        Kind::Punct(_) => true,
    }
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// `{ a, b as c }`: each name before `as` and after it (or the same twice).
type Specifiers<'a> = Vec<(&'a str, &'a str)>;

/// The rewrite in progress: what to blank, what the script exports, what it
/// binds before its first line.
struct Rewrite<'a> {
    source: &'a str,
    tokens: Vec<Token>,
    blank: Vec<(usize, usize)>,
    /// (exported name, local name).
    exports: Vec<(String, String)>,
    bindings: String,
}

impl<'a> Rewrite<'a> {
    fn text(&self, at: usize) -> &'a str {
        self.tokens.get(at).map_or("", |token| &self.source[token.start..token.end])
    }

    fn is(&self, at: usize, kind: Kind, text: &str) -> bool {
        self.tokens.get(at).is_some_and(|token| token.kind == kind) && self.text(at) == text
    }

    fn punct(&self, at: usize, byte: u8) -> bool {
        self.tokens.get(at).is_some_and(|token| token.kind == Kind::Punct(byte))
    }

    fn identifier(&self, at: usize) -> Result<&'a str, String> {
        let text = self.text(at);
        match self.tokens.get(at) {
            Some(token) if token.kind == Kind::Name && is_identifier(text) => Ok(text),
            _ => Err(format!("`{text}` where a plain name was expected")),
        }
    }

    /// Blanks the tokens `from..=to`, and the `;` after them when there is one.
    fn blank_statement(&mut self, from: usize, to: usize) -> usize {
        let to = if self.punct(to + 1, b';') { to + 1 } else { to };
        self.blank.push((self.tokens[from].start, self.tokens[to].end));
        to + 1
    }

    /// `{ a, b as c }` from the `{` at `at`: the pairs (name before `as`,
    /// name after it, or the same), and the index of the `}`.
    fn specifiers(&self, mut at: usize) -> Result<(Specifiers<'a>, usize), String> {
        let mut pairs = Vec::new();
        at += 1;
        while !self.punct(at, b'}') {
            let inner = self.identifier(at)?;
            let outer = if self.is(at + 1, Kind::Name, "as") {
                at += 2;
                self.identifier(at)?
            } else {
                inner
            };
            pairs.push((inner, outer));
            at += 1;
            if self.punct(at, b',') {
                at += 1;
            } else if !self.punct(at, b'}') {
                return Err(format!("`{}` in a list of names", self.text(at)));
            }
        }
        Ok((pairs, at))
    }

    /// The `from "./zest.js"` at `at`; the index of the string.
    fn zest_after_from(&self, at: usize) -> Result<usize, String> {
        if !self.is(at, Kind::Name, "from") {
            return Err(format!("an import of unexpected form (`{}`)", self.text(at)));
        }
        self.zest_module(at + 1)?;
        Ok(at + 1)
    }

    fn zest_module(&self, at: usize) -> Result<(), String> {
        let spec = self.text(at);
        match self.tokens.get(at) {
            Some(token) if token.kind == Kind::Str && spec.len() >= 2 && &spec[1..spec.len() - 1] == ZEST_MODULE => {
                Ok(())
            }
            _ => Err(format!("it imports {spec} (the runner serves only {ZEST_MODULE})")),
        }
    }

    /// The `import` statement at `at`; the index after it.
    fn import(&mut self, at: usize) -> Result<usize, String> {
        if self.tokens[at + 1..].first().is_some_and(|token| token.kind == Kind::Str) {
            self.zest_module(at + 1)?;
            return Ok(self.blank_statement(at, at + 1));
        }
        if self.punct(at + 1, b'{') {
            let (pairs, close) = self.specifiers(at + 1)?;
            let spec = self.zest_after_from(close + 1)?;
            let list: Vec<String> = pairs
                .iter()
                .map(|(inner, outer)| if inner == outer { inner.to_string() } else { format!("{inner}: {outer}") })
                .collect();
            if !list.is_empty() {
                let _ = write!(self.bindings, "const {{ {} }} = {HOST};", list.join(", "));
            }
            return Ok(self.blank_statement(at, spec));
        }
        if self.punct(at + 1, b'*') && self.is(at + 2, Kind::Name, "as") {
            let local = self.identifier(at + 3)?;
            let spec = self.zest_after_from(at + 4)?;
            let _ = write!(self.bindings, "const {local} = {HOST};");
            return Ok(self.blank_statement(at, spec));
        }
        Err(format!("an import the runner does not serve (`import {}`)", self.text(at + 1)))
    }

    /// The `export` at `at`; the index after what was read of it.
    fn export(&mut self, at: usize) -> Result<usize, String> {
        let word = self.text(at + 1);
        let name_at = match word {
            "function" | "class" | "const" | "let" | "var" if self.tokens[at + 1].kind == Kind::Name => {
                if word == "function" && self.punct(at + 2, b'*') {
                    at + 3
                } else {
                    at + 2
                }
            }
            "async" if self.is(at + 2, Kind::Name, "function") => {
                if self.punct(at + 3, b'*') {
                    at + 4
                } else {
                    at + 3
                }
            }
            "{" if self.punct(at + 1, b'{') => {
                let (pairs, close) = self.specifiers(at + 1)?;
                if self.is(close + 1, Kind::Name, "from") {
                    return Err("it re-exports from another module".into());
                }
                for (inner, outer) in pairs {
                    self.exports.push((outer.to_string(), inner.to_string()));
                }
                return Ok(self.blank_statement(at, close));
            }
            _ => return Err(format!("`export {word}` (the runner serves named exports only)")),
        };
        let name = self.identifier(name_at)?;
        self.exports.push((name.to_string(), name.to_string()));
        self.blank.push((self.tokens[at].start, self.tokens[at].end));
        Ok(at + 1)
    }
}

/// The script for the ES module `source`: an expression evaluating to a
/// function of zest's host functions, which runs the module's top level and
/// returns its exports; or why the runner cannot take it.
pub(super) fn script(source: &str) -> Result<String, String> {
    let tokens = tokens(source)?;
    let mut rewrite = Rewrite { source, tokens, blank: Vec::new(), exports: Vec::new(), bindings: String::new() };
    let mut at = 0;
    let mut declaring = false;
    while at < rewrite.tokens.len() {
        let token = &rewrite.tokens[at];
        let after_dot = at > 0 && rewrite.punct(at - 1, b'.');
        if token.depth > 0 && !after_dot && token.kind == Kind::Name && rewrite.text(at) == "import" {
            return Err("`import(…)` or `import.meta` (the runner has no module loader)".into());
        }
        if token.depth > 0 || after_dot {
            at += 1;
            continue;
        }
        // An exported `const`, `let` or `var` runs to its `;`, or (without
        // one) at least to the next declaration.
        let word = rewrite.text(at);
        let exported = at > 0 && rewrite.is(at - 1, Kind::Name, "export");
        if token.kind == Kind::Punct(b';') || ["export", "import"].contains(&word) {
            declaring = false;
        }
        if token.kind == Kind::Name && ["let", "const", "var"].contains(&word) {
            declaring = exported;
        }
        at = match (token.kind, rewrite.text(at)) {
            (Kind::Name, "import") => rewrite.import(at)?,
            (Kind::Name, "export") => rewrite.export(at)?,
            (Kind::Name, word @ ("return" | "await" | "arguments")) => {
                return Err(format!("`{word}` at the top level"));
            }
            (Kind::Name, "new") if rewrite.punct(at + 1, b'.') => return Err("`new.target` at the top level".into()),
            (Kind::Punct(b','), _) if declaring => {
                return Err("a comma in an exported declaration (several names in one statement)".into());
            }
            _ => at + 1,
        };
    }
    let mut names: Vec<&str> = rewrite.exports.iter().map(|(outer, _)| outer.as_str()).collect();
    names.sort_unstable();
    if let Some(twice) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("`{}` is exported twice", twice[0]));
    }

    let mut script = format!("(function ({HOST}) {{\"use strict\";{}", rewrite.bindings);
    let mut copied = 0;
    rewrite.blank.sort_unstable();
    for (start, end) in &rewrite.blank {
        script.push_str(&source[copied..*start]);
        script.extend(source[*start..*end].chars().map(|c| if c == '\n' || c == '\r' { c } else { ' ' }));
        copied = *end;
    }
    script.push_str(&source[copied..]);
    script.push_str("\n;return {");
    for (outer, inner) in &rewrite.exports {
        let _ = write!(script, " get {outer}() {{ return {inner}; }},");
    }
    script.push_str(" };\n})");
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of the script's table of exports, in order.
    fn table(script: &str) -> Vec<&str> {
        let (_, table) = script.rsplit_once("\n;return {").expect("the table");
        table.split(" get ").skip(1).map(|entry| entry.split('(').next().unwrap()).collect()
    }

    #[test]
    fn exports_lose_their_word_and_keep_their_lines() {
        let source = "import { call, log as say } from \"./zest.js\";\nconst N = 2;\nexport function get() {\n  return N;\n}\n\
                      export async function later() {}\nexport function* gen() {}\nexport class Box {}\nexport const k = `a\nexport function fake() {}\n${N}`;\n\
                      let hidden = 1, other = 2;\nfunction add(a, b) { return [a, b]; }\nexport { add as plus, N };\n";
        let script = script(source).unwrap();
        assert_eq!(table(&script), ["get", "later", "gen", "Box", "k", "plus", "N"]);
        assert!(script.contains(&format!("const {{ call, log: say }} = {HOST};")), "{script}");
        // Line for line: the user's line 3 is the script's line 3.
        assert_eq!(script.lines().count(), source.lines().count() + 3);
        assert_eq!(script.lines().nth(2), Some("       function get() {"));
        assert!(script.contains("\nexport function fake() {}\n"), "a template's text is left alone: {script}");
        assert!(!script.contains("export {"), "{script}");
        assert!(script.contains(" get plus() { return add; },"));
    }

    #[test]
    fn what_only_a_module_may_hold_is_refused_with_its_reason() {
        let refused = |source: &str| script(source).expect_err(source);
        assert!(refused("import fs from \"fs\";\nexport function f() {}\n").contains("import"));
        assert!(refused("import { x } from \"./other.js\";\n").contains("./other.js"));
        assert!(refused("export default function () {}\n").contains("export default"));
        assert!(refused("export * from \"./zest.js\";\n").contains("export *"));
        assert!(refused("export { a } from \"./zest.js\";\n").contains("re-exports"));
        assert!(refused("const v = await fetch();\n").contains("await"));
        assert!(refused("return 1;\n").contains("return"));
        assert!(refused("export const { a, b } = obj;\n").contains("plain name"));
        assert!(refused("export function f() {}\nexport { f };\n").contains("twice"));
        assert!(refused("export const a = 1, b = 2;\n").contains("comma"));
        assert!(refused("export const f = function () {}, g = 1;\n").contains("comma"));
        assert!(refused("const s = 'open\n';\n").contains("string"));
        assert!(refused("function f() {\n").contains("bracket"));
        assert!(refused("const t = `${a}\n").contains("template"));
        assert!(refused("console.log(import.meta.url);\n").contains("import"));
        assert!(refused("<!-- old\n").contains("HTML"));
    }

    #[test]
    fn strings_comments_and_regular_expressions_hide_what_they_hold() {
        let source = "// export default 1\n/* import x from \"y\"\n export * */\nconst a = \"export default, 1\";\n\
                      const r = /[/`'\"]export,/g;\nconst half = (a.length) / 2 / 1;\nif (a) /x,/.test(a);\n\
                      const t = `x ${ { a: `${ `y` }` }.a } z`;\nexport function f(x) { return x.import + obj.export; }\n\
                      let i = 1;\nconst q = i++ / 2 + \"'\" + a.in / 2 / 1 + \"'\";\nconst e = ++i, r2 = +/'/.test(a);\n";
        let script = script(source).unwrap();
        assert_eq!(table(&script), ["f"]);
        assert!(script.contains("const r = /[/`'\"]export,/g;"));
        let kinds = |source: &str| tokens(source).unwrap().iter().map(|token| token.kind).collect::<Vec<_>>();
        assert!(!kinds("i++ / 2 / x.in / 3;").contains(&Kind::Regex));
        assert!(!kinds("f(a) / 2 / [1][0] / b;").contains(&Kind::Regex));
        assert_eq!(kinds("x = a - -/re/.source.length;").iter().filter(|kind| **kind == Kind::Regex).count(), 1);
        assert_eq!(kinds("if (a) /re/.test(b); return /x/;").iter().filter(|kind| **kind == Kind::Regex).count(), 2);
    }
}
