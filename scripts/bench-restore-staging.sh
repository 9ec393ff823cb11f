#!/usr/bin/env bash
# Restore time of two shadowcopy binaries on the same data (docs/benchmarks.md, "Restore
# with private staging and a journal of renames"): a 1 GiB SQLite database and 20,000
# small files on an XFS loop device, one reflink copy of each per binary, then
# `restore ID --discard-current` timed with hyperfine, the two binaries in turn.
#   sudo ./scripts/bench-restore-staging.sh OLD_BINARY NEW_BINARY
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
old=$(readlink -f "$1"); new=$(readlink -f "$2")
[ "$(id -u)" -eq 0 ] || { echo "needs root (mounts a loop device)" >&2; exit 2; }
command -v hyperfine >/dev/null || apt-get install -y -qq hyperfine >/dev/null
command -v mkfs.xfs >/dev/null || apt-get install -y -qq xfsprogs >/dev/null
work=$(mktemp -d)
cleanup() { umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir "$work/mnt"
truncate -s 6G "$work/x.img" && mkfs.xfs -q "$work/x.img" && mount -o loop "$work/x.img" "$work/mnt"
cd "$work/mnt"
python3 - <<'PY'
import os, sqlite3
c = sqlite3.connect('bank.db'); c.execute('pragma journal_mode=wal')
c.execute('create table t(id integer primary key, b blob)')
for _ in range(1024):
    c.execute('insert into t(b) values (randomblob(1048576))')
c.commit(); c.close()
for d in range(100):
    os.makedirs(f'files/d{d}')
    for f in range(200):
        with open(f'files/d{d}/f{f}', 'wb') as fh:
            fh.write(os.urandom(4096))
PY
for which in old new; do
  bin=${!which}
  SHADOWCOPY_CATALOG="$work/mnt/cat-$which" "$bin" create --sqlite "$work/mnt/bank.db" --provider reflink --no-verify -q
  SHADOWCOPY_CATALOG="$work/mnt/cat-$which" "$bin" create --path "$work/mnt/files" --provider reflink --no-verify -q
done
for id in 1 2; do
  hyperfine --runs 7 --warmup 1 \
    -n before "SHADOWCOPY_CATALOG=$work/mnt/cat-old $old restore $id --discard-current -q" \
    -n after "SHADOWCOPY_CATALOG=$work/mnt/cat-new $new restore $id --discard-current -q"
done
