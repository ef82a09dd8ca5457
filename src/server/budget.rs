//! Budgets of bytes shared by tasks: what a connection may hold is taken
//! from one before it is held, and given back when the holder lets go of
//! it, on every way out (a [`Reserved`] gives its bytes back when dropped).
//!
//! Built on a tokio [`Semaphore`] of bytes: takers wait in arrival order,
//! and one that waits is never overtaken by smaller ones, so a large
//! answer is not starved. A take larger than the whole budget waits for all
//! of it rather than forever. The budget also tells whether anyone is
//! waiting for it ([`ByteBudget::contended`]), which is how connections
//! whose clients do not read learn that the bytes they hold are wanted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{Notify, Semaphore};

/// A number of bytes shared by its holders; cheap to clone (one budget).
#[derive(Clone)]
pub struct ByteBudget(Arc<Shared>);

struct Shared {
    bytes: Arc<Semaphore>,
    total: usize,
    /// Takers waiting now.
    waiting: AtomicUsize,
    /// Woken when a taker starts waiting.
    contended: Notify,
}

impl ByteBudget {
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        ByteBudget(Arc::new(Shared {
            bytes: Arc::new(Semaphore::new(total)),
            total,
            waiting: AtomicUsize::new(0),
            contended: Notify::new(),
        }))
    }

    pub fn total(&self) -> usize {
        self.0.total
    }

    /// Bytes held now, all holders together.
    pub fn reserved(&self) -> usize {
        self.0.total - self.0.bytes.available_permits()
    }

    /// A reservation of nothing, to grow.
    pub fn none(&self) -> Reserved {
        Reserved {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// What a take of `bytes` takes: at most the whole budget (and what one
    /// semaphore call can).
    fn share(&self, bytes: usize) -> usize {
        bytes.min(self.0.total).min(u32::MAX as usize)
    }

    /// `bytes` now, or `None` if they are not free.
    pub fn try_take(&self, bytes: usize) -> Option<Reserved> {
        let share = self.share(bytes);
        let permits = self.0.bytes.try_acquire_many(share as u32).ok()?;
        permits.forget();
        Some(Reserved {
            budget: self.clone(),
            bytes: share,
        })
    }

    /// `bytes`, waiting until they are free. Cancel-safe: a take dropped
    /// while it waits holds nothing.
    pub async fn take(&self, bytes: usize) -> Reserved {
        if let Some(reserved) = self.try_take(bytes) {
            return reserved;
        }
        let share = self.share(bytes);
        let _waiting = Waiting::enter(&self.0);
        self.0
            .bytes
            .acquire_many(share as u32)
            .await
            .expect("a byte budget is never closed")
            .forget();
        Reserved {
            budget: self.clone(),
            bytes: share,
        }
    }

    /// True while someone waits for bytes of this budget.
    pub fn is_contended(&self) -> bool {
        self.0.waiting.load(Ordering::Acquire) > 0
    }

    /// Completes once someone waits for bytes of this budget (at once if
    /// someone does already).
    pub async fn contended(&self) {
        loop {
            // Registered before the check, so a taker that starts waiting
            // in between still wakes this.
            let woken = self.0.contended.notified();
            if self.is_contended() {
                return;
            }
            woken.await;
        }
    }
}

/// A budget of the bytes free in `bytes` now, a semaphore the caller keeps
/// too (to watch what is held, as the fuzz targets do).
impl From<Arc<Semaphore>> for ByteBudget {
    fn from(bytes: Arc<Semaphore>) -> Self {
        let total = bytes.available_permits().max(1);
        ByteBudget(Arc::new(Shared {
            bytes,
            total,
            waiting: AtomicUsize::new(0),
            contended: Notify::new(),
        }))
    }
}

/// A taker waiting; counted while it lives.
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.waiting.fetch_add(1, Ordering::AcqRel);
        shared.contended.notify_waiters();
        Waiting(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes taken from a [`ByteBudget`], given back when dropped.
#[must_use = "the bytes are given back at once when a reservation is dropped"]
pub struct Reserved {
    budget: ByteBudget,
    bytes: usize,
}

impl Reserved {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `other`'s bytes too (both from the same budget).
    pub fn merge(&mut self, mut other: Reserved) {
        debug_assert!(Arc::ptr_eq(&self.budget.0, &other.budget.0));
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// Gives back what is held beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.0.bytes.add_permits(self.bytes - bytes);
            self.bytes = bytes;
        }
    }

    /// Holds exactly `bytes` (at most the whole budget) if it can without
    /// waiting; false if more are needed and not free.
    pub fn try_fit(&mut self, bytes: usize) -> bool {
        let bytes = self.budget.share(bytes);
        if bytes <= self.bytes {
            self.shrink_to(bytes);
            return true;
        }
        match self.budget.try_take(bytes - self.bytes) {
            Some(more) => {
                self.merge(more);
                true
            }
            None => false,
        }
    }

    /// Holds exactly `bytes` (at most the whole budget), waiting for what
    /// is missing. Cancel-safe: what was held is still held.
    pub async fn fit(&mut self, bytes: usize) {
        if !self.try_fit(bytes) {
            let missing = self.budget.share(bytes) - self.bytes;
            let more = self.budget.take(missing).await;
            self.merge(more);
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.0.bytes.add_permits(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn reservations_give_their_bytes_back_on_every_way_out() {
        let budget = ByteBudget::new(100);
        let mut a = budget.try_take(60).unwrap();
        assert!(budget.try_take(50).is_none());
        assert!(!budget.is_contended());
        let mut waiting = Box::pin(budget.take(50));
        assert!((&mut waiting).now_or_never().is_none());
        assert!(budget.is_contended(), "a taker waits");
        drop(waiting);
        assert!(!budget.is_contended(), "a dropped take holds nothing");
        a.shrink_to(10);
        assert_eq!(budget.reserved(), 10);
        assert!(a.try_fit(90));
        assert!(a.try_fit(101), "fitted to the whole budget");
        assert_eq!(a.bytes(), 100, "at most the whole budget");
        let b = budget.none();
        a.merge(b);
        drop(a);
        assert_eq!(budget.reserved(), 0);
        let whole = budget.take(1000).await;
        assert_eq!(whole.bytes(), 100, "a take above the budget takes all");
    }

    #[tokio::test]
    async fn holders_learn_when_someone_waits() {
        let budget = ByteBudget::new(10);
        let all = budget.try_take(10).unwrap();
        let mut contended = Box::pin(budget.contended());
        assert!(
            (&mut contended).now_or_never().is_none(),
            "no one waits yet"
        );
        let mut waiting = Box::pin(budget.take(1));
        assert!((&mut waiting).now_or_never().is_none());
        assert!(contended.now_or_never().is_some(), "woken by the taker");
        drop(all);
        assert_eq!(waiting.await.bytes(), 1);
        assert!(!budget.is_contended());
    }
}
