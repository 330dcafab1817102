"""{{name}}: a wasmgate filter in Python, built with componentize-py.

It declares the request phase, and adds `x-{{name}}: <greeting>` to every
request it passes on (config: {"greeting": "..."}, default "hello").
Build: ./build.sh (writes out/filter.wasm).

The app module exports a class named after the exported interface
(`Filter`); `init` refuses a config by raising `Err`; module top-level
code runs at build time and is snapshotted.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

_greeting = "hello"


class Filter(exports.Filter):
    def init(self, config: str, setup: types.Setup) -> None:
        global _greeting
        try:
            c = json.loads(config or "{}")
        except ValueError as e:
            raise Err(f"config is not valid JSON: {e}")
        greeting = c.get("greeting", "hello") if isinstance(c, dict) else None
        if not isinstance(greeting, str):
            raise Err("`greeting` must be a string")
        _greeting = greeting
        setup.on_request()

    def on_request(self, req: types.Request) -> types.RequestDecision:
        req.set_header("x-{{name}}", _greeting)
        return types.RequestDecision_Proceed()

    def on_response(
        self, req: types.Request, resp: types.Response
    ) -> types.ResponseDecision:
        return types.ResponseDecision_Proceed()
