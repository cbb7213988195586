#!/usr/bin/env bash
# bench/rto.sh: restore-to-query (RTO) of pgkeep vs pgBackRest, in the same
# run, on the same WAL, against the floor.
#
# A throwaway PostgreSQL 15 (127.0.0.1 only) with pgbench scale SCALE (20)
# archives every segment, with one archive_command, into four repositories:
# pgkeep and pgBackRest, each local and on MinIO (127.0.0.1, TLS with a
# throwaway CA: pgBackRest 2.45 talks to S3 over TLS only; pgkeep gets the
# CA through the AWS SDK's AWS_CA_BUNDLE), and keeps a plain copy of each
# segment for the floor. Each tool takes a full base backup into each of its
# repositories; then pgbench runs and bulk updates of a slice of
# pgbench_accounts write WAL_MB (2048) of WAL, a marker row is committed last
# and its segment switched and archived. wal_compression is off,
# max_wal_size large and checkpoint_timeout long: no checkpoint runs after
# the backups, so recovery replays all of that WAL.
#
# Runs, for each repository kind (local, s3), each REPS (2) times, the
# order rotating by repetition:
#   pgkeep      pgkeep restore --archive-mode off (downloads the WAL into
#               pg_wal/pgkeep/prefetch while it writes the base files, up to
#               restore.wal_prefetch_bytes, default 1 GiB; wal-fetch's
#               prefetch does the rest), then pg_ctl start: archive recovery
#               to the end of the archive, promoted
#   pgbackrest  pgbackrest restore --archive-mode=off (Debian's 2.45,
#               archive-async=y, process-max=2, spool-path set: archive-get
#               queues segments ahead), then pg_ctl start, the same
#   floor       pgkeep restore with restore.wal_prefetch_bytes 0 (the base
#               files only: the restore phase), every archived segment
#               copied into pg_wal (untimed), recovery.signal removed: crash
#               recovery from backup_label through all of pg_wal, no
#               restore_command at all
# Phases: restore = until the restore command exits; replay = from pg_ctl
# start until the log says "database system is ready to accept connections"
# (after promotion; for the floor, after crash recovery). Each run is then
# checked, untimed: not in recovery, the marker row there, pgbench_history
# exactly the source's. The restored clusters all get the same settings
# (restored.conf below: fsync on, shared_buffers, archive_mode off).
# `sync` runs before each timed run. Load averages are printed: the machine
# may be shared.
#
#   pgkeep-base only with PK_BASE_BIN=BINARY: the pgkeep run with another
#               build (e.g. main's), for a before/after in the same run
# Usage: bash bench/rto.sh                  (needs: make build deps; pgbackrest)
#        WAL_MB=256 REPS=1 bash bench/rto.sh   (quick)
#        KINDS=local bash bench/rto.sh         (no MinIO rows)
#        TMPDIR=/var/tmp bash bench/rto.sh     (where the work directory goes;
#                                               needs ~5x WAL_MB free)
set -euo pipefail

REPS=${REPS:-2}
WAL_MB=${WAL_MB:-2048}
SCALE=${SCALE:-20}
KINDS=${KINDS:-local s3}
SHARED_BUFFERS=${SHARED_BUFFERS:-256MB}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGKEEP_SRC=${PK_BIN:-$ROOT/bin/pgkeep}

find_minio() {
	local p
	for p in "${MINIO_BIN:-}" "${PGKEEP_TEST_MINIO:-}" "$(command -v minio || true)" "$HOME/.cache/pgkeep/bin/minio" /work/cache/bin/minio; do
		if [ -n "$p" ] && [ -x "$p" ]; then
			echo "$p"
			return
		fi
	done
}

if [ "$(id -u)" = 0 ]; then
	# PostgreSQL and pgBackRest run as postgres; so does the whole bench.
	MINIO_SRC=$(find_minio)
	[ -n "$MINIO_SRC" ] || { echo "minio not found (make deps, or MINIO_BIN=...)" >&2; exit 1; }
	[ -x "$PGKEEP_SRC" ] || { echo "no pgkeep binary at $PGKEEP_SRC (make build)" >&2; exit 1; }
	WORK=$(mktemp -d "${TMPDIR:-/tmp}"/pgkeep-bench.XXXXXX)
	chmod 755 "$WORK"
	# shellcheck disable=SC2317 # called by the trap
	outer_cleanup() {
		# Normally the inner script has stopped what it started. If it was
		# interrupted or killed: stop its whole session (it, the tools, MinIO),
		# then any postmaster still running on a directory here.
		local rc=$? sid pids f pid
		trap - EXIT INT TERM
		set +e
		if [ -s "$WORK/sid" ]; then
			sid=$(cat "$WORK/sid")
			pids=$(ps -eo pid=,sid= | awk -v s="$sid" '$2 == s { print $1 }')
			if [ -n "$pids" ]; then
				# shellcheck disable=SC2086
				kill -TERM $pids 2>/dev/null
				sleep 2
				pids=$(ps -eo pid=,sid= | awk -v s="$sid" '$2 == s { print $1 }')
				# shellcheck disable=SC2086
				[ -z "$pids" ] || kill -KILL $pids 2>/dev/null
			fi
		fi
		for f in "$WORK"/pgdata/postmaster.pid "$WORK"/restore/postmaster.pid; do
			[ -f "$f" ] || continue
			pid=$(head -n 1 "$f")
			if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$WORK/"; then
				runuser -u postgres -- "$PGBIN/pg_ctl" -D "$(dirname "$f")" -m immediate -w -t 30 stop >/dev/null 2>&1 ||
					kill -KILL "$pid" 2>/dev/null
			fi
		done
		if [ -n "${KEEP_LOGS:-}" ]; then rm -rf "$KEEP_LOGS"; cp -r "$WORK/logs" "$KEEP_LOGS" && echo "logs copied to $KEEP_LOGS" >&2; fi
		rm -rf "$WORK" 2>/dev/null || { sleep 2; rm -rf "$WORK"; }
		exit "$rc"
	}
	trap outer_cleanup EXIT
	trap 'exit 130' INT TERM
	mkdir "$WORK/bin"
	cp "$PGKEEP_SRC" "$WORK/bin/pgkeep"
	BASE_ARG=
	if [ -n "${PK_BASE_BIN:-}" ]; then cp "$PK_BASE_BIN" "$WORK/bin/pgkeep-base"; BASE_ARG=$WORK/bin/pgkeep-base; fi
	ln "$MINIO_SRC" "$WORK/bin/minio" 2>/dev/null || cp "$MINIO_SRC" "$WORK/bin/minio"
	cp "$0" "$WORK/rto.sh"
	chown -R postgres:postgres "$WORK"
	# The inner script runs in a session of its own, whose id the cleanup
	# uses; in the background, so that INT or TERM reach the trap at once.
	setsid -w bash -c 'echo $$ >"$0/sid"; exec "$@"' "$WORK" \
		runuser -u postgres -- env WORK="$WORK" REPS="$REPS" WAL_MB="$WAL_MB" SCALE="$SCALE" KINDS="$KINDS" \
		SHARED_BUFFERS="$SHARED_BUFFERS" PGBIN="$PGBIN" PK_BIN="$WORK/bin/pgkeep" MINIO_BIN="$WORK/bin/minio" \
		PK_BASE_BIN="$BASE_ARG" bash "$WORK/rto.sh" &
	rc=0
	wait $! || rc=$?
	exit "$rc"
fi

OWN_WORK=
if [ -z "${WORK:-}" ]; then
	WORK=$(mktemp -d "${TMPDIR:-/tmp}"/pgkeep-bench.XXXXXX)
	OWN_WORK=1
fi
PGKEEP=${PK_BIN:-$PGKEEP_SRC}
PGKEEP_BASE=${PK_BASE_BIN:-}
MINIO=$(find_minio)
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }
[ -x "$PGKEEP" ] || { echo "no pgkeep binary at $PGKEEP (make build)" >&2; exit 1; }
case " $KINDS " in *" s3 "*) [ -n "$MINIO" ] || { echo "minio not found (make deps, or MINIO_BIN=..., or KINDS=local)" >&2; exit 1; } ;; esac
for t in openssl curl; do
	command -v "$t" >/dev/null || { echo "$t is needed (apt-get install openssl curl)" >&2; exit 1; }
done
for k in $KINDS; do case $k in local | s3) ;; *) echo "unknown kind $k (local, s3)" >&2; exit 1 ;; esac; done

# --- helpers
free_port() {
	local p
	while :; do
		p=$(( 20000 + RANDOM % 20000 ))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

SOCK=$WORK/sock
RES=$WORK/results
LOGS=$WORK/logs
R=$WORK/restore
mkdir -p "$SOCK" "$RES" "$LOGS" "$WORK/br-lock" "$WORK/br-spool" "$WORK/walcopy" "$WORK/repos"
PGDATA=$WORK/pgdata
PORT=$(free_port)
RPORT=$(free_port)
SRC_UP=
MINIO_PID=

cleanup() {
	local rc=$?
	set +e
	[ -n "$SRC_UP" ] && "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1
	[ -f "$R/postmaster.pid" ] && "$PGBIN/pg_ctl" -D "$R" -m immediate stop >/dev/null 2>&1
	if [ -n "$MINIO_PID" ]; then
		kill "$MINIO_PID" 2>/dev/null
		wait "$MINIO_PID" 2>/dev/null
	fi
	[ $rc -eq 0 ] || echo "bench failed (exit $rc); logs were in $LOGS" >&2
	# KEEP_LOGS=DIR: keep the logs (PostgreSQL's, the tools', the restored
	# copies' postgresql.auto.conf) in DIR.
	if [ -n "${KEEP_LOGS:-}" ] && [ -n "$OWN_WORK" ]; then rm -rf "$KEEP_LOGS"; cp -r "$LOGS" "$KEEP_LOGS" && echo "logs copied to $KEEP_LOGS" >&2; fi
	[ -n "$OWN_WORK" ] && rm -rf "$WORK"
	return $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- MinIO over TLS on 127.0.0.1, with a throwaway CA (as bench/backup.sh).
TLS=$WORK/tls
S3_KEY=pgkeepbench
S3_SECRET=pgkeep-bench-secret-$RANDOM$RANDOM
S3_BUCKET=bench
MPORT=
case " $KINDS " in *" s3 "*)
	mkdir -p "$TLS/certs/CAs"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
		-subj /CN=pgkeep-bench-ca -keyout "$TLS/ca.key" -out "$TLS/ca.crt" 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-subj /CN=127.0.0.1 -keyout "$TLS/certs/private.key" -out "$TLS/srv.csr" 2>/dev/null
	printf 'subjectAltName=IP:127.0.0.1,DNS:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$TLS/ext"
	openssl x509 -req -in "$TLS/srv.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" -CAcreateserial -days 2 \
		-extfile "$TLS/ext" -out "$TLS/certs/public.crt" 2>/dev/null
	cp "$TLS/ca.crt" "$TLS/certs/CAs/"
	MPORT=$(free_port)
	CPORT=$(free_port)
	log "MinIO on https://127.0.0.1:$MPORT ($MINIO)"
	MINIO_ROOT_USER=$S3_KEY MINIO_ROOT_PASSWORD=$S3_SECRET MINIO_BROWSER=off MINIO_UPDATE=off MINIO_CI_CD=1 \
		"$MINIO" server --quiet --address "127.0.0.1:$MPORT" --console-address "127.0.0.1:$CPORT" \
		--certs-dir "$TLS/certs" "$WORK/minio-data" >"$LOGS/minio.log" 2>&1 &
	MINIO_PID=$!
	for _ in $(seq 1 300); do
		curl -sf --cacert "$TLS/ca.crt" "https://127.0.0.1:$MPORT/minio/health/live" >/dev/null && break
		kill -0 "$MINIO_PID" 2>/dev/null || { cat "$LOGS/minio.log" >&2; exit 1; }
		sleep 0.1
	done
	curl -sf --cacert "$TLS/ca.crt" "https://127.0.0.1:$MPORT/minio/health/live" >/dev/null ||
		{ echo "MinIO did not come up" >&2; tail "$LOGS/minio.log" >&2; exit 1; }
	# MinIO may answer "live" a moment before it takes a bucket.
	for i in $(seq 1 50); do
		curl -sf --cacert "$TLS/ca.crt" --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_KEY:$S3_SECRET" \
			-X PUT "https://127.0.0.1:$MPORT/$S3_BUCKET" >/dev/null 2>"$LOGS/bucket.log" && break
		[ "$i" = 50 ] && { echo "could not create bucket $S3_BUCKET" >&2; cat "$LOGS/bucket.log" >&2; tail "$LOGS/minio.log" >&2; exit 1; }
		sleep 0.2
	done
	# pgkeep's S3 credentials and CA come from the standard AWS environment.
	export AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET AWS_REGION=us-east-1
	export AWS_CA_BUNDLE=$TLS/ca.crt AWS_EC2_METADATA_DISABLED=true
	;;
esac

# --- configurations. pk-KIND.yml / br-KIND.conf: the source (push, backup);
# pk-KIND-r.yml / br-KIND-r.conf: the restored copy in $R; pk-KIND-floor.yml:
# the floor's restore (base files only).
pk_repo() {
	case $1 in
	local) echo "repository: file://$WORK/repos/pk-local" ;;
	s3) printf 'repository: s3://%s/pgkeep\ns3:\n  endpoint: https://127.0.0.1:%s\n  region: us-east-1\n  path_style: true\n' "$S3_BUCKET" "$MPORT" ;;
	esac
	printf 'compression:\n  level: 1\nupload_concurrency: 2\ndownload_concurrency: 2\n'
}
br_repo() {
	echo "[global]"
	case $1 in
	local) echo "repo1-path=$WORK/repos/br-local" ;;
	s3) cat <<EOF
repo1-type=s3
repo1-path=/pgbackrest
repo1-s3-bucket=$S3_BUCKET
repo1-s3-endpoint=127.0.0.1
repo1-storage-port=$MPORT
repo1-s3-region=us-east-1
repo1-s3-uri-style=path
repo1-s3-key=$S3_KEY
repo1-s3-key-secret=$S3_SECRET
repo1-storage-ca-file=$TLS/ca.crt
EOF
		;;
	esac
	cat <<EOF
repo1-retention-full=9999999
compress-type=zst
compress-level=3
process-max=2
start-fast=y
log-level-console=warn
log-level-file=off
lock-path=$WORK/br-lock
spool-path=$WORK/br-spool
EOF
}
for k in $KINDS; do
	{ pk_repo "$k"; printf 'postgres:\n  dsn: host=127.0.0.1 port=%s user=postgres dbname=postgres\npgdata: %s\n' "$PORT" "$PGDATA"; } >"$WORK/pk-$k.yml"
	{ pk_repo "$k"; printf 'postgres:\n  dsn: host=127.0.0.1 port=%s user=postgres dbname=postgres\npgdata: %s\n' "$RPORT" "$R"; } >"$WORK/pk-$k-r.yml"
	{ cat "$WORK/pk-$k-r.yml"; printf 'restore:\n  wal_prefetch_bytes: 0\n'; } >"$WORK/pk-$k-floor.yml"
	{ br_repo "$k"; printf 'archive-async=n\n\n[bench]\npg1-path=%s\npg1-port=%s\npg1-socket-path=%s\n' "$PGDATA" "$PORT" "$SOCK"; } >"$WORK/br-$k.conf"
	{ br_repo "$k"; printf 'archive-async=y\n\n[bench]\npg1-path=%s\npg1-port=%s\npg1-socket-path=%s\n' "$R" "$RPORT" "$SOCK"; } >"$WORK/br-$k-r.conf"
	[ "$k" = local ] && mkdir -p "$WORK/repos/pk-local" "$WORK/repos/br-local"
done

# archive_command: while $WORK/archive-on exists, every segment goes into
# every repository and into $WORK/walcopy (the floor's pg_wal); before,
# segments are discarded. (pgBackRest's backup insists that archive_command
# mentions pgbackrest.)
ARCHIVE_CMD=$WORK/archive-pgkeep-and-pgbackrest
{
	printf '#!/usr/bin/env bash\nset -e\n[ -f "%s/archive-on" ] || exit 0\n' "$WORK"
	for k in $KINDS; do
		printf '"%s" wal-push --config "%s/pk-%s.yml" "$1"\n' "$PGKEEP" "$WORK" "$k"
		printf 'pgbackrest --config="%s/br-%s.conf" --stanza=bench archive-push "$1"\n' "$WORK" "$k"
	done
	printf 'f=$(basename "$1")\ncp "$1" "%s/walcopy/.$f.tmp"\nmv "%s/walcopy/.$f.tmp" "%s/walcopy/$f"\n' "$WORK" "$WORK" "$WORK"
} >"$ARCHIVE_CMD"
chmod 755 "$ARCHIVE_CMD"

psqlc() { "$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1 "$@"; }
psqlr() { "$PGBIN/psql" -h 127.0.0.1 -p "$RPORT" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1 "$@"; }

wait_archived() {
	local i
	for i in $(seq 1 3000); do
		compgen -G "$PGDATA/pg_wal/archive_status/*.ready" >/dev/null || return 0
		[ "$i" = 3000 ] && { echo "archiver stuck; see $LOGS/pg.log" >&2; exit 1; }
		sleep 0.2
	done
}

# --- the source cluster
T0=$SECONDS
log "source: PostgreSQL on 127.0.0.1:$PORT, pgbench scale $SCALE; load $(loadavg)"
"$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --data-checksums --no-sync >/dev/null
MAXWAL=$(( WAL_MB * 2 + 4096 ))
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
fsync = off
shared_buffers = '$SHARED_BUFFERS'
wal_compression = off
max_wal_size = '${MAXWAL}MB'
checkpoint_timeout = '1d'
archive_mode = on
archive_command = '$ARCHIVE_CMD %p'
log_checkpoints = on
EOF
"$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOGS/pg.log" -w start >/dev/null
SRC_UP=1
"$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -I dtGvp -q postgres >"$LOGS/pgbench-init.log" 2>&1 ||
	{ tail "$LOGS/pgbench-init.log" >&2; exit 1; }
psqlc -c "CREATE TABLE rto_marker (id int PRIMARY KEY, token text NOT NULL)"
for k in $KINDS; do
	"$PGKEEP" repo init --config "$WORK/pk-$k.yml" >"$LOGS/init-pk-$k.log" 2>&1 || { cat "$LOGS/init-pk-$k.log" >&2; exit 1; }
	pgbackrest --config="$WORK/br-$k.conf" --stanza=bench stanza-create >"$LOGS/init-br-$k.log" 2>&1 ||
		{ cat "$LOGS/init-br-$k.log" >&2; exit 1; }
done
psqlc -c "SELECT pg_switch_wal()" >/dev/null
wait_archived
touch "$WORK/archive-on"
# Base backups, pgkeep's first: its restores replay the most WAL (the few
# segments of the later backups' checkpoints and switches).
for k in $KINDS; do
	log "base backup: pgkeep, $k"
	"$PGKEEP" backup --config "$WORK/pk-$k.yml" >"$LOGS/backup-pk-$k.log" 2>&1 || { cat "$LOGS/backup-pk-$k.log" >&2; exit 1; }
done
for k in $KINDS; do
	log "base backup: pgBackRest, $k"
	pgbackrest --config="$WORK/br-$k.conf" --stanza=bench --type=full backup >"$LOGS/backup-br-$k.log" 2>&1 ||
		{ cat "$LOGS/backup-br-$k.log" >&2; exit 1; }
done

# --- WAL_MB of WAL: pgbench runs between bulk updates of a 1/16 slice of
# pgbench_accounts (pgbench alone writes WAL slowly here); stops once the
# bytes are written.
START_LSN=$(psqlc -c "SELECT pg_current_wal_lsn()")
TARGET=$(( WAL_MB * 1048576 ))
log "writing $WAL_MB MB of WAL from $START_LSN"
i=0
while :; do
	done_bytes=$(psqlc -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$START_LSN')::bigint")
	[ "$done_bytes" -lt "$TARGET" ] || break
	"$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c 2 -j 2 -T 2 postgres >>"$LOGS/pgbench.log" 2>&1
	psqlc -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 16 = $(( i % 16 ))"
	i=$(( i + 1 ))
	[ $(( i % 10 )) != 0 ] || log "    $(( done_bytes / 1048576 )) MB; load $(loadavg)"
done
TOKEN=rto-$RANDOM$RANDOM-$(date +%s%N)
psqlc -c "INSERT INTO rto_marker VALUES (1, '$TOKEN')"
END_LSN=$(psqlc -c "SELECT pg_current_wal_lsn()")
psqlc -c "SELECT pg_switch_wal()" >/dev/null
CHECK_SQL="SELECT (SELECT string_agg(token, ',') FROM rto_marker) || ':' || (SELECT count(*) || ':' || coalesce(sum(delta), 0) FROM pgbench_history)"
CHECK_VALUE=$(psqlc -c "$CHECK_SQL")
WAL_BYTES=$(psqlc -c "SELECT pg_wal_lsn_diff('$END_LSN', '$START_LSN')::bigint")
log "marker committed at $END_LSN; waiting for the archiver"
wait_archived
rm "$WORK/archive-on"
"$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
SRC_UP=
NSEG=$(ls "$WORK/walcopy" | grep -cE '^[0-9A-F]{24}$')
log "source: $(( WAL_BYTES / 1048576 )) MB of WAL after the backups, $NSEG segments archived, made in $(( SECONDS - T0 )) s"
rm -rf "$PGDATA"

# --- the restored copies: the same settings for every tool.
restored_conf() {
	cat >>"$R/postgresql.conf" <<EOF
# bench/rto.sh: the restored copy
port = $RPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCK'
fsync = on
shared_buffers = '$SHARED_BUFFERS'
max_wal_size = '${MAXWAL}MB'
checkpoint_timeout = '1d'
archive_mode = off
log_checkpoints = on
EOF
}

# replay LOGFILE: start the copy in $R, wait until it accepts connections
# as a primary, echo the seconds.
replay() {
	local logf=$1 t0 t1 i
	t0=$(now)
	"$PGBIN/pg_ctl" -D "$R" -l "$logf" -W start >/dev/null
	for i in $(seq 1 72000); do
		if grep -q 'database system is ready to accept connections' "$logf" 2>/dev/null; then
			t1=$(now)
			elapsed "$t0" "$t1"
			return 0
		fi
		if [ $(( i % 20 )) = 0 ] && ! "$PGBIN/pg_ctl" -D "$R" status >/dev/null 2>&1; then
			echo "restored cluster stopped; see $logf" >&2
			tail -n 30 "$logf" >&2
			return 1
		fi
		sleep 0.05
	done
	echo "restored cluster did not finish recovery within an hour" >&2
	return 1
}

# one_run KIND TOOL REP
one_run() {
	local k=$1 tool=$2 rep=$3 key="$1.$2" t0 t1 rs rp got la
	rm -rf "$R" "$WORK/br-spool"/*
	mkdir -m 700 "$R"
	sync
	la=$(loadavg)
	t0=$(now)
	case $tool in
	pgkeep) "$PGKEEP" restore --config "$WORK/pk-$k-r.yml" --pgdata "$R" --archive-mode off >"$LOGS/$key.$rep.restore.log" 2>&1 ;;
	pgkeep-base) "$PGKEEP_BASE" restore --config "$WORK/pk-$k-r.yml" --pgdata "$R" --archive-mode off >"$LOGS/$key.$rep.restore.log" 2>&1 ;;
	floor) "$PGKEEP" restore --config "$WORK/pk-$k-floor.yml" --pgdata "$R" --archive-mode off >"$LOGS/$key.$rep.restore.log" 2>&1 ;;
	pgbackrest) pgbackrest --config="$WORK/br-$k-r.conf" --stanza=bench restore --archive-mode=off >"$LOGS/$key.$rep.restore.log" 2>&1 ;;
	esac || { echo "FAILED: $tool restore from $k" >&2; tail -n 30 "$LOGS/$key.$rep.restore.log" >&2; exit 1; }
	t1=$(now)
	rs=$(elapsed "$t0" "$t1")
	restored_conf
	if [ "$tool" = floor ]; then
		# Untimed: every archived segment into pg_wal; crash recovery from
		# backup_label, no restore_command.
		rm -f "$R/recovery.signal" "$R/standby.signal"
		sed -i '/^restore_command/d' "$R/postgresql.auto.conf"
		find "$WORK/walcopy" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9A-F]{24}' -exec cp -t "$R/pg_wal/" {} +
		sync
	fi
	[ "$rep" != 1 ] || cp "$R/postgresql.auto.conf" "$LOGS/$key.auto.conf"
	if [ "$tool" = pgbackrest ] && [ "$rep" = 1 ]; then
		# pgBackRest's async archive-get queues segments in the spool.
		( sleep 3; find "$WORK/br-spool" -type f | wc -l >"$LOGS/$key.spool-files" ) &
	fi
	rp=$(replay "$LOGS/$key.$rep.pg.log") || exit 1
	got=$(psqlr -c "SELECT pg_is_in_recovery()")
	[ "$got" = f ] || { echo "FAILED: $tool ($k): still in recovery" >&2; exit 1; }
	got=$(psqlr -c "$CHECK_SQL")
	if [ "$got" != "$CHECK_VALUE" ]; then
		echo "FAILED: $tool ($k) recovered $got, the source had $CHECK_VALUE" >&2
		tail -n 20 "$LOGS/$key.$rep.pg.log" >&2
		exit 1
	fi
	"$PGBIN/pg_ctl" -D "$R" -m immediate -w stop >/dev/null
	echo "$rs" >>"$RES/$key.restore"
	echo "$rp" >>"$RES/$key.replay"
	elapsed 0 "$(awk -v a="$rs" -v b="$rp" 'BEGIN { print a + b }')" >>"$RES/$key.total"
	echo "$la" | cut -d' ' -f1 >>"$RES/load1"
	printf '    %-10s %-5s restore %7.2f s  replay %7.2f s  total %7.2f s  (marker there; load before: %s)\n' \
		"$tool" "$k" "$rs" "$rp" "$(tail -n 1 "$RES/$key.total")" "$la"
}

TOOLS=(pgkeep pgbackrest floor)
[ -z "$PGKEEP_BASE" ] || TOOLS+=(pgkeep-base)
NT=${#TOOLS[@]}
for rep in $(seq 1 "$REPS"); do
	for k in $KINDS; do
		log "rep $rep, repository $k"
		for j in $(seq 0 $(( NT - 1 ))); do
			one_run "$k" "${TOOLS[$(( (j + rep - 1) % NT ))]}" "$rep"
		done
	done
done
rm -rf "$R"

# --- the table
echo
echo "pgkeep $("$PGKEEP" version | head -n 1 | cut -d' ' -f2) vs $(pgbackrest version) (archive-async=y, process-max=2); $(nproc) cores"
echo "pgbench scale $SCALE; $(( WAL_BYTES / 1048576 )) MB of WAL after the base backup ($NSEG segments archived); $REPS runs each, medians; total $(( (SECONDS - T0) / 60 )) min"
echo "load average (1 min) before the runs: $(sort -n "$RES/load1" | head -n 1) .. $(sort -n "$RES/load1" | tail -n 1); now $(loadavg)"
echo "restore = until the restore command exits; replay = pg_ctl start until ready to accept connections (promoted)"
echo
line() { printf '%-6s %-11s %8s %8s %8s %8s %9s\n' "$@"; }
line repo tool "restore" "replay" "total" "x floor" "x pgBR"
for k in $KINDS; do
	fl=$(median <"$RES/$k.floor.total"); br=$(median <"$RES/$k.pgbackrest.total")
	for tool in floor pgkeep ${PGKEEP_BASE:+pgkeep-base} pgbackrest; do
		t=$(median <"$RES/$k.$tool.total")
		line "$k" "$tool" "$(median <"$RES/$k.$tool.restore")" "$(median <"$RES/$k.$tool.replay")" "$t" "$(div "$t" "$fl")" "$(div "$t" "$br")"
	done
done
echo
for k in $KINDS; do
	for tool in pgkeep pgbackrest; do
		echo "$k $tool: $(grep -h '^restore_command' "$LOGS/$k.$tool.auto.conf" | tail -n 1)"
	done
	[ ! -s "$LOGS/$k.pgbackrest.spool-files" ] || echo "$k pgbackrest: $(cat "$LOGS/$k.pgbackrest.spool-files") files in the archive-get spool 3 s after start"
done
echo
for k in $KINDS; do
	pk=$(median <"$RES/$k.pgkeep.total"); fl=$(median <"$RES/$k.floor.total"); br=$(median <"$RES/$k.pgbackrest.total")
	case $k in local) lim=1.05 ;; s3) lim=1.10 ;; esac
	rf=$(div "$pk" "$fl"); rb=$(div "$pk" "$br")
	v1=met; awk -v r="$rf" -v l="$lim" 'BEGIN { exit !(r + 0 <= l) }' || v1="NOT met"
	v2=met; awk -v r="$rb" 'BEGIN { exit !(r + 0 <= 0.5) }' || v2="NOT met"
	echo "$k: pgkeep/floor $rf (target <= $lim: $v1); pgkeep/pgBackRest $rb (target <= 0.50: $v2)"
done
