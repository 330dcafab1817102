// An API key check for wasmgate, in C: a request without one of the keys
// from the config in its header is answered 401 in the gateway's error
// format; every response gets `x-filter-lang: c`. The same behaviour as the
// Rust, Python and JavaScript examples beside this one. Built against the
// C bindings `wasmgate filter bindings --lang c` writes for the contract
// the gateway serves (wasmgate:filter@0.2.x, world `plugin`); see build.sh.
//
// config: {"keys":["k1","k2"],"header":"x-api-key"}  (header optional)
//
// Ownership rules of the generated bindings (wit-bindgen-c 0.61.1, defaults):
// - Arguments of an export (the `config` string of init) belong to the
//   filter: free them (plugin_string_free).
// - Borrowed handles an export receives (setup, request, response) must be
//   dropped by the filter before it returns (*_drop_borrow), since
//   autodrop_borrows is off by default; wasmtime traps otherwise.
// - Values an export returns (the error string of init) must be malloc'd:
//   the generated post-return frees them.
// - Values an import returns (request.header's list) belong to the filter:
//   free them (plugin_list_string_free).
// - Arguments given to an import are only read during the call: static
//   strings via plugin_string_set are fine.
// - A response made with the constructor is an own handle; methods take a
//   borrow of it (wasmgate_filter_types_borrow_response), and returning it
//   in `respond` hands ownership to the host.

#include <stdlib.h>
#include <string.h>
#include "plugin.h"

// -DSTDERR_LOG: also write a line to stderr from init. That pulls WASI
// (fd_write) into the core module, so componentize embeds the preview1
// reactor adapter: a check that the adapter path loads in the host.
#ifdef STDERR_LOG
#include <stdio.h>
#endif

typedef struct {
  char *ptr;
  size_t len;
} str_t;

static str_t g_header;      // lower-cased header name
static str_t *g_keys;       // accepted keys
static size_t g_nkeys;
static plugin_string_t g_header_wit;  // g_header as a wit string (not owned)

// ---------------------------------------------------------------------------
// A minimal JSON reader: enough for {"keys":[...],"header":"..."}; other
// members are skipped whatever their value.

typedef struct {
  const char *s;
  size_t i, n;
  const char *err;
} json_t;

static void ws(json_t *j) {
  while (j->i < j->n && (j->s[j->i] == ' ' || j->s[j->i] == '\t' ||
                         j->s[j->i] == '\n' || j->s[j->i] == '\r'))
    j->i++;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Parses a JSON string at j->i into a malloc'd buffer (out may be NULL to skip).
static int json_string(json_t *j, str_t *out) {
  ws(j);
  if (j->i >= j->n || j->s[j->i] != '"') { j->err = "expected a string"; return 0; }
  j->i++;
  char *buf = out ? malloc(j->n - j->i + 1) : NULL;
  size_t len = 0;
  while (j->i < j->n) {
    char c = j->s[j->i++];
    if (c == '"') {
      if (out) { buf[len] = 0; out->ptr = buf; out->len = len; }
      return 1;
    }
    if (c == '\\') {
      if (j->i >= j->n) break;
      char e = j->s[j->i++];
      switch (e) {
        case '"': case '\\': case '/': c = e; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
          unsigned cp = 0;
          for (int k = 0; k < 4; k++) {
            int h = j->i < j->n ? hexval(j->s[j->i++]) : -1;
            if (h < 0) { free(buf); j->err = "bad \\u escape"; return 0; }
            cp = cp * 16 + (unsigned)h;
          }
          // UTF-8 encode (surrogate pairs are not combined: enough here).
          if (buf) {
            if (cp < 0x80) buf[len++] = (char)cp;
            else if (cp < 0x800) { buf[len++] = (char)(0xC0 | (cp >> 6)); buf[len++] = (char)(0x80 | (cp & 0x3F)); }
            else { buf[len++] = (char)(0xE0 | (cp >> 12)); buf[len++] = (char)(0x80 | ((cp >> 6) & 0x3F)); buf[len++] = (char)(0x80 | (cp & 0x3F)); }
          }
          continue;
        }
        default: free(buf); j->err = "bad escape"; return 0;
      }
    }
    if (buf) buf[len++] = c;
  }
  free(buf);
  j->err = "unterminated string";
  return 0;
}

static int json_skip(json_t *j);

static int json_skip_container(json_t *j, char close) {
  j->i++;  // past '[' or '{'
  ws(j);
  if (j->i < j->n && j->s[j->i] == close) { j->i++; return 1; }
  for (;;) {
    if (close == '}') {
      if (!json_string(j, NULL)) return 0;
      ws(j);
      if (j->i >= j->n || j->s[j->i] != ':') { j->err = "expected ':'"; return 0; }
      j->i++;
    }
    if (!json_skip(j)) return 0;
    ws(j);
    if (j->i < j->n && j->s[j->i] == ',') { j->i++; continue; }
    if (j->i < j->n && j->s[j->i] == close) { j->i++; return 1; }
    j->err = "expected ',' or a closing bracket";
    return 0;
  }
}

static int json_skip(json_t *j) {
  ws(j);
  if (j->i >= j->n) { j->err = "unexpected end"; return 0; }
  char c = j->s[j->i];
  if (c == '"') return json_string(j, NULL);
  if (c == '{') return json_skip_container(j, '}');
  if (c == '[') return json_skip_container(j, ']');
  // number, true, false, null
  size_t start = j->i;
  while (j->i < j->n && strchr(",}] \t\r\n", j->s[j->i]) == NULL) j->i++;
  if (j->i == start) { j->err = "unexpected character"; return 0; }
  return 1;
}

static int json_keys(json_t *j) {
  ws(j);
  if (j->i >= j->n || j->s[j->i] != '[') { j->err = "`keys` must be an array of strings"; return 0; }
  j->i++;
  ws(j);
  if (j->i < j->n && j->s[j->i] == ']') { j->i++; return 1; }
  for (;;) {
    str_t k;
    if (!json_string(j, &k)) { j->err = "`keys` must be an array of strings"; return 0; }
    g_keys = realloc(g_keys, (g_nkeys + 1) * sizeof *g_keys);
    g_keys[g_nkeys++] = k;
    ws(j);
    if (j->i < j->n && j->s[j->i] == ',') { j->i++; continue; }
    if (j->i < j->n && j->s[j->i] == ']') { j->i++; return 1; }
    j->err = "`keys`: expected ',' or ']'";
    return 0;
  }
}

// Returns NULL on success, or a static error message.
static const char *parse_config(const char *s, size_t n) {
  json_t j = {s, 0, n, NULL};
  ws(&j);
  if (j.i >= j.n || s[j.i] != '{') return "config must be a JSON object";
  j.i++;
  ws(&j);
  if (j.i < j.n && s[j.i] == '}') { j.i++; goto done; }
  for (;;) {
    str_t name;
    if (!json_string(&j, &name)) return j.err;
    ws(&j);
    if (j.i >= j.n || s[j.i] != ':') { free(name.ptr); return "expected ':'"; }
    j.i++;
    int ok;
    if (name.len == 4 && memcmp(name.ptr, "keys", 4) == 0) {
      ok = json_keys(&j);
    } else if (name.len == 6 && memcmp(name.ptr, "header", 6) == 0) {
      free(g_header.ptr);
      g_header.ptr = NULL;
      ok = json_string(&j, &g_header);
      if (!ok) j.err = "`header` must be a string";
    } else {
      ok = json_skip(&j);
    }
    free(name.ptr);
    if (!ok) return j.err;
    ws(&j);
    if (j.i < j.n && s[j.i] == ',') { j.i++; continue; }
    if (j.i < j.n && s[j.i] == '}') { j.i++; break; }
    return "expected ',' or '}'";
  }
done:
  ws(&j);
  if (j.i != j.n) return "trailing characters after the config object";
  return NULL;
}

// ---------------------------------------------------------------------------

static void reset_config(void) {
  for (size_t i = 0; i < g_nkeys; i++) free(g_keys[i].ptr);
  free(g_keys);
  g_keys = NULL;
  g_nkeys = 0;
  free(g_header.ptr);
  g_header.ptr = NULL;
  g_header.len = 0;
}

static int valid_header_name(const str_t *h) {
  if (h->len == 0) return 0;
  for (size_t i = 0; i < h->len; i++) {
    unsigned char c = (unsigned char)h->ptr[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          strchr("!#$%&'*+-.^_`|~", c)))
      return 0;
  }
  return 1;
}

bool exports_wasmgate_filter_filter_init(plugin_string_t *config,
                                         exports_wasmgate_filter_filter_borrow_setup_t setup,
                                         plugin_string_t *err) {
  reset_config();
  const char *msg = parse_config((const char *)config->ptr, config->len);
  plugin_string_free(config);  // the argument is ours to free

  if (!msg && g_nkeys == 0) msg = "`keys` must list at least one key";
  for (size_t i = 0; !msg && i < g_nkeys; i++)
    if (g_keys[i].len == 0) msg = "`keys` must not contain an empty key";
  if (!msg && !g_header.ptr) {
    g_header.ptr = strdup("x-api-key");
    g_header.len = 9;
  }
  if (!msg && !valid_header_name(&g_header)) msg = "`header` is not a valid header name";

  if (msg) {
    reset_config();
    wasmgate_filter_types_setup_drop_borrow(setup);
    plugin_string_dup(err, msg);  // returned: must be malloc'd (post-return frees it)
    return false;
  }
  for (size_t i = 0; i < g_header.len; i++)
    if (g_header.ptr[i] >= 'A' && g_header.ptr[i] <= 'Z') g_header.ptr[i] += 'a' - 'A';
  g_header_wit.ptr = (uint8_t *)g_header.ptr;
  g_header_wit.len = g_header.len;

#ifdef STDERR_LOG
  fprintf(stderr, "c filter: init with %zu keys, header %s\n", g_nkeys, g_header.ptr);
#endif
  wasmgate_filter_types_method_setup_on_request(setup);
  wasmgate_filter_types_method_setup_on_response(setup);
  wasmgate_filter_types_setup_drop_borrow(setup);
  return true;
}

// Compares against every key in full, so timing tells little about a guess.
static int accepts(const uint8_t *cand, size_t n) {
  int found = 0;
  for (size_t k = 0; k < g_nkeys; k++) {
    const str_t *key = &g_keys[k];
    unsigned char diff = key->len != n;
    for (size_t i = 0; i < key->len; i++)
      diff |= (unsigned char)key->ptr[i] ^ (i < n ? cand[i] : 0);
    found |= diff == 0;
  }
  return found;
}

static const char UNAUTHORIZED[] =
    "{\"status\":401,\"code\":\"unauthorized\",\"message\":\"missing or invalid API key\"}";

void exports_wasmgate_filter_filter_on_request(exports_wasmgate_filter_filter_borrow_request_t req,
                                               exports_wasmgate_filter_filter_request_decision_t *ret) {
  plugin_list_string_t values;
  wasmgate_filter_types_method_request_header(req, &g_header_wit, &values);
  int ok = values.len > 0 && accepts(values.ptr[0].ptr, values.ptr[0].len);
  plugin_list_string_free(&values);  // returned by an import: ours to free
  wasmgate_filter_types_request_drop_borrow(req);

  if (ok) {
    ret->tag = WASMGATE_FILTER_TYPES_REQUEST_DECISION_PROCEED;
    return;
  }
  wasmgate_filter_types_own_response_t resp = wasmgate_filter_types_constructor_response(401);
  wasmgate_filter_types_borrow_response_t b = wasmgate_filter_types_borrow_response(resp);
  plugin_string_t name, value;
  plugin_string_set(&name, "content-type");
  plugin_string_set(&value, "application/json");
  wasmgate_filter_types_method_response_set_header(b, &name, &value);
  plugin_string_set(&name, "www-authenticate");
  plugin_string_set(&value, "ApiKey");
  wasmgate_filter_types_method_response_set_header(b, &name, &value);
  plugin_list_u8_t body = {(uint8_t *)UNAUTHORIZED, sizeof UNAUTHORIZED - 1};
  wasmgate_filter_types_method_response_set_body(b, &body);
  // `b` is the own handle viewed as a borrow, not a handle of its own:
  // nothing to drop. The own handle goes to the host with the decision.
  ret->tag = WASMGATE_FILTER_TYPES_REQUEST_DECISION_RESPOND;
  ret->val.respond = resp;
}

void exports_wasmgate_filter_filter_on_response(exports_wasmgate_filter_filter_borrow_request_t req,
                                                exports_wasmgate_filter_filter_borrow_response_t resp,
                                                exports_wasmgate_filter_filter_response_decision_t *ret) {
  plugin_string_t name, value;
  plugin_string_set(&name, "x-filter-lang");
  plugin_string_set(&value, "c");
  wasmgate_filter_types_method_response_set_header(resp, &name, &value);
  wasmgate_filter_types_request_drop_borrow(req);
  wasmgate_filter_types_response_drop_borrow(resp);
  ret->tag = WASMGATE_FILTER_TYPES_RESPONSE_DECISION_PROCEED;
}
