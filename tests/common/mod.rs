//! Shared by the integration tests: an in-process weir on 127.0.0.1:0 with
//! a manual clock, and raw protocol helpers.
#![allow(dead_code)]

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use weir::auth::Authenticator;
use weir::clock::ManualClock;
use weir::protocol::MAX_FRAME_LEN;
use weir::server::dispatch::StoreHandler;
use weir::server::ServerContext;
use weir::store::{Store, StoreLimits};

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub clock: Arc<ManualClock>,
    pub store: Arc<Store>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Starts a server whose clients must present `token` (if any).
pub async fn start(token: Option<&str>, now_millis: i64, server_version: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let auth = match token {
        Some(token) => {
            let path = dir.path().join("tokens");
            std::fs::write(&path, format!("{token}\n")).unwrap();
            Authenticator::from_file(path, false).unwrap()
        }
        None => Authenticator::Disabled,
    };
    let clock = Arc::new(ManualClock::new(now_millis));
    let store = Arc::new(Store::new(
        clock.clone(),
        StoreLimits {
            max_read_bytes: 1 << 20,
        },
    ));
    let ctx = Arc::new(ServerContext::new(
        Arc::new(StoreHandler(store.clone())),
        auth,
        MAX_FRAME_LEN,
        server_version.to_owned(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(weir::server::run(listener, ctx, 64, shutdown.clone()));
    TestServer {
        addr,
        clock,
        store,
        shutdown,
        task,
        _dir: dir,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Reads exactly `n` bytes, failing the test if they do not come within 10 s.
pub async fn read_exactly(socket: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        socket.read_exact(&mut buf),
    )
    .await
    .expect("no answer within 10 s")
    .expect("connection closed early");
    buf
}

/// Reads one frame: (op, payload).
pub async fn read_frame(socket: &mut TcpStream) -> (u8, Vec<u8>) {
    let head = read_exactly(socket, 5).await;
    let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    (head[4], read_exactly(socket, len - 1).await)
}

pub async fn write_frame(socket: &mut TcpStream, op: u8, payload: &[u8]) {
    let mut buf = ((1 + payload.len()) as i32).to_be_bytes().to_vec();
    buf.push(op);
    buf.extend_from_slice(payload);
    socket.write_all(&buf).await.unwrap();
}

/// An AppendMessage request's payload, as the SDKs encode it.
pub fn append(id: &str, name: &str, payload: &[u8]) -> Vec<u8> {
    let mut w = weir::protocol::cbor::Writer::default();
    w.map(3)
        .kv_text("requestId", id)
        .kv_text("name", name)
        .text("payload")
        .bytes(payload);
    w.into_vec()
}

/// The integer at `key` of a CBOR map payload (an answer's `status`).
pub fn int(payload: &[u8], key: &str) -> Option<i64> {
    let value = weir::protocol::cbor::decode(payload).unwrap();
    weir::protocol::cbor::MapReader::new(&value, "")
        .unwrap()
        .int(key)
        .unwrap()
}

/// The text at `key` of a CBOR map payload.
pub fn text(payload: &[u8], key: &str) -> Option<String> {
    let value = weir::protocol::cbor::decode(payload).unwrap();
    weir::protocol::cbor::MapReader::new(&value, "")
        .unwrap()
        .text(key)
        .unwrap()
}
