# End-to-end tests (crate tollgate-e2e, tests in e2e/tests/).
# Included by the top-level Makefile; also usable alone:
#   make -f mk/e2e.mk e2e
#
#   e2e   runs `cargo test -p tollgate-e2e` against the cluster named by
#         KUBECONFIG (kind, k3d, ... work unchanged). Without KUBECONFIG it
#         uses the local control plane (e2e/cluster): builds the tools if
#         needed (cached), starts it with e2e/cluster/up.sh and uses
#         target/cluster/kubeconfig. A cluster this target started is stopped
#         again at the end (e2e/cluster/down.sh), also when tests fail or the
#         run is interrupted; a cluster that was already running stays up.
#
# E2E_TEST_THREADS  parallel tests per test binary (default 2)
# E2E_ARGS          extra arguments for the test binaries, e.g.
#                   make e2e E2E_ARGS='--nocapture negative'

E2E_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
E2E_CLUSTER_SCRIPTS := $(E2E_ROOT)/e2e/cluster
CARGO ?= cargo
E2E_TEST_THREADS ?= 2
E2E_ARGS ?=
# The tests run the operator, gateway and sample backend binaries as local
# processes: build them first.
E2E_CARGO_TEST = $(CARGO) build --locked -p tollgate-operator -p tollgate-gateway --bins && \
                 $(CARGO) test -p tollgate-e2e --locked -- --test-threads=$(E2E_TEST_THREADS) $(E2E_ARGS)

.PHONY: e2e

# The recipe is POSIX sh (the top-level Makefile uses bash; alone, make uses sh).
# "Already running" is judged as up.sh does: every recorded control-plane pid
# still runs our binary.
e2e: ## e2e tests against KUBECONFIG, else the local control plane (started and stopped as needed)
	@set -eu; cd "$(E2E_ROOT)"; \
	PATH="$$("$(E2E_CLUSTER_SCRIPTS)/env.sh" --bin-dirs):$$PATH"; export PATH; \
	if [ -n "$${KUBECONFIG:-}" ]; then \
	  echo "e2e: using the cluster of KUBECONFIG=$$KUBECONFIG"; \
	  $(E2E_CARGO_TEST); exit 0; \
	fi; \
	state="$${CLUSTER_STATE_DIR:-$(E2E_ROOT)/target/cluster}"; \
	running=1; \
	for c in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do \
	  pid=$$(cat "$$state/pids/$$c.pid" 2>/dev/null || true); \
	  if [ -z "$$pid" ] || ! tr '\0' ' ' <"/proc/$$pid/cmdline" 2>/dev/null | grep -q -- "/$$c"; then running=0; fi; \
	done; \
	"$(E2E_CLUSTER_SCRIPTS)/build.sh"; \
	kubeconfig=$$("$(E2E_CLUSTER_SCRIPTS)/up.sh" --metrics); \
	kubeconfig=$$(printf '%s\n' "$$kubeconfig" | tail -n 1); \
	[ -f "$$kubeconfig" ] || { echo "e2e: up.sh printed no kubeconfig path" >&2; exit 1; }; \
	if [ "$$running" = 1 ]; then \
	  echo "e2e: using the running local cluster ($$kubeconfig); it stays up"; \
	else \
	  echo "e2e: started the local cluster ($$kubeconfig); stopping it at the end"; \
	  trap 'rc=$$?; trap - EXIT INT TERM; "$(E2E_CLUSTER_SCRIPTS)/down.sh" || { echo "e2e: down.sh failed" >&2; [ "$$rc" != 0 ] || rc=1; }; exit "$$rc"' EXIT; \
	  trap 'exit 130' INT; trap 'exit 143' TERM; \
	fi; \
	export KUBECONFIG="$$kubeconfig"; \
	"$(E2E_CLUSTER_SCRIPTS)/recycle-pvs.sh" >/dev/null || true; \
	start=$$(date +%s); \
	$(E2E_CARGO_TEST); \
	echo "e2e: passed in $$(( $$(date +%s) - start ))s"
