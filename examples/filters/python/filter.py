"""An API key check for wasmgate, in Python (componentize-py).

A request without one of the keys from the config in its header is answered
401 in the gateway's error format; every response gets `x-filter-lang:
python`. The same behaviour as the Rust, C and JavaScript examples beside this one.
Built against wasmgate:filter@0.2.x, world `plugin`, with componentize-py
(see build.sh).

config: {"keys":["k1","k2"],"header":"x-api-key"}  (header optional)

componentize-py conventions (0.25.1):
- The app module exports a class named after the exported interface
  (`filter` -> `Filter`), subclassing `wit_world.exports.Filter`; the host
  gets one instance of it, made when the component is instantiated.
- `result<_, string>` is the return value on success and a raised
  `componentize_py_types.Err(message)` on failure.
- Borrowed handles (setup, request, response) are plain `types.Setup` /
  `types.Request` / `types.Response` objects; the generated glue releases
  the borrows when the export returns, so the filter does nothing with them.
- `types.Response(401)` calls the resource constructor and yields an own
  handle; returning it in `RequestDecision_Respond` hands it to the host.
- Module top-level code (the imports below) runs at build time: componentize-py
  pre-initializes the interpreter and snapshots it, so `import json` costs
  nothing per instance.
"""

import json
from hmac import compare_digest

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

UNAUTHORIZED = (
    b'{"status":401,"code":"unauthorized","message":"missing or invalid API key"}'
)
_TCHAR = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
)

# Per-instance state, set by init (one component instance = one interpreter).
_keys: list = []
_header: str = "x-api-key"


def _parse(config: str):
    """Returns (keys as UTF-8 bytes, lower-cased header name) or raises Err."""
    try:
        c = json.loads(config)
    except ValueError as e:
        raise Err(f"config is not valid JSON: {e}")
    if not isinstance(c, dict):
        raise Err("config must be a JSON object")
    keys = c.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise Err("`keys` must be an array of strings")
    if not keys:
        raise Err("`keys` must list at least one key")
    if any(k == "" for k in keys):
        raise Err("`keys` must not contain an empty key")
    header = c.get("header", "x-api-key")
    if not isinstance(header, str):
        raise Err("`header` must be a string")
    if not header or not all(ch in _TCHAR for ch in header):
        raise Err("`header` is not a valid header name")
    return [k.encode("utf-8") for k in keys], header.lower()


def _accepts(given: bytes) -> bool:
    # Every key is compared in full (constant time per key, no early exit
    # across keys), so timing tells little about a guess.
    found = False
    for key in _keys:
        found |= compare_digest(key, given)
    return found


class Filter(exports.Filter):
    def init(self, config: str, setup: types.Setup) -> None:
        global _keys, _header
        _keys, _header = _parse(config)
        setup.on_request()
        setup.on_response()

    def on_request(self, req: types.Request) -> types.RequestDecision:
        values = req.header(_header)
        if values and _accepts(values[0].encode("utf-8")):
            return types.RequestDecision_Proceed()
        resp = types.Response(401)
        resp.set_header("content-type", "application/json")
        resp.set_header("www-authenticate", "ApiKey")
        resp.set_body(UNAUTHORIZED)
        return types.RequestDecision_Respond(resp)

    def on_response(
        self, req: types.Request, resp: types.Response
    ) -> types.ResponseDecision:
        resp.set_header("x-filter-lang", "python")
        return types.ResponseDecision_Proceed()
