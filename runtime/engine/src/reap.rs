//! Freeing large instances off the worker threads.
//!
//! Dropping an instance gives its pooling slot back, and resetting the slot
//! costs in proportion to the memory the guest touched: `madvise` of every
//! page past the part kept resident. For a guest that filled 64 MiB that is
//! 3.5 to 6.5 ms of kernel time, in one piece that no epoch tick can
//! interrupt (measured in the noisy-neighbour bench, mode N, whose `alloc`
//! attack ends every call that way). On a thread-per-core worker, every
//! other connection that worker holds waits for it.
//!
//! So an instance discarded with more than [`REAP_ABOVE`] bytes of linear
//! memory is handed to one background thread, `wasmgate-reaper`, which
//! drops it and then gives its pool slot back (so the pool never creates a
//! replacement while the old slot is still held, and the engine's pooling
//! slots, sized for the pools' sum, are never over-committed). Smaller ones
//! are freed in place: the common case, and every call of a filter under
//! 4 MiB in `isolation = "fresh"`, whose reset is a few microseconds, less
//! than the hand-off.

use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

/// Linear memory, in bytes, above which a discarded instance is freed on
/// the reaper thread. The engine keeps the first 4 MiB of a slot resident
/// and resets it in place (`linear_memory_keep_resident`): up to there a
/// drop is cheap.
pub(crate) const REAP_ABOVE: u64 = 4 << 20;

type Job = Box<dyn FnOnce() + Send>;

fn reaper() -> Option<&'static mpsc::Sender<Job>> {
    static REAPER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    REAPER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("wasmgate-reaper".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })
                .inspect_err(|e| {
                    tracing::warn!("cannot start the reaper thread ({e}): large filter instances are freed on the worker threads");
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Drops `thing` on the reaper thread, then gives one permit back to
/// `permits` and counts it in `reaped`. Without a reaper thread, does all
/// of that here.
pub(crate) fn free<T: Send + 'static>(
    thing: T,
    permits: Arc<tokio::sync::Semaphore>,
    reaped: prometheus_client::metrics::counter::Counter,
) {
    let job: Job = Box::new(move || {
        drop(thing);
        permits.add_permits(1);
        reaped.inc();
    });
    match reaper() {
        Some(tx) => {
            if let Err(mpsc::SendError(job)) = tx.send(job) {
                job();
            }
        }
        None => job(),
    }
}
