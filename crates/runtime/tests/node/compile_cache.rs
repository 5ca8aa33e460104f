//! The compile cache: a build seen before skips compilation, across restarts, and
//! a damaged entry is rebuilt rather than trusted.

use std::path::{Path, PathBuf};

use zest_runtime::{Node, NodeConfig, ReloadOptions, Status};

use super::support::versioned;

fn node(data: &Path) -> Node {
    Node::new(NodeConfig { data_dir: Some(data.to_path_buf()), ..NodeConfig::default() }).unwrap()
}

fn load(node: &Node, path: &Path) -> bool {
    let result = node.load_module("clock", path, &ReloadOptions::default());
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    result.metadata.swaps[0].compiled
}

fn cache_entries(data: &Path) -> Vec<PathBuf> {
    let mut entries = Vec::new();
    for dir in std::fs::read_dir(data.join("cache")).unwrap() {
        for entry in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            entries.push(entry.unwrap().path());
        }
    }
    entries
}

#[test]
fn a_build_seen_before_loads_from_the_cache_after_a_restart_and_on_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (v1, v2) = (dir.path().join("v1.wat"), dir.path().join("v2.wat"));
    std::fs::write(&v1, versioned(1, 0)).unwrap();
    std::fs::write(&v2, versioned(2, 0)).unwrap();

    let first = node(&data);
    assert!(load(&first, &v1), "first load compiles");
    assert!(load(&first, &v2), "a new build compiles");
    assert!(!load(&first, &v1), "a rollback to a build seen before is a cache hit");
    assert_eq!(first.call("clock", "get", "null").unwrap(), r#"{"v":1}"#);
    drop(first);

    let restarted = node(&data);
    assert!(!load(&restarted, &v2), "after a restart the build is a cache hit");
    assert_eq!(restarted.call("clock", "get", "null").unwrap(), r#"{"v":2}"#);
}

#[test]
fn a_corrupt_cache_entry_is_discarded_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let v1 = dir.path().join("v1.wat");
    std::fs::write(&v1, versioned(1, 0)).unwrap();
    assert!(load(&node(&data), &v1));
    let entries = cache_entries(&data);
    assert_eq!(entries.len(), 1, "{entries:?}");

    // Flip one byte of the machine code.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0x5a;
    std::fs::write(&entries[0], &bytes).unwrap();
    let fresh = node(&data);
    assert!(load(&fresh, &v1), "a corrupt entry is compiled again");
    assert_eq!(fresh.call("clock", "get", "null").unwrap(), r#"{"v":1}"#);

    // An entry of another build under this build's name is not trusted either.
    let v2 = dir.path().join("v2.wat");
    std::fs::write(&v2, versioned(2, 0)).unwrap();
    assert!(load(&fresh, &v2));
    fresh.flush_writes();
    let entries = cache_entries(&data);
    let (v1_entry, v2_entry) = {
        let v1_key = fresh.status().modules[0].current.sha256.clone();
        let pick = |key: &str| entries.iter().find(|p| p.to_string_lossy().contains(key)).cloned();
        (pick(&hex_of(&v1)).unwrap(), pick(&v1_key).unwrap())
    };
    std::fs::copy(&v2_entry, &v1_entry).unwrap();
    drop(fresh); // one node per data directory
    let again = node(&data);
    assert!(load(&again, &v1), "a swapped-in entry is compiled again");
    assert_eq!(again.call("clock", "get", "null").unwrap(), r#"{"v":1}"#);
}

fn hex_of(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}
