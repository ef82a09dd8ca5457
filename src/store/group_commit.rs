//! Group commit: how waiters for a stream's `fdatasync` (`flushOnWrite`
//! appends, the background sync, shutdown) share one sync, and how every
//! one of them is woken however that sync ends.
//!
//! One sync at a time runs per stream, carried out by its *leader*; it
//! covers every append written before it began. Everyone else waits for the
//! watermark the leader publishes. The whole state is one value in a
//! `watch` channel, changed only under the channel's lock:
//!
//! ```text
//! synced: i64            sequence numbers below it are durable (never drops)
//! leader: bool           a sync is under way
//! closed: Option<Closed> the stream was deleted or its writes stopped: no
//!                        sync will ever cover more
//! ```
//!
//! Transitions:
//! * [`GroupCommit::turn`]`(seq)`: `synced > seq` → [`Turn::Durable`];
//!   closed → [`Turn::Closed`]; no leader → `leader = true`, and the caller
//!   holds the [`Leadership`] ([`Turn::Lead`]); otherwise the caller waits
//!   for the next change and asks again.
//! * [`Leadership`] dropped: `leader = false`, `synced` raised if the leader
//!   [published](Leadership::publish), `closed` set if it
//!   [closed](Leadership::close), and **every waiter is woken**. Dropping is
//!   the only way a leadership ends, so each way out of a sync (success, a
//!   failed write or fsync, writes stopped, the stream deleted, a panic, the
//!   leader's task dropped at shutdown) wakes everyone.
//! * [`GroupCommit::close`]: `closed` set (the stream's delete), every waiter
//!   woken.
//!
//! No wakeup is lost, on any runtime flavour: a waiter marks the channel
//! seen *before* it looks at the state, and sleeps only after seeing a
//! leader, whose release is a later change.
//!
//! The leader is whichever waiter found no sync under way; it syncs in its
//! own future ([`super::stream::Stream::sync_to`]), so no task is spawned
//! per sync. If that future is dropped (its connection closed) before the
//! fdatasync, the guard hands over at once; an fdatasync already running on
//! a blocking thread owns the leadership and records its own outcome
//! ([`GroupCommit::sync`]), so no other sync overlaps it and no fsync
//! failure is lost.

use super::fs::FileHandle;
use super::StorageFailure;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::watch;

/// Why no sync will ever cover more of a stream.
#[derive(Debug, Clone)]
pub enum Closed {
    Deleted,
    WritesStopped(Arc<StorageFailure>),
}

#[derive(Debug)]
struct Progress {
    synced: i64,
    leader: bool,
    closed: Option<Closed>,
}

pub struct GroupCommit {
    progress: watch::Sender<Progress>,
    /// Recent fdatasync time in microseconds (a moving average).
    sync_micros: AtomicU64,
}

/// What a caller waiting for `seq` does next.
pub enum Turn {
    Durable,
    Closed(Closed),
    /// The caller leads the next sync.
    Lead(Leadership),
}

/// A disk whose fdatasync takes less than this on average is synced on the
/// protocol thread itself: handing the call to a blocking thread and back
/// costs about as much as the sync, and the stall it causes the other
/// connections is shorter than that. Slower disks (SD cards, spinning or
/// busy ones) are synced on a blocking thread so nothing else waits.
const INLINE_SYNC_MICROS: u64 = 1_000;

impl GroupCommit {
    /// Everything below `synced` is durable already (what was loaded).
    pub fn new(synced: i64) -> Arc<Self> {
        Arc::new(GroupCommit {
            progress: watch::Sender::new(Progress {
                synced,
                leader: false,
                closed: None,
            }),
            // Start on a blocking thread until the disk has shown its speed.
            sync_micros: AtomicU64::new(INLINE_SYNC_MICROS),
        })
    }

    /// Waits until `seq` is durable, no sync can make it so, or the caller
    /// is to lead the next sync.
    pub async fn turn(self: &Arc<Self>, seq: i64) -> Turn {
        let mut seen = self.progress.subscribe();
        loop {
            // Marked seen before looking: a change after the look wakes us.
            seen.borrow_and_update();
            let mut turn = None;
            self.progress.send_if_modified(|p| {
                turn = if p.synced > seq {
                    Some(Turn::Durable)
                } else if let Some(closed) = &p.closed {
                    Some(Turn::Closed(closed.clone()))
                } else if !p.leader {
                    p.leader = true;
                    Some(Turn::Lead(Leadership {
                        commit: Arc::clone(self),
                        publish: None,
                        close: None,
                    }))
                } else {
                    None
                };
                // Taking the leadership wakes no one: nobody waits for it.
                false
            });
            if let Some(turn) = turn {
                return turn;
            }
            // Err only if the sender is gone, and `self` owns it.
            seen.changed().await.ok();
        }
    }

    /// Sequence numbers below this are durable (it never drops).
    pub fn synced(&self) -> i64 {
        self.progress.borrow().synced
    }

    /// The watermark, for readers that wait for messages to become
    /// durable without syncing them (the exporter,
    /// [`super::export_reader`]).
    pub fn watch_synced(&self) -> SyncedWatch {
        SyncedWatch(self.progress.subscribe())
    }

    /// No sync will ever cover more: every waiter returns.
    pub fn close(&self, closed: Closed) {
        self.progress.send_modify(|p| {
            p.closed.get_or_insert(closed);
        });
    }

    /// Runs `file.sync_data()`, on this thread if the disk has been fast,
    /// else on a blocking thread, and hands its result to `done` right
    /// after, in the same place: even if the caller stops waiting for a
    /// sync on a blocking thread, `done` (which owns the leadership) runs.
    /// False only if the blocking task panicked (the outcome is unknown).
    pub async fn sync(
        &self,
        file: Arc<dyn FileHandle>,
        done: impl FnOnce(std::io::Result<()>) + Send + 'static,
    ) -> bool {
        let started = std::time::Instant::now();
        let sync = move || done(file.sync_data());
        let finished = if self.sync_micros.load(Relaxed) < INLINE_SYNC_MICROS {
            sync();
            true
        } else {
            match tokio::task::spawn_blocking(sync).await {
                Ok(()) => true,
                Err(join) => {
                    tracing::error!(error = %join, "the fdatasync task failed");
                    false
                }
            }
        };
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let average = self.sync_micros.load(Relaxed);
        self.sync_micros.store((average * 7 + took) / 8, Relaxed);
        finished
    }
}

/// A view of the durable watermark that tells when it may have moved
/// ([`GroupCommit::watch_synced`]).
pub struct SyncedWatch(watch::Receiver<Progress>);

impl SyncedWatch {
    /// Sequence numbers below this are durable; marks the watermark seen,
    /// so a change after this look ends the next [`SyncedWatch::changed`].
    pub fn synced_and_mark_seen(&mut self) -> i64 {
        self.0.borrow_and_update().synced
    }

    /// Returns once the commit's state changed since it was last seen (a
    /// sync ended, the stream was deleted or its writes stopped).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // The sender lives as long as the stream, which the caller
            // holds: never, but should it, nothing will change any more.
            std::future::pending::<()>().await;
        }
    }
}

/// The right, and duty, to run one sync. Dropping it ends the leadership
/// and wakes every waiter (see the module doc).
pub struct Leadership {
    commit: Arc<GroupCommit>,
    publish: Option<i64>,
    close: Option<Closed>,
}

impl Leadership {
    pub fn commit(&self) -> &Arc<GroupCommit> {
        &self.commit
    }

    /// Ends the leadership: sequence numbers below `covered` are durable.
    pub fn publish(mut self, covered: i64) {
        self.publish = Some(covered);
    }

    /// Ends the leadership: no sync will ever cover more.
    pub fn close(mut self, closed: Closed) {
        self.close = Some(closed);
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        let (publish, close) = (self.publish.take(), self.close.take());
        // Always notifies: this is the wakeup every waiter relies on.
        self.commit.progress.send_modify(|p| {
            p.leader = false;
            if let Some(covered) = publish {
                p.synced = p.synced.max(covered);
            }
            if let Some(closed) = close {
                p.closed.get_or_insert(closed);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn poll<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn one_leader_at_a_time_and_its_end_releases_the_waiters() {
        let commit = GroupCommit::new(0);
        let Turn::Lead(leader) = commit.turn(0).await else {
            panic!("no leader yet")
        };
        let mut waiter = pin!(commit.turn(0));
        assert!(poll(waiter.as_mut()).is_pending(), "a sync is under way");
        leader.publish(1);
        assert!(matches!(waiter.await, Turn::Durable));
        assert!(matches!(commit.turn(0).await, Turn::Durable));
    }

    #[tokio::test]
    async fn a_dropped_leadership_hands_over() {
        let commit = GroupCommit::new(0);
        let Turn::Lead(leader) = commit.turn(5).await else {
            panic!("no leader yet")
        };
        let mut waiter = pin!(commit.turn(5));
        assert!(poll(waiter.as_mut()).is_pending());
        drop(leader);
        assert!(matches!(waiter.await, Turn::Lead(_)), "the next leader");
    }

    #[tokio::test]
    async fn closing_releases_waiters_but_not_what_was_durable() {
        let commit = GroupCommit::new(3);
        let Turn::Lead(leader) = commit.turn(5).await else {
            panic!("no leader yet")
        };
        let mut waiter = pin!(commit.turn(5));
        assert!(poll(waiter.as_mut()).is_pending());
        commit.close(Closed::Deleted);
        assert!(matches!(waiter.await, Turn::Closed(Closed::Deleted)));
        drop(leader);
        assert!(matches!(commit.turn(2).await, Turn::Durable));
        assert!(matches!(commit.turn(5).await, Turn::Closed(_)));
    }
}
