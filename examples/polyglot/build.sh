#!/bin/sh
# Builds this app's modules into build/, each with its language's own tool:
#
#   build/stats.wasm             stats.rs  rustc for wasm32, the guest SDK
#   build/words.wasm             words.py  componentize-py, world `plugin`
#   build/fmt.wasm               fmt.js    componentize-qjs, world `plugin`
#   build/tally-rust.wasm        tally.rs  (world `server`, from the SDK)
#   build/tally-python.wasm      tally.py  componentize-py, world `server`
#   build/tally-javascript.wasm  tally.js  componentize-qjs, world `server`
#   build/tally.wasm             the one `tally.lang` names (rust, python or
#                                javascript): what the process runs
#
# A build newer than its source (and this script) is kept, so a run after an
# edit of `tally.lang` only copies. Tools: a wasm32-capable rustc (the one on
# the PATH when it has the target, else Debian's /usr/bin/rustc 1.63:
# `apt-get install rustc libstd-rust-dev-wasm32 lld-14`; `RUSTC` overrides),
# componentize-py (`pip install componentize-py`) and componentize-qjs
# (`npm install -g componentize-qjs`). `ZEST_GUEST_SRC` names the guest SDK's
# sources and `ZEST_WIT` the directory of zest.wit (defaults: this
# repository's crates/guest/src and crates/runtime/wit).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
sdk=${ZEST_GUEST_SRC:-$here/../../crates/guest/src}
wit=${ZEST_WIT:-$here/../../crates/runtime/wit}
out=$here/build
mkdir -p "$out"

lang=$(tr -d ' \n' < "$here/tally.lang")
case $lang in
  rust | python | javascript) ;;
  *) echo "tally.lang says '$lang': write rust, python or javascript" >&2; exit 1 ;;
esac
for tool in componentize-py componentize-qjs; do
  command -v $tool >/dev/null || { echo "$tool is not on the PATH (see build.sh)" >&2; exit 1; }
done

if [ -z "${RUSTC:-}" ]; then
  RUSTC=/usr/bin/rustc
  if sysroot=$(rustc --print sysroot 2>/dev/null) && [ -d "$sysroot/lib/rustlib/wasm32-unknown-unknown" ]; then
    RUSTC=rustc
  fi
fi
flags="--edition 2021 --target wasm32-unknown-unknown -C opt-level=s -C codegen-units=1 -C panic=abort -C strip=symbols"

# stale OUTPUT SOURCE: true when OUTPUT is missing or older than SOURCE or this script.
stale() { [ ! -f "$out/$1" ] || [ "$2" -nt "$out/$1" ] || [ "$0" -nt "$out/$1" ]; }

rust() { # SOURCE OUTPUT
  if stale libzest_guest.rlib "$sdk/lib.rs" || stale libzest_guest.rlib "$sdk/component.rs"; then
    # shellcheck disable=SC2086 # the flags are words
    "$RUSTC" $flags --crate-type rlib --crate-name zest_guest -o "$out/libzest_guest.rlib" "$sdk/lib.rs"
  fi
  if stale "$2" "$here/$1" || [ "$out/libzest_guest.rlib" -nt "$out/$2" ]; then
    # shellcheck disable=SC2086
    "$RUSTC" $flags --crate-type cdylib --extern "zest_guest=$out/libzest_guest.rlib" -o "$out/$2" "$here/$1"
    echo "built $2 from $1"
  fi
}
python() { # MODULE WORLD OUTPUT
  if stale "$3" "$here/$1.py"; then
    componentize-py -d "$wit" -w "$2" componentize -p "$here" "$1" -o "$out/$3" > "$out/$3.log" \
      || { cat "$out/$3.log" >&2; exit 1; }
    echo "built $3 from $1.py"
  fi
}
javascript() { # FILE WORLD OUTPUT
  if stale "$3" "$here/$1"; then
    componentize-qjs --sync -w "$wit" -n "$2" -j "$here/$1" -o "$out/$3" > "$out/$3.log" \
      || { cat "$out/$3.log" >&2; exit 1; }
    echo "built $3 from $1"
  fi
}

rust stats.rs stats.wasm
python words plugin words.wasm
javascript fmt.js plugin fmt.wasm
rust tally.rs tally-rust.wasm
python tally server tally-python.wasm
javascript tally.js server tally-javascript.wasm
cp "$out/tally-$lang.wasm" "$out/tally.wasm"
echo "tally runs $lang (tally.lang)"
