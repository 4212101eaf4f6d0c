#!/usr/bin/env python3
"""Checks the images `make images` wrote to target/images, without a daemon.

1. Each archive: skopeo reads it; the reference inside is the chart's
   default; entrypoint, user 65532:65532, linux/amd64; both images share
   their first (runtime) layer; building again gives the same digests.
2. The gateway image, unpacked with umoci into a runtime bundle and run
   with runc the way the operator runs it in a pod (read-only root file
   system, the artifact folder bind-mounted read-only, writable /tmp and
   data folder, user 65532, the host's loopback): /readyz and /healthz
   answer 200, a request is proxied to a backend on the host, SIGTERM
   drains and the process exits 0.
3. The operator image starts and prints its version.
4. Both archives imported into a private containerd the way `kind load
   image-archive` does (`ctr -n k8s.io images import --all-platforms
   --digests`) carry the chart's reference names, and run there.

Run as root (runc). Exits non-zero with the reason on the first failure.
"""

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGES = os.path.join(ROOT, "target", "images")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import images  # noqa: E402  (the builder: version and reference names)
from bench import http_get  # noqa: E402


def check(ok, message):
    if not ok:
        sys.exit(f"FAIL: {message}")
    print(f"ok: {message}")


def run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(args)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def archive(name):
    return os.path.join(IMAGES, f"tollgate-{name}.tar")


def check_archives(repo, tag):
    first_layers = set()
    for name in images.IMAGES:
        path = archive(name)
        check(os.path.isfile(path), f"{path} exists (make images)")
        ref = f"{repo}/tollgate-{name}:{tag}"
        manifest = json.loads(run(["tar", "-xOf", path, "manifest.json"]))
        check(manifest[0]["RepoTags"] == [ref], f"{name}: the archive names {ref}")
        info = json.loads(run(["skopeo", "inspect", f"docker-archive:{path}"]))
        config = json.loads(run(["skopeo", "inspect", "--config", f"docker-archive:{path}"]))
        check((info["Os"], info["Architecture"]) == ("linux", "amd64"), f"{name}: linux/amd64")
        c = config["config"]
        check(c["Entrypoint"] == [f"/usr/local/bin/tollgate-{name}"], f"{name}: entrypoint {c['Entrypoint']}")
        check(c["User"] == "65532:65532", f"{name}: numeric non-root user {c['User']}")
        check(len(info["Layers"]) == 2, f"{name}: two layers (runtime, binary)")
        first_layers.add(info["Layers"][0])
    check(len(first_layers) == 1, "both images share the runtime layer")


def check_reproducible(repo, tag):
    with open(os.path.join(IMAGES, "SHA256SUMS")) as f:
        built = f.read()
    with tempfile.TemporaryDirectory(prefix="tollgate-images-again-") as again:
        run([sys.executable, os.path.join(ROOT, "scripts", "images.py"), "--out", again, "--repo", repo, "--tag", tag])
        with open(os.path.join(again, "SHA256SUMS")) as f:
            check(f.read() == built, "a second build gives byte-identical archives")


def bundle(name, work):
    """The image unpacked into a runc bundle (rootfs/ and config.json)."""
    layout = os.path.join(work, f"oci-{name}")
    run(["skopeo", "copy", "--quiet", f"docker-archive:{archive(name)}", f"oci:{layout}:{name}"])
    path = os.path.join(work, f"bundle-{name}")
    run(["umoci", "unpack", "--image", f"{layout}:{name}", path])
    with open(os.path.join(path, "config.json")) as f:
        spec = json.load(f)
    user = spec["process"]["user"]
    check((user["uid"], user["gid"]) == (65532, 65532), f"{name}: the bundle runs as 65532:65532")
    spec["root"]["readonly"] = True
    spec["process"]["terminal"] = False
    # The host's network namespace: the test reaches it on loopback.
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    return path, spec


def write_spec(path, spec):
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(spec, f, indent=1)


def tmpfs(destination):
    return {"destination": destination, "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=0755", "uid=65532", "gid=65532", "size=64m"]}


class Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = json.dumps({"path": self.path, "from": "host backend"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def run_gateway(work):
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    artifacts = os.path.join(work, "artifacts")
    os.makedirs(artifacts)
    with open(os.path.join(artifacts, "accounts.yaml"), "w") as f:
        f.write("apiVersion: tollgate.dev/v1alpha1\nkind: ApiDeployment\n"
                "metadata: {name: accounts, namespace: bank}\n"
                "spec: {apiManagerRef: {name: main}, context: /accounts, version: v1,\n"
                f"       backend: {{endpoints: [{{url: \"http://127.0.0.1:{backend.server_port}\"}}]}}}}\n")
    os.chmod(work, 0o755)
    os.chmod(artifacts, 0o755)
    path, spec = bundle("gateway", work)
    http_port, mgmt = free_port(), free_port()
    spec["process"]["args"] = spec["process"]["args"][:1] + [
        "--config-dir=/etc/tollgate/artifacts", "--data-dir=/var/lib/tollgate",
        f"--http=127.0.0.1:{http_port}", f"--https=127.0.0.1:{free_port()}",
        f"--management=127.0.0.1:{mgmt}", f"--management-tls=127.0.0.1:{free_port()}",
        "--drain-seconds=5", "--threads=1"]
    spec["mounts"] += [
        {"destination": "/etc/tollgate/artifacts", "type": "bind", "source": artifacts,
         "options": ["rbind", "ro", "nosuid", "nodev"]},
        tmpfs("/var/lib/tollgate"), tmpfs("/tmp")]
    write_spec(path, spec)
    container = f"tollgate-gateway-test-{os.getpid()}"
    log = open(os.path.join(work, "gateway.log"), "w")
    proc = subprocess.Popen(["runc", "run", "--bundle", path, container], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while http_get(mgmt, "/readyz")[0] != 200:
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                sys.exit(f"FAIL: the gateway container did not become ready:\n{open(log.name).read()}")
            time.sleep(0.1)
        check(True, "gateway container: /readyz 200")
        check(http_get(mgmt, "/healthz")[0] == 200, "gateway container: /healthz 200")
        status, body = http_get(http_port, "/accounts/v1/balances")
        check(status == 200 and json.loads(body) == {"path": "/balances", "from": "host backend"},
              f"gateway container proxies to the host's backend ({status} {body[:80]!r})")
        state = json.loads(run(["runc", "state", container]))
        check(state["status"] == "running", "runc reports the container running")
        pid = state["pid"]
        with open(f"/proc/{pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        check(set(uids) == {"65532"}, f"the gateway process runs as uid 65532 ({uids})")
        run(["runc", "kill", container, "TERM"])
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            sys.exit("FAIL: the gateway did not exit within 30 s of SIGTERM")
        log.flush()
        output = open(log.name).read()
        check(code == 0, f"SIGTERM: the gateway drained and exited 0 (exit {code})")
        check("Read-only file system" not in output, "nothing tried to write outside the mounted folders")
    finally:
        if proc.poll() is None:
            subprocess.run(["runc", "kill", container, "KILL"], capture_output=True)
            proc.wait(10)
        subprocess.run(["runc", "delete", "--force", container], capture_output=True)
        backend.shutdown()


def run_operator(work, version):
    path, spec = bundle("operator", work)
    spec["process"]["args"] = spec["process"]["args"][:1] + ["--version"]
    spec["mounts"].append(tmpfs("/tmp"))
    write_spec(path, spec)
    container = f"tollgate-operator-test-{os.getpid()}"
    try:
        r = subprocess.run(["runc", "run", "--bundle", path, container], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=60)
    finally:
        subprocess.run(["runc", "delete", "--force", container], capture_output=True)
    check(r.returncode == 0 and version in r.stdout,
          f"operator container prints its version ({r.returncode}: {r.stdout.strip()!r}{r.stderr.strip()[:200]})")


def run_in_containerd(work, repo, tag, version):
    root = os.path.join(work, "containerd")
    sock = os.path.join(root, "containerd.sock")
    os.makedirs(root)
    with open(os.path.join(root, "config.toml"), "w") as f:
        f.write(f'version = 2\nroot = "{root}/root"\nstate = "{root}/state"\n'
                f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
                '[plugins."io.containerd.grpc.v1.cri"]\n  disable_tcp_service = true\n')
    log = open(os.path.join(root, "log"), "w")
    daemon = subprocess.Popen(["containerd", "--config", os.path.join(root, "config.toml")], stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    ctr = ["ctr", "--address", sock, "--namespace", "k8s.io"]
    try:
        deadline = time.time() + 30
        while subprocess.run(ctr + ["version"], capture_output=True).returncode != 0:
            if daemon.poll() is not None or time.time() > deadline:
                sys.exit(f"FAIL: containerd did not start:\n{open(log.name).read()}")
            time.sleep(0.1)
        for name in images.IMAGES:
            run(ctr + ["images", "import", "--all-platforms", "--digests", archive(name)])
        listed = run(ctr + ["images", "ls", "--quiet"]).split()
        for name in images.IMAGES:
            ref = f"{repo}/tollgate-{name}:{tag}"
            check(ref in listed, f"containerd names the imported image {ref}")
            out = run(ctr + ["run", "--rm", "--net-host", ref, f"version-{name}-{os.getpid()}",
                             f"/usr/local/bin/tollgate-{name}", "--version"], timeout=60)
            check(version in out, f"{name} runs in containerd ({out.strip()!r})")
    finally:
        daemon.terminate()
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        # containerd leaves its snapshot mounts behind.
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[1].startswith(root)]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)


def main():
    if os.geteuid() != 0:
        sys.exit("FAIL: run as root (runc)")
    repo = os.environ.get("IMAGE_REPO") or "ghcr.io/tollgate-dev"
    tag = os.environ.get("IMAGE_TAG") or images.workspace_version()
    check_archives(repo, tag)
    check_reproducible(repo, tag)
    work = tempfile.mkdtemp(prefix="tollgate-images-test-")
    try:
        run_gateway(work)
        run_operator(work, images.workspace_version())
        run_in_containerd(work, repo, tag, images.workspace_version())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("images: all checks passed")


if __name__ == "__main__":
    main()
