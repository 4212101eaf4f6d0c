"""Writes docs/benchmarks.md from the figures of a full `make bench` run."""

TARGETS_NOTE = "Targets are goals to chase, not test gates; docs/performance.md explains the misses with profiles."


def _index(s):
    """The wait for the search index's first build, when the run measured it."""
    if "search_index_wait_s" not in s:
        return ""
    return (f"- the portal's search index (built once per new data folder, in the background) was\n"
            f"  up to date {s['search_index_wait_s']} s after the wait for it began; the reloads below are timed after it;\n")


def _each(s):
    """Every reload trial in order, when the run kept them."""
    each = s.get("reload_each_ms")
    return f" (in order: {', '.join(f'{x:g}' for x in each)} ms)" if each else ""


def _row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _check(ok):
    return "met" if ok else "**missed**"


def _patch_and_delete(k):
    if "policy_enforced_p50_ms" not in k:
        return ""
    return (f"\n\n`kubectl patch` of a ThrottlePolicy's limit -> the first 429 of the API using it, "
            f"{k['policy_trials']} trials: p50 {k['policy_enforced_p50_ms']:.0f} ms, max "
            f"{k['policy_enforced_max_ms']:.0f} ms; `kubectl delete` of an ApiDeployment -> 404, "
            f"{k['trials']} trials: p50 {k['deleted_404_p50_ms']:.0f} ms, p99 {k['deleted_404_p99_ms']:.0f} ms.")


def _scale_runs(cluster):
    o = cluster["operator_scale"]
    return o if isinstance(o, list) else [o]


def targets(r):
    """(target, figure, met) for every target of the benchmark issue."""
    out = []
    for w, s in r.get("proxy", {}).items():
        best = max(s["nginx"]["rps"], s["haproxy"]["rps"])
        best_p99 = min(s["nginx"]["p99_ms"], s["haproxy"]["p99_ms"])
        t = s["tollgate+auth+throttle"]
        for prefix in ("", "json2k:", "tls:"):
            g = s.get(prefix + "tollgate+auth+throttle", {})
            if "vs_best_gateway_peer" in g:
                peers = [s[prefix + p] for p in ("nginx+key+limit", "haproxy+key+limit")]
                p99 = min(p["p99_ms"] for p in peers)
                label = {"": "small GET", "json2k:": "2 KiB JSON", "tls:": "2 KiB JSON over TLS 1.3"}[prefix]
                out.append((f"{w}: key+tier >= 1.0x the best gateway peer ({label})",
                            f"{g['vs_best_gateway_peer']}x", g["vs_best_gateway_peer"] >= 1.0))
                out.append((f"{w}: key+tier p99 within +0.5 ms of that peer ({label})",
                            f"{g['p99_ms']:.2f} ms vs {p99:.2f} ms", g["p99_ms"] <= p99 + 0.5))
            for what in ("tollgate", "tollgate+auth+throttle"):
                v = s.get(prefix + what, {}).get("vs_pingora")
                if v is not None:
                    label = "2 KiB JSON" if prefix else "small GET"
                    kind = "no policy" if what == "tollgate" else "key+tier"
                    out.append((f"{w}: tollgate {kind} within 5 % of bare Pingora ({label})", f"{v}x", v >= 0.95))
        out.append((f"{w}: auth+throttle >= 1.0x nginx", f"{t['vs_nginx']}x", t["vs_nginx"] >= 1.0))
        out.append((f"{w}: auth+throttle >= 1.0x HAProxy", f"{t['vs_haproxy']}x", t["vs_haproxy"] >= 1.0))
        out.append((f"{w}: p99 within +0.5 ms of the best proxy", f"{t['p99_ms']:.2f} ms vs {best_p99:.2f} ms",
                    t["p99_ms"] <= best_p99 + 0.5))
        for kind in ("replica", "cluster"):
            v = s[f"tollgate+{kind}-throttle"]["vs_tollgate"]
            out.append((f"{w}: {kind} throttling cost <= 5 %", f"{(1 - v) * 100:.1f} %", v >= 0.95))
        if "recording_cost" in s:
            v = s["recording_cost"]
            out.append((f"{w}: analytics recording cost <= 3 %", f"{v * 100:.1f} %", v <= 0.03))
        if "jwt_vs_apikey" in s:
            v = s["jwt_vs_apikey"]
            out.append((f"{w}: cached JWT cost <= 5 % over the API key", f"{(1 - v) * 100:.1f} %", v >= 0.95))
            v = s["mtls_jwt_vs_tls_apikey"]
            out.append((f"{w}: bound JWT over mTLS cost <= 5 % over an API key over mTLS", f"{(1 - v) * 100:.1f} %",
                        v >= 0.95))
        del best
    if "propagation" in r:
        p = r["propagation"]["p99_ms"]
        out.append(("artifact write -> served p99 < 1 s", f"{p} ms", p < 1000))
    if "cluster" in r:
        p = r["cluster"]["propagation_kubectl"]["served_p99_ms"]
        out.append(("kubectl apply -> served p99 < 2 s", f"{p:.0f} ms", p < 2000))
        k = r["cluster"]["propagation_kubectl"]
        if "policy_enforced_max_ms" in k:
            v = k["policy_enforced_max_ms"]
            out.append(("kubectl patch of a policy -> enforced < 2 s", f"{v:.0f} ms max", v < 2000))
            v = k["deleted_404_p99_ms"]
            out.append(("kubectl delete of an API -> 404 p99 < 2 s", f"{v:.0f} ms", v < 2000))
        for o in _scale_runs(r["cluster"]):
            n = o["apis"]
            if "deployed_after_last_create_s" not in o:
                out.append((f"{n} ApiDeployments Deployed < 20 s", f"{o['all_deployed_s']:.1f} s", o["all_deployed_s"] < 20))
                continue
            within = 10 if n <= 1000 else 60
            v = o["deployed_after_last_create_s"]
            out.append((f"{n:,} ApiDeployments Deployed <= {within} s after the last is created", f"{v:.1f} s",
                        v <= within))
            rss = 100 if n <= 1000 else 150
            out.append((f"operator RSS <= {rss} MiB at {n:,}", f"{o['rss_peak_mib']:.0f} MiB peak",
                        o["rss_peak_mib"] <= rss))
            if n >= 10000:
                d = o["delete_to_404_ms"]
                out.append((f"one deletion among {n:,} answers 404 within 2 s", f"{d:.0f} ms", d <= 2000))
            w = o["restart_artifact_writes"]
            out.append((f"operator restart over {n:,} APIs writes no artifact", f"{w:.0f} files", w == 0))
    if "scale" in r:
        s = r["scale"]
        out.append((f"{s['apis']} APIs throughput >= 0.95x of 1 API", f"{s['throughput_ratio']}x", s["throughput_ratio"] >= 0.95))
        out.append((f"{s['apis']:,} APIs: startup to ready <= 2 s", f"{s['startup_to_ready_s']} s",
                    s["startup_to_ready_s"] <= 2))
        out.append((f"{s['apis']:,} APIs: reload p99 <= 100 ms ({s['reload_trials']} trials: the max)",
                    f"{s['reload_max_ms']} ms (p50 {s['reload_p50_ms']} ms)", s["reload_max_ms"] <= 100))
    if "soak" in r:
        t = r["soak"]["total"]
        out.append(("soak: zero errors", f"{t['errors']} errors, {t['non2xx']} non-2xx", t["errors"] == 0 and t["non2xx"] == 0))
    return out


def write(r, path):
    m = r["machine"]
    parts = [f"""# Benchmarks

Figures of one `make bench` run ({m['date']}, commit {m['commit']}), written by
scripts/bench.py; the raw figures, every round included, are in
[benchmarks.json](benchmarks.json). {TARGETS_NOTE}

Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory']}, Linux {m['kernel']}.
{m['nginx']}; {m['haproxy']}; {m['redis']}; {m['wrk']}. Every process on
127.0.0.1 on the same machine, so the load generator, the proxy under test
and the backend share the 2 CPUs: absolute figures are low, ratios are what
to read.

## Targets

{_row(['target', 'figure', ''])}
{_row(['---', '---', '---'])}
""" + "\n".join(_row([t, f, _check(ok)]) for t, f, ok in targets(r))]

    if "proxy" in r:
        rows = [_row(["workers", "target", "req/s", "p50 ms", "p99 ms", "x nginx", "x HAProxy", "x tollgate",
                      "x best gateway peer", "x bare Pingora", "CPU us/req proxy / backend / wrk", "non-2xx"]),
                _row(["---"] * 12)]
        for w, s in r["proxy"].items():
            for name, v in s.items():
                if isinstance(v, dict):
                    cpu = v.get("cpu_us_per_req", {})
                    cpu_cell = " / ".join(f"{cpu[k]:.0f}" if k in cpu else "-" for k in ("proxy", "backend", "loadgen"))
                    rows.append(_row([w.split("=")[1], name, v["rps"], f"{v['p50_ms']:.2f}", f"{v['p99_ms']:.2f}",
                                      v["vs_nginx"], v["vs_haproxy"], v["vs_tollgate"],
                                      v.get("vs_best_gateway_peer", "-"), v.get("vs_pingora", "-"),
                                      cpu_cell if cpu else "-", v["non2xx"]]))
        rounds = len(next(iter(r["proxy"].values()))["nginx"]["runs"])
        parts.append(f"""
## 1, 2. Proxy throughput, latency and the cost of throttling

Small GET (18-byte static file from an nginx backend with 1 worker),
keep-alive, `wrk -t1 -c32`, {rounds} interleaved rounds per target, medians.
`workers` is nginx `worker_processes`, HAProxy `nbthread` and
`tollgate-gateway --threads`. `direct` is wrk straight to the backend (the
ceiling on this machine). `tollgate+auth+throttle` checks an API key (cached
after the first request) and counts a per-consumer Replica policy that never
trips; `tollgate+replica-throttle` and `tollgate+cluster-throttle` count an
API-level policy in the pod and cluster-wide in Redis (a leased quota: one
Redis round trip per lease, not per request). `x tollgate` is the ratio to
tollgate without a policy: the throttling cost. `nginx+key+limit` and
`haproxy+key+limit` are the peers set up as API gateways by their own
recipes, doing what `tollgate+auth+throttle` does: an API-key check (nginx
`map $http_apikey`, HAProxy a map file), a per-key request-rate limit that
never trips (nginx `limit_req`, HAProxy a stick-table with `http_req_rate`),
the key header stripped before the backend; `x best gateway peer` is the
ratio to the faster of the two. `pingora` is Pingora with no hooks and the
gateway's server settings (gateway/examples/bare_proxy.rs): `x bare
Pingora` is what the gateway costs on top of its proxy core. Rows starting `json2k:` fetch a 2 KiB JSON
document instead of the 18-byte one; rows starting `tls:` fetch the same
document over TLS 1.3 with an ECDSA P-256 certificate on every proxy (wrk
over HTTPS, keep-alive, no client certificate). `CPU us/req` is the CPU time per
request of the proxy (all its processes), the backend and the load
generator, from /proc and getrusage around each run. `tollgate+jwt` sends an
ES256 access token of a mapped OAuth2 client instead of the API key (same
per-consumer policy; the verified token is cached by its hash after the
first request). `tollgate+tls+apikey` and `tollgate+mtls+jwt` run over TLS
with a client certificate, measured with `tollgate-tls-bench` (closed loop,
32 connections, since wrk has no client certificates): an API key, and a
token bound to the certificate on an `mtls.required` API; compare them with
each other, not with the wrk rows.

""" + "\n".join(rows))

    if "propagation" in r:
        p = r["propagation"]
        parts.append(f"""
## 3. Configuration propagation

Artifact written (an atomic rename into the watched folder, as the
operator writes) -> first 200 through the gateway, {p['trials']} trials:
p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, max {p['max_ms']} ms. inotify wakes the
gateway; it waits for a short debounce, reads the changed file and swaps the
routing snapshot.""")
    if "cluster" in r:
        k = r["cluster"]["propagation_kubectl"]
        parts.append(f"""
On the local control plane (real kube-apiserver, etcd, controllers; the
operator and a gateway as local processes, release builds), `kubectl apply`
of a new ApiDeployment -> first 200 through the gateway, {k['trials']} trials:
p50 {k['served_p50_ms']:.0f} ms, p99 {k['served_p99_ms']:.0f} ms, max
{k['served_max_ms']:.0f} ms; of which `kubectl apply` itself (process start,
discovery, request) takes p50 {k['apply_p50_ms']:.0f} ms.{_patch_and_delete(k)}

## 5. Operator scale
""")
        for o in _scale_runs(r["cluster"]):
            parts.append(f"""
{o['apis']:,} ApiDeployments created at once (32 requests in flight) against one
AllInOne ApiManager, each run in a fresh namespace with a fresh operator:
created in {o['create_s']:.1f} s, all `Deployed` (status written,
observedGeneration current; counted from a watch) after {o['all_deployed_s']:.1f} s""" + (
                f""", {o['deployed_after_last_create_s']:.1f} s after the last create; the last one
served by the gateway after {o['last_served_s']:.1f} s; {o['artifact_files']:,} artifact files. One of
them deleted -> its route answers 404 after {o['delete_to_404_ms']:.0f} ms. The operator
restarted over the full folder: planned again in {o['restart_replanned_s']:.1f} s, writing
{o['restart_artifact_writes']:.0f} files. Operator resident memory: {o['rss_idle_mib']:.0f} MiB idle,
{o['rss_loaded_mib']:.0f} MiB once all are served, {o['rss_peak_mib']:.0f} MiB peak (sampled every
100 ms); unexpected reconcile errors: {o['unexpected_reconcile_errors']:.0f}.
""" if "deployed_after_last_create_s" in o else f"""; the
last one served by the gateway after {o['last_served_s']:.1f} s;
{o['artifact_files']} artifact files. Operator resident memory: {o['rss_idle_mib']:.0f} MiB idle,
{o['rss_peak_mib']:.0f} MiB peak (sampled every 100 ms), {o['rss_after_mib']:.0f} MiB after;
unexpected reconcile errors: {o['unexpected_reconcile_errors']:.0f}.
"""))
        for section, rr in sorted(r.get("reruns", {}).items()):
            parts.append(f"""
The `{section}` figures are from `python3 scripts/bench.py --sections {section} --merge ...` at
commit {rr['commit']} ({rr['date']}), merged into the last full run: {rr['why']}.
""")
        if "cluster_rerun" in r:
            rr = r["cluster_rerun"]
            parts.append(f"""
The cluster figures (this section and `kubectl apply` above) are from
`python3 scripts/bench.py --sections cluster` at commit {rr['commit']}
({rr['date']}), re-run after: {rr['why']}.""")

    if "scale" in r:
        s = r["scale"]
        thr = s["throughput"]
        parts.append(f"""
## 4. {s['apis']:,} APIs

{s['apis']:,} ApiDeployments, one file each (as the operator writes them),
3 operations each ({s['routes']:,} routes), in one gateway:

- startup to ready: {s['startup_to_ready_s']} s, of which the first snapshot build
  (read, parse and validate every file, compile the router) {s['first_build_ms']} ms;
{_index(s)}- reload after one file changes, {s['reload_trials']} trials: p50 {s['reload_p50_ms']} ms,
  max {s['reload_max_ms']} ms (unchanged files are not parsed again){_each(s)}; write ->
  change served p50 {s['write_to_served_p50_ms']} ms, max {s['write_to_served_max_ms']} ms;
- resident memory: {s['rss_mib']} MiB (the same gateway with 1 API: {s['rss_one_api_mib']} MiB);
- throughput through one of the APIs, interleaved with a 1-API gateway
  (1 thread each): {' vs '.join(f"{k} {v['rps']} req/s (p99 {v['p99_ms']:.2f} ms)" for k, v in thr.items())}:
  {s['throughput_ratio']}x.""")

    if "soak" in r:
        k = r["soak"]
        t = k["total"]
        rows = [_row(["minute", "completed", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "non-2xx", "RSS MiB"]),
                _row(["---"] * 9)]
        for w in k["windows"]:
            rows.append(_row([round(w["window_end_s"] / 60, 2), w["completed"], w["p50_ms"], w["p99_ms"], w["p999_ms"],
                              w["max_ms"], w["errors"], w["non2xx"],
                              "-" if w["rss_mib"] is None else round(w["rss_mib"], 1)]))
        parts.append(f"""
## 6. Soak

`tollgate-loadgen` (e2e/src/bin/loadgen.rs), open loop: {k['rate']} requests per
second on a fixed schedule over {k['connections']} keep-alive connections for
{k['duration_s']} s, latency measured from when each request was due (no
coordinated omission); API key + a per-consumer policy; gateway
`--threads {k['threads']}`. Total: {t['completed']} of {t['expected']} requests completed,
p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms, p99.9 {t['p999_ms']} ms, max {t['max_ms']} ms,
{t['errors']} errors, {t['non2xx']} non-2xx.

""" + "\n".join(rows))

    parts.append("""
## Reproduce

    make bench          # everything (~25 minutes + the release build): this file and benchmarks.json
    make bench-quick    # under 2 minutes, prints the figures only
    python3 scripts/bench.py --sections proxy,scale   # some sections

`make bench` installs nginx, HAProxy, Redis and wrk (Debian packages),
builds the release binaries, and runs the cluster section on the local
control plane (started and stopped by e2e/cluster/with-cluster.sh, or the
cluster of KUBECONFIG).
""")
    with open(path, "w") as f:
        f.write("\n".join(parts))
