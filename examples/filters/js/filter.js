// An API key check for wasmgate, in JavaScript: a request without one of the
// keys from the config in its header is answered 401 in the gateway's error
// format; every response gets `x-filter-lang: js`. The same behaviour as the
// C and Rust examples. Built with componentize-js against the gateway's
// contract (wasmgate:filter@0.2.x, world `plugin`); see build.sh.
//
// config: {"keys":["k1","k2"],"header":"x-api-key"}  (header optional)
//
// How componentize-js maps the contract (0.23.0):
// - the exported interface `filter` is the ES export `filter`, an object
//   whose functions are the interface's in camelCase (on-request -> onRequest);
// - imported resources are classes of the interface's module
//   ('wasmgate:filter/types@0.2.1'): `new Response(401)`, methods in
//   camelCase (set-header -> setHeader); borrowed handles (setup, request,
//   response) are objects valid for the call, nothing to drop;
// - a variant is `{ tag: 'respond', val: resp }` / `{ tag: 'proceed' }`;
// - result<_, string>: return normally for ok; for err, throw the message
//   as a string (or return { tag: 'err', val: message }). Throwing an Error
//   object does NOT become err: the bindings expect a string and trap
//   ("expected a string, received [object]"), so init's refusals are strings;
// - list<u8> is a Uint8Array; list<string> an Array of strings.

import { Response } from 'wasmgate:filter/types@0.2.1';

const UNAUTHORIZED = new TextEncoder().encode(
  '{"status":401,"code":"unauthorized","message":"missing or invalid API key"}',
);
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

let keys = [];
let header = 'x-api-key';

function parseConfig(text) {
  let c;
  try {
    c = JSON.parse(text);
  } catch (e) {
    throw `config is not valid JSON: ${e.message}`;
  }
  if (c === null || typeof c !== 'object' || Array.isArray(c)) {
    throw 'config must be a JSON object';
  }
  // Members other than `keys` and `header` are ignored, as in the C example.
  if (!Array.isArray(c.keys) || !c.keys.every((k) => typeof k === 'string')) {
    throw '`keys` must be an array of strings';
  }
  if (c.keys.length === 0) throw '`keys` must list at least one key';
  if (c.keys.some((k) => k.length === 0)) throw '`keys` must not contain an empty key';
  let h = 'x-api-key';
  if (c.header !== undefined) {
    if (typeof c.header !== 'string') throw '`header` must be a string';
    h = c.header;
  }
  if (!TOKEN.test(h)) throw '`header` is not a valid header name';
  return { keys: c.keys.slice(), header: h.toLowerCase() };
}

// Compares against every key in full, so timing tells little about a guess.
function accepts(cand) {
  let found = 0;
  for (const key of keys) {
    let diff = key.length !== cand.length ? 1 : 0;
    for (let i = 0; i < key.length; i++) {
      diff |= key.charCodeAt(i) ^ (i < cand.length ? cand.charCodeAt(i) : 0);
    }
    found |= diff === 0 ? 1 : 0;
  }
  return found === 1;
}

export const filter = {
  init(config, setup) {
    const c = parseConfig(config); // throws the error string: init returns err
    keys = c.keys;
    header = c.header;
    setup.onRequest();
    setup.onResponse();
  },

  onRequest(req) {
    const values = req.header(header);
    if (values.length > 0 && accepts(values[0])) {
      return { tag: 'proceed' };
    }
    const resp = new Response(401);
    resp.setHeader('content-type', 'application/json');
    resp.setHeader('www-authenticate', 'ApiKey');
    resp.setBody(UNAUTHORIZED);
    return { tag: 'respond', val: resp };
  },

  onResponse(req, resp) {
    resp.setHeader('x-filter-lang', 'js');
    return { tag: 'proceed' };
  },
};
