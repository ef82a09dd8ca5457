//! The storage seam: what a stream needs from the place its messages live.
//!
//! A log is a run of segments, oldest first, each holding consecutive
//! sequence numbers; the newest one may be *active* (still appended to).
//! Retention ([`super::retention`]) decides, and the stream carries out, which
//! sealed segments leave; the log only does what it is told.
//! [`super::memory::MemoryLog`] keeps segments in memory;
//! [`super::file::FileLog`] keeps them in segment files.

use super::fs::FileHandle;
use crate::protocol::model::Message;
use bytes::Bytes;
use std::sync::Arc;

/// Bytes a record costs on top of its payload, counted against `maxSize`
/// and in `totalBytes` whatever the persistence: the file log's record header
/// (length, CRC32C, sequence number, ingest time).
pub const RECORD_OVERHEAD: u64 = 4 + 4 + 8 + 8;

/// Disk work an append has to wait for ([`SegmentLog::disk_work`]), to run
/// where waiting stalls no one and without the stream's lock.
pub type DiskWork = Box<dyn FnOnce() -> Result<(), StorageError> + Send>;

/// How much one read may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    pub max_count: usize,
    /// Budget in bytes of the answer's messages, as [`ReadLimits::cost`]
    /// counts them; at least one message is returned whatever its size.
    pub max_bytes: usize,
    /// Length of the stream's name, which the answer repeats in every
    /// message.
    pub name_len: usize,
}

impl ReadLimits {
    /// What a message costs against the byte budget: an upper bound of its
    /// encoding in the answer (payload, stream name, the keys and integers
    /// around them), so many tiny messages cannot make an answer larger
    /// than the budget says.
    pub fn cost(&self, payload_len: usize) -> usize {
        crate::protocol::response::message_encoded_bound(self.name_len, payload_len)
    }
}

/// What retention needs to know of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub first_sequence_number: i64,
    /// One past the last sequence number in the segment.
    pub next_sequence_number: i64,
    /// Payloads plus [`RECORD_OVERHEAD`] per message.
    pub bytes: u64,
    /// Ingest time of the segment's newest message.
    pub newest_ingest_time: i64,
    pub sealed: bool,
}

/// The storage operation a failure happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageOp {
    /// Preparing the store's folders at start-up.
    OpenStore,
    /// Making a new stream's folder and definition.
    CreateStream,
    /// Writing a stream's definition (`stream.cbor`).
    WriteDefinition,
    /// Deleting a stream's folder.
    DeleteStream,
    /// Reading a stream's folder at start-up.
    LoadStream,
    /// Recovering a segment at start-up.
    RecoverSegment,
    /// Making a new segment file.
    CreateSegment,
    /// Writing appended records.
    WriteRecords,
    /// Syncing a segment and writing its sealed index.
    SealSegment,
    /// Removing a segment (retention).
    RemoveSegment,
    /// Reading a segment's records.
    ReadSegment,
    /// Writing the sequence floor (the durable lower bound of the next
    /// sequence number).
    WriteFloor,
    /// Mapping memory for a `Memory` stream's records.
    MapMemory,
    /// Reading a stream's export cursors ([`super::export_cursor`]).
    ReadExportCursor,
    /// Writing or removing a stream's export cursors.
    WriteExportCursor,
}

impl std::fmt::Display for StorageOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageOp::OpenStore => "opening the store",
            StorageOp::CreateStream => "creating the stream",
            StorageOp::WriteDefinition => "writing the stream definition",
            StorageOp::DeleteStream => "deleting the stream",
            StorageOp::LoadStream => "loading the stream",
            StorageOp::RecoverSegment => "recovering a segment",
            StorageOp::CreateSegment => "creating a segment",
            StorageOp::WriteRecords => "writing messages",
            StorageOp::SealSegment => "sealing a segment",
            StorageOp::RemoveSegment => "removing a segment",
            StorageOp::ReadSegment => "reading a segment",
            StorageOp::WriteFloor => "writing the sequence floor",
            StorageOp::MapMemory => "mapping memory for messages",
            StorageOp::ReadExportCursor => "reading the export cursors",
            StorageOp::WriteExportCursor => "writing the export cursors",
        })
    }
}

/// A storage failure below the stream layer. I/O failures keep their
/// `io::Error` (and so its kind) and say which operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{op}: {source}")]
    Io {
        op: StorageOp,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A failed fsync (`sync_data` of a file or `sync_dir` of a folder):
    /// after one, the page cache can no longer be trusted to hold what was
    /// written (fsyncgate).
    #[error("{op}: fsync failed: {source}")]
    Sync {
        op: StorageOp,
        #[source]
        source: std::io::Error,
    },
    /// A write failed and cutting the file back to before it failed too,
    /// so the file may end in a partial record.
    #[error("{op}: {write}; cutting back the partial write failed too: {cut}")]
    CutBack {
        op: StorageOp,
        write: std::io::Error,
        cut: std::io::Error,
    },
}

impl StorageError {
    /// Whether this failure means the stream's files can no longer be
    /// trusted to hold what was written (a failed fsync of its data or of
    /// its folder, or a partial write that could not be cut back), so the
    /// stream must stop taking writes.
    pub fn stops_writes(&self) -> bool {
        matches!(
            self,
            StorageError::Sync { .. } | StorageError::CutBack { .. }
        )
    }

    /// Whether a file was not there: what a detached read
    /// ([`SealedRead::read`]) reports when retention removed a segment it
    /// was about to read.
    pub fn is_not_found(&self) -> bool {
        self.io_error()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    }

    /// The `io::Error` underneath, if any.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            StorageError::Io { source, .. } | StorageError::Sync { source, .. } => Some(source),
            StorageError::CutBack { write, .. } => Some(write),
            StorageError::Corrupt(_) => None,
        }
    }
}

/// Names the operation an `io::Result` belongs to.
pub trait IoContext<T> {
    /// A failure of `op` other than an fsync.
    fn during(self, op: StorageOp) -> Result<T, StorageError>;
    /// A failed fsync (`sync_data`, `sync_dir`) of `op`.
    fn syncing(self, op: StorageOp) -> Result<T, StorageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn during(self, op: StorageOp) -> Result<T, StorageError> {
        self.map_err(|source| StorageError::Io { op, source })
    }
    fn syncing(self, op: StorageOp) -> Result<T, StorageError> {
        self.map_err(|source| StorageError::Sync { op, source })
    }
}

pub trait SegmentLog: Send {
    /// The sequence number the next append gets.
    fn next_sequence_number(&self) -> i64;
    /// The oldest retained segment.
    fn oldest_segment(&self) -> Option<SegmentInfo>;
    /// The first retained segment that holds `seq` or starts after it:
    /// reads and describes walk past expired segments with it, without
    /// removing them.
    fn segment_from(&self, seq: i64) -> Option<SegmentInfo>;
    /// The segment appends go to, if one is open.
    fn active_segment(&self) -> Option<SegmentInfo>;
    /// Sum of the segments' bytes.
    fn total_bytes(&self) -> u64;
    /// Appends to the active segment, opening one if none is; returns the
    /// message's sequence number. The record may wait in memory until
    /// [`SegmentLog::flush`]; reads and syncs come after a flush.
    fn append(&mut self, ingest_time: i64, payload: Bytes) -> Result<i64, StorageError>;
    /// Closes the active segment to appends.
    fn seal_active(&mut self) -> Result<(), StorageError>;
    /// Removes the oldest segment, which must be sealed. The log forgets it
    /// at once; removing its files may go on in the background, and the
    /// next append waits for that ([`SegmentLog::disk_work`]).
    fn remove_oldest_segment(&mut self) -> Result<(), StorageError>;
    /// What the next append would wait on the disk for (a new segment and
    /// no spare file ready for it, a removal not yet durable, the sequence
    /// floor to raise), as work to
    /// run off the stream's lock, after which the caller asks again; `None`
    /// when an append waits for nothing. Takes in what finished background
    /// work did first: a failed step's error.
    fn disk_work(&mut self) -> Result<Option<DiskWork>, StorageError> {
        Ok(None)
    }
    /// Up to `limits.max_count` consecutive messages from `from` (which the
    /// caller has clamped to the retained range), stopping before
    /// `limits.max_bytes` of [`ReadLimits::cost`] would be exceeded (at
    /// least one message is returned if any).
    fn read(&self, from: i64, limits: ReadLimits) -> Result<Vec<Message>, StorageError>;
    /// Writes appended records to the operating system. On failure the
    /// records appended since the last flush are forgotten (the next
    /// sequence number goes back), and the error says why.
    fn flush(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    /// Whether appended records wait for a flush.
    fn has_pending(&self) -> bool {
        false
    }
    /// The messages from `from` on that are in sealed segments, as a reader
    /// that needs neither the log nor the stream's lock (sealed segments
    /// never change), so a read of old messages can wait on the disk on
    /// another thread while appends go on; `None` if `from` is not in a
    /// sealed segment (or nothing is on disk).
    fn sealed_reader(&self, _from: i64) -> Option<Box<dyn SealedRead>> {
        None
    }
    /// The messages in `[from, end)`, which the caller knows to be written
    /// (not waiting for a flush), as a reader detached like
    /// [`SegmentLog::sealed_reader`]'s but reaching into the active segment
    /// as far as it is written: the exporter reads what is durable without
    /// flushing appends that wait, and without the stream's lock. `None`
    /// when nothing is on disk (the caller reads the log instead, which
    /// then has nothing waiting either).
    fn written_reader(&self, _from: i64, _end: i64) -> Option<Box<dyn SealedRead>> {
        None
    }
    /// The file to fdatasync to make every append so far durable, for group
    /// commit outside the stream's lock; `None` when nothing is on disk or
    /// everything written is already synced (sealed segments are).
    fn sync_target(&self) -> Option<Arc<dyn FileHandle>> {
        None
    }
}

/// A read of sealed segments detached from their log
/// ([`SegmentLog::sealed_reader`]).
pub trait SealedRead: Send {
    /// One past the last sequence number it can read.
    fn end(&self) -> i64;
    /// As [`SegmentLog::read`], from `from` up to [`SealedRead::end`]. If
    /// retention removed a segment meanwhile, the error is an I/O error of
    /// kind `NotFound`.
    fn read(&self, from: i64, limits: ReadLimits) -> Result<Vec<Message>, StorageError>;
}
