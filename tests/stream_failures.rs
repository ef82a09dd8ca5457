//! How a file stream reacts to storage failures, through the
//! `SimulatedFs` seam: a failed fsync anywhere stops its writes before
//! anything else is acknowledged, an append is acknowledged only when its
//! write is known to have succeeded, and reads and describes keep working
//! (and change nothing) on a full disk or with failing syncs.

mod sim;
use bytes::Bytes;
use sim::{ROOT, T0};
use std::path::Path;
use std::sync::Arc;
use weir::clock::ManualClock;
use weir::protocol::model::{MessageStreamDefinition, ReadMessagesOptions, StrategyOnFull};
use weir::store::simfs::SimulatedFs;
use weir::store::{Appended, Store, StoreError};

const TTL: i64 = 60_000;

fn open(fs: &SimulatedFs) -> (Arc<Store>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let store = sim::open_store(fs, clock.clone()).expect("the store opens");
    (Arc::new(store), clock)
}

/// 1024-byte segments: eight 100-byte payloads (124 bytes stored) each.
fn definition(name: &str, ttl: Option<i64>) -> MessageStreamDefinition {
    MessageStreamDefinition {
        stream_segment_size: 1024,
        strategy_on_full: StrategyOnFull::OverwriteOldestData,
        time_to_live_millis: ttl,
        ..MessageStreamDefinition::with_defaults(name.into())
    }
}

fn payload(seq: i64) -> Bytes {
    Bytes::from(vec![seq as u8; 100])
}

/// Appends and confirms, as a connection does at the end of its batch.
fn append_confirmed(store: &Store, name: &str, seq: i64) {
    let appended = store.append(name, payload(seq)).unwrap();
    assert_eq!(appended.sequence_number, seq);
    store.confirm(name, appended.ticket).unwrap();
}

fn read_from(store: &Store, name: &str, start: i64) -> Result<Vec<i64>, StoreError> {
    let options = ReadMessagesOptions {
        desired_start_sequence_number: start,
        min_message_count: 1,
        max_message_count: 1000,
        read_timeout_millis: 0,
    };
    Ok(store
        .try_read(name, &options)?
        .expect("a read without timeout does not wait")
        .iter()
        .map(|m| m.sequence_number)
        .collect())
}

fn assert_writes_stopped<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::WritesStopped { .. }) => {}
        other => panic!("{what}: expected WritesStopped, got {other:?}"),
    }
}

fn stream_files(fs: &SimulatedFs, name: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(ROOT).join("streams").join(name);
    fs.files()
        .into_iter()
        .filter(|p| p.starts_with(&dir))
        .collect()
}

#[tokio::test]
async fn the_oldest_of_more_than_64_failed_flushes_still_fails() {
    let fs = SimulatedFs::new();
    let (store, _) = open(&fs);
    store.create(definition("s", None)).unwrap();
    append_confirmed(&store, "s", 0);
    fs.set_space_left(Some(0));
    // Each append is written (and fails) on its own: a read flushes it
    // before its confirm comes.
    let tickets: Vec<Appended> = (0..100)
        .map(|_| {
            let appended = store.append("s", payload(1)).unwrap();
            assert_eq!(read_from(&store, "s", 0).unwrap(), [0]);
            appended
        })
        .collect();
    for appended in &tickets {
        assert!(
            matches!(
                store.confirm("s", appended.ticket),
                Err(StoreError::AppendFailed { .. })
            ),
            "ticket {} was never written",
            appended.ticket
        );
    }
}

#[tokio::test]
async fn an_append_whose_outcome_is_forgotten_is_not_acknowledged() {
    let fs = SimulatedFs::new();
    let (store, _) = open(&fs);
    let one_segment = MessageStreamDefinition {
        stream_segment_size: 1 << 20,
        ..definition("s", None)
    };
    store.create(one_segment).unwrap();
    append_confirmed(&store, "s", 0);
    // Failed and successful writes alternate, far more often than any
    // bounded memory of outcomes can hold.
    let mut failed = Vec::new();
    let mut written = Vec::new();
    for round in 0..200 {
        fs.set_space_left(Some(0));
        failed.push(store.append("s", payload(round)).unwrap());
        read_from(&store, "s", 0).ok();
        fs.set_space_left(None);
        written.push(store.append("s", payload(round)).unwrap());
        read_from(&store, "s", 0).unwrap();
    }
    for appended in &failed {
        assert!(
            store.confirm("s", appended.ticket).is_err(),
            "failed append {} confirmed as a success",
            appended.ticket
        );
    }
    // The newest outcomes are still known.
    store.confirm("s", written.last().unwrap().ticket).unwrap();
}

#[tokio::test]
async fn a_failed_fsync_while_sealing_stops_writes_and_nothing_later_is_acknowledged() {
    let fs = SimulatedFs::new();
    let (store, _) = open(&fs);
    store.create(definition("s", None)).unwrap();
    for seq in 0..7 {
        append_confirmed(&store, "s", seq);
    }
    // One batch: the eighth append fills the segment, the ninth seals it.
    let eighth = store.append("s", payload(7)).unwrap();
    fs.set_fail_sync(true);
    assert_writes_stopped(store.append("s", payload(8)), "the append that seals");
    fs.set_fail_sync(false);
    assert_writes_stopped(
        store.confirm("s", eighth.ticket),
        "an append of the same batch, confirmed after the failure",
    );
    assert_writes_stopped(store.append("s", payload(8)), "the next append");
    assert_eq!(
        read_from(&store, "s", 0).unwrap(),
        (0..8).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_failed_fsync_in_the_sweeper_stops_writes() {
    let fs = SimulatedFs::new();
    let (store, clock) = open(&fs);
    store.create(definition("s", Some(TTL))).unwrap();
    for seq in 0..3 {
        append_confirmed(&store, "s", seq);
    }
    clock.advance(TTL);
    // The expired segment is the active one: removing it seals it first.
    fs.set_fail_sync(true);
    store.enforce_retention();
    fs.set_fail_sync(false);
    assert_writes_stopped(store.append("s", payload(3)), "the next append");
}

#[tokio::test]
async fn a_failed_fsync_saving_a_definition_stops_writes() {
    let fs = SimulatedFs::new();
    let (store, _) = open(&fs);
    store.create(definition("s", None)).unwrap();
    append_confirmed(&store, "s", 0);
    let pending = store.append("s", payload(1)).unwrap();
    fs.set_fail_sync(true);
    assert!(store.update(definition("s", Some(TTL))).is_err());
    fs.set_fail_sync(false);
    assert_writes_stopped(
        store.confirm("s", pending.ticket),
        "an append confirmed after the failure",
    );
    assert_writes_stopped(store.append("s", payload(1)), "the next append");
}

/// A stream whose first segment (0..8) has expired and whose second (8..11)
/// has not, and one whose every message has expired (all in the active
/// segment).
fn with_ttl_due(fs: &SimulatedFs) -> Arc<Store> {
    let (store, clock) = open(fs);
    store.create(definition("partly", Some(TTL))).unwrap();
    store.create(definition("wholly", Some(TTL))).unwrap();
    for seq in 0..10 {
        append_confirmed(&store, "partly", seq);
    }
    for seq in 0..3 {
        append_confirmed(&store, "wholly", seq);
    }
    clock.advance(TTL / 2);
    append_confirmed(&store, "partly", 10);
    clock.advance(TTL / 2);
    store
}

fn check_ttl_view(store: &Store) {
    let partly = store.describe("partly").unwrap().storage_status;
    assert_eq!(
        (
            partly.oldest_sequence_number,
            partly.newest_sequence_number,
            partly.total_bytes
        ),
        (8, 10, 3 * 124),
        "expired segments are neither shown nor counted"
    );
    assert_eq!(read_from(store, "partly", 0).unwrap(), [8, 9, 10]);
    let wholly = store.describe("wholly").unwrap().storage_status;
    assert_eq!(
        (
            wholly.oldest_sequence_number,
            wholly.newest_sequence_number,
            wholly.total_bytes
        ),
        (3, 2, 0)
    );
    assert!(matches!(
        read_from(store, "wholly", 0),
        Err(StoreError::NotEnoughMessages {
            start: 3,
            available: 0,
            ..
        })
    ));
}

#[tokio::test]
async fn reads_and_describes_work_on_a_full_disk_when_ttl_is_due() {
    let fs = SimulatedFs::new();
    let store = with_ttl_due(&fs);
    fs.set_space_left(Some(0));
    check_ttl_view(&store);
    // Nothing failed: the writer can still append once there is room.
    fs.set_space_left(None);
    append_confirmed(&store, "wholly", 3);
}

#[tokio::test]
async fn reads_and_describes_work_with_failing_syncs_when_ttl_is_due() {
    let fs = SimulatedFs::new();
    let store = with_ttl_due(&fs);
    fs.set_fail_sync(true);
    check_ttl_view(&store);
    fs.set_fail_sync(false);
    append_confirmed(&store, "wholly", 3);
}

#[tokio::test]
async fn a_describe_or_read_never_removes_files() {
    let fs = SimulatedFs::new();
    let store = with_ttl_due(&fs);
    let before = (stream_files(&fs, "partly"), stream_files(&fs, "wholly"));
    check_ttl_view(&store);
    let after = (stream_files(&fs, "partly"), stream_files(&fs, "wholly"));
    assert_eq!(before, after);
    // The sweeper removes them.
    store.enforce_retention();
    assert!(stream_files(&fs, "partly").len() < before.0.len());
    check_ttl_view(&store);
}

#[tokio::test]
async fn a_read_still_sees_appends_of_its_batch_when_their_write_fails() {
    let fs = SimulatedFs::new();
    let (store, _) = open(&fs);
    store.create(definition("s", None)).unwrap();
    append_confirmed(&store, "s", 0);
    let written = store.append("s", payload(1)).unwrap();
    assert_eq!(
        read_from(&store, "s", 0).unwrap(),
        [0, 1],
        "a read after an append sees it"
    );
    store.confirm("s", written.ticket).unwrap();
    fs.set_space_left(Some(0));
    let failing = store.append("s", payload(2)).unwrap();
    assert_eq!(
        read_from(&store, "s", 0).unwrap(),
        [0, 1],
        "the failed write fails its append, not the read"
    );
    assert!(matches!(
        store.confirm("s", failing.ticket),
        Err(StoreError::AppendFailed { .. })
    ));
}
