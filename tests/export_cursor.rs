//! The durable export cursors (`weir::store::export_cursor`): what is saved is
//! loaded back, after a restart and after a power cut at any point of a
//! save (the old cursors or the new, never a mix); a damaged file is an
//! error, never a silent start over; a failed fsync stops writes; and an
//! export resumes where it stopped unless its `startSequenceNumber` changed.

mod sim;
use sim::{open_store, ROOT, T0};
use std::path::Path;
use std::sync::Arc;
use weir::clock::ManualClock;
use weir::protocol::model::{
    Batching, ExportDefinition, KinesisConfig, MessageStreamDefinition, S3ExportTaskExecutorConfig,
};
use weir::store::export_cursor::{resume_all, CursorState, CursorStore, Cursors, CURSOR_FILE};
use weir::store::fs::FileSystem;
use weir::store::log::{StorageError, StorageOp};
use weir::store::simfs::{Cut, SimulatedFs};

const STREAM: &str = "telemetry, site 1";

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

/// A store on `fs` with one `File` stream, [`STREAM`].
fn fs_with_stream() -> SimulatedFs {
    let fs = SimulatedFs::new();
    let store = open_store(&fs, clock()).expect("opens");
    store
        .create(MessageStreamDefinition::with_defaults(STREAM.into()))
        .expect("created");
    fs
}

fn cursors(fs: &SimulatedFs) -> CursorStore {
    CursorStore::new(Arc::new(fs.clone()), Path::new(ROOT))
}

fn old_cursors() -> Cursors {
    Cursors::from([
        (
            "kinesis-1".to_owned(),
            CursorState {
                start_sequence_number: 0,
                last_exported_sequence_number: Some(41),
                last_export_time: Some(T0),
                error_message: None,
                exported_bytes_from_stream: 4200,
                exported_messages_count: 42,
                skipped_messages: 0,
            },
        ),
        ("s3".to_owned(), CursorState::starting_at(0)),
    ])
}

fn new_cursors() -> Cursors {
    Cursors::from([
        (
            "kinesis-1".to_owned(),
            CursorState {
                start_sequence_number: 0,
                last_exported_sequence_number: Some(99),
                last_export_time: Some(T0 + 5_000),
                error_message: Some("ProvisionedThroughputExceeded: réessayez".into()),
                exported_bytes_from_stream: 10_000,
                exported_messages_count: 100,
                skipped_messages: 3,
            },
        ),
        (
            "kinesis-2".to_owned(),
            CursorState {
                start_sequence_number: 7,
                last_exported_sequence_number: Some(7),
                last_export_time: Some(T0 + 6_000),
                error_message: Some(String::new()),
                exported_bytes_from_stream: 1,
                exported_messages_count: 1,
                skipped_messages: 0,
            },
        ),
    ])
}

#[test]
fn saved_cursors_load_back_after_a_restart_and_a_power_cut() {
    let fs = fs_with_stream();
    let store = cursors(&fs);
    assert_eq!(store.load(STREAM).expect("no file yet"), Cursors::new());
    store.save(STREAM, &old_cursors()).expect("saved");
    assert_eq!(store.load(STREAM).expect("loads"), old_cursors());
    store.save(STREAM, &new_cursors()).expect("saved");
    assert_eq!(store.load(STREAM).expect("loads"), new_cursors());

    let image = fs.crash(|_, _| 0);
    // The stream loads with its cursor file beside it.
    let reopened = open_store(&image, clock()).expect("reopens");
    assert_eq!(reopened.list(), vec![STREAM.to_owned()]);
    assert_eq!(cursors(&image).load(STREAM).expect("loads"), new_cursors());

    cursors(&image).remove(STREAM).expect("removed");
    let image = image.crash(|_, _| 0);
    assert_eq!(cursors(&image).load(STREAM).expect("loads"), Cursors::new());
    cursors(&image)
        .remove(STREAM)
        .expect("removing what is not there");
}

#[test]
fn every_flipped_bit_of_the_file_is_detected() {
    let fs = fs_with_stream();
    let store = cursors(&fs);
    store.save(STREAM, &new_cursors()).expect("saved");
    let path = store.path(STREAM);
    let len = fs.contents(&path).expect("the file is there").len();
    for byte in 0..len {
        for bit in 0..8 {
            fs.flip_bit(&path, byte, bit);
            match store.load(STREAM) {
                Err(StorageError::Corrupt(reason)) => {
                    assert!(reason.contains(CURSOR_FILE), "{reason}")
                }
                other => panic!("bit {bit} of byte {byte} flipped: {other:?}"),
            }
            fs.flip_bit(&path, byte, bit);
        }
    }
    assert_eq!(store.load(STREAM).expect("loads again"), new_cursors());
    let whole = fs.contents(&path).expect("the file is there");
    for cut in 0..len {
        fs.put(&path, &whole[..cut]);
        assert!(
            matches!(store.load(STREAM), Err(StorageError::Corrupt(_))),
            "cut to {cut} of {len} bytes"
        );
    }
}

/// After a save of [`new_cursors`] over [`old_cursors`] is cut by the power
/// anywhere, each image holds the old cursors or the new ones (the new ones
/// for a clean cut only if the save could have finished).
#[test]
fn a_power_cut_anywhere_in_a_save_leaves_the_old_or_the_new_cursors() {
    let mut saw_old = false;
    let mut saw_new = false;
    for n in 0.. {
        let fs = fs_with_stream();
        cursors(&fs).save(STREAM, &old_cursors()).expect("saved");
        fs.cut_power_after(n);
        let saved = cursors(&fs).save(STREAM, &new_cursors());
        let Some(_) = fs.power_cut_image(Cut::Clean) else {
            saved.expect("no cut: saved");
            assert!(n > 3, "a save is temp, write, fsync, rename, folder fsync");
            break;
        };
        assert!(saved.is_err(), "cut after {n}: the save noticed");
        for cut in [Cut::Clean, Cut::WrittenBytesKept, Cut::ProcessOnly] {
            let image = fs.power_cut_image(cut).expect("cut");
            for image in [
                image.crash(|_, _| 0),
                image.crash(|_, unsynced| unsynced / 2),
                image,
            ] {
                open_store(&image, clock()).expect("the store reopens");
                let loaded = cursors(&image).load(STREAM).expect("loads");
                if loaded == old_cursors() {
                    saw_old = true;
                } else if loaded == new_cursors() {
                    saw_new = true;
                } else {
                    panic!("cut ({cut:?}) after {n}: {loaded:?}");
                }
            }
        }
    }
    assert!(saw_old && saw_new, "the cuts left both outcomes");

    // After a save that returned, a power cut keeps the new cursors.
    let fs = fs_with_stream();
    cursors(&fs).save(STREAM, &old_cursors()).expect("saved");
    cursors(&fs).save(STREAM, &new_cursors()).expect("saved");
    let image = fs.crash(|_, unsynced| unsynced);
    assert_eq!(cursors(&image).load(STREAM).expect("loads"), new_cursors());
}

#[test]
fn a_failed_fsync_is_reported_as_one_that_stops_writes() {
    let fs = fs_with_stream();
    let store = cursors(&fs);
    store.save(STREAM, &old_cursors()).expect("saved");
    fs.set_fail_sync(true);
    let error = store.save(STREAM, &new_cursors()).expect_err("fsync fails");
    assert!(error.stops_writes(), "{error}");
    assert!(
        matches!(
            error,
            StorageError::Sync {
                op: StorageOp::WriteExportCursor,
                ..
            }
        ),
        "{error:?}"
    );
    let error = store.remove(STREAM).expect_err("fsync fails");
    assert!(error.stops_writes(), "{error}");
}

#[test]
fn a_save_for_a_deleted_stream_fails_and_leaves_no_folder() {
    let fs = fs_with_stream();
    let store = open_store(&fs, clock()).expect("reopens");
    cursors(&fs).save(STREAM, &old_cursors()).expect("saved");
    store.delete(STREAM).expect("deleted");
    let error = cursors(&fs)
        .save(STREAM, &new_cursors())
        .expect_err("no folder");
    assert_eq!(
        error.io_error().map(|e| e.kind()),
        Some(std::io::ErrorKind::NotFound),
        "{error}"
    );
    let folder = cursors(&fs)
        .path(STREAM)
        .parent()
        .expect("a folder")
        .to_owned();
    assert!(
        !FileSystem::is_dir(&fs, &folder),
        "the save made the folder again"
    );
    // A stream made again under the name starts with no cursors.
    store
        .create(MessageStreamDefinition::with_defaults(STREAM.into()))
        .expect("created again");
    assert_eq!(cursors(&fs).load(STREAM).expect("loads"), Cursors::new());
}

fn kinesis(identifier: &str, start: Option<i64>) -> KinesisConfig {
    KinesisConfig {
        identifier: identifier.into(),
        kinesis_stream_name: "cloud".into(),
        batching: Batching {
            start_sequence_number: start,
            ..Batching::default()
        },
    }
}

#[test]
fn exports_resume_where_they_stopped_unless_their_start_changed() {
    let fs = fs_with_stream();
    let definition = ExportDefinition {
        kinesis: vec![kinesis("kinesis-1", None), kinesis("kinesis-2", Some(7))],
        ..ExportDefinition::default()
    };
    let first = resume_all(&definition, &cursors(&fs).load(STREAM).expect("none"));
    assert_eq!(first["kinesis-1"].next_sequence_number(), 0);
    assert_eq!(first["kinesis-2"].next_sequence_number(), 7);
    cursors(&fs).save(STREAM, &new_cursors()).expect("saved");

    // Across a restart: the stored positions, not the starts.
    let image = fs.crash(|_, _| 0);
    let resumed = resume_all(&definition, &cursors(&image).load(STREAM).expect("loads"));
    assert_eq!(resumed, new_cursors());
    assert_eq!(resumed["kinesis-1"].next_sequence_number(), 100);
    assert_eq!(resumed["kinesis-2"].next_sequence_number(), 8);

    // A changed start moves the position there (counters kept); a new
    // export starts at its start; an export no longer defined is dropped.
    let changed = ExportDefinition {
        kinesis: vec![
            kinesis("kinesis-1", Some(500)),
            kinesis("kinesis-3", Some(3)),
        ],
        s3_task_executor: vec![S3ExportTaskExecutorConfig {
            identifier: "s3".into(),
            size_threshold_for_multipart_upload_bytes: None,
            priority: None,
            disabled: None,
            status_config: None,
        }],
        ..ExportDefinition::default()
    };
    let moved = resume_all(&changed, &resumed);
    assert_eq!(
        moved.keys().collect::<Vec<_>>(),
        vec!["kinesis-1", "kinesis-3", "s3"]
    );
    assert_eq!(moved["kinesis-1"].next_sequence_number(), 500);
    assert_eq!(moved["kinesis-1"].start_sequence_number, 500);
    assert_eq!(moved["kinesis-1"].last_exported_sequence_number, None);
    assert_eq!(moved["kinesis-1"].exported_messages_count, 100);
    assert_eq!(moved["kinesis-3"], CursorState::starting_at(3));
    assert_eq!(moved["s3"], CursorState::starting_at(0));
}
