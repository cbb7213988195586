#!/usr/bin/env bash
# Runs every Go fuzz target (func FuzzX(f *testing.F) in a _test.go file)
# for FUZZTIME each: `go test -fuzz` takes one target per package per run.
# `make test` runs each for a few seconds, `make fuzz` for longer. A failing
# input is written to the package's testdata/fuzz/<target>/ by go test:
# commit it with the fix, as a regression seed.
set -euo pipefail
FUZZTIME=${FUZZTIME:-3s}
GO=${GO:-go}
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
fail=0
n=0
start=$SECONDS
while IFS=: read -r file _ decl; do
	name=${decl#func }
	name=${name%%(*}
	pkg=./$(dirname "${file#./}")
	n=$((n + 1))
	if $GO test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 1s "$pkg" >"$log" 2>&1; then
		echo "ok   $pkg $name ($FUZZTIME)"
	else
		echo "FAIL $pkg $name"
		grep -v '^fuzz: elapsed' "$log" | tail -20
		fail=1
	fi
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . | grep -v '/testdata/' | sort)
echo "$n fuzz targets in $((SECONDS - start))s"
exit $fail
