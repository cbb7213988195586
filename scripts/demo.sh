#!/usr/bin/env bash
# scripts/demo.sh: pgkeep end to end on the embedded default (a local
# repository) and a throwaway PostgreSQL 15 on 127.0.0.1.
#
#  1. initdb + start a primary with archive_command = 'pgkeep wal-push %p'
#  2. encrypted repository: pgkeep keygen + repo init
#  3. write rows, take a pg_basebackup without WAL, write more rows
#  4. start a standby from it with restore_command = 'pgkeep wal-fetch %f %p'
#     only (no streaming) and check it has every row the primary has
#
# Everything lives in one temporary directory, removed at the end.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGKEEP_SRC=${PGKEEP_BIN:-$ROOT/bin/pgkeep}

if [ "$(id -u)" = 0 ]; then
	# PostgreSQL refuses to run as root: run the demo as postgres.
	WORK=$(mktemp -d /tmp/pgkeep-demo.XXXXXX)
	chmod 755 "$WORK"
	cp "$PGKEEP_SRC" "$WORK/pgkeep"
	cp "$0" "$WORK/demo.sh"
	chown -R postgres:postgres "$WORK"
	trap 'rm -rf "$WORK"' EXIT
	runuser -u postgres -- env WORK="$WORK" PGBIN="$PGBIN" PGKEEP_BIN="$WORK/pgkeep" bash "$WORK/demo.sh"
	exit
fi

WORK=${WORK:-$(mktemp -d /tmp/pgkeep-demo.XXXXXX)}
PGKEEP=${PGKEEP_BIN:-$PGKEEP_SRC}
[ -x "$PGKEEP" ] || { echo "no pgkeep binary at $PGKEEP (make build)" >&2; exit 1; }
P1=$(( 20000 + RANDOM % 20000 )); P2=$(( P1 + 1 ))
step() { printf '\n== %s\n' "$*"; }
cleanup() {
	"$PGBIN/pg_ctl" -D "$WORK/standby" -m immediate stop >/dev/null 2>&1 || true
	"$PGBIN/pg_ctl" -D "$WORK/primary" -m immediate stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "pgkeep $("$PGKEEP" version | cut -d' ' -f2): keys and an encrypted local repository in $WORK/repo"
RECIPIENT=$("$PGKEEP" keygen --output "$WORK/identity.txt")
cat >"$WORK/pgkeep.yml" <<EOF
repository: file://$WORK/repo
encryption:
  recipients: [$RECIPIENT]
  identity_file: $WORK/identity.txt
EOF
export PGKEEP_CONFIG=$WORK/pgkeep.yml

step "primary on 127.0.0.1:$P1 archiving with pgkeep wal-push"
"$PGBIN/initdb" -D "$WORK/primary" -U postgres --auth=trust --no-sync >/dev/null
cat >>"$WORK/primary/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $P1
unix_socket_directories = ''
archive_mode = on
archive_command = '$PGKEEP wal-push %p'
EOF
"$PGKEEP" repo init --pgdata "$WORK/primary"
"$PGBIN/pg_ctl" -D "$WORK/primary" -l "$WORK/primary.log" -w start >/dev/null
psql1() { "$PGBIN/psql" -h 127.0.0.1 -p "$P1" -U postgres -qAtX -v ON_ERROR_STOP=1 "$@"; }
psql1 -c "CREATE TABLE orders (id int PRIMARY KEY, amount numeric)"
psql1 -c "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 10000) g"

step "base backup without WAL (pg_basebackup -X none): the standby must get WAL from pgkeep"
"$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$P1" -U postgres -D "$WORK/standby" -X none -c fast --no-sync
psql1 -c "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(10001, 50000) g"
psql1 -c "UPDATE orders SET amount = amount + 1 WHERE id % 3 = 0"
for _ in 1 2 3 4 5; do
	psql1 -c "INSERT INTO orders SELECT g, 0 FROM generate_series(1000000 + (random()*1e6)::int, 1000000 + (random()*1e6)::int + 2000) g ON CONFLICT DO NOTHING"
	psql1 -c "SELECT pg_switch_wal()" >/dev/null
done
LAST=$(psql1 -c "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 1 300); do
	[ "$(psql1 -c "SELECT last_archived_wal >= '$LAST' FROM pg_stat_archiver")" = t ] && break
	sleep 0.2
done
psql1 -c "SELECT 'archived: ' || archived_count || ' files, failed: ' || failed_count FROM pg_stat_archiver"
"$PGKEEP" repo show | grep -E '"(encryption|system_identifier)"'

step "standby on 127.0.0.1:$P2 replaying only through pgkeep wal-fetch"
touch "$WORK/standby/standby.signal"
cat >>"$WORK/standby/postgresql.conf" <<EOF
port = $P2
archive_mode = off
restore_command = '$PGKEEP wal-fetch %f %p'
primary_conninfo = ''
EOF
chmod 700 "$WORK/standby"
"$PGBIN/pg_ctl" -D "$WORK/standby" -l "$WORK/standby.log" -w start >/dev/null
WANT=$(psql1 -c "SELECT count(*) || ' rows, sum ' || sum(amount) FROM orders")
GOT=""
for _ in $(seq 1 300); do
	GOT=$("$PGBIN/psql" -h 127.0.0.1 -p "$P2" -U postgres -qAtX -c "SELECT count(*) || ' rows, sum ' || sum(amount) FROM orders" 2>/dev/null || true)
	[ "$GOT" = "$WANT" ] && break
	sleep 0.2
done
echo "primary: $WANT"
echo "standby: $GOT"
if [ "$GOT" != "$WANT" ]; then
	echo "FAILED: the standby did not reach the primary's state" >&2
	tail -20 "$WORK/standby.log" >&2
	exit 1
fi
echo
echo "OK: every row written after the base backup came back through the encrypted archive."
