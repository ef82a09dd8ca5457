//! Admission of uploads, shared by every export of the server: at most
//! `STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE` uploads in progress at once,
//! and, with `STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH`, an average cap on the
//! bytes they send. Waiting uploads are admitted in priority order (1 first,
//! then 2, ..., 10; in arrival order within a priority), so when slots or
//! bandwidth are short the higher-priority exports go first.
//!
//! The cap is a GCRA rate limiter (the `governor` crate) whose burst is a
//! tenth of a second of the cap (so the average holds over any stretch of
//! a second or more; a whole second's burst let short runs overshoot by a
//! fifth). A request larger than that is let through one burst
//! at a time; only the head of the queue takes bandwidth, and a
//! higher-priority arrival takes the head from it between two bursts (what
//! the head already took stays taken). The limiter reads tokio's clock, so a
//! test on a paused clock sees exact, instant waits.

use governor::clock::Clock as GovernorClock;
use governor::nanos::Nanos;
use governor::{Quota, RateLimiter};
use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Priorities run from 1 (highest) to 10; an export without one is 10.
pub const LOWEST_PRIORITY: u8 = 10;

type Limiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    TokioClock,
    governor::middleware::NoOpMiddleware<Nanos>,
>;

/// governor's clock on tokio's time.
#[derive(Clone, Debug)]
struct TokioClock {
    origin: Instant,
}

impl GovernorClock for TokioClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::from(Instant::now().saturating_duration_since(self.origin))
    }
}

struct Bandwidth {
    limiter: Limiter,
    clock: TokioClock,
    /// Bytes one check may take: a tenth of a second of the cap.
    burst: u32,
}

pub struct UploadGate {
    slots: Arc<Semaphore>,
    bandwidth: Option<Bandwidth>,
    queue: Mutex<Queue>,
    /// Wakes the waiters when the queue's head may have changed.
    changed: Notify,
}

#[derive(Default)]
struct Queue {
    /// (priority, arrival) of every waiting upload; the first is the head.
    waiting: BTreeSet<(u8, u64)>,
    arrivals: u64,
}

/// An admitted upload: holds its slot until dropped.
pub struct Admitted {
    _slot: OwnedSemaphorePermit,
}

/// Takes a waiter out of the queue on every way out of `admit`, and wakes
/// the others (the head may be another now).
struct InQueue<'a> {
    gate: &'a UploadGate,
    key: (u8, u64),
}

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        self.gate.lock().waiting.remove(&self.key);
        self.gate.changed.notify_waiters();
    }
}

impl UploadGate {
    /// `uploads`: at most this many at once (at least 1).
    /// `max_kilobits_per_second`: the average cap over all uploads, `None`
    /// for none.
    pub fn new(uploads: usize, max_kilobits_per_second: Option<u64>) -> Self {
        let bandwidth = max_kilobits_per_second.map(|kbps| {
            let bytes_per_second = (kbps.max(1) * 1000 / 8).clamp(1, u64::from(u32::MAX));
            let rate = u32::try_from(bytes_per_second).expect("clamped to u32");
            let burst = (rate / 10).max(1);
            let quota = Quota::per_second(NonZeroU32::new(rate).expect("at least 1"))
                .allow_burst(NonZeroU32::new(burst).expect("at least 1"));
            let clock = TokioClock {
                origin: Instant::now(),
            };
            Bandwidth {
                limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
                clock,
                burst,
            }
        });
        UploadGate {
            slots: Arc::new(Semaphore::new(uploads.max(1))),
            bandwidth,
            queue: Mutex::default(),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until an upload of `bytes` at `priority` may go: it is the
    /// highest-priority waiter, a slot is free, and the cap allows its
    /// bytes. Cancel-safe: a dropped wait leaves the queue.
    pub async fn admit(&self, priority: u8, bytes: usize) -> Admitted {
        let key = {
            let mut queue = self.lock();
            queue.arrivals += 1;
            let key = (priority.clamp(1, LOWEST_PRIORITY), queue.arrivals);
            queue.waiting.insert(key);
            key
        };
        let _in_queue = InQueue { gate: self, key };
        let mut to_take = bytes;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.lock().waiting.first() != Some(&key) {
                changed.await;
                continue;
            }
            if let Some(wait_until) = self.take_bandwidth(&mut to_take) {
                // Between bursts a higher-priority arrival may take the
                // head; then this one waits its turn again.
                tokio::select! {
                    () = tokio::time::sleep_until(wait_until) => {}
                    () = &mut changed => {}
                }
                continue;
            }
            let slot = tokio::select! {
                slot = Arc::clone(&self.slots).acquire_owned() => slot,
                // A higher-priority arrival takes the head while this one
                // waits for a slot (its bandwidth is taken already).
                () = &mut changed => continue,
            };
            let slot = slot.expect("the gate's semaphore is never closed");
            return Admitted { _slot: slot };
        }
    }

    /// Takes what the cap allows of `to_take` now; `Some(when)` if more must
    /// wait until then, `None` once all is taken.
    fn take_bandwidth(&self, to_take: &mut usize) -> Option<Instant> {
        let bandwidth = self.bandwidth.as_ref()?;
        while *to_take > 0 {
            let chunk = u32::try_from(*to_take)
                .unwrap_or(u32::MAX)
                .min(bandwidth.burst);
            let n = NonZeroU32::new(chunk).expect("to_take > 0");
            match bandwidth.limiter.check_n(n) {
                Ok(Ok(())) => *to_take -= chunk as usize,
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(bandwidth.clock.now());
                    return Some(Instant::now() + wait);
                }
                Err(_) => unreachable!("a chunk is at most the burst"),
            }
        }
        None
    }
}
