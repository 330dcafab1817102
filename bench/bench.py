#!/usr/bin/env python3
"""Side-by-side benchmark of wasmgate against nginx, HAProxy and Envoy.

The method is the project's (shared/design/BENCHMARKING.md):

  mode S  CPU cost per request. Load generator, proxy and upstream all pinned
          to one CPU. cost = 1/T_proxy - 1/T_direct, per round, in µs.
  mode P  Throughput with the proxy owning a CPU: proxy on one CPU, load
          generator and upstream on the other.

Every peer sits in front of the same upstream (nginx `return 200 "hello\\n"`,
one worker), with one worker/thread, logs off and HTTP/1.1 keep-alive to the
upstream. Peers are interleaved round-robin (A B C ... A B C ...); the peers
not being measured are frozen with SIGSTOP so their timers cannot steal the
CPU. Only 127.0.0.1 is ever contacted.

Standard library only. Normally started by bench/run.sh, which installs the
peers and builds wasmgate and the proxy-wasm filter first; see bench/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import http.client
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
HOST = "127.0.0.1"  # the only address this script ever sends traffic to

API_KEY_HEADER = "x-api-key"
API_KEY = "bench-key"
SERVED_BY = ("x-served-by", "wasmgate-bench")
CHAIN_MARK = ("x-bench-chain", "first")
UPSTREAM_BODY = b"hello\n"

MODE_ORDER = ["S", "P", "T"]
MARK_BEGIN = "<!-- bench:mode-{mode}:begin -->"
MARK_END = "<!-- bench:mode-{mode}:end -->"


class BenchError(Exception):
    """A failure that must stop the run with a clear message."""


# --------------------------------------------------------------------------
# Processes: every one is started in its own session (so it is its own
# process group), pinned with taskset, and tracked until it is stopped.


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG = 1: if this script is killed outright, the child gets
    # SIGKILL instead of living on.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort only
        pass


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pgid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:]) or "(empty log)"


class Procs:
    """Starts processes and guarantees they are all gone at the end."""

    def __init__(self) -> None:
        self.running: list[Proc] = []

    def start(self, name: str, argv: list[str], cpu: str, logdir: Path,
              env: dict[str, str] | None = None) -> Proc:
        log = logdir / f"{name}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                ["taskset", "-c", cpu, *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=full_env, start_new_session=True, preexec_fn=_die_with_parent,
            )
        proc = Proc(name, popen, log)
        self.running.append(proc)
        return proc

    def _signal(self, proc: Proc, sig: int) -> None:
        try:
            os.killpg(proc.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def freeze(self, proc: Proc) -> None:
        self._signal(proc, signal.SIGSTOP)

    def thaw(self, proc: Proc) -> None:
        self._signal(proc, signal.SIGCONT)

    def stop(self, proc: Proc, grace: float = 5.0) -> None:
        if proc not in self.running:
            return
        self._signal(proc, signal.SIGCONT)
        self._signal(proc, signal.SIGTERM)
        try:
            proc.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._signal(proc, signal.SIGKILL)
            proc.popen.wait(timeout=grace)
        # Children of the group (nginx workers) may outlive the leader briefly.
        self._signal(proc, signal.SIGKILL)
        self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.running)):
            try:
                self.stop(proc)
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                print(f"warning: could not stop {proc.name}: {e}", file=sys.stderr)


def group_cpu_ticks(pgid: int) -> int:
    """utime+stime (clock ticks) of every live process in a process group."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2:].split()
        if int(rest[2]) == pgid:
            total += int(rest[11]) + int(rest[12])
    return total


CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_listening(proc: Proc, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited (code {proc.popen.returncode}) before "
                             f"listening on {HOST}:{port}:\n{proc.log_tail()}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{proc.name} is not listening on {HOST}:{port} after {timeout:.0f}s:\n"
                     f"{proc.log_tail()}")


# --------------------------------------------------------------------------
# Tools and peers


@dataclass
class Tools:
    nginx: str
    haproxy: str
    envoy: str
    wrk: str
    wasmgate: Path
    filters_dir: Path
    proxy_wasm: Path


@dataclass
class Ctx:
    """What a peer needs to write its config and start."""
    tools: Tools
    procs: Procs
    workdir: Path
    upstream_port: int


def nginx_common(workdir: Path, name: str) -> str:
    tmp = workdir / f"{name}-tmp"
    tmp.mkdir(exist_ok=True)
    return f"""
worker_processes 1;
daemon off;
pid {workdir}/{name}.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
"""


def nginx_http_common(workdir: Path, name: str) -> str:
    tmp = workdir / f"{name}-tmp"
    return f"""
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
"""


def start_nginx(ctx: Ctx, name: str, conf_body: str, cpu: str) -> Proc:
    conf = ctx.workdir / f"{name}.conf"
    conf.write_text(conf_body)
    test = subprocess.run([ctx.tools.nginx, "-t", "-q", "-e", "stderr", "-c", str(conf),
                           "-p", str(ctx.workdir)], capture_output=True, text=True)
    if test.returncode != 0:
        raise BenchError(f"nginx config {conf} is invalid:\n{test.stderr}")
    return ctx.procs.start(name, [ctx.tools.nginx, "-e", "stderr", "-c", str(conf),
                                  "-p", str(ctx.workdir)], cpu, ctx.workdir)


def start_upstream(ctx: Ctx, port: int, cpu: str) -> Proc:
    body = nginx_common(ctx.workdir, "upstream") + f"""
http {{
{nginx_http_common(ctx.workdir, "upstream")}
    server {{
        listen {HOST}:{port};
        location / {{ return 200 "hello\\n"; }}
    }}
}}
"""
    return start_nginx(ctx, "upstream", body, cpu)


def peer_nginx(ctx: Ctx, name: str, port: int, cpu: str, opts: dict) -> Proc:
    body = nginx_common(ctx.workdir, name) + f"""
http {{
{nginx_http_common(ctx.workdir, name)}
    upstream up {{
        server {HOST}:{ctx.upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    return start_nginx(ctx, name, body, cpu)


def peer_haproxy(ctx: Ctx, name: str, port: int, cpu: str, opts: dict) -> Proc:
    conf = ctx.workdir / f"{name}.cfg"
    conf.write_text(f"""
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s

frontend bench
    bind {HOST}:{port}
    default_backend up

backend up
    server s1 {HOST}:{ctx.upstream_port}
""")
    test = subprocess.run([ctx.tools.haproxy, "-c", "-q", "-f", str(conf)],
                          capture_output=True, text=True)
    if test.returncode != 0:
        raise BenchError(f"haproxy config {conf} is invalid:\n{test.stdout}{test.stderr}")
    return ctx.procs.start(name, [ctx.tools.haproxy, "-db", "-f", str(conf)], cpu, ctx.workdir)


def peer_envoy(ctx: Ctx, name: str, port: int, cpu: str, opts: dict) -> Proc:
    http_filters = []
    if opts.get("wasm"):
        http_filters.append({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "bench",
                    "root_id": "",
                    "vm_config": {
                        "vm_id": "bench",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": str(ctx.tools.proxy_wasm)}},
                    },
                },
            },
        })
    http_filters.append({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
    config = {
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": HOST, "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "codec_type": "HTTP1",
                        "route_config": {
                            "name": "local",
                            "virtual_hosts": [{
                                "name": "all", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"},
                                            "route": {"cluster": "upstream"}}],
                            }],
                        },
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": [{
                "name": "upstream",
                "type": "STATIC",
                "connect_timeout": "5s",
                "load_assignment": {
                    "cluster_name": "upstream",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": HOST, "port_value": ctx.upstream_port},
                    }}}]}],
                },
            }],
        },
    }
    conf = ctx.workdir / f"{name}.json"
    conf.write_text(json.dumps(config, indent=2))
    return ctx.procs.start(name, [ctx.tools.envoy, "-c", str(conf), "--concurrency", "1",
                                  "--disable-hot-restart", "-l", "warn"], cpu, ctx.workdir)


def wasmgate_toml(ctx: Ctx, port: int, chain: list[tuple[str, str]],
                  filter_keys: dict[str, str] | None = None) -> str:
    """`chain` is [(filter name, inline TOML table of its config)];
    `filter_keys` are extra `[filters.NAME]` keys (TOML values) for every filter."""
    lines = ["[server]", f'listen = "{HOST}:{port}"', "workers = 1", "",
             "[access_log]", "enabled = false", ""]
    for fname in sorted({f for f, _ in chain}):
        wasm = ctx.tools.filters_dir / f"{fname.replace('-', '_')}.wasm"
        lines += [f"[filters.{fname}]", f'path = "{wasm}"']
        lines += [f"{k} = {v}" for k, v in (filter_keys or {}).items()] + [""]
    lines += ["[clusters.upstream]", f'endpoints = ["{HOST}:{ctx.upstream_port}"]', ""]
    lines += ["[[routes]]", 'name = "all"', 'path_prefix = "/"', 'cluster = "upstream"', ""]
    for fname, config in chain:
        lines += ["  [[routes.filters]]", f'  name = "{fname}"', f"  config = {config}", ""]
    return "\n".join(lines)


def peer_wasmgate(ctx: Ctx, name: str, port: int, cpu: str, opts: dict) -> Proc:
    conf = ctx.workdir / f"{name}.toml"
    conf.write_text(wasmgate_toml(ctx, port, opts.get("chain", []), opts.get("filter_keys")))
    check = subprocess.run([str(ctx.tools.wasmgate), "check", "--config", str(conf)],
                           capture_output=True, text=True, env={**os.environ, "WASMGATE_LOG": "warn"})
    if check.returncode != 0:
        raise BenchError(f"wasmgate check rejected {conf}:\n{check.stdout}{check.stderr}")
    # One worker thread (`workers = 1`; TOKIO_WORKER_THREADS too, for builds
    # that predate the key), and taskset keeps every thread (worker, blocking
    # pool, epoch ticker, log writer) on `cpu`.
    env = {"WASMGATE_LOG": "warn", "TOKIO_WORKER_THREADS": "1"}
    return ctx.procs.start(name, [str(ctx.tools.wasmgate), "serve", "--config", str(conf)],
                           cpu, ctx.workdir, env)


# --------------------------------------------------------------------------
# Scenarios. To add one, append a Scenario; to add a peer, write a
# peer_<name>(ctx, name, port, cpu, opts) -> Proc and register it in PEERS.

PEERS: dict[str, Callable[[Ctx, str, int, str, dict], Proc]] = {
    "nginx": peer_nginx,
    "haproxy": peer_haproxy,
    "envoy": peer_envoy,
    "wasmgate": peer_wasmgate,
}

API_KEY_CFG = '{ keys = ["bench-key"] }'
SERVED_BY_CFG = '{ response.set = { "x-served-by" = "wasmgate-bench" } }'
CHAIN_MARK_CFG = '{ response.set = { "x-bench-chain" = "first" } }'


@dataclass
class Scenario:
    name: str                      # short id, used on the command line
    label: str                     # shown in the table
    peer: str | None               # key of PEERS; None = straight to the upstream
    opts: dict = field(default_factory=dict)
    auth: bool = False             # a request without the key must get 401
    expect_headers: dict[str, str] = field(default_factory=dict)
    ref: str | None = None         # the wasmgate scenario its cost is compared with
    load: str = "wrk"              # key of LOADS
    scheme: str = "http"           # "https" later
    path: str = "/"


SCENARIOS: list[Scenario] = [
    Scenario("direct", "direct (no proxy)", None),
    Scenario("nginx", "nginx", "nginx", ref="wasmgate"),
    Scenario("haproxy", "HAProxy", "haproxy", ref="wasmgate"),
    Scenario("envoy", "Envoy", "envoy", ref="wasmgate"),
    Scenario("wasmgate", "wasmgate", "wasmgate", ref="wasmgate"),
    Scenario("envoy-wasm", "Envoy + proxy-wasm (api-key + header, V8)", "envoy",
             {"wasm": True}, auth=True, expect_headers=dict([SERVED_BY]), ref="wasmgate-2f"),
    Scenario("wasmgate-2f", "wasmgate + api-key + headers", "wasmgate",
             {"chain": [("api-key", API_KEY_CFG), ("headers", SERVED_BY_CFG)]},
             auth=True, expect_headers=dict([SERVED_BY]), ref="wasmgate-2f"),
    Scenario("wasmgate-2f-fresh", "wasmgate + api-key + headers, fresh instance per call",
             "wasmgate",
             {"chain": [("api-key", API_KEY_CFG), ("headers", SERVED_BY_CFG)],
              "filter_keys": {"isolation": '"fresh"'}},
             auth=True, expect_headers=dict([SERVED_BY]), ref="wasmgate-2f"),
    Scenario("wasmgate-3f", "wasmgate + headers + api-key + headers", "wasmgate",
             {"chain": [("headers", CHAIN_MARK_CFG), ("api-key", API_KEY_CFG),
                        ("headers", SERVED_BY_CFG)]},
             auth=True, expect_headers=dict([SERVED_BY, CHAIN_MARK]), ref="wasmgate-2f"),
]


# --------------------------------------------------------------------------
# Load generators. A load generator runs against a URL for a duration on a
# CPU and returns a Sample; add h2load etc. here.


@dataclass
class Sample:
    rps: float
    p50_us: float
    p99_us: float
    requests: int
    load_cpu: float        # CPU used by the load generator, fraction of one CPU
    proxy_cpu: float | None = None
    upstream_cpu: float | None = None
    raw: str = ""


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _dur_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise BenchError(f"cannot parse wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(tools: Tools, url: str, seconds: float, connections: int, cpu: str,
            workdir: Path, tag: str) -> Sample:
    out_file = workdir / f"wrk-{tag}.txt"
    argv = ["taskset", "-c", cpu, tools.wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s",
            "--latency", "--timeout", "5s", "-H", f"{API_KEY_HEADER}: {API_KEY}", url]
    with open(out_file, "wb") as out:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=_die_with_parent)
        try:
            _, status, usage = os.wait4(popen.pid, 0)
        except BaseException:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            raise
        popen.returncode = os.waitstatus_to_exitcode(status)
    text = out_file.read_text(errors="replace")
    if popen.returncode != 0:
        raise BenchError(f"wrk failed ({popen.returncode}) on {url}:\n{text}")
    if "Non-2xx or 3xx responses" in text:
        raise BenchError(f"{url} answered non-2xx/3xx responses under load:\n{text}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock and any(int(x) for x in sock.groups()):
        raise BenchError(f"socket errors under load on {url}:\n{text}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    reqs = re.search(r"(\d+) requests in ([\d.]+\w+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not (rps and reqs and p50 and p99):
        raise BenchError(f"cannot parse wrk output for {url}:\n{text}")
    if int(reqs.group(1)) == 0:
        raise BenchError(f"wrk completed no request on {url}:\n{text}")
    wall = _dur_us(reqs.group(2)) / 1e6
    cpu_used = (usage.ru_utime + usage.ru_stime) / wall if wall > 0 else 0.0
    return Sample(float(rps.group(1)), _dur_us(p50.group(1)), _dur_us(p99.group(1)),
                  int(reqs.group(1)), cpu_used, raw=text)


LOADS = {"wrk": run_wrk}


# --------------------------------------------------------------------------
# Checks: one real request before any load.


def check_scenario(sc: Scenario, port: int) -> None:
    def get(with_key: bool) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            headers = {API_KEY_HEADER: API_KEY} if with_key else {}
            conn.request("GET", sc.path, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    status, headers, body = get(True)
    if status != 200:
        raise BenchError(f"{sc.name}: GET {sc.path} with the key answered {status}, "
                         f"not 200: {body[:300]!r}")
    if body != UPSTREAM_BODY:
        raise BenchError(f"{sc.name}: body is {body[:300]!r}, not the upstream's {UPSTREAM_BODY!r}")
    for name, value in sc.expect_headers.items():
        if headers.get(name) != value:
            raise BenchError(f"{sc.name}: response header {name} is {headers.get(name)!r}, "
                             f"expected {value!r} (headers: {headers})")
    if sc.auth:
        status, _, body = get(False)
        if status != 401:
            raise BenchError(f"{sc.name}: GET without the key answered {status}, "
                             f"not 401: {body[:300]!r}")


# --------------------------------------------------------------------------
# Runs


@dataclass
class ModeResult:
    mode: str
    pinning: str
    samples: dict[str, list[Sample]]
    scenarios: list[Scenario]
    connections: int


def run_mode(mode: str, args, tools: Tools, procs: Procs, workdir: Path,
             upstream: Proc, upstream_port: int, scenarios: list[Scenario]) -> ModeResult:
    proxy_cpu = args.cpu_s if mode == "S" else args.cpu_proxy
    connections = args.connections if mode == "S" else args.connections_p
    load_cpu = args.cpu_s if mode == "S" else args.cpu_load
    if mode == "S":
        pinning = (f"mode S: wrk, proxy and upstream all pinned to CPU {args.cpu_s} "
                   f"(`taskset -c {args.cpu_s}`)")
    else:
        pinning = (f"mode P: proxy pinned to CPU {args.cpu_proxy}; wrk and upstream pinned "
                   f"to CPU {args.cpu_load}")
    print(f"\n=== {pinning}")

    ctx = Ctx(tools, procs, workdir, upstream_port)
    ports = free_ports(len(scenarios))
    started: dict[str, tuple[Proc | None, int]] = {}
    try:
        for sc, port in zip(scenarios, ports):
            if sc.peer is None:
                started[sc.name] = (None, upstream_port)
                continue
            proc = PEERS[sc.peer](ctx, f"{sc.name}-{mode}", port, proxy_cpu, sc.opts)
            started[sc.name] = (proc, port)
        for sc in scenarios:
            proc, port = started[sc.name]
            if proc is not None:
                wait_listening(proc, port)
            check_scenario(sc, port)
            print(f"  {sc.name:<18} ok: 200 on {HOST}:{port}"
                  + (f" with {', '.join(f'{k}: {v}' for k, v in sc.expect_headers.items())}"
                     if sc.expect_headers else "")
                  + ("; 401 without the key" if sc.auth else ""))

        def measure(sc: Scenario, seconds: float, tag: str) -> Sample:
            proc, port = started[sc.name]
            others = [p for n, (p, _) in started.items() if p is not None and n != sc.name]
            for p in others:
                procs.freeze(p)
            if proc is not None:
                procs.thaw(proc)
            try:
                if proc is not None and not proc.alive():
                    raise BenchError(f"{proc.name} died:\n{proc.log_tail()}")
                log_before = proc.log.stat().st_size if proc is not None else 0
                before = group_cpu_ticks(proc.pgid) if proc is not None else 0
                up_before = group_cpu_ticks(upstream.pgid)
                t0 = time.monotonic()
                sample = LOADS[sc.load](tools, f"{sc.scheme}://{HOST}:{port}{sc.path}",
                                        seconds, connections, load_cpu, workdir, tag)
                elapsed = time.monotonic() - t0
                if proc is not None:
                    sample.proxy_cpu = (group_cpu_ticks(proc.pgid) - before) / CLK_TCK / elapsed
                sample.upstream_cpu = (group_cpu_ticks(upstream.pgid) - up_before) / CLK_TCK / elapsed
                if proc is not None and proc.log.stat().st_size - log_before > 64 * 1024:
                    raise BenchError(f"{proc.name} wrote {proc.log.stat().st_size - log_before} "
                                     f"bytes of log during one run: its logs must be off\n"
                                     f"{proc.log_tail(3)}")
                return sample
            finally:
                for p in others:
                    procs.thaw(p)

        if args.warmup > 0:
            print(f"  warm-up: {args.warmup:g}s each")
            for sc in scenarios:
                measure(sc, args.warmup, f"{mode}-warmup-{sc.name}")

        samples: dict[str, list[Sample]] = {sc.name: [] for sc in scenarios}
        for r in range(1, args.rounds + 1):
            line = []
            for sc in scenarios:
                s = measure(sc, args.duration, f"{mode}-r{r}-{sc.name}")
                samples[sc.name].append(s)
                line.append(f"{sc.name} {s.rps:,.0f}")
            print(f"  round {r}/{args.rounds}: " + " | ".join(line))
        return ModeResult(mode, pinning, samples, scenarios, connections)
    finally:
        for proc, _ in started.values():
            if proc is not None:
                procs.stop(proc)


# --------------------------------------------------------------------------
# Report


def med_range(values: list[float], fmt: str) -> str:
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def fmt_lat(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def costs(result: ModeResult, name: str) -> list[float]:
    direct = result.samples["direct"]
    return [1e6 / p.rps - 1e6 / d.rps for p, d in zip(result.samples[name], direct)]


def table(result: ModeResult) -> str:
    by_name = {sc.name: sc for sc in result.scenarios}
    rows = []
    if result.mode == "S":
        rows.append("| scenario | requests/s median (min–max) | p50 | p99 | proxy CPU | "
                    "cost/request µs median (min–max) | cost ÷ wasmgate's |")
        rows.append("|---|---:|---:|---:|---:|---:|---|")
    else:
        rows.append("| scenario | requests/s median (min–max) | p50 | p99 | proxy CPU | "
                    "wrk + upstream CPU | requests/s ÷ wasmgate's |")
        rows.append("|---|---:|---:|---:|---:|---:|---|")
    for sc in result.scenarios:
        ss = result.samples[sc.name]
        rps = med_range([s.rps for s in ss], ",.0f")
        p50 = fmt_lat(statistics.median(s.p50_us for s in ss))
        p99 = fmt_lat(statistics.median(s.p99_us for s in ss))
        pcpu = ("—" if sc.peer is None else
                f"{statistics.median(s.proxy_cpu or 0 for s in ss) * 100:.0f} %")
        ref = by_name.get(sc.ref) if sc.ref else None
        if result.mode == "S":
            if sc.peer is None or "direct" not in result.samples:
                cost, ratio = "—", "—"
            else:
                c = costs(result, sc.name)
                cost = med_range(c, ".1f")
                if ref is None:
                    ratio = "—"
                elif ref.name == sc.name:
                    ratio = "1 (reference)"
                else:
                    rc = statistics.median(costs(result, ref.name))
                    ratio = f"{statistics.median(c) / rc:.2f} × {ref.name}" if rc > 0 else "—"
            rows.append(f"| {sc.label} | {rps} | {p50} | {p99} | {pcpu} | {cost} | {ratio} |")
        else:
            lcpu = statistics.median(s.load_cpu + (s.upstream_cpu or 0) for s in ss) * 100
            proxy_busy = sc.peer is None or statistics.median(s.proxy_cpu or 0 for s in ss) >= 0.9
            lcpu_s = f"{lcpu:.0f} %"
            if not proxy_busy:
                lcpu_s += " (load-bound: at least)" if lcpu >= 90 else " (neither CPU saturated)"
            if ref is None:
                ratio = "—"
            elif ref.name == sc.name:
                ratio = "1 (reference)"
            else:
                mine = statistics.median(s.rps for s in ss)
                theirs = statistics.median(s.rps for s in result.samples[ref.name])
                ratio = f"{mine / theirs:.2f} × {ref.name}"
            rows.append(f"| {sc.label} | {rps} | {p50} | {p99} | {pcpu} | {lcpu_s} | {ratio} |")
    return "\n".join(rows)


def cmd_output(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (p.stdout + p.stderr).strip()
    return text.splitlines()[0].strip() if text else "unavailable"


def versions(tools: Tools) -> dict[str, str]:
    commit = cmd_output(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    pw = "unknown"
    lock = BENCH_DIR / "proxy-wasm-filter" / "Cargo.lock"
    if lock.exists():
        m = re.search(r'name = "proxy-wasm"\nversion = "([^"]+)"', lock.read_text())
        pw = m.group(1) if m else pw
    wrk = cmd_output([tools.wrk, "-v"])
    return {
        "wasmgate": f"commit {commit}" + (" (with uncommitted changes)" if dirty else ""),
        "rustc": cmd_output(["rustc", "-V"]),
        "nginx": cmd_output([tools.nginx, "-v"]).removeprefix("nginx version: "),
        "HAProxy": cmd_output([tools.haproxy, "-v"]),
        "Envoy": cmd_output([tools.envoy, "--version"]).split("version:")[-1].strip(),
        "proxy-wasm (Rust SDK)": pw,
        "wrk": " ".join(wrk.split()[:3]),
        "upstream": "nginx `return 200 \"hello\\n\"`, 1 worker, access log off",
    }


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, " \
           f"kernel {os.uname().release}"


def section(result: ModeResult, args, vers: dict[str, str], when: str) -> str:
    title = {"S": "Mode S: CPU cost per request (everything on one CPU)",
             "P": "Mode P: throughput with the proxy owning a CPU"}[result.mode]
    quick = ("\n> **Quick run** (short rounds, smoke test of the harness): "
             "not a result to quote.\n" if args.quick else "")
    method = {
        "S": "cost/request = 1/T_proxy − 1/T_direct, computed per round against that round's "
             "direct run; \"cost ÷ wasmgate's\" divides medians by the named wasmgate scenario "
             "(plain peers by plain wasmgate, filter peers by wasmgate + api-key + headers).",
        "P": "proxy CPU = CPU time of the proxy's processes over the run (100 % = one CPU). "
             "wrk and the upstream share the other CPU: where they use 90 % of it or more "
             "while the proxy stays below 90 %, the load side limits the figure (marked "
             "\"load-bound: at least\"); where neither CPU is saturated, something else "
             "held the figure down (wake-up latency between the CPUs, or other work on the "
             "machine) and the row is not a throughput limit.",
    }[result.mode]
    vlines = "\n".join(f"- {k}: {v}" for k, v in vers.items())
    return f"""### {title}
{quick}
- Date: {when}
- Machine: {machine()}
- Pinning: {result.pinning}
- Load: wrk, 1 thread, {result.connections} connections, keep-alive, header
  `{API_KEY_HEADER}: {API_KEY}` on every request (every peer gets the same requests);
  {args.rounds} rounds × {args.duration:g} s per scenario, interleaved round-robin,
  after a {args.warmup:g} s warm-up each; peers not being measured are frozen (SIGSTOP).
- Every peer: one worker/thread, logs off, HTTP/1.1 keep-alive to the upstream.
  wasmgate: `workers = 1`, `[access_log] enabled = false`, `WASMGATE_LOG=warn`.
- Command: `{args.command}`

{method} Latencies are medians over rounds of wrk's per-round p50/p99.

{table(result)}

Versions:
{vlines}
"""


def write_markdown(path: Path, mode: str, text: str) -> None:
    begin, end = MARK_BEGIN.format(mode=mode), MARK_END.format(mode=mode)
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if path.exists():
        current = path.read_text()
    else:
        current = ("# Benchmarks\n\n"
                   "Side-by-side measurements of wasmgate against nginx, HAProxy and Envoy, "
                   "made with `bench/run.sh` (see [bench/README.md](bench/README.md) and "
                   "the method it follows). The sections between the `bench:` markers are "
                   "rewritten by every run of that mode; text outside them is kept.\n")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(current):
        current = pattern.sub(lambda _: block, current)
    else:
        # Sections in the order S, P, T whatever order the runs happened in:
        # after the nearest earlier mode's section, else before the nearest
        # later one's, else at the end.
        i = MODE_ORDER.index(mode)
        earlier = [MARK_END.format(mode=m) for m in reversed(MODE_ORDER[:i])
                   if MARK_END.format(mode=m) in current]
        later = [MARK_BEGIN.format(mode=m) for m in MODE_ORDER[i + 1:]
                 if MARK_BEGIN.format(mode=m) in current]
        if earlier:
            current = current.replace(earlier[0], earlier[0] + "\n\n" + block, 1)
        elif later:
            current = current.replace(later[0], block + "\n\n" + later[0], 1)
        else:
            current = current.rstrip() + "\n\n" + block + "\n"
    path.write_text(current)


# --------------------------------------------------------------------------


def find_tool(name: str, given: str | None) -> str:
    path = given or shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if not path:
        raise BenchError(f"{name} not found (bench/run.sh installs it)")
    return path


def parse_args(argv: list[str]):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["S", "P", "both"], default="both")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 2 s rounds, 2 rounds, 1 s warm-up; does not write "
                         "BENCHMARKS.md unless --write is given")
    ap.add_argument("--rounds", type=int, help="rounds per mode (default 5; quick 2)")
    ap.add_argument("--duration", type=float, help="seconds per round and scenario (default 10; quick 2)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per scenario (default 3; quick 1)")
    ap.add_argument("--connections", type=int, default=10,
                    help="wrk connections in mode S (default 10)")
    ap.add_argument("--connections-p", type=int, default=50,
                    help="wrk connections in mode P, enough to keep the proxy's CPU busy "
                         "across the two CPUs' wake-up latency (default 50)")
    ap.add_argument("--scenarios", help="comma-separated subset (direct is always included); "
                                        "--list shows them")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--cpu-s", default="0", help="the CPU of mode S (default 0)")
    ap.add_argument("--cpu-proxy", default="1", help="the proxy's CPU in mode P (default 1)")
    ap.add_argument("--cpu-load", default="0", help="wrk's and the upstream's CPU in mode P (default 0)")
    ap.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    w = ap.add_mutually_exclusive_group()
    w.add_argument("--write", dest="write", action="store_true", default=None)
    w.add_argument("--no-write", dest="write", action="store_false")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (configs, logs, raw wrk output)")
    ap.add_argument("--envoy", help="the envoy binary")
    ap.add_argument("--wasmgate", type=Path, default=REPO / "target" / "release" / "wasmgate")
    ap.add_argument("--filters-dir", type=Path,
                    default=REPO / "target" / "filters" / "wasm32-wasip2" / "release")
    ap.add_argument("--proxy-wasm", type=Path,
                    default=BENCH_DIR / "proxy-wasm-filter" / "target" / "wasm32-wasip1" / "release"
                    / "bench_proxy_wasm_filter.wasm")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    if args.write is None:
        args.write = not args.quick
    args.command = args.command or "python3 bench/bench.py " + shlex.join(argv)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.list:
        for sc in SCENARIOS:
            print(f"{sc.name:<18} {sc.label}")
        return 0

    scenarios = SCENARIOS
    if args.scenarios:
        wanted = {s.strip() for s in args.scenarios.split(",") if s.strip()} | {"direct"}
        unknown = wanted - {sc.name for sc in SCENARIOS}
        if unknown:
            raise BenchError(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        # A scenario whose wasmgate reference is not selected shows no ratio.
        scenarios = [sc for sc in SCENARIOS if sc.name in wanted]

    needs = {sc.peer for sc in scenarios}
    tools = Tools(
        nginx=find_tool("nginx", None),
        haproxy=find_tool("haproxy", None) if "haproxy" in needs else "haproxy",
        envoy=(find_tool("envoy", args.envoy) if "envoy" in needs
               else args.envoy or shutil.which("envoy") or "envoy"),
        wrk=find_tool("wrk", None),
        wasmgate=args.wasmgate,
        filters_dir=args.filters_dir,
        proxy_wasm=args.proxy_wasm,
    )
    for path in [tools.wasmgate, tools.filters_dir / "api_key.wasm", tools.filters_dir / "headers.wasm"]:
        if "wasmgate" in needs and not path.exists():
            raise BenchError(f"{path} is missing: build with `cargo build --release -p wasmgate "
                             f"--workspace` (bench/run.sh does)")
    if any(sc.opts.get("wasm") for sc in scenarios) and not tools.proxy_wasm.exists():
        raise BenchError(f"{tools.proxy_wasm} is missing (bench/run.sh builds it)")
    for cpu in {args.cpu_s, args.cpu_proxy, args.cpu_load}:
        if int(cpu) not in os.sched_getaffinity(0):
            raise BenchError(f"CPU {cpu} is not available here (have {sorted(os.sched_getaffinity(0))})")

    modes = ["S", "P"] if args.mode == "both" else [args.mode]
    est = len(modes) * len(scenarios) * (args.rounds * args.duration + args.warmup)
    print(f"scenarios: {', '.join(sc.name for sc in scenarios)}")
    print(f"modes: {', '.join(modes)}; {args.rounds} rounds × {args.duration:g} s; "
          f"about {est / 60:.1f} min of load")

    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="wasmgate-bench-"))
    os.chmod(workdir, 0o755)  # nginx workers run as an unprivileged user
    ok = False
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        # One upstream for every peer and both modes: in mode S it shares the CPU
        # of everything else, in mode P the CPU of wrk (both CPU 0 by default).
        if "P" in modes and "S" in modes and args.cpu_s != args.cpu_load:
            raise BenchError("--mode both needs --cpu-s equal to --cpu-load (one shared upstream)")
        upstream_cpu = args.cpu_load if "P" in modes else args.cpu_s
        upstream_port = free_ports(1)[0]
        upstream = start_upstream(Ctx(tools, procs, workdir, upstream_port), upstream_port,
                                  upstream_cpu)
        wait_listening(upstream, upstream_port)

        results = [run_mode(m, args, tools, procs, workdir, upstream, upstream_port, scenarios)
                   for m in modes]
        vers = versions(tools)
        for res in results:
            text = section(res, args, vers, when)
            print("\n" + text)
            if args.write:
                write_markdown(args.output, res.mode, text)
        if args.write:
            print(f"written to {args.output}")
        else:
            print(f"(not written to {args.output}; pass --write)")
        (workdir / "results.json").write_text(json.dumps({
            res.mode: {name: [vars(s) | {"raw": None} for s in ss] for name, ss in res.samples.items()}
            for res in results}, indent=1))
        ok = True
        return 0
    finally:
        procs.stop_all()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work folder kept: {workdir}", file=sys.stderr)


def _on_signal(signum, _frame):
    print(f"\nbench: {signal.Signals(signum).name}: stopping every process it started",
          file=sys.stderr)
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    # Explicitly, since a shell may start us with SIGINT ignored (`cmd &`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        print(f"\nbench: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\nbench: interrupted; every process it started has been stopped", file=sys.stderr)
        sys.exit(130)
