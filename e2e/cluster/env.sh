#!/usr/bin/env bash
# Print shell exports for the cached cluster tools (kubectl, helm, ...) and the
# local cluster's kubeconfig:
#   eval "$(e2e/cluster/env.sh)"
# With --bin-dirs, print only the colon-separated bin directories.
set -euo pipefail

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dirs=""
for c in "${ALL_COMPONENTS[@]}"; do
  dirs+="${dirs:+:}$(dirname "$(bin_path "${c}")")"
done

if [[ "${1:-}" == --bin-dirs ]]; then
  echo "${dirs}"
  exit 0
fi
# shellcheck disable=SC2016 # $PATH is for the shell that evals this
printf 'export PATH=%q:"$PATH"\n' "${dirs}"
printf 'export KUBECONFIG=%q\n' "${STATE_DIR}/kubeconfig"
