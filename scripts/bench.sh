#!/usr/bin/env bash
# Builds shadowcopy and its benchmark in release mode, runs the benchmark as root (it
# mounts an XFS loop file system and drops the page cache) and writes the results into
# docs/benchmarks.md. Extra arguments go to the benchmark, e.g.
#   sudo ./scripts/bench.sh --size 64MiB --runs 1
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p shadowcopy -p shadowcopy-bench
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bench=("$target_dir/release/shadowcopy-bench" --markdown docs/benchmarks.md "$@")

if [ "$(id -u)" -eq 0 ]; then
    exec "${bench[@]}"
else
    exec sudo "${bench[@]}"
fi
