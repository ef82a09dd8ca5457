//! The exporters' reader seam (`src/store/export_reader.rs`): reads that
//! change nothing and offer only durable messages, gaps reported, waits
//! that wake on the stream's signals, and registry events.
//!
//! Waits run on tokio's paused clock, which moves only when every task
//! waits: a spawned waiter has parked once a 1 ms sleep of the test ends,
//! and a waiter woken by a signal returns without any time passing.

mod sim;
use bytes::Bytes;
use sim::{open_store, T0};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;
use weir::clock::ManualClock;
use weir::protocol::model::{MessageStreamDefinition, Persistence, StrategyOnFull};
use weir::store::export_reader::EVENTS_KEPT;
use weir::store::fs::FileSystem;
use weir::store::simfs::SimulatedFs;
use weir::store::{Store, StoreError, StoreLimits, StreamEvent, Waited};

const ALL: usize = 1 << 20;

/// A store on `SimulatedFs` with a `File` stream "s": 200-byte messages,
/// four to a 1 KiB segment.
fn file_store(fs: &SimulatedFs, clock: Arc<ManualClock>, ttl: Option<i64>) -> Arc<Store> {
    let store = open_store(fs, clock).expect("the store opens");
    store.create(definition("s", ttl)).unwrap();
    Arc::new(store)
}

fn memory_store() -> Arc<Store> {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::new(
        clock,
        StoreLimits {
            max_read_bytes: 1 << 20,
        },
    );
    store.create(definition("s", None)).unwrap();
    Arc::new(store)
}

fn definition(name: &str, ttl: Option<i64>) -> MessageStreamDefinition {
    MessageStreamDefinition {
        stream_segment_size: 1024,
        max_size: 1 << 20,
        time_to_live_millis: ttl,
        strategy_on_full: StrategyOnFull::OverwriteOldestData,
        ..MessageStreamDefinition::with_defaults(name.into())
    }
}

/// Appends and confirms (written to the OS, not synced).
fn append(store: &Store, byte: u8) -> i64 {
    let appended = store.append("s", Bytes::from(vec![byte; 200])).unwrap();
    store.confirm("s", appended.ticket).unwrap();
    appended.sequence_number
}

fn snapshot(fs: &SimulatedFs) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut files = fs.files();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let contents = fs.contents(&path);
            (path, contents)
        })
        .collect()
}

fn sequence_numbers(batch: &weir::store::ExportBatch) -> Vec<i64> {
    batch.messages.iter().map(|m| m.sequence_number).collect()
}

#[tokio::test]
async fn an_export_read_writes_nothing_and_removes_nothing() {
    let fs = SimulatedFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = file_store(&fs, clock.clone(), Some(1_000));
    for i in 0..8 {
        append(&store, i);
    }
    clock.advance(600);
    for i in 8..16 {
        append(&store, i);
    }
    store.sync_all().await;
    // Waiting for a write: a flush would put it in the segment file.
    let pending = store.append("s", Bytes::from(vec![99; 200])).unwrap();
    // The first two segments (0..8) expire; nothing has removed them.
    clock.advance(500);
    let segments = store.segments("s").unwrap();
    assert_eq!(segments[0].first_sequence_number, 0);
    assert_eq!(segments[2].first_sequence_number, 8);
    let files = snapshot(&fs);

    let reader = store.export_reader("s").unwrap();
    let batch = reader.read(0, ALL, ALL).unwrap();
    assert_eq!(batch.oldest_retained, 8, "expired messages count as gone");
    assert_eq!(batch.skipped(0), 8);
    assert_eq!(batch.durable_next, 16, "the waiting append is not durable");
    assert_eq!(sequence_numbers(&batch), (8..16).collect::<Vec<_>>());
    assert_eq!(batch.next(0), 16);
    assert!(batch.messages.iter().all(|m| m.payload.len() == 200));
    let batch = reader.read(16, ALL, ALL).unwrap();
    assert!(batch.messages.is_empty());
    assert!(reader.wait_for(16, Instant::now()).await.unwrap() == Waited::TimedOut);

    assert_eq!(
        snapshot(&fs),
        files,
        "no file changed: nothing written, nothing removed"
    );
    assert_eq!(store.segments("s").unwrap(), segments, "nothing removed");
    // The client path's describe writes the waiting append; reads after it
    // change what it says in nothing.
    let described = store.describe("s").unwrap();
    reader.read(0, ALL, ALL).unwrap();
    reader.read(12, 2, ALL).unwrap();
    assert_eq!(store.describe("s").unwrap(), described);
    store.confirm("s", pending.ticket).unwrap();
}

#[tokio::test]
async fn a_file_stream_offers_only_what_is_synced() {
    let fs = SimulatedFs::new();
    let store = file_store(&fs, Arc::new(ManualClock::new(T0)), None);
    let reader = store.export_reader("s").unwrap();
    for i in 0..10 {
        append(&store, i);
    }
    let batch = reader.read(0, ALL, ALL).unwrap();
    assert!(batch.messages.is_empty(), "written is not durable");
    assert_eq!((batch.oldest_retained, batch.durable_next), (0, 0));

    reader.request_sync().await.unwrap();
    let batch = reader.read(0, ALL, ALL).unwrap();
    assert_eq!(batch.durable_next, 10);
    // Across sealed segments (0..8) and the active one (8..10).
    assert_eq!(sequence_numbers(&batch), (0..10).collect::<Vec<_>>());
    for (i, message) in batch.messages.iter().enumerate() {
        assert_eq!(message.payload, vec![i as u8; 200]);
    }
    // Later appends, written and waiting, are not offered until synced.
    append(&store, 10);
    let waiting = store.append("s", Bytes::from(vec![11; 200])).unwrap();
    assert_eq!(reader.read(6, ALL, ALL).unwrap().durable_next, 10);
    assert_eq!(
        sequence_numbers(&reader.read(6, ALL, ALL).unwrap()),
        [6, 7, 8, 9]
    );
    reader.request_sync().await.unwrap();
    store.confirm("s", waiting.ticket).unwrap();
    let batch = reader.read(6, ALL, ALL).unwrap();
    assert_eq!(sequence_numbers(&batch), (6..12).collect::<Vec<_>>());

    // Limits: a count, and a byte budget (one message at least).
    assert_eq!(sequence_numbers(&reader.read(3, 2, ALL).unwrap()), [3, 4]);
    assert_eq!(sequence_numbers(&reader.read(3, ALL, 1).unwrap()), [3]);
    assert_eq!(
        reader.read(3, ALL, 600).unwrap().messages.len(),
        2,
        "each 200-byte message costs more than its payload"
    );
}

#[tokio::test]
async fn a_memory_stream_offers_every_message_appended() {
    let store = memory_store();
    let reader = store.export_reader("s").unwrap();
    let appended = store.append("s", Bytes::from_static(b"m")).unwrap();
    let batch = reader.read(0, ALL, ALL).unwrap();
    assert_eq!(sequence_numbers(&batch), [0]);
    assert_eq!(batch.durable_next, 1);
    reader.request_sync().await.unwrap();
    store.confirm("s", appended.ticket).unwrap();
}

#[tokio::test]
async fn a_gap_left_by_retention_is_reported() {
    for on_disk in [true, false] {
        let fs = SimulatedFs::new();
        let store = match on_disk {
            true => {
                let store = open_store(&fs, Arc::new(ManualClock::new(T0))).unwrap();
                Arc::new(store)
            }
            false => Arc::new(Store::new(
                Arc::new(ManualClock::new(T0)),
                StoreLimits {
                    max_read_bytes: 1 << 20,
                },
            )),
        };
        store
            .create(MessageStreamDefinition {
                // Room for two segments of four messages.
                max_size: 2 * 4 * 224,
                ..definition("s", None)
            })
            .unwrap();
        let reader = store.export_reader("s").unwrap();
        for i in 0..6 {
            append(&store, i);
        }
        store.sync_all().await;
        let batch = reader.read(0, 2, ALL).unwrap();
        assert_eq!((batch.oldest_retained, batch.next(0)), (0, 2));
        // Overwriting the oldest removes segment 0..4.
        for i in 6..10 {
            append(&store, i);
        }
        store.sync_all().await;
        let batch = reader.read(2, ALL, ALL).unwrap();
        assert_eq!(batch.oldest_retained, 4, "on disk: {on_disk}");
        assert_eq!(batch.skipped(2), 2);
        assert_eq!(sequence_numbers(&batch), (4..10).collect::<Vec<_>>());
        let batch = reader.read(5, ALL, ALL).unwrap();
        assert_eq!(batch.skipped(5), 0);
        assert_eq!(sequence_numbers(&batch)[0], 5);
    }
}

/// Spawns `wait_for(from, deadline)` and returns once it waits.
async fn parked_waiter(
    store: &Arc<Store>,
    from: i64,
    deadline: Instant,
) -> tokio::task::JoinHandle<Result<Waited, StoreError>> {
    let reader = store.export_reader("s").unwrap();
    let waiter = tokio::spawn(async move { reader.wait_for(from, deadline).await });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!waiter.is_finished(), "the waiter waits");
    waiter
}

#[tokio::test(start_paused = true)]
async fn a_waiter_wakes_when_its_message_is_durable_and_not_before() {
    let fs = SimulatedFs::new();
    let store = file_store(&fs, Arc::new(ManualClock::new(T0)), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let waiter = parked_waiter(&store, 0, deadline).await;
    append(&store, 0);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!waiter.is_finished(), "written is not durable");
    store.sync_all().await;
    let synced = Instant::now();
    assert_eq!(waiter.await.unwrap().unwrap(), Waited::Readable);
    assert_eq!(synced.elapsed(), Duration::ZERO, "woken at once");
    // A message already durable: no wait at all.
    let reader = store.export_reader("s").unwrap();
    assert_eq!(
        reader.wait_for(0, deadline).await.unwrap(),
        Waited::Readable
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiter_on_a_memory_stream_wakes_at_the_append() {
    let store = memory_store();
    let waiter = parked_waiter(&store, 0, Instant::now() + Duration::from_secs(10)).await;
    let appended = Instant::now();
    store.append("s", Bytes::from_static(b"m")).unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), Waited::Readable);
    assert_eq!(appended.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_returns_at_its_deadline() {
    let fs = SimulatedFs::new();
    let store = file_store(&fs, Arc::new(ManualClock::new(T0)), None);
    append(&store, 0);
    store.sync_all().await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    // Message 0 is durable, but the waiter wants 1 on.
    let reader = store.export_reader("s").unwrap();
    assert_eq!(
        reader.wait_for(1, deadline).await.unwrap(),
        Waited::TimedOut
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_deleted_stream_ends_its_waiter() {
    for on_disk in [true, false] {
        let fs = SimulatedFs::new();
        let store = match on_disk {
            true => file_store(&fs, Arc::new(ManualClock::new(T0)), None),
            false => memory_store(),
        };
        let reader = store.export_reader("s").unwrap();
        let waiter = parked_waiter(&store, 0, Instant::now() + Duration::from_secs(10)).await;
        let deleted = Instant::now();
        store.delete("s").unwrap();
        assert!(matches!(
            waiter.await.unwrap(),
            Err(StoreError::NotFound(name)) if name == "s"
        ));
        assert_eq!(deleted.elapsed(), Duration::ZERO, "on disk: {on_disk}");
        // The reader keeps to the stream it was made for.
        store.create(definition("s", None)).unwrap();
        append(&store, 0);
        assert!(matches!(
            reader.read(0, ALL, ALL),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            reader.request_sync().await,
            Err(StoreError::NotFound(_))
        ));
    }
}

#[tokio::test]
async fn registry_events_come_in_the_order_changes_took_effect() {
    let fs = SimulatedFs::new();
    let store = open_store(&fs, Arc::new(ManualClock::new(T0))).unwrap();
    store.create(definition("before", None)).unwrap();
    let mut events = store.subscribe_events();
    assert_eq!(store.definitions(), [definition("before", None)]);

    store.create(definition("a", None)).unwrap();
    let updated = MessageStreamDefinition {
        time_to_live_millis: Some(60_000),
        ..definition("a", None)
    };
    store.update(updated.clone()).unwrap();
    store.create(definition("b", None)).unwrap();
    store.delete("a").unwrap();
    // Changes that fail send nothing.
    assert!(store.create(definition("b", None)).is_err());
    let other_persistence = MessageStreamDefinition {
        persistence: Persistence::Memory,
        ..definition("b", None)
    };
    assert!(store.update(other_persistence).is_err());
    assert!(store.delete("a").is_err());

    assert_eq!(
        events.recv().await.unwrap(),
        StreamEvent::Created(definition("a", None))
    );
    assert_eq!(events.recv().await.unwrap(), StreamEvent::Updated(updated));
    assert_eq!(
        events.recv().await.unwrap(),
        StreamEvent::Created(definition("b", None))
    );
    assert_eq!(
        events.recv().await.unwrap(),
        StreamEvent::Deleted("a".into())
    );
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(
        store.definitions(),
        [definition("b", None), definition("before", None)]
    );
}

#[tokio::test]
async fn a_lagging_subscriber_is_told_it_missed_events() {
    let store = memory_store();
    let mut events = store.subscribe_events();
    for ttl in 0..=EVENTS_KEPT as i64 {
        store.update(definition("s", Some(ttl + 1))).unwrap();
    }
    assert_eq!(events.recv().await, Err(RecvError::Lagged(1)));
    // What it then reads again is where the stream is now.
    assert_eq!(
        store.definitions(),
        [definition("s", Some(EVENTS_KEPT as i64 + 1))]
    );
    assert_eq!(
        events.recv().await.unwrap(),
        StreamEvent::Updated(definition("s", Some(2)))
    );
}

/// A segment file missing although retention did not remove it is an
/// error, not a read tried again for ever (retention racing the read is
/// the only reason to try again).
#[tokio::test]
async fn a_segment_file_missing_for_no_reason_fails_the_read() {
    let fs = SimulatedFs::new();
    let store = file_store(&fs, Arc::new(ManualClock::new(T0)), None);
    for i in 0..10 {
        append(&store, i);
    }
    store.sync_all().await;
    let mut segment_files: Vec<PathBuf> = fs
        .files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segment_files.sort();
    // Sealed segments are opened per read.
    fs.set_fail_path(&segment_files[0], Some(2));
    let reader = store.export_reader("s").unwrap();
    let (answer, answered) = std::sync::mpsc::channel();
    std::thread::spawn(move || answer.send(reader.read(0, ALL, ALL)).unwrap());
    // Only a hang detector: the answer comes at once or never.
    let result = answered
        .recv_timeout(Duration::from_secs(60))
        .expect("the read answers");
    match result {
        Err(StoreError::Read(e)) => {
            assert_eq!(
                e.io_error().map(|e| e.kind()),
                Some(std::io::ErrorKind::NotFound)
            )
        }
        other => panic!("{other:?}"),
    }
    fs.set_fail_path(&segment_files[0], None);
    let reader = store.export_reader("s").unwrap();
    assert_eq!(reader.read(0, ALL, ALL).unwrap().messages.len(), 10);
}

type Hook = Box<dyn FnOnce() + Send>;

/// Retention removing the segment a detached read is about to open: the
/// read looks again and reports the gap.
#[tokio::test]
async fn a_segment_removed_under_a_read_is_reported_as_a_gap() {
    // Runs the hook once, at the first opening of a segment file (sealed
    // segments are opened per read, after the reader let go of the stream).
    let hook: Arc<std::sync::Mutex<Option<Hook>>> = Arc::new(std::sync::Mutex::new(None));
    let fs = sim::OpenHookFs {
        inner: SimulatedFs::new(),
        on_open: {
            let hook = Arc::clone(&hook);
            move |fs: &SimulatedFs, path: &Path| {
                if path.extension().is_some_and(|e| e == "seg") {
                    let hook = hook.lock().unwrap().take();
                    if let Some(hook) = hook {
                        hook();
                    }
                }
                fs.open(path)
            }
        },
    };
    let store = sim::open_on(Arc::new(fs), Arc::new(ManualClock::new(T0))).unwrap();
    let store = Arc::new(store);
    store
        .create(MessageStreamDefinition {
            // Room for two segments of four messages.
            max_size: 2 * 4 * 224,
            ..definition("s", None)
        })
        .unwrap();
    for i in 0..8 {
        append(&store, i);
    }
    store.sync_all().await;
    let appender = Arc::clone(&store);
    // Message 8 makes room by removing segment 0..4.
    *hook.lock().unwrap() = Some(Box::new(move || {
        append(&appender, 8);
    }) as Hook);
    let batch = store.export_reader("s").unwrap().read(0, ALL, ALL).unwrap();
    assert!(hook.lock().unwrap().is_none(), "the hook ran");
    assert_eq!(batch.oldest_retained, 4);
    assert_eq!(batch.skipped(0), 4);
    assert_eq!(sequence_numbers(&batch), [4, 5, 6, 7]);
    assert_eq!(batch.durable_next, 8, "message 8 is not synced");
}

/// The segment being written holds durable messages and, after them, an
/// append still waiting to be written: a read of the durable ones stops
/// where the written part ends (it found the segment "cut short" before).
#[tokio::test]
async fn a_read_up_to_the_written_end_of_the_active_segment_is_not_damage() {
    let fs = SimulatedFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = file_store(&fs, clock, None);
    append(&store, 0);
    append(&store, 1);
    store.sync_all().await;
    let _waiting = store.append("s", Bytes::from(vec![2; 200])).unwrap();
    let reader = store.export_reader("s").unwrap();
    let batch = reader.read(0, ALL, ALL).expect("the durable messages read");
    assert_eq!(sequence_numbers(&batch), vec![0, 1]);
    assert_eq!(batch.durable_next, 2);
}
