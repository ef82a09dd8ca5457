//! Request frames read off a socket with bounded memory.
//!
//! The length is validated from the 4-byte header before anything is
//! reserved ([`RawFrame::declared_len`]). Frames that fit a connection's own
//! small buffer ([`SMALL_BUFFER`]) are read into it as they come, several per
//! read. A larger frame gets a buffer of its own that grows as its bytes
//! arrive, never to more than four times what has arrived (at least
//! [`CHUNK`]), and every growth is first taken from a server-wide budget (a
//! [`ByteBudget`]): a frame that declares a huge length and then stalls
//! holds about what it sent, and when the budget is spent a connection
//! waits (stops being read) instead of allocating. The buffer becomes the
//! frame without a copy, and its budget is given back. A frame above the
//! reader's limit is read past, keeping only its head, so that it can be
//! answered ([`Received::TooLarge`]).
//!
//! [`FrameCodec`] is the `tokio_util` decoder the benchmark client reads
//! answers with.

use super::budget::{ByteBudget, Reserved};
use crate::protocol::frame::{RawFrame, HEADER_LEN};
use crate::protocol::{FrameError, MAX_FRAME_LEN};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a connection buffers without budget: the frames of ordinary
/// requests, many of them per read.
pub const SMALL_BUFFER: usize = 64 * 1024;
/// Room left for one read before the small buffer is refilled.
const MIN_READ: usize = 4 * 1024;
/// First size of a large frame's buffer, and its least growth.
pub const CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the client closed its connection inside a frame")]
    ClosedInFrame,
}

/// What is kept of a frame above the reader's limit, for its answer.
pub const TOO_LARGE_HEAD: usize = 4 * 1024;

/// What the reader hands on.
#[derive(Debug)]
pub enum Received {
    Frame(RawFrame),
    /// A frame larger than the reader's limit (but within the protocol's,
    /// which clients keep to): its bytes were read and dropped, all but the
    /// first [`TOO_LARGE_HEAD`] of its payload, where the request id
    /// usually is, so that it can be answered `RequestPayloadTooLarge`.
    TooLarge {
        op: u8,
        head: Bytes,
        len: usize,
    },
}

/// A frame above the limit being read past.
struct Skipping {
    op: u8,
    head: BytesMut,
    /// Payload bytes still to come.
    left: usize,
    len: usize,
}

/// A large frame being received: header and body so far.
struct LargeFrame {
    buf: Vec<u8>,
    total: usize,
}

pub struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    large: Option<LargeFrame>,
    skipping: Option<Skipping>,
    max_frame_len: usize,
    budget: ByteBudget,
    /// What this reader holds of `budget`.
    held: Reserved,
    /// The first wait for budget is logged, not every one.
    waited: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R, max_frame_len: usize, budget: impl Into<ByteBudget>) -> Self {
        let budget = budget.into();
        FrameReader {
            held: budget.none(),
            reader,
            buf: BytesMut::new(),
            large: None,
            skipping: None,
            max_frame_len,
            budget,
            waited: false,
        }
    }

    /// After the handshake, request frames may be as large as configured.
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len;
    }

    /// The next frame; `None` at a clean end of the stream (between frames).
    /// Cancel-safe: bytes read and budget taken stay with the reader.
    pub async fn next(&mut self) -> Option<Result<Received, CodecError>> {
        self.next_frame().await.transpose()
    }

    async fn next_frame(&mut self) -> Result<Option<Received>, CodecError> {
        loop {
            if let Some(skip) = &mut self.skipping {
                let take = skip.left.min(self.buf.len());
                let keep = take.min(TOO_LARGE_HEAD - skip.head.len());
                skip.head.extend_from_slice(&self.buf[..keep]);
                self.buf.advance(take);
                skip.left -= take;
                if skip.left == 0 {
                    let skip = self.skipping.take().expect("matched above");
                    return Ok(Some(Received::TooLarge {
                        op: skip.op,
                        head: skip.head.freeze(),
                        len: skip.len,
                    }));
                }
            } else if self.large.is_none() {
                // Lengths the protocol forbids end the connection; one
                // above this server's own limit is read past and answered.
                let declared =
                    RawFrame::declared_len(&self.buf, MAX_FRAME_LEN.max(self.max_frame_len))?;
                if let Some(len) = declared.filter(|&len| len > self.max_frame_len) {
                    if self.buf.len() > HEADER_LEN {
                        let op = self.buf[HEADER_LEN];
                        self.buf.advance(HEADER_LEN + 1);
                        self.skipping = Some(Skipping {
                            op,
                            head: BytesMut::new(),
                            left: len - 1,
                            len,
                        });
                        continue;
                    }
                } else if let Some(total) = RawFrame::check(&self.buf, self.max_frame_len)? {
                    return Ok(Some(Received::Frame(RawFrame::split_from(
                        &mut self.buf,
                        total,
                    ))));
                } else if let Some(len) = declared {
                    let total = HEADER_LEN + len;
                    if total > SMALL_BUFFER {
                        // The buffer holds the start of this frame and
                        // nothing after it (the frame is not complete); it
                        // moves to the frame's own buffer once that has room.
                        self.large = Some(LargeFrame {
                            buf: Vec::new(),
                            total,
                        });
                    }
                }
            }
            let read = match &mut self.large {
                Some(large) if large.buf.len() == large.total => {
                    let large = self.large.take().expect("matched above");
                    self.give_back();
                    let whole = Bytes::from(large.buf);
                    return Ok(Some(Received::Frame(RawFrame {
                        op: whole[HEADER_LEN],
                        payload: whole.slice(HEADER_LEN + 1..),
                    })));
                }
                Some(large) => {
                    if large.buf.len() == large.buf.capacity() {
                        // What has arrived: still in the small buffer the
                        // first time.
                        let received = large.buf.len().max(self.buf.len());
                        let mut capacity = large.total.min((2 * received).max(CHUNK));
                        if 2 * capacity > large.total {
                            // The next growth would be the last: take it now
                            // (still under four times what arrived) and copy
                            // the frame once less.
                            capacity = large.total;
                        }
                        let growth = capacity - large.buf.capacity();
                        let more = take_budget(&self.budget, growth, &mut self.waited).await;
                        // Only now that the budget is ours: bookkeeping and
                        // allocation happen in one step, so a cancelled
                        // wait leaves nothing behind.
                        self.held.merge(more);
                        let large = self.large.as_mut().expect("still receiving");
                        large.buf.reserve_exact(capacity - large.buf.len());
                        if large.buf.is_empty() {
                            large.buf.extend_from_slice(&self.buf);
                            self.buf.clear();
                        }
                    }
                    let large = self.large.as_mut().expect("still receiving");
                    // Never past this frame: its buffer ends where it does.
                    self.reader.read_buf(&mut large.buf).await?
                }
                None => {
                    if self.buf.capacity() - self.buf.len() < MIN_READ {
                        self.buf.reserve(SMALL_BUFFER);
                    }
                    self.reader.read_buf(&mut self.buf).await?
                }
            };
            if read == 0 {
                return if self.buf.is_empty() && self.large.is_none() && self.skipping.is_none() {
                    Ok(None)
                } else {
                    Err(CodecError::ClosedInFrame)
                };
            }
        }
    }

    fn give_back(&mut self) {
        self.held.shrink_to(0);
    }
}

/// The `requestId` of a request whose payload starts with `head`, if it is
/// among the map's leading keys before anything this scan does not step over
/// (a nested map, an array, a string that goes past `head`). The SDKs put it
/// first.
pub fn request_id_in_head(head: &[u8]) -> Option<String> {
    let mut at = 0;
    let (major, count) = cbor_head(head, &mut at)?;
    if major != 5 {
        return None;
    }
    // Definite (`Some`) or indefinite (`None`) number of pairs.
    for _ in 0..count.unwrap_or(u64::MAX) {
        if head.get(at) == Some(&0xff) {
            return None;
        }
        let key = cbor_text(head, &mut at)?;
        if key == "requestId" {
            return cbor_text(head, &mut at);
        }
        let (major, value) = cbor_head(head, &mut at)?;
        match major {
            0 | 1 | 7 => {}
            2 | 3 => at = at.checked_add(usize::try_from(value?).ok()?)?,
            _ => return None,
        }
    }
    None
}

/// A CBOR item head at `at`: its major type and argument (`None` for an
/// indefinite length). Floats and simple values count as major 7 with their
/// bytes stepped over.
fn cbor_head(bytes: &[u8], at: &mut usize) -> Option<(u8, Option<u64>)> {
    let first = *bytes.get(*at)?;
    *at += 1;
    let (major, info) = (first >> 5, first & 0x1f);
    let width = match info {
        0..=23 => return Some((major, Some(u64::from(info)))),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        31 if matches!(major, 2..=5) => return Some((major, None)),
        _ => return None,
    };
    let arg = bytes.get(*at..*at + width)?;
    *at += width;
    Some((
        major,
        Some(arg.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b))),
    ))
}

fn cbor_text(bytes: &[u8], at: &mut usize) -> Option<String> {
    let (major, len) = cbor_head(bytes, at)?;
    if major != 3 {
        return None;
    }
    let len = usize::try_from(len?).ok()?;
    let text = bytes.get(*at..at.checked_add(len)?)?;
    *at += len;
    String::from_utf8(text.to_vec()).ok()
}

/// Waits until `size` bytes of the server-wide budget are free and takes
/// them.
async fn take_budget(budget: &ByteBudget, size: usize, waited: &mut bool) -> Reserved {
    if let Some(taken) = budget.try_take(size) {
        return taken;
    }
    if !*waited {
        *waited = true;
        tracing::warn!(
            "the server's budget for receiving large requests is spent: \
             this connection waits for others' frames to complete"
        );
    }
    budget.take(size).await
}

/// `tokio_util` framing over [`RawFrame`], for readers of answers (the
/// benchmark client): the length is validated before any room is reserved,
/// and room for a large body is reserved in steps as its bytes arrive.
pub struct FrameCodec {
    max_frame_len: usize,
}

impl FrameCodec {
    /// Most room reserved ahead of bytes actually received.
    const RESERVE_STEP: usize = 1 << 20;

    pub fn new(max_frame_len: usize) -> Self {
        FrameCodec { max_frame_len }
    }
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = RawFrame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RawFrame>, CodecError> {
        if let Some(total) = RawFrame::check(src, self.max_frame_len)? {
            return Ok(Some(RawFrame::split_from(src, total)));
        }
        if let Some(len) = RawFrame::declared_len(src, self.max_frame_len)? {
            let missing = (HEADER_LEN + len).saturating_sub(src.len());
            src.reserve(missing.min(Self::RESERVE_STEP));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn next_frame<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> RawFrame {
        match reader.next().await.unwrap().unwrap() {
            Received::Frame(frame) => frame,
            other => panic!("{other:?}"),
        }
    }

    fn frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut wire = BytesMut::new();
        RawFrame::encode(op, payload, &mut wire);
        wire.to_vec()
    }

    #[tokio::test]
    async fn small_and_large_frames_come_out_whole_and_give_their_budget_back() {
        let budget = ByteBudget::new(1 << 20);
        let (mut client, server) = tokio::io::duplex(4096);
        let mut reader = FrameReader::new(server, 1 << 20, budget.clone());
        let large: Vec<u8> = (0..700_000u32).map(|i| i as u8).collect();
        let mut wire = frame(4, b"\xa0");
        wire.extend(frame(5, &large));
        wire.extend(frame(6, b"\xa1"));
        let writer = tokio::spawn(async move {
            client.write_all(&wire).await.unwrap();
            client
        });
        let first = next_frame(&mut reader).await;
        assert_eq!((first.op, &first.payload[..]), (4, &b"\xa0"[..]));
        let second = next_frame(&mut reader).await;
        assert_eq!(second.op, 5);
        assert!(second.payload == large, "the large payload is intact");
        let third = next_frame(&mut reader).await;
        assert_eq!((third.op, &third.payload[..]), (6, &b"\xa1"[..]));
        assert_eq!(budget.total() - budget.reserved(), 1 << 20);
        drop(writer.await.unwrap());
        assert!(reader.next().await.is_none(), "clean end between frames");
    }

    #[tokio::test]
    async fn a_stalled_huge_frame_holds_about_what_it_sent() {
        let budget = ByteBudget::new(64 << 20);
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(server, 1 << 30, budget.clone());
        // Declares 1 GiB, sends 300 KiB of it, then stalls.
        let mut wire = ((1u32 << 30) as i32).to_be_bytes().to_vec();
        wire.push(4);
        wire.extend(vec![0u8; 300 * 1024]);
        client.write_all(&wire).await.unwrap();
        assert!(
            reader.next().now_or_never().is_none(),
            "the frame is not complete"
        );
        let held = budget.reserved();
        assert!(
            held <= 4 * 300 * 1024,
            "{held} bytes of budget held for 300 KiB received"
        );
        drop(reader);
        assert_eq!(
            budget.total() - budget.reserved(),
            64 << 20,
            "dropping gives it back"
        );
    }

    #[tokio::test]
    async fn a_spent_budget_makes_the_reader_wait_until_it_is_given_back() {
        let budget = ByteBudget::new(2 * CHUNK);
        let (mut a_client, a_server) = tokio::io::duplex(4 << 20);
        let (mut b_client, b_server) = tokio::io::duplex(4 << 20);
        let mut a = FrameReader::new(a_server, 4 << 20, budget.clone());
        let mut b = FrameReader::new(b_server, 4 << 20, budget.clone());
        // `a` gets far enough into a large frame to hold the whole budget
        // (its buffer grown twice), then stalls.
        let a_wire = frame(4, &vec![1u8; 4 * CHUNK]);
        a_client
            .write_all(&a_wire[..2 * SMALL_BUFFER + CHUNK])
            .await
            .unwrap();
        assert!(a.next().now_or_never().is_none());
        assert_eq!(budget.total() - budget.reserved(), 0);
        let payload = vec![7u8; CHUNK];
        b_client.write_all(&frame(4, &payload)).await.unwrap();
        let mut b_next = Box::pin(b.next());
        assert!((&mut b_next).now_or_never().is_none(), "b waits for budget");
        drop(a);
        let Received::Frame(frame) = b_next.await.unwrap().unwrap() else {
            panic!("a whole frame")
        };
        assert!(frame.payload == payload);
    }

    #[tokio::test]
    async fn a_frame_above_the_limit_is_read_past_keeping_only_its_head() {
        let budget = ByteBudget::new(1 << 20);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut reader = FrameReader::new(server, 100_000, budget.clone());
        let mut w = crate::protocol::cbor::Writer::default();
        w.map(3)
            .kv_text("requestId", "too-big")
            .kv_text("name", "s")
            .text("payload")
            .bytes(&vec![9u8; 300_000]);
        let big = w.into_vec();
        let mut wire = frame(4, &big);
        wire.extend(frame(11, b"\xa0"));
        let writer = tokio::spawn(async move { client.write_all(&wire).await.unwrap() });
        match reader.next().await.unwrap().unwrap() {
            Received::TooLarge { op, head, len } => {
                assert_eq!((op, len), (4, 1 + big.len()));
                assert_eq!(head.len(), TOO_LARGE_HEAD);
                assert_eq!(request_id_in_head(&head).as_deref(), Some("too-big"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            budget.total() - budget.reserved(),
            1 << 20,
            "nothing was budgeted"
        );
        assert_eq!(
            next_frame(&mut reader).await.op,
            11,
            "the next frame follows"
        );
        writer.await.unwrap();
    }

    #[test]
    fn the_request_id_is_found_behind_other_leading_keys_or_not_at_all() {
        let mut w = crate::protocol::cbor::Writer::default();
        w.map(3)
            .kv_int("n", 70_000)
            .kv_text("name", "s")
            .kv_text("requestId", "third");
        assert_eq!(request_id_in_head(&w.into_vec()).as_deref(), Some("third"));
        // Java: an indefinite-length map.
        let mut java = vec![0xbf];
        java.extend([0x69]);
        java.extend(b"requestId");
        java.extend([0x62]);
        java.extend(b"id");
        java.push(0xff);
        assert_eq!(request_id_in_head(&java).as_deref(), Some("id"));
        // Behind a nested map, or cut off: not found.
        let mut w = crate::protocol::cbor::Writer::default();
        w.map(2).text("definition").map(0).kv_text("requestId", "x");
        assert_eq!(request_id_in_head(&w.into_vec()), None);
        assert_eq!(request_id_in_head(&java[..8]), None);
        assert_eq!(request_id_in_head(&[]), None);
    }

    use futures_util::FutureExt;
}
