"""Assertions shared by the client programs (conformance.py, test_restart.py).

Python 3.7 compatible: these run inside every SDK's venv, greengrasssdk 1.5.0's included.
"""


class CaseFailure(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise CaseFailure(msg)


def eq(got, expected, what):
    if got != expected:
        raise CaseFailure("{}: got {!r}, expected {!r}".format(what, got, expected))


def every_export(data, full, status_stream_name):
    """An ExportDefinition with every export type the SDK's model has, and every field
    set somewhere. `data` is the SDK's data module; `full` is False for the 1.0.0
    model (greengrasssdk 1.5.0): http, iotAnalytics and kinesis only, without
    startSequenceNumber/disabled, and without iot_msg_id_prefix (1.5.0's own
    validation of it raises TypeError client-side)."""
    if full:
        return data.ExportDefinition(
            http=[data.HTTPConfig(identifier="HttpExport", uri="http://127.0.0.1:9/unused", batch_size=10,
                                  batch_interval_millis=60000, priority=5, start_sequence_number=3, disabled=True,
                                  export_format=data.ExportFormat.JSON_BATCHED)],
            iot_analytics=[data.IoTAnalyticsConfig(identifier="IotAExport", iot_channel="channel",
                                                   iot_msg_id_prefix="prefix", batch_size=5, priority=2)],
            kinesis=[data.KinesisConfig(identifier="KinesisA", kinesis_stream_name="streamA"),
                     data.KinesisConfig(identifier="KinesisB", kinesis_stream_name="streamB", batch_size=100,
                                        start_sequence_number=7, disabled=False)],
            iot_sitewise=[data.IoTSiteWiseConfig(identifier="SiteWiseExport", batch_size=5,
                                                 batch_interval_millis=120000)],
            s3_task_executor=[data.S3ExportTaskExecutorConfig(
                identifier="S3Export", size_threshold_for_multipart_upload_bytes=5242880, priority=1,
                disabled=False, status_config=data.StatusConfig(status_level=data.StatusLevel.INFO,
                                                                status_stream_name=status_stream_name))])
    return data.ExportDefinition(
        http=[data.HTTPConfig(identifier="HttpExport", uri="http://127.0.0.1:9/unused", batch_size=10,
                              batch_interval_millis=60000, priority=5)],
        iot_analytics=[data.IoTAnalyticsConfig(identifier="IotAExport", iot_channel="channel", batch_size=5,
                                               priority=2)],
        kinesis=[data.KinesisConfig(identifier="KinesisA", kinesis_stream_name="streamA"),
                 data.KinesisConfig(identifier="KinesisB", kinesis_stream_name="streamB", batch_size=100)])
