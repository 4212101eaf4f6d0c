# shellcheck shell=bash
# shellcheck disable=SC2034 # variables are used by the scripts that source this
# Common settings for the e2e/cluster scripts. Sourced, not executed.

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${CLUSTER_DIR}/../.." && pwd)"
# shellcheck source=versions.env source-path=SCRIPTDIR
source "${CLUSTER_DIR}/versions.env"

TOLLGATE_CACHE="${TOLLGATE_CACHE:-${HOME}/.cache/tollgate}"
CACHE_BIN="${TOLLGATE_CACHE}/bin"
STATE_DIR="${CLUSTER_STATE_DIR:-${REPO_ROOT}/target/cluster}"

# Go lives outside the default PATH on some machines.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  PATH="${PATH}:/usr/local/go/bin"
fi

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# component_version NAME -> pinned version of that component
component_version() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl) echo "${KUBE_VERSION}" ;;
    etcd) echo "${ETCD_VERSION}" ;;
    kwok) echo "${KWOK_VERSION}" ;;
    metrics-server) echo "${METRICS_SERVER_VERSION}" ;;
    helm) echo "${HELM_VERSION}" ;;
    *) die "unknown component $1" ;;
  esac
}

# bin_path NAME -> absolute path of the cached binary
bin_path() {
  local v
  v="$(component_version "$1")"
  echo "${CACHE_BIN}/$1-${v}/$1"
}

ALL_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok metrics-server helm)
