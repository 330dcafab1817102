#!/usr/bin/env python3
"""One filter behaviour in four languages, side by side (issue 20; mode L).

The examples under examples/filters/{c,rust,python,js} do one thing (an API
key check: 401 in the gateway's error format without one of the configured
keys, `x-filter-lang: <lang>` on every response). For each, one run measures:

  build        from a clean state, wall-clock and CPU time: C `build.sh`;
               Rust `cargo build --release --locked --target wasm32-wasip2`
               into an empty target dir; Python `build.sh` with a new venv
               (componentize-py installed into it); JavaScript `build.sh`
               with `npm ci` into an empty node_modules. Rounds interleaved,
               after one untimed build of each that fills the download
               caches (pip's, npm's, cargo's registry) and the page cache.
  component    its size, and its linear memory at start (`filter inspect`).
  loading      `wasmgate filter inspect FILE --json --timings --config JSON`:
               first load with an empty compile cache, cached load by a new
               engine, new instance + init (median of the binary's own
               repetitions); rounds interleaved.
  per request  mode S's method (bench.py): wrk, gateway and upstream pinned
               to one CPU, cost = 1/T_route - 1/T_direct per round, rounds
               interleaved, gateways not measured frozen; each language with
               pooled and with fresh instances, against the same gateway
               with no filter on the route, in the same rounds.

Before any load every filter route must answer 200 with its `x-filter-lang`
and 401 without the key, and 50 requests in a row must show the instances
the isolation promises (pooled: reused; fresh: a new one per call), counted
from the gateway's /metrics; under load, a pooled route that creates more
than one instance per 20 requests stops the run.

Only 127.0.0.1 is contacted (the builds reach the package registries).
Standard library only; helpers come from bench.py. Writes its section of
BENCHMARKS.md (between `bench:languages` markers) unless --quick.
Normally started by `bench/run.sh --mode L`; see bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402  (the shared helpers)

HOST = B.HOST
REPO = B.REPO
EXAMPLES = REPO / "examples" / "filters"
SECTION = "languages"          # <!-- bench:languages:begin --> ... end -->
RUST_TARGET = "wasm32-wasip2"
KEY_CFG_TOML = f'{{ keys = ["{B.API_KEY}"] }}'       # the route's config
KEY_CFG_JSON = json.dumps({"keys": [B.API_KEY]})      # the same, for `filter inspect`
LANG_HEADER = "x-filter-lang"
REUSE_REQUESTS = 50            # requests in a row of the pre-load isolation check
POOLED_MAX_CREATED = 3         # instances those may create on a pooled route
POOLED_MAX_SHARE = 0.05        # under load: instances created per request, pooled, at most
# The outer environment's build settings are for the host, not the guests
# (as tests/e2e/languages.rs does); VENV would make build.sh reuse a venv.
SCRUB_ENV = ("CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET",
             "RUSTC_WORKSPACE_WRAPPER", "RUSTC_WRAPPER", "VENV", "VIRTUAL_ENV")


@dataclass
class Lang:
    key: str         # directory under examples/filters/, and the x-filter-lang value
    label: str
    filter: str      # [filters.NAME] in the gateway config

    @property
    def tag(self) -> str:  # what the example puts in x-filter-lang
        return self.key


LANGS = [
    Lang("c", "C", "api-key-c"),
    Lang("rust", "Rust", "api-key-rust"),
    Lang("python", "Python", "api-key-python"),
    Lang("js", "JavaScript", "api-key-js"),
]
LANG_BY_KEY = {lang.key: lang for lang in LANGS}
FIRST_PARTY = "api-key"        # the first-party filter, for scale, when it is built


# --------------------------------------------------------------------------
# Builds


@dataclass
class Build:
    wall_s: float
    cpu_s: float       # user + system of the build and every process it waited for
    size: int
    sha256: str
    component: Path    # a copy, kept in the work folder


@dataclass
class BuildPlan:
    argv: list[str]
    cwd: Path
    component: Path            # where the build writes it
    env: dict[str, str] = field(default_factory=dict)


def plan_build(lang: Lang, tree: Path, wasmgate: Path) -> BuildPlan:
    """The build of `lang` in `tree` (a new, empty folder). C, Python and
    JavaScript build a copy of the example (build.sh writes into its own
    folder: `npm ci` makes node_modules there), so the repository's tree is
    never written to; Rust builds the example in place (the SDK is a path
    dependency) into a target dir under `tree`."""
    env = {"WASMGATE": str(wasmgate)}
    if lang.key == "rust":
        target = tree / "target"
        return BuildPlan(["cargo", "build", "--release", "--locked", "--target", RUST_TARGET,
                          "--manifest-path", str(EXAMPLES / "rust" / "Cargo.toml"),
                          "--target-dir", str(target)],
                         REPO, target / RUST_TARGET / "release" / "api_key_rust.wasm", env)
    src = tree / "src"
    shutil.copytree(EXAMPLES / lang.key, src,
                    ignore=shutil.ignore_patterns("node_modules", "out", "__pycache__"))
    out = tree / "out"
    # build.sh [OUT_DIR]; Python's venv defaults to OUT_DIR/venv: a new one.
    return BuildPlan([str(src / "build.sh"), str(out)], src, out / "filter.wasm", env)


def run_timed(argv: list[str], cwd: Path, env: dict[str, str], log: Path,
              nice: int) -> tuple[int, float, float]:
    """Runs a build (unpinned, at `nice`), its output to `log`; returns its
    exit code, wall-clock seconds and CPU seconds (its own and its children's,
    from wait4)."""
    full_env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
    full_env.update(env)
    prefix = ["nice", "-n", str(nice)] if nice else []
    with open(log, "wb") as out:
        t0 = time.monotonic()
        popen = subprocess.Popen(prefix + argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=B._die_with_parent)
        try:
            _, status, usage = os.wait4(popen.pid, 0)
        except BaseException:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            raise
        wall = time.monotonic() - t0
    # Whatever the build left behind in its group (a daemon, a stray child).
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    popen.returncode = os.waitstatus_to_exitcode(status)
    return popen.returncode, wall, usage.ru_utime + usage.ru_stime


def toolchain_versions(lang: Lang, tree: Path) -> str:
    """The toolchain a build of `lang` in `tree` used (read before the tree
    is removed)."""
    if lang.key == "c":
        return B.cmd_output([os.environ.get("CC", "clang"), "--version"])
    if lang.key == "rust":
        return f"{B.cmd_output(['rustc', '-V'])}, wasmgate SDK (path), target {RUST_TARGET}"
    if lang.key == "python":
        tool = tree / "out" / "venv" / "bin" / "componentize-py"
        py = B.cmd_output([str(tree / "out" / "venv" / "bin" / "python"), "--version"])
        return f"{B.cmd_output([str(tool), '--version'])} ({py} for the tool)"
    pkg = tree / "src" / "node_modules" / "@bytecodealliance" / "componentize-js" / "package.json"
    try:
        version = json.loads(pkg.read_text())["version"]
    except (OSError, ValueError, KeyError):
        version = "unknown"
    return f"componentize-js {version} (node {B.cmd_output(['node', '--version'])})"


def build_once(lang: Lang, workdir: Path, tag: str, wasmgate: Path, nice: int,
               keep_as: Path | None) -> tuple[Build, str]:
    """One build of `lang` from a clean state; its tree is removed after.
    Returns the build (its component copied to `keep_as`) and the toolchain."""
    tree = workdir / "builds" / f"{lang.key}-{tag}"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    plan = plan_build(lang, tree, wasmgate)
    log = workdir / "builds" / f"{lang.key}-{tag}.log"
    code, wall, cpu = run_timed(plan.argv, plan.cwd, plan.env, log, nice)
    if code != 0 or not plan.component.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise B.BenchError(f"build of the {lang.label} example failed (exit {code}; "
                           f"{shlex.join(plan.argv)}):\n{tail}")
    data = plan.component.read_bytes()
    kept = keep_as or (workdir / "builds" / f"{lang.key}-{tag}.wasm")
    kept.write_bytes(data)
    tools = toolchain_versions(lang, tree)
    shutil.rmtree(tree, ignore_errors=True)
    return Build(wall, cpu, len(data), hashlib.sha256(data).hexdigest(), kept), tools


def run_builds(langs: list[Lang], args, workdir: Path) -> tuple[dict[str, list[Build]], dict[str, str], Path]:
    """Primes (unless --no-prime), then `args.build_rounds` interleaved timed
    builds of each language. The last round's components are the ones
    measured, copied to `components/` under the names the gateway configs
    use."""
    components = workdir / "components"
    components.mkdir(parents=True, exist_ok=True)
    if any(lang.key == "rust" for lang in langs):
        # The registry's sources, so that no timed build downloads a crate.
        fetch = subprocess.run(["cargo", "fetch", "--locked", "--manifest-path",
                                str(EXAMPLES / "rust" / "Cargo.toml")],
                               capture_output=True, text=True)
        if fetch.returncode != 0:
            raise B.BenchError(f"cargo fetch for the Rust example failed:\n{fetch.stderr}")
    if args.prime:
        print(f"  priming (untimed): one build of each, filling the download caches")
        for lang in langs:
            b, _ = build_once(lang, workdir, "prime", args.wasmgate, args.build_nice, None)
            print(f"    {lang.key:<7} {b.wall_s:7.2f} s")
    builds: dict[str, list[Build]] = {lang.key: [] for lang in langs}
    tools: dict[str, str] = {}
    for r in range(1, args.build_rounds + 1):
        line = []
        for lang in langs:
            last = r == args.build_rounds
            keep = components / f"{lang.filter.replace('-', '_')}.wasm" if last else None
            b, tools[lang.key] = build_once(lang, workdir, f"r{r}", args.wasmgate,
                                            args.build_nice, keep)
            builds[lang.key].append(b)
            line.append(f"{lang.key} {b.wall_s:.2f} s ({b.size:,} B)")
        print(f"  build round {r}/{args.build_rounds}: " + " | ".join(line))
    return builds, tools, components


# --------------------------------------------------------------------------
# Loading: `wasmgate filter inspect --json [--timings]`


TIMING_KEYS = ("compile_ms", "cached_load_ms", "instantiate_ms")


def timings_supported(wasmgate: Path) -> bool:
    out = subprocess.run([str(wasmgate), "filter", "inspect", "--help"],
                         capture_output=True, text=True)
    return "--timings" in out.stdout + out.stderr


def inspect(wasmgate: Path, component: Path, workdir: Path, timings: bool,
            cpu: str | None) -> dict:
    """`wasmgate filter inspect COMPONENT --json [--timings] --config ...`;
    fails unless it loads and `init` accepts the config. Its plain inspection
    loads the component through the default compile cache folder, which
    follows XDG_CACHE_HOME: one folder in the work folder, kept across rounds
    (so only the first round compiles there, and nothing is written to the
    user's cache); `--timings` times its first load with a new empty cache
    folder of its own, removed after."""
    cache = workdir / "inspect-cache"
    cache.mkdir(parents=True, exist_ok=True)
    argv = [str(wasmgate), "filter", "inspect", str(component), "--json",
            *(["--timings"] if timings else []), "--config", KEY_CFG_JSON]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "XDG_CACHE_HOME": str(cache), "WASMGATE_LOG": "warn"})
    try:
        found = json.loads(done.stdout)
    except ValueError:
        raise B.BenchError(f"{shlex.join(argv)} printed no JSON (exit {done.returncode}):\n"
                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}") from None
    init = found.get("init")
    if not found.get("loads") or not isinstance(init, dict) or "error" in init:
        raise B.BenchError(f"{component} does not load or its init refuses {KEY_CFG_JSON}:\n"
                           f"{json.dumps(found, indent=1)[:3000]}{done.stderr[-1000:]}")
    if timings:
        t = found.get("timings")
        if not isinstance(t, dict) or any(not isinstance(t.get(k), (int, float))
                                           for k in TIMING_KEYS):
            raise B.BenchError(f"{shlex.join(argv)}: no `timings` with {', '.join(TIMING_KEYS)} "
                               f"in its JSON: {json.dumps(found.get('timings'))}")
    return found


def run_loads(langs: list[Lang], args, workdir: Path, components: Path,
              timings: bool) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """`args.load_rounds` interleaved rounds of `inspect --timings` (one plain
    `inspect` of each when the binary has no --timings). Returns the timings
    per language and the last inspection of each."""
    rounds = args.load_rounds if timings else 1
    results: dict[str, list[dict]] = {lang.key: [] for lang in langs}
    last: dict[str, dict] = {}
    for r in range(1, rounds + 1):
        line = []
        for lang in langs:
            found = inspect(args.wasmgate, component_path(components, lang), workdir,
                            timings, args.cpu_inspect)
            last[lang.key] = found
            if timings:
                results[lang.key].append(found["timings"])
                t = found["timings"]
                line.append(f"{lang.key} {fmt_ms(t['compile_ms'])} / {fmt_ms(t['cached_load_ms'])}"
                            f" / {fmt_ms(t['instantiate_ms'])}")
            else:
                line.append(f"{lang.key} loads, init ok")
        what = "first load / cached load / instance + init" if timings else "no --timings"
        print(f"  inspect round {r}/{rounds} ({what}): " + " | ".join(line))
    return results, last


def component_path(components: Path, lang: Lang) -> Path:
    return components / f"{lang.filter.replace('-', '_')}.wasm"


# --------------------------------------------------------------------------
# Per request: mode S's rounds (bench.run_mode) with a gateway that also
# serves /metrics, so instances created can be counted.


ADMIN_PORTS: dict[int, int] = {}           # gateway listen port -> its admin port
GATEWAY_CACHE: list[Path] = []             # the gateways' XDG_CACHE_HOME (one, shared)
PRECHECK: dict[str, float] = {}            # scenario -> instances the isolation check saw created
LAST_CREATED: dict[str, float] = {}        # scenario -> instances created, last scrape
INSTANCES: dict[str, list[tuple[str, int, float]]] = {}  # scenario -> (tag, requests, created)


def scrape_created(admin_port: int, filter_name: str) -> float:
    """`wasmgate_filter_instances_created_total` of one filter (every route
    and tenant), from the gateway's /metrics."""
    conn = http.client.HTTPConnection(HOST, admin_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        raise B.BenchError(f"GET /metrics on {HOST}:{admin_port} failed: {e}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise B.BenchError(f"GET /metrics on {HOST}:{admin_port} answered {resp.status}")
    total, seen = 0.0, False
    for m in re.finditer(r"^wasmgate_filter_instances_created(?:_total)?\{([^}]*)\}\s+(\S+)",
                         text, re.M):
        if re.search(rf'(?:^|,)filter="{re.escape(filter_name)}"', m.group(1)):
            total += float(m.group(2))
            seen = True
    if not seen:
        raise B.BenchError(f"/metrics on {HOST}:{admin_port} has no "
                           f"wasmgate_filter_instances_created_total for {filter_name}")
    return total


def scenario_of(name: str) -> str:
    return name.rsplit("-", 1)[0]   # run_mode names peers "<scenario>-<mode>"


def is_fresh(opts: dict) -> bool:
    return opts.get("filter_keys", {}).get("isolation") == '"fresh"'


def peer_wasmgate_lang(ctx: B.Ctx, name: str, port: int, cpu: str, opts: dict) -> B.Proc:
    """bench.py's wasmgate peer, plus an admin listener (for /metrics) and
    its own compile cache folder; waits until it listens (a first start
    compiles the interpreters' components: tens of seconds), so gateways
    start one after another and the second of a language loads from the
    cache. Then checks the isolation: REUSE_REQUESTS requests in a row must
    create at most POOLED_MAX_CREATED instances on a pooled route and at
    least one per request on a fresh one."""
    binary = ctx.tools.wasmgate
    admin_port = B.free_ports(1)[0]
    conf = ctx.workdir / f"{name}.toml"
    text = B.wasmgate_toml(ctx, port, opts.get("chain", []), opts.get("filter_keys"),
                           "plain", opts)
    conf.write_text(text + f'\n[admin]\nlisten = "{HOST}:{admin_port}"\n')
    env = {"WASMGATE_LOG": "warn", "TOKIO_WORKER_THREADS": "1",
           "XDG_CACHE_HOME": str(GATEWAY_CACHE[0])}
    check = subprocess.run([str(binary), "check", "--config", str(conf)],
                           capture_output=True, text=True, env={**os.environ, **env})
    if check.returncode != 0:
        raise B.BenchError(f"wasmgate check rejected {conf}:\n{check.stdout}{check.stderr}")
    proc = ctx.procs.start(name, [str(binary), "serve", "--config", str(conf)], cpu,
                           ctx.workdir, env)
    B.wait_listening(proc, port, timeout=900)
    B.wait_listening(proc, admin_port)
    ADMIN_PORTS[port] = admin_port
    chain = opts.get("chain", [])
    if chain:
        fname = chain[0][0]
        sc = scenario_of(name)
        before = scrape_created(admin_port, fname)
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            for i in range(REUSE_REQUESTS):
                conn.request("GET", "/", headers={B.API_KEY_HEADER: B.API_KEY})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise B.BenchError(f"{sc}: request {i + 1} of {REUSE_REQUESTS} in a row "
                                       f"answered {resp.status}")
        except (OSError, http.client.HTTPException) as e:
            raise B.BenchError(f"{sc}: requests in a row failed: {e}") from None
        finally:
            conn.close()
        created = scrape_created(admin_port, fname) - before
        LAST_CREATED[sc] = before + created
        fresh = is_fresh(opts)
        if fresh and created < REUSE_REQUESTS:
            raise B.BenchError(f"{sc}: {REUSE_REQUESTS} requests created {created:.0f} instances: "
                               f"`isolation = \"fresh\"` should make one per call")
        if not fresh and created > POOLED_MAX_CREATED:
            raise B.BenchError(f"{sc}: {REUSE_REQUESTS} requests in a row created {created:.0f} "
                               f"instances: pooled instances are not reused (raise "
                               f"--recycle-memory / --memory-limit)")
        PRECHECK[sc] = created
        print(f"  {sc:<22} isolation ok: {REUSE_REQUESTS} requests in a row created "
              f"{created:.0f} instance(s)")
    return proc


def run_wrk_counted(tools: B.Tools, url: str, seconds: float, lp: B.LoadParams, cpu: str,
                    workdir: Path, tag: str, sc: B.Scenario) -> B.Sample:
    """bench.run_wrk, then the instances the filter's route created during
    the run (from /metrics: one scrape after, while the gateway is thawed;
    its CPU counts in the gateway's, not in wrk's figures)."""
    sample = B.run_wrk(tools, url, seconds, lp, cpu, workdir, tag, sc)
    chain = sc.opts.get("chain", [])
    if chain:
        port = urlsplit(url).port
        assert port is not None
        now = scrape_created(ADMIN_PORTS[port], chain[0][0])
        created = now - LAST_CREATED.get(sc.name, 0.0)
        LAST_CREATED[sc.name] = now
        INSTANCES.setdefault(sc.name, []).append((tag, sample.requests, created))
        if not is_fresh(sc.opts) and created > max(POOLED_MAX_CREATED,
                                                   POOLED_MAX_SHARE * sample.requests):
            raise B.BenchError(f"{sc.name}: {sample.requests} requests created {created:.0f} "
                               f"instances under load: pooled instances are not reused")
    return sample


B.PEERS["wasmgate-lang"] = peer_wasmgate_lang
B.LOADS["wrk-counted"] = run_wrk_counted


def scenarios_for(langs: list[Lang], args, first_party: bool) -> list[B.Scenario]:
    mem = {"memory_limit": f'"{args.memory_limit}"', "recycle_memory": f'"{args.recycle_memory}"',
           "cpu_limit": f'"{args.cpu_limit}"'}
    out = [
        B.Scenario("direct", "direct (no proxy)", None, load="wrk-counted"),
        B.Scenario("wasmgate", "wasmgate, no filter", "wasmgate-lang", {"chain": []},
                   ref="wasmgate", load="wrk-counted"),
    ]
    if first_party:
        out.append(B.Scenario("wasmgate-api-key", "wasmgate + first-party api-key (Rust SDK)",
                              "wasmgate-lang",
                              {"chain": [(FIRST_PARTY, B.API_KEY_CFG)], "filter_keys": dict(mem)},
                              auth=True, ref="wasmgate", load="wrk-counted"))
    for lang in langs:
        for fresh in (False, True):
            keys = dict(mem, **({"isolation": '"fresh"'} if fresh else {}))
            out.append(B.Scenario(
                f"wasmgate-{lang.key}" + ("-fresh" if fresh else ""),
                f"wasmgate + {lang.label}" + (", fresh instance per call" if fresh else ", pooled"),
                "wasmgate-lang", {"chain": [(lang.filter, KEY_CFG_TOML)], "filter_keys": keys},
                auth=True, expect_headers={LANG_HEADER: lang.tag}, ref="wasmgate",
                load="wrk-counted"))
    return out


# --------------------------------------------------------------------------
# Report


def fmt_ms(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    if ms >= 1:
        return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
    return f"{ms * 1000:.0f} µs"


def med_range_ms(values: list[float]) -> str:
    """Milliseconds as median (min–max) in the median's unit (s, ms or µs)."""
    if not values:
        return "—"
    med = statistics.median(values)
    scale, unit = (1e-3, "s") if med >= 1000 else ((1.0, "ms") if med >= 1 else (1e3, "µs"))
    digits = 2 if unit == "s" or (unit == "ms" and med < 10) else 1 if unit == "ms" and med < 100 else 0
    return med_range([v * scale for v in values], lambda x: f"{x:.{digits}f}", unit)


def med_range_us(values: list[float]) -> str:
    """Microseconds as median (min–max), in ms from a median of 1 ms."""
    if values and statistics.median(values) >= 1000:
        return med_range([v / 1000 for v in values], lambda x: f"{x:.2f}", "ms")
    return med_range(values, lambda x: f"{x:.1f}", "µs")


def fmt_s(s: float) -> str:
    return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"


def fmt_bytes(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} KB"


def med_range(values: list[float], fmt, unit: str = "") -> str:
    """Median (min–max), each formatted by `fmt` (a function), then `unit`."""
    if not values:
        return "—"
    med = fmt(statistics.median(values))
    if len(values) > 1:
        med += f" ({fmt(min(values))}–{fmt(max(values))})"
    return med + (f" {unit}" if unit else "")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def over_plain(result: B.ModeResult, name: str) -> list[float]:
    """The route's cost beyond plain wasmgate's, round by round (µs)."""
    return [a - b for a, b in zip(B.costs(result, name), B.costs(result, "wasmgate"))]


def instances_per_1000(name: str) -> list[float]:
    return [created * 1000 / reqs for tag, reqs, created in INSTANCES.get(name, [])
            if "warmup" not in tag and reqs > 0]


def summary_table(langs: list[Lang], builds, loads, inspected, result: B.ModeResult | None,
                  timings: bool) -> str:
    rows = ["| language | build, clean: wall; CPU | component | memory at start | "
            "first load (compile) | cached load | new instance + init | "
            "per request over plain wasmgate, pooled | …, fresh instance per call |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    secs = lambda x: f"{x:.2f}" if x < 10 else f"{x:.1f}"  # noqa: E731
    for lang in langs:
        bs = builds[lang.key]
        build = (med_range([b.wall_s for b in bs], secs, "s")
                 + f"; CPU {fmt_s(statistics.median(b.cpu_s for b in bs))}")
        sizes = sorted({b.size for b in bs})
        size = fmt_bytes(bs[-1].size) + ("" if len(sizes) == 1 else
                                         f" ({fmt_bytes(sizes[0])}–{fmt_bytes(sizes[-1])})")
        mem = inspected.get(lang.key, {}).get("initial_memory_bytes")
        mem_s = f"{mem / 2**20:.1f} MiB" if isinstance(mem, (int, float)) else "—"
        if timings:
            ts = loads[lang.key]
            t = [med_range_ms([x[k] for x in ts]) for k in TIMING_KEYS]
        else:
            t = ["not measured"] * 3
        if result is not None and f"wasmgate-{lang.key}" in result.samples:
            pooled = med_range_us(over_plain(result, f"wasmgate-{lang.key}"))
            fresh = med_range_us(over_plain(result, f"wasmgate-{lang.key}-fresh"))
        else:
            pooled = fresh = "—"
        rows.append(f"| {lang.label} | {build} | {size} | {mem_s} | {t[0]} | {t[1]} | {t[2]} | "
                    f"{pooled} | {fresh} |")
    return "\n".join(rows)


def detail_table(result: B.ModeResult) -> str:
    rows = ["| scenario | requests/s median (min–max) | p50 | p99 | gateway CPU | "
            "gateway CPU µs/request | cost/request µs median (min–max) | "
            "over plain wasmgate µs median (min–max) | instances created: "
            f"{REUSE_REQUESTS} requests in a row before load; per 1,000 requests under load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    f1 = lambda x: f"{x:,.1f}"  # noqa: E731
    for sc in result.scenarios:
        ss = result.samples[sc.name]
        rps = med_range([s.rps for s in ss], lambda x: f"{x:,.0f}")
        p50 = B.fmt_lat(statistics.median(s.p50_us for s in ss))
        p99 = B.fmt_lat(statistics.median(s.p99_us for s in ss))
        if sc.peer is None:
            rows.append(f"| {sc.label} | {rps} | {p50} | {p99} | — | — | — | — | — |")
            continue
        pcpu = f"{statistics.median(s.proxy_cpu or 0 for s in ss) * 100:.0f} %"
        per = med_range([s.proxy_us_per_req for s in ss if s.proxy_us_per_req is not None], f1)
        cost = med_range(B.costs(result, sc.name), f1)
        extra = "—" if sc.name == "wasmgate" else med_range(over_plain(result, sc.name), f1)
        inst = instances_per_1000(sc.name)
        inst_s = (f"{PRECHECK.get(sc.name, float('nan')):.0f}; "
                  f"{med_range(inst, lambda x: f'{x:,.1f}')}" if sc.opts.get("chain") else "—")
        rows.append(f"| {sc.label} | {rps} | {p50} | {p99} | {pcpu} | {per} | {cost} | {extra} | "
                    f"{inst_s} |")
    return "\n".join(rows)


def versions(args, nginx: str, wrk: str, tools: dict[str, str], langs: list[Lang]) -> dict[str, str]:
    commit = B.cmd_output(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    out = {"wasmgate": f"commit {commit}" + (" (with uncommitted changes)" if dirty else "")}
    for lang in langs:
        out[f"{lang.label} toolchain"] = tools.get(lang.key, "unknown")
    out |= {
        "rustc (the gateway)": B.cmd_output(["rustc", "-V"]),
        "nginx": B.cmd_output([nginx, "-v"]).removeprefix("nginx version: "),
        "wrk": " ".join(B.cmd_output([wrk, "-v"]).split()[:3]),
        "upstream": "nginx `return 200 \"hello\\n\"`, 1 worker, access log off",
    }
    return out


def section(args, langs, builds, tools, loads, inspected, result, timings: bool,
            first_party: bool, when: str, nginx: str, wrk: str) -> str:
    quick = ("\n> **Quick run** (short rounds, smoke test of the harness): "
             "not a result to quote.\n" if args.quick else "")
    reproducible = []
    for lang in langs:
        shas = {b.sha256 for b in builds[lang.key]}
        if len(builds[lang.key]) > 1:
            reproducible.append(f"{lang.label} {'byte-identical' if len(shas) == 1 else 'differ'}")
    repro = (f" Builds of the same source across rounds: {', '.join(reproducible)}."
             if reproducible else "")
    prime = ("after one untimed build of each (which fills pip's, npm's and cargo's download "
             "caches and the page cache)" if args.prime else
             "with no priming build: download caches as found")
    pin_inspect = (f"pinned to CPU {args.cpu_inspect}" if args.cpu_inspect is not None
                   else "unpinned (both CPUs; compilation runs in parallel)")
    loads_line = (
        f"- Loading: `wasmgate filter inspect FILE --json --timings --config '{KEY_CFG_JSON}'`, "
        f"{plural(args.load_rounds, 'round')} interleaved, {pin_inspect}: first load = "
        f"compile, with a new empty compile cache folder; cached load = a new engine loading "
        f"it from that folder; new instance + init = the binary's median of several.\n"
        if timings else
        "- Loading: **not measured**: this wasmgate's `filter inspect` has no `--timings`; "
        "each component was only checked to load and accept the config.\n")
    fp = (f" The first-party `{FIRST_PARTY}` filter (Rust, the SDK, built by the workspace) "
          f"is measured beside them, for scale." if first_party else "")
    result_part = ""
    if result is not None:
        result_part = f"""
Per request, every row (mode S's method, `bench/bench.py`). Before load, each filter
route answered 200 with its `{LANG_HEADER}` and 401 without the key, and
{REUSE_REQUESTS} requests in a row on one connection created the instances in the last
column (`wasmgate_filter_instances_created_total`): pooled, at most {POOLED_MAX_CREATED}; fresh,
one or more per request. Under load, the same counter, per 1,000 requests of each
measured run (not the warm-up).

{detail_table(result)}
"""
    per_request = ("- Per request: not measured (`--no-load`).\n" if result is None else f"""- Per request: wrk, gateway and upstream all pinned to CPU {args.cpu_s}; wrk 1 thread,
  {args.connections} connections, keep-alive; {args.rounds} rounds × {args.duration:g} s per row,
  interleaved, after a {args.warmup:g} s warm-up each; gateways not measured are frozen
  (SIGSTOP). cost = 1/T_route − 1/T_direct per round; "over plain wasmgate" subtracts
  the same round's cost of the gateway with no filter on the route. wasmgate:
  `workers = 1`, access log off, `WASMGATE_LOG=warn`, an admin listener (for
  `/metrics`); every filter `memory_limit = "{args.memory_limit}"`, `recycle_memory =
  "{args.recycle_memory}"` (above the interpreters' start, so pooled instances are
  reused), `cpu_limit = "{args.cpu_limit}"`, `pool_size` and `max_uses` (10,000 calls: an
  instance serves 5,000 requests) at their defaults; fresh rows add
  `isolation = "fresh"`.{fp}
""")
    vlines = "\n".join(f"- {k}: {v}" for k, v in
                       versions(args, nginx, wrk, tools, langs).items())
    return f"""### Mode L: one filter in four languages (build, size, loading, per request)
{quick}
- Date: {when}
- Machine: {B.machine()}
- Command: `{args.command}`
- The filter: `examples/filters/<lang>/`, an API key check (401 in the gateway's error
  format without one of the keys, `{LANG_HEADER}: <lang>` on every response), config
  `{KEY_CFG_TOML}`; every request carries `{B.API_KEY_HEADER}: {B.API_KEY}` (the pass path).
- Builds: from a clean state, wall-clock (and CPU: the build's and its children's),
  {plural(args.build_rounds, 'round')} interleaved, {prime}; unpinned{f', at nice {args.build_nice}' if args.build_nice else ''}.
  C: `build.sh` (bindings, clang, componentize); Rust: `cargo build --release --locked
  --target {RUST_TARGET}` into an empty target dir (crates already fetched); Python:
  `build.sh` with a new venv and `pip install componentize-py`; JavaScript: `build.sh`
  with `npm ci` into an empty `node_modules` (pip and npm still ask their registries,
  and take from their caches what they can). The last round's components are measured.{repro}
{loads_line}{per_request}
{summary_table(langs, builds, loads, inspected, result, timings)}
{result_part}
Versions:
{vlines}
"""


def write_section(path: Path, text: str) -> None:
    """Replaces the `bench:languages` section of `path`, or appends it."""
    begin, end = f"<!-- bench:{SECTION}:begin -->", f"<!-- bench:{SECTION}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(current):
        current = pattern.sub(lambda _: block, current)
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    path.write_text(current)


# --------------------------------------------------------------------------


def parse_args(argv: list[str]):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["L"], default="L", help="L (for bench/run.sh --mode L)")
    ap.add_argument("--quick", action="store_true",
                    help="2 rounds × 2 s, 1 s warm-up, 1 build and 1 inspect round, no priming "
                         "build; does not write BENCHMARKS.md unless --write")
    ap.add_argument("--langs", default=",".join(lang.key for lang in LANGS),
                    help="a subset of c,rust,python,js")
    ap.add_argument("--rounds", type=int, help="per-request rounds (default 5; quick 2)")
    ap.add_argument("--duration", type=float, help="seconds per row per round (default 10; quick 2)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per row (default 3; quick 1)")
    ap.add_argument("--connections", type=int, default=10, help="wrk connections (default 10)")
    ap.add_argument("--build-rounds", type=int, help="timed builds of each (default 3; quick 1)")
    ap.add_argument("--load-rounds", type=int, help="inspect --timings rounds (default 3; quick 1)")
    p = ap.add_mutually_exclusive_group()
    p.add_argument("--prime", dest="prime", action="store_true", default=None,
                   help="one untimed build of each first (default unless --quick)")
    p.add_argument("--no-prime", dest="prime", action="store_false")
    ap.add_argument("--build-nice", type=int, default=0,
                    help="run the builds at this nice level (default 0; a shared machine: 10)")
    ap.add_argument("--cpu-s", default="0", help="the CPU of wrk, gateway and upstream (default 0)")
    ap.add_argument("--cpu-inspect", default=None,
                    help="pin `filter inspect` to this CPU (default: unpinned)")
    ap.add_argument("--memory-limit", default="64MiB", help="every filter's memory_limit")
    ap.add_argument("--recycle-memory", default="48MiB", help="every filter's recycle_memory")
    ap.add_argument("--cpu-limit", default="200ms",
                    help="every filter's cpu_limit (default 200ms: the interpreters' first init "
                         "after a compile can pass the default 50ms on a busy machine)")
    ap.add_argument("--no-first-party", action="store_true",
                    help="leave out the first-party api-key row even when it is built")
    ap.add_argument("--no-load", action="store_true",
                    help="builds and loading only (no gateway, no wrk)")
    ap.add_argument("--wasmgate", type=Path, default=REPO / "target" / "release" / "wasmgate")
    ap.add_argument("--filters-dir", type=Path,
                    default=REPO / "target" / "filters" / "wasm32-wasip2" / "release",
                    help="where the first-party api-key.wasm is (its row is left out if absent)")
    ap.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    w = ap.add_mutually_exclusive_group()
    w.add_argument("--write", dest="write", action="store_true", default=None)
    w.add_argument("--no-write", dest="write", action="store_false")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.build_rounds = args.build_rounds or (1 if args.quick else 3)
    args.load_rounds = args.load_rounds or (1 if args.quick else 3)
    if args.prime is None:
        args.prime = not args.quick
    if args.write is None:
        args.write = not args.quick
    # What bench.run_mode reads besides these.
    args.cpu_proxy = args.cpu_load = args.cpu_s
    args.connections_p, args.h2_clients, args.h2_streams = args.connections, 1, 1
    args.wasmgate = args.wasmgate.resolve()
    args.filters_dir = args.filters_dir.resolve()
    args.command = args.command or "python3 bench/languages.py " + shlex.join(argv)
    keys = [k.strip() for k in args.langs.split(",") if k.strip()]
    unknown = [k for k in keys if k not in LANG_BY_KEY]
    if unknown or not keys:
        ap.error(f"--langs: unknown {', '.join(unknown) or '(none given)'}; "
                 f"choose from {', '.join(LANG_BY_KEY)}")
    args.lang_list = [LANG_BY_KEY[k] for k in LANG_BY_KEY if k in keys]
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    langs: list[Lang] = args.lang_list
    if not args.wasmgate.exists():
        raise B.BenchError(f"{args.wasmgate} is missing: build with `cargo build --release "
                           f"-p wasmgate` (bench/run.sh --mode L does)")
    for cpu in {args.cpu_s} | ({args.cpu_inspect} if args.cpu_inspect is not None else set()):
        if int(cpu) not in os.sched_getaffinity(0):
            raise B.BenchError(f"CPU {cpu} is not available here")
    timings = timings_supported(args.wasmgate)
    if not timings:
        msg = (f"{args.wasmgate} has no `filter inspect --timings`: first load, cached load "
               f"and instantiation are not measured")
        if args.write:
            raise B.BenchError(msg + " (a run that writes BENCHMARKS.md needs them; "
                               "--no-write to run anyway)")
        print(f"warning: {msg}", file=sys.stderr)
    nginx = B.find_tool("nginx", None)
    wrk = B.find_tool("wrk", None)
    first_party = (not args.no_first_party and not args.no_load
                   and (args.filters_dir / f"{FIRST_PARTY.replace('-', '_')}.wasm").exists())

    rows = 0 if args.no_load else 2 + 2 * len(langs) + (1 if first_party else 0)
    est_load = rows * (args.rounds * args.duration + args.warmup)
    print(f"mode L: {', '.join(lang.key for lang in langs)}; builds {args.build_rounds} round(s)"
          f"{' after priming' if args.prime else ''}; inspect {args.load_rounds if timings else 1}"
          f" round(s); per request {rows} rows × ({args.rounds} × {args.duration:g} s + "
          f"{args.warmup:g} s warm-up) = about {est_load / 60:.1f} min of load")

    procs = B.Procs()
    workdir = Path(tempfile.mkdtemp(prefix="wasmgate-bench-lang-"))
    os.chmod(workdir, 0o755)  # nginx workers run as an unprivileged user
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ok = False
    try:
        print("\n=== builds")
        builds, tools, components = run_builds(langs, args, workdir)
        print("\n=== loading (wasmgate filter inspect)")
        loads, inspected = run_loads(langs, args, workdir, components, timings)

        result = None
        if not args.no_load:
            if first_party:
                shutil.copy(args.filters_dir / f"{FIRST_PARTY.replace('-', '_')}.wasm",
                            components / f"{FIRST_PARTY.replace('-', '_')}.wasm")
            GATEWAY_CACHE.append(workdir / "gateway-cache")
            GATEWAY_CACHE[0].mkdir()
            tools_ = B.Tools(nginx=nginx, haproxy="haproxy", envoy="envoy", wrk=wrk,
                             wasmgate=args.wasmgate, filters_dir=components,
                             proxy_wasm=Path("/nonexistent"))
            upstream_port = B.free_ports(1)[0]
            upstream = B.start_upstream(B.Ctx(tools_, procs, workdir, upstream_port),
                                        upstream_port, args.cpu_s)
            B.wait_listening(upstream, upstream_port)
            result = B.run_mode("S", args, tools_, procs, workdir, upstream, upstream_port,
                                scenarios_for(langs, args, first_party))

        text = section(args, langs, builds, tools, loads, inspected, result, timings,
                       first_party, when, nginx, wrk)
        print("\n" + text)
        if args.write:
            write_section(args.output, text)
            print(f"written to {args.output}")
        else:
            print(f"(not written to {args.output}; pass --write)")
        (workdir / "results.json").write_text(json.dumps({
            "builds": {k: [{**vars(b), "component": str(b.component)} for b in v]
                       for k, v in builds.items()},
            "loads": loads,
            "inspect": inspected,
            "per_request": ({name: [vars(s) | {"raw": None} for s in ss]
                             for name, ss in result.samples.items()} if result else None),
            "instances": INSTANCES,
        }, indent=1))
        ok = True
        return 0
    finally:
        procs.stop_all()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work folder kept: {workdir}", file=sys.stderr)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, B._on_signal)
    signal.signal(signal.SIGHUP, B._on_signal)
    try:
        sys.exit(main(sys.argv[1:]))
    except B.BenchError as e:
        print(f"\nbench: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\nbench: interrupted; every process it started has been stopped", file=sys.stderr)
        sys.exit(130)
