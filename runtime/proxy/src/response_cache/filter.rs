//! Values filters keep in the cache (the `cache` import, contract 0.2.1):
//! a key of their own scheme, a TTL, tags, and each filter's quota kept by
//! a second [`super::budget::Budgets`] (owner `tenant/filter`).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;

use super::{Entry, Key, ResponseCache};

/// A value a filter keeps in the cache (the `cache` import).
#[derive(Debug)]
pub(super) struct FilterValue {
    pub(super) bytes: Bytes,
    pub(super) tags: Box<[Box<str>]>,
    pub(super) expires: std::time::Instant,
}

/// The scheme of a filter's key: never a request's, so a filter's values
/// and the answers to requests cannot meet.
pub(super) const FILTER_SCHEME: &str = "filter";

/// The key of filter `from`'s value `key`.
fn filter_key(from: &wasmgate_config::Scoped, key: &str) -> Key {
    Key {
        tenant: from.tenant.0.clone(),
        route: from.name.clone(),
        cluster: Arc::from(""),
        scheme: FILTER_SCHEME,
        host: String::new(),
        path_and_query: key.to_owned(),
        extra: String::new(),
    }
}

/// Whose quota a filter's key counts against.
pub(super) fn filter_owner(k: &Key) -> String {
    format!("{}/{}", k.tenant, k.route)
}

impl wasmgate_engine::services::FilterCache for ResponseCache {
    fn get(&self, from: &wasmgate_config::Scoped, key: &str) -> Option<Vec<u8>> {
        let found = self.entries.get(&filter_key(from, key)).and_then(|e| {
            let v = e.value.as_ref()?;
            (v.expires > std::time::Instant::now()).then(|| v.bytes.to_vec())
        });
        let counter = match found {
            Some(_) => &self.stats.filter_hits,
            None => &self.stats.filter_misses,
        };
        counter.fetch_add(1, Relaxed);
        found
    }

    fn set(
        &self,
        from: &wasmgate_config::Scoped,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        tags: Vec<String>,
        quota: u64,
        tenant_budget: Option<u64>,
    ) -> bool {
        let key = Arc::new(filter_key(from, key));
        let tags: Box<[Box<str>]> = tags.into_iter().map(Box::from).collect();
        let size =
            key.size() + value.len() + tags.iter().map(|t| t.len() + 16).sum::<usize>() + 128;
        if size as u64 > quota || tenant_budget.is_some_and(|b| size as u64 > b) {
            self.stats.filter_refused.fetch_add(1, Relaxed);
            return false;
        }
        let old = self.entries.get(&key).map_or(0, |e| e.size);
        let incoming = size.saturating_sub(old) as u64;
        let owner: Arc<str> = Arc::from(filter_owner(&key));
        self.make_room(&self.filter_budgets, &owner, quota, incoming, &key);
        if let Some(budget) = tenant_budget {
            self.make_room(&self.budgets, &key.tenant, budget, incoming, &key);
        }
        self.entries.insert(
            key.clone(),
            Arc::new(Entry {
                variants: Vec::new(),
                value: Some(FilterValue {
                    bytes: Bytes::from(value),
                    tags,
                    expires: std::time::Instant::now() + ttl,
                }),
                size,
                keep: ttl,
            }),
        );
        let live = |k: &Arc<Key>| self.entries.contains_key(k);
        self.budgets.added(&key.tenant, &key, size as u64, live);
        self.filter_budgets.added(&owner, &key, size as u64, live);
        self.stats.filter_stores.fetch_add(1, Relaxed);
        true
    }

    fn delete(&self, from: &wasmgate_config::Scoped, key: &str) -> bool {
        self.entries.remove(&filter_key(from, key)).is_some()
    }
}
