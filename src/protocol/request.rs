//! Requests: one variant per operation a client sends after the handshake,
//! decoded from a raw frame.

use super::cbor::{self, FieldError, MapReader};
use super::model::{check_name, top_map, MessageStreamDefinition, ReadMessagesOptions};
use super::status::Operation;
use bytes::Bytes;

/// A decoded request: the id to echo and what is asked.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Echoed byte for byte; never assumed unique, UUID-shaped or non-blank
    /// (stream-manager-sdk-js 1.1.0 sends `" "` for every request).
    pub request_id: String,
    pub body: RequestBody,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RequestBody {
    CreateMessageStream {
        definition: MessageStreamDefinition,
    },
    DeleteMessageStream {
        name: String,
    },
    AppendMessage {
        name: String,
        payload: Bytes,
    },
    ReadMessages {
        stream_name: String,
        options: ReadMessagesOptions,
    },
    ListStreams,
    DescribeMessageStream {
        name: String,
    },
    UpdateMessageStream {
        definition: MessageStreamDefinition,
    },
}

/// Why a frame is not a request weir can carry out, and how to answer it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload has no readable `requestId`: there is nothing a client
    /// could match an answer to, so the connection is closed.
    #[error("unanswerable frame (op {op}): {reason}")]
    Unanswerable { op: u8, reason: String },
    /// The operation is not one a client may send.
    #[error("unknown operation {op}")]
    UnknownOperation { op: u8, request_id: String },
    /// A known operation whose fields break the model's rules; answered with
    /// `InvalidRequest` on the operation's own response.
    #[error("{message}")]
    Invalid {
        request_id: String,
        response_op: Operation,
        message: String,
    },
}

impl Request {
    pub fn decode(op: u8, payload: &[u8]) -> Result<Request, DecodeError> {
        if op == 4 {
            if let Some(request) = fast_append(payload) {
                return Ok(request);
            }
        }
        let unanswerable = |reason: String| DecodeError::Unanswerable { op, reason };
        let value = cbor::decode(payload).map_err(unanswerable)?;
        let map = top_map(&value).map_err(|e| unanswerable(e.0))?;
        let request_id = match map.text("requestId") {
            Ok(Some(id)) => id,
            Ok(None) => return Err(unanswerable("requestId is missing".into())),
            Err(e) => return Err(unanswerable(e.0)),
        };
        let Some(response_op) = Operation::response_to(op) else {
            return Err(DecodeError::UnknownOperation { op, request_id });
        };
        match Self::decode_body(op, &map) {
            Ok(body) => Ok(Request { request_id, body }),
            Err(FieldError(message)) => Err(DecodeError::Invalid {
                request_id,
                response_op,
                message,
            }),
        }
    }

    fn decode_body(op: u8, map: &MapReader<'_>) -> Result<RequestBody, FieldError> {
        let stream_name = |key: &str| -> Result<String, FieldError> {
            let name = map.required(key, map.text(key))?;
            check_name(key, &name)?;
            Ok(name)
        };
        let definition = || -> Result<MessageStreamDefinition, FieldError> {
            let def = map.required("definition", map.map("definition", "definition"))?;
            MessageStreamDefinition::decode(&def)
        };
        Ok(match op {
            2 => RequestBody::CreateMessageStream {
                definition: definition()?,
            },
            3 => RequestBody::DeleteMessageStream {
                name: stream_name("name")?,
            },
            4 => {
                let name = stream_name("name")?;
                let payload = map.required("payload", map.bytes("payload"))?;
                if payload.is_empty() {
                    return Err(FieldError("payload must not be empty".into()));
                }
                RequestBody::AppendMessage {
                    name,
                    payload: Bytes::from(payload),
                }
            }
            5 => RequestBody::ReadMessages {
                stream_name: stream_name("streamName")?,
                options: match map.map("readMessagesOptions", "readMessagesOptions")? {
                    Some(options) => ReadMessagesOptions::decode(&options)?,
                    None => ReadMessagesOptions::default(),
                },
            },
            11 => RequestBody::ListStreams,
            13 => RequestBody::DescribeMessageStream {
                name: stream_name("name")?,
            },
            15 => RequestBody::UpdateMessageStream {
                definition: definition()?,
            },
            _ => unreachable!("Operation::response_to admitted op {op}"),
        })
    }
}

/// The hot operation without the value tree: an append as every SDK but
/// Java sends it (a definite map of `requestId`, `name`, `payload`). Anything
/// else, including anything invalid, returns `None` and takes the general,
/// tolerant path, which also words the errors.
fn fast_append(payload: &[u8]) -> Option<Request> {
    use ciborium_io::Read;
    use ciborium_ll::{Decoder, Header};
    let mut dec = Decoder::from(payload);
    let Ok(Header::Map(Some(entries))) = dec.pull() else {
        return None;
    };
    let (mut request_id, mut name, mut data) = (None, None, None);
    let mut key = [0u8; 9];
    for _ in 0..entries {
        let Ok(Header::Text(Some(len))) = dec.pull() else {
            return None;
        };
        let key = key.get_mut(..len)?;
        dec.read_exact(key).ok()?;
        let value = dec.pull().ok()?;
        // Lengths are checked against what is left before allocating.
        let left = payload.len() - dec.offset();
        match (&key[..], value) {
            (b"requestId", Header::Text(Some(len))) if len <= left && request_id.is_none() => {
                let mut text = vec![0u8; len];
                dec.read_exact(&mut text).ok()?;
                request_id = Some(String::from_utf8(text).ok()?);
            }
            (b"name", Header::Text(Some(len))) if len <= left && name.is_none() => {
                let mut text = vec![0u8; len];
                dec.read_exact(&mut text).ok()?;
                name = Some(String::from_utf8(text).ok()?);
            }
            (b"payload", Header::Bytes(Some(len)))
                if (1..=left).contains(&len) && data.is_none() =>
            {
                let mut bytes = vec![0u8; len];
                dec.read_exact(&mut bytes).ok()?;
                data = Some(bytes);
            }
            _ => return None,
        }
    }
    let name = name?;
    check_name("name", &name).ok()?;
    Some(Request {
        request_id: request_id?,
        body: RequestBody::AppendMessage {
            name,
            payload: Bytes::from(data?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn java_append_with_an_indefinite_map() {
        // PROTOCOL.md 10.3, payload after the op byte
        let payload = hex(concat!(
            "bf69726571756573744964782436313539356333652d653236382d343763632d393861302d633765303664",
            "35653534643964",
            "6e616d656a536f6d6553747265616d677061796c6f6164456865",
            "6c6c6fff"
        ));
        let req = Request::decode(4, &payload).unwrap();
        assert_eq!(req.request_id, "61595c3e-e268-47cc-98a0-c7e06d5e54d9");
        assert_eq!(
            req.body,
            RequestBody::AppendMessage {
                name: "SomeStream".into(),
                payload: Bytes::from_static(b"hello")
            }
        );
    }

    #[test]
    fn the_fast_append_path_agrees_with_the_general_one() {
        // {"requestId": "1", "name": "S", "payload": h'01'}
        let payload = hex("a3697265717565737449646131646e616d656153677061796c6f61644101");
        let fast = fast_append(&payload).expect("takes the fast path");
        assert_eq!(Ok(fast), Request::decode(2 + 2, &payload));
        let value = cbor::decode(&payload).unwrap();
        let map = top_map(&value).unwrap();
        assert_eq!(map.text("requestId").unwrap().as_deref(), Some("1"));
        // Java's indefinite map, an extra key, a text payload, an empty
        // payload, a lying length: all left to the general path.
        for other in [
            "bf697265717565737449646131646e616d656153677061796c6f61644101ff",
            "a4697265717565737449646131646e616d656153677061796c6f6164410161780a",
            "a3697265717565737449646131646e616d656153677061796c6f61646178",
            "a3697265717565737449646131646e616d656153677061796c6f616440",
            "a3697265717565737449646131646e616d656153677061796c6f61645a7fffffff01",
        ] {
            assert_eq!(fast_append(&hex(other)), None, "{other}");
        }
    }

    #[test]
    fn every_truncation_of_a_request_is_refused() {
        let payload = hex("a3697265717565737449646131646e616d656153677061796c6f61644101");
        assert!(Request::decode(4, &payload).is_ok());
        for cut in 0..payload.len() {
            assert!(
                matches!(
                    Request::decode(4, &payload[..cut]),
                    Err(DecodeError::Unanswerable { .. })
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bad_fields_are_answered_and_unknown_ops_are_named() {
        // {"requestId": "1", "name": "S", "payload": h''}
        let empty = hex("a3697265717565737449646131646e616d656153677061796c6f616440");
        assert_eq!(
            Request::decode(4, &empty),
            Err(DecodeError::Invalid {
                request_id: "1".into(),
                response_op: Operation::AppendMessageResponse,
                message: "payload must not be empty".into()
            })
        );
        let id_only = hex("a169726571756573744964613f");
        assert_eq!(
            Request::decode(99, &id_only),
            Err(DecodeError::UnknownOperation {
                op: 99,
                request_id: "?".into()
            })
        );
        assert!(matches!(
            Request::decode(4, &[0xff]),
            Err(DecodeError::Unanswerable { .. })
        ));
    }
}
