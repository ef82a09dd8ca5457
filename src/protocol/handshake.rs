//! The handshake: `01` + Connect frame in, `01` + ConnectResponse frame out.
//!
//! Decisions the clients leave to the server (PROTOCOL.md 2.5, weir
//! decisions): a wrong connect byte is answered with status 8, a first frame
//! that is not a readable Connect with 9, a missing protocol version with 11,
//! no common version with 10, a bad token with 2; each of these is followed
//! by closing the connection.

use super::cbor::{self, Writer};
use super::frame::RawFrame;
use super::model::top_map;
use super::status::{Operation, StatusCode};
use super::CONNECT_VERSION;
use bytes::{BufMut, BytesMut};

/// Protocol versions weir speaks; 1.0.0 clients know fewer statuses and ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    V1_0_0,
    V1_1_0,
}

impl ProtocolVersion {
    pub const SUPPORTED: [ProtocolVersion; 2] = [ProtocolVersion::V1_0_0, ProtocolVersion::V1_1_0];

    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::V1_0_0 => "1.0.0",
            ProtocolVersion::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }
}

/// What a client says when it connects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectRequest {
    pub request_id: Option<String>,
    pub protocol_version: Option<String>,
    pub other_supported_protocol_versions: Vec<String>,
    pub sdk_version: Option<String>,
    /// Python and Node omit the key when `AWS_CONTAINER_AUTHORIZATION_TOKEN`
    /// is unset; Java sends `""`.
    pub auth_token: Option<String>,
}

impl ConnectRequest {
    /// Decodes the first frame of a connection. `Err` carries status 9
    /// (`UnexpectedOperation`) for a frame that is not a readable Connect.
    pub fn decode(frame: &RawFrame) -> Result<ConnectRequest, String> {
        if frame.op != Operation::Connect as u8 {
            return Err(format!(
                "expected the Connect operation (1), got {}",
                frame.op
            ));
        }
        let value = cbor::decode(&frame.payload)?;
        let map = top_map(&value).map_err(|e| e.0)?;
        // A version that is not text is treated as missing (status 11), so
        // only the informational fields may fail softly.
        let others = match map.array("otherSupportedProtocolVersions") {
            Ok(Some(items)) => items
                .iter()
                .filter_map(|v| v.as_text().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Ok(ConnectRequest {
            request_id: map.text("requestId").ok().flatten(),
            protocol_version: map.text("protocolVersion").ok().flatten(),
            other_supported_protocol_versions: others,
            sdk_version: map.text("sdkVersion").ok().flatten(),
            auth_token: map.text("authToken").ok().flatten(),
        })
    }

    /// The version to speak: the client's own if weir supports it, else the
    /// highest of its other supported versions that weir supports.
    pub fn negotiate(&self) -> Result<ProtocolVersion, (StatusCode, String)> {
        let Some(own) = &self.protocol_version else {
            return Err((
                StatusCode::InvalidProtocolVersion,
                "protocolVersion is missing".into(),
            ));
        };
        if let Some(v) = ProtocolVersion::parse(own) {
            return Ok(v);
        }
        self.other_supported_protocol_versions
            .iter()
            .filter_map(|v| ProtocolVersion::parse(v))
            .max()
            .ok_or_else(|| {
                (
                    StatusCode::UnsupportedProtocolVersion,
                    format!("protocol version {own} is not supported; this server speaks 1.0.0 and 1.1.0"),
                )
            })
    }
}

/// The server's answer to Connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectResponse {
    pub request_id: Option<String>,
    pub status: StatusCode,
    pub error_message: Option<String>,
    /// The negotiated version, on success.
    pub protocol_version: Option<ProtocolVersion>,
    pub server_version: String,
    pub client_identifier: Option<String>,
}

impl ConnectResponse {
    pub fn refusal(
        request_id: Option<String>,
        status: StatusCode,
        message: String,
        server_version: &str,
    ) -> Self {
        ConnectResponse {
            request_id,
            status,
            error_message: Some(message),
            protocol_version: None,
            server_version: server_version.to_owned(),
            client_identifier: None,
        }
    }

    pub fn encode_payload(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let present = cbor::count_present(&[
            self.request_id.is_some(),
            true,
            self.error_message.is_some(),
            self.protocol_version.is_some(),
            true,
            true,
            self.client_identifier.is_some(),
        ]);
        w.map(present);
        if let Some(id) = &self.request_id {
            w.kv_text("requestId", id);
        }
        w.kv_int("status", self.status as i64);
        if let Some(message) = &self.error_message {
            w.kv_text("errorMessage", message);
        }
        if let Some(v) = self.protocol_version {
            w.kv_text("protocolVersion", v.as_str());
        }
        w.text("supportedProtocolVersions")
            .array(ProtocolVersion::SUPPORTED.len());
        for v in ProtocolVersion::SUPPORTED {
            w.text(v.as_str());
        }
        w.kv_text("serverVersion", &self.server_version);
        if let Some(id) = &self.client_identifier {
            w.kv_text("clientIdentifier", id);
        }
        w.into_vec()
    }

    /// `01` and the ConnectResponse frame, to go out in one write (Python
    /// clients mis-read a split header, PROTOCOL.md 3.3).
    pub fn encode_with_connect_byte(&self, dst: &mut BytesMut) {
        dst.put_u8(CONNECT_VERSION);
        RawFrame::encode(
            Operation::ConnectResponse as u8,
            &self.encode_payload(),
            dst,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(own: Option<&str>, others: &[&str]) -> ConnectRequest {
        ConnectRequest {
            protocol_version: own.map(Into::into),
            other_supported_protocol_versions: others.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn negotiation() {
        assert_eq!(
            request(Some("1.0.0"), &[]).negotiate(),
            Ok(ProtocolVersion::V1_0_0)
        );
        assert_eq!(
            request(Some("1.1.0"), &["1.0.0"]).negotiate(),
            Ok(ProtocolVersion::V1_1_0)
        );
        assert_eq!(
            request(Some("2.0.0"), &["1.0.0", "1.1.0"]).negotiate(),
            Ok(ProtocolVersion::V1_1_0)
        );
        assert_eq!(
            request(Some("2.0.0"), &["1.9.0"])
                .negotiate()
                .unwrap_err()
                .0,
            StatusCode::UnsupportedProtocolVersion
        );
        assert_eq!(
            request(None, &[]).negotiate().unwrap_err().0,
            StatusCode::InvalidProtocolVersion
        );
    }
}
