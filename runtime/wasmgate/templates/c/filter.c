// {{name}}: a wasmgate filter in C. It declares the request phase, and adds
// `x-{{name}}: hello` to every request it passes on.
//
// Build: ./build.sh (Debian: apt-get install clang lld wasi-libc
// libclang-rt-dev-wasm32); the filter is out/filter.wasm.
//
// Memory rules of the generated bindings: an export's arguments are the
// filter's to free; borrowed handles (setup, request, response) must be
// dropped before returning; what an export returns must be malloc'd.

#include <stdbool.h>
#include "plugin.h"

bool exports_wasmgate_filter_filter_init(plugin_string_t *config,
                                         exports_wasmgate_filter_filter_borrow_setup_t setup,
                                         plugin_string_t *err) {
  (void)err;
  plugin_string_free(config);
  wasmgate_filter_types_method_setup_on_request(setup);
  wasmgate_filter_types_setup_drop_borrow(setup);
  return true;
}

void exports_wasmgate_filter_filter_on_request(exports_wasmgate_filter_filter_borrow_request_t req,
                                               exports_wasmgate_filter_filter_request_decision_t *ret) {
  plugin_string_t name, value;
  plugin_string_set(&name, "x-{{name}}");
  plugin_string_set(&value, "hello");
  wasmgate_filter_types_method_request_set_header(req, &name, &value);
  wasmgate_filter_types_request_drop_borrow(req);
  ret->tag = WASMGATE_FILTER_TYPES_REQUEST_DECISION_PROCEED;
}

void exports_wasmgate_filter_filter_on_response(exports_wasmgate_filter_filter_borrow_request_t req,
                                                exports_wasmgate_filter_filter_borrow_response_t resp,
                                                exports_wasmgate_filter_filter_response_decision_t *ret) {
  wasmgate_filter_types_request_drop_borrow(req);
  wasmgate_filter_types_response_drop_borrow(resp);
  ret->tag = WASMGATE_FILTER_TYPES_RESPONSE_DECISION_PROCEED;
}
