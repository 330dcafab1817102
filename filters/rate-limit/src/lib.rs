//! `rate-limit`: a token bucket per key, held by the host (atomic across
//! every instance of the filter); past it, 429 with `Retry-After`.
//!
//! ```toml
//! [[routes.filters]]
//! name = "rate-limit"
//! config = { requests = 100, per = "minute", burst = 20, key = "client_ip" }
//! ```
//! - `requests` (required) per `per` (`"second"`, `"minute"`, `"hour"`;
//!   default `"second"`): the sustained rate.
//! - `burst` (default `requests`): the bucket's size, i.e. how many requests
//!   may come at once after a quiet period.
//! - `key` (default `"client_ip"`): what is limited: `"client_ip"` (the client
//!   address as the gateway's forwarding rules determine it), `"header:NAME"`
//!   (e.g. the API key, or the JWT subject a previous filter put in a header;
//!   requests without the header share one bucket), or `"route"` (one bucket
//!   for the whole route).
//! - `bucket` (default: the route's name): buckets are named
//!   `bucket/key`, so routes that should share limits use the same `bucket`.
//!
//! Every answer carries `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (seconds); a refused request gets `429` with
//! `Retry-After` (seconds) and the standard JSON error body.

use serde::Deserialize;
use wasmgate_sdk::{
    Filter, FilterInfo, OnRequest, OnResponse, Request, RequestEdits, Response, ResponseEdits,
    export_filter, parse_config, rate_limit,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    requests: u64,
    #[serde(default)]
    per: Per,
    burst: Option<u64>,
    #[serde(default = "default_key")]
    key: String,
    bucket: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Per {
    #[default]
    Second,
    Minute,
    Hour,
}

fn default_key() -> String {
    "client_ip".to_owned()
}

enum Key {
    ClientIp,
    Header(String),
    Route,
}

struct RateLimit {
    /// Tokens per second, scaled by `SCALE` so that rates below one per
    /// second stay exact whole numbers for the host.
    refill: u64,
    capacity: u64,
    key: Key,
    bucket: Option<String>,
}

/// Each request costs `SCALE` tokens, so any whole rate per second, minute
/// or hour is a whole refill per second (100 per hour: 100 000 per second).
const SCALE: u64 = 3_600_000;

impl RateLimit {
    fn bucket_key(&self, req: &Request) -> String {
        let bucket = self.bucket.as_deref().unwrap_or(req.route());
        let key = match &self.key {
            Key::ClientIp => client_ip(&req.client_addr()).to_owned(),
            Key::Header(h) => req.header(h).unwrap_or("").to_owned(),
            Key::Route => String::new(),
        };
        format!("{bucket}/{key}")
    }

    fn headers(&self, v: &rate_limit::Verdict) -> [(&'static str, String); 3] {
        [
            ("ratelimit-limit", (self.capacity / SCALE).to_string()),
            ("ratelimit-remaining", (v.remaining / SCALE).to_string()),
            ("ratelimit-reset", v.reset_ms.div_ceil(1000).to_string()),
        ]
    }
}

/// The address without its port (`ip:port`, `[v6]:port` or a bare address).
fn client_ip(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => addr,
    }
}

impl Filter for RateLimit {
    fn new(config: &str) -> Result<Self, String> {
        let c: Config = parse_config(config)?;
        if c.requests == 0 {
            return Err("`requests` must be at least 1".into());
        }
        let seconds = match c.per {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
        };
        let burst = c.burst.unwrap_or(c.requests);
        if burst == 0 {
            return Err("`burst` must be at least 1".into());
        }
        let key = if c.key == "client_ip" {
            Key::ClientIp
        } else if c.key == "route" {
            Key::Route
        } else if let Some(h) = c.key.strip_prefix("header:") {
            if h.is_empty() {
                return Err("`key = \"header:NAME\"` needs a header name".into());
            }
            Key::Header(h.to_ascii_lowercase())
        } else {
            return Err(format!(
                "`key` {:?}: use \"client_ip\", \"header:NAME\" or \"route\"",
                c.key
            ));
        };
        Ok(RateLimit {
            refill: c
                .requests
                .checked_mul(SCALE / seconds)
                .ok_or("`requests` is too large")?,
            capacity: burst.checked_mul(SCALE).ok_or("`burst` is too large")?,
            key,
            bucket: c.bucket,
        })
    }

    fn info(&self) -> FilterInfo {
        // `on_response` works from its context, not the request.
        let info = FilterInfo::new()
            .wants_response(true)
            .request_headers_on_response(false);
        match &self.key {
            Key::Header(h) => info.request_headers([h.as_str()]),
            _ => info,
        }
    }

    fn on_request(&self, req: &Request) -> OnRequest {
        let v = rate_limit::take(&self.bucket_key(req), self.capacity, self.refill, SCALE);
        let headers = self.headers(&v);
        if !v.allowed {
            let retry = v.retry_after_ms.div_ceil(1000).max(1);
            let body = format!(
                r#"{{"status":429,"code":"rate_limited","message":"rate limit exceeded; retry in {retry} s","request_id":"{}"}}"#,
                req.request_id()
            );
            let mut resp = Response::new(429).with_header("retry-after", retry.to_string());
            for (n, val) in &headers {
                resp = resp.with_header(*n, val);
            }
            return OnRequest::respond(resp.json(body));
        }
        // The response gets the same headers: carry them to `on_response`.
        let context = headers
            .iter()
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(",");
        OnRequest::proceed_with(RequestEdits::default().context(context.into_bytes()))
    }

    fn on_response(&self, _req: &Request, resp: &Response, context: Option<&[u8]>) -> OnResponse {
        let _ = resp;
        let Some(ctx) = context.and_then(|c| std::str::from_utf8(c).ok()) else {
            return OnResponse::proceed();
        };
        let mut edits = ResponseEdits::default();
        for (name, value) in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"]
            .iter()
            .zip(ctx.split(','))
        {
            edits = edits.set_header(*name, value);
        }
        OnResponse::proceed_with(edits)
    }
}

export_filter!(RateLimit);
