//! `api-key`: answers 401 unless the configured header carries one of the
//! configured keys.
//!
//! ```toml
//! [[routes.filters]]
//! name = "api-key"
//! config = { header = "x-api-key", keys = ["k1", "k2"], hide_credentials = true }
//! ```
//! - `header` (default `x-api-key`): the request header that carries the key.
//! - `keys` (required, at least one): the accepted keys.
//! - `hide_credentials` (default `false`): remove the header before forwarding,
//!   so the upstream never sees the key.

use serde::Deserialize;
use wasmgate_sdk::{
    Filter, FilterInfo, OnRequest, Request, RequestEdits, Response, export_filter, parse_config,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    keys: Vec<String>,
    #[serde(default)]
    hide_credentials: bool,
}

fn default_header() -> String {
    "x-api-key".to_owned()
}

struct ApiKey {
    header: String,
    keys: Vec<Vec<u8>>,
    hide_credentials: bool,
}

/// Compares every configured key in full, whatever matches, so the time taken
/// does not tell an attacker how much of a guess was right.
fn matches_any(keys: &[Vec<u8>], candidate: &[u8]) -> bool {
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

fn unauthorized(message: &str) -> OnRequest {
    let body = format!(r#"{{"status":401,"code":"unauthorized","message":"{message}"}}"#);
    OnRequest::respond(
        Response::new(401)
            .with_header("www-authenticate", "ApiKey")
            .json(body),
    )
}

impl Filter for ApiKey {
    fn new(config: &str) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        if config.keys.is_empty() {
            return Err("`keys` must list at least one key".into());
        }
        if config.keys.iter().any(String::is_empty) {
            return Err("`keys` must not contain an empty key".into());
        }
        if config.header.is_empty()
            || !config
                .header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(format!(
                "`header`: {:?} is not a valid header name",
                config.header
            ));
        }
        Ok(ApiKey {
            header: config.header.to_ascii_lowercase(),
            keys: config.keys.into_iter().map(String::into_bytes).collect(),
            hide_credentials: config.hide_credentials,
        })
    }

    fn info(&self) -> FilterInfo {
        FilterInfo::new().request_headers([&self.header])
    }

    fn on_request(&self, req: &Request) -> OnRequest {
        match req.header(&self.header) {
            None => unauthorized("missing API key"),
            Some(key) if !matches_any(&self.keys, key.as_bytes()) => {
                unauthorized("invalid API key")
            }
            Some(_) if self.hide_credentials => {
                OnRequest::proceed_with(RequestEdits::default().remove_header(&self.header))
            }
            Some(_) => OnRequest::proceed(),
        }
    }
}

export_filter!(ApiKey);
