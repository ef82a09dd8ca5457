//! Configuration, read from the same environment variables as the genuine
//! (Java) stream manager, so weir replaces it without a change to the
//! Greengrass component configuration. weir's own additions start `WEIR_`.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `STREAM_MANAGER_SERVER_PORT` | 8088 | TCP port; 0 picks a free one (logged) |
//! | `STREAM_MANAGER_STORE_ROOT_DIR` | `./weir-store` | folder of the stream store and the default token file |
//! | `STREAM_MANAGER_AUTHENTICATE_CLIENT` | true | require a known `authToken` in the handshake |
//! | `STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH` | unlimited | kbit/s for all exports (read, exporters come later) |
//! | `STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE` (or `STREAM_MANAGER_THREAD_POOL_SIZE`) | 5 | concurrent exports |
//! | `STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES` | 5242880 | S3 part size |
//! | `LOG_LEVEL` | INFO | TRACE, DEBUG, INFO, WARN, ERROR (`RUST_LOG` wins if set) |
//! | `JVM_ARGS` | | ignored: there is no JVM |
//! | `WEIR_BIND_ADDRESS` | 127.0.0.1 | address to listen on |
//! | `WEIR_AUTH_TOKEN_FILE` | `<store root>/auth_token`, created if missing | accepted tokens, one per line |
//! | `WEIR_MAX_FRAME_BYTES` | 1073741824 | largest request frame; larger closes the connection |
//! | `WEIR_MAX_CONNECTIONS` | 1024 | concurrent client connections |
//! | `WEIR_MAX_READ_BYTES` | 33554432 | payload bytes one read answer may carry; more messages wait for the next read (at least one is always returned) |
//! | `WEIR_SYNC_INTERVAL_MS` | 1000 | how often appends to `File` streams without `flushOnWrite` are synced: a power cut can take at most this much |

use crate::protocol::MAX_FRAME_LEN;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub port: u16,
    pub bind_address: IpAddr,
    pub store_root: PathBuf,
    pub authenticate_client: bool,
    /// `None`: `<store root>/auth_token`, created when missing.
    pub auth_token_file: Option<PathBuf>,
    pub max_frame_len: usize,
    pub max_connections: usize,
    /// kbit/s; `None` is unlimited.
    pub exporter_max_bandwidth_kbps: Option<u64>,
    pub exporter_thread_pool_size: usize,
    pub s3_multipart_min_part_size: u64,
    pub log_level: String,
    pub sync_interval: std::time::Duration,
    pub max_read_bytes: usize,
}

pub const DEFAULT_PORT: u16 = 8088;
pub const DEFAULT_STORE_ROOT: &str = "weir-store";

impl Config {
    /// Reads the configuration through `lookup` (the process environment in
    /// `main`, a map in tests). An empty value counts as unset; a value that
    /// does not parse is an error, never silently replaced by a default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        fn parse<T: std::str::FromStr>(
            name: &'static str,
            value: Option<String>,
            default: T,
        ) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            match value {
                None => Ok(default),
                Some(v) => v.parse().map_err(|e: T::Err| ConfigError {
                    name,
                    reason: e.to_string(),
                    value: v,
                }),
            }
        }
        let authenticate_client = match get("STREAM_MANAGER_AUTHENTICATE_CLIENT") {
            None => true,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                return Err(ConfigError {
                    name: "STREAM_MANAGER_AUTHENTICATE_CLIENT",
                    value: v,
                    reason: "must be true or false".into(),
                })
            }
        };
        let max_frame_len = parse(
            "WEIR_MAX_FRAME_BYTES",
            get("WEIR_MAX_FRAME_BYTES"),
            MAX_FRAME_LEN,
        )?;
        if !(64..=MAX_FRAME_LEN).contains(&max_frame_len) {
            return Err(ConfigError {
                name: "WEIR_MAX_FRAME_BYTES",
                value: max_frame_len.to_string(),
                reason: format!("must be between 64 and {MAX_FRAME_LEN}"),
            });
        }
        let pool = get("STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE")
            .or_else(|| get("STREAM_MANAGER_THREAD_POOL_SIZE"));
        Ok(Config {
            port: parse(
                "STREAM_MANAGER_SERVER_PORT",
                get("STREAM_MANAGER_SERVER_PORT"),
                DEFAULT_PORT,
            )?,
            bind_address: parse(
                "WEIR_BIND_ADDRESS",
                get("WEIR_BIND_ADDRESS"),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            )?,
            store_root: get("STREAM_MANAGER_STORE_ROOT_DIR")
                .map_or_else(|| PathBuf::from(DEFAULT_STORE_ROOT), PathBuf::from),
            authenticate_client,
            auth_token_file: get("WEIR_AUTH_TOKEN_FILE").map(PathBuf::from),
            max_frame_len,
            max_connections: parse("WEIR_MAX_CONNECTIONS", get("WEIR_MAX_CONNECTIONS"), 1024)?,
            exporter_max_bandwidth_kbps: get("STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH")
                .map(|v| parse("STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH", Some(v), 0u64))
                .transpose()?,
            exporter_thread_pool_size: parse("STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE", pool, 5)?,
            s3_multipart_min_part_size: parse(
                "STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES",
                get("STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES"),
                5_242_880,
            )?,
            log_level: get("LOG_LEVEL").unwrap_or_else(|| "INFO".into()),
            max_read_bytes: parse(
                "WEIR_MAX_READ_BYTES",
                get("WEIR_MAX_READ_BYTES"),
                32usize << 20,
            )?
            .clamp(1, MAX_FRAME_LEN - 64 * 1024),
            sync_interval: std::time::Duration::from_millis(
                parse(
                    "WEIR_SYNC_INTERVAL_MS",
                    get("WEIR_SYNC_INTERVAL_MS"),
                    1000u64,
                )?
                .max(1),
            ),
        })
    }

    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_java_server() {
        let c = config(&[]).unwrap();
        assert_eq!(c.port, 8088);
        assert!(c.authenticate_client);
        assert_eq!(c.bind_address.to_string(), "127.0.0.1");
        assert_eq!(c.exporter_thread_pool_size, 5);
        assert_eq!(c.exporter_max_bandwidth_kbps, None);
    }

    #[test]
    fn values_are_parsed_or_refused() {
        let c = config(&[
            ("STREAM_MANAGER_SERVER_PORT", "0"),
            ("STREAM_MANAGER_AUTHENTICATE_CLIENT", "FALSE"),
            ("STREAM_MANAGER_THREAD_POOL_SIZE", "3"),
            ("STREAM_MANAGER_STORE_ROOT_DIR", "/tmp/x"),
        ])
        .unwrap();
        assert_eq!(
            (c.port, c.authenticate_client, c.exporter_thread_pool_size),
            (0, false, 3)
        );
        assert_eq!(c.store_root, PathBuf::from("/tmp/x"));
        assert_eq!(
            config(&[("STREAM_MANAGER_SERVER_PORT", "70000")])
                .unwrap_err()
                .name,
            "STREAM_MANAGER_SERVER_PORT"
        );
        assert!(config(&[("STREAM_MANAGER_AUTHENTICATE_CLIENT", "yes")]).is_err());
        assert!(config(&[("WEIR_MAX_FRAME_BYTES", "10")]).is_err());
    }
}
