//! The server's limits over real sockets on 127.0.0.1:0: sockets that never
//! handshake, the connection limit, answers for a client that does not read,
//! read answer size, long-polls past their limit, work off the protocol
//! thread, the shutdown deadline, `flushOnWrite` through the server on a
//! simulated disk, and one weir per store folder.

mod common;

use common::{append, int, read_frame, text, write_frame};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use weir::auth::Authenticator;
use weir::clock::ManualClock;
use weir::protocol::cbor::{self, MapReader, Writer};
use weir::protocol::model::Message;
use weir::protocol::{Reply, ReplyBody, Request, RequestBody};
use weir::server::dispatch::{Handled, RequestHandler, StoreHandler};
use weir::server::{ServerContext, ServerLimits};
use weir::store::fs::FileSystem;
use weir::store::simfs::SimulatedFs;
use weir::store::{Store, StoreLimits};

/// Bound on every wait for the server: a hang is a failure, never a timing
/// threshold.
const HANG: Duration = Duration::from_secs(30);

struct Server {
    addr: std::net::SocketAddr,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(
    handler: Arc<dyn RequestHandler>,
    limits: ServerLimits,
    max_connections: usize,
) -> Server {
    let ctx = Arc::new(ServerContext::with_limits(
        handler,
        Authenticator::Disabled,
        1 << 20,
        "weir-test".into(),
        limits,
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(weir::server::run(
        listener,
        Arc::clone(&ctx),
        max_connections,
        shutdown.clone(),
    ));
    Server {
        addr,
        ctx,
        shutdown,
        task,
    }
}

fn memory_store(max_read_bytes: usize) -> Arc<Store> {
    Arc::new(Store::new(
        Arc::new(ManualClock::new(1_700_000_000_000)),
        StoreLimits { max_read_bytes },
    ))
}

fn connect_payload() -> Vec<u8> {
    let mut w = Writer::default();
    w.map(2)
        .kv_text("requestId", "connect")
        .kv_text("protocolVersion", "1.1.0");
    w.into_vec()
}

/// Connects and handshakes; `None` if the server closed the socket or
/// refused the handshake.
async fn try_connect(addr: std::net::SocketAddr) -> Option<TcpStream> {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut wire = vec![1];
    let connect = connect_payload();
    wire.extend(((1 + connect.len()) as i32).to_be_bytes());
    wire.push(1);
    wire.extend(connect);
    socket.write_all(&wire).await.ok()?;
    let mut byte = [0u8; 1];
    tokio::time::timeout(HANG, socket.read_exact(&mut byte))
        .await
        .expect("no ConnectResponse")
        .ok()?;
    let (op, payload) = read_frame(&mut socket).await;
    assert_eq!(op, 6);
    (int(&payload, "status") == Some(0)).then_some(socket)
}

async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    try_connect(addr).await.expect("handshake accepted")
}

fn messages(payload: &[u8]) -> usize {
    let value = cbor::decode(payload).unwrap();
    MapReader::new(&value, "")
        .unwrap()
        .array("messages")
        .unwrap()
        .map_or(0, |m| m.len())
}

fn create(id: &str, name: &str, file: bool, flush: bool) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(2).kv_text("requestId", id).text("definition").map(4);
    w.kv_text("name", name)
        .kv_int("strategyOnFull", 1)
        .kv_int("persistence", if file { 0 } else { 1 })
        .kv_bool("flushOnWrite", flush);
    w.into_vec()
}

fn read(id: &str, name: &str, start: i64, max: i64, timeout: i64) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(3)
        .kv_text("requestId", id)
        .kv_text("streamName", name)
        .text("readMessagesOptions")
        .map(4);
    w.kv_int("desiredStartSequenceNumber", start)
        .kv_int("minMessageCount", 1)
        .kv_int("maxMessageCount", max)
        .kv_int("readTimeoutMillis", timeout);
    w.into_vec()
}

fn request_only(id: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(1).kv_text("requestId", id);
    w.into_vec()
}

fn delete(id: &str, name: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(2).kv_text("requestId", id).kv_text("name", name);
    w.into_vec()
}

/// True if the server closes the socket (EOF or reset) without sending
/// anything.
async fn closed_by_server(socket: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match tokio::time::timeout(HANG, socket.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => rest.is_empty(),
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Err(_) => false,
    }
}

/// Log lines of the current thread (every test runs on a current-thread
/// runtime, so the server's tasks log here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }

    /// Waits (yielding to the server) until `needle` has been logged.
    async fn wait_for(&self, needle: &str) {
        tokio::time::timeout(HANG, async {
            while self.count(needle) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never logged: {needle}"));
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

async fn create_stream(socket: &mut TcpStream, name: &str, file: bool, flush: bool) {
    write_frame(socket, 2, &create("c", name, file, flush)).await;
    let (op, payload) = read_frame(socket).await;
    assert_eq!((op, int(&payload, "status")), (7, Some(0)), "created");
}

async fn append_ok(socket: &mut TcpStream, name: &str, payload: &[u8]) -> i64 {
    write_frame(socket, 4, &append("a", name, payload)).await;
    let (op, answer) = read_frame(socket).await;
    assert_eq!((op, int(&answer, "status")), (9, Some(0)), "appended");
    int(&answer, "sequenceNumber").unwrap()
}

#[tokio::test]
async fn a_normal_client_is_served_while_2000_idle_sockets_are_open() {
    // 2,000 client sockets and the server's side of those it keeps.
    rlimit::increase_nofile_limit(8192).unwrap();
    let store = memory_store(1 << 20);
    let limits = ServerLimits {
        max_handshaking: 64,
        // Only making room can close the idle sockets during the test.
        handshake_timeout: Duration::from_secs(3600),
        ..ServerLimits::default()
    };
    let server = start(Arc::new(StoreHandler(Arc::clone(&store))), limits, 64).await;
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut client = connect(server.addr).await;
    create_stream(&mut client, "served", false, false).await;
    assert_eq!(append_ok(&mut client, "served", b"hello").await, 0);
    write_frame(&mut client, 5, &read("r", "served", 0, 1, 0)).await;
    let (op, payload) = read_frame(&mut client).await;
    assert_eq!(
        (op, int(&payload, "status"), messages(&payload)),
        (10, Some(0), 1)
    );
    // The oldest idle sockets were closed to make room; the newest are
    // still waiting for their Connect.
    assert!(
        closed_by_server(&mut idle[0]).await,
        "the oldest idle socket is closed"
    );
    server.shutdown.cancel();
    tokio::time::timeout(HANG, server.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_socket_that_never_handshakes_is_closed_after_the_handshake_timeout() {
    let limits = ServerLimits {
        handshake_timeout: Duration::from_millis(100),
        ..ServerLimits::default()
    };
    let server = start(Arc::new(StoreHandler(memory_store(1 << 20))), limits, 8).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_by_server(&mut silent).await);
    // A real client still gets in.
    connect(server.addr).await;
}

#[tokio::test]
async fn past_the_connection_limit_a_new_socket_is_closed_at_once_with_a_log_line() {
    let (logs, _guard) = Logs::capture();
    let server = start(
        Arc::new(StoreHandler(memory_store(1 << 20))),
        ServerLimits::default(),
        2,
    )
    .await;
    let mut first = connect(server.addr).await;
    let _second = connect(server.addr).await;
    for _ in 0..3 {
        let mut extra = TcpStream::connect(server.addr).await.unwrap();
        assert!(
            closed_by_server(&mut extra).await,
            "closed without waiting for its handshake"
        );
    }
    assert_eq!(
        logs.count("connection limit reached"),
        1,
        "one log line for the run of refusals"
    );
    // The connections already served go on, and a slot that frees is used.
    write_frame(&mut first, 11, &request_only("l")).await;
    assert_eq!(read_frame(&mut first).await.0, 12);
    drop(first);
    let served = tokio::time::timeout(HANG, async {
        loop {
            if let Some(socket) = try_connect(server.addr).await {
                return socket;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a freed slot is used");
    drop(served);
    logs.wait_for("accepting connections again").await;
}

/// Answers every read with one message of `payload_len` bytes, and counts
/// the reads it was asked.
struct BigReads {
    payload: bytes::Bytes,
    reads: Mutex<usize>,
}

impl RequestHandler for BigReads {
    fn handle(&self, request: Request) -> Handled {
        let body = match request.body {
            RequestBody::ReadMessages { stream_name, .. } => {
                *self.reads.lock().unwrap() += 1;
                ReplyBody::ReadMessages {
                    stream_name,
                    result: Ok(vec![Message {
                        sequence_number: 0,
                        ingest_time: 0,
                        payload: self.payload.clone(),
                    }]),
                }
            }
            _ => ReplyBody::ListStreams(Ok(Vec::new())),
        };
        Handled::Now(Reply {
            request_id: request.request_id,
            body,
        })
    }
}

#[tokio::test]
async fn answers_for_a_client_that_does_not_read_are_bounded_in_bytes() {
    let (logs, _guard) = Logs::capture();
    const ANSWER: usize = 1 << 20;
    const REQUESTS: usize = 400;
    let handler = Arc::new(BigReads {
        payload: vec![7u8; ANSWER].into(),
        reads: Mutex::new(0),
    });
    let limits = ServerLimits {
        max_queued_bytes: 4 * ANSWER,
        ..ServerLimits::default()
    };
    let server = start(handler.clone(), limits, 8).await;
    let mut socket = connect(server.addr).await;
    // Small requests, all sent at once (the socket buffers take them); each
    // asks for 1 MiB that the client does not read yet.
    let mut wire = Vec::new();
    for i in 0..REQUESTS {
        let payload = read(&format!("r{i}"), "s", 0, 1, 0);
        wire.extend(((1 + payload.len()) as i32).to_be_bytes());
        wire.push(5);
        wire.extend(payload);
    }
    socket.write_all(&wire).await.unwrap();
    logs.wait_for("answers wait for the client to read them")
        .await;
    let built = *handler.reads.lock().unwrap();
    // The queue budget (4), one batch's answers in hand (at most 2), and
    // what the kernel's socket buffers took: far below the 400 asked.
    assert!(
        built < 64,
        "{built} answers of 1 MiB built for a client that does not read"
    );
    // Once the client reads, every answer comes.
    for _ in 0..REQUESTS {
        let (op, payload) = read_frame(&mut socket).await;
        assert_eq!((op, payload.len() > ANSWER), (10, true));
    }
    assert_eq!(*handler.reads.lock().unwrap(), REQUESTS);
    assert_eq!(logs.count("answers wait for the client"), 1, "logged once");
}

/// Sends `count` reads on `socket` at once (the socket buffers take them).
async fn send_reads(socket: &mut TcpStream, count: usize) {
    let mut wire = Vec::new();
    for i in 0..count {
        let payload = read(&format!("r{i}"), "s", 0, 1, 0);
        wire.extend(((1 + payload.len()) as i32).to_be_bytes());
        wire.push(5);
        wire.extend(payload);
    }
    socket.write_all(&wire).await.unwrap();
}

/// Waits (yielding to the server) until `done` holds.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(HANG, async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

/// Limits under which clients that read no answers exhaust the server's
/// answer budget (six answers of 1 MiB) long before their own queue budget.
fn answer_budget_limits(stall: Duration) -> ServerLimits {
    ServerLimits {
        max_answer_bytes: 6 << 20,
        max_read_bytes: (1 << 20) + 4096,
        max_queued_bytes: 64 << 20,
        answer_stall_timeout: stall,
        ..ServerLimits::default()
    }
}

#[tokio::test]
async fn clients_that_do_not_read_hold_at_most_the_servers_answer_budget() {
    let (logs, _guard) = Logs::capture();
    const ANSWER: usize = 1 << 20;
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 64;
    let handler = Arc::new(BigReads {
        payload: vec![7u8; ANSWER].into(),
        reads: Mutex::new(0),
    });
    let limits = answer_budget_limits(Duration::from_secs(3600));
    let budget = limits.max_answer_bytes;
    let server = start(handler.clone(), limits, 64).await;
    let mut hogs = Vec::new();
    for _ in 0..CLIENTS {
        let mut socket = connect(server.addr).await;
        send_reads(&mut socket, REQUESTS).await;
        hogs.push(socket);
    }
    // Each could queue 64 MiB on its own; together they stop at the
    // server's budget and wait for it.
    logs.wait_for("the server's answer budget is spent").await;
    wait_until("the budget is taken", || {
        server.ctx.answer_bytes_reserved() > budget - 2 * ANSWER
    })
    .await;
    for _ in 0..1000 {
        let reserved = server.ctx.answer_bytes_reserved();
        assert!(reserved <= budget, "{reserved} bytes of answers held");
        tokio::task::yield_now().await;
    }
    let built = *handler.reads.lock().unwrap();
    assert!(
        built < CLIENTS * REQUESTS,
        "{built} answers built for clients that do not read"
    );
    assert!(
        logs.count("the server's answer budget is spent") <= CLIENTS,
        "logged once per connection"
    );
    assert_eq!(
        logs.count("closing this connection"),
        0,
        "no stall timeout yet"
    );
    // Clients that go away give every byte back.
    drop(hogs);
    wait_until("every reservation is given back", || {
        server.ctx.answer_bytes_reserved() == 0
    })
    .await;
}

#[tokio::test]
async fn a_client_is_served_once_clients_that_do_not_read_are_closed() {
    let (logs, _guard) = Logs::capture();
    const ANSWER: usize = 1 << 20;
    let handler = Arc::new(BigReads {
        payload: vec![7u8; ANSWER].into(),
        reads: Mutex::new(0),
    });
    // A short stall timeout, so the test does not wait long; nothing here
    // depends on its length.
    let server = start(
        handler.clone(),
        answer_budget_limits(Duration::from_millis(200)),
        64,
    )
    .await;
    let mut hogs = Vec::new();
    for _ in 0..4 {
        let mut socket = connect(server.addr).await;
        send_reads(&mut socket, 64).await;
        hogs.push(socket);
    }
    logs.wait_for("the server's answer budget is spent").await;
    // A client that reads is served: the clients that do not are closed
    // while it (or they) wait for the budget, and their answers' bytes are
    // given back.
    let mut client = connect(server.addr).await;
    send_reads(&mut client, 3).await;
    for _ in 0..3 {
        let (op, payload) = tokio::time::timeout(HANG, read_frame(&mut client))
            .await
            .expect("the reading client is served");
        assert_eq!((op, payload.len() > ANSWER), (10, true));
    }
    logs.wait_for("closing this connection").await;
    let closed = logs.count("closing this connection");
    assert!(
        (1..=4).contains(&closed),
        "{closed}: once per connection closed"
    );
    drop(hogs);
    drop(client);
    wait_until("every reservation is given back", || {
        server.ctx.answer_bytes_reserved() == 0
    })
    .await;
}

#[tokio::test]
async fn every_answer_path_gives_its_answer_budget_back() {
    let store = memory_store(1 << 20);
    let limits = ServerLimits {
        max_long_polls_per_connection: 1,
        ..ServerLimits::default()
    };
    let server = start(Arc::new(StoreHandler(Arc::clone(&store))), limits, 8).await;
    let ctx = Arc::clone(&server.ctx);
    let idle = || ctx.answer_bytes_reserved() == 0;
    let mut socket = connect(server.addr).await;
    // In order (create), at batch end (append), now (read, and an error).
    create_stream(&mut socket, "s", false, false).await;
    wait_until("the create's budget is back", idle).await;
    append_ok(&mut socket, "s", b"one").await;
    wait_until("the append's budget is back", idle).await;
    write_frame(&mut socket, 5, &read("now", "s", 0, 1, 0)).await;
    assert_eq!(messages(&read_frame(&mut socket).await.1), 1);
    write_frame(&mut socket, 5, &read("none", "missing", 0, 1, 0)).await;
    assert_eq!(int(&read_frame(&mut socket).await.1, "status"), Some(5));
    wait_until("the reads' budget is back", idle).await;
    // A long-poll, and one past the limit answered at once (give up).
    write_frame(&mut socket, 5, &read("wait", "s", 1, 1, 60_000)).await;
    write_frame(&mut socket, 5, &read("give-up", "s", 1, 1, 60_000)).await;
    let (_, payload) = read_frame(&mut socket).await;
    assert_eq!(text(&payload, "requestId").as_deref(), Some("give-up"));
    wait_until("a waiting read holds no budget", idle).await;
    append_ok(&mut socket, "s", b"two").await;
    let (_, payload) = read_frame(&mut socket).await;
    assert_eq!(text(&payload, "requestId").as_deref(), Some("wait"));
    wait_until("the long-poll's budget is back", idle).await;
    // Later (a flushOnWrite append waiting for its sync).
    let disk: Arc<SlowDisk> = Arc::default();
    let slow = start(
        Arc::new(SlowSyncs(Arc::clone(&disk))),
        ServerLimits::default(),
        8,
    )
    .await;
    let mut slow_socket = connect(slow.addr).await;
    write_frame(&mut slow_socket, 4, &append("later", "s", b"x")).await;
    wait_until("the waiting append holds its reservation", || {
        slow.ctx.answer_bytes_reserved() > 0
    })
    .await;
    disk.release.notify_one();
    assert_eq!(read_frame(&mut slow_socket).await.0, 9);
    wait_until("the later answer's budget is back", || {
        slow.ctx.answer_bytes_reserved() == 0
    })
    .await;
    // A long-poll dropped with its connection.
    write_frame(&mut socket, 5, &read("dropped", "s", 9, 1, 60_000)).await;
    drop(socket);
    drop(slow_socket);
    wait_until("every reservation is given back", idle).await;
}

#[tokio::test]
async fn a_read_answer_stays_within_max_read_bytes_plus_its_framing() {
    const MAX_READ: usize = 4096;
    let store = memory_store(MAX_READ);
    let server = start(
        Arc::new(StoreHandler(Arc::clone(&store))),
        ServerLimits::default(),
        8,
    )
    .await;
    let mut socket = connect(server.addr).await;
    // The longest name the protocol allows, repeated in every message of
    // the answer, and one-byte payloads.
    let name = "n".repeat(255);
    create_stream(&mut socket, &name, false, false).await;
    for i in 0..200u8 {
        append_ok(&mut socket, &name, &[i]).await;
    }
    let id = "read-id";
    write_frame(&mut socket, 5, &read(id, &name, 0, 200, 0)).await;
    let (op, payload) = read_frame(&mut socket).await;
    assert_eq!((op, int(&payload, "status")), (10, Some(0)));
    let count = messages(&payload);
    assert!((1..200).contains(&count), "{count} messages fit");
    // Framing: length, op, the map head, the request id and status with
    // their keys, the messages key and the array head.
    let framing = 5 + 1 + (10 + id.len()) + 8 + (9 + 9);
    let frame = 5 + payload.len();
    assert!(
        frame <= MAX_READ + framing,
        "an answer of {frame} bytes for a budget of {MAX_READ}"
    );
}

#[tokio::test]
async fn long_polls_past_the_limit_are_answered_at_once() {
    let store = memory_store(1 << 20);
    let limits = ServerLimits {
        max_long_polls_per_connection: 1,
        ..ServerLimits::default()
    };
    let server = start(Arc::new(StoreHandler(Arc::clone(&store))), limits, 8).await;
    let mut socket = connect(server.addr).await;
    create_stream(&mut socket, "polled", false, false).await;
    write_frame(&mut socket, 5, &read("waits", "polled", 0, 1, 60_000)).await;
    write_frame(&mut socket, 5, &read("past-limit", "polled", 0, 1, 60_000)).await;
    let (op, payload) = read_frame(&mut socket).await;
    assert_eq!(
        (
            op,
            text(&payload, "requestId").as_deref(),
            int(&payload, "status")
        ),
        (10, Some("past-limit"), Some(13)),
        "the second read is answered NotEnoughMessages at once"
    );
    // The first still waits, and gets the message when it comes.
    assert_eq!(append_ok(&mut socket, "polled", b"m").await, 0);
    let (op, payload) = read_frame(&mut socket).await;
    assert_eq!(
        (
            op,
            text(&payload, "requestId").as_deref(),
            int(&payload, "status")
        ),
        (10, Some("waits"), Some(0))
    );
    // Its place is free again: the next read waits too.
    write_frame(&mut socket, 5, &read("again", "polled", 1, 1, 60_000)).await;
    assert_eq!(append_ok(&mut socket, "polled", b"n").await, 1);
    let (_, payload) = read_frame(&mut socket).await;
    assert_eq!(
        (
            text(&payload, "requestId").as_deref(),
            int(&payload, "status")
        ),
        (Some("again"), Some(0))
    );
}

/// A handler whose deletes wait for `release` (as a delete waits on a slow
/// disk) and which records the order it carries requests out in.
#[derive(Default)]
struct SlowDisk {
    release: Notify,
    log: Mutex<Vec<String>>,
}

struct SlowDeletes(Arc<SlowDisk>);

impl RequestHandler for SlowDeletes {
    fn handle(&self, request: Request) -> Handled {
        let id = request.request_id;
        let disk = Arc::clone(&self.0);
        match request.body {
            RequestBody::DeleteMessageStream { .. } => {
                disk.log.lock().unwrap().push(format!("{id} started"));
                Handled::InOrder(Box::pin(async move {
                    disk.release.notified().await;
                    disk.log.lock().unwrap().push(format!("{id} done"));
                    Reply {
                        request_id: id,
                        body: ReplyBody::DeleteMessageStream(Ok(())),
                    }
                }))
            }
            _ => {
                disk.log.lock().unwrap().push(id.clone());
                Handled::Now(Reply {
                    request_id: id,
                    body: ReplyBody::ListStreams(Ok(Vec::new())),
                })
            }
        }
    }
}

#[tokio::test]
async fn a_delete_waiting_on_the_disk_holds_up_only_its_own_connection() {
    let handler: Arc<SlowDisk> = Arc::default();
    let server = start(
        Arc::new(SlowDeletes(Arc::clone(&handler))),
        ServerLimits::default(),
        8,
    )
    .await;
    let mut slow = connect(server.addr).await;
    let mut other = connect(server.addr).await;
    // Delete, and right behind it on the same connection, a list.
    let mut wire = Vec::new();
    for (op, payload) in [(3u8, delete("delete", "s")), (11, request_only("behind"))] {
        wire.extend(((1 + payload.len()) as i32).to_be_bytes());
        wire.push(op);
        wire.extend(payload);
    }
    slow.write_all(&wire).await.unwrap();
    // Another connection is served while the delete waits.
    write_frame(&mut other, 11, &request_only("other")).await;
    let (op, payload) = read_frame(&mut other).await;
    assert_eq!(
        (op, text(&payload, "requestId").as_deref()),
        (12, Some("other"))
    );
    let seen = handler.log.lock().unwrap().clone();
    assert!(seen.contains(&"delete started".to_owned()), "{seen:?}");
    assert!(
        !seen.contains(&"behind".to_owned()),
        "the request behind the delete waits for it: {seen:?}"
    );
    handler.release.notify_one();
    let (op, payload) = read_frame(&mut slow).await;
    assert_eq!(
        (op, text(&payload, "requestId").as_deref()),
        (8, Some("delete"))
    );
    let (op, payload) = read_frame(&mut slow).await;
    assert_eq!(
        (op, text(&payload, "requestId").as_deref()),
        (12, Some("behind"))
    );
    let log = handler.log.lock().unwrap().clone();
    let at = |entry: &str| log.iter().position(|e| e == entry).unwrap();
    assert!(at("delete done") < at("behind"), "{log:?}");
}

fn daemon_config(root: &Path, vars: &[(&str, &str)]) -> weir::config::Config {
    let mut env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.insert("STREAM_MANAGER_SERVER_PORT".into(), "0".into());
    env.insert(
        "STREAM_MANAGER_STORE_ROOT_DIR".into(),
        root.display().to_string(),
    );
    env.insert("STREAM_MANAGER_AUTHENTICATE_CLIENT".into(), "false".into());
    weir::config::Config::from_lookup(|name| env.get(name).cloned()).unwrap()
}

#[tokio::test]
async fn shutdown_has_a_deadline_even_when_a_client_does_not_read() {
    let (logs, _guard) = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let config = daemon_config(
        dir.path(),
        &[
            ("WEIR_SHUTDOWN_TIMEOUT_MS", "200"),
            ("WEIR_MAX_READ_BYTES", "1048576"),
        ],
    );
    let shutdown = CancellationToken::new();
    let (ready, bound) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(weir::daemon::run(config, shutdown.clone(), move |addr| {
        ready.send(addr).unwrap();
    }));
    let addr = bound.await.unwrap();
    let mut writer = connect(addr).await;
    create_stream(&mut writer, "kept", true, false).await;
    let big = vec![5u8; 512 * 1024];
    for _ in 0..4 {
        append_ok(&mut writer, "kept", &big).await;
    }
    // Pipelined reads of 1 MiB answers, never read: the server's writer
    // blocks on this client.
    let mut hoarder = connect(addr).await;
    let mut wire = Vec::new();
    for i in 0..200 {
        let payload = read(&format!("r{i}"), "kept", 0, 4, 0);
        wire.extend(((1 + payload.len()) as i32).to_be_bytes());
        wire.push(5);
        wire.extend(payload);
    }
    hoarder.write_all(&wire).await.unwrap();
    // The server is stuck on this client before the shutdown starts.
    logs.wait_for("answers wait for the client to read them")
        .await;
    shutdown.cancel();
    tokio::time::timeout(HANG, daemon)
        .await
        .expect("weir stops at its shutdown deadline")
        .unwrap()
        .expect("a clean stop");
    drop(hoarder);
    // What was acknowledged is there after a restart (the store lock was
    // given back, too).
    let store = Store::open(
        Arc::new(weir::store::fs::StdFs),
        dir.path(),
        Arc::new(ManualClock::new(0)),
        StoreLimits {
            max_read_bytes: 1 << 24,
        },
    )
    .unwrap();
    let info = store.describe("kept").unwrap();
    assert_eq!(info.storage_status.newest_sequence_number, 3);
}

#[tokio::test]
async fn flush_on_write_appends_on_several_connections_survive_a_power_cut() {
    const CONNECTIONS: usize = 4;
    const APPENDS: usize = 50;
    let fs = SimulatedFs::new();
    let open = |fs: &SimulatedFs| {
        Arc::new(
            Store::open(
                Arc::new(fs.clone()) as Arc<dyn FileSystem>,
                Path::new("/store"),
                Arc::new(ManualClock::new(1_700_000_000_000)),
                StoreLimits {
                    max_read_bytes: 1 << 20,
                },
            )
            .unwrap(),
        )
    };
    let store = open(&fs);
    let server = start(
        Arc::new(StoreHandler(Arc::clone(&store))),
        ServerLimits::default(),
        16,
    )
    .await;
    let mut setup = connect(server.addr).await;
    create_stream(&mut setup, "durable", true, true).await;
    let mut clients = Vec::new();
    for c in 0..CONNECTIONS {
        let addr = server.addr;
        clients.push(tokio::spawn(async move {
            let mut socket = connect(addr).await;
            let mut wire = Vec::new();
            for i in 0..APPENDS {
                let payload = append(
                    &format!("{c}-{i}"),
                    "durable",
                    format!("{c}-{i}").as_bytes(),
                );
                wire.extend(((1 + payload.len()) as i32).to_be_bytes());
                wire.push(4);
                wire.extend(payload);
            }
            socket.write_all(&wire).await.unwrap();
            let mut acknowledged = Vec::new();
            for _ in 0..APPENDS {
                let (op, payload) = read_frame(&mut socket).await;
                assert_eq!((op, int(&payload, "status")), (9, Some(0)));
                acknowledged.push((
                    int(&payload, "sequenceNumber").unwrap(),
                    text(&payload, "requestId").unwrap(),
                ));
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    assert_eq!(acknowledged.len(), CONNECTIONS * APPENDS);
    // Power cut right after the last acknowledgement: nothing written after
    // the last sync survives.
    let after = fs.crash(|_, _| 0);
    let reopened = open(&after);
    for (seq, id) in acknowledged {
        let options = weir::protocol::model::ReadMessagesOptions {
            desired_start_sequence_number: seq,
            min_message_count: 1,
            max_message_count: 1,
            read_timeout_millis: 0,
        };
        let read = reopened.try_read("durable", &options).unwrap().unwrap();
        assert_eq!(&read[0].payload[..], id.as_bytes(), "message {seq}");
    }
    server.shutdown.cancel();
}

/// A weir process a test started; killed by its PID if the test ends
/// without stopping it.
struct Weir {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Weir {
    /// Starts the weir binary on `root` (port 0); stderr goes on being
    /// collected.
    fn spawn(root: &Path) -> Weir {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .env_clear()
            .env("STREAM_MANAGER_SERVER_PORT", "0")
            .env("STREAM_MANAGER_STORE_ROOT_DIR", root)
            .env("STREAM_MANAGER_AUTHENTICATE_CLIENT", "false")
            .env("LOG_LEVEL", "INFO")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (lines, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        Weir { child, lines: rx }
    }

    /// Lines until one contains `needle`.
    fn wait_line(&self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(HANG) {
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return seen;
            }
        }
        panic!("never printed {needle:?}: {seen:?}");
    }

    /// Waits for the process to exit on its own (bounded by [`HANG`]).
    fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + HANG;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "weir did not exit");
            // Polling a child process has no readiness signal to wait on.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then its exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        self.exit_status()
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Only when the test failed before stopping it.
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

#[test]
fn a_second_weir_on_the_same_store_refuses_to_start_naming_the_folder_and_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Weir::spawn(dir.path());
    first.wait_line("weir listening on");
    let mut second = Weir::spawn(dir.path());
    let status = second.exit_status();
    let said: Vec<String> = second.lines.iter().collect();
    assert!(
        !status.success(),
        "the second weir exits non-zero: {said:?}"
    );
    let said = said.join("\n");
    assert!(said.contains(&dir.path().display().to_string()), "{said}");
    assert!(said.contains(&first.child.id().to_string()), "{said}");
    assert!(first.stop().success());
    // The store is free again.
    let mut third = Weir::spawn(dir.path());
    third.wait_line("weir listening on");
    assert!(third.stop().success());
}

/// Appends that wait for `release` before they are answered (as a
/// `flushOnWrite` append waits for its sync); the order requests are
/// carried out in is recorded.
struct SlowSyncs(Arc<SlowDisk>);

impl RequestHandler for SlowSyncs {
    fn handle(&self, request: Request) -> Handled {
        let id = request.request_id;
        let disk = Arc::clone(&self.0);
        disk.log.lock().unwrap().push(id.clone());
        match request.body {
            RequestBody::AppendMessage { .. } => Handled::Later(Box::pin(async move {
                disk.release.notified().await;
                Reply {
                    request_id: id,
                    body: ReplyBody::AppendMessage(Ok(0)),
                }
            })),
            _ => Handled::Now(Reply {
                request_id: id,
                body: ReplyBody::ListStreams(Ok(Vec::new())),
            }),
        }
    }
}

#[tokio::test]
async fn requests_waiting_past_the_in_flight_limit_stop_the_reading() {
    let (logs, _guard) = Logs::capture();
    let disk: Arc<SlowDisk> = Arc::default();
    let limits = ServerLimits {
        max_in_flight: 2,
        ..ServerLimits::default()
    };
    let server = start(Arc::new(SlowSyncs(Arc::clone(&disk))), limits, 8).await;
    let mut socket = connect(server.addr).await;
    let mut wire = Vec::new();
    for (op, payload) in [
        (4u8, append("a1", "s", b"x")),
        (4, append("a2", "s", b"x")),
        (11, request_only("behind")),
    ] {
        wire.extend(((1 + payload.len()) as i32).to_be_bytes());
        wire.push(op);
        wire.extend(payload);
    }
    socket.write_all(&wire).await.unwrap();
    logs.wait_for("requests in flight at the limit").await;
    assert_eq!(*disk.log.lock().unwrap(), ["a1", "a2"], "the list waits");
    // One answered: there is room again, and the list is carried out.
    disk.release.notify_one();
    let (op, payload) = read_frame(&mut socket).await;
    assert_eq!(op, 9, "{:?}", text(&payload, "requestId"));
    let (op, payload) = read_frame(&mut socket).await;
    assert_eq!(
        (op, text(&payload, "requestId").as_deref()),
        (12, Some("behind"))
    );
    disk.release.notify_one();
    assert_eq!(read_frame(&mut socket).await.0, 9);
}

#[tokio::test]
async fn a_request_above_the_frame_limit_is_answered_request_payload_too_large() {
    let store = memory_store(1 << 20);
    // `start` sets a frame limit of 1 MiB.
    let server = start(
        Arc::new(StoreHandler(Arc::clone(&store))),
        ServerLimits::default(),
        8,
    )
    .await;
    let mut socket = connect(server.addr).await;
    create_stream(&mut socket, "big", false, false).await;
    write_frame(
        &mut socket,
        4,
        &append("too-big", "big", &vec![1u8; 2 << 20]),
    )
    .await;
    let (op, payload) = read_frame(&mut socket).await;
    assert_eq!(
        (
            op,
            text(&payload, "requestId").as_deref(),
            int(&payload, "status")
        ),
        (9, Some("too-big"), Some(4))
    );
    assert!(text(&payload, "errorMessage")
        .unwrap()
        .contains("WEIR_MAX_FRAME_BYTES"));
    // The connection goes on, and nothing was stored.
    assert_eq!(append_ok(&mut socket, "big", b"small").await, 0);
}
