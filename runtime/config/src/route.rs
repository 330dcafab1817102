//! `[[routes]]`: what a route matches and what it does, as written
//! (`RawRoute`), validated and typed (`RouteConfig`). Header and query
//! conditions, path regexes and the route's action (a cluster, a weighted
//! split, a redirect, a direct response) are the route's parts in
//! [`crate::route_config`].
//!
//! A route names clusters and filters defined in other sections; whether
//! they exist is checked by the caller, which knows every section: routes
//! are validated together with the names they use and their key paths
//! (`Names`).

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use crate::route_config::{
    Action, FullRegex, Matcher, RawMatch, RawRedirect, RawRespond, RawWeightedCluster,
};
use crate::{ConfigError, HumanDuration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    name: String,
    #[serde(default)]
    hosts: Vec<String>,
    path: Option<String>,
    path_prefix: Option<String>,
    path_regex: Option<String>,
    case_sensitive: Option<bool>,
    path_parameters: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<RawMatch>,
    #[serde(default)]
    query: Vec<RawMatch>,
    cluster: Option<String>,
    clusters: Option<Vec<RawWeightedCluster>>,
    redirect: Option<RawRedirect>,
    respond: Option<RawRespond>,
    prefix_rewrite: Option<String>,
    timeout: Option<HumanDuration>,
    #[serde(default)]
    filters: Vec<RawRouteFilter>,
    cache: Option<crate::response_cache::RawRouteCache>,
    transcode: Option<crate::transcode::RawTranscode>,
    grpc_web: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteFilter {
    name: String,
    #[serde(default)]
    config: Option<toml::Table>,
    #[serde(default)]
    seal: Vec<String>,
}

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with these whole segments (`/api` matches `/api` and
    /// `/api/x`, not `/apix`). Stored without a trailing slash; `/` is empty.
    Prefix(String),
    /// The whole path matches this regular expression.
    Regex(FullRegex),
}

/// `[[routes]]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Unique name, used in logs, metrics and filter metadata.
    pub name: String,
    /// Host patterns (lower-case; `*.example.com` wildcards); empty = any host.
    pub hosts: Vec<String>,
    /// Path match.
    pub path: PathMatch,
    /// Whether `path` / `path_prefix` compare ASCII letters exactly (the
    /// default); `false` for upstreams that treat `/Admin` as `/admin`
    /// (IIS), so a route that guards a path cannot be passed by changing
    /// its case. A `path_regex` gets `(?i)`.
    pub case_sensitive: bool,
    /// Answer 400 to a request on this route whose path has `;` segment
    /// parameters (`/a;jsessionid=1/b`), for upstreams that drop them
    /// before their own routing (Tomcat, Jetty), which would otherwise see
    /// another path than the one this gateway routed.
    pub reject_path_parameters: bool,
    /// Methods (upper-case); empty = any method.
    pub methods: Vec<http::Method>,
    /// Header and query conditions, all of which must hold.
    pub matchers: Vec<Matcher>,
    /// What the route does: a cluster, a split, a redirect, a response.
    pub action: Action,
    /// Replaces the matched `path_prefix` when forwarding.
    pub prefix_rewrite: Option<String>,
    /// Time the upstream part (every try) may take; 504 past it.
    pub timeout: Option<Duration>,
    /// `[routes.cache]`: its answers are cached, and how; `None`: not.
    pub cache: Option<crate::RouteCacheConfig>,
    /// The filter chain, in request order.
    pub filters: Vec<RouteFilter>,
    /// `transcode = { ... }`: JSON/HTTP requests are sent as gRPC calls.
    pub transcode: Option<crate::TranscodeConfig>,
    /// `grpc_web = true`: gRPC-Web requests are sent as gRPC.
    pub grpc_web: bool,
    /// Position in the config, which breaks ties between equal matches.
    pub order: usize,
}

/// One filter in a route's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFilter {
    /// Name of a `[filters.NAME]` entry.
    pub name: String,
    /// The route's config for it, as the JSON text handed to `init`.
    pub config_json: String,
    /// Request headers (lower case) that the filters after this one on the
    /// route may not set or remove: what it vouches for (an identity header
    /// a `jwt` filter sets, say) stays as it left it.
    pub seal: Vec<String>,
}

/// The clusters and filters the routes name, each with the key path that
/// names it, for the caller to check against the other sections.
#[derive(Debug, Default)]
pub(crate) struct Names {
    /// `(key path, cluster)`, e.g. `("routes[0].cluster", "api")`.
    pub clusters: Vec<(String, String)>,
    /// `(key path, filter)`, e.g. `("routes[0].filters[1].name", "auth")`.
    pub filters: Vec<(String, String)>,
    /// `(key path, descriptor)`, e.g. `("routes[0].transcode.descriptor", "books")`.
    pub descriptors: Vec<(String, String)>,
    /// The clusters of routes that speak gRPC to them (`transcode`,
    /// `grpc_web`), which must use HTTP/2: `(key path, cluster)`.
    pub grpc_clusters: Vec<(String, String)>,
}

/// Validates every `[[routes]]` entry (names unique; the caller decides
/// whether none at all is an error);
/// problems go to `errors` with their key paths, and the clusters and
/// filters the routes name go to `names`.
pub(crate) fn validate_all(
    raw: Vec<RawRoute>,
    names: &mut Names,
    errors: &mut Vec<ConfigError>,
) -> Vec<RouteConfig> {
    let mut seen = HashSet::new();
    let routes: Vec<RouteConfig> = raw
        .into_iter()
        .enumerate()
        .map(|(i, r)| validate(i, r, &mut seen, names, errors))
        .collect();
    routes
}

/// Validates `routes[i]`; `seen` holds the route names seen so far, `refs`
/// gets the clusters and filters it names.
fn validate(
    i: usize,
    r: RawRoute,
    seen: &mut HashSet<String>,
    refs: &mut Names,
    errors: &mut Vec<ConfigError>,
) -> RouteConfig {
    let key = format!("routes[{i}]");
    if !crate::is_valid_name(&r.name) {
        errors.push(ConfigError::new(
            format!("{key}.name"),
            format!(
                "{:?}: route names use letters, digits, '-', '_' and '.' (at most 64)",
                r.name
            ),
        ));
    } else if !seen.insert(r.name.clone()) {
        errors.push(ConfigError::new(
            format!("{key}.name"),
            format!("duplicate route name {:?}", r.name),
        ));
    }
    let mut hosts = Vec::new();
    for (j, h) in r.hosts.iter().enumerate() {
        match crate::parse_host_pattern(h) {
            Ok(h) => hosts.push(h),
            Err(m) => errors.push(ConfigError::new(format!("{key}.hosts[{j}]"), m)),
        }
    }
    let case_sensitive = r.case_sensitive.unwrap_or(true);
    let reject_path_parameters = match r.path_parameters.as_deref() {
        None | Some("keep") => false,
        Some("reject") => true,
        Some(other) => {
            errors.push(ConfigError::new(
                format!("{key}.path_parameters"),
                format!("{other:?} is not one of \"keep\" (the default) or \"reject\""),
            ));
            false
        }
    };
    let path = match (r.path, r.path_prefix, r.path_regex) {
        (Some(p), None, None) => {
            if let Err(m) = check_path(&p) {
                errors.push(ConfigError::new(format!("{key}.path"), m));
            }
            PathMatch::Exact(p)
        }
        (None, Some(p), None) => {
            if let Err(m) = check_path(&p) {
                errors.push(ConfigError::new(format!("{key}.path_prefix"), m));
            }
            PathMatch::Prefix(p.trim_end_matches('/').to_owned())
        }
        (None, None, Some(re)) => match FullRegex::new(&if case_sensitive {
            re
        } else {
            format!("(?i:{re})")
        }) {
            Ok(re) => PathMatch::Regex(re),
            Err(m) => {
                errors.push(ConfigError::new(format!("{key}.path_regex"), m));
                PathMatch::Prefix(String::new())
            }
        },
        (None, None, None) => PathMatch::Prefix(String::new()),
        _ => {
            errors.push(ConfigError::new(
                &key,
                "give one of `path` (exact), `path_prefix` or `path_regex`, not several",
            ));
            PathMatch::Prefix(String::new())
        }
    };
    let matchers = crate::route_config::matchers(&key, &r.headers, &r.query, errors);
    let has_prefix = matches!(&path, PathMatch::Prefix(p) if !p.is_empty());
    if let Some(p) = &r.prefix_rewrite {
        if !has_prefix {
            errors.push(ConfigError::new(
                format!("{key}.prefix_rewrite"),
                "replaces the matched path_prefix: the route needs a path_prefix",
            ));
        }
        if let Err(m) = check_path(p) {
            errors.push(ConfigError::new(format!("{key}.prefix_rewrite"), m));
        }
    }
    let mut methods = Vec::new();
    for (j, m) in r.methods.iter().enumerate() {
        match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(m) if !methods.contains(&m) => methods.push(m),
            Ok(_) => errors.push(ConfigError::new(
                format!("{key}.methods[{j}]"),
                format!("{m:?} is listed twice"),
            )),
            Err(_) => errors.push(ConfigError::new(
                format!("{key}.methods[{j}]"),
                format!("{m:?} is not an HTTP method"),
            )),
        }
    }
    let clusters_before = refs.clusters.len();
    let action = crate::route_config::action(
        &key,
        crate::route_config::RawAction {
            cluster: r.cluster,
            clusters: r.clusters,
            redirect: r.redirect,
            respond: r.respond,
        },
        has_prefix,
        &mut refs.clusters,
        errors,
    );
    if r.prefix_rewrite.is_some() && matches!(action, Action::Redirect(_) | Action::Respond(_)) {
        errors.push(ConfigError::new(
            format!("{key}.prefix_rewrite"),
            "applies to forwarded requests; this route answers itself",
        ));
    }
    let transcode = r.transcode.map(|t| {
        let t = crate::transcode::validate_transcode(t, &key, errors);
        refs.descriptors
            .push((format!("{key}.transcode.descriptor"), t.descriptor.clone()));
        if r.prefix_rewrite.is_some() {
            errors.push(ConfigError::new(
                format!("{key}.prefix_rewrite"),
                "a transcoded route sends each call to its gRPC method's path: \
                 prefix_rewrite does not apply",
            ));
        }
        t
    });
    let grpc_web = r.grpc_web.unwrap_or(false);
    if transcode.is_some() || grpc_web {
        let what = if transcode.is_some() {
            "transcode"
        } else {
            "grpc_web"
        };
        if matches!(action, Action::Redirect(_) | Action::Respond(_)) {
            errors.push(ConfigError::new(
                format!("{key}.{what}"),
                "translates requests for a cluster; this route answers itself",
            ));
        }
        let named = refs.clusters[clusters_before..].to_vec();
        refs.grpc_clusters.extend(named);
    }
    let mut chain = Vec::new();
    for (j, f) in r.filters.into_iter().enumerate() {
        refs.filters
            .push((format!("{key}.filters[{j}].name"), f.name.clone()));
        let config_json = match f.config {
            Some(table) => serde_json::to_string(&table).unwrap_or_else(|e| {
                errors.push(ConfigError::new(
                    format!("{key}.filters[{j}].config"),
                    format!("cannot be converted to JSON: {e}"),
                ));
                "{}".into()
            }),
            None => "{}".into(),
        };
        let mut seal = Vec::new();
        for (k, h) in f.seal.iter().enumerate() {
            match http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                Ok(n) => seal.push(n.as_str().to_owned()),
                Err(_) => errors.push(ConfigError::new(
                    format!("{key}.filters[{j}].seal[{k}]"),
                    format!("{h:?} is not a header name"),
                )),
            }
        }
        chain.push(RouteFilter {
            name: f.name,
            config_json,
            seal,
        });
    }
    RouteConfig {
        name: r.name,
        hosts,
        path,
        case_sensitive,
        reject_path_parameters,
        methods,
        matchers,
        action,
        prefix_rewrite: r.prefix_rewrite.map(|p| p.trim_end_matches('/').to_owned()),
        timeout: match r.timeout {
            Some(HumanDuration(d)) if d.is_zero() => {
                errors.push(ConfigError::new(
                    format!("{key}.timeout"),
                    "must be more than 0",
                ));
                None
            }
            t => t.map(|t| t.0),
        },
        cache: r.cache.map(|c| {
            let names: Vec<&str> = chain.iter().map(|f| f.name.as_str()).collect();
            crate::response_cache::validate_route_cache(c, &key, &names, errors)
        }),
        filters: chain,
        transcode,
        grpc_web,
        order: i,
    }
}

fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p.contains(['?', '#']) || p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "{p:?} must be a plain path (no query, fragment, spaces or control characters)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (Vec<RouteConfig>, Names, Vec<String>) {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            routes: Vec<RawRoute>,
        }
        let doc: Doc = toml::from_str(text).unwrap();
        let mut names = Names::default();
        let mut errors = Vec::new();
        let routes = validate_all(doc.routes, &mut names, &mut errors);
        (
            routes,
            names,
            errors.iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn a_route_and_the_names_it_uses() {
        let (routes, names, errors) = check(
            "[[routes]]\nname = \"api\"\nhosts = [\"API.example.com\", \"*.example.org\"]\n\
             path_prefix = \"/api/\"\nprefix_rewrite = \"/v1/\"\nmethods = [\"get\", \"POST\"]\n\
             timeout = \"2s\"\nclusters = [{ name = \"a\", weight = 3 }, { name = \"b\", weight = 1 }]\n\
             filters = [{ name = \"auth\", config = { key = \"x\" } }, { name = \"log\" }]\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let r = &routes[0];
        assert_eq!(r.name, "api");
        assert_eq!(r.hosts, ["api.example.com", "*.example.org"]);
        assert_eq!(r.path, PathMatch::Prefix("/api".into()));
        assert_eq!(r.prefix_rewrite.as_deref(), Some("/v1"));
        assert_eq!(r.methods, [http::Method::GET, http::Method::POST]);
        assert_eq!(r.timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            r.action,
            Action::Split(vec![("a".into(), 3), ("b".into(), 1)])
        );
        assert_eq!(r.filters[0].config_json, r#"{"key":"x"}"#);
        assert_eq!(r.filters[1].config_json, "{}");
        assert_eq!(r.order, 0);
        assert_eq!(
            names.clusters,
            [
                ("routes[0].clusters[0].name".to_owned(), "a".to_owned()),
                ("routes[0].clusters[1].name".to_owned(), "b".to_owned()),
            ]
        );
        assert_eq!(
            names.filters,
            [
                ("routes[0].filters[0].name".to_owned(), "auth".to_owned()),
                ("routes[0].filters[1].name".to_owned(), "log".to_owned()),
            ]
        );
    }

    #[test]
    fn names_paths_methods_and_timeouts_are_checked() {
        let (routes, _, errors) = check(
            "[[routes]]\nname = \"r\"\npath = \"a\"\ncluster = \"c\"\n\
             [[routes]]\nname = \"r\"\npath = \"/x\"\npath_prefix = \"/y\"\nmethods = [\"GET\", \"get\", \"G T\"]\ncluster = \"c\"\n\
             [[routes]]\nname = \"bad name\"\npath_regex = \"(\"\ntimeout = \"0s\"\ncluster = \"c\"\n\
             [[routes]]\nname = \"s\"\npath = \"/s\"\nprefix_rewrite = \"/t\"\nredirect = { host = \"example.com\" }\n",
        );
        assert_eq!(routes.len(), 4);
        assert_eq!(routes[2].timeout, None);
        assert_eq!(errors[0], "routes[0].path: \"a\" must start with '/'");
        assert_eq!(errors[1], "routes[1].name: duplicate route name \"r\"");
        assert_eq!(
            errors[2],
            "routes[1]: give one of `path` (exact), `path_prefix` or `path_regex`, not several"
        );
        assert_eq!(errors[3], "routes[1].methods[1]: \"get\" is listed twice");
        assert_eq!(
            errors[4],
            "routes[1].methods[2]: \"G T\" is not an HTTP method"
        );
        assert_eq!(
            errors[5],
            "routes[2].name: \"bad name\": route names use letters, digits, '-', '_' and '.' (at most 64)"
        );
        assert!(errors[6].starts_with("routes[2].path_regex: invalid regular expression \"(\""));
        assert_eq!(errors[7], "routes[2].timeout: must be more than 0");
        assert_eq!(
            errors[8],
            "routes[3].prefix_rewrite: replaces the matched path_prefix: the route needs a path_prefix"
        );
        assert_eq!(
            errors[9],
            "routes[3].prefix_rewrite: applies to forwarded requests; this route answers itself"
        );
        assert_eq!(errors.len(), 10, "{errors:#?}");
    }
}
