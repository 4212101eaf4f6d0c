#!/usr/bin/env bash
# Start a real local Kubernetes control plane for e2e tests:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
#   (fake nodes whose pods become Running/Ready), optionally metrics-server.
# Everything listens on 127.0.0.1 only, on random free ports. State (certs,
# data, logs, pids) lives in target/cluster/; the admin kubeconfig is
# target/cluster/kubeconfig.
#
# Usage: e2e/cluster/up.sh [--metrics] [--node=fake|real]
# Env:   CLUSTER_METRICS=1        same as --metrics
#        CLUSTER_NODE=real        same as --node=real: instead of kwok's fake
#                                 nodes, one real node (containerd, kubelet,
#                                 kube-proxy, CoreDNS) in a network namespace
#                                 of its own, with the images of `make images`
#                                 imported (see node.sh); needs root
#        CLUSTER_NODES=3          number of fake nodes
#        CLUSTER_KEEP_ON_FAILURE=1  leave processes and state after a failed start
#        TOLLGATE_CACHE           binary cache root (see build.sh)
# Idempotent: when the cluster is already up it only prints the kubeconfig
# path (and starts metrics-server if asked for and not running yet).
set -euo pipefail

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

METRICS="${CLUSTER_METRICS:-0}"
NODES="${CLUSTER_NODES:-3}"
NODE="${CLUSTER_NODE:-fake}"
for arg in "$@"; do
  case "${arg}" in
    --metrics) METRICS=1 ;;
    --node=*) NODE="${arg#--node=}" ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: ${arg}" ;;
  esac
done
[[ "${NODES}" =~ ^[1-9][0-9]*$ ]] || die "CLUSTER_NODES must be a positive integer"
[[ "${NODE}" == fake || "${NODE}" == real ]] || die "CLUSTER_NODE must be fake or real, not ${NODE}"

PKI="${STATE_DIR}/pki"
LOGS="${STATE_DIR}/logs"
PIDS="${STATE_DIR}/pids"
KUBECONFIG_FILE="${STATE_DIR}/kubeconfig"
STATE_FILE="${STATE_DIR}/state.env"
KWOK_NODE_SELECTOR="kwok.x-k8s.io/node=fake"
SERVICE_CIDR="10.96.0.0/16"
POD_CIDR="10.244.0.1/16"

START=${SECONDS}
elapsed() { echo "$((SECONDS - START))s"; }

# ---------------------------------------------------------------- helpers

# free_port VAR: store a free 127.0.0.1 TCP port in VAR. (Not a $(...)
# function: USED_PORTS must survive, so two components never get one port.)
USED_PORTS=" "
free_port() {
  local port listening
  listening="$(ss -Htan 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u | tr '\n' ' ')"
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 12000))
    [[ " ${listening} " == *" ${port} "* || "${USED_PORTS}" == *" ${port} "* ]] && continue
    USED_PORTS+="${port} "
    printf -v "$1" '%s' "${port}"
    return 0
  done
  die "no free port found"
}

# start NAME ARGS... : run the cached binary NAME in its own session (in the
# node's network namespace with NODE=real), log to logs/NAME.log, record its
# pid.
IN_NS=()
start() {
  local name="$1" bin
  shift
  bin="$(bin_path "${name}")"
  [[ -x "${bin}" ]] || die "${bin} missing: run e2e/cluster/build.sh (or make cluster-tools)"
  start_exe "${name}" "${bin}" "${IN_NS[@]}" "${bin}" "$@"
}

# start_exe NAME MARKER COMMAND... : like start, for any command; MARKER is a
# string only this process's command line holds (pid_alive checks it).
start_exe() {
  local name="$1" marker="$2" pid
  shift 2
  printf '%s\n' "${marker}" >"${PIDS}/${name}.marker"
  (cd "${STATE_DIR}" && exec setsid "$@" </dev/null >"${LOGS}/${name}.log" 2>&1) &
  pid=$!
  echo "${pid}" >"${PIDS}/${name}.pid"
  # Until the subshell has exec'd, its command line is bash's and pid_alive
  # would call the component dead: wait for the exec (or the exit).
  local i
  for ((i = 0; i < 200; i++)); do
    pid_alive "${name}" && break
    [[ -d "/proc/${pid}" ]] || break
    sleep 0.05
  done
  log "started ${name} (pid ${pid})"
}

fail_with_log() {
  local name="$1" msg="$2"
  log "last lines of ${LOGS}/${name}.log:"
  tail -n 30 "${LOGS}/${name}.log" >&2 || true
  die "${msg}"
}

# wait_for NAME TIMEOUT_S CMD... : poll CMD until it succeeds; NAME's process
# must stay alive meanwhile.
wait_for() {
  local name="$1" timeout="$2" deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    pid_alive "${name}" || fail_with_log "${name}" "${name} exited during startup"
    ((SECONDS < deadline)) || fail_with_log "${name}" "timed out after ${timeout}s waiting for ${name}"
    sleep 0.2
  done
}

kctl() { "${IN_NS[@]}" "$(bin_path kubectl)" --kubeconfig "${KUBECONFIG_FILE}" "$@"; }
# curl in the cluster's network (the node's namespace with NODE=real)
ncurl() { "${IN_NS[@]}" curl "$@"; }

# ---------------------------------------------------------------- certs

# EC P-256 keys for TLS (fast to generate), RSA for service-account tokens.
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

new_ca() { # NAME CN
  ec_key "${PKI}/$1.key"
  openssl req -x509 -new -key "${PKI}/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyCertSign,cRLSign" \
    -out "${PKI}/$1.crt" 2>/dev/null
}

new_cert() { # NAME CA SUBJECT server|client [SANS]
  local name="$1" ca="$2" subj="$3" kind="$4" sans="${5:-}" ext
  ec_key "${PKI}/${name}.key"
  openssl req -new -key "${PKI}/${name}.key" -subj "${subj}" -out "${PKI}/${name}.csr" 2>/dev/null
  ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment"
  if [[ "${kind}" == server ]]; then
    ext+=$'\n'"extendedKeyUsage=serverAuth"$'\n'"subjectAltName=${sans}"
  else
    ext+=$'\n'"extendedKeyUsage=clientAuth"
  fi
  openssl x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/${ca}.crt" -CAkey "${PKI}/${ca}.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
    -extfile <(printf '%s\n' "${ext}") -out "${PKI}/${name}.crt" 2>/dev/null
  rm -f "${PKI}/${name}.csr"
}

gen_pki() {
  mkdir -p "${PKI}"
  chmod 700 "${PKI}"
  new_ca ca "tollgate-local-ca"
  new_ca front-proxy-ca "tollgate-local-front-proxy-ca"
  local apiserver_sans="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1"
  [[ -n "${ADVERTISE_ADDRESS}" ]] && apiserver_sans+=",IP:${ADVERTISE_ADDRESS}"
  new_cert apiserver ca "/CN=kube-apiserver" server "${apiserver_sans}"
  new_cert admin ca "/O=system:masters/CN=tollgate-admin" client
  new_cert controller-manager ca "/CN=system:kube-controller-manager" client
  new_cert scheduler ca "/CN=system:kube-scheduler" client
  # The aggregator verifies an APIService backend as <service>.<namespace>.svc.
  new_cert metrics-server ca "/CN=metrics-server" server \
    "DNS:localhost,DNS:metrics-server.kube-system.svc,IP:127.0.0.1"
  new_cert kwok ca "/CN=kwok" server "DNS:localhost,IP:127.0.0.1"
  new_cert front-proxy-client front-proxy-ca "/CN=front-proxy-client" client
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "${PKI}/sa.key" 2>/dev/null
  openssl pkey -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub" 2>/dev/null
}

write_kubeconfig() { # FILE USER_CERT_NAME
  local file="$1" user="$2"
  cat >"${file}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tollgate
  cluster:
    server: https://127.0.0.1:${APISERVER_PORT}
    certificate-authority-data: $(base64 -w0 "${PKI}/ca.crt")
users:
- name: ${user}
  user:
    client-certificate-data: $(base64 -w0 "${PKI}/${user}.crt")
    client-key-data: $(base64 -w0 "${PKI}/${user}.key")
contexts:
- name: tollgate
  context:
    cluster: tollgate
    user: ${user}
current-context: tollgate
EOF
  chmod 600 "${file}"
}

# kube-apiserver picks its advertise address from the default route; with no
# default route it refuses to start ("Unable to find suitable network
# address") unless given one. The address only goes into the "kubernetes"
# Service's endpoints, which nothing here dials. Fallbacks: a global address
# of this host, else 127.0.0.1, which works except that the apiserver then
# logs every few seconds that it cannot write those endpoints (loopback
# addresses are invalid in Endpoints).
pick_advertise_address() {
  local addr
  if [[ -n "${CLUSTER_ADVERTISE_ADDRESS:-}" ]]; then
    echo "${CLUSTER_ADVERTISE_ADDRESS}"
  elif ip -4 route show default 2>/dev/null | grep -q . \
       || ip -6 route show default 2>/dev/null | grep -q .; then
    echo ""
  else
    addr="$(ip -4 -o addr show scope global 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n1)"
    if [[ -z "${addr}" ]]; then
      log "no default route and no global address: advertising 127.0.0.1 (the kubernetes Service gets no endpoints)"
      addr=127.0.0.1
    fi
    echo "${addr}"
  fi
}

# ---------------------------------------------------------------- metrics

start_metrics_server() {
  free_port METRICS_PORT
  start metrics-server \
    --bind-address=127.0.0.1 \
    --secure-port="${METRICS_PORT}" \
    --kubeconfig="${STATE_DIR}/kubeconfig" \
    --authentication-kubeconfig="${STATE_DIR}/kubeconfig" \
    --authorization-kubeconfig="${STATE_DIR}/kubeconfig" \
    --tls-cert-file="${PKI}/metrics-server.crt" \
    --tls-private-key-file="${PKI}/metrics-server.key" \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-use-node-status-port \
    --kubelet-insecure-tls \
    --metric-resolution=10s \
    --kubelet-request-timeout=5s
  echo "METRICS_PORT=${METRICS_PORT}" >>"${STATE_FILE}"
  wait_for metrics-server 60 ncurl -sfk "https://127.0.0.1:${METRICS_PORT}/livez"
  # --enable-aggregator-routing would make the aggregator dial the Service's
  # endpoint IPs, and Endpoints/EndpointSlices may not hold loopback addresses.
  # Without it the aggregator dials an ExternalName Service's name directly,
  # so an ExternalName of 127.0.0.1 keeps the traffic on loopback.
  kctl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: metrics-server
  namespace: kube-system
  labels: {app.kubernetes.io/managed-by: tollgate-e2e-cluster}
spec:
  type: ExternalName
  externalName: 127.0.0.1
  ports:
  - name: https
    port: ${METRICS_PORT}
    protocol: TCP
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.metrics.k8s.io
  labels: {app.kubernetes.io/managed-by: tollgate-e2e-cluster}
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: $(base64 -w0 "${PKI}/ca.crt")
  service:
    name: metrics-server
    namespace: kube-system
    port: ${METRICS_PORT}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:aggregated-metrics-reader
  labels:
    rbac.authorization.k8s.io/aggregate-to-admin: "true"
    rbac.authorization.k8s.io/aggregate-to-edit: "true"
    rbac.authorization.k8s.io/aggregate-to-view: "true"
rules:
- apiGroups: [metrics.k8s.io]
  resources: [pods, nodes]
  verbs: [get, list, watch]
EOF
  wait_for metrics-server 60 kctl wait --for=condition=Available --timeout=2s apiservice/v1beta1.metrics.k8s.io
  log "metrics-server up on 127.0.0.1:${METRICS_PORT}; v1beta1.metrics.k8s.io Available ($(elapsed))"
}

# ---------------------------------------------------------------- already up?

if [[ -f "${STATE_FILE}" ]]; then
  # shellcheck source=/dev/null
  source "${STATE_FILE}"
  all_alive=1
  if [[ -n "${NETNS:-}" ]]; then
    # shellcheck source=node.sh source-path=SCRIPTDIR
    source "${CLUSTER_DIR}/node.sh"
    running_kind=real
    running_components=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy bridge-ns bridge-host)
  else
    running_kind=fake
    running_components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
  fi
  for c in "${running_components[@]}"; do
    pid_alive "${c}" || all_alive=0
  done
  if ((all_alive)) && [[ "${running_kind}" != "${NODE}" ]]; then
    die "a cluster with ${running_kind} nodes is running in ${STATE_DIR}; stop it first (make cluster-down)"
  fi
  if ((all_alive)) && kctl get --raw /readyz >/dev/null 2>&1; then
    if [[ "${METRICS}" == 1 ]] && ! pid_alive metrics-server; then
      start_metrics_server
    fi
    log "cluster already up"
    echo "${KUBECONFIG_FILE}"
    exit 0
  fi
  log "stale or partial cluster state in ${STATE_DIR}: cleaning up first"
  "${CLUSTER_DIR}/down.sh"
fi

# ---------------------------------------------------------------- start

for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do
  [[ -x "$(bin_path "${c}")" ]] || die "$(bin_path "${c}") missing: run e2e/cluster/build.sh (or make cluster-tools)"
done
if [[ "${NODE}" == real ]]; then
  # shellcheck source=node.sh source-path=SCRIPTDIR
  source "${CLUSTER_DIR}/node.sh"
  node_check_tools
fi
if [[ "${METRICS}" == 1 ]]; then
  [[ -x "$(bin_path metrics-server)" ]] || die "$(bin_path metrics-server) missing: run e2e/cluster/build.sh"
fi
command -v openssl >/dev/null || die "openssl not found"
command -v curl >/dev/null || die "curl not found"
command -v ss >/dev/null || die "ss (iproute2) not found"

STARTED_OK=0
on_exit() {
  local rc=$?
  ((STARTED_OK)) && return 0
  if [[ "${CLUSTER_KEEP_ON_FAILURE:-0}" == 1 ]]; then
    log "start failed (rc ${rc}); state kept in ${STATE_DIR} (CLUSTER_KEEP_ON_FAILURE=1)"
  else
    log "start failed (rc ${rc}); stopping what was started (logs kept in ${STATE_DIR}/logs)"
    "${CLUSTER_DIR}/down.sh" --keep-logs || true
  fi
  exit "${rc}"
}
trap on_exit EXIT

mkdir -p "${STATE_DIR}" "${LOGS}" "${PIDS}" "${STATE_DIR}/etcd" "${STATE_DIR}/volumes"

free_port ETCD_PORT
free_port ETCD_PEER_PORT
free_port APISERVER_PORT
free_port KCM_PORT
free_port SCHEDULER_PORT
free_port KWOK_PORT
if [[ "${NODE}" == real ]]; then
  ADVERTISE_ADDRESS="${NODE_IP}"
else
  ADVERTISE_ADDRESS="$(pick_advertise_address)"
fi
cat >"${STATE_FILE}" <<EOF
ETCD_PORT=${ETCD_PORT}
ETCD_PEER_PORT=${ETCD_PEER_PORT}
APISERVER_PORT=${APISERVER_PORT}
KCM_PORT=${KCM_PORT}
SCHEDULER_PORT=${SCHEDULER_PORT}
KWOK_PORT=${KWOK_PORT}
EOF

if [[ "${NODE}" == real ]]; then
  mkdir -p "${NODE_DIR}"
  node_netns_up
  IN_NS=(nsenter --net="${NETNS_PATH}")
fi
gen_pki
write_kubeconfig "${KUBECONFIG_FILE}" admin
write_kubeconfig "${STATE_DIR}/controller-manager.kubeconfig" controller-manager
write_kubeconfig "${STATE_DIR}/scheduler.kubeconfig" scheduler
[[ "${NODE}" == real ]] && node_pki
log "certificates and kubeconfigs written ($(elapsed))"

start etcd \
  --name=tollgate \
  --data-dir="${STATE_DIR}/etcd" \
  --listen-client-urls="http://127.0.0.1:${ETCD_PORT}" \
  --advertise-client-urls="http://127.0.0.1:${ETCD_PORT}" \
  --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-cluster="tollgate=http://127.0.0.1:${ETCD_PEER_PORT}" \
  --unsafe-no-fsync \
  --watch-progress-notify-interval=5s \
  --log-level=warn
wait_for etcd 30 ncurl -sf "http://127.0.0.1:${ETCD_PORT}/health"
log "etcd ready on 127.0.0.1:${ETCD_PORT} ($(elapsed))"

apiserver_args=(
  --bind-address="$([[ "${NODE}" == real ]] && echo 0.0.0.0 || echo 127.0.0.1)"
  --secure-port="${APISERVER_PORT}"
  --etcd-servers="http://127.0.0.1:${ETCD_PORT}"
  --tls-cert-file="${PKI}/apiserver.crt"
  --tls-private-key-file="${PKI}/apiserver.key"
  --client-ca-file="${PKI}/ca.crt"
  "--authorization-mode=Node,RBAC"
  --service-cluster-ip-range="${SERVICE_CIDR}"
  --service-account-issuer=https://kubernetes.default.svc.cluster.local
  --service-account-key-file="${PKI}/sa.pub"
  --service-account-signing-key-file="${PKI}/sa.key"
  --allow-privileged=true
  --requestheader-client-ca-file="${PKI}/front-proxy-ca.crt"
  --requestheader-allowed-names=front-proxy-client
  --requestheader-username-headers=X-Remote-User
  --requestheader-group-headers=X-Remote-Group
  --requestheader-extra-headers-prefix=X-Remote-Extra-
  --proxy-client-cert-file="${PKI}/front-proxy-client.crt"
  --proxy-client-key-file="${PKI}/front-proxy-client.key"
  # TaintNodesByCondition taints every new Node not-ready; only the
  # node-lifecycle controller (not run: kwok heartbeats are too sparse for
  # its grace period) would remove the taint again.
  --disable-admission-plugins=TaintNodesByCondition
  --profiling=false
)
[[ -n "${ADVERTISE_ADDRESS}" ]] && apiserver_args+=(--advertise-address="${ADVERTISE_ADDRESS}")
if [[ "${NODE}" == real ]]; then
  apiserver_args+=(
    --kubelet-client-certificate="${PKI}/apiserver-kubelet-client.crt"
    --kubelet-client-key="${PKI}/apiserver-kubelet-client.key"
    --kubelet-certificate-authority="${PKI}/ca.crt"
    --kubelet-preferred-address-types=InternalIP
  )
fi
start kube-apiserver "${apiserver_args[@]}"
wait_for kube-apiserver 90 kctl get --raw /readyz
log "kube-apiserver ready on https://127.0.0.1:${APISERVER_PORT} ($(elapsed))"
[[ "${NODE}" == real ]] && node_bridge_up

# Controllers (1.34 names). No node-lifecycle: kwok nodes need no eviction.
KCM_CONTROLLERS=(
  statefulset-controller
  deployment-controller
  replicaset-controller
  daemonset-controller
  job-controller
  cronjob-controller
  ttl-after-finished-controller
  garbage-collector-controller
  horizontal-pod-autoscaler-controller
  persistentvolume-binder-controller
  persistentvolumeclaim-protection-controller
  persistentvolume-protection-controller
  namespace-controller
  serviceaccount-controller
  serviceaccount-token-controller
  disruption-controller
  endpoints-controller
  endpointslice-controller
  endpointslice-mirroring-controller
  root-ca-certificate-publisher-controller
  pod-garbage-collector-controller
  clusterrole-aggregation-controller
  resourcequota-controller
)
start kube-controller-manager \
  --kubeconfig="${STATE_DIR}/controller-manager.kubeconfig" \
  --authentication-kubeconfig="${STATE_DIR}/controller-manager.kubeconfig" \
  --authorization-kubeconfig="${STATE_DIR}/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="${KCM_PORT}" \
  --leader-elect=false \
  --use-service-account-credentials=true \
  --root-ca-file="${PKI}/ca.crt" \
  --service-account-private-key-file="${PKI}/sa.key" \
  --controllers="$(IFS=,; echo "${KCM_CONTROLLERS[*]}")" \
  --horizontal-pod-autoscaler-sync-period=5s \
  --horizontal-pod-autoscaler-downscale-stabilization=30s \
  --kube-api-qps=100 \
  --kube-api-burst=200 \
  --flex-volume-plugin-dir="${STATE_DIR}/volume-plugins"

start kube-scheduler \
  --kubeconfig="${STATE_DIR}/scheduler.kubeconfig" \
  --authentication-kubeconfig="${STATE_DIR}/scheduler.kubeconfig" \
  --authorization-kubeconfig="${STATE_DIR}/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="${SCHEDULER_PORT}" \
  --leader-elect=false

# kwok: stages (node-initialize, node-heartbeat, pod-ready, pod-complete,
# pod-delete) plus the resource-usage simulation that metrics-server scrapes.
if [[ "${NODE}" == fake ]]; then
kwok_config="${STATE_DIR}/kwok.yaml"
: >"${kwok_config}"
for f in "${CLUSTER_DIR}"/kwok/config/*.yaml; do
  { echo "---"; cat "${f}"; } >>"${kwok_config}"
done
start kwok \
  --kubeconfig="${KUBECONFIG_FILE}" \
  --config="${kwok_config}" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector="${KWOK_NODE_SELECTOR}" \
  --node-ip=127.0.0.1 \
  --node-port="${KWOK_PORT}" \
  --server-address="127.0.0.1:${KWOK_PORT}" \
  --tls-cert-file="${PKI}/kwok.crt" \
  --tls-private-key-file="${PKI}/kwok.key" \
  --cidr="${POD_CIDR}"
fi

# Fake nodes, a default StorageClass and a pool of hostPath volumes.
manifest="${STATE_DIR}/bootstrap.yaml"
{
  [[ "${NODE}" == real ]] && NODES=0
  for i in $(seq 0 $((NODES - 1))); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-${i}
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
    metrics.k8s.io/resource-metrics-path: /metrics/nodes/kwok-node-${i}/metrics/resource
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: kwok-node-${i}
    kubernetes.io/os: linux
    type: kwok
spec: {}
status:
  allocatable: {cpu: "32", memory: 128Gi, pods: "110", ephemeral-storage: 500Gi}
  capacity: {cpu: "32", memory: 128Gi, pods: "110", ephemeral-storage: 500Gi}
  addresses:
  - {type: InternalIP, address: 127.0.0.1}
  - {type: Hostname, address: kwok-node-${i}}
EOF
  done
  cat <<'EOF'
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
reclaimPolicy: Retain
volumeBindingMode: Immediate
EOF
  pv() { # NAME SIZE MODE LABEL
    mkdir -p "${STATE_DIR}/volumes/$1"
    cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $1
  labels: {tollgate.dev/volume: $4}
spec:
  storageClassName: standard
  capacity: {storage: $2}
  accessModes: [$3]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: "${STATE_DIR}/volumes/$1", type: DirectoryOrCreate}
EOF
  }
  pv pv-artifacts 5Gi ReadWriteMany artifacts
  # ReadWriteOnce volumes, CLUSTER_POOL_PER_SIZE (default 8) of each size 1Gi..10Gi.
  n=0
  for size in 1 2 3 4 5 6 7 8 9 10; do
    for _ in $(seq 1 "${CLUSTER_POOL_PER_SIZE:-8}"); do
      n=$((n + 1))
      pv "$(printf 'pv-pool-%02d' "${n}")" "${size}Gi" ReadWriteOnce pool
    done
  done
} >"${manifest}"
kctl apply -f "${manifest}" >/dev/null
log "nodes, storage class and $((n + 1)) persistent volumes created ($(elapsed))"

# Ready means: the default ServiceAccount exists (controller-manager works),
# every node is Ready (kwok works) and the scheduler is healthy.
wait_for kube-controller-manager 60 kctl -n default get serviceaccount default
if [[ "${NODE}" == fake ]]; then
  wait_for kwok 60 kctl wait --for=condition=Ready --timeout=2s node --all
fi
wait_for kube-scheduler 30 ncurl -sfk "https://127.0.0.1:${SCHEDULER_PORT}/healthz"
wait_for kube-controller-manager 30 ncurl -sfk "https://127.0.0.1:${KCM_PORT}/healthz"

if [[ "${NODE}" == real ]]; then
  node_containerd_up
  node_images_import
  node_kubelet_up
  node_kube_proxy_up
  wait_for kubelet 120 kctl wait --for=condition=Ready --timeout=2s "node/${NODE_NAME}"
  log "node ${NODE_NAME} Ready ($(elapsed))"
  node_dns_up
  wait_for kubelet 180 kctl -n kube-system wait --for=condition=Available --timeout=2s deployment/coredns
  log "cluster DNS ready on ${NODE_DNS_IP} ($(elapsed))"
  NODES=1
fi

if [[ "${METRICS}" == 1 ]]; then
  start_metrics_server
fi

STARTED_OK=1
log "cluster up in $(elapsed): ${NODES} ${NODE} node(s) Ready; kubectl: $(bin_path kubectl)"
log "use: export KUBECONFIG=${KUBECONFIG_FILE}   (or: eval \"\$(e2e/cluster/env.sh)\")"
echo "${KUBECONFIG_FILE}"
