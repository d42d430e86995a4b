#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60), one after the
# other, on the stable toolchain. Exits non-zero if any target crashes; the
# crashing input is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS]
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/) plus
# what earlier runs found (fuzz/corpus/<target>/, ignored by git); new
# inputs go to the latter. Environment:
#   FUZZ_TARGETS   targets to run (default: all of them)
#   FUZZ_ARGS      extra libFuzzer flags, e.g. "-jobs=2 -workers=2"
#
# cargo-fuzz passes nightly-only -Z flags to rustc; RUSTC_BOOTSTRAP=1 makes
# the stable compiler accept them. Targets are built without AddressSanitizer
# (the codec and router hold no unsafe code, and ASan halves the speed) and
# without compare tracing (the router harness builds its own structured
# input, and the tracing costs half its speed).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: $0 [SECONDS]" >&2
  exit 2
fi

export RUSTC_BOOTSTRAP=1
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

build_flags=(--sanitizer none --no-trace-compares)
read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"
read -r -a extra <<<"${FUZZ_ARGS:-}"

echo "== cargo fuzz build"
cargo fuzz build "${build_flags[@]}"

failed=()
for target in "${targets[@]}"; do
  echo "== $target: ${seconds}s"
  mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
  if ! cargo fuzz run "${build_flags[@]}" "$target" \
      "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 "${extra[@]}"; then
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
  exit 1
fi
echo "all fuzz targets ran ${seconds}s without a crash"
