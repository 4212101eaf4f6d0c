#!/usr/bin/env bash
# Make the local cluster's Released hostPath volumes Available again: empty
# their directory and drop the stale claimRef. The pool volumes use the
# Retain policy (there is no provisioner and no kubelet to recycle them), so
# run this between e2e runs that reuse one cluster.
set -euo pipefail

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kctl() { "$(bin_path kubectl)" --kubeconfig "${STATE_DIR}/kubeconfig" "$@"; }

count=0
while read -r name phase path; do
  [[ "${phase}" == Released ]] || continue
  case "${path}" in
    "${STATE_DIR}/volumes/"*) find "${path}" -mindepth 1 -delete 2>/dev/null || true ;;
    *) continue ;; # not one of ours
  esac
  kctl patch pv "${name}" --type=json -p '[{"op":"remove","path":"/spec/claimRef"}]' >/dev/null
  count=$((count + 1))
done < <(kctl get pv -l tollgate.dev/volume \
  -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase} {.spec.hostPath.path}{"\n"}{end}')
log "${count} released volume(s) made Available again"
