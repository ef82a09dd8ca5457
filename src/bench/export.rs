//! `weir-bench export`: export throughput against the ceiling of the same
//! SDK calling PutRecords directly, in one run, against the Kinesis
//! endpoint of `AWS_ENDPOINT_URL_KINESIS` (a local stand-in).
//!
//! 1. Ceiling: `--records` records of `--payload` bytes sent with
//!    [`KinesisDestination`] directly, 500 a call, one call at a time (what
//!    one export does).
//! 2. weir: the same records appended to a `File` stream of an in-process
//!    store with one Kinesis export; the export manager (the AWS SDK's
//!    clients, as weir runs them) drains the backlog; timed from the
//!    manager's start to the last record exported.
//! 3. With `--max-bandwidth-kbps`: the drain again under that cap; the
//!    measured payload rate is printed next to the cap.

use super::BoxError;
use crate::clock::SystemClock;
use crate::export::destination::{Destination, Record};
use crate::export::kinesis::KinesisDestination;
use crate::export::manager::{AwsDestinations, ExportManager, ExportSettings};
use crate::protocol::model::{
    Batching, ExportDefinition, KinesisConfig, MessageStreamDefinition, Persistence,
};
use crate::store::fs::StdFs;
use crate::store::{Store, StoreLimits};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// Records per phase.
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Kinesis stream to send to (created if missing).
    #[arg(long, default_value = "weir-bench-export")]
    kinesis_stream: String,
    /// Also drain under this cap (kbit/s) and report the rate reached.
    #[arg(long)]
    max_bandwidth_kbps: Option<u64>,
    /// Records of the capped phase.
    #[arg(long, default_value_t = 2_000)]
    capped_records: usize,
}

pub async fn run(args: ExportArgs) -> Result<(), BoxError> {
    let shared = crate::export::aws::SharedSdkConfig::new();
    ensure_stream(shared.get().await, &args.kinesis_stream).await?;
    let payload = Bytes::from(vec![b'x'; args.payload]);

    // 1. The ceiling: the SDK alone.
    let direct = KinesisDestination::new(Arc::clone(&shared), &args.kinesis_stream);
    let records: Vec<Record> = (0..args.records as i64)
        .map(|i| Record {
            sequence_number: i,
            payload: payload.clone(),
        })
        .collect();
    let started = Instant::now();
    for chunk in records.chunks(crate::export::kinesis::MAX_RECORDS) {
        let mut pending = chunk.to_vec();
        while !pending.is_empty() {
            let sent = direct
                .send(&pending)
                .await
                .map_err(|e| format!("direct PutRecords: {e}"))?;
            pending = sent.retry.iter().map(|&i| pending[i].clone()).collect();
        }
    }
    let ceiling = started.elapsed();
    report(
        "ceiling (SDK PutRecords directly)",
        args.records,
        args.payload,
        ceiling,
    );

    // 2. weir's exporter draining a backlog.
    let exported = drain(&args, args.records, None).await?;
    report("weir export", args.records, args.payload, exported);
    println!(
        "ratio (weir / ceiling records per second): {:.2}",
        ceiling.as_secs_f64() / exported.as_secs_f64()
    );

    // 3. Under a bandwidth cap.
    if let Some(cap) = args.max_bandwidth_kbps {
        let took = drain(&args, args.capped_records, Some(cap)).await?;
        // What the cap counts: each record's data and partition key.
        let per_record = args.payload + 32;
        let kbps = (args.capped_records * per_record) as f64 * 8.0 / 1000.0 / took.as_secs_f64();
        println!(
            "bandwidth: cap {cap} kbit/s, measured {kbps:.1} kbit/s of record data and keys ({:.3} of the cap) over {:.1} s",
            kbps / cap as f64,
            took.as_secs_f64()
        );
    }
    Ok(())
}

fn report(what: &str, records: usize, payload: usize, took: Duration) {
    let secs = took.as_secs_f64();
    println!(
        "{what}: {records} records of {payload} B in {secs:.2} s: {:.0} records/s, {:.2} MB/s",
        records as f64 / secs,
        (records * payload) as f64 / secs / 1e6
    );
}

async fn ensure_stream(config: &aws_config::SdkConfig, name: &str) -> Result<(), BoxError> {
    let client = aws_sdk_kinesis::Client::new(config);
    // Already there is fine; any other failure shows up at the first send.
    let _ = client
        .create_stream()
        .stream_name(name)
        .shard_count(1)
        .send()
        .await;
    for _ in 0..100 {
        let described = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await;
        if let Ok(out) = described {
            if out
                .stream_description_summary()
                .is_some_and(|d| d.stream_status().as_str() == "ACTIVE")
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("Kinesis stream {name} did not become active").into())
}

/// Appends `records` to a fresh `File` stream with one Kinesis export, then
/// runs the export manager until all are exported; returns how long that
/// took.
async fn drain(args: &ExportArgs, records: usize, cap: Option<u64>) -> Result<Duration, BoxError> {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(SystemClock);
    let store = Arc::new(Store::open(
        Arc::new(StdFs),
        dir.path(),
        clock.clone(),
        StoreLimits {
            max_read_bytes: crate::config::DEFAULT_MAX_READ_BYTES,
        },
    )?);
    let name = "bench";
    store.create(MessageStreamDefinition {
        persistence: Persistence::File,
        export_definition: ExportDefinition {
            kinesis: vec![KinesisConfig {
                identifier: "k".into(),
                kinesis_stream_name: args.kinesis_stream.clone(),
                batching: Batching::default(),
            }],
            ..ExportDefinition::default()
        },
        ..MessageStreamDefinition::with_defaults(name.into())
    })?;
    let payload = Bytes::from(vec![b'y'; args.payload]);
    for _ in 0..records {
        let appended = store.append(name, payload.clone())?;
        store.confirm(name, appended.ticket)?;
    }
    store.sync_all().await;
    let settings = ExportSettings {
        max_bandwidth_kbps: cap,
        ..ExportSettings::default()
    };
    let manager = ExportManager::new(
        Arc::clone(&store),
        Arc::new(AwsDestinations::default()),
        settings,
        clock,
    );
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(manager.run(stop.clone()));
    let last = records as i64 - 1;
    loop {
        let status = &store.describe(name)?.export_statuses[0];
        if status.last_exported_sequence_number >= last {
            break;
        }
        if let Some(error) = &status.error_message {
            if started.elapsed() > Duration::from_secs(120) {
                return Err(format!("the export did not finish: {error}").into());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    stop.cancel();
    task.await?;
    Ok(took)
}
