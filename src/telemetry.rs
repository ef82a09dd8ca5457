//! Telemetry for the Greengrass v2 (classic) nucleus: the byte counts the
//! genuine stream manager reports (GREENGRASS.md 6), counted here and sent
//! as `aws.greengrass#PutComponentMetric` over the nucleus IPC
//! ([`crate::auth::ipc::IpcClient`]).
//!
//! * **Counting** ([`Telemetry`], shared by `Arc`): relaxed atomic adds, at
//!   two touch points only. `BytesAppended`: the payload bytes of an append
//!   when it is acknowledged with success ([`crate::server::dispatch`], the
//!   daemon's [`crate::server::dispatch::CountingStoreHandler`]).
//!   `BytesUploadedToKinesis` / `BytesUploadedToIoTAnalytics`: the payload
//!   bytes of the records a destination took, when an export's batch
//!   advances ([`crate::export::pipeline`]; the counter is picked by the
//!   export manager from where the records actually go, so an IoT
//!   Analytics export redirected to Kinesis counts as Kinesis).
//! * **Sending** ([`report`]): every interval (`WEIR_TELEMETRY_INTERVAL_MS`,
//!   60 s), the deltas since the last send the nucleus answered with
//!   success, so the nucleus's Sum over its window equals the totals; no
//!   send when nothing changed. A send the nucleus does not answer (down,
//!   restarting) keeps its bytes for the next one (logged once until a
//!   send works again). A send the nucleus refuses ends telemetry with one
//!   log line: nucleus lite has no `PutComponentMetric` (it answers
//!   `ServiceError`), and a component not named `aws.*` may not use it.

use crate::auth::ipc::{kind, IpcClient, Request};
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub const PUT_COMPONENT_METRIC: &str = "aws.greengrass#PutComponentMetric";
pub const PUT_COMPONENT_METRIC_REQUEST: &str = "aws.greengrass#PutComponentMetricRequest";
/// `WEIR_TELEMETRY_INTERVAL_MS`'s default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// A byte count that only grows.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// weir's counters, since it started.
#[derive(Debug, Default)]
pub struct Telemetry {
    pub bytes_appended: Arc<Counter>,
    pub bytes_uploaded_to_kinesis: Arc<Counter>,
    pub bytes_uploaded_to_iot_analytics: Arc<Counter>,
}

/// The counters at one moment, or the difference of two such.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub bytes_appended: u64,
    pub bytes_uploaded_to_kinesis: u64,
    pub bytes_uploaded_to_iot_analytics: u64,
}

impl Telemetry {
    pub fn totals(&self) -> Totals {
        Totals {
            bytes_appended: self.bytes_appended.total(),
            bytes_uploaded_to_kinesis: self.bytes_uploaded_to_kinesis.total(),
            bytes_uploaded_to_iot_analytics: self.bytes_uploaded_to_iot_analytics.total(),
        }
    }
}

impl Totals {
    /// What grew since `earlier`.
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            bytes_appended: self.bytes_appended.saturating_sub(earlier.bytes_appended),
            bytes_uploaded_to_kinesis: self
                .bytes_uploaded_to_kinesis
                .saturating_sub(earlier.bytes_uploaded_to_kinesis),
            bytes_uploaded_to_iot_analytics: self
                .bytes_uploaded_to_iot_analytics
                .saturating_sub(earlier.bytes_uploaded_to_iot_analytics),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Totals::default()
    }

    /// The `PutComponentMetric` request of these deltas (names and unit of
    /// GREENGRASS.md 6).
    pub fn request(&self) -> Request {
        let metric = |name: &str, value: u64| {
            format!(r#"{{"name":"{name}","unit":"BYTES","value":{value}}}"#)
        };
        let payload = format!(
            r#"{{"metrics":[{},{},{}]}}"#,
            metric("BytesAppended", self.bytes_appended),
            metric("BytesUploadedToKinesis", self.bytes_uploaded_to_kinesis),
            metric(
                "BytesUploadedToIoTAnalytics",
                self.bytes_uploaded_to_iot_analytics
            ),
        );
        Request {
            operation: PUT_COMPONENT_METRIC,
            model: PUT_COMPONENT_METRIC_REQUEST,
            payload: Bytes::from(payload),
        }
    }
}

/// Sends the deltas every `interval` until `shutdown`, or until the
/// nucleus refuses them (module doc).
pub async fn report(
    client: IpcClient,
    telemetry: Arc<Telemetry>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    // What the nucleus has been told.
    let mut told = Totals::default();
    let mut unanswered_logged = false;
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now = telemetry.totals();
        let delta = now.since(&told);
        if delta.is_zero() {
            continue;
        }
        let outcome = tokio::select! {
            outcome = client.call(delta.request()) => outcome,
            () = shutdown.cancelled() => return,
        };
        match outcome {
            Ok(reply) if reply.kind == kind::APPLICATION_MESSAGE => {
                told = now;
                if unanswered_logged {
                    tracing::info!("telemetry reaches the Greengrass nucleus again");
                    unanswered_logged = false;
                }
            }
            Ok(reply) => {
                let (code, detail) = reply.error().unwrap_or_default();
                tracing::warn!(
                    "the Greengrass nucleus refuses component metrics ({code}: {detail}); weir sends no telemetry from now on (nucleus lite has no PutComponentMetric)"
                );
                return;
            }
            Err(e) if !unanswered_logged => {
                tracing::warn!(error = %e, "telemetry not sent; its bytes go with the next send");
                unanswered_logged = true;
            }
            Err(e) => tracing::debug!(error = %e, "telemetry still not sent"),
        }
    }
}

#[cfg(test)]
mod tests;
