//! On-disk formats of the file log. All integers little-endian.
//!
//! ```text
//! segment file  {first_seq:020}.seg
//!   header   32 B  magic "WEIRSEG1" | version u32 | flags u32 (0) | first_seq i64 | reserved u32 (0) | crc32c u32 of the 28 bytes before
//!   records  ...   len u32 | crc32c u32 | seq i64 | ingest_time i64 | payload (len bytes)
//!                  crc32c over len, seq, ingest_time and payload
//!
//! index file    {first_seq:020}.idx   (a sparse index; always rebuildable from the segment)
//!   entries  28 B each: seq i64 | offset u64 | ingest_time i64 | crc32c u32 of the 24 bytes before
//!   footer   48 B, only once the segment is sealed:
//!            magic "WEIRIDX1" | next_seq i64 | bytes u64 | newest_ingest_time i64 | entries u64 | crc32c u32 of everything before | pad u32
//!
//! spare segment   next.spare   (a segment file prepared in advance)
//!   as a segment file; its header says first_seq -1 until an append
//!   switches to it, writing its first_seq (see [`super::background`])
//!
//! sequence floor  sequence.floor   (written atomically)
//!   20 B  magic "WEIRFLR1" | floor i64 | crc32c u32 of the 16 bytes before
//! ```
//!
//! The sequence floor is a lease on sequence numbers: no number at or above
//! it has been given out. It lives outside the segment files so that a
//! damaged or unreadable newest segment cannot take the next sequence number
//! away with it: recovery continues at the floor after such a segment
//! (see [`super::recovery`]). An append that reaches the floor first moves
//! it [`FLOOR_LEASE`] numbers further (a rare atomic write).
//!
//! Sequence numbers are consecutive within a segment, so a record whose seq
//! is not the expected one is as invalid as one whose checksum fails.

use crate::store::log::RECORD_OVERHEAD;

pub const SEGMENT_MAGIC: &[u8; 8] = b"WEIRSEG1";
pub const INDEX_MAGIC: &[u8; 8] = b"WEIRIDX1";
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: u64 = 32;
pub const RECORD_HEADER_LEN: usize = RECORD_OVERHEAD as usize;
pub const INDEX_ENTRY_LEN: usize = 28;
pub const INDEX_FOOTER_LEN: usize = 48;
/// An index entry every this many record bytes.
pub const INDEX_INTERVAL: u64 = 4096;
/// Largest payload a record may declare (the protocol's frame limit).
pub const MAX_PAYLOAD: u32 = 1 << 30;

pub const SPARE_FILE: &str = "next.spare";
/// The first sequence number in the header of a spare nobody switched to.
pub const UNUSED_SPARE: i64 = -1;
pub const FLOOR_MAGIC: &[u8; 8] = b"WEIRFLR1";
pub const FLOOR_FILE: &str = "sequence.floor";
pub const FLOOR_LEN: usize = 20;
/// How many sequence numbers one write of the floor leases: numbers skipped
/// after a lost newest segment, and appends per floor write.
pub const FLOOR_LEASE: i64 = 1 << 20;

pub fn encode_floor(floor: i64) -> [u8; FLOOR_LEN] {
    let mut b = [0u8; FLOOR_LEN];
    b[..8].copy_from_slice(FLOOR_MAGIC);
    b[8..16].copy_from_slice(&floor.to_le_bytes());
    let crc = crc32c::crc32c(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The floor a floor file records, or why it does not.
pub fn decode_floor(b: &[u8]) -> Result<i64, String> {
    if b.len() != FLOOR_LEN || &b[..8] != FLOOR_MAGIC {
        return Err("not a weir sequence floor".into());
    }
    if crc32c::crc32c(&b[..16]) != u32_at(b, 16) {
        return Err("sequence floor checksum mismatch".into());
    }
    Ok(i64_at(b, 8))
}

pub fn segment_name(first_seq: i64) -> String {
    format!("{first_seq:020}.seg")
}

pub fn index_name(first_seq: i64) -> String {
    format!("{first_seq:020}.idx")
}

/// The first sequence number a segment or index file name stands for.
pub fn parse_name(name: &str) -> Option<(i64, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

pub fn encode_segment_header(first_seq: i64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first sequence number in a segment header, or why it is not one.
pub fn decode_segment_header(h: &[u8; SEGMENT_HEADER_LEN as usize]) -> Result<i64, String> {
    if &h[..8] != SEGMENT_MAGIC {
        return Err("not a weir segment file (bad magic)".into());
    }
    if crc32c::crc32c(&h[..28]) != u32_at(h, 28) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32_at(h, 8);
    if version != FORMAT_VERSION {
        return Err(format!("segment format version {version} is not supported"));
    }
    Ok(i64_at(h, 16))
}

/// The fixed part of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub len: u32,
    pub crc: u32,
    pub seq: i64,
    pub ingest_time: i64,
}

impl RecordHeader {
    pub fn parse(b: &[u8; RECORD_HEADER_LEN]) -> Self {
        RecordHeader {
            len: u32_at(b, 0),
            crc: u32_at(b, 4),
            seq: i64_at(b, 8),
            ingest_time: i64_at(b, 16),
        }
    }

    pub fn total_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.len)
    }

    /// Whether `payload` is the one this header was written with.
    pub fn verifies(&self, payload: &[u8]) -> bool {
        record_crc(self.len, self.seq, self.ingest_time, payload) == self.crc
    }
}

fn record_crc(len: u32, seq: i64, ingest_time: i64, payload: &[u8]) -> u32 {
    let mut crc = crc32c::crc32c(&len.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &seq.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &ingest_time.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// Appends one record to `out`.
pub fn encode_record(seq: i64, ingest_time: i64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("payloads are below the frame limit");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_crc(len, seq, ingest_time, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&ingest_time.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A point of the sparse index: the record of `seq` starts at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub seq: i64,
    pub offset: u64,
    pub ingest_time: i64,
}

impl IndexEntry {
    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b[..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.ingest_time.to_le_bytes());
        let crc = crc32c::crc32c(&b[..24]);
        b[24..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != INDEX_ENTRY_LEN || crc32c::crc32c(&b[..24]) != u32_at(b, 24) {
            return None;
        }
        Some(IndexEntry {
            seq: i64_at(b, 0),
            offset: u64_at(b, 8),
            ingest_time: i64_at(b, 16),
        })
    }
}

/// What a sealed segment's index footer records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedSummary {
    pub next_seq: i64,
    pub bytes: u64,
    pub newest_ingest_time: i64,
}

/// The whole index file of a sealed segment.
pub fn encode_sealed_index(entries: &[IndexEntry], summary: SealedSummary) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * INDEX_ENTRY_LEN + INDEX_FOOTER_LEN);
    for e in entries {
        out.extend_from_slice(&e.encode());
    }
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&summary.next_seq.to_le_bytes());
    out.extend_from_slice(&summary.bytes.to_le_bytes());
    out.extend_from_slice(&summary.newest_ingest_time.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out
}

/// Entries and summary of a sealed index file; `None` if it is not a whole,
/// intact sealed index.
pub fn decode_sealed_index(b: &[u8]) -> Option<(Vec<IndexEntry>, SealedSummary)> {
    let body_len = b.len().checked_sub(INDEX_FOOTER_LEN)?;
    let footer = &b[body_len..];
    if &footer[..8] != INDEX_MAGIC || crc32c::crc32c(&b[..body_len + 40]) != u32_at(footer, 40) {
        return None;
    }
    let count = usize::try_from(u64_at(footer, 32)).ok()?;
    if count.checked_mul(INDEX_ENTRY_LEN)? != body_len {
        return None;
    }
    let entries = b[..body_len]
        .chunks(INDEX_ENTRY_LEN)
        .map(IndexEntry::decode)
        .collect::<Option<Vec<_>>>()?;
    Some((
        entries,
        SealedSummary {
            next_seq: i64_at(footer, 8),
            bytes: u64_at(footer, 16),
            newest_ingest_time: i64_at(footer, 24),
        },
    ))
}

/// Entries of an active segment's index file that verify; stops at the
/// first that does not (a torn tail).
pub fn decode_active_index(b: &[u8]) -> Vec<IndexEntry> {
    b.chunks(INDEX_ENTRY_LEN)
        .map_while(IndexEntry::decode)
        .collect()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_verify_and_any_flipped_bit_is_caught() {
        let mut rec = Vec::new();
        encode_record(7, 1_700_000_000_000, b"payload", &mut rec);
        assert_eq!(rec.len(), RECORD_HEADER_LEN + 7);
        let header = RecordHeader::parse(rec[..RECORD_HEADER_LEN].try_into().unwrap());
        assert_eq!((header.len, header.seq), (7, 7));
        assert!(header.verifies(&rec[RECORD_HEADER_LEN..]));
        for bit in 0..rec.len() * 8 {
            let mut bad = rec.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let h = RecordHeader::parse(bad[..RECORD_HEADER_LEN].try_into().unwrap());
            let payload = &bad[RECORD_HEADER_LEN..];
            let intact = h.len as usize == payload.len() && h.verifies(payload);
            assert!(!intact, "bit {bit} flipped unnoticed");
        }
    }

    #[test]
    fn headers_and_indexes_roundtrip_and_reject_damage() {
        let h = encode_segment_header(42);
        assert_eq!(decode_segment_header(&h), Ok(42));
        let mut bad = h;
        bad[17] ^= 1;
        assert!(decode_segment_header(&bad).is_err());
        let entries = [
            IndexEntry {
                seq: 42,
                offset: 32,
                ingest_time: 1,
            },
            IndexEntry {
                seq: 90,
                offset: 4200,
                ingest_time: 2,
            },
        ];
        let summary = SealedSummary {
            next_seq: 100,
            bytes: 9000,
            newest_ingest_time: 3,
        };
        let file = encode_sealed_index(&entries, summary);
        assert_eq!(
            decode_sealed_index(&file),
            Some((entries.to_vec(), summary))
        );
        assert_eq!(decode_sealed_index(&file[..file.len() - 1]), None);
        let active: Vec<u8> = entries
            .iter()
            .flat_map(|e| e.encode())
            .chain([1, 2, 3])
            .collect();
        assert_eq!(decode_active_index(&active), entries);
        assert_eq!(parse_name(&segment_name(42)), Some((42, "seg")));
        assert_eq!(parse_name("00000000000000000042.seg.tmp"), None);
        let floor = encode_floor(1 << 40);
        assert_eq!(decode_floor(&floor), Ok(1 << 40));
        let mut bad = floor;
        bad[9] ^= 4;
        assert!(decode_floor(&bad).is_err());
        assert!(decode_floor(&floor[..19]).is_err());
    }
}
