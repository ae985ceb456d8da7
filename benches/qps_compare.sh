#!/usr/bin/env bash
# Queries answered per second: dhtnode vs libtorrent 2.0 (python3-libtorrent), same machine,
# same load generator (benches/loadgen.rs), interleaved rounds; prints per-round figures, the
# medians and the ratio. Both nodes start with empty routing tables and the load is sent with
# ro=1 (BEP 43) so the sources never enter either table; libtorrent's DHT rate limits and
# upload limit are raised by the harness (tests/interop/lt_dht.py --single-node).
#
#   benches/qps_compare.sh [ROUNDS] [SECONDS]       (defaults: 5 rounds of 5 s)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-5}
cargo build --release --quiet
cargo bench --bench loadgen --no-run --quiet 2>/dev/null
lg=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
state=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$state"; }
trap cleanup EXIT

target/release/dhtnode bootstrap --bind 127.83.0.1:6881 --bootstrap none --state-dir "$state" \
  --status-interval 3600 --ip-rate-limit 0 --reply-rate-limit 0 >/dev/null 2>&1 &
pids+=($!)
# The harness exits when its stdin closes: feed it from a fifo this script holds open.
mkfifo "$state/lt.in"
/usr/bin/python3 tests/interop/lt_dht.py --single-node --base-ip 127.84.0.1 --port 6881 \
  <"$state/lt.in" >"$state/lt.out" 2>&1 &
pids+=($!)
exec 3>"$state/lt.in"
for _ in $(seq 1 100); do grep -q '"ready": *true' "$state/lt.out" 2>/dev/null && break; sleep 0.1; done
grep -q '"ready": *true' "$state/lt.out" || { echo "libtorrent harness did not start: $(cat "$state/lt.out")" >&2; exit 1; }

run() { "$lg" --target "$1" --sources 16 --inflight 16 --duration "$secs" --warmup 1 --read-only --json | tail -1; }
ours=(); theirs=()
for r in $(seq 1 "$rounds"); do
  a=$(run 127.83.0.1:6881 | python3 -c 'import json,sys; print(json.load(sys.stdin)["qps_median"])')
  b=$(run 127.84.0.1:6881 | python3 -c 'import json,sys; print(json.load(sys.stdin)["qps_median"])')
  echo "round $r: dhtnode $a/s, libtorrent $b/s" >&2
  ours+=("$a"); theirs+=("$b")
done
python3 - "${ours[*]}" "${theirs[*]}" <<'PY'
import json, statistics, sys
o = [int(x) for x in sys.argv[1].split()]
t = [int(x) for x in sys.argv[2].split()]
mo, mt = statistics.median(o), statistics.median(t)
print(json.dumps({"dhtnode_qps": o, "libtorrent_qps": t, "dhtnode_median": mo,
                  "libtorrent_median": mt, "ratio": round(mo / mt, 2) if mt else None}))
PY
