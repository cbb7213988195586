#!/usr/bin/env bash
# bench/backup.sh: pgkeep vs pgBackRest full backups and restores, in the
# same run, on the same data.
#
# Two data sets, each in its own throwaway PostgreSQL 15 (127.0.0.1 only,
# data checksums on, so both tools verify every page):
#   pgbench  pgbench -i -s 100 (about 1.5 GB, compresses about 7:1)
#   random   about 1 GB of random bytes (pgcrypto gen_random_bytes, column
#            STORAGE EXTERNAL: TOAST stores it uncompressed), which zstd
#            cannot shrink
# Rows, per data set (ROWS):
#   backup-local    full backup into a local repository
#   backup-enc      the same, encrypted (pgkeep: age X25519 recipient;
#                   pgBackRest: repo1-cipher-type=aes-256-cbc)
#   backup-s3       full backup into MinIO on 127.0.0.1 over TLS
#   restore-local   full restore of the newest backup of the local repository
#                   into an empty directory (not started)
#   restore-enc     the same from the encrypted repository
#   restore-s3      the same from MinIO (not in the default ROWS)
# Settings: pgkeep compression.level PK_LEVEL (default 1, pgkeep's default), upload_concurrency and
# download_concurrency 2; pgBackRest (the Debian package) compress-type=zst,
# compress-level=3, process-max=2, start-fast=y; everything else at its
# default (pgBackRest's repo-bundle is off by default). Both take a fast
# checkpoint and wait until the backup's WAL is archived: archive_command
# pushes, with the tool being measured, into the repository being measured.
#
# Every run is timed with /usr/bin/time (wall, user+sys CPU, max RSS); the
# two tools alternate run by run so machine noise hits both alike, and which
# goes first alternates by repetition (pgkeep first in odd ones); REPS runs
# each (use an even number for balance); medians are printed. `sync` and a
# page-cache prewarm (PREWARM_MB, see prewarm) run, untimed, before each run.
# Old backups are expired between runs (untimed).
#
# Usage: bash bench/backup.sh        (needs: make build deps; pgbackrest installed)
#        REPS=1 SCALE=10 RANDOM_MB=128 bash bench/backup.sh     (a quick look)
#        DATASETS=random ROWS="backup-s3 restore-s3" bash bench/backup.sh
#        TMPDIR=/var/tmp bash bench/backup.sh   (where the work directory goes)
# A restore creates ~1000 files. On ext4 without a journal, creating a file
# scans past inodes deleted in the last minutes (recently_deleted), so in a
# directory with much churn (a busy /tmp) each creation took ~1 ms here,
# adding ~0.8 s to every restore of either tool; elsewhere ~25 us.
set -euo pipefail

REPS=${REPS:-3}
DATASETS=${DATASETS:-pgbench random}
ROWS=${ROWS:-backup-local backup-enc backup-s3 restore-local restore-enc}
SCALE=${SCALE:-100}
PK_LEVEL=${PK_LEVEL:-1}
RANDOM_MB=${RANDOM_MB:-1024}
VERIFY=${VERIFY:-1}
PREWARM_MB=${PREWARM_MB:-2048}
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
		for f in "$WORK"/pgdata-*/postmaster.pid "$WORK"/restore/postmaster.pid; do
			[ -f "$f" ] || continue
			pid=$(head -n 1 "$f")
			if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$WORK/"; then
				runuser -u postgres -- "$PGBIN/pg_ctl" -D "$(dirname "$f")" -m immediate -w -t 30 stop >/dev/null 2>&1 ||
					kill -KILL "$pid" 2>/dev/null
			fi
		done
		rm -rf "$WORK" 2>/dev/null || { sleep 2; rm -rf "$WORK"; }
		exit "$rc"
	}
	trap outer_cleanup EXIT
	trap 'exit 130' INT TERM
	mkdir "$WORK/bin"
	cp "$PGKEEP_SRC" "$WORK/bin/pgkeep"
	ln "$MINIO_SRC" "$WORK/bin/minio" 2>/dev/null || cp "$MINIO_SRC" "$WORK/bin/minio"
	cp "$0" "$WORK/backup.sh"
	chown -R postgres:postgres "$WORK"
	# The inner script runs in a session of its own, whose id the cleanup
	# uses; in the background, so that INT or TERM reach the trap at once.
	setsid -w bash -c 'echo $$ >"$0/sid"; exec "$@"' "$WORK" \
		runuser -u postgres -- env WORK="$WORK" REPS="$REPS" DATASETS="$DATASETS" ROWS="$ROWS" SCALE="$SCALE" \
		RANDOM_MB="$RANDOM_MB" PK_LEVEL="$PK_LEVEL" VERIFY="$VERIFY" PGBIN="$PGBIN" PK_BIN="$WORK/bin/pgkeep" MINIO_BIN="$WORK/bin/minio" \
		PGBR_BUNDLE="${PGBR_BUNDLE:-n}" bash "$WORK/backup.sh" &
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
MINIO=$(find_minio)
PGBR_BUNDLE=${PGBR_BUNDLE:-n}
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }
[ -x "$PGKEEP" ] || { echo "no pgkeep binary at $PGKEEP (make build)" >&2; exit 1; }
[ -n "$MINIO" ] || { echo "minio not found (make deps, or MINIO_BIN=...)" >&2; exit 1; }
for t in /usr/bin/time openssl curl jq; do
	command -v "$t" >/dev/null || { echo "$t is needed (apt-get install time openssl curl jq)" >&2; exit 1; }
done
case " $DATASETS " in *" random "*)
	[ -f /usr/share/postgresql/15/extension/pgcrypto.control ] ||
		{ echo "the random data set needs pgcrypto (postgresql-contrib-15)" >&2; exit 1; } ;;
esac

# --- helpers
free_port() {
	local p
	while :; do
		p=$(( 20000 + RANDOM % 20000 ))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

SOCK=$WORK/sock
RES=$WORK/results
LOGS=$WORK/logs
mkdir -p "$SOCK" "$RES" "$LOGS" "$WORK/br-lock" "$WORK/br-spool"
PGDATA=
PORT=
MINIO_PID=

cleanup() {
	local rc=$?
	set +e
	[ -n "$PGDATA" ] && "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1
	[ -f "$WORK/restore/postmaster.pid" ] && "$PGBIN/pg_ctl" -D "$WORK/restore" -m immediate stop >/dev/null 2>&1
	if [ -n "$MINIO_PID" ]; then
		kill "$MINIO_PID" 2>/dev/null
		wait "$MINIO_PID" 2>/dev/null
	fi
	if [ $rc -ne 0 ]; then
		echo "bench failed (exit $rc); logs were in $LOGS" >&2
	fi
	[ -n "$OWN_WORK" ] && rm -rf "$WORK"
	return $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- MinIO over TLS on 127.0.0.1, with a throwaway CA.
# pgBackRest 2.45 talks to S3 over TLS only; it gets the CA file, pgkeep gets
# it through the AWS SDK's standard AWS_CA_BUNDLE.
TLS=$WORK/tls
mkdir -p "$TLS/certs/CAs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
	-subj /CN=pgkeep-bench-ca -keyout "$TLS/ca.key" -out "$TLS/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
	-subj /CN=127.0.0.1 -keyout "$TLS/certs/private.key" -out "$TLS/srv.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$TLS/ext"
openssl x509 -req -in "$TLS/srv.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" -CAcreateserial -days 2 \
	-extfile "$TLS/ext" -out "$TLS/certs/public.crt" 2>/dev/null
cp "$TLS/ca.crt" "$TLS/certs/CAs/"

S3_KEY=pgkeepbench
S3_SECRET=pgkeep-bench-secret-$RANDOM$RANDOM
S3_BUCKET=bench
MPORT=$(free_port)
CPORT=$(free_port)
log "MinIO on https://127.0.0.1:$MPORT ($MINIO)"
MINIO_ROOT_USER=$S3_KEY MINIO_ROOT_PASSWORD=$S3_SECRET MINIO_BROWSER=off MINIO_UPDATE=off MINIO_CI_CD=1 \
	"$MINIO" server --quiet --address "127.0.0.1:$MPORT" --console-address "127.0.0.1:$CPORT" \
	--certs-dir "$TLS/certs" "$WORK/minio-data" >"$LOGS/minio.log" 2>&1 &
MINIO_PID=$!
echo "$MINIO_PID" >"$WORK/minio.pid"
for _ in $(seq 1 300); do
	curl -sf --cacert "$TLS/ca.crt" "https://127.0.0.1:$MPORT/minio/health/live" >/dev/null && break
	kill -0 "$MINIO_PID" 2>/dev/null || { cat "$LOGS/minio.log" >&2; exit 1; }
	sleep 0.1
done
curl -sf --cacert "$TLS/ca.crt" "https://127.0.0.1:$MPORT/minio/health/live" >/dev/null ||
	{ echo "MinIO did not come up" >&2; tail "$LOGS/minio.log" >&2; exit 1; }
curl -sf --cacert "$TLS/ca.crt" --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_KEY:$S3_SECRET" \
	-X PUT "https://127.0.0.1:$MPORT/$S3_BUCKET" >/dev/null ||
	{ echo "could not create bucket $S3_BUCKET" >&2; exit 1; }
# pgkeep's S3 credentials and CA come from the standard AWS environment only.
export AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET AWS_REGION=us-east-1
export AWS_CA_BUNDLE=$TLS/ca.crt AWS_EC2_METADATA_DISABLED=true

RECIPIENT=$("$PGKEEP" keygen --output "$WORK/identity.txt")
# Full backups on both sides: a pgkeep with incremental backups would take
# an incremental once a backup exists (an older binary has no --type).
PK_FULL=()
"$PGKEEP" backup --help 2>&1 | grep -q -- '--type' && PK_FULL=(--type full)
BR_CIPHER_PASS=$(openssl rand -base64 36 | tr -d '\n')

# archive_command: pushes with the tool and into the repository being
# measured (named in $WORK/archive-target), or discards while none is.
# (pgBackRest's backup insists that archive_command mentions pgbackrest.)
ARCHIVE_CMD=$WORK/archive-pgkeep-or-pgbackrest
cat >"$ARCHIVE_CMD" <<EOF
#!/usr/bin/env bash
t=\$(cat "$WORK/archive-target")
case \$t in
discard) exit 0 ;;
pk-*) exec "$PGKEEP" wal-push --config "$WORK/\$t.yml" "\$1" ;;
br-*) exec pgbackrest --config="$WORK/\$t.conf" --stanza=bench archive-push "\$1" ;;
esac
echo "unknown archive target \$t" >&2
exit 1
EOF
chmod 755 "$ARCHIVE_CMD"
echo discard >"$WORK/archive-target"

# Wait until PostgreSQL has archived everything ready, then switch target.
set_archive_target() {
	local i
	for i in $(seq 1 600); do
		compgen -G "$PGDATA/pg_wal/archive_status/*.ready" >/dev/null || break
		[ "$i" = 600 ] && { echo "archiver stuck; see $LOGS/pg.log" >&2; exit 1; }
		sleep 0.1
	done
	echo "$1" >"$WORK/archive-target"
}

psqlc() { "$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1 "$@"; }

# --- a data set's cluster: loaded with wal_level=minimal (no WAL for the
# bulk load), then restarted with archiving.
make_cluster() {
	local ds=$1
	PGDATA=$WORK/pgdata-$ds
	PORT=$(free_port)
	"$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --data-checksums --no-sync >/dev/null
	cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
fsync = off
max_wal_size = '4GB'
maintenance_work_mem = '256MB'
include_if_exists = 'load.conf'
EOF
	printf "wal_level = minimal\nmax_wal_senders = 0\narchive_mode = off\n" >"$PGDATA/load.conf"
	"$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOGS/pg-$ds.log" -w start >/dev/null
	local t0=$SECONDS
	case $ds in
	pgbench)
		log "pgbench: generating scale $SCALE (server side)"
		"$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -I dtGvp -q postgres >"$LOGS/pgbench-init.log" 2>&1 ||
			{ tail "$LOGS/pgbench-init.log" >&2; exit 1; }
		CHECK_SQL="SELECT count(*) || ':' || sum(abalance) || ':' || sum(hashtext(filler)::bigint) FROM pgbench_accounts"
		;;
	random)
		# Rows of 7984 bytes: exactly four full TOAST chunks, so TOAST
		# pages are ~99% random bytes. Two sessions, two tables, one per core.
		local rows=$(( RANDOM_MB * 1048576 / 7984 / 2 ))
		log "random: generating 2 x $rows rows of 7984 random bytes (~$RANDOM_MB MB)"
		psqlc -c "CREATE EXTENSION pgcrypto"
		local tb pids=()
		for tb in rnd_a rnd_b; do
			psqlc -c "BEGIN" \
				-c "CREATE TABLE $tb (id int PRIMARY KEY, payload bytea)" \
				-c "ALTER TABLE $tb ALTER payload SET STORAGE EXTERNAL" \
				-c "INSERT INTO $tb SELECT g, gen_random_bytes(1024) || gen_random_bytes(1024) || gen_random_bytes(1024) || gen_random_bytes(1024) || gen_random_bytes(1024) || gen_random_bytes(1024) || gen_random_bytes(1024) || gen_random_bytes(816) FROM generate_series(1, $rows) g" \
				-c "COMMIT" &
			pids+=($!)
		done
		wait "${pids[@]}"
		psqlc -c "VACUUM (FREEZE, ANALYZE)"
		CHECK_SQL="SELECT (SELECT count(*) || ':' || sum(length(payload)) || ':' || md5(string_agg(md5(payload), '' ORDER BY id)) FROM rnd_a) || '/' || (SELECT count(*) || ':' || sum(length(payload)) || ':' || md5(string_agg(md5(payload), '' ORDER BY id)) FROM rnd_b)"
		;;
	esac
	"$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
	rm "$PGDATA/load.conf"
	cat >>"$PGDATA/postgresql.conf" <<EOF
archive_mode = on
archive_command = '$ARCHIVE_CMD %p'
EOF
	"$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOGS/pg-$ds.log" -w start >/dev/null
	CHECK_VALUE=$(psqlc -c "$CHECK_SQL")
	DB_BYTES=$(du -sb --exclude=pg_wal "$PGDATA" | cut -f1)
	log "$ds: $(( DB_BYTES / 1048576 )) MiB in $PGDATA (without pg_wal), made in $(( SECONDS - t0 )) s"
}

# --- repositories for the current cluster
make_repos() {
	local ds=$1 v
	for v in local enc s3; do
		{
			case $v in
			local) echo "repository: file://$WORK/repos/pk-local" ;;
			enc) printf 'repository: file://%s/repos/pk-enc\nencryption:\n  recipients: [%s]\n  identity_file: %s\n' "$WORK" "$RECIPIENT" "$WORK/identity.txt" ;;
			s3) printf 'repository: s3://%s/pgkeep-%s\ns3:\n  endpoint: https://127.0.0.1:%s\n  region: us-east-1\n  path_style: true\n' "$S3_BUCKET" "$ds" "$MPORT" ;;
			esac
			cat <<EOF
compression:
  level: $PK_LEVEL
upload_concurrency: 2
download_concurrency: 2
postgres:
  dsn: host=127.0.0.1 port=$PORT user=postgres dbname=postgres
pgdata: $PGDATA
EOF
		} >"$WORK/pk-$v.yml"
		{
			echo "[global]"
			case $v in
			local) echo "repo1-path=$WORK/repos/br-local" ;;
			enc) printf 'repo1-path=%s\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=%s\n' "$WORK/repos/br-enc" "$BR_CIPHER_PASS" ;;
			s3) cat <<EOF
repo1-type=s3
repo1-path=/pgbackrest-$ds
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
repo1-bundle=$PGBR_BUNDLE
compress-type=zst
compress-level=3
process-max=2
start-fast=y
archive-async=n
log-level-console=warn
log-level-file=off
lock-path=$WORK/br-lock
spool-path=$WORK/br-spool

[bench]
pg1-path=$PGDATA
pg1-port=$PORT
pg1-socket-path=$SOCK
EOF
		} >"$WORK/br-$v.conf"
		[ "$v" = s3 ] || mkdir -p "$WORK/repos/pk-$v" "$WORK/repos/br-$v"
		"$PGKEEP" repo init --config "$WORK/pk-$v.yml" >"$LOGS/init-pk-$v.log" 2>&1 ||
			{ cat "$LOGS/init-pk-$v.log" >&2; exit 1; }
		pgbackrest --config="$WORK/br-$v.conf" --stanza=bench stanza-create >"$LOGS/init-br-$v.log" 2>&1 ||
			{ cat "$LOGS/init-br-$v.log" >&2; exit 1; }
	done
	# pgkeep reaches MinIO's certificate only through AWS_CA_BUNDLE: make
	# sure it is honoured (and needed).
	if env -u AWS_CA_BUNDLE "$PGKEEP" backup list --config "$WORK/pk-s3.yml" >"$LOGS/nocabundle.log" 2>&1; then
		echo "warning: pgkeep reached MinIO without AWS_CA_BUNDLE (is TLS verification off?)" >&2
	elif ! grep -qi 'certificate' "$LOGS/nocabundle.log"; then
		echo "warning: pgkeep without AWS_CA_BUNDLE failed for another reason than the certificate:" >&2
		cat "$LOGS/nocabundle.log" >&2
	fi
}

# prewarm (untimed, before every timed run of either tool): write and
# delete PREWARM_MB of page cache. On a VM whose host takes back free memory
# (free page reporting), the first write into memory not touched lately
# faults into the host; without this, whichever run follows an untimed
# step pays for it (the same restore took 1.5 s or 4.9 s by its position).
# The memory freed here is what the timed run writes into next.
prewarm() {
	[ "$PREWARM_MB" -gt 0 ] || return 0
	dd if=/dev/zero of="$WORK/prewarm" bs=1M count="$PREWARM_MB" status=none
	rm -f "$WORK/prewarm"
}

# measure KEY TOOL LOGFILE CMD...: one timed run.
measure() {
	local key=$1 tool=$2 logf=$3 e u s m cpu
	shift 3
	sync
	prewarm
	if ! /usr/bin/time -f '%e %U %S %M' -o "$WORK/time.out" "$@" >"$logf" 2>&1; then
		echo "FAILED: $key $tool: $*" >&2
		tail -n 30 "$logf" >&2
		exit 1
	fi
	read -r e u s m < <(tail -n 1 "$WORK/time.out")
	cpu=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')
	echo "$e" >>"$RES/$key.$tool.wall"
	echo "$cpu" >>"$RES/$key.$tool.cpu"
	echo $(( m / 1024 )) >>"$RES/$key.$tool.rss"
	printf '    %-10s %7.2f s wall  %7.2f CPU-s  %5d MiB max RSS\n' "$tool" "$e" "$cpu" $(( m / 1024 ))
}

backup_pair() {
	local ds=$1 v=$2 rep=$3 key="$1.backup-$2"
	log "$key (rep $rep)"
	local tool
	for tool in $(pair_order "$rep"); do
		if [ "$tool" = pgkeep ]; then
			set_archive_target "pk-$v"
			measure "$key" pgkeep "$LOGS/$key.pk.$rep.log" "$PGKEEP" backup --config "$WORK/pk-$v.yml" "${PK_FULL[@]}"
		else
			set_archive_target "br-$v"
			measure "$key" pgbackrest "$LOGS/$key.br.$rep.log" pgbackrest --config="$WORK/br-$v.conf" --stanza=bench --type=full backup
		fi
	done
	set_archive_target discard
	# Untimed: keep only the newest backup (restore rows use it).
	"$PGKEEP" delete --config "$WORK/pk-$v.yml" --retain-full 1 >"$LOGS/expire-pk.log" 2>&1 ||
		{ cat "$LOGS/expire-pk.log" >&2; exit 1; }
	pgbackrest --config="$WORK/br-$v.conf" --stanza=bench --repo1-retention-full=1 expire >"$LOGS/expire-br.log" 2>&1 ||
		{ cat "$LOGS/expire-br.log" >&2; exit 1; }
	HAVE_BACKUP[$v]=1
}

restore_pair() {
	local ds=$1 v=$2 rep=$3 key="$1.restore-$2"
	if [ -z "${HAVE_BACKUP[$v]:-}" ]; then
		log "$ds: untimed backups into the $v repositories for restore-$v"
		set_archive_target "pk-$v"
		"$PGKEEP" backup --config "$WORK/pk-$v.yml" "${PK_FULL[@]}" >"$LOGS/$ds.prep-pk-$v.log" 2>&1 || { cat "$LOGS/$ds.prep-pk-$v.log" >&2; exit 1; }
		set_archive_target "br-$v"
		pgbackrest --config="$WORK/br-$v.conf" --stanza=bench --type=full backup >"$LOGS/$ds.prep-br-$v.log" 2>&1 || { cat "$LOGS/$ds.prep-br-$v.log" >&2; exit 1; }
		set_archive_target discard
		HAVE_BACKUP[$v]=1
	fi
	log "$key (rep $rep)"
	local tool
	for tool in $(pair_order "$rep"); do
		rm -rf "$WORK/restore"
		mkdir -m 700 "$WORK/restore"
		if [ "$tool" = pgkeep ]; then
			measure "$key" pgkeep "$LOGS/$key.pk.$rep.log" "$PGKEEP" restore --config "$WORK/pk-$v.yml" --pgdata "$WORK/restore"
		else
			measure "$key" pgbackrest "$LOGS/$key.br.$rep.log" pgbackrest --config="$WORK/br-$v.conf" --stanza=bench restore --pg1-path="$WORK/restore"
		fi
		if [ "$VERIFY" = 1 ] && [ "$rep" = 1 ]; then verify_restore "$ds" "$tool"; fi
	done
	rm -rf "$WORK/restore"
}

# pair_order is the order of the two tools in repetition $1: pgkeep first in
# odd repetitions, pgBackRest first in even ones. Whichever runs first after
# an untimed step pays for it (on a VM, the first touch of memory the host
# has not backed yet costs kernel time in every write), so neither tool
# always goes first.
pair_order() {
	if [ $(( $1 % 2 )) = 1 ]; then echo pgkeep pgbackrest; else echo pgbackrest pgkeep; fi
}

# Untimed: start a restored cluster once (recovery fetches the WAL with the
# tool's own restore_command), compare its data with the source, stop it.
verify_restore() {
	local ds=$1 tool=$2 vport got i
	[ -z "${VERIFIED[$ds.$tool]:-}" ] || return 0
	vport=$(free_port)
	printf "port = %s\narchive_mode = off\n" "$vport" >>"$WORK/restore/postgresql.conf"
	"$PGBIN/pg_ctl" -D "$WORK/restore" -l "$LOGS/verify-$ds-$tool.log" -w -t 300 start >/dev/null ||
		{ tail -n 30 "$LOGS/verify-$ds-$tool.log" >&2; exit 1; }
	for i in $(seq 1 600); do
		[ "$("$PGBIN/psql" -h 127.0.0.1 -p "$vport" -U postgres -qAtX -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] && break
		[ "$i" = 600 ] && { echo "restored cluster did not finish recovery" >&2; tail -n 30 "$LOGS/verify-$ds-$tool.log" >&2; exit 1; }
		sleep 0.2
	done
	got=$("$PGBIN/psql" -h 127.0.0.1 -p "$vport" -U postgres -qAtX -v ON_ERROR_STOP=1 -c "$CHECK_SQL")
	"$PGBIN/pg_ctl" -D "$WORK/restore" -m fast -w stop >/dev/null
	if [ "$got" != "$CHECK_VALUE" ]; then
		echo "FAILED: $tool's restore of $ds differs from the source: $got != $CHECK_VALUE" >&2
		exit 1
	fi
	log "    verified: $tool's restore of $ds starts, recovers and has the same data"
	VERIFIED[$ds.$tool]=1
}

declare -A HAVE_BACKUP VERIFIED DBSIZE STORED_PK STORED_BR
T0=$SECONDS
for ds in $DATASETS; do
	case $ds in pgbench | random) ;; *) echo "unknown data set $ds (pgbench, random)" >&2; exit 1 ;; esac
	make_cluster "$ds"
	DBSIZE[$ds]=$DB_BYTES
	make_repos "$ds"
	HAVE_BACKUP=()
	for rep in $(seq 1 "$REPS"); do
		for row in $ROWS; do
			case $row in
			backup-local | backup-enc | backup-s3) backup_pair "$ds" "${row#backup-}" "$rep" ;;
			restore-local | restore-enc | restore-s3) restore_pair "$ds" "${row#restore-}" "$rep" ;;
			*) echo "unknown row $row" >&2; exit 1 ;;
			esac
		done
	done
	# Stored size of the newest backup in the local repositories.
	if [ -n "${HAVE_BACKUP[local]:-}" ]; then
		STORED_PK[$ds]=$("$PGKEEP" backup list --json --config "$WORK/pk-local.yml" | jq '[.[] | select(.status == "complete")] | last | .stored_size')
		STORED_BR[$ds]=$(pgbackrest --config="$WORK/br-local.conf" --stanza=bench info --output=json | jq '.[0].backup | last | .info.repository.delta')
	fi
	set_archive_target discard
	"$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
	PGDATA=
	rm -rf "$WORK/pgdata-$ds" "$WORK/repos"
	curl -sf --cacert "$TLS/ca.crt" --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_KEY:$S3_SECRET" \
		-X DELETE "https://127.0.0.1:$MPORT/$S3_BUCKET?force=true" >/dev/null 2>&1 || true
	curl -sf --cacert "$TLS/ca.crt" --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_KEY:$S3_SECRET" \
		-X PUT "https://127.0.0.1:$MPORT/$S3_BUCKET" >/dev/null 2>&1 || true
done

# --- the table
echo
echo "pgkeep $("$PGKEEP" version | cut -d' ' -f2) vs $(pgbackrest version); $(nproc) cores; $REPS runs each, medians; total $(( (SECONDS - T0) / 60 )) min"
echo "pgkeep: compression.level $PK_LEVEL, upload/download_concurrency 2. pgBackRest: zst level 3, process-max 2, repo-bundle=$PGBR_BUNDLE, start-fast."
echo "MB/s = database size (without pg_wal) / wall time. speedup = pgBackRest time / pgkeep time."
echo "Targets: backup speedup >= 2.8, restore speedup >= 1.5, pgkeep max RSS < 128 MiB."
echo "CPU-s = user+sys of the tool and the processes it waited for (not PostgreSQL's archiver or MinIO)."
echo "RSS = /usr/bin/time's max RSS: for pgBackRest that is its largest single process; with process-max 2"
echo "      it runs a main process and 2 workers at once, so its total is higher than shown."
echo
line() { printf '%-8s %-14s %8s %8s %7s %6s %7s %7s %7s %7s %6s %6s %s\n' "$@"; }
line "data" "row" "pgkeep" "pgBR" "speedup" "target" "pk MB/s" "br MB/s" "pk CPU" "br CPU" "pk RSS" "br RSS" "verdict"
line "" "" "s" "s" "x" "x" "" "" "s" "s" "MiB" "MiB" ""
for ds in $DATASETS; do
	for row in $ROWS; do
		key=$ds.$row
		kw=$(median <"$RES/$key.pgkeep.wall"); bw=$(median <"$RES/$key.pgbackrest.wall")
		kc=$(median <"$RES/$key.pgkeep.cpu"); bc=$(median <"$RES/$key.pgbackrest.cpu")
		km=$(median <"$RES/$key.pgkeep.rss"); bm=$(median <"$RES/$key.pgbackrest.rss")
		sp=$(div "$bw" "$kw")
		mb=$(( ${DBSIZE[$ds]} / 1000000 ))
		case $row in backup-*) target=2.8 ;; *) target=1.5 ;; esac
		verdict=ok
		awk -v s="$sp" -v t="$target" 'BEGIN { exit !(s + 0 >= t) }' || verdict="SLOW"
		maxrss=$(sort -n "$RES/$key.pgkeep.rss" | tail -n 1)
		[ "$maxrss" -lt 128 ] || verdict="$verdict, RSS ${maxrss} MiB >= 128"
		line "$ds" "$row" "$kw" "$bw" "$sp" "$target" "$(div "$mb" "$kw")" "$(div "$mb" "$bw")" \
			"$kc" "$bc" "$km" "$bm" "$verdict"
	done
done
echo
for ds in $DATASETS; do
	if [ -n "${STORED_PK[$ds]:-}" ]; then
		printf '%-8s database %6d MiB; newest local backup stored: pgkeep %6d MiB, pgBackRest %6d MiB\n' "$ds" \
			$(( ${DBSIZE[$ds]} / 1048576 )) $(( ${STORED_PK[$ds]} / 1048576 )) $(( ${STORED_BR[$ds]} / 1048576 ))
	fi
done
