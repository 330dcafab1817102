//! `transform`: rewrites requests and responses from config, in the manner of
//! Kong's request-/response-transformer: header edits, path rewrites (prefix
//! strip and add, or a regex with captures), query edits, the method, the
//! response status, and JSON body members addressed by JSON Pointers.
//!
//! ```toml
//! [[routes.filters]]
//! name = "transform"
//! [routes.filters.config.request]
//! headers = { remove = ["x-debug"], set = { "x-gateway" = "wasmgate" }, rename = { "x-user" = "x-customer" } }
//! path = { strip_prefix = "/api", add_prefix = "/v2" }    # or { regex = "^/users/(\\d+)$", replace = "/u/$1" }
//! query = { remove = ["debug"], set = { "source" = "gateway" }, rename = { "q" = "query" } }
//! method = "POST"
//! json = { remove = ["/password"], rename = { "/user" = "/customer" }, set = { "/meta/source" = "gateway" } }
//! [routes.filters.config.response]
//! headers = { remove = ["x-internal"] }
//! status = 200
//! json = { remove = ["/internal"] }
//! ```
//!
//! Every part is optional; the whole reference is in `docs/config.md`. Each
//! group of edits applies in the order remove, rename, set, append. The filter
//! asks the host for a body only on a side with `json` edits, so other routes
//! stream; it reads only the headers it renames or needs to recognise JSON.

mod json;
mod target;

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmgate_sdk::{
    Filter, FilterInfo, OnRequest, OnResponse, Request, RequestEdits, Response, ResponseEdits,
    export_filter, log, parse_config,
};

use json::{JsonConfig, JsonEdits};
use target::{PathConfig, PathEdit, QueryConfig, QueryEdits};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    request: Option<RequestConfig>,
    response: Option<ResponseConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestConfig {
    #[serde(default)]
    headers: HeaderConfig,
    path: Option<PathConfig>,
    #[serde(default)]
    query: QueryConfig,
    method: Option<String>,
    json: Option<JsonConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseConfig {
    #[serde(default)]
    headers: HeaderConfig,
    status: Option<i64>,
    json: Option<JsonConfig>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeaderConfig {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    append: BTreeMap<String, String>,
}

/// Header edits with lower-case names, applied remove, rename, set, append.
#[derive(Default)]
struct HeaderEdits {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    set: Vec<(String, String)>,
    append: Vec<(String, String)>,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl HeaderEdits {
    fn compile(config: HeaderConfig, side: &str) -> Result<HeaderEdits, String> {
        let what = format!("{side}.headers");
        let lower = |n: &String| n.to_ascii_lowercase();
        let edits = HeaderEdits {
            remove: config.remove.iter().map(lower).collect(),
            rename: config
                .rename
                .iter()
                .map(|(f, t)| (lower(f), lower(t)))
                .collect(),
            set: config
                .set
                .iter()
                .map(|(n, v)| (lower(n), v.clone()))
                .collect(),
            append: config
                .append
                .iter()
                .map(|(n, v)| (lower(n), v.clone()))
                .collect(),
        };
        let names = edits
            .remove
            .iter()
            .chain(edits.rename.iter().flat_map(|(f, t)| [f, t]))
            .chain(edits.set.iter().map(|(n, _)| n))
            .chain(edits.append.iter().map(|(n, _)| n));
        for name in names {
            if !is_token(name) {
                return Err(format!("`{what}`: {name:?} is not a valid header name"));
            }
            if wasmgate_sdk::is_managed_header(name) {
                return Err(format!(
                    "`{what}`: the {name} header is managed by the gateway and cannot be edited"
                ));
            }
        }
        for (name, value) in edits.set.iter().chain(edits.append.iter()) {
            // Control characters other than tab are invalid in a field
            // value (RFC 9110 §5.5); the host would refuse every request.
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(format!(
                    "`{what}`: the value of {name:?} contains a control character"
                ));
            }
        }
        let mut targets = Vec::new();
        for (from, to) in &edits.rename {
            if from == to || edits.rename.iter().any(|(f, _)| f == to) {
                return Err(format!(
                    "`{what}.rename`: {from:?} → {to:?} renames into a name that is itself renamed"
                ));
            }
            if targets.contains(&to) {
                return Err(format!(
                    "`{what}.rename`: two headers are renamed to {to:?}"
                ));
            }
            targets.push(to);
        }
        Ok(edits)
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.append.is_empty()
    }

    /// The host's edit record holds remove, set, append; a rename becomes the
    /// removal of the old name and a `set` of the new one with every value
    /// the old one had (read from `values`). A `set` of the same name wins,
    /// as it comes later.
    fn resolve(&self, values: impl Fn(&str) -> Vec<String>) -> HeaderEdits {
        let mut remove = self.remove.clone();
        let mut set = Vec::new();
        for (from, to) in &self.rename {
            if self.remove.contains(from) {
                continue;
            }
            let found = values(from);
            if found.is_empty() {
                continue;
            }
            remove.push(from.clone());
            if self.set.iter().any(|(n, _)| n == to) {
                continue;
            }
            set.extend(found.into_iter().map(|v| (to.clone(), v)));
        }
        set.extend(self.set.iter().cloned());
        HeaderEdits {
            remove,
            rename: Vec::new(),
            set,
            append: self.append.clone(),
        }
    }

    /// Names whose values the filter must read (rename sources).
    fn reads(&self) -> impl Iterator<Item = &str> {
        self.rename.iter().map(|(f, _)| f.as_str())
    }
}

struct RequestSide {
    headers: HeaderEdits,
    path: Option<PathEdit>,
    query: Option<QueryEdits>,
    method: Option<String>,
    json: Option<JsonEdits>,
}

struct ResponseSide {
    headers: HeaderEdits,
    status: Option<u16>,
    json: Option<JsonEdits>,
}

struct Transform {
    request: Option<RequestSide>,
    response: Option<ResponseSide>,
}

impl RequestSide {
    fn compile(c: RequestConfig) -> Result<Option<RequestSide>, String> {
        if let Some(m) = &c.method
            && !is_token(m)
        {
            return Err(format!("`request.method`: {m:?} is not an HTTP method"));
        }
        let side = RequestSide {
            headers: HeaderEdits::compile(c.headers, "request")?,
            path: c.path.map(PathEdit::compile).transpose()?,
            query: QueryEdits::compile(c.query)?,
            method: c.method,
            json: c
                .json
                .map(|j| JsonEdits::compile(j, "request"))
                .transpose()?,
        };
        let empty = side.headers.is_empty()
            && side.path.is_none()
            && side.query.is_none()
            && side.method.is_none()
            && side.json.is_none();
        Ok((!empty).then_some(side))
    }
}

impl ResponseSide {
    fn compile(c: ResponseConfig) -> Result<Option<ResponseSide>, String> {
        let status = match c.status {
            None => None,
            Some(s) => Some(
                u16::try_from(s)
                    .ok()
                    .filter(|s| (200..=599).contains(s))
                    .ok_or_else(|| {
                        format!("`response.status`: {s} is not a final HTTP status (200 to 599)")
                    })?,
            ),
        };
        let side = ResponseSide {
            headers: HeaderEdits::compile(c.headers, "response")?,
            status,
            json: c
                .json
                .map(|j| JsonEdits::compile(j, "response"))
                .transpose()?,
        };
        let empty = side.headers.is_empty() && side.status.is_none() && side.json.is_none();
        Ok((!empty).then_some(side))
    }
}

/// The standard JSON error body, answered when a request claims JSON but is not.
fn bad_json(req: &Request, problem: &serde_json::Error) -> OnRequest {
    let body = serde_json::json!({
        "status": 400,
        "code": "invalid_json",
        "message": format!("the request body is not valid JSON: {problem}"),
        "request_id": req.request_id(),
    });
    OnRequest::respond(Response::new(400).json(body.to_string()))
}

fn log_skipped(req: &Request, side: &str, skipped: &[&str]) {
    if !skipped.is_empty() && log::enabled(log::Level::Debug) {
        log::debug(&format!(
            "{side} JSON edits at {skipped:?} do not fit the body and were skipped (request {})",
            req.request_id()
        ));
    }
}

/// Whether a body with these headers is JSON the filter may edit.
fn editable_json(content_type: Option<&str>, content_encoding: Option<&str>) -> bool {
    content_type.is_some_and(json::is_json) && json::is_identity(content_encoding)
}

impl Filter for Transform {
    fn new(config: &str) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        let request = config
            .request
            .map(RequestSide::compile)
            .transpose()?
            .flatten();
        let response = config
            .response
            .map(ResponseSide::compile)
            .transpose()?
            .flatten();
        if request.is_none() && response.is_none() {
            return Err("nothing to do: give `request` or `response` edits".into());
        }
        Ok(Transform { request, response })
    }

    fn info(&self) -> FilterInfo {
        let mut info = FilterInfo::new();
        if let Some(r) = &self.request {
            let mut names: Vec<&str> = r.headers.reads().collect();
            if r.json.is_some() {
                names.extend(["content-type", "content-encoding"]);
                info = info.buffer_request_body(true);
            }
            if !names.is_empty() {
                info = info.request_headers(names);
            }
        }
        if let Some(r) = &self.response {
            let mut names: Vec<&str> = r.headers.reads().collect();
            if r.json.is_some() {
                names.extend(["content-type", "content-encoding"]);
                info = info.buffer_response_body(true);
            }
            // The response side reads the request's id, not its headers.
            info = info
                .response_headers(names)
                .wants_response(true)
                .request_headers_on_response(false);
        }
        info
    }

    fn on_request(&self, req: &Request) -> OnRequest {
        let Some(side) = &self.request else {
            return OnRequest::proceed();
        };
        let mut edits = RequestEdits::default();

        if let Some(j) = &side.json
            && let Some(body) = req.body().filter(|b| !b.is_empty())
            && editable_json(req.header("content-type"), req.header("content-encoding"))
        {
            let mut doc: serde_json::Value = match serde_json::from_slice(body) {
                Ok(doc) => doc,
                Err(e) => return bad_json(req, &e),
            };
            let (changed, skipped) = j.apply(&mut doc);
            log_skipped(req, "request", &skipped);
            if changed {
                edits = edits.body(serde_json::to_vec(&doc).expect("a Value serializes"));
            }
        }

        let h = side
            .headers
            .resolve(|n| req.header_all(n).map(str::to_owned).collect());
        for n in h.remove {
            edits = edits.remove_header(n);
        }
        for (n, v) in h.set {
            edits = edits.set_header(n, v);
        }
        for (n, v) in h.append {
            edits = edits.append_header(n, v);
        }

        if side.path.is_some() || side.query.is_some() {
            let path = req.path();
            let query = req.query();
            let new_path = side.path.as_ref().and_then(|p| p.apply(path));
            let new_query = side.query.as_ref().map(|q| q.apply(query.unwrap_or("")));
            if new_path.is_some() || new_query.is_some() {
                let path = new_path.as_deref().unwrap_or(path);
                let path = if path.is_empty() { "/" } else { path };
                let query = new_query.as_deref().or(query).filter(|q| !q.is_empty());
                edits = edits.path_with_query(match query {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_owned(),
                });
            }
        }

        if let Some(m) = &side.method {
            edits = edits.method(m);
        }
        OnRequest::proceed_with(edits)
    }

    fn on_response(&self, req: &Request, resp: &Response, _context: Option<&[u8]>) -> OnResponse {
        let Some(side) = &self.response else {
            return OnResponse::proceed();
        };
        let mut edits = ResponseEdits::default();

        if let Some(j) = &side.json
            && let Some(body) = resp.body().filter(|b| !b.is_empty())
            && editable_json(resp.header("content-type"), resp.header("content-encoding"))
        {
            match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(mut doc) => {
                    let (changed, skipped) = j.apply(&mut doc);
                    log_skipped(req, "response", &skipped);
                    if changed {
                        edits = edits.body(serde_json::to_vec(&doc).expect("a Value serializes"));
                    }
                }
                Err(e) => log::warn(&format!(
                    "the upstream's response body is labelled JSON but is not valid JSON ({e}); passed on unchanged (request {})",
                    req.request_id()
                )),
            }
        }

        let h = side
            .headers
            .resolve(|n| resp.header_all(n).map(str::to_owned).collect());
        for n in h.remove {
            edits = edits.remove_header(n);
        }
        for (n, v) in h.set {
            edits = edits.set_header(n, v);
        }
        for (n, v) in h.append {
            edits = edits.append_header(n, v);
        }
        if let Some(s) = side.status {
            edits = edits.status(s);
        }
        OnResponse::proceed_with(edits)
    }
}

export_filter!(Transform);
