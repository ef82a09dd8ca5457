//! The export manager: one [`Pipeline`] per (stream, export definition),
//! started, replaced and stopped as the store's registry events say, never
//! by polling ([`crate::store::export_reader`] has the events' rules).
//!
//! * An export runs unless its definition says `disabled`; an update that
//!   changes any of its settings (matched by `identifier`) replaces its
//!   pipeline, which resumes from the saved progress (or from a new
//!   `startSequenceNumber`, as the store's progress rule says,
//!   [`crate::store::export_cursor::CursorState::resume`]).
//! * Kinesis and IoT Analytics exports run. An IoT Analytics channel named
//!   in `WEIR_IOT_ANALYTICS_TO_KINESIS` goes to its Kinesis stream instead
//!   (the service was retired on 2025-12-15). HTTP, IoT SiteWise and S3
//!   exports are not built yet: their status says so.
//! * Everything runs on the exporter's own runtime
//!   ([`ExportThread::start`]): an upload never holds up the protocol
//!   thread.

use super::destination::Destination;
use super::gate::{UploadGate, LOWEST_PRIORITY};
use super::pipeline::{Pipeline, PipelineSettings, RetryPolicy};
use super::{iot_analytics, kinesis};
use crate::clock::Clock;
use crate::protocol::model::{Batching, MessageStreamDefinition};
use crate::store::export_cursor::CursorState;
use crate::store::{Store, StreamEvent};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// The server-wide export settings (the Java server's environment
/// variables, and weir's own).
#[derive(Clone, Debug)]
pub struct ExportSettings {
    /// Uploads in progress at once (`STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE`).
    pub uploads_at_once: usize,
    /// Average cap over all exports (`STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH`).
    pub max_bandwidth_kbps: Option<u64>,
    /// IoT Analytics channel → Kinesis stream its messages go to instead;
    /// the channel `*` stands for every channel not named.
    pub iot_analytics_to_kinesis: BTreeMap<String, String>,
    pub retry: RetryPolicy,
    /// Where the pipelines count the bytes they upload (by where they go).
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            uploads_at_once: 5,
            max_bandwidth_kbps: None,
            iot_analytics_to_kinesis: BTreeMap::new(),
            retry: RetryPolicy::default(),
            telemetry: Arc::default(),
        }
    }
}

impl ExportSettings {
    /// The Kinesis stream an IoT Analytics channel's messages go to, if
    /// they are redirected.
    pub fn redirect(&self, channel: &str) -> Option<&str> {
        self.iot_analytics_to_kinesis
            .get(channel)
            .or_else(|| self.iot_analytics_to_kinesis.get("*"))
            .map(String::as_str)
    }
}

/// Makes the clients of the export targets.
pub trait Destinations: Send + Sync {
    fn kinesis(&self, stream_name: &str) -> Arc<dyn Destination>;
    fn iot_analytics(&self, channel: &str, message_id_prefix: Option<&str>)
        -> Arc<dyn Destination>;
}

/// The AWS SDK's clients, from one shared configuration loaded on the
/// first send ([`super::aws::SharedSdkConfig`]).
#[derive(Default)]
pub struct AwsDestinations {
    config: Arc<super::aws::SharedSdkConfig>,
}

impl Destinations for AwsDestinations {
    fn kinesis(&self, stream_name: &str) -> Arc<dyn Destination> {
        Arc::new(kinesis::KinesisDestination::new(
            Arc::clone(&self.config),
            stream_name,
        ))
    }
    fn iot_analytics(&self, channel: &str, prefix: Option<&str>) -> Arc<dyn Destination> {
        Arc::new(iot_analytics::IotAnalyticsDestination::new(
            Arc::clone(&self.config),
            channel,
            prefix,
        ))
    }
}

/// One export as its pipeline runs it: what it was started from, to see
/// whether an update changed it.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    Kinesis {
        stream_name: String,
    },
    IotAnalytics {
        channel: String,
        prefix: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq)]
struct Wanted {
    target: Target,
    settings: PipelineSettings,
}

/// The exports of `definition` that should run now, and those weir cannot
/// run (with the reason their status shows).
fn wanted(
    definition: &MessageStreamDefinition,
    settings: &ExportSettings,
) -> (Vec<Wanted>, Vec<(String, String)>) {
    let exports = &definition.export_definition;
    let mut run = Vec::new();
    let mut cannot = Vec::new();
    let pipeline = |id: &str, batching: &Batching, max_batch: usize| PipelineSettings {
        identifier: id.to_owned(),
        batch_size: batching.batch_size.map_or(max_batch, |n| {
            usize::try_from(n).unwrap_or(max_batch).clamp(1, max_batch)
        }),
        batch_interval: batching
            .batch_interval_millis
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        priority: batching.priority.map_or(LOWEST_PRIORITY, |p| {
            u8::try_from(p).unwrap_or(LOWEST_PRIORITY)
        }),
        start_sequence_number: batching.start_sequence_number.unwrap_or(0),
    };
    let enabled = |batching: &Batching| batching.disabled != Some(true);
    for k in exports.kinesis.iter().filter(|k| enabled(&k.batching)) {
        run.push(Wanted {
            target: Target::Kinesis {
                stream_name: k.kinesis_stream_name.clone(),
            },
            settings: pipeline(&k.identifier, &k.batching, kinesis::MAX_RECORDS),
        });
    }
    for a in exports
        .iot_analytics
        .iter()
        .filter(|a| enabled(&a.batching))
    {
        let (target, max_batch) = match settings.redirect(&a.iot_channel) {
            Some(stream_name) => (
                Target::Kinesis {
                    stream_name: stream_name.to_owned(),
                },
                // The export's batchSize stays within its own model's limit.
                iot_analytics::MAX_MESSAGES,
            ),
            None => (
                Target::IotAnalytics {
                    channel: a.iot_channel.clone(),
                    prefix: a.iot_msg_id_prefix.clone(),
                },
                iot_analytics::MAX_MESSAGES,
            ),
        };
        run.push(Wanted {
            target,
            settings: pipeline(&a.identifier, &a.batching, max_batch),
        });
    }
    let not_built = |kind: &str| {
        format!("weir does not export to {kind} yet: nothing of this stream is sent there")
    };
    for h in exports.http.iter().filter(|h| enabled(&h.batching)) {
        cannot.push((h.identifier.clone(), not_built("HTTP")));
    }
    for s in exports.iot_sitewise.iter().filter(|s| enabled(&s.batching)) {
        cannot.push((s.identifier.clone(), not_built("IoT SiteWise")));
    }
    for s in &exports.s3_task_executor {
        cannot.push((s.identifier.clone(), not_built("S3")));
    }
    (run, cannot)
}

struct Running {
    wanted: Wanted,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub struct ExportManager {
    store: Arc<Store>,
    destinations: Arc<dyn Destinations>,
    settings: ExportSettings,
    gate: Arc<UploadGate>,
    clock: Arc<dyn Clock>,
    /// By stream, then export identifier.
    running: HashMap<String, HashMap<String, Running>>,
}

impl ExportManager {
    pub fn new(
        store: Arc<Store>,
        destinations: Arc<dyn Destinations>,
        settings: ExportSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let gate = Arc::new(UploadGate::new(
            settings.uploads_at_once,
            settings.max_bandwidth_kbps,
        ));
        ExportManager {
            store,
            destinations,
            settings,
            gate,
            clock,
            running: HashMap::new(),
        }
    }

    /// Runs the exports until `shutdown`, then stops every pipeline and
    /// waits for them (each stops at its next step; a batch in flight is
    /// sent again after the restart).
    pub async fn run(mut self, shutdown: CancellationToken) {
        // Subscribed before the list is read, so nothing falls between.
        let mut events = self.store.subscribe_events();
        self.reconcile_all().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Ok(StreamEvent::Created(definition) | StreamEvent::Updated(definition)) => {
                        self.reconcile(&definition).await;
                    }
                    Ok(StreamEvent::Deleted(name)) => self.stop_stream(&name).await,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "export manager caught up with the registry");
                        self.reconcile_all().await;
                    }
                    Err(RecvError::Closed) => break,
                },
            }
        }
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            self.stop_stream(&name).await;
        }
    }

    async fn reconcile_all(&mut self) {
        let definitions = self.store.definitions();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|name| !definitions.iter().any(|d| &d.name == *name))
            .cloned()
            .collect();
        for name in gone {
            self.stop_stream(&name).await;
        }
        for definition in &definitions {
            self.reconcile(definition).await;
        }
    }

    async fn stop_stream(&mut self, name: &str) {
        if let Some(pipelines) = self.running.remove(name) {
            for (_, running) in pipelines {
                stop(running).await;
            }
        }
    }

    /// Makes the running pipelines of `definition`'s stream what it asks.
    async fn reconcile(&mut self, definition: &MessageStreamDefinition) {
        let (wanted, cannot) = wanted(definition, &self.settings);
        let name = &definition.name;
        let mut current = self.running.remove(name).unwrap_or_default();
        let mut next = HashMap::new();
        for want in wanted {
            let id = want.settings.identifier.clone();
            match current.remove(&id) {
                // Unchanged and still going: keep it.
                Some(running) if running.wanted == want && !running.task.is_finished() => {
                    next.insert(id, running);
                    continue;
                }
                Some(old) => stop(old).await,
                None => {}
            }
            if let Some(running) = self.start(name, want) {
                next.insert(id, running);
            }
        }
        for (_, old) in current {
            stop(old).await;
        }
        if !next.is_empty() {
            self.running.insert(name.clone(), next);
        }
        if !cannot.is_empty() {
            self.report_cannot(name, cannot).await;
        }
    }

    fn start(&self, stream: &str, want: Wanted) -> Option<Running> {
        let reader = match self.store.export_reader(stream) {
            Ok(reader) => Arc::new(reader),
            // Deleted meanwhile: its event follows.
            Err(_) => return None,
        };
        let telemetry = &self.settings.telemetry;
        // Redirected IoT Analytics exports are Kinesis ones here.
        let (destination, uploaded) = match &want.target {
            Target::Kinesis { stream_name } => (
                self.destinations.kinesis(stream_name),
                &telemetry.bytes_uploaded_to_kinesis,
            ),
            Target::IotAnalytics { channel, prefix } => (
                self.destinations.iot_analytics(channel, prefix.as_deref()),
                &telemetry.bytes_uploaded_to_iot_analytics,
            ),
        };
        let pipeline = Pipeline {
            reader,
            destination,
            gate: Arc::clone(&self.gate),
            settings: want.settings.clone(),
            clock: Arc::clone(&self.clock),
            retry: self.settings.retry,
            uploaded: Some(Arc::clone(uploaded)),
        };
        let stop = CancellationToken::new();
        let stream = stream.to_owned();
        let id = want.settings.identifier.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let ended = pipeline.run(stop).await;
                tracing::info!(stream = %stream, export = %id, ?ended, "export ended");
            }
        });
        Some(Running {
            wanted: want,
            stop,
            task,
        })
    }

    /// Shows in the status of each export weir cannot run why not (once:
    /// nothing is saved if the status says so already).
    async fn report_cannot(&self, stream: &str, cannot: Vec<(String, String)>) {
        let Ok(reader) = self.store.export_reader(stream) else {
            return;
        };
        let reader = Arc::new(reader);
        let reported = tokio::task::spawn_blocking(move || {
            let Ok(progress) = reader.progress() else {
                return;
            };
            for (id, reason) in cannot {
                let Some(cursor) = progress.get(&id) else {
                    continue;
                };
                if cursor.error_message.as_deref() == Some(reason.as_str()) {
                    continue;
                }
                tracing::warn!(stream = %reader.name(), export = %id, "{reason}");
                let cursor = CursorState {
                    error_message: Some(reason),
                    ..cursor.clone()
                };
                if let Err(e) = reader.save_progress(&id, cursor) {
                    tracing::warn!(export = %id, error = %e, "export status not saved");
                }
            }
        })
        .await;
        // Only a panic in the task ends up here: its save errors are logged
        // inside it.
        if let Err(e) = reported {
            tracing::error!(stream, error = %e, "reporting exports weir cannot run failed");
        }
    }
}

async fn stop(running: Running) {
    running.stop.cancel();
    if let Err(e) = running.task.await {
        tracing::error!(error = %e, "an export pipeline failed");
    }
}

/// The exporters' own thread and runtime.
pub struct ExportThread {
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExportThread {
    /// Starts the export manager on a thread of its own, with the AWS SDK's
    /// clients.
    pub fn start(
        store: Arc<Store>,
        settings: ExportSettings,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<ExportThread> {
        let shutdown = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-export")
            .enable_all()
            .build()?;
        let token = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("weir-export".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let destinations = Arc::new(AwsDestinations::default());
                    ExportManager::new(store, destinations, settings, clock)
                        .run(token)
                        .await;
                });
                // A pipeline's blocking read or save may still be going.
                runtime.shutdown_timeout(Duration::from_secs(5));
            })?;
        Ok(ExportThread {
            shutdown,
            thread: Some(thread),
        })
    }

    /// Stops every export and waits for the thread.
    pub fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the export thread panicked");
            }
        }
    }
}
