//! Host services behind the `kv`, `rate-limit` and `config` imports: state
//! the host keeps for filters, namespaced by filter name, shared by every
//! instance of that filter and atomic across them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::bindings::wasmgate::filter::{config, kv, rate_limit};
use super::host::HostState;

/// Longest key accepted.
pub const MAX_KEY: usize = 512;
/// Largest value accepted.
pub const MAX_VALUE: usize = 1 << 20;

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    version: u64,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }

    fn size(key: &str, value: &[u8]) -> usize {
        key.len() + value.len() + 32
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    capacity: u64,
    refill: u64,
}

/// All filters' host-held state in one gateway.
#[derive(Debug, Default)]
pub struct HostServices {
    kv: DashMap<(Arc<str>, String), Entry>,
    /// Bytes used per namespace.
    used: DashMap<Arc<str>, usize>,
    buckets: DashMap<(Arc<str>, String), Bucket>,
}

impl HostServices {
    /// Drops expired entries and idle full buckets (both would otherwise
    /// accumulate without bound).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.kv.retain(|(ns, key), e| {
            let keep = e.live(now);
            if !keep && let Some(mut u) = self.used.get_mut(ns) {
                *u = u.saturating_sub(Entry::size(key, &e.value));
            }
            keep
        });
        self.buckets.retain(|_, b| {
            let full_after = if b.refill == 0 {
                Duration::MAX
            } else {
                Duration::from_secs_f64((b.capacity as f64 - b.tokens).max(0.0) / b.refill as f64)
            };
            now.duration_since(b.last) < full_after
        });
    }

    /// Sweeps every `every` until the services are dropped elsewhere.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(s) = weak.upgrade() else { return };
                s.sweep();
            }
        });
    }
}

/// What one filter may use: its namespace, quota and config values.
#[derive(Debug, Clone)]
pub struct Grants {
    /// The namespace (the filter's name).
    pub namespace: Arc<str>,
    /// Largest total size of its `kv` entries, in bytes.
    pub kv_quota: usize,
    /// Values its `config.get` returns.
    pub vars: Arc<HashMap<String, String>>,
    /// The shared state.
    pub services: Arc<HostServices>,
}

impl Grants {
    /// A namespace with no values and the default quota.
    pub fn new(namespace: &str, services: Arc<HostServices>) -> Grants {
        Grants {
            namespace: Arc::from(namespace),
            kv_quota: 16 << 20,
            vars: Arc::default(),
            services,
        }
    }
}

fn ttl(ms: Option<u64>, now: Instant) -> Option<Instant> {
    ms.map(|ms| now + Duration::from_millis(ms))
}

impl Grants {
    fn key(&self, key: &str) -> (Arc<str>, String) {
        (self.namespace.clone(), key.to_owned())
    }

    /// Writes under the quota, atomically: `make` sees the live entry (if
    /// any) and returns the new value, `None` to write nothing, or an error.
    fn write<T>(
        &self,
        key: String,
        ttl_ms: Option<u64>,
        make: impl FnOnce(Option<&Entry>) -> Result<Option<(Vec<u8>, T)>, kv::KvError>,
    ) -> Result<Option<(u64, T)>, kv::KvError> {
        if key.len() > MAX_KEY {
            return Err(kv::KvError::TooLarge);
        }
        let now = Instant::now();
        let svc = &self.services;
        let mut slot = svc.kv.entry(self.key(&key)).or_insert_with(|| Entry {
            value: Vec::new(),
            version: 0,
            expires: Some(now),
        });
        let live = slot.live(now);
        let Some((value, out)) = make(live.then_some(&*slot))? else {
            return Ok(None);
        };
        if value.len() > MAX_VALUE {
            return Err(kv::KvError::TooLarge);
        }
        let old = if live {
            Entry::size(&key, &slot.value)
        } else {
            0
        };
        let new = Entry::size(&key, &value);
        {
            let mut used = svc.used.entry(self.namespace.clone()).or_insert(0);
            let after = used.saturating_sub(old) + new;
            if after > self.kv_quota {
                return Err(kv::KvError::QuotaExceeded);
            }
            *used = after;
        }
        let version = if live { slot.version + 1 } else { 1 };
        let expires = if live && ttl_ms.is_none() {
            slot.expires
        } else {
            ttl(ttl_ms, now)
        };
        *slot = Entry {
            value,
            version,
            expires,
        };
        Ok(Some((version, out)))
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Option<kv::Entry> {
        let g = self.grants();
        let e = g.services.kv.get(&g.key(&key))?;
        e.live(Instant::now()).then(|| kv::Entry {
            value: e.value.clone(),
            version: e.version,
        })
    }

    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<u64, kv::KvError> {
        self.grants()
            .write(key, ttl_ms, |_| Ok(Some((value, ()))))
            .map(|w| w.map_or(0, |(v, ())| v))
    }

    fn compare_and_set(
        &mut self,
        key: String,
        expected: u64,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, kv::KvError> {
        self.grants()
            .write(key, ttl_ms, |cur| {
                let version = cur.map_or(0, |e| e.version);
                Ok((version == expected).then_some((value, ())))
            })
            .map(|w| w.map(|(v, ())| v))
    }

    fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, kv::KvError> {
        self.grants()
            .write(key, ttl_ms, |cur| {
                let n: i64 = match cur {
                    None => 0,
                    Some(e) => std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .ok_or(kv::KvError::NotANumber)?,
                };
                let n = n.saturating_add(delta);
                Ok(Some((n.to_string().into_bytes(), n)))
            })
            .map(|w| w.map_or(0, |(_, n)| n))
    }

    fn delete(&mut self, key: String) -> bool {
        let g = self.grants();
        match g.services.kv.remove(&g.key(&key)) {
            Some(((ns, k), e)) => {
                if let Some(mut u) = g.services.used.get_mut(&ns) {
                    *u = u.saturating_sub(Entry::size(&k, &e.value));
                }
                e.live(Instant::now())
            }
            None => false,
        }
    }
}

impl rate_limit::Host for HostState {
    fn take(&mut self, key: String, capacity: u64, refill: u64, cost: u64) -> rate_limit::Verdict {
        let g = self.grants();
        let now = Instant::now();
        let key: String = key.chars().take(MAX_KEY).collect();
        let mut b = g.services.buckets.entry(g.key(&key)).or_insert(Bucket {
            tokens: capacity as f64,
            last: now,
            capacity,
            refill,
        });
        // A changed shape (capacity or rate) takes effect at once.
        b.capacity = capacity;
        b.refill = refill;
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * refill as f64).min(capacity as f64);
        b.last = now;
        let allowed = b.tokens >= cost as f64;
        if allowed {
            b.tokens -= cost as f64;
        }
        let ms_for = |tokens: f64| -> u64 {
            if tokens <= 0.0 {
                0
            } else if refill == 0 {
                u64::MAX
            } else {
                (tokens / refill as f64 * 1000.0).ceil() as u64
            }
        };
        rate_limit::Verdict {
            allowed,
            remaining: b.tokens.floor() as u64,
            retry_after_ms: if allowed {
                0
            } else {
                ms_for(cost as f64 - b.tokens)
            },
            reset_ms: ms_for(capacity as f64 - b.tokens),
        }
    }
}

impl config::Host for HostState {
    fn get(&mut self, name: String) -> Option<String> {
        self.grants().vars.get(&name).cloned()
    }
}
