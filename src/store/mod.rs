//! Message streams and where their messages live.
//!
//! [`Store`] is the registry of streams and the domain API the server calls;
//! [`stream::Stream`] holds one stream's state, and its module doc is the
//! acknowledgement contract (append → write → confirm → durable);
//! [`group_commit`] is the shared `fdatasync` behind `flushOnWrite`;
//! [`log::SegmentLog`] is the storage seam, filled by [`file::FileLog`] and
//! [`memory::MemoryLog`]; [`retention`] is the pure policy of what leaves a
//! stream; [`export_reader`] is how exporters read streams (changing
//! nothing, durable messages only) and learn of streams coming and going.

pub mod disk;
pub mod export_cursor;
pub mod export_reader;
pub mod file;
pub mod fs;
pub mod group_commit;
pub mod log;
pub mod memory;
pub mod retention;
#[cfg(any(test, feature = "test-util"))]
pub mod simfs;
pub mod stream;

use crate::clock::Clock;
use crate::protocol::model::{
    Message, MessageStreamDefinition, MessageStreamInfo, Persistence, ReadMessagesOptions,
};
use bytes::Bytes;
use export_cursor::Cursors;
pub use export_reader::{ExportBatch, ExportReader, StreamEvent, Waited};
use log::{SegmentLog, StorageError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
pub use stream::Appended;
use stream::{AppendNow, ReadAttempt, Stream};
use tokio::sync::broadcast;

/// Domain errors; `server::dispatch` maps each to its wire status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("message stream {0} does not exist")]
    NotFound(String),
    #[error("message stream {0} already exists")]
    AlreadyExists(String),
    #[error("message stream {name} is full (maxSize {max_size} bytes) and its strategy is RejectNewData")]
    Full { name: String, max_size: u64 },
    #[error("a message of {bytes} bytes stored can never fit in message stream {name} (maxSize {max_size} bytes)")]
    MessageTooLarge {
        name: String,
        bytes: u64,
        max_size: u64,
    },
    #[error("{available} messages available from sequence number {start}, fewer than minMessageCount {min}")]
    NotEnoughMessages {
        start: i64,
        available: i64,
        min: i64,
    },
    #[error(
        "{min} messages of message stream {name} do not fit in one response of {max_bytes} bytes"
    )]
    ResponseTooLarge {
        name: String,
        min: i64,
        max_bytes: usize,
    },
    #[error("persistence of message stream {0} cannot be changed")]
    PersistenceChange(String),
    #[error("maxSize {max_size} of message stream {name} is below the {current} bytes it holds")]
    ShrinkBelowSize {
        name: String,
        max_size: i64,
        current: u64,
    },
    #[error("reading message stream failed: {0}")]
    Read(StorageError),
    #[error("writing message stream failed: {0}")]
    Write(Arc<StorageFailure>),
    #[error("message stream {0} is unusable after an internal error")]
    Poisoned(String),
    /// A failure after which the stream's files can no longer be trusted to
    /// hold what was written (a failed fsync): nothing more is acknowledged.
    #[error("message stream {name} takes no more writes until weir restarts: {cause}")]
    WritesStopped {
        name: String,
        cause: Arc<StorageFailure>,
    },
    /// An append whose write is not known to have succeeded.
    #[error("the message could not be written to message stream {name}: {cause}")]
    AppendFailed {
        name: String,
        cause: Arc<StorageFailure>,
    },
}

/// A storage failure as the stream layer reports it: what it was doing,
/// and what went wrong, with the error's kind kept (shared, because one
/// failure answers every append it concerns).
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {fault}")]
pub struct StorageFailure {
    pub operation: Operation,
    pub fault: Fault,
}

/// What the stream was doing when storage failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Writing buffered appends to the operating system.
    Write,
    /// Appending a record (which may open a new segment).
    Append,
    Seal,
    /// Retention removing the oldest segment.
    RemoveSegment,
    /// The group commit's fdatasync.
    Sync,
    SaveDefinition,
    CreateStream,
    DeleteStream,
    /// Saving how far the stream's exports have got (not the stream's
    /// data: a failure here does not stop its writes).
    SaveExportProgress,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::Write => "writing appended messages",
            Operation::Append => "appending a message",
            Operation::Seal => "sealing a segment",
            Operation::RemoveSegment => "removing the oldest segment",
            Operation::Sync => "syncing appended messages to disk",
            Operation::SaveDefinition => "saving the stream definition",
            Operation::CreateStream => "creating the stream",
            Operation::DeleteStream => "deleting the stream",
            Operation::SaveExportProgress => "saving the export progress",
        })
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error(transparent)]
    Storage(StorageError),
    /// The group commit's fdatasync failed; it always stops writes.
    #[error("fdatasync failed: {0}")]
    Sync(std::io::Error),
    /// A sync was asked for a message whose write had failed.
    #[error("message {0} is not in the stream: its write failed")]
    NotWritten(i64),
    /// An append's outcome is not known (it is older than the failures
    /// remembered): it is not acknowledged, as it may have failed.
    #[error("whether this append was written is no longer known")]
    OutcomeUnknown,
}

impl StorageFailure {
    pub fn new(operation: Operation, fault: Fault) -> Arc<Self> {
        Arc::new(StorageFailure { operation, fault })
    }

    /// Whether the stream's files can no longer be trusted to hold what was
    /// written, so it must stop taking writes.
    pub fn stops_writes(&self) -> bool {
        match &self.fault {
            Fault::Storage(e) => e.stops_writes(),
            Fault::Sync(_) => true,
            Fault::NotWritten(_) | Fault::OutcomeUnknown => false,
        }
    }

    /// The kind of the underlying I/O error, if there is one: the first
    /// `std::io::Error` in the error's source chain.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        let mut error: Option<&(dyn std::error::Error + 'static)> = match &self.fault {
            Fault::Sync(e) => return Some(e.kind()),
            Fault::Storage(e) => Some(e),
            Fault::NotWritten(_) | Fault::OutcomeUnknown => None,
        };
        while let Some(e) = error {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Some(io.kind());
            }
            error = e.source();
        }
        None
    }
}

/// What [`Store::read_now`] found.
#[derive(Debug)]
pub enum ReadNow {
    Ready(Vec<Message>),
    /// Fewer than `minMessageCount` messages are there yet: wait
    /// ([`Store::read`]).
    Wait,
    /// The messages start in sealed segments on disk.
    FromDisk(DiskRead),
}

/// A read of messages in sealed segments, to run where waiting for the
/// disk stalls no one. The stream's lock is not held while the sealed
/// segments are read, so appends to the stream go on meanwhile.
pub struct DiskRead {
    stream: Arc<Stream>,
    read: stream::DetachedRead,
}

impl std::fmt::Debug for DiskRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskRead")
            .field("stream", &self.stream.name())
            .field("read", &self.read)
            .finish()
    }
}

impl DiskRead {
    /// Reads here and now (the caller may wait for the disk).
    pub fn run(self) -> Result<Vec<Message>, StoreError> {
        self.stream.read_detached(self.read)
    }

    /// Reads on tokio's blocking pool.
    pub async fn run_blocking(self) -> Result<Vec<Message>, StoreError> {
        let name = self.stream.name().to_owned();
        tokio::task::spawn_blocking(move || self.run())
            .await
            .unwrap_or_else(|_| Err(StoreError::Poisoned(name)))
    }
}

/// The outcome of [`Store::append_now`].
#[derive(Debug)]
pub enum Appending {
    /// Appended, to be acknowledged as [`Store::append`] says.
    Done(Appended),
    /// The stream's log has disk work to do first (a new segment with no
    /// spare file ready, a retention removal not yet durable).
    NeedsDisk(DiskAppend),
}

/// An append that waits on the disk first ([`Appending::NeedsDisk`]): run
/// where that stalls no one, and without the stream's lock while it waits,
/// so the stream's reads and describes, and appends to other streams, go
/// on meanwhile.
pub struct DiskAppend {
    stream: Arc<Stream>,
    payload: Bytes,
    work: log::DiskWork,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DiskAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskAppend")
            .field("stream", &self.stream.name())
            .field("bytes", &self.payload.len())
            .finish()
    }
}

impl DiskAppend {
    /// Does the disk work, then the append (again, should the log need
    /// more meanwhile), here: step 1 of the acknowledgement contract.
    pub fn run(self) -> Result<Appended, StoreError> {
        let DiskAppend {
            stream,
            payload,
            mut work,
            clock,
        } = self;
        loop {
            stream.do_disk_work(work)?;
            match stream.append_now(payload.clone(), clock.now_millis())? {
                AppendNow::Done(appended) => return Ok(appended),
                AppendNow::NeedsDisk(more) => work = more,
            }
        }
    }

    /// Runs it on tokio's blocking pool, and confirms it there (steps 1 to
    /// 3 of the contract): a `flushOnWrite` append is then still to be
    /// made durable ([`Store::durable`]).
    pub async fn run_blocking(self) -> Result<Appended, StoreError> {
        let stream = Arc::clone(&self.stream);
        let name = stream.name().to_owned();
        tokio::task::spawn_blocking(move || {
            let appended = self.run()?;
            stream.confirm(appended.ticket)?;
            Ok(appended)
        })
        .await
        .unwrap_or(Err(StoreError::Poisoned(name)))
    }
}

/// Limits the store enforces on behalf of the server.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Payload bytes one read answer may carry (below the frame limit).
    pub max_read_bytes: usize,
}

pub struct Store {
    streams: RwLock<BTreeMap<String, Arc<Stream>>>,
    /// Folders of `File` streams; `None` for a store kept wholly in memory.
    disk: Option<disk::StreamFolders>,
    /// Export progress files of `File` streams (beside their segments);
    /// `None` with `disk`.
    cursors: Option<Arc<export_cursor::CursorStore>>,
    clock: Arc<dyn Clock>,
    limits: StoreLimits,
    /// Held by creates and deletes for their whole run (never by appends,
    /// reads or describes), so they need not hold the registry lock while
    /// they work on the disk.
    streams_changing: Mutex<()>,
    /// Registry events for export managers ([`export_reader`]).
    events: broadcast::Sender<StreamEvent>,
    /// [`Store::set_retention_follows_exports`].
    retention_follows_exports: std::sync::atomic::AtomicBool,
}

impl Store {
    /// A store that keeps every stream in memory, whatever its persistence
    /// (tests, benchmarks of the protocol path).
    pub fn new(clock: Arc<dyn Clock>, limits: StoreLimits) -> Self {
        Store {
            streams: RwLock::new(BTreeMap::new()),
            disk: None,
            cursors: None,
            clock,
            limits,
            streams_changing: Mutex::new(()),
            events: broadcast::Sender::new(export_reader::EVENTS_KEPT),
            retention_follows_exports: Default::default(),
        }
    }

    /// A store whose `File` streams live under `root`, loading those there.
    /// Streams that cannot be loaded are reported and skipped.
    pub fn open(
        fs: Arc<dyn fs::FileSystem>,
        root: &std::path::Path,
        clock: Arc<dyn Clock>,
        limits: StoreLimits,
    ) -> Result<Self, StorageError> {
        let cursors = Arc::new(export_cursor::CursorStore::new(Arc::clone(&fs), root));
        let folders = disk::StreamFolders::new(fs, root)?;
        let mut streams = BTreeMap::new();
        for loaded in folders.load_all() {
            let name = loaded.definition.name.clone();
            let stored = load_export_progress(&cursors, &loaded.definition);
            tracing::info!(
                stream = %name,
                segments = loaded.report.segments,
                next_sequence_number = loaded.log.next_sequence_number(),
                truncated_bytes = loaded.report.truncated_bytes,
                "stream loaded"
            );
            let stream = Stream::new(loaded.definition, Box::new(loaded.log), true, &stored);
            streams.insert(name, Arc::new(stream));
        }
        Ok(Store {
            streams: RwLock::new(streams),
            disk: Some(folders),
            cursors: Some(cursors),
            clock,
            limits,
            streams_changing: Mutex::new(()),
            events: broadcast::Sender::new(export_reader::EVENTS_KEPT),
            retention_follows_exports: Default::default(),
        })
    }

    pub fn now_millis(&self) -> i64 {
        self.clock.now_millis()
    }

    fn get(&self, name: &str) -> Result<Arc<Stream>, StoreError> {
        self.streams
            .read()
            .expect("the stream registry lock is never held across a panic")
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))
    }

    /// Creates a stream. Its folder and definition are made without the
    /// registry lock held (appends to other streams look streams up in the
    /// registry and must not wait for this disk work); `streams_changing`
    /// keeps creates and deletes from racing each other meanwhile.
    pub fn create(&self, definition: MessageStreamDefinition) -> Result<(), StoreError> {
        let _changing = self.streams_changing.lock().expect("streams_changing lock");
        if self.get(&definition.name).is_ok() {
            return Err(StoreError::AlreadyExists(definition.name));
        }
        let stream = match (&self.disk, definition.persistence) {
            (Some(disk), Persistence::File) => {
                let log = disk.create(&definition).map_err(|e| {
                    StoreError::Write(StorageFailure::new(
                        Operation::CreateStream,
                        Fault::Storage(e),
                    ))
                })?;
                Stream::new(definition, Box::new(log), true, &Cursors::new())
            }
            _ => Stream::new(
                definition,
                Box::new(memory::MemoryLog::new()),
                false,
                &Cursors::new(),
            ),
        };
        let mut streams = self.streams.write().expect("registry lock");
        let created = stream.definition()?;
        streams.insert(stream.name().to_owned(), Arc::new(stream));
        // Sent before anyone can find the stream to update or delete it, so
        // its events come in order. Err only when no one listens.
        let _no_subscriber = self.events.send(StreamEvent::Created(created));
        Ok(())
    }

    /// Deletes a stream, all or nothing: the commit point is
    /// [`disk::StreamFolders::mark_deleted`]. If it fails, the stream is
    /// whole (and, if an fsync failed, takes no more writes); once it has
    /// happened the stream is gone, whatever the steps after it say, and an
    /// unfinished removal is finished at the next start. Disk work happens
    /// without the registry lock held, as in [`Store::create`].
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let _changing = self.streams_changing.lock().expect("streams_changing lock");
        let stream = self.get(name)?;
        let disk = self.disk.as_ref().filter(|_| stream.is_on_disk());
        if let Some(disk) = disk {
            disk.mark_deleted(name)
                .map_err(|e| stream.storage_failed(Operation::DeleteStream, e))?;
        }
        self.streams.write().expect("registry lock").remove(name);
        stream.delete();
        // The stream is gone whatever removing its folder says. An update
        // sends its event under the stream's lock, which `delete` took
        // after it: this event is the stream's last.
        let _no_subscriber = self.events.send(StreamEvent::Deleted(name.to_owned()));
        match disk {
            Some(disk) => disk.finish_delete(name).map_err(|e| {
                StoreError::Write(StorageFailure::new(
                    Operation::DeleteStream,
                    Fault::Storage(e),
                ))
            }),
            None => Ok(()),
        }
    }

    /// Appends; the message may wait in memory with others of its stream.
    /// It is acknowledged only after [`Store::confirm`] and, for a
    /// `flushOnWrite` stream, [`Store::durable`]: the acknowledgement
    /// contract is in the [`stream`] module doc.
    /// Waits here for any disk work the append needs (tests, tools); the
    /// server uses [`Store::append_now`].
    pub fn append(&self, name: &str, payload: Bytes) -> Result<Appended, StoreError> {
        self.get(name)?.append(payload, self.now_millis())
    }

    /// As [`Store::append`], but an append that would wait on the disk (a
    /// new segment with no spare ready, a retention removal not yet
    /// durable) is handed back as [`Appending::NeedsDisk`], to run where
    /// waiting for the disk stalls no one (the protocol thread serves every
    /// connection).
    pub fn append_now(&self, name: &str, payload: Bytes) -> Result<Appending, StoreError> {
        let stream = self.get(name)?;
        Ok(
            match stream.append_now(payload.clone(), self.now_millis())? {
                AppendNow::Done(appended) => Appending::Done(appended),
                AppendNow::NeedsDisk(work) => Appending::NeedsDisk(DiskAppend {
                    stream,
                    payload,
                    work,
                    clock: Arc::clone(&self.clock),
                }),
            },
        )
    }

    /// Writes a buffered append to the operating system (with every other
    /// waiting append of its stream) and says whether that is known to have
    /// worked ([`stream`] module doc).
    pub fn confirm(&self, name: &str, ticket: u64) -> Result<(), StoreError> {
        self.get(name)?.confirm(ticket)
    }

    /// Returns once message `seq` of stream `name` is synced (an error if it
    /// cannot be: the stream is gone, its writes stopped, or `seq` was never
    /// written).
    pub async fn durable(&self, name: &str, seq: i64) -> Result<(), StoreError> {
        let stream = self.get(name)?;
        stream.sync_to(seq).await
    }

    /// Syncs everything written to every stream on disk (the background
    /// sync of streams without `flushOnWrite`, and shutdown). Every stream's
    /// sync returns, whatever happens to it ([`group_commit`]).
    pub async fn sync_all(&self) {
        let streams = self.all_streams();
        for stream in streams.into_iter().filter(|s| s.is_on_disk()) {
            match stream.sync_written().await {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => {
                    tracing::error!(stream = stream.name(), error = %e, "background sync failed")
                }
            }
        }
    }

    pub fn list(&self) -> Vec<String> {
        self.streams
            .read()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect()
    }

    pub fn describe(&self, name: &str) -> Result<MessageStreamInfo, StoreError> {
        self.get(name)?.describe(self.now_millis())
    }

    pub fn update(&self, definition: MessageStreamDefinition) -> Result<(), StoreError> {
        let stream = self.get(&definition.name)?;
        let disk = self.disk.as_ref().filter(|_| stream.is_on_disk());
        let saved = |def: &MessageStreamDefinition| match disk {
            Some(disk) => disk.save_definition(def),
            None => Ok(()),
        };
        let updated = |def: &MessageStreamDefinition| {
            let _no_subscriber = self.events.send(StreamEvent::Updated(def.clone()));
        };
        stream.update_then(definition, self.now_millis(), saved, updated)
    }

    /// Retention that follows exports (off by default, the Java server's
    /// semantics): with it on, a `RejectNewData` stream frees the whole
    /// segments that every one of its exports has passed, each time an
    /// export saves its progress. Set before export readers are made.
    pub fn set_retention_follows_exports(&self, on: bool) {
        self.retention_follows_exports
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// A reader of stream `name` for an exporter: it changes nothing and
    /// offers only durable messages ([`export_reader`]).
    pub fn export_reader(&self, name: &str) -> Result<ExportReader, StoreError> {
        let stream = self.get(name)?;
        let cursors = self.cursors.clone().filter(|_| stream.is_on_disk());
        Ok(ExportReader::new(
            stream,
            Arc::clone(&self.clock),
            cursors,
            self.retention_follows_exports
                .load(std::sync::atomic::Ordering::Relaxed),
        ))
    }

    /// Registry events from now on. Subscribe before reading
    /// [`Store::definitions`]; a receiver that lags (`RecvError::Lagged`)
    /// has missed events and reads `definitions()` again
    /// ([`export_reader`] module doc).
    pub fn subscribe_events(&self) -> broadcast::Receiver<StreamEvent> {
        self.events.subscribe()
    }

    /// Every stream's current definition, in name order.
    pub fn definitions(&self) -> Vec<MessageStreamDefinition> {
        self.all_streams()
            .iter()
            // A stream deleted since the list was taken is left out.
            .filter_map(|stream| stream.definition().ok())
            .collect()
    }

    /// A read that does not wait: `Ok(None)` if it would have to. Reads the
    /// disk here, whatever it takes (tests, tools); the server uses
    /// [`Store::read_now`].
    pub fn try_read(
        &self,
        name: &str,
        options: &ReadMessagesOptions,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        match self.read_now(name, options)? {
            ReadNow::Ready(messages) => Ok(Some(messages)),
            ReadNow::FromDisk(read) => read.run().map(Some),
            ReadNow::Wait => Ok(None),
        }
    }

    /// A read that does not wait and does not wait on the disk either: one
    /// that starts in a sealed segment is handed back as
    /// [`ReadNow::FromDisk`], to run where waiting for the disk stalls no
    /// one (the protocol thread serves every connection).
    pub fn read_now(
        &self,
        name: &str,
        options: &ReadMessagesOptions,
    ) -> Result<ReadNow, StoreError> {
        let stream = self.get(name)?;
        match self.attempt(&stream, options)? {
            ReadAttempt::Ready(messages) => Ok(ReadNow::Ready(messages)),
            ReadAttempt::Sealed(read) => Ok(ReadNow::FromDisk(DiskRead { stream, read })),
            ReadAttempt::Short { start, available } if options.read_timeout_millis == 0 => {
                Err(StoreError::NotEnoughMessages {
                    start,
                    available,
                    min: options.min_message_count,
                })
            }
            ReadAttempt::Short { .. } => Ok(ReadNow::Wait),
        }
    }

    fn attempt(
        &self,
        stream: &Stream,
        options: &ReadMessagesOptions,
    ) -> Result<ReadAttempt, StoreError> {
        stream.try_read(options, self.now_millis(), self.limits.max_read_bytes, true)
    }

    /// A read that waits up to `readTimeoutMillis` for `minMessageCount`
    /// messages, and answers `NotEnoughMessages` when the time is up (never
    /// later: a late answer kills the Python client's read loop).
    pub async fn read(
        &self,
        name: &str,
        options: ReadMessagesOptions,
    ) -> Result<Vec<Message>, StoreError> {
        let stream = self.get(name)?;
        let timeout = Duration::from_millis(options.read_timeout_millis.max(0) as u64);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = stream.subscribe();
        loop {
            changed.borrow_and_update();
            let (start, available) = match self.attempt(&stream, &options)? {
                ReadAttempt::Ready(messages) => return Ok(messages),
                ReadAttempt::Sealed(read) => {
                    let read = DiskRead {
                        stream: Arc::clone(&stream),
                        read,
                    };
                    return read.run_blocking().await;
                }
                ReadAttempt::Short { start, available } => (start, available),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::NotEnoughMessages {
                    start,
                    available,
                    min: options.min_message_count,
                });
            }
            tokio::select! {
                // Err only if the sender is gone, and `stream` owns it: either
                // way the next attempt decides.
                _ = changed.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// A stream's segments as its log holds them (tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn segments(&self, name: &str) -> Result<Vec<log::SegmentInfo>, StoreError> {
        self.get(name)?.segments()
    }

    /// The streams now, without holding the registry lock while using them.
    fn all_streams(&self) -> Vec<Arc<Stream>> {
        self.streams
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }

    /// Applies TTL to every stream: with appends, the only place expired
    /// segments are removed (reads and describes only skip them). Run
    /// periodically, so idle streams shrink too. It waits for no disk: the
    /// segments' files are removed in the background (the stream's next
    /// append waits for that, off the protocol thread).
    pub fn enforce_retention(&self) {
        let streams = self.all_streams();
        let now = self.now_millis();
        for stream in streams {
            if let Err(e) = stream.enforce_retention(now) {
                tracing::warn!(stream = stream.name(), error = %e, "retention failed");
            }
        }
    }
}

/// The export progress saved for a stream being loaded. A progress file
/// that cannot be read is not a reason to lose the stream, nor to export
/// from `startSequenceNumber` silently: the exports start there again (so
/// nothing is lost; some messages may be sent twice) and say why in
/// describe's `errorMessage` and in the log.
fn load_export_progress(
    cursors: &export_cursor::CursorStore,
    definition: &MessageStreamDefinition,
) -> Cursors {
    match cursors.load(&definition.name) {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(
                stream = %definition.name,
                error = %e,
                "export progress cannot be read: exports start again from startSequenceNumber"
            );
            let message = format!(
                "export progress could not be read ({e}); exporting again from startSequenceNumber"
            );
            export_cursor::resume_all(&definition.export_definition, &Cursors::new())
                .into_iter()
                .map(|(id, cursor)| {
                    let cursor = export_cursor::CursorState {
                        error_message: Some(message.clone()),
                        ..cursor
                    };
                    (id, cursor)
                })
                .collect()
        }
    }
}
