#!/usr/bin/env bash
# scripts/demo.sh: pgkeep end to end on the embedded default (a local
# repository) and a throwaway PostgreSQL 15 on 127.0.0.1.
#
#  1. an age-encrypted local repository (pgkeep keygen + repo init) and a
#     PostgreSQL 15 archiving into it with archive_command = 'pgkeep wal-push %p'
#  2. pgbench data, then `pgkeep backup`
#  3. the data changes at two moments
#  4. `pgkeep restore --target-time <first moment>` into a new directory;
#     PostgreSQL started on it replays archived WAL through pgkeep wal-fetch,
#     and the data is shown to be exactly as it was at the first moment
#
# Everything lives in one temporary directory, removed at the end.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGKEEP_SRC=${PK_BIN:-$ROOT/bin/pgkeep}

if [ "$(id -u)" = 0 ]; then
	# PostgreSQL refuses to run as root: run the demo as postgres.
	WORK=$(mktemp -d /tmp/pgkeep-demo.XXXXXX)
	chmod 755 "$WORK"
	cp "$PGKEEP_SRC" "$WORK/pgkeep"
	cp "$0" "$WORK/demo.sh"
	chown -R postgres:postgres "$WORK"
	trap 'rm -rf "$WORK"' EXIT
	runuser -u postgres -- env WORK="$WORK" PGBIN="$PGBIN" PK_BIN="$WORK/pgkeep" bash "$WORK/demo.sh"
	exit
fi

WORK=${WORK:-$(mktemp -d /tmp/pgkeep-demo.XXXXXX)}
PGKEEP=${PK_BIN:-$PGKEEP_SRC}
[ -x "$PGKEEP" ] || { echo "no pgkeep binary at $PGKEEP (make build)" >&2; exit 1; }

# Two free ports on 127.0.0.1.
free_port() {
	local p
	while :; do
		p=$(( 20000 + RANDOM % 20000 ))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}
P1=$(free_port)
P2=$(free_port)
[ "$P1" != "$P2" ] || P2=$(free_port)

step() { printf '\n== %s\n' "$*"; }
cleanup() {
	"$PGBIN/pg_ctl" -D "$WORK/restored" -m immediate stop >/dev/null 2>&1 || true
	"$PGBIN/pg_ctl" -D "$WORK/primary" -m immediate stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "pgkeep $("$PGKEEP" version | cut -d' ' -f2): keys and an encrypted local repository in $WORK/repo"
RECIPIENT=$("$PGKEEP" keygen --output "$WORK/identity.txt")
cat >"$WORK/pgkeep.yml" <<CONF
repository: file://$WORK/repo
encryption:
  recipients: [$RECIPIENT]
  identity_file: $WORK/identity.txt
postgres:
  dsn: host=127.0.0.1 port=$P1 user=postgres dbname=postgres
pgdata: $WORK/primary
CONF
export PGKEEP_CONFIG=$WORK/pgkeep.yml

step "PostgreSQL 15 on 127.0.0.1:$P1, archiving with pgkeep wal-push"
"$PGBIN/initdb" -D "$WORK/primary" -U postgres --auth=trust --data-checksums --no-sync >/dev/null
cat >>"$WORK/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $P1
unix_socket_directories = ''
archive_mode = on
archive_command = '$PGKEEP wal-push %p'
CONF
"$PGKEEP" repo init --pgdata "$WORK/primary"
"$PGBIN/pg_ctl" -D "$WORK/primary" -l "$WORK/primary.log" -w start >/dev/null
psql1() { "$PGBIN/psql" -h 127.0.0.1 -p "$P1" -U postgres -qAtX -v ON_ERROR_STOP=1 "$@"; }
"$PGBIN/pgbench" -h 127.0.0.1 -p "$P1" -U postgres -i -s 5 -q postgres 2>&1 | tail -1

step "full backup"
"$PGKEEP" backup
"$PGKEEP" backup list

STATE_SQL="SELECT count(*) || ' accounts, total balance ' || sum(abalance) || ', ' || (SELECT count(*) FROM pgbench_history) || ' history rows' FROM pgbench_accounts"
step "moment 1: 500 pgbench transactions"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$P1" -U postgres -n -t 500 -c 1 postgres >/dev/null
STATE1=$(psql1 -c "$STATE_SQL")
MOMENT1=$(psql1 -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
echo "at $MOMENT1: $STATE1"
sleep 1

step "moment 2: a bad deploy deletes most accounts"
psql1 -c "DELETE FROM pgbench_accounts WHERE aid > 100000" -c "UPDATE pgbench_accounts SET abalance = 0"
STATE2=$(psql1 -c "$STATE_SQL")
echo "now: $STATE2"
LAST=$(psql1 -c "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 1 300); do
	[ "$(psql1 -c "SELECT last_archived_wal >= '$LAST' FROM pg_stat_archiver")" = t ] && break
	sleep 0.2
done

step "restore to moment 1 into $WORK/restored"
"$PGKEEP" restore --pgdata "$WORK/restored" --target-time "$MOMENT1" --target-action promote
cat >>"$WORK/restored/postgresql.conf" <<CONF
port = $P2
archive_mode = off
CONF
"$PGBIN/pg_ctl" -D "$WORK/restored" -l "$WORK/restored.log" -w start >/dev/null
psql2() { "$PGBIN/psql" -h 127.0.0.1 -p "$P2" -U postgres -qAtX "$@"; }
for _ in $(seq 1 300); do
	[ "$(psql2 -c "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && break
	sleep 0.2
done
GOT=$(psql2 -c "$STATE_SQL")
echo "moment 1 was: $STATE1"
echo "restored:     $GOT"
if [ "$GOT" != "$STATE1" ]; then
	echo "FAILED: the restored cluster is not at moment 1" >&2
	tail -20 "$WORK/restored.log" >&2
	exit 1
fi
echo
echo "OK: the cluster is back exactly as it was at $MOMENT1."
