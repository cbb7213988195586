#!/usr/bin/env bash
# bench/replica.sh: provisioning a Patroni replica with pgkeep create-replica
# vs Patroni's built-in basebackup method, in the same run.
#
# Runs TestReplicaBench (internal/e2e/replica_bench_test.go) on a real
# cluster, all on 127.0.0.1: etcd, Patroni 3.0.2 and PostgreSQL 15 as the
# postgres user. The leader gets a pgbench database (pgbench -i -s SCALE),
# then one pgkeep backup into a local repository (archive_command is pgkeep
# wal-push throughout). Two more members then provision themselves in turn,
# REPS times each, alternating which method goes first:
#   pgkeep      create_replica_methods [pgkeep, basebackup] (pgkeep must do it:
#               a fallback to basebackup fails the run)
#   basebackup  create_replica_methods [basebackup]: pg_basebackup -X stream
#               --checkpoint=fast from the leader
#
# Time: MODE=fresh (default) starts Patroni on an empty data directory (a new
# replica); MODE=reinit runs `patronictl reinit --force` on a running replica
# (pgkeep's keep_data: true then makes it a delta restore, basebackup starts
# from scratch). The clock stops when the leader's pg_stat_replication shows
# the member streaming on a connection opened after the start and the member
# returns the row the leader wrote just before the start. "create" is the
# part until Patroni logs "replica has been created using <method>";
# start+catchup is the rest (PostgreSQL start, archive replay, streaming).
#
# Bytes from the primary: the leader advertises a counting TCP proxy (in the
# test process) as its connect_address, so every replication connection to
# it (pg_basebackup's BASE_BACKUP and WAL streams, the new member's
# walreceiver) goes through the proxy, which counts the bytes the leader
# sends, exactly; the benchmark's own queries bypass it. Bytes on
# connections whose client sent BASE_BACKUP are shown apart. The proxy is a
# plain read/write copy in Go, in the path of both methods (PROXY=off leaves
# it out, to see what it costs; bytes are then not counted). The leader's
# log (log_replication_commands=on) is also searched for BASE_BACKUP during
# each provisioning ("BB in pg log"): it must stay false for pgkeep.
#
# Reading the figures: both methods write the whole database into the new
# data directory and fsync it. Over loopback pg_basebackup's transfer costs
# next to nothing, so the times mostly measure that writing (plus pgkeep's
# decompression and checksum checks, and Patroni's own start-up, about a
# second); the bytes from the primary are what a real network and the
# primary's disks would carry.
#
# Cleanup: the test removes everything when it ends, even on failure; if go
# test is interrupted or hits its -timeout, this script kills what is left
# (the test's session and any postmaster under its work directory) and
# removes the directory.
#
# Usage: bash bench/replica.sh                (as root, like the e2e tests; needs
#                                              make deps: patroni, etcd-server, PostgreSQL 15)
#        SCALE=10 REPS=1 bash bench/replica.sh        (a quick try)
#        MODE=reinit bash bench/replica.sh
#        PROXY=off                                     (times without the counting proxy)
#        LOGS=1                                        (show each member's Patroni and pgkeep log)
#        TIMEOUT=180m                                  (go test -timeout, default 90m)
set -euo pipefail

SCALE=${SCALE:-100}
REPS=${REPS:-3}
MODE=${MODE:-fresh}
PROXY=${PROXY:-on}
LOGS=${LOGS:-}
TIMEOUT=${TIMEOUT:-90m}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

for p in go patroni patronictl etcd; do
	command -v "$p" >/dev/null || { echo "$p not found (make deps)" >&2; exit 1; }
done
if [ "$(id -u)" != 0 ]; then
	echo "note: not root; PostgreSQL and Patroni run as $(id -un) (the e2e tests run as root and use the postgres user)" >&2
fi

# Everything the test creates (its TMPDIR) lives under WORK; postgres must
# be able to reach it.
WORK=$(mktemp -d "${TMPDIR:-/tmp}"/pgkeep-bench-replica.XXXXXX)
chmod 755 "$WORK"

sweep() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -s "$WORK/sid" ]; then
		sid=$(cat "$WORK/sid")
		pids=$(ps -eo pid=,sid= | awk -v s="$sid" '$2 == s { print $1 }')
		[ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
	fi
	# Patroni starts each postmaster in a session of its own.
	while IFS= read -r f; do
		pid=$(head -n 1 "$f" 2>/dev/null || true)
		if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$WORK/"; then
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done < <(find "$WORK" -maxdepth 4 -name postmaster.pid 2>/dev/null)
	sleep 1
	rm -rf "$WORK" 2>/dev/null || { sleep 2; rm -rf "$WORK"; }
	exit "$rc"
}
trap sweep EXIT
trap 'exit 130' INT TERM

echo "== replica provisioning bench: SCALE=$SCALE REPS=$REPS MODE=$MODE PROXY=$PROXY ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
cd "$ROOT"
# go test runs in a session of its own, whose id the sweep uses; in the
# background, so that an interrupt reaches the trap at once.
setsid -w bash -c 'echo $$ >"$0/sid"; exec "$@"' "$WORK" \
	env TMPDIR="$WORK" PGKEEP_BENCH_REPLICA=1 PGKEEP_BENCH_SCALE="$SCALE" PGKEEP_BENCH_REPS="$REPS" \
	PGKEEP_BENCH_MODE="$MODE" PGKEEP_BENCH_PROXY="$PROXY" PGKEEP_BENCH_LOGS="$LOGS" PGKEEP_BENCH_REPORT="$WORK/report.txt" \
	go test ./internal/e2e/ -run '^TestReplicaBench$' -count=1 -v -timeout "$TIMEOUT" 2>&1 &
wait $!
[ -s "$WORK/report.txt" ] || { echo "no report: the benchmark failed (output above)" >&2; exit 1; }
cat "$WORK/report.txt"
