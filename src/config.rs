//! Configuration, read from the same environment variables as the genuine
//! (Java) stream manager, so weir replaces it without a change to the
//! Greengrass component configuration. weir's own additions start `WEIR_`.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `STREAM_MANAGER_SERVER_PORT` | 8088 | TCP port; 0 picks a free one (logged) |
//! | `STREAM_MANAGER_STORE_ROOT_DIR` | `./weir-store` | folder of the stream store and the default token file |
//! | `STREAM_MANAGER_AUTHENTICATE_CLIENT` | true | require a valid `authToken` in the handshake: checked with the Greengrass nucleus when the next two are set, else against the token file ([`crate::auth`]) |
//! | `SVCUID` | | set by the Greengrass v2 nucleus: weir's own IPC token; with the socket below, client tokens are validated over the nucleus IPC (`ValidateAuthorizationToken`) |
//! | `AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT` (or `AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH`) | | set by the nucleus: its IPC socket; a relative path is relative to the working directory |
//! | `STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH` | unlimited | average kbit/s of all exports together; when short, higher-priority exports go first |
//! | `STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE` (or `STREAM_MANAGER_THREAD_POOL_SIZE`) | 5 | uploads in progress at once |
//! | `STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES` | 5242880 | S3 part size |
//! | `LOG_LEVEL` | INFO | TRACE, DEBUG, INFO, WARN, ERROR (`RUST_LOG` wins if set) |
//! | `JVM_ARGS` | | ignored: there is no JVM |
//! | `WEIR_IOT_ANALYTICS_TO_KINESIS` | none | `channel=kinesisStream,...` (or one stream name for every channel): IoT Analytics exports of those channels go to Kinesis instead (IoT Analytics was retired on 2025-12-15) |
//! | `WEIR_EXPORTS_ENABLED` | true | `false`: nothing is sent to the cloud; exports are kept, described and resume where they were once it is `true` again (a device that must only buffer, or tests of the protocol alone) |
//! | `WEIR_RETENTION_FOLLOWS_EXPORTS` | false | `true`: a `RejectNewData` stream frees the whole segments all of its exports have passed, so a stream that filled during an outage takes appends again once its backlog is exported; `false` keeps the Java server's semantics |
//! | `WEIR_BIND_ADDRESS` | 127.0.0.1 | address to listen on |
//! | `WEIR_AUTH_TOKEN_FILE` | `<store root>/auth_token`, created if missing | accepted tokens, one per line (not used when the nucleus IPC is) |
//! | `WEIR_MAX_FRAME_BYTES` | 16777216 | largest request frame taken; a larger one is read past and answered `RequestPayloadTooLarge` |
//! | `WEIR_MAX_CONNECTIONS` | 256 | concurrent client connections; past it a new one is closed at once |
//! | `WEIR_MAX_READ_BYTES` | 4194304 | bytes one read answer's messages may take, encoding included; more messages wait for the next read (at least one is always returned) |
//! | `WEIR_SYNC_INTERVAL_MS` | 1000 | how often appends to `File` streams without `flushOnWrite` are synced: a power cut can take at most this much |
//! | `WEIR_SHUTDOWN_TIMEOUT_MS` | 5000 | on SIGTERM, how long requests in progress may take before their connections are closed |
//! | `WEIR_HANDSHAKE_TIMEOUT_MS` | 5000 | a socket that has not sent its Connect by then is closed (validating its token with the nucleus has a bound of its own, 8 s) |
//! | `WEIR_MAX_HANDSHAKING` | 64 | sockets still in their handshake; one more closes the oldest |
//! | `WEIR_MAX_RECEIVING_BYTES` | 67108864 | bytes of partly received large request frames, all connections together |
//! | `WEIR_MAX_QUEUED_BYTES` | 8388608 | answer bytes waiting for one client to read them before its requests stop being read |
//! | `WEIR_MAX_ANSWER_BYTES` | 67108864 | answer bytes being built or waiting to be written, all connections together; reserved before an answer is built (a read: `WEIR_MAX_READ_BYTES`); a connection that cannot get them stops being read meanwhile; at least `WEIR_MAX_READ_BYTES` |
//! | `WEIR_ANSWER_STALL_TIMEOUT_MS` | 5000 | while a connection waits for that budget, one whose client takes none of its answers for this long is closed |
//! | `WEIR_MAX_IN_FLIGHT` | 1024 | requests of one connection being carried out or waiting (flushOnWrite appends, long-polls) |
//! | `WEIR_MAX_LONG_POLLS_PER_CONNECTION` | 16 | reads waiting for messages on one connection; more are answered at once |
//! | `WEIR_MAX_LONG_POLLS` | 256 | reads waiting for messages, all connections together |
//! | `WEIR_TELEMETRY_INTERVAL_MS` | 60000 | under Greengrass v2, how often the byte counts are sent to the nucleus (`PutComponentMetric`, [`crate::telemetry`]) |
//!
//! Why each default is what it is: [`crate::server::ServerLimits`] (the
//! server's limits) and the comments below.

use crate::auth::ipc::{IpcSettings, VALIDATION_TIMEOUT};
use crate::protocol::MAX_FRAME_LEN;
use crate::server::ServerLimits;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// Largest request frame by default. Clients send up to 2^30 bytes
/// (PROTOCOL.md 3), but weir must hold a whole frame in memory before it can
/// decode it, and on a 256 MB device a 1 GiB (or even a 256 MiB) append
/// cannot be held; 16 MiB is the default segment size, far above what IoT
/// messages are, and four of them fit in [`ServerLimits`]'s receive budget.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;
/// A read answer is built in memory and then queued for its client; 4 MiB
/// keeps answers well below the per-connection answer budget (two fit) while
/// per-answer overhead stays negligible.
pub const DEFAULT_MAX_READ_BYTES: usize = 4 << 20;

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
    /// `SVCUID` and the nucleus socket, when both are set: tokens are
    /// validated by the nucleus (the token file is not used).
    pub nucleus_ipc: Option<IpcSettings>,
    pub max_frame_len: usize,
    pub max_connections: usize,
    /// kbit/s; `None` is unlimited.
    pub exporter_max_bandwidth_kbps: Option<u64>,
    pub exporter_thread_pool_size: usize,
    /// `WEIR_IOT_ANALYTICS_TO_KINESIS`: IoT Analytics channel → the Kinesis
    /// stream its exports go to instead (`*` for every other channel).
    pub iot_analytics_to_kinesis: std::collections::BTreeMap<String, String>,
    /// `WEIR_RETENTION_FOLLOWS_EXPORTS`: a `RejectNewData` stream frees the
    /// segments all its exports have passed (off: the Java semantics).
    pub retention_follows_exports: bool,
    /// `WEIR_EXPORTS_ENABLED`: `false` sends nothing (exports are kept and
    /// described, their progress stays where it is).
    pub exports_enabled: bool,
    pub s3_multipart_min_part_size: u64,
    pub log_level: String,
    pub sync_interval: std::time::Duration,
    pub max_read_bytes: usize,
    /// `WEIR_TELEMETRY_INTERVAL_MS`: how often telemetry goes to the nucleus.
    pub telemetry_interval: Duration,
    /// Everything else the server bounds (the handshake, memory,
    /// long-polls, the shutdown deadline).
    pub limits: ServerLimits,
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
            DEFAULT_MAX_FRAME_BYTES,
        )?;
        if !(64..=MAX_FRAME_LEN).contains(&max_frame_len) {
            return Err(ConfigError {
                name: "WEIR_MAX_FRAME_BYTES",
                value: max_frame_len.to_string(),
                reason: format!("must be between 64 and {MAX_FRAME_LEN}"),
            });
        }
        let max_read_bytes = parse(
            "WEIR_MAX_READ_BYTES",
            get("WEIR_MAX_READ_BYTES"),
            DEFAULT_MAX_READ_BYTES,
        )?
        // Room for the answer's own keys, request id and stream name
        // below the protocol's frame limit, which clients enforce.
        .clamp(1, MAX_FRAME_LEN - 64 * 1024);
        let limits = server_limits(&get, max_frame_len, max_read_bytes)?;
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
            nucleus_ipc: nucleus_ipc(&get),
            max_frame_len,
            max_connections: positive(
                "WEIR_MAX_CONNECTIONS",
                parse(
                    "WEIR_MAX_CONNECTIONS",
                    get("WEIR_MAX_CONNECTIONS"),
                    crate::server::DEFAULT_MAX_CONNECTIONS,
                )?,
            )?,
            exporter_max_bandwidth_kbps: get("STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH")
                .map(|v| parse("STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH", Some(v), 0u64))
                .transpose()?,
            exporter_thread_pool_size: positive(
                "STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE",
                parse("STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE", pool, 5)?,
            )?,
            iot_analytics_to_kinesis: redirects(get("WEIR_IOT_ANALYTICS_TO_KINESIS"))?,
            exports_enabled: parse(
                "WEIR_EXPORTS_ENABLED",
                get("WEIR_EXPORTS_ENABLED").map(|v| v.to_ascii_lowercase()),
                true,
            )?,
            retention_follows_exports: parse(
                "WEIR_RETENTION_FOLLOWS_EXPORTS",
                get("WEIR_RETENTION_FOLLOWS_EXPORTS").map(|v| v.to_ascii_lowercase()),
                false,
            )?,
            s3_multipart_min_part_size: parse(
                "STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES",
                get("STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES"),
                5_242_880,
            )?,
            log_level: get("LOG_LEVEL").unwrap_or_else(|| "INFO".into()),
            max_read_bytes,
            sync_interval: std::time::Duration::from_millis(
                parse(
                    "WEIR_SYNC_INTERVAL_MS",
                    get("WEIR_SYNC_INTERVAL_MS"),
                    1000u64,
                )?
                .max(1),
            ),
            telemetry_interval: Duration::from_millis(
                parse(
                    "WEIR_TELEMETRY_INTERVAL_MS",
                    get("WEIR_TELEMETRY_INTERVAL_MS"),
                    60_000u64,
                )?
                .max(1),
            ),
            limits,
        })
    }

    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

/// The nucleus IPC, when the nucleus gave weir a token and a socket. The
/// path is kept as given: a relative one is relative to the working
/// directory, and making it absolute could take it past the 108 bytes a
/// socket address holds (the reason the classic nucleus hands out a
/// relative one).
fn nucleus_ipc(get: &impl Fn(&str) -> Option<String>) -> Option<IpcSettings> {
    let svcuid = get("SVCUID")?;
    let socket = get("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
        .or_else(|| get("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH"))?;
    Some(IpcSettings {
        socket: PathBuf::from(socket),
        svcuid,
        timeout: VALIDATION_TIMEOUT,
    })
}

/// `value` parsed, or `default` when the variable is not set; a value that
/// does not parse is an error naming the variable.
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

/// `WEIR_IOT_ANALYTICS_TO_KINESIS`: `channel=stream` pairs separated by
/// commas, or a lone stream name for every channel (the same as
/// `*=stream`).
fn redirects(
    value: Option<String>,
) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    const NAME: &str = "WEIR_IOT_ANALYTICS_TO_KINESIS";
    let mut map = std::collections::BTreeMap::new();
    let Some(value) = value else {
        return Ok(map);
    };
    let error = |reason: String| ConfigError {
        name: NAME,
        value: value.clone(),
        reason,
    };
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (channel, stream) = match item.split_once('=') {
            Some((channel, stream)) => (channel.trim(), stream.trim()),
            None => ("*", item),
        };
        if channel.is_empty() || stream.is_empty() {
            return Err(error(format!("{item:?} is not channel=stream")));
        }
        if map.insert(channel.to_owned(), stream.to_owned()).is_some() {
            return Err(error(format!("channel {channel} is named twice")));
        }
    }
    Ok(map)
}

/// A count that must be at least 1.
fn positive(name: &'static str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(ConfigError {
            name,
            value: value.to_string(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(value)
}

/// The `WEIR_` limits of [`ServerLimits`]; defaults from
/// [`ServerLimits::default`], which says why each is what it is.
fn server_limits(
    get: &impl Fn(&str) -> Option<String>,
    max_frame_len: usize,
    max_read_bytes: usize,
) -> Result<ServerLimits, ConfigError> {
    let d = ServerLimits::default();
    let count = |name: &'static str, default: usize| -> Result<usize, ConfigError> {
        positive(name, parse(name, get(name), default)?)
    };
    let millis = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        let default = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
        parse(name, get(name), default).map(Duration::from_millis)
    };
    let limits = ServerLimits {
        max_handshaking: count("WEIR_MAX_HANDSHAKING", d.max_handshaking)?,
        handshake_timeout: millis("WEIR_HANDSHAKE_TIMEOUT_MS", d.handshake_timeout)?,
        shutdown_timeout: millis("WEIR_SHUTDOWN_TIMEOUT_MS", d.shutdown_timeout)?,
        max_receiving_bytes: count("WEIR_MAX_RECEIVING_BYTES", d.max_receiving_bytes)?,
        max_queued_bytes: count("WEIR_MAX_QUEUED_BYTES", d.max_queued_bytes)?,
        max_answer_bytes: count("WEIR_MAX_ANSWER_BYTES", d.max_answer_bytes)?,
        // The store's limit, which a read reserves before it is carried out.
        max_read_bytes,
        answer_stall_timeout: millis("WEIR_ANSWER_STALL_TIMEOUT_MS", d.answer_stall_timeout)?,
        max_in_flight: count("WEIR_MAX_IN_FLIGHT", d.max_in_flight)?,
        max_long_polls_per_connection: count(
            "WEIR_MAX_LONG_POLLS_PER_CONNECTION",
            d.max_long_polls_per_connection,
        )?,
        max_long_polls: count("WEIR_MAX_LONG_POLLS", d.max_long_polls)?,
    };
    // A frame is received against the budget: one larger than all of it
    // could never complete.
    if limits.max_receiving_bytes < max_frame_len {
        return Err(ConfigError {
            name: "WEIR_MAX_RECEIVING_BYTES",
            value: limits.max_receiving_bytes.to_string(),
            reason: format!("must be at least WEIR_MAX_FRAME_BYTES ({max_frame_len})"),
        });
    }
    // A read reserves its answer's bound before it is carried out: with a
    // smaller budget, every read would wait for all of it.
    if limits.max_answer_bytes < max_read_bytes {
        return Err(ConfigError {
            name: "WEIR_MAX_ANSWER_BYTES",
            value: limits.max_answer_bytes.to_string(),
            reason: format!("must be at least WEIR_MAX_READ_BYTES ({max_read_bytes})"),
        });
    }
    Ok(limits)
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
    fn export_settings_are_parsed_or_refused() {
        let c = config(&[
            ("WEIR_IOT_ANALYTICS_TO_KINESIS", "a=ka, b = kb"),
            ("WEIR_RETENTION_FOLLOWS_EXPORTS", "TRUE"),
        ])
        .unwrap();
        assert_eq!(c.iot_analytics_to_kinesis.len(), 2);
        assert_eq!(c.iot_analytics_to_kinesis["b"], "kb");
        assert!(c.retention_follows_exports);
        let all = config(&[("WEIR_IOT_ANALYTICS_TO_KINESIS", "everything")]).unwrap();
        assert_eq!(all.iot_analytics_to_kinesis["*"], "everything");
        assert!(!config(&[]).unwrap().retention_follows_exports);
        for bad in ["a=", "=k", "a=k,a=j"] {
            let e = config(&[("WEIR_IOT_ANALYTICS_TO_KINESIS", bad)]).unwrap_err();
            assert_eq!(e.name, "WEIR_IOT_ANALYTICS_TO_KINESIS", "{bad}");
        }
        let e = config(&[("WEIR_RETENTION_FOLLOWS_EXPORTS", "maybe")]).unwrap_err();
        assert_eq!(e.name, "WEIR_RETENTION_FOLLOWS_EXPORTS");
        let e = config(&[("STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE", "0")]).unwrap_err();
        assert_eq!(e.name, "STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE");
    }

    #[test]
    fn the_nucleus_ipc_is_used_when_greengrass_sets_its_variables() {
        assert_eq!(config(&[]).unwrap().nucleus_ipc, None);
        assert_eq!(
            config(&[("SVCUID", "ABCDEFGHIJKLMNOP")])
                .unwrap()
                .nucleus_ipc,
            None
        );
        let socket = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT";
        assert_eq!(
            config(&[(socket, "/gg/ipc.socket")]).unwrap().nucleus_ipc,
            None
        );
        let ipc = config(&[
            ("SVCUID", "ABCDEFGHIJKLMNOP"),
            (socket, "../../ipc.socket"),
            ("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH", "/gg/ipc.socket"),
        ])
        .unwrap()
        .nucleus_ipc
        .unwrap();
        assert_eq!(
            ipc.socket,
            PathBuf::from("../../ipc.socket"),
            "kept relative"
        );
        assert_eq!(ipc.svcuid, "ABCDEFGHIJKLMNOP");
        assert!(
            !format!("{ipc:?}").contains("ABCDEFGHIJKLMNOP"),
            "the token is not logged"
        );
        let fallback = config(&[
            ("SVCUID", "ABCDEFGHIJKLMNOP"),
            ("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH", "/gg/ipc.socket"),
        ])
        .unwrap();
        assert_eq!(
            fallback.nucleus_ipc.unwrap().socket,
            PathBuf::from("/gg/ipc.socket")
        );
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

    #[test]
    fn limits_are_parsed_or_refused_by_name() {
        let c = config(&[
            ("WEIR_SHUTDOWN_TIMEOUT_MS", "250"),
            ("WEIR_MAX_HANDSHAKING", "3"),
            ("WEIR_MAX_CONNECTIONS", "7"),
        ])
        .unwrap();
        assert_eq!(c.limits.shutdown_timeout, Duration::from_millis(250));
        assert_eq!((c.limits.max_handshaking, c.max_connections), (3, 7));
        for name in [
            "WEIR_SHUTDOWN_TIMEOUT_MS",
            "WEIR_HANDSHAKE_TIMEOUT_MS",
            "WEIR_MAX_HANDSHAKING",
            "WEIR_MAX_RECEIVING_BYTES",
            "WEIR_MAX_QUEUED_BYTES",
            "WEIR_MAX_ANSWER_BYTES",
            "WEIR_ANSWER_STALL_TIMEOUT_MS",
            "WEIR_MAX_IN_FLIGHT",
            "WEIR_MAX_LONG_POLLS_PER_CONNECTION",
            "WEIR_MAX_LONG_POLLS",
            "WEIR_MAX_CONNECTIONS",
        ] {
            assert_eq!(config(&[(name, "many")]).unwrap_err().name, name);
        }
        assert_eq!(
            config(&[("WEIR_MAX_IN_FLIGHT", "0")]).unwrap_err().name,
            "WEIR_MAX_IN_FLIGHT"
        );
        assert_eq!(
            config(&[("WEIR_MAX_RECEIVING_BYTES", "1000")])
                .unwrap_err()
                .name,
            "WEIR_MAX_RECEIVING_BYTES",
            "a budget below the frame limit"
        );
        assert_eq!(
            config(&[("WEIR_MAX_ANSWER_BYTES", "1000")])
                .unwrap_err()
                .name,
            "WEIR_MAX_ANSWER_BYTES",
            "an answer budget below the read limit"
        );
        let c = config(&[("WEIR_MAX_READ_BYTES", "5000")]).unwrap();
        assert_eq!(
            (c.max_read_bytes, c.limits.max_read_bytes),
            (5000, 5000),
            "reads reserve what the store lets them take"
        );
    }
}
