#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need when it is missing
# (as root, from Debian's packages): file-system tools for the loop-device tests, the
# sqlite3 shell and PostgreSQL. Under CI=true, tests that need root fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mkfs.xfs   >/dev/null 2>&1 || need+=(xfsprogs)
command -v mkfs.btrfs >/dev/null 2>&1 || need+=(btrfs-progs)
command -v mkfs.ext4  >/dev/null 2>&1 || need+=(e2fsprogs)
command -v filefrag   >/dev/null 2>&1 || need+=(e2fsprogs)
command -v sqlite3    >/dev/null 2>&1 || need+=(sqlite3)
command -v losetup    >/dev/null 2>&1 || need+=(mount)
# PostgreSQL for the postgres writer's tests: Debian keeps pg_ctl and initdb off the PATH,
# in /usr/lib/postgresql/<major>/bin.
if ! { compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' && compgen -G '/usr/lib/postgresql/*/bin/initdb'; } >/dev/null 2>&1 &&
   ! { command -v pg_ctl && command -v initdb; } >/dev/null 2>&1; then
  need+=(postgresql postgresql-contrib)
fi
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing ${need[*]}: tests that need them will skip (as root this script installs them)"
  fi
fi

if [ "${CI:-}" = true ]; then
  export SHADOWCOPY_TEST_REQUIRE_ROOT=1
fi

cargo fmt --all -- --check
cargo test --workspace --locked
