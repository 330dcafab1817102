//! Request ids: made here when no trusted one arrived.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Request ids: a random per-process prefix and a counter; unique within the
/// process and, with high probability, across processes.
#[derive(Debug)]
pub(crate) struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        RequestIds {
            prefix: h.finish(),
            counter: AtomicU64::new(0),
        }
    }

    pub(crate) fn next(&self) -> RequestId {
        RequestId {
            prefix: self.prefix,
            n: self.counter.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// A request's id; rendered (32 hex digits) only when something needs the text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestId {
    prefix: u64,
    n: u64,
}

impl RequestId {
    /// 32 lower-case hex digits, without the formatting machinery (this runs
    /// for every request).
    pub(crate) fn hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, word) in [self.prefix, self.n].into_iter().enumerate() {
            for j in 0..16 {
                out[i * 16 + j] = DIGITS[((word >> (60 - 4 * j)) & 0xf) as usize];
            }
        }
        out
    }
}
