//! Host-held state a filter may use: a key-value store ([`kv`]), token
//! buckets ([`rate_limit`]) and named config values ([`config`]). All of it
//! is namespaced by the filter's name in the gateway config and shared by
//! every instance of the filter, so it survives instance recycling and is
//! consistent under concurrent requests.

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
