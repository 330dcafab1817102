//! `api-key`: answers 401 unless the configured header carries one of the
//! configured keys.
//!
//! ```toml
//! [[routes.filters]]
//! name = "api-key"
//! config = { header = "x-api-key", keys = ["k1", "k2"], hide_credentials = true }
//! ```
//! - `header` (default `x-api-key`): the request header that carries the key.
//! - `keys` (required, at least one): the accepted keys, each either the key
//!   itself or `"sha256:<64 hex digits>"`, the SHA-256 of the key, so the
//!   config (and the memory of the filter) need not hold the secret:
//!   `printf %s "$KEY" | sha256sum`.
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
    /// SHA-256 digests of keys given as `sha256:…`.
    digests: Vec<Vec<u8>>,
    hide_credentials: bool,
}

fn parse_digest(hex: &str) -> Result<Vec<u8>, String> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "\"sha256:{hex}\" is not a SHA-256 digest (64 hex digits)"
        ));
    }
    Ok((0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect())
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

impl ApiKey {
    fn accepts(&self, candidate: &[u8]) -> bool {
        let plain = matches_any(&self.keys, candidate);
        let hashed = !self.digests.is_empty() && {
            use sha2::Digest;
            matches_any(&self.digests, &sha2::Sha256::digest(candidate))
        };
        plain | hashed
    }
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
        let mut keys = Vec::new();
        let mut digests = Vec::new();
        for k in config.keys {
            match k.strip_prefix("sha256:") {
                Some(hex) => digests.push(parse_digest(&hex.to_ascii_lowercase())?),
                None => keys.push(k.into_bytes()),
            }
        }
        Ok(ApiKey {
            header: config.header.to_ascii_lowercase(),
            keys,
            digests,
            hide_credentials: config.hide_credentials,
        })
    }

    fn info(&self) -> FilterInfo {
        FilterInfo::new().request_headers([&self.header])
    }

    fn on_request(&self, req: &Request) -> OnRequest {
        match req.header(&self.header) {
            None => unauthorized("missing API key"),
            Some(key) if !self.accepts(key.as_bytes()) => unauthorized("invalid API key"),
            Some(_) if self.hide_credentials => {
                OnRequest::proceed_with(RequestEdits::default().remove_header(&self.header))
            }
            Some(_) => OnRequest::proceed(),
        }
    }
}

export_filter!(ApiKey);
