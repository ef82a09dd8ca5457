//! A request handler that stores nothing: appends get increasing sequence
//! numbers, reads get `maxMessageCount` copies of a fixed payload at once.

use crate::protocol::model::{Message, MessageStreamDefinition, MessageStreamInfo, StorageStatus};
use crate::protocol::{Reply, ReplyBody, Request, RequestBody};
use crate::server::dispatch::{Handled, RequestHandler};
use crate::server::{self, ServerContext};
use bytes::Bytes;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct NullArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Payload size of the messages reads return.
    #[arg(long, default_value_t = 100)]
    read_payload: usize,
}

pub struct NullHandler {
    next: AtomicI64,
    payload: Bytes,
    /// A real wall-clock time, so answers are the same size as weir's.
    ingest_time: i64,
}

impl NullHandler {
    pub fn new(read_payload: usize) -> Self {
        NullHandler {
            next: AtomicI64::new(0),
            payload: Bytes::from(vec![b'x'; read_payload]),
            ingest_time: crate::clock::Clock::now_millis(&crate::clock::SystemClock),
        }
    }
}

impl RequestHandler for NullHandler {
    fn handle(&self, request: Request) -> Handled {
        let body = match request.body {
            RequestBody::CreateMessageStream { .. } => ReplyBody::CreateMessageStream(Ok(())),
            RequestBody::DeleteMessageStream { .. } => ReplyBody::DeleteMessageStream(Ok(())),
            RequestBody::UpdateMessageStream { .. } => ReplyBody::UpdateMessageStream(Ok(())),
            RequestBody::AppendMessage { .. } => {
                ReplyBody::AppendMessage(Ok(self.next.fetch_add(1, Ordering::Relaxed)))
            }
            RequestBody::ListStreams => ReplyBody::ListStreams(Ok(Vec::new())),
            RequestBody::DescribeMessageStream { name } => {
                let def = MessageStreamDefinition::with_defaults(name);
                ReplyBody::DescribeMessageStream(Ok(Box::new(MessageStreamInfo {
                    definition: def,
                    storage_status: StorageStatus {
                        oldest_sequence_number: 0,
                        newest_sequence_number: -1,
                        total_bytes: 0,
                    },
                    export_statuses: Vec::new(),
                })))
            }
            RequestBody::ReadMessages {
                stream_name,
                options,
            } => {
                let start = options.desired_start_sequence_number;
                let messages = (0..options.max_message_count)
                    .map(|i| Message {
                        sequence_number: start + i,
                        ingest_time: self.ingest_time,
                        payload: self.payload.clone(),
                    })
                    .collect();
                ReplyBody::ReadMessages {
                    stream_name,
                    result: Ok(messages),
                }
            }
        };
        Handled::Now(Reply {
            request_id: request.request_id,
            body,
        })
    }
}

pub async fn run(args: NullArgs) -> Result<(), super::BoxError> {
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    // Same line as the real server, so the same harness can start either.
    eprintln!("weir null-server listening on {}", listener.local_addr()?);
    let ctx = Arc::new(ServerContext::new(
        Arc::new(NullHandler::new(args.read_payload)),
        crate::auth::Authenticator::Disabled,
        crate::protocol::MAX_FRAME_LEN,
        "weir-null".into(),
    ));
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.cancel();
        }
    });
    #[cfg(unix)]
    {
        let stop = shutdown.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            term.recv().await;
            stop.cancel();
        });
    }
    server::run(listener, ctx, 1024, shutdown).await;
    Ok(())
}
