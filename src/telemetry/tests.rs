//! The telemetry loop against a scripted nucleus, on tokio's paused clock:
//! deltas every interval, none when nothing changed, bytes kept across a
//! nucleus that is down, and one log line then silence from a nucleus
//! that refuses (lite).

use super::*;
use crate::auth::ipc::scripted::{settings, CapturedLogs, Flavour, ScriptedNucleus, Seen};

const MINUTE: Duration = Duration::from_secs(60);

/// The telemetry loop reporting to the nucleus socket at `path` every
/// minute, its counters, and how to stop it.
struct Reporting {
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start_reporting(path: &std::path::Path) -> Reporting {
    let telemetry = Arc::new(Telemetry::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(report(
        IpcClient::start(settings(path)),
        Arc::clone(&telemetry),
        MINUTE,
        shutdown.clone(),
    ));
    Reporting {
        telemetry,
        shutdown,
        task,
    }
}

/// The three values of a `PutComponentMetric` payload, by name.
fn values(seen: &Seen) -> (u64, u64, u64) {
    assert_eq!(seen.operation, PUT_COMPONENT_METRIC);
    assert_eq!(seen.model, PUT_COMPONENT_METRIC_REQUEST);
    let json: serde_json::Value = serde_json::from_str(&seen.payload).unwrap();
    let metrics = json["metrics"].as_array().unwrap();
    let value = |name: &str| {
        let metric = metrics
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {}", seen.payload));
        assert_eq!(metric["unit"], "BYTES");
        metric["value"].as_u64().unwrap()
    };
    (
        value("BytesAppended"),
        value("BytesUploadedToKinesis"),
        value("BytesUploadedToIoTAnalytics"),
    )
}

#[tokio::test(start_paused = true)]
async fn deltas_go_every_interval_and_nothing_goes_when_nothing_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.socket");
    let (nucleus, mut seen) = ScriptedNucleus::start(&path, Flavour::Classic);
    let start = Instant::now();
    let Reporting {
        telemetry,
        shutdown,
        task,
    } = start_reporting(&path);
    telemetry.bytes_appended.add(100);
    telemetry.bytes_uploaded_to_kinesis.add(10);
    telemetry.bytes_uploaded_to_iot_analytics.add(3);
    let first = seen.recv().await.unwrap();
    assert_eq!(start.elapsed(), MINUTE, "the first send waits an interval");
    assert_eq!(values(&first), (100, 10, 3));
    telemetry.bytes_appended.add(50);
    let second = seen.recv().await.unwrap();
    assert_eq!(start.elapsed(), 2 * MINUTE);
    assert_eq!(values(&second), (50, 0, 0), "a delta, not the total");
    // Two intervals with nothing new: nothing is sent; the next send is
    // the one after the next append, and has only that append.
    tokio::time::sleep(2 * MINUTE + MINUTE / 2).await;
    telemetry.bytes_appended.add(7);
    let third = seen.recv().await.unwrap();
    assert_eq!(start.elapsed(), 5 * MINUTE, "no send at 3 and 4 minutes");
    assert_eq!(values(&third), (7, 0, 0));
    shutdown.cancel();
    task.await.unwrap();
    // The client's connection closes with its last handle: every request
    // the nucleus got is in the channel once it is dropped too.
    drop(nucleus);
    assert!(seen.recv().await.is_none(), "nothing else was sent");
}

#[tokio::test(start_paused = true)]
async fn bytes_of_a_send_the_nucleus_missed_go_with_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.socket");
    let start = Instant::now();
    let Reporting {
        telemetry,
        shutdown,
        task,
    } = start_reporting(&path);
    telemetry.bytes_appended.add(40);
    // Nobody listens at the first interval's end.
    tokio::time::sleep(MINUTE + MINUTE / 2).await;
    let (_nucleus, mut seen) = ScriptedNucleus::start(&path, Flavour::Classic);
    telemetry.bytes_appended.add(2);
    let sent = seen.recv().await.unwrap();
    assert_eq!(start.elapsed(), 2 * MINUTE);
    assert_eq!(values(&sent), (42, 0, 0), "the missed bytes are kept");
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_nucleus_without_put_component_metric_stops_telemetry_after_one_log_line() {
    let (logs, _guard) = CapturedLogs::capture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.socket");
    let (_nucleus, mut seen) = ScriptedNucleus::start(&path, Flavour::Lite);
    let Reporting {
        telemetry, task, ..
    } = start_reporting(&path);
    telemetry.bytes_appended.add(5);
    values(&seen.recv().await.unwrap());
    // The loop ends on the refusal (no shutdown asked): ten intervals
    // later, with more appended meanwhile, nothing more was sent.
    telemetry.bytes_appended.add(5);
    tokio::time::sleep(10 * MINUTE).await;
    assert!(task.is_finished(), "telemetry stopped");
    task.await.unwrap();
    assert_eq!(logs.count("refuses component metrics"), 1);
    assert!(
        logs.count("ServiceError") >= 1,
        "the nucleus's answer is named"
    );
    assert!(seen.try_recv().is_err());
}

#[test]
fn the_request_is_the_nucleus_model() {
    let deltas = Totals {
        bytes_appended: 1,
        bytes_uploaded_to_kinesis: 2,
        bytes_uploaded_to_iot_analytics: 3,
    };
    let request = deltas.request();
    assert_eq!(request.operation, "aws.greengrass#PutComponentMetric");
    assert_eq!(request.model, "aws.greengrass#PutComponentMetricRequest");
    assert_eq!(
        &request.payload[..],
        br#"{"metrics":[{"name":"BytesAppended","unit":"BYTES","value":1},{"name":"BytesUploadedToKinesis","unit":"BYTES","value":2},{"name":"BytesUploadedToIoTAnalytics","unit":"BYTES","value":3}]}"#
    );
    assert!(Totals::default().is_zero());
    assert_eq!(deltas.since(&deltas), Totals::default());
}

#[test]
fn an_append_counts_once_acknowledged_and_a_failed_one_not() {
    use crate::protocol::model::{MessageStreamDefinition, Persistence};
    use crate::protocol::{ReplyBody, Request as WireRequest, RequestBody};
    use crate::server::dispatch::{CountingStoreHandler, Handled, RequestHandler};
    use crate::store::{Store, StoreLimits};
    let store = Arc::new(Store::new(
        Arc::new(crate::clock::ManualClock::new(1_700_000_000_000)),
        StoreLimits {
            max_read_bytes: 1 << 20,
        },
    ));
    let mut definition = MessageStreamDefinition::with_defaults("s".into());
    definition.persistence = Persistence::Memory;
    store.create(definition).unwrap();
    let telemetry = Arc::new(Telemetry::default());
    let handler = CountingStoreHandler {
        store,
        telemetry: Arc::clone(&telemetry),
    };
    let append = |name: &str, payload: &'static [u8]| WireRequest {
        request_id: "r".into(),
        body: RequestBody::AppendMessage {
            name: name.into(),
            payload: Bytes::from_static(payload),
        },
    };
    let Handled::AtBatchEnd(acknowledge) = handler.handle(append("s", b"twelve bytes")) else {
        panic!("a memory append is acknowledged at its batch's end");
    };
    assert_eq!(
        telemetry.totals().bytes_appended,
        0,
        "not before the answer"
    );
    let reply = acknowledge();
    assert!(matches!(reply.body, ReplyBody::AppendMessage(Ok(0))));
    assert_eq!(telemetry.totals().bytes_appended, 12);
    let Handled::Now(reply) = handler.handle(append("missing", b"lost")) else {
        panic!("an append to no stream is answered at once");
    };
    assert!(matches!(reply.body, ReplyBody::AppendMessage(Err(_))));
    assert_eq!(
        telemetry.totals().bytes_appended,
        12,
        "a failure is not counted"
    );
}
