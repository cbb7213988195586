#!/usr/bin/env bash
# bench/wal.sh: pgkeep vs pgBackRest on the same real WAL, in the same run.
#
# Generates 64 real segments with pgbench on a throwaway PostgreSQL 15
# (127.0.0.1 only), then pushes and fetches each one with one process per
# segment, as PostgreSQL does, alternating the two tools segment by segment
# so machine noise hits both alike. Both use a local repository; pgBackRest
# runs zstd level 3 with synchronous archive-push/archive-get, pgkeep its
# default wal.compression_level 1 and, in further columns of pushes, level 3
# and wal.block_maps false (the cost of the block map on wal-push).
#
# Rounds:
#   push        pgkeep wal-push (push_ahead 0)      vs pgbackrest archive-push
#   push-ahead  pgkeep wal-push with 63 files .ready (a backlog; push_ahead 8),
#               reported as total time for all 64 segments
#   fetch       pgkeep wal-fetch into pg_wal/RECOVERYXLOG (prefetch 8, the
#               next call follows at once: no replay time to hide behind)
#               vs pgbackrest archive-get
#
# Usage: bash bench/wal.sh            (needs: make build; pgbackrest installed)
#        SEGMENTS=32 bash bench/wal.sh
set -euo pipefail

SEGMENTS=${SEGMENTS:-64}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGKEEP_SRC=${PK_BIN:-$ROOT/bin/pgkeep}

if [ "$(id -u)" = 0 ]; then
	# PostgreSQL and pgBackRest run as postgres; so does the whole bench.
	WORK=$(mktemp -d "${TMPDIR:-/tmp}"/pgkeep-bench.XXXXXX)
	chmod 755 "$WORK"
	cp "$PGKEEP_SRC" "$WORK/pgkeep"
	cp "$0" "$WORK/wal.sh"
	chown -R postgres:postgres "$WORK"
	trap 'rm -rf "$WORK"' EXIT
	runuser -u postgres -- env WORK="$WORK" SEGMENTS="$SEGMENTS" PGBIN="$PGBIN" PK_BIN="$WORK/pgkeep" bash "$WORK/wal.sh"
	exit
fi

WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}"/pgkeep-bench.XXXXXX)}
PGKEEP=${PK_BIN:-$PGKEEP_SRC}
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }
[ -x "$PGKEEP" ] || { echo "no pgkeep binary at $PGKEEP (make build)" >&2; exit 1; }

PGDATA=$WORK/pgdata
SOCK=$WORK/sock
PORT=$(( 20000 + RANDOM % 20000 ))
mkdir -p "$SOCK"

cleanup() { "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== generating $SEGMENTS real WAL segments with pgbench (port $PORT)"
"$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --no-sync >/dev/null
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
wal_keep_size = '4GB'
max_wal_size = '4GB'
archive_mode = off
fsync = off
EOF
"$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/pg.log" -w start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres
"$PGBIN/pgbench" -i -s 10 -q >/dev/null 2>&1
count_segments() { ls "$PGDATA/pg_wal" | grep -cE '^[0-9A-F]{24}$' || true; }
# pgbench transactions alone write WAL slowly here (about 1 MB/s); bulk
# updates of a slice of pgbench_accounts between short pgbench runs fill
# segments quickly with the same kind of records (heap updates, index
# inserts, full-page images).
i=0
while [ "$(count_segments)" -le "$SEGMENTS" ]; do
	"$PGBIN/pgbench" -n -c 2 -T 2 >/dev/null 2>&1
	"$PGBIN/psql" -qAtc "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 16 = $((i % 16))" >/dev/null
	i=$((i + 1))
done
"$PGBIN/psql" -qAtc "SELECT pg_switch_wal()" >/dev/null
# The oldest SEGMENTS complete segments (the newest one is still being written).
mkdir -p "$WORK/segs"
ls "$PGDATA/pg_wal" | grep -E '^[0-9A-F]{24}$' | sort | head -n "$SEGMENTS" >"$WORK/seglist"
while read -r s; do cp "$PGDATA/pg_wal/$s" "$WORK/segs/"; done <"$WORK/seglist"

# --- pgkeep setup
mkdir -p "$WORK/pgkeep-repo" "$WORK/kdata/pg_wal/archive_status" "$WORK/kdata/global"
cp "$PGDATA/global/pg_control" "$WORK/kdata/global/"
cat >"$WORK/pgkeep.yml" <<EOF
repository: file://$WORK/pgkeep-repo
wal:
  push_ahead: 0
  prefetch: 8
EOF
export PGKEEP_CONFIG=$WORK/pgkeep.yml
"$PGKEEP" repo init --pgdata "$PGDATA" >/dev/null

# --- pgBackRest setup
cat >"$WORK/pgbackrest.conf" <<EOF
[global]
repo1-path=$WORK/pgbackrest-repo
compress-type=zst
compress-level=3
archive-async=n
log-level-console=warn
log-level-file=off
lock-path=$WORK/pgbackrest-lock
spool-path=$WORK/pgbackrest-spool

[bench]
pg1-path=$PGDATA
pg1-port=$PORT
pg1-socket-path=$SOCK
EOF
PGBR="pgbackrest --config=$WORK/pgbackrest.conf --stanza=bench"
$PGBR stanza-create >/dev/null

now() { date +%s%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", (b - a) / 1e6 }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
total() { awk '{ s += $1 } END { printf "%.0f\n", s }'; }

echo "== push: one process per segment, alternating"
mkdir -p "$WORK/pgkeep-repo3"
PGKEEP_REPOSITORY=file://$WORK/pgkeep-repo3 "$PGKEEP" repo init --pgdata "$PGDATA" >/dev/null
mkdir -p "$WORK/pgkeep-repo4"
PGKEEP_REPOSITORY=file://$WORK/pgkeep-repo4 "$PGKEEP" repo init --pgdata "$PGDATA" >/dev/null
: >"$WORK/push.pgkeep"; : >"$WORK/push3.pgkeep"; : >"$WORK/push.pgbackrest"; : >"$WORK/push.nomaps"
while read -r s; do
	cp "$WORK/segs/$s" "$WORK/kdata/pg_wal/$s"
	t0=$(now); (cd "$WORK/kdata" && "$PGKEEP" wal-push "pg_wal/$s"); t1=$(now)
	ms "$t0" "$t1" >>"$WORK/push.pgkeep"
	t0=$(now)
	(cd "$WORK/kdata" && PGKEEP_REPOSITORY=file://$WORK/pgkeep-repo3 PGKEEP_WAL_COMPRESSION_LEVEL=3 "$PGKEEP" wal-push "pg_wal/$s")
	t1=$(now)
	ms "$t0" "$t1" >>"$WORK/push3.pgkeep"
	t0=$(now); $PGBR archive-push "$WORK/segs/$s"; t1=$(now)
	ms "$t0" "$t1" >>"$WORK/push.pgbackrest"
	t0=$(now)
	(cd "$WORK/kdata" && PGKEEP_REPOSITORY=file://$WORK/pgkeep-repo4 PGKEEP_WAL_BLOCK_MAPS=false "$PGKEEP" wal-push "pg_wal/$s")
	t1=$(now)
	ms "$t0" "$t1" >>"$WORK/push.nomaps"
	rm -f "$WORK/kdata/pg_wal/$s"
done <"$WORK/seglist"

echo "== push-ahead: pgkeep with $SEGMENTS files .ready (a backlog), into a fresh repository"
mkdir -p "$WORK/pgkeep-repo2"
PGKEEP_REPOSITORY=file://$WORK/pgkeep-repo2 "$PGKEEP" repo init --pgdata "$PGDATA" >/dev/null
while read -r s; do
	cp "$WORK/segs/$s" "$WORK/kdata/pg_wal/$s"
	touch "$WORK/kdata/pg_wal/archive_status/$s.ready"
done <"$WORK/seglist"
: >"$WORK/pushahead.pgkeep"
while read -r s; do
	t0=$(now)
	(cd "$WORK/kdata" && PGKEEP_REPOSITORY=file://$WORK/pgkeep-repo2 PGKEEP_WAL_PUSH_AHEAD=8 "$PGKEEP" wal-push "pg_wal/$s")
	t1=$(now)
	ms "$t0" "$t1" >>"$WORK/pushahead.pgkeep"
	mv "$WORK/kdata/pg_wal/archive_status/$s.ready" "$WORK/kdata/pg_wal/archive_status/$s.done"
done <"$WORK/seglist"

echo "== fetch: one process per segment, sequential, alternating"
mkdir -p "$WORK/fetch/pg_wal" "$WORK/fetchbr"
: >"$WORK/fetch.pgkeep"; : >"$WORK/fetch.pgbackrest"
while read -r s; do
	# PostgreSQL unlinks RECOVERYXLOG before it runs restore_command
	# (xlogarchive.c); do the same, untimed, for both tools.
	rm -f "$WORK/fetch/pg_wal/RECOVERYXLOG" "$WORK/fetchbr/RECOVERYXLOG"
	t0=$(now); "$PGKEEP" wal-fetch "$s" "$WORK/fetch/pg_wal/RECOVERYXLOG"; t1=$(now)
	ms "$t0" "$t1" >>"$WORK/fetch.pgkeep"
	cmp -s "$WORK/fetch/pg_wal/RECOVERYXLOG" "$WORK/segs/$s" || { echo "pgkeep fetched wrong bytes for $s" >&2; exit 1; }
	t0=$(now); $PGBR archive-get "$s" "$WORK/fetchbr/RECOVERYXLOG"; t1=$(now)
	ms "$t0" "$t1" >>"$WORK/fetch.pgbackrest"
	cmp -s "$WORK/fetchbr/RECOVERYXLOG" "$WORK/segs/$s" || { echo "pgbackrest fetched wrong bytes for $s" >&2; exit 1; }
done <"$WORK/seglist"

kp=$(median <"$WORK/push.pgkeep"); bp=$(median <"$WORK/push.pgbackrest"); kp3=$(median <"$WORK/push3.pgkeep"); kpn=$(median <"$WORK/push.nomaps")
kf=$(median <"$WORK/fetch.pgkeep"); bf=$(median <"$WORK/fetch.pgbackrest")
ka=$(total <"$WORK/pushahead.pgkeep"); kpt=$(total <"$WORK/push.pgkeep"); bpt=$(total <"$WORK/push.pgbackrest")
ksize=$(du -sk "$WORK/pgkeep-repo/wal" | cut -f1); ksize3=$(du -sk "$WORK/pgkeep-repo3/wal" | cut -f1); bsize=$(du -sk "$WORK/pgbackrest-repo/archive" | cut -f1)
echo
echo "segments: $SEGMENTS x $(( $(stat -c %s "$WORK/segs/$(head -1 "$WORK/seglist")") / 1048576 )) MiB, local repository, $(nproc) cores"
echo "pgkeep: wal.compression_level 1 (its default) unless noted; pgBackRest: zstd level 3"
printf "%-34s %10s %12s %8s\n" "" "pgkeep" "pgBackRest" "ratio"
printf "%-34s %8s ms %10s ms %8s\n" "push, median per segment" "$kp" "$bp" "$(awk -v a="$kp" -v b="$bp" 'BEGIN{printf "%.2f", a/b}')"
printf "%-34s %8s ms %10s ms %8s\n" "push, median, pgkeep at level 3" "$kp3" "$bp" "$(awk -v a="$kp3" -v b="$bp" 'BEGIN{printf "%.2f", a/b}')"
printf "%-34s %8s ms %10s ms %8s\n" "push, median, pgkeep no block maps" "$kpn" "$bp" "$(awk -v a="$kpn" -v b="$bp" 'BEGIN{printf "%.2f", a/b}')"
printf "%-34s %8s ms %10s ms %8s\n" "push, total for all segments" "$kpt" "$bpt" "$(awk -v a="$kpt" -v b="$bpt" 'BEGIN{printf "%.2f", a/b}')"
printf "%-34s %8s ms %10s ms %8s\n" "push with backlog (push-ahead), total" "$ka" "$bpt" "$(awk -v a="$ka" -v b="$bpt" 'BEGIN{printf "%.2f", a/b}')"
printf "%-34s %8s ms %10s ms %8s\n" "fetch, median per segment" "$kf" "$bf" "$(awk -v a="$kf" -v b="$bf" 'BEGIN{printf "%.2f", a/b}')"
printf "%-34s %8s KiB %9s KiB %8s\n" "archive size" "$ksize" "$bsize" "$(awk -v a="$ksize" -v b="$bsize" 'BEGIN{printf "%.2f", a/b}')"
printf "%-34s %8s KiB %9s KiB %8s\n" "archive size, pgkeep at level 3" "$ksize3" "$bsize" "$(awk -v a="$ksize3" -v b="$bsize" 'BEGIN{printf "%.2f", a/b}')"
