#!/usr/bin/env python3
"""Makes the real node's own images without a daemon (cached).

    e2e/cluster/node_images.py --out DIR --coredns BIN --coredns-version V

  tollgate.test/pause:1         the pod sandbox: busybox sleeping
  tollgate.test/busybox:1       Debian's busybox-static with its applets
                                (test backends, load and helper pods)
  tollgate.test/coredns:<V>     the cluster DNS, the CoreDNS binary build.sh made

Each is a docker-archive (what `ctr images import` reads) named after the
SHA-256 of what went into it, so a warm run only prints the paths, one per
line. The layers are written with scripts/images.py's Layer.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from images import Layer, fail, read, run  # noqa: E402

BUSYBOX = "/bin/busybox"
EPOCH = 0


def busybox_layer():
    layer = Layer(EPOCH)
    layer.file("/bin/busybox", read(BUSYBOX), 0o755)
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            layer.symlink(f"/bin/{applet}", "busybox")
    layer.dir("/tmp", 0o1777)
    layer.file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/home/nonroot:/bin/sh\n")
    layer.file("/etc/group", b"root:x:0:\nnonroot:x:65532:\n")
    layer.dir("/home/nonroot", 0o755, 65532)
    return layer


def coredns_layer(binary):
    layer = Layer(EPOCH)
    layer.file("/coredns", read(binary), 0o755)
    layer.dir("/tmp", 0o1777)
    return layer


def image(work, out_dir, name, ref, layer, entrypoint, cmd=()):
    tar = os.path.join(work, f"{name}.tar")
    layer.write(tar)
    layout = os.path.join(work, f"oci-{name}")
    tagged = f"{layout}:{name}"
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", tagged])
    run(["umoci", "raw", "add-layer", "--no-history", "--image", tagged, tar])
    config = ["umoci", "config", "--no-history", "--image", tagged, "--created", "1970-01-01T00:00:00Z",
              "--os", "linux", "--architecture", "amd64", "--config.workingdir", "/",
              "--config.env", "PATH=/bin"]
    for part in entrypoint:
        config += ["--config.entrypoint", part]
    for part in cmd:
        config += ["--config.cmd", part]
    run(config)
    archive = os.path.join(out_dir, f"{name}.tar.tmp")
    if os.path.exists(archive):
        os.remove(archive)
    run(["skopeo", "copy", "--quiet", f"oci:{tagged}", f"docker-archive:{archive}:{ref}"])
    return archive


def digest(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--coredns", required=True)
    ap.add_argument("--coredns-version", required=True)
    args = ap.parse_args()
    for path in (BUSYBOX, args.coredns):
        if not os.path.isfile(path):
            fail(f"{path} missing")
    os.makedirs(args.out, exist_ok=True)
    me = read(os.path.abspath(__file__))
    busybox = read(BUSYBOX)
    wanted = [
        ("pause", "tollgate.test/pause:1", busybox_layer, ["/bin/sleep", "2147483647"], (), busybox),
        ("busybox", "tollgate.test/busybox:1", busybox_layer, [], ["/bin/sh"], busybox),
        ("coredns", f"tollgate.test/coredns:{args.coredns_version}", lambda: coredns_layer(args.coredns),
         ["/coredns"], (), read(args.coredns)),
    ]
    paths = []
    for name, ref, make_layer, entrypoint, cmd, content in wanted:
        final = os.path.join(args.out, f"{name}-{digest(me, ref, content)}.tar")
        if not os.path.isfile(final):
            with tempfile.TemporaryDirectory(prefix="node-images-") as work:
                tmp = image(work, args.out, name, ref, make_layer(), entrypoint, cmd)
                os.replace(tmp, final)
        paths.append(final)
    print("\n".join(paths))


if __name__ == "__main__":
    main()
