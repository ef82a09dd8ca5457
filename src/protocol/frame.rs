//! Frame boundaries: `i32 BE length | u8 op | payload`.
//!
//! [`RawFrame::check`] looks at a buffer and says whether a whole frame is
//! there, without allocating; a partial frame is `Ok(None)`, never an error.
//! The length is validated before the caller reserves room for the body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the length field.
pub const HEADER_LEN: usize = 4;

/// A frame whose payload has not been decoded yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    pub op: u8,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// `L` counts the op byte, so a frame needs `L >= 2` to carry a payload;
    /// negative and oversized lengths are refused before any allocation.
    #[error("frame length {len} is outside 2..={max}")]
    BadLength { len: i64, max: usize },
}

impl RawFrame {
    /// If `buf` starts with a complete frame, its total size on the wire
    /// (length field included); `Ok(None)` if more bytes are needed.
    pub fn check(buf: &[u8], max_len: usize) -> Result<Option<usize>, FrameError> {
        let Some(len) = Self::declared_len(buf, max_len)? else {
            return Ok(None);
        };
        let total = HEADER_LEN + len;
        Ok((buf.len() >= total).then_some(total))
    }

    /// The validated `L` of the frame at the start of `buf`, once its 4 length
    /// bytes are there.
    pub fn declared_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, FrameError> {
        let Some(head) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        match usize::try_from(len) {
            Ok(len) if (2..=max_len).contains(&len) => Ok(Some(len)),
            _ => Err(FrameError::BadLength {
                len: i64::from(len),
                max: max_len,
            }),
        }
    }

    /// Splits a complete frame (as sized by [`RawFrame::check`]) off the
    /// front of `buf`.
    pub fn split_from(buf: &mut BytesMut, total: usize) -> RawFrame {
        let mut frame = buf.split_to(total);
        frame.advance(HEADER_LEN);
        let op = frame.get_u8();
        RawFrame {
            op,
            payload: frame.freeze(),
        }
    }

    /// Appends a whole frame to `dst`, so that it can go out in one write.
    pub fn encode(op: u8, payload: &[u8], dst: &mut BytesMut) {
        let len = i32::try_from(1 + payload.len()).expect("response frames stay below 2^31 bytes");
        dst.reserve(HEADER_LEN + 1 + payload.len());
        dst.put_i32(len);
        dst.put_u8(op);
        dst.put_slice(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_frames_need_more_bytes_at_every_cut() {
        let mut wire = BytesMut::new();
        RawFrame::encode(4, b"\xa0", &mut wire);
        for cut in 0..wire.len() {
            assert_eq!(
                RawFrame::check(&wire[..cut], 1 << 30),
                Ok(None),
                "cut at {cut}"
            );
        }
        assert_eq!(RawFrame::check(&wire, 1 << 30), Ok(Some(6)));
        let frame = RawFrame::split_from(&mut wire, 6);
        assert_eq!(frame.op, 4);
        assert_eq!(&frame.payload[..], b"\xa0");
        assert!(wire.is_empty());
    }

    #[test]
    fn absurd_lengths_are_refused_from_the_header_alone() {
        for head in [
            [0x7f, 0xff, 0xff, 0xff],
            [0xff, 0xff, 0xff, 0xfe],
            [0, 0, 0, 1],
            [0, 0, 0, 0],
        ] {
            assert!(RawFrame::check(&head, 1 << 30).is_err(), "{head:?}");
        }
        assert!(RawFrame::check(&[0x40, 0, 0, 1], 1 << 30).is_err());
        assert_eq!(RawFrame::check(&[0x40, 0, 0, 0], 1 << 30), Ok(None));
    }
}
