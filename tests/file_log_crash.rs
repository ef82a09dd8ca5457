//! The file log under simulated power cuts, damaged files and a full disk,
//! through the `SimulatedFs` seam (see `src/store/simfs.rs`).
//!
//! Payloads are derived from (stream, sequence number), so any message read
//! back can be checked byte for byte without keeping copies.

mod rng;
mod sim;
use bytes::Bytes;
use rng::Rng;
use sim::{open_store, read_all, ROOT, T0};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir::clock::ManualClock;
use weir::protocol::model::{MessageStreamDefinition, ReadMessagesOptions, StrategyOnFull};
use weir::store::fs::FileSystem;
use weir::store::simfs::SimulatedFs;
use weir::store::{Store, StoreError, StoreLimits};

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
    Arc::new(open_store(fs, clock).expect("the store always opens"))
}

fn definition(name: &str, flush: bool, segment: i64) -> MessageStreamDefinition {
    MessageStreamDefinition {
        flush_on_write: flush,
        stream_segment_size: segment,
        strategy_on_full: StrategyOnFull::RejectNewData,
        ..MessageStreamDefinition::with_defaults(name.into())
    }
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
    let garbage = dir.join("00000000000000000999.seg");
    let store = open(&fs);
    assert_eq!(store.list(), ["s"]);
    check_first(&store, "s", 60);
    // The garbage segment is skipped, not taken for data nor replaced;
    // appends continue past any number it could have held.
    let seq = append_confirmed(&store, "s", 1)[0];
    assert!(seq > 999, "{seq}");
    assert_eq!(fs.contents(&garbage).unwrap(), b"not a segment at all");
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

/// The sequence number the next append of `name` gets.
fn next_seq(store: &Store, name: &str) -> i64 {
    store
        .describe(name)
        .unwrap()
        .storage_status
        .newest_sequence_number
        + 1
}

/// Appends `count` messages and writes them to the OS; returns their numbers.
fn append_confirmed(store: &Store, name: &str, count: usize) -> Vec<i64> {
    (0..count)
        .map(|_| {
            let seq = next_seq(store, name);
            let appended = store.append(name, payload(name, seq)).unwrap();
            store.confirm(name, appended.ticket).unwrap();
            appended.sequence_number
        })
        .collect()
}

/// A skipped segment file is left as it is, and no number it may have held
/// is given out again, across two restarts.
async fn numbering_continues_past(fs: &SimulatedFs, skipped: &Path, issued_below: i64) {
    let before = fs.contents(skipped).unwrap();
    let store = open(fs);
    let seqs = append_confirmed(&store, "s", 3);
    assert!(
        seqs[0] >= issued_below,
        "numbers {seqs:?} were given out before the restart (below {issued_below})"
    );
    assert_eq!(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2]);
    store.sync_all().await;
    drop(store);
    assert_eq!(
        fs.contents(skipped).unwrap(),
        before,
        "the skipped file is untouched"
    );
    let store = open(fs);
    let again = append_confirmed(&store, "s", 1)[0];
    assert!(again > seqs[2], "{again} after {seqs:?}");
    for (seq, bytes) in read_all_from(&store, "s", seqs[0]) {
        assert_eq!(bytes, payload("s", seq));
    }
    assert_eq!(fs.contents(skipped).unwrap(), before, "still untouched");
}

fn read_all_from(store: &Store, name: &str, from: i64) -> Vec<(i64, Bytes)> {
    let count = next_seq(store, name) - from;
    let options = ReadMessagesOptions {
        desired_start_sequence_number: from,
        min_message_count: count,
        max_message_count: count,
        read_timeout_millis: 0,
    };
    let messages = store.try_read(name, &options).unwrap().unwrap();
    messages
        .into_iter()
        .map(|m| (m.sequence_number, m.payload))
        .collect()
}

#[tokio::test]
async fn a_newest_segment_with_a_bad_header_is_kept_and_its_numbers_are_not_reissued() {
    let fs = filled().await;
    let dir = stream_dir(&fs, "s");
    let newest = segments(&fs, &dir).pop().unwrap();
    fs.flip_bit(&newest, 3, 1);
    numbering_continues_past(&fs, &newest, 60).await;
}

#[tokio::test]
async fn an_only_segment_with_a_bad_header_is_kept_and_its_numbers_are_not_reissued() {
    let fs = SimulatedFs::new();
    let store = open(&fs);
    store.create(definition("s", false, 1 << 20)).unwrap();
    append_confirmed(&store, "s", 10);
    store.sync_all().await;
    drop(store);
    let dir = stream_dir(&fs, "s");
    let only = segments(&fs, &dir);
    assert_eq!(only.len(), 1);
    fs.flip_bit(&only[0], 20, 0);
    numbering_continues_past(&fs, &only[0], 10).await;
}

#[tokio::test]
async fn an_unreadable_newest_segment_is_kept_and_its_numbers_are_not_reissued() {
    for errno in [13, 5] {
        // EACCES when opening it, EIO when reading it.
        let fs = filled().await;
        let dir = stream_dir(&fs, "s");
        let newest = segments(&fs, &dir).pop().unwrap();
        if errno == 13 {
            fs.set_fail_path(&newest, Some(errno));
        } else {
            fs.set_fail_reads(&newest, Some(errno));
        }
        numbering_continues_past(&fs, &newest, 60).await;
        // Readable again: its messages are back.
        fs.set_fail_path(&newest, None);
        fs.set_fail_reads(&newest, None);
        let store = open(&fs);
        check_first(&store, "s", 60);
    }
}

/// Messages `0..count` are there, byte for byte.
fn check_first(store: &Store, name: &str, count: i64) {
    let options = ReadMessagesOptions {
        desired_start_sequence_number: 0,
        min_message_count: count,
        max_message_count: count,
        read_timeout_millis: 0,
    };
    let messages = store.try_read(name, &options).unwrap().unwrap();
    assert_eq!(messages.len() as i64, count);
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.sequence_number, i as i64);
        assert_eq!(m.payload, payload(name, m.sequence_number));
    }
}

fn stream_path(name: &str) -> PathBuf {
    Path::new(ROOT).join("streams").join(name)
}

#[tokio::test]
async fn a_delete_whose_commit_fails_leaves_the_stream_intact() {
    let fs = filled().await;
    let store = open(&fs);
    let definition = stream_path("s").join("stream.cbor");
    fs.set_fail_path(&definition, Some(5));
    assert!(store.delete("s").is_err());
    fs.set_fail_path(&definition, None);
    append_confirmed(&store, "s", 1);
    store.sync_all().await;
    check_stream(&store, "s", 60, 0);
    drop(store);
    let store = open(&fs.crash(|_, _| 0));
    check_stream(&store, "s", 60, 0);
}

#[tokio::test]
async fn a_delete_past_its_commit_point_is_gone_now_and_after_a_restart() {
    for failing in ["sync", "remove"] {
        let fs = filled().await;
        let store = open(&fs);
        match failing {
            "sync" => fs.set_fail_sync(true),
            _ => fs.set_fail_path(&stream_path("s"), Some(16)), // EBUSY
        }
        let result = store.delete("s");
        assert!(
            failing == "remove" || result.is_err(),
            "a delete not known durable is not acknowledged"
        );
        fs.set_fail_sync(false);
        fs.set_fail_path(&stream_path("s"), None);
        assert!(
            matches!(store.describe("s"), Err(StoreError::NotFound(_))),
            "{failing}: gone now"
        );
        assert!(matches!(
            store.append("s", payload("s", 0)),
            Err(StoreError::NotFound(_))
        ));
        drop(store);
        // weir restarts (no power cut): the delete is finished.
        let store = open(&fs);
        assert!(store.list().is_empty(), "{failing}: gone after a restart");
        assert!(!fs.is_dir(&stream_path("s")), "{failing}: removal finished");
        drop(store);
        if failing == "remove" {
            // The delete was acknowledged: it survives a power cut too.
            assert!(open(&fs.crash(|_, _| 0)).list().is_empty());
        }
    }
}

#[tokio::test]
async fn a_stream_created_where_a_delete_was_not_finished_is_a_new_one() {
    let fs = filled().await;
    let store = open(&fs);
    fs.set_fail_path(&stream_path("s"), Some(16));
    store.delete("s").unwrap();
    fs.set_fail_path(&stream_path("s"), None);
    store.create(definition("s", false, 4096)).unwrap();
    assert_eq!(append_confirmed(&store, "s", 2), [0, 1]);
    store.sync_all().await;
    drop(store);
    for fs in [fs.clone(), fs.crash(|_, _| 0)] {
        let store = open(&fs);
        assert_eq!(store.list(), ["s"]);
        check_stream(&store, "s", 1, 0);
        assert_eq!(read_all(&store, "s").len(), 2, "none of the old messages");
    }
}

#[tokio::test]
async fn a_restart_syncs_what_the_crashed_process_had_written() {
    let fs = SimulatedFs::new();
    let store = open(&fs);
    store.create(definition("s", false, 4096)).unwrap();
    store.create(definition("big", false, 1 << 20)).unwrap();
    // Several segments for "s", one for "big"; nothing synced by weir.
    append_confirmed(&store, "s", 40);
    append_confirmed(&store, "big", 5);
    drop(store);
    // weir crashes (its written bytes are in the OS) and starts again; the
    // power is cut right after.
    let store = open(&fs);
    drop(store);
    let store = open(&fs.crash(|_, _| 0));
    check_stream(&store, "s", 39, 0);
    check_stream(&store, "big", 4, 0);
}

#[tokio::test]
async fn an_append_that_fills_a_segment_neither_syncs_nor_makes_a_file() {
    let fs = SimulatedFs::new();
    fs.set_defer_background(true);
    let store = open(&fs);
    store.create(definition("s", false, 1024)).unwrap();
    // The spare is prepared off the append path.
    assert!(fs.run_background() > 0);
    let dir = stream_dir(&fs, "s");
    let big = |seq: i64| Bytes::from(vec![seq as u8; 300]);
    // Three records of 324 bytes fill a segment of 1024.
    for seq in 0..3 {
        let appended = store.append("s", big(seq)).unwrap();
        store.confirm("s", appended.ticket).unwrap();
    }
    // The first segment was a spare too: its name and the next spare.
    assert!(fs.run_background() > 0);
    assert_eq!(segments(&fs, &dir).len(), 1);
    let files = fs.files();
    let syncs = fs.syncs();
    let appended = store.append("s", big(3)).unwrap();
    store.confirm("s", appended.ticket).unwrap();
    assert_eq!(appended.sequence_number, 3);
    assert_eq!(fs.syncs(), syncs, "the full segment's seal waits");
    assert_eq!(fs.files(), files, "no file made: the spare was used");
    assert_eq!(
        segments(&fs, &dir).len(),
        1,
        "the new segment is not named yet"
    );
    let read = |store: &Store| {
        read_all(store, "s")
            .into_iter()
            .map(|(seq, bytes)| (seq, bytes == big(seq)))
            .collect::<Vec<_>>()
    };
    let all_there = (0..4).map(|seq| (seq, true)).collect::<Vec<_>>();
    assert_eq!(read(&store), all_there, "all readable meanwhile");
    // The seal, the new name and the next spare, off the append path.
    assert!(fs.run_background() > 0);
    assert!(fs.syncs() > syncs);
    assert_eq!(segments(&fs, &dir).len(), 2);
    assert_eq!(read(&store), all_there);
    drop(store);
    let after_cut = read(&open(&fs.crash(|_, _| 0)));
    assert!(
        after_cut.starts_with(&all_there[..3]),
        "the sealed one is durable: {after_cut:?}"
    );
    assert!(after_cut.iter().all(|(_, intact)| *intact));
}

#[tokio::test]
async fn a_sync_of_a_new_segment_names_it_after_syncing_the_one_before() {
    let fs = SimulatedFs::new();
    fs.set_defer_background(true);
    let store = open(&fs);
    store.create(definition("s", true, 1024)).unwrap();
    fs.run_background();
    for seq in 0..4 {
        let appended = store
            .append("s", Bytes::from(vec![seq as u8; 300]))
            .unwrap();
        store.confirm("s", appended.ticket).unwrap();
    }
    // Nothing ran in the background: the group-commit sync does the steps.
    store.durable("s", 3).await.unwrap();
    drop(store);
    let store = open(&fs.crash(|_, _| 0));
    let seqs: Vec<i64> = read_all(&store, "s").into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
}

#[tokio::test]
async fn steps_left_by_a_deleted_stream_never_touch_a_new_one_of_its_name() {
    let fs = SimulatedFs::new();
    fs.set_defer_background(true);
    let store = open(&fs);
    store.create(definition("s", false, 1024)).unwrap();
    fs.run_background();
    for seq in 0..4 {
        let appended = store
            .append("s", Bytes::from(vec![seq as u8; 300]))
            .unwrap();
        store.confirm("s", appended.ticket).unwrap();
        if seq == 2 {
            fs.run_background();
        }
    }
    // The fourth append switched segments: a seal, a rename and a spare
    // wait; the stream goes, and a new one of the same name gets the same
    // folder.
    store.delete("s").unwrap();
    store.create(definition("s", false, 1024)).unwrap();
    let fresh: Vec<PathBuf> = fs.files();
    fs.run_background();
    let dir = stream_dir(&fs, "s");
    let mine: Vec<PathBuf> = fs
        .files()
        .into_iter()
        .filter(|p| p.starts_with(&dir))
        .collect();
    let fresh: Vec<PathBuf> = fresh.into_iter().filter(|p| p.starts_with(&dir)).collect();
    assert!(
        mine.iter()
            .all(|p| fresh.contains(p) || p.ends_with("next.spare")),
        "{mine:?} beyond {fresh:?}"
    );
    assert_eq!(append_confirmed(&store, "s", 2), [0, 1]);
    store.sync_all().await;
    drop(store);
    let store = open(&fs.crash(|_, _| 0));
    check_stream(&store, "s", 1, 0);
    assert_eq!(read_all(&store, "s").len(), 2);
}

/// The real file system with real blocking threads: segment switches whose
/// steps run beside the appends, a delete and a create of the same name
/// while steps may still run, and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_disk_segment_steps_run_beside_appends_and_deletes() {
    let root = tempfile::tempdir().unwrap();
    let open_real = || {
        Store::open(
            Arc::new(weir::store::fs::StdFs),
            root.path(),
            Arc::new(ManualClock::new(T0)),
            StoreLimits {
                max_read_bytes: 1 << 24,
            },
        )
        .unwrap()
    };
    let store = open_real();
    for round in 0..3 {
        store.create(definition("s", round % 2 == 0, 1024)).unwrap();
        store.create(definition("keep", false, 1024)).ok();
        for seq in 0..120 {
            for name in ["s", "keep"] {
                let next = if name == "s" {
                    seq
                } else {
                    next_seq(&store, name)
                };
                let appended = store.append(name, payload(name, next)).unwrap();
                store.confirm(name, appended.ticket).unwrap();
                if seq % 10 == 0 {
                    store.durable(name, appended.sequence_number).await.unwrap();
                }
            }
        }
        check_stream(&store, "s", 119, round);
        if round < 2 {
            // Steps of the deleted stream may still be queued or running.
            store.delete("s").unwrap();
        }
    }
    store.sync_all().await;
    check_stream(&store, "keep", 359, 0);
    drop(store);
    let store = open_real();
    check_stream(&store, "s", 119, 0);
    check_stream(&store, "keep", 359, 0);
    assert_eq!(read_all(&store, "s").len(), 120);
}
