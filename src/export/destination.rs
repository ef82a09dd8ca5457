//! The small client trait every export target implements, and the one
//! vocabulary of outcomes the pipeline ([`super::pipeline`]) acts on. A
//! destination only sends what it is given and says what happened; retrying,
//! skipping, ordering and progress are the pipeline's.

use bytes::Bytes;
use futures_util::future::BoxFuture;

/// One stream message on its way out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub sequence_number: i64,
    pub payload: Bytes,
}

/// What one send may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendLimits {
    /// Records per request.
    pub max_records: usize,
    /// Bytes per request, as [`Destination::request_bytes`] counts them.
    pub max_request_bytes: usize,
}

/// A send the destination answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Indexes (into the records sent) the service did not take this time
    /// but may take later (throttled, an internal failure): sent again,
    /// alone, after a backoff.
    pub retry: Vec<usize>,
    /// Indexes the service will never take, with its reason: skipped and
    /// reported.
    pub rejected: Vec<(usize, String)>,
}

/// A send the destination did not answer with per-record outcomes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth sending again soon: throttling, a 5xx, a timeout, a dropped
    /// connection.
    #[error("{0}")]
    Transient(String),
    /// The service refuses the request as invalid: some record in it can
    /// never be accepted. The pipeline narrows it down to that record.
    #[error("{0}")]
    InvalidRequest(String),
    /// The export cannot work as configured (no credentials, access denied,
    /// no such stream or channel, no endpoint): retried, slowly, and shown
    /// in the export status until it works.
    #[error("{0}")]
    Unavailable(String),
}

/// An export target: Kinesis Data Streams, IoT Analytics (or where its
/// exports are sent instead), a test double.
pub trait Destination: Send + Sync {
    /// Where records go, for the log and the status ("Kinesis stream x").
    fn describe(&self) -> String;

    fn limits(&self) -> SendLimits;

    /// Why `record` can never be sent (too large), checked before it is;
    /// `None` if it may be.
    fn refuses(&self, record: &Record) -> Option<String>;

    /// What `record` adds to a request, for the request limit and the
    /// bandwidth cap.
    fn request_bytes(&self, record: &Record) -> usize;

    /// Sends `records` (at most [`Destination::limits`]) in one request.
    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Sent, SendError>>;
}
