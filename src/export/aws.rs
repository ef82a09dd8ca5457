//! The AWS SDK for Rust as the exporters use it: one shared configuration
//! from `aws-config`'s default chain (environment, profile, and the
//! container credentials provider that the Greengrass token exchange
//! service feeds through `AWS_CONTAINER_CREDENTIALS_FULL_URI` and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN`), the standard `AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_KINESIS` and `AWS_ENDPOINT_URL_IOTANALYTICS`
//! overrides, and one HTTPS client (rustls with ring) that follows
//! `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`.
//!
//! The SDK's own retries are off (`RetryConfig::disabled()`: one attempt
//! per call), so every retry and its backoff are the pipeline's own
//! ([`super::pipeline::RetryPolicy`]) and none hides a failure from the
//! export status. Each attempt is bounded in time, so a connection that
//! hangs is a timeout (retried), never a pipeline stuck for ever.

use super::destination::SendError;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_http_client::{Builder, Connector};
use std::time::Duration;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call may take, all of it.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The configuration every exporter's client is made from, loaded once, on
/// the first send of any export: a weir without exports never loads it (it
/// may look for a region on the network, and its HTTPS client's roots cost
/// memory).
#[derive(Default)]
pub struct SharedSdkConfig {
    config: tokio::sync::OnceCell<aws_config::SdkConfig>,
}

impl SharedSdkConfig {
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::default()
    }

    pub async fn get(&self) -> &aws_config::SdkConfig {
        self.config.get_or_init(load_sdk_config).await
    }
}

/// A service client made from the shared configuration at its first use
/// (so the configuration itself loads only when an export first sends).
pub struct LazyClient<C> {
    config: std::sync::Arc<SharedSdkConfig>,
    client: tokio::sync::OnceCell<C>,
    make: fn(&aws_config::SdkConfig) -> C,
}

impl<C> LazyClient<C> {
    /// `make`: the SDK's `Client::new`.
    pub fn new(
        config: std::sync::Arc<SharedSdkConfig>,
        make: fn(&aws_config::SdkConfig) -> C,
    ) -> Self {
        LazyClient {
            config,
            client: tokio::sync::OnceCell::new(),
            make,
        }
    }

    pub async fn get(&self) -> &C {
        self.client
            .get_or_init(|| async { (self.make)(self.config.get().await) })
            .await
    }
}

/// The configuration every exporter's client is made from.
pub async fn load_sdk_config() -> aws_config::SdkConfig {
    let http_client = Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector = Connector::builder();
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector
            .proxy_config(ProxyConfig::from_env())
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build()
    });
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .load()
        .await
}

/// An SDK error as a [`super::destination::SendError`]: `code` and `status`
/// of a service's answer (if it answered) decide, with `invalid` naming the
/// codes that mean "this request can never succeed as it is". Such a
/// refusal that names one of `config_fields` (the target stream or
/// channel, not a record) is about the export's configuration: it is
/// retried and shown, never a reason to skip records.
///
/// The text is each error's `Display` along its `source` chain, never the
/// SDK's debug form: that holds the raw response (with its `Date` header),
/// so the message would change at every retry and be logged each time.
///
/// Both SDK crates build on the same smithy runtime types, named here
/// through the Kinesis crate's re-exports.
pub fn classify<E>(
    error: &SdkError<E, HttpResponse>,
    invalid: &[&str],
    transient: &[&str],
    config_fields: &[&str],
) -> SendError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("UnknownError");
            let message = service.err().message().unwrap_or("");
            let status = service.raw().status().as_u16();
            let text = format!("{code} (HTTP {status}): {message}");
            let names_config = config_fields
                .iter()
                .any(|field| message.contains(&format!("'{field}'")));
            if invalid.contains(&code) && !names_config {
                SendError::InvalidRequest(text)
            } else if transient.contains(&code) || status >= 500 || status == 429 {
                SendError::Transient(text)
            } else {
                SendError::Unavailable(text)
            }
        }
        SdkError::TimeoutError(_) => SendError::Transient("no answer in time".into()),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            SendError::Transient(error_chain(error))
        }
        // No region, no credentials, a request that cannot be built.
        _ => SendError::Unavailable(error_chain(error)),
    }
}

/// `error` and its sources, each as it displays itself, joined by ": "
/// (a source that only repeats the text before it is left out).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("inner detail")]
    struct Inner;

    #[test]
    fn an_error_chain_reads_as_its_displays() {
        assert_eq!(error_chain(&Outer(Inner)), "outer: inner detail");
    }
}
