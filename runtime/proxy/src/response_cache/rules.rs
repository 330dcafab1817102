//! What RFC 9111 (and RFC 5861, RFC 9110's conditionals) ask of a cache
//! that `http-cache-semantics` leaves to its user: how long a stored answer
//! may be served stale, its age from `Date`, the client's own conditional
//! request, `Accept-Encoding` made canonical, and surrogate tags. Pure
//! functions over headers, tested here.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// The statuses a cache may store (RFC 9110 §15.1's heuristically
/// cacheable ones, which are also those whose meaning a stored copy keeps).
pub(super) fn cacheable_status(status: http::StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// One `Cache-Control` directive's name and value, lower-cased name.
fn directives(h: &HeaderMap) -> impl Iterator<Item = (String, Option<&str>)> {
    h.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            let d = d.trim();
            match d.split_once('=') {
                Some((k, v)) => (
                    k.trim().to_ascii_lowercase(),
                    Some(v.trim().trim_matches('"')),
                ),
                None => (d.to_ascii_lowercase(), None),
            }
        })
}

fn seconds(v: Option<&str>) -> Option<Duration> {
    v?.parse::<u64>().ok().map(Duration::from_secs)
}

/// How a stored answer may be served once stale, from its response's
/// `Cache-Control`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Staleness {
    /// `stale-while-revalidate`: served stale this long while one refresh runs.
    pub while_revalidate: Duration,
    /// `stale-if-error`: served stale this long when the upstream fails.
    pub if_error: Duration,
    /// `must-revalidate`, `proxy-revalidate` or `no-cache`: never served
    /// stale, whatever else it says.
    pub never: bool,
}

impl Staleness {
    pub(super) fn of(h: &HeaderMap) -> Staleness {
        let mut s = Staleness::default();
        for (name, value) in directives(h) {
            match name.as_str() {
                "stale-while-revalidate" => {
                    s.while_revalidate = seconds(value).unwrap_or_default();
                }
                "stale-if-error" => s.if_error = seconds(value).unwrap_or_default(),
                "must-revalidate" | "proxy-revalidate" | "no-cache" => s.never = true,
                _ => {}
            }
        }
        s
    }

    /// The longest it may be served stale.
    pub(super) fn longest(&self) -> Duration {
        if self.never {
            Duration::ZERO
        } else {
            self.while_revalidate.max(self.if_error)
        }
    }
}

/// The freshness lifetime a shared cache gives `h` (RFC 9111 §4.2.1):
/// `s-maxage`, else `max-age`, else `Expires` less `Date`; zero when none.
pub(super) fn freshness_lifetime(h: &HeaderMap) -> Duration {
    let (mut s_maxage, mut max_age) = (None, None);
    for (name, value) in directives(h) {
        match name.as_str() {
            "s-maxage" => s_maxage = Some(seconds(value).unwrap_or_default()),
            "max-age" => max_age = Some(seconds(value).unwrap_or_default()),
            _ => {}
        }
    }
    if let Some(d) = s_maxage.or(max_age) {
        return d;
    }
    let date = |name| {
        h.get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
    };
    match (date(header::EXPIRES), date(header::DATE)) {
        (Some(expires), Some(date)) => expires.duration_since(date).unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

/// Whether a response says how long it is fresh.
pub(super) fn explicit_freshness(h: &HeaderMap) -> bool {
    h.contains_key(header::EXPIRES)
        || directives(h).any(|(name, _)| name == "max-age" || name == "s-maxage")
}

/// The age a response had when it arrived (RFC 9111 §4.2.3): the larger of
/// its `Age` and how long before `now` its `Date` says it was made.
pub(super) fn initial_age(h: &HeaderMap, now: SystemTime) -> Duration {
    let age = h
        .get(header::AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or_default();
    let apparent = h
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|date| now.duration_since(date).ok())
        .unwrap_or_default();
    age.max(apparent)
}

/// Whether `Vary` names `*` (never stored: no request can match it).
pub(super) fn vary_star(h: &HeaderMap) -> bool {
    h.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|p| p.trim() == "*"))
    })
}

/// The request headers a response's `Vary` names, with `request`'s values
/// of them (what a later request must match to be served it).
pub(super) fn vary_of(
    response: &HeaderMap,
    request: &HeaderMap,
) -> Box<[(HeaderName, Option<HeaderValue>)]> {
    response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .map(|n| {
            let v = request.get(&n).cloned();
            (n, v)
        })
        .collect()
}

/// The codings the gateway tells apart in `Accept-Encoding`, in the order
/// its canonical form lists them.
const CODINGS: [&str; 4] = ["br", "deflate", "gzip", "zstd"];

/// Makes `Accept-Encoding` canonical, so that the many ways clients write
/// one preference share one `Vary` variant: the known codings it accepts
/// (q > 0), sorted, comma-separated; none left, the header is removed (the
/// identity coding). The upstream is sent the same canonical value, so the
/// stored answer fits it.
pub(super) fn normalize_accept_encoding(h: &mut HeaderMap) {
    if !h.contains_key(header::ACCEPT_ENCODING) {
        return;
    }
    let mut accepted = [false; CODINGS.len()];
    for v in h.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            if coding == "*" {
                accepted = [true; CODINGS.len()];
            } else if let Some(i) = CODINGS.iter().position(|c| *c == coding) {
                accepted[i] = true;
            } else if coding == "x-gzip" {
                accepted[2] = true;
            }
        }
    }
    let canonical: Vec<&str> = CODINGS
        .iter()
        .zip(accepted)
        .filter_map(|(c, on)| on.then_some(*c))
        .collect();
    h.remove(header::ACCEPT_ENCODING);
    if !canonical.is_empty()
        && let Ok(v) = HeaderValue::from_str(&canonical.join(", "))
    {
        h.insert(header::ACCEPT_ENCODING, v);
    }
}

/// The conditional headers a client may send on a `GET` or `HEAD`.
const CONDITIONALS: [HeaderName; 2] = [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE];

/// Takes the client's `If-None-Match` and `If-Modified-Since` out of `h`.
pub(super) fn take_conditionals(h: &mut HeaderMap) -> HeaderMap {
    let mut taken = HeaderMap::new();
    for name in CONDITIONALS {
        for v in h.get_all(&name) {
            taken.append(name.clone(), v.clone());
        }
        h.remove(&name);
    }
    taken
}

/// A copy of the client's `If-None-Match` and `If-Modified-Since`.
pub(super) fn conditionals_of(h: &HeaderMap) -> HeaderMap {
    let mut copy = HeaderMap::new();
    for name in CONDITIONALS {
        for v in h.get_all(&name) {
            copy.append(name.clone(), v.clone());
        }
    }
    copy
}

/// Whether a client that sent `conditionals` already has the answer whose
/// head is `resp` (RFC 9110 §13.1.2, §13.1.3; `If-None-Match` decides when
/// present, by weak comparison).
pub(super) fn not_modified(conditionals: &HeaderMap, resp: &HeaderMap) -> bool {
    let inm: Vec<&str> = conditionals
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if !inm.is_empty() {
        let Some(etag) = resp.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return inm.contains(&"*");
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        return inm.iter().any(|t| *t == "*" || weak(t) == weak(etag));
    }
    let date = |h: &HeaderMap, name| {
        h.get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
    };
    match (
        date(conditionals, header::IF_MODIFIED_SINCE),
        date(resp, header::LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// A `304 Not Modified` made from the full answer's head `h`: its body's
/// framing goes (RFC 9110 §15.4.5).
pub(super) fn not_modified_head(h: &mut HeaderMap) {
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONTENT_RANGE,
    ] {
        h.remove(name);
    }
}

/// The surrogate tags a response lists in `name` (space- or
/// comma-separated, as Fastly's `Surrogate-Key` does), at most 64 of at
/// most 256 bytes each.
pub(super) fn tags(h: &HeaderMap, name: &HeaderName) -> Box<[Box<str>]> {
    let mut tags: Vec<Box<str>> = h
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([' ', ',']))
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .map(Box::from)
        .collect();
    tags.sort();
    tags.dedup();
    tags.truncate(64);
    tags.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn staleness_comes_from_the_response_and_revalidation_forbids_it() {
        let s = Staleness::of(&headers(&[(
            "cache-control",
            "max-age=5, stale-while-revalidate=30, stale-if-error=\"300\"",
        )]));
        assert_eq!(s.while_revalidate, Duration::from_secs(30));
        assert_eq!(s.if_error, Duration::from_secs(300));
        assert_eq!(s.longest(), Duration::from_secs(300));
        let s = Staleness::of(&headers(&[
            ("cache-control", "stale-if-error=300"),
            ("cache-control", "must-revalidate"),
        ]));
        assert!(s.never);
        assert_eq!(s.longest(), Duration::ZERO);
    }

    #[test]
    fn freshness_prefers_s_maxage_then_max_age_then_expires() {
        assert_eq!(
            freshness_lifetime(&headers(&[("cache-control", "max-age=10, s-maxage=20")])),
            Duration::from_secs(20)
        );
        assert_eq!(
            freshness_lifetime(&headers(&[
                ("cache-control", "max-age=10"),
                ("expires", "Thu, 01 Jan 2037 00:00:00 GMT")
            ])),
            Duration::from_secs(10)
        );
        assert_eq!(
            freshness_lifetime(&headers(&[
                ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
                ("expires", "Thu, 01 Jan 2026 00:01:40 GMT")
            ])),
            Duration::from_secs(100)
        );
        assert_eq!(freshness_lifetime(&headers(&[])), Duration::ZERO);
    }

    #[test]
    fn the_initial_age_is_the_larger_of_age_and_date() {
        let now = httpdate::parse_http_date("Thu, 01 Jan 2026 00:10:00 GMT").unwrap();
        let h = headers(&[("date", "Thu, 01 Jan 2026 00:00:00 GMT"), ("age", "30")]);
        assert_eq!(initial_age(&h, now), Duration::from_secs(600));
        let h = headers(&[("date", "Thu, 01 Jan 2026 00:10:00 GMT"), ("age", "30")]);
        assert_eq!(initial_age(&h, now), Duration::from_secs(30));
        // A Date in the future (a skewed clock) counts for nothing.
        let h = headers(&[("date", "Thu, 01 Jan 2026 01:00:00 GMT")]);
        assert_eq!(initial_age(&h, now), Duration::ZERO);
    }

    #[test]
    fn accept_encoding_is_made_canonical() {
        let canon = |v: &str| {
            let mut h = headers(&[("accept-encoding", v)]);
            normalize_accept_encoding(&mut h);
            h.get("accept-encoding")
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            canon("gzip, deflate, br").as_deref(),
            Some("br, deflate, gzip")
        );
        assert_eq!(canon("br;q=1.0, GZIP;q=0.5").as_deref(), Some("br, gzip"));
        assert_eq!(canon("gzip;q=0, br").as_deref(), Some("br"));
        assert_eq!(canon("x-gzip").as_deref(), Some("gzip"));
        assert_eq!(canon("identity"), None);
        assert_eq!(canon("*").as_deref(), Some("br, deflate, gzip, zstd"));
    }

    #[test]
    fn a_client_that_has_the_answer_gets_not_modified() {
        let resp = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Thu, 01 Jan 2026 00:00:00 GMT"),
        ]);
        assert!(not_modified(
            &headers(&[("if-none-match", "\"v0\", W/\"v1\"")]),
            &resp
        ));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"v0\"")]),
            &resp
        ));
        assert!(not_modified(&headers(&[("if-none-match", "*")]), &resp));
        // If-None-Match decides when both are sent.
        assert!(!not_modified(
            &headers(&[
                ("if-none-match", "\"v0\""),
                ("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT")
            ]),
            &resp
        ));
        assert!(not_modified(
            &headers(&[("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT")]),
            &resp
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", "Wed, 31 Dec 2025 00:00:00 GMT")]),
            &resp
        ));
        assert!(!not_modified(&headers(&[]), &resp));
    }

    #[test]
    fn tags_are_split_and_bounded() {
        let name = HeaderName::from_static("surrogate-key");
        let t = tags(
            &headers(&[("surrogate-key", "a b,c  a"), ("surrogate-key", "d")]),
            &name,
        );
        assert_eq!(&*t, &["a".into(), "b".into(), "c".into(), "d".into()]);
    }
}
