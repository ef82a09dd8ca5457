//! One pipeline per (stream, export definition): cursor → batch → send →
//! retry → advance.
//!
//! * **Cursor.** The pipeline starts from the progress the store holds for
//!   its export ([`ExportReader::progress`], saved beside the stream's
//!   segments, [`crate::store::export_cursor`]): after a restart it resumes
//!   there, never at `startSequenceNumber` again.
//! * **Batch.** A batch is due when `batchSize` messages are there or, with
//!   `batchIntervalMillis`, when the interval has passed since the first of
//!   them arrived (without it, as soon as there is one). Only durable
//!   messages are exported: when a batch is due and some of it is not yet
//!   synced, the pipeline asks for the sync rather than wait for the
//!   background one. So the cloud never holds a record whose sequence
//!   number a power cut lets weir reissue with other data.
//! * **Send.** Through the server's [`UploadGate`] (uploads at once,
//!   bandwidth, priority), in requests within the destination's limits.
//! * **Retry.** Throttling, 5xx, timeouts, dropped connections and an
//!   export that cannot work yet (credentials, a missing stream) are sent
//!   again after a capped exponential backoff with full jitter
//!   ([`RetryPolicy`]), without end. After a partly failed request only the
//!   failed records go again, so order is kept except for those. A request
//!   refused as invalid is split until the record the service can never
//!   take is found; that record is skipped, counted and reported, and the
//!   others go.
//! * **Advance.** Once every record of the batch was taken (or skipped),
//!   the cursor moves past it and is saved (atomically, with an fsync). The
//!   save overlaps the next batch's read and send (at most one save is
//!   outstanding, and a stop waits for it), so the fsync costs no export
//!   time: a message is sent twice only if weir stopped between the
//!   cloud's answer and that save, which after a crash can be the batch
//!   whose save was being written as well as the one in flight.
//!
//! An export's trouble shows in its status's `errorMessage` (describe) and
//! in the log once per change, not once per retry; it is cleared when a
//! batch goes through. Messages retention removed before they were exported
//! are counted with the skipped ones and reported the same way.

use super::destination::{Destination, Record, SendError, Sent};
use super::gate::UploadGate;
use crate::clock::Clock;
use crate::store::export_cursor::CursorState;
use crate::store::export_reader::{ExportReader, Waited};
use crate::store::StoreError;
use backon::BackoffBuilder;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a pipeline waits on one wait before it looks again; only bounds
/// a wait that nothing would end (the stream's signals end the others).
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// The per-export settings the pipeline follows (from the export's
/// definition, with the SDK model's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineSettings {
    pub identifier: String,
    /// Messages per batch (the destination's limit when not set).
    pub batch_size: usize,
    /// Without it a batch goes as soon as there is a message.
    pub batch_interval: Option<Duration>,
    /// 1 (highest) to 10.
    pub priority: u8,
    pub start_sequence_number: i64,
}

/// Capped exponential backoff with full jitter: the n-th wait is uniform in
/// `[0, min(max, first · 2ⁿ)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first: Duration::from_millis(200),
            max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The waits of one run of retries, endless. backon gives the capped
    /// exponential sequence; its own jitter only adds to a delay (between d
    /// and 2d), so the full jitter is drawn here.
    fn delays(&self) -> impl Iterator<Item = Duration> {
        backon::ExponentialBuilder::new()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .without_max_times()
            .build()
            .map(|cap| cap.mul_f64(unit_random()))
    }
}

/// A uniform draw from [0, 1].
fn unit_random() -> f64 {
    // If the OS has no randomness to give, no jitter is better than none
    // at all of a wait: the full cap.
    getrandom::u64().map_or(1.0, |r| (r >> 11) as f64 / (1u64 << 53) as f64)
}

/// Why a pipeline ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Asked to (shutdown, the export was changed or removed).
    Stopped,
    /// The stream was deleted.
    StreamDeleted,
    /// The definition no longer has this export as the pipeline knows it
    /// (an update changed it); the manager starts its successor.
    Replaced,
}

pub struct Pipeline {
    pub reader: Arc<ExportReader>,
    pub destination: Arc<dyn Destination>,
    pub gate: Arc<UploadGate>,
    pub settings: PipelineSettings,
    pub clock: Arc<dyn Clock>,
    pub retry: RetryPolicy,
    /// Where the payload bytes the destination took are counted for
    /// telemetry (`BytesUploadedTo...`, [`crate::telemetry`]), when a batch
    /// advances; the manager picks it from where the records go.
    pub uploaded: Option<Arc<crate::telemetry::Counter>>,
}

/// What one batch came to, for the cursor.
#[derive(Default)]
struct BatchReport {
    exported_messages: i64,
    exported_bytes: i64,
    skipped: Vec<String>,
    skipped_messages: i64,
}

/// Stops the pipeline on the way out of any step.
enum Halt {
    Ended(Ended),
    /// A store failure other than the stream's deletion (or a read that
    /// panicked), retried.
    Failed(String),
}

impl From<StoreError> for Halt {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Halt::Ended(Ended::StreamDeleted),
            other => Halt::Failed(other.to_string()),
        }
    }
}

impl Pipeline {
    /// Runs until `stop` is cancelled, the stream is deleted or the export
    /// replaced.
    pub async fn run(self, stop: CancellationToken) -> Ended {
        let mut run = Run {
            cursor: match self.reader.progress() {
                Ok(progress) => progress
                    .get(&self.settings.identifier)
                    .cloned()
                    .unwrap_or_else(|| {
                        CursorState::starting_at(self.settings.start_sequence_number)
                    }),
                Err(_) => return Ended::StreamDeleted,
            },
            failing: None,
            saving: None,
            pipeline: &self,
            stop: &stop,
        };
        tracing::info!(
            stream = %self.reader.name(),
            export = %self.settings.identifier,
            to = %self.destination.describe(),
            from = run.cursor.next_sequence_number(),
            "export started"
        );
        let mut store_retries = self.retry.delays();
        let ended = loop {
            match run.one_batch().await {
                Ok(()) => store_retries = self.retry.delays(),
                Err(Halt::Ended(ended)) => break ended,
                Err(Halt::Failed(e)) => {
                    run.failing_now(format!("reading or saving the stream failed: {e}"))
                        .await;
                    let wait = store_retries.next().unwrap_or(self.retry.max);
                    if run.pause(wait).await.is_err() {
                        break Ended::Stopped;
                    }
                }
            }
        };
        // A save still being written is finished first.
        match run.settle().await {
            Err(Halt::Ended(replaced_or_deleted)) if ended == Ended::Stopped => replaced_or_deleted,
            _ => ended,
        }
    }
}

struct Run<'a> {
    pipeline: &'a Pipeline,
    stop: &'a CancellationToken,
    cursor: CursorState,
    /// The trouble logged and shown last; `None` while all goes well.
    failing: Option<String>,
    /// The progress save still being written, if any.
    saving: Option<tokio::task::JoinHandle<Result<bool, StoreError>>>,
}

impl Run<'_> {
    fn id(&self) -> &str {
        &self.pipeline.settings.identifier
    }

    /// Waits `wait` unless stopped first.
    async fn pause(&self, wait: Duration) -> Result<(), Halt> {
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            () = self.stop.cancelled() => Err(Halt::Ended(Ended::Stopped)),
        }
    }

    /// Waits for `future` unless stopped first.
    async fn unless_stopped<T>(
        &self,
        future: impl std::future::Future<Output = T>,
    ) -> Result<T, Halt> {
        tokio::select! {
            value = future => Ok(value),
            () = self.stop.cancelled() => Err(Halt::Ended(Ended::Stopped)),
        }
    }

    async fn one_batch(&mut self) -> Result<(), Halt> {
        let settings = &self.pipeline.settings;
        let reader = &self.pipeline.reader;
        let from = self.cursor.next_sequence_number();
        // Due: a message is there ...
        while self
            .unless_stopped(reader.wait_for_appended(from, Instant::now() + IDLE_WAIT))
            .await??
            == Waited::TimedOut
        {}
        // ... and, with an interval, a full batch or the interval passed.
        if let Some(interval) = settings.batch_interval {
            let last_of_full = from.saturating_add(settings.batch_size as i64 - 1);
            self.unless_stopped(reader.wait_for_appended(last_of_full, Instant::now() + interval))
                .await??;
        }
        let bounds = reader.bounds()?;
        let start = from.max(bounds.oldest_retained);
        let end = bounds
            .appended_next
            .min(start.saturating_add(settings.batch_size as i64));
        if bounds.durable_next < end {
            self.unless_stopped(reader.request_sync()).await??;
        }
        let limits = self.pipeline.destination.limits();
        let batch = {
            let reader = Arc::clone(reader);
            let max_count = settings.batch_size.min(limits.max_records);
            let max_bytes = limits.max_request_bytes;
            tokio::task::spawn_blocking(move || reader.read(from, max_count, max_bytes))
                .await
                .map_err(|e| Halt::Failed(format!("export read: {e}")))??
        };
        let mut report = BatchReport::default();
        let gone = batch.skipped(from);
        if gone > 0 {
            let message = format!(
                "{gone} messages ({from} to {}) were removed by the stream's retention before they were exported",
                from + gone - 1
            );
            tracing::warn!(stream = %reader.name(), export = %self.id(), "{message}");
            report.skipped.push(message);
            report.skipped_messages += gone;
        }
        let Some(last) = batch.messages.last().map(|m| m.sequence_number) else {
            if gone > 0 {
                return self.advance(batch.next(from) - 1, report).await;
            }
            // Nothing durable after all (the sync did not get there): the
            // next round waits again.
            return Ok(());
        };
        let records: Vec<Record> = batch
            .messages
            .into_iter()
            .map(|m| Record {
                sequence_number: m.sequence_number,
                payload: m.payload,
            })
            .collect();
        self.send_all(records, &mut report).await?;
        self.advance(last, report).await
    }

    /// Sends every record, in order, until each was taken or skipped.
    async fn send_all(
        &mut self,
        records: Vec<Record>,
        report: &mut BatchReport,
    ) -> Result<(), Halt> {
        let destination = Arc::clone(&self.pipeline.destination);
        let mut sendable = Vec::with_capacity(records.len());
        for record in records {
            match destination.refuses(&record) {
                Some(reason) => self.skip(&record, reason, report),
                None => sendable.push(record),
            }
        }
        let mut requests: VecDeque<Vec<Record>> = split_into_requests(&*destination, sendable);
        while let Some(mut pending) = requests.pop_front() {
            let mut delays = self.pipeline.retry.delays();
            loop {
                let bytes = pending.iter().map(|r| destination.request_bytes(r)).sum();
                let admitted = self
                    .unless_stopped(
                        self.pipeline
                            .gate
                            .admit(self.pipeline.settings.priority, bytes),
                    )
                    .await?;
                let result = self.unless_stopped(destination.send(&pending)).await?;
                drop(admitted);
                match result {
                    Ok(Sent { retry, rejected }) => {
                        let mut retry_records = Vec::with_capacity(retry.len());
                        let mut not_taken = vec![false; pending.len()];
                        for (index, reason) in rejected {
                            if let Some(record) = pending.get(index) {
                                not_taken[index] = true;
                                self.skip(record, reason, report);
                            }
                        }
                        for index in retry {
                            if let Some(record) = pending.get(index) {
                                if !not_taken[index] {
                                    not_taken[index] = true;
                                    retry_records.push(record.clone());
                                }
                            }
                        }
                        for (record, not_taken) in pending.iter().zip(&not_taken) {
                            if !not_taken {
                                report.exported_messages += 1;
                                report.exported_bytes += record.payload.len() as i64;
                            }
                        }
                        if retry_records.is_empty() {
                            break;
                        }
                        let reason = format!(
                            "{} of {} records were not taken by {} (throttled or an internal failure); sending them again",
                            retry_records.len(),
                            pending.len(),
                            destination.describe()
                        );
                        self.failing_now(reason).await;
                        pending = retry_records;
                    }
                    Err(SendError::InvalidRequest(reason)) if pending.len() == 1 => {
                        self.skip(&pending[0], reason, report);
                        break;
                    }
                    Err(SendError::InvalidRequest(_)) => {
                        // One of them can never go: halve until it is alone.
                        let second = pending.split_off(pending.len() / 2);
                        requests.push_front(second);
                        requests.push_front(pending);
                        break;
                    }
                    Err(SendError::Transient(reason) | SendError::Unavailable(reason)) => {
                        self.failing_now(format!("{}: {reason}", destination.describe()))
                            .await;
                    }
                }
                let wait = delays.next().unwrap_or(self.pipeline.retry.max);
                self.pause(wait).await?;
            }
        }
        Ok(())
    }

    fn skip(&self, record: &Record, reason: String, report: &mut BatchReport) {
        let message = format!(
            "message {} ({} bytes) was skipped: {} will never take it: {reason}",
            record.sequence_number,
            record.payload.len(),
            self.pipeline.destination.describe()
        );
        tracing::error!(stream = %self.pipeline.reader.name(), export = %self.id(), "{message}");
        report.skipped.push(message);
        report.skipped_messages += 1;
    }

    /// Moves the cursor past `last` and saves it.
    async fn advance(&mut self, last: i64, report: BatchReport) -> Result<(), Halt> {
        let mut next = self.cursor.clone();
        next.last_exported_sequence_number = Some(last);
        next.last_export_time = Some(self.pipeline.clock.now_millis());
        next.exported_messages_count += report.exported_messages;
        next.exported_bytes_from_stream += report.exported_bytes;
        if let Some(uploaded) = &self.pipeline.uploaded {
            uploaded.add(u64::try_from(report.exported_bytes).unwrap_or(0));
        }
        next.skipped_messages += report.skipped_messages;
        next.error_message = match report.skipped.len() {
            0 => None,
            1 => report.skipped.into_iter().next(),
            n => Some(format!(
                "{n} problems in the last batch; the first: {}",
                report.skipped[0]
            )),
        };
        if self.failing.is_some() && next.error_message.is_none() {
            tracing::info!(stream = %self.pipeline.reader.name(), export = %self.id(), "export works again");
        }
        self.failing = next.error_message.clone();
        // The save overlaps the next batch's read and send: a stop waits
        // for it, a crash before it ends sends this batch again (its
        // records were answered, their cursor not yet written).
        self.settle().await?;
        self.start_saving(next);
        Ok(())
    }

    /// Shows `reason` as the export's trouble: logged and saved once per
    /// change, not once per retry.
    async fn failing_now(&mut self, reason: String) {
        if self.failing.as_deref() == Some(reason.as_str()) {
            return;
        }
        tracing::warn!(
            stream = %self.pipeline.reader.name(),
            export = %self.id(),
            "export failing, will retry: {reason}"
        );
        self.failing = Some(reason.clone());
        let mut next = self.cursor.clone();
        next.error_message = Some(reason);
        // The status is for people; if it cannot be saved, the export goes
        // on (its position is saved with the next batch).
        if let Err(Halt::Failed(e)) = self.save(next).await {
            tracing::warn!(export = %self.id(), error = %e, "export status not saved");
        }
    }

    /// Saves `next` and waits for it (and for any save before it).
    async fn save(&mut self, next: CursorState) -> Result<(), Halt> {
        self.settle().await?;
        self.start_saving(next);
        self.settle().await
    }

    /// Starts saving `next` (the in-memory cursor moves there at once);
    /// [`Run::settle`] waits for it. At most one save is outstanding.
    fn start_saving(&mut self, next: CursorState) {
        debug_assert!(self.saving.is_none());
        let reader = Arc::clone(&self.pipeline.reader);
        let id = self.id().to_owned();
        let saved = next.clone();
        self.saving = Some(tokio::task::spawn_blocking(move || {
            reader.save_progress(&id, saved)
        }));
        self.cursor = next;
    }

    /// Waits for the outstanding save, if any. Not cut short by a stop: a
    /// cursor being written is finished, so a clean stop sends nothing
    /// twice.
    async fn settle(&mut self) -> Result<(), Halt> {
        let Some(saving) = self.saving.take() else {
            return Ok(());
        };
        let recorded = saving
            .await
            .map_err(|e| Halt::Failed(format!("export save: {e}")))??;
        if !recorded {
            return Err(Halt::Ended(Ended::Replaced));
        }
        Ok(())
    }
}

/// `records` in requests within the destination's limits, in order; a
/// record larger than a request's byte limit goes alone.
fn split_into_requests(
    destination: &dyn Destination,
    records: Vec<Record>,
) -> VecDeque<Vec<Record>> {
    let limits = destination.limits();
    let mut requests = VecDeque::new();
    let mut current: Vec<Record> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = destination.request_bytes(&record);
        if !current.is_empty()
            && (current.len() >= limits.max_records || bytes + size > limits.max_request_bytes)
        {
            requests.push_back(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(record);
    }
    if !current.is_empty() {
        requests.push_back(current);
    }
    requests
}
