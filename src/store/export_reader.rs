//! The reader seam for exporters: how a reader that is not a client (an
//! export pipeline) reads a stream, waits for it, and learns of streams
//! coming and going.
//!
//! The client read path is wrong for an exporter: it clamps a start below
//! the oldest message silently, writes waiting appends first, and offers
//! messages that are not yet on disk. An [`ExportReader`] changes nothing:
//!
//! * [`ExportReader::read`] never writes waiting appends, never removes
//!   expired segments (it sees them as gone, as every read does), and says
//!   where the stream starts ([`ExportBatch::oldest_retained`]), so a gap
//!   left by retention is seen, never skipped silently.
//! * It offers only *durable* messages ([`ExportBatch::durable_next`]): of a
//!   `File` stream, those below the group commit's synced watermark
//!   ([`super::group_commit`]); of a `Memory` stream, every message
//!   appended. [`ExportReader::request_sync`] asks for a sync instead of
//!   waiting for the background one.
//! * Messages on disk are read without the stream's lock (a detached
//!   reader, [`super::log::SegmentLog::written_reader`]): the read may wait
//!   on the disk, so it belongs on the exporter's own threads, never on the
//!   protocol thread.
//! * [`ExportReader::wait_for`] waits for a durable message on the
//!   stream's watch channels, without polling.
//!
//! Registry events ([`super::Store::subscribe_events`]) are sent by
//! create, update and delete once they took effect, each stream's in the
//! order its changes took effect. An export manager subscribes *before* it
//! reads [`super::Store::definitions`] (so nothing falls between), treats
//! events as idempotent (one may repeat what the list showed), and, when its
//! receiver reports `RecvError::Lagged` (it fell more than
//! [`EVENTS_KEPT`] events behind), reads `definitions()` again and
//! reconciles its pipelines with it.

use super::export_cursor::{CursorState, CursorStore, Cursors};
use super::stream::{ExportBounds, ExportSource, Stream};
use super::{Fault, Operation, StorageFailure, StoreError};
use crate::clock::Clock;
use crate::protocol::model::{Message, MessageStreamDefinition};
use std::sync::Arc;
use tokio::time::Instant;

/// Events a lagging receiver may fall behind before it misses some (and is
/// told so).
pub const EVENTS_KEPT: usize = 256;

/// A change to the registry of streams, sent once it took effect.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    Created(MessageStreamDefinition),
    Updated(MessageStreamDefinition),
    Deleted(String),
}

/// One exporter read ([`ExportReader::read`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ExportBatch {
    /// Consecutive messages from `max(from, oldest_retained)`, all below
    /// `durable_next`.
    pub messages: Vec<Message>,
    /// The oldest message the stream still holds: a `from` below it means
    /// the messages in between are gone (retention), and the batch starts
    /// here.
    pub oldest_retained: i64,
    /// Messages below this are durable; none at or above it is returned.
    pub durable_next: i64,
}

impl ExportBatch {
    /// How many messages from `from` on were gone before they were read.
    pub fn skipped(&self, from: i64) -> i64 {
        (self.oldest_retained - from).max(0)
    }

    /// Where the next read starts.
    pub fn next(&self, from: i64) -> i64 {
        self.messages
            .last()
            .map_or(from.max(self.oldest_retained), |m| m.sequence_number + 1)
    }
}

/// How [`ExportReader::wait_for`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// A message at or after `from` can be read.
    Readable,
    /// The deadline came first.
    TimedOut,
}

/// A side-effect-free reader of one stream for an exporter
/// ([`super::Store::export_reader`]). It keeps reading the stream it was
/// made for: once that is deleted, every call fails with
/// [`StoreError::NotFound`], even if a stream of the same name is created
/// again (the registry's events say so).
pub struct ExportReader {
    stream: Arc<Stream>,
    clock: Arc<dyn Clock>,
    /// Where the progress of a `File` stream's exports is saved; `None` for
    /// a stream in memory (nothing of it outlives a restart).
    cursors: Option<Arc<CursorStore>>,
    /// Retention follows exports ([`super::Store::set_retention_follows_exports`]).
    frees_exported: bool,
}

impl ExportReader {
    pub(super) fn new(
        stream: Arc<Stream>,
        clock: Arc<dyn Clock>,
        cursors: Option<Arc<CursorStore>>,
        frees_exported: bool,
    ) -> Self {
        ExportReader {
            stream,
            clock,
            cursors,
            frees_exported,
        }
    }

    /// Every export's progress now (describe reports the same), by
    /// identifier: where a pipeline resumes from.
    pub fn progress(&self) -> Result<Cursors, StoreError> {
        self.stream.export_progress()
    }

    /// Records the progress of export `identifier` and, for a `File`
    /// stream, saves it (every export of the stream in one atomic file,
    /// [`super::export_cursor`]) before returning: describe reports it at
    /// once, and a restart resumes from it. `Ok(false)` if the stream's
    /// definition no longer has this export with this
    /// `startSequenceNumber` (an update replaced it; nothing is recorded).
    /// With retention following exports, a `RejectNewData` stream then
    /// frees the segments all its exports have passed
    /// ([`Stream::free_exported`]).
    /// Blocking (an fsync): call it where that stalls no one. Saves of one
    /// stream's exports are serialized, each writing the newest progress of
    /// all of them, so a save never goes back on another's.
    pub fn save_progress(
        &self,
        identifier: &str,
        progress: CursorState,
    ) -> Result<bool, StoreError> {
        let _saving = self.stream.saving_progress();
        let Some(all) = self.stream.record_export_progress(identifier, progress)? else {
            return Ok(false);
        };
        if let Some(cursors) = &self.cursors {
            cursors.save(self.stream.name(), &all).map_err(|e| {
                // A stream deleted meanwhile has no folder: that is the
                // deletion, not a storage failure.
                if e.is_not_found() {
                    StoreError::NotFound(self.stream.name().to_owned())
                } else {
                    StoreError::Write(StorageFailure::new(
                        Operation::SaveExportProgress,
                        Fault::Storage(e),
                    ))
                }
            })?;
        }
        // Only once the progress is saved: after a power cut the cursor
        // is never behind a segment that is gone.
        if self.frees_exported {
            let freed = self.stream.free_exported()?;
            if freed > 0 {
                tracing::debug!(stream = %self.stream.name(), freed, "exported segments freed");
            }
        }
        Ok(true)
    }

    pub fn name(&self) -> &str {
        self.stream.name()
    }

    /// Up to `max_count` durable messages from `from` (or from the oldest
    /// retained one, if later), within `max_bytes` as the client reads count
    /// them ([`super::log::ReadLimits::cost`], an upper bound of the
    /// payloads' bytes); at least one if any is durable, whatever its size.
    /// May wait on the disk: call it where that stalls no one.
    pub fn read(
        &self,
        from: i64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<ExportBatch, StoreError> {
        loop {
            let read =
                self.stream
                    .export_read(from, max_count, max_bytes, self.clock.now_millis())?;
            let messages = match read.source {
                ExportSource::Read(messages) => messages,
                ExportSource::Detached(reader) => match reader.read(read.start, read.limits) {
                    Ok(messages) => messages,
                    // Retention removed a segment meanwhile: look again, and
                    // the batch reports the stream's new start. A file
                    // missing with the start where it was is an error (else
                    // this would try for ever); the start only moves up, so
                    // this loop ends.
                    Err(e) if e.is_not_found() && self.retention_moved_past(read.start)? => {
                        continue
                    }
                    Err(e) => return Err(StoreError::Read(e)),
                },
            };
            return Ok(ExportBatch {
                messages,
                oldest_retained: read.bounds.oldest_retained,
                durable_next: read.bounds.durable_next,
            });
        }
    }

    /// Whether retention has removed messages from `start` on.
    fn retention_moved_past(&self, start: i64) -> Result<bool, StoreError> {
        Ok(self.bounds()?.oldest_retained > start)
    }

    /// Returns once a message at or after `from` can be read (for a `File`
    /// stream: is durable), or at `deadline` (tokio's clock); fails once the
    /// stream is deleted. Wakes on the stream's appends and deletion and on
    /// the group commit's watermark, never by polling.
    pub async fn wait_for(&self, from: i64, deadline: Instant) -> Result<Waited, StoreError> {
        self.wait_until(deadline, |bounds| {
            from.max(bounds.oldest_retained) < bounds.durable_next
        })
        .await
    }

    /// As [`ExportReader::wait_for`], but for a message at or after `from`
    /// to be *appended*, durable or not: an exporter that waits for a batch
    /// to fill waits for appends, then asks for the sync
    /// ([`ExportReader::request_sync`]) rather than for the background one.
    pub async fn wait_for_appended(
        &self,
        from: i64,
        deadline: Instant,
    ) -> Result<Waited, StoreError> {
        self.wait_until(deadline, |bounds| {
            from.max(bounds.oldest_retained) < bounds.appended_next
        })
        .await
    }

    /// Where the stream stands now: its oldest message, how far it is
    /// durable, how far appended.
    pub fn bounds(&self) -> Result<ExportBounds, StoreError> {
        self.stream.export_bounds(self.clock.now_millis())
    }

    async fn wait_until(
        &self,
        deadline: Instant,
        ready: impl Fn(&ExportBounds) -> bool,
    ) -> Result<Waited, StoreError> {
        let mut appended = self.stream.subscribe();
        let mut synced = self.stream.watch_synced();
        // The sender lives in the stream, which `self` holds, so it is never
        // gone; should it be, the watermark and the deadline are left.
        let mut appends_signal = true;
        loop {
            // Marked seen before looking: a change after the look wakes us.
            appended.borrow_and_update();
            if let Some(synced) = &mut synced {
                synced.synced_and_mark_seen();
            }
            if ready(&self.bounds()?) {
                return Ok(Waited::Readable);
            }
            if Instant::now() >= deadline {
                return Ok(Waited::TimedOut);
            }
            tokio::select! {
                changed = appended.changed(), if appends_signal => {
                    appends_signal = changed.is_ok();
                }
                () = async {
                    match &mut synced {
                        Some(synced) => synced.changed().await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Syncs every message written so far (and first writes those that
    /// wait), so they become durable now rather than at the next background
    /// sync. Nothing to do for a stream in memory; fails once the stream is
    /// deleted.
    pub async fn request_sync(&self) -> Result<(), StoreError> {
        // A deleted stream in memory has nothing to sync either, but its
        // exporter must learn it is gone.
        self.stream.next_sequence_number()?;
        self.stream.sync_written().await
    }
}
