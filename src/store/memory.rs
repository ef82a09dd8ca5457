//! [`MemoryLog`]: segments kept in memory (`Persistence.Memory`, and every
//! stream of a store made by `Store::new`, which has no disk).
//!
//! Messages are not kept one allocation each. A `Vec<Message>` per segment
//! costs a 48-byte `Message` (plus the vector's spare room) and a malloc
//! block per payload: about 1.6 times the payload for 100-byte messages.
//! And memory freed that way stays with the process: glibc returns freed
//! heap memory to the OS only from the top of its heaps, and serves large
//! blocks by `mmap` only until the first one is freed (then it raises its
//! threshold to that block's size, so equal blocks come from the heap).
//!
//! So records are written one after another into *chunks*, anonymous
//! memory mappings (the first of a log [`FIRST_CHUNK_LEN`] bytes, each next
//! one twice the last, up to [`CHUNK_LEN`]), as the file log writes them
//! into segment files:
//!
//! ```text
//! record   len u32 LE | ingest_time i64 LE | payload (len bytes)
//! ```
//!
//! and each segment keeps one `u64` per message: where its record starts
//! (chunk number << `OFFSET_BITS` | offset in the chunk). That is 20 bytes
//! per message on top of the payload, below the [`RECORD_OVERHEAD`] every
//! message is counted with.
//!
//! * The newest chunk is written to. Once a record does not fit in what is
//!   left of it, it is *frozen*: handed to a [`Bytes`] that owns the
//!   mapping, and readers get slices of it (zero copy). Payloads still in
//!   the chunk being written are copied out for readers.
//! * A record larger than a quarter of a chunk gets a chunk of its own,
//!   exactly its size (after freezing the one being written, so chunk
//!   numbers stay in message order).
//! * Chunks hold consecutive messages and may span segments. When a
//!   segment leaves, the chunks before the first message left are dropped;
//!   dropping the last `Bytes` of a chunk unmaps it, so the memory goes
//!   back to the OS at once. A reader still holding a payload keeps its
//!   chunk until it lets go.
//! * Pages of a mapping that were never written are not resident: a stream
//!   holding one small message costs a page of memory, and the small first
//!   chunk keeps many small streams from taking much address space (which
//!   32-bit devices have little of).

use super::log::{
    IoContext, ReadLimits, SegmentInfo, SegmentLog, StorageError, StorageOp, RECORD_OVERHEAD,
};
use crate::protocol::model::Message;
use bytes::Bytes;
use memmap2::MmapMut;
use std::collections::VecDeque;

/// Size of a chunk once a log has grown.
pub const CHUNK_LEN: usize = 1 << 20;
/// Size of a log's first chunk.
pub const FIRST_CHUNK_LEN: usize = 64 << 10;
/// A record's length and ingest time, in front of its payload.
const RECORD_HEADER: usize = 4 + 8;
/// Bits of a record position that hold the offset in its chunk.
const OFFSET_BITS: u32 = 24;
const _: () = assert!(CHUNK_LEN <= 1 << OFFSET_BITS);
/// Records above this get a chunk of their own.
const OWN_CHUNK_ABOVE: usize = CHUNK_LEN / 4;
/// Resident memory is counted in pages.
const PAGE: usize = 4096;

#[derive(Default)]
pub struct MemoryLog {
    segments: VecDeque<Segment>,
    /// Frozen chunks, oldest first: `frozen[i]` is chunk `first_chunk + i`.
    frozen: VecDeque<Bytes>,
    first_chunk: u64,
    /// The chunk being written, number `first_chunk + frozen.len()`.
    writing: Option<WritingChunk>,
    /// Size of the next chunk (0: [`FIRST_CHUNK_LEN`]).
    next_chunk_len: usize,
    next_sequence_number: i64,
    total_bytes: u64,
}

struct WritingChunk {
    map: MmapMut,
    written: usize,
}

struct Segment {
    info: SegmentInfo,
    /// Where each message's record starts, in sequence order.
    records: Vec<u64>,
}

impl std::fmt::Debug for MemoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLog")
            .field("segments", &self.segments.len())
            .field("frozen_chunks", &self.frozen.len())
            .field("next_sequence_number", &self.next_sequence_number)
            .field("total_bytes", &self.total_bytes)
            .finish()
    }
}

/// A chunk as a read sees it.
enum Chunk<'a> {
    Frozen(&'a Bytes),
    Writing(&'a [u8]),
}

impl Chunk<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Frozen(bytes) => bytes,
            Chunk::Writing(bytes) => bytes,
        }
    }

    /// The payload length and ingest time of the record at `offset`.
    fn header(&self, offset: usize) -> (usize, i64) {
        let b = &self.bytes()[offset..offset + RECORD_HEADER];
        let len = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
        let ingest_time = i64::from_le_bytes(b[4..].try_into().expect("8 bytes"));
        (len as usize, ingest_time)
    }

    fn payload(&self, offset: usize, len: usize) -> Bytes {
        let range = offset + RECORD_HEADER..offset + RECORD_HEADER + len;
        match self {
            Chunk::Frozen(bytes) => bytes.slice(range),
            Chunk::Writing(bytes) => Bytes::copy_from_slice(&bytes[range]),
        }
    }
}

fn put_record(dst: &mut [u8], len: u32, ingest_time: i64, payload: &[u8]) {
    dst[..4].copy_from_slice(&len.to_le_bytes());
    dst[4..RECORD_HEADER].copy_from_slice(&ingest_time.to_le_bytes());
    dst[RECORD_HEADER..RECORD_HEADER + payload.len()].copy_from_slice(payload);
}

impl MemoryLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Memory the log holds for its messages: the pages written in frozen
    /// chunks, the whole chunk being written, and the record positions.
    /// (Never-written pages of a mapping are not resident, so this is an
    /// upper bound of what the messages add to RSS.)
    pub fn allocated_bytes(&self) -> usize {
        let frozen: usize = self
            .frozen
            .iter()
            .map(|c| c.len().div_ceil(PAGE) * PAGE)
            .sum();
        let writing = self.writing.as_ref().map_or(0, |w| w.map.len());
        let positions: usize = self
            .segments
            .iter()
            .map(|s| s.records.capacity() * std::mem::size_of::<u64>())
            .sum();
        frozen + writing + positions
    }

    fn writing_number(&self) -> u64 {
        self.first_chunk + self.frozen.len() as u64
    }

    /// Ends the chunk being written: its records are read from a `Bytes`
    /// from now on.
    fn freeze_writing(&mut self) {
        if let Some(chunk) = self.writing.take() {
            if chunk.written > 0 {
                let written = chunk.written;
                self.frozen
                    .push_back(Bytes::from_owner(chunk.map).slice(..written));
            }
        }
    }

    /// Writes a record into a chunk and returns its position.
    fn write_record(&mut self, ingest_time: i64, payload: &[u8]) -> Result<u64, StorageError> {
        let len = u32::try_from(payload.len()).map_err(|_| StorageError::Io {
            op: StorageOp::MapMemory,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a payload of 4 GiB or more",
            ),
        })?;
        let record_len = RECORD_HEADER + payload.len();
        if record_len > OWN_CHUNK_ABOVE {
            let mut map = MmapMut::map_anon(record_len).during(StorageOp::MapMemory)?;
            put_record(&mut map, len, ingest_time, payload);
            self.freeze_writing();
            let number = self.writing_number();
            self.frozen.push_back(Bytes::from_owner(map));
            return Ok(number << OFFSET_BITS);
        }
        if self
            .writing
            .as_ref()
            .is_some_and(|w| w.map.len() - w.written < record_len)
        {
            self.freeze_writing();
        }
        if self.writing.is_none() {
            let len = self.next_chunk_len.max(FIRST_CHUNK_LEN).max(record_len);
            self.writing = Some(WritingChunk {
                map: MmapMut::map_anon(len).during(StorageOp::MapMemory)?,
                written: 0,
            });
            self.next_chunk_len = (len * 2).min(CHUNK_LEN);
        }
        let number = self.writing_number();
        let chunk = self.writing.as_mut().expect("a chunk was just ensured");
        let offset = chunk.written;
        put_record(&mut chunk.map[offset..], len, ingest_time, payload);
        chunk.written += record_len;
        Ok(number << OFFSET_BITS | offset as u64)
    }

    fn chunk(&self, position: u64) -> (Chunk<'_>, usize) {
        let number = position >> OFFSET_BITS;
        let offset = (position & ((1 << OFFSET_BITS) - 1)) as usize;
        let index = usize::try_from(number - self.first_chunk).expect("a retained chunk");
        let chunk = match self.frozen.get(index) {
            Some(bytes) => Chunk::Frozen(bytes),
            None => {
                let writing = self
                    .writing
                    .as_ref()
                    .expect("a record is in a frozen chunk or the one being written");
                Chunk::Writing(&writing.map[..writing.written])
            }
        };
        (chunk, offset)
    }

    /// Drops the chunks no retained message is in.
    fn release_chunks(&mut self) {
        match self.segments.front().and_then(|s| s.records.first()) {
            Some(&position) => {
                let keep_from = position >> OFFSET_BITS;
                while self.first_chunk < keep_from && self.frozen.pop_front().is_some() {
                    self.first_chunk += 1;
                }
            }
            None => {
                self.first_chunk += self.frozen.len() as u64;
                self.frozen.clear();
                self.writing = None;
            }
        }
    }
}

impl SegmentLog for MemoryLog {
    fn next_sequence_number(&self) -> i64 {
        self.next_sequence_number
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
        self.segments
            .back()
            .map(|s| s.info)
            .filter(|info| !info.sealed)
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn append(&mut self, ingest_time: i64, payload: Bytes) -> Result<i64, StorageError> {
        let seq = self.next_sequence_number;
        // First the record, so a failed mapping changes nothing.
        let position = self.write_record(ingest_time, &payload)?;
        if self.active_segment().is_none() {
            self.segments.push_back(Segment {
                info: SegmentInfo {
                    first_sequence_number: seq,
                    next_sequence_number: seq,
                    bytes: 0,
                    newest_ingest_time: ingest_time,
                    sealed: false,
                },
                records: Vec::new(),
            });
        }
        let segment = self
            .segments
            .back_mut()
            .expect("an active segment was just ensured");
        let size = payload.len() as u64 + RECORD_OVERHEAD;
        segment.records.push(position);
        segment.info.next_sequence_number = seq + 1;
        segment.info.bytes += size;
        segment.info.newest_ingest_time = segment.info.newest_ingest_time.max(ingest_time);
        self.total_bytes += size;
        self.next_sequence_number = seq + 1;
        Ok(seq)
    }

    fn seal_active(&mut self) -> Result<(), StorageError> {
        if let Some(segment) = self.segments.back_mut() {
            segment.info.sealed = true;
            // A sealed segment takes no more positions.
            segment.records.shrink_to_fit();
        }
        Ok(())
    }

    fn remove_oldest_segment(&mut self) -> Result<(), StorageError> {
        if let Some(segment) = self.segments.front() {
            assert!(
                segment.info.sealed,
                "retention removes sealed segments only"
            );
            self.total_bytes -= segment.info.bytes;
            self.segments.pop_front();
            self.release_chunks();
        }
        Ok(())
    }

    fn read(&self, from: i64, limits: ReadLimits) -> Result<Vec<Message>, StorageError> {
        let first = self
            .segments
            .partition_point(|s| s.info.next_sequence_number <= from);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for segment in self.segments.range(first..) {
            let start = usize::try_from(from - segment.info.first_sequence_number).unwrap_or(0);
            for (i, &position) in segment.records.iter().enumerate().skip(start) {
                let (chunk, offset) = self.chunk(position);
                let (len, ingest_time) = chunk.header(offset);
                let cost = limits.cost(len);
                if out.len() == limits.max_count
                    || (!out.is_empty() && bytes + cost > limits.max_bytes)
                {
                    return Ok(out);
                }
                bytes += cost;
                out.push(Message {
                    sequence_number: segment.info.first_sequence_number + i as i64,
                    ingest_time,
                    payload: chunk.payload(offset, len),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_count: usize) -> ReadLimits {
        ReadLimits {
            max_count,
            max_bytes: usize::MAX,
            name_len: 1,
        }
    }

    /// Appends `count` payloads of `len` bytes, each in its own buffer as a
    /// connection hands them in, sealing segments of `segment_bytes`.
    fn fill(log: &mut MemoryLog, count: usize, len: usize, segment_bytes: u64) {
        for i in 0..count {
            let record = len as u64 + RECORD_OVERHEAD;
            if log
                .active_segment()
                .is_some_and(|s| s.bytes + record > segment_bytes)
            {
                log.seal_active().unwrap();
            }
            let payload = Bytes::from(vec![i as u8; len]);
            log.append(i as i64, payload).unwrap();
        }
    }

    #[test]
    fn allocation_follows_the_stored_bytes_and_goes_when_segments_leave() {
        let mut log = MemoryLog::new();
        fill(&mut log, 1, 100, 4 << 20);
        assert!(
            log.allocated_bytes() <= FIRST_CHUNK_LEN + 64,
            "a small stream takes a small chunk: {}",
            log.allocated_bytes()
        );
        fill(&mut log, 200_000, 100, 4 << 20);
        let stored = log.total_bytes() as usize;
        let allocated = log.allocated_bytes();
        assert!(
            allocated <= stored + stored / 10,
            "{allocated} bytes allocated for {stored} stored"
        );
        log.seal_active().unwrap();
        while log.oldest_segment().is_some() {
            log.remove_oldest_segment().unwrap();
        }
        assert_eq!(log.allocated_bytes(), 0);
    }

    /// Payloads whose records are `seq`-derived, of lengths that put some
    /// records in chunks of their own and make others straddle chunk ends.
    fn payload(seq: i64) -> Bytes {
        let len = match seq % 50 {
            7 => OWN_CHUNK_ABOVE + 1 + seq as usize % 5000,
            11 => OWN_CHUNK_ABOVE - RECORD_HEADER,
            _ => 1 + (seq as usize * 7919) % 3000,
        };
        Bytes::from(
            (0..len)
                .map(|i| (i as i64 ^ seq) as u8)
                .collect::<Vec<u8>>(),
        )
    }

    #[test]
    fn reads_return_every_message_across_chunks_segments_and_removals() {
        let mut log = MemoryLog::new();
        let mut oldest = 0;
        for seq in 0..1500 {
            if seq % 97 == 0 {
                log.seal_active().unwrap();
            }
            assert_eq!(log.append(seq * 10, payload(seq)).unwrap(), seq);
            if seq % 300 == 299 {
                // Retention: the two oldest segments leave.
                for _ in 0..2 {
                    let info = log.oldest_segment().unwrap();
                    assert!(info.sealed);
                    log.remove_oldest_segment().unwrap();
                    oldest = info.next_sequence_number;
                }
            }
            if seq % 50 == 0 {
                let got = log.read(oldest, limits(usize::MAX)).unwrap();
                assert_eq!(got.len() as i64, seq + 1 - oldest);
                for (m, expected_seq) in got.iter().zip(oldest..) {
                    assert_eq!(m.sequence_number, expected_seq);
                    assert_eq!(m.ingest_time, expected_seq * 10);
                    assert_eq!(m.payload, payload(expected_seq), "message {expected_seq}");
                }
            }
        }
        assert!(log.frozen.len() > 10, "the test crossed many chunks");
        let from_middle = log.read(1234, limits(3)).unwrap();
        let seqs: Vec<i64> = from_middle.iter().map(|m| m.sequence_number).collect();
        assert_eq!(seqs, [1234, 1235, 1236]);
    }

    #[test]
    fn frozen_payloads_are_slices_of_their_chunk_and_newest_ones_are_copies() {
        let mut log = MemoryLog::new();
        let count = 2 * CHUNK_LEN / (100 + RECORD_HEADER);
        fill(&mut log, count, 100, u64::MAX);
        let first = log.read(0, limits(1)).unwrap();
        let again = log.read(0, limits(1)).unwrap();
        assert_eq!(
            first[0].payload.as_ptr(),
            again[0].payload.as_ptr(),
            "a frozen chunk is shared, not copied"
        );
        let chunk = &log.frozen[0];
        let range = chunk.as_ptr() as usize..chunk.as_ptr() as usize + chunk.len();
        assert!(range.contains(&(first[0].payload.as_ptr() as usize)));
        let last = (count - 1) as i64;
        let newest = log.read(last, limits(1)).unwrap();
        assert_eq!(newest[0].payload, Bytes::from(vec![(count - 1) as u8; 100]));
        let newest_again = log.read(last, limits(1)).unwrap();
        assert_ne!(
            newest[0].payload.as_ptr(),
            newest_again[0].payload.as_ptr(),
            "the chunk being written is copied from"
        );
    }

    #[test]
    fn a_reader_holding_a_payload_keeps_its_chunk_after_the_segment_leaves() {
        let mut log = MemoryLog::new();
        fill(&mut log, 3 * CHUNK_LEN / 112, 100, 1 << 20);
        let held = log.read(0, limits(1)).unwrap().remove(0);
        log.seal_active().unwrap();
        while log.oldest_segment().is_some() {
            log.remove_oldest_segment().unwrap();
        }
        assert_eq!(log.allocated_bytes(), 0);
        assert_eq!(held.payload, Bytes::from(vec![0u8; 100]));
        // The log goes on after everything left.
        assert_eq!(
            log.append(1, Bytes::from_static(b"x")).unwrap(),
            (3 * CHUNK_LEN / 112) as i64
        );
    }
}
