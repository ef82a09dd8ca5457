//! The codec against GREENGRASS.md's worked bytes, reply mapping for both
//! nuclei, malformed input, and the client against a scripted nucleus on a
//! Unix socket (multiplexing, lite replies, no answer, garbage, a restart).

use super::scripted::{frame, listen, next_message, settings, SVCUID};
use super::*;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

#[test]
fn connect_and_validate_match_the_worked_bytes() {
    let connect = hex(
        "00 00 00 78 00 00 00 48 d4 87 bd c5 08 3a 76 65 72 73 69 6f 6e 07 00 05 30 2e 31 2e 30 0d 3a 6d
         65 73 73 61 67 65 2d 74 79 70 65 04 00 00 00 04 0e 3a 6d 65 73 73 61 67 65 2d 66 6c 61 67 73 04
         00 00 00 00 0a 3a 73 74 72 65 61 6d 2d 69 64 04 00 00 00 00 7b 22 61 75 74 68 54 6f 6b 65 6e 22
         3a 22 41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f 50 22 7d fc 80 8a be",
    );
    assert_eq!(
        &frame(&connect_message("ABCDEFGHIJKLMNOP"))[..],
        &connect[..]
    );

    let validate = frame(&validate_message(1, "QRSTUVWXYZ234567"));
    assert_eq!(validate.len(), 256);
    assert_eq!(
        &validate[..12],
        &hex("00 00 01 00 00 00 00 d4 2f c0 1a 01")[..]
    );
    assert_eq!(&validate[252..], &hex("e0 11 07 7b")[..]);

    let mut ack = BytesMut::from(
        &hex(
            "00 00 00 47 00 00 00 37 37 4c fe 3f 0d 3a 6d 65 73 73 61 67 65 2d 74 79 70 65 04 00 00 00 05 0e
             3a 6d 65 73 73 61 67 65 2d 66 6c 61 67 73 04 00 00 00 01 0a 3a 73 74 72 65 61 6d 2d 69 64 04 00
             00 00 00 e2 37 e2 7d",
        )[..],
    );
    let ack = decode(&mut ack).unwrap().unwrap();
    assert_eq!(
        rpc_headers(&ack).unwrap(),
        (kind::CONNECT_ACK, CONNECTION_ACCEPTED, 0)
    );
    // The empty message of aws-c-event-stream's tests.
    let mut empty = BytesMut::from(&hex("00 00 00 10 00 00 00 00 05 c2 48 eb 7d 98 c8 ff")[..]);
    let empty = decode(&mut empty).unwrap().unwrap();
    assert!(empty.headers().is_empty() && empty.payload().is_empty());
}

#[test]
fn a_message_waits_for_its_last_byte_and_the_next_one_stays() {
    let one = frame(&validate_message(7, "tok\"en"));
    let mut both = one.clone();
    both.extend_from_slice(&frame(&validate_message(8, "two")));
    for end in 0..one.len() {
        let mut part = BytesMut::from(&one[..end]);
        assert!(decode(&mut part).unwrap().is_none(), "{end}");
    }
    let first = decode(&mut both).unwrap().unwrap();
    assert_eq!(rpc_headers(&first).unwrap(), (0, 0, 7));
    assert_eq!(string_header(&first, "OPERATION"), Some(OPERATION));
    assert_eq!(&first.payload()[..], br#"{"token":"tok\"en"}"#);
    let second = decode(&mut both).unwrap().unwrap();
    assert_eq!(rpc_headers(&second).unwrap().2, 8);
    assert!(both.is_empty());
}

#[test]
fn malformed_input_is_an_error_never_a_panic() {
    // A length past the limit is refused from the prelude alone.
    let mut huge = BytesMut::from(&[0x00, 0x10, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0][..]);
    assert!(matches!(decode(&mut huge), Err(IpcError::Malformed(_))));
    let mut tiny = BytesMut::from(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0][..]);
    assert!(decode(&mut tiny).is_err());
    // Every single-bit flip of a real message fails a CRC or a bound, or
    // decodes to something; none panics.
    let good = frame(&validate_message(3, "QRSTUVWXYZ234567"));
    let mut decoded_anyway = 0;
    for i in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[i / 8] ^= 1 << (i % 8);
        if let Ok(Some(_)) = decode(&mut bad) {
            decoded_anyway += 1;
        }
    }
    assert_eq!(decoded_anyway, 0, "CRC-32 catches every single-bit error");
    // Bytes of every value after a valid prelude, lengths and CRC included.
    let mut seed = 0x2545_f491_u32;
    for _ in 0..2000 {
        let len = 16 + (seed % 64) as usize;
        let mut bytes = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            bytes.push(seed as u8);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        let _any_outcome = decode(&mut buf);
    }
    // Headers an RPC message needs.
    let no_type = Message::new_from_parts(vec![], Bytes::new());
    assert!(rpc_headers(&no_type).is_err());
    let wrong_type = Message::new_from_parts(
        vec![Header::new(
            ":message-type",
            HeaderValue::String("0".into()),
        )],
        Bytes::new(),
    );
    assert!(rpc_headers(&wrong_type).is_err());
}

fn reply(kind: i32, model: Option<&'static str>, payload: &'static str) -> Message {
    let mut headers = vec![Header::new(
        ":content-type",
        HeaderValue::String("application/json".into()),
    )];
    if let Some(model) = model {
        headers.push(Header::new(
            "service-model-type",
            HeaderValue::String(model.into()),
        ));
    }
    rpc_message(kind, TERMINATE_STREAM, 1, headers, None, payload)
}

#[test]
fn replies_of_both_nuclei_map_to_admissions() {
    use kind::*;
    let ok = reply(
        APPLICATION_MESSAGE,
        Some(RESPONSE_MODEL),
        r#"{"isValid":true}"#,
    );
    assert_eq!(map_reply(&ok, APPLICATION_MESSAGE), Admission::Admitted);
    let no = reply(
        APPLICATION_MESSAGE,
        Some(RESPONSE_MODEL),
        r#"{"isValid":false}"#,
    );
    assert_eq!(map_reply(&no, APPLICATION_MESSAGE), Admission::Unauthorized);
    let classic = reply(
        APPLICATION_ERROR,
        Some(INVALID_TOKEN),
        r#"{"message":"Invalid token used when trying to authorize"}"#,
    );
    assert_eq!(
        map_reply(&classic, APPLICATION_ERROR),
        Admission::Unauthorized
    );
    let lite = reply(
        APPLICATION_ERROR,
        None,
        r#"{"_message":"Invalid token","_errorCode":"InvalidTokenError"}"#,
    );
    assert_eq!(map_reply(&lite, APPLICATION_ERROR), Admission::Unauthorized);
    let refused = |message: &Message, kind: i32, needle: &str| match map_reply(message, kind) {
        Admission::Refused(reason) => assert!(reason.contains(needle), "{reason}"),
        other => panic!("{other:?}"),
    };
    let not_us = reply(APPLICATION_ERROR, Some(UNAUTHORIZED), r#"{"message":"no"}"#);
    refused(&not_us, APPLICATION_ERROR, "aws.greengrass.StreamManager");
    let service = reply(
        APPLICATION_ERROR,
        Some("aws.greengrass#ServiceError"),
        r#"{"_message":"boom"}"#,
    );
    refused(&service, APPLICATION_ERROR, "boom");
    let internal = rpc_message(
        APPLICATION_ERROR,
        TERMINATE_STREAM,
        1,
        vec![Header::new(
            ":content-type",
            HeaderValue::String("text/plain".into()),
        )],
        None,
        "InternalServerError",
    );
    refused(&internal, APPLICATION_ERROR, "InternalServerError");
    refused(
        &reply(APPLICATION_MESSAGE, None, "{}"),
        APPLICATION_MESSAGE,
        "validation",
    );
    refused(
        &reply(APPLICATION_MESSAGE, None, "not json"),
        APPLICATION_MESSAGE,
        "not json",
    );
}

// ---- the client against a scripted nucleus ----

/// How the scripted nucleus treats a validation.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// Tokens starting `good` are valid, others not; replies flagged
    /// terminate (classic) or not (lite).
    Answer { terminate: bool },
    /// Pings before answering each validation (as valid), and checks the
    /// PING_RESPONSE echoes the ping's own headers and payload.
    Ping,
    /// Accepts the connection, never answers a validation.
    Silent,
    /// Answers validations with bytes that are no message.
    Garbage,
    /// Refuses the CONNECT (ACK without the accepted flag).
    RejectConnect,
}

struct Nucleus {
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Nucleus {
    fn start(path: &Path, script: Script) -> Nucleus {
        let listener = listen(path);
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_scripted(socket, script));
            }
        });
        Nucleus { connections, task }
    }

    fn stop(self) {
        self.task.abort();
    }
}

async fn serve_scripted(mut socket: UnixStream, script: Script) {
    let mut buf = BytesMut::new();
    let Some(connect) = next_message(&mut socket, &mut buf).await else {
        return;
    };
    assert_eq!(rpc_headers(&connect).unwrap(), (kind::CONNECT, 0, 0));
    assert_eq!(string_header(&connect, ":version"), Some("0.1.0"));
    let token = json::object_fields(connect.payload()).unwrap();
    let accepted = token == vec![("authToken".into(), Value::Str(SVCUID.into()))]
        && !matches!(script, Script::RejectConnect);
    let flags = if accepted { CONNECTION_ACCEPTED } else { 0 };
    let ack = rpc_message(kind::CONNECT_ACK, flags, 0, vec![], None, Bytes::new());
    socket.write_all(&frame(&ack)).await.unwrap();
    if !accepted {
        return;
    }
    while let Some(request) = next_message(&mut socket, &mut buf).await {
        let (_, _, stream) = rpc_headers(&request).unwrap();
        assert_eq!(string_header(&request, "operation"), Some(OPERATION));
        let Some(Value::Str(token)) = json::object_fields(request.payload())
            .and_then(|f| f.into_iter().find(|(n, _)| n == "token").map(|(_, v)| v))
        else {
            panic!("no token in {request:?}");
        };
        let answer = match script {
            Script::Answer { terminate } => {
                let flags = if terminate { TERMINATE_STREAM } else { 0 };
                let (kind, model, payload) = if token.starts_with("good") {
                    (
                        kind::APPLICATION_MESSAGE,
                        RESPONSE_MODEL,
                        r#"{"isValid":true}"#,
                    )
                } else {
                    (
                        kind::APPLICATION_ERROR,
                        INVALID_TOKEN,
                        r#"{"message":"Invalid token"}"#,
                    )
                };
                let headers = vec![Header::new(
                    "service-model-type",
                    HeaderValue::String(model.into()),
                )];
                frame(&rpc_message(kind, flags, stream, headers, None, payload))
            }
            Script::Ping => {
                let ping = rpc_message(
                    kind::PING,
                    0,
                    0,
                    vec![Header::new("x-probe", HeaderValue::Int32(7))],
                    None,
                    "probe",
                );
                socket.write_all(&frame(&ping)).await.unwrap();
                let pong = next_message(&mut socket, &mut buf).await.unwrap();
                assert_eq!(rpc_headers(&pong).unwrap(), (kind::PING_RESPONSE, 0, 0));
                assert_eq!(header(&pong, "x-probe"), Some(&HeaderValue::Int32(7)));
                assert_eq!(&pong.payload()[..], b"probe");
                let headers = vec![Header::new(
                    "service-model-type",
                    HeaderValue::String(RESPONSE_MODEL.into()),
                )];
                frame(&rpc_message(
                    kind::APPLICATION_MESSAGE,
                    TERMINATE_STREAM,
                    stream,
                    headers,
                    None,
                    r#"{"isValid":true}"#,
                ))
            }
            Script::Silent => continue,
            Script::Garbage => {
                BytesMut::from(&b"\0\0\0\x20 this is not an event-stream message"[..])
            }
            Script::RejectConnect => unreachable!(),
        };
        if socket.write_all(&answer).await.is_err() {
            return;
        }
    }
}

fn validator(path: &Path, timeout: Duration) -> IpcValidator {
    IpcValidator::start(IpcSettings {
        timeout,
        ..settings(path)
    })
}

fn refused(admission: Admission, needle: &str) {
    match admission {
        Admission::Refused(reason) => {
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
        }
        other => panic!("expected a refusal ({needle}), got {other:?}"),
    }
}

#[tokio::test]
async fn validations_share_one_connection_with_classic_and_lite_replies() {
    for terminate in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc.socket");
        let nucleus = Nucleus::start(&path, Script::Answer { terminate });
        let v = validator(&path, VALIDATION_TIMEOUT);
        let tokens: Vec<String> = (0..20)
            .map(|i| {
                if i % 2 == 0 {
                    format!("good{i}")
                } else {
                    format!("bad{i}")
                }
            })
            .collect();
        let answers = futures_util::future::join_all(tokens.iter().map(|t| v.validate(t))).await;
        for (token, answer) in tokens.iter().zip(answers) {
            let expected = if token.starts_with("good") {
                Admission::Admitted
            } else {
                Admission::Unauthorized
            };
            assert_eq!(answer, expected, "{token} (terminate {terminate})");
        }
        assert_eq!(v.validate("good-later").await, Admission::Admitted);
        assert_eq!(
            nucleus.connections.load(Ordering::SeqCst),
            1,
            "one shared connection"
        );
        nucleus.stop();
    }
}

#[tokio::test]
async fn a_nucleus_that_fails_refuses_and_one_that_comes_back_is_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.socket");
    // Nobody listens: refused at once, with the reason.
    let v = validator(&path, Duration::from_secs(2));
    refused(v.validate("good").await, "cannot connect");
    // A nucleus that never answers: refused when the timeout passes.
    let silent = Nucleus::start(&path, Script::Silent);
    refused(v.validate("good").await, "did not answer");
    silent.stop();
    // Garbage on the connection fails the validation on it, not the next.
    let garbage = Nucleus::start(&path, Script::Garbage);
    refused(v.validate("good").await, "malformed");
    garbage.stop();
    // A rejected CONNECT.
    let rejecting = Nucleus::start(&path, Script::RejectConnect);
    refused(v.validate("good").await, "did not accept");
    rejecting.stop();
    // The nucleus is back: within the backoff's few seconds, clients are
    // admitted again.
    let nucleus = Nucleus::start(&path, Script::Answer { terminate: true });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match v.validate("good").await {
            Admission::Admitted => break,
            other => assert!(Instant::now() < deadline, "still {other:?}"),
        }
    }
    assert_eq!(v.validate("bad").await, Admission::Unauthorized);
    nucleus.stop();
}

#[tokio::test]
async fn a_ping_from_the_nucleus_is_answered_in_between() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.socket");
    let nucleus = Nucleus::start(&path, Script::Ping);
    let v = validator(&path, VALIDATION_TIMEOUT);
    for _ in 0..3 {
        assert_eq!(v.validate("good").await, Admission::Admitted);
    }
    assert_eq!(nucleus.connections.load(Ordering::SeqCst), 1);
    nucleus.stop();
}

#[tokio::test]
async fn an_oversized_token_is_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ipc.socket");
    let nucleus = Nucleus::start(&path, Script::Answer { terminate: true });
    let v = validator(&path, VALIDATION_TIMEOUT);
    let long = format!("good{}", "x".repeat(MAX_TOKEN_LEN));
    assert_eq!(v.validate(&long).await, Admission::Unauthorized);
    assert_eq!(nucleus.connections.load(Ordering::SeqCst), 0);
    nucleus.stop();
}
