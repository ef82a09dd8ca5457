//! Stream semantics of PROTOCOL.md section 8 on the store API, with a
//! manual wall clock and tokio's paused clock for long-polls.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use weir::clock::ManualClock;
use weir::protocol::model::{
    MessageStreamDefinition, Persistence, ReadMessagesOptions, StrategyOnFull,
};
use weir::store::{Store, StoreError, StoreLimits};

const T0: i64 = 1_700_000_000_000;

fn store() -> (Arc<Store>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::new(
        clock.clone(),
        StoreLimits {
            max_read_bytes: 1 << 20,
        },
    );
    (Arc::new(store), clock)
}

fn definition(
    name: &str,
    strategy: StrategyOnFull,
    max_size: i64,
    segment: i64,
) -> MessageStreamDefinition {
    MessageStreamDefinition {
        strategy_on_full: strategy,
        max_size,
        stream_segment_size: segment,
        ..MessageStreamDefinition::with_defaults(name.into())
    }
}

fn options(start: i64, min: i64, max: i64, timeout: i64) -> ReadMessagesOptions {
    ReadMessagesOptions {
        desired_start_sequence_number: start,
        min_message_count: min,
        max_message_count: max,
        read_timeout_millis: timeout,
    }
}

/// A 100-byte payload costs 124 bytes: 8 fit in a 1024-byte segment.
fn payload(i: u8) -> Bytes {
    Bytes::from(vec![i; 100])
}

fn seqs(store: &Store, name: &str, start: i64, max: i64) -> Vec<i64> {
    store
        .try_read(name, &options(start, 1, max, 0))
        .unwrap()
        .unwrap()
        .iter()
        .map(|m| m.sequence_number)
        .collect()
}

#[test]
fn sequence_numbers_start_at_zero_and_restart_with_the_stream() {
    let (store, _) = store();
    let def = MessageStreamDefinition::with_defaults("s".into());
    store.create(def.clone()).unwrap();
    assert_eq!(store.append("s", payload(0)).unwrap().sequence_number, 0);
    assert_eq!(store.append("s", payload(1)).unwrap().sequence_number, 1);
    assert!(matches!(
        store.create(def.clone()),
        Err(StoreError::AlreadyExists(_))
    ));
    store.delete("s").unwrap();
    assert!(matches!(store.delete("s"), Err(StoreError::NotFound(_))));
    assert!(matches!(
        store.append("s", payload(0)),
        Err(StoreError::NotFound(_))
    ));
    store.create(def).unwrap();
    assert_eq!(store.append("s", payload(0)).unwrap().sequence_number, 0);
}

#[test]
fn overwrite_drops_whole_segments_and_reads_start_at_the_oldest() {
    let (store, _) = store();
    store
        .create(definition(
            "s",
            StrategyOnFull::OverwriteOldestData,
            2048,
            1024,
        ))
        .unwrap();
    for i in 0..16 {
        store.append("s", payload(i)).unwrap();
    }
    let info = store.describe("s").unwrap().storage_status;
    assert_eq!(
        (
            info.oldest_sequence_number,
            info.newest_sequence_number,
            info.total_bytes
        ),
        (0, 15, 16 * 124)
    );
    store.append("s", payload(16)).unwrap();
    let info = store.describe("s").unwrap().storage_status;
    assert_eq!(
        (
            info.oldest_sequence_number,
            info.newest_sequence_number,
            info.total_bytes
        ),
        (8, 16, 9 * 124)
    );
    assert_eq!(
        seqs(&store, "s", 0, 3),
        [8, 9, 10],
        "a start below the oldest is clamped"
    );
    for i in 17..=40 {
        store.append("s", payload(i)).unwrap();
    }
    let oldest = store
        .describe("s")
        .unwrap()
        .storage_status
        .oldest_sequence_number;
    assert_eq!(oldest % 8, 0, "the oldest message moves in whole segments");
    assert!(store.describe("s").unwrap().storage_status.total_bytes <= 2048);
}

#[test]
fn reject_new_data_refuses_and_keeps_everything() {
    let (store, _) = store();
    store
        .create(definition("s", StrategyOnFull::RejectNewData, 1024, 1024))
        .unwrap();
    for i in 0..8 {
        store.append("s", payload(i)).unwrap();
    }
    assert!(matches!(
        store.append("s", payload(8)),
        Err(StoreError::Full { .. })
    ));
    assert!(matches!(
        store.append("s", Bytes::from(vec![0; 2000])),
        Err(StoreError::MessageTooLarge { .. })
    ));
    let messages = store.try_read("s", &options(0, 8, 8, 0)).unwrap().unwrap();
    assert_eq!(messages.len(), 8);
    assert!(messages
        .iter()
        .enumerate()
        .all(|(i, m)| m.payload == payload(i as u8)));
    // 992 bytes held: a 1-byte message (25 bytes) still fits, a second does not.
    assert_eq!(
        store
            .append("s", Bytes::from_static(b"x"))
            .unwrap()
            .sequence_number,
        8
    );
    assert!(matches!(
        store.append("s", Bytes::from_static(b"y")),
        Err(StoreError::Full { .. })
    ));
}

#[test]
fn ttl_removes_expired_segments_and_keeps_the_sequence() {
    let (store, clock) = store();
    let mut def = definition("s", StrategyOnFull::OverwriteOldestData, 1 << 20, 1024);
    def.time_to_live_millis = Some(60_000);
    store.create(def).unwrap();
    for i in 0..10 {
        store.append("s", payload(i)).unwrap();
    }
    clock.advance(30_000);
    store.append("s", payload(10)).unwrap();
    clock.advance(30_000);
    // The first segment (0..8) has expired; the second holds 8..=10 and its
    // newest message is 30 s old.
    let info = store.describe("s").unwrap().storage_status;
    assert_eq!(
        (info.oldest_sequence_number, info.newest_sequence_number),
        (8, 10)
    );
    clock.advance(30_000);
    store.enforce_retention();
    let info = store.describe("s").unwrap().storage_status;
    assert_eq!(
        (
            info.oldest_sequence_number,
            info.newest_sequence_number,
            info.total_bytes
        ),
        (11, 10, 0)
    );
    assert_eq!(
        store.append("s", payload(11)).unwrap().sequence_number,
        11,
        "numbering survives an empty stream"
    );
}

#[test]
fn update_rules() {
    let (store, _) = store();
    store
        .create(definition(
            "s",
            StrategyOnFull::OverwriteOldestData,
            4096,
            1024,
        ))
        .unwrap();
    for i in 0..10 {
        store.append("s", payload(i)).unwrap();
    }
    let mut memory = definition("s", StrategyOnFull::OverwriteOldestData, 4096, 1024);
    memory.persistence = Persistence::Memory;
    assert!(matches!(
        store.update(memory),
        Err(StoreError::PersistenceChange(_))
    ));
    let small = definition("s", StrategyOnFull::OverwriteOldestData, 1024, 1024);
    assert!(matches!(
        store.update(small),
        Err(StoreError::ShrinkBelowSize { .. })
    ));
    let mut ttl = definition("s", StrategyOnFull::RejectNewData, 8192, 2048);
    ttl.time_to_live_millis = Some(3_600_000);
    store.update(ttl.clone()).unwrap();
    assert_eq!(store.describe("s").unwrap().definition, ttl);
    assert!(matches!(
        store.update(definition("t", StrategyOnFull::RejectNewData, 8192, 2048)),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn reads_follow_min_and_max() {
    let (store, _) = store();
    store
        .create(MessageStreamDefinition::with_defaults("s".into()))
        .unwrap();
    match store.try_read("s", &options(0, 1, 1, 0)) {
        Err(StoreError::NotEnoughMessages {
            start: 0,
            available: 0,
            min: 1,
        }) => {}
        other => panic!("{other:?}"),
    }
    for i in 0..5 {
        store.append("s", payload(i)).unwrap();
    }
    assert_eq!(seqs(&store, "s", 1, 3), [1, 2, 3]);
    assert_eq!(seqs(&store, "s", 3, 100), [3, 4]);
    assert!(matches!(
        store.try_read("s", &options(3, 3, 3, 0)),
        Err(StoreError::NotEnoughMessages {
            start: 3,
            available: 2,
            min: 3
        })
    ));
    assert!(matches!(
        store.try_read("s", &options(0, 3, 3, 10)),
        Ok(Some(_))
    ));
    assert!(
        matches!(store.try_read("s", &options(9, 1, 1, 10)), Ok(None)),
        "would wait"
    );
}

#[test]
fn a_read_larger_than_the_response_limit_is_cut_or_refused() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::new(
        clock,
        StoreLimits {
            max_read_bytes: 400,
        },
    );
    store
        .create(MessageStreamDefinition::with_defaults("s".into()))
        .unwrap();
    for i in 0..5 {
        store.append("s", payload(i)).unwrap();
    }
    assert_eq!(
        store
            .try_read("s", &options(0, 1, 5, 0))
            .unwrap()
            .unwrap()
            .len(),
        2
    );
    assert!(matches!(
        store.try_read("s", &options(0, 3, 5, 0)),
        Err(StoreError::ResponseTooLarge { .. })
    ));
}

/// A store with an empty stream "s" and a read of it already waiting.
async fn waiting_reader(
    read: ReadMessagesOptions,
) -> (
    Arc<Store>,
    tokio::task::JoinHandle<Result<Vec<weir::protocol::model::Message>, StoreError>>,
) {
    let (store, _) = store();
    store
        .create(MessageStreamDefinition::with_defaults("s".into()))
        .unwrap();
    let reader = tokio::spawn({
        let store = store.clone();
        async move { store.read("s", read).await }
    });
    tokio::task::yield_now().await;
    (store, reader)
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_is_answered_by_appends_or_at_its_timeout() {
    let (store, reader) = waiting_reader(options(0, 2, 10, 5_000)).await;
    store.append("s", payload(0)).unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!reader.is_finished(), "one message is not enough");
    let appended = tokio::time::Instant::now();
    store.append("s", payload(1)).unwrap();
    let messages = reader.await.unwrap().unwrap();
    assert_eq!(messages.len(), 2);
    // With the clock paused, time moves only when everything waits for a
    // timer: a reader that missed the append's wake-up would have been
    // answered at its deadline, 4 s later, with the same messages.
    assert_eq!(appended.elapsed(), Duration::ZERO, "woken by the append");

    let started = tokio::time::Instant::now();
    let err = store.read("s", options(2, 1, 1, 5_000)).await.unwrap_err();
    assert!(matches!(
        err,
        StoreError::NotEnoughMessages {
            start: 2,
            available: 0,
            min: 1
        }
    ));
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(5_000),
        "answered at its timeout, not later"
    );
}

#[tokio::test(start_paused = true)]
async fn deleting_a_stream_ends_its_long_polls() {
    let (store, reader) = waiting_reader(options(0, 1, 1, 60_000)).await;
    let deleted = tokio::time::Instant::now();
    store.delete("s").unwrap();
    assert!(matches!(
        reader.await.unwrap(),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(deleted.elapsed(), Duration::ZERO, "woken by the delete");
}
