//! Request frames read off a socket with bounded memory.
//!
//! The length is validated from the 4-byte header before anything is
//! reserved ([`RawFrame::declared_len`]). Frames that fit a connection's own
//! small buffer ([`SMALL_BUFFER`]) are read into it as they come, several per
//! read. A larger frame gets a buffer of its own that grows as its bytes
//! arrive, never to more than four times what has arrived (at least
//! [`CHUNK`]),
//! and every growth is first taken from a server-wide budget (a semaphore of
//! bytes): a frame that declares a huge length and then stalls holds about
//! what it sent, and when the budget is spent a connection waits (stops
//! being read) instead of allocating. The buffer becomes the frame without a
//! copy, and its budget is given back.

use crate::protocol::frame::{RawFrame, HEADER_LEN};
use crate::protocol::FrameError;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;

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

/// A large frame being received: header and body so far.
struct LargeFrame {
    buf: Vec<u8>,
    total: usize,
}

pub struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    large: Option<LargeFrame>,
    max_frame_len: usize,
    budget: Arc<Semaphore>,
    /// Permits of `budget` this reader holds.
    held: usize,
    /// The first wait for budget is logged, not every one.
    waited: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R, max_frame_len: usize, budget: Arc<Semaphore>) -> Self {
        FrameReader {
            reader,
            buf: BytesMut::new(),
            large: None,
            max_frame_len,
            budget,
            held: 0,
            waited: false,
        }
    }

    /// After the handshake, request frames may be as large as configured.
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len;
    }

    /// The next frame; `None` at a clean end of the stream (between frames).
    /// Cancel-safe: bytes read and budget taken stay with the reader.
    pub async fn next(&mut self) -> Option<Result<RawFrame, CodecError>> {
        self.next_frame().await.transpose()
    }

    async fn next_frame(&mut self) -> Result<Option<RawFrame>, CodecError> {
        loop {
            if self.large.is_none() {
                if let Some(total) = RawFrame::check(&self.buf, self.max_frame_len)? {
                    return Ok(Some(RawFrame::split_from(&mut self.buf, total)));
                }
                if let Some(len) = RawFrame::declared_len(&self.buf, self.max_frame_len)? {
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
                    return Ok(Some(RawFrame {
                        op: whole[HEADER_LEN],
                        payload: whole.slice(HEADER_LEN + 1..),
                    }));
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
                        take_budget(&self.budget, growth, &mut self.waited).await;
                        // Only now that the budget is ours: bookkeeping and
                        // allocation happen in one step, so a cancelled
                        // wait leaves nothing behind.
                        self.held += growth;
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
                return if self.buf.is_empty() && self.large.is_none() {
                    Ok(None)
                } else {
                    Err(CodecError::ClosedInFrame)
                };
            }
        }
    }

    fn give_back(&mut self) {
        self.budget.add_permits(self.held);
        self.held = 0;
    }
}

impl<R> Drop for FrameReader<R> {
    fn drop(&mut self) {
        self.budget.add_permits(self.held);
    }
}

/// Waits until `size` bytes of the server-wide budget are free and takes
/// them (they are given back with `add_permits`).
async fn take_budget(budget: &Semaphore, size: usize, waited: &mut bool) {
    let size = u32::try_from(size).expect("frames, and so their growth, stay below 2^31 bytes");
    let permits = match budget.try_acquire_many(size) {
        Ok(permits) => permits,
        Err(_) => {
            if !*waited {
                *waited = true;
                tracing::warn!(
                    "the server's budget for receiving large requests is spent: \
                     this connection waits for others' frames to complete"
                );
            }
            budget
                .acquire_many(size)
                .await
                .expect("the receive budget is never closed")
        }
    };
    permits.forget();
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

    fn frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut wire = BytesMut::new();
        RawFrame::encode(op, payload, &mut wire);
        wire.to_vec()
    }

    #[tokio::test]
    async fn small_and_large_frames_come_out_whole_and_give_their_budget_back() {
        let budget = Arc::new(Semaphore::new(1 << 20));
        let (mut client, server) = tokio::io::duplex(4096);
        let mut reader = FrameReader::new(server, 1 << 20, Arc::clone(&budget));
        let large: Vec<u8> = (0..700_000u32).map(|i| i as u8).collect();
        let mut wire = frame(4, b"\xa0");
        wire.extend(frame(5, &large));
        wire.extend(frame(6, b"\xa1"));
        let writer = tokio::spawn(async move {
            client.write_all(&wire).await.unwrap();
            client
        });
        let first = reader.next().await.unwrap().unwrap();
        assert_eq!((first.op, &first.payload[..]), (4, &b"\xa0"[..]));
        let second = reader.next().await.unwrap().unwrap();
        assert_eq!(second.op, 5);
        assert!(second.payload == large, "the large payload is intact");
        let third = reader.next().await.unwrap().unwrap();
        assert_eq!((third.op, &third.payload[..]), (6, &b"\xa1"[..]));
        assert_eq!(budget.available_permits(), 1 << 20);
        drop(writer.await.unwrap());
        assert!(reader.next().await.is_none(), "clean end between frames");
    }

    #[tokio::test]
    async fn a_stalled_huge_frame_holds_about_what_it_sent() {
        let budget = Arc::new(Semaphore::new(64 << 20));
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(server, 1 << 30, Arc::clone(&budget));
        // Declares 1 GiB, sends 300 KiB of it, then stalls.
        let mut wire = ((1u32 << 30) as i32).to_be_bytes().to_vec();
        wire.push(4);
        wire.extend(vec![0u8; 300 * 1024]);
        client.write_all(&wire).await.unwrap();
        assert!(
            reader.next().now_or_never().is_none(),
            "the frame is not complete"
        );
        let held = (64 << 20) - budget.available_permits();
        assert!(
            held <= 4 * 300 * 1024,
            "{held} bytes of budget held for 300 KiB received"
        );
        drop(reader);
        assert_eq!(
            budget.available_permits(),
            64 << 20,
            "dropping gives it back"
        );
    }

    #[tokio::test]
    async fn a_spent_budget_makes_the_reader_wait_until_it_is_given_back() {
        let budget = Arc::new(Semaphore::new(2 * CHUNK));
        let (mut a_client, a_server) = tokio::io::duplex(4 << 20);
        let (mut b_client, b_server) = tokio::io::duplex(4 << 20);
        let mut a = FrameReader::new(a_server, 4 << 20, Arc::clone(&budget));
        let mut b = FrameReader::new(b_server, 4 << 20, Arc::clone(&budget));
        // `a` gets far enough into a large frame to hold the whole budget
        // (its buffer grown twice), then stalls.
        let a_wire = frame(4, &vec![1u8; 4 * CHUNK]);
        a_client
            .write_all(&a_wire[..2 * SMALL_BUFFER + CHUNK])
            .await
            .unwrap();
        assert!(a.next().now_or_never().is_none());
        assert_eq!(budget.available_permits(), 0);
        let payload = vec![7u8; CHUNK];
        b_client.write_all(&frame(4, &payload)).await.unwrap();
        let mut b_next = Box::pin(b.next());
        assert!((&mut b_next).now_or_never().is_none(), "b waits for budget");
        drop(a);
        let frame = b_next.await.unwrap().unwrap();
        assert!(frame.payload == payload);
    }

    use futures_util::FutureExt;
}
