//! The stream manager wire protocol, sans-IO.
//!
//! Nothing in this module touches a socket or a runtime: it turns bytes into
//! typed requests and typed responses into bytes, and it is bounded (a frame's
//! length is checked against [`MAX_FRAME_LEN`] before anything is allocated).
//! `../shared/docs/PROTOCOL.md` is the reference; the points it leaves open are
//! decided here and marked "(weir decision)".
//!
//! ```text
//! connection:  C→S 01 | frame(op 1 Connect)        S→C 01 | frame(op 6 ConnectResponse)
//!              then frames in both directions, no further version byte
//! frame:       i32 BE  L = 1 + payload length   (the op byte counts, the length field does not)
//!              u8      operation
//!              L-1     one CBOR data item: a map with camelCase text keys
//! ```
//!
//! * [`frame`]: frame boundaries over a byte buffer.
//! * [`cbor`]: a tolerant reader over decoded CBOR and a strict, minimal writer.
//! * [`model`]: the data types shared by requests and responses (stream
//!   definitions, export configurations, messages, stream info).
//! * [`request`] / [`response`]: one type per operation and its answer.
//! * [`handshake`]: the connect request, version negotiation and its answer.
//! * [`status`]: the status codes and operation numbers on the wire.

pub mod cbor;
pub mod frame;
pub mod handshake;
pub mod model;
pub mod request;
pub mod response;
pub mod status;

pub use frame::{FrameError, RawFrame};
pub use handshake::{ConnectRequest, ConnectResponse, ProtocolVersion};
pub use request::{DecodeError, Request, RequestBody};
pub use response::{Failure, Reply, ReplyBody};
pub use status::{Operation, StatusCode};

/// The single byte each side sends before its first frame.
pub const CONNECT_VERSION: u8 = 1;

/// Largest frame length (`L`, op byte included) any client sends or accepts:
/// every SDK refuses to build a frame above 2^30 bytes.
pub const MAX_FRAME_LEN: usize = 1 << 30;
