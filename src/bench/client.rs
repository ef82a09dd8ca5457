//! A minimal protocol client for the load generator: handshake, request
//! encoding, frame reading.

use crate::protocol::cbor::Writer;
use crate::protocol::frame::RawFrame;
use crate::protocol::{Operation, CONNECT_VERSION, MAX_FRAME_LEN};
use crate::server::codec::FrameCodec;
use bytes::BytesMut;
use futures_util::StreamExt;
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

pub struct Frames(FramedRead<OwnedReadHalf, FrameCodec>);

impl Frames {
    pub async fn next(&mut self) -> io::Result<RawFrame> {
        match self.0.next().await {
            Some(Ok(frame)) => Ok(frame),
            Some(Err(e)) => Err(io::Error::other(e)),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// Connects and completes the handshake as a protocol 1.1.0 client.
pub async fn connect(
    addr: SocketAddr,
    token: Option<&str>,
) -> io::Result<(Frames, OwnedWriteHalf)> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let (mut reader, mut writer) = socket.into_split();
    let mut w = Writer::default();
    w.map(3 + usize::from(token.is_some()))
        .kv_text("requestId", "bench-connect")
        .kv_text("protocolVersion", "1.1.0")
        .kv_text("sdkVersion", "weir-bench");
    if let Some(token) = token {
        w.kv_text("authToken", token);
    }
    let mut buf = BytesMut::from(&[CONNECT_VERSION][..]);
    RawFrame::encode(Operation::Connect as u8, &w.into_vec(), &mut buf);
    writer.write_all(&buf).await?;
    let mut version = [0u8; 1];
    reader.read_exact(&mut version).await?;
    let mut frames = Frames(FramedRead::new(reader, FrameCodec::new(MAX_FRAME_LEN)));
    let answer = frames.next().await?;
    let status = status_of(&answer.payload);
    if version[0] != CONNECT_VERSION
        || answer.op != Operation::ConnectResponse as u8
        || status != Some(0)
    {
        return Err(io::Error::other(format!(
            "handshake refused (status {status:?})"
        )));
    }
    Ok((frames, writer))
}

/// `"status": 0` as weir (and the null server) encode it.
const STATUS_OK: &[u8] = b"\x66status\x00";

/// Whether an answer says Success, without decoding it: the load generator
/// must not spend the CPU it measures on its own decoding. Falls back to a
/// full decode when the shortcut does not match.
pub fn succeeded(payload: &[u8], status_last: bool) -> bool {
    let fast = if status_last {
        payload.ends_with(STATUS_OK)
    } else {
        payload
            .windows(STATUS_OK.len())
            .take(256)
            .any(|w| w == STATUS_OK)
    };
    fast || status_of(payload) == Some(0)
}

/// The `status` of an answer payload.
pub fn status_of(payload: &[u8]) -> Option<i64> {
    let value = crate::protocol::cbor::decode(payload).ok()?;
    crate::protocol::cbor::MapReader::new(&value, "")
        .ok()?
        .int("status")
        .ok()?
}

pub fn frame(op: Operation, payload: &[u8], dst: &mut BytesMut) {
    RawFrame::encode(op as u8, payload, dst);
}

/// `exports`: Kinesis exports of the stream, `(identifier, Kinesis stream)`.
pub fn create_stream(
    request_id: &str,
    name: &str,
    memory: bool,
    flush_on_write: bool,
    exports: &[(String, String)],
) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(2)
        .kv_text("requestId", request_id)
        .text("definition")
        .map(if exports.is_empty() { 5 } else { 6 });
    w.kv_text("name", name)
        .kv_int("maxSize", i64::MAX)
        .kv_int("strategyOnFull", 1)
        .kv_int("persistence", i64::from(memory))
        .kv_bool("flushOnWrite", flush_on_write);
    if !exports.is_empty() {
        w.text("exportDefinition")
            .map(1)
            .text("kinesis")
            .array(exports.len());
        for (id, stream) in exports {
            w.map(2)
                .kv_text("identifier", id)
                .kv_text("kinesisStreamName", stream);
        }
    }
    w.into_vec()
}

pub fn delete_stream(request_id: &str, name: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(2)
        .kv_text("requestId", request_id)
        .kv_text("name", name);
    w.into_vec()
}

pub fn append(request_id: &str, name: &str, payload: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(payload.len() + 64);
    w.map(3)
        .kv_text("requestId", request_id)
        .kv_text("name", name)
        .text("payload")
        .bytes(payload);
    w.into_vec()
}

pub fn read(request_id: &str, name: &str, start: i64, count: i64) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(3)
        .kv_text("requestId", request_id)
        .kv_text("streamName", name)
        .text("readMessagesOptions")
        .map(4);
    w.kv_int("desiredStartSequenceNumber", start)
        .kv_int("minMessageCount", 1)
        .kv_int("maxMessageCount", count)
        .kv_int("readTimeoutMillis", 0);
    w.into_vec()
}

/// Sends one request and waits for its answer (setup steps).
pub async fn call(
    frames: &mut Frames,
    writer: &mut OwnedWriteHalf,
    op: Operation,
    payload: &[u8],
) -> io::Result<i64> {
    let mut buf = BytesMut::new();
    frame(op, payload, &mut buf);
    writer.write_all(&buf).await?;
    let answer = frames.next().await?;
    status_of(&answer.payload).ok_or_else(|| io::Error::other("answer without a status"))
}
