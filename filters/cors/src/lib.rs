//! `cors`: answers CORS preflight requests at the gateway and adds the CORS
//! headers to actual responses, for the origins, methods and headers in the
//! config (the Fetch standard's CORS protocol).
//!
//! ```toml
//! [[routes.filters]]
//! name = "cors"
//! config = { origins = ["https://app.example.com"], methods = ["GET", "POST"], headers = ["content-type", "authorization"], credentials = true, max_age = 600 }
//! ```
//! - `origins` (required): allowed origins, exactly as browsers send them
//!   (`scheme://host[:port]`), `"*.example.com"`-style wildcards on the host,
//!   or `"*"` for any (not allowed together with `credentials`).
//! - `methods` (default GET, HEAD, POST): allowed methods.
//! - `headers` (default none beyond the CORS-safelisted ones): allowed
//!   request headers (case-insensitive).
//! - `expose_headers` (default none): response headers scripts may read.
//! - `credentials` (default false): allow cookies and `Authorization`.
//! - `max_age` (default 600): seconds a browser may cache a preflight.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//! from an allowed origin, for allowed methods and headers, is answered
//! `204` with the `Access-Control-Allow-*` headers; any other preflight gets
//! `403` without them. Actual requests pass through; responses to allowed
//! origins get `Access-Control-Allow-Origin` (and the credential and expose
//! headers). Every answer that depends on `Origin` carries `Vary: Origin`.

use serde::Deserialize;
use wasmgate_sdk::{
    Filter, FilterInfo, OnRequest, OnResponse, Request, RequestEdits, Response, ResponseEdits,
    export_filter, parse_config,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    origins: Vec<String>,
    #[serde(default = "default_methods")]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    credentials: bool,
    #[serde(default = "default_max_age")]
    max_age: u32,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "POST".into()]
}
fn default_max_age() -> u32 {
    600
}

enum Origin {
    Any,
    Exact(String),
    /// (scheme, ".example.com")
    Suffix(String, String),
}

struct Cors {
    origins: Vec<Origin>,
    methods: Vec<String>,
    headers: Vec<String>,
    expose: String,
    credentials: bool,
    max_age: String,
}

impl Cors {
    fn allowed(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| match o {
            Origin::Any => true,
            Origin::Exact(e) => e.eq_ignore_ascii_case(origin),
            Origin::Suffix(scheme, suffix) => origin
                .strip_prefix(scheme.as_str())
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|host| {
                    let host = host.to_ascii_lowercase();
                    host.len() > suffix.len() && host.ends_with(suffix.as_str())
                }),
        })
    }

    /// Whether answers differ by Origin (all but `"*"` without credentials).
    fn varies(&self) -> bool {
        self.credentials || !self.origins.iter().any(|o| matches!(o, Origin::Any))
    }

    /// The `Access-Control-Allow-Origin` value for an allowed origin.
    fn allow_origin<'a>(&self, origin: &'a str) -> &'a str {
        if !self.credentials && self.origins.iter().any(|o| matches!(o, Origin::Any)) {
            "*"
        } else {
            origin
        }
    }

    fn preflight(&self, req: &Request, origin: &str) -> OnRequest {
        let method = req.header("access-control-request-method").unwrap_or("");
        let asked: Vec<String> = req
            .header("access-control-request-headers")
            .unwrap_or("")
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let ok = self.allowed(origin)
            && self.methods.iter().any(|m| m == method)
            && asked.iter().all(|h| self.headers.contains(h));
        if !ok {
            return OnRequest::respond(Response::new(403).with_header("vary", "Origin"));
        }
        let mut resp = Response::new(204)
            .with_header("access-control-allow-origin", self.allow_origin(origin))
            .with_header("access-control-allow-methods", self.methods.join(", "))
            .with_header("access-control-max-age", self.max_age.clone())
            .with_header("vary", "Origin");
        if !asked.is_empty() {
            resp = resp.with_header("access-control-allow-headers", asked.join(", "));
        }
        if self.credentials {
            resp = resp.with_header("access-control-allow-credentials", "true");
        }
        OnRequest::respond(resp)
    }
}

impl Filter for Cors {
    fn new(config: &str) -> Result<Self, String> {
        let c: Config = parse_config(config)?;
        if c.origins.is_empty() {
            return Err("`origins` must list at least one origin (or \"*\")".into());
        }
        let mut origins = Vec::new();
        for o in &c.origins {
            if o == "*" {
                if c.credentials {
                    return Err(
                        "`origins = [\"*\"]` cannot be combined with `credentials = true` (browsers refuse it)"
                            .into(),
                    );
                }
                origins.push(Origin::Any);
            } else if let Some((scheme, host)) = o.split_once("://") {
                if scheme != "http" && scheme != "https" || host.is_empty() || host.contains('/') {
                    return Err(format!("`origins`: {o:?} is not scheme://host[:port]"));
                }
                match host.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => {
                        origins.push(Origin::Suffix(scheme.into(), suffix.to_ascii_lowercase()))
                    }
                    Some(_) => return Err(format!("`origins`: {o:?}: write *.example.com")),
                    None => origins.push(Origin::Exact(o.clone())),
                }
            } else {
                return Err(format!(
                    "`origins`: {o:?} is not scheme://host[:port] or \"*\""
                ));
            }
        }
        Ok(Cors {
            origins,
            methods: c.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            headers: c.headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            expose: c.expose_headers.join(", "),
            credentials: c.credentials,
            max_age: c.max_age.to_string(),
        })
    }

    fn info(&self) -> FilterInfo {
        FilterInfo::new()
            .request_headers([
                "origin",
                "access-control-request-method",
                "access-control-request-headers",
            ])
            .wants_response(true)
            // `on_response` works from its context, not the request.
            .request_headers_on_response(false)
    }

    fn on_request(&self, req: &Request) -> OnRequest {
        let Some(origin) = req.header("origin") else {
            return OnRequest::proceed();
        };
        if req.method() == "OPTIONS" && req.header("access-control-request-method").is_some() {
            return self.preflight(req, origin);
        }
        if self.allowed(origin) {
            let allow = self.allow_origin(origin).to_owned();
            return OnRequest::proceed_with(RequestEdits::default().context(allow.into_bytes()));
        }
        OnRequest::proceed()
    }

    fn on_response(&self, _req: &Request, _resp: &Response, context: Option<&[u8]>) -> OnResponse {
        let Some(allow) = context.and_then(|c| std::str::from_utf8(c).ok()) else {
            // The answer still depends on Origin (another origin would get
            // the CORS headers), so shared caches must key on it.
            if self.varies() {
                return OnResponse::proceed_with(
                    ResponseEdits::default().append_header("vary", "Origin"),
                );
            }
            return OnResponse::proceed();
        };
        let mut edits = ResponseEdits::default().set_header("access-control-allow-origin", allow);
        if self.varies() {
            edits = edits.append_header("vary", "Origin");
        }
        if self.credentials {
            edits = edits.set_header("access-control-allow-credentials", "true");
        }
        if !self.expose.is_empty() {
            edits = edits.set_header("access-control-expose-headers", self.expose.clone());
        }
        OnResponse::proceed_with(edits)
    }
}

export_filter!(Cors);
