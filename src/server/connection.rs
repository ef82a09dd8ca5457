//! One client connection: handshake, then requests read in order and
//! answered as they complete.
//!
//! Requests are carried out in arrival order, a batch at a time: every
//! request already received is carried out before the batch's answers go
//! out, so appends that arrived together are written to their stream with
//! one call and confirmed together. A request that has to wait (a
//! long-polling read, a `flushOnWrite` append waiting for its sync) is
//! answered by one task per batch, so it never holds up the requests behind
//! it (PROTOCOL.md 7.2). All answers go through one writer task, which writes
//! whole frames, coalescing those that are ready, and never splits one
//! (PROTOCOL.md 3.3).

use super::codec::{CodecError, FrameCodec};
use super::dispatch::Handled;
use super::ServerContext;
use crate::protocol::RawFrame;
use crate::protocol::{
    ConnectRequest, ConnectResponse, DecodeError, Failure, ProtocolVersion, Reply, ReplyBody,
    Request, StatusCode, CONNECT_VERSION,
};
use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Clients send their Connect frame right after connecting; one that has
/// not within this time is dropped, so it cannot hold a connection slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Answers queued for the writer before reading more requests pauses.
const WRITE_QUEUE: usize = 256;
/// Ready answers are merged into one write up to this size.
const COALESCE_LIMIT: usize = 64 * 1024;

type Frames = FramedRead<OwnedReadHalf, FrameCodec>;

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("handshake refused: {0}")]
    Refused(String),
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("the client stopped reading answers")]
    WriterGone,
}

pub async fn serve(socket: TcpStream, ctx: Arc<ServerContext>, shutdown: CancellationToken) {
    let client = ctx.next_client_identifier();
    let peer = socket
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let span = tracing::info_span!("connection", %client, %peer);
    async move {
        match serve_client(socket, &ctx, client, shutdown).await {
            Ok(()) => tracing::debug!("closed"),
            Err(e) => tracing::info!(error = %e, "connection closed"),
        }
    }
    .instrument(span)
    .await;
}

async fn serve_client(
    socket: TcpStream,
    ctx: &Arc<ServerContext>,
    client: String,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError> {
    // Clients (Java explicitly) want answers without Nagle delays.
    socket.set_nodelay(true)?;
    let (reader, mut writer) = socket.into_split();
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(reader, &mut writer, ctx, client),
    );
    let outcome = tokio::select! {
        result = handshake => result.map_err(|_| ConnectionError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let (version, frames) = match outcome {
        Ok(accepted) => accepted,
        Err(e) => {
            writer.shutdown().await.ok();
            return Err(e);
        }
    };
    tracing::debug!(protocol = version.as_str(), "connected");
    session(frames, writer, ctx, version, shutdown).await
}

/// Reads `01` + Connect, answers `01` + ConnectResponse. Returns the
/// negotiated version and the frame reader, which may already hold requests
/// the client sent right behind its Connect.
async fn handshake(
    mut reader: OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    ctx: &ServerContext,
    client: String,
) -> Result<(ProtocolVersion, Frames), ConnectionError> {
    let refuse = |request_id: Option<String>, status: StatusCode, message: String| {
        ConnectResponse::refusal(request_id, status, message, &ctx.server_version)
    };
    let mut byte = [0u8; 1];
    reader.read_exact(&mut byte).await?;
    if byte[0] != CONNECT_VERSION {
        let message = format!(
            "connect version {} is not supported; expected {CONNECT_VERSION}",
            byte[0]
        );
        send_connect_response(
            writer,
            &refuse(None, StatusCode::UnsupportedConnectVersion, message.clone()),
        )
        .await?;
        return Err(ConnectionError::Refused(message));
    }
    let mut frames = FramedRead::new(reader, FrameCodec::new(ctx.max_frame_len));
    let frame = match frames.next().await {
        Some(frame) => frame?,
        None => {
            return Err(ConnectionError::Protocol(
                "closed before the Connect frame".into(),
            ))
        }
    };
    let request = match ConnectRequest::decode(&frame) {
        Ok(request) => request,
        Err(message) => {
            send_connect_response(
                writer,
                &refuse(None, StatusCode::UnexpectedOperation, message.clone()),
            )
            .await?;
            return Err(ConnectionError::Refused(message));
        }
    };
    let version = match request.negotiate() {
        Ok(version) => version,
        Err((status, message)) => {
            send_connect_response(writer, &refuse(request.request_id, status, message.clone()))
                .await?;
            return Err(ConnectionError::Refused(message));
        }
    };
    if !ctx.auth.admits(request.auth_token.as_deref()) {
        let message = "the authentication token is missing or not valid".to_owned();
        send_connect_response(
            writer,
            &refuse(
                request.request_id,
                StatusCode::Unauthorized,
                message.clone(),
            ),
        )
        .await?;
        return Err(ConnectionError::Refused(message));
    }
    tracing::debug!(
        sdk = request.sdk_version.as_deref().unwrap_or("?"),
        "handshake"
    );
    let accepted = ConnectResponse {
        request_id: request.request_id,
        status: StatusCode::Success,
        error_message: None,
        protocol_version: Some(version),
        server_version: ctx.server_version.clone(),
        client_identifier: Some(client),
    };
    send_connect_response(writer, &accepted).await?;
    Ok((version, frames))
}

async fn send_connect_response(
    writer: &mut OwnedWriteHalf,
    response: &ConnectResponse,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    response.encode_with_connect_byte(&mut buf);
    writer.write_all(&buf).await
}

/// The request loop after a successful handshake.
async fn session(
    mut frames: Frames,
    writer: OwnedWriteHalf,
    ctx: &Arc<ServerContext>,
    version: ProtocolVersion,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError> {
    let (answers, queue) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let write_task = tokio::spawn(write_answers(writer, queue));
    let mut waiting = JoinSet::new();
    let outcome = loop {
        let first = tokio::select! {
            frame = frames.next() => frame,
            Some(_) = waiting.join_next(), if !waiting.is_empty() => continue,
            () = shutdown.cancelled() => break Ok(()),
        };
        let first = match first {
            None => break Ok(()),
            Some(Err(e)) => break Err(e.into()),
            Some(Ok(frame)) => frame,
        };
        // Every request already received is carried out before any answer
        // is sent, so appends that arrived together are written together.
        let mut batch = vec![first];
        let mut end: Option<Result<(), ConnectionError>> = None;
        while batch.len() < MAX_BATCH {
            match frames.next().now_or_never() {
                Some(Some(Ok(frame))) => batch.push(frame),
                Some(Some(Err(e))) => {
                    end = Some(Err(e.into()));
                    break;
                }
                Some(None) => {
                    end = Some(Ok(()));
                    break;
                }
                None => break,
            }
        }
        let mut answered = Vec::with_capacity(batch.len());
        let mut later = Vec::new();
        for frame in batch {
            match carry_out(frame, ctx, version) {
                Ok(Step::Answer(answer)) => answered.push(answer),
                Ok(Step::Later(pending)) => later.push(pending),
                Ok(Step::Nothing) => {}
                Err(e) => {
                    end = Some(Err(e));
                    break;
                }
            }
        }
        // In arrival order; an append's answer first confirms its write (the
        // first one writes all the batch's appends to its stream).
        // Small answers are merged into one buffer; a large one goes on its
        // own rather than being copied again.
        let mut out = BytesMut::new();
        let mut sent = Ok(());
        for answer in answered {
            let reply = match answer {
                Answer::Now(reply) => reply,
                Answer::AtBatchEnd(confirm) => confirm(),
            };
            let frame = reply.frame(version);
            if frame.len() < COALESCE_LIMIT {
                out.extend_from_slice(&frame);
                continue;
            }
            if !out.is_empty() {
                sent = sent.and(answers.send(out.split().freeze()).await);
            }
            sent = sent.and(answers.send(frame).await);
        }
        if !out.is_empty() {
            sent = sent.and(answers.send(out.freeze()).await);
        }
        if sent.is_err() {
            break Err(ConnectionError::WriterGone);
        }
        if !later.is_empty() {
            // One task for the batch's waiting requests, not one each: a
            // wave of flushOnWrite appends is released by one sync.
            waiting.spawn(answer_when_ready(later, answers.clone(), version));
        }
        if let Some(end) = end {
            break end;
        }
    };
    // The client is gone or we are stopping: waiting reads have no one to
    // answer. Answers already queued are still written before the close.
    waiting.shutdown().await;
    drop(answers);
    match write_task.await {
        Ok(Ok(())) => outcome,
        Ok(Err(e)) => outcome.and(Err(e.into())),
        Err(join) => outcome.and(Err(ConnectionError::Protocol(format!(
            "writer task failed: {join}"
        )))),
    }
}

/// Requests carried out before their answers go out together.
const MAX_BATCH: usize = 256;

enum Answer {
    Now(Reply),
    AtBatchEnd(Box<dyn FnOnce() -> Reply + Send>),
}

enum Step {
    Answer(Answer),
    Later(Pending),
    /// A request that gets no answer (unknown op from a 1.0.0 client).
    Nothing,
}

/// Decodes and carries out one request frame.
fn carry_out(
    frame: RawFrame,
    ctx: &ServerContext,
    version: ProtocolVersion,
) -> Result<Step, ConnectionError> {
    let reply = match Request::decode(frame.op, &frame.payload) {
        Ok(request) => {
            return Ok(match ctx.handler.handle(request) {
                Handled::Now(reply) => Step::Answer(Answer::Now(reply)),
                Handled::AtBatchEnd(confirm) => Step::Answer(Answer::AtBatchEnd(confirm)),
                Handled::Later(pending) => Step::Later(pending),
            })
        }
        Err(DecodeError::Unanswerable { op, reason }) => {
            return Err(ConnectionError::Protocol(format!("op {op}: {reason}")));
        }
        Err(DecodeError::UnknownOperation { op, request_id }) => {
            if version == ProtocolVersion::V1_0_0 {
                // 1.0.0 clients know neither op 17 nor status 18; any
                // answer would break them, so this request gets none.
                tracing::warn!(op, %request_id, "unknown operation from a 1.0.0 client, not answered");
                return Ok(Step::Nothing);
            }
            Reply {
                request_id,
                body: ReplyBody::UnknownOperation(format!("operation {op} is not supported")),
            }
        }
        Err(DecodeError::Invalid {
            request_id,
            response_op,
            message,
        }) => Reply {
            request_id,
            body: ReplyBody::Rejected {
                op: response_op,
                failure: Failure::new(StatusCode::InvalidRequest, message),
            },
        },
    };
    Ok(Step::Answer(Answer::Now(reply)))
}

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>;

/// Answers each waiting request as it completes; those completing together
/// go out in one write.
async fn answer_when_ready(
    later: Vec<Pending>,
    answers: mpsc::Sender<Bytes>,
    version: ProtocolVersion,
) {
    let mut pending: FuturesUnordered<Pending> = later.into_iter().collect();
    while let Some(reply) = pending.next().await {
        let mut out = BytesMut::from(&reply.frame(version)[..]);
        while let Some(Some(reply)) = pending.next().now_or_never() {
            out.extend_from_slice(&reply.frame(version));
        }
        // If the writer is gone the client is too; the answers have
        // nowhere to go.
        if answers.send(out.freeze()).await.is_err() {
            tracing::debug!("answers dropped: connection closing");
            return;
        }
    }
}

/// Writes answers as whole frames; frames that are ready together go out in
/// one write. Closes the socket (FIN) when the queue ends, because Node's
/// `close()` only half-closes and waits for the server's FIN.
async fn write_answers(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Bytes>,
) -> std::io::Result<()> {
    let mut batch = BytesMut::new();
    while let Some(frame) = queue.recv().await {
        if frame.len() >= COALESCE_LIMIT {
            writer.write_all(&frame).await?;
            continue;
        }
        batch.extend_from_slice(&frame);
        while batch.len() < COALESCE_LIMIT {
            match queue.try_recv() {
                Ok(next) => batch.extend_from_slice(&next),
                Err(_) => break,
            }
        }
        writer.write_all(&batch).await?;
        batch.clear();
    }
    writer.shutdown().await
}
