//! Data types of the model shared by requests and responses, with the
//! clients' own validation rules (PROTOCOL.md section 5) re-checked here,
//! because Node and greengrasssdk 1.5.0 skip type checks and anything can
//! reach a TCP port.

use super::cbor::{Field, FieldError, FieldResult, Fields, FieldsBuilder, MapReader};
use ciborium::value::Value;

pub const DEFAULT_MAX_SIZE: i64 = 256 * 1024 * 1024;
pub const DEFAULT_SEGMENT_SIZE: i64 = 16 * 1024 * 1024;
const MAX_TTL_MILLIS: i64 = 9_223_372_036_854;
const MAX_I32: i64 = i32::MAX as i64;

/// A stream or export name: `^[\w ,.\-_]*$`, 1 to 255 characters. `\w` is
/// Unicode-aware in the Python SDKs, so any alphanumeric is accepted.
pub fn check_name(what: &str, name: &str) -> FieldResult<()> {
    let len = name.chars().count();
    if !(1..=255).contains(&len) {
        return Err(FieldError(format!(
            "{what} must be 1 to 255 characters long"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || " ,.-_".contains(*c)))
    {
        return Err(FieldError(format!(
            "{what} may only contain letters, digits, spaces and , . - _ (found {bad:?})"
        )));
    }
    Ok(())
}

fn name_field(map: &MapReader<'_>, key: &str) -> FieldResult<String> {
    let name = map.required(key, map.text(key))?;
    check_name(&qualified(map, key), &name)?;
    Ok(name)
}

fn qualified(map: &MapReader<'_>, key: &str) -> String {
    if map.path().is_empty() {
        key.to_owned()
    } else {
        format!("{}.{key}", map.path())
    }
}

fn non_empty_text(map: &MapReader<'_>, key: &str) -> FieldResult<String> {
    let text = map.required(key, map.text(key))?;
    if text.is_empty() {
        return Err(FieldError(format!(
            "{} must not be empty",
            qualified(map, key)
        )));
    }
    Ok(text)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrategyOnFull {
    RejectNewData = 0,
    OverwriteOldestData = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    File = 0,
    Memory = 1,
}

fn enum_field(map: &MapReader<'_>, key: &str, max: i64) -> FieldResult<Option<i64>> {
    map.int_in(key, 0, max)
}

/// `MessageStreamDefinition`, as stored: defaults are filled in, so describe
/// shows the settings the stream really runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageStreamDefinition {
    pub name: String,
    pub max_size: i64,
    pub stream_segment_size: i64,
    pub time_to_live_millis: Option<i64>,
    pub strategy_on_full: StrategyOnFull,
    pub persistence: Persistence,
    pub flush_on_write: bool,
    pub export_definition: ExportDefinition,
}

impl MessageStreamDefinition {
    /// A stream with every setting at its default and `OverwriteOldestData`.
    pub fn with_defaults(name: String) -> Self {
        MessageStreamDefinition {
            name,
            max_size: DEFAULT_MAX_SIZE,
            stream_segment_size: DEFAULT_SEGMENT_SIZE,
            time_to_live_millis: None,
            strategy_on_full: StrategyOnFull::OverwriteOldestData,
            persistence: Persistence::File,
            flush_on_write: false,
            export_definition: ExportDefinition::default(),
        }
    }

    pub fn decode(map: &MapReader<'_>) -> FieldResult<Self> {
        let name = name_field(map, "name")?;
        let strategy = map.required("strategyOnFull", enum_field(map, "strategyOnFull", 1))?;
        let export_definition = match map.map("exportDefinition", "definition.exportDefinition")? {
            Some(exports) => ExportDefinition::decode(&exports)?,
            None => ExportDefinition::default(),
        };
        Ok(MessageStreamDefinition {
            name,
            max_size: map
                .int_in("maxSize", 1024, i64::MAX)?
                .unwrap_or(DEFAULT_MAX_SIZE),
            stream_segment_size: map
                .int_in("streamSegmentSize", 1024, MAX_I32)?
                .unwrap_or(DEFAULT_SEGMENT_SIZE),
            time_to_live_millis: map.int_in("timeToLiveMillis", 60_000, MAX_TTL_MILLIS)?,
            strategy_on_full: if strategy == 0 {
                StrategyOnFull::RejectNewData
            } else {
                StrategyOnFull::OverwriteOldestData
            },
            // Absent persistence is File, the model's default (Java always sends 0).
            persistence: match enum_field(map, "persistence", 1)? {
                Some(1) => Persistence::Memory,
                _ => Persistence::File,
            },
            flush_on_write: map.bool("flushOnWrite")?.unwrap_or(false),
            export_definition,
        })
    }

    pub fn fields(&self) -> Fields<'_> {
        FieldsBuilder::default()
            .text("name", &self.name)
            .int("maxSize", self.max_size)
            .int("streamSegmentSize", self.stream_segment_size)
            .opt_int("timeToLiveMillis", self.time_to_live_millis)
            .int("strategyOnFull", self.strategy_on_full as i64)
            .int("persistence", self.persistence as i64)
            .put("flushOnWrite", Field::Bool(self.flush_on_write))
            .opt_map(
                "exportDefinition",
                (!self.export_definition.is_empty()).then(|| self.export_definition.fields()),
            )
            .build()
    }
}

/// `ExportDefinition`: one list per destination type. Empty lists are not
/// echoed (Java 1.4.1 sends `[]` for lists the user never filled).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportDefinition {
    pub http: Vec<HttpConfig>,
    pub iot_analytics: Vec<IotAnalyticsConfig>,
    pub kinesis: Vec<KinesisConfig>,
    pub iot_sitewise: Vec<IotSiteWiseConfig>,
    pub s3_task_executor: Vec<S3ExportTaskExecutorConfig>,
}

fn decode_list<T>(
    map: &MapReader<'_>,
    key: &str,
    decode: impl Fn(&MapReader<'_>) -> FieldResult<T>,
) -> FieldResult<Vec<T>> {
    let Some(items) = map.array(key)? else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("{}.{key}[{i}]", map.path());
            decode(&MapReader::new(item, &path)?)
        })
        .collect()
}

fn list_field<'a, T>(items: &'a [T], fields: impl Fn(&'a T) -> Fields<'a>) -> Option<Field<'a>> {
    (!items.is_empty()).then(|| Field::Array(items.iter().map(|i| Field::Map(fields(i))).collect()))
}

impl ExportDefinition {
    pub fn decode(map: &MapReader<'_>) -> FieldResult<Self> {
        let def = ExportDefinition {
            http: decode_list(map, "http", HttpConfig::decode)?,
            iot_analytics: decode_list(map, "iotAnalytics", IotAnalyticsConfig::decode)?,
            kinesis: decode_list(map, "kinesis", KinesisConfig::decode)?,
            iot_sitewise: decode_list(map, "IotSitewise", IotSiteWiseConfig::decode)?,
            s3_task_executor: decode_list(
                map,
                "s3TaskExecutor",
                S3ExportTaskExecutorConfig::decode,
            )?,
        };
        let mut seen = std::collections::HashSet::new();
        for id in def.identifiers() {
            if !seen.insert(id) {
                return Err(FieldError(format!(
                    "export identifier {id} is used more than once in the stream's export definition"
                )));
            }
        }
        Ok(def)
    }

    pub fn is_empty(&self) -> bool {
        self.identifiers().next().is_none()
    }

    /// Every export's identifier, in the order exports are described.
    pub fn identifiers(&self) -> impl Iterator<Item = &str> {
        (self.http.iter().map(|c| c.identifier.as_str()))
            .chain(self.iot_analytics.iter().map(|c| c.identifier.as_str()))
            .chain(self.kinesis.iter().map(|c| c.identifier.as_str()))
            .chain(self.iot_sitewise.iter().map(|c| c.identifier.as_str()))
            .chain(self.s3_task_executor.iter().map(|c| c.identifier.as_str()))
    }

    /// `(identifier, startSequenceNumber)` of every export, in describe order.
    pub fn starts(&self) -> Vec<(&str, i64)> {
        let start = |s: Option<i64>| s.unwrap_or(0);
        (self.http.iter().map(|c| {
            (
                c.identifier.as_str(),
                start(c.batching.start_sequence_number),
            )
        }))
        .chain(self.iot_analytics.iter().map(|c| {
            (
                c.identifier.as_str(),
                start(c.batching.start_sequence_number),
            )
        }))
        .chain(self.kinesis.iter().map(|c| {
            (
                c.identifier.as_str(),
                start(c.batching.start_sequence_number),
            )
        }))
        .chain(self.iot_sitewise.iter().map(|c| {
            (
                c.identifier.as_str(),
                start(c.batching.start_sequence_number),
            )
        }))
        .chain(
            self.s3_task_executor
                .iter()
                .map(|c| (c.identifier.as_str(), 0)),
        )
        .collect()
    }

    pub fn fields(&self) -> Fields<'_> {
        [
            ("http", list_field(&self.http, HttpConfig::fields)),
            (
                "iotAnalytics",
                list_field(&self.iot_analytics, IotAnalyticsConfig::fields),
            ),
            ("kinesis", list_field(&self.kinesis, KinesisConfig::fields)),
            (
                "IotSitewise",
                list_field(&self.iot_sitewise, IotSiteWiseConfig::fields),
            ),
            (
                "s3TaskExecutor",
                list_field(&self.s3_task_executor, S3ExportTaskExecutorConfig::fields),
            ),
        ]
        .into_iter()
        .filter_map(|(key, list)| list.map(|list| (key, list)))
        .collect()
    }
}

/// Fields every batching exporter shares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batching {
    pub batch_size: Option<i64>,
    pub batch_interval_millis: Option<i64>,
    pub priority: Option<i64>,
    pub start_sequence_number: Option<i64>,
    pub disabled: Option<bool>,
}

impl Batching {
    fn decode(map: &MapReader<'_>, max_batch: i64) -> FieldResult<Self> {
        Ok(Batching {
            batch_size: map.int_in("batchSize", 1, max_batch)?,
            batch_interval_millis: map.int_in("batchIntervalMillis", 60_000, MAX_TTL_MILLIS)?,
            priority: map.int_in("priority", 1, 10)?,
            start_sequence_number: map.int_in("startSequenceNumber", 0, i64::MAX)?,
            disabled: map.bool("disabled")?,
        })
    }

    fn put<'a>(&self, b: FieldsBuilder<'a>) -> FieldsBuilder<'a> {
        b.opt_int("batchSize", self.batch_size)
            .opt_int("batchIntervalMillis", self.batch_interval_millis)
            .opt_int("priority", self.priority)
            .opt_int("startSequenceNumber", self.start_sequence_number)
            .opt_bool("disabled", self.disabled)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct KinesisConfig {
    pub identifier: String,
    pub kinesis_stream_name: String,
    pub batching: Batching,
}

impl KinesisConfig {
    fn decode(map: &MapReader<'_>) -> FieldResult<Self> {
        Ok(KinesisConfig {
            identifier: name_field(map, "identifier")?,
            kinesis_stream_name: non_empty_text(map, "kinesisStreamName")?,
            batching: Batching::decode(map, 500)?,
        })
    }
    fn fields(&self) -> Fields<'_> {
        let b = FieldsBuilder::default()
            .text("identifier", &self.identifier)
            .text("kinesisStreamName", &self.kinesis_stream_name);
        self.batching.put(b).build()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct IotAnalyticsConfig {
    pub identifier: String,
    pub iot_channel: String,
    pub iot_msg_id_prefix: Option<String>,
    pub batching: Batching,
}

impl IotAnalyticsConfig {
    fn decode(map: &MapReader<'_>) -> FieldResult<Self> {
        let iot_msg_id_prefix = map.text("iotMsgIdPrefix")?;
        if iot_msg_id_prefix
            .as_ref()
            .is_some_and(|p| p.chars().count() > 32)
        {
            return Err(FieldError(format!(
                "{} must be at most 32 characters long",
                qualified(map, "iotMsgIdPrefix")
            )));
        }
        Ok(IotAnalyticsConfig {
            identifier: name_field(map, "identifier")?,
            iot_channel: non_empty_text(map, "iotChannel")?,
            iot_msg_id_prefix,
            batching: Batching::decode(map, 100)?,
        })
    }
    fn fields(&self) -> Fields<'_> {
        let b = FieldsBuilder::default()
            .text("identifier", &self.identifier)
            .text("iotChannel", &self.iot_channel)
            .opt_text("iotMsgIdPrefix", &self.iot_msg_id_prefix);
        self.batching.put(b).build()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpConfig {
    pub identifier: String,
    pub uri: String,
    pub batching: Batching,
    /// 0 `RAW_NOT_BATCHED`, 1 `JSON_BATCHED`.
    pub export_format: Option<i64>,
}

impl HttpConfig {
    fn decode(map: &MapReader<'_>) -> FieldResult<Self> {
        Ok(HttpConfig {
            identifier: name_field(map, "identifier")?,
            uri: non_empty_text(map, "uri")?,
            batching: Batching::decode(map, 500)?,
            export_format: enum_field(map, "exportFormat", 1)?,
        })
    }
    fn fields(&self) -> Fields<'_> {
        let b = FieldsBuilder::default()
            .text("identifier", &self.identifier)
            .text("uri", &self.uri);
        self.batching
            .put(b)
            .opt_int("exportFormat", self.export_format)
            .build()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct IotSiteWiseConfig {
    pub identifier: String,
    pub batching: Batching,
}

impl IotSiteWiseConfig {
    fn decode(map: &MapReader<'_>) -> FieldResult<Self> {
        Ok(IotSiteWiseConfig {
            identifier: name_field(map, "identifier")?,
            batching: Batching::decode(map, 10)?,
        })
    }
    fn fields(&self) -> Fields<'_> {
        let b = FieldsBuilder::default().text("identifier", &self.identifier);
        self.batching.put(b).build()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct S3ExportTaskExecutorConfig {
    pub identifier: String,
    pub size_threshold_for_multipart_upload_bytes: Option<i64>,
    pub priority: Option<i64>,
    pub disabled: Option<bool>,
    pub status_config: Option<StatusConfig>,
}

impl S3ExportTaskExecutorConfig {
    fn decode(map: &MapReader<'_>) -> FieldResult<Self> {
        let path = format!("{}.statusConfig", map.path());
        Ok(S3ExportTaskExecutorConfig {
            identifier: name_field(map, "identifier")?,
            size_threshold_for_multipart_upload_bytes: map.int_in(
                "sizeThresholdForMultipartUploadBytes",
                5_242_880,
                i64::MAX,
            )?,
            priority: map.int_in("priority", 1, 10)?,
            disabled: map.bool("disabled")?,
            status_config: match map.map("statusConfig", &path)? {
                Some(status) => Some(StatusConfig::decode(&status)?),
                None => None,
            },
        })
    }
    fn fields(&self) -> Fields<'_> {
        FieldsBuilder::default()
            .text("identifier", &self.identifier)
            .opt_int(
                "sizeThresholdForMultipartUploadBytes",
                self.size_threshold_for_multipart_upload_bytes,
            )
            .opt_int("priority", self.priority)
            .opt_bool("disabled", self.disabled)
            .opt_map(
                "statusConfig",
                self.status_config.as_ref().map(StatusConfig::fields),
            )
            .build()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct StatusConfig {
    /// 0 ERROR .. 4 TRACE.
    pub status_level: Option<i64>,
    pub status_stream_name: Option<String>,
}

impl StatusConfig {
    fn decode(map: &MapReader<'_>) -> FieldResult<Self> {
        let status_stream_name = map.text("statusStreamName")?;
        if let Some(name) = &status_stream_name {
            check_name(&qualified(map, "statusStreamName"), name)?;
        }
        Ok(StatusConfig {
            status_level: enum_field(map, "statusLevel", 4)?,
            status_stream_name,
        })
    }
    fn fields(&self) -> Fields<'_> {
        FieldsBuilder::default()
            .opt_int("statusLevel", self.status_level)
            .opt_text("statusStreamName", &self.status_stream_name)
            .build()
    }
}

/// `ReadMessagesOptions` with the server's defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadMessagesOptions {
    pub desired_start_sequence_number: i64,
    pub min_message_count: i64,
    /// Absent max means max = min: the official samples send `min=2` with no
    /// max and expect two messages (PROTOCOL.md section 8).
    pub max_message_count: i64,
    pub read_timeout_millis: i64,
}

impl Default for ReadMessagesOptions {
    fn default() -> Self {
        ReadMessagesOptions {
            desired_start_sequence_number: 0,
            min_message_count: 1,
            max_message_count: 1,
            read_timeout_millis: 0,
        }
    }
}

impl ReadMessagesOptions {
    pub fn decode(map: &MapReader<'_>) -> FieldResult<Self> {
        let min = map.int_in("minMessageCount", 1, MAX_I32)?.unwrap_or(1);
        let max = map.int_in("maxMessageCount", 1, MAX_I32)?.unwrap_or(min);
        if max < min {
            return Err(FieldError(format!(
                "readMessagesOptions.maxMessageCount ({max}) must not be below minMessageCount ({min})"
            )));
        }
        Ok(ReadMessagesOptions {
            desired_start_sequence_number: map
                .int_in("desiredStartSequenceNumber", 0, i64::MAX)?
                .unwrap_or(0),
            min_message_count: min,
            max_message_count: max,
            read_timeout_millis: map
                .int_in("readTimeoutMillis", 0, MAX_TTL_MILLIS)?
                .unwrap_or(0),
        })
    }
}

/// A stored message as a read returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub sequence_number: i64,
    pub ingest_time: i64,
    pub payload: bytes::Bytes,
}

/// `MessageStreamInfo.storageStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageStatus {
    pub oldest_sequence_number: i64,
    pub newest_sequence_number: i64,
    pub total_bytes: i64,
}

/// One entry of `MessageStreamInfo.exportStatuses`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportStatus {
    pub export_config_identifier: String,
    pub last_exported_sequence_number: i64,
    pub last_export_time: Option<i64>,
    pub error_message: Option<String>,
    pub exported_bytes_from_stream: i64,
    pub exported_messages_count: i64,
}

impl ExportStatus {
    fn fields(&self) -> Fields<'_> {
        FieldsBuilder::default()
            .text("exportConfigIdentifier", &self.export_config_identifier)
            .int(
                "lastExportedSequenceNumber",
                self.last_exported_sequence_number,
            )
            .opt_int("lastExportTime", self.last_export_time)
            .opt_text("errorMessage", &self.error_message)
            .int("exportedBytesFromStream", self.exported_bytes_from_stream)
            .int("exportedMessagesCount", self.exported_messages_count)
            .build()
    }
}

/// `MessageStreamInfo`, the body of a describe answer.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageStreamInfo {
    pub definition: MessageStreamDefinition,
    pub storage_status: StorageStatus,
    pub export_statuses: Vec<ExportStatus>,
}

impl MessageStreamInfo {
    pub fn fields(&self) -> Fields<'_> {
        let s = &self.storage_status;
        FieldsBuilder::default()
            .put("definition", Field::Map(self.definition.fields()))
            .put(
                "storageStatus",
                Field::Map(
                    FieldsBuilder::default()
                        .int("oldestSequenceNumber", s.oldest_sequence_number)
                        .int("newestSequenceNumber", s.newest_sequence_number)
                        .int("totalBytes", s.total_bytes)
                        .build(),
                ),
            )
            .put(
                "exportStatuses",
                Field::Array(
                    self.export_statuses
                        .iter()
                        .map(|e| Field::Map(e.fields()))
                        .collect(),
                ),
            )
            .build()
    }
}

/// Decodes a payload that must be a map; the error message is for the client.
pub fn top_map(value: &Value) -> FieldResult<MapReader<'_>> {
    MapReader::new(value, "")
}
