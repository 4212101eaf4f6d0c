#!/usr/bin/env bash
# Runs a command against a Kubernetes cluster, with the cached cluster tools
# (kubectl, helm) on PATH and KUBECONFIG set:
#   e2e/cluster/with-cluster.sh COMMAND [ARGS...]
# - KUBECONFIG set: that cluster (kind, k3d, a real one), untouched.
# - Otherwise the local control plane: built if needed (cached), started
#   with up.sh --metrics (CLUSTER_NODE=real: with the real node), and stopped again with down.sh at the end (also
#   when the command fails or the run is interrupted) if this script started
#   it; a cluster that was already running stays up. Released
#   PersistentVolumes of earlier runs are recycled first.
# "Already running" is judged as up.sh does: every recorded control-plane
# pid still runs our binary. Used by `make e2e` and `make bench`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PATH="$("${here}/env.sh" --bin-dirs):${PATH}"
export PATH

if [[ -n "${KUBECONFIG:-}" ]]; then
  echo "with-cluster: using the cluster of KUBECONFIG=${KUBECONFIG}" >&2
  exec "$@"
fi

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "${here}/lib.sh"
running=1
if [[ "${CLUSTER_NODE:-fake}" == real ]]; then
  components=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet)
else
  components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
fi
for c in "${components[@]}"; do
  pid=$(cat "${STATE_DIR}/pids/${c}.pid" 2>/dev/null || true)
  if [[ -z "${pid}" ]] || ! tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -q -- "/${c}"; then
    running=0
  fi
done

"${here}/build.sh"
kubeconfig=$("${here}/up.sh" --metrics | tail -n 1)
[[ -f "${kubeconfig}" ]] || { echo "with-cluster: up.sh printed no kubeconfig path" >&2; exit 1; }
if [[ "${running}" == 1 ]]; then
  echo "with-cluster: using the running local cluster (${kubeconfig}); it stays up" >&2
else
  echo "with-cluster: started the local cluster (${kubeconfig}); stopping it at the end" >&2
  stop() {
    local rc=$?
    trap - EXIT INT TERM
    "${here}/down.sh" || { echo "with-cluster: down.sh failed" >&2; [[ "${rc}" != 0 ]] || rc=1; }
    exit "${rc}"
  }
  trap stop EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
fi
export KUBECONFIG="${kubeconfig}"
"${here}/recycle-pvs.sh" >/dev/null || true
"$@"
