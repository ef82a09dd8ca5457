//! One segment file and its sparse index.

use super::background::{Gate, Step};
use super::format::{
    self, IndexEntry, RecordHeader, SealedSummary, INDEX_ENTRY_LEN, INDEX_INTERVAL, MAX_PAYLOAD,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::recovery::{Damage, Finding, RecoveryMode, Remedy};
use crate::protocol::model::Message;
use crate::store::fs::{self, FileHandle, FileSystem};
use crate::store::log::{IoContext, ReadLimits, SegmentInfo, StorageError, StorageOp};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Segment {
    pub info: SegmentInfo,
    path: PathBuf,
    index_path: PathBuf,
    /// Open while the segment is written. A sealed segment opens its file
    /// for each read instead, so a store of many segments does not hold a
    /// descriptor per segment.
    file: Option<Arc<dyn FileHandle>>,
    /// Appended to while the segment is active; `None` once sealed.
    index_file: Option<Arc<dyn FileHandle>>,
    /// Shared with [`SegmentReader`]s once the segment is sealed (an active
    /// segment's is not shared, so adding to it copies nothing).
    index: Arc<Vec<IndexEntry>>,
    /// Record bytes at the last index entry.
    indexed_at: u64,
    /// Records that failed their checksum when the segment was recovered
    /// (first seq of the damage, first readable seq after it).
    damaged: Arc<Vec<(i64, i64)>>,
    /// Records appended but not yet written to the file: appends arriving
    /// together are written with one call ([`Segment::flush`]).
    pending: Vec<u8>,
    /// Record bytes in the file (`info.bytes` minus `pending`).
    written: u64,
    /// Index entries already in the active index file.
    index_written: usize,
    /// The state before the first pending record, restored if writing fails.
    undo: Option<Undo>,
    /// The seal (fsync, sealed index) running off the append path; the
    /// file stays open for reads until it is done.
    seal_step: Option<Arc<Step>>,
    /// For a segment switched to from a spare: the rename to its name and
    /// the folder's sync, after the segment before it is synced.
    name_step: Option<Arc<Step>>,
}

#[derive(Clone, Copy)]
struct Undo {
    info: SegmentInfo,
    index_len: usize,
    indexed_at: u64,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("{}: {what}", path.display()))
}

impl Segment {
    /// Creates an empty active segment whose first record will be
    /// `first_seq`. The header is synced and the folder entry made durable
    /// before this returns, so a segment file that exists is a valid one.
    /// A file already there under the segment's name (one recovery could
    /// not read) is never replaced: that fails.
    pub fn create(
        fs: &dyn FileSystem,
        dir: &Path,
        first_seq: i64,
        now_millis: i64,
    ) -> Result<Segment, StorageError> {
        let op = StorageOp::CreateSegment;
        let path = dir.join(format::segment_name(first_seq));
        let index_path = dir.join(format::index_name(first_seq));
        match fs.open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(_) => {
                return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists)).during(op)
            }
            Err(e) => return Err(e).during(op),
        }
        // Header written under a temporary name and renamed: a segment file
        // never exists without a whole, synced header (a full disk cannot
        // leave an empty one behind).
        fs::write_atomically(fs, &path, &format::encode_segment_header(first_seq), op)?;
        let file = fs.open(&path).during(op)?;
        let index_file = fs.create(&index_path).during(op)?;
        let info = SegmentInfo {
            first_sequence_number: first_seq,
            next_sequence_number: first_seq,
            bytes: 0,
            newest_ingest_time: now_millis,
            sealed: false,
        };
        Ok(Segment::with_written(
            info,
            path,
            file,
            Some(index_file),
            Vec::new(),
            Vec::new(),
        ))
    }

    /// A segment whose records (`info.bytes` of them) are all in the file.
    fn with_written(
        info: SegmentInfo,
        path: PathBuf,
        file: Arc<dyn FileHandle>,
        index_file: Option<Arc<dyn FileHandle>>,
        index: Vec<IndexEntry>,
        damaged: Vec<(i64, i64)>,
    ) -> Segment {
        let index_path = path.with_extension("idx");
        let indexed_at = index
            .last()
            .map_or(0, |e| e.offset.saturating_sub(SEGMENT_HEADER_LEN));
        Segment {
            written: info.bytes,
            info,
            path,
            index_path,
            file: (!info.sealed).then_some(file),
            index_file,
            index_written: index.len(),
            index: Arc::new(index),
            indexed_at,
            damaged: Arc::new(damaged),
            pending: Vec::new(),
            undo: None,
            seal_step: None,
            name_step: None,
        }
    }

    /// An empty active segment in a spare file whose header already says
    /// `info.first_sequence_number`; `name_step` gives it its name.
    pub fn from_spare(
        info: SegmentInfo,
        path: PathBuf,
        file: Arc<dyn FileHandle>,
        name_step: Arc<Step>,
    ) -> Segment {
        let mut segment = Segment::with_written(info, path, file, None, Vec::new(), Vec::new());
        segment.name_step = Some(name_step);
        segment
    }

    /// Closes the segment to appends and returns its seal as a step to run
    /// off the append path (`None` if it is sealed already). Until the
    /// step is done the segment is read through its open file.
    pub fn begin_seal(
        &mut self,
        fs: Arc<dyn FileSystem>,
        gate: Arc<Gate>,
    ) -> Result<Option<Arc<Step>>, StorageError> {
        if self.info.sealed {
            return Ok(None);
        }
        self.flush()?;
        let file = Arc::clone(
            self.file
                .as_ref()
                .expect("an active segment has its file open"),
        );
        let summary = SealedSummary {
            next_seq: self.info.next_sequence_number,
            bytes: self.info.bytes,
            newest_ingest_time: self.info.newest_ingest_time,
        };
        let index = format::encode_sealed_index(&self.index, summary);
        let index_path = self.index_path.clone();
        let step = Step::new(Box::new(move || {
            let op = StorageOp::SealSegment;
            let Some(_folder) = gate.enter() else {
                return Ok(()); // the stream is deleted
            };
            file.sync_data().syncing(op)?;
            fs::write_atomically(&*fs, &index_path, &index, op)
        }));
        self.info.sealed = true;
        self.index_file = None;
        self.pending = Vec::new();
        self.seal_step = Some(Arc::clone(&step));
        Ok(Some(step))
    }

    /// Steps of this segment not known done, in the order they must run.
    pub fn steps(&self) -> impl Iterator<Item = &Arc<Step>> {
        self.name_step
            .iter()
            .chain(self.seal_step.iter())
            .filter(|s| s.outcome().is_none())
    }

    /// Takes in what finished steps did; a failed step's error.
    pub fn settle(&mut self) -> Result<(), StorageError> {
        if let Some(outcome) = self.name_step.as_ref().and_then(|s| settled(s)) {
            outcome?;
            self.name_step = None;
        }
        if let Some(outcome) = self.seal_step.as_ref().and_then(|s| settled(s)) {
            outcome?;
            self.seal_step = None;
            // Sealed: reads open the file each time.
            self.file = None;
        }
        Ok(())
    }

    pub fn sync_target(&self) -> Arc<dyn FileHandle> {
        Arc::clone(self.file.as_ref().expect("only an open segment is synced"))
    }

    /// Adds one record after the others. Nothing is written until
    /// [`Segment::flush`].
    pub fn append(&mut self, seq: i64, ingest_time: i64, payload: &[u8]) {
        debug_assert_eq!(seq, self.info.next_sequence_number);
        if self.pending.is_empty() {
            self.undo = Some(Undo {
                info: self.info,
                index_len: self.index.len(),
                indexed_at: self.indexed_at,
            });
        }
        let offset = SEGMENT_HEADER_LEN + self.info.bytes;
        let before = self.pending.len();
        format::encode_record(seq, ingest_time, payload, &mut self.pending);
        if self.index.is_empty() || self.info.bytes - self.indexed_at >= INDEX_INTERVAL {
            Arc::make_mut(&mut self.index).push(IndexEntry {
                seq,
                offset,
                ingest_time,
            });
            self.indexed_at = self.info.bytes;
        }
        self.info.bytes += (self.pending.len() - before) as u64;
        self.info.next_sequence_number = seq + 1;
        self.info.newest_ingest_time = self.info.newest_ingest_time.max(ingest_time);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the pending records with one call. If that fails, the file is
    /// cut back to where it was and the segment forgets them, as if they
    /// had never been appended: no partial record is left behind.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let offset = SEGMENT_HEADER_LEN + self.written;
        let file = self
            .file
            .as_ref()
            .expect("a segment with pending records is open");
        if let Err(e) = file.write_all_at(&self.pending, offset) {
            let undo = self
                .undo
                .take()
                .expect("pending records have an undo point");
            self.info = undo.info;
            Arc::make_mut(&mut self.index).truncate(undo.index_len);
            self.index_written = self.index_written.min(undo.index_len);
            self.indexed_at = undo.indexed_at;
            self.pending.clear();
            if let Err(cut) = file.set_len(offset) {
                // The file may now end in a partial record; recovery would
                // cut it, but this process cannot trust the file any more.
                return Err(StorageError::CutBack {
                    op: StorageOp::WriteRecords,
                    write: e,
                    cut,
                });
            }
            return Err(e).during(StorageOp::WriteRecords);
        }
        self.written += self.pending.len() as u64;
        self.pending.clear();
        if self.pending.capacity() > PENDING_KEPT {
            // A large append's buffer is not kept for the next small ones.
            self.pending = Vec::new();
        }
        self.undo = None;
        if let Some(index_file) = &self.index_file {
            // The active index is a hint, checked record by record at
            // recovery; losing it costs a longer scan, never data.
            let new: Vec<u8> = self.index[self.index_written..]
                .iter()
                .flat_map(IndexEntry::encode)
                .collect();
            let at = (self.index_written * INDEX_ENTRY_LEN) as u64;
            match index_file.write_all_at(&new, at) {
                Ok(()) => self.index_written = self.index.len(),
                Err(e) => {
                    tracing::debug!(error = %e, path = %self.index_path.display(), "index hint not written")
                }
            }
        }
        Ok(())
    }

    /// Syncs the segment and writes its sealed index (atomically), after
    /// which it is never written again.
    pub fn seal(&mut self, fs: &dyn FileSystem) -> Result<(), StorageError> {
        if self.info.sealed {
            return Ok(());
        }
        self.flush()?;
        let op = StorageOp::SealSegment;
        if let Some(file) = &self.file {
            file.sync_data().syncing(op)?;
        }
        let summary = SealedSummary {
            next_seq: self.info.next_sequence_number,
            bytes: self.info.bytes,
            newest_ingest_time: self.info.newest_ingest_time,
        };
        fs::write_atomically(
            fs,
            &self.index_path,
            &format::encode_sealed_index(&self.index, summary),
            op,
        )?;
        self.index_file = None;
        self.file = None;
        self.info.sealed = true;
        // A sealed segment is never appended to again.
        self.pending = Vec::new();
        Ok(())
    }

    /// Its files, for [`remove_files`].
    pub fn paths(&self) -> SegmentPaths {
        SegmentPaths {
            segment: self.path.clone(),
            index: self.index_path.clone(),
        }
    }

    /// Its written records, borrowed (what a read looks at; reads follow a
    /// flush, so none waits in `pending`).
    pub fn records(&self) -> Records<'_> {
        Records {
            info: self.info,
            path: &self.path,
            file: self.file.as_ref(),
            index: &self.index,
            damaged: &self.damaged,
            written: self.written,
        }
    }

    /// What a read of the segment as it is now needs, detached from the
    /// segment: a sealed segment never changes, so its reader can read it
    /// without the stream's lock (a retention that removes the file
    /// meanwhile makes the read fail with `NotFound`).
    pub fn reader(&self) -> SegmentReader {
        SegmentReader {
            info: self.info,
            path: self.path.clone(),
            file: self.file.clone(),
            index: Arc::clone(&self.index),
            damaged: Arc::clone(&self.damaged),
            written: self.written,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A segment's files.
pub struct SegmentPaths {
    segment: PathBuf,
    index: PathBuf,
}

/// Removes a segment's files (one already gone counts as removed, so a
/// removal that failed can run again); the caller syncs the folder.
pub fn remove_files(fs: &dyn FileSystem, paths: &SegmentPaths) -> Result<(), StorageError> {
    let op = StorageOp::RemoveSegment;
    // Index first: a segment without its index is rebuilt, an index
    // without its segment would be an orphan.
    for path in [&paths.index, &paths.segment] {
        match fs.remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).during(op),
            _ => {}
        }
    }
    Ok(())
}

/// A read-only view of a segment's records as they were when it was taken
/// ([`Segment::reader`]).
pub struct SegmentReader {
    info: SegmentInfo,
    path: PathBuf,
    /// The segment's open file, if it has one (a sealed segment opens its
    /// file per read; one whose seal or name is still pending reads through
    /// the file it was written with, which may not have its name yet).
    file: Option<Arc<dyn FileHandle>>,
    index: Arc<Vec<IndexEntry>>,
    damaged: Arc<Vec<(i64, i64)>>,
    written: u64,
}

impl SegmentReader {
    pub fn next_sequence_number(&self) -> i64 {
        self.info.next_sequence_number
    }

    pub fn records(&self) -> Records<'_> {
        Records {
            info: self.info,
            path: &self.path,
            file: self.file.as_ref(),
            index: &self.index,
            damaged: &self.damaged,
            written: self.written,
        }
    }
}

/// A segment's written records as a read sees them, borrowed from a
/// [`Segment`] (under the stream's lock) or from a [`SegmentReader`]
/// (without it).
pub struct Records<'a> {
    info: SegmentInfo,
    path: &'a Path,
    file: Option<&'a Arc<dyn FileHandle>>,
    index: &'a [IndexEntry],
    damaged: &'a [(i64, i64)],
    written: u64,
}

impl Records<'_> {
    pub fn first_sequence_number(&self) -> i64 {
        self.info.first_sequence_number
    }

    /// Reads from `from` (inside the segment) into `out` until `limits`
    /// are reached (at least one message if `out` is empty). Returns false
    /// when the budget ran out.
    pub fn read(
        &self,
        fs: &dyn FileSystem,
        from: i64,
        limits: ReadLimits,
        out: &mut Vec<Message>,
        bytes: &mut usize,
    ) -> Result<bool, StorageError> {
        let max_count = limits.max_count;
        let wanted_end = from.saturating_add((max_count - out.len()) as i64);
        if let Some(&(bad, good)) = self
            .damaged
            .iter()
            .find(|(bad, good)| from < *good && *bad < wanted_end)
        {
            return Err(corrupt(
                self.path,
                format!(
                    "messages {bad} to {} are damaged (checksum mismatch); read from {good} on",
                    good - 1
                ),
            ));
        }
        let at = self
            .index
            .partition_point(|e| e.seq <= from)
            .saturating_sub(1);
        let (mut seq, mut offset) = match self.index.get(at) {
            Some(e) if e.seq <= from => (e.seq, e.offset),
            _ => (self.info.first_sequence_number, SEGMENT_HEADER_LEN),
        };
        let end = SEGMENT_HEADER_LEN + self.written;
        let opened;
        let file: &dyn FileHandle = match self.file {
            Some(file) => &**file,
            None => {
                opened = fs.open(self.path).during(StorageOp::ReadSegment)?;
                &*opened
            }
        };
        let mut window = Window::new(file, end);
        while seq < self.info.next_sequence_number && offset < end {
            let Some(head) = window.slice(offset, RECORD_HEADER_LEN)? else {
                return Err(corrupt(self.path, format!("record {seq} is cut short")));
            };
            let header =
                RecordHeader::parse(head[..].try_into().expect("a record header's length"));
            if header.seq != seq || header.len > MAX_PAYLOAD || offset + header.total_len() > end {
                return Err(corrupt(
                    self.path,
                    format!("record {seq} at offset {offset} is damaged"),
                ));
            }
            if seq >= from {
                let len = header.len as usize;
                let cost = limits.cost(len);
                if out.len() == max_count || (!out.is_empty() && *bytes + cost > limits.max_bytes) {
                    return Ok(false);
                }
                let payload = window.slice(offset + RECORD_HEADER_LEN as u64, len)?;
                let Some(payload) = payload.filter(|p| header.verifies(p)) else {
                    return Err(corrupt(
                        self.path,
                        format!("record {seq} fails its checksum"),
                    ));
                };
                *bytes += cost;
                out.push(Message {
                    sequence_number: seq,
                    ingest_time: header.ingest_time,
                    payload,
                });
            }
            offset += header.total_len();
            seq += 1;
        }
        if out.len() == max_count {
            // All that was asked for: the messages after it may still wait
            // to be written (an exporter reads the active segment up to its
            // durable end), and none of them was looked for.
            return Ok(false);
        }
        if seq < self.info.next_sequence_number {
            // The file ends before the messages its index says it holds.
            return Err(corrupt(
                self.path,
                format!("the segment ends before message {seq}"),
            ));
        }
        Ok(out.len() < max_count)
    }
}

/// How a step that has run went; one that failed without stopping writes
/// (a full disk) is run again here, so it finishes once there is room.
fn settled(step: &Step) -> Option<Result<(), StorageError>> {
    match step.outcome()? {
        Err(e) if !e.stops_writes() => Some(step.ensure()),
        outcome => Some(outcome),
    }
}

/// Capacity of the append buffer kept between flushes.
const PENDING_KEPT: usize = 1 << 20;

/// Reads go through a window of at least this many bytes, so a run of small
/// records costs one read call instead of two per record.
const READ_WINDOW: usize = 64 * 1024;

/// A window onto a segment file; payloads handed out share its buffer
/// instead of being copied.
struct Window<'f> {
    file: &'f dyn FileHandle,
    /// Bytes of the file that may be read.
    end: u64,
    start: u64,
    buf: Bytes,
}

impl<'f> Window<'f> {
    fn new(file: &'f dyn FileHandle, end: u64) -> Self {
        Window {
            file,
            end,
            start: 0,
            buf: Bytes::new(),
        }
    }

    /// Bytes `offset..offset + len`; `None` if the file ends first.
    fn slice(&mut self, offset: u64, len: usize) -> Result<Option<Bytes>, StorageError> {
        let within =
            offset >= self.start && offset + len as u64 <= self.start + self.buf.len() as u64;
        if !within {
            let available = usize::try_from(self.end.saturating_sub(offset)).unwrap_or(usize::MAX);
            if available < len {
                return Ok(None);
            }
            let mut buf = vec![0u8; READ_WINDOW.max(len).min(available)];
            if !fs::read_exact_at(self.file, &mut buf, offset).during(StorageOp::ReadSegment)? {
                return Ok(None);
            }
            self.start = offset;
            self.buf = Bytes::from(buf);
        }
        let at = (offset - self.start) as usize;
        Ok(Some(self.buf.slice(at..at + len)))
    }
}

/// What recovery made of one segment file.
pub struct Recovered {
    pub segment: Segment,
    /// Bytes cut from a torn tail.
    pub truncated: u64,
}

/// Records a finding and says what to do about it; `Err` when the mode
/// refuses the stream.
pub(super) fn found(
    mode: RecoveryMode,
    findings: &mut Vec<Finding>,
    path: &Path,
    damage: Damage,
) -> Result<Remedy, StorageError> {
    let remedy = mode.remedy(&damage);
    let file = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    if remedy == Remedy::Refuse {
        return Err(corrupt(
            path,
            format!("{damage:?}, which recovery mode {mode:?} refuses"),
        ));
    }
    findings.push(Finding {
        file,
        damage,
        remedy,
    });
    Ok(remedy)
}

/// Opens a segment at start-up, as [`super::recovery`] says. A sealed one is
/// taken from its index footer (checked against the file's size) without
/// reading its records; the active one, or one whose index is missing or
/// damaged, is scanned from its last index entry that verifies. A torn tail
/// is cut off only on the last (`is_last`) segment; anywhere else damage is
/// recorded and reads of it fail, while the rest stays readable.
pub fn recover(
    fs: &dyn FileSystem,
    dir: &Path,
    first_seq: i64,
    is_last: bool,
    mode: RecoveryMode,
    findings: &mut Vec<Finding>,
) -> Result<Recovered, StorageError> {
    let op = StorageOp::RecoverSegment;
    let path = dir.join(format::segment_name(first_seq));
    let index_path = dir.join(format::index_name(first_seq));
    let file = fs.open(&path).during(op)?;
    let mut head = [0u8; SEGMENT_HEADER_LEN as usize];
    if !fs::read_exact_at(&*file, &mut head, 0).during(op)? {
        return Err(corrupt(&path, "shorter than a segment header"));
    }
    let declared = format::decode_segment_header(&head).map_err(|e| corrupt(&path, e))?;
    if declared != first_seq {
        return Err(corrupt(
            &path,
            format!("header says it starts at {declared}"),
        ));
    }
    let file_len = file.size().during(op)?;
    // A missing or unreadable index is rebuilt from the segment.
    let index_bytes = match fs::read_file(fs, &index_path) {
        Ok(bytes) => bytes,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %index_path.display(), error = %e, "index unreadable; rescanning its segment");
            }
            Vec::new()
        }
    };
    if let Some((index, summary)) = format::decode_sealed_index(&index_bytes) {
        let fits = SEGMENT_HEADER_LEN.checked_add(summary.bytes) == Some(file_len)
            && summary.next_seq >= first_seq
            // Every record takes at least its header.
            && u64::try_from(summary.next_seq - first_seq)
                .ok()
                .and_then(|n| n.checked_mul(RECORD_HEADER_LEN as u64))
                .is_some_and(|least| least <= summary.bytes)
            && (summary.bytes == 0) == index.is_empty()
            && trusted_prefix(&index, first_seq, file_len) == index.len()
            && index.last().is_none_or(|e| e.seq < summary.next_seq);
        if fits {
            return Ok(Recovered {
                segment: Segment::with_written(
                    SegmentInfo {
                        first_sequence_number: first_seq,
                        next_sequence_number: summary.next_seq,
                        bytes: summary.bytes,
                        newest_ingest_time: summary.newest_ingest_time,
                        sealed: true,
                    },
                    path,
                    file,
                    None,
                    index,
                    Vec::new(),
                ),
                truncated: 0,
            });
        }
        tracing::warn!(path = %path.display(), "segment size or index disagrees with its footer; rescanning");
    }
    // Start from the last hint whose record verifies: only the tail after
    // it is read, not the whole segment.
    let hints = format::decode_active_index(&index_bytes);
    let mut start = (first_seq, SEGMENT_HEADER_LEN);
    let mut index: Vec<IndexEntry> = Vec::new();
    let mut newest = i64::MIN;
    let ordered = trusted_prefix(&hints, first_seq, file_len);
    for (i, hint) in hints.iter().enumerate().take(ordered).rev() {
        if hint.seq >= first_seq && verified_at(&*file, hint.offset, hint.seq, file_len)?.is_some()
        {
            index = hints[..=i].to_vec();
            newest = index
                .iter()
                .map(|e| e.ingest_time)
                .max()
                .unwrap_or(i64::MIN);
            start = (hint.seq, hint.offset);
            break;
        }
    }
    let (mut seq, mut offset) = start;
    let mut damaged = Vec::new();
    loop {
        if offset >= file_len {
            break;
        }
        match verified_at(&*file, offset, seq, file_len)? {
            Some(header) => {
                newest = newest.max(header.ingest_time);
                if index
                    .last()
                    .is_none_or(|e| offset - e.offset >= INDEX_INTERVAL)
                    && index.last().is_none_or(|e| e.seq < seq)
                {
                    index.push(IndexEntry {
                        seq,
                        offset,
                        ingest_time: header.ingest_time,
                    });
                }
                offset += header.total_len();
                seq += 1;
            }
            None => {
                // A damaged record. If its length is intact and the next
                // record verifies, only this record is lost; otherwise,
                // after a crash, this is the torn tail.
                if let Some((next_offset, next_seq)) = skip_damaged(&*file, offset, seq, file_len)?
                {
                    if !is_last || next_offset < file_len {
                        damaged.push((seq, next_seq));
                        offset = next_offset;
                        seq = next_seq;
                        continue;
                    }
                }
                break;
            }
        }
    }
    let truncated = file_len - offset;
    if truncated > 0 && !is_last {
        // A sealed segment whose end is unreadable: keep what verifies,
        // and report the rest as damaged.
        damaged.push((seq, seq + 1));
    }
    for &(from, to) in &damaged {
        found(mode, findings, &path, Damage::DamagedRecords { from, to })?;
    }
    if truncated > 0 && is_last {
        found(mode, findings, &path, Damage::TornTail { bytes: truncated })?;
        tracing::warn!(path = %path.display(), bytes = truncated, "cutting a torn tail");
        file.set_len(offset).during(op)?;
        file.sync_data().syncing(op)?;
    }
    let bytes = offset - SEGMENT_HEADER_LEN;
    let index_file = if is_last {
        // Rewrite the hint file from what was verified. It is only a hint:
        // on a full disk (or any other failure) the segment is served
        // without it, and the next start scans a little more.
        let entries: Vec<u8> = index.iter().flat_map(IndexEntry::encode).collect();
        match fs
            .create(&index_path)
            .and_then(|f| f.write_all_at(&entries, 0).map(|()| f))
        {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %index_path.display(), error = %e, "index hints not rewritten; the segment is served without them");
                None
            }
        }
    } else {
        None
    };
    let info = SegmentInfo {
        first_sequence_number: first_seq,
        next_sequence_number: seq,
        bytes,
        newest_ingest_time: if newest == i64::MIN { 0 } else { newest },
        // A damaged older segment stays as it is: sealed, without a footer.
        sealed: !is_last && !damaged.is_empty(),
    };
    let mut segment = Segment::with_written(info, path, file, index_file, index, damaged);
    if !is_last && segment.damaged.is_empty() {
        // Not the last segment but never sealed (a crash between sealing
        // steps): seal it now (sync, footer) so the next start reads its
        // footer.
        found(mode, findings, &segment.path, Damage::UnsealedSegment)?;
        segment.seal(fs)?;
    }
    if !segment.damaged.is_empty() {
        tracing::error!(path = %segment.path.display(), damaged = ?segment.damaged, "damaged records: reads of them fail");
    }
    Ok(Recovered { segment, truncated })
}

/// How many of `index`'s first entries can be trusted to point into the
/// segment: the first is the segment's first record (where appends put
/// it), and sequence numbers and offsets strictly increase inside the file.
/// A checksum only says an entry was written as it reads, not that what
/// wrote it was right.
fn trusted_prefix(index: &[IndexEntry], first_seq: i64, file_len: u64) -> usize {
    let Some(head) = index.first() else {
        return 0;
    };
    if head.seq != first_seq || head.offset != SEGMENT_HEADER_LEN || head.offset >= file_len {
        return 0;
    }
    1 + index
        .windows(2)
        .take_while(|w| w[0].seq < w[1].seq && w[0].offset < w[1].offset && w[1].offset < file_len)
        .count()
}

/// The record at `offset` if it is intact and is `seq`.
fn verified_at(
    file: &dyn FileHandle,
    offset: u64,
    seq: i64,
    file_len: u64,
) -> Result<Option<RecordHeader>, StorageError> {
    let mut head = [0u8; RECORD_HEADER_LEN];
    if offset
        .checked_add(RECORD_HEADER_LEN as u64)
        .is_none_or(|end| end > file_len)
        || !fs::read_exact_at(file, &mut head, offset).during(StorageOp::RecoverSegment)?
    {
        return Ok(None);
    }
    let header = RecordHeader::parse(&head);
    if header.seq != seq || header.len > MAX_PAYLOAD || offset + header.total_len() > file_len {
        return Ok(None);
    }
    let mut payload = vec![0u8; header.len as usize];
    if !fs::read_exact_at(file, &mut payload, offset + RECORD_HEADER_LEN as u64)
        .during(StorageOp::RecoverSegment)?
    {
        return Ok(None);
    }
    Ok(header.verifies(&payload).then_some(header))
}

/// Where the record after a damaged one starts, if the damaged record's
/// length still leads to an intact record `seq + 1` (or to the file's end).
fn skip_damaged(
    file: &dyn FileHandle,
    offset: u64,
    seq: i64,
    file_len: u64,
) -> Result<Option<(u64, i64)>, StorageError> {
    let mut head = [0u8; RECORD_HEADER_LEN];
    if offset
        .checked_add(RECORD_HEADER_LEN as u64)
        .is_none_or(|end| end > file_len)
        || !fs::read_exact_at(file, &mut head, offset).during(StorageOp::RecoverSegment)?
    {
        return Ok(None);
    }
    let header = RecordHeader::parse(&head);
    let next = offset + header.total_len();
    if header.len > MAX_PAYLOAD || next > file_len {
        return Ok(None);
    }
    if next == file_len {
        return Ok(Some((next, seq + 1)));
    }
    Ok(verified_at(file, next, seq + 1, file_len)?.map(|_| (next, seq + 1)))
}
