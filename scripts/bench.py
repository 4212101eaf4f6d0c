#!/usr/bin/env python3
"""Tollgate benchmarks on one machine, everything on loopback.

Sections (all by default; pick some with --sections):
  proxy        small keep-alive GETs, interleaved and repeated, through
                 direct      wrk -> nginx static backend (the ceiling)
                 nginx       wrk -> nginx proxy_pass -> backend
                 haproxy     wrk -> HAProxy -> backend
                 pingora     wrk -> bare Pingora (gateway/examples/bare_proxy.rs) -> backend
                 tollgate    wrk -> tollgate-gateway, no policy -> backend
                 tollgate+auth+throttle   API key + a Replica policy per consumer that never trips
                 tollgate+auth+throttle-unrecorded  the same on a second gateway with
                               analytics recording off (--analytics-queue-size 0):
                               the cost of recording
                 tollgate+replica-throttle  an API-level policy counted in the pod
                 tollgate+cluster-throttle  the same policy counted cluster-wide in Redis
                 tollgate+jwt  an OAuth2 JWT (ES256, cached after first use) + the
                               same per-consumer policy as auth+throttle
                 nginx+key+limit, haproxy+key+limit  the peers as API gateways: an
                               API-key map, a per-key rate limit that never trips
                 json2k:*      the same with a 2 KiB JSON response
                 tls:*         2 KiB JSON over TLS 1.3 (ECDSA P-256) on every proxy
                 tollgate+tls+apikey, tollgate+mtls+jwt   over TLS with a client
                               certificate (tollgate-tls-bench, closed loop): an
                               API key, and a certificate-bound token (RFC 8705)
               with equal workers (nginx worker_processes, HAProxy nbthread,
               tollgate --threads): 1, then 2
  propagation  artifact written (renamed into the folder) -> first 200
  scale        10,000 APIs: startup, reload time, RSS, throughput vs 1 API
  soak         open-loop constant rate (tollgate-loadgen) for 10 minutes:
               latency per minute, RSS, errors
  cluster      on the local control plane (e2e/cluster/with-cluster.sh):
               kubectl apply -> served, 1,000 ApiDeployments at once

Writes docs/benchmarks.md and docs/benchmarks.json (full run), or prints
the figures and writes target/bench/benchmarks-quick.json (--quick).

  scripts/bench.py                        full run (make bench, ~25 min)
  scripts/bench.py --quick                under 2 minutes (make bench-quick)
  scripts/bench.py --sections proxy,scale one or more sections
"""

import argparse
import json
import os
import platform
import re
import resource
import secrets
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
RELEASE = os.path.join(ROOT, "target", "release")
GATEWAY = os.path.join(RELEASE, "tollgate-gateway")
LOADGEN = os.path.join(RELEASE, "tollgate-loadgen")
TLS_BENCH = os.path.join(RELEASE, "tollgate-tls-bench")
BENCH_PKI = os.path.join(RELEASE, "tollgate-bench-pki")
BARE_PINGORA = os.path.join(RELEASE, "examples", "bare_proxy")
BENCH_CLUSTER = os.path.join(RELEASE, "tollgate-bench-cluster")
TOKEN = "bench-admin-token-0123456789"
SECTIONS = ["proxy", "propagation", "scale", "soak", "cluster"]

_used_ports = set()


def free_port():
    """A port below the kernel's ephemeral range that nothing listens on."""
    for port in range(12000, 20000):
        if port in _used_ports:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _used_ports.add(port)
        return port
    raise SystemExit("no free port")


def wait_port(port, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}")


def http_get(port, path, headers=None, timeout=2, tls=False):
    req = urllib.request.Request(f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}", headers=headers or {})
    ctx = None
    if tls:  # the bench CA signs every proxy's certificate; checking it is not what is measured
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def pct(sorted_values, p):
    if not sorted_values:
        return None
    i = max(1, min(len(sorted_values), int(-(-len(sorted_values) * p // 1)))) - 1
    return round(sorted_values[i], 1)


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, log, **kw):
        p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, **kw)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
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


def tls_version(port):
    """The TLS version a default client negotiates with 127.0.0.1:port."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), 2) as raw, ctx.wrap_socket(raw) as s:
        return s.version()


def wrk(port, path, seconds, conns=32, headers=(), tls=False):
    args = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for h in headers:
        args += ["-H", h]
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}"
    out = subprocess.run(args + [url], capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise SystemExit(f"wrk gave no figures for :{port}{path}:\n{out}")

    def latency(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": float(m.group(1)), "p50_ms": latency(50), "p99_ms": latency(99),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(0) if errors else ""}


def cpu_seconds(pid):
    """User + system CPU seconds of a process and its children (nginx workers)."""
    if pid is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def measured(run, pids):
    """Runs `run()` (one load-generator run) and adds the CPU microseconds per
    request of each process in `pids` (name -> pid) and of the load generator."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = run()
    elapsed = time.monotonic() - t0
    ru2 = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests = max(r["rps"] * elapsed, 1)
    cpu = {name: (cpu_seconds(pid) - before[name]) * 1e6 / requests for name, pid in pids.items()}
    cpu["loadgen"] = ((ru2.ru_utime - ru.ru_utime) + (ru2.ru_stime - ru.ru_stime)) * 1e6 / requests
    r["cpu_us_per_req"] = {k: round(v, 1) for k, v in cpu.items()}
    return r


def tls_bench(port, path, seconds, pki, headers=(), conns=32):
    """Closed-loop HTTPS with the bench client certificate (wrk has none)."""
    args = [TLS_BENCH, "--url", f"https://127.0.0.1:{port}{path}", "--ca", os.path.join(pki, "ca.pem"),
            "--cert", os.path.join(pki, "client.crt"), "--key", os.path.join(pki, "client.key"),
            "--connections", str(conns), "--duration", str(seconds)]
    for h in headers:
        args += ["--header", h]
    out = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    return {"rps": out["rps"], "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"], "non2xx": out["non2xx"],
            "socket_errors": f"{out['errors']} connections failed" if out["errors"] else ""}


def admin(mgmt, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{mgmt}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))


def gateway(procs, work, name, cfg, threads, extra=(), https=None):
    """Starts a release gateway; returns (process, traffic port, management port)."""
    port, mgmt = free_port(), free_port()
    p = procs.start([GATEWAY, "--config-dir", cfg, "--http", f"127.0.0.1:{port}",
                     "--https", f"127.0.0.1:{https or free_port()}", "--management", f"127.0.0.1:{mgmt}",
                     "--management-tls", f"127.0.0.1:{free_port()}", "--threads", str(threads),
                     "--access-log", "false", "--data-dir", os.path.join(work, f"data-{name}"), *extra],
                    os.path.join(work, f"gateway-{name}.log"))
    deadline = time.time() + 120
    while http_get(mgmt, "/readyz")[0] != 200:
        if p.poll() is not None or time.time() > deadline:
            raise SystemExit(f"gateway {name} not ready; see {work}/gateway-{name}.log")
        time.sleep(0.02)
    return p, port, mgmt


def status(mgmt):
    return json.loads(http_get(mgmt, "/status")[1])


def api_doc(name, context, backend, extra=""):
    return (f"apiVersion: tollgate.dev/v1alpha1\nkind: ApiDeployment\nmetadata: {{name: {name}, namespace: bench}}\n"
            f"spec: {{apiManagerRef: {{name: b}}, context: {context}, version: v1,{extra}\n"
            f"       backend: {{endpoints: [{{url: \"http://127.0.0.1:{backend}\"}}]}}}}\n")


def atomic_write(path, text):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


# --- sections ------------------------------------------------------------

def section_proxy(env, a):
    seconds, rounds, workers_list = (3, 1, [1]) if a.quick else (8, 5, [1, 2])
    work, be, procs = env["work"], env["backend"], env["procs"]
    cfg = os.path.join(work, "config-proxy")
    os.makedirs(cfg)
    policies = ""
    for name, key_by, scope in (("never", "Consumer", "Replica"), ("never-api", "Api", "Replica"),
                                ("never-cluster", "Api", "Cluster")):
        policies += (f"apiVersion: tollgate.dev/v1alpha1\nkind: ThrottlePolicy\nmetadata: {{name: {name}, namespace: bench}}\n"
                     f"spec: {{limit: {{requests: 1000000000, per: 1h}}, keyBy: {key_by}, scope: {scope}}}\n---\n")
    pki = os.path.join(work, "pki")
    issuer, audience = "https://idp.bench.test/oauth2", "https://api.bench.test"
    tokens = json.loads(subprocess.run([BENCH_PKI, pki, issuer, audience, "bench-client"], capture_output=True,
                                       text=True, check=True).stdout)
    with open(os.path.join(pki, "jwks.json")) as f:
        jwks = f.read()
    key_manager = (f"apiVersion: tollgate.dev/v1alpha1\nkind: KeyManager\nmetadata: {{name: bench-idp, namespace: bench}}\n"
                   f"spec: {{apiManagerRef: {{name: b}}, issuer: \"{issuer}\", audiences: [\"{audience}\"], jwks: {jwks}}}\n---\n")
    with open(os.path.join(cfg, "bench.yaml"), "w") as f:
        f.write(policies + key_manager + "---\n".join([
            api_doc("plain", "/plain", be),
            api_doc("secured", "/secured", be, " security: {apiKey: {header: apikey}},"),
            api_doc("replica", "/replica", be, " throttling: {policy: never-api},"),
            api_doc("clustered", "/clustered", be, " throttling: {policy: never-cluster},"),
            api_doc("jwt", "/jwt", be, " security: {oauth2: {}},"),
            api_doc("mtlsjwt", "/mtlsjwt", be, " security: {oauth2: {}, mtls: {required: true}},"),
        ]))
    out = {}
    # The peers as API gateways, per their documented recipes: an API-key
    # check (nginx map, HAProxy map file), a per-key request-rate limit that
    # never trips (nginx limit_req, HAProxy stick-table), the key stripped
    # before the backend, upstream keep-alive. Same key length as tollgate's.
    peer_key = secrets.token_urlsafe(30)
    keys_map = os.path.join(work, "apikeys.map")
    with open(keys_map, "w") as f:
        f.write(f"{peer_key} bench\n")
    for workers in workers_list:
        peers = ("nginx", "haproxy", "nginx+key+limit", "haproxy+key+limit")
        ports = {name + tls: free_port() for name in peers for tls in ("", "-tls")}
        proxy = "proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\";"
        # TLS 1.3 only, the bench CA's ECDSA P-256 server certificate (tollgate's too).
        nginx_tls = (f"ssl_certificate {pki}/server.crt; ssl_certificate_key {pki}/server.key; "
                     f"ssl_protocols TLSv1.3;")
        servers = ""
        for tls in ("", "-tls"):
            listen = f"listen 127.0.0.1:{{}}{' ssl' if tls else ''}; {nginx_tls if tls else ''}"
            servers += (f"server {{ {listen.format(ports['nginx' + tls])} location / {{ {proxy} }} }}\n"
                        f"server {{ {listen.format(ports['nginx+key+limit' + tls])} location / {{\n"
                        f"  if ($bench_consumer = \"\") {{ return 401; }}\n"
                        f"  limit_req zone=perkey burst=1000000 nodelay; limit_req_status 429;\n"
                        f"  proxy_set_header apikey \"\"; {proxy} }} }}\n")
        conf = nginx_conf(work, f"proxy{workers}", workers,
                          f"upstream be {{ server 127.0.0.1:{be}; keepalive 64; }}\n"
                          f"map $http_apikey $bench_consumer {{ default \"\"; \"{peer_key}\" bench; }}\n"
                          f"limit_req_zone $bench_consumer zone=perkey:10m rate=1000000r/s;\n" + servers)
        nginx = procs.start(["nginx", "-c", conf], os.path.join(work, f"nginx{workers}.log"))
        hcfg = os.path.join(work, f"haproxy{workers}.cfg")
        haproxy_pem = os.path.join(pki, "haproxy.pem")  # HAProxy takes the chain and key in one file
        with open(haproxy_pem, "w") as f:
            f.write(open(os.path.join(pki, "server.crt")).read() + open(os.path.join(pki, "server.key")).read())
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
  bind 127.0.0.1:{ports['haproxy-tls']} ssl crt {haproxy_pem} ssl-min-ver TLSv1.3
  default_backend be
frontend fe_key
  bind 127.0.0.1:{ports['haproxy+key+limit']}
  bind 127.0.0.1:{ports['haproxy+key+limit-tls']} ssl crt {haproxy_pem} ssl-min-ver TLSv1.3
  http-request deny deny_status 401 unless {{ req.hdr(apikey),map({keys_map}) -m found }}
  http-request track-sc0 req.hdr(apikey) table per_key
  http-request deny deny_status 429 if {{ sc_http_req_rate(0,per_key) gt 1000000000 }}
  http-request del-header apikey
  default_backend be
backend per_key
  stick-table type string len 64 size 100k expire 1h store http_req_rate(1s)
backend be
  http-reuse always
  server s1 127.0.0.1:{be}
""")
        haproxy = procs.start(["haproxy", "-f", hcfg], os.path.join(work, f"haproxy{workers}.log"))
        # Pingora with no hooks and the gateway's server settings: what the
        # gateway costs on top of its proxy core.
        ports["pingora"] = free_port()
        pingora = procs.start([BARE_PINGORA, f"127.0.0.1:{ports['pingora']}", f"127.0.0.1:{be}", str(workers)],
                              os.path.join(work, f"pingora{workers}.log"))
        ports["tollgate-tls"] = free_port()
        gw, ports["tollgate"], mgmt = gateway(procs, work, f"proxy{workers}", cfg, workers, [
            "--admin-token-file", env["token"], "--redis-url", f"redis://127.0.0.1:{env['redis']}",
            "--redis-key-prefix", f"bench{workers}", "--tls-cert", os.path.join(pki, "server.crt"),
            "--tls-key", os.path.join(pki, "server.key"), "--client-ca", os.path.join(pki, "ca.pem")],
            https=ports["tollgate-tls"])
        gw_off, ports["tollgate-unrecorded"], mgmt_off = gateway(
            procs, work, f"proxy{workers}-unrecorded", cfg, workers,
            ["--admin-token-file", env["token"], "--analytics-queue-size", "0"])
        for name in ports:
            wait_port(ports[name], name)
        app_off = admin(mgmt_off, "POST", "/api/v1/applications", {"name": f"bench{workers}-unrecorded"})
        key_off = admin(mgmt_off, "POST", f"/api/v1/applications/{app_off['id']}/keys", {})["apiKey"]
        admin(mgmt_off, "POST", "/api/v1/subscriptions",
              {"applicationId": app_off["id"], "api": "bench/secured", "policy": "never"})
        app = admin(mgmt, "POST", "/api/v1/applications", {"name": f"bench{workers}"})
        key = admin(mgmt, "POST", f"/api/v1/applications/{app['id']}/keys", {})["apiKey"]
        admin(mgmt, "POST", f"/api/v1/applications/{app['id']}/oauth-clients",
              {"keyManager": "bench-idp", "clientId": "bench-client"})
        for api in ("bench/secured", "bench/jwt", "bench/mtlsjwt"):
            admin(mgmt, "POST", "/api/v1/subscriptions", {"applicationId": app["id"], "api": api, "policy": "never"})
        bearer, bound = f"authorization: Bearer {tokens['token']}", f"authorization: Bearer {tokens['boundToken']}"
        tls_targets = {
            "tollgate+tls+apikey": (ports["tollgate-tls"], "/secured/v1/hello", (f"apikey: {key}",)),
            "tollgate+mtls+jwt": (ports["tollgate-tls"], "/mtlsjwt/v1/hello", (bound,)),
        }
        targets = {
            "direct": (be, "/hello", ()),
            "nginx": (ports["nginx"], "/hello", ()),
            "haproxy": (ports["haproxy"], "/hello", ()),
            "pingora": (ports["pingora"], "/hello", ()),
            "tollgate": (ports["tollgate"], "/plain/v1/hello", ()),
            "tollgate+auth+throttle": (ports["tollgate"], "/secured/v1/hello", (f"apikey: {key}",)),
            "tollgate+auth+throttle-unrecorded": (ports["tollgate-unrecorded"], "/secured/v1/hello",
                                                  (f"apikey: {key_off}",)),
            "tollgate+replica-throttle": (ports["tollgate"], "/replica/v1/hello", ()),
            "tollgate+cluster-throttle": (ports["tollgate"], "/clustered/v1/hello", ()),
            "tollgate+jwt": (ports["tollgate"], "/jwt/v1/hello", (bearer,)),
            "nginx+key+limit": (ports["nginx+key+limit"], "/hello", (f"apikey: {peer_key}",)),
            "haproxy+key+limit": (ports["haproxy+key+limit"], "/hello", (f"apikey: {peer_key}",)),
            # The 2 KiB JSON workload.
            "json2k:nginx": (ports["nginx"], "/json2k", ()),
            "json2k:haproxy": (ports["haproxy"], "/json2k", ()),
            "json2k:pingora": (ports["pingora"], "/json2k", ()),
            "json2k:nginx+key+limit": (ports["nginx+key+limit"], "/json2k", (f"apikey: {peer_key}",)),
            "json2k:haproxy+key+limit": (ports["haproxy+key+limit"], "/json2k", (f"apikey: {peer_key}",)),
            "json2k:tollgate": (ports["tollgate"], "/plain/v1/json2k", ()),
            "json2k:tollgate+auth+throttle": (ports["tollgate"], "/secured/v1/json2k", (f"apikey: {key}",)),
            # The same 2 KiB JSON over TLS 1.3 (ECDSA P-256) on every proxy, wrk without a client certificate.
            "tls:nginx": (ports["nginx-tls"], "/json2k", ()),
            "tls:haproxy": (ports["haproxy-tls"], "/json2k", ()),
            "tls:nginx+key+limit": (ports["nginx+key+limit-tls"], "/json2k", (f"apikey: {peer_key}",)),
            "tls:haproxy+key+limit": (ports["haproxy+key+limit-tls"], "/json2k", (f"apikey: {peer_key}",)),
            "tls:tollgate": (ports["tollgate-tls"], "/plain/v1/json2k", ()),
            "tls:tollgate+auth+throttle": (ports["tollgate-tls"], "/secured/v1/json2k", (f"apikey: {key}",)),
        }
        # Whose CPU each target spends (the backend and the load generator are added).
        proc_of = {"nginx": nginx, "haproxy": haproxy, "pingora": pingora, "tollgate": gw,
                   "tollgate-unrecorded": gw_off}
        def pids(name):
            base = name.split(":", 1)[-1]
            owner = ("tollgate-unrecorded" if base.endswith("unrecorded") else "tollgate" if base.startswith("tollgate")
                     else base.split("+", 1)[0] if base != "direct" else None)
            out = {"backend": env["backend_pid"]}
            if owner:
                out["proxy"] = proc_of[owner].pid
            return out
        for name, (port, path, hdrs) in targets.items():  # warm-up, and every target answers 200
            tls = name.startswith("tls:")
            status_code = http_get(port, path, dict(h.split(": ", 1) for h in hdrs), tls=tls)[0]
            if status_code != 200:
                raise SystemExit(f"{name}: GET {path} gave {status_code}")
            if any(h.startswith("apikey:") for h in hdrs):  # the key is really checked
                status_code = http_get(port, path, {"apikey": "not-a-key"}, tls=tls)[0]
                if status_code != 401:
                    raise SystemExit(f"{name}: GET {path} with a wrong API key gave {status_code}, not 401")
            if tls and tls_version(port) != "TLSv1.3":
                raise SystemExit(f"{name}: negotiated {tls_version(port)}, not TLSv1.3")
            wrk(port, path, 1, 32, hdrs, tls)
        for name, (port, path, hdrs) in tls_targets.items():
            warm = tls_bench(port, path, 1, pki, hdrs)
            if warm["non2xx"] or warm["socket_errors"] or not warm["rps"]:
                raise SystemExit(f"{name}: GET {path} over mutual TLS failed: {warm}")
        runs = {name: [] for name in [*targets, *tls_targets]}
        for r in range(rounds):  # interleaved
            print(f"  proxy workers={workers} round {r + 1}/{rounds}", file=sys.stderr)
            for name, (port, path, hdrs) in targets.items():
                runs[name].append(measured(lambda: wrk(port, path, seconds, 32, hdrs, name.startswith("tls:")),
                                           pids(name)))
            for name, (port, path, hdrs) in tls_targets.items():
                runs[name].append(measured(lambda: tls_bench(port, path, seconds, pki, hdrs), pids(name)))
        summary = {}
        for name, rs in runs.items():
            summary[name] = {
                "rps": round(statistics.median(r["rps"] for r in rs)),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in rs), 3),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in rs), 3),
                "non2xx": sum(r["non2xx"] for r in rs),
                "cpu_us_per_req": {k: round(statistics.median(r["cpu_us_per_req"][k] for r in rs), 1)
                                   for k in rs[0]["cpu_us_per_req"]},
                "runs": rs,
            }
        for name in summary:
            # Each workload against its own peers.
            prefix = name.split(":", 1)[0] + ":" if ":" in name else ""
            summary[name]["vs_nginx"] = round(summary[name]["rps"] / summary[prefix + "nginx"]["rps"], 3)
            summary[name]["vs_haproxy"] = round(summary[name]["rps"] / summary[prefix + "haproxy"]["rps"], 3)
            summary[name]["vs_tollgate"] = round(summary[name]["rps"] / summary[prefix + "tollgate"]["rps"], 3)
            if prefix + "pingora" in summary:
                summary[name]["vs_pingora"] = round(summary[name]["rps"] / summary[prefix + "pingora"]["rps"], 3)
            if prefix + "nginx+key+limit" in summary:
                best = max(summary[prefix + "nginx+key+limit"]["rps"], summary[prefix + "haproxy+key+limit"]["rps"])
                summary[name]["vs_best_gateway_peer"] = round(summary[name]["rps"] / best, 3)
        # The cost of token validation against the API-key path it replaces.
        summary["jwt_vs_apikey"] = round(summary["tollgate+jwt"]["rps"] / summary["tollgate+auth+throttle"]["rps"], 3)
        # What recording analytics costs: the same path with recording off.
        summary["recording_cost"] = round(
            1 - summary["tollgate+auth+throttle"]["rps"] / summary["tollgate+auth+throttle-unrecorded"]["rps"], 3)
        summary["mtls_jwt_vs_tls_apikey"] = round(
            summary["tollgate+mtls+jwt"]["rps"] / summary["tollgate+tls+apikey"]["rps"], 3)
        summary["redis_leases"] = metric(mgmt, "tollgate_traffic_manager_leases_total")
        out[f"workers={workers}"] = summary
        for p in (nginx, haproxy, pingora, gw, gw_off):
            procs.stop(p)
    return out


def metric(mgmt, name):
    body = http_get(mgmt, "/metrics")[1].decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines() if l.startswith(name))


def section_propagation(env, a):
    trials = 10 if a.quick else 60
    work, be = env["work"], env["backend"]
    cfg = os.path.join(work, "config-propagation")
    os.makedirs(cfg)
    _, port, _ = gateway(env["procs"], work, "propagation", cfg, 1)
    lat = []
    for i in range(trials):
        path = os.path.join(cfg, f"bench_prop-{i}.yaml")
        t0 = time.monotonic()
        atomic_write(path, api_doc(f"prop-{i}", f"/prop{i}", be))
        while http_get(port, f"/prop{i}/v1/hello", timeout=1)[0] != 200:
            if time.monotonic() - t0 > 30:
                raise SystemExit(f"/prop{i} not served within 30 s")
            time.sleep(0.002)
        lat.append((time.monotonic() - t0) * 1000)
        time.sleep(0.05)
    lat.sort()
    return {"trials": trials, "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "max_ms": round(lat[-1], 1)}


def section_scale(env, a):
    n = 1000 if a.quick else 10000
    seconds, rounds = (3, 1) if a.quick else (8, 5)
    work, be, procs = env["work"], env["backend"], env["procs"]
    big, one = os.path.join(work, "config-scale"), os.path.join(work, "config-one")
    os.makedirs(os.path.join(big, "apis"))
    os.makedirs(os.path.join(one, "apis"))
    ops = (" operations: [{method: GET, path: /hello}, {method: GET, path: \"/accounts/{id}\"},"
           " {method: POST, path: /payments}],")
    t0 = time.monotonic()
    for i in range(n):  # one file per API, as the operator writes them
        with open(os.path.join(big, "apis", f"bench_api-{i}.yaml"), "w") as f:
            f.write(api_doc(f"api-{i}", f"/svc{i}/accounts", be, ops))
    with open(os.path.join(one, "apis", "bench_api-0.yaml"), "w") as f:
        f.write(api_doc("api-0", "/svc0/accounts", be, ops))
    generate_s = time.monotonic() - t0
    started = time.monotonic()
    gw_big, port_big, mgmt_big = gateway(procs, work, "scale", big, 1)
    startup_s = time.monotonic() - started
    first_build_ms = status(mgmt_big).get("lastReloadMillis")
    gw_one, port_one, mgmt_one = gateway(procs, work, "one", one, 1)
    time.sleep(1.5)  # files older than a second are parsed once and remembered
    # The store's search index is built once for a new data folder (in the
    # background, a few seconds at 10,000 APIs): the reloads are timed after it.
    index_s = time.monotonic()
    while (st := status(mgmt_big)).get("searchIndexRevision") not in (None, st["revision"]):
        if time.monotonic() - index_s > 120:
            raise SystemExit("the search index did not catch up within 120 s")
        time.sleep(0.1)
    index_s = time.monotonic() - index_s
    # Reloads: change one API's file, wait until the change is served.
    reload_ms, served_ms = [], []
    trials = 5 if a.quick else 20
    without_hello = ops.replace("{method: GET, path: /hello}, ", "")
    for t in range(trials):
        # Trial t takes GET /hello away from one API (the gateway answers
        # 404), or gives it back (200 from the backend).
        i = (t // 2 * 7919) % n
        path = os.path.join(big, "apis", f"bench_api-{i}.yaml")
        remove = t % 2 == 0
        want = 404 if remove else 200
        t0 = time.monotonic()
        atomic_write(path, api_doc(f"api-{i}", f"/svc{i}/accounts", be, without_hello if remove else ops))
        while http_get(port_big, f"/svc{i}/accounts/v1/hello", timeout=1)[0] != want:
            if time.monotonic() - t0 > 30:
                raise SystemExit(f"reload {t} not served within 30 s")
            time.sleep(0.002)
        served_ms.append((time.monotonic() - t0) * 1000)
        time.sleep(0.05)
        reload_ms.append(status(mgmt_big).get("lastReloadMillis") or 0)
    reload_order = list(reload_ms)
    reload_ms.sort()
    served_ms.sort()
    targets = {"1 API": (port_one, "/svc0/accounts/v1/hello"),
               f"{n} APIs": (port_big, f"/svc{n // 2}/accounts/v1/hello")}
    for port, path in targets.values():
        if http_get(port, path)[0] != 200:
            raise SystemExit(f"GET {path} on :{port} is not 200")
        wrk(port, path, 1)
    runs = {k: [] for k in targets}
    for r in range(rounds):
        print(f"  scale round {r + 1}/{rounds}", file=sys.stderr)
        for k, (port, path) in targets.items():
            runs[k].append(wrk(port, path, seconds))
    thr = {k: {"rps": round(statistics.median(x["rps"] for x in v)),
               "p99_ms": round(statistics.median(x["p99_ms"] for x in v), 3)} for k, v in runs.items()}
    result = {
        "apis": n, "routes": n * 3, "generate_files_s": round(generate_s, 1),
        "startup_to_ready_s": round(startup_s, 2), "first_build_ms": first_build_ms,
        "search_index_wait_s": round(index_s, 2),
        "reload_trials": trials, "reload_p50_ms": pct(reload_ms, 0.5), "reload_max_ms": pct(reload_ms, 1.0),
        "reload_each_ms": [round(x, 1) for x in reload_order],
        "write_to_served_p50_ms": pct(served_ms, 0.5), "write_to_served_max_ms": pct(served_ms, 1.0),
        "rss_mib": rss_mib(gw_big.pid), "rss_one_api_mib": rss_mib(gw_one.pid),
        "throughput": thr,
        "throughput_ratio": round(thr[f"{n} APIs"]["rps"] / thr["1 API"]["rps"], 3),
    }
    procs.stop(gw_big)
    procs.stop(gw_one)
    return result


def section_soak(env, a):
    duration, window = (20, 5) if a.quick else (600, 60)
    rate = a.soak_rate
    work, be, procs = env["work"], env["backend"], env["procs"]
    cfg = os.path.join(work, "config-soak")
    os.makedirs(cfg)
    with open(os.path.join(cfg, "bench.yaml"), "w") as f:
        f.write("apiVersion: tollgate.dev/v1alpha1\nkind: ThrottlePolicy\nmetadata: {name: gold, namespace: bench}\n"
                "spec: {limit: {requests: 1000000000, per: 1h}, keyBy: Consumer}\n---\n"
                + api_doc("soak", "/soak", be, " security: {apiKey: {header: apikey}},"))
    gw, port, mgmt = gateway(procs, work, "soak", cfg, 2, ["--admin-token-file", env["token"]])
    app = admin(mgmt, "POST", "/api/v1/applications", {"name": "soak"})
    key = admin(mgmt, "POST", f"/api/v1/applications/{app['id']}/keys", {})["apiKey"]
    admin(mgmt, "POST", "/api/v1/subscriptions", {"applicationId": app["id"], "api": "bench/soak", "policy": "gold"})
    print(f"  soak: {rate} req/s for {duration} s", file=sys.stderr)
    out = subprocess.run([LOADGEN, "--url", f"http://127.0.0.1:{port}/soak/v1/hello", "--rate", str(rate),
                          "--duration", str(duration), "--window", str(window), "--connections", "64",
                          "--header", f"apikey: {key}", "--pid", str(gw.pid)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"tollgate-loadgen failed:\n{out.stderr}")
    result = json.loads(out.stdout)
    result["threads"] = 2
    procs.stop(gw)
    return result


def section_cluster(env, a):
    args = ["--trials", "10", "--apis", "100"] if a.quick else ["--trials", "50", "--apis", "1000,10000"]
    run_env = dict(os.environ, TOLLGATE_E2E_PROFILE="release")
    out = subprocess.run([os.path.join(ROOT, "e2e", "cluster", "with-cluster.sh"), BENCH_CLUSTER, *args],
                         cwd=ROOT, env=run_env, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit("tollgate-bench-cluster failed (its output is above)")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- main ----------------------------------------------------------------

def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // 1024 // 1024} GiB"
    except OSError:
        pass
    version = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True)
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "nginx": version("nginx", "-v").stderr.strip(),
            "haproxy": version("haproxy", "-v").stdout.splitlines()[0],
            "redis": version("redis-server", "--version").stdout.split(" sha=")[0].strip(),
            "wrk": "wrk 4.x, 1 thread, 32 keep-alive connections",
            "commit": version("git", "-C", ROOT, "rev-parse", "--short", "HEAD").stdout.strip(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="under 2 minutes, no cluster section")
    ap.add_argument("--sections", default=None, help=f"comma-separated, of {','.join(SECTIONS)}")
    ap.add_argument("--soak-rate", type=int, default=4000, help="requests per second of the soak")
    ap.add_argument("--out", default=None, help="JSON output file")
    ap.add_argument("--merge", metavar="WHY", default=None,
                    help="with --sections: put the figures of these sections into docs/benchmarks.json (the last "
                         "full run) and rewrite docs/benchmarks.md, noting the commit, the date and WHY")
    a = ap.parse_args()
    sections = a.sections.split(",") if a.sections else [s for s in SECTIONS if not (a.quick and s == "cluster")]
    for s in sections:
        if s not in SECTIONS:
            raise SystemExit(f"unknown section {s}; known: {', '.join(SECTIONS)}")
    needed = [GATEWAY] + ([LOADGEN] if "soak" in sections else []) + ([BENCH_CLUSTER] if "cluster" in sections else [])
    for b in needed:
        if not os.path.exists(b):
            raise SystemExit(f"{b} is missing: build first (make bench does)")
    work = tempfile.mkdtemp(prefix="tollgate-bench-")
    os.chmod(work, 0o755)  # nginx workers (an unprivileged user when run as root) read www/
    procs = Procs()
    results = {"machine": machine(), "quick": a.quick}
    try:
        be = free_port()
        os.makedirs(os.path.join(work, "www"))
        with open(os.path.join(work, "www", "hello"), "w") as f:
            f.write('{"hello":"world"}\n')
        with open(os.path.join(work, "www", "json2k"), "w") as f:  # a 2 KiB JSON document
            items = ",".join(f'{{"id":"{i:04d}","amount":"{i * 7 % 1000}.00","currency":"GBP"}}' for i in range(40))
            f.write(('{"data":[' + items + ']}').ljust(2047) + "\n")
        conf = nginx_conf(work, "backend", 1, f"server {{ listen 127.0.0.1:{be}; location / {{ root {work}/www; }} }}")
        backend_proc = procs.start(["nginx", "-c", conf], os.path.join(work, "backend.log"))
        wait_port(be, "backend nginx")
        redis = free_port()
        procs.start(["redis-server", "--port", str(redis), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                    os.path.join(work, "redis.log"))
        wait_port(redis, "redis")
        token = os.path.join(work, "token")
        with open(token, "w") as f:
            f.write(TOKEN)
        env = {"work": work, "backend": be, "redis": redis, "procs": procs, "token": token,
               "backend_pid": backend_proc.pid}
        for s in sections:
            print(f"bench: {s}", file=sys.stderr)
            t0 = time.monotonic()
            results[s] = globals()[f"section_{s}"](env, a)
            results[s + "_seconds"] = round(time.monotonic() - t0)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    full = not a.quick and a.sections is None
    if a.merge and not full and not a.quick:
        out_json = os.path.join(ROOT, "docs", "benchmarks.json")
        with open(out_json) as f:
            merged = json.load(f)
        m = results["machine"]
        for s in sections:
            merged[s] = results[s]
            merged[s + "_seconds"] = results[s + "_seconds"]
            merged.setdefault("reruns", {})[s] = {"commit": m["commit"], "date": m["date"], "why": a.merge}
            if s == "cluster":
                merged.pop("cluster_rerun", None)  # the older form of this note
        with open(out_json, "w") as f:
            json.dump(merged, f, indent=1)
        print(summary_text(results))
        import bench_doc  # noqa: E402 (scripts/bench_doc.py)
        bench_doc.write(merged, os.path.join(ROOT, "docs", "benchmarks.md"))
        print(f"merged {', '.join(sections)} into {out_json} and wrote docs/benchmarks.md")
        return
    out_json = a.out or (os.path.join(ROOT, "docs", "benchmarks.json") if full
                         else os.path.join(ROOT, "target", "bench", "benchmarks-quick.json"))
    os.makedirs(os.path.dirname(out_json), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(results, f, indent=1)
    print(summary_text(results))
    print(f"figures: {out_json}")
    if full:
        import bench_doc  # noqa: E402 (scripts/bench_doc.py)
        bench_doc.write(results, os.path.join(ROOT, "docs", "benchmarks.md"))
        print("wrote docs/benchmarks.md")


def scale_runs(cluster):
    """The operator scale runs of a cluster section (one object in older figures)."""
    o = cluster["operator_scale"]
    return o if isinstance(o, list) else [o]


def summary_text(r):
    lines = []
    for w, summary in r.get("proxy", {}).items():
        for name, s in summary.items():
            if isinstance(s, dict):
                lines.append(f"{w:10} {name:28} {s['rps']:>8} req/s  p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms"
                             f"  x nginx {s['vs_nginx']}  x haproxy {s['vs_haproxy']}  non-2xx {s['non2xx']}")
    for w, summary in r.get("proxy", {}).items():
        if "jwt_vs_apikey" in summary:
            lines.append(f"{w:10} token validation: jwt x{summary['jwt_vs_apikey']} of the API-key path (HTTP), "
                         f"mtls+jwt x{summary['mtls_jwt_vs_tls_apikey']} of API key over mutual TLS")
    for w, summary in r.get("proxy", {}).items():
        if "recording_cost" in summary:
            lines.append(f"{w:10} analytics recording cost: {summary['recording_cost'] * 100:.1f} % of throughput "
                         f"(API key + tier, recording on vs off)")
    if "propagation" in r:
        p = r["propagation"]
        lines.append(f"propagation artifact->served: p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms ({p['trials']} trials)")
    if "scale" in r:
        s = r["scale"]
        lines.append(f"scale {s['apis']} APIs: startup {s['startup_to_ready_s']} s, first build {s['first_build_ms']} ms, "
                     f"reload p50 {s['reload_p50_ms']} ms max {s['reload_max_ms']} ms, served p50 "
                     f"{s['write_to_served_p50_ms']} ms, RSS {s['rss_mib']} MiB (1 API: {s['rss_one_api_mib']} MiB), "
                     f"throughput x{s['throughput_ratio']} of 1 API")
    if "soak" in r:
        t = r["soak"]["total"]
        lines.append(f"soak {r['soak']['rate']} req/s {r['soak']['duration_s']} s: p50 {t['p50_ms']} ms p99 {t['p99_ms']} ms "
                     f"max {t['max_ms']} ms, errors {t['errors']}, non-2xx {t['non2xx']}, "
                     f"RSS {[w['rss_mib'] for w in r['soak']['windows']]}")
    if "cluster" in r:
        c = r["cluster"]
        k = c['propagation_kubectl']
        lines.append(f"kubectl apply -> served: p50 {k['served_p50_ms']:.0f} ms, p99 {k['served_p99_ms']:.0f} ms")
        if "policy_enforced_p50_ms" in k:
            lines.append(f"kubectl patch policy -> enforced: p50 {k['policy_enforced_p50_ms']:.0f} ms, "
                         f"max {k['policy_enforced_max_ms']:.0f} ms; kubectl delete -> 404: p50 "
                         f"{k['deleted_404_p50_ms']:.0f} ms, p99 {k['deleted_404_p99_ms']:.0f} ms")
        for o in scale_runs(c):
            lines.append(f"operator {o['apis']} ApiDeployments: all Deployed {o['all_deployed_s']:.1f} s "
                         f"({o.get('deployed_after_last_create_s', 0):.1f} s after the last create), "
                         f"RSS peak {o['rss_peak_mib']:.0f} MiB, deletion -> 404 "
                         f"{o.get('delete_to_404_ms', 0):.0f} ms, restart writes {o.get('restart_artifact_writes', 0):.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
