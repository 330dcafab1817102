//! What a route matches besides host, path and method (headers, query
//! parameters, a path regex) and what it does (a cluster, a weighted split
//! of clusters, a redirect, a direct response, a prefix rewrite): as
//! written in `[[routes]]` and validated.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    name: String,
    value: Option<String>,
    regex: Option<String>,
    present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWeightedCluster {
    name: String,
    weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedirect {
    status: Option<u16>,
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    strip_query: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRespond {
    status: Option<u16>,
    body: Option<String>,
    content_type: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// A regular expression that must match a whole value.
#[derive(Debug, Clone)]
pub struct FullRegex(regex::Regex);

impl FullRegex {
    /// Compiles `pattern`, anchored at both ends.
    pub fn new(pattern: &str) -> Result<FullRegex, String> {
        regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 20)
            .build()
            .map(FullRegex)
            .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
    }

    /// Whether the whole of `s` matches.
    pub fn is_match(&self, s: &str) -> bool {
        self.0.is_match(s)
    }

    /// The pattern as written (anchors included).
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for FullRegex {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for FullRegex {}

/// How a header or query value must look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// Equal to this.
    Exact(String),
    /// Matching this whole.
    Regex(FullRegex),
    /// Present (any value).
    Present,
    /// Absent.
    Absent,
}

impl ValueMatch {
    fn accepts(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (ValueMatch::Absent, v) => v.is_none(),
            (ValueMatch::Present, v) => v.is_some(),
            (ValueMatch::Exact(e), Some(v)) => e == v,
            (ValueMatch::Regex(r), Some(v)) => r.is_match(v),
            (_, None) => false,
        }
    }
}

/// One condition on a request besides host, path and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// A header (every value is tried; one must satisfy the match).
    Header(http::HeaderName, ValueMatch),
    /// A query parameter (percent-decoded; the first occurrence counts).
    Query(String, ValueMatch),
}

impl Matcher {
    /// Whether the request satisfies it.
    pub fn matches(&self, headers: &http::HeaderMap, query: Option<&str>) -> bool {
        match self {
            Matcher::Header(name, m) => {
                let mut values = headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    return m.accepts(None);
                }
                values.any(|v| m.accepts(Some(v.to_str().unwrap_or(""))))
            }
            Matcher::Query(name, m) => {
                let found = query.and_then(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.into_owned())
                });
                m.accepts(found.as_deref())
            }
        }
    }
}

/// Where a redirect points; unset parts come from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// Host name.
    pub host: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// The whole new path.
    pub path: Option<String>,
    /// Replaces the route's `path_prefix` in the path.
    pub prefix: Option<String>,
    /// Drop the query.
    pub strip_query: bool,
}

/// A response the gateway makes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Respond {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
    /// Headers, `content-type` included.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// What a route does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forward to this cluster.
    Cluster(String),
    /// Forward to these clusters in proportion to the weights.
    Split(Vec<(String, u32)>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with this response.
    Respond(Respond),
}

impl Action {
    /// Every cluster the action may send to.
    pub fn clusters(&self) -> Vec<&str> {
        match self {
            Action::Cluster(c) => vec![c.as_str()],
            Action::Split(s) => s.iter().map(|(c, _)| c.as_str()).collect(),
            Action::Redirect(_) | Action::Respond(_) => Vec::new(),
        }
    }
}

fn value_match(key: &str, m: &RawMatch, errors: &mut Vec<ConfigError>) -> ValueMatch {
    let given = [m.value.is_some(), m.regex.is_some(), m.present.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given != 1 {
        errors.push(ConfigError::new(
            key,
            "give exactly one of `value`, `regex` or `present`",
        ));
        return ValueMatch::Present;
    }
    if let Some(v) = &m.value {
        return ValueMatch::Exact(v.clone());
    }
    if let Some(r) = &m.regex {
        return match FullRegex::new(r) {
            Ok(r) => ValueMatch::Regex(r),
            Err(e) => {
                errors.push(ConfigError::new(format!("{key}.regex"), e));
                ValueMatch::Present
            }
        };
    }
    if m.present == Some(false) {
        ValueMatch::Absent
    } else {
        ValueMatch::Present
    }
}

/// Validates `headers` and `query` of a route.
pub(crate) fn matchers(
    key: &str,
    headers: &[RawMatch],
    query: &[RawMatch],
    errors: &mut Vec<ConfigError>,
) -> Vec<Matcher> {
    let mut out = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let k = format!("{key}.headers[{i}]");
        let m = value_match(&k, h, errors);
        match http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()) {
            Ok(name) => out.push(Matcher::Header(name, m)),
            Err(_) => errors.push(ConfigError::new(
                format!("{k}.name"),
                format!("{:?} is not a header name", h.name),
            )),
        }
    }
    for (i, q) in query.iter().enumerate() {
        let k = format!("{key}.query[{i}]");
        let m = value_match(&k, q, errors);
        if q.name.is_empty() {
            errors.push(ConfigError::new(format!("{k}.name"), "must not be empty"));
        }
        out.push(Matcher::Query(q.name.clone(), m));
    }
    out
}

/// The pieces of a route's action as written.
pub(crate) struct RawAction {
    pub cluster: Option<String>,
    pub clusters: Option<Vec<RawWeightedCluster>>,
    pub redirect: Option<RawRedirect>,
    pub respond: Option<RawRespond>,
}

/// Validates the route's action: exactly one of `cluster`, `clusters`,
/// `redirect`, `respond`. The clusters it names go to `clusters` with their
/// key paths, for the caller to check that they exist.
pub(crate) fn action(
    key: &str,
    raw: RawAction,
    has_prefix: bool,
    clusters: &mut Vec<(String, String)>,
    errors: &mut Vec<ConfigError>,
) -> Action {
    let given = [
        raw.cluster.is_some(),
        raw.clusters.is_some(),
        raw.redirect.is_some(),
        raw.respond.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given != 1 {
        errors.push(ConfigError::new(
            key,
            "give exactly one of `cluster`, `clusters` (a weighted split), `redirect` or `respond`",
        ));
    }
    if let Some(c) = raw.cluster {
        clusters.push((format!("{key}.cluster"), c.clone()));
        return Action::Cluster(c);
    }
    if let Some(split) = raw.clusters {
        if split.is_empty() {
            errors.push(ConfigError::new(
                format!("{key}.clusters"),
                "must list at least one { name, weight }",
            ));
        }
        let mut out = Vec::new();
        for (i, w) in split.into_iter().enumerate() {
            clusters.push((format!("{key}.clusters[{i}].name"), w.name.clone()));
            if !(1..=10_000).contains(&w.weight) {
                errors.push(ConfigError::new(
                    format!("{key}.clusters[{i}].weight"),
                    format!("must be between 1 and 10000, got {}", w.weight),
                ));
            }
            out.push((w.name, w.weight.max(1)));
        }
        return Action::Split(out);
    }
    if let Some(r) = raw.redirect {
        let k = format!("{key}.redirect");
        let status = r.status.unwrap_or(301);
        if ![301, 302, 303, 307, 308].contains(&status) {
            errors.push(ConfigError::new(
                format!("{k}.status"),
                format!("{status} is not a redirect status (301, 302, 303, 307 or 308)"),
            ));
        }
        if let Some(s) = &r.scheme
            && s != "http"
            && s != "https"
        {
            errors.push(ConfigError::new(
                format!("{k}.scheme"),
                format!("{s:?}: use \"http\" or \"https\""),
            ));
        }
        if let Some(h) = &r.host
            && (h.is_empty() || h.contains(['/', '?', '#', '@', ' ', ':']))
        {
            errors.push(ConfigError::new(
                format!("{k}.host"),
                format!("{h:?} is not a host name"),
            ));
        }
        if r.path.is_some() && r.prefix.is_some() {
            errors.push(ConfigError::new(&k, "give `path` or `prefix`, not both"));
        }
        if r.prefix.is_some() && !has_prefix {
            errors.push(ConfigError::new(
                format!("{k}.prefix"),
                "replaces the route's path_prefix: the route needs one",
            ));
        }
        for (name, p) in [("path", &r.path), ("prefix", &r.prefix)] {
            if let Some(p) = p
                && (!p.starts_with('/') || p.contains(['?', '#', ' ']))
            {
                errors.push(ConfigError::new(
                    format!("{k}.{name}"),
                    format!("{p:?} must start with '/' and hold no query"),
                ));
            }
        }
        return Action::Redirect(Redirect {
            status,
            scheme: r.scheme,
            host: r.host,
            port: r.port,
            path: r.path,
            prefix: r.prefix,
            strip_query: r.strip_query,
        });
    }
    if let Some(r) = raw.respond {
        let k = format!("{key}.respond");
        let status = r.status.unwrap_or(200);
        if !(200..=599).contains(&status) {
            errors.push(ConfigError::new(
                format!("{k}.status"),
                format!("{status} is not a final status (200 to 599)"),
            ));
        }
        let mut headers = Vec::new();
        let content_type = r
            .content_type
            .unwrap_or_else(|| "text/plain; charset=utf-8".to_owned());
        match http::HeaderValue::from_str(&content_type) {
            Ok(v) => headers.push((http::header::CONTENT_TYPE, v)),
            Err(_) => errors.push(ConfigError::new(
                format!("{k}.content_type"),
                format!("{content_type:?} is not a header value"),
            )),
        }
        for (name, value) in &r.headers {
            match (
                http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                _ => errors.push(ConfigError::new(
                    format!("{k}.headers.{name}"),
                    "is not a valid header name and value",
                )),
            }
        }
        return Action::Respond(Respond {
            status,
            body: r.body.unwrap_or_default(),
            headers,
        });
    }
    Action::Cluster(String::new())
}
