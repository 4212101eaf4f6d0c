#!/usr/bin/env python3
"""Builds the operator and gateway container images without a daemon.

    scripts/images.py [--out target/images] [--repo R] [--tag T] [--bin-dir target/release]
    scripts/images.py --rootfs DIR --only gateway    (the Dockerfiles: the same files in a folder)

Each image is two layers on no base image:

  1. the runtime (identical in both images): the dynamic loader and the C
     libraries the binaries link (from ldd), CA certificates, /etc/passwd and
     /etc/group with the non-root user 65532, /etc/nsswitch.conf, /tmp, and
     the copyright files of the Debian packages those files come from;
  2. the binary, debug info stripped, at /usr/local/bin/<name>.

The layers are written here as tar files with sorted entries, fixed owners
and mtimes (SOURCE_DATE_EPOCH, else the last commit's time), added to an
OCI layout with umoci, given their config (entrypoint, user 65532:65532,
linux/amd64, created = SOURCE_DATE_EPOCH) and copied with skopeo into a
docker-archive named with the image reference (what `kind load
image-archive`, `k3d image import` and `ctr images import` read). Two
builds of one commit give byte-identical archives; their SHA-256 digests
are written to <out>/SHA256SUMS.

The reference is <repo>/tollgate-<name>:<tag>; repo defaults to the
chart's (ghcr.io/tollgate-dev), tag to the workspace version, which is
also the chart's appVersion (IMAGE_REPO and IMAGE_TAG override them).
"""

import argparse
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = ("operator", "gateway")
PORTS = {"operator": ["8080/tcp"], "gateway": ["8280/tcp", "8243/tcp", "9763/tcp", "9443/tcp"]}
USER = 65532
PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = "root:x:0:\nnonroot:x:65532:\n"
NSSWITCH = "passwd: files\ngroup: files\nhosts: files dns\n"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def fail(message):
    sys.exit(f"images: {message}")


def run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        fail(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def workspace_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        text = f.read()
    m = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    if not m:
        fail("no [workspace.package] version in Cargo.toml")
    return m.group(1)


def source_date_epoch():
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    out = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%ct"], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        fail("set SOURCE_DATE_EPOCH (no git history to take the commit time from)")
    return int(out.stdout.strip())


def linked_files(binaries):
    """The shared objects the binaries load, as (path in the image, file on this machine)."""
    found = {}
    for b in binaries:
        for line in run(["ldd", b]).splitlines():
            line = line.strip()
            if line.startswith("linux-vdso") or "statically linked" in line:
                continue
            m = re.match(r"(\S+) => (\S+) \(", line) or re.match(r"(/\S+) \(", line)
            if not m:
                fail(f"ldd {b}: cannot read {line!r}")
            path = m.group(2) if m.lastindex == 2 else m.group(1)
            if path == "not":
                fail(f"ldd {b}: {line}")
            found[path] = os.path.realpath(path)
    return found


def owning_packages(paths):
    """Debian packages shipping these files (for their copyright files)."""
    packages = set()
    for p in paths:
        out = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if out.returncode != 0:  # merged /usr: the package may name /usr/lib/...
            out = subprocess.run(["dpkg", "-S", "/usr" + p], capture_output=True, text=True)
        if out.returncode != 0:
            fail(f"no Debian package ships {p}")
        packages.add(out.stdout.split(":", 1)[0])
    return sorted(packages)


class Layer:
    """A tar layer whose bytes depend only on what is put in it."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}

    def dir(self, path, mode=0o755, uid=0):
        self.entries[path] = ("dir", None, mode, uid)

    def file(self, path, data, mode=0o644, uid=0):
        self.entries[path] = ("file", data, mode, uid)

    def symlink(self, path, target):
        self.entries[path] = ("symlink", target, 0o777, 0)

    def write(self, out_path):
        # Parent folders of every entry, as folders owned by root.
        for path in list(self.entries):
            parent = os.path.dirname(path)
            while parent not in ("", "/") and parent.lstrip("/") and parent not in self.entries:
                self.entries[parent] = ("dir", None, 0o755, 0)
                parent = os.path.dirname(parent)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, data, mode, uid = self.entries[path]
                info = tarfile.TarInfo(path.lstrip("/") + ("/" if kind == "dir" else ""))
                info.mtime, info.mode, info.uid, info.gid = self.mtime, mode, uid, uid
                info.uname = info.gname = ""
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        with open(out_path, "wb") as f:
            f.write(buf.getvalue())


def read(path):
    with open(path, "rb") as f:
        return f.read()


def runtime_layer(binaries, mtime):
    layer = Layer(mtime)
    libs = linked_files(binaries)
    for path, real in sorted(libs.items()):
        layer.file(path, read(real), 0o755)
    layer.dir("/tmp", 0o1777)
    layer.dir("/home/nonroot")
    layer.dir("/usr/local/bin")
    layer.file("/etc/passwd", PASSWD.encode())
    layer.file("/etc/group", GROUP.encode())
    layer.file("/etc/nsswitch.conf", NSSWITCH.encode())
    if not os.path.isfile(CA_BUNDLE):
        fail(f"{CA_BUNDLE} is missing (apt-get install ca-certificates)")
    layer.file(CA_BUNDLE, read(CA_BUNDLE))
    for package in owning_packages(libs) + ["ca-certificates"]:
        copyright_file = f"/usr/share/doc/{package}/copyright"
        if not os.path.isfile(copyright_file):
            fail(f"{copyright_file} is missing")
        layer.file(copyright_file, read(copyright_file))
    apache = "/usr/share/common-licenses/Apache-2.0"
    notice = "Tollgate\nLicense: Apache-2.0\n\n" + (open(apache).read() if os.path.isfile(apache) else "")
    layer.file("/usr/share/doc/tollgate/copyright", notice.encode())
    return layer


def stripped(binary, work):
    out = os.path.join(work, os.path.basename(binary))
    run(["objcopy", "--strip-debug", binary, out])
    return out


def app_layer(name, binary, epoch):
    app = Layer(epoch)
    app.file(f"/usr/local/bin/tollgate-{name}", read(binary), 0o755)
    return app


def build(name, base_tar, binary, ref, epoch, version, work, out_dir):
    app_tar = os.path.join(work, f"{name}.tar")
    app_layer(name, binary, epoch).write(app_tar)
    layout = os.path.join(work, f"oci-{name}")
    image = f"{layout}:{name}"
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", image])
    for tar in (base_tar, app_tar):
        run(["umoci", "raw", "add-layer", "--no-history", "--image", image, tar])
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = ["umoci", "config", "--no-history", "--image", image, "--created", created,
              "--os", "linux", "--architecture", "amd64", "--config.user", f"{USER}:{USER}",
              "--config.entrypoint", f"/usr/local/bin/tollgate-{name}", "--config.workingdir", "/",
              "--config.env", "PATH=/usr/local/bin:/usr/bin:/bin",
              "--config.label", f"org.opencontainers.image.version={version}",
              "--config.label", "org.opencontainers.image.title=tollgate-" + name,
              "--config.label", "org.opencontainers.image.licenses=Apache-2.0"]
    for port in PORTS[name]:
        config += ["--config.exposedports", port]
    run(config)
    run(["umoci", "gc", "--layout", layout])
    archive = os.path.join(out_dir, f"tollgate-{name}.tar")
    if os.path.exists(archive):
        os.remove(archive)
    run(["skopeo", "copy", "--quiet", f"oci:{image}", f"docker-archive:{archive}:{ref}"])
    return archive


def built(bin_dir, names):
    binaries = {n: os.path.join(bin_dir, f"tollgate-{n}") for n in names}
    for b in binaries.values():
        if not os.access(b, os.X_OK):
            fail(f"{b} is not built (cargo build --release -p tollgate-operator -p tollgate-gateway)")
    return binaries


def write_rootfs(folder, names, bin_dir):
    """The image's files (runtime and binary) unpacked into `folder`."""
    binaries = built(bin_dir, names)
    with tempfile.TemporaryDirectory(prefix="tollgate-rootfs-") as work:
        small = {n: stripped(b, work) for n, b in binaries.items()}
        layers = [runtime_layer(list(small.values()), 0)] + [app_layer(n, small[n], 0) for n in names]
        for i, layer in enumerate(layers):
            tar = os.path.join(work, f"layer{i}.tar")
            layer.write(tar)
            # Our own tar: modes (the sticky /tmp) and owners as written.
            trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            with tarfile.open(tar) as t:
                t.extractall(folder, numeric_owner=True, **trusted)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "images"))
    ap.add_argument("--repo", default=os.environ.get("IMAGE_REPO") or "ghcr.io/tollgate-dev")
    ap.add_argument("--tag", default=os.environ.get("IMAGE_TAG") or workspace_version())
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--only", choices=IMAGES, help="one image (default: both)")
    ap.add_argument("--rootfs", help="write the image's files into this folder instead of building an archive")
    a = ap.parse_args()
    names = [a.only] if a.only else list(IMAGES)
    if a.rootfs:
        write_rootfs(a.rootfs, names, a.bin_dir)
        return
    for tool in ("umoci", "skopeo", "objcopy", "ldd", "dpkg"):
        if not shutil.which(tool):
            fail(f"{tool} not found (make images installs umoci, skopeo and binutils)")
    epoch = source_date_epoch()
    version = workspace_version()
    binaries = built(a.bin_dir, IMAGES)
    os.makedirs(a.out, exist_ok=True)
    sums = []
    with tempfile.TemporaryDirectory(prefix="tollgate-images-") as work:
        small = {n: stripped(b, work) for n, b in binaries.items()}
        base_tar = os.path.join(work, "runtime.tar")
        runtime_layer(list(small.values()), epoch).write(base_tar)
        for name in names:
            ref = f"{a.repo}/tollgate-{name}:{a.tag}"
            archive = build(name, base_tar, small[name], ref, epoch, version, work, a.out)
            digest = hashlib.sha256(read(archive)).hexdigest()
            sums.append(f"{digest}  {os.path.basename(archive)}")
            print(f"{ref}  {os.path.relpath(archive, ROOT)}  sha256:{digest}")
    if a.only:
        return
    with open(os.path.join(a.out, "SHA256SUMS"), "w") as f:
        f.write("\n".join(sums) + "\n")


if __name__ == "__main__":
    main()
