//! The test file of `wasmgate filter test`, as written: the filter's
//! settings and config, then cases, each a request, the upstream's answer,
//! canned answers to the filter's outbound calls, and what to expect.
//!
//! ```toml
//! config = { keys = ["k1"] }          # the route's config for the filter
//!
//! [filter]                            # the keys of [filters.NAME], path left out
//! vars = { realm = "shop" }
//!
//! [[case]]
//! name = "a request without a key is refused"
//! request = { method = "GET", path = "/api", headers = { accept = "*/*" } }
//! expect = { on_request = "respond", status = 401 }
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::filter::exchange::{ClientAddr, Facts};

/// One test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    /// The filter's settings: the keys of `[filters.NAME]` in
    /// `gateway.toml`, without `path`.
    #[serde(default)]
    pub filter: toml::Table,
    /// The route's `config` for the filter (a table, as on a route), handed
    /// to `init` as JSON.
    pub config: Option<toml::Value>,
    /// The route's name, as the filter's logs and metrics see it.
    pub route: Option<String>,
    /// The cases, run in order on one gateway's worth of host state (the
    /// `kv` entries and rate-limit buckets of one case are there for the
    /// next).
    #[serde(default, rename = "case")]
    pub cases: Vec<Case>,
}

/// A header's value or values.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Values {
    /// One value.
    One(String),
    /// Several (repeated header lines, in order).
    Many(Vec<String>),
}

impl Values {
    /// The values in order.
    pub fn list(&self) -> Vec<&str> {
        match self {
            Values::One(v) => vec![v.as_str()],
            Values::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// Headers by name.
pub type Headers = BTreeMap<String, Values>;

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it shows.
    pub name: String,
    /// Another route config for this case alone (a new instance runs
    /// `init` with it).
    pub config: Option<toml::Value>,
    /// The client's request.
    #[serde(default)]
    pub request: RequestSpec,
    /// The upstream's answer, if the request is forwarded.
    #[serde(default)]
    pub upstream: UpstreamSpec,
    /// Answers to the filter's outbound calls, taken in order by the first
    /// call each matches.
    #[serde(default)]
    pub outbound: Vec<CannedOutbound>,
    /// What must happen.
    #[serde(default)]
    pub expect: Expect,
}

/// The client's request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Default `GET`.
    pub method: Option<String>,
    /// Path and query; default `/`.
    pub path: Option<String>,
    /// Its headers (`host` defaults to `example.com`).
    #[serde(default)]
    pub headers: Headers,
    /// Its body.
    pub body: Option<String>,
    /// The client's address (`203.0.113.7:4000`, or an IP a trusted proxy
    /// named); default `192.0.2.10:40000`.
    pub client: Option<String>,
    /// Whether it came over TLS.
    #[serde(default)]
    pub tls: bool,
    /// The gateway's request id; default `test-<case number>`.
    pub id: Option<String>,
}

/// The upstream's answer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Default 200.
    pub status: Option<u16>,
    /// Its headers.
    #[serde(default)]
    pub headers: Headers,
    /// Its body.
    pub body: Option<String>,
}

/// A canned answer to an outbound call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CannedOutbound {
    /// The cluster the call names.
    pub cluster: String,
    /// Only a call with this method (any, if not given).
    pub method: Option<String>,
    /// Only a call with this path and query (any, if not given).
    pub path: Option<String>,
    /// The answer's status; default 200.
    pub status: Option<u16>,
    /// Its headers.
    #[serde(default)]
    pub headers: Headers,
    /// Its body.
    pub body: Option<String>,
    /// Fail the call instead: `timeout`, `unavailable` or
    /// `response-too-large`.
    pub error: Option<String>,
}

/// What must happen; anything not given is not checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `init` refuses the config, with a message containing this.
    pub init_error: Option<String>,
    /// What `on-request` decided: `proceed`, `respond`, `failed`, or
    /// `not-called`.
    pub on_request: Option<String>,
    /// What `on-response` decided: `proceed`, `replace`, `failed`, or
    /// `not-called`.
    pub on_response: Option<String>,
    /// A failure's message (or its code, `filter_trap` say) contains this.
    pub error: Option<String>,
    /// The status the client gets.
    pub status: Option<u16>,
    /// Headers the client gets, with exactly these values.
    #[serde(default)]
    pub headers: Headers,
    /// Headers the client does not get.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// The body the client gets, exactly.
    pub body: Option<String>,
    /// The body the client gets contains this.
    pub body_contains: Option<String>,
    /// The body the client gets is this JSON (compared as values).
    pub body_json: Option<toml::Value>,
    /// Whether the request reaches the upstream.
    pub forwarded: Option<bool>,
    /// What reaches the upstream (implies `forwarded = true`).
    pub upstream: Option<ExpectUpstream>,
    /// Each is contained in a line the filter logged.
    #[serde(default)]
    pub logs: Vec<String>,
    /// What the filter recorded in this case: a counter's increase, a
    /// gauge's value, a histogram's observations. Keys are the metric's
    /// name, with labels if it has any: `hits{route="api"}`.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Outbound calls made.
    pub outbound_calls: Option<usize>,
}

/// What must reach the upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectUpstream {
    /// Its method.
    pub method: Option<String>,
    /// Its path and query.
    pub path: Option<String>,
    /// Headers with exactly these values.
    #[serde(default)]
    pub headers: Headers,
    /// Headers it does not carry.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// Its body, exactly.
    pub body: Option<String>,
    /// The cluster a filter sent it to, if it rerouted it.
    pub cluster: Option<String>,
}

/// A route config as the JSON `init` gets (what a route's `config` table
/// becomes in the gateway).
pub fn config_json(v: Option<&toml::Value>) -> Result<String, String> {
    match v {
        None => Ok("{}".into()),
        Some(v) => {
            serde_json::to_string(v).map_err(|e| format!("cannot be converted to JSON: {e}"))
        }
    }
}

/// Headers as a header map; an invalid name or value is named.
pub fn header_map(h: &Headers) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (n, v) in h {
        let name = HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("{n:?} is not a header name"))?;
        for v in v.list() {
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("the value of {n:?} is not a header value"))?;
            map.append(name.clone(), value);
        }
    }
    Ok(map)
}

/// The client's request of case `i` as the gateway hands it to filters:
/// its head, body and facts.
pub fn request(
    i: usize,
    route: &Arc<str>,
    r: &RequestSpec,
) -> Result<(http::request::Parts, Vec<u8>, Facts), String> {
    let method = Method::from_bytes(r.method.as_deref().unwrap_or("GET").as_bytes())
        .map_err(|_| format!("method: {:?} is not an HTTP method", r.method))?;
    let path = r.path.as_deref().unwrap_or("/");
    if !path.starts_with('/') {
        return Err(format!("path: {path:?} must start with '/'"));
    }
    let uri: http::Uri = path
        .parse()
        .map_err(|e| format!("path: {path:?} is not a path and query: {e}"))?;
    let mut headers = header_map(&r.headers).map_err(|e| format!("headers: {e}"))?;
    if !headers.contains_key(http::header::HOST) {
        headers.insert(http::header::HOST, HeaderValue::from_static("example.com"));
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.headers = headers;
    let id = r.id.clone().unwrap_or_else(|| format!("test-{}", i + 1));
    let facts = Facts {
        request_id: HeaderValue::from_str(&id)
            .map_err(|_| format!("id: {id:?} is not a header value"))?,
        route: route.clone(),
        scheme: if r.tls { "https" } else { "http" },
        client: client_addr(r.client.as_deref()).map_err(|e| format!("client: {e}"))?,
        tls: r.tls,
        received_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    Ok((
        parts,
        r.body.clone().unwrap_or_default().into_bytes(),
        facts,
    ))
}

/// The client's address as the file gives it.
fn client_addr(given: Option<&str>) -> Result<ClientAddr, String> {
    match given {
        None => Ok(ClientAddr::Peer(SocketAddr::from(([192, 0, 2, 10], 40000)))),
        Some(s) => {
            if let Ok(a) = s.parse::<SocketAddr>() {
                Ok(ClientAddr::Peer(a))
            } else if let Ok(ip) = s.parse::<IpAddr>() {
                Ok(ClientAddr::Forwarded(ip))
            } else {
                Err(format!("{s:?} is not an address (ip:port, or an ip)"))
            }
        }
    }
}

const REQUEST_DECISIONS: [&str; 4] = ["proceed", "respond", "failed", "not-called"];
const RESPONSE_DECISIONS: [&str; 4] = ["proceed", "replace", "failed", "not-called"];

/// Checks everything in the file that can be checked before a filter runs,
/// so a mistake in it is named at once (with its case) rather than showing
/// as a failed expectation.
pub fn check(file: &CasesFile) -> Result<(), String> {
    config_json(file.config.as_ref()).map_err(|e| format!("config: {e}"))?;
    let route: Arc<str> = Arc::from("check");
    for (i, c) in file.cases.iter().enumerate() {
        let at = |what: String| format!("case {} ({:?}): {what}", i + 1, c.name);
        config_json(c.config.as_ref()).map_err(|e| at(format!("config: {e}")))?;
        request(i, &route, &c.request).map_err(|e| at(format!("request.{e}")))?;
        if let Some(s) = c.upstream.status
            && !(200..=999).contains(&s)
        {
            return Err(at(format!("upstream.status: {s} is not a final status")));
        }
        header_map(&c.upstream.headers).map_err(|e| at(format!("upstream.headers: {e}")))?;
        for (j, o) in c.outbound.iter().enumerate() {
            if let Some(e) = &o.error
                && !super::fakes::CANNED_ERRORS.contains(&e.as_str())
            {
                return Err(at(format!(
                    "outbound[{j}].error: {e:?} is not one of {}",
                    super::fakes::CANNED_ERRORS.join(", ")
                )));
            }
            header_map(&o.headers).map_err(|e| at(format!("outbound[{j}].headers: {e}")))?;
        }
        let x = &c.expect;
        for (key, given, allowed) in [
            ("on_request", &x.on_request, &REQUEST_DECISIONS),
            ("on_response", &x.on_response, &RESPONSE_DECISIONS),
        ] {
            if let Some(g) = given
                && !allowed.contains(&g.as_str())
            {
                return Err(at(format!(
                    "expect.{key}: {g:?} is not one of {}",
                    allowed.join(", ")
                )));
            }
        }
        if x.upstream.is_some() && x.forwarded == Some(false) {
            return Err(at(
                "expect: upstream is given but forwarded = false".to_owned()
            ));
        }
    }
    Ok(())
}
