//! `headers`: sets, appends and removes request and response headers.
//!
//! ```toml
//! [[routes.filters]]
//! name = "headers"
//! [routes.filters.config.request]
//! set = { "x-gateway" = "wasmgate" }
//! remove = ["x-debug"]
//! [routes.filters.config.response]
//! append = { "cache-control" = "no-store" }
//! ```
//! Each side takes `remove` (a list of names), `set` (replace all values) and
//! `append` (add a value), applied in that order. The filter reads no headers, so
//! it costs the host no header copies; it asks for each phase only when the
//! config edits that side, so a response-only config gets no call on the way in.

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmgate_sdk::{
    Filter, FilterInfo, OnRequest, OnResponse, Request, RequestEdits, Response, ResponseEdits,
    export_filter, parse_config,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Edits,
    #[serde(default)]
    response: Edits,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Edits {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    append: BTreeMap<String, String>,
}

impl Edits {
    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.append.is_empty()
    }

    fn validate(&self, side: &str) -> Result<(), String> {
        let names = self
            .remove
            .iter()
            .chain(self.set.keys())
            .chain(self.append.keys());
        for name in names {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid {
                return Err(format!("`{side}`: {name:?} is not a valid header name"));
            }
        }
        for (name, value) in self.set.iter().chain(self.append.iter()) {
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(format!(
                    "`{side}`: the value of {name:?} contains CR, LF or NUL"
                ));
            }
        }
        Ok(())
    }
}

struct Headers {
    request: Edits,
    response: Edits,
}

impl Filter for Headers {
    fn new(config: &str) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        config.request.validate("request")?;
        config.response.validate("response")?;
        if config.request.is_empty() && config.response.is_empty() {
            return Err("nothing to do: give `request` or `response` edits".into());
        }
        Ok(Headers {
            request: config.request,
            response: config.response,
        })
    }

    fn info(&self) -> FilterInfo {
        FilterInfo::new()
            .wants_request(!self.request.is_empty())
            .wants_response(!self.response.is_empty())
    }

    fn on_request(&self, _req: &Request) -> OnRequest {
        if self.request.is_empty() {
            return OnRequest::proceed();
        }
        let mut edits = RequestEdits::default();
        for name in &self.request.remove {
            edits = edits.remove_header(name);
        }
        for (name, value) in &self.request.set {
            edits = edits.set_header(name, value);
        }
        for (name, value) in &self.request.append {
            edits = edits.append_header(name, value);
        }
        OnRequest::proceed_with(edits)
    }

    fn on_response(&self, _req: &Request, _resp: &Response, _context: Option<&[u8]>) -> OnResponse {
        let mut edits = ResponseEdits::default();
        for name in &self.response.remove {
            edits = edits.remove_header(name);
        }
        for (name, value) in &self.response.set {
            edits = edits.set_header(name, value);
        }
        for (name, value) in &self.response.append {
            edits = edits.append_header(name, value);
        }
        OnResponse::proceed_with(edits)
    }
}

export_filter!(Headers);
