//! The file log under simulated power cuts, damaged files and a full disk,
//! through the `SimulatedFs` seam (see `src/store/simfs.rs`).
//!
//! Payloads are derived from (stream, sequence number), so any message read
//! back can be checked byte for byte without keeping copies.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir::clock::ManualClock;
use weir::protocol::model::{MessageStreamDefinition, ReadMessagesOptions, StrategyOnFull};
use weir::store::fs::FileSystem;
use weir::store::simfs::SimulatedFs;
use weir::store::{Store, StoreError, StoreLimits};

const ROOT: &str = "/store";
const T0: i64 = 1_700_000_000_000;

/// SplitMix64: a seeded, reproducible source of test decisions.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn payload(stream: &str, seq: i64) -> Bytes {
    let len = 1 + (seq as usize * 37 + stream.len()) % 700;
    Bytes::from(
        (0..len)
            .map(|i| (i as u64 ^ seq as u64 ^ stream.len() as u64) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn open(fs: &SimulatedFs) -> Arc<Store> {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open(
        Arc::new(fs.clone()),
        Path::new(ROOT),
        clock,
        StoreLimits {
            max_read_bytes: 1 << 24,
        },
    );
    Arc::new(store.expect("the store always opens"))
}

fn definition(name: &str, flush: bool, segment: i64) -> MessageStreamDefinition {
    MessageStreamDefinition {
        flush_on_write: flush,
        stream_segment_size: segment,
        strategy_on_full: StrategyOnFull::RejectNewData,
        ..MessageStreamDefinition::with_defaults(name.into())
    }
}

fn read_all(store: &Store, name: &str) -> Vec<(i64, Bytes)> {
    let info = store.describe(name).unwrap().storage_status;
    let count = info.newest_sequence_number - info.oldest_sequence_number + 1;
    if count <= 0 {
        return Vec::new();
    }
    let options = ReadMessagesOptions {
        desired_start_sequence_number: 0,
        min_message_count: count,
        max_message_count: count,
        read_timeout_millis: 0,
    };
    let messages = store
        .try_read(name, &options)
        .expect("readable")
        .expect("all there");
    messages
        .into_iter()
        .map(|m| (m.sequence_number, m.payload))
        .collect()
}

/// Every message present is intact, consecutive, and includes 0..=acked.
fn check_stream(store: &Store, name: &str, acked_through: i64, seed: u64) {
    let messages = read_all(store, name);
    for (i, (seq, bytes)) in messages.iter().enumerate() {
        assert_eq!(
            *seq, i as i64,
            "seed {seed}: {name} is not consecutive from 0"
        );
        assert_eq!(
            bytes,
            &payload(name, *seq),
            "seed {seed}: {name} message {seq} differs"
        );
    }
    let newest = messages.len() as i64 - 1;
    assert!(
        newest >= acked_through,
        "seed {seed}: {name} lost acknowledged messages: has up to {newest}, acked {acked_through}"
    );
}

#[tokio::test]
async fn power_cuts_at_random_points_lose_nothing_synced() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed);
        let mut fs = SimulatedFs::new();
        // Durable promises so far: flushOnWrite acks, and everything appended
        // before a completed sync of the other stream.
        let (mut flushed, mut synced) = (-1i64, -1i64);
        for _power_cycle in 0..3 {
            let store = open(&fs);
            if store.describe("flushed").is_err() {
                store.create(definition("flushed", true, 4096)).unwrap();
                store.create(definition("plain", false, 2048)).unwrap();
            }
            check_stream(&store, "flushed", flushed, seed);
            check_stream(&store, "plain", synced, seed);
            let steps = rng.below(120);
            for _ in 0..steps {
                match rng.below(10) {
                    0..=4 => {
                        let seq = store
                            .describe("flushed")
                            .unwrap()
                            .storage_status
                            .newest_sequence_number
                            + 1;
                        let appended = store.append("flushed", payload("flushed", seq)).unwrap();
                        assert!(appended.flush);
                        assert_eq!(appended.sequence_number, seq);
                        store.durable("flushed", seq).await.unwrap();
                        flushed = seq;
                    }
                    5..=8 => {
                        let seq = store
                            .describe("plain")
                            .unwrap()
                            .storage_status
                            .newest_sequence_number
                            + 1;
                        store.append("plain", payload("plain", seq)).unwrap();
                    }
                    _ => {
                        let newest = store
                            .describe("plain")
                            .unwrap()
                            .storage_status
                            .newest_sequence_number;
                        store.sync_all().await;
                        synced = newest;
                    }
                }
            }
            drop(store);
            // The cut: unsynced bytes are lost, or partly written.
            let mut tear = Rng(rng.next());
            fs = fs.crash(|_, unsynced| tear.below(unsynced as u64 + 1) as usize);
        }
        let store = open(&fs);
        check_stream(&store, "flushed", flushed, seed);
        check_stream(&store, "plain", synced, seed);
        let next = store
            .describe("flushed")
            .unwrap()
            .storage_status
            .newest_sequence_number
            + 1;
        assert_eq!(
            store
                .append("flushed", payload("flushed", next))
                .unwrap()
                .sequence_number,
            next
        );
    }
}

fn stream_dir(fs: &SimulatedFs, name: &str) -> PathBuf {
    let dir = Path::new(ROOT).join("streams").join(name);
    assert!(fs.is_dir(&dir));
    dir
}

fn segments(fs: &SimulatedFs, dir: &Path) -> Vec<PathBuf> {
    fs.files()
        .into_iter()
        .filter(|p| p.parent() == Some(dir) && p.extension().is_some_and(|e| e == "seg"))
        .collect()
}

/// A store with one stream of 60 messages over several segments, synced.
async fn filled() -> SimulatedFs {
    let fs = SimulatedFs::new();
    let store = open(&fs);
    store.create(definition("s", false, 4096)).unwrap();
    for seq in 0..60 {
        store.append("s", payload("s", seq)).unwrap();
    }
    store.sync_all().await;
    fs
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_sequence_continues() {
    let fs = filled().await;
    let dir = stream_dir(&fs, "s");
    let last = segments(&fs, &dir).pop().unwrap();
    let bytes = fs.contents(&last).unwrap();
    fs.put(&last, &bytes[..bytes.len() - 5]);
    let store = open(&fs);
    let messages = read_all(&store, "s");
    assert_eq!(messages.len(), 59, "only the torn record is gone");
    check_stream(&store, "s", 58, 0);
    assert_eq!(
        store.append("s", payload("s", 59)).unwrap().sequence_number,
        59
    );
    let store = {
        store.sync_all().await;
        drop(store);
        open(&fs)
    };
    check_stream(&store, "s", 59, 0);
}

#[tokio::test]
async fn a_damaged_record_fails_only_its_own_reads() {
    let fs = filled().await;
    let dir = stream_dir(&fs, "s");
    let first = &segments(&fs, &dir)[0];
    // Second record of the first (sealed) segment: header 32 + record 0.
    let record0 = 24 + payload("s", 0).len();
    fs.flip_bit(first, 32 + record0 + 24 + 3, 2);
    let store = open(&fs);
    let read = |start, count| {
        store.try_read(
            "s",
            &ReadMessagesOptions {
                desired_start_sequence_number: start,
                min_message_count: 1,
                max_message_count: count,
                read_timeout_millis: 0,
            },
        )
    };
    assert!(
        matches!(read(1, 1), Err(StoreError::Read(_))),
        "the damaged message"
    );
    assert!(
        matches!(read(0, 5), Err(StoreError::Read(_))),
        "a range across it"
    );
    assert_eq!(read(0, 1).unwrap().unwrap()[0].payload, payload("s", 0));
    let after = read(2, 58).unwrap().unwrap();
    assert_eq!(after.len(), 58);
    assert!(after
        .iter()
        .all(|m| m.payload == payload("s", m.sequence_number)));
    assert_eq!(
        store.append("s", payload("s", 60)).unwrap().sequence_number,
        60
    );
}

#[tokio::test]
async fn foreign_garbage_and_missing_files_are_skipped_and_weir_starts() {
    let fs = filled().await;
    let dir = stream_dir(&fs, "s");
    let streams = Path::new(ROOT).join("streams");
    // Foreign files beside the segments, a segment of garbage past the end,
    // a lost index, and a whole stream folder whose definition is garbage.
    fs.put(&dir.join("notes.txt"), b"hello");
    fs.put(
        &dir.join("00000000000000000999.seg"),
        b"not a segment at all",
    );
    let first_index = segments(&fs, &dir)[0].with_extension("idx");
    fs.remove_file(&first_index).unwrap();
    fs.create_dir_all(&streams.join("broken")).unwrap();
    fs.put(&streams.join("broken").join("stream.cbor"), &[0xff; 40]);
    fs.create_dir_all(&streams.join("empty")).unwrap();
    let store = open(&fs);
    assert_eq!(store.list(), ["s"]);
    check_stream(&store, "s", 59, 0);
    // The garbage segment is skipped, not taken for data; appends continue.
    assert_eq!(
        store.append("s", payload("s", 60)).unwrap().sequence_number,
        60
    );
    // A stream can still be created under the broken folder's name.
    store.create(definition("broken", false, 4096)).unwrap();
    assert_eq!(
        store
            .append("broken", payload("broken", 0))
            .unwrap()
            .sequence_number,
        0
    );
}

#[tokio::test]
async fn retention_never_resets_the_sequence_across_restarts() {
    let fs = SimulatedFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let limits = StoreLimits {
        max_read_bytes: 1 << 20,
    };
    let store = Store::open(Arc::new(fs.clone()), Path::new(ROOT), clock.clone(), limits).unwrap();
    let mut def = definition("ttl", false, 1024);
    def.time_to_live_millis = Some(60_000);
    store.create(def).unwrap();
    for seq in 0..30 {
        store.append("ttl", payload("ttl", seq)).unwrap();
    }
    store.sync_all().await;
    clock.advance(120_000);
    store.enforce_retention();
    assert_eq!(store.describe("ttl").unwrap().storage_status.total_bytes, 0);
    drop(store);
    // A long power-off: everything expired and removed before it.
    let fs = fs.crash(|_, _| 0);
    let clock = Arc::new(ManualClock::new(T0 + 10 * 86_400_000));
    let store = Store::open(Arc::new(fs), Path::new(ROOT), clock, limits).unwrap();
    let info = store.describe("ttl").unwrap().storage_status;
    assert_eq!(
        (info.oldest_sequence_number, info.newest_sequence_number),
        (30, 29)
    );
    assert_eq!(
        store
            .append("ttl", payload("ttl", 30))
            .unwrap()
            .sequence_number,
        30
    );
}

#[tokio::test]
async fn a_full_disk_fails_appends_keeps_data_and_recovers() {
    let fs = filled().await;
    let store = open(&fs);
    fs.set_space_left(Some(300));
    let mut failures = 0;
    for _ in 0..20 {
        // The acknowledgement path: append, then confirm the write.
        let appended = store.append("s", Bytes::from(vec![7u8; 200])).unwrap();
        match store.confirm("s", appended.ticket) {
            Ok(()) => {}
            Err(StoreError::AppendFailed { cause, .. }) => {
                assert!(cause.to_string().contains("No space left"), "{cause}");
                failures += 1;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(failures >= 19, "appends fail while the disk is full");
    let before = read_all(&store, "s");
    assert!(before.len() >= 60);
    check_stream_prefix(&before);
    fs.set_space_left(None);
    let next = before.len() as i64;
    assert_eq!(
        store
            .append("s", Bytes::from_static(b"again"))
            .unwrap()
            .sequence_number,
        next
    );
    store.sync_all().await;
    drop(store);
    let store = open(&fs);
    let after = read_all(&store, "s");
    assert_eq!(
        after.len() as i64,
        next + 1,
        "nothing was lost or half-written"
    );
    assert_eq!(after.last().unwrap().1, Bytes::from_static(b"again"));
}

fn check_stream_prefix(messages: &[(i64, Bytes)]) {
    for (seq, bytes) in messages.iter().take(60) {
        assert_eq!(bytes, &payload("s", *seq));
    }
}

#[tokio::test]
async fn a_failed_fsync_stops_writes_but_not_reads() {
    let fs = SimulatedFs::new();
    let store = open(&fs);
    store.create(definition("f", true, 4096)).unwrap();
    let seq = store.append("f", payload("f", 0)).unwrap().sequence_number;
    store.durable("f", seq).await.unwrap();
    fs.set_fail_sync(true);
    let seq = store.append("f", payload("f", 1)).unwrap().sequence_number;
    assert!(matches!(
        store.durable("f", seq).await,
        Err(StoreError::WritesStopped { .. })
    ));
    fs.set_fail_sync(false);
    assert!(matches!(
        store.append("f", payload("f", 2)),
        Err(StoreError::WritesStopped { .. })
    ));
    assert_eq!(read_all(&store, "f")[0].1, payload("f", 0));
}

#[tokio::test]
async fn appends_written_together_fail_together_and_give_their_numbers_back() {
    let fs = filled().await;
    let store = open(&fs);
    fs.set_space_left(Some(100));
    let batch: Vec<_> = (0..3)
        .map(|_| store.append("s", Bytes::from(vec![1u8; 60])).unwrap())
        .collect();
    assert_eq!(
        batch.iter().map(|a| a.sequence_number).collect::<Vec<_>>(),
        [60, 61, 62]
    );
    for appended in &batch {
        assert!(
            matches!(
                store.confirm("s", appended.ticket),
                Err(StoreError::AppendFailed { .. })
            ),
            "every append of the failed write is told so"
        );
    }
    assert_eq!(
        store
            .describe("s")
            .unwrap()
            .storage_status
            .newest_sequence_number,
        59
    );
    fs.set_space_left(None);
    let retry = store.append("s", Bytes::from_static(b"retry")).unwrap();
    assert_eq!(retry.sequence_number, 60);
    store.confirm("s", retry.ticket).unwrap();
    assert!(
        matches!(
            store.confirm("s", batch[0].ticket),
            Err(StoreError::AppendFailed { .. })
        ),
        "a failure is not forgotten by a later success"
    );
}

#[tokio::test]
async fn a_create_that_fails_on_a_full_disk_leaves_nothing_behind() {
    let fs = SimulatedFs::new();
    let store = open(&fs);
    fs.set_space_left(Some(10));
    assert!(matches!(
        store.create(definition("late", false, 4096)),
        Err(StoreError::Write(_))
    ));
    assert!(
        !fs.is_dir(&Path::new(ROOT).join("streams").join("late")),
        "no half-made folder"
    );
    assert!(store.list().is_empty());
    fs.set_space_left(None);
    store.create(definition("late", false, 4096)).unwrap();
    assert_eq!(
        store
            .append("late", payload("late", 0))
            .unwrap()
            .sequence_number,
        0
    );
    drop(store);
    assert_eq!(open(&fs).list(), ["late"]);
}
