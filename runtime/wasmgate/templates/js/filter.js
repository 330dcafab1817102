// {{name}}: a wasmgate filter in JavaScript, built with componentize-js.
// It declares the request phase, and adds `x-{{name}}: <greeting>` to every
// request it passes on (config: {"greeting": "..."}, default "hello").
// Build: ./build.sh (writes out/filter.wasm).
//
// The exported interface is the ES export `filter`, its functions in
// camelCase; `init` refuses a config by throwing a string (an Error object
// traps); variants are { tag, val }.

let greeting = 'hello';

export const filter = {
  init(config, setup) {
    let c;
    try {
      c = JSON.parse(config || '{}');
    } catch (e) {
      throw `config is not valid JSON: ${e.message}`;
    }
    const g = c !== null && typeof c === 'object' ? (c.greeting ?? 'hello') : null;
    if (typeof g !== 'string') throw '`greeting` must be a string';
    greeting = g;
    setup.onRequest();
  },

  onRequest(req) {
    req.setHeader('x-{{name}}', greeting);
    return { tag: 'proceed' };
  },

  onResponse(_req, _resp) {
    return { tag: 'proceed' };
  },
};
