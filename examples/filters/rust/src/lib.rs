//! An API key check for wasmgate, in Rust: a request without one of the
//! keys from the config in its header is answered 401 in the gateway's
//! error format; every response gets `x-filter-lang: rust`. The same
//! behaviour as the C, Python and JavaScript examples beside this one.
//!
//! config: `{"keys": ["k1", "k2"], "header": "x-api-key"}` (header optional)

use serde::Deserialize;
use wasmgate_sdk::{
    Filter, FilterInfo, OnRequest, OnResponse, Request, Response, ResponseEdits, export_filter,
    parse_config,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    keys: Vec<String>,
    #[serde(default = "default_header")]
    header: String,
}

fn default_header() -> String {
    "x-api-key".to_owned()
}

struct ApiKey {
    keys: Vec<String>,
    header: String,
}

impl Filter for ApiKey {
    fn new(config: &str) -> Result<Self, String> {
        let c: Config = parse_config(config)?;
        if c.keys.is_empty() || c.keys.iter().any(String::is_empty) {
            return Err("`keys` must list at least one key, none empty".into());
        }
        Ok(ApiKey {
            keys: c.keys,
            header: c.header.to_ascii_lowercase(),
        })
    }

    fn info(&self) -> FilterInfo {
        FilterInfo::new()
            .request_headers([&self.header])
            .wants_response(true)
            .request_headers_on_response(false)
    }

    fn on_request(&self, req: &Request) -> OnRequest {
        // Every key is compared in full, so timing tells little of a guess.
        let given = req.header(&self.header).unwrap_or_default().as_bytes();
        let mut found = false;
        for key in &self.keys {
            let key = key.as_bytes();
            let mut diff = u8::from(key.len() != given.len());
            for (i, b) in key.iter().enumerate() {
                diff |= b ^ given.get(i).copied().unwrap_or(0);
            }
            found |= diff == 0;
        }
        if found {
            return OnRequest::proceed();
        }
        OnRequest::respond(
            Response::new(401)
                .with_header("www-authenticate", "ApiKey")
                .json(r#"{"status":401,"code":"unauthorized","message":"missing or invalid API key"}"#),
        )
    }

    fn on_response(&self, _req: &Request, _resp: &Response, _context: Option<&[u8]>) -> OnResponse {
        OnResponse::proceed_with(ResponseEdits::default().set_header("x-filter-lang", "rust"))
    }
}

export_filter!(ApiKey);
