//! Kinesis Data Streams: PutRecords to the export's `kinesisStreamName`.
//! The data is the message's payload; each record gets a random partition
//! key, as the Java server does (records spread over the shards; order
//! across shards is not Kinesis's promise anyway).
//!
//! Limits (PutRecords): 500 records and 5 MiB (data and partition keys) a
//! call. A record's data may be at most 1 MiB by default, or 10 MiB on a
//! stream configured for it (October 2025): weir does not guess which, it
//! lets the service say. A call holding a record too large is refused
//! whole (`ValidationException`); the pipeline narrows it down to that
//! record and skips it. Only a record no stream could take (over 10 MiB)
//! is refused before sending.
//!
//! Failed entries of a partly failed call (`ProvisionedThroughputExceeded`,
//! `InternalFailure`, KMS trouble on an encrypted stream) are all sent
//! again: none of them says the record itself is bad.

use super::aws::{classify, LazyClient, SharedSdkConfig};
use super::destination::{Destination, Record, SendError, SendLimits, Sent};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use futures_util::future::BoxFuture;
use std::sync::Arc;

pub const MAX_RECORDS: usize = 500;
pub const MAX_REQUEST_BYTES: usize = 5 << 20;
/// The largest record data any Kinesis stream takes.
pub const MAX_RECORD_BYTES: usize = 10 << 20;
/// Hex digits of a random partition key (128 bits).
const PARTITION_KEY_LEN: usize = 32;

/// Codes meaning the request can never succeed as it is.
const INVALID: &[&str] = &["ValidationException", "InvalidArgumentException"];
/// Request fields that are the export's configuration: a refusal naming
/// them (a stream name Kinesis does not accept) is not about any record.
const CONFIG_FIELDS: &[&str] = &["streamName", "StreamName", "streamARN", "StreamARN"];
/// Codes worth a quick retry (besides every 5xx).
const TRANSIENT: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ThrottlingException",
    "InternalFailure",
    "ServiceUnavailable",
    "KMSThrottlingException",
];

pub struct KinesisDestination {
    /// Made on the first send.
    client: LazyClient<aws_sdk_kinesis::Client>,
    stream_name: String,
}

impl KinesisDestination {
    pub fn new(config: Arc<SharedSdkConfig>, stream_name: &str) -> Self {
        KinesisDestination {
            client: LazyClient::new(config, aws_sdk_kinesis::Client::new),
            stream_name: stream_name.to_owned(),
        }
    }
}

/// A fresh random partition key for each of `count` records, from one call
/// for the OS's randomness (a key per call was a system call and sixteen
/// small strings per record: a tenth of the export's instructions).
fn partition_keys(count: usize) -> Vec<String> {
    let mut random = vec![0u8; count * (PARTITION_KEY_LEN / 2)];
    // The key only spreads records over shards: without the OS's
    // randomness, a fixed one still delivers every record.
    let _ = getrandom::fill(&mut random);
    random
        .chunks_exact(PARTITION_KEY_LEN / 2)
        .map(hex::encode)
        .collect()
}

impl Destination for KinesisDestination {
    fn describe(&self) -> String {
        format!("Kinesis stream {}", self.stream_name)
    }

    fn limits(&self) -> SendLimits {
        SendLimits {
            max_records: MAX_RECORDS,
            max_request_bytes: MAX_REQUEST_BYTES,
        }
    }

    fn refuses(&self, record: &Record) -> Option<String> {
        (record.payload.len() > MAX_RECORD_BYTES).then(|| {
            format!(
                "{} bytes is more than any Kinesis record may hold ({MAX_RECORD_BYTES})",
                record.payload.len()
            )
        })
    }

    fn request_bytes(&self, record: &Record) -> usize {
        record.payload.len() + PARTITION_KEY_LEN
    }

    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(async move {
            let entries = records
                .iter()
                .zip(partition_keys(records.len()))
                .map(|(r, key)| {
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(r.payload.to_vec()))
                        .partition_key(key)
                        .build()
                        .map_err(|e| SendError::Unavailable(format!("building the request: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = self
                .client
                .get()
                .await
                .put_records()
                .stream_name(&self.stream_name)
                .set_records(Some(entries))
                .send()
                .await
                .map_err(|e| classify(&e, INVALID, TRANSIENT, CONFIG_FIELDS))?;
            if output.failed_record_count().unwrap_or(0) == 0 {
                return Ok(Sent::default());
            }
            if output.records().len() != records.len() {
                // Not what Kinesis answers: trust none of it, send all again.
                return Err(SendError::Transient(format!(
                    "PutRecords answered {} entries for {} records",
                    output.records().len(),
                    records.len()
                )));
            }
            let retry = output
                .records()
                .iter()
                .enumerate()
                .filter(|(_, entry)| entry.error_code().is_some())
                .map(|(i, _)| i)
                .collect();
            Ok(Sent {
                retry,
                rejected: Vec::new(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_gets_its_own_random_hex_key_of_128_bits() {
        let keys = partition_keys(500);
        assert_eq!(keys.len(), 500);
        for key in &keys {
            assert_eq!(key.len(), PARTITION_KEY_LEN, "{key}");
            assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
        }
        let distinct: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "keys repeat");
        assert!(partition_keys(0).is_empty());
    }
}
