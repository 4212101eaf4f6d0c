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
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy) echo "${KUBE_VERSION}" ;;
    etcd) echo "${ETCD_VERSION}" ;;
    kwok) echo "${KWOK_VERSION}" ;;
    metrics-server) echo "${METRICS_SERVER_VERSION}" ;;
    helm) echo "${HELM_VERSION}" ;;
    coredns) echo "${COREDNS_VERSION}" ;;
    *) die "unknown component $1" ;;
  esac
}

# bin_path NAME -> absolute path of the cached binary
bin_path() {
  local v
  v="$(component_version "$1")"
  echo "${CACHE_BIN}/$1-${v}/$1"
}

# proc_marker NAME -> a string only the command line of the process up.sh
# started as NAME holds: the cached binary's path, or for other commands the
# marker start_exe recorded (pids/NAME.marker).
proc_marker() {
  local f="${STATE_DIR}/pids/$1.marker"
  if [[ -f "${f}" ]]; then
    cat "${f}"
  else
    bin_path "$1"
  fi
}

# pid_alive NAME -> true when the recorded process of NAME still runs what
# was started (guards against pid reuse).
pid_alive() {
  local f="${STATE_DIR}/pids/$1.pid" pid
  [[ -f "${f}" ]] || return 1
  pid="$(<"${f}")"
  [[ -n "${pid}" && -r "/proc/${pid}/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -q -- "$(proc_marker "$1")"
}

ALL_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok metrics-server helm)
# The real node's own components (NODE=real), built only when it is asked for.
NODE_COMPONENTS=(kubelet kube-proxy coredns)
