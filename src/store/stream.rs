//! One message stream: its definition, its log, its export progress, and the
//! signal long-polling readers wait on. Every change to a stream happens
//! under its one lock, so appends and retention are serialised (one writer).
//!
//! # The acknowledgement contract
//!
//! An append is answered with success only once its write is *known* to
//! have succeeded; every other outcome, including "not known any more", is
//! an error (fail closed). In order:
//!
//! 1. **append** ([`Stream::append`]): the record gets its sequence number
//!    and a *ticket*, and waits in memory with the other appends of its
//!    batch. Nothing is promised yet. An append that would first wait on the
//!    disk ([`Stream::append_now`] says [`AppendNow::NeedsDisk`]) takes no
//!    number until that work is done, off the stream's lock; the server
//!    does it on its blocking pool, and the connection carries out nothing
//!    after the append until then, so its appends keep their order.
//! 2. **write**: the waiting records reach the operating system together,
//!    in one call, the first time anyone needs them there: a confirm, a
//!    read or describe (so a read after an append sees it), a seal, a sync.
//!    A write that fails forgets its records (the sequence numbers go
//!    back) and is recorded against their tickets.
//! 3. **confirm** ([`Stream::confirm`], at the end of the connection's
//!    batch): success only if the ticket's write is known to have
//!    succeeded and the stream's writes have not stopped. From here on the
//!    message survives weir crashing; the answer of a stream without
//!    `flushOnWrite` is sent now.
//! 4. **durable** ([`Stream::sync_to`], `flushOnWrite` only): success once
//!    an `fdatasync` that began after the write has succeeded; the sync is
//!    shared by everyone waiting at the time ([`super::group_commit`]).
//!    Other streams are synced in the background ([`Stream::sync_written`])
//!    and at shutdown.
//!
//! A failed fsync anywhere (a sync, a seal, retention, a definition write)
//! stops the stream's writes *before* anything else is acknowledged: after
//! one, the page cache can no longer be trusted to hold what was written
//! (fsyncgate). Every storage failure out of the log goes through
//! `StreamState::failed`, the one place that decides this. Reads go on.
//!
//! Reads and describes change nothing that can fail them: they see expired
//! segments as gone ([`retention::first_unexpired`]) but leave removing
//! them to the writer (an append) and the sweeper
//! ([`Stream::enforce_retention`]).

use super::export_cursor::{resume_all, CursorState, Cursors};
use super::group_commit::{Closed, GroupCommit, Leadership, SyncedWatch, Turn};
use super::log::{DiskWork, ReadLimits, SealedRead, SegmentLog, StorageError, RECORD_OVERHEAD};
use super::retention::{self, Room};
use super::{Fault, Operation, StorageFailure, StoreError};
use crate::protocol::model::{
    ExportStatus, Message, MessageStreamDefinition, MessageStreamInfo, ReadMessagesOptions,
    StorageStatus, StrategyOnFull,
};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

pub struct Stream {
    name: String,
    state: Mutex<StreamState>,
    /// Group commit for streams on disk; `None` for memory streams.
    commit: Option<Arc<GroupCommit>>,
    /// Bumped after every append and on delete; readers waiting for messages
    /// subscribe before they look, so no append can slip between.
    changed: watch::Sender<()>,
    /// Serializes saves of the export progress file.
    saving_progress: Mutex<()>,
}

struct StreamState {
    definition: MessageStreamDefinition,
    log: Box<dyn SegmentLog>,
    /// How far each export of the definition has got, by identifier: what
    /// describe reports, kept by the exporters
    /// ([`super::export_reader::ExportReader::save_progress`]).
    exports: Cursors,
    deleted: bool,
    /// Set by a failure that makes the stream's files untrustworthy (a
    /// failed fsync): the stream takes and acknowledges no more writes
    /// (reads go on).
    writes_stopped: Option<Arc<StorageFailure>>,
    tickets: Tickets,
}

/// Which appends are known to have been written to the operating system.
/// Each append gets a ticket (never reused, unlike a sequence number after
/// a failed write). Writes cover consecutive tickets, so outcomes are kept
/// as ranges: tickets from `pending_from` on wait for a write; of the
/// others, those in a failed range failed and the rest were written. Runs
/// of failures are merged, so a full disk costs one range however long it
/// lasts; only the last [`FAILED_RANGES_KEPT`] ranges are kept, and a ticket
/// older than them has an unknown outcome, which confirms as a failure.
#[derive(Default)]
struct Tickets {
    next: u64,
    /// First ticket whose record still waits for a write.
    pending_from: Option<u64>,
    /// Outcomes of tickets below this are forgotten.
    known_from: u64,
    /// Failed writes, oldest first, not overlapping.
    failed: VecDeque<FailedWrite>,
    /// The last write failed (for logging the start and end of a run of
    /// failures).
    failing: bool,
}

/// Tickets `[from, to)`, whose write failed, and why.
struct FailedWrite {
    from: u64,
    to: u64,
    cause: Arc<StorageFailure>,
}

enum Outcome {
    Pending,
    Written,
    Failed(Arc<StorageFailure>),
    Unknown,
}

/// How many failed ranges are remembered for appends still to confirm.
const FAILED_RANGES_KEPT: usize = 64;

impl Tickets {
    fn issue(&mut self) -> u64 {
        let ticket = self.next;
        self.next += 1;
        self.pending_from.get_or_insert(ticket);
        ticket
    }

    /// The waiting tickets' records were written.
    fn written(&mut self) {
        self.pending_from = None;
    }

    /// The waiting tickets' records are lost.
    fn lost(&mut self, cause: &Arc<StorageFailure>) {
        let Some(from) = self.pending_from.take() else {
            return;
        };
        let to = self.next;
        match self.failed.back_mut() {
            Some(last) if last.to == from => last.to = to,
            _ => self.failed.push_back(FailedWrite {
                from,
                to,
                cause: Arc::clone(cause),
            }),
        }
        if self.failed.len() > FAILED_RANGES_KEPT {
            let forgotten = self.failed.pop_front().expect("more than kept");
            self.known_from = forgotten.to;
        }
    }

    fn outcome(&self, ticket: u64) -> Outcome {
        if ticket >= self.next || ticket < self.known_from {
            return Outcome::Unknown;
        }
        if self.pending_from.is_some_and(|from| ticket >= from) {
            return Outcome::Pending;
        }
        let at = self.failed.partition_point(|f| f.to <= ticket);
        match self.failed.get(at) {
            Some(f) if f.from <= ticket => Outcome::Failed(Arc::clone(&f.cause)),
            _ => Outcome::Written,
        }
    }
}

/// Most yields a sync leader waits for more appends to join its sync.
const GATHER_ROUNDS: usize = 8;

/// An append still to be acknowledged: its sequence number, and whether the
/// stream promises it only once it is synced (`flushOnWrite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub sequence_number: i64,
    pub flush: bool,
    /// For [`Stream::confirm`].
    pub ticket: u64,
}

/// The outcome of an append that does not wait on the disk
/// ([`Stream::append_now`]).
pub enum AppendNow {
    Done(Appended),
    /// The log has disk work to do before it can take the append (no spare
    /// segment ready for the next segment, a retention removal not yet
    /// durable, the sequence floor to raise): the caller runs it where
    /// waiting stalls no one, without the stream's lock, and tries again.
    /// The append took no sequence number; what retention and sealing did
    /// on the way stays done.
    NeedsDisk(DiskWork),
}

/// The outcome of a read attempt that does not wait.
#[derive(Debug)]
pub enum ReadAttempt {
    Ready(Vec<Message>),
    /// Fewer than `minMessageCount` messages are there yet.
    Short {
        start: i64,
        available: i64,
    },
    /// Enough messages are there, and the first are in sealed segments on
    /// disk: [`Stream::read_detached`] reads them, on a thread that may
    /// wait for the disk, without holding the stream's lock meanwhile.
    Sealed(DetachedRead),
}

/// A read whose messages start in sealed segments ([`ReadAttempt::Sealed`]).
pub struct DetachedRead {
    reader: Box<dyn SealedRead>,
    options: ReadMessagesOptions,
    start: i64,
    limits: ReadLimits,
    now_millis: i64,
}

impl std::fmt::Debug for DetachedRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetachedRead")
            .field("start", &self.start)
            .field("sealed_end", &self.reader.end())
            .field("limits", &self.limits)
            .finish()
    }
}

/// What an exporter may read of a stream ([`Stream::export_bounds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportBounds {
    /// The oldest message a read can return (expired ones count as gone).
    pub oldest_retained: i64,
    /// Messages below this are durable (on disk after an fdatasync, or, in
    /// memory, appended).
    pub durable_next: i64,
    /// Messages below this were appended (durable or not yet).
    pub appended_next: i64,
}

/// An exporter's read as [`Stream::export_read`] prepared it.
pub struct ExportRead {
    pub bounds: ExportBounds,
    /// Where the messages start: the read's `from`, or the oldest retained
    /// message if that is later.
    pub start: i64,
    pub limits: ReadLimits,
    pub source: ExportSource,
}

pub enum ExportSource {
    /// Read already (a log in memory).
    Read(Vec<Message>),
    /// To read from `start` with `limits`, without the stream's lock.
    Detached(Box<dyn SealedRead>),
}

/// Whether a sync of a message that is not in the stream is an error.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// A `flushOnWrite` append's: its write failed, it is not durable.
    Fails,
    /// The background sync's: nothing there to sync.
    Synced,
}

impl Stream {
    /// `on_disk`: appends are written to files and can be synced.
    /// `stored`: the export progress saved for this stream
    /// ([`super::export_cursor`]); exports it has no cursor for start at
    /// their `startSequenceNumber`.
    pub fn new(
        definition: MessageStreamDefinition,
        log: Box<dyn SegmentLog>,
        on_disk: bool,
        stored: &Cursors,
    ) -> Self {
        let exports = resume_all(&definition.export_definition, stored);
        let next = log.next_sequence_number();
        Stream {
            name: definition.name.clone(),
            state: Mutex::new(StreamState {
                definition,
                log,
                exports,
                deleted: false,
                writes_stopped: None,
                tickets: Tickets::default(),
            }),
            commit: on_disk.then(|| GroupCommit::new(next)),
            changed: watch::Sender::new(()),
            saving_progress: Mutex::new(()),
        }
    }

    pub fn is_on_disk(&self) -> bool {
        self.commit.is_some()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock_any(&self) -> Result<MutexGuard<'_, StreamState>, StoreError> {
        // A panic while holding the lock leaves the stream in an unknown
        // state; refuse further use rather than guess.
        self.state
            .lock()
            .map_err(|_| StoreError::Poisoned(self.name.clone()))
    }

    fn lock(&self) -> Result<MutexGuard<'_, StreamState>, StoreError> {
        let state = self.lock_any()?;
        if state.deleted {
            return Err(StoreError::NotFound(self.name.clone()));
        }
        Ok(state)
    }

    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// The group commit's watermark, for a reader that waits for messages
    /// to become durable; `None` for a stream in memory.
    pub fn watch_synced(&self) -> Option<SyncedWatch> {
        self.commit.as_ref().map(|commit| commit.watch_synced())
    }

    /// Held while the stream's export progress is saved
    /// ([`super::export_reader::ExportReader::save_progress`]).
    pub fn saving_progress(&self) -> MutexGuard<'_, ()> {
        self.saving_progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every export's progress now, by identifier.
    pub fn export_progress(&self) -> Result<Cursors, StoreError> {
        Ok(self.lock()?.exports.clone())
    }

    /// Records the progress of export `identifier` (what describe reports
    /// from now on) and returns every export's progress, to be saved.
    /// `None` if the definition no longer has that export or has it with
    /// another `startSequenceNumber`: an update changed it meanwhile, and
    /// the pipeline that made this progress is being replaced.
    pub fn record_export_progress(
        &self,
        identifier: &str,
        progress: CursorState,
    ) -> Result<Option<Cursors>, StoreError> {
        let mut state = self.lock()?;
        match state.exports.get_mut(identifier) {
            Some(current) if current.start_sequence_number == progress.start_sequence_number => {
                *current = progress;
                Ok(Some(state.exports.clone()))
            }
            _ => Ok(None),
        }
    }

    /// Frees the oldest whole segments that every export of a
    /// `RejectNewData` stream has passed (retention that follows exports,
    /// a server setting), so a stream that filled while the cloud was out
    /// of reach takes appends again once its backlog is exported. Only
    /// sealed segments go; a stream without exports, or that overwrites
    /// its oldest data anyway, is left as it is. Returns how many went.
    pub fn free_exported(&self) -> Result<usize, StoreError> {
        let mut state = self.lock()?;
        if state.definition.strategy_on_full != StrategyOnFull::RejectNewData {
            return Ok(0);
        }
        // Every export counts, disabled ones too: a paused export has not
        // passed what it will send once enabled.
        let passed = state
            .definition
            .export_definition
            .starts()
            .into_iter()
            .map(|(id, start)| {
                state
                    .exports
                    .get(id)
                    .map_or(start, CursorState::next_sequence_number)
            })
            .min();
        let Some(passed) = passed else {
            return Ok(0);
        };
        let mut freed = 0;
        while let Some(oldest) = state.log.oldest_segment() {
            if !oldest.sealed || oldest.next_sequence_number > passed {
                break;
            }
            state.drop_oldest()?;
            freed += 1;
        }
        Ok(freed)
    }

    /// The stream's definition now.
    pub fn definition(&self) -> Result<MessageStreamDefinition, StoreError> {
        Ok(self.lock()?.definition.clone())
    }

    /// What an exporter may read now ([`super::export_reader`]): changes
    /// nothing (no flush of waiting appends, no retention). Only messages
    /// below the durable watermark are offered; for a stream in memory
    /// everything appended counts.
    pub fn export_bounds(&self, now_millis: i64) -> Result<ExportBounds, StoreError> {
        Ok(self.export_bounds_of(&*self.lock()?, now_millis))
    }

    fn export_bounds_of(&self, state: &StreamState, now_millis: i64) -> ExportBounds {
        let next = state.log.next_sequence_number();
        // A sync covers only what was written before it, and a failed write
        // gives back only sequence numbers above what was written, so the
        // watermark is never above `next`; `min` keeps that so regardless.
        let durable_next = self
            .commit
            .as_ref()
            .map_or(next, |commit| commit.synced().min(next));
        ExportBounds {
            oldest_retained: state.retained(now_millis).oldest,
            durable_next,
            appended_next: next,
        }
    }

    /// An exporter's read of up to `max_count` messages from
    /// `max(from, oldest retained)`, below the durable watermark, in a
    /// budget of `max_bytes` as [`ReadLimits::cost`] counts (at least one
    /// message if any). Changes nothing; a log on disk is handed back as a
    /// detached reader, to read without the stream's lock.
    pub fn export_read(
        &self,
        from: i64,
        max_count: usize,
        max_bytes: usize,
        now_millis: i64,
    ) -> Result<ExportRead, StoreError> {
        let state = self.lock()?;
        let bounds = self.export_bounds_of(&state, now_millis);
        let start = from.max(bounds.oldest_retained);
        let count = usize::try_from(bounds.durable_next - start)
            .unwrap_or(0)
            .min(max_count);
        let limits = ReadLimits {
            max_count: count,
            max_bytes,
            name_len: self.name.len(),
        };
        let source = if count == 0 {
            ExportSource::Read(Vec::new())
        } else if let Some(reader) = state.log.written_reader(start, bounds.durable_next) {
            ExportSource::Detached(reader)
        } else {
            // A log with nothing on disk has no appends waiting for a flush.
            ExportSource::Read(state.log.read(start, limits).map_err(StoreError::Read)?)
        };
        Ok(ExportRead {
            bounds,
            start,
            limits,
            source,
        })
    }

    /// Step 1 of the acknowledgement contract (module doc): appends one
    /// message, making room first as the stream's strategy says, waiting
    /// here for whatever disk work that needs ([`Stream::append_now`]).
    pub fn append(&self, payload: Bytes, now_millis: i64) -> Result<Appended, StoreError> {
        loop {
            match self.append_now(payload.clone(), now_millis)? {
                AppendNow::Done(appended) => return Ok(appended),
                AppendNow::NeedsDisk(work) => self.do_disk_work(work)?,
            }
        }
    }

    /// Runs the disk work an append needs ([`AppendNow::NeedsDisk`]) here,
    /// without the stream's lock; its failure is the stream's
    /// (`StreamState::failed`).
    pub fn do_disk_work(&self, work: DiskWork) -> Result<(), StoreError> {
        work().map_err(|e| self.storage_failed(Operation::Append, e))
    }

    /// As [`Stream::append`], but an append that would wait on the disk
    /// first is handed back as [`AppendNow::NeedsDisk`], with the work to
    /// do before trying again.
    pub fn append_now(&self, payload: Bytes, now_millis: i64) -> Result<AppendNow, StoreError> {
        let mut state = self.lock()?;
        state.writable()?;
        let sequence_number = match state.append(payload, now_millis)? {
            Ok(seq) => seq,
            Err(work) => return Ok(AppendNow::NeedsDisk(work)),
        };
        let ticket = state.tickets.issue();
        let flush = state.definition.flush_on_write && self.commit.is_some();
        drop(state);
        if self.changed.receiver_count() > 0 {
            // Only long-polling readers subscribe; most appends have none.
            self.changed.send_replace(());
        }
        Ok(AppendNow::Done(Appended {
            sequence_number,
            flush,
            ticket,
        }))
    }

    /// Steps 2 and 3 (module doc): writes the append of `ticket` (with every
    /// other waiting one) if that has not happened yet, and succeeds only if
    /// its write is known to have succeeded and the stream's writes have not
    /// stopped since.
    pub fn confirm(&self, ticket: u64) -> Result<(), StoreError> {
        let mut state = self.lock_any()?;
        if let Outcome::Pending = state.tickets.outcome(ticket) {
            // The outcome is recorded against the ticket and read below.
            if let Err(e) = state.flush() {
                tracing::debug!(stream = %self.name, error = %e, "write at confirm failed");
            }
        }
        state.writable()?;
        let cause = match state.tickets.outcome(ticket) {
            Outcome::Written => return Ok(()),
            Outcome::Failed(cause) => cause,
            // A flush always settles its tickets; should one not have, it is
            // not known to be written either.
            Outcome::Pending | Outcome::Unknown => {
                StorageFailure::new(Operation::Write, Fault::OutcomeUnknown)
            }
        };
        Err(StoreError::AppendFailed {
            name: self.name.clone(),
            cause,
        })
    }

    /// Step 4 (module doc): returns once message `seq` is synced to disk,
    /// sharing the sync with everyone waiting at the same time; an error if
    /// it cannot be (the stream deleted, its writes stopped, `seq` never
    /// written). Memory streams have nothing to sync.
    pub async fn sync_to(self: &Arc<Self>, seq: i64) -> Result<(), StoreError> {
        self.sync_through(seq, Missing::Fails).await
    }

    /// Syncs every message written so far (the background sync and
    /// shutdown).
    pub async fn sync_written(self: &Arc<Self>) -> Result<(), StoreError> {
        if self.commit.is_none() {
            return Ok(());
        }
        let next = self.next_sequence_number()?;
        self.sync_through(next - 1, Missing::Synced).await
    }

    async fn sync_through(self: &Arc<Self>, seq: i64, missing: Missing) -> Result<(), StoreError> {
        let Some(commit) = &self.commit else {
            return Ok(());
        };
        loop {
            let leadership = match commit.turn(seq).await {
                Turn::Durable => return Ok(()),
                Turn::Closed(closed) => return Err(self.closed_error(closed)),
                Turn::Lead(leadership) => leadership,
            };
            // Every return below drops `leadership`, which wakes the waiters.
            {
                let state = self.lock()?;
                if let Some(cause) = &state.writes_stopped {
                    leadership.close(Closed::WritesStopped(Arc::clone(cause)));
                    continue;
                }
                if seq >= state.log.next_sequence_number() {
                    // Not in the stream: its write failed (and was undone).
                    return match missing {
                        Missing::Synced => Ok(()),
                        Missing::Fails => Err(StoreError::AppendFailed {
                            name: self.name.clone(),
                            cause: StorageFailure::new(Operation::Sync, Fault::NotWritten(seq)),
                        }),
                    };
                }
            }
            Arc::clone(self).lead(leadership).await;
        }
    }

    /// One group-commit sync. Every way out, including this future being
    /// dropped, drops `leadership`, which wakes every waiter; what they find
    /// decides their answer.
    async fn lead(self: Arc<Self>, leadership: Leadership) {
        // Let appends already on their way write first, so this sync covers
        // them too: yield (tokio runs the I/O driver before a yielded task
        // resumes) for as long as new appends keep coming, a few rounds at
        // most. A lone appender pays one yield.
        let Ok(mut seen) = self.next_sequence_number() else {
            return;
        };
        for _ in 0..GATHER_ROUNDS {
            tokio::task::yield_now().await;
            match self.next_sequence_number() {
                Ok(now) if now == seen => break,
                Ok(now) => seen = now,
                Err(_) => return,
            }
        }
        let (covered, target) = {
            let Ok(mut state) = self.lock() else {
                return;
            };
            // Waiting appends go to the OS first, so the sync covers them
            // (one that fails is recorded against its tickets).
            if let Err(e) = state.flush() {
                tracing::debug!(stream = %self.name, error = %e, "write before a sync failed");
            }
            if let Some(cause) = &state.writes_stopped {
                leadership.close(Closed::WritesStopped(Arc::clone(cause)));
                return;
            }
            (state.log.next_sequence_number(), state.log.sync_target())
        };
        let Some(file) = target else {
            self.finish_sync(leadership, covered, Ok(()));
            return;
        };
        // The sync's outcome is recorded, and the leadership ends, in the
        // same place as the sync: if this future is dropped while the sync
        // runs on a blocking thread, no other sync starts before it ends and
        // its failure is not lost.
        let commit = Arc::clone(leadership.commit());
        let stream = Arc::clone(&self);
        let done = move |result| stream.finish_sync(leadership, covered, result);
        if !commit.sync(file, done).await {
            // The blocking task panicked: the outcome is unknown.
            if let Ok(mut state) = self.lock_any() {
                let unknown = std::io::Error::other("the fdatasync task panicked");
                state.failed(Operation::Sync, Fault::Sync(unknown));
            }
        }
    }

    /// Ends a sync: records its failure, then publishes what it covered
    /// unless the stream's writes have stopped. Checked and published under
    /// the lock, so a failure recorded before is never followed by an
    /// acknowledgement.
    fn finish_sync(&self, leadership: Leadership, covered: i64, result: std::io::Result<()>) {
        // Even a deleted stream records (and logs) a failed sync.
        let Ok(mut state) = self.lock_any() else {
            return;
        };
        if let Err(e) = result {
            state.failed(Operation::Sync, Fault::Sync(e));
        }
        match &state.writes_stopped {
            Some(cause) => leadership.close(Closed::WritesStopped(Arc::clone(cause))),
            None => leadership.publish(covered),
        }
    }

    fn closed_error(&self, closed: Closed) -> StoreError {
        match closed {
            Closed::Deleted => StoreError::NotFound(self.name.clone()),
            Closed::WritesStopped(cause) => StoreError::WritesStopped {
                name: self.name.clone(),
                cause,
            },
        }
    }

    /// The sequence number after the last append.
    pub fn next_sequence_number(&self) -> Result<i64, StoreError> {
        Ok(self.lock()?.log.next_sequence_number())
    }

    /// Reads what is there now, without waiting.
    /// With `detach`, a read that starts in a sealed segment is handed back
    /// as [`ReadAttempt::Sealed`] instead of reading the disk here.
    pub fn try_read(
        &self,
        options: &ReadMessagesOptions,
        now_millis: i64,
        max_response_bytes: usize,
        detach: bool,
    ) -> Result<ReadAttempt, StoreError> {
        let mut state = self.lock()?;
        state.flush_for_read();
        let next = state.log.next_sequence_number();
        let start = options
            .desired_start_sequence_number
            .max(state.retained(now_millis).oldest);
        let available = (next - start).max(0);
        if available < options.min_message_count {
            return Ok(ReadAttempt::Short { start, available });
        }
        let max_count =
            usize::try_from(options.max_message_count.min(available)).unwrap_or(usize::MAX);
        let limits = ReadLimits {
            max_count,
            max_bytes: max_response_bytes,
            name_len: self.name.len(),
        };
        if detach {
            if let Some(reader) = state.log.sealed_reader(start) {
                return Ok(ReadAttempt::Sealed(DetachedRead {
                    reader,
                    options: *options,
                    start,
                    limits,
                    now_millis,
                }));
            }
        }
        // A read writes nothing, so nothing it reports can make written
        // data untrustworthy: its errors do not go through `failed`.
        let messages = state.log.read(start, limits).map_err(StoreError::Read)?;
        self.enough(messages, options, max_response_bytes)
            .map(ReadAttempt::Ready)
    }

    /// A read's messages, unless fewer than its `minMessageCount` fit.
    fn enough(
        &self,
        messages: Vec<Message>,
        options: &ReadMessagesOptions,
        max_response_bytes: usize,
    ) -> Result<Vec<Message>, StoreError> {
        if (messages.len() as i64) < options.min_message_count {
            return Err(StoreError::ResponseTooLarge {
                name: self.name.clone(),
                min: options.min_message_count,
                max_bytes: max_response_bytes,
            });
        }
        Ok(messages)
    }

    /// Carries out a [`ReadAttempt::Sealed`]: the sealed segments without
    /// the stream's lock, then, if the read goes on past them, the rest
    /// under it (what was appended meanwhile may be included, as in any
    /// read). Answers as [`Stream::try_read`] would have.
    pub fn read_detached(&self, read: DetachedRead) -> Result<Vec<Message>, StoreError> {
        let DetachedRead {
            reader,
            options,
            start,
            limits,
            now_millis,
        } = read;
        let mut messages = match reader.read(start, limits) {
            Ok(messages) => messages,
            Err(e) if e.is_not_found() => {
                // Retention removed a segment meanwhile: read again from
                // what is retained now.
                return match self.try_read(&options, now_millis, limits.max_bytes, false)? {
                    ReadAttempt::Ready(messages) => Ok(messages),
                    ReadAttempt::Short { start, available } => Err(StoreError::NotEnoughMessages {
                        start,
                        available,
                        min: options.min_message_count,
                    }),
                    ReadAttempt::Sealed(_) => unreachable!("not detached"),
                };
            }
            Err(e) => return Err(StoreError::Read(e)),
        };
        let next = start + messages.len() as i64;
        let used: usize = messages.iter().map(|m| limits.cost(m.payload.len())).sum();
        if messages.len() < limits.max_count && next == reader.end() && used < limits.max_bytes {
            let state = self.lock()?;
            let rest = state
                .log
                .read(
                    next,
                    ReadLimits {
                        max_count: limits.max_count - messages.len(),
                        max_bytes: limits.max_bytes - used,
                        ..limits
                    },
                )
                .map_err(StoreError::Read)?;
            drop(state);
            // `read` returns one message over its budget when it has none;
            // this one is not the read's first.
            let mut budget = limits.max_bytes - used;
            for message in rest {
                let cost = limits.cost(message.payload.len());
                if cost > budget {
                    break;
                }
                budget -= cost;
                messages.push(message);
            }
        }
        self.enough(messages, &options, limits.max_bytes)
    }

    pub fn describe(&self, now_millis: i64) -> Result<MessageStreamInfo, StoreError> {
        let mut state = self.lock()?;
        state.flush_for_read();
        let next = state.log.next_sequence_number();
        let retained = state.retained(now_millis);
        Ok(MessageStreamInfo {
            definition: state.definition.clone(),
            storage_status: StorageStatus {
                oldest_sequence_number: retained.oldest,
                // For an empty stream this is oldest - 1 (weir decision).
                newest_sequence_number: next - 1,
                total_bytes: i64::try_from(retained.bytes).unwrap_or(i64::MAX),
            },
            export_statuses: export_statuses(&state.definition, &state.exports),
        })
    }

    /// Replaces the definition. `persistence` is fixed for a stream's life and
    /// `maxSize` may not drop below what the stream holds (expired messages
    /// not counted); exports keep their progress when their identifier and
    /// `startSequenceNumber` stay ([`CursorState::resume`]).
    pub fn update(
        &self,
        definition: MessageStreamDefinition,
        now_millis: i64,
        persist: impl FnOnce(&MessageStreamDefinition) -> Result<(), StorageError>,
    ) -> Result<(), StoreError> {
        self.update_then(definition, now_millis, persist, |_| {})
    }

    /// As [`Stream::update`], then `updated` with the new definition, still
    /// under the stream's lock (so the registry's events of one stream are
    /// in the order its changes took effect).
    pub fn update_then(
        &self,
        definition: MessageStreamDefinition,
        now_millis: i64,
        persist: impl FnOnce(&MessageStreamDefinition) -> Result<(), StorageError>,
        updated: impl FnOnce(&MessageStreamDefinition),
    ) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        if definition.persistence != state.definition.persistence {
            return Err(StoreError::PersistenceChange(self.name.clone()));
        }
        let current = state.retained(now_millis).bytes;
        if (definition.max_size as u64) < current {
            return Err(StoreError::ShrinkBelowSize {
                name: self.name.clone(),
                max_size: definition.max_size,
                current,
            });
        }
        if let Err(e) = persist(&definition) {
            return Err(state.failed(Operation::SaveDefinition, Fault::Storage(e)));
        }
        state.exports = resume_all(&definition.export_definition, &state.exports);
        state.definition = definition;
        updated(&state.definition);
        drop(state);
        Ok(())
    }

    /// Removes the segments whose TTL has passed (the sweeper; appends do it
    /// too); their files go in the background.
    pub fn enforce_retention(&self, now_millis: i64) -> Result<(), StoreError> {
        self.lock()?.expire(now_millis)
    }

    /// Records a storage failure of this stream found outside it (deleting
    /// its folder): it stops the stream's writes if it must.
    pub fn storage_failed(&self, operation: Operation, error: StorageError) -> StoreError {
        match self.lock_any() {
            Ok(mut state) => state.failed(operation, Fault::Storage(error)),
            Err(poisoned) => poisoned,
        }
    }

    /// The stream's segments as the log holds them (tests compare them
    /// with a model: after a failed operation they may differ from what the
    /// files on disk say, e.g. a segment sealed whose footer could not be
    /// written).
    #[cfg(any(test, feature = "test-util"))]
    pub fn segments(&self) -> Result<Vec<super::log::SegmentInfo>, StoreError> {
        let state = self.lock()?;
        let mut segments = Vec::new();
        let mut from = i64::MIN;
        while let Some(segment) = state.log.segment_from(from) {
            if segment.next_sequence_number <= from {
                break;
            }
            from = segment
                .next_sequence_number
                .max(segment.first_sequence_number + 1);
            segments.push(segment);
        }
        Ok(segments)
    }

    /// Marks the stream gone and wakes its waiting readers and syncs.
    pub fn delete(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.deleted = true;
        }
        if let Some(commit) = &self.commit {
            commit.close(Closed::Deleted);
        }
        self.changed.send_replace(());
    }
}

/// What a read or describe sees: expired segments are skipped, not removed.
struct Retained {
    oldest: i64,
    bytes: u64,
}

impl StreamState {
    /// Whether the stream still takes (and acknowledges) writes.
    fn writable(&self) -> Result<(), StoreError> {
        match &self.writes_stopped {
            Some(cause) => Err(StoreError::WritesStopped {
                name: self.definition.name.clone(),
                cause: Arc::clone(cause),
            }),
            None => Ok(()),
        }
    }

    /// The one place a storage failure out of the log is recorded: appends
    /// whose records it lost are told so at their confirm, and a failure
    /// that makes the stream's files untrustworthy stops its writes (before
    /// anything else can be acknowledged: the caller holds the lock).
    fn failed(&mut self, operation: Operation, fault: Fault) -> StoreError {
        let cause = StorageFailure::new(operation, fault);
        let name = self.definition.name.clone();
        if self.tickets.pending_from.is_some() && !self.log.has_pending() {
            self.tickets.lost(&cause);
        }
        if cause.stops_writes() {
            if self.writes_stopped.is_none() {
                tracing::error!(stream = %name, error = %cause, "the stream stops taking writes until weir restarts");
                self.writes_stopped = Some(Arc::clone(&cause));
            }
            return StoreError::WritesStopped { name, cause };
        }
        // Once per run of failures, so a full disk is in the log without a
        // line per rejected append.
        if !std::mem::replace(&mut self.tickets.failing, true) {
            tracing::warn!(stream = %name, error = %cause, "appends fail: they are refused until writing works again");
        }
        StoreError::Write(cause)
    }

    /// Step 2 of the contract: writes waiting appends; the outcome is
    /// recorded against their tickets.
    fn flush(&mut self) -> Result<(), StoreError> {
        if !self.log.has_pending() {
            self.tickets.written();
            return Ok(());
        }
        match self.log.flush() {
            Ok(()) => {
                self.tickets.written();
                if std::mem::take(&mut self.tickets.failing) {
                    tracing::info!(stream = %self.definition.name, "appends are written again");
                }
                Ok(())
            }
            Err(e) => Err(self.failed(Operation::Write, Fault::Storage(e))),
        }
    }

    /// Before reading: a failed write concerns the appends it covered (they
    /// learn it from `confirm`), not the reader, who reads what is there.
    fn flush_for_read(&mut self) {
        if let Err(e) = self.flush() {
            tracing::debug!(stream = %self.definition.name, error = %e, "buffered appends could not be written before a read");
        }
    }

    /// The appended message's sequence number, or the disk work to do
    /// (without the lock) before it can be appended.
    fn append(
        &mut self,
        payload: Bytes,
        now_millis: i64,
    ) -> Result<Result<i64, DiskWork>, StoreError> {
        let def = &self.definition;
        let record = payload.len() as u64 + RECORD_OVERHEAD;
        let max_size = def.max_size as u64;
        let segment_size = def.stream_segment_size as u64;
        let strategy = def.strategy_on_full;
        self.expire(now_millis)?;
        loop {
            match retention::make_room(self.log.total_bytes(), record, max_size, strategy) {
                Room::Fits => break,
                Room::DropOldest => self.drop_oldest()?,
                Room::Refuse if record > max_size => {
                    return Err(StoreError::MessageTooLarge {
                        name: self.definition.name.clone(),
                        bytes: record,
                        max_size,
                    })
                }
                Room::Refuse => {
                    return Err(StoreError::Full {
                        name: self.definition.name.clone(),
                        max_size,
                    })
                }
            }
        }
        if let Some(active) = self.log.active_segment() {
            if retention::seal_before_append(&active, record, segment_size) {
                self.seal_active()?;
            }
        }
        // What is done above waits for no disk (seals and removals run in
        // the background); what the log still needs before it can take the
        // record, the caller does off the lock.
        match self.log.disk_work() {
            Ok(None) => {}
            Ok(Some(work)) => return Ok(Err(work)),
            Err(e) => return Err(self.failed(Operation::Append, Fault::Storage(e))),
        }
        match self.log.append(now_millis, payload) {
            Ok(seq) => Ok(Ok(seq)),
            Err(e) => Err(self.failed(Operation::Append, Fault::Storage(e))),
        }
    }

    fn seal_active(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        self.log
            .seal_active()
            .map_err(|e| self.failed(Operation::Seal, Fault::Storage(e)))
    }

    /// The stream as a reader sees it at `now_millis`.
    fn retained(&self, now_millis: i64) -> Retained {
        let (first, expired_bytes) = retention::first_unexpired(
            self.log.oldest_segment(),
            |seq| self.log.segment_from(seq),
            self.definition.time_to_live_millis,
            now_millis,
        );
        Retained {
            oldest: first.map_or(self.log.next_sequence_number(), |s| s.first_sequence_number),
            bytes: self.log.total_bytes() - expired_bytes,
        }
    }

    /// Drops the oldest segment, sealing it first if it is the active one.
    fn drop_oldest(&mut self) -> Result<(), StoreError> {
        if let Some(oldest) = self.log.oldest_segment() {
            if !oldest.sealed {
                self.seal_active()?;
            }
            self.log
                .remove_oldest_segment()
                .map_err(|e| self.failed(Operation::RemoveSegment, Fault::Storage(e)))?;
        }
        Ok(())
    }

    /// Removes expired segments: the writer's and the sweeper's work only.
    fn expire(&mut self, now_millis: i64) -> Result<(), StoreError> {
        let ttl = self.definition.time_to_live_millis;
        while let Some(oldest) = self.log.oldest_segment() {
            if !retention::expired(&oldest, ttl, now_millis) {
                break;
            }
            self.drop_oldest()?;
        }
        Ok(())
    }
}

/// `exportStatuses` as describe reports them: one per export of
/// `definition`, in the order they are described.
fn export_statuses(definition: &MessageStreamDefinition, exports: &Cursors) -> Vec<ExportStatus> {
    definition
        .export_definition
        .starts()
        .into_iter()
        .map(|(id, start)| match exports.get(id) {
            Some(cursor) => cursor.export_status(id),
            None => CursorState::starting_at(start).export_status(id),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log::StorageOp;
    use crate::store::memory::MemoryLog;

    fn stream() -> Stream {
        let definition = MessageStreamDefinition::with_defaults("s".into());
        Stream::new(
            definition,
            Box::new(MemoryLog::new()),
            false,
            &Cursors::new(),
        )
    }

    /// Any failure that stops writes stops them, wherever it comes from;
    /// here a definition write (the file log reports its failed fsync so).
    #[test]
    fn a_definition_write_that_stops_writes_stops_them() {
        let stream = stream();
        let pending = stream.append(Bytes::from_static(b"x"), 0).unwrap();
        let failed_fsync = || StorageError::Sync {
            op: StorageOp::WriteDefinition,
            source: std::io::Error::from_raw_os_error(5),
        };
        let definition = MessageStreamDefinition::with_defaults("s".into());
        let result = stream.update(definition, 0, |_| Err(failed_fsync()));
        assert!(matches!(result, Err(StoreError::WritesStopped { .. })));
        assert!(matches!(
            stream.confirm(pending.ticket),
            Err(StoreError::WritesStopped { .. })
        ));
        match stream.append(Bytes::from_static(b"y"), 0) {
            Err(StoreError::WritesStopped { cause, .. }) => {
                assert_eq!(cause.operation, Operation::SaveDefinition);
                assert!(cause.to_string().contains("saving the stream definition"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failure_that_does_not_stop_writes_leaves_them_going() {
        let stream = stream();
        let definition = MessageStreamDefinition::with_defaults("s".into());
        let full = || StorageError::Io {
            op: StorageOp::WriteDefinition,
            source: std::io::Error::from_raw_os_error(28),
        };
        match stream.update(definition, 0, |_| Err(full())) {
            Err(StoreError::Write(cause)) => {
                assert_eq!(cause.io_kind(), Some(std::io::ErrorKind::StorageFull));
            }
            other => panic!("{other:?}"),
        }
        let appended = stream.append(Bytes::from_static(b"x"), 0).unwrap();
        stream.confirm(appended.ticket).unwrap();
    }

    #[test]
    fn tickets_fail_closed() {
        let failure = StorageFailure::new(Operation::Write, Fault::OutcomeUnknown);
        let mut tickets = Tickets::default();
        assert!(matches!(tickets.outcome(0), Outcome::Unknown), "not issued");
        let first = tickets.issue();
        assert!(matches!(tickets.outcome(first), Outcome::Pending));
        tickets.written();
        assert!(matches!(tickets.outcome(first), Outcome::Written));
        // Consecutive failed writes are one range, however many.
        let failed: Vec<u64> = (0..100)
            .map(|_| {
                let ticket = tickets.issue();
                tickets.lost(&failure);
                ticket
            })
            .collect();
        assert_eq!(tickets.failed.len(), 1);
        assert!(failed
            .iter()
            .all(|t| matches!(tickets.outcome(*t), Outcome::Failed(_))));
        // Alternating ones are not: past the ranges kept, the oldest
        // outcomes are unknown, never taken for success.
        for _ in 0..FAILED_RANGES_KEPT {
            tickets.issue();
            tickets.written();
            tickets.issue();
            tickets.lost(&failure);
        }
        assert!(matches!(tickets.outcome(failed[0]), Outcome::Unknown));
        assert!(matches!(tickets.outcome(first), Outcome::Unknown));
        let last = tickets.next - 1;
        assert!(matches!(tickets.outcome(last), Outcome::Failed(_)));
        assert!(matches!(tickets.outcome(last - 1), Outcome::Written));
    }
}
