//! Answers: one variant per operation, encoded with the keys in the model's
//! field order (the order the SDKs' own `as_dict`/`asMap` produce), definite
//! lengths, and optional keys omitted rather than `null`.

use super::cbor::Writer;
use super::model::{Message, MessageStreamInfo};
use super::status::{Operation, StatusCode};
use super::ProtocolVersion;

/// A failed operation: its status and the text the client's exception carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub request_id: String,
    pub body: ReplyBody,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ReplyBody {
    CreateMessageStream(Result<(), Failure>),
    DeleteMessageStream(Result<(), Failure>),
    UpdateMessageStream(Result<(), Failure>),
    AppendMessage(Result<i64, Failure>),
    ReadMessages {
        stream_name: String,
        result: Result<Vec<Message>, Failure>,
    },
    ListStreams(Result<Vec<String>, Failure>),
    /// Boxed: a stream's info dwarfs every other answer.
    DescribeMessageStream(Result<Box<MessageStreamInfo>, Failure>),
    /// Op 17: the request's operation is not implemented.
    UnknownOperation(String),
    /// A known operation whose request could not be decoded; answered on
    /// that operation's response op with the failure.
    Rejected {
        op: Operation,
        failure: Failure,
    },
}

impl Reply {
    pub fn operation(&self) -> Operation {
        match &self.body {
            ReplyBody::CreateMessageStream(_) => Operation::CreateMessageStreamResponse,
            ReplyBody::DeleteMessageStream(_) => Operation::DeleteMessageStreamResponse,
            ReplyBody::UpdateMessageStream(_) => Operation::UpdateMessageStreamResponse,
            ReplyBody::AppendMessage(_) => Operation::AppendMessageResponse,
            ReplyBody::ReadMessages { .. } => Operation::ReadMessagesResponse,
            ReplyBody::ListStreams(_) => Operation::ListStreamsResponse,
            ReplyBody::DescribeMessageStream(_) => Operation::DescribeMessageStreamResponse,
            ReplyBody::UnknownOperation(_) => Operation::UnknownOperationError,
            ReplyBody::Rejected { op, .. } => *op,
        }
    }

    /// The whole frame, built in one buffer and ready for one write.
    pub fn frame(&self, version: ProtocolVersion) -> bytes::Bytes {
        bytes::Bytes::from(self.writer(version).into_frame(self.operation() as u8))
    }

    fn writer(&self, version: ProtocolVersion) -> Writer {
        let id = self.request_id.as_str();
        match &self.body {
            ReplyBody::CreateMessageStream(r)
            | ReplyBody::DeleteMessageStream(r)
            | ReplyBody::UpdateMessageStream(r) => status_only(id, r.as_ref().err(), version),
            ReplyBody::Rejected { failure, .. } => status_only(id, Some(failure), version),
            ReplyBody::UnknownOperation(message) => status_only(
                id,
                Some(&Failure::new(StatusCode::UnknownOperation, message.clone())),
                version,
            ),
            ReplyBody::AppendMessage(r) => {
                let mut w = head(id, r.as_ref().err(), 1, version);
                if let Ok(seq) = r {
                    w.kv_int("sequenceNumber", *seq);
                }
                w
            }
            ReplyBody::ListStreams(r) => {
                let mut w = head(id, r.as_ref().err(), 1, version);
                if let Ok(streams) = r {
                    w.text("streams").array(streams.len());
                    for s in streams {
                        w.text(s);
                    }
                }
                w
            }
            ReplyBody::DescribeMessageStream(r) => {
                let mut w = head(id, r.as_ref().err(), 1, version);
                if let Ok(info) = r {
                    w.text("messageStreamInfo").fields(&info.fields());
                }
                w
            }
            ReplyBody::ReadMessages {
                stream_name,
                result,
            } => encode_read(id, stream_name, result, version),
        }
    }
}

fn head(
    request_id: &str,
    failure: Option<&Failure>,
    extra: usize,
    version: ProtocolVersion,
) -> Writer {
    let mut w = Writer::for_frame(64 + request_id.len());
    match failure {
        None => {
            w.map(2 + extra)
                .kv_text("requestId", request_id)
                .kv_int("status", 0);
        }
        Some(f) => {
            w.map(3)
                .kv_text("requestId", request_id)
                .kv_int("status", f.status.for_protocol(version) as i64)
                .kv_text("errorMessage", &f.message);
        }
    }
    w
}

fn status_only(request_id: &str, failure: Option<&Failure>, version: ProtocolVersion) -> Writer {
    head(request_id, failure, 0, version)
}

/// An upper bound of one message's encoding in a read answer: the map head,
/// its four keys, the stream name and payload with their heads (at most 9
/// bytes each), and two integers of at most 9 bytes each.
pub fn message_encoded_bound(name_len: usize, payload_len: usize) -> usize {
    const KEYS: usize = 1 + 11 + 15 + 11 + 8;
    KEYS + 9 + name_len + 9 + 9 + 9 + payload_len
}

/// ReadMessagesResponse puts `messages` before `status` in the model.
fn encode_read(
    request_id: &str,
    stream_name: &str,
    result: &Result<Vec<Message>, Failure>,
    version: ProtocolVersion,
) -> Writer {
    match result {
        Err(f) => status_only(request_id, Some(f), version),
        Ok(messages) => {
            let payload_bytes: usize = messages
                .iter()
                .map(|m| message_encoded_bound(stream_name.len(), m.payload.len()))
                .sum();
            let mut w = Writer::for_frame(64 + request_id.len() + payload_bytes);
            w.map(3).kv_text("requestId", request_id);
            w.text("messages").array(messages.len());
            for m in messages {
                w.map(4)
                    .kv_text("streamName", stream_name)
                    .kv_int("sequenceNumber", m.sequence_number)
                    .kv_int("ingestTime", m.ingest_time)
                    .text("payload")
                    .bytes(&m.payload);
            }
            w.kv_int("status", 0);
            w
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn append_answer_matches_the_recorded_layout() {
        // PROTOCOL.md 10.2
        let reply = Reply {
            request_id: "d50dc5ec-3051-4768-8ebf-98d0a2c92fe8".into(),
            body: ReplyBody::AppendMessage(Ok(0)),
        };
        let frame = reply.frame(ProtocolVersion::V1_0_0);
        assert_eq!(
            hex(&frame),
            concat!(
                "0000004a09a3697265717565737449647824643530646335",
                "65632d333035312d343736382d386562662d39386430613263393266653866737461747573006e",
                "73657175656e63654e756d62657200"
            )
        );
    }

    #[test]
    fn newer_statuses_are_downgraded_for_protocol_1_0_0() {
        let reply = Reply {
            request_id: "r".into(),
            body: ReplyBody::UpdateMessageStream(Err(Failure::new(
                StatusCode::UpdateNotAllowed,
                "no",
            ))),
        };
        let old = reply.frame(ProtocolVersion::V1_0_0);
        let new = reply.frame(ProtocolVersion::V1_1_0);
        // ... "status" 01 vs 11 ...
        assert!(hex(&old).contains("66737461747573016c"));
        assert!(hex(&new).contains("66737461747573116c"));
    }

    #[test]
    fn read_answers_stay_within_the_message_bound() {
        for (name_len, payload_len, seq, time) in [
            (1, 0, 0, 0),
            (255, 0, i64::MAX, i64::MIN),
            (24, 100, 1 << 40, 1_700_000_000_000),
            (300, 70_000, -1, i64::MAX),
        ] {
            let name = "n".repeat(name_len);
            let message = Message {
                sequence_number: seq,
                ingest_time: time,
                payload: bytes::Bytes::from(vec![7u8; payload_len]),
            };
            let answer = |count: usize| {
                Reply {
                    request_id: "r".into(),
                    body: ReplyBody::ReadMessages {
                        stream_name: name.clone(),
                        result: Ok(vec![message.clone(); count]),
                    },
                }
                .frame(ProtocolVersion::V1_1_0)
                .len()
            };
            // What each further message adds to the answer.
            let each = answer(2) - answer(1);
            assert!(
                each <= message_encoded_bound(name_len, payload_len),
                "{each} bytes for name {name_len}, payload {payload_len}"
            );
        }
    }
}
