#!/usr/bin/env bash
# Regenerates every committed simulation result and the result tables of
# simulations/README.md from them:
#
#   simulations/regenerate.sh                 # every scenario, one after another
#   simulations/regenerate.sh small sybil     # only these (the tables use every report)
#   simulations/regenerate.sh --tables-only   # rewrite the README tables from the reports
#
# Each report.json records the commit the binary was built from, whether its code differed
# from that commit (`provenance.dirty`), the machine and its load at start and end. Commit the
# code first so the reports name a commit that holds it.
set -euo pipefail
cd "$(dirname "$0")/.."
# three-million is not in the default list: at c9746e6 it builds its 3M tables but runs this
# 24 GiB machine out of memory 950 s into the simulated settle (~23.3 GB in use); run it
# by name on a machine with more.
all=(small perfect-100k join-100k join-100k-1thread lossy-100k churn-100k churn-100k-1thread
     stock-vs-tuned sybil million)
if [[ "${1:-}" == "--tables-only" ]]; then
  exec python3 simulations/tables.py
fi
if [[ -n "$(git status --porcelain --untracked-files=no -- src build.rs Cargo.toml Cargo.lock)" ]]; then
  echo "warning: the code has uncommitted changes; the reports will say dirty" >&2
fi
# DHTNODE_BIN=path runs that binary instead of building (e.g. a copy, so that rebuilding
# the tree during a long run cannot swap the binary between scenarios).
bin="${DHTNODE_BIN:-./target/release/dhtnode}"
[[ -z "${DHTNODE_BIN:-}" ]] && cargo build --release
scenarios=("$@")
[[ ${#scenarios[@]} -eq 0 ]] && scenarios=("${all[@]}")
for s in "${scenarios[@]}"; do
  echo "== $s ($(date -u +%H:%M:%S))" >&2
  mkdir -p "simulations/results/$s"
  if [[ "$s" == *-1thread ]]; then
    # The same network on one thread: the measured speedup, and the proof that the
    # thread count changes no figure (tables.py compares the two runs' outputs).
    "$bin" simulate "simulations/${s%-1thread}.toml" --threads 1 --out "simulations/results/$s" >/dev/null
  else
    "$bin" simulate "simulations/$s.toml" --out "simulations/results/$s" >/dev/null
  fi
done
python3 simulations/tables.py
