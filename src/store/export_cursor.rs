//! The export cursors: per stream, for each export identifier, the last
//! sequence number exported, with the export status counters, kept so that
//! a restart (or a power cut) resumes where the export stopped and never
//! starts again from `startSequenceNumber`. A message is sent twice only if
//! weir stopped between the cloud's answer and the cursor write that
//! follows it; batching those writes is the exporter's choice, each
//! [`CursorStore::save`] is atomic.
//!
//! ## Where
//!
//! One file per stream, `stream.exports`, in the stream's own folder
//! (`<store>/streams/<encoded name>/`, see [`crate::store::disk`]), rather
//! than in a separate `<store>/exports/` folder, because:
//! * a stream's delete removes its folder, so the cursors go with the stream
//!   at the same commit point, and a stream created later under the same
//!   name can never inherit a deleted stream's cursors (with a separate
//!   folder, a power cut between the two removals would leave exactly that);
//! * the file log's loader ignores the `stream.` names (its temp file,
//!   `stream.exports.tmp`, is cleared at start-up as `stream.cbor.tmp` is);
//! * only `File` streams have a folder, and only they outlive a restart: a
//!   `Memory` stream's exports have nothing to resume after one.
//!
//! A save never creates the folder: a stream deleted meanwhile must not come
//! back as a folder without a definition, so the save fails with `NotFound`.
//!
//! ## Format
//!
//! Written atomically (temp file, fsync, rename, fsync of the folder) with
//! [`fs::write_atomically`]. All integers little-endian:
//!
//! ```text
//! stream.exports
//!   header   16 B  magic "WEIRCUR1" | version u32 | entries u32
//!   entry          id_len u32 | id (UTF-8) | start_seq i64 | flags u8
//!                  | last_exported_seq i64 | last_export_time i64
//!                  | exported_bytes i64 | exported_messages i64
//!                  | skipped_messages i64 (version 2 on)
//!                  | error_len u32 | error (UTF-8)
//!                  flags: bit 0 last_exported_seq is set, bit 1 last_export_time
//!                  is set, bit 2 an error message is set; a value not set is 0
//!   trailer   4 B  crc32c of everything before
//! ```
//!
//! Entries are sorted by identifier, each identifier at most once. A file
//! that is not exactly this (wrong magic, version, checksum, length, a flag
//! or value out of range) is an error, [`StorageError::Corrupt`]: the
//! exporter must not silently start over from `startSequenceNumber`.

use crate::protocol::model::{ExportDefinition, ExportStatus};
use crate::store::disk::stream_dir;
use crate::store::fs::{self, FileSystem};
use crate::store::log::{IoContext, StorageError, StorageOp};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CURSOR_FILE: &str = "stream.exports";
pub const CURSOR_MAGIC: &[u8; 8] = b"WEIRCUR1";
/// Version 2 added `skipped_messages`; version 1 files are read (as
/// having skipped none) and rewritten as version 2.
pub const CURSOR_VERSION: u32 = 2;
/// Longest error message kept, in bytes; a longer one is cut (at a
/// character boundary) when saved.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;
/// Longest export identifier a file may hold (far above what the protocol
/// accepts), so a damaged length cannot ask for a huge allocation.
const MAX_IDENTIFIER_BYTES: usize = 4096;
const HEADER_LEN: usize = 16;
const TRAILER_LEN: usize = 4;
const HAS_LAST_EXPORTED: u8 = 1;
const HAS_EXPORT_TIME: u8 = 2;
const HAS_ERROR: u8 = 4;

/// How far one export of a stream has got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CursorState {
    /// The `startSequenceNumber` of the definition this cursor was started
    /// from: a definition with another one starts the export again there.
    pub start_sequence_number: i64,
    /// The last sequence number the cloud accepted; `None` until one is.
    pub last_exported_sequence_number: Option<i64>,
    /// Wall time in milliseconds of the last export.
    pub last_export_time: Option<i64>,
    /// The last export's failure, `None` once one succeeded.
    pub error_message: Option<String>,
    pub exported_bytes_from_stream: i64,
    pub exported_messages_count: i64,
    /// Messages never exported: refused by the cloud for good (too large,
    /// invalid) or removed by retention before they were sent. Each is in
    /// the log and in `error_message` when it happens.
    pub skipped_messages: i64,
}

impl CursorState {
    /// A cursor nothing has been exported from yet.
    pub fn starting_at(start_sequence_number: i64) -> Self {
        CursorState {
            start_sequence_number,
            ..CursorState::default()
        }
    }

    /// The next sequence number to export: after the last one exported, or
    /// the start if nothing was exported since it.
    pub fn next_sequence_number(&self) -> i64 {
        match self.last_exported_sequence_number {
            Some(last) if last >= self.start_sequence_number => last.saturating_add(1),
            _ => self.start_sequence_number,
        }
    }

    /// The cursor as `describeMessageStream` reports it. Before anything
    /// was exported, `lastExportedSequenceNumber` is the one before the
    /// start, as `crate::store::stream` reports a new export.
    pub fn export_status(&self, identifier: &str) -> ExportStatus {
        ExportStatus {
            export_config_identifier: identifier.to_owned(),
            last_exported_sequence_number: self.next_sequence_number() - 1,
            last_export_time: self.last_export_time,
            error_message: self.error_message.clone(),
            exported_bytes_from_stream: self.exported_bytes_from_stream,
            exported_messages_count: self.exported_messages_count,
        }
    }

    /// The cursor an export with `start_sequence_number` in its definition
    /// resumes from, given what was stored for its identifier: the stored
    /// cursor unless the definition's start differs from the stored one;
    /// then (or for a new export) it starts at the definition's start. A
    /// changed start keeps the counters and the last export time (they
    /// describe what left the stream), but not the position.
    pub fn resume(start_sequence_number: i64, stored: Option<&CursorState>) -> CursorState {
        match stored {
            Some(cursor) if cursor.start_sequence_number == start_sequence_number => cursor.clone(),
            Some(cursor) => CursorState {
                start_sequence_number,
                last_exported_sequence_number: None,
                ..cursor.clone()
            },
            None => CursorState::starting_at(start_sequence_number),
        }
    }
}

/// A stream's cursors, by export identifier.
pub type Cursors = BTreeMap<String, CursorState>;

/// The cursors a stream's exports resume from, one per export of
/// `definition` ([`CursorState::resume`] each); stored cursors of exports no
/// longer defined are left out.
pub fn resume_all(definition: &ExportDefinition, stored: &Cursors) -> Cursors {
    definition
        .starts()
        .into_iter()
        .map(|(id, start)| (id.to_owned(), CursorState::resume(start, stored.get(id))))
        .collect()
}

/// Reads and writes the cursor files of a store's streams.
pub struct CursorStore {
    fs: Arc<dyn FileSystem>,
    store_root: PathBuf,
}

impl CursorStore {
    pub fn new(fs: Arc<dyn FileSystem>, store_root: &Path) -> Self {
        CursorStore {
            fs,
            store_root: store_root.to_owned(),
        }
    }

    /// Where a stream's cursors live: in its folder
    /// ([`crate::store::disk::stream_dir`]).
    pub fn path(&self, stream: &str) -> PathBuf {
        stream_dir(&self.store_root, stream).join(CURSOR_FILE)
    }

    /// The stream's stored cursors; none if it has no cursor file. A file
    /// that cannot be decoded is [`StorageError::Corrupt`].
    pub fn load(&self, stream: &str) -> Result<Cursors, StorageError> {
        let path = self.path(stream);
        match fs::read_file(&*self.fs, &path) {
            Ok(bytes) => decode(&bytes)
                .map_err(|reason| StorageError::Corrupt(format!("{}: {reason}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Cursors::new()),
            Err(e) => Err(e).during(StorageOp::ReadExportCursor),
        }
    }

    /// Replaces the stream's cursors atomically: after a crash the file
    /// holds the old ones or these. Fails with `NotFound` if the stream has
    /// no folder. A failed fsync is a [`StorageError::Sync`].
    pub fn save(&self, stream: &str, cursors: &Cursors) -> Result<(), StorageError> {
        fs::write_atomically(
            &*self.fs,
            &self.path(stream),
            &encode(cursors),
            StorageOp::WriteExportCursor,
        )
    }

    /// Removes the stream's cursors (its exports were all removed), durably.
    pub fn remove(&self, stream: &str) -> Result<(), StorageError> {
        let op = StorageOp::WriteExportCursor;
        let path = self.path(stream);
        match self.fs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).during(op),
        }
        let dir = path.parent().expect("the cursor file is in a folder");
        self.fs.sync_dir(dir).syncing(op)
    }
}

/// `message` cut to at most [`MAX_ERROR_MESSAGE_BYTES`], at a character
/// boundary.
pub fn bounded_error_message(message: &str) -> &str {
    let mut end = message.len().min(MAX_ERROR_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

pub fn encode(cursors: &Cursors) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + TRAILER_LEN + cursors.len() * 64);
    b.extend_from_slice(CURSOR_MAGIC);
    b.extend_from_slice(&CURSOR_VERSION.to_le_bytes());
    let count = u32::try_from(cursors.len()).expect("fewer than 2^32 exports per stream");
    b.extend_from_slice(&count.to_le_bytes());
    for (id, c) in cursors {
        put_text(&mut b, id);
        b.extend_from_slice(&c.start_sequence_number.to_le_bytes());
        let error = c.error_message.as_deref().map(bounded_error_message);
        let flag = |set: bool, bit: u8| if set { bit } else { 0 };
        let flags = flag(c.last_exported_sequence_number.is_some(), HAS_LAST_EXPORTED)
            | flag(c.last_export_time.is_some(), HAS_EXPORT_TIME)
            | flag(error.is_some(), HAS_ERROR);
        b.push(flags);
        for value in [
            c.last_exported_sequence_number.unwrap_or(0),
            c.last_export_time.unwrap_or(0),
            c.exported_bytes_from_stream,
            c.exported_messages_count,
            c.skipped_messages,
        ] {
            b.extend_from_slice(&value.to_le_bytes());
        }
        put_text(&mut b, error.unwrap_or(""));
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn put_text(b: &mut Vec<u8>, text: &str) {
    let len = u32::try_from(text.len()).expect("identifiers and errors are bounded");
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(text.as_bytes());
}

pub fn decode(bytes: &[u8]) -> Result<Cursors, String> {
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(format!("{} bytes is too short", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - TRAILER_LEN);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader { rest: body };
    if r.take(8)? != CURSOR_MAGIC {
        return Err("not an export cursor file (bad magic)".into());
    }
    let version = match r.u32()? {
        version @ (1 | CURSOR_VERSION) => version,
        other => return Err(format!("format version {other} is not supported")),
    };
    let count = r.u32()?;
    let mut cursors = Cursors::new();
    let mut previous: Option<String> = None;
    for _ in 0..count {
        let id = r.text(MAX_IDENTIFIER_BYTES)?;
        if previous.as_ref().is_some_and(|p| *p >= id) {
            return Err(format!("export identifier {id:?} is out of order"));
        }
        let start_sequence_number = r.i64()?;
        let flags = r.take(1)?[0];
        if flags & !(HAS_LAST_EXPORTED | HAS_EXPORT_TIME | HAS_ERROR) != 0 {
            return Err(format!("unknown flags {flags:#04x}"));
        }
        let set = |flag: u8, value: i64| -> Result<Option<i64>, String> {
            match (flags & flag != 0, value) {
                (true, v) => Ok(Some(v)),
                (false, 0) => Ok(None),
                (false, v) => Err(format!("a value not set is {v}, not 0")),
            }
        };
        let last_exported_sequence_number = set(HAS_LAST_EXPORTED, r.i64()?)?;
        let last_export_time = set(HAS_EXPORT_TIME, r.i64()?)?;
        let exported_bytes_from_stream = r.i64()?;
        let exported_messages_count = r.i64()?;
        let skipped_messages = if version >= 2 { r.i64()? } else { 0 };
        let error = r.text(MAX_ERROR_MESSAGE_BYTES)?;
        let error_message = match (flags & HAS_ERROR != 0, error.is_empty()) {
            (true, _) => Some(error),
            (false, true) => None,
            (false, false) => return Err("an error message without its flag".into()),
        };
        if start_sequence_number < 0
            || last_exported_sequence_number.is_some_and(|s| s < 0)
            || exported_bytes_from_stream < 0
            || exported_messages_count < 0
            || skipped_messages < 0
        {
            return Err(format!("export {id:?} has a negative position or count"));
        }
        let cursor = CursorState {
            start_sequence_number,
            last_exported_sequence_number,
            last_export_time,
            error_message,
            exported_bytes_from_stream,
            exported_messages_count,
            skipped_messages,
        };
        previous = Some(id.clone());
        cursors.insert(id, cursor);
    }
    if !r.rest.is_empty() {
        return Err(format!("{} bytes after the last entry", r.rest.len()));
    }
    Ok(cursors)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let (taken, rest) = self
            .rest
            .split_at_checked(n)
            .ok_or("the file ends inside an entry")?;
        self.rest = rest;
        Ok(taken)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn text(&mut self, max: usize) -> Result<String, String> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(format!("a text of {len} bytes is longer than {max}"));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "a text is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_reports_the_last_exported_number_or_the_one_before_the_start() {
        let fresh = CursorState::starting_at(7).export_status("k");
        assert_eq!(fresh.last_exported_sequence_number, 6);
        assert_eq!(fresh.export_config_identifier, "k");
        let moved = CursorState {
            last_exported_sequence_number: Some(41),
            last_export_time: Some(5),
            error_message: Some("throttled".into()),
            exported_bytes_from_stream: 420,
            exported_messages_count: 35,
            ..CursorState::starting_at(7)
        };
        let status = moved.export_status("k");
        assert_eq!(
            (
                status.last_exported_sequence_number,
                status.last_export_time,
                status.error_message.as_deref(),
                status.exported_bytes_from_stream,
                status.exported_messages_count
            ),
            (41, Some(5), Some("throttled"), 420, 35)
        );
    }

    #[test]
    fn long_error_messages_are_cut_at_a_character_boundary() {
        let message = "é".repeat(MAX_ERROR_MESSAGE_BYTES);
        let cut = bounded_error_message(&message);
        assert!(cut.len() <= MAX_ERROR_MESSAGE_BYTES && cut.len() > MAX_ERROR_MESSAGE_BYTES - 2);
        let cursors = Cursors::from([(
            "k".to_owned(),
            CursorState {
                error_message: Some(message.clone()),
                ..CursorState::starting_at(0)
            },
        )]);
        let back = decode(&encode(&cursors)).expect("decodes");
        assert_eq!(back["k"].error_message.as_deref(), Some(cut));
    }

    #[test]
    fn entries_out_of_order_are_rejected() {
        let one = Cursors::from([("b".to_owned(), CursorState::starting_at(0))]);
        let mut bytes = encode(&one);
        // Rename the only entry to "a" and append a duplicate "b" entry by
        // hand: decode must refuse a file listing "b" then "a".
        let entry = bytes[HEADER_LEN..bytes.len() - TRAILER_LEN].to_vec();
        let mut a_entry = entry.clone();
        a_entry[4] = b'a';
        bytes.truncate(bytes.len() - TRAILER_LEN);
        bytes.extend_from_slice(&a_entry);
        bytes[12..16].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert!(decode(&bytes).unwrap_err().contains("out of order"));
    }

    /// A version 1 file (before `skipped_messages`) is read as having
    /// skipped none.
    #[test]
    fn version_1_files_are_read() {
        let cursor = CursorState {
            last_exported_sequence_number: Some(9),
            exported_messages_count: 10,
            ..CursorState::starting_at(0)
        };
        let v2 = encode(&Cursors::from([("k".to_owned(), cursor.clone())]));
        // v1 is v2 without the 8 bytes of skipped_messages, which sit
        // before the error text's length (the last 4 + 4 bytes).
        let body = &v2[..v2.len() - TRAILER_LEN];
        let error_at = body.len() - 4;
        let mut v1 = body[..error_at - 8].to_vec();
        v1.extend_from_slice(&body[error_at..]);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&v1).expect("a v1 file decodes")["k"], cursor);
    }
}
