#!/usr/bin/env python3
"""Tollgate benchmarks on one machine, everything on loopback.

Compares, interleaved and repeated, small keep-alive GETs through:
  direct     wrk -> nginx static backend (the ceiling)
  nginx      wrk -> nginx proxy_pass -> backend
  haproxy    wrk -> HAProxy -> backend
  tollgate   wrk -> tollgate-gateway (no policy) -> backend
  tollgate+  wrk -> tollgate-gateway (API key + a throttling policy that never trips) -> backend
  cluster    as tollgate+ with the policy counted cluster-wide in Redis
with equal worker counts (1, then 2), plus config propagation
(artifact written -> served). Writes docs/benchmarks.md and
docs/benchmarks.json.

  scripts/bench.py            full run (make bench)
  scripts/bench.py --quick    under 2 minutes (make bench-quick)
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY = os.path.join(ROOT, "target", "release", "tollgate-gateway")
TOKEN = "bench-admin-token-0123456789"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}")


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, log, **kw):
        p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, **kw)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def nginx_conf(work, name, workers, server_block):
    conf = os.path.join(work, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes {workers};
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {work}/{name}-body;
  proxy_temp_path {work}/{name}-proxy;
  fastcgi_temp_path {work}/{name}-fcgi;
  uwsgi_temp_path {work}/{name}-uwsgi;
  scgi_temp_path {work}/{name}-scgi;
  {server_block}
}}
""")
    return conf


def wrk(port, path, seconds, conns, headers=()):
    args = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run(args + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50_ms": pct(50), "p99_ms": pct(99),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(0) if errors else ""}


def admin(mgmt, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{mgmt}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    seconds, rounds, workers_list = (3, 2, [1]) if a.quick else (10, 5, [1, 2])
    if not os.path.exists(GATEWAY):
        raise SystemExit("build first: cargo build --release -p tollgate-gateway")
    work = tempfile.mkdtemp(prefix="tollgate-bench-")
    procs = Procs()
    results = {"machine": {}, "throughput": {}, "propagation": {}}
    try:
        results["machine"] = {"cpus": os.cpu_count(), "kernel": platform.release(),
                              "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
                              "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0],
                              "wrk": "wrk 4.1 (-t1 -c32, keep-alive)", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        # Backend: nginx serving a small static body, 1 worker.
        be = free_port()
        os.makedirs(os.path.join(work, "www"), exist_ok=True)
        with open(os.path.join(work, "www", "hello"), "w") as f:
            f.write('{"hello":"world"}\n')
        conf = nginx_conf(work, "backend", 1, f"server {{ listen 127.0.0.1:{be}; location / {{ root {work}/www; }} }}")
        procs.start(["nginx", "-c", conf], os.path.join(work, "backend.log"))
        wait_port(be, "backend nginx")
        redis_port = free_port()
        procs.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
                    os.path.join(work, "redis.log"))
        wait_port(redis_port, "redis")

        cfg = os.path.join(work, "config")
        os.makedirs(cfg)
        with open(os.path.join(cfg, "apis.yaml"), "w") as f:
            f.write(f"""apiVersion: tollgate.dev/v1alpha1
kind: ThrottlePolicy
metadata: {{name: never, namespace: bench}}
spec: {{limit: {{requests: 1000000000, per: 1h}}, keyBy: Consumer, scope: Replica}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ThrottlePolicy
metadata: {{name: never-cluster, namespace: bench}}
spec: {{limit: {{requests: 1000000000, per: 1h}}, keyBy: Consumer, scope: Cluster}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiDeployment
metadata: {{name: plain, namespace: bench}}
spec: {{apiManagerRef: {{name: b}}, context: /plain, version: v1, backend: {{endpoints: [{{url: "http://127.0.0.1:{be}"}}]}}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiDeployment
metadata: {{name: secured, namespace: bench}}
spec: {{apiManagerRef: {{name: b}}, context: /secured, version: v1, security: {{apiKey: {{header: apikey}}}},
        backend: {{endpoints: [{{url: "http://127.0.0.1:{be}"}}]}}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiDeployment
metadata: {{name: clustered, namespace: bench}}
spec: {{apiManagerRef: {{name: b}}, context: /clustered, version: v1, security: {{apiKey: {{header: apikey}}}},
        backend: {{endpoints: [{{url: "http://127.0.0.1:{be}"}}]}}}}
""")
        with open(os.path.join(work, "token"), "w") as f:
            f.write(TOKEN)

        for workers in workers_list:
            ports = {}
            conf = nginx_conf(work, f"proxy{workers}", workers,
                              f"upstream be {{ server 127.0.0.1:{be}; keepalive 64; }}\n"
                              f"server {{ listen 127.0.0.1:{{P}}; location / {{ proxy_pass http://be; "
                              f"proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}")
            ports["nginx"] = free_port()
            with open(conf) as f:
                text = f.read().replace("{P}", str(ports["nginx"]))
            with open(conf, "w") as f:
                f.write(text)
            procs.start(["nginx", "-c", conf], os.path.join(work, f"nginx{workers}.log"))
            ports["haproxy"] = free_port()
            hcfg = os.path.join(work, f"haproxy{workers}.cfg")
            with open(hcfg, "w") as f:
                f.write(f"""global
  nbthread {workers}
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{ports['haproxy']}
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:{be}
""")
            procs.start(["haproxy", "-f", hcfg], os.path.join(work, f"haproxy{workers}.log"))
            ports["tollgate"] = free_port()
            mgmt = free_port()
            procs.start([GATEWAY, "--config-dir", cfg, "--http", f"127.0.0.1:{ports['tollgate']}",
                         "--https", f"127.0.0.1:{free_port()}", "--management", f"127.0.0.1:{mgmt}",
                         "--management-tls", f"127.0.0.1:{free_port()}", "--threads", str(workers),
                         "--access-log", "false", "--data-dir", os.path.join(work, f"data{workers}"),
                         "--admin-token-file", os.path.join(work, "token"),
                         "--redis-url", f"redis://127.0.0.1:{redis_port}", "--redis-key-prefix", f"bench{workers}"],
                        os.path.join(work, f"gateway{workers}.log"))
            for name in ("nginx", "haproxy", "tollgate"):
                wait_port(ports[name], name)
            wait_port(mgmt, "tollgate management")
            app = admin(mgmt, "POST", "/api/v1/applications", {"name": f"bench{workers}"})
            key = admin(mgmt, "POST", f"/api/v1/applications/{app['id']}/keys", {})["apiKey"]
            admin(mgmt, "POST", "/api/v1/subscriptions", {"applicationId": app["id"], "api": "bench/secured", "policy": "never"})
            admin(mgmt, "POST", "/api/v1/subscriptions", {"applicationId": app["id"], "api": "bench/clustered", "policy": "never-cluster"})
            targets = {
                "direct": (be, "/hello", ()),
                "nginx": (ports["nginx"], "/hello", ()),
                "haproxy": (ports["haproxy"], "/hello", ()),
                "tollgate": (ports["tollgate"], "/plain/v1/hello", ()),
                "tollgate+auth+throttle": (ports["tollgate"], "/secured/v1/hello", (f"apikey: {key}",)),
                "tollgate+auth+cluster-throttle": (ports["tollgate"], "/clustered/v1/hello", (f"apikey: {key}",)),
            }
            for name, (port, path, hdrs) in targets.items():  # warm-up
                wrk(port, path, 1, 32, hdrs)
            runs = {name: [] for name in targets}
            for _ in range(rounds):  # interleaved
                for name, (port, path, hdrs) in targets.items():
                    runs[name].append(wrk(port, path, seconds, 32, hdrs))
            summary = {}
            for name, rs in runs.items():
                summary[name] = {
                    "rps": statistics.median(r["rps"] for r in rs),
                    "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                    "non2xx": sum(r["non2xx"] for r in rs),
                    "runs": rs,
                }
            base = summary["nginx"]["rps"]
            for name in summary:
                summary[name]["vs_nginx"] = round(summary[name]["rps"] / base, 3)
                summary[name]["vs_haproxy"] = round(summary[name]["rps"] / summary["haproxy"]["rps"], 3)
            results["throughput"][f"workers={workers}"] = summary

        # Propagation: artifact written -> served.
        port = ports["tollgate"]
        trials = 10 if a.quick else 50
        lat = []
        for i in range(trials):
            path = os.path.join(cfg, f"prop-{i}.yaml")
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"apiVersion: tollgate.dev/v1alpha1\nkind: ApiDeployment\nmetadata: {{name: prop-{i}, namespace: bench}}\n"
                        f"spec: {{apiManagerRef: {{name: b}}, context: /prop{i}, version: v1, backend: {{endpoints: [{{url: \"http://127.0.0.1:{be}\"}}]}}}}\n")
            t0 = time.time()
            os.rename(tmp, path)
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/prop{i}/v1/hello", timeout=1) as r:
                        if r.status == 200:
                            break
                except Exception:
                    pass
                time.sleep(0.005)
            lat.append((time.time() - t0) * 1000)
        lat.sort()
        results["propagation"] = {"trials": trials, "p50_ms": round(lat[len(lat) // 2], 1),
                                  "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1)}
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
    out_json = os.path.join(ROOT, "docs", "benchmarks.json" if not a.quick else "benchmarks-quick.json")
    with open(out_json, "w") as f:
        json.dump(results, f, indent=1)
    lines = [f"| {w} | target | req/s | p50 ms | p99 ms | x nginx | x HAProxy | non-2xx |", "|---|---|---|---|---|---|---|---|"]
    for w, summary in results["throughput"].items():
        for name, s in summary.items():
            lines.append(f"| {w} | {name} | {s['rps']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['vs_nginx']} | {s['vs_haproxy']} | {s['non2xx']} |")
    table = "\n".join(lines)
    print(table)
    print(f"propagation artifact->served: p50 {results['propagation']['p50_ms']} ms, p99 {results['propagation']['p99_ms']} ms")
    if not a.quick:
        write_doc(results, table)


def write_doc(results, table):
    m = results["machine"]
    p = results["propagation"]
    doc = f"""# Benchmarks

Measured by `make bench` (scripts/bench.py) on {m['date']}: {m['cpus']} CPUs,
Linux {m['kernel']}, {m['nginx']}, {m['haproxy']}, {m['wrk']}. Every
process on 127.0.0.1. The backend is nginx serving an 18-byte static file
(1 worker). Each target is measured in turn, interleaved, for several rounds;
the table shows medians. `tollgate` and its variants run the release build.

## Proxy throughput and latency (small GET, keep-alive)

{table}

`workers` is nginx `worker_processes`, HAProxy `nbthread` and
`tollgate-gateway --threads`. `tollgate+auth+throttle` checks an API key
(cached) and counts a Replica-scoped policy that never trips;
`tollgate+auth+cluster-throttle` counts the same policy cluster-wide in Redis
(leased quota: a Redis round trip every few hundred requests).

## Config propagation

Artifact written (rename into the watched folder) -> first 200 through the
gateway, {p['trials']} trials: p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms.

## Reproduce

    make bench          # this document and docs/benchmarks.json
    make bench-quick    # under 2 minutes, prints the table only
"""
    with open(os.path.join(ROOT, "docs", "benchmarks.md"), "w") as f:
        f.write(doc)


if __name__ == "__main__":
    sys.exit(main())
