//! The fuzz smoke of the test command: every target runs on its whole corpus
//! (`fuzz/corpus/TARGET/`), then on mutations of it for a short while. A
//! failure prints the input that broke the target, to add to the corpus once
//! fixed. Longer runs: `scripts/fuzz.sh TARGET SECONDS`.

use std::time::Duration;

use zest_fuzz::{drive, TARGETS};

/// Mutation time per target; `ZEST_FUZZ_SMOKE_MS` changes it.
fn budget() -> Duration {
    let ms = std::env::var("ZEST_FUZZ_SMOKE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500);
    Duration::from_millis(ms)
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    let mut report = Vec::new();
    for (index, (name, target)) in TARGETS.iter().enumerate() {
        let corpus = drive::read_corpus(&drive::corpus_dir(name)).unwrap_or_else(|err| panic!("{err}"));
        assert!(corpus.len() >= 3, "the corpus of {name} has {} inputs; keep at least 3 seeds", corpus.len());
        match drive::run(*target, name, &corpus, budget(), 0x5eed + index as u64) {
            Ok(run) => report.push(format!("{name}: {} corpus inputs, {} runs", run.corpus, run.executions)),
            Err(found) => panic!(
                "target {name} broke on input {:?} (bytes {:02x?}): {}",
                String::from_utf8_lossy(&found.input),
                found.input,
                found.message
            ),
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// The targets check what they promise: a property broken on purpose is
/// caught (so a smoke that passes means something).
#[test]
fn a_broken_property_is_reported_with_its_input() {
    fn picky(data: &[u8]) {
        assert!(!data.contains(&b'!'), "no bangs");
    }
    let corpus = vec![b"hello".to_vec()];
    let found = drive::run(picky, "none", &corpus, Duration::from_secs(5), 7).expect_err("a bang is found");
    assert!(found.input.contains(&b'!'), "{found:?}");
    assert_eq!(found.message, "no bangs");
}

#[test]
fn the_guest_json_target_refuses_what_serde_json_refuses() {
    let target = zest_fuzz::target("guest_json").expect("the target exists");
    // Inputs that are not JSON never reach the properties' panics.
    for input in ["{\"a\":1,}", "[1 2]", "\"\\ud800\"", "01", "{\"a\":1}"] {
        target(input.as_bytes());
    }
    assert!(zest_fuzz::target("no_such_target").is_none());
}

/// The `wat_splice` target reaches the splice: a fifth or more of the edits
/// it draws are spliced, so the comparison it makes is not of two whole parses.
#[test]
fn the_wat_splice_target_splices_a_fifth_or_more_of_its_edits() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let (mut spliced, mut edits) = (0, 0);
    for _ in 0..300 {
        let input: Vec<u8> = (0..600)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let (s, e) = zest_fuzz::wat_splice_count(&input);
        spliced += s;
        edits += e;
    }
    assert!(edits > 300, "{edits} edits drawn");
    assert!(spliced * 5 > edits as u64, "{spliced} of {edits} edits spliced");
}
