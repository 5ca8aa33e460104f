#!/usr/bin/env bash
# Fuzzes one target of crates/fuzz (or all of them, one after another) for
# SECONDS each. With AFL++ set up (`cargo install cargo-afl && cargo afl config
# --build`) the run is coverage-guided; without it, the mutation driver of
# crates/fuzz runs instead (say which with ZEST_FUZZ_DRIVER=afl|mutate).
# Prints runs and crashes per target; a crashing input is copied to
# fuzz/crashes/TARGET/ and the script exits 1.
#
#   scripts/fuzz.sh rpc_frame 600
#   scripts/fuzz.sh all 300
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(manifest node_config reload_params rpc_frame wasm_raw wasm_smith wasm_split wasm_cut wat_splice guest_json extension_path wit_json)
usage="usage: scripts/fuzz.sh TARGET|all SECONDS  (targets: ${targets[*]})"
[ $# -eq 2 ] || { echo "$usage" >&2; exit 2; }
which=$1 seconds=$2
[[ $seconds =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || { echo "SECONDS must be a positive whole number, not '$seconds'" >&2; exit 2; }
if [ "$which" = all ]; then
  chosen=("${targets[@]}")
elif [[ " ${targets[*]} " == *" $which "* ]]; then
  chosen=("$which")
else
  echo "no target '$which'; $usage" >&2
  exit 2
fi

driver=${ZEST_FUZZ_DRIVER:-}
case "$driver" in
  "") if cargo afl --version >/dev/null 2>&1; then driver=afl; else
        driver=mutate
        echo "==> AFL++ is not set up here (cargo install cargo-afl && cargo afl config --build)" >&2
      fi ;;
  afl|mutate) ;;
  *) echo "ZEST_FUZZ_DRIVER is afl or mutate, not '$driver'" >&2; exit 2 ;;
esac

if [ "$driver" = mutate ]; then
  echo "==> the mutation driver (not coverage-guided)" >&2
  cargo build --release -q -p zest-fuzz --bin zest-fuzz
  status=0
  for target in "${chosen[@]}"; do
    target/release/zest-fuzz "$target" "$seconds" || status=1
  done
  exit $status
fi

echo "==> building the AFL++ harness (fuzz/afl; the first build takes minutes)" >&2
cargo afl build --release -q --manifest-path fuzz/afl/Cargo.toml
harness=fuzz/afl/target/release/zest-afl
status=0
for target in "${chosen[@]}"; do
  out=target/fuzz/afl/$target-$(date +%Y%m%d-%H%M%S)
  mkdir -p "$out"
  echo "==> $target: AFL++ for $seconds s (findings in $out)" >&2
  # The wasm targets run guest code with a 100 ms call deadline: 2 s per input
  # is ample; anything slower is a hang to look at.
  AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SUPPRESS_LOGS=1 \
    cargo afl fuzz -i "fuzz/corpus/$target" -o "$out" -V "$seconds" -t 2000 -m none -- "$harness" "$target" \
    >"$out/afl.log" 2>&1 || { echo "AFL++ stopped with an error; see $out/afl.log" >&2; tail -20 "$out/afl.log" >&2; status=1; continue; }
  stats=$out/default/fuzzer_stats
  value() { awk -F' *: *' -v key="$1" '$1 == key { print $2 }' "$stats"; }
  crashes=$(value saved_crashes)
  hangs=$(value saved_hangs)
  echo "$target: $(value execs_done) runs in $(value run_time) s ($(value execs_per_sec)/s), corpus $(value corpus_count), edges $(value edges_found), crashes $crashes, hangs $hangs"
  if [ "${crashes:-0}" -gt 0 ]; then
    mkdir -p "fuzz/crashes/$target"
    find "$out/default/crashes" -type f -name 'id:*' -exec cp {} "fuzz/crashes/$target/" \;
    echo "$target: crashing inputs copied to fuzz/crashes/$target/" >&2
    status=1
  fi
done
exit $status
