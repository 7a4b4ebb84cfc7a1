# ferry: `make` (or `make help`) lists the targets.
# Targets that need Redis/PostgreSQL start them with scripts/services (state in .state/,
# override with FERRY_STATE_DIR) and export REDIS_URL / DATABASE_URL to what they run.
# With KEEP_SERVICES=0 (the default when CI=true) services that this make run started
# are stopped at the end; services that were already up are always left running.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.ONESHELL:

export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)

GO          ?= go
BIN         ?= bin/ferry
PKGS        ?= ./...
TEST_FLAGS  ?= -race -count=1 -timeout 14m
SHORT_FLAGS ?= -short -count=1 -timeout 5m
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Default: keep them for developers (other sessions may share .state/), stop them in CI.
KEEP_SERVICES ?= $(if $(filter true 1,$(CI)),0,1)
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     ?= -X main.version=$(VERSION)

# with_services: start (or reuse) Redis + PostgreSQL, export their URLs, and arrange
# to stop them on exit if this run started them and KEEP_SERVICES is not 1.
define with_services
was_up=0; scripts/services status >/dev/null 2>&1 && was_up=1 || true
eval "$$(scripts/services start)"
if [ "$$was_up" = 0 ] && [ "$(KEEP_SERVICES)" != 1 ]; then
	trap 'scripts/services stop >&2 || true' EXIT
fi
echo "REDIS_URL=$$REDIS_URL DATABASE_URL=$$DATABASE_URL" >&2
endef

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_.-]+:.*?## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	echo
	echo "  Variables: KEEP_SERVICES=0|1 (stop services this run started; default 1, 0 if CI=true), FERRY_STATE_DIR, FERRY_NO_CHROMIUM=1,"
	echo "             PKGS=./queue/... (packages to test), TEST_FLAGS, SHORT_FLAGS"

.PHONY: build
build: ## Build bin/ferry
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/ferry

# The PostgreSQL tests again, every connection through PgBouncer in
# transaction mode (scripts/services runs one): engines, legacy, web, CLI,
# schema migrations and the worker-process, gate and legacy interop tests.
PGBOUNCER_PKGS ?= ./internal/batched/... ./internal/legacy/... ./internal/web/... ./internal/dbmigrate/... ./internal/ferryschema/... ./jobs/... ./cli/...
PGBOUNCER_RUN  ?= BBM|DB|BM|Web|Hostile

.PHONY: test
test: ## Start services, then go vet, the full race-enabled test suite, and the PostgreSQL tests through PgBouncer
	@$(with_services)
	$(GO) vet $(PKGS)
	$(GO) test $(TEST_FLAGS) $(PKGS)
	if [ -n "$${FERRY_PGBOUNCER_URL:-}" ]; then
		echo "== again through PgBouncer (transaction mode): $(PGBOUNCER_PKGS), ./test -run '$(PGBOUNCER_RUN)'" >&2
		FERRY_TEST_VIA_PGBOUNCER=1 $(GO) test $(TEST_FLAGS) $(PGBOUNCER_PKGS)
		FERRY_TEST_VIA_PGBOUNCER=1 $(GO) test $(TEST_FLAGS) -run '$(PGBOUNCER_RUN)' ./test/
	else
		echo "== FERRY_PGBOUNCER_URL is not set: skipping the PgBouncer pass" >&2
	fi

.PHONY: test-pgbouncer
test-pgbouncer: ## Start services, then only the PgBouncer pass
	@$(with_services)
	FERRY_TEST_VIA_PGBOUNCER=1 $(GO) test $(TEST_FLAGS) $(PGBOUNCER_PKGS)
	FERRY_TEST_VIA_PGBOUNCER=1 $(GO) test $(TEST_FLAGS) -run '$(PGBOUNCER_RUN)' ./test/

.PHONY: test-short
test-short: ## Start services, then the quick tests (-short, no race detector)
	@$(with_services)
	$(GO) test $(SHORT_FLAGS) $(PKGS)

.PHONY: bench
bench: build ## Side-by-side benchmarks (vs Ruby Sidekiq / a PL/pgSQL loop) and failovers; results go in BENCHMARKS.md
	@$(with_services)
	echo "== go run ./bench/throughput -runs 3   (no-op jobs: ferry vs Ruby Sidekiq 6.4 and 7.2)" >&2
	$(GO) run ./bench/throughput -runs 3 -ferry $(BIN)
	echo "== go run ./bench/bbm -rows 5000000   (backfill: ferry vs PL/pgSQL keyset loop)" >&2
	$(GO) run ./bench/bbm -rows 5000000
	echo "== go run ./bench/bbm -rows 500000 -load -only-load   (p99 of a pgbench write load during a migration; paced at 2%, so fewer rows)" >&2
	$(GO) run ./bench/bbm -rows 500000 -load -only-load
	echo "== go run ./bench/eta -rows 20000000 -runs 3   (the ETA bbm status shows vs the time actually left, idle)" >&2
	$(GO) run ./bench/eta -rows 20000000 -runs 3
	echo "== go run ./bench/eta -rows 3000000 -load -rate 500 -runs 2   (the same under a pgbench write load of 500 UPDATEs/s)" >&2
	$(GO) run ./bench/eta -rows 3000000 -load -rate 500 -runs 2
	echo "== go run ./bench/steal -jobs 10000,100000   (legacy steal: ferry vs Ruby scan-and-delete)" >&2
	$(GO) run ./bench/steal -jobs 10000,100000
	echo "== go run ./bench/bmdrain -jobs 2000 -workers 1,3 -class-concurrency 1,4   (legacy jobs drained by worker processes)" >&2
	$(GO) run ./bench/bmdrain -ferry $(BIN) -jobs 2000 -workers 1,3 -class-concurrency 1,4
	echo "== go run ./bench/failover -ferry $(BIN)   (Redis Sentinel: SENTINEL FAILOVER, SIGKILL of the master, 20,000 jobs; PostgreSQL stop -m fast/immediate mid-migration, direct and via PgBouncer)" >&2
	$(GO) run ./bench/failover -ferry $(BIN)
	echo "== go run ./bench/failover -only redis -redis-faults failover,sigkill-lag -jobs 300 -rate 20 -job-ms 2000   (a backlog of 2 s jobs: what a failover loses)" >&2
	$(GO) run ./bench/failover -only redis -redis-faults failover,sigkill-lag -jobs 300 -rate 20 -job-ms 2000

.PHONY: demo
demo: build ## Start services, build, and run `bin/ferry demo`
	@$(with_services)
	$(BIN) demo $(DEMO_ARGS)

.PHONY: lint
lint: fmt-check ## gofmt -s check, go vet + staticcheck (pinned)
	$(GO) vet $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)

.PHONY: fmt
fmt: ## gofmt -s -w every Go file
	files=$$(find . -name '*.go' -not -path './.state/*' -not -path './vendor/*' -not -path './tmp/*')
	[ -z "$$files" ] || gofmt -s -w $$files

.PHONY: fmt-check
fmt-check: ## Fail if any Go file is not gofmt -s clean
	files=$$(find . -name '*.go' -not -path './.state/*' -not -path './vendor/*' -not -path './tmp/*')
	bad=$$([ -z "$$files" ] || gofmt -s -l $$files)
	if [ -n "$$bad" ]; then echo "not gofmt -s clean:" >&2; echo "$$bad" >&2; exit 1; fi

.PHONY: services-start
services-start: ## Start (or reuse) Redis + PostgreSQL; prints the export lines
	@scripts/services start

.PHONY: services-stop
services-stop: ## Stop Redis + PostgreSQL
	@scripts/services stop

.PHONY: services-status
services-status: ## Show whether Redis + PostgreSQL are up
	@scripts/services status

.PHONY: clean
clean: ## Remove bin/ (services state in .state/ is kept)
	rm -rf bin
