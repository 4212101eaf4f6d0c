# Local Kubernetes control plane for e2e tests (see e2e/cluster/README.md).
# Included by the top-level Makefile; also usable alone:
#   make -f mk/cluster.mk cluster-up
#
#   cluster-tools   build etcd, kube-*, kubectl, kwok, metrics-server, helm
#                   into $(TOLLGATE_CACHE)/bin/<component>-<version>/ (cached)
#   cluster-up      start the cluster (CLUSTER_METRICS=1 adds metrics-server);
#                   admin kubeconfig: target/cluster/kubeconfig.
#                   NODE=real: one real node (containerd, kubelet, kube-proxy,
#                   CoreDNS, metrics-server) in a network namespace of its
#                   own instead of kwok's fake nodes, with the images of
#                   `make images` imported (built first); needs root
#   cluster-down    stop it and remove target/cluster/
#   cluster-env     print shell exports: eval "$(make -s cluster-env)"
#
# CLUSTER_BIN holds the colon-separated bin directories of the cached tools,
# e.g. PATH="$(CLUSTER_BIN):$$PATH" kubectl ... in a recipe.

CLUSTER_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
CLUSTER_SCRIPTS := $(CLUSTER_ROOT)/e2e/cluster
CLUSTER_KUBECONFIG := $(CLUSTER_ROOT)/target/cluster/kubeconfig
CLUSTER_BIN = $(shell $(CLUSTER_SCRIPTS)/env.sh --bin-dirs)

.PHONY: cluster-tools cluster-up cluster-down cluster-env

NODE ?= fake

cluster-tools:
	CLUSTER_NODE=$(NODE) $(CLUSTER_SCRIPTS)/build.sh

cluster-up: cluster-tools $(if $(filter real,$(NODE)),images)
	CLUSTER_NODE=$(NODE) $(CLUSTER_SCRIPTS)/up.sh $(if $(filter real,$(NODE)),--metrics)

cluster-down:
	$(CLUSTER_SCRIPTS)/down.sh

cluster-env:
	@$(CLUSTER_SCRIPTS)/env.sh
