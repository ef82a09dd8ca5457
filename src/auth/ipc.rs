//! weir's client of the Greengrass nucleus IPC: one connection, shared by
//! every request weir makes of the nucleus. The requests are
//! `aws.greengrass#ValidateAuthorizationToken` ([`IpcValidator`], the way
//! the genuine stream manager asks it), `aws.greengrass#UpdateState`
//! (readiness, [`crate::daemon`]) and `aws.greengrass#PutComponentMetric`
//! (telemetry, [`crate::telemetry`]): each is a [`Request`] (operation,
//! model type, JSON payload) handed to [`IpcClient::call`], and its
//! [`Reply`] is mapped by the caller.
//!
//! Wire (shared/docs GREENGRASS.md 2.2-2.6): a Unix stream socket carrying
//! AWS event-stream messages (prelude with lengths and a CRC-32, headers,
//! payload, message CRC-32; framed by `aws-smithy-eventstream`), with the
//! RPC layer's int32 headers `:message-type`, `:message-flags`,
//! `:stream-id`. weir connects with CONNECT (`:version` 0.1.0, payload
//! `{"authToken":"<SVCUID>"}`) and waits for a CONNECT_ACK flagged
//! accepted; each request then opens a new operation stream (ids 1, 2,
//! 3, ... on that connection) with its `operation`, `service-model-type`
//! and payload (a validation: `{"token":"<client token>"}`). The first
//! reply on a stream completes it, with or without the terminate flag
//! (nucleus lite sends none on a success).
//!
//! One connection is shared by every request ([`IpcClient`] hands them to
//! one task, which multiplexes them on stream ids), opened when the first
//! request comes and again, lazily, after it fails: a refused connect
//! waits out a backoff (doubling from [`FIRST_BACKOFF`] to
//! [`MAX_BACKOFF`]) before the next attempt, so a dead nucleus is tried at
//! most once per backoff however many clients come, and a restarted one is
//! used again within seconds. A connection that breaks (closed, a garbage
//! or oversized message, a protocol error, a request left unanswered past
//! its deadline) fails the requests on it and is dropped; the next request
//! opens a new one at once.
//!
//! Every way a validation can fail other than the nucleus saying the token
//! is not valid ends in [`Admission::Refused`] with the reason: the client
//! is never let in on a doubt.

use super::json::{self, Value};
use super::Admission;
// `aws-smithy-eventstream` frames the types of `aws-smithy-types`, which
// weir reaches through the Kinesis SDK's re-export rather than one more
// direct dependency.
use aws_sdk_kinesis::primitives::event_stream::{Header, HeaderValue, Message};
use aws_smithy_eventstream::frame::{read_message_from, write_message_to};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long a request may take, connecting included (a validation: before
/// the client is refused). The Java SDK waits 10 s for its ConnectResponse: 8 s leaves
/// it a refusal to read rather than its own timeout. A live nucleus
/// answers in milliseconds.
pub const VALIDATION_TIMEOUT: Duration = Duration::from_secs(8);
/// Wait before the second connect attempt after a refused one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between connect attempts to a nucleus that is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Largest message weir takes from the nucleus. Its replies are a few
/// hundred bytes; nucleus lite caps its own messages at 10 000 bytes.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Longest client token weir passes on; a nucleus token is 16 characters,
/// so a longer one is refused without asking.
pub const MAX_TOKEN_LEN: usize = 4096;
/// How long past its deadline a caller still waits for the task's answer.
const BACKSTOP: Duration = Duration::from_millis(250);
/// Requests waiting to be sent to the nucleus.
const QUEUE: usize = 256;

pub const OPERATION: &str = "aws.greengrass#ValidateAuthorizationToken";
pub const REQUEST_MODEL: &str = "aws.greengrass#ValidateAuthorizationTokenRequest";
pub const RESPONSE_MODEL: &str = "aws.greengrass#ValidateAuthorizationTokenResponse";
pub const INVALID_TOKEN: &str = "aws.greengrass#InvalidTokenError";
pub const UNAUTHORIZED: &str = "aws.greengrass#UnauthorizedError";

/// `:message-type` values.
pub mod kind {
    pub const APPLICATION_MESSAGE: i32 = 0;
    pub const APPLICATION_ERROR: i32 = 1;
    pub const PING: i32 = 2;
    pub const PING_RESPONSE: i32 = 3;
    pub const CONNECT: i32 = 4;
    pub const CONNECT_ACK: i32 = 5;
    pub const PROTOCOL_ERROR: i32 = 6;
    pub const INTERNAL_ERROR: i32 = 7;
}
/// `:message-flags` bits.
pub const CONNECTION_ACCEPTED: i32 = 1;
pub const TERMINATE_STREAM: i32 = 2;

/// Smallest message: prelude (12 bytes) and message CRC (4).
const MIN_MESSAGE_LEN: usize = 16;
const PRELUDE_LEN: usize = 12;

/// Why a request got no reply from the nucleus. Cloneable (I/O errors are
/// shared): one broken connection fails every request on it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum IpcError {
    #[error("cannot connect to the nucleus IPC socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("the nucleus did not accept weir's IPC connect (is SVCUID the one it gave weir?)")]
    ConnectRejected,
    #[error("the nucleus IPC connection failed: {0}")]
    Io(Arc<std::io::Error>),
    #[error("the nucleus closed the IPC connection")]
    Closed,
    #[error("a malformed message from the nucleus: {0}")]
    Malformed(String),
    #[error("the nucleus sent {0}")]
    Protocol(String),
    #[error("the nucleus did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no operation stream id left on the nucleus IPC connection; reconnecting")]
    StreamIdsExhausted,
    #[error("the nucleus IPC client has stopped")]
    Stopped,
}

impl From<std::io::Error> for IpcError {
    fn from(e: std::io::Error) -> Self {
        IpcError::Io(Arc::new(e))
    }
}

// ---- the event-stream codec (sans-IO) ----

/// Appends `message`'s frame to `out`.
pub fn encode(message: &Message, out: &mut BytesMut) -> Result<(), IpcError> {
    write_message_to(message, out).map_err(|e| IpcError::Malformed(e.to_string()))
}

/// Takes one message off the front of `buf`: `Ok(None)` while it is
/// incomplete. A length outside 16..=[`MAX_MESSAGE_LEN`] is refused as soon
/// as the prelude is there, before the rest is waited for; lengths and both
/// CRCs are checked before anything is trusted.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Message>, IpcError> {
    if buf.len() < PRELUDE_LEN {
        return Ok(None);
    }
    let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(MIN_MESSAGE_LEN..=MAX_MESSAGE_LEN).contains(&total) {
        return Err(IpcError::Malformed(format!(
            "a message of {total} bytes (at most {MAX_MESSAGE_LEN})"
        )));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let frame = buf.split_to(total).freeze();
    read_message_from(frame)
        .map(Some)
        .map_err(|e| IpcError::Malformed(e.to_string()))
}

/// A message of the RPC layer: `headers` first, then the RPC headers in
/// the order the C client writes them (GREENGRASS.md 2.5), `operation` last
/// when given.
pub fn rpc_message(
    kind: i32,
    flags: i32,
    stream: i32,
    mut headers: Vec<Header>,
    operation: Option<&'static str>,
    payload: impl Into<Bytes>,
) -> Message {
    headers.push(Header::new(":message-type", HeaderValue::Int32(kind)));
    headers.push(Header::new(":message-flags", HeaderValue::Int32(flags)));
    headers.push(Header::new(":stream-id", HeaderValue::Int32(stream)));
    if let Some(operation) = operation {
        headers.push(Header::new(
            "operation",
            HeaderValue::String(operation.into()),
        ));
    }
    Message::new_from_parts(headers, payload)
}

/// CONNECT with weir's own token.
pub fn connect_message(svcuid: &str) -> Message {
    rpc_message(
        kind::CONNECT,
        0,
        0,
        vec![Header::new(":version", HeaderValue::String("0.1.0".into()))],
        None,
        json::object_with_string("authToken", svcuid),
    )
}

/// One operation weir asks of the nucleus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `operation`, e.g. `aws.greengrass#UpdateState`.
    pub operation: &'static str,
    /// `service-model-type` of the request, e.g.
    /// `aws.greengrass#UpdateStateRequest`.
    pub model: &'static str,
    /// The request model as JSON.
    pub payload: Bytes,
}

impl Request {
    /// `ValidateAuthorizationToken` of a client's token.
    pub fn validate_token(token: &str) -> Request {
        Request {
            operation: OPERATION,
            model: REQUEST_MODEL,
            payload: json::object_with_string("token", token).into(),
        }
    }
}

/// The message that opens operation stream `stream` with `request`.
pub fn request_message(stream: i32, request: &Request) -> Message {
    rpc_message(
        kind::APPLICATION_MESSAGE,
        0,
        stream,
        vec![
            Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            Header::new(
                "service-model-type",
                HeaderValue::String(request.model.into()),
            ),
        ],
        Some(request.operation),
        request.payload.clone(),
    )
}

/// The validation of `token` on operation stream `stream`.
pub fn validate_message(stream: i32, token: &str) -> Message {
    request_message(stream, &Request::validate_token(token))
}

/// The nucleus's first reply on a request's stream.
#[derive(Clone, Debug)]
pub struct Reply {
    /// `:message-type`: [`kind::APPLICATION_MESSAGE`] (the response) or
    /// [`kind::APPLICATION_ERROR`].
    pub kind: i32,
    pub message: Message,
}

impl Reply {
    /// The response model type, if the nucleus named it.
    pub fn model(&self) -> Option<&str> {
        string_header(&self.message, "service-model-type")
    }

    /// `None` for a response; for an error, its name (the classic nucleus
    /// names it in `service-model-type`, lite in `_errorCode` too) and its
    /// message, for the log.
    pub fn error(&self) -> Option<(String, String)> {
        (self.kind != kind::APPLICATION_MESSAGE).then(|| error_of(&self.message))
    }
}

/// An error reply's name and message (`message`, lite's `_message`, else
/// the payload itself).
fn error_of(message: &Message) -> (String, String) {
    let fields = json::object_fields(message.payload()).unwrap_or_default();
    let text = |name: &str| {
        fields.iter().find_map(|(n, value)| match value {
            Value::Str(s) if n == name => Some(s.clone()),
            _ => None,
        })
    };
    let code = string_header(message, "service-model-type")
        .map(str::to_owned)
        .or_else(|| text("_errorCode"))
        .unwrap_or_else(|| "an unnamed error".into());
    let detail = text("message")
        .or_else(|| text("_message"))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| lossy(message.payload()));
    (code, detail)
}

/// A header's value by name (aws-c-event-stream compares names without
/// regard to case).
pub fn header<'m>(message: &'m Message, name: &str) -> Option<&'m HeaderValue> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str().eq_ignore_ascii_case(name))
        .map(Header::value)
}

fn int_header(message: &Message, name: &str) -> Result<Option<i32>, IpcError> {
    match header(message, name) {
        None => Ok(None),
        Some(HeaderValue::Int32(v)) => Ok(Some(*v)),
        Some(other) => Err(IpcError::Malformed(format!("{name} is {other:?}"))),
    }
}

fn string_header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    match header(message, name) {
        Some(HeaderValue::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// `:message-type`, `:message-flags` (0 when absent) and `:stream-id`.
pub fn rpc_headers(message: &Message) -> Result<(i32, i32, i32), IpcError> {
    let missing = |name: &str| IpcError::Malformed(format!("a message without {name}"));
    let kind = int_header(message, ":message-type")?.ok_or_else(|| missing(":message-type"))?;
    let flags = int_header(message, ":message-flags")?.unwrap_or(0);
    let stream = int_header(message, ":stream-id")?.ok_or_else(|| missing(":stream-id"))?;
    Ok((kind, flags, stream))
}

/// What a reply on a validation's stream means for the client.
pub fn map_reply(message: &Message, kind: i32) -> Admission {
    let model = string_header(message, "service-model-type");
    let fields = json::object_fields(message.payload()).unwrap_or_default();
    match kind {
        kind::APPLICATION_MESSAGE => match fields.iter().find(|(n, _)| n == "isValid") {
            Some((_, Value::Bool(true))) => Admission::Admitted,
            Some((_, Value::Bool(false))) => Admission::Unauthorized,
            _ => Admission::Refused(format!(
                "the nucleus answered the validation with {} {:?}",
                model.unwrap_or("no service-model-type"),
                lossy(message.payload()),
            )),
        },
        kind::APPLICATION_ERROR => {
            let (code, detail) = error_of(message);
            let is =
                |name: &str| code == name || code.rsplit('#').next() == name.rsplit('#').next();
            if is(INVALID_TOKEN) {
                return Admission::Unauthorized;
            }
            if is(UNAUTHORIZED) {
                Admission::Refused(format!(
                    "the nucleus does not let weir validate tokens ({code}: {detail}); only a component named aws.greengrass.StreamManager may"
                ))
            } else {
                Admission::Refused(format!("the nucleus answered {code}: {detail}"))
            }
        }
        other => Admission::Refused(format!(
            "the nucleus answered the validation with message type {other}"
        )),
    }
}

/// A payload for a log line: text, cut short.
fn lossy(payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(256)];
    String::from_utf8_lossy(cut).into_owned()
}

// ---- the client ----

/// Where and as whom weir connects to the nucleus.
#[derive(Clone, PartialEq, Eq)]
pub struct IpcSettings {
    /// The nucleus domain socket, used as given: a relative path is
    /// relative to the working directory (the classic nucleus hands out
    /// one when the absolute path is too long for a socket address).
    pub socket: PathBuf,
    /// weir's own IPC token (`SVCUID`).
    pub svcuid: String,
    /// [`VALIDATION_TIMEOUT`] outside tests.
    pub timeout: Duration,
}

impl std::fmt::Debug for IpcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcSettings")
            .field("socket", &self.socket)
            .field("svcuid", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// weir's handle on the nucleus IPC: cheap to clone and to call from
/// every connection at once. Requests are handed to one task that owns the
/// IPC connection (started by [`IpcClient::start`], ended once every handle
/// is dropped), and each caller waits only for its own reply.
#[derive(Clone)]
pub struct IpcClient {
    requests: mpsc::Sender<Pending>,
    timeout: Duration,
}

struct Pending {
    request: Request,
    deadline: Instant,
    answer: oneshot::Sender<Result<Reply, IpcError>>,
}

impl Pending {
    fn answer(self, outcome: Result<Reply, IpcError>) {
        // The caller may have given up (its own deadline): nothing to tell.
        let _gone = self.answer.send(outcome);
    }
}

impl IpcClient {
    /// Starts the task that talks to the nucleus (on the current tokio
    /// runtime); it connects when the first request comes.
    pub fn start(settings: IpcSettings) -> IpcClient {
        let (requests, queue) = mpsc::channel(QUEUE);
        let client = IpcClient {
            requests,
            timeout: settings.timeout,
        };
        tokio::spawn(Client::new(settings, queue).run());
        client
    }

    /// Sends `request` and returns the nucleus's first reply on its stream
    /// (a response or an error, for the caller to map); never waits longer
    /// than the timeout.
    pub async fn call(&self, request: Request) -> Result<Reply, IpcError> {
        let deadline = Instant::now() + self.timeout;
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            request,
            deadline,
            answer,
        };
        let asked = async {
            self.requests.send(pending).await.ok()?;
            answered.await.ok()
        };
        // The task answers at the deadline itself (and drops a connection
        // that left a request unanswered); this is the backstop.
        match tokio::time::timeout_at(deadline + BACKSTOP, asked).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) => Err(IpcError::Stopped),
            Err(_) => Err(IpcError::Timeout(self.timeout)),
        }
    }
}

/// Validates client tokens over the nucleus IPC
/// (`ValidateAuthorizationToken` on the shared [`IpcClient`]).
pub struct IpcValidator {
    client: IpcClient,
}

impl IpcValidator {
    pub fn new(client: IpcClient) -> IpcValidator {
        IpcValidator { client }
    }

    /// A validator on a connection of its own.
    pub fn start(settings: IpcSettings) -> IpcValidator {
        IpcValidator::new(IpcClient::start(settings))
    }

    /// Asks the nucleus whether `token` is valid; never waits longer than
    /// the timeout.
    pub async fn validate(&self, token: &str) -> Admission {
        if token.len() > MAX_TOKEN_LEN {
            return Admission::Unauthorized;
        }
        match self.client.call(Request::validate_token(token)).await {
            Ok(reply) => map_reply(&reply.message, reply.kind),
            Err(e) => Admission::Refused(e.to_string()),
        }
    }
}

/// The task that owns the IPC connection.
struct Client {
    settings: IpcSettings,
    queue: mpsc::Receiver<Pending>,
    backoff: Duration,
    /// No connect attempt before this (after a refused one).
    next_attempt: Option<Instant>,
}

impl Client {
    fn new(settings: IpcSettings, queue: mpsc::Receiver<Pending>) -> Client {
        Client {
            settings,
            queue,
            backoff: FIRST_BACKOFF,
            next_attempt: None,
        }
    }

    async fn run(mut self) {
        while let Some(first) = self.queue.recv().await {
            if first.answer.is_closed() {
                continue;
            }
            if let Some(at) = self.next_attempt.take() {
                tokio::time::sleep_until(at).await;
            }
            let timeout = self.settings.timeout;
            let opened = tokio::time::timeout(timeout, Connection::open(&self.settings)).await;
            let mut connection = match opened.unwrap_or(Err(IpcError::Timeout(timeout))) {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::warn!(
                        socket = %self.settings.socket.display(),
                        error = %e,
                        retry_after = ?self.backoff,
                        operation = first.request.operation,
                        "cannot reach the Greengrass nucleus IPC"
                    );
                    first.answer(Err(e.clone()));
                    // Those that came meanwhile wanted the same attempt.
                    while let Ok(queued) = self.queue.try_recv() {
                        queued.answer(Err(e.clone()));
                    }
                    self.next_attempt = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if self.backoff != FIRST_BACKOFF {
                tracing::info!("reached the Greengrass nucleus again");
            } else {
                tracing::debug!("connected to the Greengrass nucleus IPC");
            }
            self.backoff = FIRST_BACKOFF;
            match connection.serve(first, &mut self.queue).await {
                // The validator is gone: weir is stopping.
                None => return,
                Some(e) => tracing::warn!(
                    error = %e,
                    "the nucleus IPC connection ended; the next request opens a new one"
                ),
            }
        }
    }
}

struct Connection {
    stream: UnixStream,
    buf: BytesMut,
    timeout: Duration,
    next_stream: i32,
    pending: HashMap<i32, Pending>,
}

impl Connection {
    /// Connects and completes the CONNECT handshake.
    async fn open(settings: &IpcSettings) -> Result<Connection, IpcError> {
        let stream = UnixStream::connect(&settings.socket)
            .await
            .map_err(|source| IpcError::Connect {
                path: settings.socket.clone(),
                source: Arc::new(source),
            })?;
        let mut connection = Connection {
            stream,
            buf: BytesMut::with_capacity(4096),
            timeout: settings.timeout,
            next_stream: 1,
            pending: HashMap::new(),
        };
        connection.write(&connect_message(&settings.svcuid)).await?;
        let ack = match connection.read().await {
            Ok(ack) => ack,
            // Lite closes without an ACK when it refuses the token.
            Err(IpcError::Closed) => return Err(IpcError::ConnectRejected),
            Err(e) => return Err(e),
        };
        match rpc_headers(&ack)? {
            (kind::CONNECT_ACK, flags, 0) if flags & CONNECTION_ACCEPTED != 0 => Ok(connection),
            (kind::CONNECT_ACK, _, _) => Err(IpcError::ConnectRejected),
            (other, _, _) => Err(IpcError::Protocol(format!(
                "message type {other} in reply to CONNECT: {}",
                lossy(ack.payload())
            ))),
        }
    }

    async fn write(&mut self, message: &Message) -> Result<(), IpcError> {
        let mut frame = BytesMut::new();
        encode(message, &mut frame)?;
        match tokio::time::timeout(self.timeout, self.stream.write_all(&frame)).await {
            Ok(written) => Ok(written?),
            Err(_) => Err(IpcError::Timeout(self.timeout)),
        }
    }

    /// The next message; cancel-safe (what was read stays in `buf`).
    async fn read(&mut self) -> Result<Message, IpcError> {
        loop {
            if let Some(message) = decode(&mut self.buf)? {
                return Ok(message);
            }
            self.buf.reserve(4096);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(IpcError::Closed);
            }
        }
    }

    /// Sends `first` and every request queued after it, and answers them
    /// as replies come, until the connection fails (the error returned, and
    /// given to the requests on it) or the queue closes (`None`).
    async fn serve(
        &mut self,
        first: Pending,
        queue: &mut mpsc::Receiver<Pending>,
    ) -> Option<IpcError> {
        let error = match self.send(first).await {
            Ok(()) => self.exchange(queue).await?,
            Err(e) => e,
        };
        for (_, pending) in self.pending.drain() {
            pending.answer(Err(error.clone()));
        }
        Some(error)
    }

    async fn exchange(&mut self, queue: &mut mpsc::Receiver<Pending>) -> Option<IpcError> {
        loop {
            let earliest = self
                .pending
                .values()
                .filter(|p| !p.answer.is_closed())
                .map(|p| p.deadline)
                .min();
            let step = tokio::select! {
                queued = queue.recv() => match queued {
                    Some(pending) => self.send(pending).await,
                    None => return None,
                },
                message = self.read() => match message {
                    Ok(message) => self.receive(message).await,
                    Err(e) => Err(e),
                },
                () = sleep_until_some(earliest) => self.expire(),
            };
            if let Err(e) = step {
                return Some(e);
            }
        }
    }

    /// A deadline passed: a request left unanswered that long means the
    /// connection is not to be trusted any more (its callers, waiting for
    /// the same deadline, give up at once).
    fn expire(&mut self) -> Result<(), IpcError> {
        self.pending.retain(|_, p| !p.answer.is_closed());
        let now = Instant::now();
        if self.pending.values().any(|p| p.deadline <= now) {
            return Err(IpcError::Timeout(self.timeout));
        }
        Ok(())
    }

    async fn send(&mut self, pending: Pending) -> Result<(), IpcError> {
        if pending.answer.is_closed() {
            return Ok(());
        }
        // Callers that gave up leave nothing behind.
        self.pending.retain(|_, p| !p.answer.is_closed());
        if self.next_stream == i32::MAX {
            pending.answer(Err(IpcError::StreamIdsExhausted));
            return Err(IpcError::StreamIdsExhausted);
        }
        let stream = self.next_stream;
        self.next_stream += 1;
        let message = request_message(stream, &pending.request);
        self.pending.insert(stream, pending);
        self.write(&message).await
    }

    async fn receive(&mut self, message: Message) -> Result<(), IpcError> {
        let (kind, _flags, stream) = rpc_headers(&message)?;
        if stream == 0 {
            return match kind {
                kind::PING => {
                    // Echo what is not RPC (classic does the same).
                    let headers = message
                        .headers()
                        .iter()
                        .filter(|h| !h.name().as_str().starts_with(':'))
                        .cloned()
                        .collect();
                    let pong = rpc_message(
                        kind::PING_RESPONSE,
                        0,
                        0,
                        headers,
                        None,
                        message.payload().clone(),
                    );
                    self.write(&pong).await
                }
                kind::PING_RESPONSE => Ok(()),
                kind::PROTOCOL_ERROR | kind::INTERNAL_ERROR => Err(IpcError::Protocol(format!(
                    "a connection error (type {kind}): {}",
                    lossy(message.payload())
                ))),
                other => Err(IpcError::Protocol(format!(
                    "message type {other} on the connection's stream"
                ))),
            };
        }
        if !matches!(kind, kind::APPLICATION_MESSAGE | kind::APPLICATION_ERROR) {
            return Err(IpcError::Protocol(format!(
                "message type {kind} on operation stream {stream}"
            )));
        }
        // The first reply completes the request, terminate flag or not
        // (nucleus lite sets none on a success); a reply to one that timed
        // out or was already answered is dropped.
        if let Some(pending) = self.pending.remove(&stream) {
            pending.answer(Ok(Reply { kind, message }));
        }
        Ok(())
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
pub(crate) mod scripted;
#[cfg(test)]
mod tests;
