//! A scripted nucleus for the tests of weir's other requests of the nucleus
//! (readiness, telemetry): accepts any CONNECT, records every request
//! (operation and payload, in order) and answers it the way the classic
//! nucleus or nucleus lite does (GREENGRASS.md 2.6, 3).

use super::*;
use std::path::Path;
use tokio::net::UnixListener;

/// Which nucleus it plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Responses flagged terminate; `PutComponentMetric` answered.
    Classic,
    /// Responses without the flag; `PutComponentMetric` unknown, answered
    /// the way ggipcd answers an operation it has no handler for (a
    /// `ServiceError`, flagged terminate, with an empty `_message`).
    Lite,
}

/// One request the nucleus got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub operation: String,
    pub model: String,
    pub payload: String,
}

pub struct ScriptedNucleus {
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedNucleus {
    /// Listens on `path`; every request is sent to the receiver returned.
    pub fn start(
        path: &Path,
        flavour: Flavour,
    ) -> (ScriptedNucleus, mpsc::UnboundedReceiver<Seen>) {
        let listener = listen(path);
        let (seen, requests) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, flavour, seen.clone()));
            }
        });
        (ScriptedNucleus { task }, requests)
    }
}

impl Drop for ScriptedNucleus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The SVCUID the scripted nuclei accept (the one [`settings`] presents).
pub const SVCUID: &str = "WEIRSVCUID000000";

/// Settings of a client of the nucleus on `path`.
pub fn settings(path: &Path) -> IpcSettings {
    IpcSettings {
        socket: path.to_owned(),
        svcuid: SVCUID.into(),
        timeout: VALIDATION_TIMEOUT,
    }
}

/// A listener on `path`, for a scripted nucleus (one restarted on the same
/// path replaces the socket file its predecessor left).
pub fn listen(path: &Path) -> UnixListener {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot remove the old socket {}: {e}", path.display()),
    }
    UnixListener::bind(path).unwrap()
}

/// `message` as bytes on the wire.
pub fn frame(message: &Message) -> BytesMut {
    let mut out = BytesMut::new();
    encode(message, &mut out).unwrap();
    out
}

/// The next whole message from `socket` (bytes after it stay in `buf`);
/// `None` once the peer is gone.
pub async fn next_message(socket: &mut UnixStream, buf: &mut BytesMut) -> Option<Message> {
    loop {
        if let Some(message) = decode(buf).unwrap() {
            return Some(message);
        }
        if socket.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn serve(mut socket: UnixStream, flavour: Flavour, seen: mpsc::UnboundedSender<Seen>) {
    let mut buf = BytesMut::new();
    let mut first = true;
    while let Some(message) = next_message(&mut socket, &mut buf).await {
        let (kind, flags, stream) = rpc_headers(&message).unwrap();
        if first {
            assert_eq!(kind, kind::CONNECT);
            first = false;
            let ack = rpc_message(
                kind::CONNECT_ACK,
                CONNECTION_ACCEPTED,
                0,
                vec![],
                None,
                Bytes::new(),
            );
            write(&mut socket, &ack).await;
            continue;
        }
        if flags & TERMINATE_STREAM != 0 {
            continue;
        }
        let operation = string_header(&message, "operation").unwrap_or_default();
        let request = Seen {
            operation: operation.to_owned(),
            model: string_header(&message, "service-model-type")
                .unwrap_or_default()
                .to_owned(),
            payload: String::from_utf8_lossy(message.payload()).into_owned(),
        };
        let (kind, flags, model, payload) = match (operation, flavour) {
            ("aws.greengrass#UpdateState", Flavour::Classic) => (
                kind::APPLICATION_MESSAGE,
                TERMINATE_STREAM,
                "aws.greengrass#UpdateStateResponse",
                "{}",
            ),
            ("aws.greengrass#UpdateState", Flavour::Lite) => (
                kind::APPLICATION_MESSAGE,
                0,
                "aws.greengrass#UpdateStateResponse",
                "{}",
            ),
            ("aws.greengrass#PutComponentMetric", Flavour::Classic) => (
                kind::APPLICATION_MESSAGE,
                TERMINATE_STREAM,
                "aws.greengrass#PutComponentMetricResponse",
                "{}",
            ),
            (_, Flavour::Lite) => (
                kind::APPLICATION_ERROR,
                TERMINATE_STREAM,
                "aws.greengrass#ServiceError",
                r#"{"_message":"","_errorCode":"ServiceError"}"#,
            ),
            (_, Flavour::Classic) => (
                kind::APPLICATION_ERROR,
                TERMINATE_STREAM,
                "aws.greengrass#ServiceError",
                r#"{"message":"not scripted"}"#,
            ),
        };
        // Recorded before the reply goes: a test that awaits it sees
        // the request while its sender still waits for the answer.
        if seen.send(request).is_err() {
            return;
        }
        let headers = vec![
            Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            Header::new("service-model-type", HeaderValue::String(model.into())),
        ];
        write(
            &mut socket,
            &rpc_message(kind, flags, stream, headers, None, payload),
        )
        .await;
    }
}

async fn write(socket: &mut UnixStream, message: &Message) {
    // The peer may be gone (weir stopping): nothing to answer then.
    let _gone = socket.write_all(&frame(message)).await;
}

/// Log lines of the current thread (a current-thread runtime's tasks).
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn capture() -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
        let logs = CapturedLogs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }

    /// Yields to the runtime until `needle` was logged `times` times.
    pub async fn wait_for(&self, needle: &str, times: usize) {
        while self.count(needle) < times {
            tokio::task::yield_now().await;
        }
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> CapturedLogs {
        self.clone()
    }
}
