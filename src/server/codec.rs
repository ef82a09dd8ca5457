//! `tokio_util` framing over [`RawFrame`]: the length is validated from the
//! 4-byte header before any room is reserved, and room for a large body is
//! reserved in steps as its bytes arrive, so a lying length costs nothing.

use crate::protocol::frame::{RawFrame, HEADER_LEN};
use crate::protocol::FrameError;
use bytes::BytesMut;
use tokio_util::codec::Decoder;

/// Most room reserved ahead of bytes actually received.
const RESERVE_STEP: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct FrameCodec {
    max_frame_len: usize,
}

impl FrameCodec {
    pub fn new(max_frame_len: usize) -> Self {
        FrameCodec { max_frame_len }
    }
}

impl Decoder for FrameCodec {
    type Item = RawFrame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RawFrame>, CodecError> {
        if let Some(total) = RawFrame::check(src, self.max_frame_len)? {
            return Ok(Some(RawFrame::split_from(src, total)));
        }
        if let Some(len) = RawFrame::declared_len(src, self.max_frame_len)? {
            let missing = (HEADER_LEN + len).saturating_sub(src.len());
            src.reserve(missing.min(RESERVE_STEP));
        }
        Ok(None)
    }
}
