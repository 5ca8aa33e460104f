//! `stats`, the Rust module of the polyglot app (guest SDK, component form):
//! it counts what the Python module `words` splits.
//!
//! ```text
//! summary "Hot code, hot swap"  →  {"words": 4, "longest": "code", "mean_length": 3.5}
//! ```

use zest_guest::component;
use zest_guest::Json;

/// `[text]` (or the text alone) → the words' count, the longest one and
/// their mean length; the words come from `words.split` (Python).
fn summary(args: Json) -> Result<Json, String> {
    let text = match args.as_array() {
        Some(items) => items.first().cloned().unwrap_or(Json::Null),
        None => args,
    };
    if text.as_str().is_none() {
        return Err(format!("summary takes a text, not {}", text));
    }
    let words = component::call("words", "split", &Json::Array(vec![text]))?;
    let words = words.as_array().ok_or("words.split did not return a list")?;
    let mut longest = "";
    let mut letters = 0;
    for word in words {
        let word = word.as_str().ok_or("words.split returned a non-string")?;
        letters += word.chars().count();
        if word.chars().count() > longest.chars().count() {
            longest = word;
        }
    }
    let mean = if words.is_empty() { 0.0 } else { letters as f64 / words.len() as f64 };
    Ok(Json::object(vec![
        ("words", Json::from(words.len() as i64)),
        ("longest", Json::from(longest)),
        ("mean_length", Json::from(mean)),
    ]))
}

zest_guest::component! {
    vsn: "stats-1",
    functions: [summary],
}
