#!/usr/bin/env bash
# bench/incr.sh: pgkeep incremental backups vs pgBackRest --type=incr, and
# WAL-G deltas when a wal-g binary is found, in the same run, on the same
# cluster (issue 15).
#
# One throwaway PostgreSQL 15 (127.0.0.1 only, data checksums on):
# pgbench -i -s SCALE plus an append-only table (APPEND_MB), frozen, with
# autovacuum off so each row shows its own change. A full backup of each
# tool, then for each change below an incremental of each tool:
#   updates100   100 random row updates of pgbench_accounts
#   updates1pct  1 % of pgbench_accounts' rows updated, spread over the table
#   append2pct   2 % more rows appended to the append-only table
#   nothing      no change
# Per row: the backup's wall time and the bytes it added to the repository
# (WAL excluded: pgkeep's stored_size, which counts its packs and manifest;
# pgBackRest's growth of backup/), and pgkeep's bytes read. Then a restore
# of the last backup of each tool into an empty directory (not started).
# Settings: pgBackRest process-max 2 (a main process and 2 workers), pgkeep
# its default backup.concurrency (CPUs + 1 workers) and 2 uploads;
# pgkeep compression.level PK_LEVEL (default 1, pgkeep's default),
# pgBackRest zst level 3; pgBackRest is whatever
# `pgbackrest` is on PATH (Debian's 2.45 has no block incremental: it
# re-stores every changed file whole). Both push WAL from one
# archive_command, side by side. One repetition: numbers on a shared
# machine are noisy.
# WAL-G (optional: $WALG_BIN, else `wal-g` on PATH; without it its columns
# print "-"): a local repository, zstd (its fixed level), 2 uploads and 2
# downloads, a full with --full, then a delta per row (WALG_DELTA_MAX_STEPS
# 99); its wal-push runs beside the other two in the archive_command, and
# its backup waits for no archiving of the stop segment. Bytes added:
# growth of basebackups_005. Its restore is backup-fetch LATEST; it has no
# retention row ("n/a"). Where the binary comes from is the operator's
# business: the script only runs it.
# Each tool's backup starts once the archiver has caught up and right
# after a CHECKPOINT the script issues and times (settle_s): otherwise the
# tool that runs first pays the start checkpoint of the whole change
# (seconds after updates1pct) and shares the 2 cores with the archiver
# compressing that change's WAL, and the other gets neither.
# KEEP_LOGS=dir: the logs (pk.log, br.log, wg.log, pg.log) are copied there at the end.
# KEEP_WORK=1: the work directory (repositories, data directory) is left
# in place for a look at what each backup stored.
# PROFILE_DIR=dir: pgkeep's backups and restores write CPU profiles there
# (<row>.pprof, restore-newest.pprof, restore-<full's ID>.pprof: the
# second restore of each).
#
# ROWS="updates100 nothing": only those rows (the full always runs);
# INIT=server: pgbench generates its data server side (faster at scale
# 1000); RESTORES=0 and RETENTION=0 skip the restore rows and the
# retention cycle. The 10x row of docs/benchmarks.md:
#        SCALE=1000 INIT=server ROWS="updates100 nothing" RESTORES=0 RETENTION=0 sudo bash bench/incr.sh
#
# Usage: sudo bash bench/incr.sh          (needs: make build; pgbackrest installed)
#        SCALE=10 APPEND_MB=32 sudo bash bench/incr.sh     (a quick look)
#        sudo WALG_BIN=/path/to/wal-g bash bench/incr.sh   (with the WAL-G column)
set -euo pipefail

SCALE=${SCALE:-100}
PK_LEVEL=${PK_LEVEL:-1}
APPEND_MB=${APPEND_MB:-650}
RESTORES=${RESTORES:-1}
RETENTION=${RETENTION:-1}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGKEEP_SRC=${PK_BIN:-$ROOT/bin/pgkeep}

if [ "$(id -u)" = 0 ]; then
	[ -x "$PGKEEP_SRC" ] || { echo "no pgkeep binary at $PGKEEP_SRC (make build)" >&2; exit 1; }
	WALG_SRC=${WALG_BIN:-$(command -v wal-g || true)}
	[ -z "$WALG_SRC" ] || [ -x "$WALG_SRC" ] || { echo "no wal-g binary at $WALG_SRC" >&2; exit 1; }
	WORK=$(mktemp -d "${TMPDIR:-/tmp}"/pgkeep-bench-incr.XXXXXX)
	chmod 755 "$WORK"
	cp "$PGKEEP_SRC" "$WORK/pgkeep"
	[ -z "$WALG_SRC" ] || cp "$WALG_SRC" "$WORK/wal-g"
	cp "$0" "$WORK/incr.sh"
	chown -R postgres:postgres "$WORK"
	rc=0
	[ -n "${PROFILE_DIR:-}" ] && mkdir -p "$PROFILE_DIR" && chown postgres "$PROFILE_DIR"
	runuser -u postgres -- env WORK="$WORK" SCALE="$SCALE" PK_LEVEL="$PK_LEVEL" ROWS="${ROWS:-}" INIT="${INIT:-}" RESTORES="$RESTORES" RETENTION="$RETENTION" APPEND_MB="$APPEND_MB" PGBIN="$PGBIN" PROFILE_DIR="${PROFILE_DIR:-}" \
		PK_BIN="$WORK/pgkeep" WALG="${WALG_SRC:+$WORK/wal-g}" bash "$WORK/incr.sh" || rc=$?
	[ -n "${KEEP_LOGS:-}" ] && mkdir -p "$KEEP_LOGS" && cp -r "$WORK/logs/." "$KEEP_LOGS/"
	if [ -n "${KEEP_WORK:-}" ]; then
		echo "kept $WORK (the repositories, the cluster's data directory)" >&2
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
fi

WORK=${WORK:?run as root, or set WORK}
PGKEEP=$PK_BIN
# WAL-G: set (maybe empty) by the root half; else $WALG_BIN or PATH's.
WALG=${WALG-${WALG_BIN:-$(command -v wal-g || true)}}
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }
LOGS=$WORK/logs
mkdir -p "$LOGS" "$WORK/sock" "$WORK/br-lock" "$WORK/br-spool"
PGDATA=$WORK/pgdata
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
free_port() {
	local p
	while :; do
		p=$(( 20000 + RANDOM % 20000 ))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}
PORT=$(free_port)
cleanup() {
	local rc=$?
	set +e
	"$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1
	if [ $rc -ne 0 ]; then
		echo "bench failed (exit $rc):" >&2
		tail -n 5 "$LOGS"/pk.log "$LOGS"/br.log ${WALG:+"$LOGS"/wg.log} >&2
	fi
}
trap cleanup EXIT
psqlc() { "$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1 "$@"; }
secs() { local t0=$1; awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }

cat >"$WORK/pk.yml" <<EOF
repository: file://$WORK/pk-repo
compression:
  level: $PK_LEVEL
upload_concurrency: 2
download_concurrency: 2
# The restore rows time base files, as pgBackRest's do: no background WAL
# download (it would also compete with the next row and hold files in the
# directory the next row empties).
restore:
  wal_prefetch_bytes: 0
postgres:
  dsn: host=127.0.0.1 port=$PORT user=postgres dbname=postgres
pgdata: $PGDATA
EOF
cat >"$WORK/br.conf" <<EOF
[global]
repo1-path=$WORK/br-repo
repo1-retention-full=99
compress-type=zst
compress-level=3
process-max=2
start-fast=y
lock-path=$WORK/br-lock
spool-path=$WORK/br-spool
log-path=$LOGS
log-level-console=warn
log-level-file=off
[bench]
pg1-path=$PGDATA
pg1-port=$PORT
pg1-host-user=postgres
pg1-socket-path=$WORK/sock
EOF
cat >"$WORK/walg.json" <<EOF
{
  "WALG_FILE_PREFIX": "$WORK/walg-repo",
  "WALG_COMPRESSION_METHOD": "zstd",
  "WALG_DELTA_MAX_STEPS": "99",
  "WALG_UPLOAD_CONCURRENCY": "2",
  "WALG_DOWNLOAD_CONCURRENCY": "2",
  "PGHOST": "127.0.0.1",
  "PGPORT": "$PORT",
  "PGUSER": "postgres",
  "PGDATABASE": "postgres"
}
EOF
walg() { "$WALG" --config "$WORK/walg.json" "$@"; }
[ -z "$WALG" ] || mkdir -p "$WORK/walg-repo"
cat >"$WORK/archive-pgkeep-and-pgbackrest" <<EOF
#!/bin/sh
# The pushes run side by side: one after the other, each tool's backup
# would also wait for the other tools' pushes of its stop segment. The
# command fails if any push fails.
"$PGKEEP" wal-push --config "$WORK/pk.yml" "\$1" & pk=\$!
wg=
[ -z "$WALG" ] || { "$WALG" --config "$WORK/walg.json" wal-push "\$1" 2>>"$LOGS/wg.log" & wg=\$!; }
pgbackrest --config="$WORK/br.conf" --stanza=bench archive-push "\$1"; rc=\$?
wait \$pk || rc=1
[ -z "\$wg" ] || wait \$wg || rc=1
exit \$rc
EOF
chmod 755 "$WORK/archive-pgkeep-and-pgbackrest"

"$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --data-checksums --no-sync >/dev/null
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK/sock'
max_wal_size = '4GB'
autovacuum = off
archive_mode = on
archive_command = '$WORK/archive-pgkeep-and-pgbackrest %p'
EOF
"$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOGS/pg.log" -w start >/dev/null
"$PGKEEP" repo init --config "$WORK/pk.yml" >/dev/null
pgbackrest --config="$WORK/br.conf" --stanza=bench stanza-create >/dev/null
log "generating pgbench scale $SCALE and a $APPEND_MB MB append-only table"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" ${INIT:+$([ "$INIT" = server ] && echo -I dtGvp)} -q postgres >"$LOGS/pgbench-init.log" 2>&1
APPEND_ROWS=$(( APPEND_MB * 1048576 / 250 ))
psqlc -c "CREATE TABLE appendonly (id bigint, payload text)" \
	-c "INSERT INTO appendonly SELECT g, md5(g::text) || repeat('x', 180) FROM generate_series(1, $APPEND_ROWS) g" \
	-c "VACUUM (FREEZE, ANALYZE)" -c "CHECKPOINT"
ACCOUNTS=$(( SCALE * 100000 ))
log "cluster: $(( $(du -sb --exclude=pg_wal "$PGDATA" | cut -f1) / 1048576 )) MiB; waiting 11 s (pgkeep's mtime margin)"
sleep 11

br_size() { du -sb "$WORK/br-repo/backup" | cut -f1; }
wg_size() { if [ -d "$WORK/walg-repo/basebackups_005" ]; then du -sb "$WORK/walg-repo/basebackups_005" | cut -f1; else echo 0; fi; }
# settle: wait (bounded) until no WAL waits for the archiver, then checkpoint.
settle() {
	local i
	for i in $(seq 600); do
		compgen -G "$PGDATA/pg_wal/archive_status/*.ready" >/dev/null || break
		sleep 0.5
	done
	psqlc -c CHECKPOINT
}
printf '%-12s %8s %7s %10s %12s %12s %12s %10s %12s %10s %12s  %s\n' row settle_s pk_s pk_rss_MiB pk_read_MB pk_added_MB pk_logical_MB br_s br_added_MB wg_s wg_added_MB pk_mode >"$WORK/table"
backup_row() {
	local row=$1 pktype=$2 brtype=$3 t0 id js brbefore pk_s br_s ckpt_s pk_rss wgbefore wgfull='' wg_s=- wg_added=-
	t0=$(date +%s.%N)
	settle
	ckpt_s=$(secs "$t0")
	t0=$(date +%s.%N)
	id=$(PGKEEP_CPUPROFILE=${PROFILE_DIR:+$PROFILE_DIR/$row.pprof} /usr/bin/time -f %M -o "$WORK/rss" \
		"$PGKEEP" backup --config "$WORK/pk.yml" --type "$pktype" 2>>"$LOGS/pk.log")
	pk_s=$(secs "$t0")
	pk_rss=$(( $(cat "$WORK/rss") / 1024 ))
	js=$("$PGKEEP" backup show "$id" --json --config "$WORK/pk.yml")
	brbefore=$(br_size 2>/dev/null || echo 0)
	settle
	t0=$(date +%s.%N)
	pgbackrest --config="$WORK/br.conf" --stanza=bench --type="$brtype" backup >>"$LOGS/br.log" 2>&1
	br_s=$(secs "$t0")
	if [ -n "$WALG" ]; then
		[ "$brtype" = full ] && wgfull=--full
		wgbefore=$(wg_size)
		settle
		t0=$(date +%s.%N)
		walg backup-push ${wgfull:+"$wgfull"} "$PGDATA" >>"$LOGS/wg.log" 2>&1
		wg_s=$(secs "$t0")
		wg_added=$(mb $(( $(wg_size) - wgbefore )))
	fi
	printf '%-12s %8s %7s %10s %12s %12s %12s %10s %12s %10s %12s  %s\n' "$row" "$ckpt_s" "$pk_s" "$pk_rss" \
		"$(mb "$(jq -r '.bytes_read // .data_size' <<<"$js")")" "$(mb "$(jq -r .stored_size <<<"$js")")" \
		"$(mb "$(jq -r .data_size <<<"$js")")" "$br_s" "$(mb $(( $(br_size) - brbefore )))" "$wg_s" "$wg_added" \
		"$(jq -r '(.type // "full") + "/" + (.capture.mode // "-")' <<<"$js")" >>"$WORK/table"
	# How pgkeep found the change (map or hash mode, and why it fell back).
	jq -c '{row: "'"$row"'", type, capture}' <<<"$js" >>"$WORK/captures"
	[ "$row" = full ] && FULL_ID=$id
	log "$row done"
}
ROWS=${ROWS:-updates100 updates1pct append2pct nothing}
want() { [[ " $ROWS " == *" $1 "* ]]; }
backup_row full full full
if want updates100; then
	psqlc -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid IN (SELECT 1 + (random() * ($ACCOUNTS - 1))::int FROM generate_series(1, 100))"
	backup_row updates100 incr incr
fi
if want updates1pct; then
	psqlc -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0"
	backup_row updates1pct incr incr
fi
if want append2pct; then
	psqlc -c "INSERT INTO appendonly SELECT g, md5(g::text) || repeat('x', 180) FROM generate_series($APPEND_ROWS + 1, $APPEND_ROWS + $APPEND_ROWS / 50) g"
	backup_row append2pct incr incr
fi
want nothing && backup_row nothing incr incr

CHECK=$(psqlc -c "SELECT sum(abalance) || ':' || (SELECT count(*) FROM appendonly) FROM pgbench_accounts")
# restore_row TOOL [BACKUP]: restore the newest backup (or pgkeep's BACKUP)
# into an empty directory.
restore_row() {
	local tool=$1 backup=${2:-} t0 dir=$WORK/restore what="the newest backup"
	rm -rf "$dir"; mkdir -m 700 "$dir"
	sync
	t0=$(date +%s.%N)
	if [ "$tool" = pgkeep ]; then
		PGKEEP_CPUPROFILE=${PROFILE_DIR:+$PROFILE_DIR/restore-${backup:-newest}.pprof} /usr/bin/time -f %M -o "$WORK/rss" \
			"$PGKEEP" restore --config "$WORK/pk.yml" --pgdata "$dir" ${backup:+--backup "$backup"} >>"$LOGS/pk.log" 2>&1
		[ -n "$backup" ] && what="the full backup"
	elif [ "$tool" = wal-g ]; then
		/usr/bin/time -f %M -o "$WORK/rss" "$WALG" --config "$WORK/walg.json" backup-fetch "$dir" LATEST >>"$LOGS/wg.log" 2>&1
	else
		/usr/bin/time -f %M -o "$WORK/rss" \
			pgbackrest --config="$WORK/br.conf" --stanza=bench --pg1-path="$dir" restore >>"$LOGS/br.log" 2>&1
	fi
	local took; took=$(secs "$t0")
	echo "restore of $what, $tool: $took s, max RSS $(( $(cat "$WORK/rss") / 1024 )) MiB"
	echo "$tool ${backup:-newest} $took" >>"$WORK/restores"
}
echo
wg_version=-
[ -z "$WALG" ] || wg_version=$(walg --version | awk '{print $3}')
echo "pgbench scale $SCALE + ${APPEND_MB} MB append-only; pgBackRest $(pgbackrest version | awk '{print $2}'); WAL-G $wg_version; one run, noisy"
cat "$WORK/table"
cat "$WORK/captures"
# WAL-G's backups (the deltas name their base: base_<wal>_D_<base's wal>).
[ -z "$WALG" ] || walg backup-list --detail 2>>"$LOGS/wg.log"
# What each backup added besides packs (manifest, file maps, indexes),
# and the WAL block maps: the sizes the 10x row is about.
for id in $("$PGKEEP" backup list --json --config "$WORK/pk.yml" | jq -r '.[].id'); do
	echo "$id: manifest, maps and indexes $(du -sb --exclude=pack "$WORK/pk-repo/backups/$id" | cut -f1) bytes"
done
echo "WAL block maps: $(find "$WORK/pk-repo/wal" -name '*.map*' -printf '%s\n' | awk '{s += $1; n++} END {print n " objects, " s " bytes"}')"
# pgkeep's two restores run newest, full, full, newest: each restore frees
# the page cache the one before filled, so the one that goes first pays for
# the reclaim (about 15 % here), and a single pair favours the second.
# An untimed restore goes before them all: the first restore after the
# backups took 2.7-3.7 times a later restore of the same backup on
# 2026-12-02 (Xeon, 2 cores).
if [ "$RESTORES" != 0 ]; then
	restore_row pgkeep "$FULL_ID" >/dev/null
	: >"$WORK/restores"
	restore_row pgkeep
	restore_row pgkeep "$FULL_ID"
	restore_row pgkeep "$FULL_ID"
	restore_row pgkeep
	restore_row pgbackrest
	[ -z "$WALG" ] || restore_row wal-g
	awk -v full="$FULL_ID" '$1 == "pgkeep" { if ($2 == full) f += $3; else n += $3 }
		END { printf "pgkeep restore, newest over full (sums of 2 each): %.2f\n", n / f }' "$WORK/restores"
	echo "pgkeep repository: $(mb "$(du -sb --exclude=wal "$WORK/pk-repo" | cut -f1)") MB without WAL; pgBackRest: $(mb "$(br_size)") MB; WAL-G: $([ -z "$WALG" ] && echo - || echo "$(mb "$(wg_size)") MB")"
fi
echo "(check value $CHECK)"

# Retention by reference (issue 15): 12 backups (7 more, each after 1000
# row updates), delete the oldest half (the full among them), repack with
# no grace; then what the repository stores against what the kept
# backups name (target <= 1.2x). delete runs three times: the second
# removes the packs the first relocated, the third reports the result.
[ "$RETENTION" != 0 ] || exit 0
for k in $(seq 7); do
	psqlc -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid IN (SELECT 1 + (random() * ($ACCOUNTS - 1))::int FROM generate_series(1, 1000))"
	psqlc -c CHECKPOINT
	"$PGKEEP" backup --config "$WORK/pk.yml" --type incr >/dev/null 2>>"$LOGS/pk.log"
done
for k in 1 2 3; do
	out=$("$PGKEEP" delete --config "$WORK/pk.yml" --retain-full 6 --repack-grace 0s 2>&1)
	printf '%s\n' "$out" >>"$LOGS/pk.log"
done
echo "after deleting the oldest 6 of 12 backups: $(grep '^repository: ' <<<"$out"); backups/ holds $(mb "$(du -sb "$WORK/pk-repo/backups" | cut -f1)") MB"
# WAL-G's deltas chain to its full: deleting the oldest half keeps them all.
[ -z "$WALG" ] || echo "retention, WAL-G: n/a"
