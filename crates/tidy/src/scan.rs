//! Reading one source file for the paths it names inside its own crate.
//!
//! A small lexer turns the text into identifiers, `::` and single punctuation
//! characters, dropping comments (nested block comments too), string, byte-string,
//! raw-string and char literals, and lifetimes. The tokens are then walked for paths
//! that start with `crate::`, `super::` or `self::` (`$crate::` in macros counts as
//! `crate::`): in `use` declarations with their nested `{…}` groups, and inline in
//! types and expressions. Each is made absolute, as segments from the crate root.
//!
//! Unit-test modules (`#[cfg(test)] mod NAME { … }`) are skipped whole. Other inline
//! modules (`mod NAME { … }`) are followed, so a `super::` inside one names the file's
//! own module, as the compiler reads it.

/// One token of the few kinds this scan tells apart.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An identifier or keyword: `crate`, `use`, `Node`.
    Ident(String),
    /// `::`.
    PathSep,
    /// A string, char or number literal; its text never matters here.
    Literal,
    /// Any other character: `{`, `}`, `,`, `#`, `[`, `<`, `*`, ...
    Punct(char),
}

impl Token {
    /// Whether this token is written `text`: an identifier, `::` or one character.
    fn is(&self, text: &str) -> bool {
        match self {
            Token::Ident(name) => name == text,
            Token::PathSep => text == "::",
            Token::Literal => false,
            Token::Punct(c) => text.len() == c.len_utf8() && text.starts_with(*c),
        }
    }
}

/// Every path `source` names through `crate::`, `super::` or `self::`, as segments
/// from the crate root; `module` is the file's own module path (empty for the root).
/// `use super::{self, x}` gives two paths. A path that climbs above the root is left
/// out.
pub(crate) fn crate_paths(source: &str, module: &[String]) -> Vec<Vec<String>> {
    let tokens = lex(source);
    let mut paths = Vec::new();
    // The inline modules the walk is inside, each with the brace depth of its body.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        if let Some(after) = past_test_module(&tokens, i) {
            i = after;
            continue;
        }
        match &tokens[i] {
            Token::Ident(word) if word == "mod" => {
                if let (Some(Token::Ident(name)), Some(open)) = (tokens.get(i + 1), tokens.get(i + 2)) {
                    if open.is("{") {
                        depth += 1;
                        inline.push((name.clone(), depth));
                        i += 3;
                        continue;
                    }
                }
            }
            Token::Ident(word)
                if matches!(word.as_str(), "crate" | "super" | "self")
                    && tokens.get(i + 1).is_some_and(|next| next.is("::")) =>
            {
                let mut written = Vec::new();
                i = read_use_tree(&tokens, i, Vec::new(), &mut written);
                let here: Vec<String> = module.iter().chain(inline.iter().map(|(name, _)| name)).cloned().collect();
                paths.extend(written.iter().filter_map(|path| absolute(path, &here)));
                continue;
            }
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                if inline.last().is_some_and(|(_, body)| *body == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        i += 1;
    }
    paths
}

/// Reads the path or use tree that starts at `tokens[i]`, after the segments already
/// in `prefix`: `a::b::C`, `a::{b, c::{D, E}}`, `a::*`, `a::B as C`. Pushes each full
/// path it spells out to `out` and returns the index of the first token after it.
fn read_use_tree(tokens: &[Token], mut i: usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    loop {
        match tokens.get(i) {
            Some(Token::Punct('{')) => {
                i += 1;
                while tokens.get(i).is_some_and(|token| !token.is("}")) {
                    i = read_use_tree(tokens, i, prefix.clone(), out);
                    // Past what may follow a tree in a group (`as alias`, `*`) and its comma.
                    while tokens.get(i).is_some_and(|token| !token.is("}") && !token.is(",")) {
                        i += 1;
                    }
                    if tokens.get(i).is_some_and(|token| token.is(",")) {
                        i += 1;
                    }
                }
                return i + 1;
            }
            Some(Token::Ident(segment)) => {
                prefix.push(segment.clone());
                i += 1;
                if tokens.get(i).is_some_and(|token| token.is("::")) {
                    i += 1;
                } else {
                    break;
                }
            }
            // `*`, a turbofish's `<`, or the end: the path is what came before.
            _ => break,
        }
    }
    out.push(prefix);
    i
}

/// The path `written` names from inside `module`, as segments from the crate root:
/// a leading `crate` starts at the root, a leading `self` stays, each leading `super`
/// climbs one module; a later `self` (`use super::{self}`) names the path before it.
/// None if it climbs above the root.
fn absolute(written: &[String], module: &[String]) -> Option<Vec<String>> {
    let mut path = module.to_vec();
    let mut segments = written.iter().peekable();
    while let Some(keyword) = segments.next_if(|word| matches!(word.as_str(), "crate" | "self" | "super")) {
        match keyword.as_str() {
            "crate" => path.clear(),
            "super" => {
                path.pop()?;
            }
            _ => {}
        }
    }
    path.extend(segments.filter(|word| *word != "self").cloned());
    Some(path)
}

/// If `tokens[i]` starts `#[cfg(test)]` on a module (`mod NAME { … }` or `mod NAME;`,
/// other attributes and `pub` allowed), the index just after that module.
fn past_test_module(tokens: &[Token], i: usize) -> Option<usize> {
    const CFG_TEST: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
    if !starts_with(tokens, i, &CFG_TEST) {
        return None;
    }
    let mut j = i + CFG_TEST.len();
    while starts_with(tokens, j, &["#", "["]) {
        j = past_group(tokens, j + 1);
    }
    if starts_with(tokens, j, &["pub"]) {
        j += 1;
        if starts_with(tokens, j, &["("]) {
            j = past_group(tokens, j);
        }
    }
    if !starts_with(tokens, j, &["mod"]) || !matches!(tokens.get(j + 1), Some(Token::Ident(_))) {
        return None;
    }
    match tokens.get(j + 2) {
        Some(token) if token.is(";") => Some(j + 3),
        Some(token) if token.is("{") => Some(past_group(tokens, j + 2)),
        _ => None,
    }
}

/// Whether the tokens from `i` on are written `pattern`, one token per entry.
fn starts_with(tokens: &[Token], i: usize, pattern: &[&str]) -> bool {
    pattern.iter().enumerate().all(|(k, text)| tokens.get(i + k).is_some_and(|token| token.is(text)))
}

/// The index just after the bracket that closes the one at `tokens[open]` (any of
/// `(`, `[`, `{`), or the end if the file ends first.
fn past_group(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate().skip(open) {
        match token {
            Token::Punct('(' | '[' | '{') => depth += 1,
            Token::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// The tokens of `source`, without comments, lifetimes or the text of literals.
fn lex(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            i = chars[i..].iter().position(|&c| c == '\n').map_or(chars.len(), |end| i + end);
        } else if c == '/' && next == Some('*') {
            i = block_comment_end(&chars, i);
        } else if c == '"' {
            tokens.push(Token::Literal);
            i = string_end(&chars, i + 1);
        } else if c == '\'' {
            match char_literal_end(&chars, i) {
                Some(end) => {
                    tokens.push(Token::Literal);
                    i = end;
                }
                // A lifetime or a loop label.
                None => i = ident_end(&chars, i + 1),
            }
        } else if c.is_ascii_digit() {
            tokens.push(Token::Literal);
            i = ident_end(&chars, i);
        } else if c.is_alphabetic() || c == '_' {
            i = lex_word(&chars, i, &mut tokens);
        } else if c == ':' && next == Some(':') {
            tokens.push(Token::PathSep);
            i += 2;
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

/// Lexes the word at `chars[start]`: an identifier, or the prefix of a literal
/// (`b"…"`, `c"…"`, `b'…'`, `r"…"`, `r#"…"#`, `br#"…"#`) or of a raw identifier
/// (`r#type`). Pushes its token and returns the index after it.
fn lex_word(chars: &[char], start: usize, tokens: &mut Vec<Token>) -> usize {
    let end = ident_end(chars, start);
    let word: String = chars[start..end].iter().collect();
    match (word.as_str(), chars.get(end)) {
        ("b" | "c", Some('"')) => {
            tokens.push(Token::Literal);
            string_end(chars, end + 1)
        }
        ("b", Some('\'')) => match char_literal_end(chars, end) {
            Some(after) => {
                tokens.push(Token::Literal);
                after
            }
            None => {
                tokens.push(Token::Ident(word));
                end
            }
        },
        ("r" | "br" | "cr", Some('"' | '#')) => {
            let hashes = chars[end..].iter().take_while(|&&c| c == '#').count();
            if chars.get(end + hashes) == Some(&'"') {
                tokens.push(Token::Literal);
                raw_string_end(chars, end + hashes + 1, hashes)
            } else if word == "r" && hashes == 1 {
                let name_end = ident_end(chars, end + 1);
                tokens.push(Token::Ident(chars[end + 1..name_end].iter().collect()));
                name_end
            } else {
                tokens.push(Token::Ident(word));
                end
            }
        }
        _ => {
            tokens.push(Token::Ident(word));
            end
        }
    }
}

/// The index after the identifier characters from `start` on.
fn ident_end(chars: &[char], start: usize) -> usize {
    chars[start..].iter().position(|&c| !(c.is_alphanumeric() || c == '_')).map_or(chars.len(), |len| start + len)
}

/// The index after the `"` that closes a string whose text starts at `start`.
fn string_end(chars: &[char], start: usize) -> usize {
    let mut i = start;
    while let Some(&c) = chars.get(i) {
        match c {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// The index after the `"` plus `hashes` `#`s that close a raw string whose text
/// starts at `start`.
fn raw_string_end(chars: &[char], start: usize, hashes: usize) -> usize {
    (start..chars.len())
        .find(|&i| chars[i] == '"' && chars[i + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes)
        .map_or(chars.len(), |close| close + 1 + hashes)
}

/// If a char literal starts at the `'` at `chars[start]` (`'x'`, `'\n'`, `'\u{1F600}'`),
/// the index after it; None for a lifetime or label (`'a`, `'outer:`).
fn char_literal_end(chars: &[char], start: usize) -> Option<usize> {
    if chars.get(start + 1) == Some(&'\\') {
        let close = chars.get(start + 3..)?.iter().position(|&c| c == '\'')?;
        Some(start + 3 + close + 1)
    } else if chars.get(start + 2) == Some(&'\'') {
        Some(start + 3)
    } else {
        None
    }
}

/// The index after the block comment that opens at `chars[start]`, nested ones
/// included.
fn block_comment_end(chars: &[char], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1)) {
            ('/', Some('*')) => {
                depth += 1;
                i += 2;
            }
            ('*', Some('/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    chars.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths_in(source: &str, module: &[&str]) -> Vec<String> {
        let module: Vec<String> = module.iter().map(|segment| segment.to_string()).collect();
        crate_paths(source, &module).iter().map(|path| path.join("::")).collect()
    }

    #[test]
    fn a_use_tree_gives_one_path_from_the_root_per_leaf() {
        let source = "pub(crate) use super::{self, plan::{Plan as P, Step}, run::*};\n\
                      use crate::{engine::{self}, error::Error};\n\
                      macro_rules! node { () => { $crate::node::Node::new() } }";
        assert_eq!(
            paths_in(source, &["reload", "trial"]),
            [
                "reload",
                "reload::plan::Plan",
                "reload::plan::Step",
                "reload::run",
                "engine",
                "error::Error",
                "node::Node::new"
            ]
        );
    }

    #[test]
    fn a_path_that_climbs_above_the_root_or_a_visibility_is_not_a_path() {
        assert_eq!(paths_in("pub(super) fn f() {}\nuse super::x::Y;\nuse self::z::W;", &[]), ["z::W"]);
    }
}
