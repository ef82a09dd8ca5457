//! The file log: a stream's messages in segment files (see [`mod@format`]).
//!
//! Invariants:
//! * a segment file exists only once its header is synced and its folder
//!   entry durable, so every segment file found at start-up had a valid
//!   header (anything else is reported and skipped);
//! * only the newest segment is ever written; older ones are sealed (synced,
//!   with an index footer) and only removed, oldest first, by retention;
//! * the next sequence number survives even when retention removes every
//!   message: removing the last segment first creates an empty one that
//!   starts at the next sequence number;
//! * an append either writes a whole record or cuts the file back.

pub mod format;
pub mod segment;

use super::fs::{FileHandle, FileSystem};
use super::log::{ReadLimits, SegmentInfo, SegmentLog, StorageError};
use crate::protocol::model::Message;
use bytes::Bytes;
use segment::Segment;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct FileLog {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    segments: VecDeque<Segment>,
    /// Sequence ranges whose segment file was unreadable at start-up.
    missing: Vec<(i64, i64)>,
    next_seq: i64,
    total_bytes: u64,
}

/// What start-up found in a stream's folder.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub segments: usize,
    pub truncated_bytes: u64,
    /// Files that are not weir's or could not be read, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl FileLog {
    /// A log for a new, empty stream folder.
    pub fn create(fs: Arc<dyn FileSystem>, dir: PathBuf) -> Self {
        FileLog {
            fs,
            dir,
            segments: VecDeque::new(),
            missing: Vec::new(),
            next_seq: 0,
            total_bytes: 0,
        }
    }

    /// Opens an existing stream folder, recovering its segments. Only the
    /// index footers of sealed segments and the tail of the newest are read.
    pub fn open(fs: Arc<dyn FileSystem>, dir: PathBuf) -> Result<(Self, OpenReport), StorageError> {
        let mut report = OpenReport::default();
        let mut firsts = Vec::new();
        let names = fs.list(&dir)?;
        for name in &names {
            match format::parse_name(name) {
                Some((first, "seg")) => firsts.push(first),
                Some((first, "idx")) if !names.contains(&format::segment_name(first)) => {
                    // An index whose segment retention already removed.
                    fs.remove_file(&dir.join(name))?;
                }
                Some((_, "idx")) => {}
                _ if name.ends_with(".tmp") => fs.remove_file(&dir.join(name))?,
                _ if name.starts_with("stream.") => {}
                _ => report
                    .skipped
                    .push((name.clone(), "not a file of weir's".into())),
            }
        }
        firsts.sort_unstable();
        let mut log = FileLog::create(fs, dir);
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let is_last = i + 1 == count;
            match segment::recover(&*log.fs, &log.dir, first, is_last) {
                Ok(recovered) => {
                    report.truncated_bytes += recovered.truncated;
                    let info = recovered.segment.info;
                    if let Some(prev) = log.segments.back() {
                        if info.first_sequence_number < prev.info.next_sequence_number {
                            report.skipped.push((
                                format::segment_name(first),
                                format!(
                                    "overlaps the segment before it (which ends at {})",
                                    prev.info.next_sequence_number - 1
                                ),
                            ));
                            continue;
                        }
                    }
                    if log.next_seq < info.first_sequence_number && !log.segments.is_empty() {
                        log.missing.push((log.next_seq, info.first_sequence_number));
                    }
                    log.next_seq = info.next_sequence_number;
                    log.total_bytes += info.bytes;
                    log.segments.push_back(recovered.segment);
                }
                Err(e) => report
                    .skipped
                    .push((format::segment_name(first), e.to_string())),
            }
        }
        // Appends never go to a segment recovered as damaged or skipped past.
        if let Some(last) = log.segments.back() {
            if last.info.sealed {
                tracing::debug!(dir = %log.dir.display(), "newest segment is sealed; the next append opens a new one");
            }
        }
        report.segments = log.segments.len();
        Ok((log, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn now_hint(&self) -> i64 {
        self.segments
            .back()
            .map_or(0, |s| s.info.newest_ingest_time)
    }
}

impl SegmentLog for FileLog {
    fn next_sequence_number(&self) -> i64 {
        self.next_seq
    }

    fn oldest_segment(&self) -> Option<SegmentInfo> {
        self.segments.front().map(|s| s.info)
    }

    fn segment_from(&self, seq: i64) -> Option<SegmentInfo> {
        let index = self
            .segments
            .partition_point(|s| s.info.next_sequence_number <= seq);
        self.segments.get(index).map(|s| s.info)
    }

    fn active_segment(&self) -> Option<SegmentInfo> {
        self.segments.back().map(|s| s.info).filter(|i| !i.sealed)
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn append(&mut self, ingest_time: i64, payload: Bytes) -> Result<i64, StorageError> {
        if self.active_segment().is_none() {
            let segment = Segment::create(&*self.fs, &self.dir, self.next_seq, ingest_time)?;
            self.segments.push_back(segment);
        }
        let seq = self.next_seq;
        let segment = self
            .segments
            .back_mut()
            .expect("an active segment was just ensured");
        let before = segment.info.bytes;
        segment.append(seq, ingest_time, &payload);
        self.total_bytes += segment.info.bytes - before;
        self.next_seq = seq + 1;
        Ok(seq)
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        let Some(segment) = self.segments.back_mut() else {
            return Ok(());
        };
        let before = segment.info.bytes;
        let result = segment.flush();
        // A failed write forgets the pending records; follow the segment.
        self.total_bytes -= before - segment.info.bytes;
        self.next_seq = segment.info.next_sequence_number;
        result
    }

    fn has_pending(&self) -> bool {
        self.segments.back().is_some_and(Segment::has_pending)
    }

    fn seal_active(&mut self) -> Result<(), StorageError> {
        match self.segments.back_mut() {
            Some(segment) => segment.seal(&*self.fs),
            None => Ok(()),
        }
    }

    fn remove_oldest_segment(&mut self) -> Result<(), StorageError> {
        let Some(oldest) = self.segments.front() else {
            return Ok(());
        };
        assert!(oldest.info.sealed, "retention removes sealed segments only");
        if self.segments.len() == 1 {
            // Keep a record of the next sequence number on disk.
            let now = self.now_hint();
            let empty = Segment::create(&*self.fs, &self.dir, self.next_seq, now)?;
            self.segments.push_back(empty);
        }
        let oldest = self.segments.pop_front().expect("checked above");
        self.total_bytes -= oldest.info.bytes;
        let first = oldest.info.first_sequence_number;
        self.missing.retain(|(_, end)| *end > first);
        oldest.remove(&*self.fs)
    }

    fn read(&self, from: i64, limits: ReadLimits) -> Result<Vec<Message>, StorageError> {
        let wanted_end = from.saturating_add(limits.max_count as i64);
        if let Some((start, end)) = self
            .missing
            .iter()
            .find(|(start, end)| from < *end && *start < wanted_end)
        {
            return Err(StorageError::Corrupt(format!(
                "messages {start} to {} were in a segment file that could not be read at start-up",
                end - 1
            )));
        }
        let first = self
            .segments
            .partition_point(|s| s.info.next_sequence_number <= from);
        let mut out = Vec::new();
        let mut bytes = 0;
        for segment in self.segments.range(first..) {
            let start = from.max(segment.info.first_sequence_number);
            if !segment.read(&*self.fs, start, limits, &mut out, &mut bytes)? {
                break;
            }
        }
        Ok(out)
    }

    fn sync_target(&self) -> Option<Arc<dyn FileHandle>> {
        self.segments
            .back()
            .filter(|s| !s.info.sealed)
            .map(Segment::sync_target)
    }
}
