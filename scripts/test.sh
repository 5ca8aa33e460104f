#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need when it
# is missing (a wasm32-capable rustc for the guest SDK tests, etcd for the
# cluster tests, Chromium and its WebDriver for the dashboard's browser test,
# Prometheus and promtool for the metrics tests, componentize-py and
# componentize-qjs for the JavaScript and Python extension tests), then checks
# formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

has_wasm32_rustc() {
  local rustc sysroot
  for rustc in rustc /usr/bin/rustc; do
    sysroot=$("$rustc" --print sysroot 2>/dev/null) || continue
    [ -d "$sysroot/lib/rustlib/wasm32-unknown-unknown/lib" ] && return 0
  done
  return 1
}

packages=()
if ! has_wasm32_rustc; then
  packages+=(rustc libstd-rust-dev-wasm32 lld-14)
fi
if [ ! -x /usr/bin/etcd ]; then
  packages+=(etcd-server)
fi
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  packages+=(chromium chromium-driver)
fi
if [ ! -x /usr/bin/promtool ] || [ ! -x /usr/bin/prometheus ]; then
  packages+=(prometheus)
fi
if [ ${#packages[@]} -gt 0 ]; then
  echo "==> installing what the tests need (Debian: ${packages[*]})"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}"
fi

# The toolchains of .py and .js extensions (docs/abi.md, "JavaScript and
# Python extensions"): pip's --user scripts go to ~/.local/bin, which the node
# finds on the PATH.
export PATH="$HOME/.local/bin:$PATH"
if ! command -v componentize-py >/dev/null; then
  echo "==> installing componentize-py (pip)"
  pip install --user --quiet componentize-py==0.25.1
fi
if ! command -v componentize-qjs >/dev/null; then
  echo "==> installing componentize-qjs (npm)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO npm install -g --silent componentize-qjs@0.4.5
fi

# A one-off build gains nothing from incremental caches, which would double the
# target directory's size on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> cargo test"
# Every test binary runs even when one fails, so a failed run names every failure.
cargo test --workspace --no-fail-fast
