//! IoT Analytics: BatchPutMessage to the export's `iotChannel`, each
//! message's id `iotMsgIdPrefix` followed by its sequence number (the
//! prefix is empty when not set), so a message sent again keeps its id.
//! At most 100 messages a call.
//!
//! AWS retired IoT Analytics on 2025-12-15. Without an endpoint that
//! answers (`AWS_ENDPOINT_URL_IOTANALYTICS`, or the regional one), the
//! export keeps retrying and its `errorMessage` says so and what to do;
//! with `WEIR_IOT_ANALYTICS_TO_KINESIS` the manager sends the channel's
//! messages to a Kinesis stream instead ([`super::manager`]).

use super::aws::{classify, LazyClient, SharedSdkConfig};
use super::destination::{Destination, Record, SendError, SendLimits, Sent};
use aws_sdk_iotanalytics::primitives::Blob;
use aws_sdk_iotanalytics::types::Message;
use futures_util::future::BoxFuture;
use std::sync::Arc;

pub const MAX_MESSAGES: usize = 100;
/// A request's body limit is not published; the service's documented
/// message limit is 128 KiB, and a call of 100 of them fits in this.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

const INVALID: &[&str] = &["InvalidRequestException"];
/// A refusal naming the channel is about the export's configuration.
const CONFIG_FIELDS: &[&str] = &["channelName"];
const TRANSIENT: &[&str] = &[
    "ThrottlingException",
    "InternalFailureException",
    "ServiceUnavailableException",
];

/// What the status says when no IoT Analytics endpoint answers.
const RETIRED: &str = "AWS retired IoT Analytics on 2025-12-15: point AWS_ENDPOINT_URL_IOTANALYTICS at a service that answers, or set WEIR_IOT_ANALYTICS_TO_KINESIS to send this channel's messages to a Kinesis stream";

pub struct IotAnalyticsDestination {
    /// Made on the first send.
    client: LazyClient<aws_sdk_iotanalytics::Client>,
    channel: String,
    message_id_prefix: String,
}

impl IotAnalyticsDestination {
    pub fn new(config: Arc<SharedSdkConfig>, channel: &str, prefix: Option<&str>) -> Self {
        IotAnalyticsDestination {
            client: LazyClient::new(config, aws_sdk_iotanalytics::Client::new),
            channel: channel.to_owned(),
            message_id_prefix: prefix.unwrap_or("").to_owned(),
        }
    }

    fn message_id(&self, record: &Record) -> String {
        format!("{}{}", self.message_id_prefix, record.sequence_number)
    }
}

impl Destination for IotAnalyticsDestination {
    fn describe(&self) -> String {
        format!("IoT Analytics channel {}", self.channel)
    }

    fn limits(&self) -> SendLimits {
        SendLimits {
            max_records: MAX_MESSAGES,
            max_request_bytes: MAX_REQUEST_BYTES,
        }
    }

    fn refuses(&self, _record: &Record) -> Option<String> {
        None
    }

    fn request_bytes(&self, record: &Record) -> usize {
        // Sent as base64 in JSON.
        record.payload.len().div_ceil(3) * 4 + self.message_id_prefix.len() + 20
    }

    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(async move {
            let messages = records
                .iter()
                .map(|r| {
                    Message::builder()
                        .message_id(self.message_id(r))
                        .payload(Blob::new(r.payload.to_vec()))
                        .build()
                        .map_err(|e| SendError::Unavailable(format!("building the request: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = self
                .client
                .get()
                .await
                .batch_put_message()
                .channel_name(&self.channel)
                .set_messages(Some(messages))
                .send()
                .await
                .map_err(|e| match classify(&e, INVALID, TRANSIENT, CONFIG_FIELDS) {
                    SendError::Transient(reason) if is_unreachable(&e) => {
                        SendError::Unavailable(format!("{reason}; {RETIRED}"))
                    }
                    other => other,
                })?;
            let mut sent = Sent::default();
            for entry in output.batch_put_message_error_entries() {
                let Some(index) = records
                    .iter()
                    .position(|r| Some(self.message_id(r).as_str()) == entry.message_id())
                else {
                    continue;
                };
                let code = entry.error_code().unwrap_or("UnknownError");
                if TRANSIENT.contains(&code) {
                    sent.retry.push(index);
                } else {
                    let message = entry.error_message().unwrap_or("");
                    sent.rejected.push((index, format!("{code}: {message}")));
                }
            }
            Ok(sent)
        })
    }
}

/// Whether the call never reached a service (no connection).
fn is_unreachable<E>(
    error: &aws_sdk_iotanalytics::error::SdkError<
        E,
        aws_sdk_iotanalytics::config::http::HttpResponse,
    >,
) -> bool {
    matches!(
        error,
        aws_sdk_iotanalytics::error::SdkError::DispatchFailure(_)
    )
}
