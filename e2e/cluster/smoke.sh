#!/usr/bin/env bash
# Smoke test of a running local cluster (up.sh): versions, Ready nodes, and a
# StatefulSet with a volumeClaimTemplate whose pod becomes Running/Ready and
# whose claim binds; everything it creates is deleted again. With metrics
# (up.sh --metrics) it also waits for pod metrics from metrics.k8s.io.
set -euo pipefail

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kctl() { "$(bin_path kubectl)" --kubeconfig "${STATE_DIR}/kubeconfig" "$@"; }
NS=default
NAME=tollgate-smoke
start=${SECONDS}

kctl version
kctl get nodes -o wide
kctl wait --for=condition=Ready node --all --timeout=30s

cleanup() {
  kctl -n "${NS}" delete statefulset "${NAME}" --ignore-not-found --wait=true >/dev/null 2>&1 || true
  kctl -n "${NS}" delete pvc "data-${NAME}-0" --ignore-not-found --wait=true >/dev/null 2>&1 || true
}
trap cleanup EXIT

kctl -n "${NS}" apply -f - <<EOF
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: ${NAME}
spec:
  serviceName: ${NAME}
  replicas: 1
  selector:
    matchLabels: {app: ${NAME}}
  template:
    metadata:
      labels: {app: ${NAME}}
      annotations:
        kwok.x-k8s.io/usage-cpu: 250m
        kwok.x-k8s.io/usage-memory: 64Mi
    spec:
      containers:
      - name: app
        image: registry.invalid/tollgate/smoke:0
        resources:
          requests: {cpu: 100m, memory: 32Mi}
        volumeMounts:
        - {name: data, mountPath: /data}
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests: {storage: 1Gi}
EOF
kctl -n "${NS}" rollout status "statefulset/${NAME}" --timeout=60s
kctl -n "${NS}" wait --for=condition=Ready "pod/${NAME}-0" --timeout=30s
kctl -n "${NS}" wait --for=jsonpath='{.status.phase}'=Bound "pvc/data-${NAME}-0" --timeout=30s
kctl -n "${NS}" get pod,pvc -o wide
[[ "$(kctl -n "${NS}" get pod "${NAME}-0" -o jsonpath='{.status.phase}')" == Running ]] \
  || die "pod is not Running"

if kctl get apiservice v1beta1.metrics.k8s.io >/dev/null 2>&1; then
  log "waiting for pod metrics (metrics-server scrapes every 10s) ..."
  deadline=$((SECONDS + 90))
  until kctl -n "${NS}" top pod "${NAME}-0" --no-headers 2>/dev/null; do
    ((SECONDS < deadline)) || die "no pod metrics after 90s"
    sleep 3
  done
  kctl top node
fi

cleanup
trap - EXIT
log "smoke test passed in $((SECONDS - start))s"
