//! What the host does for a filter: a key-value store ([`kv`]), token
//! buckets ([`rate_limit`]), named config values ([`config`]), metrics
//! ([`metrics`]), requests to clusters ([`outbound`]) and values kept in
//! the gateway's response cache ([`cache`]). State is
//! namespaced by the filter's name in the gateway config and shared by every
//! instance of the filter, so it survives instance recycling and is
//! consistent under concurrent requests.

/// The gateway's response cache, for values a filter computes and may
/// recompute (a token introspection's result, an aggregated answer).
/// Unlike [`kv`], an entry may be evicted at any time, always expires,
/// shares the cache's memory and the tenant's cache budget, and can be
/// purged by tag through the admin API. A filter sees only its own entries.
/// Within the filter's `cache_bytes` (1 MiB by default), its own oldest
/// entries make room for new ones.
pub mod cache {
    use crate::__private::bindings::wasmgate::filter::cache as host;

    pub use host::CacheError as Error;

    /// The value under `key`, if it is still there.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        host::get(key)
    }

    /// Stores `value` under `key` for `ttl_ms` (at most a day), with `tags`
    /// a purge by tag names.
    pub fn set(key: &str, value: &[u8], ttl_ms: u64, tags: &[&str]) -> Result<(), Error> {
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        host::set(key, value, ttl_ms, &tags)
    }

    /// Removes the value under `key`; whether there was one.
    pub fn delete(key: &str) -> bool {
        host::delete(key)
    }
}

/// The filter's key-value store.
pub mod kv {
    use crate::__private::bindings::wasmgate::filter::kv as host;

    pub use host::KvError as Error;

    /// A value and its version (1 for the first write, +1 for each write).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Entry {
        /// The value.
        pub value: Vec<u8>,
        /// Its version.
        pub version: u64,
    }

    /// The value under `key`, if any (and not expired).
    pub fn get(key: &str) -> Option<Entry> {
        host::get(key).map(|e| Entry {
            value: e.value,
            version: e.version,
        })
    }

    /// Sets `key`, optionally expiring after `ttl_ms`; returns the version.
    pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<u64, Error> {
        host::set(key, value, ttl_ms)
    }

    /// Sets `key` only if its version is `expected` (0: absent). Returns the
    /// new version, or `None` if someone else wrote first.
    pub fn compare_and_set(
        key: &str,
        expected: u64,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, Error> {
        host::compare_and_set(key, expected, value, ttl_ms)
    }

    /// Adds `delta` to the integer under `key` (absent: 0) atomically.
    pub fn increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, Error> {
        host::increment(key, delta, ttl_ms)
    }

    /// Removes `key`; returns whether it existed.
    pub fn delete(key: &str) -> bool {
        host::delete(key)
    }
}

/// Token buckets held by the host.
pub mod rate_limit {
    use crate::__private::bindings::wasmgate::filter::rate_limit as host;

    /// The outcome of [`take`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Verdict {
        /// Whether the tokens were taken.
        pub allowed: bool,
        /// Whole tokens left.
        pub remaining: u64,
        /// When refused: milliseconds until enough tokens are back.
        pub retry_after_ms: u64,
        /// Milliseconds until the bucket is full.
        pub reset_ms: u64,
    }

    /// Takes `cost` tokens from bucket `key` holding up to `capacity` tokens
    /// and refilling `refill_per_second`; a new bucket starts full.
    pub fn take(key: &str, capacity: u64, refill_per_second: u64, cost: u64) -> Verdict {
        let v = host::take(key, capacity, refill_per_second, cost);
        Verdict {
            allowed: v.allowed,
            remaining: v.remaining,
            retry_after_ms: v.retry_after_ms,
            reset_ms: v.reset_ms,
        }
    }
}

/// Named values from the gateway config (`[filters.NAME.vars]`).
pub mod config {
    use crate::__private::bindings::wasmgate::filter::config as host;

    /// The value called `name`, if the gateway config gives one.
    pub fn get(name: &str) -> Option<String> {
        host::get(name)
    }
}

/// Metrics exported on the gateway's `/metrics`, named
/// `wasmgate_filter_<filter>_<name>` (counters get `_total`).
///
/// Names and label names are `[a-zA-Z_][a-zA-Z0-9_]*`. The host caps how
/// many names a filter and how many label combinations a metric may have;
/// records past a cap are dropped (and counted by the host), never an error.
/// Keep label values to a small known set: never a user id or a path.
pub mod metrics {
    use crate::__private::bindings::wasmgate::filter::metrics as host;

    fn owned(labels: &[(&str, &str)]) -> Vec<(String, String)> {
        labels
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Adds `delta` to a counter.
    pub fn counter_add(name: &str, labels: &[(&str, &str)], delta: u64) {
        host::counter_add(name, &owned(labels), delta);
    }

    /// Sets a gauge.
    pub fn gauge_set(name: &str, labels: &[(&str, &str)], value: f64) {
        host::gauge_set(name, &owned(labels), value);
    }

    /// Records an observation in a histogram with Prometheus' default
    /// buckets (5 ms … 10 s when the value is in seconds).
    pub fn histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) {
        host::histogram_observe(name, &owned(labels), value);
    }
}

/// Requests to clusters of the gateway config, through its balancer and
/// connection pools. The gateway config decides which clusters a filter may
/// call and how many calls it may make per request
/// (`outbound_clusters`, `max_outbound_calls`, `outbound_timeout`).
///
/// ```no_run
/// use wasmgate_sdk::outbound::{self, Call};
///
/// let replies = outbound::send_all(vec![
///     Call::get("search", "/search?q=shoes").timeout_ms(300),
///     Call::get("cart", "/cart/42"),
/// ]);
/// for reply in replies {
///     match reply {
///         Ok(r) if r.status == 200 => { /* r.body */ }
///         Ok(r) => { /* an error status */ }
///         Err(e) => { /* timeout, unavailable, budget used up, ... */ }
///     }
/// }
/// ```
pub mod outbound {
    use crate::__private::bindings::wasmgate::filter::outbound as host;

    pub use host::OutboundError as Error;

    /// A request to a cluster.
    #[derive(Debug, Clone)]
    pub struct Call {
        /// A cluster name from the gateway config.
        pub cluster: String,
        /// The method.
        pub method: String,
        /// Path and query, starting with `/`.
        pub path_with_query: String,
        /// Headers to send (no framing or hop-by-hop headers).
        pub headers: Vec<(String, String)>,
        /// The body.
        pub body: Option<Vec<u8>>,
        /// Give up after this many milliseconds (capped by the host).
        pub timeout_ms: Option<u32>,
    }

    impl Call {
        /// A request with `method` to `path_with_query` on `cluster`.
        pub fn new(
            cluster: impl Into<String>,
            method: impl Into<String>,
            path_with_query: impl Into<String>,
        ) -> Call {
            Call {
                cluster: cluster.into(),
                method: method.into(),
                path_with_query: path_with_query.into(),
                headers: Vec::new(),
                body: None,
                timeout_ms: None,
            }
        }

        /// A `GET`.
        pub fn get(cluster: impl Into<String>, path_with_query: impl Into<String>) -> Call {
            Call::new(cluster, "GET", path_with_query)
        }

        /// Adds a header.
        pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Call {
            self.headers.push((name.into(), value.into()));
            self
        }

        /// Sets the body.
        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Call {
            self.body = Some(body.into());
            self
        }

        /// Sets the timeout.
        pub fn timeout_ms(mut self, ms: u32) -> Call {
            self.timeout_ms = Some(ms);
            self
        }

        fn into_host(self) -> host::OutboundRequest {
            host::OutboundRequest {
                cluster: self.cluster,
                method: self.method,
                path_with_query: self.path_with_query,
                headers: self.headers,
                body: self.body,
                timeout_ms: self.timeout_ms,
            }
        }
    }

    /// A whole response.
    #[derive(Debug, Clone)]
    pub struct Reply {
        /// The status code.
        pub status: u16,
        /// The headers (lower-case names).
        pub headers: Vec<(String, String)>,
        /// The body.
        pub body: Vec<u8>,
    }

    impl Reply {
        /// The first value of header `name` (lower-case).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    fn reply(r: host::OutboundResponse) -> Reply {
        Reply {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }

    /// Sends one request and waits for the whole response.
    pub fn send(call: Call) -> Result<Reply, Error> {
        host::send(&call.into_host()).map(reply)
    }

    /// Sends every request at once and waits for all of them; the results
    /// are in the order of `calls`.
    pub fn send_all(calls: Vec<Call>) -> Vec<Result<Reply, Error>> {
        let reqs: Vec<_> = calls.into_iter().map(Call::into_host).collect();
        host::send_all(&reqs)
            .into_iter()
            .map(|r| r.map(reply))
            .collect()
    }
}

/// Signature checks done natively by the host (far faster than the same
/// arithmetic in WebAssembly).
pub mod crypto {
    use crate::__private::bindings::wasmgate::filter::crypto as host;

    /// RSASSA-PKCS1-v1_5 with SHA-256 (`RS256`); `public_key` is a DER
    /// RSAPublicKey (PKCS #1) of 2048 to 8192 bits.
    pub fn verify_rsa_pkcs1_sha256(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        host::verify_rsa_pkcs1_sha256(public_key, message, signature)
    }

    /// ECDSA P-256 with SHA-256 (`ES256`); `public_key` is the uncompressed
    /// SEC1 point (65 bytes), `signature` is r || s (64 bytes).
    pub fn verify_ecdsa_p256_sha256(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        host::verify_ecdsa_p256_sha256(public_key, message, signature)
    }
}
