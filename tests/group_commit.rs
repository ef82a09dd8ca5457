//! Group commit (`src/store/group_commit.rs`): every waiter on a stream's
//! sync returns, on every way the sync can end, and every acknowledged
//! `flushOnWrite` append survives a power cut (`SimulatedFs::crash`).
//!
//! Futures are polled by hand where the order matters (a leader in the
//! middle of its sync, a waiter behind it); `tokio::time::timeout` is only a
//! hang detector, on tokio's paused clock, which moves only when every task
//! waits: a waiter that returns promptly does so at the same instant.

mod sim;
use bytes::Bytes;
use sim::{open_store, T0};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use weir::clock::ManualClock;
use weir::protocol::model::{MessageStreamDefinition, StrategyOnFull};
use weir::store::simfs::SimulatedFs;
use weir::store::{Operation, Store, StoreError};

/// Far longer than anything here takes; only a hang reaches it.
const HANG: Duration = Duration::from_secs(3600);

fn open(fs: &SimulatedFs) -> Arc<Store> {
    let clock = Arc::new(ManualClock::new(T0));
    Arc::new(open_store(fs, clock).expect("the store opens"))
}

fn flushed(name: &str) -> MessageStreamDefinition {
    MessageStreamDefinition {
        flush_on_write: true,
        stream_segment_size: 1024,
        strategy_on_full: StrategyOnFull::RejectNewData,
        ..MessageStreamDefinition::with_defaults(name.into())
    }
}

fn payload(name: &str, seq: i64) -> Bytes {
    Bytes::from(format!("{name}:{seq}").into_bytes())
}

type Durable = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

fn durable(store: &Arc<Store>, name: &'static str, seq: i64) -> Durable {
    let store = Arc::clone(store);
    Box::pin(async move { store.durable(name, seq).await })
}

/// Polls once, without a real waker: only to move a future to its first
/// wait.
fn poll_once(future: &mut Durable) -> Poll<Result<(), StoreError>> {
    future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

/// Awaits `future`, which must end without any time passing.
async fn promptly(future: Durable) -> Result<(), StoreError> {
    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(HANG, future)
        .await
        .expect("a waiter on the sync was never woken");
    assert_eq!(started.elapsed(), Duration::ZERO, "woken at once");
    result
}

/// A `flushOnWrite` stream "f" with message 0 appended (and written), a
/// leader that has begun its sync of it, and a waiter behind the leader.
fn leader_and_waiter(fs: &SimulatedFs) -> (Arc<Store>, Durable, Durable) {
    let store = open(fs);
    store.create(flushed("f")).unwrap();
    let appended = store.append("f", payload("f", 0)).unwrap();
    store.confirm("f", appended.ticket).unwrap();
    let mut leader = durable(&store, "f", 0);
    let mut waiter = durable(&store, "f", 0);
    assert!(poll_once(&mut leader).is_pending(), "the leader is syncing");
    assert!(poll_once(&mut waiter).is_pending(), "the waiter waits");
    (store, leader, waiter)
}

#[tokio::test(start_paused = true)]
async fn waiters_return_when_the_stream_is_deleted() {
    let fs = SimulatedFs::new();
    let (store, leader, waiter) = leader_and_waiter(&fs);
    store.delete("f").unwrap();
    for (who, future) in [("leader", leader), ("waiter", waiter)] {
        match promptly(future).await {
            Err(StoreError::NotFound(_)) | Ok(()) => {}
            other => panic!("{who}: {other:?}"),
        }
    }
    assert!(matches!(
        promptly(durable(&store, "f", 0)).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn waiters_return_when_the_streams_writes_stop_elsewhere() {
    let fs = SimulatedFs::new();
    let (store, leader, waiter) = leader_and_waiter(&fs);
    // Writes stop through another path while the sync is under way: an
    // append that seals the segment, whose fsync fails.
    fs.set_fail_sync(true);
    assert!(matches!(
        store.append("f", Bytes::from(vec![1; 1000])),
        Err(StoreError::WritesStopped { .. })
    ));
    fs.set_fail_sync(false);
    for (who, future) in [("leader", leader), ("waiter", waiter)] {
        match promptly(future).await {
            Err(StoreError::WritesStopped { .. }) => {}
            other => panic!("{who}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_return_when_the_fsync_fails() {
    let fs = SimulatedFs::new();
    let (_store, leader, waiter) = leader_and_waiter(&fs);
    fs.set_fail_sync(true);
    for (who, future) in [("leader", leader), ("waiter", waiter)] {
        match promptly(future).await {
            Err(StoreError::WritesStopped { cause, .. }) => {
                assert_eq!(cause.operation, Operation::Sync, "{who}");
                assert!(
                    cause.io_kind().is_some(),
                    "{who}: the I/O error kind is kept"
                );
            }
            other => panic!("{who}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_return_when_the_leader_stops_waiting() {
    let fs = SimulatedFs::new();
    let (store, leader, waiter) = leader_and_waiter(&fs);
    // The leader's connection closes: its future is dropped mid-sync.
    drop(leader);
    promptly(waiter).await.unwrap();
    drop(store);
    let store = open(&fs.crash(|_, _| 0));
    let info = store.describe("f").unwrap().storage_status;
    assert_eq!(info.newest_sequence_number, 0, "the sync was completed");
}

#[tokio::test(start_paused = true)]
async fn a_leader_dropped_during_its_fsync_still_records_the_failure() {
    let fs = SimulatedFs::new();
    let (store, mut leader, waiter) = leader_and_waiter(&fs);
    fs.set_fail_sync(true);
    // The second poll passes the gathering yield and starts the fdatasync
    // on a blocking thread (the stream has not shown its disk fast yet),
    // where it is held until the leader is gone.
    fs.hold_syncs(true);
    assert!(poll_once(&mut leader).is_pending());
    drop(leader);
    fs.hold_syncs(false);
    match promptly(waiter).await {
        Err(StoreError::WritesStopped { .. }) => {}
        other => panic!("the waiter: {other:?}"),
    }
    fs.set_fail_sync(false);
    assert!(matches!(
        store.append("f", payload("f", 1)),
        Err(StoreError::WritesStopped { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_sync_of_an_append_whose_write_failed_fails_for_every_waiter() {
    let fs = SimulatedFs::new();
    let store = open(&fs);
    store.create(flushed("f")).unwrap();
    let first = store.append("f", payload("f", 0)).unwrap();
    store.confirm("f", first.ticket).unwrap();
    fs.set_space_left(Some(0));
    // Not confirmed: the sync itself writes it, and the write fails.
    store.append("f", payload("f", 1)).unwrap();
    let mut leader = durable(&store, "f", 1);
    let mut waiter = durable(&store, "f", 1);
    assert!(poll_once(&mut leader).is_pending());
    assert!(poll_once(&mut waiter).is_pending());
    for (who, future) in [("leader", leader), ("waiter", waiter)] {
        assert!(
            promptly(future).await.is_err(),
            "{who}: message 1 was never written, so it is not durable"
        );
    }
    // The background sync of the same stream is not stuck behind them.
    let sync_all = {
        let store = Arc::clone(&store);
        Box::pin(async move {
            store.sync_all().await;
            Ok(())
        })
    };
    promptly(sync_all).await.unwrap();
}

/// Appenders on several threads, each acknowledging its appends as the
/// server does (append, confirm, durable): every acknowledged message
/// survives a power cut, and every waiter returns.
async fn many_appenders(fail_after: Option<usize>) {
    const APPENDERS: usize = 16;
    const EACH: i64 = 40;
    let fs = SimulatedFs::new();
    let store = open(&fs);
    let names: Vec<&'static str> = vec!["a", "b"];
    for name in &names {
        store.create(flushed(name)).unwrap();
    }
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(&'static str, i64)>::new()));
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..APPENDERS {
        let (store, acked, attempts, fs) = (
            Arc::clone(&store),
            Arc::clone(&acked),
            Arc::clone(&attempts),
            fs.clone(),
        );
        let name = names[i % names.len()];
        tasks.spawn(async move {
            for _ in 0..EACH {
                let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if fail_after == Some(n) {
                    fs.set_fail_sync(true);
                }
                let appended = match store.append(name, Bytes::new()) {
                    Ok(appended) => appended,
                    Err(StoreError::WritesStopped { .. }) => continue,
                    Err(e) => panic!("{e}"),
                };
                let seq = appended.sequence_number;
                let result = match store.confirm(name, appended.ticket) {
                    Ok(()) => store.durable(name, seq).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => acked.lock().unwrap().push((name, seq)),
                    Err(StoreError::WritesStopped { .. }) if fail_after.is_some() => {}
                    Err(e) => panic!("{e}"),
                }
                tokio::task::yield_now().await;
            }
        });
    }
    let all = async {
        while let Some(done) = tasks.join_next().await {
            done.expect("an appender panicked");
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("every appender's waits returned");
    let acked = acked.lock().unwrap().clone();
    if fail_after.is_none() {
        assert_eq!(acked.len(), APPENDERS * EACH as usize);
    }
    drop(store);
    let store = open(&fs.crash(|_, _| 0));
    for name in names {
        let newest = store
            .describe(name)
            .unwrap()
            .storage_status
            .newest_sequence_number;
        for &(_, seq) in acked.iter().filter(|(n, _)| *n == name) {
            assert!(
                seq <= newest,
                "{name}: acknowledged message {seq} lost (kept up to {newest})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_appenders_on_two_threads_all_durable() {
    many_appenders(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_appenders_on_two_threads_when_an_fsync_fails() {
    many_appenders(Some(300)).await;
}

#[tokio::test]
async fn many_appenders_on_one_thread_all_durable() {
    many_appenders(None).await;
}
