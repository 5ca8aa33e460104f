//! `zest-fuzz TARGET SECONDS [SEED]`: the mutation driver on one target (or
//! `all`), for machines without AFL++. Prints what it ran; on a failure,
//! writes the input to `fuzz/crashes/TARGET/` and exits 1.

use std::process::ExitCode;
use std::time::Duration;

use zest_fuzz::{drive, TARGETS};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: zest-fuzz TARGET|all SECONDS [SEED]";
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
