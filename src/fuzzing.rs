//! The fuzz targets' logic, one function per target (feature `test-util`).
//!
//! Each function takes arbitrary bytes and panics only when a property the
//! code promises is broken; any error the code is allowed to return is
//! accepted. `fuzz/fuzz_targets/*.rs` hand them libFuzzer's inputs, and
//! `tests/fuzz_smoke.rs` runs them over the committed corpus (`fuzz/corpus/`)
//! and deterministic mutations of it, so CI needs no fuzzer.
//!
//! * [`frames`]: [`RawFrame::check`]/[`RawFrame::split_from`] over the whole
//!   input and [`FrameCodec`] fed the same bytes in input-chosen chunks must
//!   find the same frames and fail at the same point; each frame re-encodes
//!   to the bytes it came from; the connections' [`FrameReader`] over the
//!   same bytes finds them too, reads past frames above its limit, and gives
//!   back every bit of receive budget it took.
//! * [`request`]: [`Request::decode`] and [`ConnectRequest::decode`] of an
//!   op byte and a payload; a decoded request, encoded again the way the
//!   SDKs do, decodes to the same request.
//! * [`segment_recovery`]: the bytes as a segment file (optionally with an
//!   index file) of a `File` stream in a [`SimulatedFs`] store; the store
//!   opens and every message it then claims to hold reads back, or fails
//!   with a [`crate::store::StoreError`].

use crate::clock::ManualClock;
use crate::protocol::cbor::Writer;
use crate::protocol::frame::{RawFrame, HEADER_LEN};
use crate::protocol::model::{MessageStreamDefinition, ReadMessagesOptions, StrategyOnFull};
use crate::protocol::{ConnectRequest, FrameError, ProtocolVersion, Request, RequestBody};
use crate::server::codec::{CodecError, FrameCodec, FrameReader, Received};
use crate::store::fs::FileSystem;
use crate::store::simfs::SimulatedFs;
use crate::store::{Store, StoreError, StoreLimits};
use bytes::{Bytes, BytesMut};
use std::path::Path;
use std::sync::Arc;
use tokio_util::codec::Decoder;

/// Frames: byte 0 picks the frame limit, byte 1 seeds the chunk sizes, the
/// rest is the wire.
pub fn frames(data: &[u8]) {
    let [limit, chunk_seed, wire @ ..] = data else {
        return;
    };
    // Small limits reach the length check; 0 stands for the real one.
    let max_len = match limit {
        0 => crate::protocol::MAX_FRAME_LEN,
        n => 2 + usize::from(*n) * 4,
    };

    // Reference: check/split over the whole buffer at once.
    let mut whole = BytesMut::from(wire);
    let mut expected = Vec::new();
    let expected_end = loop {
        match RawFrame::check(&whole, max_len) {
            Ok(Some(total)) => {
                assert!(
                    total >= HEADER_LEN + 2 && total <= HEADER_LEN + max_len,
                    "frame size {total} outside the limit {max_len}"
                );
                let before = whole.len();
                let frame = RawFrame::split_from(&mut whole, total);
                assert_eq!(before - whole.len(), total);
                expected.push(frame);
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let mut consumed = 0;
    for frame in &expected {
        let mut encoded = BytesMut::new();
        RawFrame::encode(frame.op, &frame.payload, &mut encoded);
        assert_eq!(
            &encoded[..],
            &wire[consumed..consumed + encoded.len()],
            "a frame re-encodes to its bytes"
        );
        consumed += encoded.len();
    }
    if expected_end.is_none() {
        assert!(
            RawFrame::check(&wire[consumed..], max_len) == Ok(None),
            "the leftover is an incomplete frame"
        );
    }

    // The codec, fed in chunks of 1..=64 bytes chosen by a small LCG.
    let mut codec = FrameCodec::new(max_len);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut state = u32::from(*chunk_seed) | 1;
    let mut rest = wire;
    let got_end = 'feed: loop {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (state >> 16) as usize % 64).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        buf.extend_from_slice(chunk);
        rest = tail;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => got.push(frame),
                Ok(None) => break,
                Err(CodecError::Frame(e)) => break 'feed Some(e),
                Err(CodecError::Io(e)) => panic!("the decoder invented an I/O error: {e}"),
                Err(CodecError::ClosedInFrame) => panic!("a decoder over a buffer saw a close"),
            }
        }
        // Room is reserved in steps, not from the declared length (which
        // may say 1 GiB): at most a few steps beyond what arrived.
        assert!(
            buf.capacity() <= (4 << 20) + 2 * wire.len(),
            "capacity {} for {} buffered bytes",
            buf.capacity(),
            buf.len()
        );
        if rest.is_empty() {
            break None;
        }
    };
    assert_eq!(got, expected, "chunked decoding finds the same frames");
    assert_eq!(
        got_end.as_ref().map(FrameError::to_string),
        expected_end.as_ref().map(FrameError::to_string),
        "chunked decoding fails where whole-buffer decoding does"
    );
    connection_reader(wire, max_len, *chunk_seed);
}

/// What the connections' [`FrameReader`] must make of `wire`, read in
/// chunks, then the end of the stream: every frame within `max_len`; one
/// above it (within the protocol's limit) read past as `TooLarge` with the
/// start of its payload; a length the protocol forbids as an error; a close
/// inside a frame as `ClosedInFrame`.
fn connection_reader(wire: &[u8], max_len: usize, chunk_seed: u8) {
    #[derive(Debug, PartialEq)]
    enum Seen {
        Frame(RawFrame),
        TooLarge { op: u8, head: Bytes, len: usize },
        Forbidden,
        ClosedInFrame,
        End,
    }
    let protocol_max = crate::protocol::MAX_FRAME_LEN.max(max_len);
    let mut expected = Vec::new();
    let mut at = 0;
    loop {
        let rest = &wire[at..];
        match RawFrame::declared_len(rest, protocol_max) {
            Err(_) => {
                expected.push(Seen::Forbidden);
                break;
            }
            Ok(None) if rest.is_empty() => {
                expected.push(Seen::End);
                break;
            }
            Ok(None) => {
                expected.push(Seen::ClosedInFrame);
                break;
            }
            Ok(Some(len)) if rest.len() < HEADER_LEN + len => {
                expected.push(Seen::ClosedInFrame);
                break;
            }
            Ok(Some(len)) => {
                let op = rest[HEADER_LEN];
                let payload = &rest[HEADER_LEN + 1..HEADER_LEN + len];
                expected.push(if len > max_len {
                    Seen::TooLarge {
                        op,
                        head: Bytes::copy_from_slice(
                            &payload[..payload.len().min(crate::server::codec::TOO_LARGE_HEAD)],
                        ),
                        len,
                    }
                } else {
                    Seen::Frame(RawFrame {
                        op,
                        payload: Bytes::copy_from_slice(payload),
                    })
                });
                at += HEADER_LEN + len;
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let budget = Arc::new(tokio::sync::Semaphore::new(64 << 20));
    let got = runtime.block_on(async {
        let source = Chunked {
            wire: wire.to_vec(),
            at: 0,
            state: u32::from(chunk_seed) | 1,
        };
        let mut reader = FrameReader::new(source, max_len, Arc::clone(&budget));
        let mut got = Vec::new();
        loop {
            let seen = match reader.next().await {
                Some(Ok(Received::Frame(frame))) => Seen::Frame(frame),
                Some(Ok(Received::TooLarge { op, head, len })) => Seen::TooLarge { op, head, len },
                Some(Err(CodecError::Frame(_))) => Seen::Forbidden,
                Some(Err(CodecError::ClosedInFrame)) => Seen::ClosedInFrame,
                Some(Err(CodecError::Io(e))) => panic!("the reader invented an I/O error: {e}"),
                None => Seen::End,
            };
            let last = !matches!(seen, Seen::Frame(_) | Seen::TooLarge { .. });
            got.push(seen);
            if last {
                break got;
            }
        }
    });
    assert_eq!(got, expected, "the connections' reader, fed in chunks");
    assert_eq!(
        budget.available_permits(),
        64 << 20,
        "the reader gives back all the receive budget it took"
    );
}

/// An in-memory stream that hands out 1..=64 bytes per read (sizes from a
/// small LCG).
struct Chunked {
    wire: Vec<u8>,
    at: usize,
    state: u32,
}

impl tokio::io::AsyncRead for Chunked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.state = this.state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (this.state >> 16) as usize % 64)
            .min(this.wire.len() - this.at)
            .min(buf.remaining());
        buf.put_slice(&this.wire[this.at..this.at + n]);
        this.at += n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Requests: byte 0 is the op, the rest the payload.
pub fn request(data: &[u8]) {
    let [op, payload @ ..] = data else {
        return;
    };
    if let Ok(request) = Request::decode(*op, payload) {
        let again = encode_request(&request);
        assert_eq!(
            Request::decode(*op, &again).as_ref(),
            Ok(&request),
            "a decoded request round-trips through the SDKs' encoding"
        );
    }
    let frame = RawFrame {
        op: *op,
        payload: Bytes::copy_from_slice(payload),
    };
    if let Ok(connect) = ConnectRequest::decode(&frame) {
        // Whatever the versions say, an agreed one is one weir speaks.
        if let Ok(version) = connect.negotiate() {
            assert!(ProtocolVersion::SUPPORTED.contains(&version));
        }
    }
}

/// A request as the SDKs write it: a definite map with every field the
/// model has.
fn encode_request(request: &Request) -> Vec<u8> {
    let mut w = Writer::default();
    let id = &request.request_id;
    match &request.body {
        RequestBody::CreateMessageStream { definition }
        | RequestBody::UpdateMessageStream { definition } => {
            w.map(2)
                .kv_text("requestId", id)
                .text("definition")
                .fields(&definition.fields());
        }
        RequestBody::DeleteMessageStream { name } | RequestBody::DescribeMessageStream { name } => {
            w.map(2).kv_text("requestId", id).kv_text("name", name);
        }
        RequestBody::AppendMessage { name, payload } => {
            w.map(3)
                .kv_text("requestId", id)
                .kv_text("name", name)
                .text("payload")
                .bytes(payload);
        }
        RequestBody::ReadMessages {
            stream_name,
            options,
        } => {
            w.map(3)
                .kv_text("requestId", id)
                .kv_text("streamName", stream_name)
                .text("readMessagesOptions")
                .map(4)
                .kv_int(
                    "desiredStartSequenceNumber",
                    options.desired_start_sequence_number,
                )
                .kv_int("minMessageCount", options.min_message_count)
                .kv_int("maxMessageCount", options.max_message_count)
                .kv_int("readTimeoutMillis", options.read_timeout_millis);
        }
        RequestBody::ListStreams => {
            w.map(1).kv_text("requestId", id);
        }
    }
    w.into_vec()
}

const STORE_ROOT: &str = "/store";
const STREAM: &str = "s";
/// Smallest record on disk: its header, with an empty payload.
const MIN_RECORD: usize = crate::store::log::RECORD_OVERHEAD as usize;

/// Segment recovery: byte 0 holds flags, the rest is the segment file.
///
/// * bit 0: checksums are fixed up before the file is written (the segment
///   header's and each record's, walking the records as their lengths
///   say), so mutations get past the checksums to the logic behind them;
/// * bit 1: the two bytes after the flags (little-endian) are the length of
///   an index file that follows, then the segment file.
pub fn segment_recovery(data: &[u8]) {
    let [flags, rest @ ..] = data else {
        return;
    };
    let (mut index, mut segment) = match (flags & 2 != 0, rest) {
        (true, [lo, hi, rest @ ..]) => {
            let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
            let (index, segment) = rest.split_at(len);
            (Some(index.to_vec()), segment.to_vec())
        }
        _ => (None, rest.to_vec()),
    };
    if flags & 1 != 0 {
        fix_segment_checksums(&mut segment);
        if let Some(index) = index.as_mut() {
            fix_index_checksums(index);
        }
    }

    let fs = SimulatedFs::new();
    let root = Path::new(STORE_ROOT);
    let dir = {
        let store = open_store(&fs);
        let definition = MessageStreamDefinition {
            stream_segment_size: 1024,
            strategy_on_full: StrategyOnFull::RejectNewData,
            ..MessageStreamDefinition::with_defaults(STREAM.into())
        };
        store
            .create(definition)
            .expect("a stream is created on an empty simulated disk");
        crate::store::disk::stream_dir(root, STREAM)
    };
    assert!(fs.is_dir(&dir));
    let first = crate::store::file::format::segment_name(0);
    fs.put(&dir.join(&first), &segment);
    if let Some(index) = &index {
        fs.put(&dir.join(crate::store::file::format::index_name(0)), index);
    }

    let store = open_store(&fs);
    let Ok(info) = store.describe(STREAM) else {
        // A stream that cannot be loaded is reported and set aside.
        return;
    };
    let status = info.storage_status;
    let claimed = status.newest_sequence_number - status.oldest_sequence_number + 1;
    // A sealed segment's index footer is trusted at open (weir decision:
    // no scan of sealed segments at start-up), so an index whose checksums
    // were made to fit may claim more than the segment holds; reading
    // those must then fail. Without one, what is claimed was found in the
    // segment.
    let footer_trusted = index.is_some() && flags & 1 != 0;
    assert!(
        footer_trusted || claimed <= (segment.len() / MIN_RECORD) as i64,
        "{claimed} messages claimed from a {}-byte segment",
        segment.len()
    );
    assert!(
        footer_trusted || status.total_bytes <= segment.len() as i64,
        "{} bytes claimed from a {}-byte segment",
        status.total_bytes,
        segment.len()
    );
    let mut next = status.oldest_sequence_number;
    while next <= status.newest_sequence_number {
        let options = ReadMessagesOptions {
            desired_start_sequence_number: next,
            min_message_count: 1,
            max_message_count: 64,
            read_timeout_millis: 0,
        };
        match store.try_read(STREAM, &options) {
            Ok(Some(messages)) => {
                assert!(!messages.is_empty(), "a ready read returns messages");
                for message in &messages {
                    assert_eq!(message.sequence_number, next, "reads are consecutive");
                    next += 1;
                }
            }
            Ok(None) => panic!("a read with readTimeoutMillis 0 never waits"),
            // Damage found while reading is reported as a read error.
            Err(StoreError::Read(_)) => return,
            Err(e) => panic!("reading message {next} of {claimed} failed with {e}"),
        }
    }
    // The stream still takes appends after recovery (unless its disk
    // said no), continuing the sequence.
    if let Ok(appended) = store.append(STREAM, Bytes::from_static(b"after")) {
        assert_eq!(appended.sequence_number, status.newest_sequence_number + 1);
    }
}

fn open_store(fs: &SimulatedFs) -> Store {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    Store::open(
        Arc::new(fs.clone()),
        Path::new(STORE_ROOT),
        clock,
        StoreLimits {
            max_read_bytes: 1 << 20,
        },
    )
    .expect("a simulated store always opens")
}

fn fix_segment_checksums(segment: &mut [u8]) {
    use crate::store::file::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
    let header = SEGMENT_HEADER_LEN as usize;
    if segment.len() < header {
        return;
    }
    let crc = crc32c::crc32c(&segment[..28]);
    segment[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut at = header;
    while at + RECORD_HEADER_LEN <= segment.len() {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(end) = (at + RECORD_HEADER_LEN)
            .checked_add(len)
            .filter(|end| *end <= segment.len())
        else {
            return;
        };
        let mut crc = crc32c::crc32c(&segment[at..at + 4]);
        crc = crc32c::crc32c_append(crc, &segment[at + 8..end]);
        segment[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

fn fix_index_checksums(index: &mut [u8]) {
    use crate::store::file::format::{INDEX_ENTRY_LEN, INDEX_FOOTER_LEN};
    let footer_at = index.len().saturating_sub(INDEX_FOOTER_LEN);
    let has_footer =
        index.len() >= INDEX_FOOTER_LEN && index[footer_at..footer_at + 8] == *b"WEIRIDX1";
    let entries_end = if has_footer { footer_at } else { index.len() };
    let mut at = 0;
    while at + INDEX_ENTRY_LEN <= entries_end {
        let crc = crc32c::crc32c(&index[at..at + 24]);
        index[at + 24..at + 28].copy_from_slice(&crc.to_le_bytes());
        at += INDEX_ENTRY_LEN;
    }
    if has_footer {
        let crc = crc32c::crc32c(&index[..footer_at + 40]);
        index[footer_at + 40..footer_at + 44].copy_from_slice(&crc.to_le_bytes());
    }
}
