#!/usr/bin/env bash
# Quick CI check of the fuzz targets in fuzz/: they still compile against the
# current crate, and each still passes on its committed seeds. Needs neither
# cargo-fuzz nor nightly: plain cargo on the stable toolchain builds the fuzz
# crate without coverage instrumentation (so nothing here fuzzes; that is
# scripts/fuzz.sh), and each target binary runs every seed once.
#
#   scripts/fuzz-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob

# Not --locked: fuzz/Cargo.lock also pins the main crate's dependencies, and
# a dependency added there must not fail this check; cargo adds it to the
# lock file and leaves every other version as it was.
manifest=fuzz/Cargo.toml
echo "== cargo build --manifest-path $manifest"
cargo build --manifest-path "$manifest" --bins

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in decode router rooms web ws_frames input history accounts discovery cluster; do
  seeds=("fuzz/seeds/$target"/*)
  echo "== $target: ${#seeds[@]} seeds"
  if [ ${#seeds[@]} -eq 0 ]; then
    continue
  fi
  if ! cargo run --quiet --manifest-path "$manifest" --bin "$target" -- \
      "${seeds[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    echo "fuzz target $target fails on a seed" >&2
    exit 1
  fi
done
echo "fuzz targets build and pass their seeds"
