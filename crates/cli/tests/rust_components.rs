//! Rust guests in the SDK's component form through a real `zest serve`
//! (`examples/components/README.md`, step by step): the example app built by
//! its `build.sh` (a wasm32 `rustc` is needed: Debian's 1.63 does), its
//! process moved from the core build to the component and back with its
//! count, a `.rs` extension choosing the component form, and one whose module
//! cannot be a component refused while the old one serves.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::Served;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// The example app copied into `dir/components` (its neighbour
/// `dir/guests/tally.rs` too) and built there.
fn example_app(dir: &Path) {
    let app = dir.join("components");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::create_dir_all(dir.join("guests")).unwrap();
    std::fs::create_dir_all(dir.join("extensions")).unwrap();
    for file in ["zest.toml", "build.sh", "greeter.rs", "tally.rs"] {
        std::fs::copy(repo("examples/components").join(file), app.join(file)).unwrap();
    }
    std::fs::copy(repo("examples/guests/tally.rs"), dir.join("guests/tally.rs")).unwrap();
    let built = std::process::Command::new("sh")
        .arg(app.join("build.sh"))
        .env("ZEST_GUEST_SRC", repo("crates/guest/src"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "build.sh (this test needs a wasm32-capable rustc: scripts/test.sh installs one): {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

fn kind(status: &Value, module: &str) -> String {
    let modules = status["modules"].as_array().unwrap();
    let found = modules.iter().find(|m| m["name"] == module).unwrap_or_else(|| panic!("{module} in {status}"));
    found["current"]["kind"].as_str().unwrap().to_string()
}

fn reply(node: &Served, message: &str) -> Value {
    let (exit, out, err) = node.cli(&["send", "tally", message]);
    assert_eq!(exit, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn the_rust_component_example_runs_and_its_process_moves_between_core_and_component() {
    let node = Served::start(&["--app", "components"], example_app);
    let status = node.status();
    assert_eq!((kind(&status, "greeter").as_str(), kind(&status, "tally").as_str()), ("component", "module"));

    let (exit, described, err) = node.cli(&["describe", "greeter"]);
    assert_eq!(exit, 0, "{err}");
    assert!(described.starts_with("greeter (component greeter-1)\n"), "{described}");
    assert!(described.contains("\n  greet(args: json) -> json\n"), "{described}");
    let relayed = node.rpc(
        "module.call",
        json!({"module": "greeter", "function": "relay", "args": {"module": "greeter", "function": "sum", "args": [1, 2]}}),
    );
    assert_eq!(relayed["result"], json!({"relayed": 3}), "{relayed}");

    assert_eq!(reply(&node, r#"{"add": 5}"#), json!({"count": 5, "moves": []}));
    let build = node.path("components/build");
    std::fs::copy(build.join("tally-component.wasm"), build.join("tally.wasm")).unwrap();
    let (exit, out, err) = node.cli(&["reload", "app", "components"]);
    assert_eq!(exit, 0, "{out}{err}");
    assert!(out.contains("reloaded: tally (tally-1 -> tally-component-1)"), "{out}");
    assert_eq!(kind(&node.status(), "tally"), "component");
    assert_eq!(reply(&node, r#"{"add": 1}"#), json!({"count": 6, "moves": ["up from tally-1"]}));

    std::fs::copy(build.join("tally-core.wasm"), build.join("tally.wasm")).unwrap();
    let (exit, out, err) = node.cli(&["reload", "app", "components"]);
    assert_eq!(exit, 0, "{out}{err}");
    assert_eq!(kind(&node.status(), "tally"), "module");
    assert_eq!(reply(&node, "null"), json!({"count": 6, "moves": ["up from tally-1", "up from tally-component-1"]}));
}

#[test]
fn a_rust_extension_chooses_the_component_form_and_a_misfit_is_refused_while_the_old_one_serves() {
    let node = Served::start(&[], |dir| std::fs::create_dir_all(dir.join("extensions")).unwrap());
    let greeter = std::fs::read_to_string(repo("examples/components/greeter.rs")).unwrap();
    let path = node.path("extensions/hi.rs");
    std::fs::write(&path, &greeter).unwrap();
    let path = path.display().to_string();
    let (exit, out, err) = node.cli(&["reload", "extension", &path]);
    assert_eq!(exit, 0, "{out}{err}");
    assert_eq!(kind(&node.status(), "hi"), "component");
    let (exit, out, _) = node.cli(&["call", "hi", "greet", r#"{"name": "ext"}"#]);
    assert_eq!((exit, serde_json::from_str::<Value>(&out).unwrap()), (0, json!({"greeting": "hello, ext"})));

    // The core form's `log` inside the component form: no component can be made.
    let misfit = greeter.replace("component::log(Level::Info", "zest_guest::log(Level::Info");
    assert_ne!(misfit, greeter);
    std::fs::write(node.path("extensions/hi.rs"), misfit).unwrap();
    let (exit, out, _) = node.cli(&["reload", "extension", &path]);
    assert_eq!(exit, 4, "{out}");
    assert!(out.contains("hi: invalid_module"), "{out}");
    assert!(out.contains("imports `zest.log`") && out.contains("zest_guest::component::log"), "{out}");
    let (exit, out, _) = node.cli(&["call", "hi", "greet", r#"{"name": "still"}"#]);
    assert_eq!((exit, serde_json::from_str::<Value>(&out).unwrap()), (0, json!({"greeting": "hello, still"})));
}
