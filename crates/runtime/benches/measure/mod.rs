//! Timing helpers shared by the call benchmarks (`components.rs`,
//! `rust_component.rs`).

use std::time::Instant;

/// The middle sample (sorts `samples`).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The median, over 5 rounds, of the time one call of `call` takes, in ns.
pub fn per_call(rounds: usize, mut call: impl FnMut()) -> f64 {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..rounds {
            call();
        }
        samples.push(started.elapsed().as_secs_f64() * 1e9 / rounds as f64);
    }
    median(&mut samples)
}
