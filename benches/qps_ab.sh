#!/usr/bin/env bash
# Queries answered per second, three nodes interleaved round by round: this checkout's dhtnode,
# another dhtnode binary (OLD, e.g. one built at an earlier commit) and libtorrent 2.0, with the
# generator and settings of benches/qps_compare.sh; prints per-round figures and ratios.
#
#   benches/qps_ab.sh ROUNDS SECONDS OLD_DHTNODE_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-4}; old=${3:?usage: qps_ab.sh ROUNDS SECONDS OLD_DHTNODE_BINARY}
cargo build --release --quiet
cargo bench --bench loadgen --no-run --quiet 2>/dev/null
lg=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
state=$(mktemp -d); state2=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$state" "$state2"; }
trap cleanup EXIT
target/release/dhtnode bootstrap --bind 127.83.0.1:6881 --bootstrap none --state-dir "$state" --status-interval 3600 --ip-rate-limit 0 --reply-rate-limit 0 >/dev/null 2>&1 & pids+=($!)
$old bootstrap --bind 127.85.0.1:6881 --bootstrap none --state-dir "$state2" --status-interval 3600 --ip-rate-limit 0 --reply-rate-limit 0 >/dev/null 2>&1 & pids+=($!)
mkfifo "$state/lt.in"
/usr/bin/python3 tests/interop/lt_dht.py --single-node --base-ip 127.84.0.1 --port 6881 <"$state/lt.in" >"$state/lt.out" 2>&1 & pids+=($!)
exec 3>"$state/lt.in"
for _ in $(seq 1 100); do grep -q '"ready": *true' "$state/lt.out" 2>/dev/null && break; sleep 0.1; done
run() { "$lg" --target "$1" --sources 16 --inflight 16 --duration "$secs" --warmup 1 --read-only --json | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["qps_median"])'; }
for r in $(seq 1 "$rounds"); do
  a=$(run 127.83.0.1:6881); c=$(run 127.85.0.1:6881); b=$(run 127.84.0.1:6881)
  echo "round $r: new $a old $c lt $b  new/lt $(python3 -c "print(round($a/$b,2))") old/lt $(python3 -c "print(round($c/$b,2))")"
done
