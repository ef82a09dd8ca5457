//! The file log: a stream's messages in segment files (see [`mod@format`]),
//! recovered at start-up as [`recovery`] says.
//!
//! Invariants:
//! * a segment file exists only once its header is synced and its folder
//!   entry durable, so every segment file found at start-up had a valid
//!   header (anything else is reported and skipped);
//! * no file is ever created over an existing segment file: one recovery
//!   skipped stays as it was;
//! * only the newest segment is ever written; older ones are sealed (synced,
//!   with an index footer) and only removed, oldest first, by retention
//!   (the removal made durable before it is forgotten);
//! * no sequence number is given out twice: every number given out is below
//!   the durable sequence floor ([`format::FLOOR_FILE`]), and after a
//!   skipped newest segment numbering continues at the floor; when
//!   retention removes every message, an empty segment that starts at the
//!   next sequence number is created first;
//! * an append either writes a whole record or cuts the file back.

pub mod format;
pub mod recovery;
pub mod segment;

use super::fs::{self, FileHandle, FileSystem};
use super::log::{
    IoContext, ReadLimits, SegmentInfo, SegmentLog, StorageError, StorageOp, RECORD_OVERHEAD,
};
use crate::protocol::model::Message;
use bytes::Bytes;
use recovery::{Damage, Finding, RecoveryMode};
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
    /// Every sequence number given out is below this; it is on disk.
    floor: i64,
    total_bytes: u64,
}

/// What start-up found in a stream's folder.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub segments: usize,
    pub truncated_bytes: u64,
    /// What was damaged or left over, and what recovery did about it.
    pub findings: Vec<Finding>,
}

/// A segment file recovery could not use.
struct Skipped {
    first: i64,
    /// How many records it can hold at most, when its size is known.
    max_records: Option<i64>,
}

impl FileLog {
    /// A log for a new, empty stream folder; its sequence floor is written
    /// before this returns.
    pub fn create(fs: Arc<dyn FileSystem>, dir: PathBuf) -> Result<Self, StorageError> {
        let mut log = FileLog::empty(fs, dir);
        log.raise_floor(0)?;
        Ok(log)
    }

    fn empty(fs: Arc<dyn FileSystem>, dir: PathBuf) -> Self {
        FileLog {
            fs,
            dir,
            segments: VecDeque::new(),
            missing: Vec::new(),
            next_seq: 0,
            floor: 0,
            total_bytes: 0,
        }
    }

    /// Opens an existing stream folder, recovering its segments as `mode`
    /// says (see [`recovery`]). Only the index footers of sealed segments
    /// and the tail of the newest are read. Before this returns, the newest
    /// segment and the folder are synced: what a crashed process wrote but
    /// had not synced is durable from now on.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        mode: RecoveryMode,
    ) -> Result<(Self, OpenReport), StorageError> {
        let op = StorageOp::LoadStream;
        let mut report = OpenReport::default();
        let mut firsts = Vec::new();
        let names = fs.list(&dir).during(op)?;
        let mut log = FileLog::empty(fs, dir);
        for name in &names {
            let path = log.dir.join(name);
            match format::parse_name(name) {
                Some((first, "seg")) => firsts.push(first),
                Some((first, "idx")) if !names.contains(&format::segment_name(first)) => {
                    // An index whose segment retention already removed.
                    segment::found(mode, &mut report.findings, &path, Damage::OrphanIndex)?;
                    log.fs.remove_file(&path).during(op)?;
                }
                Some((_, "idx")) => {}
                _ if name.ends_with(".tmp") => {
                    segment::found(mode, &mut report.findings, &path, Damage::TempFile)?;
                    log.fs.remove_file(&path).during(op)?;
                }
                _ if name == format::FLOOR_FILE => {
                    match fs::read_file(&*log.fs, &path)
                        .map_err(|e| e.to_string())
                        .and_then(|b| format::decode_floor(&b))
                    {
                        Ok(floor) => log.floor = floor,
                        Err(reason) => {
                            let damage = Damage::UnreadableFloor { reason };
                            segment::found(mode, &mut report.findings, &path, damage)?;
                        }
                    }
                }
                _ if name.starts_with("stream.") => {}
                _ => {
                    segment::found(mode, &mut report.findings, &path, Damage::ForeignFile)?;
                }
            }
        }
        firsts.sort_unstable();
        let count = firsts.len();
        let mut skipped = Vec::new();
        for (i, first) in firsts.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let path = log.dir.join(format::segment_name(first));
            let recovered = segment::recover(
                &*log.fs,
                &log.dir,
                first,
                is_last,
                mode,
                &mut report.findings,
            );
            match recovered {
                Ok(recovered) => {
                    report.truncated_bytes += recovered.truncated;
                    let info = recovered.segment.info;
                    if let Some(prev) = log.segments.back() {
                        if info.first_sequence_number < prev.info.next_sequence_number {
                            let damage = Damage::OverlappingSegment {
                                previous_end: prev.info.next_sequence_number - 1,
                            };
                            segment::found(mode, &mut report.findings, &path, damage)?;
                            skipped.push(Skipped {
                                first,
                                max_records: Some(info.next_sequence_number - first),
                            });
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
                Err(e) if e.stops_writes() => return Err(e),
                // Under a strict mode, `found` refuses the whole stream.
                Err(e) => {
                    segment::found(mode, &mut report.findings, &path, damage_of(&e))?;
                    skipped.push(Skipped {
                        first,
                        max_records: max_records(&*log.fs, &path),
                    });
                }
            }
        }
        log.continue_after(&skipped);
        // What a crashed process wrote is synced before anything new is
        // promised; the folder's entries (segments, removals) likewise.
        if let Some(newest) = log.segments.back().filter(|s| !s.info.sealed) {
            newest
                .sync_target()
                .sync_data()
                .syncing(StorageOp::RecoverSegment)?;
        }
        log.fs.sync_dir(&log.dir).syncing(op)?;
        report.segments = log.segments.len();
        Ok((log, report))
    }

    /// After segment files that could not be read: if any lies past the
    /// last segment recovered, its numbers may have been given out, so
    /// numbering continues at the floor (or, without a floor that covers
    /// it, past all it could hold), and reads of the range fail.
    fn continue_after(&mut self, skipped: &[Skipped]) {
        let last_first = self.segments.back().map(|s| s.info.first_sequence_number);
        let mut next = self.next_seq;
        for s in skipped {
            if last_first.is_some_and(|last| s.first < last) {
                continue;
            }
            let mut past = s.first + 1;
            if self.floor > s.first {
                past = past.max(self.floor);
            } else {
                // No floor covers it (a store from before the floor, or a
                // floor that could not be read): assume a whole lease.
                past = past.max(s.first.saturating_add(format::FLOOR_LEASE));
            }
            if let Some(records) = s.max_records {
                past = past.max(s.first.saturating_add(records).saturating_add(1));
            }
            next = next.max(past);
        }
        if next > self.next_seq {
            tracing::warn!(dir = %self.dir.display(), from = self.next_seq, to = next, "sequence numbers continue past a segment that could not be read");
            if !self.segments.is_empty() {
                self.missing.push((self.next_seq, next));
            }
            self.next_seq = next;
        }
    }

    /// Makes sure `seq` may be given out: below the durable floor.
    fn raise_floor(&mut self, seq: i64) -> Result<(), StorageError> {
        if seq < self.floor {
            return Ok(());
        }
        let floor = seq.saturating_add(format::FLOOR_LEASE);
        let path = self.dir.join(format::FLOOR_FILE);
        fs::write_atomically(
            &*self.fs,
            &path,
            &format::encode_floor(floor),
            StorageOp::WriteFloor,
        )?;
        self.floor = floor;
        Ok(())
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

/// How recovery names a segment it could not use.
fn damage_of(e: &StorageError) -> Damage {
    Damage::UnreadableSegment {
        reason: e.to_string(),
    }
}

/// The most records a segment file can hold, from its size, if that can be
/// learned (its header counts for nothing).
fn max_records(fs: &dyn FileSystem, path: &Path) -> Option<i64> {
    let size = match fs.open(path).and_then(|f| f.size()) {
        Ok(size) => size,
        // Unknown: the floor (or a whole lease) bounds it instead.
        Err(_) => return None,
    };
    i64::try_from(size / RECORD_OVERHEAD).ok()
}

impl SegmentLog for FileLog {
    fn next_sequence_number(&self) -> i64 {
        self.next_seq
    }

    fn oldest_segment(&self) -> Option<SegmentInfo> {
        self.segments.front().map(|s| s.info)
    }

    fn active_segment(&self) -> Option<SegmentInfo> {
        self.segments.back().map(|s| s.info).filter(|i| !i.sealed)
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn append(&mut self, ingest_time: i64, payload: Bytes) -> Result<i64, StorageError> {
        self.raise_floor(self.next_seq)?;
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
        oldest.remove(&*self.fs)?;
        // Durable before the space is reused: a power cut brings no removed
        // segment back beside newer ones.
        self.fs
            .sync_dir(&self.dir)
            .syncing(StorageOp::RemoveSegment)
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

#[cfg(test)]
mod tests {
    use super::recovery::{Damage, RecoveryMode, Remedy};
    use super::*;
    use crate::store::simfs::SimulatedFs;

    fn dir() -> PathBuf {
        PathBuf::from("/s")
    }

    fn new_log(fs: &SimulatedFs) -> FileLog {
        fs.create_dir_all(&dir()).unwrap();
        FileLog::create(Arc::new(fs.clone()), dir()).unwrap()
    }

    fn reopen(fs: &SimulatedFs, mode: RecoveryMode) -> Result<(FileLog, OpenReport), StorageError> {
        FileLog::open(Arc::new(fs.clone()), dir(), mode)
    }

    fn append(log: &mut FileLog, n: usize) {
        for _ in 0..n {
            log.append(1, Bytes::from_static(b"message")).unwrap();
        }
        log.flush().unwrap();
    }

    /// `result` failed in an fsync of `op`, which stops the stream's writes,
    /// keeping the OS error.
    #[track_caller]
    fn assert_failed_sync<T>(result: Result<T, StorageError>, expected: StorageOp) {
        match result {
            Err(e @ StorageError::Sync { .. }) => {
                assert!(e.stops_writes(), "{e}");
                let StorageError::Sync { op, source } = e else {
                    unreachable!()
                };
                assert_eq!(op, expected);
                assert_eq!(source.raw_os_error(), Some(5), "the EIO is kept");
            }
            Err(e) => panic!("not a failed sync: {e:?}"),
            Ok(_) => panic!("did not fail"),
        }
    }

    #[test]
    fn failed_fsyncs_of_every_log_step_stop_writes_and_say_which_step() {
        // The stream's first floor.
        let fs = SimulatedFs::new();
        fs.create_dir_all(&dir()).unwrap();
        fs.set_fail_sync(true);
        assert_failed_sync(
            FileLog::create(Arc::new(fs.clone()), dir()),
            StorageOp::WriteFloor,
        );
        // A new segment.
        let fs = SimulatedFs::new();
        let mut log = new_log(&fs);
        fs.set_fail_sync(true);
        assert_failed_sync(
            log.append(1, Bytes::from_static(b"m")),
            StorageOp::CreateSegment,
        );
        // A floor raised when appends reach it.
        fs.set_fail_sync(false);
        append(&mut log, 1);
        log.floor = log.next_seq;
        fs.set_fail_sync(true);
        assert_failed_sync(
            log.append(1, Bytes::from_static(b"m")),
            StorageOp::WriteFloor,
        );
        // Sealing.
        assert_failed_sync(log.seal_active(), StorageOp::SealSegment);
        // Retention: the empty segment kept for the next number, and the
        // folder sync after a removal.
        fs.set_fail_sync(false);
        log.seal_active().unwrap();
        fs.set_fail_sync(true);
        assert_failed_sync(log.remove_oldest_segment(), StorageOp::CreateSegment);
        fs.set_fail_sync(false);
        append(&mut log, 1);
        log.seal_active().unwrap();
        append(&mut log, 1);
        fs.set_fail_sync(true);
        assert_failed_sync(log.remove_oldest_segment(), StorageOp::RemoveSegment);
    }

    #[test]
    fn a_failed_write_that_cannot_be_cut_back_stops_writes() {
        let fs = SimulatedFs::new();
        let mut log = new_log(&fs);
        append(&mut log, 1);
        fs.set_space_left(Some(10));
        log.append(1, Bytes::from_static(b"does not fit")).unwrap();
        let failed = log.flush();
        assert!(
            matches!(&failed, Err(e @ StorageError::Io { op: StorageOp::WriteRecords, .. }) if !e.stops_writes()),
            "a failed write alone is cut back: {failed:?}"
        );
        fs.set_fail_set_len(true);
        log.append(1, Bytes::from_static(b"does not fit")).unwrap();
        match log.flush() {
            Err(e @ StorageError::CutBack { .. }) => {
                assert!(e.stops_writes());
                assert_eq!(
                    e.io_error().unwrap().raw_os_error(),
                    Some(28),
                    "ENOSPC kept"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failed_fsyncs_in_recovery_stop_writes() {
        let fs = SimulatedFs::new();
        let mut log = new_log(&fs);
        append(&mut log, 3);
        // The newest segment's unsynced tail.
        fs.set_fail_sync(true);
        assert_failed_sync(
            reopen(&fs, RecoveryMode::default()),
            StorageOp::RecoverSegment,
        );
        // A torn tail's cut.
        let segment = dir().join(format::segment_name(0));
        let bytes = fs.contents(&segment).unwrap();
        fs.put(&segment, &bytes[..bytes.len() - 2]);
        assert_failed_sync(
            reopen(&fs, RecoveryMode::default()),
            StorageOp::RecoverSegment,
        );
        // An older segment never sealed (its sealed index lost) is sealed
        // at start-up.
        fs.set_fail_sync(false);
        let mut log = reopen(&fs, RecoveryMode::default()).unwrap().0;
        log.seal_active().unwrap();
        let mut next = FileLog::empty(Arc::new(fs.clone()), dir());
        next.floor = i64::MAX;
        next.next_seq = log.next_seq;
        next.append(1, Bytes::from_static(b"m")).unwrap();
        next.flush().unwrap();
        fs.put(&dir().join(format::index_name(0)), b"");
        fs.set_fail_sync(true);
        assert_failed_sync(reopen(&fs, RecoveryMode::default()), StorageOp::SealSegment);
    }

    #[test]
    fn a_strict_recovery_mode_refuses_damage_the_tolerant_one_marks() {
        let fs = SimulatedFs::new();
        let mut log = new_log(&fs);
        append(&mut log, 3);
        log.seal_active().unwrap();
        append(&mut log, 1);
        // The second record of the sealed segment fails its checksum.
        let segment = dir().join(format::segment_name(0));
        let record = format::RECORD_HEADER_LEN + 7;
        fs.flip_bit(&segment, 32 + record + 25, 0);
        fs.put(&dir().join(format::index_name(0)), b"");
        let (log, report) = reopen(&fs, RecoveryMode::TolerateAnyCorruption).unwrap();
        assert!(report
            .findings
            .iter()
            .any(|f| f.damage == Damage::DamagedRecords { from: 1, to: 2 }
                && f.remedy == Remedy::MarkDamaged));
        assert!(log.read(1, limits(1)).is_err());
        assert_eq!(log.read(2, limits(2)).unwrap().len(), 2);
        drop(log);
        assert!(matches!(
            reopen(&fs, RecoveryMode::TolerateTailCorruption),
            Err(StorageError::Corrupt(_))
        ));
    }

    fn limits(max_count: usize) -> ReadLimits {
        ReadLimits {
            max_count,
            max_bytes: 1 << 20,
            name_len: 1,
        }
    }
}
