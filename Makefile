# pgkeep build and test entry points. `make test` is what CI runs: it installs
# everything the tests need on a fresh Debian 12 machine, then runs them.

GO            ?= go
CACHE         ?= $(HOME)/.cache/pgkeep
# MinIO is built from its Go module (no prebuilt downloads) and cached.
MINIO_VERSION ?= v0.0.0-20260212201848-7aac2a2c5b7c
MINIO         := $(CACHE)/bin/minio
# versitygw (Versity's S3 gateway, posix backend) is the second S3
# implementation the storage conformance suite runs against; built the same way.
VERSITYGW_VERSION ?= v1.8.0
VERSITYGW     := $(CACHE)/bin/versitygw
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT        ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS       := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# Packages and the image are built by tools/packaging, a module of its own
# (nfpm and go-containerregistry as Go libraries; no prebuilt tools, no
# container daemon, no registry).
PACKAGING     := cd tools/packaging && GOFLAGS=-mod=mod $(GO) run .

export PGKEEP_TEST_MINIO := $(MINIO)
export PGKEEP_TEST_VERSITYGW := $(VERSITYGW)

# Seconds each fuzz target runs in `make fuzz` (`make test` runs each for 3s).
FUZZTIME      ?= 30s

.PHONY: all build test deps lint bench demo clean fuzz man completion docs package image

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/pgkeep ./cmd/pgkeep

# Man pages (one per command) from the cobra command tree, into build/man.
man:
	rm -rf build/man
	$(GO) run -tags gendocs ./cmd/pgkeep gen-docs --man build/man

# bash, zsh and fish completion scripts, into build/completion.
completion: build
	mkdir -p build/completion
	bin/pgkeep completion bash >build/completion/pgkeep.bash
	bin/pgkeep completion zsh >build/completion/_pgkeep
	bin/pgkeep completion fish >build/completion/pgkeep.fish

# docs/cli.md, the one-page command reference, from the same tree.
docs:
	$(GO) run -tags gendocs ./cmd/pgkeep gen-docs --markdown docs/cli.md

# build/pgkeep_<version>_amd64.deb and build/pgkeep-<version>.x86_64.rpm:
# the binary, man pages, completion, /etc/pgkeep/pgkeep.yml (a conffile),
# the examples, the systemd units; postinstall makes /var/lib/pgkeep the
# postgres user's.
package: build man completion
	rm -f build/*.deb build/*.rpm
	$(PACKAGING) package -root $(CURDIR) -version $(VERSION) -out $(CURDIR)/build

# build/image-oci (OCI layout) and build/pgkeep-image.tar (docker/podman
# load): FROM scratch, one layer with /usr/bin/pgkeep.
image: build
	$(PACKAGING) image -root $(CURDIR) -version $(VERSION) -out $(CURDIR)/build

deps: $(MINIO) $(VERSITYGW)
	bash scripts/install-deps.sh

$(MINIO):
	mkdir -p $(CACHE)/bin
	cd /tmp && GOBIN=$(CACHE)/bin GOFLAGS=-mod=mod $(GO) install github.com/minio/minio@$(MINIO_VERSION)

$(VERSITYGW):
	mkdir -p $(CACHE)/bin
	cd /tmp && GOBIN=$(CACHE)/bin GOFLAGS=-mod=mod $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)

lint:
	@test -z "$$(gofmt -l .)" || (gofmt -l . && echo "gofmt: files above need formatting" && exit 1)
	$(GO) vet ./...
	cd tools/packaging && $(GO) vet ./...

test: deps lint
	GO=$(GO) bash scripts/test.sh
	FUZZTIME=3s GO=$(GO) bash scripts/fuzz.sh

# Every fuzz target (scripts/fuzz.sh) for FUZZTIME each.
fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) bash scripts/fuzz.sh

bench: build deps
	$(GO) test -run '^$$' -bench . -benchtime 20x ./repo/
	bash bench/wal.sh

# Full backups and restores: pgkeep vs pgBackRest on pgbench scale 100 and
# 1 GB of random data, local, encrypted and MinIO (REPS=1 SCALE=10
# RANDOM_MB=128 for a quick try). Needs `make deps`.
.PHONY: bench-backup
bench-backup: build
	bash bench/backup.sh

# Replica provisioning: pgkeep create-replica vs Patroni's basebackup (as
# root; SCALE=10 REPS=1 for a quick try). Needs `make deps`.
.PHONY: bench-replica
bench-replica:
	bash bench/replica.sh

# Restore-to-query: pgkeep vs pgBackRest (async archive-get) vs the floor
# (every segment already in pg_wal), 2 GB of WAL, local and MinIO (as root;
# WAL_MB=256 REPS=1 for a quick try). Needs `make deps`.
.PHONY: bench-rto
bench-rto: build
	bash bench/rto.sh

demo: build
	bash scripts/demo.sh

clean:
	rm -rf bin build
