//! The protocol thread never waits on the disk (hardening item 13): an
//! append that finds no spare segment ready, an append whose retention must
//! first finish a seal and remove a segment, and a long-poll given up whose
//! answer is in sealed segments all hand their disk work to the blocking
//! pool. Each test holds that disk work (a file system whose folder
//! changes, or segment opens, wait while held, and fail if they come from
//! the protocol thread), shows the protocol thread answering other requests
//! meanwhile, then releases it and checks the held request's answer. The
//! handler is driven as a connection drives it, on a current-thread
//! runtime; the last test goes through the server's connections, for the
//! order of one connection's answers.

mod common;
use common::{int, text};
mod sim;
use bytes::Bytes;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir::auth::Authenticator;
use weir::clock::ManualClock;
use weir::protocol::cbor::Writer;
use weir::protocol::model::{MessageStreamDefinition, ReadMessagesOptions, StrategyOnFull};
use weir::protocol::{Reply, ReplyBody, Request, RequestBody};
use weir::server::dispatch::{GivenUp, Handled, RequestHandler, StoreHandler};
use weir::server::ServerContext;
use weir::store::fs::{FileHandle, FileSystem};
use weir::store::simfs::SimulatedFs;
use weir::store::Store;

/// Which file-system calls the hold concerns: the operation's name and its
/// path.
type Held = fn(&str, &Path) -> bool;

/// A `SimulatedFs` whose calls that `held` picks, once armed, wait while the
/// hold is on (saying so on `entered`), and fail at once if they come from
/// the protocol thread: the protocol thread must never wait on the disk.
struct HoldFs {
    inner: SimulatedFs,
    held: Held,
    state: Arc<HoldState>,
}

struct HoldState {
    protocol_thread: ThreadId,
    /// (armed, on).
    hold: Mutex<(bool, bool)>,
    released: Condvar,
    entered: mpsc::UnboundedSender<String>,
    /// Calls the protocol thread made that the hold concerns.
    on_protocol_thread: Mutex<Vec<String>>,
}

impl HoldState {
    fn arm(&self) {
        *self.hold.lock().unwrap() = (true, true);
    }

    fn release(&self) {
        self.hold.lock().unwrap().1 = false;
        self.released.notify_all();
    }

    fn violations(&self) -> Vec<String> {
        self.on_protocol_thread.lock().unwrap().clone()
    }
}

impl HoldFs {
    fn pass(&self, op: &str, path: &Path) -> io::Result<()> {
        if !self.hold_armed() || !(self.held)(op, path) {
            return Ok(());
        }
        let call = format!("{op} {}", path.display());
        if std::thread::current().id() == self.state.protocol_thread {
            self.state
                .on_protocol_thread
                .lock()
                .unwrap()
                .push(call.clone());
            let _ = self
                .state
                .entered
                .send(format!("on the protocol thread: {call}"));
            return Err(io::Error::other("the protocol thread waited on the disk"));
        }
        let _ = self.state.entered.send(call);
        let mut hold = self.state.hold.lock().unwrap();
        while hold.1 {
            hold = self.state.released.wait(hold).unwrap();
        }
        Ok(())
    }

    fn hold_armed(&self) -> bool {
        self.state.hold.lock().unwrap().0
    }
}

impl FileSystem for HoldFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.pass("create_dir_all", path)?;
        self.inner.create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        self.pass("open", path)?;
        self.inner.open(path)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        self.pass("create", path)?;
        self.inner.create(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.pass("remove_file", path)?;
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.pass("remove_dir_all", path)?;
        self.inner.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.pass("rename", from)?;
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.pass("sync_dir", dir)?;
        self.inner.sync_dir(dir)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }
    fn run_blocking(&self, job: Box<dyn FnOnce() + Send>) {
        self.inner.run_blocking(job)
    }
}

/// Folder changes (creating, renaming, removing files, syncing the folder)
/// in stream `s`'s folder: what a new segment and retention wait for.
fn folder_changes_of_s(op: &str, path: &Path) -> bool {
    op != "open" && path.to_string_lossy().contains("/streams/s")
}

/// Opens of stream `s`'s segment files: what a read of a sealed segment
/// waits for.
fn segment_opens_of_s(op: &str, path: &Path) -> bool {
    op == "open"
        && path.to_string_lossy().contains("/streams/s")
        && path.extension().is_some_and(|e| e == "seg")
}

struct Setup {
    handler: StoreHandler,
    store: Arc<Store>,
    fs: SimulatedFs,
    hold: Arc<HoldState>,
    entered: mpsc::UnboundedReceiver<String>,
}

/// A store on a `HoldFs` whose background steps wait until run by hand
/// (so a segment change's disk work is never done early, and nothing runs
/// on the protocol thread unasked), with streams `s` (1 KiB segments: four
/// 200-byte messages each) and `other`.
fn setup(held: Held, strategy: StrategyOnFull, max_size: i64) -> Setup {
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let hold = Arc::new(HoldState {
        protocol_thread: std::thread::current().id(),
        hold: Mutex::new((false, false)),
        released: Condvar::new(),
        entered: entered_tx,
        on_protocol_thread: Mutex::new(Vec::new()),
    });
    let inner = SimulatedFs::new();
    inner.set_defer_background(true);
    let fs = HoldFs {
        inner: inner.clone(),
        held,
        state: Arc::clone(&hold),
    };
    let store = Arc::new(sim::open_on(Arc::new(fs), Arc::new(ManualClock::new(sim::T0))).unwrap());
    for (name, max_size) in [("s", max_size), ("other", 1 << 20)] {
        store
            .create(MessageStreamDefinition {
                stream_segment_size: 1024,
                max_size,
                strategy_on_full: strategy,
                ..MessageStreamDefinition::with_defaults(name.into())
            })
            .unwrap();
    }
    Setup {
        handler: StoreHandler(Arc::clone(&store)),
        store,
        fs: inner,
        hold,
        entered,
    }
}

fn append_request(name: &str, byte: u8) -> Request {
    Request {
        request_id: format!("{name}-{byte}"),
        body: RequestBody::AppendMessage {
            name: name.into(),
            payload: Bytes::from(vec![byte; 200]),
        },
    }
}

/// Carries a request out as a connection does, to its answer.
async fn answer(handled: Handled) -> Reply {
    match handled {
        Handled::Now(reply) => reply,
        Handled::AtBatchEnd(confirm) => confirm(),
        Handled::Later(pending) | Handled::InOrder(pending) => pending.await,
        Handled::LongPoll { wait, .. } => wait.await,
    }
}

fn appended(reply: &Reply) -> i64 {
    match &reply.body {
        ReplyBody::AppendMessage(Ok(seq)) => *seq,
        other => panic!("{}: {other:?}", reply.request_id),
    }
}

async fn append(setup: &Setup, name: &str, byte: u8) -> i64 {
    appended(&answer(setup.handler.handle(append_request(name, byte))).await)
}

/// While the held request waits on the disk, the protocol thread answers
/// another stream's append and a describe of the held stream.
async fn still_answers(setup: &Setup, other_seq: i64) {
    assert_eq!(append(setup, "other", 0).await, other_seq);
    match setup.handler.handle(Request {
        request_id: "describe".into(),
        body: RequestBody::DescribeMessageStream { name: "s".into() },
    }) {
        Handled::Now(Reply {
            body: ReplyBody::DescribeMessageStream(Ok(_)),
            ..
        }) => {}
        _ => panic!("a describe is answered at once"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // The protocol thread: one thread for every connection.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_append_that_finds_no_spare_segment_waits_off_the_protocol_thread() {
    let mut setup = setup(folder_changes_of_s, StrategyOnFull::RejectNewData, 1 << 20);
    let got = runtime().block_on(async {
        for i in 0..4 {
            assert_eq!(append(&setup, "s", i).await, i64::from(i));
        }
        // The fifth fills the segment: the next one's spare was never
        // prepared (background steps wait), so the append needs the disk.
        setup.hold.arm();
        let held = tokio::spawn(answer(setup.handler.handle(append_request("s", 4))));
        let call = setup.entered.recv().await.unwrap();
        assert!(
            call.contains("/streams/s") && !call.starts_with("on the"),
            "{call}"
        );
        still_answers(&setup, 0).await;
        // A second append to the same stream, as from another connection,
        // does not wait on the protocol thread either.
        let behind = tokio::spawn(answer(setup.handler.handle(append_request("s", 5))));
        still_answers(&setup, 1).await;
        setup.hold.release();
        // Two connections' appends: either may come first.
        let mut got = [
            (appended(&held.await.unwrap()), 4u8),
            (appended(&behind.await.unwrap()), 5u8),
        ];
        got.sort();
        assert_eq!([got[0].0, got[1].0], [4, 5]);
        got
    });
    assert_eq!(setup.hold.violations(), Vec::<String>::new());
    let messages = sim::read_all(&setup.store, "s");
    let seqs: Vec<i64> = messages.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (0..6).collect::<Vec<_>>());
    for (seq, payload) in &messages {
        let byte = match got.iter().find(|(s, _)| s == seq) {
            Some((_, byte)) => *byte,
            None => *seq as u8,
        };
        assert_eq!(payload[..], [byte; 200][..], "message {seq}");
    }
}

#[test]
fn retention_that_must_finish_a_seal_waits_off_the_protocol_thread() {
    // 224 bytes a message stored, four to a segment. With a maxSize of one
    // segment, the oldest segment to leave is the active one, whose seal
    // (a background step) must be done first, and an empty segment made
    // for the next sequence number; with two, it is a sealed one.
    for (max_size, fit, kept_from) in [(1024, 4, 4), (2048, 9, 4)] {
        let mut setup = setup(
            folder_changes_of_s,
            StrategyOnFull::OverwriteOldestData,
            max_size,
        );
        runtime().block_on(async {
            for i in 0..fit {
                assert_eq!(append(&setup, "s", i).await, i64::from(i));
            }
            // The next one makes room: the oldest segment leaves.
            setup.hold.arm();
            let held = tokio::spawn(answer(setup.handler.handle(append_request("s", fit))));
            let call = setup.entered.recv().await.unwrap();
            assert!(
                call.contains("/streams/s") && !call.starts_with("on the"),
                "{call}"
            );
            still_answers(&setup, 0).await;
            setup.hold.release();
            assert_eq!(appended(&held.await.unwrap()), i64::from(fit));
        });
        assert_eq!(setup.hold.violations(), Vec::<String>::new());
        let messages = sim::read_all(&setup.store, "s");
        let seqs: Vec<i64> = messages.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (kept_from..=i64::from(fit)).collect::<Vec<_>>());
        assert!(messages
            .iter()
            .all(|(seq, payload)| payload[..] == [*seq as u8; 200][..]));
    }
}

#[test]
fn a_long_poll_given_up_reads_sealed_segments_off_the_protocol_thread() {
    let mut setup = setup(segment_opens_of_s, StrategyOnFull::RejectNewData, 1 << 20);
    runtime().block_on(async {
        for i in 0..10 {
            append(&setup, "s", i).await;
        }
        // The seals done, so reads of those segments open their files.
        setup.fs.run_background();
        let read = Request {
            request_id: "read".into(),
            body: RequestBody::ReadMessages {
                stream_name: "s".into(),
                options: ReadMessagesOptions {
                    desired_start_sequence_number: 0,
                    min_message_count: 12,
                    max_message_count: 12,
                    read_timeout_millis: 60_000,
                },
            },
        };
        let Handled::LongPoll { give_up, .. } = setup.handler.handle(read) else {
            panic!("ten messages are not twelve: the read waits");
        };
        // Enough messages come before the connection gives the read up (at
        // its limit of waiting reads): the answer starts in sealed segments.
        for i in 10..12 {
            append(&setup, "s", i).await;
        }
        setup.hold.arm();
        let held = tokio::spawn(give_up_answer(give_up));
        let call = setup.entered.recv().await.unwrap();
        assert!(
            call.ends_with(".seg") && !call.starts_with("on the"),
            "{call}"
        );
        still_answers(&setup, 0).await;
        setup.hold.release();
        let reply = held.await.unwrap();
        match reply.body {
            ReplyBody::ReadMessages {
                result: Ok(messages),
                ..
            } => {
                let seqs: Vec<i64> = messages.iter().map(|m| m.sequence_number).collect();
                assert_eq!(seqs, (0..12).collect::<Vec<_>>());
            }
            other => panic!("{other:?}"),
        }
    });
    assert_eq!(setup.hold.violations(), Vec::<String>::new());
}

/// The answer of a long-poll given up, as the connection sends it.
async fn give_up_answer(give_up: Box<dyn FnOnce() -> GivenUp + Send>) -> Reply {
    match give_up() {
        GivenUp::Now(reply) => reply,
        GivenUp::FromDisk(pending) => pending.await,
    }
}

/// Through the server, on the one protocol thread: an append that waits on
/// the disk holds up only its own connection, whose later requests are
/// carried out after it and answered in order; other connections are
/// served meanwhile.
#[test]
fn an_append_waiting_on_the_disk_holds_up_only_its_own_connection() {
    let mut setup = setup(folder_changes_of_s, StrategyOnFull::RejectNewData, 1 << 20);
    runtime().block_on(async {
        for i in 0..4 {
            append(&setup, "s", i).await;
        }
        let ctx = Arc::new(ServerContext::new(
            Arc::new(StoreHandler(Arc::clone(&setup.store))),
            Authenticator::Disabled,
            1 << 20,
            "weir-test".into(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(weir::server::run(listener, ctx, 8, shutdown.clone()));
        let mut held = connect(addr).await;
        let mut other = connect(addr).await;
        setup.hold.arm();
        // The first fills the segment, and no spare is ready: it waits on
        // the disk; the two behind it arrive with it.
        let mut wire = Vec::new();
        for (op, payload) in [
            (4u8, common::append("a4", "s", &[4; 200])),
            (4, common::append("a5", "s", &[5; 200])),
            (11, request_only("behind")),
        ] {
            wire.extend(((1 + payload.len()) as i32).to_be_bytes());
            wire.push(op);
            wire.extend(payload);
        }
        held.write_all(&wire).await.unwrap();
        let call = setup.entered.recv().await.unwrap();
        assert!(
            call.contains("/streams/s") && !call.starts_with("on the"),
            "{call}"
        );
        common::write_frame(&mut other, 4, &common::append("o", "other", b"x")).await;
        let (op, payload) = common::read_frame(&mut other).await;
        assert_eq!((op, text(&payload, "requestId").as_deref()), (9, Some("o")));
        setup.hold.release();
        for (id, op, seq) in [("a4", 9, Some(4)), ("a5", 9, Some(5)), ("behind", 12, None)] {
            let (got_op, payload) = common::read_frame(&mut held).await;
            assert_eq!(
                (got_op, text(&payload, "requestId").as_deref()),
                (op, Some(id))
            );
            assert_eq!(int(&payload, "status"), Some(0), "{id}");
            if seq.is_some() {
                assert_eq!(int(&payload, "sequenceNumber"), seq, "{id}");
            }
        }
        shutdown.cancel();
        server.await.unwrap();
    });
    assert_eq!(setup.hold.violations(), Vec::<String>::new());
    let messages = sim::read_all(&setup.store, "s");
    assert_eq!(messages.len(), 6);
    assert!(messages
        .iter()
        .all(|(seq, payload)| payload[..] == [*seq as u8; 200][..]));
}

/// Connects and handshakes (protocol 1.1.0).
async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut w = Writer::default();
    w.map(2)
        .kv_text("requestId", "connect")
        .kv_text("protocolVersion", "1.1.0");
    let connect = w.into_vec();
    let mut wire = vec![1];
    wire.extend(((1 + connect.len()) as i32).to_be_bytes());
    wire.push(1);
    wire.extend(connect);
    socket.write_all(&wire).await.unwrap();
    common::read_exactly(&mut socket, 1).await;
    let (op, payload) = common::read_frame(&mut socket).await;
    assert_eq!((op, int(&payload, "status")), (6, Some(0)));
    socket
}

fn request_only(id: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(1).kv_text("requestId", id);
    w.into_vec()
}
