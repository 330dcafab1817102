#!/usr/bin/env python3
"""wasmgate as a shared edge: the noisy neighbour (mode N) and 1,000 tenants
on one node (mode M). Issue 18's measurements; see bench/README.md.

  mode N  A good tenant under wrk (16 connections), alone and then during a
          storm from another tenant: looping, trapping and memory-growing
          filter calls, calls waiting on a slow outbound cluster, and
          attackers that mix passing requests in so as to stay out of
          quarantine. The gateway (2 workers) owns CPU 0; wrk, the attackers'
          client, the upstream and the slow service share CPU 1. Reported:
          the good tenant's requests/s, p50, p99 and errors alone and during
          the storm (median over rounds), and what the attackers got. The
          same storm is also run with the tenant quota `filter_concurrency`
          raised to the number of workers, which turns the per-tenant share
          of the workers off.
  mode M  1,000 tenants, each with its own host, route and filter module
          (1,000 distinct modules: the `headers` filter with a custom section
          of its own appended, so each has different bytes and is compiled on
          its own). Reported: start time with a cold and a warm compile cache,
          resident memory at rest and after every tenant served a request,
          metric series, the time to add one tenant through the admin API
          (a new module, and a module already compiled) while another
          tenant serves under load, and that tenant's p99 alone and while
          one is added.

Only 127.0.0.1 is contacted. Standard library only; helpers come from
bench.py. Writes its section of BENCHMARKS.md (between the markers
`bench:tenants-N` / `bench:tenants-M`) unless --quick.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402  (the shared helpers)

HOST = B.HOST
REPO = B.REPO
GATEWAY_CPU = "0"
CLIENT_CPU = "1"


# --------------------------------------------------------------------------
# Small HTTP helpers (keep-alive, any Host header).


class Client:
    """One keep-alive HTTP/1.1 connection to the gateway."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, headers: dict[str, str],
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                hdrs = {k.lower(): v for k, v in r.getheaders()}
                if hdrs.get("connection", "").lower() == "close":
                    self.close()
                return r.status, hdrs, data
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_port(proc: B.Proc, port: int, timeout: float) -> float:
    """Seconds until `port` accepts a connection."""
    start = time.monotonic()
    B.wait_listening(proc, port, timeout=timeout)
    return time.monotonic() - start


def upstream_conf(workdir: Path, port: int) -> Path:
    conf = workdir / "upstream.conf"
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
error_log {workdir}/upstream-error.log warn;
pid {workdir}/upstream.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/ngx-body;
  proxy_temp_path {workdir}/ngx-proxy;
  fastcgi_temp_path {workdir}/ngx-fastcgi;
  uwsgi_temp_path {workdir}/ngx-uwsgi;
  scgi_temp_path {workdir}/ngx-scgi;
  keepalive_requests 1000000;
  server {{
    listen {HOST}:{port};
    location / {{ return 200 "hello\\n"; }}
  }}
}}
""")
    return conf


class SlowService:
    """Answers every request after `delay` seconds (the slow cluster a
    tenant's filter waits on), in threads; keep-alive."""

    def __init__(self, port: int, delay: float) -> None:
        self.port, self.delay = port, delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, port))
        self.sock.listen(256)
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while not self.stopped:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    time.sleep(self.delay)
                    try:
                        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nslow\n")
                    except OSError:
                        return

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


# --------------------------------------------------------------------------
# wrk


def run_wrk(wrk: str, port: int, host: str, seconds: float, connections: int,
            workdir: Path, tag: str) -> dict:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s",
            "-H", f"Host: {host}", f"http://{HOST}:{port}/"]
    code, _, text = B._run_pinned(argv, CLIENT_CPU, workdir / f"wrk-{tag}.txt")
    if code != 0:
        raise B.BenchError(f"wrk failed ({code}):\n{text}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    reqs = re.search(r"(\d+) requests in", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not (rps and reqs and p50 and p99):
        raise B.BenchError(f"cannot parse wrk output:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(x) for x in sock.groups()) if sock else 0)
    return {"rps": float(rps.group(1)), "p50_us": B._dur_us(p50.group(1)),
            "p99_us": B._dur_us(p99.group(1)), "requests": int(reqs.group(1)),
            "errors": errors}


# --------------------------------------------------------------------------
# Mode N: the noisy neighbour


# What each attacker thread sends, in turn (x-fault values of the fault
# filter; "" passes). The mixed ones put passing requests between faults
# so the failure streak keeps resetting and the route is never quarantined.
ATTACKERS = {
    "loop": ["loop"],
    "trap": ["trap"],
    "alloc": ["alloc"],
    "slow-outbound": ["slow"],
    "mixed-loop": ["loop", "", ""],
    "mixed-loop-2": ["loop", ""],
    "mixed-alloc": ["alloc", "", ""],
    "mixed-trap": ["trap", ""],
}


class Storm:
    def __init__(self, port: int, host: str, only: list[str] | None = None) -> None:
        self.port, self.host = port, host
        self.stop_flag = threading.Event()
        self.counts: dict[str, dict[int, int]] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._attack, args=(name, seq), daemon=True)
                        for name, seq in ATTACKERS.items() if not only or name in only]

    def _attack(self, name: str, seq: list[str]) -> None:
        client = Client(self.port, timeout=15)
        i = 0
        while not self.stop_flag.is_set():
            mode = seq[i % len(seq)]
            i += 1
            headers = {"Host": self.host}
            if mode == "slow":
                headers.update({"x-fault": "outbound-to", "x-fault-arg": "slow"})
            elif mode:
                headers["x-fault"] = mode
            try:
                status, _, _ = client.request("GET", "/", headers)
            except (OSError, http.client.HTTPException):
                status = 0
            with self.lock:
                per = self.counts.setdefault(name, {})
                per[status] = per.get(status, 0) + 1

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> dict[str, dict[int, int]]:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=20)
        return self.counts


def gateway_main(port: int, admin: int | None, extra_quotas: str, cache: Path,
                 workers: int = 2, max_instances: int = 64, engine: str = "") -> str:
    lines = ["[server]", f'listen = "{HOST}:{port}"', f"workers = {workers}", "",
             "[access_log]", "enabled = false", "",
             "[engine]", f"max_instances = {max_instances}", f'cache_dir = "{cache}"', engine, ""]
    if admin:
        lines += ["[admin]", f'listen = "{HOST}:{admin}"', 'data_dir = "data"', ""]
    lines += ["[tenants]", 'dir = "tenants"', 'allow = ["127.0.0.1/32"]',
              'shared = ["127.0.0.1/32"]', "", "[tenants.quotas]", extra_quotas, ""]
    return "\n".join(lines)


def fault_tenant(host: str, upstream: int, slow: int, fault: Path) -> str:
    # No quarantine: every attack runs (the quarantine is not isolation; an
    # attacker who mixes passing requests in stays out of it anyway).
    return f"""hosts = ["{host}"]
[filters.f]
path = "{fault}"
pool_size = 8
quarantine_after = 0
cpu_limit = "50ms"
wall_limit = "2s"
memory_limit = "64MiB"
outbound_clusters = ["slow"]
max_outbound_calls = 2
outbound_timeout = "1s"

[clusters.api]
endpoints = ["{HOST}:{upstream}"]

[clusters.slow]
endpoints = ["{HOST}:{slow}"]

[[routes]]
name = "r"
cluster = "api"
filters = [{{ name = "f", config = {{ tag = "{host}" }} }}]
"""


def start_gateway(procs: B.Procs, wasmgate: Path, workdir: Path, name: str,
                  cpu: str = GATEWAY_CPU) -> B.Proc:
    return procs.start(name, [str(wasmgate), "serve", "--config", str(workdir / "gateway.toml")],
                       cpu, workdir, env={"WASMGATE_LOG": "warn"})


def mode_n(args, wasmgate: Path, filters: Path, wrk: str, nginx: str) -> str:
    fault = filters / "fault.wasm"
    if not fault.exists():
        raise B.BenchError(f"{fault} is missing: build the test filters (cargo build --release "
                           "-p wasmgate-tests, or bench/run.sh)")
    procs = B.Procs()
    results: dict[str, list[dict]] = {}
    attackers: dict[str, dict[str, dict[int, int]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="wasmgate-bench-N-") as tmp:
            workdir = Path(tmp)
            up_port, slow_port = B.free_ports(2)
            up = procs.start("upstream", [nginx, "-c", str(upstream_conf(workdir, up_port))],
                             CLIENT_CPU, workdir)
            B.wait_listening(up, up_port)
            slow = SlowService(slow_port, delay=0.2)
            for variant, (_, quotas) in VARIANTS.items():
                if args.variants and variant not in args.variants:
                    continue
                d = workdir / variant
                (d / "tenants").mkdir(parents=True)
                port = B.free_ports(1)[0]
                (d / "gateway.toml").write_text(
                    gateway_main(port, None, quotas, workdir / "cache", engine=args.engine))
                for t in ("good", "bad"):
                    (d / "tenants" / f"{t}.toml").write_text(
                        fault_tenant(f"{t}.bench", up_port, slow_port, fault))
                gw = start_gateway(procs, wasmgate, d, f"wasmgate-{variant}")
                wait_port(gw, port, 120)
                c = Client(port)
                for t in ("good", "bad"):
                    status, _, body = c.request("GET", "/", {"Host": f"{t}.bench"})
                    if status != 200:
                        raise B.BenchError(f"{t}.bench answered {status}: {body[:200]!r}")
                c.close()
                run_wrk(wrk, port, "good.bench", args.warmup, 16, d, "warmup")
                for r in range(args.rounds):
                    alone = run_wrk(wrk, port, "good.bench", args.duration, 16, d, f"alone-{r}")
                    storm = Storm(port, "bad.bench", args.attackers)
                    storm.start()
                    time.sleep(1.0)
                    during = run_wrk(wrk, port, "good.bench", args.duration, 16, d, f"storm-{r}")
                    counts = storm.stop()
                    results.setdefault(f"{variant}/alone", []).append(alone)
                    results.setdefault(f"{variant}/storm", []).append(during)
                    for name, per in counts.items():
                        agg = attackers.setdefault(variant, {}).setdefault(name, {})
                        for status, n in per.items():
                            agg[status] = agg.get(status, 0) + n
                    print(f"  {variant} round {r + 1}: alone {alone['rps']:.0f} rps "
                          f"p99 {alone['p99_us'] / 1000:.2f} ms; storm {during['rps']:.0f} rps "
                          f"p99 {during['p99_us'] / 1000:.2f} ms, errors {during['errors']}",
                          flush=True)
                procs.stop(gw)
            slow.stop()
    finally:
        procs.stop_all()
    return report_n(args, results, attackers)


# The gateways mode N compares: (label, what follows `[tenants.quotas]`).
VARIANTS = {
    "isolated": ("defaults (share on)", ""),
    "cpu-quota": ("defaults, and the bad tenant's `filter_cpu_per_second = \"100ms\"`",
                  '[tenants.quota_overrides.bad]\nfilter_cpu_per_second = "100ms"'),
    "no-share": ("`filter_concurrency = 2` (share off)", "filter_concurrency = 2"),
}


def med(samples: list[dict], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def report_n(args, results: dict[str, list[dict]], attackers) -> str:
    rows = ["| gateway | good tenant | requests/s | p50 | p99 | errors | p99 vs alone |",
            "|---|---|---:|---:|---:|---:|---:|"]
    verdicts = []
    for variant, (label, _) in VARIANTS.items():
        if f"{variant}/alone" not in results:
            continue
        alone, storm = results[f"{variant}/alone"], results[f"{variant}/storm"]
        for phase, samples in (("alone", alone), ("during the storm", storm)):
            ratio = med(samples, "p99_us") / med(alone, "p99_us")
            rows.append(f"| {label} | {phase} | {med(samples, 'rps'):,.0f} | "
                        f"{med(samples, 'p50_us') / 1000:.2f} ms | "
                        f"{med(samples, 'p99_us') / 1000:.2f} ms | "
                        f"{sum(s['errors'] for s in samples)} | {ratio:.2f}× |")
        ratio = med(storm, "p99_us") / med(alone, "p99_us")
        lost = sum(s["errors"] for s in storm)
        verdicts.append(f"- {label}: p99 during the storm {ratio:.2f}× alone "
                        f"(target ≤ 3×: {'met' if ratio <= 3 else 'missed'}), "
                        f"{lost} of the good tenant's requests failed "
                        f"(target 0: {'met' if lost == 0 else 'missed'}).")
    arows = ["| gateway | attacker | answers by status |", "|---|---|---|"]
    for variant in VARIANTS:
        for name, per in sorted(attackers.get(variant, {}).items()):
            st = ", ".join(f"{k}: {v}" for k, v in sorted(per.items()))
            arows.append(f"| {variant} | {name} | {st} |")
    return f"""### Mode N: the noisy neighbour (issue 18)

{B.machine()}. `bench/tenants.py --mode N`, {args.rounds} rounds × {args.duration:g} s
per phase after a {args.warmup:g} s warm-up; medians over rounds (errors summed).

- The gateway (`workers = 2`, release build) owns CPU 0. wrk (1 thread, 16
  connections), the attackers' client (Python, one thread per attacker),
  the upstream (nginx, one worker) and the slow service (answers after
  200 ms) share CPU 1.
- Two tenants, each with the `fault` filter (`cpu_limit = "50ms"`,
  `wall_limit = "2s"`, pool of 8, `quarantine_after = 0` so that every
  attack runs) in front of the upstream. The good
  tenant's requests pass through it; the bad tenant's attackers send, each
  in a loop on one keep-alive connection: {", ".join(f"`{k}`" for k in ATTACKERS)}
  (`loop` spins until its CPU budget ends it, `trap` panics, `alloc` grows
  memory until its cap, `slow-outbound` waits on the slow service; the
  `mixed-*` ones put passing requests between faults to stay out of
  quarantine).
- Three gateways: every quota at its default (the bad tenant's calls run
  guest code on one of the two workers at most); the same with the bad
  tenant's `filter_cpu_per_second` at 100 ms (a tenth of a CPU); and
  "share off", with `filter_concurrency` raised to both workers.

{chr(10).join(rows)}

{chr(10).join(verdicts)}

Requests/s during the storm is bounded by more than the gateway: wrk shares
CPU 1 with the attackers' client (eight Python threads), and every attack,
refused or not, costs the gateway the work of reading and routing it before
the tenant's quota can refuse it. With `filter_cpu_per_second` the bad
tenant's calls are refused almost at once (503), so its client sends dozens
of times as many requests (below); the good tenant's p99 holds either way.

What the attackers got (all rounds together; 0 is a connection error):

{chr(10).join(arows)}
"""


# --------------------------------------------------------------------------
# Mode M: 1,000 tenants


def distinct_module(base: bytes, i: int) -> bytes:
    """`base` with a custom section of its own appended: different bytes
    (another SHA-256, compiled on its own), the same behaviour."""
    name = b"wasmgate-bench-tenant"
    payload = bytes([len(name)]) + name + f"tenant {i:06d}".encode()
    size = len(payload)
    leb = bytearray()
    while True:
        byte = size & 0x7F
        size >>= 7
        if size:
            leb.append(byte | 0x80)
        else:
            leb.append(byte)
            break
    return base + b"\x00" + bytes(leb) + payload


def headers_tenant(name: str, module: str | None, upstream: int) -> str:
    """Tenant `name` on host `NAME.bench`; with the `headers` filter from
    `module` on its route, or no filter when `module` is None."""
    text = f"""hosts = ["{name}.bench"]

[clusters.api]
endpoints = ["{HOST}:{upstream}"]

[[routes]]
name = "r"
cluster = "api"
"""
    if module is None:
        return text
    return text + f"""filters = [{{ name = "h", config = {{ request = {{ set = {{ "x-tenant" = "{name}" }} }} }} }}]

[filters.h]
path = "{module}"
pool_size = 1
"""


def scrape(admin: int) -> str:
    c = http.client.HTTPConnection(HOST, admin, timeout=30)
    c.request("GET", "/metrics", headers={"Host": "localhost"})
    text = c.getresponse().read().decode()
    c.close()
    return text


def admin_call(admin: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection(HOST, admin, timeout=120)
    c.request(method, path, body=body, headers={"Host": "localhost"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def metric_value(text: str, sample: str) -> float:
    """The value of one sample (its name with its labels, as exported)."""
    for line in text.splitlines():
        if line.rsplit(" ", 1)[0] == sample:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def mode_m(args, wasmgate: Path, filters: Path, wrk: str, nginx: str) -> str:
    n = args.tenants
    base = (filters / "headers.wasm").read_bytes()
    procs = B.Procs()
    out: dict[str, object] = {"tenants": n, "module_bytes": len(base)}
    try:
        with tempfile.TemporaryDirectory(prefix="wasmgate-bench-M-") as tmp:
            workdir = Path(tmp)
            up_port, port, admin = B.free_ports(3)
            up = procs.start("upstream", [nginx, "-c", str(upstream_conf(workdir, up_port))],
                             CLIENT_CPU, workdir)
            B.wait_listening(up, up_port)
            (workdir / "modules").mkdir()
            (workdir / "tenants").mkdir()
            for i in range(n):
                m = workdir / "modules" / f"t{i}.wasm"
                m.write_bytes(distinct_module(base, i))
                (workdir / "tenants" / f"t{i}.toml").write_text(
                    headers_tenant(f"t{i}", str(m), up_port))
            cache = workdir / "cache"
            (workdir / "gateway.toml").write_text(gateway_main(
                port, admin, "filter_instances = 1", cache, workers=2,
                max_instances=n + 64))
            for start in ("cold", "warm"):
                gw = start_gateway(procs, wasmgate, workdir, f"wasmgate-{start}", cpu="0-1")
                took = wait_port(gw, port, 3600)
                out[f"start_{start}_s"] = took
                B.wait_listening(gw, admin, timeout=60)
                time.sleep(1.0)
                out[f"rss_rest_{start}_kib"] = rss_kib(gw.pgid)
                m = scrape(admin)
                out[f"loads_{start}"] = {s: metric_value(m, f'wasmgate_filter_module_loads_total{{source="{s}"}}')
                                         for s in ("compiled", "disk", "memory")}
                print(f"  {start} start: {took:.1f} s, RSS {out[f'rss_rest_{start}_kib'] / 1024:.0f} MiB, "
                      f"loads {out[f'loads_{start}']}", flush=True)
                if start == "cold":
                    procs.stop(gw)
            # Every tenant serves one request.
            c = Client(port)
            t0 = time.monotonic()
            for i in range(n):
                status, hdrs, body = c.request("GET", "/", {"Host": f"t{i}.bench"})
                if status != 200:
                    raise B.BenchError(f"t{i}.bench answered {status}: {body[:200]!r}")
            c.close()
            out["serve_all_s"] = time.monotonic() - t0
            out["rss_served_kib"] = rss_kib(gw.pgid)
            m = scrape(admin)
            out["series"] = sum(1 for line in m.splitlines() if line and not line.startswith("#"))
            out["scrape_bytes"] = len(m)
            out["instances"] = sum(
                float(line.rsplit(" ", 1)[1]) for line in m.splitlines()
                if line.startswith("wasmgate_tenant_filter_instances{"))
            print(f"  served: RSS {out['rss_served_kib'] / 1024:.0f} MiB, {out['series']} series",
                  flush=True)

            # One tenant under load, alone and while others are added.
            alone = run_wrk(wrk, port, "t0.bench", args.duration, 4, workdir, "alone")
            adds: list[tuple[str, float, int]] = []

            def add_tenants() -> None:
                time.sleep(0.5)
                for j, kind in enumerate(("new", "compiled", "new", "compiled")):
                    name = f"late{j}"
                    # The tenant with its route and cluster, no filter yet
                    # (an upload needs the tenant).
                    bare = headers_tenant(name, None, up_port)
                    t = time.monotonic()
                    status, body = admin_call(admin, "PUT", f"/tenants/{name}/config",
                                              bare.encode())
                    took_bare = time.monotonic() - t
                    if status != 200:
                        raise B.BenchError(f"adding {name}: {status} {body[:300]!r}")
                    data = (distinct_module(base, n + j) if kind == "new"
                            else (workdir / "modules" / "t1.wasm").read_bytes())
                    t = time.monotonic()
                    status, body = admin_call(admin, "PUT", f"/tenants/{name}/uploads", data)
                    took_upload = time.monotonic() - t
                    if status != 200:
                        raise B.BenchError(f"upload for {name}: {status} {body[:300]!r}")
                    ref = json.loads(body)["ref"]
                    t = time.monotonic()
                    status, body = admin_call(admin, "PUT", f"/tenants/{name}/config",
                                              headers_tenant(name, ref, up_port).encode())
                    took = time.monotonic() - t
                    if status != 200:
                        raise B.BenchError(f"adding {name}'s filter: {status} {body[:300]!r}")
                    adds.append((kind, took_bare, took_upload, took))
                    time.sleep(0.3)

            adder = threading.Thread(target=add_tenants)
            adder.start()
            during = run_wrk(wrk, port, "t0.bench", max(args.duration, 4.0), 4, workdir, "during")
            adder.join()
            c = Client(port)
            for j in range(4):
                status, _, _ = c.request("GET", "/", {"Host": f"late{j}.bench"})
                if status != 200:
                    raise B.BenchError(f"late{j}.bench answered {status}")
            c.close()
            out["alone"], out["during"], out["adds"] = alone, during, adds
            procs.stop(gw)
    finally:
        procs.stop_all()
    return report_m(args, out)


def report_m(args, o: dict) -> str:
    n = o["tenants"]
    mib = lambda k: o[k] / 1024  # noqa: E731
    adds = o["adds"]
    ms = lambda ts: ", ".join(f"{t * 1000:.0f} ms" for t in ts)  # noqa: E731
    bare = [a[1] for a in adds]
    uploads = [a[2] for a in adds]
    new = [a[3] for a in adds if a[0] == "new"]
    compiled = [a[3] for a in adds if a[0] == "compiled"]
    whole_new = [a[1] + a[2] + a[3] for a in adds if a[0] == "new"]
    whole_compiled = [a[1] + a[2] + a[3] for a in adds if a[0] == "compiled"]
    verdict = lambda ok: "met" if ok else "missed"  # noqa: E731
    return f"""### Mode M: {n:,} tenants on one node (issue 18)

{B.machine()}. `bench/tenants.py --mode M --tenants {n}`.

- {n:,} tenants, each a file in the tenants folder with its own host, route,
  cluster and `headers` filter; each module is `headers.wasm`
  ({o['module_bytes']:,} bytes) with a custom section of its own appended,
  so the {n:,} modules are distinct bytes, each compiled on its own (the
  same code, so the compiled sizes are alike). `filter_instances = 1` per
  tenant, `engine.max_instances = {n + 64}`, `workers = 2`, the gateway on
  both CPUs; the upstream (nginx) and wrk on CPU 1.

| measure | value | target |
|---|---:|---|
| start, cold compile cache | {o['start_cold_s']:.1f} s (compiled {o['loads_cold']['compiled']:.0f}) | |
| start, warm compile cache | {o['start_warm_s']:.1f} s (compiled {o['loads_warm']['compiled']:.0f}, from disk {o['loads_warm']['disk']:.0f}) | ≤ 10 s: {verdict(o['start_warm_s'] <= 10)} |
| RSS at rest (after the warm start) | {mib('rss_rest_warm_kib'):.0f} MiB | ≤ 1 GiB: {verdict(o['rss_rest_warm_kib'] <= 1 << 20)} |
| RSS after every tenant served a request | {mib('rss_served_kib'):.0f} MiB | ≤ 1 GiB: {verdict(o['rss_served_kib'] <= 1 << 20)} |
| one request to each tenant, in turn | {o['serve_all_s']:.1f} s | |
| instances held after that (of {n}) | {o['instances']:.0f} | |
| metric series / scrape size | {o['series']:,} / {o['scrape_bytes'] / 1e6:.1f} MB | |
| add a tenant: its routes and cluster (`PUT /tenants/NAME/config`) | {ms(bare)} | |
| its module upload (`PUT /tenants/NAME/uploads`) | {ms(uploads)} | |
| its filter, a new module (`PUT /tenants/NAME/config`: compile, validate, start) | {ms(new)} | |
| its filter, a module already compiled | {ms(compiled)} | |
| the three together, module already compiled | {ms(whole_compiled)} | ≤ 100 ms: {verdict(max(whole_compiled) <= 0.1)} |
| the three together, a new module | {ms(whole_new)} | ≤ 100 ms: {verdict(max(whole_new) <= 0.1)} |
| tenant t0 under wrk (4 connections), alone: p50 / p99 | {o['alone']['p50_us'] / 1000:.2f} / {o['alone']['p99_us'] / 1000:.2f} ms ({o['alone']['rps']:,.0f} rps) | |
| the same while four tenants are added: p50 / p99 | {o['during']['p50_us'] / 1000:.2f} / {o['during']['p99_us'] / 1000:.2f} ms ({o['during']['rps']:,.0f} rps, {o['during']['errors']} errors) | |

The RSS figures include the metric series ({o['series']:,} in the last
scrape, which is {o['scrape_bytes'] / 1e6:.1f} MB of text).
"""


# --------------------------------------------------------------------------


def write_section(mode: str, text: str) -> None:
    path = REPO / "BENCHMARKS.md"
    begin, end = f"<!-- bench:tenants-{mode}:begin -->", f"<!-- bench:tenants-{mode}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(current):
        current = pattern.sub(lambda _: block, current)
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    path.write_text(current)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["N", "M"], required=True)
    ap.add_argument("--quick", action="store_true", help="short run; does not write BENCHMARKS.md")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--warmup", type=float, default=None)
    ap.add_argument("--tenants", type=int, default=None, help="mode M (default 1000; quick 50)")
    ap.add_argument("--attackers", type=lambda v: v.split(","), default=None,
                    help="mode N: only these attackers (comma-separated; for profiling)")
    ap.add_argument("--variants", type=lambda v: v.split(","), default=None,
                    help="mode N: only these gateways (" + ", ".join(VARIANTS) + ")")
    ap.add_argument("--engine", default="",
                    help="mode N: extra [engine] lines, e.g. 'epoch_tick = \"1ms\"'")
    ap.add_argument("--wasmgate", type=Path, default=REPO / "target/release/wasmgate")
    ap.add_argument("--filters", type=Path,
                    default=REPO / "target/filters/wasm32-wasip2/release")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup or (1.0 if args.quick else 3.0)
    args.tenants = args.tenants or (50 if args.quick else 1000)
    if (os.cpu_count() or 1) < 2:
        raise B.BenchError("needs two CPUs")
    wrk = B.find_tool("wrk", None)
    nginx = B.find_tool("nginx", None)
    for p in (args.wasmgate, args.filters):
        if not p.exists():
            raise B.BenchError(f"{p} is missing: cargo build --release -p wasmgate --workspace")
    text = (mode_n if args.mode == "N" else mode_m)(args, args.wasmgate, args.filters, wrk, nginx)
    print(text)
    if args.attackers or args.variants or args.engine:
        args.quick = True  # a partial run is for profiling, not for BENCHMARKS.md
    if not args.quick:
        write_section(args.mode, text)
        print("written to BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except B.BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
