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
    Store::open(
        Arc::new(fs.clone()),
        Path::new(ROOT),
        clock,
        StoreLimits {
            max_read_bytes: 1 << 24,
        },
    )
}
