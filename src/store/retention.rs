//! Retention policy, pure: given a stream's settings and its segments, what
//! must go. The stream's writer (an append) and the sweeper carry it out;
//! reads and describes only look past expired segments
//! ([`first_unexpired`]), so they never fail or change files because TTL
//! is due. Only whole segments ever leave, so `oldestSequenceNumber` moves
//! in segment steps.

use super::log::SegmentInfo;
use crate::protocol::model::StrategyOnFull;

/// Whether every message of `segment` has outlived the stream's TTL.
/// Messages "may be deleted any time after their TTL" (PROTOCOL.md 8): weir
/// deletes a segment once its newest message has expired.
/// An empty segment (the file log keeps one to remember the next sequence
/// number) holds nothing to expire.
pub fn expired(segment: &SegmentInfo, ttl_millis: Option<i64>, now_millis: i64) -> bool {
    let empty = segment.next_sequence_number == segment.first_sequence_number;
    !empty
        && ttl_millis
            .is_some_and(|ttl| segment.newest_ingest_time.saturating_add(ttl) <= now_millis)
}

/// What a reader sees of a stream whose expired segments are still there:
/// the first segment that has not expired (expired ones are a prefix, as
/// the writer removes them oldest first), and the bytes of those before it.
/// `next` gives the segment after one ending at a sequence number.
pub fn first_unexpired(
    oldest: Option<SegmentInfo>,
    next: impl Fn(i64) -> Option<SegmentInfo>,
    ttl_millis: Option<i64>,
    now_millis: i64,
) -> (Option<SegmentInfo>, u64) {
    let mut segment = oldest;
    let mut expired_bytes = 0;
    while let Some(s) = segment.filter(|s| expired(s, ttl_millis, now_millis)) {
        expired_bytes += s.bytes;
        segment = next(s.next_sequence_number);
    }
    (segment, expired_bytes)
}

/// What to do before appending a record of `record_bytes` to a stream that
/// holds `total_bytes`.
#[derive(Debug, PartialEq, Eq)]
pub enum Room {
    /// It fits.
    Fits,
    /// Drop the oldest segment and ask again (`OverwriteOldestData`).
    DropOldest,
    /// Refuse the append (`RejectNewData`, or a record larger than the
    /// whole stream).
    Refuse,
}

pub fn make_room(
    total_bytes: u64,
    record_bytes: u64,
    max_size: u64,
    strategy: StrategyOnFull,
) -> Room {
    if record_bytes > max_size {
        Room::Refuse
    } else if total_bytes + record_bytes <= max_size {
        Room::Fits
    } else {
        match strategy {
            StrategyOnFull::RejectNewData => Room::Refuse,
            StrategyOnFull::OverwriteOldestData => Room::DropOldest,
        }
    }
}

/// Whether the active segment must be sealed before a record of
/// `record_bytes` goes in: segments hold at most `segment_size` bytes, unless
/// a single record is larger.
pub fn seal_before_append(active: &SegmentInfo, record_bytes: u64, segment_size: u64) -> bool {
    active.bytes > 0 && active.bytes + record_bytes > segment_size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(bytes: u64, newest: i64) -> SegmentInfo {
        SegmentInfo {
            first_sequence_number: 0,
            next_sequence_number: 1,
            bytes,
            newest_ingest_time: newest,
            sealed: true,
        }
    }

    #[test]
    fn ttl_counts_from_the_newest_message() {
        assert!(!expired(&segment(1, 1000), None, i64::MAX));
        let mut empty = segment(0, 1000);
        empty.next_sequence_number = empty.first_sequence_number;
        assert!(!expired(&empty, Some(60_000), i64::MAX));
        assert!(!expired(&segment(1, 1000), Some(60_000), 60_999));
        assert!(expired(&segment(1, 1000), Some(60_000), 61_000));
        assert!(!expired(
            &segment(1, i64::MAX - 1),
            Some(60_000),
            i64::MAX - 1
        ));
    }

    #[test]
    fn readers_skip_the_expired_prefix() {
        let segments =
            [(0, 10, 1_000), (10, 20, 2_000), (20, 30, 9_000)].map(|(first, next, newest)| {
                SegmentInfo {
                    first_sequence_number: first,
                    next_sequence_number: next,
                    bytes: 100,
                    newest_ingest_time: newest,
                    sealed: true,
                }
            });
        let after = |seq: i64| {
            segments
                .iter()
                .copied()
                .find(|s| s.next_sequence_number > seq)
        };
        let view = |ttl, now| {
            let (first, bytes) = first_unexpired(Some(segments[0]), after, ttl, now);
            (first.map(|s| s.first_sequence_number), bytes)
        };
        assert_eq!(view(None, i64::MAX), (Some(0), 0));
        assert_eq!(view(Some(1_000), 2_500), (Some(10), 100));
        assert_eq!(view(Some(1_000), 3_000), (Some(20), 200));
        assert_eq!(view(Some(1_000), 10_000), (None, 300));
    }

    #[test]
    fn room_by_strategy() {
        use StrategyOnFull::*;
        assert_eq!(make_room(0, 1024, 1024, RejectNewData), Room::Fits);
        assert_eq!(make_room(1, 1024, 1024, RejectNewData), Room::Refuse);
        assert_eq!(
            make_room(1, 1024, 1024, OverwriteOldestData),
            Room::DropOldest
        );
        assert_eq!(make_room(0, 1025, 1024, OverwriteOldestData), Room::Refuse);
    }

    #[test]
    fn segments_are_sealed_when_the_next_record_would_overflow_them() {
        let mut active = segment(0, 0);
        assert!(
            !seal_before_append(&active, 5000, 1024),
            "an empty segment takes any record"
        );
        active.bytes = 1000;
        assert!(!seal_before_append(&active, 24, 1024));
        assert!(seal_before_append(&active, 25, 1024));
    }
}
