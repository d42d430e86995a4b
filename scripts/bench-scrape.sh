#!/usr/bin/env bash
# 1:1 throughput with N idle clients held (default 4,000: the idle workload
# takes exhibitor ids first, and the 1:1 pair needs one), with and without a
# scraper reading /stats (WHAT=metrics: /metrics) every 100 ms, alternated
# REPS times. Server on CPU 0, generator and scraper on CPU 1. Build first:
#   cargo build --release --bin server --bench relay
#   WHAT=metrics N=4000 REPS=5 scripts/bench-scrape.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${WHAT:-stats}
N=${N:-4000}
REPS=${REPS:-5}
relay=""
for f in target/release/deps/relay-*; do
  case $f in *.d) continue ;; esac
  if [ -z "$relay" ] || [ "$f" -nt "$relay" ]; then relay=$f; fi
done
[ -x "$relay" ] || { echo "bench-scrape: build the relay bench first" >&2; exit 1; }
out=$(mktemp)
taskset -c 0 target/release/server 0 --bind 127.0.0.1 -q --max-inflight 65535 \
  --max-queue 536870912 >"$out" 2>/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 50); do
  if grep -q '^listening on ' "$out"; then break; fi
  sleep 0.1
done
port=$(sed -n '1s/^listening on .*:\([0-9]*\)$/\1/p' "$out")
taskset -c 1 "$relay" --target evchat --addr "127.0.0.1:$port" --idle "$N" --duration 600 \
  >/dev/null 2>&1 &
idle=$!
trap 'kill "$server" "$idle" 2>/dev/null || true; rm -f "$out"' EXIT
sleep 4 # the idle connections open (a few per millisecond)
run() {
  taskset -c 1 "$relay" --target evchat --addr "127.0.0.1:$port" --cpu 1 --mode unicast \
    --emitters 1 --exhibitors 1 --size 32 --duration 3 --warmup 1 --json 2>/dev/null |
    python3 -c 'import json, sys; print(round(json.load(sys.stdin)["delivered_per_s"]))'
}
for rep in $(seq "$REPS"); do
  quiet=$(run)
  (while :; do taskset -c 1 curl -s -o /dev/null "http://127.0.0.1:$port/$WHAT"; sleep 0.1; done) &
  scraper=$!
  scraped=$(run)
  kill "$scraper"
  wait "$scraper" 2>/dev/null || true
  echo "rep $rep: quiet $quiet, scraping /$WHAT every 100 ms $scraped, ratio $(
    python3 -c "print(round($scraped / $quiet, 3))")"
done
