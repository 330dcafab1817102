//! `aggregate`: answers a route by sending requests to several clusters at
//! once (the host's `outbound.send-all`) and merging their JSON bodies into
//! one object, KrakenD's merge in a filter:
//!
//! - a backend with a `key` is placed under that key; one without has its
//!   object's fields merged into the top level (later backends win);
//! - a backend that fails (timeout, connection, non-2xx status, a body that
//!   is not JSON) is left out: the answer is then partial, says so in
//!   `x-aggregate-completed: false` and lists why under `errors_key`;
//! - a failing backend marked `required`, or every backend failing, makes the
//!   answer a `502 aggregate_failed` in the gateway's error format.
//!
//! Paths are templates: `{query.NAME}`, `{header.NAME}` and `{path}` (the
//! client's path, without the query) are replaced by the client request's
//! values, percent-encoded (a missing value is empty).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Map, Value};
use wasmgate_sdk::outbound::{self, Call};
use wasmgate_sdk::{Filter, FilterInfo, OnRequest, Request, Response, export_filter, parse_config};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    backends: Vec<BackendConfig>,
    /// Request headers copied to every backend call.
    #[serde(default)]
    forward_headers: Vec<String>,
    /// Where a partial answer lists failed backends ("" for nowhere).
    #[serde(default = "default_errors_key")]
    errors_key: String,
}

fn default_errors_key() -> String {
    "_errors".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendConfig {
    cluster: String,
    path: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_timeout")]
    timeout_ms: u32,
    #[serde(default)]
    required: bool,
}

fn default_method() -> String {
    "GET".into()
}

fn default_timeout() -> u32 {
    1000
}

/// One piece of a path template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Query(String),
    Header(String),
    Path,
}

struct Backend {
    cluster: String,
    method: String,
    path: Vec<Part>,
    key: Option<String>,
    timeout_ms: u32,
    required: bool,
    /// The name failures are reported under.
    label: String,
}

struct Aggregate {
    backends: Vec<Backend>,
    forward_headers: Vec<String>,
    /// Request headers the templates and forwarding read.
    reads: Vec<String>,
    errors_key: String,
}

fn parse_template(t: &str) -> Result<Vec<Part>, String> {
    if !t.starts_with('/') {
        return Err(format!("path {t:?} must start with '/'"));
    }
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("path {t:?}: '{{' without '}}'"))?
            + open;
        let name = &rest[open + 1..close];
        parts.push(match name.split_once('.') {
            Some(("query", q)) if !q.is_empty() => Part::Query(q.to_owned()),
            Some(("header", h)) if !h.is_empty() => Part::Header(h.to_ascii_lowercase()),
            None if name == "path" => Part::Path,
            _ => {
                return Err(format!(
                    "path {t:?}: unknown placeholder {{{name}}} (use {{query.NAME}}, {{header.NAME}} or {{path}})"
                ));
            }
        });
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("path {t:?}: '}}' without '{{'"));
    }
    // The text around placeholders goes into the request as written.
    let bad = |text: &str| text.chars().find(|c| !(c.is_ascii_graphic() && *c != '#'));
    for part in &parts {
        if let Part::Text(text) = part
            && let Some(c) = bad(text)
        {
            return Err(format!(
                "path {t:?}: {c:?} cannot appear in a request target"
            ));
        }
    }
    if let Some(c) = bad(rest) {
        return Err(format!(
            "path {t:?}: {c:?} cannot appear in a request target"
        ));
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// Everything but RFC 3986 unreserved characters is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// The decoded value of query parameter `name`, if present.
fn query_value(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn error_response(status: u16, code: &str, message: &str, req: &Request) -> Response {
    let body = serde_json::json!({
        "status": status,
        "code": code,
        "message": message,
        "request_id": req.request_id(),
    });
    Response::new(status).json(body.to_string())
}

impl Backend {
    fn path_for(&self, req: &Request) -> String {
        let query = req.query().unwrap_or_default();
        let mut out = String::new();
        for part in &self.path {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Query(q) => out.push_str(&encode(&query_value(query, q).unwrap_or_default())),
                Part::Header(h) => out.push_str(&encode(req.header(h).unwrap_or_default())),
                Part::Path => {
                    // Already a valid path: keep its slashes.
                    out.push_str(req.path().trim_start_matches('/'));
                }
            }
        }
        out
    }
}

impl Filter for Aggregate {
    fn new(config: &str) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        if config.backends.is_empty() {
            return Err("invalid config: `backends` must list at least one backend".into());
        }
        let mut backends = Vec::new();
        let mut reads: Vec<String> = config
            .forward_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let mut labels = std::collections::HashSet::new();
        for (i, b) in config.backends.into_iter().enumerate() {
            let path = parse_template(&b.path)
                .map_err(|e| format!("invalid config: backends[{i}]: {e}"))?;
            for p in &path {
                if let Part::Header(h) = p
                    && !reads.contains(h)
                {
                    reads.push(h.clone());
                }
            }
            if b.method.is_empty() || !b.method.bytes().all(|c| c.is_ascii_alphabetic()) {
                return Err(format!(
                    "invalid config: backends[{i}].method {:?} is not an HTTP method",
                    b.method
                ));
            }
            if b.timeout_ms == 0 {
                return Err(format!(
                    "invalid config: backends[{i}].timeout_ms must be more than 0"
                ));
            }
            if b.key.as_deref() == Some("") {
                return Err(format!(
                    "invalid config: backends[{i}].key must not be empty"
                ));
            }
            let label = b.key.clone().unwrap_or_else(|| b.cluster.clone());
            if !labels.insert(label.clone()) {
                return Err(format!(
                    "invalid config: backends[{i}]: {label:?} is used by another backend (give each a distinct `key`)"
                ));
            }
            backends.push(Backend {
                cluster: b.cluster,
                method: b.method.to_ascii_uppercase(),
                path,
                key: b.key,
                timeout_ms: b.timeout_ms,
                required: b.required,
                label,
            });
        }
        for h in &config.forward_headers {
            let lower = h.to_ascii_lowercase();
            if lower.is_empty()
                || !lower
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&c))
            {
                return Err(format!(
                    "invalid config: forward_headers: {h:?} is not a header name"
                ));
            }
            if lower == "host" || wasmgate_sdk::is_managed_header(&lower) {
                return Err(format!(
                    "invalid config: forward_headers: {h:?} belongs to the connection or the framing and is set by the gateway"
                ));
            }
        }
        if !config.errors_key.is_empty() && labels.contains(&config.errors_key) {
            return Err(format!(
                "invalid config: errors_key {:?} is also a backend's key",
                config.errors_key
            ));
        }
        Ok(Aggregate {
            backends,
            forward_headers: config
                .forward_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            reads,
            errors_key: config.errors_key,
        })
    }

    fn info(&self) -> FilterInfo {
        FilterInfo::new().request_headers(self.reads.iter().map(String::as_str))
    }

    fn on_request(&self, req: &Request) -> OnRequest {
        let calls = self
            .backends
            .iter()
            .map(|b| {
                let mut call =
                    Call::new(&b.cluster, &b.method, b.path_for(req)).timeout_ms(b.timeout_ms);
                for h in &self.forward_headers {
                    for v in req.header_all(h) {
                        call = call.header(h, v);
                    }
                }
                call.header("accept", "application/json")
            })
            .collect();
        let replies = outbound::send_all(calls);

        let mut merged = Map::new();
        let mut errors = Map::new();
        for (b, reply) in self.backends.iter().zip(replies) {
            let value = match reply {
                Ok(r) if (200..300).contains(&r.status) => {
                    match serde_json::from_slice::<Value>(&r.body) {
                        Ok(v) => Ok(v),
                        Err(e) => Err(format!("the body is not JSON: {e}")),
                    }
                }
                Ok(r) => Err(format!("status {}", r.status)),
                Err(e) => Err(describe(&e)),
            };
            let value = value.and_then(|v| match (&b.key, v) {
                (Some(_), v) => Ok(v),
                (None, Value::Object(o)) => Ok(Value::Object(o)),
                (None, _) => Err("the body is not a JSON object (give the backend a `key`)".into()),
            });
            match value {
                Ok(v) => match &b.key {
                    Some(k) => {
                        merged.insert(k.clone(), v);
                    }
                    None => {
                        if let Value::Object(o) = v {
                            merged.extend(o);
                        }
                    }
                },
                Err(why) => {
                    wasmgate_sdk::log::warn(&format!(
                        "aggregate: backend {:?} (cluster {:?}) failed: {why}",
                        b.label, b.cluster
                    ));
                    if b.required {
                        return OnRequest::respond(error_response(
                            502,
                            "aggregate_failed",
                            &format!("required backend {:?} failed: {why}", b.label),
                            req,
                        ));
                    }
                    errors.insert(b.label.clone(), Value::String(why));
                }
            }
        }
        if errors.len() == self.backends.len() {
            return OnRequest::respond(error_response(
                502,
                "aggregate_failed",
                "every backend failed",
                req,
            ));
        }
        let complete = errors.is_empty();
        if !complete && !self.errors_key.is_empty() {
            merged.insert(self.errors_key.clone(), Value::Object(errors));
        }
        OnRequest::respond(
            Response::new(200)
                .with_header(
                    "x-aggregate-completed",
                    if complete { "true" } else { "false" },
                )
                .json(Value::Object(merged).to_string()),
        )
    }
}

fn describe(e: &outbound::Error) -> String {
    match e {
        outbound::Error::UnknownCluster => "unknown cluster (or not granted to this filter)".into(),
        outbound::Error::BudgetExhausted => "outbound call budget used up".into(),
        outbound::Error::InvalidRequest(why) => format!("invalid request: {why}"),
        outbound::Error::Timeout => "timeout".into(),
        outbound::Error::Unavailable(why) => format!("unavailable: {why}"),
        outbound::Error::ResponseTooLarge => "response too large".into(),
    }
}

export_filter!(Aggregate);
