//! One app in three languages through a real `zest serve`
//! (`examples/polyglot/README.md`, step by step): the app's `build.sh` runs
//! rustc, componentize-py and componentize-qjs; `words` (Python), `fmt`
//! (JavaScript) and `stats` (Rust) call each other through the host's `call`;
//! the `tally` process moves Rust → Python → JavaScript → Rust by reloads
//! with `--compile`, keeping its count; a language the build does not know
//! fails the reload while the process keeps serving.
//!
//! Each build is made once (build.sh keeps a build newer than its source), so
//! a reload that changes the process's language only copies a file.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use support::Served;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// The `PATH` with `~/.local/bin` (where `pip install --user` puts
/// componentize-py) first; the test fails naming a tool it does not find.
fn tools_path() -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    let path = format!("{home}/.local/bin:{}", std::env::var("PATH").unwrap_or_default());
    for tool in ["componentize-py", "componentize-qjs"] {
        let found = std::env::split_paths(&path).any(|dir| dir.join(tool).is_file());
        assert!(found, "this test needs {tool} on the PATH or in ~/.local/bin (scripts/test.sh installs it)");
    }
    path
}

/// The example app's files.
const FILES: [&str; 9] =
    ["zest.toml", "build.sh", "tally.lang", "stats.rs", "words.py", "fmt.js", "tally.rs", "tally.py", "tally.js"];

/// The example app copied into `dir/polyglot` and built there, its process in Rust.
fn example_app(dir: &Path, path: &str) {
    let app = dir.join("polyglot");
    std::fs::create_dir_all(&app).unwrap();
    for file in FILES {
        std::fs::copy(repo("examples/polyglot").join(file), app.join(file)).unwrap();
    }
    std::fs::write(app.join("tally.lang"), "rust\n").unwrap();
    let built = std::process::Command::new("sh")
        .arg(app.join("build.sh"))
        .env("PATH", path)
        .env("ZEST_GUEST_SRC", repo("crates/guest/src"))
        .env("ZEST_WIT", repo("crates/runtime/wit"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "build.sh (it needs a wasm32-capable rustc, componentize-py and componentize-qjs: scripts/test.sh installs them): {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

fn call(node: &Served, module: &str, function: &str, args: &str) -> Value {
    let (exit, out, err) = node.cli(&["call", module, function, args]);
    assert_eq!(exit, 0, "{module}.{function}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|_| panic!("{module}.{function}: {out}"))
}

fn kind(status: &Value, module: &str) -> String {
    let modules = status["modules"].as_array().unwrap();
    let found = modules.iter().find(|m| m["name"] == module).unwrap_or_else(|| panic!("{module} in {status}"));
    found["current"]["kind"].as_str().unwrap().to_string()
}

/// Writes `lang` into `tally.lang` and reloads the app with `--compile`.
fn move_tally(node: &Served, lang: &str, from: &str) {
    std::fs::write(node.path("polyglot/tally.lang"), format!("{lang}\n")).unwrap();
    let (exit, out, err) = node.cli(&["reload", "app", "polyglot", "--compile"]);
    assert_eq!(exit, 0, "{out}{err}");
    assert!(out.contains(&format!("reloaded: tally (tally-{from} -> tally-{lang})")), "{out}");
    assert!(out.contains("build: sh build.sh (exit 0"), "{out}");
    assert_eq!(kind(&node.status(), "tally"), "component");
}

#[test]
fn three_languages_call_each_other_and_a_process_moves_through_them_with_its_count() {
    let path = tools_path();
    let temp = tempfile::tempdir().unwrap();
    example_app(temp.path(), &path);
    let dir = temp.path().to_path_buf();
    // The node runs build.sh on `--compile`: it needs the tools on its PATH.
    let args = ["serve", "--listen", "127.0.0.1:0", "--app", "polyglot"];
    let node = Served::try_spawn(dir, Some(temp), &args, ".zest/admin.token", &[("PATH", path.as_str())])
        .unwrap_or_else(|refused| panic!("zest serve exited {}: {}", refused.code, refused.stderr));
    let status = node.status();
    for module in ["stats", "words", "fmt", "tally"] {
        assert_eq!(kind(&status, module), "component", "{module}");
    }

    // Python → JavaScript → Rust → Python, in one call.
    let text = r#""Hot code upgrade, across three languages""#;
    assert_eq!(call(&node, "words", "split", text), json!(["hot", "code", "upgrade", "across", "three", "languages"]));
    assert_eq!(
        call(&node, "stats", "summary", text),
        json!({"words": 6, "longest": "languages", "mean_length": 34.0 / 6.0})
    );
    assert_eq!(call(&node, "fmt", "report", text), json!("6 words, longest \"languages\", mean length 5.7"));
    assert_eq!(call(&node, "words", "headline", text), json!("6 WORDS, LONGEST \"LANGUAGES\", MEAN LENGTH 5.7"));
    // A failure deep in the chain comes back through each language.
    let (exit, out, err) = node.cli(&["call", "words", "headline", "[42]"]);
    assert_eq!(exit, 4, "{out}{err}");
    assert!(err.contains("fmt.report failed: stats.summary failed: summary takes a text, not 42"), "{err}");

    // The process: Rust → Python → JavaScript → Rust, its count kept.
    let (exit, out, err) = node.cli(&["send", "tally", r#"{"add": 5}"#]);
    assert_eq!(
        (exit, serde_json::from_str::<Value>(&out).ok()),
        (0, Some(json!({"count": 5, "langs": ["rust"]}))),
        "{err}"
    );
    let mut langs = vec!["rust"];
    for (lang, from) in [("python", "rust"), ("javascript", "python"), ("rust", "javascript")] {
        move_tally(&node, lang, from);
        langs.push(lang);
        let (exit, out, err) = node.cli(&["send", "tally", r#"{"add": 1}"#]);
        assert_eq!(exit, 0, "{out}{err}");
        let count = 5 + langs.len() as i64 - 1;
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"count": count, "langs": langs}), "in {lang}");
    }

    // A language build.sh does not know: the build fails, Rust keeps serving.
    std::fs::write(node.path("polyglot/tally.lang"), "cobol\n").unwrap();
    let (exit, out, err) = node.cli(&["reload", "app", "polyglot", "--compile"]);
    assert_eq!(exit, 4, "{out}{err}");
    let said = format!("{out}{err}");
    assert!(said.contains("compile_failed") && said.contains("tally.lang says 'cobol'"), "{said}");
    let (exit, out, err) = node.cli(&["send", "tally", "\"get\""]);
    assert_eq!(exit, 0, "{out}{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["count"], 8);
}
