//! Choosing an endpoint: smooth weighted round robin, least request (power of
//! two choices), a consistent hash ring, and random; all of them skip
//! unhealthy endpoints unless the cluster is in panic.
//!
//! Everything that depends only on the endpoint set (the round-robin
//! schedule, the ring) is computed once per set, so a pick is a few atomic
//! loads and, for the ring, a binary search.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::endpoint::Endpoint;
use wasmgate_config::cluster::Balance;

/// Ring entries per unit of weight. Envoy uses 1024 ring entries minimum for
/// a handful of hosts; 160 per host keeps the spread within a few percent.
const RING_ENTRIES_PER_WEIGHT: usize = 160;
/// The ring is never larger than this, whatever the weights.
const MAX_RING: usize = 1 << 16;

/// An endpoint set with its precomputed balancing state.
#[derive(Debug)]
pub struct EndpointSet {
    /// The endpoints, in config (then resolution) order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Smooth weighted round-robin order (indexes); `0..n` when weights are equal.
    schedule: Vec<u32>,
    /// (hash, index) sorted by hash; empty unless `ring_hash`.
    ring: Vec<(u64, u32)>,
}

impl EndpointSet {
    /// Precomputes what `balance` needs.
    pub fn new(endpoints: Vec<Arc<Endpoint>>, balance: Balance) -> EndpointSet {
        let schedule = smooth_schedule(&endpoints);
        let ring = if balance == Balance::RingHash {
            build_ring(&endpoints)
        } else {
            Vec::new()
        };
        EndpointSet {
            endpoints,
            schedule,
            ring,
        }
    }
}

/// Per-cluster balancing state that changes with every pick.
#[derive(Debug, Default)]
pub struct Cursor {
    next: AtomicUsize,
}

fn smooth_schedule(endpoints: &[Arc<Endpoint>]) -> Vec<u32> {
    let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
    smooth_order(&weights)
}

/// The nginx "smooth weighted round robin" sequence over one full cycle
/// (length = sum of weights, capped), so that a pick is an index into it.
pub fn smooth_order(weights: &[u32]) -> Vec<u32> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    if weights.iter().all(|w| *w == weights[0]) {
        return (0..n as u32).collect();
    }
    // Scale weights down if the cycle would be huge.
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let scale = total.div_ceil(MAX_RING as u64).max(1);
    let weights: Vec<i64> = weights
        .iter()
        .map(|w| (u64::from(*w) / scale).max(1) as i64)
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; n];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..n {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

/// A stable 64-bit hash (the same in every process and on every node, so
/// nodes agree on where a key goes).
pub fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

fn build_ring(endpoints: &[Arc<Endpoint>]) -> Vec<(u64, u32)> {
    let total: usize = endpoints.iter().map(|e| e.weight as usize).sum();
    let per_weight = (MAX_RING / total.max(1)).clamp(1, RING_ENTRIES_PER_WEIGHT);
    let mut ring = Vec::with_capacity(total * per_weight);
    for (i, e) in endpoints.iter().enumerate() {
        // Keyed by the endpoint's own address, so an endpoint's points do
        // not depend on the others: removing one moves only its keys.
        let name = e.authority.as_str();
        for replica in 0..e.weight as usize * per_weight {
            let point = hash(format!("{name}_{replica}").as_bytes());
            ring.push((point, i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// What a pick may use.
pub struct Filter<'a> {
    /// Whether each endpoint is usable (healthy, or anything in panic).
    pub usable: &'a dyn Fn(&Endpoint) -> bool,
    /// Endpoints already tried for this request (avoided when possible).
    pub tried: &'a [usize],
}

impl Filter<'_> {
    fn ok(&self, set: &EndpointSet, i: usize) -> bool {
        (self.usable)(&set.endpoints[i]) && !self.tried.contains(&i)
    }
}

/// Picks an endpoint index, or `None` if no usable one is left.
pub fn pick(
    set: &EndpointSet,
    balance: Balance,
    cursor: &Cursor,
    key: Option<u64>,
    filter: &Filter<'_>,
) -> Option<usize> {
    let n = set.endpoints.len();
    if n == 0 {
        return None;
    }
    match balance {
        Balance::RoundRobin | Balance::WeightedRoundRobin => round_robin(set, cursor, filter),
        Balance::LeastRequest => least_request(set, filter),
        Balance::Random => random(set, filter),
        Balance::RingHash => match key {
            Some(k) => ring_lookup(set, k, filter),
            // No key on this request: spread it.
            None => round_robin(set, cursor, filter),
        },
    }
}

/// A usable endpoint, each with the same chance. An unusable one's share
/// must not fall to the next usable one (that would double its load).
fn random(set: &EndpointSet, filter: &Filter<'_>) -> Option<usize> {
    let n = set.endpoints.len();
    // Usually the first draw is usable. When it is not, a draw among the
    // usable ones: each then has 1/n + (n - u)/n × 1/u = 1/u of the picks.
    let first = fastrand::usize(..n);
    if filter.ok(set, first) {
        return Some(first);
    }
    let usable = (0..n).filter(|&i| filter.ok(set, i)).count();
    if usable == 0 {
        return None;
    }
    (0..n)
        .filter(|&i| filter.ok(set, i))
        .nth(fastrand::usize(..usable))
}

/// The next usable turn of the schedule. The turns skipped on the way are
/// used up too, so that the picks go through the usable turns in order:
/// an unusable endpoint's turns are spread over the others by their
/// weights, not all handed to the one after it.
fn round_robin(set: &EndpointSet, cursor: &Cursor, filter: &Filter<'_>) -> Option<usize> {
    let len = set.schedule.len();
    let start = cursor.next.fetch_add(1, Ordering::Relaxed);
    let skipped = (0..len).find(|&k| filter.ok(set, set.schedule[(start + k) % len] as usize))?;
    if skipped > 0 {
        cursor.next.fetch_add(skipped, Ordering::Relaxed);
    }
    Some(set.schedule[(start + skipped) % len] as usize)
}

fn least_request(set: &EndpointSet, filter: &Filter<'_>) -> Option<usize> {
    let n = set.endpoints.len();
    let load = |i: usize| {
        let e = &set.endpoints[i];
        // Requests in flight per unit of weight; compared as fractions.
        (e.active() as u64 + 1, u64::from(e.weight))
    };
    let lighter = |a: usize, b: usize| {
        let ((la, wa), (lb, wb)) = (load(a), load(b));
        if la * wb <= lb * wa { a } else { b }
    };
    if n == 1 {
        return filter.ok(set, 0).then_some(0);
    }
    let a = fastrand::usize(..n);
    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
    match (filter.ok(set, a), filter.ok(set, b)) {
        (true, true) => Some(lighter(a, b)),
        (true, false) => Some(a),
        (false, true) => Some(b),
        // Both unusable: the least loaded of the usable ones.
        (false, false) => (0..n).filter(|&i| filter.ok(set, i)).reduce(lighter),
    }
}

fn ring_lookup(set: &EndpointSet, key: u64, filter: &Filter<'_>) -> Option<usize> {
    let ring = &set.ring;
    if ring.is_empty() {
        return None;
    }
    let start = ring.partition_point(|&(h, _)| h < key) % ring.len();
    // Walk clockwise to the first usable endpoint.
    (0..ring.len())
        .map(|k| ring[(start + k) % ring.len()].1 as usize)
        .find(|&i| filter.ok(set, i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn set(weights: &[u32], balance: Balance) -> EndpointSet {
        let eps = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Arc::new(Endpoint::new(
                    format!("10.0.0.{}:80", i + 1).parse().unwrap(),
                    "x".into(),
                    w,
                ))
            })
            .collect();
        EndpointSet::new(eps, balance)
    }

    fn all(_: &Endpoint) -> bool {
        true
    }

    #[test]
    fn weighted_round_robin_is_exact_and_smooth() {
        let s = set(&[5, 1, 1], Balance::RoundRobin);
        let c = Cursor::default();
        let f = Filter {
            usable: &all,
            tried: &[],
        };
        let picks: Vec<usize> = (0..7)
            .map(|_| pick(&s, Balance::RoundRobin, &c, None, &f).unwrap())
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0], "nginx's smooth order");
    }

    #[test]
    fn ring_hash_sticks_and_moves_only_the_removed_endpoints_keys() {
        let s4 = set(&[1, 1, 1, 1], Balance::RingHash);
        let c = Cursor::default();
        let f = Filter {
            usable: &all,
            tried: &[],
        };
        let keys: Vec<u64> = (0..10_000u32).map(|k| hash(&k.to_le_bytes())).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| pick(&s4, Balance::RingHash, &c, Some(k), &f).unwrap())
            .collect();
        let mut counts = HashMap::new();
        for &b in &before {
            *counts.entry(b).or_insert(0) += 1;
        }
        for n in counts.values() {
            assert!((1_500..3_500).contains(n), "spread: {counts:?}");
        }
        // Endpoint 2 unusable: only its keys move.
        let without = |e: &Endpoint| e.authority.as_str() != "10.0.0.3:80";
        let f2 = Filter {
            usable: &without,
            tried: &[],
        };
        for (k, &b) in keys.iter().zip(&before) {
            let after = pick(&s4, Balance::RingHash, &c, Some(*k), &f2).unwrap();
            if b != 2 {
                assert_eq!(after, b);
            } else {
                assert_ne!(after, 2);
            }
        }
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let s = set(&[1, 1], Balance::LeastRequest);
        let _busy: Vec<_> = (0..5).map(|_| s.endpoints[0].begin()).collect();
        let f = Filter {
            usable: &all,
            tried: &[],
        };
        for _ in 0..50 {
            assert_eq!(
                pick(&s, Balance::LeastRequest, &Cursor::default(), None, &f),
                Some(1)
            );
        }
    }

    #[test]
    fn round_robin_spreads_unusable_turns_over_the_others_by_weight() {
        let c = Cursor::default();
        // The last two of five unusable: not a b c a a (the first after
        // them taking their turns) but a b c a b c.
        let s = set(&[1, 1, 1, 1, 1], Balance::RoundRobin);
        let usable = |e: &Endpoint| !matches!(e.authority.host(), "10.0.0.4" | "10.0.0.5");
        let f = Filter {
            usable: &usable,
            tried: &[],
        };
        let picks: Vec<usize> = (0..9)
            .map(|_| pick(&s, Balance::RoundRobin, &c, None, &f).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        // Weights 5, 1, 1 with the third unusable: 5 to 1, as the weights
        // of the usable ones say (not 6 to 1).
        let s = set(&[5, 1, 1], Balance::RoundRobin);
        let c = Cursor::default();
        let usable = |e: &Endpoint| e.authority.host() != "10.0.0.3";
        let f = Filter {
            usable: &usable,
            tried: &[],
        };
        let picks: Vec<usize> = (0..12)
            .map(|_| pick(&s, Balance::RoundRobin, &c, None, &f).unwrap())
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn random_is_even_over_the_usable_endpoints() {
        // Seeded: the same draws every run.
        fastrand::seed(7);
        let s = set(&[1, 1, 1, 1, 1], Balance::Random);
        let c = Cursor::default();
        // The last two are unusable: their share goes to all three others
        // alike, not to the first one after them.
        let usable = |e: &Endpoint| !matches!(e.authority.host(), "10.0.0.4" | "10.0.0.5");
        let f = Filter {
            usable: &usable,
            tried: &[],
        };
        let mut counts = [0u32; 5];
        for _ in 0..30_000 {
            counts[pick(&s, Balance::Random, &c, None, &f).unwrap()] += 1;
        }
        assert_eq!(counts[3..], [0, 0]);
        for n in &counts[..3] {
            assert!((9_000..11_000).contains(n), "{counts:?}");
        }
    }

    #[test]
    fn tried_and_unusable_endpoints_are_skipped() {
        let s = set(&[1, 1, 1], Balance::RoundRobin);
        let c = Cursor::default();
        let f = Filter {
            usable: &all,
            tried: &[0, 1],
        };
        for _ in 0..5 {
            assert_eq!(pick(&s, Balance::RoundRobin, &c, None, &f), Some(2));
        }
        let none = |_: &Endpoint| false;
        let f = Filter {
            usable: &none,
            tried: &[],
        };
        for b in [Balance::RoundRobin, Balance::LeastRequest, Balance::Random] {
            assert_eq!(pick(&s, b, &c, None, &f), None);
        }
    }
}
