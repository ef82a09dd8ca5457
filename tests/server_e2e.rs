//! The server over real sockets on 127.0.0.1:0: handshake outcomes, hostile
//! frames, requests answered out of order on one connection, shutdown.

mod common;

use common::{append, read_frame, write_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir::protocol::cbor::{self, MapReader, Writer};

const TOKEN: &str = "test-token";

fn connect_payload(version: &str, token: Option<&str>) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(2 + usize::from(token.is_some()))
        .kv_text("requestId", "connect-1")
        .kv_text("protocolVersion", version);
    if let Some(token) = token {
        w.kv_text("authToken", token);
    }
    w.into_vec()
}

/// Sends `01` + Connect; returns the socket and the ConnectResponse status.
async fn handshake(
    addr: std::net::SocketAddr,
    version: &str,
    token: Option<&str>,
) -> (TcpStream, i64) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(&[1]).await.unwrap();
    write_frame(&mut socket, 1, &connect_payload(version, token)).await;
    let byte = common::read_exactly(&mut socket, 1).await;
    assert_eq!(byte, [1]);
    let (op, payload) = read_frame(&mut socket).await;
    assert_eq!(op, 6);
    (socket, field_int(&payload, "status").unwrap())
}

async fn connected(addr: std::net::SocketAddr, version: &str) -> TcpStream {
    let (socket, status) = handshake(addr, version, Some(TOKEN)).await;
    assert_eq!(status, 0);
    socket
}

fn field_int(payload: &[u8], key: &str) -> Option<i64> {
    let value = cbor::decode(payload).unwrap();
    MapReader::new(&value, "").unwrap().int(key).unwrap()
}

fn field_text(payload: &[u8], key: &str) -> Option<String> {
    let value = cbor::decode(payload).unwrap();
    MapReader::new(&value, "").unwrap().text(key).unwrap()
}

fn create(id: &str, name: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(2).kv_text("requestId", id).text("definition").map(2);
    w.kv_text("name", name).kv_int("strategyOnFull", 1);
    w.into_vec()
}

fn read(id: &str, name: &str, start: i64, timeout: i64) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(3)
        .kv_text("requestId", id)
        .kv_text("streamName", name)
        .text("readMessagesOptions")
        .map(3);
    w.kv_int("desiredStartSequenceNumber", start)
        .kv_int("minMessageCount", 1)
        .kv_int("readTimeoutMillis", timeout);
    w.into_vec()
}

/// Reads until the peer closes; true if it closed (EOF) without more bytes
/// than `allowed`.
async fn closed(socket: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        socket.read_to_end(&mut rest),
    )
    .await;
    matches!(read, Ok(Ok(_))) && rest.is_empty()
}

async fn assert_stream_intact(addr: std::net::SocketAddr, count: usize) {
    let mut socket = connected(addr, "1.1.0").await;
    for seq in 0..count as i64 {
        write_frame(&mut socket, 5, &read("check", "kept", seq, 0)).await;
        let (op, payload) = read_frame(&mut socket).await;
        assert_eq!(
            (op, field_int(&payload, "status")),
            (10, Some(0)),
            "message {seq} is readable"
        );
    }
}

async fn server_with_data() -> common::TestServer {
    let server = common::start(Some(TOKEN), 1_700_000_000_000, "weir-test").await;
    let mut socket = connected(server.addr, "1.1.0").await;
    write_frame(&mut socket, 2, &create("c", "kept")).await;
    assert_eq!(
        field_int(&read_frame(&mut socket).await.1, "status"),
        Some(0)
    );
    for i in 0..3u8 {
        write_frame(&mut socket, 4, &append("a", "kept", &[i])).await;
        assert_eq!(
            field_int(&read_frame(&mut socket).await.1, "status"),
            Some(0)
        );
    }
    server
}

#[tokio::test]
async fn handshake_outcomes() {
    let server = common::start(Some(TOKEN), 0, "weir-test").await;
    let (mut s, status) = handshake(server.addr, "1.0.0", Some(TOKEN)).await;
    assert_eq!(status, 0);
    drop(s);
    for (version, token, expected) in [
        ("1.1.0", Some("wrong"), 2),
        ("1.1.0", None, 2),
        ("1.1.0", Some(""), 2),
        ("9.9.9", Some(TOKEN), 10),
    ] {
        let (mut socket, status) = handshake(server.addr, version, token).await;
        assert_eq!(status, expected, "{version} {token:?}");
        assert!(closed(&mut socket).await, "refused connections are closed");
    }
    s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&[2, 0, 0, 0, 2, 1, 0xa0]).await.unwrap();
    assert_eq!(common::read_exactly(&mut s, 1).await, [1]);
    let (op, payload) = read_frame(&mut s).await;
    assert_eq!(
        (op, field_int(&payload, "status")),
        (6, Some(8)),
        "bad connect byte"
    );
    assert!(closed(&mut s).await);
}

#[tokio::test]
async fn hostile_frames_close_only_their_own_connection() {
    let server = server_with_data().await;
    let bystander = connected(server.addr, "1.1.0").await;
    for bad in [
        vec![0x7f, 0xff, 0xff, 0xff, 4],       // absurd length
        vec![0xff, 0xff, 0xff, 0xf0, 4],       // negative length
        vec![0, 0, 0, 1, 4],                   // no payload
        vec![0, 0, 0, 4, 4, 0xff, 0x00, 0x13], // garbage CBOR
        vec![0, 0, 0, 3, 4, 0x82, 0x01],       // truncated CBOR
        vec![0, 0, 0, 3, 4, 0xa1, 0x60],       // map without requestId
    ] {
        let mut socket = connected(server.addr, "1.1.0").await;
        socket.write_all(&bad).await.unwrap();
        assert!(closed(&mut socket).await, "{bad:x?} closes the connection");
    }
    let mut bystander = bystander;
    write_frame(&mut bystander, 11, &{
        let mut w = Writer::default();
        w.map(1).kv_text("requestId", "l");
        w.into_vec()
    })
    .await;
    assert_eq!(
        read_frame(&mut bystander).await.0,
        12,
        "other clients keep working"
    );
    assert_eq!(weir_ok(&server).await, 3);
    assert_stream_intact(server.addr, 3).await;
}

async fn weir_ok(server: &common::TestServer) -> i64 {
    server
        .store
        .describe("kept")
        .unwrap()
        .storage_status
        .newest_sequence_number
        + 1
}

#[tokio::test]
async fn bad_fields_and_unknown_ops_are_answered_by_protocol_version() {
    let server = server_with_data().await;
    let mut new = connected(server.addr, "1.1.0").await;
    // unknown op
    write_frame(&mut new, 99, &append("u1", "kept", b"x")).await;
    let (op, payload) = read_frame(&mut new).await;
    assert_eq!((op, field_int(&payload, "status")), (17, Some(18)));
    assert_eq!(field_text(&payload, "requestId").as_deref(), Some("u1"));
    // known op, bad field: InvalidRequest on the op's own response
    write_frame(&mut new, 4, &append("e1", "no/slash", b"x")).await;
    let (op, payload) = read_frame(&mut new).await;
    assert_eq!((op, field_int(&payload, "status")), (9, Some(3)));
    assert!(field_text(&payload, "errorMessage")
        .unwrap()
        .contains("name"));

    let mut old = connected(server.addr, "1.0.0").await;
    write_frame(&mut old, 99, &append("u2", "kept", b"x")).await;
    write_frame(&mut old, 4, &append("after", "kept", b"x")).await;
    let (op, payload) = read_frame(&mut old).await;
    assert_eq!(
        (op, field_text(&payload, "requestId").as_deref()),
        (9, Some("after")),
        "a 1.0.0 client never sees op 17; its next request is answered"
    );
    // statuses above 14 become UnknownFailure for 1.0.0 clients
    let mut w = Writer::default();
    w.map(2)
        .kv_text("requestId", "up")
        .text("definition")
        .map(3);
    w.kv_text("name", "kept")
        .kv_int("strategyOnFull", 1)
        .kv_int("persistence", 1);
    let update = w.into_vec();
    write_frame(&mut new, 15, &update).await;
    assert_eq!(field_int(&read_frame(&mut new).await.1, "status"), Some(17));
    write_frame(&mut old, 15, &update).await;
    assert_eq!(field_int(&read_frame(&mut old).await.1, "status"), Some(1));
}

#[tokio::test]
async fn a_long_poll_does_not_hold_up_later_requests_on_the_same_connection() {
    let server = server_with_data().await;
    let mut socket = connected(server.addr, "1.1.0").await;
    write_frame(&mut socket, 5, &read("poll", "kept", 3, 30_000)).await;
    write_frame(&mut socket, 4, &append("same-id", "kept", b"late")).await;
    let (op, payload) = read_frame(&mut socket).await;
    assert_eq!(
        (op, field_int(&payload, "sequenceNumber")),
        (9, Some(3)),
        "the append is answered first"
    );
    let (op, payload) = read_frame(&mut socket).await;
    assert_eq!(
        (op, field_text(&payload, "requestId").as_deref()),
        (10, Some("poll"))
    );
    assert_eq!(field_int(&payload, "status"), Some(0));
}

#[tokio::test]
async fn frames_split_into_single_bytes_are_reassembled() {
    let server = server_with_data().await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let mut bytes = vec![1];
    let connect = connect_payload("1.1.0", Some(TOKEN));
    bytes.extend(((1 + connect.len()) as i32).to_be_bytes());
    bytes.push(1);
    bytes.extend(connect);
    let request = append("java", "kept", b"tiny writes");
    bytes.extend(((1 + request.len()) as i32).to_be_bytes());
    bytes.push(4);
    bytes.extend(request);
    for b in bytes {
        socket.write_all(&[b]).await.unwrap();
        socket.flush().await.unwrap();
    }
    assert_eq!(common::read_exactly(&mut socket, 1).await, [1]);
    assert_eq!(read_frame(&mut socket).await.0, 6);
    let (op, payload) = read_frame(&mut socket).await;
    assert_eq!((op, field_int(&payload, "sequenceNumber")), (9, Some(3)));
}

#[tokio::test]
async fn shutdown_closes_connections_and_ends_the_server() {
    let server = server_with_data().await;
    let mut socket = connected(server.addr, "1.1.0").await;
    write_frame(&mut socket, 5, &read("poll", "kept", 10, 60_000)).await;
    server.shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), server.task)
        .await
        .expect("the server stops")
        .unwrap();
    assert!(closed(&mut socket).await);
}
