//! `zest-fuzz TARGET SECONDS [SEED]`: the mutation driver on one target (or
//! `all`), for machines without AFL++. Prints what it ran; on a failure,
//! writes the input to `fuzz/crashes/TARGET/` and exits 1.
//!
//! `zest-fuzz TARGET --replay FILE...`: runs the target once on each file
//! (a crash AFL++ found, say) and tells which fail and why.

use std::process::ExitCode;
use std::time::Duration;

use zest_fuzz::{drive, TARGETS};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: zest-fuzz TARGET|all SECONDS [SEED]\n       zest-fuzz TARGET --replay FILE...";
    if args.get(1).map(String::as_str) == Some("--replay") {
        return replay(&args[0], &args[2..]);
    }
    let (Some(which), Some(seconds)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let Ok(seconds) = seconds.parse::<u64>() else {
        eprintln!("SECONDS must be a whole number, not {seconds:?}\n{usage}");
        return ExitCode::from(2);
    };
    let seed = match args.get(2).map(|s| s.parse::<u64>()) {
        None => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        }
        Some(Ok(seed)) => seed,
        Some(Err(_)) => {
            eprintln!("SEED must be a whole number\n{usage}");
            return ExitCode::from(2);
        }
    };
    let chosen: Vec<_> = TARGETS.iter().filter(|(name, _)| which == "all" || name == which).collect();
    if chosen.is_empty() {
        let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("no target {which:?}; the targets are: {}", names.join(", "));
        return ExitCode::from(2);
    }
    // A target's panics are caught and reported below, once.
    std::panic::set_hook(Box::new(|_| {}));
    for (name, target) in chosen {
        let corpus = match drive::read_corpus(&drive::corpus_dir(name)) {
            Ok(corpus) => corpus,
            Err(err) => {
                eprintln!("{err}");
                return ExitCode::from(2);
            }
        };
        eprintln!("==> {name}: {} corpus inputs, mutating for {seconds} s (seed {seed})", corpus.len());
        match drive::run(*target, name, &corpus, Duration::from_secs(seconds), seed) {
            Ok(run) => println!(
                "{name}: {} runs in {:.1} s ({:.0}/s), 0 failures",
                run.executions,
                run.elapsed.as_secs_f64(),
                run.executions as f64 / run.elapsed.as_secs_f64().max(1e-9)
            ),
            Err(found) => {
                let dir = drive::corpus_dir(name).join("../../crashes").join(name);
                let file = dir.join(format!("seed-{seed}"));
                let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, &found.input));
                println!("{name}: FAILED: {}", found.message);
                match saved {
                    Ok(()) => println!("the input is in {}", file.display()),
                    Err(err) => println!("the input ({:02x?}) could not be saved: {err}", found.input),
                }
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

fn replay(name: &str, files: &[String]) -> ExitCode {
    let Some(target) = zest_fuzz::target(name) else {
        eprintln!("no target {name:?}");
        return ExitCode::from(2);
    };
    if files.is_empty() {
        eprintln!("--replay needs at least one file");
        return ExitCode::from(2);
    }
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = 0;
    for file in files {
        let input = match std::fs::read(file) {
            Ok(input) => input,
            Err(err) => {
                eprintln!("cannot read {file}: {err}");
                return ExitCode::from(2);
            }
        };
        match drive::run(target, name, &[input], Duration::ZERO, 1) {
            Ok(_) => println!("{file}: passes"),
            Err(found) => {
                failed += 1;
                println!("{file}: FAILS: {}", found.message);
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
