#!/usr/bin/env bash
# Installs, as root and from Debian's packages, what the tests need when it is missing:
# file-system tools for the loop-device tests, the sqlite3 shell, PostgreSQL, MariaDB and
# mariabackup, and the font the benchmark's plots use; and from PyPI, in a virtualenv of
# its own, moto: the S3-compatible server the archive's tests start on loopback. With --bench also the peers the
# benchmark compares with (pgBackRest, restic) and stunnel for the archive workload. Not
# root: says what is missing and goes on.
set -euo pipefail

for_bench=no
case "${1:-}" in
  --bench) for_bench=yes ;;
  "") ;;
  *) echo "usage: $0 [--bench]" >&2; exit 2 ;;
esac

need=()
command -v mkfs.xfs   >/dev/null 2>&1 || need+=(xfsprogs)
command -v mkfs.btrfs >/dev/null 2>&1 || need+=(btrfs-progs)
command -v mkfs.ext4  >/dev/null 2>&1 || need+=(e2fsprogs)
command -v filefrag   >/dev/null 2>&1 || need+=(e2fsprogs)
command -v sqlite3    >/dev/null 2>&1 || need+=(sqlite3)
command -v losetup    >/dev/null 2>&1 || need+=(mount)
# Network namespaces for the backup server's tests (agents on simulated hosts).
command -v ip         >/dev/null 2>&1 || need+=(iproute2)
# A real browser for the web console's tests (driven through WebDriver).
command -v chromium     >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
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
# The font the benchmark's plots are drawn with (a unit test draws one).
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
# The peers the benchmark compares with (`shadowcopy-bench peers`, `archive`), and the TLS
# front and clients of the archive workload's S3 server.
if [ "$for_bench" = yes ]; then
  command -v pgbackrest >/dev/null 2>&1 || need+=(pgbackrest)
  command -v restic     >/dev/null 2>&1 || need+=(restic)
  command -v stunnel4   >/dev/null 2>&1 || need+=(stunnel4)
  command -v openssl    >/dev/null 2>&1 || need+=(openssl)
  command -v curl       >/dev/null 2>&1 || need+=(curl)
fi
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
    echo "missing ${need[*]}: what needs them will skip or fail (as root this script installs them)"
  fi
fi

# An S3-compatible server for the archive's tests (moto, in memory, on loopback). The tests
# look for it here, or where SHADOWCOPY_MOTO_VENV says.
moto_venv="${SHADOWCOPY_MOTO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/shadowcopy/moto-venv}"
if [ ! -x "$moto_venv/bin/moto_server" ]; then
  echo "installing moto (the S3 server of the archive's tests) into $moto_venv"
  if ! { python3 -m venv "$moto_venv" && "$moto_venv/bin/pip" install -q 'moto[server]' boto3; }; then
    echo "moto could not be installed: the archive's S3 tests will skip (or fail under CI)"
  fi
fi
