//! The workspace's tidy checks on its real source: no crate has files that import
//! each other in a circle, every import goes down the crate's layers (the stacks
//! below, which `docs/ARCHITECTURE.md` draws), and no file reaches a thing through
//! the crate root instead of the file that defines it (see `zest_tidy` for what
//! counts as an import).

use std::path::PathBuf;

use zest_tidy::Layer;

/// Fails, listing every circle with one loop through it, if the files of the crate
/// at `crates/<crate_dir>` import each other in a circle.
fn assert_no_import_circles(crate_dir: &str) {
    let graph = read(crate_dir);
    let imports = graph.files().map(|file| graph.imports(file).count()).sum::<usize>();
    assert!(
        imports > 0,
        "found no imports between the files of crates/{crate_dir}/src: is the path right, or the scan broken?"
    );

    let circles = graph.circles();
    if !circles.is_empty() {
        let listed: Vec<String> = circles.iter().map(|circle| format!("  {circle}")).collect();
        panic!(
            "crates/{crate_dir}/src has {} import circle(s):\n{}\n\
             Break each loop by moving what a lower file needs down to the lowest file that \
             needs it, and import it from there, never from a file above; see \
             docs/ARCHITECTURE.md.",
            circles.len(),
            listed.join("\n"),
        );
    }
}

/// The source of `crates/<crate_dir>` as a graph of files.
fn read(crate_dir: &str) -> zest_tidy::ModuleGraph {
    let src_dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", crate_dir, "src"].iter().collect();
    zest_tidy::ModuleGraph::read(&src_dir)
        .unwrap_or_else(|err| panic!("cannot read the source of crates/{crate_dir}: {err}"))
}

/// Fails, listing each breach, unless every import of `crates/<crate_dir>` goes down
/// `layers` (bottom first) or stays in its layer, every file sits in a layer, and no
/// file names an item through the crate root.
fn assert_layered(crate_dir: &str, layers: &[Layer<'_>]) {
    let graph = read(crate_dir);
    let mut breaches = graph.breaches(layers);
    for (file, paths) in graph.root_names() {
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        breaches.push(format!(
            "{file} names crate::{} through the crate root: import it from the file that defines it",
            paths.join(", crate::")
        ));
    }
    assert!(
        breaches.is_empty(),
        "crates/{crate_dir}/src breaks its layers (tests/tidy.rs lists them; docs/ARCHITECTURE.md says what \
         each may not name):\n  {}",
        breaches.join("\n  ")
    );
}

/// `zest-runtime`, bottom first (`docs/ARCHITECTURE.md`, "crates/runtime/src").
const RUNTIME_LAYERS: [Layer<'static>; 13] = [
    &["error", "reason", "lock", "config", "background"],
    &["wasm"],
    &["engine"],
    &["store"],
    &["report"],
    &["telemetry"],
    &["build"],
    &["request"],
    &["code"],
    &["state"],
    &["reload"],
    &["node"],
    &["watch"],
];

/// `zest-control`, bottom first.
const CONTROL_LAYERS: [Layer<'static>; 8] =
    [&["wire", "traces"], &["auth"], &["config"], &["protocol"], &["frame", "ui"], &["ws"], &["cluster"], &["server"]];

#[test]
fn runtime_files_import_without_circles() {
    assert_no_import_circles("runtime");
}

#[test]
fn runtime_files_import_down_their_layers() {
    assert_layered("runtime", &RUNTIME_LAYERS);
}

#[test]
fn control_files_import_without_circles() {
    assert_no_import_circles("control");
}

#[test]
fn control_files_import_down_their_layers() {
    assert_layered("control", &CONTROL_LAYERS);
}
