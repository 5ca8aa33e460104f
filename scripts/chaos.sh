#!/usr/bin/env bash
# Random fault schedules for MINUTES against a cluster of three release-built
# `zest serve` members and a three-member etcd, every member's links through
# fault proxies (crates/cli/tests/chaos.rs): etcd leader or follower killed
# mid-reload, a member cut from etcd, from its peers or both (before prepare,
# between prepare and commit, after commit), slow links, the coordinator
# SIGSTOPped after its commit, a member SIGSTOPped past its lease. Prints the
# checker's verdict — schedules run, faults by kind, reloads by outcome,
# violations, longest convergence after a heal — and exits non-zero on any
# violation. The test command runs a 60-second smoke of the same test on a
# debug build.
#
#   scripts/chaos.sh 10                 # 10 minutes, a seed from the clock
#   ZEST_CHAOS_SEED=42 scripts/chaos.sh 10
#   ZEST_CHAOS_KINDS=cut_etcd,pause_member scripts/chaos.sh 5
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] && [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ] || { echo "usage: scripts/chaos.sh MINUTES" >&2; exit 2; }
[ -x /usr/bin/etcd ] || { echo "chaos.sh needs /usr/bin/etcd (Debian: apt-get install etcd-server)" >&2; exit 2; }
echo "==> building (release)" >&2
cargo test --release -q -p zest --test chaos --no-run
echo "==> chaos for $1 min (members' logs: target/chaos.log)" >&2
mkdir -p target
ZEST_CHAOS_SECONDS=$(($1 * 60)) cargo test --release -q -p zest --test chaos -- --nocapture \
  2> >(tee target/chaos.log | grep '^chaos:' >&2)
