#!/usr/bin/env bash
# Soak test (reliability item 11): a release server under 100 clients with
# steady traffic and one reconnect a second for DURATION seconds (default 600).
# Prints a sample every SAMPLE seconds (time, server RSS, server fds, messages
# ok/shown, errors, reconnects, worst reply latency) and a verdict: memory flat
# after the warm-up, descriptors flat and back to the start, zero errors, no
# warning in the server's log, and a clean exit (0) on SIGTERM.
#
#   scripts/soak.sh                      # 10 minutes
#   DURATION=60 scripts/soak.sh          # a quick one
#
# Other knobs (see examples/soak.rs): WARMUP SAMPLE CLIENTS RATE BROADCAST_EVERY.
# The server's log (warnings only) is kept in $SOAK_LOG (default
# target/soak-server.log).
set -euo pipefail
cd "$(dirname "$0")/.."

export DURATION="${DURATION:-600}"
LOG="${SOAK_LOG:-target/soak-server.log}"

echo "== building (release)"
cargo build --release --locked --bin server --example soak

OUT="$(mktemp)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -f "$OUT"
}
trap cleanup EXIT

mkdir -p "$(dirname "$LOG")"
target/release/server 0 --bind 127.0.0.1 -q >"$OUT" 2>"$LOG" &
SERVER_PID=$!
ADDR=""
for _ in $(seq 100); do
  ADDR="$(sed -n 's/^listening on //p' "$OUT")"
  [ -n "$ADDR" ] && break
  sleep 0.1
done
if [ -z "$ADDR" ]; then
  echo "soak: the server did not start; its log:" >&2
  cat "$LOG" >&2
  exit 1
fi
echo "== server pid $SERVER_PID on $ADDR; soaking for ${DURATION} s"

status=0
cargo run --release --locked --quiet --example soak -- "$ADDR" "$SERVER_PID" || status=$?

echo "== SIGTERM to the server"
kill -TERM "$SERVER_PID"
server_status=0
wait "$SERVER_PID" || server_status=$?
SERVER_PID=""
warnings="$(grep -c -E 'WARN|ERROR' "$LOG" || true)"
echo "soak: server exit status $server_status; $warnings warning/error lines in $LOG"
if [ "$warnings" -gt 0 ]; then
  grep -E 'WARN|ERROR' "$LOG" | head -20
fi

if [ "$status" -eq 0 ] && [ "$server_status" -eq 0 ] && [ "$warnings" -eq 0 ]; then
  echo "soak: PASS"
else
  echo "soak: FAIL"
  exit 1
fi
