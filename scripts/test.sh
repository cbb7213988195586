#!/usr/bin/env bash
# scripts/test.sh: the Go tests of `make test`, in two streams at once.
#
# The e2e package alone takes most of the run, and `go test ./...` runs
# one package's tests one after another. So the longest e2e tests (E2E_A)
# run in one stream while the other runs every other package and then the
# rest of e2e (a new e2e test lands there unless it is added to E2E_A).
# Two streams at a time, as `go test -p 2` ran before: timing-sensitive
# tests (failover, exactly-once scheduling) see the same load. Each stream
# draws test ports from a range of its own (internal/testport).
#
# Usage: bash scripts/test.sh            (GO=go by default)
set -uo pipefail
GO=${GO:-go}
cd "$(dirname "$0")/.."

# The etcd/Patroni tests and a few more long ones: about half of the e2e
# package and the unit packages together (measured with
# `go test -json ./internal/e2e` on 2 cores, 2026-12-01: these ~1290 s of
# ~1740 s of e2e, beside ~840 s of unit packages on a loaded machine; a CI
# run then took 1122 s for this stream and 1624 s for the other, before
# TestBackupFaults, TestPointInTimeRecovery, TestIncrementalBackups and
# TestDrill moved here).
E2E_A='^(TestPatroni[A-Za-z]*|TestStandaloneDaemonExactlyOnce|TestDaemonMetricsPrometheus|TestReplicaStreamsPromptly|TestReplicaBench|TestFaultSuite|TestArchiveAndFetchEverySegment|TestRunbooks|TestBackupFaults|TestPointInTimeRecovery|TestIncrementalBackups|TestDrill)$'

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
units=$($GO list ./... | grep -v '/internal/e2e$')

# stream NAME PORTS CMD...: runs CMD with its output prefixed by NAME and
# its exit status in $logs/NAME.rc.
stream() {
	local name=$1 ports=$2
	shift 2
	(
		PGKEEP_TEST_PORTS=$ports "$@" 2>&1
		echo $? >"$logs/$name.rc"
	) | sed -u "s/^/[$name] /" | tee "$logs/$name.out"
}

# The unit packages one at a time (-p 1: this stream is one of two), then
# the e2e tests not in E2E_A.
units_then_e2e_b() {
	local rc=0
	# shellcheck disable=SC2086 # one word per package
	$GO test -count=1 -p 1 -timeout 50m $units || rc=$?
	# Run on after a failed unit package: the e2e results still tell.
	$GO test -count=1 -timeout 50m -skip "$E2E_A" ./internal/e2e || rc=$?
	return $rc
}

stream units+e2e-b 20000-25999 units_then_e2e_b &
stream e2e-a 26000-31999 "$GO" test -count=1 -timeout 50m -run "$E2E_A" ./internal/e2e &
wait

rc=0
for s in units+e2e-b e2e-a; do
	r=$(cat "$logs/$s.rc" 2>/dev/null || echo 1)
	if [ "$r" != 0 ]; then
		echo "test stream $s failed (exit $r)" >&2
		rc=1
		# A failed test's output ends with its servers' logs: repeat
		# what says why (the FAIL lines, the test files' own lines and
		# panics) last, where a truncated CI log still shows it.
		grep -E -e '--- FAIL|^\[[^]]*\] +[A-Za-z0-9_]+_test\.go:[0-9]+:|panic:|^\[[^]]*\] FAIL' "$logs/$s.out" | tail -n 60 | cut -c1-900 >&2
	fi
done
exit $rc
