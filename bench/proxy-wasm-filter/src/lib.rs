//! The benchmark's proxy-wasm filter for Envoy: the same per-request work as
//! wasmgate's route with `api-key` (`keys = ["bench-key"]`) followed by
//! `headers` (`response.set = { "x-served-by" = "wasmgate-bench" }`):
//!
//! - request: answer 401 with a small JSON body and `www-authenticate: ApiKey`
//!   unless header `x-api-key` carries the key (compared in full, like
//!   `api-key` does);
//! - response: set `x-served-by: wasmgate-bench`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

const HEADER: &str = "x-api-key";
const KEYS: &[&[u8]] = &[b"bench-key"];

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(BenchRoot) });
}}

struct BenchRoot;

impl Context for BenchRoot {}

impl RootContext for BenchRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BenchFilter))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct BenchFilter;

impl Context for BenchFilter {}

/// Compares every key in full whatever matches, as wasmgate's `api-key` does.
fn matches_any(keys: &[&[u8]], candidate: &[u8]) -> bool {
    let mut found = false;
    for key in keys {
        let mut diff = (key.len() ^ candidate.len()) as u8 | u8::from(key.len() != candidate.len());
        for (i, b) in key.iter().enumerate() {
            diff |= b ^ candidate.get(i).copied().unwrap_or(0);
        }
        found |= diff == 0;
    }
    found
}

impl BenchFilter {
    fn unauthorized(&self, message: &str) -> Action {
        let body = format!(r#"{{"status":401,"code":"unauthorized","message":"{message}"}}"#);
        self.send_http_response(
            401,
            vec![
                ("www-authenticate", "ApiKey"),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}

impl HttpContext for BenchFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.get_http_request_header(HEADER) {
            None => self.unauthorized("missing API key"),
            Some(key) if !matches_any(KEYS, key.as_bytes()) => self.unauthorized("invalid API key"),
            Some(_) => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-served-by", Some("wasmgate-bench"));
        Action::Continue
    }
}
