//! Numbers on the wire: operations and response status codes.
//!
//! Both enums are fixed by the clients' generated code; a number is never
//! reused. Connections that negotiated protocol 1.0.0 must never see a status
//! above 14 nor op 17 (greengrasssdk 1.5.0's read loop dies on an unknown
//! status value, PROTOCOL.md 6.3), so [`StatusCode::for_protocol`] is the one
//! place where that downgrade happens.

use super::ProtocolVersion;

/// Operation byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Operation {
    Connect = 1,
    CreateMessageStream = 2,
    DeleteMessageStream = 3,
    AppendMessage = 4,
    ReadMessages = 5,
    ConnectResponse = 6,
    CreateMessageStreamResponse = 7,
    DeleteMessageStreamResponse = 8,
    AppendMessageResponse = 9,
    ReadMessagesResponse = 10,
    ListStreams = 11,
    ListStreamsResponse = 12,
    DescribeMessageStream = 13,
    DescribeMessageStreamResponse = 14,
    UpdateMessageStream = 15,
    UpdateMessageStreamResponse = 16,
    UnknownOperationError = 17,
}

impl Operation {
    /// The request operations a client may send after the handshake, with the
    /// operation of their answer.
    pub fn response_to(op: u8) -> Option<Operation> {
        Some(match op {
            2 => Operation::CreateMessageStreamResponse,
            3 => Operation::DeleteMessageStreamResponse,
            4 => Operation::AppendMessageResponse,
            5 => Operation::ReadMessagesResponse,
            11 => Operation::ListStreamsResponse,
            13 => Operation::DescribeMessageStreamResponse,
            15 => Operation::UpdateMessageStreamResponse,
            _ => return None,
        })
    }
}

/// `ResponseStatusCode` of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StatusCode {
    Success = 0,
    UnknownFailure = 1,
    Unauthorized = 2,
    InvalidRequest = 3,
    RequestPayloadTooLarge = 4,
    ResourceNotFound = 5,
    ServerTimeout = 6,
    ResponsePayloadTooLarge = 7,
    UnsupportedConnectVersion = 8,
    UnexpectedOperation = 9,
    UnsupportedProtocolVersion = 10,
    InvalidProtocolVersion = 11,
    FailedToConnect = 12,
    NotEnoughMessages = 13,
    MessageStoreReadError = 14,
    OutOfMemoryError = 15,
    UpdateFailed = 16,
    UpdateNotAllowed = 17,
    UnknownOperation = 18,
}

impl StatusCode {
    /// The value to put on a connection that negotiated `version`: codes added
    /// after 1.0.0 become `UnknownFailure` for 1.0.0 clients, which would
    /// otherwise crash on them.
    pub fn for_protocol(self, version: ProtocolVersion) -> StatusCode {
        match (version, self as u8) {
            (ProtocolVersion::V1_0_0, 15..) => StatusCode::UnknownFailure,
            _ => self,
        }
    }
}
