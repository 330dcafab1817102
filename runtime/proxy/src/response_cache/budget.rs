//! Each tenant's budget inside the one cache (and each filter's quota for
//! the values it keeps there, by the same means). moka has one capacity (the
//! gateway-wide `max_bytes`, evicting the least recently used across all
//! tenants), so a tenant's own budget (its `cache_bytes` quota) is kept
//! here: its bytes are counted exactly (added on insert, taken off by
//! moka's removal listener, whatever the cause), and the keys it stored are
//! queued in order. A store that would take the tenant past its budget
//! first removes that tenant's oldest entries, so a tenant that fills its
//! budget evicts only itself, never another tenant's answers.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use super::Key;

/// One tenant's share of the cache.
#[derive(Default)]
pub(super) struct TenantBytes {
    /// Bytes its entries weigh.
    pub(super) bytes: AtomicU64,
    /// Its keys, oldest store first (some may be gone already).
    order: Mutex<VecDeque<Arc<Key>>>,
    /// Entries removed to keep it within its budget.
    pub(super) evictions: AtomicU64,
}

/// An upper bound on a tenant's live keys: no entry weighs under 512
/// bytes (a key, a head and the fixed overhead). The queue is compacted past
/// four times this, so it stays within `4 × bytes / 512` places.
fn live_estimate(t: &TenantBytes) -> usize {
    usize::try_from(t.bytes.load(Relaxed) / 512).unwrap_or(usize::MAX)
}

/// Every owner's share: tenants' (their answers and their filters'
/// values), or filters' (their values, against their `cache_bytes`).
#[derive(Default)]
pub(super) struct Budgets {
    owners: DashMap<Arc<str>, Arc<TenantBytes>>,
}

impl Budgets {
    pub(super) fn of(&self, owner: &Arc<str>) -> Arc<TenantBytes> {
        if let Some(t) = self.owners.get(owner) {
            return t.clone();
        }
        self.owners.entry(owner.clone()).or_default().clone()
    }

    /// `key` of `owner`'s was stored, weighing `size`; `live` says whether
    /// a key is still stored.
    pub(super) fn added(
        &self,
        owner: &Arc<str>,
        key: &Arc<Key>,
        size: u64,
        live: impl Fn(&Arc<Key>) -> bool,
    ) {
        let t = self.of(owner);
        t.bytes.fetch_add(size, Relaxed);
        let mut order = t.order.lock().unwrap();
        order.push_back(key.clone());
        // Keys stored again or gone leave stale places behind: compact
        // when they may outnumber the live ones.
        if order.len() > 64 && order.len() > 4 * live_estimate(&t) {
            let mut seen = HashSet::new();
            let mut kept: VecDeque<Arc<Key>> = order
                .iter()
                .rev()
                .filter(|k| live(k) && seen.insert((*k).clone()))
                .cloned()
                .collect();
            kept.make_contiguous().reverse();
            *order = kept;
        }
    }

    /// An entry of `owner`'s weighing `size` left the cache.
    pub(super) fn removed(&self, owner: &str, size: u64) {
        if let Some(t) = self.owners.get(owner) {
            // Never below zero, even if a removal races its own insert.
            let _ = t
                .bytes
                .fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(size)));
        }
    }

    /// Removes the tenant's oldest keys until `incoming` more bytes fit in
    /// `budget`; `remove` takes a key out (false: it was gone).
    /// Says how many it removed.
    pub(super) fn make_room(
        &self,
        owner: &Arc<str>,
        budget: u64,
        incoming: u64,
        mut remove: impl FnMut(&Arc<Key>) -> bool,
    ) -> u64 {
        let t = self.of(owner);
        let mut order = t.order.lock().unwrap();
        let mut removed = 0;
        // moka tells the removal listener (which takes the bytes off) on
        // the removing thread, so the count is current each time round.
        while t.bytes.load(Relaxed) + incoming > budget {
            let Some(key) = order.pop_front() else { break };
            if remove(&key) {
                removed += 1;
            }
        }
        t.evictions.fetch_add(removed, Relaxed);
        removed
    }

    /// Bytes and budget evictions by owner, for the metrics.
    pub(super) fn report(&self) -> Vec<(Arc<str>, u64, u64)> {
        self.owners
            .iter()
            .map(|e| {
                (
                    e.key().clone(),
                    e.bytes.load(Relaxed),
                    e.evictions.load(Relaxed),
                )
            })
            .collect()
    }
}
