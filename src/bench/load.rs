//! The native load generator.

use super::client::{self, Frames};
use crate::protocol::Operation;
use bytes::BytesMut;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::BoxError;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// A running weir to load; without it weir is started in-process on a
    /// free port with a temporary store and authentication off.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Token for a server with authentication on (default: the
    /// AWS_CONTAINER_AUTHORIZATION_TOKEN environment variable).
    #[arg(long)]
    token: Option<String>,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Appends in flight per connection.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Appends in all.
    #[arg(long, default_value_t = 400_000)]
    messages: usize,
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// `memory` or `file`.
    #[arg(long, default_value = "file")]
    persistence: String,
    #[arg(long)]
    flush_on_write: bool,
    /// Messages per read request in the read phase.
    #[arg(long, default_value_t = 100)]
    read_batch: i64,
    /// Kinesis exports of the loaded stream (to --kinesis-stream), to
    /// measure appends while exports run.
    #[arg(long, default_value_t = 0)]
    exports: usize,
    #[arg(long, default_value = "weir-bench")]
    kinesis_stream: String,
}

pub async fn run(args: LoadArgs) -> Result<(), BoxError> {
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("AWS_CONTAINER_AUTHORIZATION_TOKEN").ok());
    let shutdown = CancellationToken::new();
    let (addr, server) = match args.addr {
        Some(addr) => (addr, None),
        None => {
            let (addr, task, dir) = start_in_process(shutdown.clone()).await?;
            (addr, Some((task, dir)))
        }
    };
    let stream = "weir-bench";
    let (mut frames, mut writer) = client::connect(addr, token.as_deref()).await?;
    client::call(
        &mut frames,
        &mut writer,
        Operation::DeleteMessageStream,
        &client::delete_stream("d", stream),
    )
    .await?;
    let created = client::call(
        &mut frames,
        &mut writer,
        Operation::CreateMessageStream,
        &client::create_stream(
            "c",
            stream,
            args.persistence == "memory",
            args.flush_on_write,
            &(0..args.exports)
                .map(|i| (format!("export-{i}"), args.kinesis_stream.clone()))
                .collect::<Vec<_>>(),
        ),
    )
    .await?;
    if created != 0 {
        return Err(format!("create failed with status {created}").into());
    }

    let per_connection = args.messages / args.connections;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (frames, writer) = client::connect(addr, token.as_deref()).await?;
        tasks.push(tokio::spawn(append_load(
            frames,
            writer,
            per_connection,
            args.in_flight,
            args.payload,
            stream,
        )));
    }
    let mut latencies = Vec::with_capacity(args.messages);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let total = latencies.len();
    println!(
        "append: {} x {} B, {} connections x {} in flight, persistence {}{}",
        total,
        args.payload,
        args.connections,
        args.in_flight,
        args.persistence,
        if args.flush_on_write {
            " + flushOnWrite"
        } else {
            ""
        }
    );
    println!(
        "append: {:.0} appends/s, latency p50 {} us, p99 {} us, max {} us",
        total as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_micros(),
        percentile(&latencies, 0.99).as_micros(),
        latencies.last().copied().unwrap_or_default().as_micros(),
    );

    let started = Instant::now();
    let read = read_all(
        &mut frames,
        &mut writer,
        stream,
        total as i64,
        args.read_batch,
    )
    .await?;
    let elapsed = started.elapsed();
    println!(
        "read: {read} messages in batches of {}, one connection: {:.0} messages/s",
        args.read_batch,
        read as f64 / elapsed.as_secs_f64()
    );
    shutdown.cancel();
    if let Some((thread, _dir)) = server {
        thread
            .join()
            .map_err(|_| "the in-process weir panicked")??;
    }
    Ok(())
}

/// Starts weir on its own thread with a single-threaded runtime, as the
/// `weir` binary runs it, so the load generator does not share its runtime.
async fn start_in_process(
    shutdown: CancellationToken,
) -> Result<
    (
        SocketAddr,
        std::thread::JoinHandle<Result<(), BoxError>>,
        tempfile::TempDir,
    ),
    BoxError,
> {
    let dir = tempfile::tempdir()?;
    let mut config = crate::config::Config::from_lookup(|_| None)?;
    config.port = 0;
    config.authenticate_client = false;
    config.store_root = dir.path().to_owned();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || -> Result<(), BoxError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(crate::daemon::run(config, shutdown, move |addr| {
            // The receiver waits below; it is only gone if that await was
            // cancelled, and then nobody needs the address.
            ready_tx.send(addr).ok();
        }))?;
        Ok(())
    });
    let addr = ready_rx.await.map_err(|_| "weir did not start")?;
    Ok((addr, thread, dir))
}

/// Appends `count` messages keeping `in_flight` unanswered, returning each
/// append's latency. Appends on one connection are answered in order.
async fn append_load(
    mut frames: Frames,
    mut writer: OwnedWriteHalf,
    count: usize,
    in_flight: usize,
    payload_size: usize,
    stream: &'static str,
) -> Result<Vec<Duration>, BoxError> {
    let payload = vec![0x5a; payload_size];
    let window = Arc::new(Semaphore::new(in_flight));
    let sent_at = Arc::new(std::sync::Mutex::new(VecDeque::with_capacity(in_flight)));
    let sender = {
        let window = Arc::clone(&window);
        let sent_at = Arc::clone(&sent_at);
        tokio::spawn(async move {
            // Pipelining: every request the window allows right now goes
            // out in one write, as redis-benchmark -P does.
            let mut buf = BytesMut::new();
            let mut i = 0;
            while i < count {
                window.acquire().await?.forget();
                let mut burst = 1;
                while i + burst < count && window.try_acquire().map(|p| p.forget()).is_ok() {
                    burst += 1;
                }
                let now = Instant::now();
                for n in i..i + burst {
                    client::frame(
                        Operation::AppendMessage,
                        &client::append(&n.to_string(), stream, &payload),
                        &mut buf,
                    );
                }
                sent_at
                    .lock()
                    .expect("bench lock")
                    .extend(std::iter::repeat_n(now, burst));
                writer.write_all(&buf).await?;
                buf.clear();
                i += burst;
            }
            Ok::<_, BoxError>(writer)
        })
    };
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let answer = frames.next().await?;
        let sent = sent_at
            .lock()
            .expect("bench lock")
            .pop_front()
            .ok_or("answer without a request")?;
        latencies.push(sent.elapsed());
        if !client::succeeded(&answer.payload, false) {
            return Err(format!(
                "append failed: status {:?}",
                client::status_of(&answer.payload)
            )
            .into());
        }
        window.add_permits(1);
    }
    sender.await??;
    Ok(latencies)
}

/// Reads messages 0..total in batches, keeping 8 reads in flight.
async fn read_all(
    frames: &mut Frames,
    writer: &mut OwnedWriteHalf,
    stream: &str,
    total: i64,
    batch: i64,
) -> Result<i64, BoxError> {
    let requests: Vec<i64> = (0..total).step_by(batch as usize).collect();
    let mut next = 0;
    let mut pending = 0;
    let mut read = 0;
    let mut buf = BytesMut::new();
    while next < requests.len() || pending > 0 {
        while pending < 8 && next < requests.len() {
            client::frame(
                Operation::ReadMessages,
                &client::read("r", stream, requests[next], batch),
                &mut buf,
            );
            next += 1;
            pending += 1;
        }
        writer.write_all(&buf).await?;
        buf.clear();
        let answer = frames.next().await?;
        pending -= 1;
        // A read answer ends with its status; every batch but the last is
        // full, and the last holds the rest.
        if !client::succeeded(&answer.payload, true) {
            return Err(format!(
                "read failed: status {:?}",
                client::status_of(&answer.payload)
            )
            .into());
        }
        read += batch.min(total - read);
    }
    Ok(read)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
