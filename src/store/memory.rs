//! [`MemoryLog`]: segments kept in memory (`Persistence.Memory`, and, until
//! the file log lands, `File` too).

use super::log::{ReadLimits, SegmentInfo, SegmentLog, StorageError, RECORD_OVERHEAD};
use crate::protocol::model::Message;
use bytes::Bytes;
use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct MemoryLog {
    segments: VecDeque<Segment>,
    next_sequence_number: i64,
    total_bytes: u64,
}

#[derive(Debug)]
struct Segment {
    info: SegmentInfo,
    messages: Vec<Message>,
}

impl MemoryLog {
    pub fn new() -> Self {
        Self::default()
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
        if self.active_segment().is_none() {
            self.segments.push_back(Segment {
                info: SegmentInfo {
                    first_sequence_number: seq,
                    next_sequence_number: seq,
                    bytes: 0,
                    newest_ingest_time: ingest_time,
                    sealed: false,
                },
                messages: Vec::new(),
            });
        }
        let segment = self
            .segments
            .back_mut()
            .expect("an active segment was just ensured");
        let size = payload.len() as u64 + RECORD_OVERHEAD;
        segment.messages.push(Message {
            sequence_number: seq,
            ingest_time,
            payload,
        });
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
            for message in segment.messages.iter().skip(start) {
                let cost = limits.cost(message.payload.len());
                if out.len() == limits.max_count
                    || (!out.is_empty() && bytes + cost > limits.max_bytes)
                {
                    return Ok(out);
                }
                bytes += cost;
                out.push(message.clone());
            }
        }
        Ok(out)
    }
}
