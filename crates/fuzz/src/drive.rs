//! A small mutation driver for machines without AFL++, and for the smoke in
//! the test command: it runs a target on every input of its corpus, then on
//! mutations of them (bit flips, interesting bytes, insertions, deletions,
//! copies, splices and the target's own tokens) until its time is up. It is
//! not coverage-guided; `scripts/fuzz.sh` uses AFL++ when it can.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the corpus of `target` is kept in the repository.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

/// Every input of a corpus directory, in name order.
pub fn read_corpus(dir: &Path) -> Result<Vec<Vec<u8>>, String> {
    let entries = std::fs::read_dir(dir).map_err(|err| format!("cannot read the corpus {}: {err}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    paths.sort();
    paths
        .iter()
        .map(|path| std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display())))
        .collect()
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Run {
    pub executions: u64,
    pub corpus: usize,
    pub elapsed: Duration,
}

/// An input that broke a property, with the panic's words.
#[derive(Debug)]
pub struct Found {
    pub input: Vec<u8>,
    pub message: String,
}

/// Runs `target` on every input of `corpus`, then on mutations of them for
/// `budget`. Stops at the first input that panics.
pub fn run(target: fn(&[u8]), name: &str, corpus: &[Vec<u8>], budget: Duration, seed: u64) -> Result<Run, Found> {
    let started = Instant::now();
    let mut run = Run { corpus: corpus.len(), ..Run::default() };
    for input in corpus {
        attempt(target, input)?;
        run.executions += 1;
    }
    let seeds: Vec<Vec<u8>> = if corpus.is_empty() { vec![Vec::new()] } else { corpus.to_vec() };
    let tokens = tokens(name);
    let mut rng = Rng(seed | 1);
    while started.elapsed() < budget {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut input, &mut rng, &seeds, tokens);
        }
        attempt(target, &input)?;
        run.executions += 1;
    }
    run.elapsed = started.elapsed();
    Ok(run)
}

fn attempt(target: fn(&[u8]), input: &[u8]) -> Result<(), Found> {
    panic::catch_unwind(AssertUnwindSafe(|| target(input))).map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without words".to_string());
        Found { input: input.to_vec(), message }
    })
}

/// Pieces of each target's input language, to splice in.
fn tokens(target: &str) -> &'static [&'static str] {
    match target {
        "manifest" => &[
            "[[modules]]\n",
            "[[processes]]\n",
            "name = \"",
            "path = \"",
            "module = \"",
            "app = \"",
            "\"\n",
            "init = ",
            "count = ",
            "../",
            "\u{0}",
            "[app]\n",
            "=",
            "-1",
            "1e999",
        ],
        "node_config" => &[
            "[limits]\n",
            "[control]\n",
            "[watch]\n",
            "[cluster]\n",
            "memory_mb = ",
            "call_timeout_ms = ",
            "instances = ",
            "max_connections = ",
            "max_request_bytes = ",
            "debounce_ms = ",
            "module_mb = ",
            "0",
            "-1",
            "18446744073709551616",
            "\"",
            "true",
        ],
        "reload_params" | "rpc_frame" | "guest_json" => &[
            "{",
            "}",
            "[",
            "]",
            "\"",
            ",",
            ":",
            "\\u",
            "\\ud800",
            "null",
            "true",
            "-0",
            "1e400",
            "\"jsonrpc\":\"2.0\"",
            "\"id\":",
            "\"method\":\"system.reload\"",
            "\"params\":",
            "\"canary\":",
            "\"trial\":",
            "\"modules\":",
            "\"dry_run\":true",
            "\u{1}zest-id-",
        ],
        "extension_path" => &["/", "..", ".", "//", "hello.wat", "link.wat", "sub", ".wasm", ".rs", "\u{0}", "~"],
        _ => &[],
    }
}

const INTERESTING: [u8; 10] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x0b, 0x41, 0x60, b'"', b'\\'];

fn mutate(input: &mut Vec<u8>, rng: &mut Rng, seeds: &[Vec<u8>], tokens: &[&str]) {
    let len = input.len();
    match rng.below(8) {
        0 if len > 0 => {
            let at = rng.below(len);
            input[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            input[at] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 => {
            let at = rng.below(len + 1);
            input.insert(at, rng.next() as u8);
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(16)).min(len);
            input.drain(at..end);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(32)).min(len);
            let piece = input[at..end].to_vec();
            let to = rng.below(len + 1);
            input.splice(to..to, piece);
        }
        5 => {
            let other = &seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(64)).min(other.len());
                let to = rng.below(len + 1);
                input.splice(to..to, other[from..end].iter().copied());
            }
        }
        6 if !tokens.is_empty() => {
            let token = tokens[rng.below(tokens.len())].as_bytes();
            let to = rng.below(len + 1);
            input.splice(to..to, token.iter().copied());
        }
        _ if len > 0 => {
            // A number-ish change: set a byte to a small or boundary value.
            let at = rng.below(len);
            input[at] = input[at].wrapping_add(rng.below(5) as u8).wrapping_sub(2);
        }
        _ => input.push(rng.next() as u8),
    }
    input.truncate(64 * 1024);
}

/// xorshift64*: deterministic for a seed, so a run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
