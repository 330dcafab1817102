#!/usr/bin/env python3
"""Side-by-side benchmark of wasmgate against nginx, HAProxy and Envoy.

The method is the project's (shared/design/BENCHMARKING.md):

  mode S  CPU cost per request. Load generator, proxy and upstream all pinned
          to one CPU. cost = 1/T_proxy - 1/T_direct, per round, in µs.
  mode P  Throughput with the proxy owning a CPU: proxy on one CPU, load
          generator and upstream on the other.
  mode T  TLS termination and HTTP/2, pinned like mode S: HTTPS/1.1 (wrk),
          HTTP/2 over TLS and h2c (h2load), and a new TLS connection per
          request (wrk, `Connection: close`). Every TLS peer serves the same
          self-signed ECDSA P-256 certificate, generated into the work folder.
  mode B  Balancing, pinned like mode S: wasmgate, nginx and Envoy in front of
          1, 2 and 4 upstream endpoints (one nginx process each) under round
          robin, least request, consistent hashing on a header and random;
          then an endpoint killed (SIGKILL) under load, counting the errors
          the client sees.
  mode F  The first-party filters, pinned like mode S: each alone on a route
          doing its real work, with pooled and with fresh instances; the jwt
          filter against Envoy's `jwt_authn`; jwt + rate-limit + transform
          against Envoy's jwt_authn + local_ratelimit + header_mutation. The
          figure is the proxy's own CPU per request and its excess over the
          same proxy without filters. Keys and tokens are made at run time.
  mode H  Hot swap of a filter module through the admin API (gateway on one
          CPU, everything else on the other): time from an upload to the first
          request served by the new module (a small and a 6 MiB component, new
          bytes and bytes already compiled), requests/s at rest and while
          modules are swapped back and forth, resident memory across 200 swaps.
  mode C  Cache hits, pinned like mode S: wasmgate with its response cache on
          the route, against the same route uncached and against nginx's
          proxy_cache (its cache folder on tmpfs, /dev/shm: hits served from
          memory), on a path the upstream marks `public, max-age=3600`. Each
          cache is warmed with one request and must then answer a hit, or
          that row is reported and not measured.

In modes S, P and T every peer sits in front of the same upstream (nginx `return 200 "hello\\n"`,
one worker), with one worker/thread, logs off and HTTP/1.1 keep-alive to the
upstream. Peers are interleaved round-robin (A B C ... A B C ...); the peers
not being measured are frozen with SIGSTOP so their timers cannot steal the
CPU. Only 127.0.0.1 is ever contacted.

Standard library only. Normally started by bench/run.sh, which installs the
peers and builds wasmgate and the proxy-wasm filter first; see bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
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
# Mode F: JSON answers of the shared upstream (see start_upstream).
UPSTREAM_JSON = {
    "/json": '{"id":42,"name":"bench","debug":true,"items":[1,2,3],"meta":{"v":1}}',
    "/a.json": '{"user":"u-42","plan":"pro"}',
    "/b.json": '{"orders":[1,2,3],"total":3}',
}
# Mode C: the path every mode C row requests, which the upstream answers with
# a freshness lifetime of its own (no other mode requests it).
CACHE_PATH = "/cached"
CACHE_CONTROL = "public, max-age=3600"
CACHE_TMPFS = Path("/dev/shm")  # nginx's proxy_cache_path goes in a new folder here
NGINX_CACHE_ZONE = "bench"      # proxy_cache_path keys_zone=bench:10m
NGINX_CACHE_STATUS = "X-Cache-Status"  # add_header ... $upstream_cache_status
WASMGATE_CACHE_BYTES = "64MiB"  # [cache] max_bytes
WASMGATE_ROUTE_CACHE = "{}"     # the route's `cache = {}`: every default

MODE_ORDER = ["S", "P", "T", "B", "F", "C", "H"]
MARK_BEGIN = "<!-- bench:mode-{mode}:begin -->"
MARK_END = "<!-- bench:mode-{mode}:end -->"
# `--baseline`: every wasmgate scenario of these modes also runs with the
# baseline build, as NAME@base; such a run writes its own section,
# `mode-S-baseline`, right after the mode's own, which it leaves alone.
BASELINE_MODES = "SPF"
BASELINE_SUFFIX = "@base"
SECTION_ORDER = [k for m in MODE_ORDER for k in (m, f"{m}-baseline")]


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
    h2load: str = "h2load"    # mode T only
    curl: str = "curl"        # mode T only: the HTTP/2 pre-checks
    openssl: str | None = None  # mode T only: certificate and negotiation probe
    # `--baseline`: an older build run side by side (scenarios NAME@base).
    baseline: Path | None = None
    baseline_filters_dir: Path | None = None


# The one TLS 1.3 cipher suite every client offers in mode T (wrk and
# `openssl s_client` through OPENSSL_CONF, h2load and curl by flag), so every
# peer negotiates the same suite whatever its own preference order.
TLS13_SUITE = "TLS_AES_128_GCM_SHA256"


@dataclass
class TlsFiles:
    """One self-signed certificate for every TLS peer (mode T)."""
    cert: Path          # PEM, ECDSA P-256, SAN DNS:localhost and IP:127.0.0.1
    key: Path           # PEM, PKCS#8
    client_conf: Path   # OPENSSL_CONF for wrk and openssl s_client: TLS13_SUITE only
    made_by: str        # for the report


@dataclass
class Ctx:
    """What a peer needs to write its config and start."""
    tools: Tools
    procs: Procs
    workdir: Path
    upstream_port: int
    tls: TlsFiles | None = None
    endpoint_ports: list[int] = field(default_factory=list)  # mode B's endpoints
    values: dict[str, str] = field(default_factory=dict)  # mode F: fills `@@name@@` in configs
    cache_dir: Path | None = None  # mode C: a folder on tmpfs for nginx's proxy_cache_path


def make_tls_files(workdir: Path, openssl: str | None) -> TlsFiles:
    """A self-signed ECDSA P-256 certificate for localhost and 127.0.0.1, made
    with the openssl CLI if there is one, else with Python's `cryptography`."""
    cert, key = workdir / "bench-cert.pem", workdir / "bench-key.pem"
    if openssl:
        made = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "7", "-subj", "/CN=localhost",
             "-addext", f"subjectAltName=DNS:localhost,IP:{HOST}"],
            capture_output=True, text=True)
        if made.returncode != 0:
            raise BenchError(f"openssl req could not make the test certificate:\n{made.stderr}")
        made_by = "openssl req -x509 -newkey ec (P-256)"
    else:
        try:
            import ipaddress
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import NameOID
        except ImportError as e:
            raise BenchError("mode T needs the openssl CLI (Debian `openssl`) or Python's "
                             f"`cryptography` to make a test certificate ({e})") from None
        pkey = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = dt.datetime.now(dt.timezone.utc)
        built = (x509.CertificateBuilder()
                 .subject_name(name).issuer_name(name).public_key(pkey.public_key())
                 .serial_number(x509.random_serial_number())
                 .not_valid_before(now - dt.timedelta(minutes=5))
                 .not_valid_after(now + dt.timedelta(days=7))
                 .add_extension(x509.SubjectAlternativeName(
                     [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
                     critical=False)
                 .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                 .sign(pkey, hashes.SHA256()))
        cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(pkey.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        made_by = "Python cryptography (ECDSA P-256)"
    client_conf = workdir / "client-openssl.cnf"
    client_conf.write_text(f"""# OPENSSL_CONF of the TLS clients (wrk, openssl s_client) in mode T.
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Ciphersuites = {TLS13_SUITE}
""")
    return TlsFiles(cert, key, client_conf, made_by)


# Mode F: keys, tokens and credentials for the authentication filters, made
# into the work folder at run time (nothing secret is committed), with the
# openssl CLI if there is one, else with Python's `cryptography`.
JWT_ISSUER = "https://bench.wasmgate.test"
JWT_AUDIENCE = "bench"
JWT_LIFETIME = 86400       # seconds: `exp` is a day after the run starts
BASIC_USER = "bench"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _der_ecdsa_to_raw(der: bytes) -> bytes:
    """An ECDSA signature from DER (SEQUENCE of two INTEGERs, as openssl and
    `cryptography` give it) to JWS's r || s, 32 bytes each (RFC 7518 §3.4)."""
    if len(der) < 8 or der[0] != 0x30:
        raise BenchError("unexpected ECDSA signature encoding")
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        if der[i] != 0x02:
            raise BenchError("unexpected ECDSA signature encoding")
        n = der[i + 1]
        out += der[i + 2:i + 2 + n].lstrip(b"\x00").rjust(32, b"\x00")
        i += 2 + n
    return out


@dataclass
class FilterSecrets:
    """What mode F's filters verify: an RSA 2048 and a P-256 key pair, an
    HS256 secret, a token signed with each, and a Basic credential. `values`
    fills the `@@name@@` placeholders of scenario configs and headers."""
    values: dict[str, str]
    made_by: str


def make_filter_secrets(workdir: Path, openssl: str | None) -> FilterSecrets:
    now = int(time.time())
    claims = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": "bench-user",
              "iat": now, "exp": now + JWT_LIFETIME}

    def signing_input(alg: str, kid: str) -> bytes:
        head = _b64url(json.dumps({"alg": alg, "typ": "JWT", "kid": kid},
                                  separators=(",", ":")).encode())
        body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        return f"{head}.{body}".encode()

    rsa_key, ec_key = workdir / "jwt-rsa.pem", workdir / "jwt-ec.pem"
    ec_pub = workdir / "jwt-ec-pub.pem"
    rs_in, es_in = signing_input("RS256", "bench-rsa"), signing_input("ES256", "bench-ec")
    if openssl:
        def run(argv: list[str], data: bytes | None = None) -> bytes:
            done = subprocess.run([openssl, *argv], input=data, capture_output=True)
            if done.returncode != 0:
                raise BenchError(f"openssl {' '.join(argv)} failed:\n"
                                 f"{done.stderr.decode(errors='replace')}")
            return done.stdout
        run(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", str(rsa_key)])
        run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(ec_key)])
        ec_pub.write_bytes(run(["pkey", "-in", str(ec_key), "-pubout"]))
        text = run(["pkey", "-in", str(rsa_key), "-noout", "-text"]).decode()
        modulus = run(["rsa", "-in", str(rsa_key), "-noout", "-modulus"]).decode()
        n = int(modulus.strip().split("=", 1)[1], 16)
        m = re.search(r"publicExponent: (\d+)", text)
        if not m:
            raise BenchError(f"cannot read the RSA public exponent:\n{text[:500]}")
        e = int(m.group(1))
        rs_sig = run(["dgst", "-sha256", "-sign", str(rsa_key)], rs_in)
        es_sig = _der_ecdsa_to_raw(run(["dgst", "-sha256", "-sign", str(ec_key)], es_in))
        made_by = "openssl genpkey (RSA 2048, EC P-256), openssl dgst -sha256 -sign"
    else:
        try:
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
        except ImportError as e:
            raise BenchError("mode F needs the openssl CLI (Debian `openssl`) or Python's "
                             f"`cryptography` to make its keys and tokens ({e})") from None
        rsa_priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_priv = ec.generate_private_key(ec.SECP256R1())
        pkcs8 = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                 serialization.NoEncryption())
        rsa_key.write_bytes(rsa_priv.private_bytes(*pkcs8))
        ec_key.write_bytes(ec_priv.private_bytes(*pkcs8))
        ec_pub.write_bytes(ec_priv.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        numbers = rsa_priv.public_key().public_numbers()
        n, e = numbers.n, numbers.e
        rs_sig = rsa_priv.sign(rs_in, padding.PKCS1v15(), hashes.SHA256())
        es_sig = _der_ecdsa_to_raw(ec_priv.sign(es_in, ec.ECDSA(hashes.SHA256())))
        made_by = "Python cryptography (RSA 2048, EC P-256)"
    for f in (rsa_key, ec_key):
        os.chmod(f, 0o600)

    def int_bytes(x: int) -> bytes:
        return x.to_bytes((x.bit_length() + 7) // 8, "big")

    # One JWKS for wasmgate (`jwks_var`) and Envoy (`local_jwks`): the same key.
    jwks = json.dumps({"keys": [{"kty": "RSA", "kid": "bench-rsa", "use": "sig", "alg": "RS256",
                                 "n": _b64url(int_bytes(n)), "e": _b64url(int_bytes(e))}]},
                      separators=(",", ":"))
    jwks_file = workdir / "jwt-jwks.json"
    jwks_file.write_text(jwks)
    hs_secret = secrets.token_hex(32)   # 64 characters, used as bytes
    hs_file = workdir / "jwt-hs256.secret"
    hs_file.write_text(hs_secret)
    os.chmod(hs_file, 0o600)
    hs_in = signing_input("HS256", "bench-hs")
    hs_sig = hmac.new(hs_secret.encode(), hs_in, hashlib.sha256).digest()
    password, salt = secrets.token_urlsafe(24), secrets.token_hex(8)
    digest = hashlib.sha256((salt + password).encode()).hexdigest()

    def forged(signed: bytes, sig: bytes) -> str:
        """The same token with one signature bit flipped: must be refused."""
        return f"{signed.decode()}.{_b64url(bytes([sig[0] ^ 0x01]) + sig[1:])}"
    return FilterSecrets({
        "rs256": f"{rs_in.decode()}.{_b64url(rs_sig)}",
        "es256": f"{es_in.decode()}.{_b64url(es_sig)}",
        "hs256": f"{hs_in.decode()}.{_b64url(hs_sig)}",
        "rs256_forged": forged(rs_in, rs_sig),
        "es256_forged": forged(es_in, es_sig),
        "hs256_forged": forged(hs_in, hs_sig),
        "basic_forged": base64.b64encode(f"{BASIC_USER}:{password}x".encode()).decode(),
        "jwks": jwks,
        "jwks_file": str(jwks_file),
        "ec_pub_file": str(ec_pub),
        "hs_file": str(hs_file),
        "basic": base64.b64encode(f"{BASIC_USER}:{password}".encode()).decode(),
        "basic_digest": f"sha256:{salt}:{digest}",
    }, made_by)


_PLACEHOLDER = re.compile(r"@@(\w+)@@")


def fill(text: str, values: dict[str, str]) -> str:
    """Replaces `@@name@@` placeholders (mode F's keys and tokens)."""
    def one(m: re.Match) -> str:
        if m.group(1) not in values:
            raise BenchError(f"no value for @@{m.group(1)}@@ (mode F's secrets are made "
                             f"only when mode F runs)")
        return values[m.group(1)]
    return _PLACEHOLDER.sub(one, text)


def nginx_version(nginx: str) -> tuple[int, ...]:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


def nginx_listen(ctx: Ctx, port: int, listen: str) -> str:
    """The `listen` lines of a server block: "plain" (HTTP/1.1), "tls" (TLS
    with ALPN h2 and http/1.1) or "h2c" (cleartext HTTP/2, prior knowledge)."""
    if listen == "plain":
        return f"listen {HOST}:{port};"
    # nginx 1.25.1 moved HTTP/2 from a `listen` parameter to `http2 on;`.
    new_syntax = nginx_version(ctx.tools.nginx) >= (1, 25, 1)
    h2_param, h2_line = ("", "\n        http2 on;") if new_syntax else (" http2", "")
    if listen == "h2c":
        return f"listen {HOST}:{port}{h2_param};{h2_line}"
    if listen == "tls":
        assert ctx.tls is not None
        # nginx before 1.23.4 offers TLS 1.0-1.2 by default: name 1.2 and 1.3
        # like the other peers' defaults. Session tickets stay at their
        # default (on), as for the other peers.
        return (f"listen {HOST}:{port} ssl{h2_param};{h2_line}\n"
                f"        ssl_certificate {ctx.tls.cert};\n"
                f"        ssl_certificate_key {ctx.tls.key};\n"
                f"        ssl_protocols TLSv1.2 TLSv1.3;")
    raise ValueError(f"unknown listen kind {listen!r}")


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


def start_upstream(ctx: Ctx, port: int, cpu: str, tls_port: int | None = None,
                   status_port: int | None = None) -> Proc:
    """The shared upstream. With `tls_port` (mode T) the same server also listens
    there with TLS and HTTP/2, for the no-proxy TLS reference rows; the
    proxies always use the cleartext HTTP/1.1 port. With `status_port` (mode C)
    a second listener serves `stub_status`, to count the requests that reach
    the upstream (none, from a cache serving hits)."""
    tls = f"\n        {nginx_listen(ctx, tls_port, 'tls')}" if tls_port else ""
    # Mode F's extra locations (no other mode asks for these paths): JSON
    # documents for the transform JSON edit and the aggregate filter's two
    # backends, and /v2/, where the transform rows' rewritten requests land,
    # which echoes the request target and `x-gateway` so the pre-check can see
    # the path, query and header edits.
    json_locations = "\n".join(
        f"        location = {path} {{ default_type application/json; return 200 '{doc}'; }}"
        for path, doc in UPSTREAM_JSON.items())
    # Mode C's path (no other mode asks for it), `location = CACHE_PATH`: the
    # same "hello", which the upstream itself marks fresh for an hour, so a
    # shared cache stores it without a TTL of its own (nginx without
    # `proxy_cache_valid`, wasmgate without `default_ttl`). With `status_port`,
    # a second server: stub_status.
    status = f"""
    server {{
        listen {HOST}:{status_port};
        location / {{ stub_status; }}
    }}""" if status_port else ""
    body = nginx_common(ctx.workdir, "upstream") + f"""
http {{
{nginx_http_common(ctx.workdir, "upstream")}
    server {{
        listen {HOST}:{port};{tls}
        location / {{ return 200 "hello\\n"; }}
{json_locations}
        location /v2/ {{
            add_header x-seen-uri $request_uri always;
            add_header x-seen-gateway $http_x_gateway always;
            return 200 "hello\\n";
        }}
        location = {CACHE_PATH} {{
            add_header Cache-Control "{CACHE_CONTROL}" always;
            return 200 "hello\\n";
        }}
    }}{status}
}}
"""
    return start_nginx(ctx, "upstream", body, cpu)


def stub_status_requests(port: int) -> int:
    """Requests an nginx has served so far, from its `stub_status` listener,
    less the status request itself."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/")
        text = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"stub_status on {HOST}:{port} failed: {e}") from None
    finally:
        conn.close()
    m = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", text, re.M)
    if not m:
        raise BenchError(f"cannot parse stub_status on {HOST}:{port}:\n{text}")
    return int(m.group(3)) - 1


# --------------------------------------------------------------------------
# Mode B: several upstream endpoints, balancing algorithms, an endpoint kill.

USER_HEADER = "x-user"        # the consistent-hash key; wrk sends a varying one
UPSTREAM_ID_HEADER = "x-upstream"  # each endpoint names itself: e1, e2, ...
ENDPOINT_COUNTS = (2, 4)      # endpoints per balancing scenario (1 is the baseline)
MAX_ENDPOINTS = max(ENDPOINT_COUNTS)
KILL_VICTIM = 1               # the endpoint killed in the kill runs (e2), of KILL_ENDPOINTS
KILL_ENDPOINTS = 2
WRK_USERS = 1000              # distinct x-user values the wrk script cycles through
SPREAD_REQUESTS = 100         # GETs of the spread check before load


@dataclass(frozen=True)
class Balance:
    key: str       # in scenario names
    label: str     # in the table
    wasmgate: str  # `balance = ...` (with `hash_on` for ring_hash)
    nginx: str     # directive in `upstream {}` ("" = the default, round robin)
    envoy: str     # `lb_policy`


BALANCES = {b.key: b for b in [
    Balance("rr", "round robin", "round_robin", "", "ROUND_ROBIN"),
    Balance("lr", "least request", "least_request", "least_conn;", "LEAST_REQUEST"),
    Balance("hash", f"consistent hash on {USER_HEADER}", "ring_hash",
            f"hash $http_{USER_HEADER.replace('-', '_')} consistent;", "RING_HASH"),
    Balance("rand", "random", "random", "random;", "RANDOM"),
]}

# The kill runs' retry conditions. nginx has one setting for both:
# `proxy_next_upstream error timeout` retries a GET after a connect failure and
# after a connection that failed once the request was sent.
KILL_RETRY = {
    "connect": {"wasmgate": ["connect-failure", "refused-stream"],
                "envoy": "connect-failure,refused-stream"},
    "reset": {"wasmgate": ["connect-failure", "refused-stream", "reset"],
              "envoy": "connect-failure,refused-stream,reset"},
}
KILL_WHAT = {"connect": "connect failures", "reset": "connect failures and resets"}
KILL_EJECT_AFTER = 3       # consecutive connect failures that eject an endpoint
KILL_EJECT_SECONDS = 30    # for that long
KILL_MAX_EJECTED_PERCENT = 50  # wasmgate's default; Envoy's (10) would eject none of 2
# Retries in flight: both Envoy (circuit breaker `max_retries`) and wasmgate
# (retry budget: 20 % of requests in flight, at least `min_retry_concurrency`)
# allow 3 by default; nginx has no limit. The `*-cap10` kill runs lift it to
# the load's connection count, so that every request in flight may retry.
KILL_RETRY_CAP = 10


class Endpoints:
    """Mode B's upstream endpoints: one nginx each (one worker, pinned), on its
    own port, answering 200 "hello\\n" with `x-upstream: eN`, and a second
    listener with `stub_status` to count the requests each one served."""

    def __init__(self, ctx: Ctx, n: int, cpu: str) -> None:
        self.ctx, self.cpu = ctx, cpu
        ports = free_ports(2 * n)
        self.ports, self.status_ports = ports[:n], ports[n:]
        self.procs: list[Proc | None] = [None] * n

    def _conf(self, i: int) -> str:
        name = f"endpoint{i + 1}"
        return nginx_common(self.ctx.workdir, name) + f"""
http {{
{nginx_http_common(self.ctx.workdir, name)}
    server {{
        listen {HOST}:{self.ports[i]};
        location / {{
            add_header {UPSTREAM_ID_HEADER} e{i + 1} always;
            return 200 "hello\\n";
        }}
    }}
    server {{
        listen {HOST}:{self.status_ports[i]};
        location / {{ stub_status; }}
    }}
}}
"""

    def start(self, i: int) -> None:
        self.procs[i] = start_nginx(self.ctx, f"endpoint{i + 1}", self._conf(i), self.cpu)

    def start_all(self) -> None:
        for i in range(len(self.ports)):
            self.start(i)
        self.wait()

    def wait(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None:
                wait_listening(proc, self.ports[i])
                wait_listening(proc, self.status_ports[i])

    def kill(self, i: int) -> None:
        """SIGKILL to the endpoint's whole process group (master and worker)
        at once: no graceful close, as when a machine or container dies."""
        proc = self.procs[i]
        assert proc is not None
        try:
            os.killpg(proc.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.popen.wait()
        self.ctx.procs.stop(proc)  # no longer tracked
        self.procs[i] = None

    def ensure_up(self) -> None:
        """Restarts any endpoint that is down, and waits until all listen."""
        for i, proc in enumerate(self.procs):
            if proc is None or not proc.alive():
                if proc is not None:
                    self.ctx.procs.stop(proc)
                self.start(i)
        self.wait()

    def alive(self) -> list[Proc]:
        return [p for p in self.procs if p is not None]

    def counts(self) -> list[int]:
        """Requests each endpoint has served so far (stub_status), less the
        status request itself."""
        return [stub_status_requests(port) for port in self.status_ports]


def endpoint_ports(ctx: Ctx, opts: dict) -> list[int]:
    """The upstream addresses a peer balances over: mode B's first
    `opts["endpoints"]` endpoints, else the one shared upstream."""
    n = opts.get("endpoints")
    if not n:
        return [ctx.upstream_port]
    if len(ctx.endpoint_ports) < n:
        raise BenchError(f"{n} endpoints asked for, {len(ctx.endpoint_ports)} running")
    return ctx.endpoint_ports[:n]


def peer_nginx(ctx: Ctx, name: str, port: int, cpu: str, opts: dict) -> Proc:
    # Mode B: the balancing directive must come before `keepalive`. The kill
    # runs set passive health like the others' (KILL_EJECT_AFTER failures take
    # a server out for KILL_EJECT_SECONDS) and one retry to the next server
    # (`proxy_next_upstream error timeout` is nginx's default).
    balance = BALANCES[opts.get("balance", "rr")].nginx
    kill = opts.get("kill")
    fails = f" max_fails={KILL_EJECT_AFTER} fail_timeout={KILL_EJECT_SECONDS}s" if kill else ""
    servers = "\n        ".join(f"server {HOST}:{p}{fails};" for p in endpoint_ports(ctx, opts))
    lead = f"{balance}\n        " if balance else ""
    retry = ("\n            proxy_next_upstream error timeout;"
             "\n            proxy_next_upstream_tries 2;") if kill else ""
    # Mode C: proxy_cache in a folder on tmpfs (hits read from memory), the
    # upstream's Cache-Control deciding freshness (no proxy_cache_valid);
    # `use_temp_path=off` writes a miss's answer straight into that folder.
    cache_path = cache = ""
    if opts.get("cache"):
        if ctx.cache_dir is None:
            raise BenchError(f"{name}: proxy_cache needs a folder on tmpfs (mode C)")
        cache_path = (f"\n    proxy_cache_path {ctx.cache_dir / name} keys_zone={NGINX_CACHE_ZONE}:10m "
                      f"use_temp_path=off;")
        cache = (f"\n            proxy_cache {NGINX_CACHE_ZONE};"
                 f"\n            proxy_cache_lock on;"
                 f"\n            add_header {NGINX_CACHE_STATUS} $upstream_cache_status;")
    body = nginx_common(ctx.workdir, name) + f"""
http {{
{nginx_http_common(ctx.workdir, name)}{cache_path}
    upstream up {{
        {lead}{servers}
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        {nginx_listen(ctx, port, opts.get("listen", "plain"))}
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";{retry}{cache}
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


def envoy_native_filters(ctx: Ctx, opts: dict) -> list[dict]:
    """Mode F: Envoy's own HTTP filters doing what wasmgate's jwt, rate-limit
    and transform filters do in the same scenarios, in the same order.
    - `jwt`: `jwt_authn` with one provider verifying RS256 tokens against the
      same JWKS as wasmgate's (inline, `local_jwks`), checking issuer,
      audience and expiry like wasmgate's config; `forward: true` keeps the
      token in the request as wasmgate does by default; no `jwt_cache_config`,
      so, as in wasmgate, every request's signature is verified.
    - `ratelimit`: `local_ratelimit`, one token bucket of RATE_LIMIT per
      second, enabled and enforced on every request, with the
      `x-ratelimit-*` headers (draft 03) on every answer, as wasmgate's filter
      adds `RateLimit-*`.
    - `mutate`: `header_mutation`: the request headers, query parameters and
      response header that TRANSFORM_CFG edits (the path edit is the route's
      `prefix_rewrite`, see peer_envoy: Envoy rewrites paths in the router)."""
    out = []
    if opts.get("jwt"):
        out.append({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3."
                         "JwtAuthentication",
                "providers": {"bench": {
                    "issuer": JWT_ISSUER,
                    "audiences": [JWT_AUDIENCE],
                    "local_jwks": {"inline_string": fill("@@jwks@@", ctx.values)},
                    "forward": True,
                }},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
            },
        })
    if opts.get("ratelimit"):
        full = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
        out.append({
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3."
                         "LocalRateLimit",
                "stat_prefix": "bench_rate_limit",
                "token_bucket": {"max_tokens": RATE_LIMIT, "tokens_per_fill": RATE_LIMIT,
                                 "fill_interval": "1s"},
                "filter_enabled": {"runtime_key": "bench_rl_enabled", **full},
                "filter_enforced": {"runtime_key": "bench_rl_enforced", **full},
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            },
        })
    if opts.get("mutate"):
        def put(key: str, value: str) -> dict:
            return {"append": {"header": {"key": key, "value": value},
                               "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}
        out.append({
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3."
                         "HeaderMutation",
                "mutations": {
                    "request_mutations": [{"remove": "x-debug"}, put("x-gateway", "wasmgate")],
                    "query_parameter_mutations": [
                        {"remove": "debug"},
                        {"append": {"record": {"key": "source", "value": "gateway"},
                                    "action": "OVERWRITE_IF_EXISTS_OR_ADD"}},
                    ],
                    "response_mutations": [put(SERVED_BY[0], SERVED_BY[1])],
                },
            },
        })
    return out


def peer_envoy(ctx: Ctx, name: str, port: int, cpu: str, opts: dict) -> Proc:
    http_filters = envoy_native_filters(ctx, opts)
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
    listen = opts.get("listen", "plain")
    # TLS and h2c listeners let the connection manager pick the codec (ALPN,
    # or the HTTP/2 preface in cleartext); the plain one stays HTTP/1 only,
    # as in modes S and P.
    codec = "HTTP1" if listen == "plain" else "AUTO"
    balance = BALANCES[opts.get("balance", "rr")]
    route: dict = {"cluster": "upstream"}
    if balance.key == "hash":
        route["hash_policy"] = [{"header": {"header_name": USER_HEADER}}]
    kill = opts.get("kill")
    if kill:
        # One retry, to another endpoint (wasmgate and nginx never retry on
        # the endpoint that just failed), on the conditions of KILL_RETRY.
        route["retry_policy"] = {
            "retry_on": KILL_RETRY[kill]["envoy"],
            "num_retries": 1,
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host."
                                          "previous_hosts.v3.PreviousHostsPredicate"},
            }],
            "host_selection_retry_max_attempts": "5",
        }
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
                        "codec_type": codec,
                        "route_config": {
                            "name": "local",
                            "virtual_hosts": [{
                                "name": "all", "domains": ["*"],
                                "routes": ([{"match": {"prefix": "/api/"},
                                             "route": {**route, "prefix_rewrite": "/v2/"}}]
                                           if opts.get("mutate") else [])
                                          + [{"match": {"prefix": "/"}, "route": route}],
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
                "lb_policy": balance.envoy,
                "load_assignment": {
                    "cluster_name": "upstream",
                    "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": {
                            "socket_address": {"address": HOST, "port_value": p},
                        }}} for p in endpoint_ports(ctx, opts)]}],
                },
            }],
        },
    }
    if kill:
        # Connect failures are counted apart from 5xx answers (otherwise
        # they count towards consecutive_5xx, 5) and eject like wasmgate's
        # consecutive_connect_failures. Envoy's default max_ejection_percent,
        # 10, ejects nothing out of 2 hosts (`ejections_overflow`); 50 is
        # wasmgate's default max_ejected_percent.
        config["static_resources"]["clusters"][0]["outlier_detection"] = {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": KILL_EJECT_AFTER,
            "base_ejection_time": f"{KILL_EJECT_SECONDS}s",
            "max_ejection_percent": KILL_MAX_EJECTED_PERCENT,
        }
        if opts.get("retry_cap"):
            config["static_resources"]["clusters"][0]["circuit_breakers"] = {
                "thresholds": [{"priority": "DEFAULT", "max_retries": opts["retry_cap"]}]}
    if listen == "tls":
        assert ctx.tls is not None
        chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                         "DownstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_certificates": [{
                        "certificate_chain": {"filename": str(ctx.tls.cert)},
                        "private_key": {"filename": str(ctx.tls.key)},
                    }],
                },
            },
        }
    conf = ctx.workdir / f"{name}.json"
    conf.write_text(json.dumps(config, indent=2))
    return ctx.procs.start(name, [ctx.tools.envoy, "-c", str(conf), "--concurrency", "1",
                                  "--disable-hot-restart", "-l", "warn"], cpu, ctx.workdir)


def wasmgate_toml(ctx: Ctx, port: int, chain: list[tuple[str, str]],
                  filter_keys: dict[str, str] | None = None, listen: str = "plain",
                  opts: dict | None = None) -> str:
    """`chain` is [(filter name, inline TOML table of its config)];
    `filter_keys` are extra `[filters.NAME]` keys (TOML values) for every filter;
    `listen` "tls" adds `[server.tls]` (ALPN h2 and http/1.1 are built in). The
    cleartext listener serves h2c by prior knowledge as it is. `opts` (mode B)
    may name `endpoints`, `balance` and `kill`; (mode F) `filter_extra`, extra
    `[filters.NAME]` keys per filter name (`{"jwt": {"vars": "{ ... }"}}`).
    `@@name@@` placeholders anywhere are filled from `ctx.values`."""
    opts = opts or {}
    _, filters_dir = wasmgate_build(ctx, opts)
    lines = ["[server]", f'listen = "{HOST}:{port}"', "workers = 1", ""]
    if listen == "tls":
        assert ctx.tls is not None
        lines += ["[server.tls]", "", "[[server.tls.certificates]]",
                  f'cert = "{ctx.tls.cert}"', f'key = "{ctx.tls.key}"', ""]
    lines += ["[access_log]", "enabled = false", ""]
    if opts.get("cache"):
        # Mode C: the response cache (in memory), on the one route below.
        lines += ["[cache]", f'max_bytes = "{WASMGATE_CACHE_BYTES}"', ""]
    for fname in sorted({f for f, _ in chain}):
        wasm = filters_dir / f"{fname.replace('-', '_')}.wasm"
        lines += [f"[filters.{fname}]", f'path = "{wasm}"']
        lines += [f"{k} = {v}" for k, v in (filter_keys or {}).items()]
        lines += [f"{k} = {v}" for k, v in opts.get("filter_extra", {}).get(fname, {}).items()]
        if fname == "aggregate":
            # Outbound calls need a grant (none by default).
            lines.append('outbound_clusters = ["upstream"]')
        lines.append("")
    addrs = ", ".join(f'"{HOST}:{p}"' for p in endpoint_ports(ctx, opts))
    lines += ["[clusters.upstream]", f"endpoints = [{addrs}]"]
    if "balance" in opts:
        balance = BALANCES[opts["balance"]]
        lines.append(f'balance = "{balance.wasmgate}"')
        if balance.key == "hash":
            lines.append(f'hash_on = "header:{USER_HEADER}"')
    lines.append("")
    if opts.get("kill"):
        on = ", ".join(f'"{c}"' for c in KILL_RETRY[opts["kill"]]["wasmgate"])
        # Every row states its cap: Envoy's default (3) unless the row lifts
        # it (wasmgate's own default is now 10).
        cap = [f"min_retry_concurrency = {opts.get('retry_cap') or 3}"]
        lines += ["[clusters.upstream.retry]", "retries = 1", f"on = [{on}]", *cap, "",
                  "[clusters.upstream.outlier]",
                  f"consecutive_connect_failures = {KILL_EJECT_AFTER}",
                  f'base_ejection = "{KILL_EJECT_SECONDS}s"', ""]
    lines += ["[[routes]]", 'name = "all"', 'path_prefix = "/"', 'cluster = "upstream"']
    if opts.get("cache"):
        lines.append(f"cache = {WASMGATE_ROUTE_CACHE}")
    lines.append("")
    for fname, config in chain:
        lines += ["  [[routes.filters]]", f'  name = "{fname}"', f"  config = {config}", ""]
    return fill("\n".join(lines), ctx.values)


def wasmgate_build(ctx: Ctx, opts: dict) -> tuple[Path, Path]:
    """The binary and the filters directory a wasmgate scenario runs: the
    build under test, or with `opts["baseline"]` (the NAME@base scenarios) the
    `--baseline` build, given the same config otherwise."""
    if opts.get("baseline"):
        assert ctx.tools.baseline is not None and ctx.tools.baseline_filters_dir is not None
        return ctx.tools.baseline, ctx.tools.baseline_filters_dir
    return ctx.tools.wasmgate, ctx.tools.filters_dir


def peer_wasmgate(ctx: Ctx, name: str, port: int, cpu: str, opts: dict) -> Proc:
    binary, _ = wasmgate_build(ctx, opts)
    conf = ctx.workdir / f"{name}.toml"
    conf.write_text(wasmgate_toml(ctx, port, opts.get("chain", []), opts.get("filter_keys"),
                                  opts.get("listen", "plain"), opts))
    # Checked by the binary that will run it (the baseline's own for NAME@base).
    check = subprocess.run([str(binary), "check", "--config", str(conf)],
                           capture_output=True, text=True, env={**os.environ, "WASMGATE_LOG": "warn"})
    if check.returncode != 0:
        raise BenchError(f"wasmgate check rejected {conf}:\n{check.stdout}{check.stderr}")
    # One worker thread (`workers = 1`; TOKIO_WORKER_THREADS too, for builds
    # that predate the key), and taskset keeps every thread (worker, blocking
    # pool, epoch ticker, log writer) on `cpu`.
    env = {"WASMGATE_LOG": "warn", "TOKIO_WORKER_THREADS": "1"}
    if opts.get("listen") == "tls":
        # wrk sends the IP address as SNI, and rustls logs a warning about it
        # for every connection (one line per request with `Connection: close`);
        # nginx and Envoy ignore it silently.
        env["WASMGATE_LOG"] = "warn,rustls=error"
    return ctx.procs.start(name, [str(binary), "serve", "--config", str(conf)],
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
    scheme: str = "http"           # "https": the peer listens with TLS (opts listen="tls")
    path: str = "/"
    modes: str = "SP"              # the modes it runs in
    close: bool = False            # `Connection: close`: a new connection per request
    protocol: str = "HTTP/1.1"     # shown in mode T's table
    # Mode F. `headers` are sent with every request (wrk's and the checks'),
    # beside the API key; `@@name@@` is filled from the run's FilterSecrets.
    # A request "without the key" (auth) sends none of them.
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = UPSTREAM_BODY  # the body the check expects (None: `check` judges)
    check: Callable[[dict[str, str], bytes], str | None] | None = None  # error or None
    base: str | None = None        # the same proxy without filters: "extra" is over it
    forged: dict[str, str] = field(default_factory=dict)  # these headers instead: must get 401
    frow: str | None = None        # mode F: its row in the per-filter table


# Mode T: every peer listens with TLS (ALPN h2 + http/1.1) or h2c and forwards
# over cleartext HTTP/1.1 keep-alive to the same upstream as ever.
TLS = {"listen": "tls"}
H2C = {"listen": "h2c"}
P_HTTPS = "HTTPS/1.1"
P_H2 = "h2 over TLS"
P_H2C = "h2c"
P_NEWCONN = "HTTPS/1.1, new connection per request"


SCENARIOS: list[Scenario] = [
    # The cleartext baseline of every mode: wrk straight at the upstream.
    Scenario("direct", "direct (no proxy)", None, modes="SPTBFC"),
    Scenario("nginx", "nginx", "nginx", ref="wasmgate", modes="SPC", base="nginx"),
    Scenario("haproxy", "HAProxy", "haproxy", ref="wasmgate"),
    Scenario("envoy", "Envoy", "envoy", ref="wasmgate", modes="SPF", base="envoy"),
    Scenario("wasmgate", "wasmgate", "wasmgate", ref="wasmgate", modes="SPFC", base="wasmgate"),
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

    # Mode T. `direct-*` rows: the load generator straight at the upstream
    # nginx over TLS (no proxy), for scale.
    Scenario("direct-https", "direct (no proxy), nginx serving TLS", None, scheme="https",
             modes="T", protocol=P_HTTPS),
    Scenario("nginx-https", "nginx", "nginx", TLS, scheme="https", modes="T",
             protocol=P_HTTPS, ref="wasmgate-https"),
    Scenario("envoy-https", "Envoy", "envoy", TLS, scheme="https", modes="T",
             protocol=P_HTTPS, ref="wasmgate-https"),
    Scenario("wasmgate-https", "wasmgate", "wasmgate", TLS, scheme="https", modes="T",
             protocol=P_HTTPS, ref="wasmgate-https"),
    Scenario("envoy-wasm-https", "Envoy + proxy-wasm (api-key + header, V8)", "envoy",
             {**TLS, "wasm": True}, auth=True, expect_headers=dict([SERVED_BY]),
             scheme="https", modes="T", protocol=P_HTTPS, ref="wasmgate-2f-https"),
    Scenario("wasmgate-2f-https", "wasmgate + api-key + headers", "wasmgate",
             {**TLS, "chain": [("api-key", API_KEY_CFG), ("headers", SERVED_BY_CFG)]},
             auth=True, expect_headers=dict([SERVED_BY]), scheme="https", modes="T",
             protocol=P_HTTPS, ref="wasmgate-2f-https"),

    Scenario("direct-h2", "direct (no proxy), nginx serving TLS", None, load="h2load",
             scheme="https", modes="T", protocol=P_H2),
    Scenario("nginx-h2", "nginx", "nginx", TLS, load="h2load", scheme="https", modes="T",
             protocol=P_H2, ref="wasmgate-h2"),
    Scenario("envoy-h2", "Envoy", "envoy", TLS, load="h2load", scheme="https", modes="T",
             protocol=P_H2, ref="wasmgate-h2"),
    Scenario("wasmgate-h2", "wasmgate", "wasmgate", TLS, load="h2load", scheme="https",
             modes="T", protocol=P_H2, ref="wasmgate-h2"),
    Scenario("envoy-wasm-h2", "Envoy + proxy-wasm (api-key + header, V8)", "envoy",
             {**TLS, "wasm": True}, auth=True, expect_headers=dict([SERVED_BY]), load="h2load",
             scheme="https", modes="T", protocol=P_H2, ref="wasmgate-2f-h2"),
    Scenario("wasmgate-2f-h2", "wasmgate + api-key + headers", "wasmgate",
             {**TLS, "chain": [("api-key", API_KEY_CFG), ("headers", SERVED_BY_CFG)]},
             auth=True, expect_headers=dict([SERVED_BY]), load="h2load", scheme="https",
             modes="T", protocol=P_H2, ref="wasmgate-2f-h2"),

    Scenario("nginx-h2c", "nginx", "nginx", H2C, load="h2load", modes="T", protocol=P_H2C,
             ref="wasmgate-h2c"),
    Scenario("envoy-h2c", "Envoy", "envoy", H2C, load="h2load", modes="T", protocol=P_H2C,
             ref="wasmgate-h2c"),
    Scenario("wasmgate-h2c", "wasmgate", "wasmgate", H2C, load="h2load", modes="T",
             protocol=P_H2C, ref="wasmgate-h2c"),

    Scenario("direct-newconn", "direct (no proxy), nginx serving TLS", None, scheme="https",
             close=True, modes="T", protocol=P_NEWCONN),
    Scenario("nginx-newconn", "nginx", "nginx", TLS, scheme="https", close=True, modes="T",
             protocol=P_NEWCONN, ref="wasmgate-newconn"),
    Scenario("envoy-newconn", "Envoy", "envoy", TLS, scheme="https", close=True, modes="T",
             protocol=P_NEWCONN, ref="wasmgate-newconn"),
    Scenario("wasmgate-newconn", "wasmgate", "wasmgate", TLS, scheme="https", close=True,
             modes="T", protocol=P_NEWCONN, ref="wasmgate-newconn"),
]

# Mode B. Throughput: each balancing peer over 1 endpoint (the baseline), then
# every algorithm over 2 and 4, interleaved peer by peer; `direct` is wrk
# straight at endpoint e1. Kill runs: round robin over 2 endpoints, e2 killed
# under load; "connect" retries after connect failures only, "reset" also
# after a connection that failed once the request was sent (nginx's
# `proxy_next_upstream error` does both, so nginx has one row); rows cap
# retries in flight at 3 (Envoy's default) unless `retry_cap` lifts it to
# KILL_RETRY_CAP, as nginx has none. wasmgate's defaults since this harness
# was written are the "reset" conditions with a cap of 10: the last row.
B_PEERS = [("nginx", "nginx"), ("envoy", "Envoy"), ("wasmgate", "wasmgate")]
SCENARIOS += [Scenario(f"{peer}-rr1", label, peer, {"endpoints": 1, "balance": "rr"},
                       modes="B", ref="wasmgate-rr1") for peer, label in B_PEERS]
SCENARIOS += [Scenario(f"{peer}-{b}{n}", label, peer, {"endpoints": n, "balance": b},
                       modes="B", ref=f"wasmgate-{b}{n}")
              for b in BALANCES for n in ENDPOINT_COUNTS for peer, label in B_PEERS]
SCENARIOS += [
    Scenario("kill-nginx", "nginx", "nginx",
             {"endpoints": KILL_ENDPOINTS, "balance": "rr", "kill": "reset"}, modes="B"),
    Scenario("kill-envoy", "Envoy", "envoy",
             {"endpoints": KILL_ENDPOINTS, "balance": "rr", "kill": "connect"}, modes="B"),
    Scenario("kill-wasmgate", "wasmgate", "wasmgate",
             {"endpoints": KILL_ENDPOINTS, "balance": "rr", "kill": "connect"}, modes="B"),
    Scenario("kill-envoy-reset", "Envoy", "envoy",
             {"endpoints": KILL_ENDPOINTS, "balance": "rr", "kill": "reset"}, modes="B"),
    Scenario("kill-wasmgate-reset", "wasmgate", "wasmgate",
             {"endpoints": KILL_ENDPOINTS, "balance": "rr", "kill": "reset"}, modes="B"),
    Scenario("kill-envoy-reset-cap10", "Envoy", "envoy",
             {"endpoints": KILL_ENDPOINTS, "balance": "rr", "kill": "reset",
              "retry_cap": KILL_RETRY_CAP}, modes="B"),
    Scenario("kill-wasmgate-reset-cap10", "wasmgate", "wasmgate",
             {"endpoints": KILL_ENDPOINTS, "balance": "rr", "kill": "reset",
              "retry_cap": KILL_RETRY_CAP}, modes="B"),
]


# Mode F: every first-party filter alone on the route, with a config that
# makes it do its real work on every request and let it through, once with
# pooled instances (the default) and once with `isolation = "fresh"`; the jwt
# filter against Envoy's native `jwt_authn` on the same RS256 token and key;
# and a 3-filter chain (jwt + rate-limit + transform) against Envoy's
# jwt_authn + local_ratelimit + header_mutation. Pinned like mode S; the
# figure is the proxy's own CPU time per request, and its excess over the same
# proxy without filters measured in the same round.

RATE_LIMIT = 1_000_000     # requests per second: never refused at these rates
ORIGIN = "https://app.example.com"
JWT_CHECKS = f'issuer = "{JWT_ISSUER}", audiences = ["{JWT_AUDIENCE}"]'
# Every jwt row's `[filters.jwt] vars`: the JWKS (RS256), the P-256 public key
# (ES256) and the HS256 secret, all files in the work folder.
JWT_VARS = ('{ jwks = { file = "@@jwks_file@@" }, ec = { file = "@@ec_pub_file@@" }, '
            'hs = { file = "@@hs_file@@" } }')
JWT_FILTER_EXTRA = {"jwt": {"vars": JWT_VARS}}
JWT_CFG = {
    "rs256": f'{{ jwks_var = "jwks", {JWT_CHECKS} }}',
    "es256": f'{{ keys = [{{ kid = "bench-ec", alg = "ES256", pem_var = "ec" }}], {JWT_CHECKS} }}',
    "hs256": f'{{ keys = [{{ kid = "bench-hs", alg = "HS256", secret_var = "hs" }}], {JWT_CHECKS} }}',
}
RATE_LIMIT_CFG = f'{{ requests = {RATE_LIMIT}, per = "second" }}'
HEADERS_CFG = ('{ request = { remove = ["x-debug"], set = { "x-gateway" = "wasmgate" }, '
               'append = { "x-via" = "wasmgate" } }, response = { remove = ["x-powered-by"], '
               'set = { "x-served-by" = "wasmgate-bench" }, append = { "x-bench" = "1" } } }')
# What envoy_native_filters' header_mutation and prefix_rewrite also do.
TRANSFORM_CFG = ('{ request = { headers = { remove = ["x-debug"], set = { "x-gateway" = "wasmgate" } }, '
                 'path = { strip_prefix = "/api", add_prefix = "/v2" }, '
                 'query = { remove = ["debug"], set = { source = "gateway" } } }, '
                 'response = { headers = { set = { "x-served-by" = "wasmgate-bench" } } } }')
TRANSFORM_PATH = "/api/items?debug=1&page=2"
TRANSFORM_JSON_CFG = ('{ response = { json = { remove = ["/debug"], '
                      'set = { "/meta/gateway" = "wasmgate" } } } }')
CORS_CFG = (f'{{ origins = ["{ORIGIN}"], methods = ["GET", "POST"], '
            'headers = ["authorization", "content-type"], expose_headers = ["x-request-id"], '
            'credentials = true }')
AGGREGATE_CFG = ('{ backends = [{ cluster = "upstream", path = "/a.json", key = "a", timeout_ms = 500 }, '
                 '{ cluster = "upstream", path = "/b.json", key = "b", timeout_ms = 500 }] }')
BEARER = {alg: {"authorization": f"Bearer @@{alg}@@"} for alg in ("rs256", "es256", "hs256")}
FORGED = {alg: {"authorization": f"Bearer @@{alg}_forged@@"} for alg in ("rs256", "es256", "hs256")}


def _check_transformed(h: dict[str, str], _body: bytes) -> str | None:
    """The upstream's /v2/ location echoes what it received: the path
    rewritten, `debug` removed and `source` set (in any order), x-gateway set."""
    path, _, query = h.get("x-seen-uri", "").partition("?")
    if path != "/v2/items" or sorted(query.split("&")) != ["page=2", "source=gateway"]:
        return f"the upstream saw {h.get('x-seen-uri')!r}, not /v2/items?page=2&source=gateway"
    if h.get("x-seen-gateway") != "wasmgate":
        return f"the upstream saw x-gateway {h.get('x-seen-gateway')!r}, not 'wasmgate'"
    if h.get(SERVED_BY[0]) != SERVED_BY[1]:
        return f"no {SERVED_BY[0]}: {SERVED_BY[1]} on the response"
    return None


def _check_headers_edited(h: dict[str, str], _body: bytes) -> str | None:
    if h.get("x-seen-gateway") != "wasmgate":
        return f"the upstream saw x-gateway {h.get('x-seen-gateway')!r}, not 'wasmgate'"
    if h.get(SERVED_BY[0]) != SERVED_BY[1] or h.get("x-bench") != "1":
        return "the response lacks x-served-by or x-bench"
    return None


def _check_rate_limited(h: dict[str, str], _body: bytes) -> str | None:
    if "ratelimit-limit" not in h and "x-ratelimit-limit" not in h:
        return "no RateLimit-Limit (or X-RateLimit-Limit) header: the rate limit did not run"
    return None


def _check_json_edited(_h: dict[str, str], body: bytes) -> str | None:
    want = json.loads(UPSTREAM_JSON["/json"])
    del want["debug"]
    want["meta"]["gateway"] = "wasmgate"
    try:
        got = json.loads(body)
    except ValueError:
        return "the body is not JSON"
    return None if got == want else f"the JSON body is {got}, expected {want}"


def _check_aggregated(h: dict[str, str], body: bytes) -> str | None:
    want = {"a": json.loads(UPSTREAM_JSON["/a.json"]), "b": json.loads(UPSTREAM_JSON["/b.json"])}
    try:
        got = json.loads(body)
    except ValueError:
        return "the body is not JSON"
    if got != want or h.get("x-aggregate-completed") == "false":
        return f"the merged answer is {got}, expected {want}"
    return None


def _check_chain(h: dict[str, str], body: bytes) -> str | None:
    return _check_transformed(h, body) or _check_rate_limited(h, body)


F_WHAT: dict[str, str] = {}   # frow -> the config in words, for the report


def f_rows(key: str, label: str, chain: list[tuple[str, str]], what: str,
           extra: dict | None = None, fresh: bool = True, **kw) -> list[Scenario]:
    """wasmgate with `chain` on its route, pooled, and (with `fresh`) again
    with `isolation = "fresh"` on every filter of it."""
    F_WHAT[key] = what
    opts = {"chain": chain, "filter_extra": extra or {}}
    kw.setdefault("base", "wasmgate")
    out = [Scenario(f"wasmgate-{key}", f"wasmgate + {label}", "wasmgate", opts,
                    modes="F", frow=key, **kw)]
    if fresh:
        out.append(Scenario(f"wasmgate-{key}-fresh", f"wasmgate + {label}, fresh instance per call",
                            "wasmgate", {**opts, "filter_keys": {"isolation": '"fresh"'}},
                            modes="F", frow=key, **kw))
    return out


SCENARIOS += [
    # The no-filter references of the JSON rows: the same upstream answer.
    Scenario("wasmgate-json", "wasmgate, GET /json", "wasmgate", path="/json",
             body=UPSTREAM_JSON["/json"].encode(), modes="F", base="wasmgate-json"),
    *f_rows("api-key", "api-key", [("api-key", API_KEY_CFG)],
            f"`{API_KEY_CFG}`; every request carries `{API_KEY_HEADER}: {API_KEY}`", auth=True),
    *f_rows("basic-auth", "basic-auth", [("basic-auth", '{ users = { bench = "@@basic_digest@@" } }')],
            '`{ users = { bench = "sha256:<salt>:<hex>" } }` (a salted SHA-256 digest made at run '
            "time; `hide_credentials` and `user_header` at their defaults: the `Authorization` "
            "header is removed and `x-authenticated-user` set); `Authorization: Basic …` "
            "with the matching password", headers={"authorization": "Basic @@basic@@"}, auth=True,
            forged={"authorization": "Basic @@basic_forged@@"}),
    *f_rows("rate-limit", "rate-limit", [("rate-limit", RATE_LIMIT_CFG)],
            f"`{RATE_LIMIT_CFG}` (key: the client IP, the default; never refuses here)",
            check=_check_rate_limited),
    *f_rows("headers", "headers", [("headers", HEADERS_CFG)],
            f"`{HEADERS_CFG}`; requests carry `x-debug: 1`, to `/v2/headers`",
            headers={"x-debug": "1"}, path="/v2/headers", check=_check_headers_edited),
    *f_rows("transform", "transform (headers, path, query)", [("transform", TRANSFORM_CFG)],
            f"`{TRANSFORM_CFG}`; requests `GET {TRANSFORM_PATH}` with `x-debug: 1`, forwarded as "
            "`/v2/items?page=2&source=gateway`", headers={"x-debug": "1"}, path=TRANSFORM_PATH,
            check=_check_transformed),
    *f_rows("transform-json", "transform (response JSON edit)",
            [("transform", TRANSFORM_JSON_CFG)],
            f"`{TRANSFORM_JSON_CFG}` on `GET /json` (a 71-byte `application/json` answer, read "
            "whole, edited and written again); extra cost over `wasmgate, GET /json`",
            path="/json", body=None, check=_check_json_edited, base="wasmgate-json"),
    *f_rows("cors", "cors (actual request)", [("cors", CORS_CFG)],
            f"`{CORS_CFG}`; every request a GET with `Origin: {ORIGIN}` (not a preflight)",
            headers={"origin": ORIGIN}, expect_headers={"access-control-allow-origin": ORIGIN}),
    *f_rows("jwt-rs256", "jwt (RS256)", [("jwt", JWT_CFG["rs256"])],
            f"`{JWT_CFG['rs256']}`, the JWKS (one RSA 2048 key) from a `vars` file; "
            "`Authorization: Bearer` an RS256 token", extra=JWT_FILTER_EXTRA,
            headers=BEARER["rs256"], auth=True, forged=FORGED["rs256"]),
    *f_rows("jwt-es256", "jwt (ES256)", [("jwt", JWT_CFG["es256"])],
            f"`{JWT_CFG['es256']}`, the P-256 public key PEM from a `vars` file; an ES256 token",
            extra=JWT_FILTER_EXTRA, headers=BEARER["es256"], auth=True, forged=FORGED["es256"]),
    *f_rows("jwt-hs256", "jwt (HS256)", [("jwt", JWT_CFG["hs256"])],
            f"`{JWT_CFG['hs256']}`, a 64-byte secret from a `vars` file; an HS256 token",
            extra=JWT_FILTER_EXTRA, headers=BEARER["hs256"], auth=True, forged=FORGED["hs256"]),
    *f_rows("aggregate", "aggregate (2 backends)", [("aggregate", AGGREGATE_CFG)],
            f"`{AGGREGATE_CFG}`: answers itself with both JSON answers merged, two outbound "
            "requests to the upstream per request instead of one forwarded",
            body=None, check=_check_aggregated),
    *f_rows("chain", "jwt (RS256) + rate-limit + transform",
            [("jwt", JWT_CFG["rs256"]), ("rate-limit", RATE_LIMIT_CFG), ("transform", TRANSFORM_CFG)],
            "the jwt (RS256), rate-limit and transform rows' configs in that order; requests as "
            "the transform row's, with the RS256 token", extra=JWT_FILTER_EXTRA,
            headers={**BEARER["rs256"], "x-debug": "1"}, path=TRANSFORM_PATH, auth=True,
            forged=FORGED["rs256"], check=_check_chain),
    Scenario("envoy-jwt", "Envoy + jwt_authn (RS256)", "envoy", {"jwt": True}, modes="F",
             headers=BEARER["rs256"], auth=True, forged=FORGED["rs256"], base="envoy",
             ref="wasmgate-jwt-rs256"),
    Scenario("envoy-chain", "Envoy + jwt_authn + local_ratelimit + header_mutation", "envoy",
             {"jwt": True, "ratelimit": True, "mutate": True}, modes="F",
             headers={**BEARER["rs256"], "x-debug": "1"}, path=TRANSFORM_PATH, auth=True,
             forged=FORGED["rs256"], check=_check_chain, base="envoy", ref="wasmgate-chain"),
]


# Mode C: cache hits. Every mode C row (`direct`, `nginx` and `wasmgate` too)
# requests CACHE_PATH, which the upstream marks `public, max-age=3600`; these
# two cache it, and `base` names the same peer uncached. Their pre-check warms
# the cache with one request and requires a hit on the second.
SCENARIOS += [
    Scenario("nginx-cache", "nginx + proxy_cache (tmpfs)", "nginx", {"cache": True}, modes="C",
             base="nginx"),
    Scenario("wasmgate-cache", "wasmgate + cache", "wasmgate", {"cache": True}, modes="C",
             base="wasmgate"),
]


def is_kill(sc: Scenario) -> bool:
    return bool(sc.opts.get("kill"))


def baseline_variant(sc: Scenario, build: str) -> Scenario:
    """NAME@base: the wasmgate scenario `sc` run by the `--baseline` build
    (`build` names it in the label), with the same config, written the same
    way. Its cost ratio is against the baseline's own reference (NAME@base of
    `sc.ref`), as in a table of the old build alone."""
    return replace(sc, name=sc.name + BASELINE_SUFFIX, label=f"{sc.label} — baseline {build}",
                   opts={**sc.opts, "baseline": True},
                   ref=sc.ref + BASELINE_SUFFIX if sc.ref else None,
                   base=sc.base + BASELINE_SUFFIX if sc.base else None,
                   modes="".join(m for m in sc.modes if m in BASELINE_MODES))


def with_baselines(scenarios: list[Scenario], build: str) -> list[Scenario]:
    """`scenarios` with every wasmgate scenario followed by its NAME@base: the
    pair is measured back to back in every round."""
    out = []
    for sc in scenarios:
        out.append(sc)
        if sc.peer == "wasmgate":
            out.append(baseline_variant(sc, build))
    return out


def baseline_pairs(scenarios: list[Scenario]) -> list[tuple[Scenario, Scenario]]:
    """(this build's scenario, its NAME@base) for every baseline scenario."""
    by_name = {sc.name: sc for sc in scenarios}
    return [(by_name[sc.name.removesuffix(BASELINE_SUFFIX)], sc) for sc in scenarios
            if sc.name.endswith(BASELINE_SUFFIX)
            and sc.name.removesuffix(BASELINE_SUFFIX) in by_name]


def baseline_build(binary: Path) -> tuple[str, str]:
    """(short name, description) of a baseline build: from the `COMMIT` file
    bench/baseline.sh writes next to the binary ("<sha> <subject>" on its
    first line), else from the binary's path."""
    try:
        line = (binary.parent / "COMMIT").read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return "build", f"`{binary}` (commit unknown: no COMMIT file next to it)"
    sha, _, subject = line.partition(" ")
    return sha[:12], f"commit {sha[:12]} ({subject})" if subject else f"commit {sha[:12]}"


# --------------------------------------------------------------------------
# Load generators. A load generator runs one scenario against a URL for a
# duration on a CPU and returns a Sample; register it in LOADS.


@dataclass
class LoadParams:
    connections: int            # wrk connections
    h2_clients: int             # h2load connections
    h2_streams: int             # h2load concurrent streams per connection
    tls: TlsFiles | None = None
    wrk_script: Path | None = None  # mode B: the x-user script (every scenario, direct too)
    values: dict[str, str] = field(default_factory=dict)  # mode F: fills `@@name@@`


@dataclass
class Sample:
    rps: float
    p50_us: float
    p99_us: float
    requests: int
    load_cpu: float        # CPU used by the load generator, fraction of one CPU
    proxy_cpu: float | None = None
    upstream_cpu: float | None = None
    proxy_us_per_req: float | None = None     # proxy CPU time / requests completed
    upstream_us_per_req: float | None = None
    negotiated: str = ""   # h2load: TLS protocol, cipher, key exchange, ALPN
    per_endpoint: list[int] | None = None   # mode B: requests each endpoint served
    upstream_requests: int | None = None    # mode C: requests that reached the upstream
    raw: str = ""


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _dur_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise BenchError(f"cannot parse wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _run_pinned(argv: list[str], cpu: str, out_file: Path,
                env: dict[str, str] | None = None) -> tuple[int, resource.struct_rusage, str]:
    """Runs a load generator pinned to `cpu`; returns exit code, its rusage, output."""
    with open(out_file, "wb") as out:
        popen = subprocess.Popen(["taskset", "-c", cpu, *argv], stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=_die_with_parent,
                                 env={**os.environ, **env} if env else None)
        try:
            _, status, usage = os.wait4(popen.pid, 0)
        except BaseException:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            raise
        popen.returncode = os.waitstatus_to_exitcode(status)
    return popen.returncode, usage, out_file.read_text(errors="replace")


def request_headers(sc: Scenario, values: dict[str, str]) -> dict[str, str]:
    """The headers every request of a scenario carries: the API key, and the
    scenario's own (mode F: tokens, credentials, `Origin`), filled in."""
    return {API_KEY_HEADER: API_KEY, **{k: fill(v, values) for k, v in sc.headers.items()}}


def run_wrk(tools: Tools, url: str, seconds: float, lp: LoadParams, cpu: str,
            workdir: Path, tag: str, sc: Scenario) -> Sample:
    argv = [tools.wrk, "-t1", f"-c{lp.connections}", f"-d{seconds:g}s",
            "--latency", "--timeout", "5s"]
    for k, v in request_headers(sc, lp.values).items():
        argv += ["-H", f"{k}: {v}"]
    if sc.close:
        # wrk reconnects whenever a response says `Connection: close`.
        argv += ["-H", "Connection: close"]
    if lp.wrk_script:
        argv += ["-s", str(lp.wrk_script)]
    # wrk has no cipher flag for TLS 1.3: OPENSSL_CONF pins the suite.
    env = {"OPENSSL_CONF": str(lp.tls.client_conf)} if lp.tls and sc.scheme == "https" else None
    code, usage, text = _run_pinned(argv + [url], cpu, workdir / f"wrk-{tag}.txt", env)
    if code != 0:
        raise BenchError(f"wrk failed ({code}) on {url}:\n{text}")
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


def _h2load_negotiated(text: str) -> str:
    """"TLSv1.3 TLS_AES_128_GCM_SHA256 X25519, ALPN h2" from h2load's output
    (only the ALPN part in cleartext)."""
    tls = " ".join(m.group(1) for m in (re.search(r"^TLS Protocol: (\S+)", text, re.M),
                                         re.search(r"^Cipher: (\S+)", text, re.M),
                                         re.search(r"^Server Temp Key: (\S+)", text, re.M)) if m)
    app = re.search(r"^Application protocol: (\S+)", text, re.M)
    parts = [tls] if tls else []
    if app:
        parts.append(f"ALPN {app.group(1)}" if tls else app.group(1))
    return ", ".join(parts)


def run_h2load(tools: Tools, url: str, seconds: float, lp: LoadParams, cpu: str,
               workdir: Path, tag: str, sc: Scenario) -> Sample:
    """h2load, one thread, `h2_clients` connections × `h2_streams` streams,
    for `seconds`. HTTP/2 over TLS by ALPN for https://, h2c by prior
    knowledge for http://. Any failed, errored, timed-out or non-2xx request,
    or a connection that did not speak HTTP/2, stops the run."""
    log = workdir / f"h2load-{tag}.log"
    argv = [tools.h2load, "-t1", f"-c{lp.h2_clients}", f"-m{lp.h2_streams}",
            f"-D{max(1, round(seconds * 1000))}ms", f"--log-file={log}",
            f"--tls13-ciphers={TLS13_SUITE}"]
    for k, v in request_headers(sc, lp.values).items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(url)
    code, usage, text = _run_pinned(argv, cpu, workdir / f"h2load-{tag}.txt")
    try:
        lat = []
        bad_status = 0
        with open(log) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    if not parts[1].startswith("2"):
                        bad_status += 1
                    lat.append(int(parts[2]))
    except OSError:
        lat, bad_status = [], 0
    finally:
        log.unlink(missing_ok=True)  # megabytes per run; the summary is kept
    if code != 0:
        raise BenchError(f"h2load failed ({code}) on {url}:\n{text}")
    fin = re.search(r"^finished in ([\d.]+)(\w+), ([\d.]+) req/s", text, re.M)
    req = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", text, re.M)
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if not (fin and req and codes):
        raise BenchError(f"cannot parse h2load output for {url}:\n{text}")
    _total, _started, done, ok, failed, errored, timeout = (int(x) for x in req.groups())
    if failed or errored or timeout or bad_status or any(int(x) for x in codes.groups()[1:]):
        raise BenchError(f"{url}: failed, errored, timed-out or non-2xx requests under load "
                         f"(log: {bad_status} non-2xx):\n{text}")
    want = "h2" if sc.scheme == "https" else "h2c"
    app = re.search(r"^Application protocol: (\S+)", text, re.M)
    if not app or app.group(1) != want:
        raise BenchError(f"{url}: h2load spoke {app.group(1) if app else 'nothing'}, "
                         f"not {want}:\n{text}")
    if ok == 0 or not lat:
        raise BenchError(f"h2load completed no request on {url}:\n{text}")
    wall = _dur_us(fin.group(1) + fin.group(2)) / 1e6
    lat.sort()
    return Sample(float(fin.group(3)), float(lat[len(lat) // 2]),
                  float(lat[min(len(lat) - 1, int(len(lat) * 0.99))]), ok,
                  (usage.ru_utime + usage.ru_stime) / wall if wall > 0 else 0.0,
                  negotiated=_h2load_negotiated(text), raw=text)


LOADS = {"wrk": run_wrk, "h2load": run_h2load}


# Mode B's wrk scripts. Both keep wrk's own headers (Host, x-api-key).
WRK_USERS_LUA = f"""-- Mode B: every request carries `{USER_HEADER}: user-N`, N cycling through
-- {WRK_USERS} values, so consistent hashing spreads the keys. The requests are
-- formatted once, in init; request() only picks the next one.
local reqs = {{}}
local i = 0
function init(args)
  for u = 0, {WRK_USERS - 1} do
    local h = {{}}
    for k, v in pairs(wrk.headers) do h[k] = v end
    h["{USER_HEADER}"] = "user-" .. u
    reqs[u + 1] = wrk.format(nil, nil, h)
  end
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
"""

WRK_STATUS_LUA = """-- Mode B's kill runs: counts the responses by status, printed at the end as
-- `status NNN: COUNT` lines.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("status %d: %d\\n", k, v)) end
end
"""


@dataclass
class KillSample:
    """One kill run: wrk's counts, and what followed."""
    requests: int             # responses received (any status)
    rps: float
    non2xx: int               # wrk's "Non-2xx or 3xx responses"
    statuses: dict[int, int]  # every status seen, with its count
    socket: dict[str, int]    # wrk's socket errors: connect, read, write, timeout
    killed_at: float          # seconds after wrk started
    after_ok: int             # of KILL_AFTER_GETS sequential GETs after the run, 200s
    after_by: dict[str, int]  # which endpoints answered them
    proxy_alive: bool
    raw: str = ""

    @property
    def errors(self) -> int:
        return self.non2xx + sum(self.socket.values())


KILL_AFTER_GETS = 20


def run_kill_wrk(tools: Tools, url: str, args, cpu: str, workdir: Path, tag: str,
                 script: Path, kill: Callable[[], None]) -> tuple[str, float]:
    """wrk for `args.kill_duration` s, calling `kill()` `args.kill_at` s in.
    Returns wrk's output and the time of the kill after wrk's start."""
    argv = [tools.wrk, "-t1", f"-c{args.connections}", f"-d{args.kill_duration:g}s",
            "--timeout", "2s", "-s", str(script), "-H", f"{API_KEY_HEADER}: {API_KEY}", url]
    out_file = workdir / f"wrk-{tag}.txt"
    with open(out_file, "wb") as out:
        popen = subprocess.Popen(["taskset", "-c", cpu, *argv], stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=_die_with_parent)
    t0 = time.monotonic()
    try:
        time.sleep(args.kill_at)
        if popen.poll() is not None:
            raise BenchError(f"wrk ended before the kill ({popen.returncode}):\n"
                             f"{out_file.read_text(errors='replace')}")
        killed_at = time.monotonic() - t0
        kill()
        popen.wait(timeout=args.kill_duration + 30)
    except BaseException:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        popen.wait()
        raise
    text = out_file.read_text(errors="replace")
    if popen.returncode != 0:
        raise BenchError(f"wrk failed ({popen.returncode}) on {url}:\n{text}")
    return text, killed_at


def parse_kill_wrk(text: str, url: str) -> tuple[int, float, int, dict[int, int], dict[str, int]]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    reqs = re.search(r"(\d+) requests in ([\d.]+\w+)", text)
    if not (rps and reqs):
        raise BenchError(f"cannot parse wrk output for {url}:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    socket_errors = dict(zip(["connect", "read", "write", "timeout"],
                             (int(x) for x in sock.groups()) if sock else (0, 0, 0, 0)))
    statuses = {int(k): int(v) for k, v in re.findall(r"^status (\d+): (\d+)$", text, re.M)}
    return (int(reqs.group(1)), float(rps.group(1)), int(non2xx.group(1)) if non2xx else 0,
            statuses, socket_errors)


# --------------------------------------------------------------------------
# Checks: one real request before any load.


Response = tuple[int, dict[str, str], bytes]


def _get_h1(sc: Scenario, port: int, tls: TlsFiles | None, with_key: bool,
            values: dict[str, str]) -> Response:
    """One HTTP/1.1 GET, over TLS for https scenarios (verifying the test
    certificate and its IP address, offering no ALPN, like wrk)."""
    if sc.scheme == "https":
        assert tls is not None
        context = ssl.create_default_context(cafile=str(tls.cert))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            HOST, port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        headers = request_headers(sc, values) if with_key else {}
        if sc.close:
            headers["Connection"] = "close"
        conn.request("GET", sc.path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"{sc.name}: GET {sc.scheme}://{HOST}:{port}{sc.path} failed: {e}") from None
    finally:
        conn.close()


def _get_h2(sc: Scenario, port: int, tools: Tools, tls: TlsFiles | None, workdir: Path,
            with_key: bool, values: dict[str, str]) -> Response:
    """One HTTP/2 GET with curl: over TLS by ALPN (verifying the test
    certificate), or h2c by prior knowledge. Fails unless HTTP/2 was spoken."""
    url = f"{sc.scheme}://{HOST}:{port}{sc.path}"
    head, body = workdir / f"check-{sc.name}.head", workdir / f"check-{sc.name}.body"
    argv = [tools.curl, "-sS", "--max-time", "10", "-D", str(head), "-o", str(body),
            "-w", "%{http_version}"]
    if sc.scheme == "https":
        assert tls is not None
        argv += ["--http2", "--cacert", str(tls.cert), "--tls13-ciphers", TLS13_SUITE]
    else:
        argv += ["--http2-prior-knowledge"]
    if with_key:
        for k, v in request_headers(sc, values).items():
            argv += ["-H", f"{k}: {v}"]
    done = subprocess.run(argv + [url], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise BenchError(f"{sc.name}: curl {url} failed ({done.returncode}): {done.stderr.strip()}")
    if done.stdout.strip() != "2":
        raise BenchError(f"{sc.name}: {url} answered over HTTP/{done.stdout.strip()}, not HTTP/2")
    lines = head.read_text(errors="replace").splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers, body.read_bytes()


def _probe_tls(sc: Scenario, port: int, tools: Tools, tls: TlsFiles) -> str:
    """What wrk negotiates: `openssl s_client` with wrk's OPENSSL_CONF and,
    like wrk, no ALPN. Verifies the certificate chain and its IP address."""
    if not tools.openssl:
        return "not probed (no openssl CLI)"
    done = subprocess.run([tools.openssl, "s_client", "-connect", f"{HOST}:{port}",
                           "-CAfile", str(tls.cert), "-verify_return_error", "-verify_ip", HOST],
                          input="", capture_output=True, text=True, timeout=30,
                          env={**os.environ, "OPENSSL_CONF": str(tls.client_conf)})
    out = done.stdout + done.stderr
    new = re.search(r"^New, (\S+), Cipher is (\S+)", out, re.M)
    if done.returncode != 0 or not new or "Verify return code: 0 (ok)" not in out:
        raise BenchError(f"{sc.name}: openssl s_client to {HOST}:{port} failed "
                         f"(code {done.returncode}):\n{out[-2000:]}")
    kx = re.search(r"^Server Temp Key: (\w+)", out, re.M)
    alpn = re.search(r"^ALPN protocol: (\S+)", out, re.M)
    return (f"{new.group(1)} {new.group(2)}" + (f" {kx.group(1)}" if kx else "")
            + (f", ALPN {alpn.group(1)}" if alpn else ", no ALPN (wrk offers none)"))


def _resumes(sc: Scenario, port: int, tls: TlsFiles) -> bool:
    """Whether the peer resumes a TLS session: a second connection offering the
    first one's session (TLS 1.3: a ticket, read with the response)."""
    context = ssl.create_default_context(cafile=str(tls.cert))
    session = None
    for attempt in range(2):
        try:
            with socket.create_connection((HOST, port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname=HOST, session=session) as s:
                s.sendall(f"GET {sc.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                          f"{API_KEY_HEADER}: {API_KEY}\r\nConnection: close\r\n\r\n".encode())
                try:
                    while s.recv(65536):
                        pass
                except (ssl.SSLError, ConnectionResetError):
                    pass  # closed without close_notify: the response is in
                if attempt == 1:
                    return s.session_reused
                session = s.session
        except OSError as e:
            raise BenchError(f"{sc.name}: TLS resumption probe on {HOST}:{port} failed: {e}") from None
    return False


def _probe_h2load(sc: Scenario, port: int, tools: Tools, workdir: Path) -> str:
    """Two requests with h2load itself: both 2xx, over h2 (ALPN) or h2c."""
    url = f"{sc.scheme}://{HOST}:{port}{sc.path}"
    done = subprocess.run([tools.h2load, "-n2", "-c1", "-m1", f"--tls13-ciphers={TLS13_SUITE}",
                           "-H", f"{API_KEY_HEADER}: {API_KEY}", url],
                          capture_output=True, text=True, timeout=30)
    out = done.stdout + done.stderr
    want = "h2" if sc.scheme == "https" else "h2c"
    if (done.returncode != 0 or not re.search(r"^status codes: 2 2xx", out, re.M)
            or not re.search(rf"^Application protocol: {want}$", out, re.M)):
        raise BenchError(f"{sc.name}: h2load -n2 on {url} did not get two 2xx over {want}:\n{out}")
    return _h2load_negotiated(out)


def check_scenario(sc: Scenario, port: int, tools: Tools, tls: TlsFiles | None,
                   workdir: Path, values: dict[str, str] | None = None) -> str:
    """One real request before any load: 200 with the upstream's body and the
    expected headers (and 401 without the key for filter scenarios), over the
    scenario's protocol. Returns what was negotiated (TLS/h2), for the report."""
    values = values or {}

    def get(with_key: bool) -> Response:
        if sc.load == "h2load":
            return _get_h2(sc, port, tools, tls, workdir, with_key, values)
        return _get_h1(sc, port, tls, with_key, values)

    status, headers, body = get(True)
    if status != 200:
        raise BenchError(f"{sc.name}: GET {sc.path} with the key answered {status}, "
                         f"not 200: {body[:300]!r}")
    if sc.body is not None and body != sc.body:
        raise BenchError(f"{sc.name}: body is {body[:300]!r}, not the upstream's {sc.body!r}")
    if sc.check is not None:
        problem = sc.check(headers, body)
        if problem:
            raise BenchError(f"{sc.name}: {problem} (headers: {headers}; body: {body[:300]!r})")
    for name, value in sc.expect_headers.items():
        if headers.get(name) != value:
            raise BenchError(f"{sc.name}: response header {name} is {headers.get(name)!r}, "
                             f"expected {value!r} (headers: {headers})")
    if sc.close and headers.get("connection", "").lower() != "close":
        # Otherwise wrk would keep the connection and measure keep-alive.
        raise BenchError(f"{sc.name}: the answer to `Connection: close` does not say "
                         f"`Connection: close` (headers: {headers})")
    if sc.auth:
        status, _, body = get(False)
        if status != 401:
            raise BenchError(f"{sc.name}: GET without the key answered {status}, "
                             f"not 401: {body[:300]!r}")
    if sc.forged:
        # The same request with a forged credential (a flipped signature bit,
        # a wrong password): proves the signature or password is checked.
        bad = Scenario(sc.name, sc.label, sc.peer, sc.opts, path=sc.path, scheme=sc.scheme,
                       load=sc.load, headers={**sc.headers, **sc.forged})
        status, _, body = (_get_h2(bad, port, tools, tls, workdir, True, values)
                           if sc.load == "h2load" else _get_h1(bad, port, tls, True, values))
        if status != 401:
            raise BenchError(f"{sc.name}: GET with a forged credential answered {status}, "
                             f"not 401: {body[:300]!r}")
    if sc.load == "h2load":
        return _probe_h2load(sc, port, tools, workdir)
    if sc.scheme == "https":
        assert tls is not None
        note = _probe_tls(sc, port, tools, tls)
        if sc.close:
            note += ", session resumed" if _resumes(sc, port, tls) else ", no session resumption"
        return note
    return ""


def tmpfs_cache_root() -> Path:
    """Mode C: a new folder for nginx's proxy_cache_path under CACHE_TMPFS,
    which must be a tmpfs mount (so its hits are served from memory), open to
    nginx's unprivileged worker. The caller removes it."""
    mounts = Path("/proc/mounts").read_text().splitlines()
    fstype = next((f[2] for f in (m.split() for m in mounts)
                   if len(f) > 2 and f[1] == str(CACHE_TMPFS)), None)
    if fstype != "tmpfs":
        raise BenchError(f"{CACHE_TMPFS} is {'not mounted' if fstype is None else fstype}, "
                         f"not tmpfs: mode C keeps nginx's cache there to serve hits from memory")
    root = Path(tempfile.mkdtemp(prefix="wasmgate-bench-cache-", dir=CACHE_TMPFS))
    os.chmod(root, 0o755)  # nginx creates its cache folder in it, owned by its worker
    return root


def check_cache(sc: Scenario, port: int, values: dict[str, str]) -> tuple[str | None, str]:
    """Mode C, before any load and before check_scenario: (problem, what was
    seen). A caching row (`opts["cache"]`) is warmed with one GET, and the
    second must be a hit: wasmgate's `Cache-Status` starts with
    `wasmgate; hit`, nginx's `X-Cache-Status` (its `$upstream_cache_status`)
    says `HIT`. An uncached row must carry neither header. Both answers must
    be 200 with the upstream's body and its `Cache-Control`."""
    names = ("cache-status", NGINX_CACHE_STATUS.lower())
    header = (names[0] if sc.peer == "wasmgate" else names[1]) if sc.opts.get("cache") else None
    seen: list[str | None] = []
    for i in range(2 if header else 1):
        try:
            status, headers, body = _get_h1(sc, port, None, True, values)
        except BenchError as e:
            return str(e), ""
        if status != 200 or body != sc.body:
            return f"GET {sc.path} #{i + 1} answered {status} {body[:200]!r}", ""
        if headers.get("cache-control") != CACHE_CONTROL:
            return (f"GET {sc.path} #{i + 1}: Cache-Control is {headers.get('cache-control')!r}, "
                    f"not the upstream's {CACHE_CONTROL!r}"), ""
        if header is None:
            extra = [n for n in names if n in headers]
            if extra:
                return (f"an uncached row answered with {', '.join(f'{n}: {headers[n]}' for n in extra)}",
                        "")
            return None, ""
        seen.append(headers.get(header))
    warm, second = seen
    note = f"`{header}`: {warm!r}, then {second!r}"
    if second is None or not (second.startswith("wasmgate; hit") if sc.peer == "wasmgate"
                              else second == "HIT"):
        return f"warmed with one GET, the second was not a hit ({note})", note
    return None, note


def check_spread(sc: Scenario, port: int, n: int, requests: int = SPREAD_REQUESTS) -> str:
    """Mode B, before any load: `requests` GETs in a row through the peer, with
    `x-user` user-0 … user-{requests/2 - 1}, each twice. Every one must be a 200
    with the upstream's body from a named endpoint; all `n` endpoints must
    answer (a miss is vanishingly unlikely for a working balancer: random over
    4 misses one with probability 4 × 0.75^100); under consistent hashing each
    x-user must always reach the same endpoint."""
    hashing = sc.opts.get("balance") == "hash"
    seen: dict[str, int] = {}
    by_user: dict[str, str] = {}
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        for i in range(requests):
            user = f"user-{i % (requests // 2)}"
            try:
                conn.request("GET", sc.path, headers={API_KEY_HEADER: API_KEY, USER_HEADER: user})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise BenchError(f"{sc.name}: request {i + 1} of the spread check failed: {e}") from None
            who = resp.getheader(UPSTREAM_ID_HEADER)
            if resp.status != 200 or body != UPSTREAM_BODY or not who:
                raise BenchError(f"{sc.name}: request {i + 1} of the spread check answered "
                                 f"{resp.status} {body[:200]!r} from {who!r}")
            seen[who] = seen.get(who, 0) + 1
            if hashing and by_user.setdefault(user, who) != who:
                raise BenchError(f"{sc.name}: {USER_HEADER}: {user} reached {by_user[user]}, "
                                 f"then {who}: not consistent hashing")
    finally:
        conn.close()
    want = {f"e{i + 1}" for i in range(n)}
    if set(seen) != want:
        raise BenchError(f"{sc.name}: {requests} requests reached {sorted(seen)} "
                         f"({seen}), not each of {sorted(want)}")
    spread = ", ".join(f"{k} {seen[k]}" for k in sorted(seen))
    return (f"{spread} of {requests}"
            + ("; each x-user always to the same endpoint" if hashing else ""))


# --------------------------------------------------------------------------
# Runs


@dataclass
class ModeResult:
    mode: str
    pinning: str
    samples: dict[str, list[Sample]]
    scenarios: list[Scenario]
    connections: int
    notes: dict[str, str] = field(default_factory=dict)  # what each TLS/h2 check negotiated
    kills: dict[str, list[KillSample]] = field(default_factory=dict)  # mode B
    kill_scenarios: list[Scenario] = field(default_factory=list)
    # Mode C: rows whose pre-check failed (name -> why): reported, not measured.
    unmeasured: dict[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None   # mode C: nginx's cache folder's parent, on tmpfs


def run_mode(mode: str, args, tools: Tools, procs: Procs, workdir: Path,
             upstream: Proc | None, upstream_port: int, scenarios: list[Scenario],
             tls: TlsFiles | None = None, upstream_tls_port: int | None = None,
             values: dict[str, str] | None = None,
             upstream_status_port: int | None = None) -> ModeResult:
    """Runs one mode. Mode B brings its own upstream endpoints (`upstream` is
    not used) and runs its kill scenarios after the throughput rounds. Mode F
    needs `values` (its keys and tokens, from make_filter_secrets). Mode C
    needs `upstream_status_port` (the upstream's stub_status), requests
    CACHE_PATH in every row, and measures only the rows whose cache check
    passed (check_cache)."""
    # Modes T, B, F and C are pinned like mode S: everything on one CPU.
    one_cpu = mode in ("S", "T", "B", "F", "C")
    proxy_cpu = args.cpu_s if one_cpu else args.cpu_proxy
    connections = args.connections_p if mode == "P" else args.connections
    load_cpu = args.cpu_s if one_cpu else args.cpu_load
    values = values or {}
    lp = LoadParams(connections, args.h2_clients, args.h2_streams, tls, values=values)
    if mode == "S":
        pinning = (f"mode S: wrk, proxy and upstream all pinned to CPU {args.cpu_s} "
                   f"(`taskset -c {args.cpu_s}`)")
    elif mode == "T":
        pinning = (f"mode T: load generator (wrk or h2load), proxy and upstream all pinned "
                   f"to CPU {args.cpu_s} (`taskset -c {args.cpu_s}`)")
    elif mode == "B":
        pinning = (f"mode B: wrk, proxy and every upstream endpoint all pinned to CPU "
                   f"{args.cpu_s} (`taskset -c {args.cpu_s}`)")
    elif mode == "F":
        pinning = (f"mode F: wrk, proxy and upstream all pinned to CPU {args.cpu_s} "
                   f"(`taskset -c {args.cpu_s}`)")
    elif mode == "C":
        pinning = (f"mode C: wrk, proxy (and its cache) and upstream all pinned to CPU "
                   f"{args.cpu_s} (`taskset -c {args.cpu_s}`)")
    else:
        pinning = (f"mode P: proxy pinned to CPU {args.cpu_proxy}; wrk and upstream pinned "
                   f"to CPU {args.cpu_load}")
    print(f"\n=== {pinning}")

    ctx = Ctx(tools, procs, workdir, upstream_port, tls, values=values)
    unmeasured: dict[str, str] = {}
    all_scenarios = scenarios
    if mode == "C":
        if upstream_status_port is None:
            raise BenchError("mode C needs the upstream's stub_status listener")
        # Every row on the cacheable path, the upstream's Cache-Control on
        # every answer; nginx's cache in a new folder on tmpfs.
        scenarios = all_scenarios = [replace(sc, path=CACHE_PATH) for sc in scenarios]
        if any(sc.opts.get("cache") and sc.peer == "nginx" for sc in scenarios):
            ctx.cache_dir = tmpfs_cache_root()
    endpoints: Endpoints | None = None
    kill_scenarios = [sc for sc in scenarios if is_kill(sc)]
    scenarios = [sc for sc in scenarios if not is_kill(sc)]
    if mode == "B":
        endpoints = Endpoints(ctx, MAX_ENDPOINTS, args.cpu_s)
        ctx.endpoint_ports = endpoints.ports
        (workdir / "users.lua").write_text(WRK_USERS_LUA)
        (workdir / "status.lua").write_text(WRK_STATUS_LUA)
        lp.wrk_script = workdir / "users.lua"
        if all(sc.peer is None for sc in scenarios):
            scenarios = []  # only kill runs selected: no throughput rounds
    ports = free_ports(len(scenarios))
    started: dict[str, tuple[Proc | None, int]] = {}
    notes: dict[str, str] = {}
    try:
        if endpoints is not None:
            endpoints.start_all()
        for sc, port in zip(scenarios, ports):
            if endpoints is not None and sc.peer is None:
                started[sc.name] = (None, endpoints.ports[0])  # direct: wrk at e1
                continue
            if sc.peer is None:
                if sc.scheme == "https" and upstream_tls_port is None:
                    raise BenchError(f"{sc.name} needs the upstream's TLS listener (mode T)")
                started[sc.name] = (None, upstream_tls_port if sc.scheme == "https"
                                    else upstream_port)
                continue
            proc = PEERS[sc.peer](ctx, f"{sc.name}-{mode}", port, proxy_cpu, sc.opts)
            started[sc.name] = (proc, port)
        for sc in scenarios:
            proc, port = started[sc.name]
            if proc is not None:
                wait_listening(proc, port)
            if mode == "C":
                # Before check_scenario's request: this one warms the cache.
                problem, note = check_cache(sc, port, values)
                if problem and sc.peer is None:
                    raise BenchError(f"{sc.name}: {problem}")
                if problem:
                    unmeasured[sc.name] = problem
                    print(f"  {sc.name:<18} NOT MEASURED: {problem}")
                    continue
                if note:
                    notes[sc.name] = note
            note = check_scenario(sc, port, tools, tls, workdir, values)
            if sc.opts.get("endpoints"):
                note = check_spread(sc, port, sc.opts["endpoints"])
            if mode == "C":
                note = notes.get(sc.name, "")
            if note:
                notes[sc.name] = note
            print(f"  {sc.name:<18} ok: 200 on {sc.scheme}://{HOST}:{port}"
                  + (f" with {', '.join(f'{k}: {v}' for k, v in sc.expect_headers.items())}"
                     if sc.expect_headers else "")
                  + (f"; 401 without the {'credential' if sc.headers else 'key'}"
                     if sc.auth else "")
                  + ("; 401 with a forged one" if sc.forged else "")
                  + (f"; {note}" if note else ""))
        if unmeasured:
            # Reported, not measured: stopped now, out of the rounds.
            for name in unmeasured:
                proc, _ = started.pop(name)
                if proc is not None:
                    procs.stop(proc)
            scenarios = [sc for sc in scenarios if sc.name not in unmeasured]

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
                ups = endpoints.alive() if endpoints is not None else [upstream]
                up_before = sum(group_cpu_ticks(u.pgid) for u in ups)
                served_before = endpoints.counts() if endpoints is not None else None
                up_served_before = (stub_status_requests(upstream_status_port)
                                    if upstream_status_port is not None else None)
                t0 = time.monotonic()
                sample = LOADS[sc.load](tools, f"{sc.scheme}://{HOST}:{port}{sc.path}",
                                        seconds, lp, load_cpu, workdir, tag, sc)
                elapsed = time.monotonic() - t0
                if proc is not None:
                    used = (group_cpu_ticks(proc.pgid) - before) / CLK_TCK
                    sample.proxy_cpu = used / elapsed
                    sample.proxy_us_per_req = used / sample.requests * 1e6
                up_used = (sum(group_cpu_ticks(u.pgid) for u in ups) - up_before) / CLK_TCK
                sample.upstream_cpu = up_used / elapsed
                sample.upstream_us_per_req = up_used / sample.requests * 1e6
                if endpoints is not None and served_before is not None:
                    sample.per_endpoint = [a - b for a, b in zip(endpoints.counts(), served_before)]
                if upstream_status_port is not None and up_served_before is not None:
                    # Less the status request that took the count before.
                    sample.upstream_requests = (stub_status_requests(upstream_status_port)
                                                - up_served_before - 1)
                if proc is not None and proc.log.stat().st_size - log_before > 64 * 1024:
                    raise BenchError(f"{proc.name} wrote {proc.log.stat().st_size - log_before} "
                                     f"bytes of log during one run: its logs must be off\n"
                                     f"{proc.log_tail(3)}")
                return sample
            finally:
                for p in others:
                    procs.thaw(p)

        if args.warmup > 0 and scenarios:
            print(f"  warm-up: {args.warmup:g}s each")
            for sc in scenarios:
                measure(sc, args.warmup, f"{mode}-warmup-{sc.name}")

        samples: dict[str, list[Sample]] = {sc.name: [] for sc in scenarios}
        for r in range(1, args.rounds + 1 if scenarios else 1):
            line = []
            for sc in scenarios:
                s = measure(sc, args.duration, f"{mode}-r{r}-{sc.name}")
                samples[sc.name].append(s)
                line.append(f"{sc.name} {s.rps:,.0f}")
            print(f"  round {r}/{args.rounds}: " + " | ".join(line))
        for sc in scenarios:
            seen = {s.negotiated for s in samples[sc.name] if s.negotiated}
            if len(seen) > 1:
                raise BenchError(f"{sc.name}: the negotiation changed between rounds: {seen}")
            if seen and sc.name in notes and seen != {notes[sc.name]}:
                raise BenchError(f"{sc.name}: under load {seen.pop()}, in the check {notes[sc.name]}")
        for proc, _ in started.values():
            if proc is not None:
                procs.stop(proc)
        started.clear()
        kills = (run_kills(kill_scenarios, args, ctx, endpoints)
                 if endpoints is not None and kill_scenarios else {})
        return ModeResult(mode, pinning, samples,
                          all_scenarios if mode == "C" else scenarios, connections, notes,
                          kills, kill_scenarios, unmeasured, ctx.cache_dir)
    finally:
        for proc, _ in started.values():
            if proc is not None:
                procs.stop(proc)
        if endpoints is not None:
            for proc in endpoints.alive():
                procs.stop(proc)
        if ctx.cache_dir is not None:
            # nginx is stopped: its cache (in memory) goes with the run.
            shutil.rmtree(ctx.cache_dir, ignore_errors=True)


def run_kills(scenarios: list[Scenario], args, ctx: Ctx,
              endpoints: Endpoints) -> dict[str, list[KillSample]]:
    """Mode B's kill runs, `args.rounds` rounds interleaved like the throughput
    ones. Each run starts from the same state: every endpoint up, the peer
    started afresh (so no ejection or pool survives from an earlier run) and
    checked to reach both endpoints. Then wrk loads it for
    `args.kill_duration` s, endpoint e2 gets SIGKILL `args.kill_at` s in, and
    wrk's non-2xx responses and socket errors are the errors a client saw.
    Errors do not stop the run: they are the measurement."""
    cpu = args.cpu_s
    print(f"  kill runs: {args.rounds} × {args.kill_duration:g} s each, "
          f"endpoint e{KILL_VICTIM + 1} killed {args.kill_at:g} s in")
    out: dict[str, list[KillSample]] = {sc.name: [] for sc in scenarios}
    for r in range(1, args.rounds + 1):
        line = []
        for sc in scenarios:
            endpoints.ensure_up()
            port = free_ports(1)[0]
            proc = PEERS[sc.peer](ctx, f"{sc.name}-r{r}", port, cpu, sc.opts)
            try:
                wait_listening(proc, port)
                check_spread(sc, port, sc.opts["endpoints"], requests=20)
                url = f"http://{HOST}:{port}{sc.path}"
                text, killed_at = run_kill_wrk(ctx.tools, url, args, cpu, ctx.workdir,
                                               f"B-kill-r{r}-{sc.name}",
                                               ctx.workdir / "status.lua",
                                               lambda: endpoints.kill(KILL_VICTIM))
                requests, rps, non2xx, statuses, sock = parse_kill_wrk(text, url)
                alive = proc.alive()
                after_ok, after_by = 0, {}
                if alive:
                    after_ok, after_by = gets_after(sc, port, KILL_AFTER_GETS)
                ks = KillSample(requests, rps, non2xx, statuses, sock, killed_at,
                                after_ok, after_by, alive, raw=text)
                out[sc.name].append(ks)
                if not alive:
                    print(f"  warning: {proc.name} died during the kill run:\n{proc.log_tail()}")
                line.append(f"{sc.name} {ks.errors} err/{ks.requests:,}")
            finally:
                ctx.procs.stop(proc)
        print(f"  kill round {r}/{args.rounds}: " + " | ".join(line))
    endpoints.ensure_up()
    return out


def gets_after(sc: Scenario, port: int, n: int) -> tuple[int, dict[str, int]]:
    """After a kill run: `n` GETs in a row, each on a new connection; how many
    answered 200, and which endpoints answered them."""
    ok, by = 0, {}
    for _ in range(n):
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            conn.request("GET", sc.path, headers={API_KEY_HEADER: API_KEY})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                ok += 1
                who = resp.getheader(UPSTREAM_ID_HEADER) or "?"
                by[who] = by.get(who, 0) + 1
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
    return ok, by


# --------------------------------------------------------------------------
# Mode H: hot swap. One wasmgate with an admin listener and one filter,
# `swap`, on its only route; modules are uploaded for it through
# `PUT /filters/swap/module` while a client watches which build answers
# (`x-version`: `aa`, `bb`, `ll`).

SWAP_FILTER = "swap"
# The builds uploaded (files in --filters-dir) and the tag each puts on a
# response: the request phase's letter, then the response phase's.
SWAP_BUILDS = {"a": "version_a.wasm", "b": "version_b.wasm", "large": "version_large.wasm"}
SWAP_TAGS = {"a": "aa", "b": "bb", "large": "ll"}
SWAP_LABELS = {"a": "small (version-a/b)", "b": "small (version-a/b)",
               "large": "large (version-large)"}
NONCE_SECTION = b"wasmgate-bench-nonce"  # name of the custom section that makes bytes new
SWAP_LAND_TIMEOUT = 60.0                 # seconds a swap may take to serve its first request
MEMORY_EVERY = 20                        # RSS sampled every this many swaps


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_nonce(component: bytes, nonce: str) -> bytes:
    """The same component with a custom section appended: bytes the gateway
    has never seen (a new sha256, so it compiles them), the same code."""
    payload = _leb128(len(NONCE_SECTION)) + NONCE_SECTION + nonce.encode()
    return component + b"\x00" + _leb128(len(payload)) + payload


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS in /proc/{pid}/status")


class AdminClient:
    """One keep-alive connection to the gateway's admin listener."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.conn = http.client.HTTPConnection(HOST, port, timeout=120)

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, auth: bool = True) -> tuple[int, bytes]:
        headers = dict(headers or {})
        if auth:
            headers["authorization"] = f"Bearer {self.token}"
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            # The gateway may close an idle keep-alive connection: one retry
            # on a new one.
            self.conn.close()
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=120)
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
        if resp.getheader("connection", "").lower() == "close":
            self.conn.close()
        return resp.status, data

    def put_module(self, body: bytes, sha256: str | None) -> dict:
        headers = {"content-type": "application/wasm"}
        if sha256:
            headers["x-wasmgate-sha256"] = sha256
        status, data = self.call("PUT", f"/filters/{SWAP_FILTER}/module", body, headers)
        if status != 200:
            raise BenchError(f"PUT /filters/{SWAP_FILTER}/module answered {status}: "
                             f"{data[:500].decode(errors='replace')}")
        return json.loads(data)

    def gauges(self) -> tuple[int, int]:
        """`wasmgate_filter_versions_live` and `wasmgate_filter_instances_live`
        of the swap filter."""
        status, data = self.call("GET", "/metrics")
        if status != 200:
            raise BenchError(f"GET /metrics answered {status}")
        text = data.decode(errors="replace")
        found = []
        for name in ("wasmgate_filter_versions_live", "wasmgate_filter_instances_live"):
            m = re.search(rf'^{name}\{{filter="{SWAP_FILTER}"\}} (\d+)', text, re.M)
            if not m:
                raise BenchError(f"{name} for filter {SWAP_FILTER} is not in /metrics")
            found.append(int(m.group(1)))
        return found[0], found[1]


class TagPoller:
    """A client sending `GET /` in a loop on one keep-alive connection to the
    gateway and reading `x-version`. `expect(tag)` before a swap; `landed` is
    set when a response carries it, and `first_at` is when that response was
    received (time.perf_counter). It also counts every answer that is not a 200
    from the upstream, not tagged by exactly one build (two equal letters: a
    request that ran on two versions would show two), or, after the new tag
    was seen, still tagged by an older build."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.want: str | None = None
        self.first_at: float | None = None
        self.landed = threading.Event()
        self.requests = 0
        self.busy = 0.0          # seconds spent in request round trips
        self.tags: dict[str, int] = {}
        self.bad: list[str] = []
        self.bad_count = 0
        self.stale = 0
        self.error: BaseException | None = None
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tag-poller", daemon=True)

    def __enter__(self) -> TagPoller:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=10)

    def expect(self, tag: str) -> None:
        with self.lock:
            self.want, self.first_at = tag, None
            self.landed.clear()

    def _bad(self, what: str) -> None:
        self.bad_count += 1
        if len(self.bad) < 5:
            self.bad.append(what)

    def _run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            while not self.stop_flag.is_set():
                sent = time.perf_counter()
                conn.request("GET", "/")
                resp = conn.getresponse()
                body = resp.read()
                got = time.perf_counter()
                tag = resp.getheader("x-version") or ""
                with self.lock:
                    self.requests += 1
                    self.busy += got - sent
                    self.tags[tag] = self.tags.get(tag, 0) + 1
                    if resp.status != 200 or body != UPSTREAM_BODY:
                        self._bad(f"{resp.status} {body[:80]!r}")
                    if len(tag) != 2 or tag[0] != tag[1]:
                        self._bad(f"x-version {tag!r}")
                    if self.want is not None:
                        if tag == self.want:
                            if self.first_at is None:
                                self.first_at = got
                                self.landed.set()
                        elif self.first_at is not None:
                            self.stale += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e
            self.landed.set()
        finally:
            conn.close()

    def check(self) -> None:
        if self.error is not None:
            raise BenchError(f"the polling client failed: {self.error!r}")
        if self.bad_count or self.stale:
            raise BenchError(f"the polling client saw {self.bad_count} wrong answers "
                             f"({'; '.join(self.bad)}) and {self.stale} answers from an older "
                             f"build after the new one had answered")

    def interval_ms(self) -> float:
        return self.busy / self.requests * 1e3 if self.requests else 0.0


@dataclass
class SwapSample:
    build: str            # key of SWAP_BUILDS
    new: bool             # bytes never uploaded before (compiled) or seen (cached)
    put_ms: float         # PUT sent → its 200 received
    after_put_ms: float   # PUT's 200 received → first response tagged by the new build
    from_sent_ms: float   # PUT sent → that response
    version: int


@dataclass
class MemorySample:
    swaps: int
    rss_kib: int
    versions_live: int
    instances_live: int


@dataclass
class HResult:
    """What mode H measured."""
    sizes: dict[str, int]                    # bytes of each build
    samples: list[SwapSample]
    memory: dict[str, list[MemorySample]]    # per pair ("a/b", ...): before, every 20, after
    memory_swaps: dict[str, list[SwapSample]]  # the memory runs' swaps (latency too)
    memory_after: dict[str, MemorySample]    # after the run and a pause
    rest: list[Sample]
    swapping: list[Sample]
    swap_rates: list[float]                  # swaps/s during each swapping round
    swaps_during: list[int]
    swapper_cpu: list[float]                 # the upload loop's CPU, fraction of one CPU
    poll_interval_ms: float
    poll_requests: int
    cache_entries: int                       # compiled components in the disk cache at the end
    connections: int
    pinning: str
    load_avg: tuple[tuple[float, float, float], tuple[float, float, float]]
    other_cpu: float                         # CPU of other processes during the mode (1 = one CPU)
    seconds: float                           # the mode's wall time


def hot_json(res: HResult) -> dict:
    """Mode H's results for results.json (without wrk's raw output)."""
    out = asdict(res)
    for s in out["rest"] + out["swapping"]:
        s["raw"] = None
    return out


class HotSwap:
    """The gateway of mode H, its admin client, and which build is current."""

    def __init__(self, ctx: Ctx, cpu: str) -> None:
        self.ctx = ctx
        self.port, self.admin_port = free_ports(2)
        self.token = secrets.token_hex(16)
        self.cache_dir = ctx.workdir / "compile-cache"
        self.builds = {k: (ctx.tools.filters_dir / f).read_bytes() for k, f in SWAP_BUILDS.items()}
        self.shas = {k: hashlib.sha256(b).hexdigest() for k, b in self.builds.items()}
        self.run_id = secrets.token_hex(4)
        self.nonces = 0
        self.current = "a"
        conf = ctx.workdir / "hotswap.toml"
        conf.write_text("\n".join([
            "[server]", f'listen = "{HOST}:{self.port}"', "workers = 1", "",
            "[admin]", f'listen = "{HOST}:{self.admin_port}"', f'token = "{self.token}"', "",
            # A fresh on-disk compile cache: new bytes are compiled (and stored,
            # as with the default cache folder), never found from an earlier run.
            "[engine]", f'cache_dir = "{self.cache_dir}"', "",
            "[access_log]", "enabled = false", "",
            f"[filters.{SWAP_FILTER}]", f'path = "{ctx.tools.filters_dir / SWAP_BUILDS["a"]}"', "",
            "[clusters.upstream]", f'endpoints = ["{HOST}:{ctx.upstream_port}"]', "",
            "[[routes]]", 'name = "all"', 'path_prefix = "/"', 'cluster = "upstream"', "",
            "  [[routes.filters]]", f'  name = "{SWAP_FILTER}"', "",
        ]))
        check = subprocess.run([str(ctx.tools.wasmgate), "check", "--config", str(conf)],
                               capture_output=True, text=True,
                               env={**os.environ, "WASMGATE_LOG": "warn"})
        if check.returncode != 0:
            raise BenchError(f"wasmgate check rejected {conf}:\n{check.stdout}{check.stderr}")
        self.proc = ctx.procs.start("hotswap", [str(ctx.tools.wasmgate), "serve", "--config",
                                                str(conf)], cpu, ctx.workdir,
                                    {"WASMGATE_LOG": "warn", "TOKIO_WORKER_THREADS": "1"})
        wait_listening(self.proc, self.port)
        wait_listening(self.proc, self.admin_port)
        self.admin = AdminClient(self.admin_port, self.token)

    def cache_entries(self) -> int:
        return len(list(self.cache_dir.glob("*.cwasm")))

    def get(self) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def swap(self, poller: TagPoller, build: str, new: bool = False) -> SwapSample:
        """Uploads `build` (with `new`, as bytes never seen: a fresh nonce
        section) and waits for the poller to get its first response."""
        if build == self.current:
            raise BenchError(f"swap to {build}, which is already current: nothing would show")
        body = self.builds[build]
        if new:
            self.nonces += 1
            body = with_nonce(body, f"{self.run_id}-{self.nonces}")
        sha = hashlib.sha256(body).hexdigest() if new else self.shas[build]
        entries = self.cache_entries() if new else 0
        poller.expect(SWAP_TAGS[build])
        sent = time.perf_counter()
        answer = self.admin.put_module(body, sha)
        done = time.perf_counter()
        if not poller.landed.wait(SWAP_LAND_TIMEOUT) or poller.first_at is None:
            poller.check()
            raise BenchError(f"no response from build {build} within {SWAP_LAND_TIMEOUT:g}s "
                             f"of its upload")
        first = poller.first_at
        self.current = build
        if answer.get("sha256") != sha:
            raise BenchError(f"the gateway activated {answer.get('sha256')}, not {sha}")
        if new and self.cache_entries() != entries + 1:
            raise BenchError(f"new bytes of {build} did not add a compiled entry to "
                             f"{self.cache_dir}: were they compiled?")
        return SwapSample(build, new, (done - sent) * 1e3, (first - done) * 1e3,
                          (first - sent) * 1e3, int(answer.get("version", 0)))


class Swapper:
    """Uploads `a` and `b` in turn, each as soon as the previous upload is
    answered, until stopped; records when each upload was answered."""

    def __init__(self, hs: HotSwap) -> None:
        self.hs = hs
        self.admin = AdminClient(hs.admin_port, hs.token)
        self.done_at: list[float] = []
        self.cpu_seconds = 0.0   # CPU time of the loop's thread
        self.error: BaseException | None = None
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, name="swapper", daemon=True)

    def _run(self) -> None:
        start = time.thread_time()
        try:
            while not self.stop_flag.is_set():
                build = "b" if self.hs.current == "a" else "a"
                self.admin.put_module(self.hs.builds[build], self.hs.shas[build])
                self.hs.current = build
                self.done_at.append(time.monotonic())
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e
        finally:
            self.cpu_seconds = time.thread_time() - start

    def __enter__(self) -> Swapper:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=120)
        if self.error is not None:
            raise BenchError(f"the swap loop failed: {self.error}")


def check_hotswap(hs: HotSwap) -> None:
    """Before measuring: build a answers, the API refuses a request without the
    token and a body whose digest differs from the header's."""
    status, headers, body = hs.get()
    if status != 200 or body != UPSTREAM_BODY or headers.get("x-version") != SWAP_TAGS["a"]:
        raise BenchError(f"GET / through the swap gateway: {status}, x-version "
                         f"{headers.get('x-version')!r}, {body[:100]!r}")
    status, _ = hs.admin.call("PUT", f"/filters/{SWAP_FILTER}/module", hs.builds["b"],
                              {"content-type": "application/wasm"}, auth=False)
    if status != 401:
        raise BenchError(f"an upload without the admin token answered {status}, not 401")
    status, data = hs.admin.call("PUT", f"/filters/{SWAP_FILTER}/module", hs.builds["b"],
                                 {"content-type": "application/wasm",
                                  "x-wasmgate-sha256": hs.shas["a"]})
    if status != 422 or b"digest_mismatch" not in data:
        raise BenchError(f"an upload with the wrong sha256 answered {status}, not 422 "
                         f"digest_mismatch: {data[:300]!r}")
    status, headers, _ = hs.get()
    if headers.get("x-version") != SWAP_TAGS["a"]:
        raise BenchError("a refused upload changed the build that answers")


def memory_run(hs: HotSwap, pair: tuple[str, str],
               swaps: int) -> tuple[list[MemorySample], list[SwapSample], MemorySample]:
    """`swaps` swaps between the two builds of `pair` (seen bytes), each
    confirmed by the poller; RSS and the gauges before, every MEMORY_EVERY
    swaps, and after a pause once the last swap has served."""
    pid = hs.proc.popen.pid

    def sample(n: int) -> MemorySample:
        versions, instances = hs.admin.gauges()
        return MemorySample(n, rss_kib(pid), versions, instances)

    out, lat = [], []
    with TagPoller(hs.port) as poller:
        # Warm: both builds compiled and served once, then back where we began.
        for build in (pair[1], pair[0]) if hs.current == pair[0] else (pair[0],):
            hs.swap(poller, build)
        out.append(sample(0))
        for i in range(1, swaps + 1):
            lat.append(hs.swap(poller, pair[1] if hs.current == pair[0] else pair[0]))
            if i % MEMORY_EVERY == 0 or i == swaps:
                out.append(sample(i))
        poller.check()
    time.sleep(2.0)
    return out, lat, sample(swaps)


def busy_ticks() -> int:
    """Busy time of every CPU of the machine (user, nice, system, irq,
    softirq), in clock ticks, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return user + nice + system + irq + softirq


def own_cpu_seconds() -> float:
    """CPU time of this script and its waited-for children (wrk, wasmgate check)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_mode_h(args, tools: Tools, procs: Procs, workdir: Path, upstream: Proc,
               upstream_port: int) -> HResult:
    """Mode H: the gateway on --cpu-proxy; the upstream, wrk, and this script's
    own clients (the poller, the uploads) on --cpu-load, as in mode P."""
    pinning = (f"mode H: wasmgate pinned to CPU {args.cpu_proxy}; the upstream, wrk, the "
               f"polling client and the uploads (this script) on CPU {args.cpu_load}")
    print(f"\n=== {pinning}")
    load_before = os.getloadavg()
    busy_before, wall_before = busy_ticks(), time.monotonic()
    ours_before = own_cpu_seconds() + group_cpu_ticks(upstream.pgid) / CLK_TCK
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(args.cpu_load)})  # threads started from here inherit it
    ctx = Ctx(tools, procs, workdir, upstream_port)
    hs: HotSwap | None = None
    try:
        hs = HotSwap(ctx, args.cpu_proxy)
        check_hotswap(hs)
        sizes = {k: len(b) for k, b in hs.builds.items()}
        print(f"  ok: build a answers (x-version: aa) on {HOST}:{hs.port}; admin API on "
              f"{HOST}:{hs.admin_port} refuses no token (401) and a wrong sha256 (422); "
              f"sizes: " + ", ".join(f"{k} {v:,} B" for k, v in sizes.items()))

        memory, memory_swaps, memory_after = {}, {}, {}
        print(f"  memory: {args.memory_swaps} swaps a ↔ b")
        memory["a/b"], memory_swaps["a/b"], memory_after["a/b"] = memory_run(
            hs, ("a", "b"), args.memory_swaps)
        for m in memory["a/b"]:
            print(f"    after {m.swaps:>3} swaps: RSS {m.rss_kib / 1024:.1f} MiB, "
                  f"versions live {m.versions_live}, instances live {m.instances_live}")

        samples: list[SwapSample] = []
        polls, busy = 0, 0.0
        with TagPoller(hs.port) as poller:
            print(f"  time to first request: {args.swaps} swaps of each kind")
            # Small, seen bytes (both in the gateway's cache since the memory run).
            for _ in range(args.swaps):
                samples.append(hs.swap(poller, "b" if hs.current == "a" else "a"))
            # Small, new bytes: each a or b with a fresh nonce section.
            for _ in range(args.swaps):
                samples.append(hs.swap(poller, "b" if hs.current == "a" else "a", new=True))
            # Large, new bytes; back to a (not counted) between them.
            for i in range(args.swaps):
                if hs.current == "large":
                    hs.swap(poller, "a")
                samples.append(hs.swap(poller, "large", new=True))
                if i == 0:
                    status, headers, _ = hs.get()
                    if not re.fullmatch(r"[0-9a-f]{2}", headers.get("x-table-byte", "")):
                        raise BenchError(f"version-large answered without x-table-byte: "
                                         f"{status} {headers}")
            # Large, seen bytes: the original build, warmed once.
            hs.swap(poller, "a")
            hs.swap(poller, "large")
            for _ in range(args.swaps):
                hs.swap(poller, "a")
                samples.append(hs.swap(poller, "large"))
            hs.swap(poller, "a")
            poller.check()
            polls, busy = poller.requests, poller.interval_ms()
        for build, new in (("a", False), ("a", True), ("large", True), ("large", False)):
            kind = [s for s in samples if (s.build == "large") == (build == "large")
                    and s.new == new]
            print(f"    {SWAP_LABELS[build]:<22} {'new ' if new else 'seen'}: "
                  f"PUT {med_range([s.put_ms for s in kind], '.1f')} ms, then first "
                  f"response {med_range([s.after_put_ms for s in kind], '.2f')} ms")

        print(f"  memory: {args.memory_swaps} swaps a ↔ large")
        memory["a/large"], memory_swaps["a/large"], memory_after["a/large"] = memory_run(
            hs, ("a", "large"), args.memory_swaps)
        for m in memory["a/large"]:
            print(f"    after {m.swaps:>3} swaps: RSS {m.rss_kib / 1024:.1f} MiB, "
                  f"versions live {m.versions_live}, instances live {m.instances_live}")

        # Throughput at rest and while swapping, interleaved.
        url = f"http://{HOST}:{hs.port}/"
        sc = Scenario("hotswap", "wasmgate + swap filter", "wasmgate", modes="H")
        lp = LoadParams(args.connections_p, args.h2_clients, args.h2_streams)
        rest: list[Sample] = []
        swapping: list[Sample] = []
        rates: list[float] = []
        swaps_during: list[int] = []
        swapper_cpu: list[float] = []

        def measure(state: str, seconds: float, tag: str) -> tuple[Sample, int, float, float]:
            log_before = hs.proc.log.stat().st_size
            before = group_cpu_ticks(hs.proc.pgid)
            with Swapper(hs) if state == "swapping" else contextlib.nullcontext() as swapper:
                t0 = time.monotonic()
                sample = run_wrk(tools, url, seconds, lp, args.cpu_load, workdir, tag, sc)
                t1 = time.monotonic()
            used = (group_cpu_ticks(hs.proc.pgid) - before) / CLK_TCK
            sample.proxy_cpu = used / (t1 - t0)
            sample.proxy_us_per_req = used / sample.requests * 1e6
            if hs.proc.log.stat().st_size - log_before > 64 * 1024:
                raise BenchError(f"wasmgate wrote {hs.proc.log.stat().st_size - log_before} bytes "
                                 f"of log during one run:\n{hs.proc.log_tail(3)}")
            n = sum(1 for t in swapper.done_at if t0 <= t <= t1) if swapper else 0
            return sample, n, n / (t1 - t0), swapper.cpu_seconds / (t1 - t0) if swapper else 0.0

        print(f"  throughput: wrk, {args.connections_p} connections; at rest, then while "
              f"swapping a ↔ b; {args.rounds} rounds × {args.duration:g} s")
        if args.warmup > 0:
            for state in ("rest", "swapping"):
                measure(state, args.warmup, f"H-warmup-{state}")
        for r in range(1, args.rounds + 1):
            s, _, _, _ = measure("rest", args.duration, f"H-r{r}-rest")
            rest.append(s)
            w, n, rate, loop_cpu = measure("swapping", args.duration, f"H-r{r}-swapping")
            swapping.append(w)
            swaps_during.append(n)
            rates.append(rate)
            swapper_cpu.append(loop_cpu)
            print(f"  round {r}/{args.rounds}: at rest {s.rps:,.0f}/s | swapping {w.rps:,.0f}/s, "
                  f"{rate:.1f} swaps/s")
        status, headers, body = hs.get()
        if status != 200 or headers.get("x-version") != SWAP_TAGS[hs.current]:
            raise BenchError(f"after the swapping rounds: {status}, x-version "
                             f"{headers.get('x-version')!r}, expected {SWAP_TAGS[hs.current]!r}")
        if not hs.proc.alive():
            raise BenchError(f"wasmgate died:\n{hs.proc.log_tail()}")
        # CPU the machine spent on anything but this mode's processes.
        wall = time.monotonic() - wall_before
        ours = (own_cpu_seconds() + (group_cpu_ticks(upstream.pgid)
                                     + group_cpu_ticks(hs.proc.pgid)) / CLK_TCK - ours_before)
        others = max(0.0, (busy_ticks() - busy_before) / CLK_TCK - ours) / wall
        return HResult(sizes, samples, memory, memory_swaps, memory_after, rest, swapping,
                       rates, swaps_during, swapper_cpu, busy, polls, hs.cache_entries(),
                       args.connections_p, pinning, (load_before, os.getloadavg()), others,
                       wall)
    finally:
        os.sched_setaffinity(0, affinity)
        if hs is not None:
            procs.stop(hs.proc)


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


def table_t(result: ModeResult) -> str:
    """Mode T: one row per scenario, grouped by protocol. The figure compared is
    the proxy's own CPU time per request (from /proc), which leaves out the
    client's TLS/HTTP/2 work; 1/T − 1/T_direct against the cleartext direct run
    is given too, for comparison with mode S, but includes that client work."""
    by_name = {sc.name: sc for sc in result.scenarios}
    rows = ["| scenario | protocol | requests/s median (min–max) | p50 | p99 | proxy CPU | "
            "proxy CPU µs/request median (min–max) | ÷ wasmgate's | "
            "1/T − 1/T_direct µs (incl. client's TLS/h2 work) |",
            "|---|---|---:|---:|---:|---:|---:|---|---:|"]

    def per_req(name: str) -> list[float]:
        return [s.proxy_us_per_req for s in result.samples[name] if s.proxy_us_per_req is not None]

    for sc in result.scenarios:
        ss = result.samples[sc.name]
        rps = med_range([s.rps for s in ss], ",.0f")
        p50 = fmt_lat(statistics.median(s.p50_us for s in ss))
        p99 = fmt_lat(statistics.median(s.p99_us for s in ss))
        if sc.peer is None:
            pcpu = "—"
            # The upstream is the TLS server here: its CPU per request, for scale.
            ups = [s.upstream_us_per_req for s in ss if s.upstream_us_per_req is not None]
            per = (f"{med_range(ups, '.1f')} (upstream nginx)"
                   if sc.name != "direct" and ups else "—")
            ratio = "—"
        else:
            pcpu = f"{statistics.median(s.proxy_cpu or 0 for s in ss) * 100:.0f} %"
            mine = per_req(sc.name)
            per = med_range(mine, ".1f")
            ref = by_name.get(sc.ref) if sc.ref else None
            if ref is None or not mine:
                ratio = "—"
            elif ref.name == sc.name:
                ratio = "1 (reference)"
            else:
                theirs = per_req(ref.name)
                ratio = (f"{statistics.median(mine) / statistics.median(theirs):.2f} × {ref.name}"
                         if theirs and statistics.median(theirs) > 0 else "—")
        cost = ("—" if sc.name == "direct" or "direct" not in result.samples
                else med_range(costs(result, sc.name), ".1f"))
        rows.append(f"| {sc.label} | {sc.protocol} | {rps} | {p50} | {p99} | {pcpu} | {per} | "
                    f"{ratio} | {cost} |")
    return "\n".join(rows)


def table(result: ModeResult) -> str:
    if result.mode == "T":
        return table_t(result)
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


def table_baseline(result: ModeResult) -> str:
    """This build against the baseline, one row per pair NAME, NAME@base
    measured in the same rounds. Mode S compares the cost per request, mode F
    the proxy's CPU per request, mode P requests/s; "this − baseline" is taken round by round (the pair runs back to
    back in every round). The last column is issue 14's check: does this build's
    median fall within the baseline's min–max?"""
    mode_s = result.mode in "SF"

    def figure(name: str) -> list[float]:
        if result.mode == "F":
            return [x for x in proxy_per_req(result, name) if x is not None]
        return costs(result, name) if mode_s else [s.rps for s in result.samples[name]]

    unit, fmt = (("proxy CPU µs/request" if result.mode == "F" else "cost/request µs", ".1f")
                 if mode_s else ("requests/s", ",.0f"))
    rows = [f"| scenario | this build: {unit} median (min–max) | baseline: {unit} median "
            f"(min–max) | this ÷ baseline | this − baseline, round by round: median (min–max) | "
            f"this build's median within the baseline's min–max? |",
            "|---|---:|---:|---:|---:|---|"]
    for new, base in baseline_pairs(result.scenarios):
        mine, theirs = figure(new.name), figure(base.name)
        med, lo, hi = statistics.median(mine), min(theirs), max(theirs)
        if lo <= med <= hi:
            verdict = "yes"
        elif med > hi:
            verdict = "**no, above (costlier)**" if mode_s else "no, above (faster)"
        else:
            verdict = "no, below (cheaper)" if mode_s else "**no, below (slower)**"
        ref = statistics.median(theirs)
        ratio = f"{med / ref:.3f}" if ref > 0 else "—"
        diffs = [a - b for a, b in zip(mine, theirs)]
        rows.append(f"| {new.label} (`{new.name}` vs `{base.name}`) | {med_range(mine, fmt)} | "
                    f"{med_range(theirs, fmt)} | {ratio} | {med_range(diffs, '+' + fmt)} | "
                    f"{verdict} |")
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


def tls_versions(tools: Tools) -> dict[str, str]:
    """The TLS stacks and HTTP/2 client of mode T."""
    rustls = "unknown"
    lock = REPO / "Cargo.lock"
    if lock.exists():
        m = re.search(r'name = "rustls"\nversion = "([^"]+)"', lock.read_text())
        rustls = m.group(1) if m else rustls
    nginx_v = subprocess.run([tools.nginx, "-V"], capture_output=True, text=True).stderr
    m = re.search(r"built with (OpenSSL [^\n]*)", nginx_v)
    return {
        "TLS in wasmgate": f"rustls {rustls} (ring provider)",
        "TLS in nginx": m.group(1) if m else "unknown",
        "TLS in Envoy": "BoringSSL (built in)",
        "h2load": cmd_output([tools.h2load, "--version"]),
        "TLS in wrk and h2load": (cmd_output([tools.openssl, "version"]) if tools.openssl
                                  else "the system's OpenSSL"),
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


def section_t(result: ModeResult, args, vers: dict[str, str], when: str,
              tls: TlsFiles | None) -> str:
    quick = ("\n> **Quick run** (short rounds, smoke test of the harness): "
             "not a result to quote.\n" if args.quick else "")
    notes = "\n".join(f"- {name}: {note}" for name, note in result.notes.items()) or "- (none)"
    vlines = "\n".join(f"- {k}: {v}" for k, v in vers.items())
    made_by = tls.made_by if tls else "—"
    return f"""### Mode T: HTTPS termination and HTTP/2 (everything on one CPU)
{quick}
- Date: {when}
- Machine: {machine()}
- Pinning: {result.pinning}
- TLS: every TLS listener (each proxy's, and the upstream's own for the `direct` rows)
  serves the same self-signed ECDSA P-256 certificate ({made_by}) and offers TLS 1.2
  and 1.3 and ALPN `h2`, `http/1.1` (nginx: `ssl_protocols TLSv1.2 TLSv1.3`, since
  nginx before 1.23.4 leaves 1.3 out by default). The clients offer only TLS 1.3 with
  `{TLS13_SUITE}` (wrk through `OPENSSL_CONF`, h2load `--tls13-ciphers`), so every
  peer negotiates the same suite. Session resumption is at each peer's default.
- Load, header `{API_KEY_HEADER}: {API_KEY}` on every request (every peer gets the same
  requests); {args.rounds} rounds × {args.duration:g} s per scenario, interleaved
  round-robin, after a {args.warmup:g} s warm-up each; peers not being measured are
  frozen (SIGSTOP):
  - {P_HTTPS}: wrk, 1 thread, {result.connections} connections, keep-alive: one TLS
    handshake per connection, amortized over the run. wrk offers no ALPN.
  - {P_H2} and {P_H2C}: h2load, 1 thread, {args.h2_clients} connections ×
    {args.h2_streams} concurrent streams, keep-alive; h2 by ALPN, h2c by prior knowledge.
  - {P_NEWCONN}: wrk, 1 thread, {result.connections} connections, `Connection: close`
    on every request: a TCP connection and a TLS handshake per request. wrk offers the
    previous connection's session, so where a peer resumes sessions (see "Negotiated")
    the handshake is a TLS 1.3 resumption (PSK with ECDHE, no certificate signature).
- Every peer: one worker/thread, logs off, cleartext HTTP/1.1 keep-alive to the same
  upstream as in modes S and P. wasmgate: `workers = 1`, `[access_log] enabled = false`,
  `WASMGATE_LOG=warn,rustls=error` (rustls warns on every connection whose SNI is
  an IP address, as wrk's is), `[server.tls]`. Envoy: `codec_type: AUTO` and a
  `DownstreamTlsContext`. nginx: `listen … ssl http2` (h2c: `listen … http2`).
- Command: `{args.command}`

proxy CPU µs/request = CPU time of the proxy's processes during the run (from `/proc`)
÷ requests completed, per round. It leaves out the load generator's own TLS and HTTP/2
work, which on one CPU is part of every requests/s figure, so it is the figure to
compare; "÷ wasmgate's" divides its medians by the named wasmgate scenario of the same
protocol (plain peers by plain wasmgate, filter peers by wasmgate + api-key + headers).
For the `direct` rows that column is the upstream nginx's own CPU per request, serving
TLS itself. The last column is mode S's cost, 1/T − 1/T_direct against the same round's
cleartext `direct` run: it includes the client's extra work (TLS; h2load instead of
wrk), the same for every peer of one protocol. Latencies are medians over rounds of
the per-round p50/p99 (wrk's; for h2load, computed from its `--log-file`).

{table(result)}

Negotiated (the pre-check: `openssl s_client` with wrk's settings for the wrk rows, h2load
itself for the h2 rows, which also reports it in every round):
{notes}

Versions:
{vlines}
"""


def table_b(result: ModeResult) -> str:
    """Mode B throughput: one row per (balance, endpoints, peer), ratios against
    wasmgate with the same balance and endpoints."""
    by_name = {sc.name: sc for sc in result.scenarios}
    rows = ["| balance | endpoints | peer | requests/s median (min–max) | p50 | p99 | proxy CPU | "
            "cost/request µs median (min–max) | requests/s ÷ wasmgate's | cost ÷ wasmgate's | "
            "requests per endpoint under load |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|---|---|"]
    have_direct = "direct" in result.samples and result.samples["direct"]
    for sc in result.scenarios:
        ss = result.samples[sc.name]
        rps = med_range([s.rps for s in ss], ",.0f")
        p50 = fmt_lat(statistics.median(s.p50_us for s in ss))
        p99 = fmt_lat(statistics.median(s.p99_us for s in ss))
        if sc.peer is None:
            rows.append(f"| — | 1 (e1) | {sc.label} | {rps} | {p50} | {p99} | — | — | — | — | — |")
            continue
        pcpu = f"{statistics.median(s.proxy_cpu or 0 for s in ss) * 100:.0f} %"
        c = costs(result, sc.name) if have_direct else []
        cost = med_range(c, ".1f")
        ref = by_name.get(sc.ref) if sc.ref else None
        if ref is None:
            rps_ratio = cost_ratio = "—"
        elif ref.name == sc.name:
            rps_ratio = cost_ratio = "1 (reference)"
        else:
            mine = statistics.median(s.rps for s in ss)
            theirs = statistics.median(s.rps for s in result.samples[ref.name])
            rps_ratio = f"{mine / theirs:.2f} ×"
            rc = statistics.median(costs(result, ref.name)) if have_direct else 0
            cost_ratio = f"{statistics.median(c) / rc:.2f} ×" if c and rc > 0 else "—"
        served = [sum(x) for x in zip(*(s.per_endpoint for s in ss if s.per_endpoint))]
        n = sc.opts.get("endpoints", 1)
        served = served[:n] if served else []
        total = sum(served)
        share = (" / ".join(f"{100 * x / total:.0f}" for x in served) + " %") if total else "—"
        balance = BALANCES[sc.opts.get("balance", "rr")].label
        rows.append(f"| {balance} | {n} | {sc.label} | {rps} | {p50} | {p99} | {pcpu} | {cost} | "
                    f"{rps_ratio} | {cost_ratio} | {share} |")
    return "\n".join(rows)


def kill_retry_label(sc: Scenario) -> str:
    if sc.peer == "nginx":
        return ("`proxy_next_upstream error timeout` (connect failure or reset), 1 retry; "
                "retries in flight: no limit")
    conds = KILL_RETRY[sc.opts["kill"]][sc.peer]
    conds = conds if isinstance(conds, str) else ", ".join(conds)
    if sc.opts.get("retry_cap"):
        knob = ("`max_retries`" if sc.peer == "envoy" else "`min_retry_concurrency`")
        cap = f"up to {sc.opts['retry_cap']} ({knob} = {sc.opts['retry_cap']})"
    elif sc.peer == "envoy":
        cap = "3 (default)"
    else:
        cap = "3 (`min_retry_concurrency` = 3, Envoy's default; wasmgate's is 10)"
    return f"`{conds}`, 1 retry; retries in flight: {cap}"


def table_kill(result: ModeResult) -> str:
    rows = ["| peer | retried on | responses per run median (min–max) | errors per run "
            "(each round) | errors: what (all rounds) | after the kill: "
            f"{KILL_AFTER_GETS} GETs |",
            "|---|---|---:|---|---|---|"]
    for sc in result.kill_scenarios:
        ks = result.kills.get(sc.name, [])
        if not ks:
            continue
        reqs = med_range([k.requests for k in ks], ",.0f")
        per_round = " / ".join(str(k.errors) for k in ks)
        statuses: dict[int, int] = {}
        sock: dict[str, int] = {}
        for k in ks:
            for code, count in k.statuses.items():
                if not 200 <= code < 400:
                    statuses[code] = statuses.get(code, 0) + count
            for what, count in k.socket.items():
                sock[what] = sock.get(what, 0) + count
        what = [f"{count} × {code}" for code, count in sorted(statuses.items())]
        what += [f"{count} socket {kind} error{'s' if count != 1 else ''}"
                 for kind, count in sock.items() if count]
        died = sum(not k.proxy_alive for k in ks)
        if died:
            what.append(f"**the proxy died in {died} run{'s' if died != 1 else ''}**")
        after_ok = [k.after_ok for k in ks if k.proxy_alive]
        by: dict[str, int] = {}
        for k in ks:
            for e, count in k.after_by.items():
                by[e] = by.get(e, 0) + count
        after = (f"{min(after_ok)}–{max(after_ok)} × 200" if after_ok and min(after_ok) != max(after_ok)
                 else f"{after_ok[0]} × 200" if after_ok else "—")
        if by:
            after += " (from " + ", ".join(f"{e}" for e in sorted(by)) + ")"
        rows.append(f"| {sc.label} | {kill_retry_label(sc)} | {reqs} | {per_round} | "
                    f"{', '.join(what) or 'none'} | {after} |")
    return "\n".join(rows)


def section_b(result: ModeResult, args, vers: dict[str, str], when: str) -> str:
    quick = ("\n> **Quick run** (short rounds, smoke test of the harness): "
             "not a result to quote.\n" if args.quick else "")
    keep = ["wasmgate", "rustc", "nginx", "Envoy", "wrk"]
    vlines = "\n".join(f"- {k}: {vers[k]}" for k in keep if k in vers)
    vlines += (f"\n- upstream endpoints: one nginx each, `return 200 \"hello\\n\"` with "
               f"`add_header {UPSTREAM_ID_HEADER} eN`, 1 worker, access log off")
    spread = "\n".join(f"- {name}: {note}" for name, note in result.notes.items()) or "- (none)"
    parts = [f"""### Mode B: balancing over several endpoints, and an endpoint killed under load
{quick}
- Date: {when}
- Machine: {machine()}
- Pinning: {result.pinning}
- Every peer: one worker/thread, logs off, HTTP/1.1 keep-alive to the endpoints.
  wasmgate: `workers = 1`, `[access_log] enabled = false`, `WASMGATE_LOG=warn`.
- Command: `{args.command}`
"""]
    if result.scenarios:
        parts.append(f"""#### Throughput by balancing algorithm

- Load: wrk, 1 thread, {result.connections} connections, keep-alive, header
  `{API_KEY_HEADER}: {API_KEY}` and `{USER_HEADER}: user-N` on every request, N cycling
  through {WRK_USERS} values (a wrk script, used for every row, `direct` too);
  {args.rounds} rounds × {args.duration:g} s per scenario, interleaved round-robin,
  after a {args.warmup:g} s warm-up each; peers not being measured are frozen (SIGSTOP).
- Endpoints: {MAX_ENDPOINTS} nginx processes (e1 … e{MAX_ENDPOINTS}), each on its own port;
  a row with N endpoints balances over e1 … eN. `direct` is wrk straight at e1.
- The algorithms, per peer:
  - round robin: nginx's default; Envoy `ROUND_ROBIN`; wasmgate `balance = "round_robin"`.
  - least request: nginx `least_conn` (fewest active connections, round robin among
    equals); Envoy `LEAST_REQUEST` (default: the better of two picked at random);
    wasmgate `balance = "least_request"` (also the better of two).
  - consistent hash on `{USER_HEADER}`: nginx `hash $http_x_user consistent` (ketama);
    Envoy `RING_HASH` with a route `hash_policy` on the header; wasmgate
    `balance = "ring_hash"`, `hash_on = "header:{USER_HEADER}"`.
  - random: nginx `random`; Envoy `RANDOM`; wasmgate `balance = "random"`.
- Before any load, {SPREAD_REQUESTS} GETs in a row through every peer (`{USER_HEADER}`
  user-0 … user-{SPREAD_REQUESTS // 2 - 1}, each twice) must all answer 200 from the endpoints named in their `{UPSTREAM_ID_HEADER}`
  header, every endpoint answering, and under consistent hashing each `{USER_HEADER}`
  always from the same endpoint.

cost/request = 1/T_proxy − 1/T_direct, computed per round against that round's direct
run (as in mode S); both ratio columns divide medians by wasmgate's with the same algorithm
and endpoint count. "requests per endpoint" is each endpoint's share of the requests it
served during the measured rounds (nginx `stub_status`). Latencies are medians over rounds
of wrk's per-round p50/p99.

{table_b(result)}

Spread check (before load):
{spread}
""")
    if result.kills:
        parts.append(f"""#### An endpoint killed under load

- Round robin over 2 endpoints (e1, e2). Each run starts from the same state: both
  endpoints up, the peer started afresh and checked to reach both (20 GETs). Then wrk,
  1 thread, {args.connections} connections, keep-alive, `--timeout 2s`, loads it for
  {args.kill_duration:g} s, and {args.kill_at:g} s in e{KILL_VICTIM + 1} gets SIGKILL (master and worker at once:
  no graceful close). {args.rounds} rounds, peers interleaved; e{KILL_VICTIM + 1} is restarted
  between runs.
- Errors = wrk's non-2xx responses + socket errors (connect, read, write, timeout): what a
  client saw. After each run, {KILL_AFTER_GETS} GETs in a row on new connections show where
  the peer sends traffic with e{KILL_VICTIM + 1} still down.
- Retry and passive health, set alike where the peers allow it: one retry, to another
  endpoint; an endpoint ejected for {KILL_EJECT_SECONDS} s after {KILL_EJECT_AFTER} connect failures in a
  row; no active health checks.
  - nginx: `server … max_fails={KILL_EJECT_AFTER} fail_timeout={KILL_EJECT_SECONDS}s`,
    `proxy_next_upstream error timeout` (the default: a GET is retried after a connect
    failure and after a connection that failed once the request was sent),
    `proxy_next_upstream_tries 2`.
  - Envoy: route `retry_policy` with `num_retries: 1`, the `previous_hosts` retry host
    predicate, and `retry_on` as in the table; cluster `outlier_detection` with
    `split_external_local_origin_errors: true`,
    `consecutive_local_origin_failure: {KILL_EJECT_AFTER}`, `base_ejection_time: {KILL_EJECT_SECONDS}s`,
    `max_ejection_percent: {KILL_MAX_EJECTED_PERCENT}` (Envoy's default, 10, ejects neither of 2
    hosts: every request to the dead one then fails its connect). Circuit breakers at
    their defaults (`max_retries`: 3 retries in flight) except in the `max_retries =
    {KILL_RETRY_CAP}` row.
  - wasmgate: `[clusters.upstream.retry]` `retries = 1`, `on` as in the table;
    `min_retry_concurrency = 3` to match Envoy, except `{KILL_RETRY_CAP}` in its row (the last
    row is wasmgate's default: `reset` included, at least 10 retries in flight);
    `[clusters.upstream.outlier]` `consecutive_connect_failures = {KILL_EJECT_AFTER}`,
    `base_ejection = "{KILL_EJECT_SECONDS}s"`; `max_ejected_percent` ({KILL_MAX_EJECTED_PERCENT})
    and the retry budget's 20 % at their defaults.
  - Retries in flight: Envoy allows 3 by default, wasmgate 10 (the rows set 3 to compare),
    nginx has no limit. At the
    kill every request in flight to e{KILL_VICTIM + 1} fails at once (and so may requests just
    sent on idle pooled connections that e{KILL_VICTIM + 1}'s kernel has closed), so the rows
    with {KILL_RETRY_CAP} (as many as wrk's connections: every request may retry) show what
    the limit costs.

{table_kill(result)}
""")
    parts.append(f"Versions:\n{vlines}\n")
    return "\n".join(parts)


def proxy_per_req(result: ModeResult, name: str) -> list[float | None]:
    """The proxy's own CPU µs per request, per round (None where unknown)."""
    return [s.proxy_us_per_req for s in result.samples.get(name, [])]


def round_diffs(result: ModeResult, a: str, b: str) -> list[float]:
    """a's proxy µs/request minus b's, round by round (rounds interleave the
    scenarios, so the two runs of one round are minutes apart at most)."""
    return [x - y for x, y in zip(proxy_per_req(result, a), proxy_per_req(result, b))
            if x is not None and y is not None]


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def table_f(result: ModeResult) -> str:
    """Mode F: every row; the figure is the proxy's own CPU per request and its
    excess over the same proxy without filters (`base`), round by round."""
    rows = ["| scenario | requests/s median (min–max) | p50 | p99 | proxy CPU | "
            "proxy CPU µs/request median (min–max) | extra over no filter µs median (min–max) | "
            "1/T − 1/T_direct µs median (min–max) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    names = set(result.samples)
    for sc in result.scenarios:
        ss = result.samples[sc.name]
        rps = med_range([s.rps for s in ss], ",.0f")
        p50 = fmt_lat(statistics.median(s.p50_us for s in ss))
        p99 = fmt_lat(statistics.median(s.p99_us for s in ss))
        if sc.peer is None:
            rows.append(f"| {sc.label} | {rps} | {p50} | {p99} | — | — | — | — |")
            continue
        pcpu = f"{statistics.median(s.proxy_cpu or 0 for s in ss) * 100:.0f} %"
        per = med_range([x for x in proxy_per_req(result, sc.name) if x is not None], ".1f")
        if sc.base == sc.name:
            extra = "0 (reference)"
        elif sc.base in names:
            extra = med_range(round_diffs(result, sc.name, sc.base), "+.1f")
        else:
            extra = "—"
        cost = med_range(costs(result, sc.name), ".1f") if "direct" in names else "—"
        rows.append(f"| {sc.label} | {rps} | {p50} | {p99} | {pcpu} | {per} | {extra} | {cost} |")
    return "\n".join(rows)


def table_f_filters(result: ModeResult) -> str:
    """Mode F, one row per filter (or chain): pooled and fresh side by side."""
    rows = ["| filter | pooled: proxy µs/request | pooled: extra µs | fresh: proxy µs/request | "
            "fresh: extra µs | fresh − pooled µs |",
            "|---|---:|---:|---:|---:|---:|"]
    seen: list[str] = []
    for sc in result.scenarios:
        if sc.frow and sc.frow not in seen:
            seen.append(sc.frow)
    by_name = {sc.name: sc for sc in result.scenarios}
    for key in seen:
        pooled, fresh = by_name.get(f"wasmgate-{key}"), by_name.get(f"wasmgate-{key}-fresh")
        cells = []
        for sc in (pooled, fresh):
            if sc is None:
                cells += ["not run", "—"]
                continue
            cells.append(med_range([x for x in proxy_per_req(result, sc.name) if x is not None], ".1f"))
            cells.append(med_range(round_diffs(result, sc.name, sc.base), "+.1f")
                         if sc.base in result.samples else "—")
        diff = (med_range(round_diffs(result, fresh.name, pooled.name), "+.1f")
                if pooled and fresh else "—")
        label = (pooled or fresh).label.removeprefix("wasmgate + ")  # type: ignore[union-attr]
        rows.append(f"| {label} | {' | '.join(cells)} | {diff} |")
    return "\n".join(rows)


def table_f_envoy(result: ModeResult) -> str:
    """Mode F: the Envoy rows against the wasmgate rows doing the same work."""
    rows = ["| what | wasmgate: proxy µs/request | wasmgate: extra µs | Envoy: proxy µs/request | "
            "Envoy: extra µs | Envoy ÷ wasmgate, per request | Envoy extra ÷ wasmgate extra |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    by_name = {sc.name: sc for sc in result.scenarios}
    for sc in result.scenarios:
        if sc.peer != "envoy" or sc.ref not in by_name:
            continue
        wg = by_name[sc.ref]
        e_per = [x for x in proxy_per_req(result, sc.name) if x is not None]
        w_per = [x for x in proxy_per_req(result, wg.name) if x is not None]
        if sc.base == sc.name:
            what, e_extra, w_extra = "no filter", [], []
        else:
            what = f"{sc.label.removeprefix('Envoy + ')} vs {wg.label.removeprefix('wasmgate + ')}"
            e_extra = round_diffs(result, sc.name, sc.base) if sc.base in result.samples else []
            w_extra = round_diffs(result, wg.name, wg.base) if wg.base in result.samples else []
        em, wm = _med(e_per), _med(w_per)
        ratio = f"{em / wm:.2f} ×" if em and wm else "—"
        eem, wem = _med(e_extra), _med(w_extra)
        extra_ratio = f"{eem / wem:.2f} ×" if eem is not None and wem and wem > 0 else "—"
        rows.append(f"| {what} | {med_range(w_per, '.1f')} | "
                    f"{med_range(w_extra, '+.1f') if w_extra else '—'} | {med_range(e_per, '.1f')} | "
                    f"{med_range(e_extra, '+.1f') if e_extra else '—'} | {ratio} | {extra_ratio} |")
    return "\n".join(rows)


def f_baseline(result: ModeResult, args) -> str:
    """Mode F with `--baseline`: this build's rows beside the baseline's."""
    if not baseline_pairs(result.scenarios):
        return ""
    build, desc = baseline_build(args.baseline)
    return (f"\nThis build against baseline {build} ({desc}; `NAME{BASELINE_SUFFIX}` rows "
            f"above, run right after their counterparts in every round), proxy CPU per "
            f"request, {args.rounds} rounds:\n\n{table_baseline(result)}\n")


def section_f(result: ModeResult, args, vers: dict[str, str], when: str,
              made_by: str) -> str:
    quick = ("\n> **Quick run** (short rounds, smoke test of the harness): "
             "not a result to quote.\n" if args.quick else "")
    keep = ["wasmgate", "rustc", "Envoy", "wrk", "upstream"]
    vlines = "\n".join(f"- {k}: {vers[k]}" for k in keep if k in vers)
    ran = {sc.frow for sc in result.scenarios if sc.frow}
    configs = "\n".join(f"- {key}: {what}" for key, what in F_WHAT.items() if key in ran)
    return f"""### Mode F: the first-party filters, one at a time, pooled and fresh (everything on one CPU)
{quick}
- Date: {when}
- Machine: {machine()}
- Pinning: {result.pinning}
- Load: wrk, 1 thread, {result.connections} connections, keep-alive, header
  `{API_KEY_HEADER}: {API_KEY}` on every request and each row's own headers (below);
  {args.rounds} rounds × {args.duration:g} s per scenario, interleaved round-robin,
  after a {args.warmup:g} s warm-up each; peers not being measured are frozen (SIGSTOP).
- Every peer: one worker/thread, logs off, HTTP/1.1 keep-alive to the upstream.
  wasmgate: `workers = 1`, `[access_log] enabled = false`, `WASMGATE_LOG=warn`, one route
  with the row's filters; "fresh" rows set `isolation = "fresh"` on every filter of it.
- Keys, tokens and credentials made into the work folder at run time
  ({made_by});
  tokens carry `iss`, `aud`, `sub`, `iat` and an `exp` a day ahead. Each row's
  pre-check proves the filter did its work (200 with the expected answer; for the
  authentication rows, 401 without the credential and 401 with a forged one: a
  flipped signature bit, a wrong password).
- Command: `{args.command}`

proxy CPU µs/request = CPU time of the proxy's processes during the run (from `/proc`,
10 ms ticks) ÷ requests completed, per round; "extra" = that minus the same proxy's
without filters in the same round (wasmgate's rows against `wasmgate`, the JSON rows
against `wasmgate, GET /json`, Envoy's against `Envoy`), median and min–max over rounds.
It leaves out the upstream's and wrk's work, which the last column (mode S's
1/T − 1/T_direct) includes: a row whose answer costs the upstream more (aggregate's
two backend requests) or wrk more (long headers) shows it only there. Latencies are
medians over rounds of wrk's per-round p50/p99.

{table_f(result)}
{f_baseline(result, args)}
Per filter (wasmgate; "extra" over wasmgate without filters, "fresh − pooled" round by
round):

{table_f_filters(result)}

Against Envoy's native filters (same requests, same RS256 key and token):

{table_f_envoy(result)}

What each row runs:
{configs}
- Envoy + jwt_authn: one provider, `issuer` `{JWT_ISSUER}`, `audiences` [`{JWT_AUDIENCE}`],
  `local_jwks` `inline_string` = the JWKS wasmgate's jwt rows read, `forward: true`
  (the token stays in the request, as wasmgate's `hide_credentials = false` default);
  one rule, prefix `/`, requiring it. No `jwt_cache_config`: Envoy verifies every
  request's signature, as wasmgate's filter does (neither caches verified tokens).
- Envoy chain: `jwt_authn` as above, then `local_ratelimit` (one token bucket,
  {RATE_LIMIT:,} tokens per 1 s fill, `filter_enabled` and `filter_enforced` 100 %,
  `enable_x_ratelimit_headers: DRAFT_VERSION_03`), then `header_mutation` (request:
  remove `x-debug`, set `x-gateway`; `query_parameter_mutations`: remove `debug`, set
  `source=gateway`; response: set `{SERVED_BY[0]}`), and the route's `prefix_rewrite`
  (`/api/` → `/v2/`) for the path, which Envoy does in its router rather than in a
  filter. The differences from wasmgate's chain: one bucket for everyone where
  wasmgate's rate-limit keys on the client address (one address here), and Envoy's
  `x-ratelimit-*` headers where wasmgate sends `RateLimit-*`.
- nginx is not in this mode: open-source nginx has no JWT verification (that is
  NGINX Plus's `auth_jwt`, or a third-party module or njs script), and no native
  equivalent of the chain's JWT step.

Versions:
{vlines}
"""


# --------------------------------------------------------------------------
# Mode C's report


C_NGINX, C_WASMGATE = "nginx-cache", "wasmgate-cache"   # the headline pair


def cache_versions() -> dict[str, str]:
    """Mode C: the cache library inside wasmgate (from Cargo.lock)."""
    moka = "unknown"
    lock = REPO / "Cargo.lock"
    if lock.exists():
        m = re.search(r'name = "moka"\nversion = "([^"]+)"', lock.read_text())
        moka = m.group(1) if m else moka
    return {"wasmgate's response cache": f"moka {moka}, in memory"}


def _upstream_share(ss: list[Sample]) -> str:
    """Requests that reached the upstream during the measured rounds, of those
    wrk completed (wrk's last requests in flight reach it uncounted)."""
    up = [s.upstream_requests for s in ss if s.upstream_requests is not None]
    total = sum(s.requests for s in ss)
    if not up or not total:
        return "—"
    return f"{sum(up):,} ({100 * sum(up) / total:.1f} %)"


def _ratio_rounds(mine: list[float], theirs: list[float]) -> list[float]:
    """mine ÷ theirs, round by round (both measured in every round)."""
    return [a / b for a, b in zip(mine, theirs) if b > 0]


def table_c(result: ModeResult) -> str:
    """Mode C: every row, with ratios against uncached nginx."""
    rows = ["| scenario | requests/s median (min–max) | p50 | p99 | proxy CPU | "
            "proxy CPU µs/request median (min–max) | cost/request µs median (min–max) | "
            "cost ÷ nginx's | requests/s ÷ nginx's | requests that reached the upstream |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    have = result.samples
    nginx_c = statistics.median(costs(result, "nginx")) if "nginx" in have and "direct" in have else None
    nginx_rps = statistics.median(s.rps for s in have["nginx"]) if "nginx" in have else None
    for sc in result.scenarios:
        if sc.name in result.unmeasured:
            why = " ".join(result.unmeasured[sc.name].split()).replace("|", "\\|")[:300]
            rows.append(f"| {sc.label} | not measured: {why} | — | — | — | — | — | — | — | — |")
            continue
        ss = have[sc.name]
        rps = med_range([s.rps for s in ss], ",.0f")
        p50 = fmt_lat(statistics.median(s.p50_us for s in ss))
        p99 = fmt_lat(statistics.median(s.p99_us for s in ss))
        reached = _upstream_share(ss)
        if sc.peer is None:
            ups = [s.upstream_us_per_req for s in ss if s.upstream_us_per_req is not None]
            per = f"{med_range(ups, '.1f')} (upstream nginx)" if ups else "—"
            rows.append(f"| {sc.label} | {rps} | {p50} | {p99} | — | {per} | — | — | — | {reached} |")
            continue
        pcpu = f"{statistics.median(s.proxy_cpu or 0 for s in ss) * 100:.0f} %"
        per = med_range([x for x in proxy_per_req(result, sc.name) if x is not None], ".1f")
        c = costs(result, sc.name) if "direct" in have else []
        cost = med_range(c, ".1f")
        if sc.name == "nginx":
            cost_ratio = rps_ratio = "1 (reference)"
        else:
            cost_ratio = (f"{statistics.median(c) / nginx_c:.2f} × nginx"
                          if c and nginx_c and nginx_c > 0 else "—")
            rps_ratio = (f"{statistics.median(s.rps for s in ss) / nginx_rps:.2f} × nginx"
                         if nginx_rps else "—")
        rows.append(f"| {sc.label} | {rps} | {p50} | {p99} | {pcpu} | {per} | {cost} | "
                    f"{cost_ratio} | {rps_ratio} | {reached} |")
    return "\n".join(rows)


def c_headline(result: ModeResult) -> tuple[str, str]:
    """Mode C's headline: wasmgate's cost per hit against nginx's, as a
    sentence with the target's verdict and as a table of every figure."""
    have = result.samples
    if C_NGINX not in have or C_WASMGATE not in have or "direct" not in have:
        missing = [n for n in (C_NGINX, C_WASMGATE) if n not in have]
        why = "; ".join(f"`{n}`: {result.unmeasured.get(n, 'not selected')}" for n in missing)
        return (f"**Cost per hit: not measured** ({why}).", "")
    rows = ["| figure | nginx + proxy_cache | wasmgate + cache | wasmgate ÷ nginx, ratio of medians | "
            "wasmgate ÷ nginx, round by round: median (min–max) | target: ≤ 1 |",
            "|---|---:|---:|---:|---:|---|"]
    verdicts: dict[str, tuple[float, int, int]] = {}
    figures = [
        ("cost per hit µs (1/T − 1/T_direct)", costs(result, C_NGINX), costs(result, C_WASMGATE),
         ".1f", True),
        ("proxy CPU µs per hit (from /proc)",
         [x for x in proxy_per_req(result, C_NGINX) if x is not None],
         [x for x in proxy_per_req(result, C_WASMGATE) if x is not None], ".1f", True),
        ("requests/s", [s.rps for s in have[C_NGINX]], [s.rps for s in have[C_WASMGATE]],
         ",.0f", False),
    ]
    for label, ng, wg, fmt, target in figures:
        ng_m, wg_m = _med(ng), _med(wg)
        ratio = f"{wg_m / ng_m:.2f}" if ng_m and wg_m is not None and ng_m > 0 else "—"
        per_round = _ratio_rounds(wg, ng)
        verdict = "—"
        if target and ratio != "—" and all(x > 0 for x in ng):
            below = sum(1 for x in per_round if x <= 1)
            verdicts[label] = (wg_m / ng_m, below, len(per_round))  # type: ignore[operator]
            verdict = (("met" if wg_m <= ng_m else "**not met**")  # type: ignore[operator]
                       + f" ({below} of {len(per_round)} rounds ≤ 1)")
        rows.append(f"| {label} | {med_range(ng, fmt)} | {med_range(wg, fmt)} | {ratio} | "
                    f"{med_range(per_round, '.2f')} | {verdict} |")
    for label, key in (("p50", "p50_us"), ("p99", "p99_us")):
        ng_l = statistics.median(getattr(s, key) for s in have[C_NGINX])
        wg_l = statistics.median(getattr(s, key) for s in have[C_WASMGATE])
        rows.append(f"| {label} latency | {fmt_lat(ng_l)} | {fmt_lat(wg_l)} | "
                    f"{wg_l / ng_l:.2f} | — | — |")
    ng_c, wg_c = _med(costs(result, C_NGINX)), _med(costs(result, C_WASMGATE))
    cost_v = verdicts.get(figures[0][0])
    cpu_v = verdicts.get(figures[1][0])
    if cost_v is None:
        line = (f"**Cost per hit: wasmgate + cache {wg_c:.1f} µs, nginx + proxy_cache "
                f"{ng_c:.1f} µs** (nginx's is not above 0 in every round: no ratio).")
    else:
        line = (f"**Cost per hit: wasmgate + cache {wg_c:.1f} µs, nginx + proxy_cache {ng_c:.1f} µs: "
                f"{cost_v[0]:.2f} × nginx's; target ≤ 1: {'met' if cost_v[0] <= 1 else 'not met'}** "
                f"(≤ 1 in {cost_v[1]} of {cost_v[2]} rounds")
        if cpu_v is not None:
            line += (f"; by the proxies' own CPU per hit, {cpu_v[0]:.2f} × nginx's: "
                     f"{'met' if cpu_v[0] <= 1 else 'not met'}, ≤ 1 in {cpu_v[1]} of {cpu_v[2]} rounds")
        line += ")."
    return line, (f"\nThe headline, wasmgate's cache against nginx's (the same {len(have['direct'])} "
                  f"rounds):\n\n" + "\n".join(rows) + "\n")


def table_c_uncached(result: ModeResult) -> str:
    """Mode C: each cache against the same peer on the same route uncached."""
    rows = ["| peer | uncached: cost/request µs | hit: cost/request µs | hit − uncached µs, round "
            "by round: median (min–max) | hit ÷ uncached, cost | uncached: requests/s | "
            "hits: requests/s | hits ÷ uncached, requests/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    have = result.samples
    for sc in result.scenarios:
        if not sc.opts.get("cache"):
            continue
        base = sc.base or ""
        if sc.name not in have or base not in have or "direct" not in have:
            why = "not measured" if sc.name in result.unmeasured or base in result.unmeasured else "—"
            rows.append(f"| {sc.label} | {why} | — | — | — | — | — | — |")
            continue
        hit, unc = costs(result, sc.name), costs(result, base)
        diffs = [a - b for a, b in zip(hit, unc)]
        hm, um = statistics.median(hit), statistics.median(unc)
        hr = statistics.median(s.rps for s in have[sc.name])
        ur = statistics.median(s.rps for s in have[base])
        rows.append(f"| {sc.label} (against `{base}`) | {med_range(unc, '.1f')} | "
                    f"{med_range(hit, '.1f')} | {med_range(diffs, '+.1f')} | "
                    f"{f'{hm / um:.2f}' if um > 0 else '—'} | "
                    f"{med_range([s.rps for s in have[base]], ',.0f')} | "
                    f"{med_range([s.rps for s in have[sc.name]], ',.0f')} | {hr / ur:.2f} |")
    return "\n".join(rows)


def section_c(result: ModeResult, args, vers: dict[str, str], when: str) -> str:
    quick = ("\n> **Quick run** (short rounds, smoke test of the harness): "
             "not a result to quote.\n" if args.quick else "")
    vers = {**vers, "upstream": f"nginx `return 200 \"hello\\n\"`, on `{CACHE_PATH}` with "
                                f"`Cache-Control: {CACHE_CONTROL}`, 1 worker, access log off"}
    keep = ["wasmgate", "wasmgate's response cache", "rustc", "nginx", "wrk", "upstream"]
    vlines = "\n".join(f"- {k}: {vers[k]}" for k in keep if k in vers)
    headline, headline_table = c_headline(result)
    nginx_name = f"{C_NGINX}-{result.mode}"
    cache_dir = (result.cache_dir / nginx_name if result.cache_dir
                 else CACHE_TMPFS / "wasmgate-bench-cache-…" / nginx_name)
    checks = "\n".join(f"  - `{name}`: {note}" for name, note in result.notes.items())
    skipped = "\n".join(f"  - `{name}`: **not measured**: {why}"
                        for name, why in result.unmeasured.items())
    checks = "\n".join(x for x in (checks, skipped) if x) or "  - (no caching row ran)"
    return f"""### Mode C: cache hits against the same route uncached and against nginx's proxy_cache (everything on one CPU)
{quick}
- Date: {when}
- Machine: {machine()}
- Pinning: {result.pinning}
- Load: wrk, 1 thread, {result.connections} connections, keep-alive, `GET {CACHE_PATH}` with
  `{API_KEY_HEADER}: {API_KEY}` on every request (every row gets the same requests);
  {args.rounds} rounds × {args.duration:g} s per scenario, interleaved round-robin,
  after a {args.warmup:g} s warm-up each; peers not being measured are frozen (SIGSTOP).
- Upstream: `location = {CACHE_PATH}` answers `hello\\n` with `Cache-Control: {CACHE_CONTROL}`,
  the caches' only source of freshness (no `proxy_cache_valid`, no `default_ttl`); a
  `stub_status` listener counts the requests that reach it (last column).
- Every peer: one worker/thread, logs off, HTTP/1.1 keep-alive to the upstream.
  wasmgate: `workers = 1`, `[access_log] enabled = false`, `WASMGATE_LOG=warn`.
- nginx + proxy_cache: `proxy_cache_path {cache_dir} keys_zone={NGINX_CACHE_ZONE}:10m
  use_temp_path=off;`, the folder on tmpfs (`{CACHE_TMPFS}`, checked in `/proc/mounts`),
  so hits are read from memory, never from a disk; in the location `proxy_cache
  {NGINX_CACHE_ZONE}; proxy_cache_lock on; add_header {NGINX_CACHE_STATUS}
  $upstream_cache_status;`; nginx's defaults otherwise (key
  `$scheme$proxy_host$request_uri`, `sendfile off`, no `open_file_cache`). Its CPU
  includes the cache manager and loader processes nginx starts beside the worker.
- wasmgate + cache: `[cache] max_bytes = "{WASMGATE_CACHE_BYTES}"` and
  `cache = {WASMGATE_ROUTE_CACHE}` on its one route (every default); its hits carry
  `Cache-Status` and `Age`.
- Checks before any load: every answer is 200 with the upstream's body and its
  `Cache-Control`; each caching row is warmed with one GET and the second must be a
  hit (wasmgate: `Cache-Status` starting `wasmgate; hit`; nginx: `{NGINX_CACHE_STATUS}: HIT`),
  or the row is reported here and not measured; the uncached rows carry neither header.
  What they saw:
{checks}
- Command: `{args.command}`

cost/request = 1/T_proxy − 1/T_direct, per round against that round's direct run (wrk
straight at the upstream, on `{CACHE_PATH}` too), as in mode S; "÷ nginx's" divides
medians by uncached nginx's. On one CPU, 1/T_direct is wrk's and the upstream's time per
request: an uncached row adds the proxy's, so its cost is the proxy's time per request;
a hit leaves the upstream out, so a caching row's cost is the proxy's time per hit
*less* the upstream's time per request (the direct row's proxy CPU column). That offset
is the same for both caches: their difference is exact, their ratio is of the offset
figures. proxy CPU µs/request = CPU time of the proxy's processes during the run (from
`/proc`, 10 ms ticks) ÷ requests completed: the proxy's own time per request or per hit,
without the offset. Latencies are medians over rounds of wrk's per-round p50/p99.

{headline}

{table_c(result)}
{headline_table}
Each cache against the same peer on the same route uncached:

{table_c_uncached(result)}

Versions:
{vlines}
"""


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def memory_verdict(mem: list[MemorySample], after: MemorySample) -> tuple[str, float, float]:
    """(verdict, MiB grown over the second half of the swaps, KiB per swap there).
    Flat: less than 2 MiB over the second half, and one live version after."""
    last = mem[-1]
    mid = min(mem, key=lambda m: abs(m.swaps - last.swaps / 2))
    grown = (last.rss_kib - mid.rss_kib) / 1024
    per_swap = (last.rss_kib - mid.rss_kib) / max(1, last.swaps - mid.swaps)
    if grown < 2 and after.versions_live == 1:
        verdict = "plateau: no growth per swap beyond noise"
    else:
        verdict = "**growing**: see the table"
    return verdict, grown, per_swap


def section_h(res: HResult, args, vers: dict[str, str], when: str) -> str:
    quick = ("\n> **Quick run** (short rounds, smoke test of the harness): "
             "not a result to quote.\n" if args.quick else "")
    keep = ["wasmgate", "rustc", "wrk", "upstream"]
    vlines = "\n".join(f"- {k}: {vers[k]}" for k in keep if k in vers)
    (l1, _, l15), (e1, _, e15) = res.load_avg
    shared = (f"**other processes used {res.other_cpu * 100:.0f} % of one CPU on average** "
              f"during the mode: the machine was shared and the figures are noisier"
              if res.other_cpu > 0.1 else
              f"other processes used {res.other_cpu * 100:.0f} % of one CPU on average "
              f"during the mode")
    small, large = res.sizes["a"], res.sizes["large"]
    rest_cpu = statistics.median(s.proxy_cpu or 0.0 for s in res.rest)
    swap_cpu = statistics.median(s.proxy_cpu or 0.0 for s in res.swapping)

    rows = ["| module uploaded | bytes | swaps | PUT sent → 200 (ms) | 200 → first response "
            "from it (ms) | PUT sent → first response (ms) |", "|---|---|---|---|---|---|"]
    kinds = [("small", False, "small (version-a/b), seen bytes: cached, linked + init", small),
             ("small", True, "small (version-a/b), new bytes: compiled", small),
             ("large", False, "large (version-large), seen bytes: cached, linked + init", large),
             ("large", True, "large (version-large), new bytes: compiled", large)]
    for size_class, new, label, size in kinds:
        kind = [s for s in res.samples if (s.build == "large") == (size_class == "large")
                and s.new == new]
        rows.append(f"| {label} | {size:,} | {len(kind)} | "
                    f"{med_range([s.put_ms for s in kind], '.1f')} | "
                    f"{med_range([s.after_put_ms for s in kind], '.2f')} | "
                    f"{med_range([s.from_sent_ms for s in kind], '.1f')} |")
    # The memory runs' swaps, measured the same way: one row per size.
    for pair, lat in res.memory_swaps.items():
        first, second = pair.split("/")
        for is_large in (False, True):
            kind = [s for s in lat if (s.build == "large") == is_large]
            if not kind:
                continue
            to = "version-large" if is_large else "version-a/b"
            rows.append(f"| {to}, seen bytes: the swaps to it in the {first} ↔ {second} "
                        f"memory run | {res.sizes['large' if is_large else 'a']:,} | "
                        f"{len(kind)} | {med_range([s.put_ms for s in kind], '.1f')} | "
                        f"{med_range([s.after_put_ms for s in kind], '.2f')} | "
                        f"{med_range([s.from_sent_ms for s in kind], '.1f')} |")
    latency = "\n".join(rows)

    ratios = [w.rps / s.rps for s, w in zip(res.rest, res.swapping)]
    # The gateway's CPU for a swap: what it used while swapping beyond its
    # at-rest cost per request for the same requests, per swap (per round).
    per_swap = [(w.proxy_us_per_req - s.proxy_us_per_req) * w.requests / n / 1e3
                for s, w, n in zip(res.rest, res.swapping, res.swaps_during) if n]
    trows = ["| | requests/s | p50 | p99 | wasmgate CPU | wasmgate CPU µs/request | "
             "wrk CPU | swaps/s | upload loop CPU | non-2xx, socket errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, ss, rates, loop in (("at rest", res.rest, None, None),
                                   ("swapping a ↔ b", res.swapping, res.swap_rates,
                                    res.swapper_cpu)):
        trows.append(
            f"| {label} | {med_range([s.rps for s in ss], ',.0f')} | "
            f"{fmt_lat(statistics.median(s.p50_us for s in ss))} | "
            f"{fmt_lat(statistics.median(s.p99_us for s in ss))} | "
            f"{med_range([s.proxy_cpu * 100 for s in ss if s.proxy_cpu is not None], '.0f')} % | "
            f"{med_range([s.proxy_us_per_req for s in ss if s.proxy_us_per_req], '.1f')} | "
            f"{med_range([s.load_cpu * 100 for s in ss], '.0f')} % | "
            f"{med_range(rates, '.1f') if rates else '—'} | "
            f"{med_range([c * 100 for c in loop], '.0f') + ' %' if loop else '—'} | 0, 0 |")
    throughput = "\n".join(trows)
    if rest_cpu >= 0.9 and swap_cpu >= 0.9 and per_swap:
        share = statistics.median(res.swap_rates) * statistics.median(per_swap) / 1e3
        why = (f"The gateway's CPU was saturated both at rest and while swapping, so the drop "
               f"is its own work on the swaps: {statistics.median(res.swap_rates):.0f} swaps/s "
               f"× {statistics.median(per_swap):.2f} ms ≈ {share * 100:.0f} % of its CPU, "
               f"against a drop of {(1 - statistics.median(ratios)) * 100:.0f} % in requests/s. "
               f"The upload loop shares wrk's CPU (its share in the table).")
    else:
        why = ("The gateway's CPU was not saturated in both states, and the upload loop runs "
               "on wrk's CPU (its share in the table): part of the drop in requests/s may be "
               "the load side's; compare the gateway's CPU µs/request.")

    mem_parts = []
    for pair, mem in res.memory.items():
        after = res.memory_after[pair]
        base = mem[0].rss_kib
        mrows = ["| swaps | RSS (MiB) | change since before (MiB) | versions live | "
                 "instances live |", "|---|---|---|---|---|"]
        for m in mem:
            mrows.append(f"| {m.swaps if m.swaps else '0 (before)'} | {_mib(m.rss_kib)} | "
                         f"{(m.rss_kib - base) / 1024:+.1f} | {m.versions_live} | "
                         f"{m.instances_live} |")
        mrows.append(f"| {after.swaps}, after 2 s idle | {_mib(after.rss_kib)} | "
                     f"{(after.rss_kib - base) / 1024:+.1f} | {after.versions_live} | "
                     f"{after.instances_live} |")
        verdict, grown, kib_per_swap = memory_verdict(mem, after)
        first, second = pair.split("/")
        mem_parts.append(f"Swaps {first} ↔ {second} (seen bytes, each confirmed by a response "
                         f"from the new build):\n\n" + "\n".join(mrows) +
                         f"\n\nOver the second half of the swaps RSS changed by {grown:+.1f} MiB "
                         f"({kib_per_swap:+.1f} KiB per swap): {verdict}.")
    memory = "\n\n".join(mem_parts)

    return f"""### Mode H: hot swap of a filter module through the admin API
{quick}
- Date: {when}
- Machine: {machine()}
- Other work: {shared} ({res.seconds:.0f} s; busy time of all CPUs from `/proc/stat`
  minus this mode's processes). Load average (1 min, 15 min): {l1:.2f}, {l15:.2f} when
  the mode started, {e1:.2f}, {e15:.2f} when it ended (this includes the mode's own load).
- Pinning: {res.pinning}
- wasmgate: `workers = 1`, `[access_log] enabled = false`, `WASMGATE_LOG=warn`, an admin
  listener with a token made at run time, `[engine] cache_dir` a new folder in the work
  folder (so new bytes are compiled, and stored as the default cache does, never found
  from an earlier run); one route, `/` to the upstream, with one filter, `swap`, started
  with `version-a`. Uploads: `PUT /filters/swap/module` with the component and
  `x-wasmgate-sha256`, from one keep-alive connection.
- Builds: `version-a` and `version-b` ({small:,} and {res.sizes["b"]:,} bytes; tag
  `x-version: aa` / `bb`),
  `version-large` ({large:,} bytes: the same filter with a 6 MiB pseudo-random table it
  reads one byte of per response; tag `ll`). "New bytes" are a build with a custom
  section holding a fresh nonce appended: the same code under a sha256 the gateway has
  never seen, so it compiles it (the harness checks that each added an entry to the
  compile cache). "Seen bytes" are a build uploaded before, still among the 8 compiled
  components the gateway keeps: no compile, only linking and running `init`.
- Command: `{args.command}`

**Time to the first request served by a new module.** A client (this script, one
keep-alive connection) sends `GET /` in a loop and reads `x-version`; "first response
from it" is when the first response carrying the new build's tag was received. Its
round trip is {res.poll_interval_ms:.2f} ms on average ({res.poll_requests:,} requests): the
resolution of the last two columns. "200 → first response" can be negative: the new
build answered a request before the upload's own answer reached the client. Every
response was a 200 tagged by exactly one build, and none came from the old build
once the new one had answered. Median (min–max) over the swaps:

{latency}

**Throughput at rest and during continuous swapping.** wrk, 1 thread,
{res.connections} connections, keep-alive, `GET /` through the filter; {args.rounds} rounds ×
{args.duration:g} s of each, interleaved (at rest, swapping, at rest, …), after a
{args.warmup:g} s warm-up of each. While swapping, a loop uploads `version-b` and
`version-a` in turn (seen bytes), each as soon as the previous upload is answered.
wrk saw no non-2xx answer and no socket error (the harness stops otherwise). Median
(min–max) over rounds:

{throughput}

Requests/s while swapping ÷ at rest, per round: {med_range(ratios, '.3f')}. The
gateway's CPU per swap (its CPU while swapping beyond its at-rest µs/request for the
same requests, ÷ swaps; `/proc` ticks of 10 ms): {med_range(per_swap, '.2f')} ms.
{why}

**Resident memory across {args.memory_swaps} swaps**, twice: between `version-a` and
`version-b` first (right after the start), then between `version-a` and
`version-large` (after the swaps above, so with the large builds' compiled code in
the gateway's cache). VmRSS of the gateway (`/proc/PID/status`) and the gauges
`wasmgate_filter_versions_live` and `wasmgate_filter_instances_live` of `swap` (from
`/metrics`): before the swaps (both builds already compiled and served), every
{MEMORY_EVERY} swaps, and after a 2 s pause. The polling client runs throughout. The
gateway keeps the 8 most recent compiled components, expected memory that does not
grow with swaps between the same two builds. At the end of the mode the on-disk
compile cache held {res.cache_entries} compiled components.

{memory}

Versions:
{vlines}
"""


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
    pairs = baseline_pairs(result.scenarios)
    baseline = ""
    if pairs:
        build, desc = baseline_build(args.baseline)
        title += f": this build against baseline {build}"
        baseline = (f"- Baseline: {desc}, binary `{args.baseline}`, filters "
                    f"`{args.baseline_filters_dir}`. Every wasmgate scenario below also runs "
                    f"with that build as `NAME{BASELINE_SUFFIX}`, with the same config (written "
                    f"the same way, checked by its own `wasmgate check`), right after its "
                    f"counterpart in every round.\n")
        method += (f" `NAME{BASELINE_SUFFIX}` rows are divided by the baseline's own "
                   f"reference. The second table sets each scenario beside its baseline: "
                   f"the ratio of medians, the difference round by round, and whether this "
                   f"build's median falls within the baseline's min–max.")
    compare = (f"\nThis build against the baseline ({'cost per request' if result.mode == 'S' else 'requests/s'}"
               f", {args.rounds} rounds):\n\n{table_baseline(result)}\n" if pairs else "")
    return f"""### {title}
{quick}
- Date: {when}
- Machine: {machine()}
- Pinning: {result.pinning}
{baseline}- Load: wrk, 1 thread, {result.connections} connections, keep-alive, header
  `{API_KEY_HEADER}: {API_KEY}` on every request (every peer gets the same requests);
  {args.rounds} rounds × {args.duration:g} s per scenario, interleaved round-robin,
  after a {args.warmup:g} s warm-up each; peers not being measured are frozen (SIGSTOP).
- Every peer: one worker/thread, logs off, HTTP/1.1 keep-alive to the upstream.
  wasmgate: `workers = 1`, `[access_log] enabled = false`, `WASMGATE_LOG=warn`.
- Command: `{args.command}`

{method} Latencies are medians over rounds of wrk's per-round p50/p99.

{table(result)}
{compare}
Versions:
{vlines}
"""


def write_markdown(path: Path, mode: str, text: str) -> None:
    """Replaces the section `mode` (a mode, or "S-baseline" for a `--baseline`
    run of mode S) of `path`, or adds it in SECTION_ORDER."""
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
        # Sections in the order S, S-baseline, P, P-baseline, T, ... whatever
        # order the runs happened in: after the nearest earlier section, else
        # before the nearest later one, else at the end.
        i = SECTION_ORDER.index(mode)
        earlier = [MARK_END.format(mode=m) for m in reversed(SECTION_ORDER[:i])
                   if MARK_END.format(mode=m) in current]
        later = [MARK_BEGIN.format(mode=m) for m in SECTION_ORDER[i + 1:]
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
    ap.add_argument("--mode", choices=["S", "P", "T", "B", "F", "C", "H", "both", "all"],
                    default="both",
                    help="S, P, T (TLS and HTTP/2), B (balancing and an endpoint kill), "
                         "F (the first-party filters, pooled and fresh, and against "
                         "Envoy's native ones), C (cache hits: wasmgate's response cache "
                         "against the same route uncached and against nginx's proxy_cache "
                         "on tmpfs), H (hot swap of a filter module), both "
                         "(S and P: the default) or all (S, P, T, B, F, C, H)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 2 s rounds, 2 rounds, 1 s warm-up, 3 s kill runs; does "
                         "not write BENCHMARKS.md unless --write is given")
    ap.add_argument("--rounds", type=int, help="rounds per mode (default 5; quick 2)")
    ap.add_argument("--duration", type=float, help="seconds per round and scenario (default 10; quick 2)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per scenario (default 3; quick 1)")
    ap.add_argument("--kill-duration", type=float,
                    help="mode B: seconds of load per kill run (default 6; quick 3)")
    ap.add_argument("--kill-at", type=float,
                    help="mode B: seconds into a kill run when the endpoint is killed "
                         "(default 2; quick 1)")
    ap.add_argument("--swaps", type=int,
                    help="mode H: swaps measured per kind of upload (default 10; quick 3)")
    ap.add_argument("--memory-swaps", type=int,
                    help="mode H: swaps of the memory run (default 200; quick 40)")
    ap.add_argument("--connections", type=int, default=10,
                    help="wrk connections in modes S, T, B, F and C (default 10)")
    ap.add_argument("--connections-p", type=int, default=50,
                    help="wrk connections in mode P, enough to keep the proxy's CPU busy "
                         "across the two CPUs' wake-up latency (default 50)")
    ap.add_argument("--h2-clients", type=int, default=10,
                    help="h2load connections in mode T (default 10)")
    ap.add_argument("--h2-streams", type=int, default=10,
                    help="h2load concurrent streams per connection in mode T (default 10)")
    ap.add_argument("--scenarios", help="comma-separated subset (direct is always included); "
                                        "--list shows them")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--cpu-s", default="0", help="the CPU of modes S, T, B, F and C (default 0)")
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
    ap.add_argument("--baseline", type=Path,
                    help="an older wasmgate release build (bench/baseline.sh COMMIT makes one): "
                         "every wasmgate scenario of modes S and P also runs with it as "
                         f"NAME{BASELINE_SUFFIX}, interleaved in the same rounds, and the report "
                         "compares each pair; writes the sections S-baseline / P-baseline "
                         "instead of S / P")
    ap.add_argument("--baseline-filters-dir", type=Path,
                    help="the baseline's filter components (default: `filters/` next to the "
                         "--baseline binary, as bench/baseline.sh lays them out, or "
                         "target/filters/wasm32-wasip2/release of a target/release/wasmgate)")
    ap.add_argument("--proxy-wasm", type=Path,
                    default=BENCH_DIR / "proxy-wasm-filter" / "target" / "wasm32-wasip1" / "release"
                    / "bench_proxy_wasm_filter.wasm")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # Configs live in the work folder: paths in them must be absolute.
    args.wasmgate, args.filters_dir, args.proxy_wasm = (
        p.resolve() for p in (args.wasmgate, args.filters_dir, args.proxy_wasm))
    if args.baseline is None:
        if args.baseline_filters_dir is not None:
            ap.error("--baseline-filters-dir needs --baseline")
    else:
        if args.mode not in ("S", "P", "F", "both"):
            ap.error(f"--baseline compares modes S, P and F only (--mode S, P, F or both), "
                     f"not --mode {args.mode}")
        args.baseline = args.baseline.resolve()
        if args.baseline_filters_dir is None:
            beside = args.baseline.parent / "filters"
            cargo = args.baseline.parent.parent / "filters" / "wasm32-wasip2" / "release"
            if beside.is_dir():
                args.baseline_filters_dir = beside
            elif args.baseline.parent.name == "release" and cargo.is_dir():
                args.baseline_filters_dir = cargo
            else:
                ap.error(f"no filters next to {args.baseline} ({beside} or {cargo}): "
                         f"give --baseline-filters-dir")
        args.baseline_filters_dir = args.baseline_filters_dir.resolve()
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.kill_duration = args.kill_duration or (3.0 if args.quick else 6.0)
    args.swaps = args.swaps or (3 if args.quick else 10)
    args.memory_swaps = args.memory_swaps or (40 if args.quick else 200)
    args.kill_at = args.kill_at if args.kill_at is not None else (1.0 if args.quick else 2.0)
    if not 0 < args.kill_at < args.kill_duration:
        ap.error("--kill-at must be between 0 and --kill-duration")
    if args.write is None:
        args.write = not args.quick
    args.command = args.command or "python3 bench/bench.py " + shlex.join(argv)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.list:
        for sc in SCENARIOS:
            extra = f", {sc.protocol}" if "T" in sc.modes and sc.name != "direct" else ""
            if sc.opts.get("endpoints"):
                n = sc.opts["endpoints"]
                extra = f", {BALANCES[sc.opts['balance']].label}, {n} endpoint{'s' if n > 1 else ''}"
                if is_kill(sc):
                    extra += f", e{KILL_VICTIM + 1} killed under load, retried after {KILL_WHAT[sc.opts['kill']]}"
                    if sc.opts.get("retry_cap"):
                        extra += f", up to {sc.opts['retry_cap']} retries in flight"
            print(f"{sc.name:<29} modes {sc.modes:<5} {sc.label}{extra}")
        if args.baseline:
            build, _ = baseline_build(args.baseline)
            for sc in SCENARIOS:
                if sc.peer == "wasmgate" and any(m in BASELINE_MODES for m in sc.modes):
                    b = baseline_variant(sc, build)
                    print(f"{b.name:<29} modes {b.modes:<5} {b.label}")
        return 0

    scenarios = SCENARIOS
    if args.scenarios:
        wanted = {s.strip() for s in args.scenarios.split(",") if s.strip()} | {"direct"}
        unknown = wanted - {sc.name for sc in SCENARIOS}
        if unknown:
            raise BenchError(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        # A scenario whose wasmgate reference is not selected shows no ratio.
        scenarios = [sc for sc in SCENARIOS if sc.name in wanted]

    modes = {"both": ["S", "P"], "all": list(MODE_ORDER)}.get(args.mode, [args.mode])
    per_mode = {m: [sc for sc in scenarios if m in sc.modes] for m in modes}
    for m in list(modes):
        # Mode H has no scenarios: it runs whatever --scenarios says.
        if m != "H" and all(sc.name == "direct" for sc in per_mode[m]) and args.scenarios:
            print(f"mode {m}: none of the selected scenarios runs in it; skipped")
            modes.remove(m)
    if not modes:
        raise BenchError("no selected scenario runs in the selected mode(s): see --list "
                         "(the TLS and HTTP/2 scenarios need --mode T, the balancing ones "
                         "--mode B)")
    scenarios = [sc for sc in scenarios if any(m in sc.modes for m in modes)]
    if args.baseline:
        build, _ = baseline_build(args.baseline)
        for m in modes:
            if m in BASELINE_MODES:
                per_mode[m] = with_baselines(per_mode[m], build)
        if not any(baseline_pairs(per_mode[m]) for m in modes):
            raise BenchError("--baseline: no wasmgate scenario of modes S or P is selected")

    needs = {sc.peer for sc in scenarios}
    tls_mode = "T" in modes
    tools = Tools(
        nginx=find_tool("nginx", None),
        haproxy=find_tool("haproxy", None) if "haproxy" in needs else "haproxy",
        envoy=(find_tool("envoy", args.envoy) if "envoy" in needs
               else args.envoy or shutil.which("envoy") or "envoy"),
        wrk=find_tool("wrk", None),
        wasmgate=args.wasmgate,
        filters_dir=args.filters_dir,
        proxy_wasm=args.proxy_wasm,
        h2load=find_tool("h2load", None) if tls_mode else "h2load",
        curl=find_tool("curl", None) if tls_mode else "curl",
        openssl=shutil.which("openssl"),
        baseline=args.baseline,
        baseline_filters_dir=args.baseline_filters_dir,
    )
    wasms = {f for sc in scenarios if sc.peer == "wasmgate" for f, _ in sc.opts.get("chain", [])}
    for path in [tools.wasmgate, *(tools.filters_dir / f"{f.replace('-', '_')}.wasm"
                                   for f in sorted(wasms | {"api-key", "headers"}))]:
        if "wasmgate" in needs and not path.exists():
            raise BenchError(f"{path} is missing: build with `cargo build --release -p wasmgate "
                             f"--workspace` (bench/run.sh does)")
    if args.baseline:
        for path in [args.baseline, *(args.baseline_filters_dir / f"{f.replace('-', '_')}.wasm"
                                      for f in sorted(wasms))]:
            if not path.exists():
                raise BenchError(f"{path} is missing: the --baseline build (bench/baseline.sh "
                                 f"COMMIT makes one)")
    if "H" in modes:
        for path in [tools.wasmgate, *(tools.filters_dir / f for f in SWAP_BUILDS.values())]:
            if not path.exists():
                raise BenchError(f"{path} is missing: build with `cargo build --release -p "
                                 f"wasmgate --workspace` (bench/run.sh does)")
    if any(sc.opts.get("wasm") for sc in scenarios) and not tools.proxy_wasm.exists():
        raise BenchError(f"{tools.proxy_wasm} is missing (bench/run.sh builds it)")
    for cpu in {args.cpu_s, args.cpu_proxy, args.cpu_load}:
        if int(cpu) not in os.sched_getaffinity(0):
            raise BenchError(f"CPU {cpu} is not available here (have {sorted(os.sched_getaffinity(0))})")

    # A kill run also starts its peer afresh and checks it: about 1 s more.
    est = sum(args.rounds * (args.kill_duration + 1) if is_kill(sc)
              else args.rounds * args.duration + args.warmup
              for m in modes for sc in per_mode[m])
    if "H" in modes:
        # At rest and swapping in every round, plus the swaps themselves
        # (roughly 0.1 s for small seen bytes up to 1 s for large new ones).
        est += 2 * (args.rounds * args.duration + args.warmup) + args.memory_swaps * 0.04 \
            + args.swaps * 3
    for m in modes:
        if m != "H":
            print(f"mode {m} scenarios: {', '.join(sc.name for sc in per_mode[m])}")
    print(f"modes: {', '.join(modes)}; {args.rounds} rounds × {args.duration:g} s; "
          f"about {est / 60:.1f} min of load")

    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="wasmgate-bench-"))
    os.chmod(workdir, 0o755)  # nginx workers run as an unprivileged user
    ok = False
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        # One upstream for every peer and every mode: in modes S and T it shares
        # the CPU of everything else, in mode P the CPU of wrk (all CPU 0 by default).
        if "P" in modes and len(modes) > 1 and args.cpu_s != args.cpu_load:
            raise BenchError(f"--mode {args.mode} needs --cpu-s equal to --cpu-load "
                             f"(one shared upstream)")
        upstream_cpu = args.cpu_load if "P" in modes else args.cpu_s
        upstream_port, upstream_tls_port, upstream_status_port = free_ports(3)
        # Mode T: one certificate for every TLS listener, and a TLS + HTTP/2
        # listener on the upstream for the no-proxy reference rows.
        tls = make_tls_files(workdir, tools.openssl) if tls_mode else None
        # Mode F: keys, tokens and a Basic credential for the auth filters.
        fsecrets = make_filter_secrets(workdir, tools.openssl) if "F" in modes else None
        upstream = None  # mode B alone brings its own endpoints
        # Mode C: a stub_status listener on the upstream, to count the
        # requests that reach it (none, from a cache serving hits).
        cache_mode = "C" in modes
        if any(m in modes for m in ("S", "P", "T", "F", "C", "H")):
            upstream = start_upstream(Ctx(tools, procs, workdir, upstream_port, tls),
                                      upstream_port, upstream_cpu,
                                      upstream_tls_port if tls_mode else None,
                                      upstream_status_port if cache_mode else None)
            wait_listening(upstream, upstream_port)
            if tls_mode:
                wait_listening(upstream, upstream_tls_port)
            if cache_mode:
                wait_listening(upstream, upstream_status_port)

        results = [run_mode(m, args, tools, procs, workdir, upstream, upstream_port, per_mode[m],
                            tls, upstream_tls_port if tls_mode else None,
                            fsecrets.values if fsecrets else None,
                            upstream_status_port if m == "C" else None)
                   for m in modes if m != "H"]
        hot = (run_mode_h(args, tools, procs, workdir, upstream, upstream_port)
               if upstream is not None and "H" in modes else None)
        vers = versions(tools)
        if args.baseline:
            vers["wasmgate baseline"] = baseline_build(args.baseline)[1]
        for res in results:
            if res.mode == "T":
                text = section_t(res, args, vers | tls_versions(tools), when, tls)
            elif res.mode == "B":
                text = section_b(res, args, vers, when)
            elif res.mode == "F":
                assert fsecrets is not None
                text = section_f(res, args, vers, when, fsecrets.made_by)
            elif res.mode == "C":
                text = section_c(res, args, vers | cache_versions(), when)
            else:
                text = section(res, args, vers, when)
            print("\n" + text)
            if args.write:
                # A baseline run never replaces the mode's own section.
                write_markdown(args.output, f"{res.mode}-baseline" if args.baseline
                               else res.mode, text)
        if hot is not None:
            text = section_h(hot, args, vers, when)
            print("\n" + text)
            if args.write:
                write_markdown(args.output, "H", text)
        if args.write:
            print(f"written to {args.output}")
        else:
            print(f"(not written to {args.output}; pass --write)")
        (workdir / "results.json").write_text(json.dumps({
            res.mode: {name: [vars(s) | {"raw": None} for s in ss]
                       for name, ss in (res.samples | res.kills).items()}
            for res in results} | ({"H": hot_json(hot)} if hot else {}), indent=1))
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
