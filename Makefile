# oomd: run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
CAPNP_VERSION := $(shell $(GO) list -m -f '{{.Version}}' capnproto.org/go/capnp/v3 2>/dev/null || echo v3.1.0-alpha.2)
GOBIN := $(shell $(GO) env GOPATH)/bin
BIN := bin
CMDS := services/oomd services/execd-stub services/logd-stub apps/hog apps/selftest-client apps/oomctl

# make deb: the oomwatch package (packaging/nfpm.yaml). nfpm is a tool installed pinned
# (make tools), like capnpc-go, so its dependencies stay out of go.mod.
NFPM_VERSION := v2.45.2
DIST := dist
DEB_ARCH := $(shell $(GO) env GOARCH)

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo devel)

# A Debian version must start with a digit: a tag's v1.2.0-3-gabc gives 1.2.0.3.gabc, an
# untagged abc1234-dirty gives 0.0.0+gabc1234.dirty.
DEB_VERSION = $(shell echo '$(VERSION)' | sed -E 's/^v?([0-9]+\.)/\1/; /^[0-9]+\./!s/^/0.0.0+g/; s/-/./g')
PKG_LDFLAGS = -X oomd.dev/oomd/internal/version.Version=$(VERSION) -X oomd.dev/oomd/apps/oomctl/internal/cli.DefaultSocket=/run/oomwatch/oomd.sock

build: ## Build every daemon and app into bin/ (each says which build it is with --version)
	@mkdir -p $(BIN)
	@for c in $(CMDS); do [ -d $$c ] || continue; \
	  $(GO) build -ldflags "-X oomd.dev/oomd/internal/version.Version=$(VERSION)" -o $(BIN)/$$(basename $$c) ./$$c || exit 1; done

test: ## Run all tests (unit, multi-process integration, the .deb install test, VM proof)
	$(GO) test -count=1 -timeout 20m ./...
	@$(MAKE) --no-print-directory deb-test
	@if [ -x scripts/qemu-test.sh ]; then $(MAKE) --no-print-directory qemu-test; fi

run: build ## Run the stack on the host: execd starts logd, oomd, a hog and a critical hog, and you see a kill and a denial
	@./scripts/run.sh

selftest: build ## Run the host selftest non-interactively; exits 0 only on SELFTEST: oom kill ok
	@./scripts/run.sh --selftest

qemu-test: ## Boot a Linux VM under QEMU (TCG): the kill-path proof, the two-boot system-OOM proof, the pressure-victim proof, logd across a power cut
	RUN_UNTIL_MARKER=1 RUN_TIMEOUT=$${RUN_TIMEOUT:-120s} ./scripts/qemu-test.sh
	VM_TEST=oom RUN_UNTIL_MARKER=1 RUN_TIMEOUT=$${OOM_RUN_TIMEOUT:-300s} ./scripts/qemu-test.sh
	VM_TEST=victim RUN_UNTIL_MARKER=1 RUN_TIMEOUT=$${VICTIM_RUN_TIMEOUT:-180s} ./scripts/qemu-test.sh
	VM_TEST=powercut RUN_UNTIL_MARKER=1 RUN_TIMEOUT=$${POWERCUT_RUN_TIMEOUT:-120s} ./scripts/qemu-test.sh

# The binaries are built with the same flags as make build and the e2e tests (only the
# link differs), so after make test's go test this is link-only.
deb: nfpm ## Build dist/oomwatch_<version>-1_<arch>.deb: the stack as oomwatch.service, oomwatchctl, man pages
	@rm -rf $(DIST)/build $(DIST)/man $(DIST)/oomwatch_*.deb && mkdir -p $(DIST)/build
	@for c in services/execd-stub services/logd-stub services/oomd apps/oomctl; do \
	  $(GO) build -ldflags "$(PKG_LDFLAGS)" -o $(DIST)/build/$$(basename $$c) ./$$c || exit 1; done
	@$(GO) run ./packaging/mangen -bin $(DIST)/build -out $(DIST)/man -version $(DEB_VERSION)
	@DEB_VERSION=$(DEB_VERSION) DEB_ARCH=$(DEB_ARCH) $(GOBIN)/nfpm package -f packaging/nfpm.yaml -p deb -t $(DIST)/

deb-test: deb ## Install the .deb on this machine (root), check files, modes, units, --version; remove and purge it
	@DEB_VERSION=$(DEB_VERSION) VERSION=$(VERSION) ./packaging/deb-test.sh $(DIST)/oomwatch_*.deb

tools: nfpm ## Install the capnp compiler (Debian), capnpc-go pinned to go.mod's version, nfpm (make deb)
	@command -v capnp >/dev/null || ./scripts/apt-install.sh capnproto
	@[ -x $(GOBIN)/capnpc-go ] && [ "$$(cat $(GOBIN)/.capnpc-go-version 2>/dev/null)" = "$(CAPNP_VERSION)" ] || \
	  { $(GO) install capnproto.org/go/capnp/v3/capnpc-go@$(CAPNP_VERSION) && echo $(CAPNP_VERSION) > $(GOBIN)/.capnpc-go-version; }

nfpm:
	@[ -x $(GOBIN)/nfpm ] && [ "$$(cat $(GOBIN)/.nfpm-version 2>/dev/null)" = "$(NFPM_VERSION)" ] || \
	  { $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION) && echo $(NFPM_VERSION) > $(GOBIN)/.nfpm-version; }

gen: tools ## Regenerate gen/ from schema/oomd.capnp (gen/oomdpb, and its constants alone in gen/bounds)
	@STD=$$($(GO) mod download -json capnproto.org/go/capnp/v3@$(CAPNP_VERSION) | sed -n 's/.*"Dir": "\(.*\)",/\1/p')/std; \
	  mkdir -p gen/oomdpb && PATH=$(GOBIN):$$PATH capnp compile -I "$$STD" -ogo:gen/oomdpb --src-prefix=schema schema/oomd.capnp
	@mkdir -p gen/bounds && $(GO) run ./scripts/genbounds -package bounds schema/oomd.capnp gen/bounds/bounds.go

check-gen: gen ## Fail if gen/ is stale (differs from what make gen produces)
	@git diff --exit-code --stat -- gen/ || { echo "gen/ is stale: run make gen and commit it"; exit 1; }
	@test -z "$$(git status --porcelain -- gen/)" || { echo "gen/ has untracked files: run make gen and commit it"; exit 1; }

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); [ -z "$$out" ] || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	$(GO) vet ./...

race: ## Run the unit tests under the race detector, then the e2e suite with race-built daemons
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v -e /tests/e2e -e '/services/execd-stub$$')
	OOMD_E2E_RACE=1 $(GO) test -race -count=1 -timeout 30m ./tests/e2e/

# The fault-injection suite of issue 15: one test per fault of docs/reliability/audit-faults.md
# (corruption, torn tails, fsync seams, full disks, crashes, restarts, unsafe paths). `make
# test` runs all of them too, inside `go test ./...`; the power-cut test is VM_TEST=powercut.
FAULT_TESTS := TestSyncIsAnFsync|TestSeqReservation|TestFlippedByte|TestCutOnAFrameBoundary|TestCorrupt|TestTornTail|TestSymlinksRefused|\
  TestWalk|TestOpenFileRefuses|TestDir|TestDamageBecomesACorruptRecord|TestLostRecordBridgesAGap|TestOpenFencesEarlierAppender|TestSyncAckMeansOnDisk|\
  TestSpill|TestAuditor|TestDecisionScan|TestRecoverDecisions|TestPolicyStore|TestLoadPolicyFileRefusesSymlinks|TestDurable|\
  TestRecordCorrupt|TestRecordTorn|TestStoreRefuses|TestOutcomeIsNotOverwritten|TestOomdBinaryLinksNoWayToSignal|TestOomdMakesNoRawSyscall|\
  TestWatchdogStartsWithoutItsDependency|TestWatchdogRestart|\
  TestRestartContinuesADurableDecision|TestCrashWhileLogdIsFrozenDecidesOnce|TestCrashBeforeKilledIsDurable|TestExitAnswered|TestExitBeforeTheAck|TestExitUnanswered|TestExitGivenUp|TestExitWithoutConsequence|TestFullBacklogKeeps|TestReplacedWatcherDoesNotUnprotectTheReport|TestWatchdogComesUpWithoutLogd|TestBadPolicyFileAtStartStillWatches|\
  TestRestartedOomdStillKills|TestLogdOutage|TestSpillSurvivesOomdRestart|TestFrozenLogd|TestPolicySurvivesRestartAndSIGHUP|TestEventSeqsSurviveRestart
empty :=
space := $(empty) $(empty)
FAULT_PKGS := ./internal/frame/ ./internal/safefile/ ./services/logd-stub/... ./services/oomd/... ./services/execd-stub/... ./tests/e2e/

faults: ## Run the fault-injection suite (audit trail and watchdog under corruption, full disks, crashes; docs/reliability/audit-faults.md)
	$(GO) test -count=1 -timeout 15m -run '$(subst $(space),,$(FAULT_TESTS))' $(FAULT_PKGS)

bench: ## Run the Go benchmarks (figures go to docs/perf.md)
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./services/oomd/policy/ | tee /tmp/oomd-bench.txt

bench-idle: ## Idle cost of the oomd stack beside earlyoom, side by side (IDLE_SECONDS=60 IDLE_RUNS=1; scripts/bench/idle.sh; figures go to docs/perf.md)
	@./scripts/bench/idle.sh

bench-idle-stacks: ## bench-idle on IDLE_STACKS=5 fresh stacks (fresh timer phases), with the median ratio
	@./scripts/bench/idle-stacks.sh

clean: ## Remove built binaries, packages and caches
	rm -rf $(BIN) $(DIST) .cache

.PHONY: deb deb-test nfpm help build test run selftest qemu-test tools gen check-gen lint race faults bench bench-idle bench-idle-stacks clean
