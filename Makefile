# Tollgate — everything starts here. `make run` and `make test` work on a
# fresh machine: they install what they need first (idempotently).

SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
APT_PACKAGES := build-essential pkg-config cmake openssl ca-certificates curl \
                postgresql redis-server nginx haproxy wrk iproute2 psmisc \
                chromium python3-venv fonts-dejavu-core \
                umoci skopeo runc containerd binutils \
                containernetworking-plugins iptables conntrack socat busybox-static

.PHONY: test-under-load load-deps
.PHONY: help deps rust-deps test lint fmt crds crds-check unit browser-deps browser-test browser-run build release run bench bench-quick images images-test disk-check

help: ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps: rust-deps ## install system packages and Rust components (idempotent)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

rust-deps:
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt

fmt: ## format the code
	$(CARGO) fmt --all

lint: rust-deps ## format check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

crds: ## regenerate crds/*.yaml and charts/tollgate/crds/*.yaml from the Rust types
	$(CARGO) run -q --locked -p tollgate-crds --bin crdgen -- crds
	$(CARGO) run -q --locked -p tollgate-crds --bin crdgen -- charts/tollgate/crds

crds-check:
	$(CARGO) run -q --locked -p tollgate-crds --bin crdgen -- --check crds
	$(CARGO) run -q --locked -p tollgate-crds --bin crdgen -- --check charts/tollgate/crds

unit: ## unit and integration tests (no cluster)
	$(CARGO) test --workspace --exclude tollgate-e2e --locked

# The browser tests' Python packages, in a virtualenv cached per requirements file.
BROWSER_VENV := $(HOME)/.cache/tollgate/venv-browser-$(shell sha256sum tests/browser/requirements.txt | cut -c1-12)

browser-deps: deps
	@test -x $(BROWSER_VENV)/bin/pytest || { rm -rf $(BROWSER_VENV) && python3 -m venv $(BROWSER_VENV) && \
	  $(BROWSER_VENV)/bin/pip install -q --disable-pip-version-check -r tests/browser/requirements.txt; }

browser-test: browser-deps ## the developer portal in a real browser (system chromium driven by Playwright)
	$(CARGO) build --locked -p tollgate-gateway --bins
	$(MAKE) --no-print-directory browser-run

# The browser tests on the binaries as built; `make test` runs them after
# `unit`, whose build already made target/debug/tollgate-{gateway,echo}.
browser-run: browser-deps
	$(BROWSER_VENV)/bin/pytest -q -p no:cacheprovider tests/browser

test: disk-check deps lint crds-check unit browser-run images-test e2e e2e-node ## every test (installs what it needs first)

# The integration, browser and e2e suites while stress-ng keeps every core
# busy: a test that passes only on a quiet machine fails here. The binaries
# are built first (building is not under test); LOAD_CPUS hogs (default: one
# per core) run until the suites end, whatever their outcome.
LOAD_CPUS ?= $(shell nproc)

load-deps: deps
	@dpkg -s stress-ng >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends stress-ng >/dev/null; }

test-under-load: load-deps browser-deps ## integration, browser and e2e tests with every core kept busy by stress-ng
	$(CARGO) test --workspace --exclude tollgate-e2e --locked --no-run
	$(CARGO) test -p tollgate-e2e --locked --no-run
	$(CARGO) build --locked -p tollgate-operator -p tollgate-gateway --bins
	@start=$$(date +%s); stress-ng --cpu $(LOAD_CPUS) --timeout 6h --quiet & hog=$$!; \
	trap 'kill $$hog 2>/dev/null; wait $$hog 2>/dev/null' EXIT INT TERM; \
	$(MAKE) --no-print-directory unit browser-run e2e; rc=$$?; \
	echo "test-under-load: exit $$rc after $$(( $$(date +%s) - start ))s with $(LOAD_CPUS) CPU hogs"; exit $$rc

# A cold `make test` leaves about 12 GiB under target/ (debug and release
# builds, images, the cluster's data); say so at once instead of failing
# with "No space left on device" halfway through a build.
TEST_DISK_GIB ?= 12
disk-check:
	@mkdir -p target; avail=$$(df -Pk target | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$$avail" -lt $(TEST_DISK_GIB) ]; then \
	  echo "make test needs about $(TEST_DISK_GIB) GiB free for target/ ($$(pwd)/target): $$avail GiB available" >&2; \
	  echo "(free space, or set TEST_DISK_GIB=<GiB> if this tree is already built)" >&2; exit 1; fi

build:
	$(CARGO) build --workspace --locked

release:
	$(CARGO) build --release --locked -p tollgate-gateway -p tollgate-operator

IMAGE_BINS := -p tollgate-gateway -p tollgate-operator --bin tollgate-gateway --bin tollgate-operator

images: deps ## container images without a daemon: target/images/tollgate-{operator,gateway}.tar (IMAGE_REPO, IMAGE_TAG)
	$(CARGO) build --release --locked $(IMAGE_BINS)
	python3 scripts/images.py

images-test: images ## run the images with runc (read-only root, user 65532) and check a rebuild is identical
	python3 tests/images/run.py

-include mk/cluster.mk
-include mk/e2e.mk

run: deps ## the single-node pattern without a cluster (sample backend + gateway on examples/local)
	$(CARGO) build --release --locked -p tollgate-gateway
	scripts/run-local.sh

BENCH_BINS := -p tollgate-gateway -p tollgate-operator -p tollgate-e2e --bins

bench: deps ## benchmarks against nginx and HAProxy, ~45 min + build (writes docs/benchmarks.md and .json)
	$(CARGO) build --release --locked $(BENCH_BINS)
	$(CARGO) build --release --locked -p tollgate-gateway --example bare_proxy
	python3 scripts/bench.py

bench-quick: deps ## a short benchmark run (a few minutes, no cluster), prints the figures
	$(CARGO) build --release --locked $(BENCH_BINS)
	$(CARGO) build --release --locked -p tollgate-gateway --example bare_proxy
	python3 scripts/bench.py --quick
