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

.PHONY: e2e e2e-node

# The cluster handling (KUBECONFIG, else the local control plane started and
# stopped as needed) lives in e2e/cluster/with-cluster.sh, shared with
# `make bench`.
e2e: ## e2e tests against KUBECONFIG, else the local control plane (started and stopped as needed)
	@cd "$(E2E_ROOT)" && start=$$(date +%s) && \
	"$(E2E_CLUSTER_SCRIPTS)/with-cluster.sh" sh -c '$(E2E_CARGO_TEST)' && \
	echo "e2e: passed in $$(( $$(date +%s) - start ))s"

# The real-node suite (tests required-features = real-node): the local
# control plane with one real node (CLUSTER_NODE=real, e2e/cluster/node.sh)
# and the images of `make images` imported; one test at a time (they share
# the node's CPU and the artifact volume). Needs root.
E2E_NODE_CARGO_TEST = $(CARGO) test -p tollgate-e2e --locked --features real-node --test 'node_*' -- --test-threads=1 $(E2E_ARGS)

e2e-node: images ## e2e tests on a real node (containerd, kubelet, CoreDNS in a network namespace), helm install of the chart
	@cd "$(E2E_ROOT)" && start=$$(date +%s) && \
	CLUSTER_NODE=real "$(E2E_CLUSTER_SCRIPTS)/with-cluster.sh" sh -c '$(E2E_NODE_CARGO_TEST)' && \
	echo "e2e-node: passed in $$(( $$(date +%s) - start ))s"
