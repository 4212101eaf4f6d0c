#!/usr/bin/env bash
# Stop the local control plane started by up.sh and remove its state
# (target/cluster/). Every process is stopped by its recorded pid: TERM, then
# KILL after a grace period. Afterwards none of the cluster's ports is still
# listening (checked).
#
# Usage: e2e/cluster/down.sh [--keep-logs]
set -euo pipefail

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KEEP_LOGS=0
for arg in "$@"; do
  case "${arg}" in
    --keep-logs) KEEP_LOGS=1 ;;
    -h|--help) sed -n '2,7p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: ${arg}" ;;
  esac
done

PIDS="${STATE_DIR}/pids"
if [[ ! -d "${STATE_DIR}" ]]; then
  log "no cluster state in ${STATE_DIR}: nothing to do"
  exit 0
fi

# The pid is ours only while its command line still names our binary.
ours() { # NAME PID
  [[ -r "/proc/$2/cmdline" ]] && tr '\0' ' ' <"/proc/$2/cmdline" | grep -q -- "$(proc_marker "$1")"
}

# running PID: the process exists and is not a zombie. (Its command line
# empties before its sockets close, so that is no test for "gone"; a zombie
# has closed everything. Our processes are zombies until up.sh exits when
# up.sh itself calls down.sh after a failed start.)
running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z && "${stat:0:1}" != X ]]
}

# stop_group NAME... : TERM all of them, wait up to 10 s, then KILL.
stop_group() {
  local name f pid entry deadline stopped=()
  for name in "$@"; do
    f="${PIDS}/${name}.pid"
    [[ -f "${f}" ]] || continue
    pid="$(<"${f}")"
    if [[ -n "${pid}" ]] && ours "${name}" "${pid}"; then
      kill -TERM "${pid}" 2>/dev/null || true
      stopped+=("${name}:${pid}")
    fi
    rm -f "${f}"
  done
  deadline=$((SECONDS + 10))
  for entry in "${stopped[@]}"; do
    name="${entry%%:*}"; pid="${entry#*:}"
    while running "${pid}" && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if running "${pid}"; then
      log "${name} (pid ${pid}) still running 10s after TERM: sending KILL"
      kill -KILL "${pid}" 2>/dev/null || true
      while running "${pid}"; do sleep 0.1; done
    fi
    log "stopped ${name} (pid ${pid})"
  done
}

# A real node first (its pods, containerd, kubelet, the namespace), while
# the apiserver still answers.
if [[ -f "${STATE_DIR}/state.env" ]] && grep -q '^NETNS=' "${STATE_DIR}/state.env"; then
  # shellcheck source=node.sh source-path=SCRIPTDIR
  source "${CLUSTER_DIR}/node.sh"
  node_down
fi

# etcd last: kube-apiserver's graceful shutdown still talks to it (stopped
# together, the apiserver hangs on etcd until KILLed).
stop_group metrics-server kwok kube-scheduler kube-controller-manager kube-apiserver
stop_group etcd

# Check that none of the recorded ports is still listening.
listening_ports() {
  local key port out=""
  while IFS='=' read -r key port; do
    [[ "${key}" == *_PORT && -n "${port}" ]] || continue
    if ss -Htln "sport = :${port}" 2>/dev/null | grep -q .; then
      out+=" ${key}=${port}"
    fi
  done <"${STATE_DIR}/state.env"
  echo "${out}"
}
if [[ -f "${STATE_DIR}/state.env" ]]; then
  deadline=$((SECONDS + 5))
  while leftover="$(listening_ports)" && [[ -n "${leftover}" ]] && ((SECONDS < deadline)); do
    sleep 0.2
  done
  [[ -z "${leftover}" ]] || die "still listening after stop:${leftover} (see ss -ltnp)"
fi

if ((KEEP_LOGS)); then
  find "${STATE_DIR}" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
  log "cluster stopped; logs kept in ${STATE_DIR}/logs"
else
  rm -rf "${STATE_DIR}"
  log "cluster stopped; ${STATE_DIR} removed"
fi
