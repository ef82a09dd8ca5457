//! The export pipeline (`src/export/pipeline.rs`) against a scripted cloud:
//! order, batching, partial failures, poison records, retries, the cursor
//! across restarts and power cuts, priorities under a bandwidth cap.
//!
//! Everything runs on tokio's paused clock: backoffs and the bandwidth cap
//! take no real time, and a wait for the cloud to have received something
//! is a wait on the cloud's own signal, bounded by a (paused) deadline.

mod sim;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use sim::{open_store, T0};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weir::clock::ManualClock;
use weir::export::destination::{Destination, Record, SendError, SendLimits, Sent};
use weir::export::gate::UploadGate;
use weir::export::pipeline::{Ended, Pipeline, PipelineSettings, RetryPolicy};
use weir::protocol::model::{
    Batching, ExportDefinition, KinesisConfig, MessageStreamDefinition, Persistence,
};
use weir::store::simfs::SimulatedFs;
use weir::store::{Store, StoreLimits};

/// What the scripted cloud does with the next request.
#[derive(Clone, Debug)]
enum Fault {
    /// Answers 5xx / throttling: nothing taken.
    Transient,
    /// Credentials or the stream are missing: nothing taken.
    Unavailable,
    /// Takes all but these indexes (sent again later).
    Partial(Vec<usize>),
}

#[derive(Default)]
struct CloudState {
    /// Every record taken, in the order taken.
    taken: Vec<Record>,
    /// The sequence numbers of every request, in order.
    requests: Vec<Vec<i64>>,
    script: VecDeque<Fault>,
    /// A payload the service can never take: a request holding it is
    /// refused as invalid as a whole, as Kinesis does.
    poison: Option<Bytes>,
}

struct Cloud {
    name: String,
    state: Mutex<CloudState>,
    taken_count: watch::Sender<usize>,
    limits: SendLimits,
}

impl Cloud {
    fn new(name: &str) -> Arc<Cloud> {
        Arc::new(Cloud {
            name: name.into(),
            state: Mutex::default(),
            taken_count: watch::Sender::new(0),
            limits: SendLimits {
                max_records: 500,
                max_request_bytes: 5 << 20,
            },
        })
    }

    fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().script.extend(faults);
    }

    fn taken(&self) -> Vec<Record> {
        self.state.lock().unwrap().taken.clone()
    }

    fn requests(&self) -> Vec<Vec<i64>> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Waits (on the paused clock, bounded) until `n` records were taken.
    async fn until_taken(&self, n: usize) {
        let mut count = self.taken_count.subscribe();
        tokio::time::timeout(Duration::from_secs(24 * 3600), count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{}: {n} records never arrived", self.name))
            .unwrap();
    }
}

impl Destination for Cloud {
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn limits(&self) -> SendLimits {
        self.limits
    }
    fn refuses(&self, record: &Record) -> Option<String> {
        (record.payload.len() > 1000).then(|| "larger than 1000 bytes".to_owned())
    }
    fn request_bytes(&self, record: &Record) -> usize {
        record.payload.len()
    }
    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(async move {
            let mut state = self.state.lock().unwrap();
            state
                .requests
                .push(records.iter().map(|r| r.sequence_number).collect());
            if let Some(poison) = &state.poison {
                if records.iter().any(|r| r.payload == *poison) {
                    return Err(SendError::InvalidRequest("1 validation error".into()));
                }
            }
            let fault = state.script.pop_front();
            let retry = match fault {
                Some(Fault::Transient) => return Err(SendError::Transient("503".into())),
                Some(Fault::Unavailable) => {
                    return Err(SendError::Unavailable("ResourceNotFoundException".into()))
                }
                Some(Fault::Partial(failed)) => failed,
                None => Vec::new(),
            };
            for (i, record) in records.iter().enumerate() {
                if !retry.contains(&i) {
                    state.taken.push(record.clone());
                }
            }
            let taken = state.taken.len();
            drop(state);
            self.taken_count.send_replace(taken);
            Ok(Sent {
                retry,
                rejected: Vec::new(),
            })
        })
    }
}

const STREAM: &str = "s";

fn definition(persistence: Persistence, exports: &[(&str, i64)]) -> MessageStreamDefinition {
    MessageStreamDefinition {
        persistence,
        export_definition: ExportDefinition {
            kinesis: exports
                .iter()
                .map(|(id, start)| KinesisConfig {
                    identifier: (*id).into(),
                    kinesis_stream_name: "k".into(),
                    batching: Batching {
                        start_sequence_number: Some(*start),
                        ..Batching::default()
                    },
                })
                .collect(),
            ..ExportDefinition::default()
        },
        ..MessageStreamDefinition::with_defaults(STREAM.into())
    }
}

fn memory_store(exports: &[(&str, i64)]) -> Arc<Store> {
    let store = Store::new(
        Arc::new(ManualClock::new(T0)),
        StoreLimits {
            max_read_bytes: 1 << 20,
        },
    );
    store
        .create(definition(Persistence::Memory, exports))
        .unwrap();
    Arc::new(store)
}

fn append(store: &Store, payload: impl Into<Bytes>) -> i64 {
    let appended = store.append(STREAM, payload.into()).unwrap();
    store.confirm(STREAM, appended.ticket).unwrap();
    appended.sequence_number
}

fn settings(id: &str, start: i64) -> PipelineSettings {
    PipelineSettings {
        identifier: id.into(),
        batch_size: 500,
        batch_interval: None,
        priority: 10,
        start_sequence_number: start,
    }
}

/// A running pipeline and how to stop it.
struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Ended>,
}

impl Running {
    async fn stop(self) -> Ended {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

fn start(
    store: &Store,
    cloud: &Arc<Cloud>,
    gate: &Arc<UploadGate>,
    settings: PipelineSettings,
) -> Running {
    let pipeline = Pipeline {
        reader: Arc::new(store.export_reader(STREAM).unwrap()),
        destination: Arc::clone(cloud) as Arc<dyn Destination>,
        gate: Arc::clone(gate),
        settings,
        clock: Arc::new(ManualClock::new(T0 + 1)),
        retry: RetryPolicy::default(),
        uploaded: None,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(pipeline.run(stop.clone()));
    Running { stop, task }
}

fn gate() -> Arc<UploadGate> {
    Arc::new(UploadGate::new(5, None))
}

fn status(store: &Store, id: &str) -> weir::protocol::model::ExportStatus {
    store
        .describe(STREAM)
        .unwrap()
        .export_statuses
        .into_iter()
        .find(|s| s.export_config_identifier == id)
        .unwrap()
}

fn seqs(records: &[Record]) -> Vec<i64> {
    records.iter().map(|r| r.sequence_number).collect()
}

#[tokio::test(start_paused = true)]
async fn every_message_goes_in_order_in_batches_and_the_status_follows() {
    let store = memory_store(&[("k1", 0)]);
    for i in 0..1200u32 {
        append(&store, i.to_be_bytes().to_vec());
    }
    let cloud = Cloud::new("cloud");
    let running = start(&store, &cloud, &gate(), settings("k1", 0));
    cloud.until_taken(1200).await;
    assert_eq!(seqs(&cloud.taken()), (0..1200).collect::<Vec<_>>());
    for (record, i) in cloud.taken().iter().zip(0u32..) {
        assert_eq!(record.payload, Bytes::from(i.to_be_bytes().to_vec()));
    }
    assert!(cloud.requests().iter().all(|r| r.len() <= 500));
    // Appended later: sent as soon as it is there.
    append(&store, "late");
    cloud.until_taken(1201).await;
    assert_eq!(running.stop().await, Ended::Stopped);
    let status = status(&store, "k1");
    assert_eq!(status.last_exported_sequence_number, 1200);
    assert_eq!(status.exported_messages_count, 1201);
    assert_eq!(status.exported_bytes_from_stream, 1200 * 4 + 4);
    assert_eq!(status.last_export_time, Some(T0 + 1));
    assert_eq!(status.error_message, None);
}

#[tokio::test(start_paused = true)]
async fn after_a_partial_failure_only_the_failed_records_are_sent_again() {
    let store = memory_store(&[("k1", 0)]);
    for i in 0..6u8 {
        append(&store, vec![i]);
    }
    let cloud = Cloud::new("cloud");
    cloud.script([Fault::Partial(vec![1, 3])]);
    let running = start(&store, &cloud, &gate(), settings("k1", 0));
    cloud.until_taken(6).await;
    running.stop().await;
    assert_eq!(cloud.requests(), vec![vec![0, 1, 2, 3, 4, 5], vec![1, 3]]);
    assert_eq!(seqs(&cloud.taken()), vec![0, 2, 4, 5, 1, 3]);
    assert_eq!(status(&store, "k1").exported_messages_count, 6);
}

#[tokio::test(start_paused = true)]
async fn a_record_the_service_never_takes_is_skipped_and_shown_and_the_rest_go() {
    let store = memory_store(&[("k1", 0)]);
    for i in 0..10u8 {
        append(&store, vec![i]);
    }
    // Too large for the destination: refused before it is sent.
    append(&store, vec![7; 2000]);
    append(&store, vec![11]);
    let cloud = Cloud::new("cloud");
    cloud.state.lock().unwrap().poison = Some(Bytes::from(vec![5u8]));
    let running = start(&store, &cloud, &gate(), settings("k1", 0));
    cloud.until_taken(10).await;
    running.stop().await;
    let expected: Vec<i64> = (0..12).filter(|s| *s != 5 && *s != 10).collect();
    assert_eq!(seqs(&cloud.taken()), expected);
    let status = status(&store, "k1");
    assert_eq!(status.last_exported_sequence_number, 11);
    assert_eq!(status.exported_messages_count, 10);
    let error = status.error_message.expect("the skipped records are shown");
    assert!(
        error.contains("message 5") || error.contains("message 10"),
        "{error}"
    );
    let cursor = store.export_reader(STREAM).unwrap().progress().unwrap();
    assert_eq!(cursor["k1"].skipped_messages, 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_export_retries_without_end_shows_why_and_recovers() {
    let store = memory_store(&[("k1", 0)]);
    append(&store, "a");
    let cloud = Cloud::new("cloud");
    // Enough failures for the backoff to reach its 5-minute cap.
    cloud.script(std::iter::repeat_n(Fault::Unavailable, 20));
    cloud.script([Fault::Transient]);
    let running = start(&store, &cloud, &gate(), settings("k1", 0));
    // The status says why while it fails.
    let mut seen_error = None;
    for _ in 0..1000 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(e) = status(&store, "k1").error_message {
            seen_error = Some(e);
            break;
        }
    }
    assert!(
        seen_error
            .as_deref()
            .unwrap()
            .contains("ResourceNotFoundException"),
        "{seen_error:?}"
    );
    let started = tokio::time::Instant::now();
    cloud.until_taken(1).await;
    running.stop().await;
    assert_eq!(cloud.requests().len(), 22);
    // Capped waits with full jitter: never more than 5 minutes each.
    assert!(started.elapsed() <= Duration::from_secs(21 * 300));
    let status = status(&store, "k1");
    assert_eq!(status.error_message, None);
    assert_eq!(status.exported_messages_count, 1);
}

#[tokio::test(start_paused = true)]
async fn the_export_starts_at_its_start_sequence_number() {
    let store = memory_store(&[("k1", 7)]);
    for i in 0..10u8 {
        append(&store, vec![i]);
    }
    let cloud = Cloud::new("cloud");
    let running = start(&store, &cloud, &gate(), settings("k1", 7));
    cloud.until_taken(3).await;
    running.stop().await;
    assert_eq!(seqs(&cloud.taken()), vec![7, 8, 9]);
    // Before anything was taken the status says "the one before the start".
    let fresh = memory_store(&[("k1", 7)]);
    assert_eq!(status(&fresh, "k1").last_exported_sequence_number, 6);
}

/// A `File` stream: the pipeline resumes from its saved cursor after a
/// restart, and a power cut never leaves the cloud holding a record the
/// stream lost (records are exported only once durable).
#[tokio::test(start_paused = true)]
async fn a_restart_resumes_from_the_cursor_and_a_power_cut_never_leaves_the_cloud_ahead() {
    let fs = SimulatedFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open_store(&fs, clock.clone()).unwrap();
    store
        .create(definition(Persistence::File, &[("k1", 0)]))
        .unwrap();
    for i in 0..10u8 {
        append(&store, vec![i]);
    }
    let cloud = Cloud::new("cloud");
    let running = start(&store, &cloud, &gate(), settings("k1", 0));
    cloud.until_taken(10).await;
    // Appended and written, never synced, while the exporter is stopped.
    running.stop().await;
    for i in 10..15u8 {
        append(&store, vec![i]);
    }
    drop(store);
    // The power goes: what was not synced is lost.
    let after_cut = fs.crash(|_, _| 0);
    let store = open_store(&after_cut, clock.clone()).unwrap();
    // Everything the cloud holds survived the cut, byte for byte.
    let kept = sim::read_all(&store, STREAM);
    for record in cloud.taken() {
        assert!(kept.contains(&(record.sequence_number, record.payload.clone())));
    }
    assert_eq!(status(&store, "k1").last_exported_sequence_number, 9);
    for i in 100..103u8 {
        append(&store, vec![i]);
    }
    let next = store
        .describe(STREAM)
        .unwrap()
        .storage_status
        .newest_sequence_number
        + 1;
    let running = start(&store, &cloud, &gate(), settings("k1", 0));
    cloud.until_taken(10 + (next - 10) as usize).await;
    running.stop().await;
    // Resumed after 9: nothing sent twice.
    let taken = seqs(&cloud.taken());
    assert_eq!(taken, (0..next).collect::<Vec<_>>());
}

/// With the bandwidth short, the priority-1 export's backlog goes before
/// the priority-10 one's: once both wait, only the first may go.
#[tokio::test(start_paused = true)]
async fn with_the_bandwidth_capped_the_higher_priority_export_drains_first() {
    let store = memory_store(&[("high", 0), ("low", 0)]);
    for _ in 0..100 {
        append(&store, vec![0u8; 1000]);
    }
    let high = Cloud::new("high");
    let low = Cloud::new("low");
    // 80 kbit/s: 10,000 bytes a second, ten records.
    let gate = Arc::new(UploadGate::new(5, Some(80)));
    let batch = |id: &str, priority| PipelineSettings {
        batch_size: 10,
        priority,
        ..settings(id, 0)
    };
    let started = tokio::time::Instant::now();
    let low_running = start(&store, &low, &gate, batch("low", 10));
    let high_running = start(&store, &high, &gate, batch("high", 1));
    high.until_taken(100).await;
    let high_took = started.elapsed();
    let low_so_far = low.taken().len();
    low.until_taken(100).await;
    let both_took = started.elapsed();
    high_running.stop().await;
    low_running.stop().await;
    // The low one got at most the batches admitted before the high one
    // arrived (the burst) and one in flight.
    assert!(low_so_far <= 20, "low had {low_so_far} when high finished");
    // 200,000 bytes at 10,000 bytes/s, less the first second's burst.
    assert!(both_took >= Duration::from_secs(19), "{both_took:?}");
    assert!(high_took >= Duration::from_secs(8), "{high_took:?}");
}

/// A `RejectNewData` stream that filled while the cloud was out of reach:
/// with retention following exports it takes appends again once its
/// backlog is exported; without, it stays full (the Java semantics).
#[tokio::test(start_paused = true)]
async fn with_retention_following_exports_a_full_stream_takes_appends_once_exported() {
    for follows in [true, false] {
        let store = Store::new(
            Arc::new(ManualClock::new(T0)),
            StoreLimits {
                max_read_bytes: 1 << 20,
            },
        );
        store.set_retention_follows_exports(follows);
        let definition = MessageStreamDefinition {
            max_size: 4096,
            stream_segment_size: 1024,
            strategy_on_full: weir::protocol::model::StrategyOnFull::RejectNewData,
            ..definition(Persistence::Memory, &[("k1", 0)])
        };
        store.create(definition).unwrap();
        let mut appended = 0;
        while store.append(STREAM, Bytes::from(vec![1u8; 200])).is_ok() {
            appended += 1;
        }
        assert!(matches!(
            store.append(STREAM, Bytes::from(vec![1u8; 200])),
            Err(weir::store::StoreError::Full { .. })
        ));
        let cloud = Cloud::new("cloud");
        let running = start(&store, &cloud, &gate(), settings("k1", 0));
        cloud.until_taken(appended).await;
        running.stop().await;
        let outcome = store.append(STREAM, Bytes::from(vec![2u8; 200]));
        assert_eq!(outcome.is_ok(), follows, "follows={follows}: {outcome:?}");
        // Only what was exported went.
        let oldest = store
            .describe(STREAM)
            .unwrap()
            .storage_status
            .oldest_sequence_number;
        assert_eq!(oldest > 0, follows);
    }
}

/// Messages retention removed before they were exported are counted and
/// shown, and the export goes on from the oldest one left.
#[tokio::test(start_paused = true)]
async fn messages_removed_by_retention_before_export_are_counted_and_shown() {
    let store = Store::new(
        Arc::new(ManualClock::new(T0)),
        StoreLimits {
            max_read_bytes: 1 << 20,
        },
    );
    store
        .create(MessageStreamDefinition {
            max_size: 2048,
            stream_segment_size: 1024,
            ..definition(Persistence::Memory, &[("k1", 0)])
        })
        .unwrap();
    for i in 0..40u8 {
        append(&store, vec![i; 100]);
    }
    let oldest = store
        .describe(STREAM)
        .unwrap()
        .storage_status
        .oldest_sequence_number;
    assert!(oldest > 0, "retention removed the oldest messages");
    let cloud = Cloud::new("cloud");
    let running = start(&store, &cloud, &gate(), settings("k1", 0));
    cloud.until_taken((40 - oldest) as usize).await;
    running.stop().await;
    assert_eq!(seqs(&cloud.taken()), (oldest..40).collect::<Vec<_>>());
    let progress = store.export_reader(STREAM).unwrap().progress().unwrap();
    assert_eq!(progress["k1"].skipped_messages, oldest);
    let error = status(&store, "k1")
        .error_message
        .expect("the gap is shown");
    assert!(
        error.contains("removed by the stream's retention"),
        "{error}"
    );
    assert!(error.contains(&format!("0 to {}", oldest - 1)), "{error}");
}

/// With `batchIntervalMillis` a batch goes when it is full or when the
/// interval has passed since its first message, whichever comes first.
#[tokio::test(start_paused = true)]
async fn a_batch_goes_when_full_or_when_its_interval_has_passed() {
    let store = memory_store(&[("k1", 0)]);
    let cloud = Cloud::new("cloud");
    let interval = Duration::from_secs(60);
    let running = start(
        &store,
        &cloud,
        &gate(),
        PipelineSettings {
            batch_size: 10,
            batch_interval: Some(interval),
            ..settings("k1", 0)
        },
    );
    for i in 0..3u8 {
        append(&store, vec![i]);
    }
    let started = tokio::time::Instant::now();
    cloud.until_taken(3).await;
    // Not full: it waited for the interval.
    assert!(started.elapsed() >= interval, "{:?}", started.elapsed());
    assert_eq!(cloud.requests(), vec![vec![0, 1, 2]]);
    // Full: it goes at once.
    let full_at = tokio::time::Instant::now();
    for i in 3..13u8 {
        append(&store, vec![i]);
    }
    cloud.until_taken(13).await;
    assert!(full_at.elapsed() < interval, "{:?}", full_at.elapsed());
    assert_eq!(cloud.requests()[1], (3..13).collect::<Vec<_>>());
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn telemetry_counts_the_bytes_taken_never_the_skipped_or_twice_the_retried() {
    let store = memory_store(&[("k1", 0)]);
    for i in 0..4u8 {
        append(&store, vec![i; 3]);
    }
    // Too large for the destination: refused before it is sent.
    append(&store, vec![7; 2000]);
    let cloud = Cloud::new("cloud");
    cloud.script([Fault::Partial(vec![1])]);
    let uploaded = Arc::new(weir::telemetry::Counter::default());
    let pipeline = Pipeline {
        reader: Arc::new(store.export_reader(STREAM).unwrap()),
        destination: Arc::clone(&cloud) as Arc<dyn Destination>,
        gate: gate(),
        settings: settings("k1", 0),
        clock: Arc::new(ManualClock::new(T0 + 1)),
        retry: RetryPolicy::default(),
        uploaded: Some(Arc::clone(&uploaded)),
    };
    let stop = CancellationToken::new();
    let running = Running {
        stop: stop.clone(),
        task: tokio::spawn(pipeline.run(stop)),
    };
    cloud.until_taken(4).await;
    running.stop().await;
    assert_eq!(status(&store, "k1").exported_bytes_from_stream, 12);
    assert_eq!(uploaded.total(), 12);
}
