//! Removing entries on purpose: a purge through the admin API (by URL, path
//! prefix or surrogate tag, of one tenant or all), and the invalidation a
//! successful unsafe method makes (RFC 9111 §4.4).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::filter::FILTER_SCHEME;
use super::{Key, ResponseCache};

impl ResponseCache {
    /// Removes every entry under `key` (all its variants), as a successful
    /// unsafe method does (RFC 9111 §4.4).
    pub fn invalidate(&self, key: &Key) {
        if self.entries.remove(key).is_some() {
            self.stats.purged.fetch_add(1, Relaxed);
        }
    }

    /// Removes the entries `purge` names, of `tenant` only when given; says
    /// how many.
    pub fn purge(&self, tenant: Option<&str>, purge: &Purge) -> u64 {
        let doomed: Vec<Arc<Key>> = self
            .entries
            .iter()
            .filter(|(k, e)| {
                let answer = k.scheme != FILTER_SCHEME;
                tenant.is_none_or(|t| &*k.tenant == t)
                    && match purge {
                        Purge::Url {
                            host,
                            path_and_query,
                        } => {
                            answer
                                && host.as_deref().is_none_or(|h| h == k.host)
                                && k.path_and_query == *path_and_query
                        }
                        Purge::Prefix { host, prefix } => {
                            answer
                                && host.as_deref().is_none_or(|h| h == k.host)
                                && k.path().starts_with(prefix.as_str())
                        }
                        Purge::Tag(tag) => {
                            e.variants
                                .iter()
                                .any(|v| v.tags.iter().any(|t| **t == **tag))
                                || e.value
                                    .as_ref()
                                    .is_some_and(|v| v.tags.iter().any(|t| **t == **tag))
                        }
                    }
            })
            .map(|(k, _)| (*k).clone())
            .collect();
        let mut n = 0;
        for k in doomed {
            if self.entries.remove(&*k).is_some() {
                n += 1;
            }
        }
        self.stats.purged.fetch_add(n, Relaxed);
        n
    }
}

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// One URL, all its variants (of every route and cluster).
    Url {
        /// Its host (lower-case, no port); `None`: any.
        host: Option<String>,
        /// Its canonical path and query.
        path_and_query: String,
    },
    /// Every URL whose path starts with `prefix`.
    Prefix {
        /// Its host; `None`: any.
        host: Option<String>,
        /// The path prefix.
        prefix: String,
    },
    /// Every answer that listed this surrogate tag.
    Tag(String),
}
