//! The export manager (`src/export/manager.rs`): pipelines follow the
//! registry's events. Exports start with their stream, stop when disabled
//! and resume when enabled again, move to a new `startSequenceNumber`, stop
//! with the stream's delete, and IoT Analytics channels go to Kinesis when
//! redirected; exports weir cannot run say so in their status.
//!
//! Runs on tokio's paused clock against recording destinations; every wait
//! is on a destination's own signal, bounded by a (paused) deadline.

mod sim;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weir::clock::ManualClock;
use weir::export::destination::{Destination, Record, SendError, SendLimits, Sent};
use weir::export::manager::{Destinations, ExportManager, ExportSettings};
use weir::protocol::model::{
    Batching, ExportDefinition, HttpConfig, IotAnalyticsConfig, KinesisConfig,
    MessageStreamDefinition, Persistence,
};
use weir::store::{Store, StoreLimits};

/// Every record each destination took, by the destination's name.
#[derive(Default)]
struct Cloud {
    taken: Mutex<BTreeMap<String, Vec<(i64, Bytes)>>>,
    changed: watch::Sender<u64>,
}

impl Cloud {
    fn taken(&self, name: &str) -> Vec<i64> {
        let taken = self.taken.lock().unwrap();
        taken
            .get(name)
            .map_or(Vec::new(), |r| r.iter().map(|(s, _)| *s).collect())
    }

    /// Waits until `name` took `n` records.
    async fn until(&self, name: &str, n: usize) {
        let mut changed = self.changed.subscribe();
        let wait = async {
            loop {
                if self.taken(name).len() >= n {
                    return;
                }
                changed.changed().await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(3600), wait)
            .await
            .unwrap_or_else(|_| panic!("{name} never took {n}: {:?}", self.taken(name)));
    }
}

struct Named {
    name: String,
    cloud: Arc<Cloud>,
}

impl Destination for Named {
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn limits(&self) -> SendLimits {
        SendLimits {
            max_records: 500,
            max_request_bytes: 1 << 20,
        }
    }
    fn refuses(&self, _: &Record) -> Option<String> {
        None
    }
    fn request_bytes(&self, record: &Record) -> usize {
        record.payload.len()
    }
    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(async move {
            let mut taken = self.cloud.taken.lock().unwrap();
            let list = taken.entry(self.name.clone()).or_default();
            list.extend(
                records
                    .iter()
                    .map(|r| (r.sequence_number, r.payload.clone())),
            );
            drop(taken);
            self.cloud.changed.send_modify(|n| *n += 1);
            Ok(Sent::default())
        })
    }
}

struct Makes(Arc<Cloud>);

impl Destinations for Makes {
    fn kinesis(&self, stream_name: &str) -> Arc<dyn Destination> {
        Arc::new(Named {
            name: format!("kinesis:{stream_name}"),
            cloud: Arc::clone(&self.0),
        })
    }
    fn iot_analytics(&self, channel: &str, prefix: Option<&str>) -> Arc<dyn Destination> {
        Arc::new(Named {
            name: format!("iota:{channel}:{}", prefix.unwrap_or("")),
            cloud: Arc::clone(&self.0),
        })
    }
}

fn kinesis(id: &str, stream: &str, batching: Batching) -> KinesisConfig {
    KinesisConfig {
        identifier: id.into(),
        kinesis_stream_name: stream.into(),
        batching,
    }
}

fn definition(name: &str, exports: ExportDefinition) -> MessageStreamDefinition {
    MessageStreamDefinition {
        persistence: Persistence::Memory,
        export_definition: exports,
        ..MessageStreamDefinition::with_defaults(name.into())
    }
}

struct Harness {
    store: Arc<Store>,
    cloud: Arc<Cloud>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    fn start(settings: ExportSettings) -> Harness {
        let clock = Arc::new(ManualClock::new(sim::T0));
        let store = Arc::new(Store::new(
            clock.clone(),
            StoreLimits {
                max_read_bytes: 1 << 20,
            },
        ));
        let cloud = Arc::new(Cloud::default());
        let manager = ExportManager::new(
            Arc::clone(&store),
            Arc::new(Makes(Arc::clone(&cloud))),
            settings,
            clock,
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(manager.run(stop.clone()));
        Harness {
            store,
            cloud,
            stop,
            task,
        }
    }

    fn append(&self, stream: &str, n: usize) {
        for _ in 0..n {
            let a = self.store.append(stream, Bytes::from_static(b"m")).unwrap();
            self.store.confirm(stream, a.ticket).unwrap();
        }
    }

    fn error_of(&self, stream: &str, id: &str) -> Option<String> {
        let info = self.store.describe(stream).unwrap();
        let status = info
            .export_statuses
            .into_iter()
            .find(|s| s.export_config_identifier == id)
            .unwrap();
        status.error_message
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn exports_follow_creates_updates_and_deletes() {
    let h = Harness::start(ExportSettings::default());
    let exports = |disabled: bool, start: i64| ExportDefinition {
        kinesis: vec![
            kinesis("a", "ka", Batching::default()),
            kinesis(
                "b",
                "kb",
                Batching {
                    disabled: Some(disabled),
                    start_sequence_number: Some(start),
                    ..Batching::default()
                },
            ),
        ],
        ..ExportDefinition::default()
    };
    h.store.create(definition("s", exports(true, 0))).unwrap();
    h.append("s", 3);
    h.cloud.until("kinesis:ka", 3).await;
    // Disabled: nothing went to kb, while ka took everything.
    assert_eq!(h.cloud.taken("kinesis:kb"), Vec::<i64>::new());
    // Enabled: it starts at its start.
    h.store.update(definition("s", exports(false, 0))).unwrap();
    h.cloud.until("kinesis:kb", 3).await;
    assert_eq!(h.cloud.taken("kinesis:kb"), vec![0, 1, 2]);
    // Disabled again, appends go only to ka; enabled, kb resumes after 2.
    h.store.update(definition("s", exports(true, 0))).unwrap();
    h.append("s", 2);
    h.cloud.until("kinesis:ka", 5).await;
    h.store.update(definition("s", exports(false, 0))).unwrap();
    h.cloud.until("kinesis:kb", 5).await;
    assert_eq!(h.cloud.taken("kinesis:kb"), vec![0, 1, 2, 3, 4]);
    // A new startSequenceNumber moves kb there.
    h.store.update(definition("s", exports(false, 1))).unwrap();
    h.cloud.until("kinesis:kb", 9).await;
    assert_eq!(h.cloud.taken("kinesis:kb")[5..], [1, 2, 3, 4]);
    assert_eq!(h.cloud.taken("kinesis:ka"), vec![0, 1, 2, 3, 4]);
    // Deleted: a stream of the same name starts afresh.
    h.store.delete("s").unwrap();
    h.store.create(definition("s", exports(true, 0))).unwrap();
    h.append("s", 1);
    h.cloud.until("kinesis:ka", 6).await;
    assert_eq!(h.cloud.taken("kinesis:ka")[5..], [0]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn iot_analytics_exports_go_to_their_channel_or_where_redirected() {
    let settings = ExportSettings {
        iot_analytics_to_kinesis: BTreeMap::from([("moved".into(), "kinesis-for-moved".into())]),
        ..ExportSettings::default()
    };
    let telemetry = Arc::clone(&settings.telemetry);
    let h = Harness::start(settings);
    let channel = |id: &str, channel: &str| IotAnalyticsConfig {
        identifier: id.into(),
        iot_channel: channel.into(),
        iot_msg_id_prefix: Some("p-".into()),
        batching: Batching::default(),
    };
    let exports = ExportDefinition {
        iot_analytics: vec![channel("stay", "kept"), channel("go", "moved")],
        http: vec![HttpConfig {
            identifier: "web".into(),
            uri: "http://example".into(),
            batching: Batching::default(),
            export_format: None,
        }],
        ..ExportDefinition::default()
    };
    h.store.create(definition("s", exports)).unwrap();
    h.append("s", 2);
    h.cloud.until("iota:kept:p-", 2).await;
    h.cloud.until("kinesis:kinesis-for-moved", 2).await;
    assert_eq!(h.cloud.taken("iota:moved:p-"), Vec::<i64>::new());
    // An export weir cannot run says so instead of exporting nothing silently.
    let mut error = h.error_of("s", "web");
    for _ in 0..100 {
        if error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        error = h.error_of("s", "web");
    }
    assert!(error.unwrap().contains("does not export to HTTP"));
    h.stop().await;
    // Telemetry counts the redirected export's bytes as Kinesis ones: the
    // same two messages went to each.
    let totals = telemetry.totals();
    assert!(totals.bytes_uploaded_to_iot_analytics > 0);
    assert_eq!(
        totals.bytes_uploaded_to_kinesis,
        totals.bytes_uploaded_to_iot_analytics
    );
}
