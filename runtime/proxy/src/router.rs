//! The route table: matches a request's host, path and method to a route.
//!
//! ## Precedence
//! Among the routes whose host, path and method all match, the winner is the
//! first by, in order:
//! 1. host: an exact host name, then `*.suffix` wildcards (longer suffix first),
//!    then routes without `hosts` (any host);
//! 2. path: an exact `path`, then `path_regex`, then `path_prefix` (longer
//!    prefix first);
//! 3. conditions: routes with `headers`/`query` conditions before routes
//!    without;
//! 4. method: routes that list methods before routes that take any method;
//! 5. config order: the route written first.
//!
//! Prefixes match whole segments: `/api/search` matches `/api/search` and
//! `/api/search/x`, never `/api/searchx`.
//!
//! ## Tenants
//! Before any of that, the host name picks the tenant whose routes are
//! searched ([`RouteTable::tenant_of`]): the tenant claiming the exact name,
//! else the one claiming the longest matching wildcard, else the tenant of
//! unclaimed names (the operator's own routes, or `tenants.default`). A
//! tenant's route without `hosts` matches every name the tenant claims;
//! one tenant's routes never see another's requests.

use std::borrow::Cow;
use std::sync::Arc;

use http::Method;

use wasmgate_config::PathMatch;
use wasmgate_config::route_config::Matcher;

/// What header and query conditions look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The request's headers.
    pub headers: &'a http::HeaderMap,
    /// The query string, if any.
    pub query: Option<&'a str>,
}

pub use wasmgate_config::TenantId;

/// A host pattern from a route's `hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    Any,
}

impl HostPattern {
    fn parse(p: &str) -> HostPattern {
        match p.strip_prefix('*') {
            Some(suffix) => HostPattern::Suffix(suffix.to_owned()),
            None => HostPattern::Exact(p.to_owned()),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostPattern::Any => true,
        }
    }

    /// Sort key: lower sorts first.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(_) => (0, 0),
            HostPattern::Suffix(s) => (1, usize::MAX - s.len()),
            HostPattern::Any => (2, 0),
        }
    }
}

fn path_matches(m: &PathMatch, case_sensitive: bool, path: &str) -> bool {
    let same = |a: &[u8], b: &[u8]| {
        if case_sensitive {
            a == b
        } else {
            a.eq_ignore_ascii_case(b)
        }
    };
    match m {
        PathMatch::Exact(p) => same(p.as_bytes(), path.as_bytes()),
        // Built with `(?i)` when the route is not case-sensitive.
        PathMatch::Regex(r) => r.is_match(path),
        PathMatch::Prefix(p) => {
            path.len() >= p.len()
                && same(&path.as_bytes()[..p.len()], p.as_bytes())
                && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
        }
    }
}

fn path_rank(m: &PathMatch) -> (u8, usize) {
    match m {
        PathMatch::Exact(_) => (0, 0),
        PathMatch::Regex(_) => (1, 0),
        PathMatch::Prefix(p) => (2, usize::MAX - p.len()),
    }
}

/// What the router needs to know about a route; `R` is whatever the caller
/// attaches (the gateway attaches the cluster and filter chain).
#[derive(Debug)]
pub struct RouteMatch<R> {
    /// Host patterns (lower-case), empty = any.
    pub hosts: Vec<String>,
    /// Path match.
    pub path: PathMatch,
    /// Whether `path` compares ASCII letters exactly.
    pub case_sensitive: bool,
    /// Methods, empty = any.
    pub methods: Vec<Method>,
    /// Header and query conditions, all of which must hold.
    pub matchers: Vec<Matcher>,
    /// Config order.
    pub order: usize,
    /// The caller's payload.
    pub target: Arc<R>,
}

#[derive(Debug)]
struct Entry<R> {
    host: HostPattern,
    path: PathMatch,
    case_sensitive: bool,
    methods: Vec<Method>,
    matchers: Vec<Matcher>,
    target: Arc<R>,
}

/// Routes of one tenant, sorted by precedence so that the first full match
/// is the winner.
#[derive(Debug)]
struct TenantRoutes<R> {
    id: TenantId,
    entries: Vec<Entry<R>>,
}

/// One tenant's part of the table: the host names it claims and its
/// routes.
#[derive(Debug)]
pub struct TenantTable<R> {
    /// Whose.
    pub tenant: TenantId,
    /// Host names it claims (lower-case, exact or `*.suffix`); none for
    /// the operator's own routes.
    pub hosts: Vec<String>,
    /// Its routes.
    pub routes: Vec<RouteMatch<R>>,
}

/// Which tenant a host name belongs to.
#[derive(Debug, Default)]
struct Dispatch {
    exact: std::collections::HashMap<String, usize>,
    /// (".suffix", tenant), longest suffix first.
    wildcard: Vec<(String, usize)>,
    /// The tenant of names no tenant claims, if any.
    unclaimed: Option<usize>,
}

/// The route table.
#[derive(Debug)]
pub struct RouteTable<R> {
    tenants: Vec<TenantRoutes<R>>,
    dispatch: Dispatch,
    /// Every route once, in tenant then config order.
    all: Vec<Arc<R>>,
}

/// Sorts one tenant's routes by precedence.
fn entries<R>(routes: Vec<RouteMatch<R>>, all: &mut Vec<Arc<R>>) -> Vec<Entry<R>> {
    let mut keyed = Vec::new();
    let mut ordered: Vec<(usize, Arc<R>)> = Vec::new();
    for r in routes {
        ordered.push((r.order, r.target.clone()));
        let patterns: Vec<HostPattern> = if r.hosts.is_empty() {
            vec![HostPattern::Any]
        } else {
            r.hosts.iter().map(|h| HostPattern::parse(h)).collect()
        };
        for host in patterns {
            let key = (
                host.rank(),
                path_rank(&r.path),
                u8::from(r.matchers.is_empty()),
                u8::from(r.methods.is_empty()),
                r.order,
            );
            keyed.push((
                key,
                Entry {
                    host,
                    path: r.path.clone(),
                    case_sensitive: r.case_sensitive,
                    methods: r.methods.clone(),
                    matchers: r.matchers.clone(),
                    target: r.target.clone(),
                },
            ));
        }
    }
    keyed.sort_by_key(|(key, _)| *key);
    ordered.sort_by_key(|(order, _)| *order);
    all.extend(ordered.into_iter().map(|(_, r)| r));
    keyed.into_iter().map(|(_, e)| e).collect()
}

impl<R> RouteTable<R> {
    /// Builds the table of the operator's routes alone (no tenants).
    pub fn new(routes: Vec<RouteMatch<R>>) -> Self {
        RouteTable::with_tenants(
            vec![TenantTable {
                tenant: TenantId::default_tenant(),
                hosts: Vec::new(),
                routes,
            }],
            &TenantId::default_tenant(),
        )
    }

    /// Builds the table of several tenants. Host names go to the tenant that
    /// claims them (an exact claim before wildcards, the longest wildcard
    /// first); every other name goes to `unclaimed`, when it is among them.
    /// Claims were checked to be exclusive when the configs were; should
    /// two tenants still claim one name, the first keeps it.
    pub fn with_tenants(tables: Vec<TenantTable<R>>, unclaimed: &TenantId) -> Self {
        let mut all = Vec::new();
        let mut dispatch = Dispatch::default();
        let mut tenants = Vec::with_capacity(tables.len());
        for (i, t) in tables.into_iter().enumerate() {
            for h in &t.hosts {
                match h.strip_prefix('*') {
                    Some(suffix) => dispatch.wildcard.push((suffix.to_owned(), i)),
                    None => {
                        dispatch.exact.entry(h.clone()).or_insert(i);
                    }
                }
            }
            if t.tenant == *unclaimed {
                dispatch.unclaimed = Some(i);
            }
            tenants.push(TenantRoutes {
                id: t.tenant,
                entries: entries(t.routes, &mut all),
            });
        }
        dispatch
            .wildcard
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        RouteTable {
            tenants,
            dispatch,
            all,
        }
    }

    /// The tenant `host` belongs to (lower-case, without port; `None` for a
    /// request without one, or a TLS connection without SNI), if any: the
    /// claimer of the exact name, else of the longest wildcard, else the
    /// tenant of unclaimed names.
    pub fn tenant_of(&self, host: Option<&str>) -> Option<TenantIndex> {
        let Some(host) = host else {
            return self.dispatch.unclaimed.map(TenantIndex);
        };
        if let Some(&i) = self.dispatch.exact.get(host) {
            return Some(TenantIndex(i));
        }
        self.dispatch
            .wildcard
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|&(_, i)| i)
            .or(self.dispatch.unclaimed)
            .map(TenantIndex)
    }

    /// The id of the tenant at `t`.
    pub fn tenant(&self, t: TenantIndex) -> &TenantId {
        &self.tenants[t.0].id
    }

    /// Every route once, in config order.
    pub fn routes(&self) -> &[Arc<R>] {
        &self.all
    }

    /// Finds the route for a request among tenant `t`'s. `host` is the
    /// request's host without port, lower-case (see [`normalize_host`]);
    /// `path` excludes the query.
    pub fn find(
        &self,
        t: TenantIndex,
        host: Option<&str>,
        method: &Method,
        path: &str,
        request: RequestView<'_>,
    ) -> Option<&Arc<R>> {
        self.tenants[t.0]
            .entries
            .iter()
            .find(|e| {
                let host_ok = match host {
                    Some(h) => e.host.matches(h),
                    None => e.host == HostPattern::Any,
                };
                host_ok
                    && (e.methods.is_empty() || e.methods.contains(method))
                    && path_matches(&e.path, e.case_sensitive, path)
                    && e.matchers
                        .iter()
                        .all(|m| m.matches(request.headers, request.query))
            })
            .map(|e| &e.target)
    }
}

/// A tenant's place in a [`RouteTable`] (valid for that table only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantIndex(usize);

/// The host part of a `Host` header or URI authority, lower-case, without the
/// port or a trailing dot. `None` if it is empty. Borrows when the input is
/// already in that form (the common case), so routing allocates nothing.
pub fn normalize_host(authority: &str) -> Option<Cow<'_, str>> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        })
    };
    let host = host.trim_end_matches('.');
    if host.is_empty() {
        None
    } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        name: &'static str,
        hosts: &[&str],
        path: PathMatch,
        methods: &[Method],
        order: usize,
    ) -> RouteMatch<&'static str> {
        RouteMatch {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path,
            case_sensitive: true,
            methods: methods.to_vec(),
            matchers: Vec::new(),
            order,
            target: Arc::new(name),
        }
    }

    fn find<'a>(
        t: &'a RouteTable<&'static str>,
        host: &str,
        method: Method,
        path: &str,
    ) -> Option<&'a str> {
        let headers = http::HeaderMap::new();
        let host = normalize_host(host);
        t.find(
            t.tenant_of(host.as_deref())?,
            host.as_deref(),
            &method,
            path,
            RequestView {
                headers: &headers,
                query: None,
            },
        )
        .map(|r| **r)
    }

    #[test]
    fn a_route_may_match_its_path_in_any_case() {
        let mut guard = route("guard", &[], PathMatch::Exact("/admin".into()), &[], 0);
        guard.case_sensitive = false;
        let mut internal = route(
            "internal",
            &[],
            PathMatch::Prefix("/Internal".into()),
            &[],
            1,
        );
        internal.case_sensitive = false;
        let t = RouteTable::new(vec![
            guard,
            internal,
            route("exact", &[], PathMatch::Exact("/Exact".into()), &[], 2),
            route("rest", &[], PathMatch::Prefix(String::new()), &[], 3),
        ]);
        for p in ["/admin", "/ADMIN", "/aDmIn"] {
            assert_eq!(find(&t, "h", Method::GET, p), Some("guard"), "{p}");
        }
        assert_eq!(find(&t, "h", Method::GET, "/admin/x"), Some("rest"));
        for p in ["/internal", "/INTERNAL/x", "/Internal/y"] {
            assert_eq!(find(&t, "h", Method::GET, p), Some("internal"), "{p}");
        }
        assert_eq!(find(&t, "h", Method::GET, "/internalx"), Some("rest"));
        // Case-sensitive stays the default.
        assert_eq!(find(&t, "h", Method::GET, "/Exact"), Some("exact"));
        assert_eq!(find(&t, "h", Method::GET, "/exact"), Some("rest"));
    }

    #[test]
    fn regex_paths_rank_between_exact_and_prefix_and_conditions_before_none() {
        use wasmgate_config::route_config::{FullRegex, Matcher, ValueMatch};
        let mut canary = route("canary", &[], PathMatch::Prefix("/api".into()), &[], 0);
        canary.matchers = vec![Matcher::Header(
            http::HeaderName::from_static("x-canary"),
            ValueMatch::Exact("1".into()),
        )];
        let t = RouteTable::new(vec![
            route("prefix", &[], PathMatch::Prefix("/api".into()), &[], 1),
            route(
                "users",
                &[],
                PathMatch::Regex(FullRegex::new("/api/users/[0-9]+").unwrap()),
                &[],
                2,
            ),
            route(
                "exact",
                &[],
                PathMatch::Exact("/api/users/1".into()),
                &[],
                3,
            ),
            canary,
        ]);
        assert_eq!(find(&t, "x", Method::GET, "/api/users/1"), Some("exact"));
        assert_eq!(find(&t, "x", Method::GET, "/api/users/42"), Some("users"));
        assert_eq!(find(&t, "x", Method::GET, "/api/users/42x"), Some("prefix"));
        let mut h = http::HeaderMap::new();
        h.insert("x-canary", "1".parse().unwrap());
        let with = |path| {
            t.find(
                t.tenant_of(Some("x")).unwrap(),
                Some("x"),
                &Method::GET,
                path,
                RequestView {
                    headers: &h,
                    query: None,
                },
            )
            .map(|r| **r)
        };
        assert_eq!(with("/api/other"), Some("canary"));
        assert_eq!(
            with("/api/users/42"),
            Some("users"),
            "path rank comes first"
        );
    }

    #[test]
    fn prefix_matches_whole_segments_only() {
        let t = RouteTable::new(vec![route(
            "search",
            &[],
            PathMatch::Prefix("/api/search".into()),
            &[],
            0,
        )]);
        assert_eq!(find(&t, "x", Method::GET, "/api/search"), Some("search"));
        assert_eq!(find(&t, "x", Method::GET, "/api/search/"), Some("search"));
        assert_eq!(
            find(&t, "x", Method::GET, "/api/search/a/b"),
            Some("search")
        );
        assert_eq!(find(&t, "x", Method::GET, "/api/searchx"), None);
        assert_eq!(find(&t, "x", Method::GET, "/api"), None);
    }

    #[test]
    fn root_prefix_matches_everything() {
        let t = RouteTable::new(vec![route(
            "all",
            &[],
            PathMatch::Prefix(String::new()),
            &[],
            0,
        )]);
        assert_eq!(find(&t, "x", Method::GET, "/"), Some("all"));
        assert_eq!(find(&t, "x", Method::GET, "/anything/at/all"), Some("all"));
    }

    #[test]
    fn precedence_exact_then_longest_prefix_then_order() {
        let t = RouteTable::new(vec![
            route("short", &[], PathMatch::Prefix("/api".into()), &[], 0),
            route("long", &[], PathMatch::Prefix("/api/v1".into()), &[], 1),
            route(
                "exact",
                &[],
                PathMatch::Exact("/api/v1/health".into()),
                &[],
                2,
            ),
            route(
                "long-again",
                &[],
                PathMatch::Prefix("/api/v1".into()),
                &[],
                3,
            ),
        ]);
        assert_eq!(find(&t, "x", Method::GET, "/api/v1/health"), Some("exact"));
        assert_eq!(find(&t, "x", Method::GET, "/api/v1/users"), Some("long"));
        assert_eq!(find(&t, "x", Method::GET, "/api/v2"), Some("short"));
    }

    #[test]
    fn host_specificity_and_methods() {
        let t = RouteTable::new(vec![
            route("any", &[], PathMatch::Prefix(String::new()), &[], 0),
            route(
                "wild",
                &["*.example.com"],
                PathMatch::Prefix(String::new()),
                &[],
                1,
            ),
            route(
                "exact",
                &["api.example.com"],
                PathMatch::Prefix(String::new()),
                &[],
                2,
            ),
            route(
                "post",
                &["api.example.com"],
                PathMatch::Prefix(String::new()),
                &[Method::POST],
                3,
            ),
        ]);
        assert_eq!(
            find(&t, "API.example.com:8080", Method::GET, "/"),
            Some("exact")
        );
        assert_eq!(find(&t, "api.example.com", Method::POST, "/"), Some("post"));
        assert_eq!(find(&t, "www.example.com", Method::GET, "/"), Some("wild"));
        assert_eq!(find(&t, "example.com", Method::GET, "/"), Some("any"));
        assert_eq!(find(&t, "other.org", Method::GET, "/"), Some("any"));
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(
            normalize_host("Example.COM:80").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(normalize_host("").as_deref(), None);
    }
}
