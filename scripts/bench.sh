#!/usr/bin/env bash
# Builds shadowcopy and its benchmark in release mode, runs the benchmark as root (it
# mounts loop file systems and drops the page cache) and writes the results into
# docs/benchmarks.md. The first argument may name the workload (default: sqlite); the
# rest go to the benchmark, e.g.
#   sudo ./scripts/bench.sh --size 64MiB --runs 1          # SQLite under load, quick check
#   sudo ./scripts/bench.sh sqlite                         # SQLite, 1 GiB, 3 runs
#   sudo ./scripts/bench.sh sizes                          # copy/reflink/btrfs at 1, 4, 16 GiB
#   sudo ./scripts/bench.sh sizes --sizes 256MiB --runs 1  # quick check
#   sudo ./scripts/bench.sh postgres                       # pgbench scale 100 and 1000, 3 runs (hours)
#   sudo ./scripts/bench.sh postgres --scale 5 --runs 1 --tps-seconds 20   # quick check
#   sudo ./scripts/bench.sh mariadb                        # 1 GiB, copy/reflink/btrfs, 3 runs
#   sudo ./scripts/bench.sh mariadb --size 64MiB --runs 1  # quick check
#   sudo ./scripts/bench.sh agent                          # idle cost, API latency over 10,000 copies,
#                                                          # a copy a minute for 30 min + 30 min baseline (65 min)
#   sudo ./scripts/bench.sh agent --minutes 2 --idle-seconds 10 --size 64MiB   # quick check (6 min)
#   sudo ./scripts/bench.sh archive                        # S3: pgbench scale 100 against pgBackRest,
#                                                          # a 1 GiB SQLite bank against restic
#   sudo ./scripts/bench.sh archive --scale 5 --size 64MiB # quick check (about 75 s)
# and the comparison with the tools users would pick instead (installs them when missing):
#   sudo ./scripts/bench.sh peers sqlite                   # 1 and 8 GiB, 3 runs
#   sudo ./scripts/bench.sh peers postgres                 # pgbench scale 100 and 1000, 3 runs (hours)
#   sudo ./scripts/bench.sh peers postgres --scale 1000 --methods reflink,btrfs,pgbackrest,pgbackrest-pm2,pg_basebackup
#                                                          # as measured in docs (2 h; ~60 GiB free; copy needs ~20 more)
#   sudo ./scripts/bench.sh peers mariadb                  # 4 GiB, 3 runs
#   sudo ./scripts/bench.sh peers sqlite --size 64MiB --runs 1   # quick check
#   ./scripts/bench.sh peers report                        # table and plots again from docs/bench-data
set -euo pipefail
cd "$(dirname "$0")/.."

workload=sqlite
case "${1:-}" in
    sqlite | sizes | postgres | mariadb | peers | agent | archive) workload=$1; shift ;;
esac

# The file-system tools, the databases, the peers and the plots' font (not needed to
# regenerate the peers' report).
if [ "$workload" != peers ] || [ "${1:-}" != report ]; then
    if [ "$(id -u)" -eq 0 ]; then
        scripts/install-deps.sh --bench
    else
        sudo scripts/install-deps.sh --bench
    fi
fi
cargo build --release -p shadowcopy -p shadowcopy-bench
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ "$workload" = peers ]; then
    # The output options belong to the peer workload: `peers sqlite --markdown ...`.
    [ $# -ge 1 ] || { echo "usage: $0 peers sqlite|postgres|mariadb|report [options]" >&2; exit 2; }
    peer=$1; shift
    bench=("$target_dir/release/shadowcopy-bench" peers "$peer" --markdown docs/benchmarks.md "$@")
    if [ "$peer" = report ]; then exec "${bench[@]}"; fi
else
    bench=("$target_dir/release/shadowcopy-bench" "$workload" --markdown docs/benchmarks.md "$@")
fi

if [ "$(id -u)" -eq 0 ]; then
    exec "${bench[@]}"
else
    exec sudo "${bench[@]}"
fi
