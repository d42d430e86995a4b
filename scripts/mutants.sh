#!/usr/bin/env bash
# Mutation testing with cargo-mutants: each mutant changes one operator or
# return value in src/, rebuilds and reruns the tests; a mutant the tests do
# not notice ("missed") is a line no test protects. Too slow for .ci/run;
# RELIABILITY.md has the figures.
#
#   scripts/mutants.sh                 # every file under src/
#   scripts/mutants.sh src/router.rs   # only these files
#
# Environment:
#   MUTANTS_TIMEOUT  seconds a mutant's test run may take before it counts as
#                    a timeout, a hang the tests should report (default 120)
#   MUTANTS_JOBS     mutants built and tested at once (default: cargo-mutants')
#   MUTANTS_ARGS     extra cargo-mutants flags, e.g. to reuse this tree's build
#                    and run only the tests that speak for one file:
#                    MUTANTS_ARGS="--in-place -- --test tests -- codec::"
#                    Most tests wait on sockets and child processes, not the
#                    CPU: "-- --test-threads=16" after the filter runs them
#                    several times faster on 2 cores.
# Exclusions, each with its reason, are in .cargo/mutants.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_MUTANTS_VERSION=27.1.0
if ! cargo mutants --version >/dev/null 2>&1; then
  echo "== installing cargo-mutants $CARGO_MUTANTS_VERSION"
  cargo install cargo-mutants --version "$CARGO_MUTANTS_VERSION" --locked
fi

files=()
if [ -n "${MUTANTS_JOBS:-}" ]; then
  files+=(--jobs "$MUTANTS_JOBS")
fi
for f in "$@"; do
  files+=(--file "$f")
done
read -r -a extra <<<"${MUTANTS_ARGS:-}"

# Debug info only slows every mutant's link; nothing here reads it. (This
# changes the build's fingerprint: an --in-place run rebuilds once.)
export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-0}
export CARGO_PROFILE_TEST_DEBUG=${CARGO_PROFILE_TEST_DEBUG:-0}

out=target/mutants
mkdir -p "$out"
status=0
cargo mutants --no-shuffle --output "$out" \
  --timeout "${MUTANTS_TIMEOUT:-120}" \
  "${files[@]}" "${extra[@]}" || status=$?

# Per-file counts from the outcomes cargo-mutants wrote.
if [ ! -f "$out/mutants.out/outcomes.json" ]; then
  echo "cargo-mutants wrote no outcomes (exit $status)" >&2
  exit "$status"
fi
python3 - "$out/mutants.out/outcomes.json" <<'PY'
import collections, json, sys
data = json.load(open(sys.argv[1]))
counts = collections.defaultdict(collections.Counter)
for o in data["outcomes"]:
    scenario = o["scenario"]
    if scenario == "Baseline" or not isinstance(scenario, dict):
        continue
    mutant = scenario["Mutant"]
    summary = o["summary"]
    name = {"CaughtMutant": "caught", "MissedMutant": "missed", "Unviable": "unviable",
            "Timeout": "timeout"}.get(summary, summary.lower())
    counts[mutant["file"]][name] += 1
kinds = ["caught", "missed", "unviable", "timeout"]
print(f"{'file':32} " + " ".join(f"{k:>8}" for k in kinds))
total = collections.Counter()
for file in sorted(counts):
    total.update(counts[file])
    print(f"{file:32} " + " ".join(f"{counts[file][k]:>8}" for k in kinds))
print(f"{'total':32} " + " ".join(f"{total[k]:>8}" for k in kinds))
PY
echo "missed mutants: $out/mutants.out/missed.txt; timeouts: $out/mutants.out/timeout.txt"
# cargo-mutants exits 2 when mutants were missed, 3 on timeouts.
exit "$status"
