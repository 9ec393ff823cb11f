#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need when it is missing
# (as root, from Debian's packages): file-system tools for the loop-device tests, the
# sqlite3 shell, PostgreSQL and MariaDB. Under CI=true, tests that need root fail instead of
# skipping.
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
# MariaDB for the mariadb writer's tests: mariadbd is in /usr/sbin. The tests start their
# own servers (temp dirs, private sockets); the package's own service is not wanted.
mariadb_server=no
if ! { command -v mariadbd || [ -x /usr/sbin/mariadbd ]; } >/dev/null 2>&1 ||
   ! command -v mariadb-install-db >/dev/null 2>&1; then
  need+=(mariadb-server)
  mariadb_server=yes
fi
command -v mariadb        >/dev/null 2>&1 || need+=(mariadb-client)
command -v mariadb-backup >/dev/null 2>&1 || need+=(mariadb-backup)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    # Keep the install from starting services (mariadb-server's postinst would start the
    # system MariaDB): policy-rc.d saying 101 ("action forbidden"), unless one is in place.
    own_policy=no
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      own_policy=yes
    fi
    status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || status=$?
    if [ "$own_policy" = yes ]; then rm -f /usr/sbin/policy-rc.d; fi
    ((status == 0)) || exit "$status"
    # Under systemd the unit is still enabled for the next boot: not on a test machine.
    if [ "$mariadb_server" = yes ] && [ -d /run/systemd/system ]; then
      systemctl disable --now mariadb >/dev/null 2>&1 || true
    fi
  else
    echo "missing ${need[*]}: tests that need them will skip (as root this script installs them)"
  fi
fi

if [ "${CI:-}" = true ]; then
  export SHADOWCOPY_TEST_REQUIRE_ROOT=1
fi

cargo fmt --all -- --check
cargo test --workspace --locked
