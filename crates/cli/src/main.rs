//! `zest`: the node binary and its command-line client.
//!
//! Today it runs modules locally (`zest run`); `zest serve` and the client
//! commands of CONTRACT.md §8 arrive with the control plane.
//!
//! Exit codes follow CONTRACT.md §8: 0 ok, 2 usage, 4 error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use zest_runtime::{Node, NodeConfig, ReloadOptions, Status};

#[derive(Debug, Parser)]
#[command(name = "zest", version, about = "Hot code upgrade for WebAssembly modules")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load every .wat and .wasm file in DIR as a module (named after its file) and
    /// call MODULE.FUNCTION with JSON args; prints the output.
    Run {
        dir: PathBuf,
        module: String,
        function: String,
        /// JSON arguments (default: null).
        #[arg(default_value = "null")]
        args: String,
        /// Data directory for the compile cache.
        #[arg(long, default_value = ".zest")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { dir, module, function, args, data_dir } => {
            match run(&dir, &module, &function, &args, data_dir) {
                Ok(output) => {
                    println!("{output}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(4)
                }
            }
        }
    }
}

fn run(dir: &Path, module: &str, function: &str, args: &str, data_dir: PathBuf) -> anyhow::Result<String> {
    let node = Node::new(NodeConfig { data_dir: Some(data_dir), ..NodeConfig::default() })?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the module directory {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    let mut loaded = 0;
    for path in entries {
        let is_module = matches!(path.extension().and_then(|e| e.to_str()), Some("wat" | "wasm"));
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).filter(|_| is_module) else {
            continue;
        };
        let result = node.load_module(name, &path, &ReloadOptions::default());
        if result.status() == Status::Error {
            let failure = &result.errors[0];
            bail!("{}: {} ({})", path.display(), failure.message, failure.reason);
        }
        loaded += 1;
    }
    if loaded == 0 {
        bail!("{} holds no .wat or .wasm module", dir.display());
    }
    Ok(node.call(module, function, args)?)
}
