#!/usr/bin/env bash
# A soak run of MINUTES against a release build of `zest serve`: concurrent
# calls over HTTP and WebSocket, process messages, and a reload every 50 ms
# (new builds, state migrations, failing builds, extension reloads). Prints
# calls, failed calls, messages lost or duplicated, reloads, and RSS and open
# descriptors after a warm-up (a quarter of the run, at most 3 min) and at
# the end; exits non-zero if anything failed, was lost or duplicated, or if
# RSS or descriptors grew over 1.1×.
# The test command runs a 15-second smoke of the same test on a debug build.
#
#   scripts/soak.sh 10
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] && [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ] || { echo "usage: scripts/soak.sh MINUTES" >&2; exit 2; }
echo "==> building (release)" >&2
cargo test --release -q -p zest --test soak --no-run
echo "==> soaking for $1 min" >&2
ZEST_SOAK_SECONDS=$(($1 * 60)) cargo test --release -q -p zest --test soak -- --nocapture 2>&1 \
  | grep -v '^admin token:'
