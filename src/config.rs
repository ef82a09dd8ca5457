//! Configuration: the one place settings are read and checked.
//!
//! Every setting is named after the environment variable the genuine (Java)
//! stream manager reads, so weir replaces it without a change to the
//! Greengrass component configuration; weir's own additions start `WEIR_`.
//! [`SETTINGS`] lists them all with their defaults and meanings (`weir
//! config` prints it with the effective values).
//!
//! A setting comes from, highest first:
//!
//! 1. the command line: `--port`, `--store-root`, `--bind-address`,
//!    `--log-level`, or `--set KEY=VALUE` for any key;
//! 2. the environment variable of that name;
//! 3. the configuration file, a TOML file whose keys are the same names
//!    (`STREAM_MANAGER_SERVER_PORT = 8088`), named by `--config PATH` or
//!    else `WEIR_CONFIG`; there is none by default;
//! 4. the default.
//!
//! An empty value counts as unset at its layer (Greengrass passes `""` for
//! a configuration key it has no value for), so the next layer down
//! decides. A value that does not parse stops start-up with an error naming
//! the key and where the value came from, never silently replaced by a
//! default; so does a key of the file or of `--set` that weir does not know,
//! except `JVM_ARGS` and `Version`, keys of the genuine component's
//! configuration, which are ignored with a warning.

use crate::auth::ipc::{IpcSettings, VALIDATION_TIMEOUT};
use crate::protocol::MAX_FRAME_LEN;
use crate::server::ServerLimits;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
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

/// How a setting is written in the configuration file. Strings are taken
/// for every kind (Greengrass passes strings) as long as they parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Integer,
    Boolean,
    Text,
}

/// One setting: its key (the environment variable's name and the file's
/// key), the value used when nothing sets it, and what it does.
#[derive(Debug)]
pub struct Setting {
    pub key: &'static str,
    pub kind: Kind,
    /// Empty: unset, and `meaning` says what that does.
    pub default: &'static str,
    pub meaning: &'static str,
}

const fn setting(
    key: &'static str,
    kind: Kind,
    default: &'static str,
    meaning: &'static str,
) -> Setting {
    Setting {
        key,
        kind,
        default,
        meaning,
    }
}

/// Every setting weir reads; the one list that unknown keys are checked
/// against and that `weir config` prints. Why each limit's default is what
/// it is: [`crate::server::ServerLimits`] and the constants above.
pub const SETTINGS: &[Setting] = {
    use Kind::{Boolean, Integer, Text};
    &[
        setting("STREAM_MANAGER_SERVER_PORT", Integer, "8088", "TCP port; 0 picks a free one (logged)"),
        setting("STREAM_MANAGER_STORE_ROOT_DIR", Text, "weir-store", "folder of the stream store and the default token file"),
        setting("STREAM_MANAGER_AUTHENTICATE_CLIENT", Boolean, "true", "require a known authToken in the handshake"),
        setting("SVCUID", Text, "", "set by the Greengrass v2 nucleus: weir's own IPC token; with the nucleus socket below, client tokens are validated over the nucleus IPC (ValidateAuthorizationToken) instead of the token file"),
        setting("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", Text, "", "set by the nucleus: its IPC socket (a relative path is relative to the working directory)"),
        setting("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH", Text, "", "set by the classic nucleus: its IPC socket's absolute path, used when the one above is unset"),
        setting("STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH", Integer, "", "average kbit/s of all exports together; unset: unlimited; when short, higher-priority exports go first"),
        setting("STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE", Integer, "5", "uploads in progress at once"),
        setting("STREAM_MANAGER_THREAD_POOL_SIZE", Integer, "", "the older spelling of STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE, used when that one is unset"),
        setting("STREAM_MANAGER_EXPORTER_S3_DESTINATION_MULTIPART_UPLOAD_MIN_PART_SIZE_BYTES", Integer, "5242880", "S3 part size"),
        setting("LOG_LEVEL", Text, "INFO", "TRACE, DEBUG, INFO, WARN or ERROR (RUST_LOG wins if set)"),
        setting("WEIR_IOT_ANALYTICS_TO_KINESIS", Text, "", "channel=kinesisStream,... (or one stream name for every channel): IoT Analytics exports of those channels go to Kinesis instead (IoT Analytics was retired on 2025-12-15)"),
        setting("WEIR_EXPORTS_ENABLED", Boolean, "true", "false: nothing is sent to the cloud; exports are kept, described and resume where they were once it is true again (a device that must only buffer, or tests of the protocol alone)"),
        setting("WEIR_RETENTION_FOLLOWS_EXPORTS", Boolean, "false", "true: a RejectNewData stream frees the whole segments all of its exports have passed; false keeps the Java server's semantics"),
        setting("WEIR_BIND_ADDRESS", Text, "127.0.0.1", "address to listen on"),
        setting("WEIR_AUTH_TOKEN_FILE", Text, "", "accepted tokens, one per line; unset: <store root>/auth_token, created if missing"),
        setting("WEIR_MAX_FRAME_BYTES", Integer, "16777216", "largest request frame taken (64 to 2^30); a larger one is read past and answered RequestPayloadTooLarge"),
        setting("WEIR_MAX_CONNECTIONS", Integer, "256", "concurrent client connections; past it a new one is closed at once"),
        setting("WEIR_MAX_READ_BYTES", Integer, "4194304", "bytes one read answer's messages may take, encoding included (at least one message is always returned)"),
        setting("WEIR_SYNC_INTERVAL_MS", Integer, "1000", "how often appends to File streams without flushOnWrite are synced: a power cut can take at most this much"),
        setting("WEIR_SHUTDOWN_TIMEOUT_MS", Integer, "5000", "on SIGTERM, how long requests in progress may take before their connections are closed"),
        setting("WEIR_HANDSHAKE_TIMEOUT_MS", Integer, "5000", "a socket that has not completed its handshake by then is closed"),
        setting("WEIR_MAX_HANDSHAKING", Integer, "64", "sockets still in their handshake; one more closes the oldest"),
        setting("WEIR_MAX_RECEIVING_BYTES", Integer, "67108864", "bytes of partly received large request frames, all connections together; at least WEIR_MAX_FRAME_BYTES"),
        setting("WEIR_MAX_QUEUED_BYTES", Integer, "8388608", "answer bytes waiting for one client to read them before its requests stop being read"),
        setting("WEIR_MAX_ANSWER_BYTES", Integer, "67108864", "answer bytes being built or waiting to be written, all connections together, reserved before an answer is built; at least WEIR_MAX_READ_BYTES"),
        setting("WEIR_ANSWER_STALL_TIMEOUT_MS", Integer, "5000", "while a connection waits for the answer budget, one whose client takes none of its answers for this long is closed"),
        setting("WEIR_MAX_IN_FLIGHT", Integer, "1024", "requests of one connection being carried out or waiting (flushOnWrite appends, long-polls)"),
        setting("WEIR_MAX_LONG_POLLS_PER_CONNECTION", Integer, "16", "reads waiting for messages on one connection; more are answered at once"),
        setting("WEIR_MAX_LONG_POLLS", Integer, "256", "reads waiting for messages, all connections together"),
        setting("WEIR_TELEMETRY_INTERVAL_MS", Integer, "60000", "under Greengrass v2, how often the byte counts are sent to the nucleus (PutComponentMetric)"),
    ]
};

/// Keys of the genuine component's configuration that mean nothing to weir
/// (there is no JVM; `Version` is the component's); in the file or `--set`
/// they are ignored with a warning, not refused.
pub const IGNORED: &[&str] = &["JVM_ARGS", "Version"];

/// The environment variable naming the configuration file (`--config`
/// wins over it).
pub const CONFIG_FILE_VAR: &str = "WEIR_CONFIG";

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Environment,
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Environment => f.write_str("environment"),
            Origin::CommandLine => f.write_str("command line"),
        }
    }
}

/// A value that does not parse or breaks a rule, by key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

/// Why the configuration cannot be loaded; each names the key, the file or
/// the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the configuration file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("unknown setting {key} in {origin} (`weir config` lists the settings){hint}")]
    Unknown {
        key: String,
        origin: Origin,
        hint: &'static str,
    },
    #[error("{key} in {origin}: {reason}")]
    Malformed {
        key: String,
        origin: Origin,
        reason: String,
    },
    #[error("{} = {:?} (from {origin}): {}", .error.name, .error.value, .error.reason)]
    Value { error: ConfigError, origin: Origin },
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
    /// One of TRACE, DEBUG, INFO, WARN, ERROR, as given.
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

/// The configuration as loaded by [`Config::load`]: the parsed settings,
/// and each setting's value as given and where it came from (what `weir
/// config` prints).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The configuration file, and where its path came from
    /// (`--config`: [`Origin::CommandLine`], `WEIR_CONFIG`:
    /// [`Origin::Environment`]).
    pub file: Option<(PathBuf, Origin)>,
    /// Every entry of [`SETTINGS`], in its order: the value (the default
    /// when no layer set it; empty for an unset one without a default) and
    /// its origin.
    pub values: Vec<(&'static Setting, String, Origin)>,
    /// Keys that were ignored ([`IGNORED`]), one message each, to be logged.
    pub warnings: Vec<String>,
}

impl Config {
    /// Loads the layered configuration: `flags` (key/value pairs from the
    /// command line, later ones winning), then `env`, then the file
    /// (`config_flag`, else `WEIR_CONFIG` from `env`), then the defaults.
    /// Keys of the file and of `flags` must be in [`SETTINGS`] (or
    /// [`IGNORED`]).
    pub fn load(
        config_flag: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: &[(String, String)],
    ) -> Result<Loaded, LoadError> {
        let mut warnings = Vec::new();
        let file = match config_flag {
            Some(path) => Some((path.to_owned(), Origin::CommandLine)),
            None => set(env(CONFIG_FILE_VAR)).map(|p| (PathBuf::from(p), Origin::Environment)),
        };
        let file_values = match &file {
            Some((path, _)) => read_file(path, &mut warnings)?,
            None => BTreeMap::new(),
        };
        let mut flag_values = BTreeMap::new();
        for (key, value) in flags {
            if let Some(key) = check_key(key, &Origin::CommandLine, &mut warnings)? {
                flag_values.insert(key, value.clone());
            }
        }
        let mut chosen: BTreeMap<&'static str, (String, Origin)> = BTreeMap::new();
        for s in SETTINGS {
            let from_file = || {
                let (path, _) = file.as_ref()?;
                Some((
                    set(file_values.get(s.key).cloned())?,
                    Origin::File(path.clone()),
                ))
            };
            let value = set(flag_values.get(s.key).cloned())
                .map(|v| (v, Origin::CommandLine))
                .or_else(|| set(env(s.key)).map(|v| (v, Origin::Environment)))
                .or_else(from_file);
            if let Some(value) = value {
                chosen.insert(s.key, value);
            }
        }
        let config =
            Config::build(&|key| chosen.get(key).map(|(v, _)| v.clone())).map_err(|error| {
                LoadError::Value {
                    origin: chosen
                        .get(error.name)
                        .map_or(Origin::Default, |(_, o)| o.clone()),
                    error,
                }
            })?;
        let values = SETTINGS
            .iter()
            .map(|s| match chosen.remove(s.key) {
                Some((v, o)) => (s, v, o),
                None => (s, s.default.to_owned(), Origin::Default),
            })
            .collect();
        Ok(Loaded {
            config,
            file,
            values,
            warnings,
        })
    }

    /// Reads the configuration through `lookup` alone (one layer, as if
    /// it were the environment): a map in tests, nothing for the
    /// in-process benchmark server.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Self::build(&|name| set(lookup(name)))
    }

    /// The process environment alone, without a file or flags.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Parses the settings `get` gives (already trimmed, `None` when
    /// unset). Every key it asks for is in [`SETTINGS`] (a test checks).
    fn build(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
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
        let limits = server_limits(get, max_frame_len, max_read_bytes)?;
        let pool = get("STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE")
            .map(|v| ("STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE", v))
            .or_else(|| {
                get("STREAM_MANAGER_THREAD_POOL_SIZE")
                    .map(|v| ("STREAM_MANAGER_THREAD_POOL_SIZE", v))
            });
        let exporter_thread_pool_size = match pool {
            None => 5,
            Some((name, v)) => positive(name, parse(name, Some(v), 5)?)?,
        };
        let log_level = get("LOG_LEVEL").unwrap_or_else(|| "INFO".into());
        if !["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
            .iter()
            .any(|l| l.eq_ignore_ascii_case(&log_level))
        {
            return Err(ConfigError {
                name: "LOG_LEVEL",
                value: log_level,
                reason: "must be TRACE, DEBUG, INFO, WARN or ERROR".into(),
            });
        }
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
            exporter_thread_pool_size,
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
            log_level,
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
}

impl Loaded {
    /// What `weir config` prints: every setting with its effective value
    /// and origin, as a TOML file (unset ones commented out) that loads
    /// back to the same configuration.
    pub fn render(&self) -> String {
        use fmt::Write;
        let mut out = String::new();
        let file = match &self.file {
            Some((path, origin)) => format!("{} (named by {origin})", path.display()),
            None => "none".into(),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# weir {}: effective configuration\n# precedence: command line > environment > file > default\n# configuration file: {file}",
            env!("CARGO_PKG_VERSION")
        );
        // Aligned for all but the one very long S3 key.
        let width = 40;
        for (setting, value, origin) in &self.values {
            let key = setting.key;
            if value.is_empty() {
                let _ = writeln!(out, "# {key} is unset ({origin}): {}", setting.meaning);
            } else {
                let value = toml_value(setting.kind, value);
                let _ = writeln!(out, "{key:width$} = {value}  # {origin}");
            }
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "# {warning}");
        }
        out
    }
}

/// The nucleus IPC, when the nucleus gave weir a token and a socket. The
/// path is kept as given: a relative one is relative to the working
/// directory, and making it absolute could take it past the 108 bytes a
/// socket address holds (the reason the classic nucleus hands out a
/// relative one).
fn nucleus_ipc(get: &impl Fn(&str) -> Option<String>) -> Option<IpcSettings> {
    // Each asked for, so the settings' list can be checked against what is read.
    let svcuid = get("SVCUID");
    let socket = get("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
        .or_else(|| get("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH"));
    let (svcuid, socket) = (svcuid?, socket?);
    Some(IpcSettings {
        socket: PathBuf::from(socket),
        svcuid,
        timeout: VALIDATION_TIMEOUT,
    })
}

/// A value as TOML: integers and booleans bare when they are written so,
/// anything else a basic string.
fn toml_value(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Integer if value.parse::<i64>().is_ok() => return value.to_owned(),
        Kind::Boolean
            if value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false") =>
        {
            return value.to_ascii_lowercase()
        }
        _ => {}
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// A value trimmed, `None` when missing or empty (unset at its layer).
fn set(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// `key` as a known setting's key; `None` for an ignored one (with a
/// warning); an error for any other.
fn check_key(
    key: &str,
    origin: &Origin,
    warnings: &mut Vec<String>,
) -> Result<Option<&'static str>, LoadError> {
    if let Some(s) = SETTINGS.iter().find(|s| s.key == key) {
        return Ok(Some(s.key));
    }
    if IGNORED.contains(&key) {
        warnings.push(format!(
            "{key} in {origin} is ignored: it means nothing to weir"
        ));
        return Ok(None);
    }
    let hint = if key == CONFIG_FILE_VAR {
        ": the file is named by --config or the WEIR_CONFIG environment variable"
    } else if SETTINGS.iter().any(|s| s.key.eq_ignore_ascii_case(key)) {
        ": keys are upper case, as the environment variables"
    } else {
        ""
    };
    Err(LoadError::Unknown {
        key: key.to_owned(),
        origin: origin.clone(),
        hint,
    })
}

/// The configuration file's settings, as strings, by key.
fn read_file(
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<&'static str, String>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| LoadError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
    let origin = Origin::File(path.to_owned());
    let mut values = BTreeMap::new();
    for (key, value) in table {
        let Some(key) = check_key(&key, &origin, warnings)? else {
            continue;
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                return Err(LoadError::Malformed {
                    key: key.to_owned(),
                    origin,
                    reason: format!(
                        "must be a string, an integer or a boolean, not {}",
                        other.type_str()
                    ),
                })
            }
        };
        values.insert(key, value);
    }
    Ok(values)
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
    get: &dyn Fn(&str) -> Option<String>,
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

/// The log filter: `RUST_LOG`'s directives when it is set and understood,
/// else [`Config::log_level`] for every target. The second value says why a
/// set `RUST_LOG` was not used, for the log once it is running.
///
/// `RUST_LOG` takes a default level and per-target levels, `target=level`,
/// separated by commas (`warn,weir::export=debug`): the form the README
/// shows and the one operators use. It is read as a
/// [`Targets`](tracing_subscriber::filter::Targets) filter, not an
/// `EnvFilter`: the span and field filters that `EnvFilter` adds need a
/// regular-expression engine, about 0.4 MB of the binary (BENCHMARKS.md
/// section 6), and such a `RUST_LOG` is reported here rather than half
/// applied.
pub fn log_filter(
    rust_log: Option<&str>,
    log_level: &str,
) -> (tracing_subscriber::filter::Targets, Option<String>) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let level = log_level
        .parse::<LevelFilter>()
        .unwrap_or(LevelFilter::INFO);
    let from_level = Targets::new().with_default(level);
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        None => (from_level, None),
        Some(directives) => match directives.parse::<Targets>() {
            Ok(targets) => (targets, None),
            Err(e) => (
                from_level,
                Some(format!(
                    "RUST_LOG={directives:?} is not understood ({e}); it takes \
                     `level` and `target=level` separated by commas. Logging at \
                     LOG_LEVEL {log_level}"
                )),
            ),
        },
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

    /// A file holding `text`, kept until the returned guard is dropped.
    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn load(
        file: Option<&Path>,
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<Loaded, LoadError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let flags: Vec<(String, String)> = flags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(file, |name| env.get(name).cloned(), &flags)
    }

    fn origin_of(loaded: &Loaded, key: &str) -> (String, Origin) {
        let (_, value, origin) = loaded.values.iter().find(|(s, ..)| s.key == key).unwrap();
        (value.clone(), origin.clone())
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let f = file(
            "STREAM_MANAGER_SERVER_PORT = 1111\n\
             WEIR_MAX_READ_BYTES = 5000\n\
             LOG_LEVEL = \"DEBUG\"\n\
             STREAM_MANAGER_AUTHENTICATE_CLIENT = false\n",
        );
        let path = f.path().to_owned();
        let l = load(
            Some(&path),
            &[
                ("STREAM_MANAGER_SERVER_PORT", "2222"),
                ("LOG_LEVEL", "WARN"),
            ],
            &[("LOG_LEVEL", "ERROR")],
        )
        .unwrap();
        assert_eq!(l.config.port, 2222, "the environment beats the file");
        assert_eq!(l.config.log_level, "ERROR", "a flag beats the environment");
        assert_eq!(l.config.max_read_bytes, 5000, "the file beats the default");
        assert!(!l.config.authenticate_client, "a TOML boolean");
        assert_eq!(l.config.max_connections, 256);
        let in_file = Origin::File(path.clone());
        assert_eq!(
            origin_of(&l, "STREAM_MANAGER_SERVER_PORT"),
            ("2222".into(), Origin::Environment)
        );
        assert_eq!(
            origin_of(&l, "LOG_LEVEL"),
            ("ERROR".into(), Origin::CommandLine)
        );
        assert_eq!(
            origin_of(&l, "WEIR_MAX_READ_BYTES"),
            ("5000".into(), in_file.clone())
        );
        assert_eq!(
            origin_of(&l, "STREAM_MANAGER_AUTHENTICATE_CLIENT"),
            ("false".into(), in_file)
        );
        assert_eq!(
            origin_of(&l, "WEIR_MAX_CONNECTIONS"),
            ("256".into(), Origin::Default)
        );
        assert_eq!(l.file, Some((path, Origin::CommandLine)));
        assert_eq!(l.values.len(), SETTINGS.len());
    }

    #[test]
    fn the_file_is_named_by_the_flag_or_else_weir_config() {
        let a = file("STREAM_MANAGER_SERVER_PORT = 1\n");
        let b = file("STREAM_MANAGER_SERVER_PORT = 2\n");
        let b_path = b.path().to_str().unwrap();
        let l = load(None, &[(CONFIG_FILE_VAR, b_path)], &[]).unwrap();
        assert_eq!(l.config.port, 2);
        assert_eq!(l.file, Some((b.path().to_owned(), Origin::Environment)));
        let l = load(Some(a.path()), &[(CONFIG_FILE_VAR, b_path)], &[]).unwrap();
        assert_eq!(l.config.port, 1, "--config wins over WEIR_CONFIG");
        let l = load(None, &[], &[]).unwrap();
        assert_eq!((l.file, l.config.port), (None, 8088), "no file by default");
        let missing = Path::new("/nonexistent/weir.toml");
        let e = load(Some(missing), &[], &[]).unwrap_err();
        assert!(matches!(e, LoadError::Read { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/weir.toml"), "{e}");
    }

    #[test]
    fn a_file_of_comments_only_or_empty_is_all_defaults() {
        let commented = file(
            "# weir configuration: keys are the environment variables' names\n\
             # STREAM_MANAGER_SERVER_PORT = 8088\n\
             \n   # indented comment\n",
        );
        let empty = file("");
        for f in [&commented, &empty] {
            let l = load(Some(f.path()), &[], &[]).unwrap();
            assert_eq!(l.config, config(&[]).unwrap());
            assert!(l.values.iter().all(|(_, _, o)| *o == Origin::Default));
            assert!(l.warnings.is_empty());
        }
    }

    #[test]
    fn unknown_keys_stop_loading_naming_key_and_place() {
        let f = file("STREAM_MANAGER_SERVER_PORT = 8088\nSTREAM_MANAGER_SERVR_PORT = 1\n");
        let e = load(Some(f.path()), &[], &[]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("STREAM_MANAGER_SERVR_PORT")
                && text.contains(&f.path().display().to_string()),
            "{text}"
        );
        let e = load(None, &[], &[("WEIR_MAX_READ", "1")]).unwrap_err();
        assert!(
            matches!(&e, LoadError::Unknown { key, origin: Origin::CommandLine, .. } if key == "WEIR_MAX_READ"),
            "{e}"
        );
        // A table is a key weir does not know either.
        let f = file("[server]\nport = 1\n");
        let e = load(Some(f.path()), &[], &[]).unwrap_err();
        assert!(
            matches!(&e, LoadError::Unknown { key, .. } if key == "server"),
            "{e}"
        );
        let f = file("stream_manager_server_port = 1\n");
        let e = load(Some(f.path()), &[], &[]).unwrap_err();
        assert!(e.to_string().contains("upper case"), "{e}");
        let f = file("WEIR_CONFIG = \"/etc/other.toml\"\n");
        let e = load(Some(f.path()), &[], &[]).unwrap_err();
        assert!(e.to_string().contains("--config"), "{e}");
        // The environment is not checked: it holds everything else too.
        load(None, &[("WEIR_WHATEVER", "1")], &[]).unwrap();
    }

    #[test]
    fn jvm_args_and_version_are_ignored_with_a_warning() {
        let f = file("JVM_ARGS = \"-Xmx64m\"\nVersion = \"2.3.0\"\n");
        let l = load(Some(f.path()), &[], &[("JVM_ARGS", "-Xss1m")]).unwrap();
        assert_eq!(l.config, config(&[]).unwrap());
        assert_eq!(l.warnings.len(), 3, "{:?}", l.warnings);
        assert!(l.warnings.iter().any(|w| w.contains("Version")));
    }

    #[test]
    fn bad_values_name_the_key_and_where_the_value_came_from() {
        let f = file("WEIR_MAX_CONNECTIONS = \"lots\"\nWEIR_MAX_IN_FLIGHT = 0\n");
        let path = f.path().to_owned();
        let e = load(Some(&path), &[], &[]).unwrap_err();
        let LoadError::Value { error, origin } = &e else {
            panic!("{e}")
        };
        assert_eq!(
            (error.name, origin),
            ("WEIR_MAX_IN_FLIGHT", &Origin::File(path.clone()))
        );
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        // The same key fixed by a higher layer: the next bad one is named.
        let e = load(Some(&path), &[("WEIR_MAX_IN_FLIGHT", "9")], &[]).unwrap_err();
        assert!(
            matches!(&e, LoadError::Value { error, .. } if error.name == "WEIR_MAX_CONNECTIONS"),
            "{e}"
        );
        let e = load(None, &[("STREAM_MANAGER_SERVER_PORT", "x")], &[]).unwrap_err();
        assert!(e.to_string().contains("(from environment)"), "{e}");
        let e = load(None, &[], &[("STREAM_MANAGER_SERVER_PORT", "70000")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("STREAM_MANAGER_SERVER_PORT = \"70000\" (from command line)"),
            "{e}"
        );
        let e = load(None, &[], &[("LOG_LEVEL", "LOUD")]).unwrap_err();
        assert!(
            matches!(&e, LoadError::Value { error, .. } if error.name == "LOG_LEVEL"),
            "{e}"
        );
        // A rule between two settings names the one at fault, with its origin.
        let e = load(None, &[("WEIR_MAX_ANSWER_BYTES", "1000")], &[]).unwrap_err();
        assert!(
            matches!(&e, LoadError::Value { error, origin: Origin::Environment } if error.name == "WEIR_MAX_ANSWER_BYTES"),
            "{e}"
        );
        // TOML values of a type no setting has, and files that are not TOML.
        let f = file("WEIR_MAX_CONNECTIONS = [1, 2]\n");
        let e = load(Some(f.path()), &[], &[]).unwrap_err();
        assert!(
            matches!(&e, LoadError::Malformed { key, .. } if key == "WEIR_MAX_CONNECTIONS"),
            "{e}"
        );
        let f = file("WEIR_MAX_READ_BYTES = 4.5\n");
        let e = load(Some(f.path()), &[], &[]).unwrap_err();
        assert!(
            matches!(&e, LoadError::Value { error, .. } if error.name == "WEIR_MAX_READ_BYTES"),
            "{e}"
        );
        let f = file("STREAM_MANAGER_SERVER_PORT = \n");
        let e = load(Some(f.path()), &[], &[]).unwrap_err();
        assert!(matches!(&e, LoadError::Syntax { .. }), "{e}");
        assert!(
            e.to_string().contains(&f.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn strings_that_parse_are_taken_as_greengrass_passes_them() {
        let f = file(
            "STREAM_MANAGER_SERVER_PORT = \"18088\"\n\
             STREAM_MANAGER_AUTHENTICATE_CLIENT = \"false\"\n\
             STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH = \"\"\n",
        );
        let l = load(Some(f.path()), &[], &[]).unwrap();
        assert_eq!(l.config.port, 18088);
        assert!(!l.config.authenticate_client);
        assert_eq!(l.config.exporter_max_bandwidth_kbps, None, "empty is unset");
    }

    #[test]
    fn an_empty_value_leaves_the_choice_to_the_layer_below() {
        let f = file("STREAM_MANAGER_SERVER_PORT = 1234\n");
        let l = load(
            Some(f.path()),
            &[("STREAM_MANAGER_SERVER_PORT", "")],
            &[("STREAM_MANAGER_SERVER_PORT", " ")],
        )
        .unwrap();
        assert_eq!(l.config.port, 1234);
    }

    #[test]
    fn settings_is_every_key_the_parser_reads() {
        let asked = std::cell::RefCell::new(std::collections::BTreeSet::new());
        Config::build(&|key| {
            asked.borrow_mut().insert(key.to_owned());
            None
        })
        .unwrap();
        let listed: std::collections::BTreeSet<String> =
            SETTINGS.iter().map(|s| s.key.to_owned()).collect();
        assert_eq!(*asked.borrow(), listed);
        assert_eq!(listed.len(), SETTINGS.len(), "a key listed twice");
    }

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let explicit: Vec<(&str, &str)> = SETTINGS
            .iter()
            .filter(|s| !s.default.is_empty())
            .map(|s| (s.key, s.default))
            .collect();
        assert_eq!(config(&explicit).unwrap(), config(&[]).unwrap());
    }

    #[test]
    fn weir_config_output_loads_back_to_the_same_configuration() {
        let f = file("WEIR_MAX_READ_BYTES = 5000\nWEIR_AUTH_TOKEN_FILE = \"/a \\\"b\\\"\"\n");
        let l = load(
            Some(f.path()),
            &[("WEIR_IOT_ANALYTICS_TO_KINESIS", "a=b")],
            &[("STREAM_MANAGER_AUTHENTICATE_CLIENT", "FALSE")],
        )
        .unwrap();
        let printed = l.render();
        assert!(printed.contains("# command line"), "{printed}");
        let again = file(&printed);
        let back = load(Some(again.path()), &[], &[]).unwrap();
        assert_eq!(back.config, l.config, "{printed}");
    }

    #[test]
    fn the_readme_documents_every_setting() {
        let readme = include_str!("../README.md");
        for s in SETTINGS {
            assert!(
                readme.contains(&format!("`{}`", s.key)),
                "{} is not in README.md",
                s.key
            );
        }
    }

    #[test]
    fn rust_log_directives_win_over_log_level() {
        use tracing::Level;
        let (filter, warning) = log_filter(Some("warn,weir::daemon=info"), "DEBUG");
        assert_eq!(warning, None);
        assert!(filter.would_enable("weir::daemon", &Level::INFO));
        assert!(filter.would_enable("weir::daemon::ready", &Level::INFO));
        assert!(!filter.would_enable("weir::store", &Level::INFO));
        assert!(filter.would_enable("weir::store", &Level::WARN));
        assert!(
            !filter.would_enable("weir::store", &Level::DEBUG),
            "LOG_LEVEL lost to RUST_LOG"
        );
    }

    #[test]
    fn log_level_applies_without_rust_log_or_when_rust_log_is_not_understood() {
        use tracing::Level;
        for rust_log in [None, Some(""), Some("  ")] {
            let (filter, warning) = log_filter(rust_log, "ERROR");
            assert_eq!(warning, None);
            assert!(filter.would_enable("weir::store", &Level::ERROR));
            assert!(!filter.would_enable("weir::store", &Level::WARN));
        }
        // a level that is not one, and EnvFilter's span syntax
        for rust_log in ["weir=loud", "[conn{peer=1}]=debug"] {
            let (filter, warning) = log_filter(Some(rust_log), "DEBUG");
            let warning = warning.unwrap_or_else(|| panic!("{rust_log} was taken"));
            assert!(
                warning.contains("RUST_LOG") && warning.contains("DEBUG"),
                "{warning}"
            );
            assert!(filter.would_enable("weir::store", &Level::DEBUG));
            assert!(!filter.would_enable("weir::store", &Level::TRACE));
        }
    }
}
