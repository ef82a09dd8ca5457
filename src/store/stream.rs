//! One message stream: its definition, its log, its export progress, and the
//! signal long-polling readers wait on. Every change to a stream happens
//! under its one lock, so appends and retention are serialised (one writer).

use super::fs::FileHandle;
use super::log::{ReadLimits, SegmentLog, StorageError, RECORD_OVERHEAD};
use super::retention::{self, Room};
use super::StoreError;
use crate::protocol::model::{
    ExportStatus, Message, MessageStreamDefinition, MessageStreamInfo, ReadMessagesOptions,
    StorageStatus,
};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

pub struct Stream {
    name: String,
    state: Mutex<StreamState>,
    /// Group commit for streams on disk; `None` for memory streams.
    durability: Option<Durability>,
    /// Bumped after every append and on delete; readers waiting for messages
    /// subscribe before they look, so no append can slip between.
    changed: watch::Sender<()>,
}

struct StreamState {
    definition: MessageStreamDefinition,
    log: Box<dyn SegmentLog>,
    exports: Vec<ExportStatus>,
    deleted: bool,
    /// Set by a failed fsync: the stream takes no more writes (reads go on).
    writes_stopped: Option<String>,
    tickets: Tickets,
}

/// Which appends reached the operating system. Appends are buffered and
/// written together at the end of a connection's batch of requests; each
/// gets a ticket (never reused, unlike a sequence number after a failed
/// write) to ask, before it is acknowledged, whether its write succeeded.
#[derive(Default)]
struct Tickets {
    next: u64,
    /// First ticket whose record still waits for a flush.
    pending_from: Option<u64>,
    /// Recent failed flushes: tickets `[from, to)` and why.
    failed: std::collections::VecDeque<(u64, u64, String)>,
    /// The last flush failed (for logging the start and end of a run of
    /// failures).
    failing: bool,
}

/// Most yields a sync leader waits for more appends to join its sync.
const GATHER_ROUNDS: usize = 8;

/// How many failed flushes are remembered for appends still to confirm.
const FAILED_FLUSHES_KEPT: usize = 64;

/// Group commit: one task at a time syncs, covering every append written
/// before its sync began; the others wait for the watermark to pass them.
struct Durability {
    /// Sequence numbers below this are durable.
    synced: watch::Sender<i64>,
    leader: tokio::sync::Mutex<()>,
    /// Recent fdatasync time in microseconds (a moving average).
    sync_micros: std::sync::atomic::AtomicU64,
}

/// A disk whose fdatasync takes less than this on average is synced on the
/// protocol thread itself: handing the call to a blocking thread and back
/// costs about as much as the sync, and the stall it causes the other
/// connections is shorter than that. Slower disks (SD cards, spinning or
/// busy ones) are synced on a blocking thread so nothing else waits.
const INLINE_SYNC_MICROS: u64 = 1_000;

impl Durability {
    async fn run_sync(
        &self,
        file: Arc<dyn FileHandle>,
    ) -> Result<std::io::Result<()>, tokio::task::JoinError> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = std::time::Instant::now();
        let result = if self.sync_micros.load(Relaxed) < INLINE_SYNC_MICROS {
            Ok(file.sync_data())
        } else {
            tokio::task::spawn_blocking(move || file.sync_data()).await
        };
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let average = self.sync_micros.load(Relaxed);
        self.sync_micros.store((average * 7 + took) / 8, Relaxed);
        result
    }
}

/// An acknowledged-to-be append: its sequence number, and whether the
/// stream promises it only once it is synced (`flushOnWrite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub sequence_number: i64,
    pub flush: bool,
    /// For [`Stream::confirm`].
    pub ticket: u64,
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
}

impl Stream {
    /// `on_disk`: appends are written to files and can be synced.
    pub fn new(
        definition: MessageStreamDefinition,
        log: Box<dyn SegmentLog>,
        on_disk: bool,
    ) -> Self {
        let exports = fresh_export_statuses(&definition, &[]);
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
            durability: on_disk.then(|| Durability {
                synced: watch::Sender::new(next),
                leader: tokio::sync::Mutex::new(()),
                // Start on a blocking thread until the disk has shown its speed.
                sync_micros: std::sync::atomic::AtomicU64::new(INLINE_SYNC_MICROS),
            }),
            changed: watch::Sender::new(()),
        }
    }

    pub fn is_on_disk(&self) -> bool {
        self.durability.is_some()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> Result<MutexGuard<'_, StreamState>, StoreError> {
        // A panic while holding the lock leaves the stream in an unknown
        // state; refuse further use rather than guess.
        let state = self
            .state
            .lock()
            .map_err(|_| StoreError::Poisoned(self.name.clone()))?;
        if state.deleted {
            return Err(StoreError::NotFound(self.name.clone()));
        }
        Ok(state)
    }

    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Appends one message, making room first as the stream's strategy says.
    /// The message may wait in memory with others: before acknowledging it,
    /// [`Stream::confirm`] writes it to the operating system (from then on
    /// it survives weir crashing), and, if `Appended::flush`
    /// (`flushOnWrite`), [`Stream::sync_to`] makes it durable.
    pub fn append(&self, payload: Bytes, now_millis: i64) -> Result<Appended, StoreError> {
        let mut state = self.lock()?;
        if let Some(reason) = &state.writes_stopped {
            return Err(StoreError::WritesStopped {
                name: self.name.clone(),
                reason: reason.clone(),
            });
        }
        let result = self.append_locked(&mut state, payload, now_millis);
        match &result {
            Err(StoreError::Write(e)) if e.stops_writes() => {
                state.writes_stopped = Some(e.to_string())
            }
            // Opening or sealing a segment failed (a full disk): logged once
            // per run of failures, like a failed flush.
            Err(StoreError::Write(e)) if !std::mem::replace(&mut state.tickets.failing, true) => {
                tracing::warn!(stream = %self.name, error = %e, "appends fail: they are refused until writing works again");
            }
            _ => {}
        }
        let flush = state.definition.flush_on_write && self.durability.is_some();
        let seq = result?;
        let tickets = &mut state.tickets;
        let ticket = tickets.next;
        tickets.next += 1;
        tickets.pending_from.get_or_insert(ticket);
        drop(state);
        if self.changed.receiver_count() > 0 {
            // Only long-polling readers subscribe; most appends have none.
            self.changed.send_replace(());
        }
        Ok(Appended {
            sequence_number: seq,
            flush,
            ticket,
        })
    }

    /// Writes the append of `ticket` (and every other waiting one) to the
    /// operating system if that has not happened yet, and says whether it
    /// succeeded; a failed write is reported to every append it covered.
    pub fn confirm(&self, ticket: u64) -> Result<(), StoreError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| StoreError::Poisoned(self.name.clone()))?;
        if state
            .tickets
            .pending_from
            .is_some_and(|from| ticket >= from)
        {
            // The outcome is recorded per ticket and read below.
            state.flush().ok();
        }
        match state
            .tickets
            .failed
            .iter()
            .find(|(from, to, _)| (*from..*to).contains(&ticket))
        {
            Some((_, _, reason)) => Err(StoreError::AppendFailed {
                name: self.name.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn append_locked(
        &self,
        state: &mut StreamState,
        payload: Bytes,
        now_millis: i64,
    ) -> Result<i64, StoreError> {
        let def = &state.definition;
        let record = payload.len() as u64 + RECORD_OVERHEAD;
        let max_size = def.max_size as u64;
        let segment_size = def.stream_segment_size as u64;
        let strategy = def.strategy_on_full;
        state.expire(now_millis)?;
        loop {
            match retention::make_room(state.log.total_bytes(), record, max_size, strategy) {
                Room::Fits => break,
                Room::DropOldest => state.drop_oldest()?,
                Room::Refuse if record > max_size => {
                    return Err(StoreError::MessageTooLarge {
                        name: self.name.clone(),
                        bytes: record,
                        max_size,
                    })
                }
                Room::Refuse => {
                    return Err(StoreError::Full {
                        name: self.name.clone(),
                        max_size,
                    })
                }
            }
        }
        if let Some(active) = state.log.active_segment() {
            if retention::seal_before_append(&active, record, segment_size) {
                state.seal_active()?;
            }
        }
        state
            .log
            .append(now_millis, payload)
            .map_err(StoreError::Write)
    }

    /// Returns once every message up to `seq` is synced to disk. Appends that
    /// arrive while one sync runs share the next one (group commit). A failed
    /// sync stops the stream's writes: after it the page cache can no longer
    /// be trusted to hold what was written.
    pub async fn sync_to(&self, seq: i64) -> Result<(), StoreError> {
        let Some(durability) = &self.durability else {
            return Ok(());
        };
        // Subscribed before looking, so a sync finishing in between still
        // wakes this waiter.
        let mut synced = durability.synced.subscribe();
        loop {
            if *synced.borrow_and_update() > seq {
                return Ok(());
            }
            // One leader syncs; everyone else waits for the watermark it
            // publishes instead of queueing on the lock, so a whole batch of
            // waiters is released by one broadcast.
            let Ok(leader) = durability.leader.try_lock() else {
                // Err only if the sender is gone, and `self` owns it.
                synced.changed().await.ok();
                continue;
            };
            // Let appends already on their way write first, so this sync
            // covers them too: yield (tokio runs the I/O driver before a
            // yielded task resumes) for as long as new appends keep coming,
            // a few rounds at most. A lone appender pays one yield.
            let mut seen = self.next_sequence_number()?;
            for _ in 0..GATHER_ROUNDS {
                tokio::task::yield_now().await;
                let now = self.next_sequence_number()?;
                if now == seen {
                    break;
                }
                seen = now;
            }
            let (covered, target) = {
                let mut state = self.lock()?;
                // Waiting appends go to the OS first, so the sync covers them
                // (one that fails is reported by `confirm`).
                state.flush().ok();
                if let Some(reason) = &state.writes_stopped {
                    return Err(StoreError::WritesStopped {
                        name: self.name.clone(),
                        reason: reason.clone(),
                    });
                }
                (state.log.next_sequence_number(), state.log.sync_target())
            };
            if let Some(file) = target {
                let result = durability.run_sync(file).await;
                let failure = match result {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(join) => Some(format!("sync task failed: {join}")),
                };
                if let Some(reason) = failure {
                    tracing::error!(stream = %self.name, %reason, "fsync failed: the stream stops taking writes");
                    if let Ok(mut state) = self.state.lock() {
                        state.writes_stopped = Some(reason.clone());
                    }
                    // Wake the waiters: they find the stream stopped.
                    durability.synced.send_modify(|_| {});
                    return Err(StoreError::WritesStopped {
                        name: self.name.clone(),
                        reason,
                    });
                }
            }
            if covered <= seq {
                // `seq` was never written (its write failed and was undone).
                return Ok(());
            }
            // Always notifies, so no waiter sleeps through a leader change.
            durability
                .synced
                .send_modify(|synced| *synced = (*synced).max(covered));
            drop(leader);
        }
    }

    /// The sequence number after the last append, for a background sync.
    pub fn next_sequence_number(&self) -> Result<i64, StoreError> {
        Ok(self.lock()?.log.next_sequence_number())
    }

    /// Reads what is there now, without waiting.
    pub fn try_read(
        &self,
        options: &ReadMessagesOptions,
        now_millis: i64,
        max_response_bytes: usize,
    ) -> Result<ReadAttempt, StoreError> {
        let mut state = self.lock()?;
        state.flush_for_read();
        state.expire(now_millis)?;
        let next = state.log.next_sequence_number();
        let start = options
            .desired_start_sequence_number
            .max(state.oldest_sequence_number());
        let available = (next - start).max(0);
        if available < options.min_message_count {
            return Ok(ReadAttempt::Short { start, available });
        }
        let max_count =
            usize::try_from(options.max_message_count.min(available)).unwrap_or(usize::MAX);
        let messages = state
            .log
            .read(
                start,
                ReadLimits {
                    max_count,
                    max_bytes: max_response_bytes,
                    name_len: self.name.len(),
                },
            )
            .map_err(StoreError::Read)?;
        if (messages.len() as i64) < options.min_message_count {
            return Err(StoreError::ResponseTooLarge {
                name: self.name.clone(),
                min: options.min_message_count,
                max_bytes: max_response_bytes,
            });
        }
        Ok(ReadAttempt::Ready(messages))
    }

    pub fn describe(&self, now_millis: i64) -> Result<MessageStreamInfo, StoreError> {
        let mut state = self.lock()?;
        state.flush_for_read();
        state.expire(now_millis)?;
        let next = state.log.next_sequence_number();
        Ok(MessageStreamInfo {
            definition: state.definition.clone(),
            storage_status: StorageStatus {
                oldest_sequence_number: state.oldest_sequence_number(),
                // For an empty stream this is oldest - 1 (weir decision).
                newest_sequence_number: next - 1,
                total_bytes: i64::try_from(state.log.total_bytes()).unwrap_or(i64::MAX),
            },
            export_statuses: state.exports.clone(),
        })
    }

    /// Replaces the definition. `persistence` is fixed for a stream's life and
    /// `maxSize` may not drop below what the stream holds; exports keep their
    /// progress when their identifier stays.
    pub fn update(
        &self,
        definition: MessageStreamDefinition,
        now_millis: i64,
        persist: impl FnOnce(&MessageStreamDefinition) -> Result<(), StorageError>,
    ) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        if definition.persistence != state.definition.persistence {
            return Err(StoreError::PersistenceChange(self.name.clone()));
        }
        state.expire(now_millis)?;
        let current = state.log.total_bytes();
        if (definition.max_size as u64) < current {
            return Err(StoreError::ShrinkBelowSize {
                name: self.name.clone(),
                max_size: definition.max_size,
                current,
            });
        }
        persist(&definition).map_err(StoreError::Write)?;
        state.exports = fresh_export_statuses(&definition, &state.exports);
        state.definition = definition;
        drop(state);
        Ok(())
    }

    /// Applies TTL now (the background sweep; appends and reads also do it).
    pub fn enforce_retention(&self, now_millis: i64) -> Result<(), StoreError> {
        self.lock()?.expire(now_millis)
    }

    /// Marks the stream gone and wakes its waiting readers.
    pub fn delete(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.deleted = true;
        }
        self.changed.send_replace(());
    }
}

impl StreamState {
    /// Writes waiting appends; a failure is recorded against their tickets
    /// (and, for a failed fsync-like error, stops the stream's writes).
    fn flush(&mut self) -> Result<(), StoreError> {
        if !self.log.has_pending() {
            self.tickets.pending_from = None;
            return Ok(());
        }
        let result = self.log.flush();
        let from = self.tickets.pending_from.take();
        match result {
            Ok(()) => {
                if std::mem::take(&mut self.tickets.failing) {
                    tracing::info!(stream = %self.definition.name, "appends are written again");
                }
                Ok(())
            }
            Err(e) => {
                let reason = e.to_string();
                // Once per run of failures, so a full disk is in the log
                // without a line per rejected append.
                if !std::mem::replace(&mut self.tickets.failing, true) {
                    tracing::warn!(stream = %self.definition.name, error = %reason, "appends fail: they are refused until writing works again");
                }
                if e.stops_writes() {
                    self.writes_stopped = Some(reason.clone());
                }
                if let Some(from) = from {
                    self.tickets
                        .failed
                        .push_back((from, self.tickets.next, reason));
                    if self.tickets.failed.len() > FAILED_FLUSHES_KEPT {
                        self.tickets.failed.pop_front();
                    }
                }
                Err(StoreError::Write(e))
            }
        }
    }

    /// Before reading: a failed write concerns the appends it covered (they
    /// learn it from `confirm`), not the reader, who reads what is there.
    fn flush_for_read(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(stream = %self.definition.name, error = %e, "buffered appends could not be written");
        }
    }

    fn seal_active(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        self.log.seal_active().map_err(StoreError::Write)
    }

    fn oldest_sequence_number(&self) -> i64 {
        self.log
            .oldest_segment()
            .map_or(self.log.next_sequence_number(), |s| s.first_sequence_number)
    }

    /// Drops the oldest segment, sealing it first if it is the active one.
    fn drop_oldest(&mut self) -> Result<(), StoreError> {
        if let Some(oldest) = self.log.oldest_segment() {
            if !oldest.sealed {
                self.seal_active()?;
            }
            self.log
                .remove_oldest_segment()
                .map_err(StoreError::Write)?;
        }
        Ok(())
    }

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

/// Export statuses for `definition`, keeping the progress of exports whose
/// identifier already existed.
fn fresh_export_statuses(
    definition: &MessageStreamDefinition,
    previous: &[ExportStatus],
) -> Vec<ExportStatus> {
    definition
        .export_definition
        .starts()
        .into_iter()
        .map(|(id, start)| {
            previous
                .iter()
                .find(|p| p.export_config_identifier == id)
                .cloned()
                .unwrap_or_else(|| ExportStatus {
                    export_config_identifier: id.to_owned(),
                    last_exported_sequence_number: start - 1,
                    last_export_time: None,
                    error_message: None,
                    exported_bytes_from_stream: 0,
                    exported_messages_count: 0,
                })
        })
        .collect()
}
