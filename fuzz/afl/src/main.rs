//! `zest-afl TARGET`: reads inputs as AFL++ hands them over (persistent
//! mode) and runs the zest fuzz target of that name on each.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = zest_fuzz::target(&name) else {
        let names: Vec<&str> = zest_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: zest-afl TARGET (one of: {})", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
