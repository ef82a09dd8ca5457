//! One client connection: handshake, then requests read in order and
//! answered as they complete.
//!
//! Requests are carried out in arrival order, a batch at a time: every
//! request already received is carried out before the batch's answers go
//! out, so appends that arrived together are written to their stream with
//! one call and confirmed together. A request that has to wait (a
//! long-polling read, a `flushOnWrite` append waiting for its sync) is
//! answered by one task per batch, so it never holds up the requests behind
//! it (PROTOCOL.md 7.2). A request whose work runs off the protocol thread
//! (create, delete, update, an append whose log needs the disk first:
//! [`Handled::InOrder`]) ends its batch, and the
//! connection waits for it before carrying out the next one. All answers go
//! through one writer task, which writes whole frames, coalescing those that
//! are ready, and never splits one (PROTOCOL.md 3.3).
//!
//! Memory is bounded by bytes ([`super::ServerLimits`]): before a request
//! is carried out, what its answer can take is reserved from the server's
//! answer budget (given back in part once the answer is built, in full once
//! its frame is written or the connection ends); when there is not enough,
//! the batch ends, its answers go out, and the connection waits for budget,
//! reading nothing meanwhile. While a connection waits, one whose client
//! does not take its answers is closed after `answer_stall_timeout`.
//! Answers waiting for the writer also hold budget from the connection's
//! queue budget, and a batch stops carrying out requests once its answers
//! reach `BATCH_ANSWER_BYTES`; when the queue budget is spent the
//! connection stops reading requests until the client reads. Requests
//! waiting to be answered take room in flight; when there is none, the
//! connection stops reading too. Long-polls past their limits are answered
//! at once. Each limit a connection reaches is logged once for it.

use super::budget::{ByteBudget, Reserved};
use super::codec::{request_id_in_head, CodecError, FrameReader, Received};
use super::dispatch::{GivenUp, Handled, Pending};
use super::{HandshakeSlot, ServerContext, ServerLimits};
use crate::auth::Admission;
use crate::protocol::status::Operation;
use crate::protocol::{
    ConnectRequest, ConnectResponse, DecodeError, Failure, ProtocolVersion, Reply, ReplyBody,
    Request, RequestBody, StatusCode, CONNECT_VERSION,
};
use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

/// Largest Connect frame: a request id, versions and a token. Sockets in
/// their handshake never take from the server's receive budget.
const MAX_CONNECT_FRAME: usize = 16 * 1024;
/// Ready answers are merged into one write up to this size.
const COALESCE_LIMIT: usize = 64 * 1024;
/// A batch stops carrying out requests once its answers take this much, so
/// that a run of pipelined reads is answered as it goes, within the queue
/// budget, rather than all built first.
const BATCH_ANSWER_BYTES: usize = 1 << 20;
/// Requests carried out before their answers go out together.
const MAX_BATCH: usize = 256;
/// Answer budget a request other than a read, a listing or a describe
/// takes before it is carried out (on top of its request id): a status and
/// an error message.
const SMALL_ANSWER: usize = 4 * 1024;
/// The same for a listing or a describe, whose answers grow with the
/// streams and their exports.
const LISTING_ANSWER: usize = 64 * 1024;

type Frames = FrameReader<OwnedReadHalf>;

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("handshake refused: {0}")]
    Refused(String),
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("closed in its handshake to make room for a newer socket")]
    Evicted,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("the client stopped reading answers")]
    WriterGone,
    #[error("the client took none of its answers for {0:?} while other connections waited for the server's answer budget")]
    Stalled(Duration),
}

/// Serves one socket until the client leaves, `shutdown` (after the
/// requests in progress are answered) or `abort` (at once: the shutdown
/// deadline).
pub async fn serve(
    socket: TcpStream,
    ctx: Arc<ServerContext>,
    slot: HandshakeSlot,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    let client = ctx.next_client_identifier();
    let peer = socket
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let span = tracing::info_span!("connection", %client, %peer);
    async move {
        tokio::select! {
            outcome = serve_client(socket, &ctx, client, slot, connections, shutdown) => match outcome {
                Ok(()) => tracing::debug!("closed"),
                // Sockets that never handshake come by the thousand in an
                // attack; the server logs their run once.
                Err(e @ (ConnectionError::Evicted | ConnectionError::HandshakeTimeout(_))) => {
                    tracing::debug!(error = %e, "connection closed")
                }
                Err(e) => tracing::info!(error = %e, "connection closed"),
            },
            () = abort.cancelled() => tracing::info!("closed at the shutdown deadline"),
        }
    }
    .instrument(span)
    .await;
}

async fn serve_client(
    socket: TcpStream,
    ctx: &Arc<ServerContext>,
    client: String,
    slot: HandshakeSlot,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError> {
    // Clients (Java explicitly) want answers without Nagle delays.
    socket.set_nodelay(true)?;
    let (reader, mut writer) = socket.into_split();
    let handshake = handshake(reader, &mut writer, ctx, client, connections);
    let outcome = tokio::select! {
        result = handshake => result,
        () = slot.evicted() => return Err(ConnectionError::Evicted),
        () = shutdown.cancelled() => return Ok(()),
    };
    drop(slot);
    let (version, mut frames, _connection) = match outcome {
        Ok(accepted) => accepted,
        Err(e) => {
            writer.shutdown().await.ok();
            return Err(e);
        }
    };
    frames.set_max_frame_len(ctx.max_frame_len);
    tracing::debug!(protocol = version.as_str(), "connected");
    session(frames, writer, ctx, version, shutdown).await
}

/// Reads `01` + Connect, answers `01` + ConnectResponse. Returns the
/// negotiated version, the frame reader, which may already hold requests
/// the client sent right behind its Connect, and the connection's place
/// among those served (taken only once the client is known: sockets in
/// their handshake have their own cap). The Connect must arrive within
/// [`ServerLimits::handshake_timeout`]; checking its token has a bound of
/// its own (the IPC's).
async fn handshake(
    mut reader: OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    ctx: &ServerContext,
    client: String,
    connections: Arc<Semaphore>,
) -> Result<(ProtocolVersion, Frames, OwnedSemaphorePermit), ConnectionError> {
    // Answers the Connect with a refusal; the connection then closes.
    let refuse = async |writer: &mut OwnedWriteHalf,
                        request_id: Option<String>,
                        status: StatusCode,
                        message: String| {
        let refusal =
            ConnectResponse::refusal(request_id, status, message.clone(), &ctx.server_version);
        match send_connect_response(writer, &refusal).await {
            Ok(()) => ConnectionError::Refused(message),
            Err(e) => ConnectionError::Io(e),
        }
    };
    let timeout = ctx.limits.handshake_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let late = |_| ConnectionError::HandshakeTimeout(timeout);
    let mut byte = [0u8; 1];
    tokio::time::timeout_at(deadline, reader.read_exact(&mut byte))
        .await
        .map_err(late)??;
    if byte[0] != CONNECT_VERSION {
        let message = format!(
            "connect version {} is not supported; expected {CONNECT_VERSION}",
            byte[0]
        );
        return Err(refuse(writer, None, StatusCode::UnsupportedConnectVersion, message).await);
    }
    let mut frames = FrameReader::new(reader, MAX_CONNECT_FRAME, ctx.receiving.clone());
    let frame = match tokio::time::timeout_at(deadline, frames.next())
        .await
        .map_err(late)?
    {
        Some(Ok(Received::Frame(frame))) => frame,
        Some(Ok(Received::TooLarge { len, .. })) => {
            return Err(ConnectionError::Protocol(format!(
                "a Connect frame of {len} bytes"
            )))
        }
        Some(Err(e)) => return Err(e.into()),
        None => {
            return Err(ConnectionError::Protocol(
                "closed before the Connect frame".into(),
            ))
        }
    };
    let request = match ConnectRequest::decode(&frame) {
        Ok(request) => request,
        Err(message) => {
            return Err(refuse(writer, None, StatusCode::UnexpectedOperation, message).await);
        }
    };
    let version = match request.negotiate() {
        Ok(version) => version,
        Err((status, message)) => {
            return Err(refuse(writer, request.request_id, status, message).await);
        }
    };
    // May wait for the nucleus: only this connection waits.
    let (status, message) = match ctx.auth.check(request.auth_token.as_deref()).await {
        Admission::Admitted => (StatusCode::Success, String::new()),
        Admission::Unauthorized => (
            StatusCode::Unauthorized,
            "the authentication token is missing or not valid".to_owned(),
        ),
        Admission::Refused(reason) => {
            tracing::warn!(%reason, "refused a client: its token could not be validated");
            (
                StatusCode::UnknownFailure,
                format!("the authentication token could not be validated: {reason}"),
            )
        }
    };
    if status != StatusCode::Success {
        return Err(refuse(writer, request.request_id, status, message).await);
    }
    let Ok(connection) = connections.try_acquire_owned() else {
        // The connections filled up while this one was in its handshake.
        let message = "weir serves as many connections as it allows; try again later".to_owned();
        tracing::warn!("{message}");
        return Err(refuse(
            writer,
            request.request_id,
            StatusCode::UnknownFailure,
            message,
        )
        .await);
    };
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
    Ok((version, frames, connection))
}

async fn send_connect_response(
    writer: &mut OwnedWriteHalf,
    response: &ConnectResponse,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    response.encode_with_connect_byte(&mut buf);
    writer.write_all(&buf).await
}

/// An answer frame on its way to the socket, holding its share of the
/// connection's queue budget and of the server's answer budget until it is
/// written (or the connection ends).
struct Queued {
    frame: Bytes,
    _queue: Reserved,
    _answer: Reserved,
}

/// Hands answers to the writer task, bounded by bytes.
#[derive(Clone)]
struct Answers {
    queue: mpsc::UnboundedSender<Queued>,
    /// The connection's queue budget.
    budget: ByteBudget,
    /// Set once the client first lets its answers pile up (logged once).
    full: Arc<AtomicBool>,
    /// Set once the connection first waits for the server's answer budget
    /// (logged once).
    throttled: Arc<AtomicBool>,
    /// Cancelled when the writer task ends.
    gone: CancellationToken,
}

impl Answers {
    /// Queues `frame` with `answer`, its reservation of the server's
    /// budget, first waiting while the answers already queued take the
    /// connection's budget: the caller (the request loop) stops reading
    /// meanwhile. A frame larger than the whole budget waits for all of it.
    async fn send(&self, frame: Bytes, mut answer: Reserved) -> Result<(), ConnectionError> {
        // An answer larger than what it reserved before it was built (one
        // message above WEIR_MAX_READ_BYTES, a listing of thousands of
        // streams) takes the rest if it is free. It does not wait for it:
        // answers built after it, which it must precede, hold budget too.
        answer.try_fit(frame.len());
        let queue = match self.budget.try_take(frame.len()) {
            Some(queue) => queue,
            None => {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        limit = self.budget.total(),
                        "answers wait for the client to read them: its requests stop being read meanwhile"
                    );
                }
                tokio::select! {
                    queue = self.budget.take(frame.len()) => queue,
                    () = self.gone.cancelled() => return Err(ConnectionError::WriterGone),
                }
            }
        };
        self.queue
            .send(Queued {
                frame,
                _queue: queue,
                _answer: answer,
            })
            .map_err(|_| ConnectionError::WriterGone)
    }

    /// Logs, once for the connection, that it waits for the server's
    /// answer budget.
    fn note_throttled(&self, limit: usize) {
        if !self.throttled.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit,
                "the server's answer budget is spent: this connection's requests wait unread until others' answers are written"
            );
        }
    }
}

/// An answer to come, with its reservation of the server's answer budget.
type Reserving = Pin<Box<dyn Future<Output = (Reply, Reserved)> + Send + 'static>>;

/// What a batch has to send, in arrival order, each with its reservation.
enum Ready {
    Frame(Bytes, Reserved),
    /// An append's answer, which first confirms its write (the first one
    /// writes all the batch's appends to its stream).
    Confirm(Box<dyn FnOnce() -> Reply + Send>, Reserved),
}

/// Logs each limit once for the connection.
#[derive(Default)]
struct Noted {
    in_flight: bool,
    long_polls: bool,
    too_large: bool,
}

/// The request loop after a successful handshake.
async fn session(
    mut frames: Frames,
    writer: OwnedWriteHalf,
    ctx: &Arc<ServerContext>,
    version: ProtocolVersion,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError> {
    let limits = &ctx.limits;
    let (queue, queued) = mpsc::unbounded_channel();
    let gone = CancellationToken::new();
    let answers = Answers {
        queue,
        budget: ByteBudget::new(limits.max_queued_bytes),
        full: Arc::new(AtomicBool::new(false)),
        throttled: Arc::new(AtomicBool::new(false)),
        gone: gone.clone(),
    };
    // Aborted if this future is dropped (the shutdown deadline), so a writer
    // blocked on a client that does not read goes with it.
    let write_task = AbortOnDropHandle::new(tokio::spawn(write_answers(
        writer,
        queued,
        ctx.answers.clone(),
        limits.answer_stall_timeout,
        gone.clone().drop_guard(),
    )));
    // Room for requests waiting to be answered.
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let polls_here = Arc::new(Semaphore::new(limits.max_long_polls_per_connection));
    let mut noted = Noted::default();
    // Answered even at shutdown (a flushOnWrite append waiting for its
    // sync); long-polls are dropped then.
    let mut durable = JoinSet::new();
    let mut polls = JoinSet::new();
    // Received, not carried out yet (a batch ends early when its answers
    // are large or an in-order request comes).
    let mut received: VecDeque<Received> = VecDeque::new();
    // Decoded, not carried out: the server's answer budget was spent.
    let mut stalled: Option<Decoded> = None;
    let mut end: Option<Result<(), ConnectionError>> = None;
    let outcome = loop {
        if received.is_empty() && stalled.is_none() {
            if let Some(end) = end.take() {
                break end;
            }
            let room = in_flight.available_permits();
            if room == 0 && !noted.in_flight {
                noted.in_flight = true;
                tracing::warn!(
                    limit = limits.max_in_flight,
                    "requests in flight at the limit: reading paused until some are answered"
                );
            }
            let first = tokio::select! {
                frame = frames.next(), if room > 0 => frame,
                // A waiting request was answered: there is room again.
                _ = in_flight.acquire(), if room == 0 => continue,
                Some(_) = durable.join_next(), if !durable.is_empty() => continue,
                Some(_) = polls.join_next(), if !polls.is_empty() => continue,
                () = gone.cancelled() => break Err(ConnectionError::WriterGone),
                () = shutdown.cancelled() => break Ok(()),
            };
            match first {
                None => break Ok(()),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(frame)) => received.push_back(frame),
            }
        }
        // The batch before ended for want of answer budget, and its answers
        // are queued: wait for the budget, reading nothing meanwhile. The
        // connection holds nothing that waits on this (its other answers
        // complete and are written on their own), so it cannot deadlock.
        let mut held = None;
        if let Some(decoded) = &stalled {
            tokio::select! {
                reserved = ctx.answers.take(answer_bound(decoded, limits)) => held = Some(reserved),
                () = gone.cancelled() => break Err(ConnectionError::WriterGone),
                () = shutdown.cancelled() => break Ok(()),
            }
        }
        // Every request already received is carried out before any answer
        // is sent, so appends that arrived together are written together.
        // Each may come to wait, so the batch never exceeds the room in
        // flight.
        let room = in_flight.available_permits().clamp(1, MAX_BATCH);
        while end.is_none() && received.len() < room {
            match frames.next().now_or_never() {
                Some(Some(Ok(frame))) => received.push_back(frame),
                Some(Some(Err(e))) => end = Some(Err(e.into())),
                Some(None) => end = Some(Ok(())),
                None => break,
            }
        }
        let mut ready = Vec::with_capacity(received.len());
        let mut ready_bytes = 0;
        let mut later: Vec<Reserving> = Vec::new();
        let mut waiting: Vec<Reserving> = Vec::new();
        let mut in_order = None;
        let mut next = stalled.take().map(|decoded| (decoded, held.take()));
        loop {
            let (decoded, reserved) = match next.take() {
                Some(item) => item,
                None => {
                    let Some(frame) = received.pop_front() else {
                        break;
                    };
                    match decode(frame, ctx, version, &mut noted) {
                        Ok(decoded) => (decoded, None),
                        Err(e) => {
                            received.clear();
                            end = Some(Err(e));
                            break;
                        }
                    }
                }
            };
            // Reserved before the answer is built.
            let bound = answer_bound(&decoded, limits);
            let Some(mut reserved) = reserved.or_else(|| ctx.answers.try_take(bound)) else {
                answers.note_throttled(ctx.answers.total());
                stalled = Some(decoded);
                break;
            };
            match carry_out(decoded, ctx) {
                Step::Now(reply) => {
                    let frame = reply.frame(version);
                    reserved.shrink_to(frame.len());
                    ready_bytes += frame.len();
                    ready.push(Ready::Frame(frame, reserved));
                }
                Step::AtBatchEnd(confirm) => ready.push(Ready::Confirm(confirm, reserved)),
                Step::Later(pending) => {
                    later.push(Box::pin(async move { (pending.await, reserved) }));
                }
                Step::LongPoll { wait, give_up } => {
                    let here = Arc::clone(&polls_here).try_acquire_owned();
                    let server = Arc::clone(&ctx.long_polls).try_acquire_owned();
                    match (here, server) {
                        (Ok(here), Ok(server)) => {
                            let wait = WhileReserved {
                                wait,
                                held: Some(reserved),
                                taking: None,
                                budget: ctx.answers.clone(),
                                bound,
                            };
                            waiting.push(Box::pin(async move {
                                let _held = (here, server);
                                wait.await
                            }));
                        }
                        (here, _) => {
                            if !noted.long_polls {
                                noted.long_polls = true;
                                let whose = if here.is_err() {
                                    "this connection's"
                                } else {
                                    "the server's"
                                };
                                tracing::warn!(
                                    "{whose} limit of waiting reads is reached: more reads are answered at once"
                                );
                            }
                            match give_up() {
                                GivenUp::Now(reply) => {
                                    let frame = reply.frame(version);
                                    reserved.shrink_to(frame.len());
                                    ready_bytes += frame.len();
                                    ready.push(Ready::Frame(frame, reserved));
                                }
                                // Read on the blocking pool; its reservation
                                // goes with it, as a Later answer's does.
                                GivenUp::FromDisk(pending) => {
                                    later.push(Box::pin(async move { (pending.await, reserved) }));
                                }
                            }
                        }
                    }
                }
                Step::InOrder(pending) => {
                    in_order = Some((pending, reserved));
                    break;
                }
                Step::Nothing => {}
            }
            if ready_bytes >= BATCH_ANSWER_BYTES {
                break;
            }
        }
        // In arrival order. Small answers are merged into one buffer; a
        // large one goes on its own rather than being copied again.
        let mut out = BytesMut::new();
        let mut out_reserved = ctx.answers.none();
        let mut sent = Ok(());
        for answer in ready {
            let (frame, reserved) = match answer {
                Ready::Frame(frame, reserved) => (frame, reserved),
                Ready::Confirm(confirm, mut reserved) => {
                    let frame = confirm().frame(version);
                    reserved.shrink_to(frame.len());
                    (frame, reserved)
                }
            };
            if frame.len() < COALESCE_LIMIT {
                out.extend_from_slice(&frame);
                out_reserved.merge(reserved);
                continue;
            }
            if !out.is_empty() {
                let merged = std::mem::replace(&mut out_reserved, ctx.answers.none());
                sent = sent.and(answers.send(out.split().freeze(), merged).await);
            }
            sent = sent.and(answers.send(frame, reserved).await);
        }
        if !out.is_empty() {
            sent = sent.and(answers.send(out.freeze(), out_reserved).await);
        }
        if let Err(e) = sent {
            break Err(e);
        }
        // One task for the batch's waiting requests of each kind, not one
        // each: a wave of flushOnWrite appends is released by one sync.
        if !later.is_empty() {
            durable.spawn(answer_when_ready(
                InFlight::take(Arc::clone(&in_flight), later.len()),
                later,
                answers.clone(),
                version,
            ));
        }
        if !waiting.is_empty() {
            polls.spawn(answer_when_ready(
                InFlight::take(Arc::clone(&in_flight), waiting.len()),
                waiting,
                answers.clone(),
                version,
            ));
        }
        if let Some((pending, reserved)) = in_order {
            // Nothing behind it is carried out before it completes; the
            // protocol thread serves other connections meanwhile.
            let reply = pending.await;
            if let Err(e) = answers.send(reply.frame(version), reserved).await {
                break Err(e);
            }
        }
    };
    // The client is gone or we are stopping: waiting reads have no one to
    // answer (or no time); appends waiting for their sync are answered.
    // Answers already queued are still written before the close.
    polls.shutdown().await;
    while durable.join_next().await.is_some() {}
    drop(answers);
    match write_task.await {
        Ok(Ok(())) => outcome,
        // The writer's reason is the better one: the loop only saw it go.
        Ok(Err(e)) => match outcome {
            Err(ConnectionError::WriterGone) => Err(e),
            outcome => outcome.and(Err(e)),
        },
        Err(join) => outcome.and(Err(ConnectionError::Protocol(format!(
            "writer task failed: {join}"
        )))),
    }
}

enum Step {
    Now(Reply),
    AtBatchEnd(Box<dyn FnOnce() -> Reply + Send>),
    Later(Pending),
    LongPoll {
        wait: Pending,
        give_up: Box<dyn FnOnce() -> GivenUp + Send>,
    },
    InOrder(Pending),
    /// A request that gets no answer (unknown op from a 1.0.0 client).
    Nothing,
}

/// A request frame decoded: a request for the handler, or the answer the
/// connection gives itself (a frame it could not decode).
enum Decoded {
    Request(Request),
    Answer(Reply),
    /// No answer (unknown op from a 1.0.0 client).
    Nothing,
}

/// What a request's answer may take, reserved from the server's answer
/// budget before it is carried out.
fn answer_bound(decoded: &Decoded, limits: &ServerLimits) -> usize {
    match decoded {
        Decoded::Request(request) => {
            request.request_id.len()
                + match &request.body {
                    // At least one message is returned whatever its size:
                    // a larger one takes the rest when its answer is queued.
                    RequestBody::ReadMessages { stream_name, .. } => {
                        limits.max_read_bytes + stream_name.len() + SMALL_ANSWER
                    }
                    RequestBody::ListStreams | RequestBody::DescribeMessageStream { .. } => {
                        LISTING_ANSWER
                    }
                    _ => SMALL_ANSWER,
                }
        }
        Decoded::Answer(_) | Decoded::Nothing => SMALL_ANSWER,
    }
}

/// Decodes one request frame.
fn decode(
    received: Received,
    ctx: &ServerContext,
    version: ProtocolVersion,
    noted: &mut Noted,
) -> Result<Decoded, ConnectionError> {
    let frame = match received {
        Received::Frame(frame) => frame,
        Received::TooLarge { op, head, len } => {
            return too_large(op, &head, len, ctx.max_frame_len, noted).map(Decoded::Answer)
        }
    };
    let reply = match Request::decode(frame.op, &frame.payload) {
        Ok(request) => return Ok(Decoded::Request(request)),
        Err(DecodeError::Unanswerable { op, reason }) => {
            return Err(ConnectionError::Protocol(format!("op {op}: {reason}")));
        }
        Err(DecodeError::UnknownOperation { op, request_id }) => {
            if version == ProtocolVersion::V1_0_0 {
                // 1.0.0 clients know neither op 17 nor status 18; any
                // answer would break them, so this request gets none.
                tracing::warn!(op, %request_id, "unknown operation from a 1.0.0 client, not answered");
                return Ok(Decoded::Nothing);
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
    Ok(Decoded::Answer(reply))
}

/// Carries out one decoded request.
fn carry_out(decoded: Decoded, ctx: &ServerContext) -> Step {
    match decoded {
        Decoded::Request(request) => match ctx.handler.handle(request) {
            Handled::Now(reply) => Step::Now(reply),
            Handled::AtBatchEnd(confirm) => Step::AtBatchEnd(confirm),
            Handled::Later(pending) => Step::Later(pending),
            Handled::LongPoll { wait, give_up } => Step::LongPoll { wait, give_up },
            Handled::InOrder(pending) => Step::InOrder(pending),
        },
        Decoded::Answer(reply) => Step::Now(reply),
        Decoded::Nothing => Step::Nothing,
    }
}

/// A long-poll's wait, polled only while it holds `bound` bytes of the
/// answer budget: it builds its answer in the poll that finds the messages,
/// so every poll may. Between polls that find nothing it holds none, so
/// reads waiting for messages do not take the budget from everyone else.
/// While it waits for budget it is not polled, so its timeout answer waits
/// too, like every other answer then. (A read that finds its messages gone
/// to a sealed segment meanwhile reads them across polls; it holds no
/// budget while the disk is read, and takes the rest, if free, when its
/// answer is queued.)
struct WhileReserved {
    wait: Pending,
    held: Option<Reserved>,
    taking: Option<Pin<Box<dyn Future<Output = Reserved> + Send>>>,
    budget: ByteBudget,
    bound: usize,
}

impl Future for WhileReserved {
    type Output = (Reply, Reserved);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.held.is_none() {
            if this.taking.is_none() {
                match this.budget.try_take(this.bound) {
                    Some(reserved) => this.held = Some(reserved),
                    None => {
                        let budget = this.budget.clone();
                        let bound = this.bound;
                        this.taking = Some(Box::pin(async move { budget.take(bound).await }));
                    }
                }
            }
            if let Some(taking) = &mut this.taking {
                match taking.as_mut().poll(cx) {
                    Poll::Ready(reserved) => {
                        this.taking = None;
                        this.held = Some(reserved);
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        match this.wait.as_mut().poll(cx) {
            Poll::Ready(reply) => Poll::Ready((reply, this.held.take().expect("held above"))),
            Poll::Pending => {
                this.held = None;
                Poll::Pending
            }
        }
    }
}

/// The answer to a request frame above the limit: `RequestPayloadTooLarge`
/// on its operation's response, if its request id was in the bytes kept;
/// otherwise there is no one to answer and the connection ends.
fn too_large(
    op: u8,
    head: &[u8],
    len: usize,
    max: usize,
    noted: &mut Noted,
) -> Result<Reply, ConnectionError> {
    let message = format!(
        "a request of {len} bytes is larger than this server accepts ({max} bytes, WEIR_MAX_FRAME_BYTES)"
    );
    let (Some(response), Some(request_id)) = (Operation::response_to(op), request_id_in_head(head))
    else {
        return Err(ConnectionError::Protocol(format!(
            "op {op}: {message}, and no request id to answer it"
        )));
    };
    if !noted.too_large {
        noted.too_large = true;
        tracing::warn!(op, "{message}: answered RequestPayloadTooLarge");
    }
    Ok(Reply {
        request_id,
        body: ReplyBody::Rejected {
            op: response,
            failure: Failure::new(StatusCode::RequestPayloadTooLarge, message),
        },
    })
}

/// Answers each waiting request as it completes (`counted` in flight until
/// then); those completing together
/// go out in one write (up to [`BATCH_ANSWER_BYTES`], so the queue budget
/// bounds what is built ahead of the client).
async fn answer_when_ready(
    counted: InFlight,
    later: Vec<Reserving>,
    answers: Answers,
    version: ProtocolVersion,
) {
    let mut pending: FuturesUnordered<Reserving> = later.into_iter().collect();
    while let Some((reply, mut reserved)) = pending.next().await {
        let mut out = BytesMut::from(&reply.frame(version)[..]);
        let mut done = 1;
        while out.len() < BATCH_ANSWER_BYTES {
            match pending.next().now_or_never() {
                Some(Some((reply, more))) => {
                    out.extend_from_slice(&reply.frame(version));
                    reserved.merge(more);
                    done += 1;
                }
                _ => break,
            }
        }
        counted.finish(done);
        reserved.shrink_to(out.len());
        // If the writer is gone the client is too; the answers have
        // nowhere to go.
        if answers.send(out.freeze(), reserved).await.is_err() {
            tracing::debug!("answers dropped: connection closing");
            return;
        }
    }
}

/// The room in flight that one task's requests take, given back as they
/// are answered (a batch of answers at a time: this is the path of every
/// `flushOnWrite` append) and, for those never answered, when the task
/// ends (dropped at shutdown).
struct InFlight {
    room: Arc<Semaphore>,
    held: std::cell::Cell<usize>,
}

impl InFlight {
    /// Takes room for `n` requests, or what is left (a batch carried over
    /// from a full one may exceed it by a few).
    fn take(room: Arc<Semaphore>, n: usize) -> InFlight {
        let n = n.min(room.available_permits());
        if let Ok(permits) = room.try_acquire_many(u32::try_from(n).unwrap_or(u32::MAX)) {
            // Given back with add_permits, a batch at a time.
            permits.forget();
        }
        InFlight {
            room,
            held: std::cell::Cell::new(n),
        }
    }

    fn finish(&self, answered: usize) {
        let given = answered.min(self.held.get());
        self.held.set(self.held.get() - given);
        self.room.add_permits(given);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.room.add_permits(self.held.get());
    }
}

/// Writes answers as whole frames; frames that are ready together go out in
/// one write. Closes the socket (FIN) when the queue ends, because Node's
/// `close()` only half-closes and waits for the server's FIN. `_gone` tells
/// the request loop when this ends, however it ends.
async fn write_answers(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    answers: ByteBudget,
    stall: Duration,
    _gone: tokio_util::sync::DropGuard,
) -> Result<(), ConnectionError> {
    let mut batch = BytesMut::new();
    // Budget of the frames in `batch`, given back once they are written.
    let mut written = Vec::new();
    while let Some(queued) = queue.recv().await {
        if queued.frame.len() >= COALESCE_LIMIT {
            write_or_stall(&mut writer, &queued.frame, &answers, stall).await?;
            continue;
        }
        batch.extend_from_slice(&queued.frame);
        written.push(queued);
        while batch.len() < COALESCE_LIMIT {
            match queue.try_recv() {
                Ok(next) => {
                    batch.extend_from_slice(&next.frame);
                    written.push(next);
                }
                Err(_) => break,
            }
        }
        write_or_stall(&mut writer, &batch, &answers, stall).await?;
        batch.clear();
        written.clear();
    }
    Ok(writer.shutdown().await?)
}

/// Writes `buf`, unless others wait for the server's answer budget and the
/// client takes none of it for `stall`: then the connection ends, and the
/// budget its answers hold is given back (they are dropped with the queue).
/// Every part the client takes starts the time again, so a client that
/// reads slowly is not closed.
async fn write_or_stall(
    writer: &mut OwnedWriteHalf,
    buf: &[u8],
    answers: &ByteBudget,
    stall: Duration,
) -> Result<(), ConnectionError> {
    let mut at = 0;
    while at < buf.len() {
        // Cancel-safe: a write that has not completed wrote nothing.
        let written = tokio::select! {
            written = writer.write(&buf[at..]) => written?,
            () = stalled(answers, stall) => {
                tracing::warn!(
                    ?stall,
                    "the client takes none of its answers while others wait for the server's answer budget: closing this connection"
                );
                return Err(ConnectionError::Stalled(stall));
            }
        };
        if written == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
        }
        at += written;
    }
    Ok(())
}

/// Completes once the answer budget has been wanted (someone waiting for
/// it) throughout `stall`, as far as its start and end show.
async fn stalled(answers: &ByteBudget, stall: Duration) {
    loop {
        answers.contended().await;
        tokio::time::sleep(stall).await;
        if answers.is_contended() {
            return;
        }
    }
}
