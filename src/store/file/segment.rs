//! One segment file and its sparse index.

use super::format::{
    self, IndexEntry, RecordHeader, SealedSummary, INDEX_ENTRY_LEN, INDEX_INTERVAL, MAX_PAYLOAD,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::protocol::model::Message;
use crate::store::fs::{self, FileHandle, FileSystem};
use crate::store::log::{SegmentInfo, StorageError};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Segment {
    pub info: SegmentInfo,
    path: PathBuf,
    index_path: PathBuf,
    file: Arc<dyn FileHandle>,
    /// Appended to while the segment is active; `None` once sealed.
    index_file: Option<Arc<dyn FileHandle>>,
    index: Vec<IndexEntry>,
    /// Record bytes at the last index entry.
    indexed_at: u64,
    /// Records that failed their checksum when the segment was recovered
    /// (first seq of the damage, first readable seq after it).
    damaged: Vec<(i64, i64)>,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("{}: {what}", path.display()))
}

impl Segment {
    /// Creates an empty active segment whose first record will be
    /// `first_seq`. The header is synced and the folder entry made durable
    /// before this returns, so a segment file that exists is a valid one.
    pub fn create(
        fs: &dyn FileSystem,
        dir: &Path,
        first_seq: i64,
        now_millis: i64,
    ) -> Result<Segment, StorageError> {
        let path = dir.join(format::segment_name(first_seq));
        let index_path = dir.join(format::index_name(first_seq));
        // Header written under a temporary name and renamed: a segment file
        // never exists without a whole, synced header (a full disk cannot
        // leave an empty one behind).
        fs::write_atomically(fs, &path, &format::encode_segment_header(first_seq))?;
        let file = fs.open(&path)?;
        let index_file = fs.create(&index_path)?;
        Ok(Segment {
            info: SegmentInfo {
                first_sequence_number: first_seq,
                next_sequence_number: first_seq,
                bytes: 0,
                newest_ingest_time: now_millis,
                sealed: false,
            },
            path,
            index_path,
            file,
            index_file: Some(index_file),
            index: Vec::new(),
            indexed_at: 0,
            damaged: Vec::new(),
        })
    }

    pub fn sync_target(&self) -> Arc<dyn FileHandle> {
        Arc::clone(&self.file)
    }

    /// Writes one record at the end. On failure the file is cut back to
    /// where it was, so a failed append leaves no partial record behind.
    pub fn append(
        &mut self,
        seq: i64,
        ingest_time: i64,
        payload: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        debug_assert_eq!(seq, self.info.next_sequence_number);
        let offset = SEGMENT_HEADER_LEN + self.info.bytes;
        scratch.clear();
        format::encode_record(seq, ingest_time, payload, scratch);
        if let Err(e) = self.file.write_all_at(scratch, offset) {
            if let Err(cut) = self.file.set_len(offset) {
                // The file now may end in a partial record; recovery would
                // cut it, but this process cannot trust it any more.
                return Err(StorageError::Io(std::io::Error::other(format!(
                    "{e}; cutting back the partial record failed too: {cut}"
                ))));
            }
            return Err(e.into());
        }
        if self.index.is_empty() || self.info.bytes - self.indexed_at >= INDEX_INTERVAL {
            let entry = IndexEntry {
                seq,
                offset,
                ingest_time,
            };
            if let Some(index_file) = &self.index_file {
                // The active index is a hint, checked record by record at
                // recovery; losing it costs a longer scan, never data.
                let at = (self.index.len() * INDEX_ENTRY_LEN) as u64;
                if let Err(e) = index_file.write_all_at(&entry.encode(), at) {
                    tracing::debug!(error = %e, path = %self.index_path.display(), "index entry not written");
                }
            }
            self.index.push(entry);
            self.indexed_at = self.info.bytes;
        }
        self.info.bytes += scratch.len() as u64;
        self.info.next_sequence_number = seq + 1;
        self.info.newest_ingest_time = self.info.newest_ingest_time.max(ingest_time);
        Ok(())
    }

    /// Syncs the segment and writes its sealed index (atomically), after
    /// which it is never written again.
    pub fn seal(&mut self, fs: &dyn FileSystem) -> Result<(), StorageError> {
        if self.info.sealed {
            return Ok(());
        }
        self.file.sync_data().map_err(StorageError::Sync)?;
        let summary = SealedSummary {
            next_seq: self.info.next_sequence_number,
            bytes: self.info.bytes,
            newest_ingest_time: self.info.newest_ingest_time,
        };
        fs::write_atomically(
            fs,
            &self.index_path,
            &format::encode_sealed_index(&self.index, summary),
        )?;
        self.index_file = None;
        self.info.sealed = true;
        Ok(())
    }

    pub fn remove(self, fs: &dyn FileSystem) -> Result<(), StorageError> {
        // Index first: a segment without its index is rebuilt, an index
        // without its segment would be an orphan.
        match fs.remove_file(&self.index_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        fs.remove_file(&self.path)?;
        Ok(())
    }

    /// Reads from `from` (inside this segment) into `out` until `max_count`
    /// messages or `max_bytes` of payload (at least one message if `out` is
    /// empty). Returns false when the budget ran out.
    pub fn read(
        &self,
        from: i64,
        max_count: usize,
        max_bytes: usize,
        out: &mut Vec<Message>,
        bytes: &mut usize,
    ) -> Result<bool, StorageError> {
        let wanted_end = from.saturating_add((max_count - out.len()) as i64);
        if let Some(&(bad, good)) = self
            .damaged
            .iter()
            .find(|(bad, good)| from < *good && *bad < wanted_end)
        {
            return Err(corrupt(
                &self.path,
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
            Some(e) => (e.seq, e.offset),
            None => (self.info.first_sequence_number, SEGMENT_HEADER_LEN),
        };
        let end = SEGMENT_HEADER_LEN + self.info.bytes;
        while seq < self.info.next_sequence_number && offset < end {
            let mut head = [0u8; RECORD_HEADER_LEN];
            if !fs::read_exact_at(&*self.file, &mut head, offset)? {
                return Err(corrupt(&self.path, format!("record {seq} is cut short")));
            }
            let header = RecordHeader::parse(&head);
            if header.seq != seq || header.len > MAX_PAYLOAD || offset + header.total_len() > end {
                return Err(corrupt(
                    &self.path,
                    format!("record {seq} at offset {offset} is damaged"),
                ));
            }
            if seq >= from {
                let len = header.len as usize;
                if out.len() == max_count || (!out.is_empty() && *bytes + len > max_bytes) {
                    return Ok(false);
                }
                let mut payload = vec![0u8; len];
                if !fs::read_exact_at(&*self.file, &mut payload, offset + RECORD_HEADER_LEN as u64)?
                    || !header.verifies(&payload)
                {
                    return Err(corrupt(
                        &self.path,
                        format!("record {seq} fails its checksum"),
                    ));
                }
                *bytes += len;
                out.push(Message {
                    sequence_number: seq,
                    ingest_time: header.ingest_time,
                    payload: Bytes::from(payload),
                });
            }
            offset += header.total_len();
            seq += 1;
        }
        Ok(out.len() < max_count)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What recovery made of one segment file.
pub struct Recovered {
    pub segment: Segment,
    /// Bytes cut from a torn tail.
    pub truncated: u64,
}

/// Opens a segment at start-up. A sealed one is taken from its index footer
/// (checked against the file's size) without reading its records; the
/// active one, or one whose index is missing or damaged, is scanned from its
/// last index entry that verifies. A torn tail is cut off only on the last
/// (`is_last`) segment; anywhere else damage is recorded and reads of it
/// fail, while the rest stays readable.
pub fn recover(
    fs: &dyn FileSystem,
    dir: &Path,
    first_seq: i64,
    is_last: bool,
) -> Result<Recovered, StorageError> {
    let path = dir.join(format::segment_name(first_seq));
    let index_path = dir.join(format::index_name(first_seq));
    let file = fs.open(&path)?;
    let mut head = [0u8; SEGMENT_HEADER_LEN as usize];
    if !fs::read_exact_at(&*file, &mut head, 0)? {
        return Err(corrupt(&path, "shorter than a segment header"));
    }
    let declared = format::decode_segment_header(&head).map_err(|e| corrupt(&path, e))?;
    if declared != first_seq {
        return Err(corrupt(
            &path,
            format!("header says it starts at {declared}"),
        ));
    }
    let file_len = file.size()?;
    let index_bytes = fs::read_file(fs, &index_path).unwrap_or_default();
    if let Some((index, summary)) = format::decode_sealed_index(&index_bytes) {
        if SEGMENT_HEADER_LEN + summary.bytes == file_len {
            let indexed_at = index.last().map_or(0, |e| e.offset - SEGMENT_HEADER_LEN);
            return Ok(Recovered {
                segment: Segment {
                    info: SegmentInfo {
                        first_sequence_number: first_seq,
                        next_sequence_number: summary.next_seq,
                        bytes: summary.bytes,
                        newest_ingest_time: summary.newest_ingest_time,
                        sealed: true,
                    },
                    path,
                    index_path,
                    file,
                    index_file: None,
                    index,
                    indexed_at,
                    damaged: Vec::new(),
                },
                truncated: 0,
            });
        }
        tracing::warn!(path = %path.display(), "segment size disagrees with its index; rescanning");
    }
    // Start from the last hint whose record verifies: only the tail after
    // it is read, not the whole segment.
    let hints = format::decode_active_index(&index_bytes);
    let mut start = (first_seq, SEGMENT_HEADER_LEN);
    let mut index: Vec<IndexEntry> = Vec::new();
    let mut newest = i64::MIN;
    let ordered = 1 + hints
        .windows(2)
        .take_while(|w| w[0].seq < w[1].seq && w[0].offset < w[1].offset)
        .count();
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
    if truncated > 0 {
        if is_last {
            tracing::warn!(path = %path.display(), bytes = truncated, "cutting a torn tail");
            file.set_len(offset)?;
            file.sync_data()?;
        } else {
            // A sealed segment whose end is unreadable: keep what verifies,
            // and report the rest as damaged.
            damaged.push((seq, seq + 1));
        }
    }
    let bytes = offset - SEGMENT_HEADER_LEN;
    let index_file = if is_last {
        // Rewrite the hint file from what was verified.
        let f = fs.create(&index_path)?;
        let entries: Vec<u8> = index.iter().flat_map(IndexEntry::encode).collect();
        f.write_all_at(&entries, 0)?;
        Some(f)
    } else {
        None
    };
    let indexed_at = index.last().map_or(0, |e| e.offset - SEGMENT_HEADER_LEN);
    let mut segment = Segment {
        info: SegmentInfo {
            first_sequence_number: first_seq,
            next_sequence_number: seq,
            bytes,
            newest_ingest_time: if newest == i64::MIN { 0 } else { newest },
            sealed: !is_last,
        },
        path,
        index_path,
        file,
        index_file,
        index,
        indexed_at,
        damaged,
    };
    if !is_last && segment.damaged.is_empty() {
        // Not the last segment but never sealed (a crash between sealing
        // steps): seal it now so the next start reads its footer.
        segment.info.sealed = false;
        segment.seal(fs)?;
    }
    if !segment.damaged.is_empty() {
        tracing::error!(path = %segment.path.display(), damaged = ?segment.damaged, "damaged records: reads of them fail");
    }
    Ok(Recovered { segment, truncated })
}

/// The record at `offset` if it is intact and is `seq`.
fn verified_at(
    file: &dyn FileHandle,
    offset: u64,
    seq: i64,
    file_len: u64,
) -> Result<Option<RecordHeader>, StorageError> {
    let mut head = [0u8; RECORD_HEADER_LEN];
    if offset + RECORD_HEADER_LEN as u64 > file_len || !fs::read_exact_at(file, &mut head, offset)?
    {
        return Ok(None);
    }
    let header = RecordHeader::parse(&head);
    if header.seq != seq || header.len > MAX_PAYLOAD || offset + header.total_len() > file_len {
        return Ok(None);
    }
    let mut payload = vec![0u8; header.len as usize];
    if !fs::read_exact_at(file, &mut payload, offset + RECORD_HEADER_LEN as u64)? {
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
    if offset + RECORD_HEADER_LEN as u64 > file_len || !fs::read_exact_at(file, &mut head, offset)?
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
