#!/usr/bin/env python3
"""Protocol translation: the cost of a transcoded unary call (issue 21; mode G).

One gRPC upstream (`bookstore-grpc`, the project's test server on tonic:
`bookstore.v1.Bookstore`, cleartext HTTP/2), and in front of it, each in
its own process, pinned and interleaved like mode S:

  direct              h2load -> bookstore-grpc, the gRPC call itself
                      (T_direct: the baseline of every row)
  wasmgate-grpc       gRPC -> wasmgate (a route without `transcode`) -> upstream
  wasmgate-grpc-tr    gRPC -> wasmgate, the transcoding route (gRPC passes
                      through it untouched) -> upstream
  wasmgate-json       GET /v1/shelves/7/books/9 (JSON) -> wasmgate,
                      `transcode = { descriptor = "books" }` -> GetBook -> upstream
  envoy-grpc          gRPC -> Envoy (router only) -> upstream
  envoy-grpc-tr       gRPC -> Envoy with `grpc_json_transcoder` (passed through)
  envoy-json          GET /v1/shelves/7/books/9 -> Envoy's
                      `envoy.filters.http.grpc_json_transcoder` -> upstream

Every request is h2load over h2c (prior knowledge), the same client settings
for every row (`--h2-clients` connections × `--h2-streams` streams). gRPC
rows POST one 11-byte gRPC frame (`GetBookRequest{shelf{id: 7}, book: 9}`,
encoded here by hand) with `content-type: application/grpc` and
`te: trailers`. Two layouts (`--layout`):

  one     h2load, proxy and upstream all pinned to one CPU (`--cpu-s`):
          mode S's method; cost = 1/T_proxy - 1/T_direct per round, in µs,
          is CPU time per request on that CPU.
  split   proxy and upstream pinned to `--cpu-proxy`, h2load to `--cpu-load`:
          the client's work is off the measured CPU; the figure is the
          proxy's own CPU time per request (from /proc), and 1/T - 1/T_direct
          only where that CPU is the one saturated.

Every row's proxy is one worker/thread, logs off; the proxies not being
measured are frozen (SIGSTOP). Before any load each row answers once with
curl (HTTP/2 prior knowledge): a gRPC row must answer 200, `application/grpc`,
`grpc-status: 0` (read from the trailers curl writes with the headers) and a
`Book` whose `id` is 9 and `shelf_id` 7 (decoded here); a transcoded row 200,
`application/json`, with `"id": "9"` and `"shelfId": "7"`. Under load h2load
must count every request 2xx, none failed, errored or timed out, and the
DATA bytes it received must be the checked answer's size per request (h2load
cannot see `grpc-status`, which travels in the trailers: the byte count shows
that every answer carried the whole message; the curl check runs again after
the rounds).

Only 127.0.0.1 is contacted. Standard library only; helpers come from
bench.py. Writes its section of BENCHMARKS.md (between `bench:grpc`
markers) unless --quick. Normally started by `bench/run.sh --mode G`; see
bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402  (the shared helpers)

HOST = B.HOST
REPO = B.REPO
SECTION = "grpc"               # <!-- bench:grpc:begin --> ... end -->
AFTER_SECTION = "languages"    # where a new section goes: after this one
SERVICE = "bookstore.v1.Bookstore"
GRPC_PATH = f"/{SERVICE}/GetBook"
SHELF, BOOK = 7, 9
JSON_PATH = f"/v1/shelves/{SHELF}/books/{BOOK}"
GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}
DESCRIPTOR = "books"           # [descriptors.books] in wasmgate's config


# --------------------------------------------------------------------------
# The request, by hand (protobuf wire format), and the answer, decoded.


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def get_book_request(shelf: int, book: int) -> bytes:
    """GetBookRequest { Shelf shelf = 1 { int64 id = 1 }; int64 book = 2 }."""
    shelf_msg = varint((1 << 3) | 0) + varint(shelf)
    return (varint((1 << 3) | 2) + varint(len(shelf_msg)) + shelf_msg
            + varint((2 << 3) | 0) + varint(book))


def grpc_frame(message: bytes) -> bytes:
    """Length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def parse_message(data: bytes) -> dict[int, list]:
    """The top-level fields of a protobuf message: number -> values (ints
    for varint/fixed, bytes for length-delimited)."""
    fields: dict[int, list] = {}
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(data, i)
        elif wire == 1:
            value, i = int.from_bytes(data[i:i + 8], "little"), i + 8
        elif wire == 2:
            n, i = read_varint(data, i)
            value, i = data[i:i + n], i + n
        elif wire == 5:
            value, i = int.from_bytes(data[i:i + 4], "little"), i + 4
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(data):
            raise ValueError("truncated field")
        fields.setdefault(number, []).append(value)
    return fields


def grpc_messages(body: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(body):
        if len(body) - i < 5:
            raise ValueError("truncated gRPC frame header")
        if body[i] != 0:
            raise ValueError(f"compressed or unknown frame flag {body[i]}")
        n = int.from_bytes(body[i + 1:i + 5], "big")
        if len(body) - i - 5 < n:
            raise ValueError("truncated gRPC message")
        out.append(body[i + 5:i + 5 + n])
        i += 5 + n
    return out


REQUEST = grpc_frame(get_book_request(SHELF, BOOK))


def raw_fields(data: bytes) -> list[tuple[int, int, bytes, object]]:
    """The top-level fields of a message as (number, wire type, the field's
    own bytes with its key, value), so that a message can be written back
    with some fields left out or replaced."""
    out = []
    i = 0
    while i < len(data):
        start = i
        key, i = read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            n, i = read_varint(data, i)
            value, i = data[i:i + n], i + n
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.append((number, wire, data[start:i], value))
    return out


def length_field(number: int, payload: bytes) -> bytes:
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def without_method(descriptor_set: bytes, full_name: str) -> bytes:
    """The FileDescriptorSet without the method `package.Service.Method`
    (FileDescriptorSet.file = 1; FileDescriptorProto.package = 2, .service =
    6; ServiceDescriptorProto.name = 1, .method = 2; MethodDescriptorProto.name = 1)."""
    service_name, method = full_name.rsplit(".", 1)
    out, found = bytearray(), False
    for num, wire, raw, value in raw_fields(descriptor_set):
        if num != 1 or wire != 2:
            out += raw
            continue
        file_fields = raw_fields(value)
        package = next((v.decode() for n, w, _, v in file_fields if n == 2 and w == 2), "")
        new_file = bytearray()
        for fnum, fwire, fraw, fvalue in file_fields:
            if fnum == 6 and fwire == 2:
                svc = raw_fields(fvalue)
                name = next((v.decode() for n, w, _, v in svc if n == 1 and w == 2), "")
                if f"{package}.{name}" == service_name:
                    kept = bytearray()
                    for snum, swire, sraw, svalue in svc:
                        if snum == 2 and swire == 2:
                            mname = next((v.decode() for n, w, _, v in raw_fields(svalue)
                                          if n == 1 and w == 2), "")
                            if mname == method:
                                found = True
                                continue
                        kept += sraw
                    new_file += length_field(6, bytes(kept))
                    continue
            new_file += fraw
        out += length_field(1, bytes(new_file))
    if not found:
        raise B.BenchError(f"no method {full_name} in the descriptor set")
    return bytes(out)


# --------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    name: str
    label: str
    peer: str | None        # "wasmgate", "envoy", or None (straight to the upstream)
    kind: str               # "grpc" (POST the gRPC frame) or "json" (GET JSON_PATH)
    transcoder: bool = False  # the proxy has the transcoder on the route / listener

    @property
    def path(self) -> str:
        return GRPC_PATH if self.kind == "grpc" else JSON_PATH


ROWS = [
    Row("direct", "direct gRPC (no proxy)", None, "grpc"),
    Row("wasmgate-grpc", "wasmgate, gRPC (route without `transcode`)", "wasmgate", "grpc"),
    Row("wasmgate-grpc-tr", "wasmgate, gRPC through the transcoding route", "wasmgate",
        "grpc", True),
    Row("wasmgate-json", "wasmgate, JSON transcoded to gRPC", "wasmgate", "json", True),
    Row("envoy-grpc", "Envoy, gRPC (router only)", "envoy", "grpc"),
    Row("envoy-grpc-tr", "Envoy, gRPC through `grpc_json_transcoder`", "envoy", "grpc", True),
    Row("envoy-json", "Envoy, JSON transcoded to gRPC (`grpc_json_transcoder`)", "envoy",
        "json", True),
]
ROW_BY_NAME = {r.name: r for r in ROWS}

# The comparisons under each table: (A, B, what A − B means).
COMPARISONS = [
    ("wasmgate-json", "wasmgate-grpc", "wasmgate: transcoded − plain gRPC (the translation's own cost)"),
    ("wasmgate-grpc-tr", "wasmgate-grpc", "wasmgate: gRPC through the transcoding route − plain route"),
    ("envoy-json", "envoy-grpc", "Envoy: transcoded − plain gRPC"),
    ("envoy-grpc-tr", "envoy-grpc", "Envoy: gRPC through the transcoder − router only"),
    ("wasmgate-json", "envoy-json", "transcoded: wasmgate − Envoy"),
    ("wasmgate-grpc", "envoy-grpc", "plain gRPC: wasmgate − Envoy"),
]


@dataclass
class Layout:
    key: str              # "one" or "split"
    proxy_cpu: str        # the proxy's and the upstream's CPU
    load_cpu: str         # h2load's

    def describe(self) -> str:
        if self.proxy_cpu == self.load_cpu:
            return (f"h2load, proxy and upstream all pinned to CPU {self.proxy_cpu} "
                    f"(`taskset -c {self.proxy_cpu}`), as in mode S")
        return (f"proxy and upstream pinned to CPU {self.proxy_cpu}, h2load to CPU "
                f"{self.load_cpu}")


@dataclass
class GSample:
    sample: B.Sample
    data_bytes: int          # DATA payload bytes h2load received
    per_request: float       # data_bytes / succeeded


@dataclass
class LayoutResult:
    layout: Layout
    rows: list[Row]
    samples: dict[str, list[GSample]]
    answer_bytes: dict[str, int]      # the checked answer's DATA bytes per row
    notes: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------
# Processes


def start_upstream(ctx: B.Ctx, binary: Path, port: int, cpu: str, descriptor: Path) -> B.Proc:
    descriptor.unlink(missing_ok=True)
    proc = ctx.procs.start("bookstore-grpc", [str(binary), f"{HOST}:{port}", str(descriptor)],
                           cpu, ctx.workdir)
    B.wait_listening(proc, port)
    if not descriptor.exists() or descriptor.stat().st_size == 0:
        raise B.BenchError(f"{binary} did not write its descriptor set to {descriptor}")
    return proc


def wasmgate_toml(port: int, upstream_port: int, descriptor: Path, transcode: bool) -> str:
    """Mode S's wasmgate settings (one worker, access log off) and one route
    to the h2c cluster; `transcode` on it or not."""
    lines = ["[server]", f'listen = "{HOST}:{port}"', "workers = 1", "",
             "[access_log]", "enabled = false", ""]
    if transcode:
        lines += [f"[descriptors.{DESCRIPTOR}]", f'path = "{descriptor}"', ""]
    lines += ["[clusters.grpc]", 'protocol = "h2c"', f'endpoints = ["{HOST}:{upstream_port}"]', "",
              "[[routes]]", 'name = "books"', 'path_prefix = "/"', 'cluster = "grpc"']
    if transcode:
        lines.append(f'transcode = {{ descriptor = "{DESCRIPTOR}", services = ["{SERVICE}"] }}')
    return "\n".join(lines) + "\n"


def start_wasmgate(ctx: B.Ctx, name: str, port: int, cpu: str, row: Row,
                   descriptor: Path) -> B.Proc:
    binary = ctx.tools.wasmgate
    conf = ctx.workdir / f"{name}.toml"
    conf.write_text(wasmgate_toml(port, ctx.upstream_port, descriptor, row.transcoder))
    env = {"WASMGATE_LOG": "warn", "TOKIO_WORKER_THREADS": "1"}
    check = subprocess.run([str(binary), "check", "--config", str(conf)],
                           capture_output=True, text=True, env={**os.environ, **env})
    if check.returncode != 0:
        raise B.BenchError(f"wasmgate check rejected {conf}:\n{check.stdout}{check.stderr}")
    return ctx.procs.start(name, [str(binary), "serve", "--config", str(conf)], cpu,
                           ctx.workdir, env)


def envoy_config(port: int, upstream_port: int, descriptor: Path, transcoder: bool) -> dict:
    """One listener (HTTP/1 or HTTP/2 by the preface: h2c by prior knowledge),
    one route to a cluster that speaks HTTP/2 to the upstream; with
    `transcoder`, `grpc_json_transcoder` before the router, printing proto3
    JSON's defaults (lowerCamel names, enums as names, defaults left out, no
    whitespace) and turning a gRPC error into an HTTP status and a JSON body
    (`convert_grpc_status`), as wasmgate does."""
    http_filters = []
    if transcoder:
        http_filters.append({
            "name": "envoy.filters.http.grpc_json_transcoder",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http."
                         "grpc_json_transcoder.v3.GrpcJsonTranscoder",
                "proto_descriptor": str(descriptor),
                "services": [SERVICE],
                "print_options": {
                    "add_whitespace": False,
                    "always_print_primitive_fields": False,
                    "always_print_enums_as_ints": False,
                    "preserve_proto_field_names": False,
                },
                "convert_grpc_status": True,
            },
        })
    http_filters.append({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
    return {"static_resources": {
        "listeners": [{
            "name": "bench",
            "address": {"socket_address": {"address": HOST, "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network."
                             "http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "bench",
                    "codec_type": "AUTO",
                    "route_config": {"name": "local", "virtual_hosts": [{
                        "name": "all", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "grpc"}}],
                    }]},
                    "http_filters": http_filters,
                },
            }]}],
        }],
        "clusters": [{
            "name": "grpc",
            "type": "STATIC",
            "connect_timeout": "5s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                             "HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                },
            },
            "load_assignment": {"cluster_name": "grpc", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": HOST, "port_value": upstream_port}}}}]}]},
        }],
    }}


def envoy_descriptor(ctx: B.Ctx, descriptor: Path) -> tuple[Path, list[str]]:
    """The descriptor set for Envoy's transcoder: the upstream's, less the
    methods whose HTTP rules Envoy refuses to register (`envoy --mode
    validate`: "Cannot register 'M': ..."; e.g. a `response_body` that is not
    `google.api.HttpBody`), one at a time. Envoy refuses the whole filter
    otherwise. Returns it and the methods left out (never GetBook)."""
    data = descriptor.read_bytes()
    out = ctx.workdir / "books-envoy.pb"
    dropped: list[str] = []
    for _ in range(50):
        out.write_bytes(data)
        conf = ctx.workdir / "envoy-validate.json"
        conf.write_text(json.dumps(envoy_config(1, ctx.upstream_port, out, True)))
        check = subprocess.run([ctx.tools.envoy, "--mode", "validate", "-c", str(conf),
                                "-l", "error"], capture_output=True, text=True)
        if check.returncode == 0:
            return out, dropped
        m = re.search(r"Cannot register '([\w.]+)': ([^\n]*)", check.stdout + check.stderr)
        if not m or m.group(1) == f"{SERVICE}.GetBook":
            raise B.BenchError(f"envoy --mode validate rejects the transcoder's config:\n"
                               f"{check.stdout}{check.stderr}")
        dropped.append(f"{m.group(1)} ({m.group(2).strip()})")
        data = without_method(data, m.group(1))
    raise B.BenchError("envoy refuses too many methods of the descriptor set")


def start_envoy(ctx: B.Ctx, name: str, port: int, cpu: str, row: Row,
                descriptor: Path) -> B.Proc:
    conf = ctx.workdir / f"{name}.json"
    conf.write_text(json.dumps(envoy_config(port, ctx.upstream_port, descriptor,
                                            row.transcoder), indent=2))
    check = subprocess.run([ctx.tools.envoy, "--mode", "validate", "-c", str(conf), "-l", "error"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise B.BenchError(f"envoy --mode validate rejected {conf}:\n{check.stdout}{check.stderr}")
    return ctx.procs.start(name, [ctx.tools.envoy, "-c", str(conf), "--concurrency", "1",
                                  "--disable-hot-restart", "-l", "warn"], cpu, ctx.workdir)


# --------------------------------------------------------------------------
# The check: one request with curl, before any load and after the rounds.


def curl_once(row: Row, port: int, tools: B.Tools, workdir: Path) -> tuple[int, dict[str, str], dict[str, str], bytes]:
    """One request over h2c (prior knowledge). Returns the status, the
    headers, the trailers (curl writes HTTP/2 trailers to the header dump
    after the headers' blank line) and the body."""
    url = f"http://{HOST}:{port}{row.path}"
    head, body = workdir / f"check-{row.name}.head", workdir / f"check-{row.name}.body"
    argv = [tools.curl, "-sS", "--http2-prior-knowledge", "--max-time", "10",
            "-D", str(head), "-o", str(body), "-w", "%{http_version}"]
    if row.kind == "grpc":
        req = workdir / "request.bin"
        argv += ["--data-binary", f"@{req}"]
        for k, v in GRPC_HEADERS.items():
            argv += ["-H", f"{k}: {v}"]
    done = subprocess.run(argv + [url], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise B.BenchError(f"{row.name}: curl {url} failed ({done.returncode}): "
                           f"{done.stderr.strip()}")
    if done.stdout.strip() != "2":
        raise B.BenchError(f"{row.name}: {url} answered over HTTP/{done.stdout.strip()}, not HTTP/2")
    blocks = head.read_text(errors="replace").replace("\r\n", "\n").split("\n\n")
    lines = blocks[0].splitlines()
    status = int(lines[0].split()[1])

    def fields(ls: list[str]) -> dict[str, str]:
        out = {}
        for line in ls:
            if ":" in line:
                k, v = line.split(":", 1)
                out[k.strip().lower()] = v.strip()
        return out

    trailers = fields([ln for b in blocks[1:] for ln in b.splitlines()])
    return status, fields(lines[1:]), trailers, body.read_bytes()


def check_row(row: Row, port: int, tools: B.Tools, workdir: Path) -> tuple[int, str, object]:
    """Fails unless the row answers GetBook(shelf 7, book 9) right. Returns
    the answer's DATA bytes, a note for the report, and the JSON document
    (transcoded rows) or None."""
    status, headers, trailers, body = curl_once(row, port, tools, workdir)
    what = f"{row.name}: {'POST' if row.kind == 'grpc' else 'GET'} {row.path}"
    if status != 200:
        raise B.BenchError(f"{what} answered {status}, not 200: headers {headers}, "
                           f"trailers {trailers}, body {body[:300]!r}")
    ctype = headers.get("content-type", "")
    if row.kind == "grpc":
        if not ctype.startswith("application/grpc"):
            raise B.BenchError(f"{what}: content-type {ctype!r}, not application/grpc")
        # A trailers-only answer carries grpc-status in its headers.
        gs = trailers.get("grpc-status", headers.get("grpc-status"))
        if gs != "0":
            raise B.BenchError(f"{what}: grpc-status {gs!r} (grpc-message "
                               f"{trailers.get('grpc-message', headers.get('grpc-message'))!r}), "
                               f"not 0: headers {headers}, trailers {trailers}")
        if "grpc-status" not in trailers:
            raise B.BenchError(f"{what}: grpc-status came in the headers, not in trailers: "
                               f"{headers}")
        try:
            msgs = grpc_messages(body)
            if len(msgs) != 1:
                raise ValueError(f"{len(msgs)} messages")
            book = parse_message(msgs[0])
        except ValueError as e:
            raise B.BenchError(f"{what}: the answer is not one Book message ({e}): "
                               f"{body[:300]!r}") from None
        if book.get(1) != [BOOK] or book.get(11) != [SHELF]:
            raise B.BenchError(f"{what}: Book id {book.get(1)}, shelf_id {book.get(11)}, "
                               f"not {BOOK} and {SHELF}")
        return len(body), (f"grpc-status 0 in trailers; one Book, id {BOOK}, shelf_id {SHELF}, "
                           f"{len(body)} bytes framed"), None
    if not ctype.startswith("application/json"):
        raise B.BenchError(f"{what}: content-type {ctype!r}, not application/json: {body[:300]!r}")
    try:
        doc = json.loads(body)
    except ValueError:
        raise B.BenchError(f"{what}: the body is not JSON: {body[:300]!r}") from None
    if not isinstance(doc, dict) or doc.get("id") != str(BOOK) or doc.get("shelfId") != str(SHELF):
        raise B.BenchError(f"{what}: JSON id {doc.get('id') if isinstance(doc, dict) else doc!r}, "
                           f"not \"{BOOK}\" (shelfId \"{SHELF}\"): {body[:300]!r}")
    return len(body), f"JSON, id \"{BOOK}\", shelfId \"{SHELF}\", {len(body)} bytes", doc


# --------------------------------------------------------------------------
# Load: h2load over h2c


def run_h2load(tools: B.Tools, row: Row, port: int, seconds: float, args, cpu: str,
               workdir: Path, tag: str, answer_bytes: int) -> GSample:
    """h2load, one thread, `h2_clients` connections × `h2_streams` streams,
    for `seconds`, h2c by prior knowledge. Any failed, errored, timed-out or
    non-2xx request, a connection that did not speak h2c, or DATA bytes that
    are not the checked answer's per request, stops the run."""
    log = workdir / f"h2load-{tag}.log"
    url = f"http://{HOST}:{port}{row.path}"
    argv = [tools.h2load, "-t1", f"-c{args.h2_clients}", f"-m{args.h2_streams}",
            f"-D{max(1, round(seconds * 1000))}ms", f"--log-file={log}"]
    if row.kind == "grpc":
        argv += ["-d", str(workdir / "request.bin")]
        for k, v in GRPC_HEADERS.items():
            argv += ["-H", f"{k}: {v}"]
    argv.append(url)
    code, usage, text = B._run_pinned(argv, cpu, workdir / f"h2load-{tag}.txt")
    lat: list[int] = []
    bad_status = 0
    try:
        with open(log) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    if not parts[1].startswith("2"):
                        bad_status += 1
                    lat.append(int(parts[2]))
    except OSError:
        pass
    finally:
        log.unlink(missing_ok=True)
    if code != 0:
        raise B.BenchError(f"h2load failed ({code}) on {url}:\n{text}")
    fin = re.search(r"^finished in ([\d.]+)(\w+), ([\d.]+) req/s", text, re.M)
    req = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", text, re.M)
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    traffic = re.search(r"^traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers.*?, .*?\((\d+)\) data",
                        text, re.M)
    if not (fin and req and codes and traffic):
        raise B.BenchError(f"cannot parse h2load output for {url}:\n{text}")
    _total, _started, done, ok, failed, errored, timeout = (int(x) for x in req.groups())
    if failed or errored or timeout or bad_status or any(int(x) for x in codes.groups()[1:]):
        raise B.BenchError(f"{row.name}: failed, errored, timed-out or non-2xx requests under "
                           f"load on {url} (log: {bad_status} non-2xx):\n{text}")
    app = re.search(r"^Application protocol: (\S+)", text, re.M)
    if not app or app.group(1) != "h2c":
        raise B.BenchError(f"{url}: h2load spoke {app.group(1) if app else 'nothing'}, not h2c:\n{text}")
    if ok == 0 or not lat:
        raise B.BenchError(f"h2load completed no request on {url}:\n{text}")
    data = int(traffic.group(3))
    # Requests still in flight when the time is up may have part of their
    # answer counted: at most clients × streams answers beyond `ok`.
    in_flight = args.h2_clients * args.h2_streams
    if not ok * answer_bytes <= data <= (ok + in_flight) * answer_bytes:
        raise B.BenchError(f"{row.name}: h2load received {data} bytes of DATA for {ok} answers: "
                           f"{data / ok:.1f} per answer, the checked answer has {answer_bytes} "
                           f"(a short or empty answer under load?):\n{text}")
    wall = B._dur_us(fin.group(1) + fin.group(2)) / 1e6
    lat.sort()
    sample = B.Sample(float(fin.group(3)), float(lat[len(lat) // 2]),
                      float(lat[min(len(lat) - 1, int(len(lat) * 0.99))]), ok,
                      (usage.ru_utime + usage.ru_stime) / wall if wall > 0 else 0.0,
                      negotiated=app.group(1), raw=text)
    return GSample(sample, data, data / ok)


# --------------------------------------------------------------------------
# One layout: start everything, check, warm up, interleaved rounds.


def run_layout(layout: Layout, rows: list[Row], args, tools: B.Tools, procs: B.Procs,
               workdir: Path) -> LayoutResult:
    print(f"\n=== layout {layout.key}: {layout.describe()}")
    upstream_port = B.free_ports(1)[0]
    descriptor = workdir / "books.pb"
    ctx = B.Ctx(tools, procs, workdir, upstream_port)
    upstream = start_upstream(ctx, args.upstream, upstream_port, layout.proxy_cpu, descriptor)
    started: dict[str, tuple[B.Proc | None, int]] = {}
    answer_bytes: dict[str, int] = {}
    notes: dict[str, str] = {}
    docs: dict[str, object] = {}
    try:
        envoy_desc = descriptor
        if any(r.peer == "envoy" and r.transcoder for r in rows):
            envoy_desc, dropped = envoy_descriptor(ctx, descriptor)
            if dropped:
                notes["envoy-dropped"] = (
                    "Envoy's transcoder refuses to load the upstream's descriptor set as it "
                    "is; its copy leaves out " + "; ".join(f"`{d}`" for d in dropped)
                    + " (wasmgate transcodes with the whole set)")
                print(f"  note: {notes['envoy-dropped']}")
        for row, port in zip(rows, B.free_ports(len(rows))):
            if row.peer is None:
                started[row.name] = (None, upstream_port)
                continue
            if row.peer == "wasmgate":
                proc = start_wasmgate(ctx, f"{row.name}-{layout.key}", port, layout.proxy_cpu,
                                      row, descriptor)
            else:
                proc = start_envoy(ctx, f"{row.name}-{layout.key}", port, layout.proxy_cpu,
                                   row, envoy_desc)
            started[row.name] = (proc, port)
        for row in rows:
            proc, port = started[row.name]
            if proc is not None:
                B.wait_listening(proc, port)
            answer_bytes[row.name], notes[row.name], doc = check_row(row, port, tools, workdir)
            if doc is not None:
                docs[row.name] = doc
            print(f"  {row.name:<17} ok: 200 on http://{HOST}:{port}{row.path}; {notes[row.name]}")
        # Whatever a proxy logs from here on (its start-up lines are not counted).
        log_from = {name: proc.log.stat().st_size for name, (proc, _) in started.items()
                    if proc is not None}
        if len(docs) > 1:
            first, *rest = docs.items()
            for name, doc in rest:
                if doc != first[1]:
                    notes["json-differ"] = (f"the JSON answers differ: {first[0]} "
                                            f"{json.dumps(first[1], sort_keys=True)} vs {name} "
                                            f"{json.dumps(doc, sort_keys=True)}")
                    print(f"  note: {notes['json-differ']}")
            if "json-differ" not in notes:
                notes["json-same"] = "the transcoded rows' JSON answers parse to the same document"

        def measure(row: Row, seconds: float, tag: str) -> GSample:
            proc, port = started[row.name]
            others = [p for n, (p, _) in started.items() if p is not None and n != row.name]
            for p in others:
                procs.freeze(p)
            if proc is not None:
                procs.thaw(proc)
            try:
                if proc is not None and not proc.alive():
                    raise B.BenchError(f"{proc.name} died:\n{proc.log_tail()}")
                if not upstream.alive():
                    raise B.BenchError(f"the upstream died:\n{upstream.log_tail()}")
                log_before = proc.log.stat().st_size if proc is not None else 0
                before = B.group_cpu_ticks(proc.pgid) if proc is not None else 0
                up_before = B.group_cpu_ticks(upstream.pgid)
                t0 = time.monotonic()
                g = run_h2load(tools, row, port, seconds, args, layout.load_cpu, workdir, tag,
                               answer_bytes[row.name])
                elapsed = time.monotonic() - t0
                s = g.sample
                if proc is not None:
                    used = (B.group_cpu_ticks(proc.pgid) - before) / B.CLK_TCK
                    s.proxy_cpu = used / elapsed
                    s.proxy_us_per_req = used / s.requests * 1e6
                    if proc.log.stat().st_size - log_before > 64 * 1024:
                        raise B.BenchError(f"{proc.name} wrote {proc.log.stat().st_size - log_before}"
                                           f" bytes of log during one run: its logs must be off\n"
                                           f"{proc.log_tail(3)}")
                up_used = (B.group_cpu_ticks(upstream.pgid) - up_before) / B.CLK_TCK
                s.upstream_cpu = up_used / elapsed
                s.upstream_us_per_req = up_used / s.requests * 1e6
                return g
            finally:
                for p in others:
                    procs.thaw(p)

        if args.warmup > 0:
            print(f"  warm-up: {args.warmup:g}s each")
            for row in rows:
                measure(row, args.warmup, f"{layout.key}-warmup-{row.name}")
        samples: dict[str, list[GSample]] = {row.name: [] for row in rows}
        for r in range(1, args.rounds + 1):
            line = []
            for row in rows:
                g = measure(row, args.duration, f"{layout.key}-r{r}-{row.name}")
                samples[row.name].append(g)
                line.append(f"{row.name} {g.sample.rps:,.0f}")
            print(f"  round {r}/{args.rounds}: " + " | ".join(line))
        # The same check once more, after the load: every row still answers right.
        for row in rows:
            proc, port = started[row.name]
            n, _, _ = check_row(row, port, tools, workdir)
            if n != answer_bytes[row.name]:
                raise B.BenchError(f"{row.name}: after the rounds the answer has {n} bytes, "
                                   f"before {answer_bytes[row.name]}")
        for row in rows:
            proc, _ = started[row.name]
            if proc is not None:
                with open(proc.log, "rb") as f:
                    f.seek(log_from[row.name])
                    text = f.read().decode(errors="replace")
                warn = [ln for ln in text.splitlines()
                        if re.search(r"\b(WARN|ERROR|warning|error|critical)\b", ln)]
                if warn:
                    notes[f"log-{row.name}"] = (f"`{row.name}` logged {len(warn)} warning or "
                                                f"error line(s) under load, e.g. `{warn[0][:300]}`")
                    print(f"  note: {notes[f'log-{row.name}']}")
        return LayoutResult(layout, rows, samples, answer_bytes, notes)
    finally:
        for proc, _ in started.values():
            if proc is not None:
                procs.stop(proc)
        procs.stop(upstream)


# --------------------------------------------------------------------------
# Report


def med_range(values: list[float], fmt: str) -> str:
    return B.med_range(values, fmt)


def costs(res: LayoutResult, name: str) -> list[float]:
    direct = res.samples["direct"]
    return [1e6 / p.sample.rps - 1e6 / d.sample.rps for p, d in zip(res.samples[name], direct)]


def proxy_us(res: LayoutResult, name: str) -> list[float]:
    return [g.sample.proxy_us_per_req for g in res.samples[name]
            if g.sample.proxy_us_per_req is not None]


def client_us(g: GSample) -> float:
    return g.sample.load_cpu / g.sample.rps * 1e6 if g.sample.rps > 0 else 0.0


def table(res: LayoutResult) -> str:
    rows = ["| row | requests/s median (min–max) | p50 | p99 | proxy CPU | "
            "proxy CPU µs/request median (min–max) | upstream CPU µs/request | "
            "h2load CPU µs/request | busy: processes on the proxy's CPU | "
            "cost/request µs = 1/T − 1/T_direct, median (min–max) | answer (DATA bytes) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    one = res.layout.proxy_cpu == res.layout.load_cpu
    for row in res.rows:
        gs = res.samples[row.name]
        ss = [g.sample for g in gs]
        rps = med_range([s.rps for s in ss], ",.0f")
        p50 = B.fmt_lat(statistics.median(s.p50_us for s in ss))
        p99 = B.fmt_lat(statistics.median(s.p99_us for s in ss))
        ups = med_range([s.upstream_us_per_req for s in ss if s.upstream_us_per_req is not None], ".1f")
        cli = f"{statistics.median(client_us(g) for g in gs):.1f}"
        ans = f"{res.answer_bytes[row.name]} ({'gRPC' if row.kind == 'grpc' else 'JSON'})"
        # CPU time of the processes on the proxy's CPU (proxy, upstream, and
        # h2load in layout one) over the run: 100 % = that CPU saturated.
        busy = f"{statistics.median((s.proxy_cpu or 0) + (s.upstream_cpu or 0) + (s.load_cpu if one else 0) for s in ss) * 100:.0f} %"
        if row.peer is None:
            rows.append(f"| {row.label} | {rps} | {p50} | {p99} | — | — | {ups} | {cli} | {busy} | — "
                        f"| {ans} |")
            continue
        pcpu = f"{statistics.median(s.proxy_cpu or 0 for s in ss) * 100:.0f} %"
        per = med_range(proxy_us(res, row.name), ".1f")
        cost = med_range(costs(res, row.name), ".1f")
        rows.append(f"| {row.label} | {rps} | {p50} | {p99} | {pcpu} | {per} | {ups} | {cli} | "
                    f"{busy} | {cost} | {ans} |")
    return "\n".join(rows)


def comparisons(res: LayoutResult) -> str:
    have = set(res.samples)
    rows = ["| comparison | cost/request: A − B µs, round by round, median (min–max) | "
            "cost A ÷ B (medians) | proxy CPU/request: A − B µs, median (min–max) | "
            "proxy CPU A ÷ B (medians) |",
            "|---|---:|---:|---:|---:|"]
    for a, b, what in COMPARISONS:
        if a not in have or b not in have:
            continue
        ca, cb = costs(res, a), costs(res, b)
        pa, pb = proxy_us(res, a), proxy_us(res, b)
        dc = [x - y for x, y in zip(ca, cb)]
        dp = [x - y for x, y in zip(pa, pb)]
        rc = (f"{statistics.median(ca) / statistics.median(cb):.2f}"
              if statistics.median(cb) > 0 else "—")
        rp = (f"{statistics.median(pa) / statistics.median(pb):.2f}"
              if pb and statistics.median(pb) > 0 else "—")
        rows.append(f"| {what} (`{a}` vs `{b}`) | {med_range(dc, '+.1f')} | {rc} | "
                    f"{med_range(dp, '+.1f')} | {rp} |")
    return "\n".join(rows)


def built(path: Path) -> str:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC")
    except OSError:
        return "(missing)"


def versions(tools: B.Tools) -> dict[str, str]:
    commit = B.cmd_output(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    tonic = "unknown"
    lock = REPO / "Cargo.lock"
    if lock.exists():
        m = re.search(r'name = "tonic"\nversion = "([^"]+)"', lock.read_text())
        tonic = m.group(1) if m else tonic
    return {
        "wasmgate": f"commit {commit}" + (" (with uncommitted changes)" if dirty else "")
                    + f", `{tools.wasmgate.relative_to(REPO) if tools.wasmgate.is_relative_to(REPO) else tools.wasmgate}`"
                      f" built {built(tools.wasmgate)}",
        "rustc": B.cmd_output(["rustc", "-V"]),
        "Envoy": B.cmd_output([tools.envoy, "--version"]).split("version:")[-1].strip(),
        "h2load": B.cmd_output([tools.h2load, "--version"]),
        "curl (the checks)": " ".join(B.cmd_output([tools.curl, "--version"]).split()[:2]),
        "upstream": (f"`bookstore-grpc` (tests/src/bin/bookstore-grpc.rs: the test server "
                     f"`{SERVICE}` on tonic {tonic}, one current-thread runtime), release build"),
    }


def section(args, results: list[LayoutResult], vers: dict[str, str], when: str) -> str:
    quick = ("\n> **Quick run** (short rounds, smoke test of the harness): "
             "not a result to quote.\n" if args.quick else "")
    vlines = "\n".join(f"- {k}: {v}" for k, v in vers.items())
    parts = []
    for res in results:
        title = ("everything on one CPU (mode S's method)" if res.layout.key == "one"
                 else "the client on the other CPU")
        figure = ("cost/request (1/T − 1/T_direct) is CPU time per request on the one CPU: "
                  "the proxy's, plus the client's extra work for its request (a JSON GET "
                  "against a gRPC POST: see the h2load column); the proxy's own CPU per "
                  "request (from /proc) leaves the client and the upstream out" if res.layout.key == "one" else
                  "the proxy's own CPU per request (from /proc) is the figure here; "
                  "1/T − 1/T_direct would be one only where the proxy's CPU is saturated "
                  "(the busy column near 100 %); below that, the round trips between the two "
                  "CPUs hold requests/s down, not the proxy's work")
        notes = [v for k, v in res.notes.items()
                 if k in ("json-same", "json-differ") or k.startswith("log-")]
        nl = "".join(f"\n- {n}" for n in notes)
        parts.append(f"""#### Layout `{res.layout.key}`: {title}

- Pinning: {res.layout.describe()}.
- Figure: {figure}.{nl}

{table(res)}

A − B per round (the two rows ran back to back in every round), and the ratio of
medians:

{comparisons(res)}
""")
    dropped = next((r.notes["envoy-dropped"] for r in results if "envoy-dropped" in r.notes), None)
    dropped_line = f"\n- {dropped}." if dropped else ""
    return f"""### Mode G: protocol translation, a transcoded unary call against plain gRPC (h2c)
{quick}
- Date: {when}
- Machine: {B.machine()}
- Command: `{args.command}`
- Upstream: `bookstore-grpc`, unary `GetBook`; every row reaches the same process. gRPC
  rows POST `{GRPC_PATH}`, one 11-byte frame (`GetBookRequest{{shelf: {{id: {SHELF}}},
  book: {BOOK}}}`), `content-type: application/grpc`, `te: trailers`; transcoded rows GET
  `{JSON_PATH}` (`google.api.http` `get: "/v1/shelves/{{shelf.id}}/books/{{book}}"`). The
  answer is one `Book` (timestamp, duration, wrapper, struct, 64-bit integers).
- Load: h2load, 1 thread, {args.h2_clients} connections × {args.h2_streams} concurrent
  streams, h2c by prior knowledge, the same for every row; {args.rounds} rounds ×
  {args.duration:g} s per row, interleaved round-robin, after a {args.warmup:g} s warm-up
  each; proxies not being measured are frozen (SIGSTOP). The upstream is started once per
  layout and shared.
- wasmgate: `workers = 1`, `[access_log] enabled = false`, `WASMGATE_LOG=warn`, a
  `protocol = "h2c"` cluster; the transcoding route has `transcode = {{ descriptor =
  "{DESCRIPTOR}", services = ["{SERVICE}"] }}` (every other key at its default), the plain one none.
  Envoy: `--concurrency 1`, `codec_type: AUTO`, the cluster HTTP/2 (`explicit_http_config`),
  `grpc_json_transcoder` with `proto_descriptor` (the same descriptor set, written by the
  upstream), `services: ["{SERVICE}"]`, `print_options` at proto3 JSON's defaults and
  `convert_grpc_status: true`.{dropped_line}
- Checks: before any load and again after the rounds, every row answered one request
  with curl (HTTP/2): gRPC rows 200, `application/grpc`, `grpc-status: 0` in the
  trailers and a `Book` with id {BOOK}, shelf_id {SHELF} (decoded by the script);
  transcoded rows 200, `application/json`, `"id": "{BOOK}"`, `"shelfId": "{SHELF}"`.
  Under load h2load counted every request 2xx, none failed, errored or timed out, and
  received the checked answer's DATA bytes per request. h2load cannot see
  `grpc-status` (a trailer): under load the gRPC rows' status is known only by the
  answers being whole `Book` messages, by byte count.

{chr(10).join(parts)}
Versions:
{vlines}
"""


def write_section(path: Path, text: str) -> None:
    """Replaces the `bench:grpc` section of `path`; or puts it after the
    `bench:languages` section; or appends it."""
    begin, end = f"<!-- bench:{SECTION}:begin -->", f"<!-- bench:{SECTION}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    after = f"<!-- bench:{AFTER_SECTION}:end -->"
    if pattern.search(current):
        current = pattern.sub(lambda _: block, current)
    elif after in current:
        current = current.replace(after, after + "\n\n" + block, 1)
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    path.write_text(current)


# --------------------------------------------------------------------------


def parse_args(argv: list[str]):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["G"], default="G", help="G (for bench/run.sh --mode G)")
    ap.add_argument("--quick", action="store_true",
                    help="2 rounds × 2 s, 1 s warm-up; does not write BENCHMARKS.md unless --write")
    ap.add_argument("--rounds", type=int, help="rounds (default 5; quick 2)")
    ap.add_argument("--duration", type=float, help="seconds per row per round (default 10; quick 2)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per row (default 3; quick 1)")
    ap.add_argument("--layout", choices=["one", "split", "both"], default="both",
                    help="one: everything on --cpu-s (mode S); split: proxy and upstream on "
                         "--cpu-proxy, h2load on --cpu-load; both (default): one, then split")
    ap.add_argument("--h2-clients", type=int, default=10, help="h2load connections (default 10)")
    ap.add_argument("--h2-streams", type=int, default=10,
                    help="h2load concurrent streams per connection (default 10)")
    ap.add_argument("--scenarios", help="a subset of the rows (direct is always run): "
                                        + ", ".join(r.name for r in ROWS))
    ap.add_argument("--cpu-s", default="0", help="layout one: the CPU of everything (default 0)")
    ap.add_argument("--cpu-proxy", default="0", help="layout split: proxy and upstream (default 0)")
    ap.add_argument("--cpu-load", default="1", help="layout split: h2load (default 1)")
    ap.add_argument("--envoy", help="the envoy binary (bench/run.sh finds bench/.venv's)")
    ap.add_argument("--wasmgate", type=Path, default=REPO / "target" / "release" / "wasmgate")
    ap.add_argument("--upstream", type=Path, default=REPO / "target" / "release" / "bookstore-grpc",
                    help="the gRPC upstream (cargo build --release -p wasmgate-tests --bin "
                         "bookstore-grpc)")
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
    if args.write is None:
        args.write = not args.quick
    args.wasmgate = args.wasmgate.resolve()
    args.upstream = args.upstream.resolve()
    args.command = args.command or "python3 bench/grpc.py " + shlex.join(argv)
    if args.scenarios:
        wanted = {s.strip() for s in args.scenarios.split(",") if s.strip()} | {"direct"}
        unknown = wanted - set(ROW_BY_NAME)
        if unknown:
            ap.error(f"--scenarios: unknown {', '.join(sorted(unknown))}; choose from "
                     f"{', '.join(ROW_BY_NAME)}")
        args.rows = [r for r in ROWS if r.name in wanted]
    else:
        args.rows = list(ROWS)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rows: list[Row] = args.rows
    peers = {r.peer for r in rows}
    for path, how in ((args.wasmgate, "cargo build --release -p wasmgate --bin wasmgate"),
                      (args.upstream, "cargo build --release -p wasmgate-tests --bin bookstore-grpc")):
        if (path == args.wasmgate and "wasmgate" not in peers) or path.exists():
            continue
        raise B.BenchError(f"{path} is missing: build with `{how}` (bench/run.sh --mode G does)")
    layouts = []
    if args.layout in ("one", "both"):
        layouts.append(Layout("one", args.cpu_s, args.cpu_s))
    if args.layout in ("split", "both"):
        if args.cpu_proxy == args.cpu_load:
            raise B.BenchError("--layout split needs --cpu-proxy and --cpu-load to differ")
        layouts.append(Layout("split", args.cpu_proxy, args.cpu_load))
    for lay in layouts:
        for cpu in {lay.proxy_cpu, lay.load_cpu}:
            if int(cpu) not in os.sched_getaffinity(0):
                raise B.BenchError(f"CPU {cpu} is not available here "
                                   f"(have {sorted(os.sched_getaffinity(0))})")
    tools = B.Tools(
        nginx="nginx", haproxy="haproxy",
        envoy=B.find_tool("envoy", args.envoy) if "envoy" in peers else (args.envoy or "envoy"),
        wrk="wrk", wasmgate=args.wasmgate, filters_dir=Path("/nonexistent"),
        proxy_wasm=Path("/nonexistent"),
        h2load=B.find_tool("h2load", None), curl=B.find_tool("curl", None),
    )
    est = len(layouts) * len(rows) * (args.rounds * args.duration + args.warmup)
    print(f"mode G: layouts {', '.join(lay.key for lay in layouts)}; rows "
          f"{', '.join(r.name for r in rows)}; {args.rounds} rounds × {args.duration:g} s; "
          f"about {est / 60:.1f} min of load")

    procs = B.Procs()
    workdir = Path(tempfile.mkdtemp(prefix="wasmgate-bench-grpc-"))
    os.chmod(workdir, 0o755)
    (workdir / "request.bin").write_bytes(REQUEST)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ok = False
    try:
        results = [run_layout(lay, rows, args, tools, procs, workdir) for lay in layouts]
        text = section(args, results, versions(tools), when)
        print("\n" + text)
        if args.write:
            write_section(args.output, text)
            print(f"written to {args.output}")
        else:
            print(f"(not written to {args.output}; pass --write)")
        (workdir / "results.json").write_text(json.dumps({
            res.layout.key: {
                "answer_bytes": res.answer_bytes,
                "notes": res.notes,
                "samples": {name: [vars(g.sample) | {"raw": None, "data_bytes": g.data_bytes}
                                   for g in gs] for name, gs in res.samples.items()},
            } for res in results}, indent=1))
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
