#!/usr/bin/env bash
# Build the local control plane's binaries from the pinned Go modules into
#   ${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/bin/<component>-<version>/<component>
# A component whose binary is already there is skipped, so a warm run takes
# well under a second.
#
# Usage: e2e/cluster/build.sh [component...]     (default: all; with
#        CLUSTER_NODE=real also kubelet, kube-proxy and coredns)
# Env:   TOLLGATE_CACHE   cache root (default ~/.cache/tollgate)
#        GO_BUILD_P       go build -p (default 2; the machine is shared)
#        FORCE=1          rebuild even when present
set -euo pipefail

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null 2>&1 || die "go not found (looked in PATH and /usr/local/go/bin)"

export CGO_ENABLED=0
# readonly: fail loudly if a go.mod/go.sum is incomplete instead of editing it.
export GOFLAGS="${GOFLAGS:--mod=readonly}"
GO_BUILD_P="${GO_BUILD_P:-2}"

# module_dir NAME -> wrapper module that pins it
module_dir() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy) echo "${CLUSTER_DIR}" ;;
    etcd|kwok|metrics-server|helm|coredns) echo "${CLUSTER_DIR}/$1" ;;
    *) die "unknown component $1" ;;
  esac
}

# main_module NAME -> the module that provides the component
main_module() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy) echo "k8s.io/kubernetes" ;;
    etcd) echo "go.etcd.io/etcd/server/v3" ;;
    kwok) echo "sigs.k8s.io/kwok" ;;
    metrics-server) echo "sigs.k8s.io/metrics-server" ;;
    helm) echo "helm.sh/helm/v3" ;;
    coredns) echo "github.com/coredns/coredns" ;;
    *) die "unknown component $1" ;;
  esac
}

# package NAME -> main package to build
package() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy) echo "k8s.io/kubernetes/cmd/$1" ;;
    etcd) echo "go.etcd.io/etcd/server/v3" ;;
    kwok) echo "sigs.k8s.io/kwok/cmd/kwok" ;;
    metrics-server) echo "sigs.k8s.io/metrics-server/cmd/metrics-server" ;;
    helm) echo "helm.sh/helm/v3/cmd/helm" ;;
    coredns) echo "github.com/coredns/coredns" ;;
    *) die "unknown component $1" ;;
  esac
}

# ldflags NAME VERSION DATE -> -X flags that stamp the version
version_ldflags() {
  local name="$1" version="$2" date="$3" flags=() pkg key val
  case "${name}" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet|kube-proxy)
      local major minor
      major="${version#v}"; major="${major%%.*}"
      minor="${version#v*.}"; minor="${minor%%.*}"
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        for kv in "gitVersion=${version}" "gitMajor=${major}" "gitMinor=${minor}" \
                  "gitCommit=unknown" "gitTreeState=clean" "buildDate=${date}"; do
          key="${kv%%=*}"; val="${kv#*=}"
          flags+=("-X" "${pkg}.${key}=${val}")
        done
      done
      ;;
    etcd)
      flags+=("-X" "go.etcd.io/etcd/api/v3/version.GitSHA=${version}")
      ;;
    metrics-server)
      for kv in "gitVersion=${version}" "gitCommit=unknown" "gitTreeState=clean" "buildDate=${date}"; do
        key="${kv%%=*}"; val="${kv#*=}"
        flags+=("-X" "k8s.io/client-go/pkg/version.${key}=${val}")
      done
      ;;
    helm)
      flags+=("-X" "helm.sh/helm/v3/internal/version.version=${version}"
              "-X" "helm.sh/helm/v3/internal/version.gitTreeState=clean")
      ;;
    coredns)
      flags+=("-X" "github.com/coredns/coredns/coremain.GitCommit=${version}")
      ;;
    kwok) ;; # its version is a constant in the source
  esac
  echo "${flags[*]-}"
}

build_one() {
  local name="$1" version dir out modver date ldf start
  version="$(component_version "${name}")"
  out="$(bin_path "${name}")"
  if [[ -x "${out}" && "${FORCE:-0}" != 1 ]]; then
    log "${name} ${version}: cached at ${out}"
    return 0
  fi
  dir="$(module_dir "${name}")"
  read -r modver date < <(cd "${dir}" && go list -m \
    -f '{{.Version}} {{with .Time}}{{.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' "$(main_module "${name}")") \
    || die "${name}: cannot resolve $(main_module "${name}") in ${dir}"
  [[ "${modver}" == "${version}" ]] \
    || die "${name}: versions.env says ${version} but ${dir}/go.mod pins ${modver}"
  [[ -n "${date}" ]] || date="1970-01-01T00:00:00Z"
  ldf="-s -w $(version_ldflags "${name}" "${version}" "${date}")"

  log "${name} ${version}: building $(package "${name}") (go build -p ${GO_BUILD_P}) ..."
  start=${SECONDS}
  mkdir -p "$(dirname "${out}")"
  (cd "${dir}" && go build -p "${GO_BUILD_P}" -trimpath -ldflags "${ldf}" \
     -o "${out}.tmp.$$" "$(package "${name}")") \
    || { rm -f "${out}.tmp.$$"; die "${name}: go build failed"; }
  mv -f "${out}.tmp.$$" "${out}"
  log "${name} ${version}: built in $((SECONDS - start))s -> ${out} ($(du -h "${out}" | cut -f1))"
}

main() {
  local components=("$@") total=${SECONDS} c
  if [[ ${#components[@]} -eq 0 ]]; then
    components=("${ALL_COMPONENTS[@]}")
    [[ "${CLUSTER_NODE:-fake}" != real ]] || components+=("${NODE_COMPONENTS[@]}")
  fi
  log "go: $(go version | cut -d' ' -f3-); cache: ${CACHE_BIN}"
  for c in "${components[@]}"; do
    build_one "${c}"
  done
  log "all done in $((SECONDS - total))s"
}

main "$@"
