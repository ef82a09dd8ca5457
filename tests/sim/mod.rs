//! A store on a simulated file system (`SimulatedFs`), as the crash and
//! failure tests open and reopen it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use weir::clock::ManualClock;
use weir::store::log::StorageError;
use weir::store::simfs::SimulatedFs;
use weir::store::{Store, StoreLimits};

/// Where the store lives on the simulated file system.
pub const ROOT: &str = "/store";
/// The manual clock's start: an ordinary wall-clock time in milliseconds.
pub const T0: i64 = 1_700_000_000_000;

/// Opens (or, after a crash image, reopens) the store at [`ROOT`].
pub fn open_store(fs: &SimulatedFs, clock: Arc<ManualClock>) -> Result<Store, StorageError> {
    open_on(Arc::new(fs.clone()), clock)
}

/// The same on any file system (one that wraps `SimulatedFs` to intercept
/// some of its calls).
pub fn open_on(
    fs: Arc<dyn weir::store::fs::FileSystem>,
    clock: Arc<ManualClock>,
) -> Result<Store, StorageError> {
    Store::open(
        fs,
        Path::new(ROOT),
        clock,
        StoreLimits {
            max_read_bytes: 1 << 24,
        },
    )
}

/// A `SimulatedFs` whose openings of files are made by `on_open` (given the
/// simulated file system and the path), which may run something first (a
/// test's hook) or wrap the handle (to hold its reads at a gate);
/// everything else is the simulated file system's own.
pub struct OpenHookFs<F> {
    pub inner: SimulatedFs,
    pub on_open: F,
}

type Handle = Arc<dyn weir::store::fs::FileHandle>;

impl<F> weir::store::fs::FileSystem for OpenHookFs<F>
where
    F: Fn(&SimulatedFs, &Path) -> std::io::Result<Handle> + Send + Sync + 'static,
{
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn open(&self, path: &Path) -> std::io::Result<Handle> {
        (self.on_open)(&self.inner, path)
    }
    fn create(&self, path: &Path) -> std::io::Result<Handle> {
        self.inner.create(path)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }
    fn run_blocking(&self, job: Box<dyn FnOnce() + Send>) {
        self.inner.run_blocking(job)
    }
}

/// Every message a stream holds, with its sequence number.
pub fn read_all(store: &Store, name: &str) -> Vec<(i64, bytes::Bytes)> {
    let info = store.describe(name).unwrap().storage_status;
    let count = info.newest_sequence_number - info.oldest_sequence_number + 1;
    if count <= 0 {
        return Vec::new();
    }
    let options = weir::protocol::model::ReadMessagesOptions {
        desired_start_sequence_number: info.oldest_sequence_number,
        min_message_count: count,
        max_message_count: count,
        read_timeout_millis: 0,
    };
    let messages = store
        .try_read(name, &options)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .expect("all there");
    messages
        .into_iter()
        .map(|m| (m.sequence_number, m.payload))
        .collect()
}
