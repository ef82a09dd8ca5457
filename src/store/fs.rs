//! The file-system seam under the file log: the few operations it needs,
//! positional and `&self`, so a file can be synced by one task while another
//! appends. [`StdFs`] is the real one; `crate::store::simfs::SimulatedFs` (feature `test-util`)
//! keeps what has been synced apart from what has only been written, so tests
//! can cut the power at any point, and can fail writes and syncs on demand.

use super::log::{IoContext, StorageError, StorageOp};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub trait FileSystem: Send + Sync + 'static {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a folder.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>>;
    /// Creates a file, or empties an existing one.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the folder's entries (created, renamed, removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn is_dir(&self, path: &Path) -> bool;
    /// Runs `job` off the calling thread when it can (on a blocking thread
    /// of the tokio runtime), else at once. The job keeps its own outcome.
    fn run_blocking(&self, job: Box<dyn FnOnce() + Send>) {
        match tokio::runtime::Handle::try_current() {
            // The handle is not awaited: the job reports through its step.
            Ok(runtime) => drop(runtime.spawn_blocking(job)),
            Err(_) => job(),
        }
    }
}

pub trait FileHandle: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: the file's bytes and size survive a power cut.
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
}

/// Fills `buf` from `offset`; `Ok(false)` if the file ends first.
pub fn read_exact_at(file: &dyn FileHandle, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => return Ok(false),
            n => done += n,
        }
    }
    Ok(true)
}

/// Reads a whole file.
pub fn read_file(fs: &dyn FileSystem, path: &Path) -> io::Result<Vec<u8>> {
    let file = fs.open(path)?;
    let len = usize::try_from(file.size()?).map_err(io::Error::other)?;
    let mut buf = vec![0; len];
    if !read_exact_at(&*file, &mut buf, 0)? {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the
/// new content: temp file, fsync, rename, fsync of the folder. Errors are
/// `op`'s, and a failed fsync is a [`StorageError::Sync`].
pub fn write_atomically(
    fs: &dyn FileSystem,
    path: &Path,
    bytes: &[u8],
    op: StorageOp,
) -> Result<(), StorageError> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("a file path has a folder"))
        .during(op)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = fs.create(&tmp).during(op)?;
    file.write_all_at(bytes, 0).during(op)?;
    file.sync_data().syncing(op)?;
    drop(file);
    fs.rename(&tmp, path).during(op)?;
    fs.sync_dir(dir).syncing(op)
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

struct StdFile(std::fs::File);

impl FileSystem for StdFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(dir)?
            .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
            .collect()
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Arc::new(StdFile(file)))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(StdFile(file)))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
}

impl FileHandle for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}
