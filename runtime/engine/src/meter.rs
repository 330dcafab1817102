//! The CPU meter that makes isolation in time possible.
//!
//! [`metered`] runs a guest call: it measures the time the call spends on a
//! worker thread (time between a poll's start and end, so time awaiting a
//! host's I/O or waiting to be scheduled again after a yield is not
//! counted) and lets only `filter_concurrency` of a tenant's long calls
//! (those that ran past their first tick) run guest code at once, in the
//! tenant's running slots ([`TenantQuota`]). The epoch callback (in
//! `lib.rs`) yields at every tick and ends the call once its metered time
//! passes its budget.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::quota::TenantQuota;

/// The time a call spends on a worker thread, shared by the call's
/// [`metered`] future (which measures) and its store's epoch callback (which
/// reads it to end the call past its budget).
#[derive(Debug, Default)]
pub(crate) struct CpuMeter {
    /// Time on the thread in polls that ended, in nanoseconds.
    spent_ns: AtomicU64,
    /// When the poll running now began, in nanoseconds since [`origin`]
    /// (0: none is).
    poll_began: AtomicU64,
    /// The epoch callback asked the call to yield: the next `Pending` is a
    /// pause in CPU work, not a wait on I/O.
    yielded: AtomicBool,
    /// The call has yielded for CPU at least once: it ran past a tick, and
    /// from then on runs only in one of its tenant's running slots.
    long: AtomicBool,
    /// The call's CPU budget, in nanoseconds.
    budget_ns: AtomicU64,
}

fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(origin().elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl CpuMeter {
    /// Starts a call with `budget`.
    pub(crate) fn begin(&self, budget: Duration) {
        self.spent_ns.store(0, Relaxed);
        self.poll_began.store(0, Relaxed);
        self.yielded.store(false, Relaxed);
        self.long.store(false, Relaxed);
        self.budget_ns.store(
            u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// Time on the thread so far, the running poll included.
    pub(crate) fn used(&self) -> Duration {
        let began = self.poll_began.load(Relaxed);
        let running = if began == 0 {
            0
        } else {
            now_ns().saturating_sub(began)
        };
        Duration::from_nanos(self.spent_ns.load(Relaxed).saturating_add(running))
    }

    /// The call's budget.
    pub(crate) fn budget(&self) -> Duration {
        Duration::from_nanos(self.budget_ns.load(Relaxed))
    }

    /// Marks the coming `Pending` as a yield of CPU work.
    pub(crate) fn mark_yield(&self) {
        self.yielded.store(true, Relaxed);
        self.long.store(true, Relaxed);
    }
}

/// Runs `call`, measuring its time on the thread into `meter` and, for a
/// tenant's long call, holding one of its running slots while it runs guest
/// code. A call is long once it has yielded at a tick: until then it runs
/// without a slot. A short call holds its worker for less than a tick, which
/// is all a slot would bound, and taking none keeps a tenant's short calls
/// on one worker from waiting on its calls on another: on thread-per-core
/// workers, the waiter's wake-up would wait for whatever the other worker
/// runs first (a slice of someone's loop), and the tenant's p99 with it.
/// A long call that waits on I/O gives its slot back until it runs again;
/// one that yields because its time slice ended keeps it, so a tenant's
/// long calls take turns among its own slots, never the other tenants'
/// workers.
pub(crate) fn metered<'a, F: Future>(
    call: F,
    meter: &'a CpuMeter,
    quota: Option<&'a Arc<TenantQuota>>,
) -> Metered<'a, F> {
    Metered {
        call,
        meter,
        slot: RunningSlot {
            quota,
            held: false,
            waiting: None,
            counted_wait: false,
        },
    }
}

pin_project_lite::pin_project! {
    /// [`metered`]'s future. The call is pinned in place, not boxed: one
    /// allocation and one copy of wasmtime's call future fewer per call.
    pub(crate) struct Metered<'a, F: Future> {
        #[pin]
        call: F,
        meter: &'a CpuMeter,
        slot: RunningSlot<'a>,
    }
}

/// A tenant's running slot, held while its call runs guest code.
struct RunningSlot<'a> {
    quota: Option<&'a Arc<TenantQuota>>,
    held: bool,
    waiting: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
    counted_wait: bool,
}

impl RunningSlot<'_> {
    /// Takes a running slot, or arranges to be woken when one frees.
    fn enter(&mut self, q: &TenantQuota, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(w) = self.waiting.as_mut() {
                if w.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.waiting = None;
            }
            if q.try_enter() {
                self.held = true;
                return Poll::Ready(());
            }
            let mut w = Box::pin(q.slot_freed.clone().notified_owned());
            w.as_mut().enable();
            if q.try_enter() {
                self.held = true;
                return Poll::Ready(());
            }
            if !std::mem::replace(&mut self.counted_wait, true) {
                q.slot_waits.fetch_add(1, Relaxed);
            }
            self.waiting = Some(w);
        }
    }
}

impl<F: Future> Future for Metered<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let slot = this.slot;
        let meter = *this.meter;
        if let Some(q) = slot.quota
            && !slot.held
            && meter.long.load(Relaxed)
            && slot.enter(q, cx).is_pending()
        {
            return Poll::Pending;
        }
        let began = now_ns();
        meter.poll_began.store(began, Relaxed);
        let polled = this.call.poll(cx);
        meter.poll_began.store(0, Relaxed);
        meter
            .spent_ns
            .fetch_add(now_ns().saturating_sub(began), Relaxed);
        let cpu_yield = meter.yielded.swap(false, Relaxed);
        if (polled.is_ready() || !cpu_yield)
            && std::mem::take(&mut slot.held)
            && let Some(q) = slot.quota
        {
            q.leave();
        }
        polled
    }
}

impl Drop for RunningSlot<'_> {
    fn drop(&mut self) {
        if self.held
            && let Some(q) = self.quota
        {
            q.leave();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_config::{QuotaSettings, TenantId};

    /// A guest call as `metered` sees it: each poll spends no time and
    /// either finishes or, like the epoch callback at a tick, marks a yield.
    struct Slices<'a> {
        meter: &'a CpuMeter,
        yields_left: u32,
    }

    impl Future for Slices<'_> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.yields_left == 0 {
                return Poll::Ready(());
            }
            self.yields_left -= 1;
            self.meter.mark_yield();
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn only_a_call_past_its_first_tick_waits_for_a_running_slot() {
        let q = Arc::new(TenantQuota::new(
            TenantId(Arc::from("t")),
            &QuotaSettings {
                filter_concurrency: Some(1),
                ..QuotaSettings::builtin()
            },
            2,
        ));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Another of the tenant's calls is running in its only slot.
        assert!(q.try_enter());

        // A short call runs at once: it needs no slot.
        let meter = CpuMeter::default();
        meter.begin(Duration::from_secs(1));
        let short = metered(
            Slices {
                meter: &meter,
                yields_left: 0,
            },
            &meter,
            Some(&q),
        );
        let mut short = std::pin::pin!(short);
        assert!(short.as_mut().poll(&mut cx).is_ready());
        assert_eq!(q.slot_waits(), 0);

        // A long one runs its first slice, then waits for the slot.
        let meter = CpuMeter::default();
        meter.begin(Duration::from_secs(1));
        let long = metered(
            Slices {
                meter: &meter,
                yields_left: 2,
            },
            &meter,
            Some(&q),
        );
        let mut long = std::pin::pin!(long);
        assert!(long.as_mut().poll(&mut cx).is_pending(), "its first slice");
        assert!(
            long.as_mut().poll(&mut cx).is_pending(),
            "waits for the slot"
        );
        assert!(long.as_mut().poll(&mut cx).is_pending(), "still waits");
        assert_eq!(q.slot_waits(), 1, "counted once");
        q.leave();
        // It takes the slot and keeps it across its next yield.
        assert!(long.as_mut().poll(&mut cx).is_pending(), "its second slice");
        assert!(!q.try_enter(), "it holds the only slot while it yields");
        assert!(long.as_mut().poll(&mut cx).is_ready());
        assert!(q.try_enter(), "a finished call gives its slot back");
    }
}
