//! The response cache: `[cache]` (the gateway-wide store: its memory
//! budget, the largest entry, an optional status header) and a route's
//! `[routes.cache]` (caching on for that route, and how), as written and
//! typed.

use std::time::Duration;

use serde::Deserialize;

use crate::{ConfigError, HumanDuration, HumanSize};

/// Default `[cache] max_bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Default `[cache] max_entry_bytes`.
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 1 << 20;
/// Default `[cache] lock_timeout` (nginx's `proxy_cache_lock_timeout`).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `[cache] lock_bypass_for`.
pub const DEFAULT_LOCK_BYPASS_FOR: Duration = Duration::from_secs(60);
/// Default `[cache] tag_header` (Fastly's name).
pub const DEFAULT_TAG_HEADER: &str = "surrogate-key";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    max_bytes: Option<HumanSize>,
    max_entry_bytes: Option<HumanSize>,
    status_header: Option<String>,
    tag_header: Option<String>,
    lock_timeout: Option<HumanDuration>,
    lock_bypass_for: Option<HumanDuration>,
}

/// `[cache]`: the one response cache every route that caches shares. Read
/// at start: changing it needs a restart (the entries live across
/// reloads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Memory for entries (keys, heads and bodies), weighed by size.
    pub max_bytes: u64,
    /// A response whose body is larger is not stored; it streams through.
    pub max_entry_bytes: u64,
    /// A simple status header (`HIT`, `MISS`, `STALE`, `BYPASS`) besides
    /// `Cache-Status`, for those who grep for one (`x-cache`).
    pub status_header: Option<http::HeaderName>,
    /// The response header listing an answer's surrogate tags, which a
    /// purge by tag names.
    pub tag_header: http::HeaderName,
    /// How long a miss waits for another request fetching the same key
    /// before it goes upstream itself.
    pub lock_timeout: Duration,
    /// How long the misses of a key whose answer was not storable go
    /// upstream at once, without waiting on one another.
    pub lock_bypass_for: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            status_header: None,
            tag_header: http::HeaderName::from_static(DEFAULT_TAG_HEADER),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            lock_bypass_for: DEFAULT_LOCK_BYPASS_FOR,
        }
    }
}

pub(crate) fn validate_cache(raw: RawCache, errors: &mut Vec<ConfigError>) -> CacheConfig {
    let mut c = CacheConfig::default();
    if let Some(HumanSize(n)) = raw.max_bytes {
        if n < 1 << 20 {
            errors.push(ConfigError::new("cache.max_bytes", "must be at least 1MiB"));
        } else {
            c.max_bytes = n;
        }
    }
    if let Some(HumanSize(n)) = raw.max_entry_bytes {
        if n == 0 {
            errors.push(ConfigError::new(
                "cache.max_entry_bytes",
                "must be more than 0",
            ));
        } else {
            c.max_entry_bytes = n;
        }
    }
    if c.max_entry_bytes > c.max_bytes / 4 {
        errors.push(ConfigError::new(
            "cache.max_entry_bytes",
            format!(
                "{} bytes is more than a quarter of cache.max_bytes ({}): a few entries would \
                 fill the cache",
                c.max_entry_bytes, c.max_bytes
            ),
        ));
    }
    let header =
        |key: &str, name: &str, errors: &mut Vec<ConfigError>| match http::HeaderName::from_bytes(
            name.as_bytes(),
        ) {
            Ok(h) => Some(h),
            Err(_) => {
                errors.push(ConfigError::new(
                    key,
                    format!("{name:?} is not a header name"),
                ));
                None
            }
        };
    if let Some(name) = raw.status_header {
        c.status_header = header("cache.status_header", &name, errors);
    }
    if let Some(name) = raw.tag_header
        && let Some(h) = header("cache.tag_header", &name, errors)
    {
        c.tag_header = h;
    }
    if let Some(HumanDuration(d)) = raw.lock_timeout {
        if d.is_zero() || d > Duration::from_secs(300) {
            errors.push(ConfigError::new(
                "cache.lock_timeout",
                "must be more than 0 and at most 5m",
            ));
        } else {
            c.lock_timeout = d;
        }
    }
    if let Some(HumanDuration(d)) = raw.lock_bypass_for {
        c.lock_bypass_for = d;
    }
    c
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteCache {
    default_ttl: Option<HumanDuration>,
    #[serde(default)]
    store_authorized: bool,
    #[serde(default)]
    store_set_cookie: bool,
    #[serde(default)]
    key: Vec<String>,
}

/// One extra part of a route's cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// A request header's value (as the filters left it).
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// What the named filter of the route's chain handed on with
    /// `set-context` (a filter-computed part: a plan, a region, a user
    /// class).
    Context(String),
}

impl KeyPart {
    /// As written: `header:NAME`, `cookie:NAME`, `context:FILTER`.
    pub fn describe(&self) -> String {
        match self {
            KeyPart::Header(h) => format!("header:{h}"),
            KeyPart::Cookie(c) => format!("cookie:{c}"),
            KeyPart::Context(f) => format!("context:{f}"),
        }
    }
}

/// `[routes.cache]`: the route's answers are cached (RFC 9111, as a shared
/// cache).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteCacheConfig {
    /// How long a response that says nothing of its freshness (no
    /// `max-age`, `s-maxage` or `Expires`) is fresh; `None`: such a
    /// response is not stored.
    pub default_ttl: Option<Duration>,
    /// Store (and serve) answers to requests with `Authorization`.
    pub store_authorized: bool,
    /// Store responses with `Set-Cookie` (stored without it: a cookie is
    /// one client's, never replayed to others).
    pub store_set_cookie: bool,
    /// Extra parts of the key, besides the tenant, route, cluster, method,
    /// scheme, host, path, query and `Vary` headers.
    pub key: Vec<KeyPart>,
}

pub(crate) fn validate_route_cache(
    raw: RawRouteCache,
    key: &str,
    filters: &[&str],
    errors: &mut Vec<ConfigError>,
) -> RouteCacheConfig {
    let mut parts = Vec::new();
    for (i, part) in raw.key.iter().enumerate() {
        let at = format!("{key}.cache.key[{i}]");
        let parsed = match part.split_once(':') {
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
                .map(KeyPart::Header)
                .map_err(|_| format!("{name:?} is not a header name")),
            Some(("cookie", name)) if !name.is_empty() && !name.contains([';', '=', ' ']) => {
                Ok(KeyPart::Cookie(name.to_owned()))
            }
            Some(("cookie", name)) => Err(format!("{name:?} is not a cookie name")),
            Some(("context", filter)) if filters.contains(&filter) => {
                Ok(KeyPart::Context(filter.to_owned()))
            }
            Some(("context", filter)) => Err(format!(
                "the route has no filter {filter:?} to hand on a context (its filters: {})",
                if filters.is_empty() {
                    "none".to_owned()
                } else {
                    filters.join(", ")
                }
            )),
            _ => Err(format!(
                "{part:?} is not a key part: header:NAME, cookie:NAME or context:FILTER"
            )),
        };
        match parsed {
            Ok(p) if parts.contains(&p) => {
                errors.push(ConfigError::new(at, format!("{part:?} is listed twice")));
            }
            Ok(p) => parts.push(p),
            Err(e) => errors.push(ConfigError::new(at, e)),
        }
    }
    let default_ttl = match raw.default_ttl {
        Some(HumanDuration(d)) if d.is_zero() => {
            errors.push(ConfigError::new(
                format!("{key}.cache.default_ttl"),
                "must be more than 0 (leave it out for none)",
            ));
            None
        }
        d => d.map(|d| d.0),
    };
    RouteCacheConfig {
        default_ttl,
        store_authorized: raw.store_authorized,
        store_set_cookie: raw.store_set_cookie,
        key: parts,
    }
}
