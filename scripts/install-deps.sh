#!/usr/bin/env bash
# Installs what pgkeep's tests and benchmarks need on Debian 12 (PostgreSQL 15
# is expected to be there already). Idempotent and quiet when all is present.
set -euo pipefail

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v pgbackrest >/dev/null || need+=(pgbackrest)
command -v etcd >/dev/null || need+=(etcd-server)
command -v patroni >/dev/null || need+=(patroni)
command -v haproxy >/dev/null || need+=(haproxy)
# daemon/alerts_test.go and internal/e2e: promtool and a real Prometheus.
command -v promtool >/dev/null || need+=(prometheus)
# internal/packaging: man renders the installed pages, systemd-analyze rates
# and verifies the units, file tells a static binary.
command -v man >/dev/null || need+=(man-db)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v file >/dev/null || need+=(file)

if [ ${#need[@]} -gt 0 ]; then
	SUDO=""
	[ "$(id -u)" = 0 ] || SUDO="sudo"
	echo "installing: ${need[*]}"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
	# Debian starts these services on install; tests run their own instances.
	for s in etcd patroni haproxy postgresql prometheus; do
		$SUDO systemctl disable --now "$s" >/dev/null 2>&1 || true
	done
fi
id postgres >/dev/null 2>&1 || { echo "the postgres user is missing" >&2; exit 1; }
