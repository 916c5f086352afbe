# writethrough — common tasks. `make` lists them.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO ?= go
BIN ?= bin/writethrough
# Extra flags for `go test`, e.g. make test TESTFLAGS='-race -run TestPut'.
TESTFLAGS ?=
PKGS ?= ./...
# Measuring time per phase of `make bench`, e.g. make bench BENCHTIME=20s.
BENCHTIME ?= 10s
# More flags for the bench, e.g. BENCHFLAGS="-bin bin/writethrough -keys 1000".
BENCHFLAGS ?=

.PHONY: help run test bench lint chaos services build

help: ## list the targets
	@echo "usage: make <target>"
	@echo
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

run: ## prepare Postgres, Redis and NATS, migrate, and serve the API with the relay
	@deploy/services.sh run
	@$(GO) run ./cmd/writethrough migrate up
	$(GO) run ./cmd/writethrough serve

test: ## prepare the test services and run every test
	@deploy/services.sh test
	@$(GO) build -o bin/testsum ./deploy/testsum
	$(GO) test -json -count=1 -timeout 20m $(TESTFLAGS) $(PKGS) | bin/testsum

# The relay's latency benchmark runs on its own, before the drain, which
# leaves 200k rows to drop and vacuum.
bench: ## compare the write path and cache-hit reads with pgbench and a bare HMGET handler
	@deploy/services.sh test
	@command -v pgbench >/dev/null 2>&1 || { echo "bench: pgbench not found: install it (apt-get install postgresql-contrib or postgresql-client)" >&2; exit 1; }
	$(GO) run ./bench -duration $(BENCHTIME) $(BENCHFLAGS)
	WT_BENCH=1 $(GO) test -count=1 -run TestBenchLatency -v ./relay/
	WT_BENCH=1 $(GO) test -count=1 -run TestBenchDrain -v ./relay/

lint: ## gofmt, go vet, and shellcheck when installed
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if command -v shellcheck >/dev/null 2>&1; then shellcheck deploy/*.sh .ci/run; else echo "lint: shellcheck not installed, shell scripts not checked"; fi

chaos: ## the long fault-injection suite (up to 60 minutes)
	@deploy/services.sh test
	@if [ ! -d internal/chaos ]; then echo "chaos: internal/chaos does not exist in this tree yet; nothing to run"; exit 1; fi
	$(GO) test -tags chaos -count=1 -run TestChaosFull -timeout 60m -v ./internal/chaos/

services: ## only prepare Postgres, Redis and NATS and the databases of run and test
	@deploy/services.sh run
	@deploy/services.sh test

build: ## build the binary into bin/
	$(GO) build -trimpath -o $(BIN) ./cmd/writethrough
