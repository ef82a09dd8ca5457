//! Reads of sealed segments run without the stream's lock (hardening item
//! 13): `Store::read_now` hands them back as `ReadNow::FromDisk`, and while
//! one waits on the disk, appends to the same stream go on.

mod sim;
use bytes::Bytes;
use std::io;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use weir::clock::ManualClock;
use weir::protocol::model::{MessageStreamDefinition, ReadMessagesOptions, StrategyOnFull};
use weir::store::fs::{FileHandle, FileSystem};
use weir::store::simfs::SimulatedFs;
use weir::store::{ReadNow, Store, StoreError};

/// Reads of a sealed segment's file (sealed segments are opened per read)
/// held at a gate: the first one says so on `entered` and waits for
/// `release`.
struct Gate {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

struct GatedFile {
    inner: Arc<dyn FileHandle>,
    gate: Arc<Mutex<Option<Gate>>>,
}

impl FileHandle for GatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            gate.entered.send(()).unwrap();
            gate.release.recv().unwrap();
        }
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

fn read_from(start: i64, count: i64) -> ReadMessagesOptions {
    ReadMessagesOptions {
        desired_start_sequence_number: start,
        min_message_count: 1,
        max_message_count: count,
        read_timeout_millis: 0,
    }
}

fn append(store: &Store, name: &str, byte: u8) -> i64 {
    let appended = store.append(name, Bytes::from(vec![byte; 200])).unwrap();
    store.confirm(name, appended.ticket).unwrap();
    appended.sequence_number
}

fn store_with(fs: Arc<dyn FileSystem>, strategy: StrategyOnFull, max_size: i64) -> Arc<Store> {
    let store = sim::open_on(fs, Arc::new(ManualClock::new(sim::T0))).unwrap();
    store
        .create(MessageStreamDefinition {
            stream_segment_size: 1024,
            max_size,
            strategy_on_full: strategy,
            ..MessageStreamDefinition::with_defaults("s".into())
        })
        .unwrap();
    Arc::new(store)
}

#[test]
fn a_read_of_sealed_segments_holds_no_lock_while_it_waits_on_the_disk() {
    let gate = Arc::new(Mutex::new(None));
    let fs = sim::OpenHookFs {
        inner: SimulatedFs::new(),
        on_open: {
            let gate = Arc::clone(&gate);
            move |fs: &SimulatedFs, path: &Path| -> io::Result<Arc<dyn FileHandle>> {
                let file = fs.open(path)?;
                if path.extension().is_some_and(|e| e == "seg") {
                    return Ok(Arc::new(GatedFile {
                        inner: file,
                        gate: Arc::clone(&gate),
                    }));
                }
                Ok(file)
            }
        },
    };
    let store = store_with(Arc::new(fs), StrategyOnFull::RejectNewData, 1 << 20);
    // 200-byte messages, four to a 1 KiB segment: 0..4 sealed, and more.
    for i in 0..10 {
        append(&store, "s", i);
    }
    match store.read_now("s", &read_from(8, 2)).unwrap() {
        ReadNow::Ready(messages) => assert_eq!(messages.len(), 2),
        other => panic!("the active segment is read at once, got {other:?}"),
    }
    let ReadNow::FromDisk(read) = store.read_now("s", &read_from(0, 100)).unwrap() else {
        panic!("a read from a sealed segment goes to the disk");
    };
    let (entered, entered_rx) = mpsc::channel();
    let (release_tx, release) = mpsc::channel();
    *gate.lock().unwrap() = Some(Gate { entered, release });
    let reading = std::thread::spawn(move || read.run());
    entered_rx.recv().unwrap();
    // The read waits on the disk: the stream still takes appends.
    let appended_meanwhile = append(&store, "s", 99);
    assert_eq!(appended_meanwhile, 10);
    release_tx.send(()).unwrap();
    let messages = reading.join().unwrap().unwrap();
    let seqs: Vec<i64> = messages.iter().map(|m| m.sequence_number).collect();
    // As many as were there when it was asked for: the sealed segments,
    // then the active one's, read under the lock.
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    assert!(messages
        .iter()
        .all(|m| m.payload[0] == m.sequence_number as u8));
}

#[test]
fn a_disk_read_whose_segment_retention_removed_reads_what_is_retained() {
    let fs = SimulatedFs::new();
    let store = store_with(Arc::new(fs), StrategyOnFull::OverwriteOldestData, 2048);
    for i in 0..9 {
        append(&store, "s", i);
    }
    let ReadNow::FromDisk(read) = store.read_now("s", &read_from(0, 3)).unwrap() else {
        panic!("a read from a sealed segment goes to the disk");
    };
    // Overwriting makes room: segment 0..4 leaves before the read runs.
    for i in 9..14 {
        append(&store, "s", i);
    }
    let oldest = store
        .describe("s")
        .unwrap()
        .storage_status
        .oldest_sequence_number;
    assert!(oldest > 0, "retention removed the first segment");
    let messages = read.run().unwrap();
    let seqs: Vec<i64> = messages.iter().map(|m| m.sequence_number).collect();
    assert_eq!(seqs, (oldest..oldest + 3).collect::<Vec<_>>());
}

#[test]
fn a_disk_read_of_a_deleted_stream_says_it_is_gone() {
    let fs = SimulatedFs::new();
    let store = store_with(Arc::new(fs), StrategyOnFull::RejectNewData, 1 << 20);
    for i in 0..9 {
        append(&store, "s", i);
    }
    let ReadNow::FromDisk(read) = store.read_now("s", &read_from(0, 100)).unwrap() else {
        panic!("a read from a sealed segment goes to the disk");
    };
    store.delete("s").unwrap();
    assert!(matches!(read.run(), Err(StoreError::NotFound(_))));
}

/// A long-poll from a sealed segment, woken by the append it waits for,
/// reads the sealed segments on the blocking pool and answers at once.
#[tokio::test(start_paused = true)]
async fn a_long_poll_from_a_sealed_segment_is_answered_when_woken() {
    let fs = SimulatedFs::new();
    let store = store_with(Arc::new(fs), StrategyOnFull::RejectNewData, 1 << 20);
    for i in 0..9 {
        append(&store, "s", i);
    }
    let reader = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            let options = ReadMessagesOptions {
                desired_start_sequence_number: 0,
                min_message_count: 10,
                max_message_count: 10,
                read_timeout_millis: 60_000,
            };
            store.read("s", options).await
        }
    });
    tokio::task::yield_now().await;
    assert!(!reader.is_finished(), "nine messages are not ten");
    let appended = tokio::time::Instant::now();
    append(&store, "s", 9);
    let messages = reader.await.unwrap().unwrap();
    let seqs: Vec<i64> = messages.iter().map(|m| m.sequence_number).collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    assert_eq!(
        appended.elapsed(),
        std::time::Duration::ZERO,
        "woken by the append"
    );
}
