#!/usr/bin/env python3
"""Picks a few seeds for a fuzz target from what a run found.

    fuzz/seeds/pick-seeds.py TARGET [MAX_FILES] [MAX_BYTES]

Replays fuzz/corpus/TARGET and fuzz/seeds/TARGET through the target's
libFuzzer merge (build first: `RUSTC_BOOTSTRAP=1 cargo fuzz build
--sanitizer none --no-trace-compares`), reads the coverage features each
input reaches from the merge control file, and greedily keeps the inputs that
add the most features not yet covered (ties: the smaller), up to MAX_FILES
(default 25) inputs of at most MAX_BYTES (default 2048) each. The chosen ones
replace the SHA-1-named files of fuzz/seeds/TARGET/ (named so, as libFuzzer
names them); seeds with other names were put there by hand and are kept, and
what they cover counts as covered already.
"""
import hashlib
import os
import re
import subprocess
import sys
import tempfile

HASH_NAME = re.compile(r"^[0-9a-f]{40}$")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    target = sys.argv[1]
    max_files = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    max_bytes = int(sys.argv[3]) if len(sys.argv) > 3 else 2048
    binary = os.path.join(ROOT, "fuzz/target/x86_64-unknown-linux-gnu/release", target)
    seeds = os.path.join(ROOT, "fuzz/seeds", target)
    dirs = [os.path.join(ROOT, "fuzz/corpus", target), seeds]
    dirs = [d for d in dirs if os.path.isdir(d)]
    with tempfile.TemporaryDirectory() as tmp:
        control = os.path.join(tmp, "control")
        out = os.path.join(tmp, "out")
        os.mkdir(out)
        subprocess.run(
            [binary, "-merge=1", f"-merge_control_file={control}", out, *dirs],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open(control) as f:
            lines = f.read().splitlines()
        count = int(lines[0])
        files = lines[2 : 2 + count]
        features = {}
        for line in lines[2 + count :]:
            parts = line.split()
            if parts and parts[0] == "FT":
                features[int(parts[1])] = set(map(int, parts[2:]))
        candidates = {}
        covered = set()
        for i, feats in features.items():
            if os.path.dirname(files[i]) == seeds and not HASH_NAME.match(
                os.path.basename(files[i])
            ):
                covered |= feats  # a hand-named seed, kept as it is
                continue
            size = os.path.getsize(files[i])
            if size <= max_bytes and feats:
                with open(files[i], "rb") as f:
                    data = f.read()
                candidates[hashlib.sha1(data).hexdigest()] = (feats, size, data)
        chosen = []
        while len(chosen) < max_files and candidates:
            name, (feats, size, data) = max(
                candidates.items(), key=lambda kv: (len(kv[1][0] - covered), -kv[1][1])
            )
            if not feats - covered:
                break
            covered |= feats
            chosen.append((name, data))
            del candidates[name]
        everything = set().union(*features.values()) if features else set()
    os.makedirs(seeds, exist_ok=True)
    for name in os.listdir(seeds):
        if HASH_NAME.match(name):
            os.remove(os.path.join(seeds, name))
    for name, data in chosen:
        with open(os.path.join(seeds, name), "wb") as f:
            f.write(data)
    total = sum(len(d) for _, d in chosen)
    print(
        f"{target}: {len(chosen)} seeds, {total} bytes, "
        f"{len(covered)} of {len(everything)} features of {len(features)} inputs"
    )


if __name__ == "__main__":
    main()
