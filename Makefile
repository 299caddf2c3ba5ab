# The two commands of the quick start: `make demo` and `make test`.
# Both install the Debian packages they need (scripts/install-deps.sh), then build and run.

CARGO ?= cargo
# One profile for binaries and tests, so everything is built once.
PROFILE := --release

.PHONY: demo test deps-build deps-test build bench clean

deps-build:
	@scripts/install-deps.sh build

deps-test:
	@scripts/install-deps.sh test

build: deps-build
	$(CARGO) build $(PROFILE) --workspace --bins

## Runs the demo on built-in data (see scripts/demo.sh).
demo: build
	@scripts/demo.sh

## Runs everything CI runs: formatting, lints, and the tests of the whole workspace.
test: deps-test
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(PROFILE) --workspace --all-targets -- -D warnings
	$(CARGO) test $(PROFILE) --workspace --no-fail-fast

## Engine benchmarks against the shared workloads (figures go to docs/benchmarks.md).
bench: build
	@scripts/bench-engine.sh

clean:
	$(CARGO) clean
	rm -rf demo-run
