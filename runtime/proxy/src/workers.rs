//! Thread-per-core: the worker threads that serve requests when
//! `server.workers` is more than one, each running a current-thread tokio
//! runtime of its own (as nginx's worker processes and Envoy's workers do).
//!
//! A connection accepted by a worker lives its whole life on that worker:
//! its task, the request futures, the filter calls made for them, and the
//! upstream connections they use (each endpoint keeps one
//! [`ConnPool`](crate::upstream::pool::ConnPool) per worker, picked by
//! [`current`]). No work moves between threads, so a request costs no
//! cross-thread wake-up; what stays shared (cluster limits, health, filter
//! instance pools, metrics) is atomics and lock-free queues, and a waiter
//! on another thread is woken only when such a limit is reached.
//!
//! The control plane (admin API, reloads, health checks, watchers) runs on a
//! runtime of its own, so a busy core never delays it; its thread has no
//! worker index, and its upstream connections (health checks) sit in a pool
//! of their own.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The most workers started in this process, which is how many
/// per-worker upstream pools an endpoint keeps (plus one for threads that
/// are not workers).
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// The index of the worker this thread is, if it is one.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// How many workers this process has started (0 when requests are served
/// on one runtime, not thread-per-core).
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// The worker threads, each driving a current-thread runtime until this is
/// dropped (which stops them: tasks still on them are dropped, so drain
/// first).
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` worker threads (named `wasmgate-worker-<i>`), each with
    /// its runtime running before this returns.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        // Before any endpoint is made for them: pools are sized by it.
        COUNT.fetch_max(n, Ordering::Relaxed);
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("wasmgate-worker-{i}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(Some(i)));
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    // Runs the tasks spawned onto it until told to stop
                    // (or until `Workers` is gone).
                    runtime.block_on(async {
                        let _ = stop_rx.await;
                    });
                })?;
            workers.threads.push(thread);
            workers.stops.push(stop_tx);
            match handle_rx.recv() {
                Ok(Ok(handle)) => workers.handles.push(handle),
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(std::io::Error::other(format!(
                        "worker {i} ended before its runtime started"
                    )));
                }
            }
        }
        Ok(workers)
    }

    /// The workers' runtimes, in index order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never true (at least one worker is started).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            // A thread that is this one (dropped from a task on a worker)
            // cannot be joined; the others end once their runtime has.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_knows_its_index_and_others_have_none() {
        let workers = Workers::start(3).unwrap();
        assert_eq!(workers.len(), 3);
        assert!(count() >= 3);
        assert_eq!(current(), None, "the test thread is no worker");
        for (i, h) in workers.handles().iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            h.spawn(async move {
                let _ = tx.send((current(), std::thread::current().name().map(str::to_owned)));
            });
            let (seen, name) = rx.recv().unwrap();
            assert_eq!(seen, Some(i));
            assert_eq!(
                name.as_deref(),
                Some(format!("wasmgate-worker-{i}").as_str())
            );
        }
        drop(workers);
    }
}
