#!/bin/sh
# Builds this app's modules into build/ with a wasm32-capable rustc: the one on
# the PATH when it has the wasm32 target (rustup), else Debian's /usr/bin/rustc
# (1.63: `apt-get install rustc libstd-rust-dev-wasm32 lld-14`). `RUSTC`
# overrides the choice; `ZEST_GUEST_SRC` names the guest SDK's sources
# (default: this repository's crates/guest/src).
#
#   build/greeter.wasm          greeter.rs, a plugin in the SDK's component form
#   build/tally-component.wasm  tally.rs, the tally process in component form
#   build/tally-core.wasm       ../guests/tally.rs, the same process as a core module
#   build/tally.wasm            what the app's `tally` module runs: the core
#                               build at first (copy either over it to switch)
#
# The node makes the component-form builds components when it loads them.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
sdk=${ZEST_GUEST_SRC:-$here/../../crates/guest/src}
if [ -z "${RUSTC:-}" ]; then
  RUSTC=/usr/bin/rustc
  if sysroot=$(rustc --print sysroot 2>/dev/null) && [ -d "$sysroot/lib/rustlib/wasm32-unknown-unknown" ]; then
    RUSTC=rustc
  fi
fi
flags="--edition 2021 --target wasm32-unknown-unknown -C opt-level=s -C codegen-units=1 -C panic=abort -C strip=symbols"
out=$here/build
mkdir -p "$out"
# shellcheck disable=SC2086 # the flags are words
"$RUSTC" $flags --crate-type rlib --crate-name zest_guest -o "$out/libzest_guest.rlib" "$sdk/lib.rs"
build() { # SOURCE OUTPUT
  # shellcheck disable=SC2086
  "$RUSTC" $flags --crate-type cdylib --extern "zest_guest=$out/libzest_guest.rlib" -o "$out/$2" "$1"
}
build "$here/greeter.rs" greeter.wasm
build "$here/tally.rs" tally-component.wasm
build "$here/../guests/tally.rs" tally-core.wasm
[ -f "$out/tally.wasm" ] || cp "$out/tally-core.wasm" "$out/tally.wasm"
echo "built $(ls "$out" | grep -c '\.wasm$') modules into $out"
