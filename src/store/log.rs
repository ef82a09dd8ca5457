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

/// A storage failure below the stream layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A failed fsync: after one, the page cache can no longer be trusted to
    /// hold what was written (fsyncgate), so the stream stops taking writes.
    #[error("fsync failed: {0}")]
    Sync(std::io::Error),
}

impl StorageError {
    /// Whether this failure means the stream's files can no longer be
    /// trusted to hold what was written (a failed fsync of its data or of
    /// its folder), so the stream must stop taking writes.
    pub fn stops_writes(&self) -> bool {
        matches!(self, StorageError::Sync(_))
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
    /// Removes the oldest segment, which must be sealed.
    fn remove_oldest_segment(&mut self) -> Result<(), StorageError>;
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
    /// The file to fdatasync to make every append so far durable, for group
    /// commit outside the stream's lock; `None` when nothing is on disk or
    /// everything written is already synced (sealed segments are).
    fn sync_target(&self) -> Option<Arc<dyn FileHandle>> {
        None
    }
}
