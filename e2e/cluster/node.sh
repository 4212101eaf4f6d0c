# shellcheck shell=bash
# The real node of `up.sh` with NODE=real (sourced by up.sh and down.sh).
#
# Everything runs inside a network namespace this script makes
# (/var/run/netns/$NETNS): the control plane, containerd, kubelet,
# kube-proxy, metrics-server, and the pods, whose CNI bridge hangs off the
# namespace's own node address. The machine's network is not touched: the
# only thing on its loopback is a bridge (socat, through a unix socket in the
# state folder) from 127.0.0.1:$APISERVER_PORT to the apiserver inside, so
# kubectl, helm and `kubectl port-forward` work from the machine as on any
# cluster. Machine-wide settings kubelet changes (three sysctls) are saved
# before it starts and restored by node_down; kubelet's cgroups live under a
# cgroup root of this cluster's own.
#
# Addresses (they exist only inside the namespace):
#   node 10.99.0.1 (a veth pair with both ends inside), pods 10.88.0.0/16,
#   Services 10.96.0.0/16, cluster DNS 10.96.0.10.

NODE_NAME="tollgate-node"
NODE_IP="10.99.0.1"
NODE_PEER_IP="10.99.0.2"
NODE_POD_CIDR="10.88.0.0/16"
NODE_DNS_IP="10.96.0.10"
NODE_DIR="${STATE_DIR}/node"
# One namespace per state folder, so two work trees can each run a cluster.
NETNS="tollgate-$(printf '%s' "${STATE_DIR}" | sha256sum | cut -c1-8)"
NETNS_PATH="/var/run/netns/${NETNS}"
CGROUP_ROOT="/${NETNS}"
CONTAINERD_SOCK="${NODE_DIR}/containerd.sock"
KUBELET_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
NODE_IMAGE_CACHE="${TOLLGATE_CACHE}/node-images"

in_ns() { nsenter --net="${NETNS_PATH}" "$@"; }
ctr_node() { ctr --address "${CONTAINERD_SOCK}" -n k8s.io "$@"; }

node_check_tools() {
  local t
  [[ "$(id -u)" == 0 ]] || die "NODE=real needs root (network namespace, mounts, cgroups)"
  for t in containerd containerd-shim-runc-v2 runc ctr ip nsenter socat iptables conntrack umoci skopeo busybox; do
    command -v "${t}" >/dev/null || die "${t} not found (make node-deps installs it)"
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/portmap && -x /usr/lib/cni/loopback ]] \
    || die "CNI plugins missing in /usr/lib/cni (make node-deps installs containernetworking-plugins)"
  for t in kubelet kube-proxy coredns; do
    [[ -x "$(bin_path "${t}")" ]] || die "$(bin_path "${t}") missing: run e2e/cluster/build.sh ${NODE_COMPONENTS[*]}"
  done
}

# ------------------------------------------------------------ namespace

node_netns_up() {
  if [[ -e "${NETNS_PATH}" ]]; then
    log "network namespace ${NETNS} left from an earlier run: removing it"
    ip netns delete "${NETNS}" 2>/dev/null || true
  fi
  ip netns add "${NETNS}"
  ip -n "${NETNS}" link set lo up
  # No dummy interface module here: a veth pair, both ends inside.
  ip -n "${NETNS}" link add tgnode0 type veth peer name tgnode1
  ip -n "${NETNS}" addr add "${NODE_IP}/24" dev tgnode0
  ip -n "${NETNS}" addr add "${NODE_PEER_IP}/24" dev tgnode1
  ip -n "${NETNS}" link set tgnode0 up
  ip -n "${NETNS}" link set tgnode1 up
  # kube-proxy and kubelet need a default route to pick the node address;
  # it leads nowhere outside the namespace.
  ip -n "${NETNS}" route add default via "${NODE_PEER_IP}" dev tgnode0
  in_ns sysctl -qw net.ipv4.ip_forward=1
  echo "NETNS=${NETNS}" >>"${STATE_FILE}"
  log "network namespace ${NETNS}: node address ${NODE_IP}"
}

# ------------------------------------------------------------ certificates

node_pki() {
  new_cert kubelet ca "/CN=system:node:${NODE_NAME}/O=system:nodes" client
  new_cert kubelet-serving ca "/CN=${NODE_NAME}" server "DNS:${NODE_NAME},DNS:localhost,IP:${NODE_IP},IP:127.0.0.1"
  new_cert kube-proxy ca "/CN=system:kube-proxy" client
  new_cert apiserver-kubelet-client ca "/O=system:masters/CN=kube-apiserver-kubelet-client" client
  write_kubeconfig "${NODE_DIR}/kubelet.kubeconfig" kubelet
  write_kubeconfig "${NODE_DIR}/kube-proxy.kubeconfig" kube-proxy
}

# ------------------------------------------------------------ host bridge

# 127.0.0.1:$APISERVER_PORT on the machine -> unix socket -> the apiserver on
# the namespace's 127.0.0.1:$APISERVER_PORT.
node_bridge_up() {
  local sock="${NODE_DIR}/apiserver.sock"
  start_exe bridge-ns "${sock}" nsenter --net="${NETNS_PATH}" socat "UNIX-LISTEN:${sock},fork,unlink-early,mode=600" \
    "TCP:127.0.0.1:${APISERVER_PORT}"
  wait_for bridge-ns 20 test -S "${sock}"
  start_exe bridge-host "${sock}" socat "TCP-LISTEN:${APISERVER_PORT},bind=127.0.0.1,reuseaddr,fork" \
    "UNIX-CONNECT:${sock}"
  log "apiserver bridged to the machine's 127.0.0.1:${APISERVER_PORT}"
}

# ------------------------------------------------------------ containerd

node_containerd_up() {
  mkdir -p "${NODE_DIR}/containerd/root" "${NODE_DIR}/containerd/state" "${NODE_DIR}/cni/net.d" \
    "${NODE_DIR}/cni/cache"
  cat >"${NODE_DIR}/cni/net.d/10-tollgate.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "tollgate",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "tgcni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "${NODE_POD_CIDR}"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "${NODE_DIR}/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"${NODE_DIR}/containerd.toml" <<EOF
version = 2
root = "${NODE_DIR}/containerd/root"
state = "${NODE_DIR}/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "${CONTAINERD_SOCK}"

[ttrpc]
  address = "${CONTAINERD_SOCK}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "tollgate.test/pause:1"
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # The runtime here lacks CAP_SYS_RESOURCE: without this every sandbox fails
  # ("nsexec: failed to update /proc/self/oom_score_adj").
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${NODE_DIR}/cni/net.d"
    max_conf_num = 1
EOF
  start_exe containerd "${NODE_DIR}/containerd.toml" nsenter --net="${NETNS_PATH}" containerd --config "${NODE_DIR}/containerd.toml"
  wait_for containerd 60 ctr_node version
  log "containerd up (${CONTAINERD_SOCK}) ($(elapsed))"
}

# node_images_import: the pause, busybox and CoreDNS images (made by
# node_images.py, cached) and the images of `make images` (or the archives
# NODE_IMAGES names, space-separated).
node_images_import() {
  local archives
  archives="$(python3 "${CLUSTER_DIR}/node_images.py" --out "${NODE_IMAGE_CACHE}" \
    --coredns "$(bin_path coredns)" --coredns-version "${COREDNS_VERSION}")" \
    || die "node_images.py failed"
  # The product's images (make images), unless NODE_IMAGES names others.
  local product="${NODE_IMAGES:-${REPO_ROOT}/target/images/tollgate-operator.tar ${REPO_ROOT}/target/images/tollgate-gateway.tar}"
  local a
  for a in ${product}; do
    [[ -f "${a}" ]] || die "${a} missing: run make images first (make cluster-up NODE=real does)"
  done
  for a in ${archives} ${product}; do
    [[ -f "${a}" ]] || die "image archive ${a} missing"
    ctr_node images import --no-unpack "${a}" >/dev/null || die "ctr images import ${a} failed"
  done
  log "images imported: $(ctr_node images ls -q | grep -v '^sha256:' | tr '\n' ' ')"
}

# ------------------------------------------------------------ kubelet

node_sysctls_save() {
  local s
  : >"${NODE_DIR}/sysctls.saved"
  for s in "${KUBELET_SYSCTLS[@]}"; do
    echo "${s}=$(sysctl -n "${s}")" >>"${NODE_DIR}/sysctls.saved"
  done
  # A copy outside the state folder, so a crash between here and down.sh
  # still leaves the values to restore.
  cp "${NODE_DIR}/sysctls.saved" "${TOLLGATE_CACHE}/${NETNS}.sysctls"
}

node_cgroups_up() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "${h}" ]] && mkdir -p "${h%/}${CGROUP_ROOT}" 2>/dev/null || true
  done
}

node_kubelet_up() {
  mkdir -p "${NODE_DIR}/kubelet" "${NODE_DIR}/volume-plugins" "${NODE_DIR}/logs/pods"
  : >"${NODE_DIR}/resolv.conf"
  cat >"${NODE_DIR}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${PKI}/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: ${PKI}/kubelet-serving.crt
tlsPrivateKeyFile: ${PKI}/kubelet-serving.key
cgroupDriver: cgroupfs
cgroupRoot: ${CGROUP_ROOT}
failCgroupV1: false
failSwapOn: false
clusterDNS: [${NODE_DNS_IP}]
clusterDomain: cluster.local
resolvConf: ${NODE_DIR}/resolv.conf
volumePluginDir: ${NODE_DIR}/volume-plugins
podLogsDir: ${NODE_DIR}/logs/pods
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: "2%", imagefs.available: "2%", nodefs.inodesFree: "2%"}
maxPods: 110
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
shutdownGracePeriod: 0s
protectKernelDefaults: false
EOF
  node_sysctls_save
  node_cgroups_up
  start kubelet \
    --config="${NODE_DIR}/kubelet.yaml" \
    --kubeconfig="${NODE_DIR}/kubelet.kubeconfig" \
    --root-dir="${NODE_DIR}/kubelet" \
    --cert-dir="${NODE_DIR}/kubelet/pki" \
    --hostname-override="${NODE_NAME}" \
    --node-ip="${NODE_IP}" \
    --v=1
  wait_for kubelet 90 in_ns curl -sf http://127.0.0.1:10248/healthz
  log "kubelet healthy ($(elapsed))"
}

node_kube_proxy_up() {
  cat >"${NODE_DIR}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${NODE_DIR}/kube-proxy.kubeconfig}
hostnameOverride: ${NODE_NAME}
bindAddress: ${NODE_IP}
clusterCIDR: ${NODE_POD_CIDR}
mode: iptables
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the machine's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start kube-proxy --config="${NODE_DIR}/kube-proxy.yaml" --v=1
  wait_for kube-proxy 60 in_ns curl -sf http://127.0.0.1:10256/healthz
  log "kube-proxy healthy ($(elapsed))"
}

# ------------------------------------------------------------ cluster DNS

node_dns_up() {
  kctl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:1053 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        loop
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      securityContext: {runAsUser: 65532, runAsGroup: 65532, runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: coredns
        image: tollgate.test/coredns:${COREDNS_VERSION}
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 1053, protocol: UDP}
        - {name: dns-tcp, containerPort: 1053, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10, failureThreshold: 6}
        resources: {requests: {cpu: 50m, memory: 40Mi}, limits: {memory: 120Mi}}
        securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes:
      - name: config
        configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: ${NODE_DNS_IP}
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, targetPort: 1053, protocol: UDP}
  - {name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP}
EOF
}

# ------------------------------------------------------------ teardown

# node_down: stop the node and undo what node.sh did. Safe to call on a
# partial start and more than once.
node_down() {
  local ns="${NETNS}" kubectl_bin
  kubectl_bin="$(bin_path kubectl)"
  # Workload controllers first, or kubelet recreates their pods.
  if [[ -f "${KUBECONFIG_FILE:-${STATE_DIR}/kubeconfig}" ]] && pid_alive kube-apiserver 2>/dev/null; then
    "${kubectl_bin}" --kubeconfig "${STATE_DIR}/kubeconfig" --request-timeout=10s delete \
      statefulsets,deployments,daemonsets,replicasets,jobs,horizontalpodautoscalers \
      --all --all-namespaces --wait=false >/dev/null 2>&1 || true
  fi
  stop_group kubelet kube-proxy
  if [[ -S "${CONTAINERD_SOCK}" ]] && pid_alive containerd; then
    local c
    for c in $(ctr_node tasks ls -q 2>/dev/null); do
      ctr_node tasks kill -s SIGKILL "${c}" >/dev/null 2>&1 || true
    done
    for c in $(ctr_node tasks ls -q 2>/dev/null); do
      ctr_node tasks delete -f "${c}" >/dev/null 2>&1 || true
    done
    for c in $(ctr_node containers ls -q 2>/dev/null); do
      ctr_node containers delete "${c}" >/dev/null 2>&1 || true
    done
  fi
  stop_group containerd bridge-host bridge-ns
  # Shims of this containerd outlive it: find them by their address.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address ${CONTAINERD_SOCK}" 2>/dev/null); do
    kill -KILL "${pid}" 2>/dev/null || true
  done
  # Mounts under the state folder (pod volumes, overlay roots, netns files),
  # deepest first.
  local m
  while read -r m; do
    umount -l "${m}" 2>/dev/null || true
  done < <(awk -v root="${NODE_DIR}/" 'index($2, root) == 1 {print $2}' /proc/self/mounts | sort -r)
  # Processes still in this cluster's cgroups (containers killed above
  # normally leave none), then the cgroups, deepest first.
  local h d
  for h in /sys/fs/cgroup/*/; do
    d="${h%/}${CGROUP_ROOT}"
    [[ -d "${d}" ]] || continue
    find "${d}" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do
      kill -KILL "${pid}" 2>/dev/null || true
    done
    find "${d}" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  if [[ -e "/var/run/netns/${ns}" ]]; then
    ip netns delete "${ns}" 2>/dev/null || true
  fi
  node_sysctls_restore
}

node_sysctls_restore() {
  local saved="${TOLLGATE_CACHE}/${NETNS}.sysctls" line
  [[ -f "${saved}" ]] || return 0
  while IFS= read -r line; do
    [[ -n "${line}" ]] && sysctl -qw "${line}" || true
  done <"${saved}"
  log "restored $(tr '\n' ' ' <"${saved}")"
  rm -f "${saved}"
}
