#!/usr/bin/env bash
# Stop the local control plane started by up.sh and remove its state
# (target/cluster/). Every process is stopped by its recorded pid: TERM, then
# KILL after a grace period. Afterwards none of the cluster's ports is still
# listening (checked).
#
# Usage: e2e/cluster/down.sh [--keep-logs]
set -euo pipefail

# shellcheck source=lib.sh
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
  [[ -r "/proc/$2/cmdline" ]] && tr '\0' ' ' <"/proc/$2/cmdline" | grep -q -- "$(bin_path "$1")"
}

# Stop in reverse start order so nothing reconnects to a dying apiserver.
stopped=()
for name in metrics-server kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
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
  while ours "${name}" "${pid}" && ((SECONDS < deadline)); do
    sleep 0.1
  done
  if ours "${name}" "${pid}"; then
    log "${name} (pid ${pid}) ignored TERM: sending KILL"
    kill -KILL "${pid}" 2>/dev/null || true
    while ours "${name}" "${pid}"; do sleep 0.1; done
  fi
  log "stopped ${name} (pid ${pid})"
done

# Check that none of the recorded ports is still listening.
if [[ -f "${STATE_DIR}/state.env" ]]; then
  leftover=""
  while IFS='=' read -r key port; do
    [[ "${key}" == *_PORT && -n "${port}" ]] || continue
    if ss -Htln "sport = :${port}" 2>/dev/null | grep -q .; then
      leftover+=" ${key}=${port}"
    fi
  done <"${STATE_DIR}/state.env"
  [[ -z "${leftover}" ]] || die "still listening after stop:${leftover} (see ss -ltnp)"
fi

if ((KEEP_LOGS)); then
  find "${STATE_DIR}" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
  log "cluster stopped; logs kept in ${STATE_DIR}/logs"
else
  rm -rf "${STATE_DIR}"
  log "cluster stopped; ${STATE_DIR} removed"
fi
