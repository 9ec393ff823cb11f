#!/usr/bin/env bash
# A first try of the backup server on this machine: a private PostgreSQL cluster for its
# central catalog in DIR (initdb, a socket in DIR, no TCP port), then `shadowcopy server`
# on ADDR:PORT (default 127.0.0.1:8443) with its CA in DIR/state, and an admin API token
# printed. Ctrl-C stops both. For production, point --database at a PostgreSQL you run.
#
#   scripts/try-server.sh /tmp/sc-server [ADDR:PORT]
set -euo pipefail
dir=${1:?usage: $0 DIR [ADDR:PORT]}
listen=${2:-127.0.0.1:8443}
here=$(cd "$(dirname "$0")/.." && pwd)
shadowcopy=${SHADOWCOPY:-$(command -v shadowcopy || echo "$here/target/release/shadowcopy")}
[ -x "$shadowcopy" ] || { echo "build it first: cargo build --release -p shadowcopy" >&2; exit 2; }
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bin" ] || { echo "PostgreSQL is not installed: apt-get install postgresql" >&2; exit 2; }

# DIR is made here (or is one this script made before, with its marker inside, owned by
# whoever runs it): never a directory or symlink someone else put in a shared /tmp.
if [ -L "$dir" ]; then
  echo "$dir is a symlink; give a new directory" >&2; exit 2
elif [ -e "$dir" ]; then
  if [ ! -O "$dir/.shadowcopy-try" ] || [ -L "$dir/.shadowcopy-try" ]; then
    echo "$dir exists and was not made by this script; give a new directory" >&2; exit 2
  fi
else
  mkdir -m 700 "$dir"
  touch "$dir/.shadowcopy-try"
fi
dir=$(cd "$dir" && pwd)
# Only its owner (and root) can reach the cluster's socket in DIR: no TCP port is opened,
# so `trust` lets in no one else.
chmod 700 "$dir"
as_pg=()
if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root: the cluster belongs to the postgres user.
  chown -h postgres: "$dir"
  as_pg=(runuser -u postgres --)
fi
if [ ! -e "$dir/pg/PG_VERSION" ]; then
  "${as_pg[@]}" "$bin/initdb" -D "$dir/pg" -U postgres --auth=trust >/dev/null
fi
port=55399
"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w \
  -o "-p $port -k $dir -c listen_addresses=''" start >/dev/null
trap '"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null' EXIT
export SHADOWCOPY_SERVER_DATABASE="postgresql:///postgres?host=$dir&port=$port&user=postgres"
mkdir -p "$dir/state" && chmod 700 "$dir/state"
token=$("$shadowcopy" server --state "$dir/state" token create "try-admin-$(date +%s)" --role admin -q)
cat <<MSG
central catalog: PostgreSQL in $dir/pg (socket in $dir, port $port)
operators:  export SHADOWCOPY_SERVER=https://$listen SHADOWCOPY_SERVER_TOKEN=$token
enrol a host: SHADOWCOPY_SERVER_DATABASE='$SHADOWCOPY_SERVER_DATABASE' $shadowcopy server --state $dir/state enroll HOST
MSG
"$shadowcopy" server --state "$dir/state" --listen "$listen"
