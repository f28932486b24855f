# The project's vocabulary. Every target that needs tools installs them
# first (scripts/tools.sh: pinned Go tools into .bin/, missing Debian
# packages with apt-get), so `make run` and `make test` work on a fresh
# machine.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
export PATH := $(CURDIR)/.bin:$(PATH)

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/kas-project/kas/cmd/kas/app.Version=$(VERSION) -X main.Version=$(VERSION)
# Per test binary; the whole suite takes a few minutes.
TEST_TIMEOUT ?= 20m
# make bench BENCH_SHORT=0 runs the full benchmarks.
BENCH_SHORT ?= 1
# How long make fuzz runs each fuzz target.
FUZZTIME ?= 10s

.PHONY: all tools tools-k8s generate check-generated build run test fuzz bench clean

all: build

tools:
	@scripts/tools.sh

tools-k8s:
	@scripts/tools.sh --k8s

# Go code in gen/ and Ruby stubs in tests/ruby/stubs/, both committed.
generate: tools
	buf lint
	buf generate
	buf generate --template buf.gen.ruby.yaml

check-generated: generate
	@go mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy and commit the result" >&2; exit 1; }
	@if [ -n "$$(git status --porcelain -- gen tests/ruby/stubs)" ]; then \
		git status --short -- gen tests/ruby/stubs; git diff --stat -- gen tests/ruby/stubs; \
		echo "generated code is stale: run make generate and commit the result" >&2; exit 1; \
	fi

build:
	go build -ldflags '$(LDFLAGS)' -o bin/ ./cmd/kas ./cmd/kasctl ./cmd/agentk

# kas all: the control plane and a dataplane node on the embedded database
# (.kas/postgres) with generated keys (.kas/secrets). It prints the
# bin/kasctl and bin/agentk commands that connect a cluster.
run: tools build
	bin/kas all

# KAS_REQUIRE_CLIENTS=1: the Ruby and grpcurl client tests fail instead of
# skipping when a client is missing.
# KAS_REQUIRE_K8S=1: the tests against a real kube-apiserver fail instead of
# skipping when its binaries are missing (tools-k8s builds them, cached).
test: tools-k8s
	go vet ./...
	@unformatted="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted" >&2; exit 1; fi
	KAS_REQUIRE_CLIENTS=1 KAS_REQUIRE_K8S=1 go test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

# Every func FuzzXxx in a _test.go file, each fuzzed for FUZZTIME. Their
# seed corpora (f.Add, testdata/fuzz/FuzzXxx/) also run in make test; a
# failing input found here is written to testdata/fuzz/ to be committed.
fuzz:
	@git ls-files -co --exclude-standard '*_test.go' | xargs grep -l '^func Fuzz' | sort | while read -r f; do \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$$f"); do \
			echo "== $$(dirname "$$f") $$t ($(FUZZTIME))"; \
			go test -run='^$$' -fuzz="^$$t\$$" -fuzztime=$(FUZZTIME) "./$$(dirname "$$f")" || exit 1; \
		done; \
	done

# Each main package under tests/bench is a benchmark command that prints a
# table and accepts -short (also KAS_BENCH_SHORT=1) for a quick run.
bench: tools
	@pkgs="$$(go list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./tests/bench/...)"; \
	if [ -z "$$pkgs" ]; then echo "no benchmark commands under tests/bench"; exit 0; fi; \
	short=; [ "$(BENCH_SHORT)" = 1 ] && short=-short; \
	for p in $$pkgs; do echo "== $$p $$short"; KAS_BENCH_SHORT=$(BENCH_SHORT) go run $$p $$short; done

clean:
	rm -rf bin
