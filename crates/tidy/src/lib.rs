//! zest-tidy: checks on the workspace's own source, run as tests
//! (`cargo test -p zest-tidy`), after rust-analyzer's tidy tests.
//!
//! The checks: no import circles between the files of a crate, and every import
//! going down a crate's declared layers ([`ModuleGraph::breaches`]). Each `.rs` file
//! under a crate's `src/` is a module named by its path without `.rs` (`node`,
//! `reload/plan`); `lib.rs` and `main.rs` are the root. A file imports another when
//! it names it through a `crate::`, `super::` or `self::` path, in a `use` (groups and
//! re-exports too) or inline in code; the path goes to its longest prefix that is a
//! file, so `crate::engine::cache::Cache` is `engine/cache` if that file exists, else
//! `engine`. Not imports: `mod x;` declarations, a file naming itself, paths in
//! comments, literals and `#[cfg(test)]` modules, and paths that name only an item of
//! the root (`crate::Node`, a re-export): the root re-exports from most files, so an
//! edge to it would close a loop through the root for every file using a re-export.
//! Such a path hides which file it reaches, so [`ModuleGraph::root_names`] lists
//! them for the checks to refuse: a file imports from the file that defines a thing.
//!
//! `scan` reads one file's paths, this file turns them into the graph of files
//! ([`ModuleGraph`]), and `circle` finds its [`Circle`]s.

mod circle;
mod scan;

pub use circle::Circle;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::Path;

/// The import circles among the files of the crate whose source is `src_dir`
/// (`crates/runtime/src`), sorted by their files; empty when the files form layers.
pub fn circles(src_dir: &Path) -> io::Result<Vec<Circle>> {
    Ok(ModuleGraph::read(src_dir)?.circles())
}

/// Which files of one crate import which.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleGraph {
    /// Every file module, with the file modules it imports (never itself, never the root).
    imports: BTreeMap<String, BTreeSet<String>>,
    /// Every file but the root, with the paths it names that reach only an item of
    /// the root (`crate::Node`), written with `::`.
    root_names: BTreeMap<String, BTreeSet<String>>,
}

/// One layer of a crate: the files and folders it holds (`"reload"` is `reload.rs`
/// and everything under `reload/`).
pub type Layer<'a> = &'a [&'a str];

impl ModuleGraph {
    /// Reads every `.rs` file under `src_dir` and what each imports.
    pub fn read(src_dir: &Path) -> io::Result<Self> {
        let mut sources = BTreeMap::new();
        read_sources(src_dir, src_dir, &mut sources)?;
        let below_root: BTreeSet<&str> = sources.keys().map(String::as_str).filter(|name| !is_root(name)).collect();

        let mut imports = BTreeMap::new();
        let mut root_names = BTreeMap::new();
        for (name, source) in &sources {
            let module: Vec<String> =
                if is_root(name) { Vec::new() } else { name.split('/').map(String::from).collect() };
            let mut imported = BTreeSet::new();
            let mut of_root = BTreeSet::new();
            for path in scan::crate_paths(source, &module) {
                match longest_file_prefix(&path, &below_root) {
                    Some(file) if &file != name => {
                        imported.insert(file);
                    }
                    Some(_) => {}
                    None if !is_root(name) && !path.is_empty() => {
                        of_root.insert(path.join("::"));
                    }
                    None => {}
                }
            }
            imports.insert(name.clone(), imported);
            if !of_root.is_empty() {
                root_names.insert(name.clone(), of_root);
            }
        }
        Ok(Self { imports, root_names })
    }

    /// Every file, by module name (`lib`, `reload/plan`), sorted.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.imports.keys().map(String::as_str)
    }

    /// The files `file` imports, sorted; none if there is no such file.
    pub fn imports(&self, file: &str) -> impl Iterator<Item = &str> {
        self.imports.get(file).into_iter().flatten().map(String::as_str)
    }

    /// The import circles, sorted by their files.
    pub fn circles(&self) -> Vec<Circle> {
        circle::find(&self.imports)
    }

    /// The files (but the root) that name items of the root, each with those paths.
    pub fn root_names(&self) -> impl Iterator<Item = (&str, &BTreeSet<String>)> {
        self.root_names.iter().map(|(file, paths)| (file.as_str(), paths))
    }

    /// What breaks the layering `layers` (bottom first): each import of a file from a
    /// higher layer than its own, and each file (but the root) that no layer holds,
    /// one line each. Empty when every import goes down or stays in its layer.
    pub fn breaches(&self, layers: &[Layer<'_>]) -> Vec<String> {
        let layer_of = |file: &str| {
            layers.iter().position(|layer| {
                layer.iter().any(|part| file == *part || file.strip_prefix(part).is_some_and(|r| r.starts_with('/')))
            })
        };
        let mut breaches = Vec::new();
        for (file, imported) in self.imports.iter().filter(|(file, _)| !is_root(file)) {
            let Some(own) = layer_of(file) else {
                breaches.push(format!("{file} is in no layer"));
                continue;
            };
            for target in imported {
                if let Some(theirs) = layer_of(target).filter(|&theirs| theirs > own) {
                    breaches.push(format!(
                        "{file} (layer {}: {}) imports {target} (layer {}: {}), a layer above it",
                        own + 1,
                        layers[own].join(", "),
                        theirs + 1,
                        layers[theirs].join(", ")
                    ));
                }
            }
        }
        breaches
    }
}

/// One line per file: `reload/plan -> engine, reload`.
impl fmt::Display for ModuleGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (file, imported) in &self.imports {
            let imported: Vec<&str> = imported.iter().map(String::as_str).collect();
            writeln!(f, "{file} -> {}", imported.join(", "))?;
        }
        Ok(())
    }
}

/// Whether `module` is the crate root's file.
fn is_root(module: &str) -> bool {
    module == "lib" || module == "main"
}

/// Adds every `.rs` file under `dir` to `sources`, named by its path from `src_dir`
/// without `.rs`, with `/` between folders.
fn read_sources(src_dir: &Path, dir: &Path, sources: &mut BTreeMap<String, String>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            read_sources(src_dir, &path, sources)?;
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            let relative = path.strip_prefix(src_dir).map_err(io::Error::other)?.with_extension("");
            let name: Vec<String> =
                relative.components().map(|part| part.as_os_str().to_string_lossy().into_owned()).collect();
            sources.insert(name.join("/"), std::fs::read_to_string(&path)?);
        }
    }
    Ok(())
}

/// The file module that `path` (segments from the crate root) goes to: its longest
/// prefix in `files`. None for an item of the root or outside the crate's files.
fn longest_file_prefix(path: &[String], files: &BTreeSet<&str>) -> Option<String> {
    (1..=path.len()).rev().map(|len| path[..len].join("/")).find(|prefix| files.contains(prefix.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A crate's `src/` written into a fresh temporary folder, removed on drop,
    /// whether the test passed or not.
    struct SourceTree {
        root: PathBuf,
    }

    impl SourceTree {
        /// Writes `files`, each a path under `src/` and its text.
        fn new(files: &[(&str, &str)]) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let root = std::env::temp_dir().join(format!(
                "zest-tidy-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&root);
            let tree = SourceTree { root };
            for (path, text) in files {
                let path = tree.src().join(path);
                std::fs::create_dir_all(path.parent().expect("a file has a folder")).expect("create folder");
                std::fs::write(&path, text).expect("write source file");
            }
            tree
        }

        fn src(&self) -> PathBuf {
            self.root.join("src")
        }

        fn graph(&self) -> ModuleGraph {
            ModuleGraph::read(&self.src()).expect("read the source tree")
        }

        /// What `file` imports, sorted.
        fn imports(&self, file: &str) -> Vec<String> {
            self.graph().imports(file).map(String::from).collect()
        }
    }

    impl Drop for SourceTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn two_files_importing_each_other_are_a_circle() {
        let tree = SourceTree::new(&[
            ("lib.rs", "mod error;\nmod node;\npub use node::Node;\n"),
            ("error.rs", "use crate::node::Node;\npub struct Error(Node);\n"),
            ("node.rs", "pub(crate) use crate::error::Error;\npub struct Node;\n"),
        ]);

        let circles = circles(&tree.src()).expect("read the source tree");

        assert_eq!(
            circles,
            vec![Circle { files: names(&["error", "node"]), cycle: names(&["error", "node", "error"]) }]
        );
        assert_eq!(circles[0].to_string(), "2 files, e.g. error -> node -> error\n    error, node");
    }

    #[test]
    fn a_circle_through_super_from_a_subfolder_and_a_grouped_use_is_found() {
        let tree = SourceTree::new(&[
            ("lib.rs", "mod error;\nmod node;\nmod reload;\n"),
            ("error.rs", "pub struct Error;\n"),
            // The only way from `node` into the loop is inside a nested group.
            ("node.rs", "use crate::{error::Error, reload::{plan::{Plan}}};\npub struct Node;\n"),
            ("reload.rs", "mod plan;\npub struct Outcome;\npub fn run(node: &crate::node::Node) {}\n"),
            // `super::{self, …}` from reload/plan.rs is reload.rs; there is no reload/Outcome.rs.
            ("reload/plan.rs", "use super::{self, Outcome};\npub struct Plan;\n"),
        ]);

        let circles = circles(&tree.src()).expect("read the source tree");

        assert_eq!(
            circles,
            vec![Circle {
                files: names(&["node", "reload", "reload/plan"]),
                cycle: names(&["node", "reload/plan", "reload", "node"]),
            }]
        );
    }

    #[test]
    fn an_import_from_a_higher_layer_or_of_an_unplaced_file_breaks_the_layers() {
        let tree = SourceTree::new(&[
            ("lib.rs", "mod error;\nmod engine;\nmod node;\nmod stray;\n"),
            ("error.rs", "pub struct Error;\n"),
            ("engine.rs", "mod cache;\nuse crate::error::Error;\n"),
            ("engine/cache.rs", "use crate::node::Node;\nuse super::super::error::Error;\n"),
            ("node.rs", "use crate::engine::cache::Cache;\npub struct Node;\n"),
            ("stray.rs", "pub struct Stray;\n"),
        ]);
        let layers: [Layer<'_>; 3] = [&["error"], &["engine"], &["node"]];

        assert_eq!(
            tree.graph().breaches(&layers),
            vec![
                "engine/cache (layer 2: engine) imports node (layer 3: node), a layer above it".to_string(),
                "stray is in no layer".to_string(),
            ]
        );
        let placed: [Layer<'_>; 3] = [&["error", "stray"], &["engine"], &["node"]];
        let without_cache_upward = SourceTree::new(&[
            ("lib.rs", "mod error;\nmod engine;\nmod node;\nmod stray;\n"),
            ("error.rs", "pub struct Error;\n"),
            ("engine.rs", "mod cache;\n"),
            ("engine/cache.rs", "use crate::error::Error;\n"),
            ("node.rs", "use crate::engine::cache::Cache;\n"),
            ("stray.rs", "use crate::error::Error;\n"),
        ]);
        assert_eq!(without_cache_upward.graph().breaches(&placed), Vec::<String>::new());
    }

    #[test]
    fn a_path_to_an_item_of_the_root_is_listed_as_such() {
        let tree = SourceTree::new(&[
            ("lib.rs", "mod a;\nmod node;\npub use node::Node;\npub fn helper() {}\n"),
            ("a.rs", "use crate::Node;\nfn f() { crate::helper(); let _ = crate::node::Node; }\n"),
            ("node.rs", "pub struct Node;\n"),
        ]);
        let graph = tree.graph();
        let listed: Vec<(&str, Vec<&str>)> =
            graph.root_names().map(|(file, paths)| (file, paths.iter().map(String::as_str).collect())).collect();
        assert_eq!(listed, vec![("a", vec!["Node", "helper"])]);
        assert_eq!(tree.imports("a"), names(&["node"]));
    }

    #[test]
    fn a_chain_is_not_a_circle() {
        let tree = SourceTree::new(&[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", "use crate::b::B;\npub struct A(B);\n"),
            ("b.rs", "use crate::c::C;\npub struct B(C);\n"),
            ("c.rs", "pub struct C;\nimpl C {\n    pub fn new() -> crate::c::C {\n        C\n    }\n}\n"),
        ]);

        assert_eq!(tree.imports("a"), names(&["b"]));
        assert_eq!(tree.imports("b"), names(&["c"]));
        assert_eq!(tree.imports("c"), names(&[]), "a file naming itself is not an import");
        assert_eq!(tree.imports("lib"), names(&[]), "`mod x;` is not an import");
        assert_eq!(circles(&tree.src()).expect("read the source tree"), vec![]);
    }

    /// A tree where `a.rs` names `b` only in the text `a_rs_names_b` hides it in, and
    /// names `c` for real after that, so a scan that loses its place misses `c`.
    fn hiding_b(a_rs_names_b: &str) -> SourceTree {
        let a_rs = format!("{a_rs_names_b}\npub fn make() -> crate::c::C {{ crate::c::C }}\n");
        SourceTree::new(&[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", &a_rs),
            ("b.rs", "pub struct B;\n"),
            ("c.rs", "pub struct C;\n"),
        ])
    }

    #[test]
    fn a_path_in_a_comment_is_not_an_import() {
        let tree = hiding_b(
            "//! Built on [`crate::b::B`].\n\
             /// Unlike `crate::b::B`.\n\
             // use crate::b::B;\n\
             /* use crate::b::B; /* nested */ use super::b::B; */",
        );
        assert_eq!(tree.imports("a"), names(&["c"]));
    }

    #[test]
    fn a_path_in_a_literal_is_not_an_import() {
        let tree = hiding_b(
            "const QUOTE: char = '\"';\n\
             const ESCAPED: char = '\\'';\n\
             fn shown<'a>(x: &'a str) -> &'a str { x }\n\
             const PLAIN: &str = \"use crate::b::B; \\\" crate::b::B\";\n\
             const RAW: &str = r#\"crate::b::B \"quoted\" \"#;\n\
             const RAW_BACKSLASH: &str = r\"\\\"; const AFTER: &str = \"crate::b::B\";\n\
             const BYTES: &[u8] = b\"crate::b::B\";",
        );
        assert_eq!(tree.imports("a"), names(&["c"]));
    }

    #[test]
    fn a_path_in_a_test_module_is_not_an_import() {
        let tree = hiding_b(
            "#[cfg(test)]\n\
             mod tests {\n\
                 use crate::b::B;\n\
                 #[test]\n\
                 fn braces_in_a_string() { let _ = (\"}\", crate::b::B); }\n\
             }\n\
             #[cfg(test)]\n\
             #[allow(dead_code)]\n\
             pub(crate) mod fixtures {\n\
                 pub use crate::b::B;\n\
             }\n\
             #[cfg(test)]\n\
             mod more_fixtures;",
        );
        assert_eq!(tree.imports("a"), names(&["c"]));
    }

    #[test]
    fn an_inline_path_in_code_is_an_import() {
        let tree = SourceTree::new(&[
            ("lib.rs", "mod a;\nmod x;\n"),
            ("a.rs", "pub fn make() -> u32 {\n    crate::x::Y::new().0\n}\n"),
            ("x.rs", "pub struct Y(pub u32);\n"),
        ]);
        assert_eq!(tree.imports("a"), names(&["x"]));
    }

    #[test]
    fn a_path_goes_to_its_longest_prefix_that_is_a_file() {
        let user = "use crate::a::b::T;\n";
        let with_a_b = SourceTree::new(&[
            ("lib.rs", "mod a;\nmod user;\n"),
            ("a.rs", "mod b;\nmod c;\nmod d;\npub use self::b::T;\npub struct Thing;\n"),
            ("a/b.rs", "pub struct T;\n"),
            ("a/c.rs", "use super::b::T;\nuse super::Thing;\n"),
            ("a/d.rs", "mod inner {\n    use super::super::Thing;\n}\n"),
            ("user.rs", user),
        ]);
        assert_eq!(with_a_b.imports("user"), names(&["a/b"]));
        assert_eq!(with_a_b.imports("a"), names(&["a/b"]), "`self::b` in a.rs is a/b.rs");
        // From a/c.rs, `super::b` is the file a/b.rs; `super::Thing` an item of a.rs.
        assert_eq!(with_a_b.imports("a/c"), names(&["a", "a/b"]));
        // In an inline module of a/d.rs, `super` is a/d itself and `super::super` is a.
        assert_eq!(with_a_b.imports("a/d"), names(&["a"]));

        let without_a_b = SourceTree::new(&[
            ("lib.rs", "mod a;\nmod user;\n"),
            ("a.rs", "pub mod b {\n    pub struct T;\n}\n"),
            ("user.rs", user),
        ]);
        assert_eq!(without_a_b.imports("user"), names(&["a"]));
    }
}
