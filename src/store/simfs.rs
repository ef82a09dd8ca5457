//! [`SimulatedFs`]: an in-memory file system for crash tests.
//!
//! Every file keeps two images: what has been written (`live`) and what has
//! been synced (`durable`). Folder entries likewise: a created, renamed or
//! removed file only changes the durable folder after `sync_dir`. [`SimulatedFs::crash`]
//! returns the file system a power cut would leave: durable entries with
//! their durable bytes, plus, if asked, a prefix of what was written after
//! the last sync (a torn write). Folders themselves are always durable.
//! Faults: a byte budget after which writes fail with "no space left", and
//! failing syncs.

use super::fs::{FileHandle, FileSystem};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Image {
    live: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct SimFile {
    image: Mutex<Image>,
    faults: Arc<Faults>,
}

#[derive(Default)]
struct Faults {
    /// Bytes that may still be added to files; `u64::MAX` is unlimited.
    space_left: AtomicU64,
    fail_sync: AtomicBool,
}

#[derive(Default)]
struct Tree {
    dirs: BTreeSet<PathBuf>,
    live: BTreeMap<PathBuf, Arc<SimFile>>,
    durable: BTreeMap<PathBuf, Arc<SimFile>>,
}

#[derive(Clone)]
pub struct SimulatedFs {
    tree: Arc<Mutex<Tree>>,
    faults: Arc<Faults>,
}

impl Default for SimulatedFs {
    fn default() -> Self {
        let faults = Faults::default();
        faults.space_left.store(u64::MAX, Ordering::SeqCst);
        SimulatedFs {
            tree: Arc::default(),
            faults: Arc::new(faults),
        }
    }
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(28) // ENOSPC
}

impl SimulatedFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes that would add more than `bytes` in all fail with ENOSPC;
    /// `None` lifts the limit.
    pub fn set_space_left(&self, bytes: Option<u64>) {
        self.faults
            .space_left
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    pub fn set_fail_sync(&self, fail: bool) {
        self.faults.fail_sync.store(fail, Ordering::SeqCst);
    }

    /// The file system after a power cut. `torn(path, unsynced)` says how
    /// many of a file's `unsynced` written-but-not-synced trailing bytes
    /// reach the disk anyway (0 for a clean cut).
    pub fn crash(&self, mut torn: impl FnMut(&Path, usize) -> usize) -> SimulatedFs {
        let tree = self.tree.lock().expect("simfs lock");
        let fresh = SimulatedFs::default();
        let mut new_tree = fresh.tree.lock().expect("simfs lock");
        new_tree.dirs = tree.dirs.clone();
        for (path, file) in &tree.durable {
            let image = file.image.lock().expect("simfs lock");
            let mut bytes = image.durable.clone();
            if image.live.len() > bytes.len() && image.live.starts_with(&bytes) {
                let unsynced = image.live.len() - bytes.len();
                let keep = torn(path, unsynced).min(unsynced);
                bytes.extend_from_slice(
                    &image.live[image.durable.len()..image.durable.len() + keep],
                );
            }
            let copy = Arc::new(SimFile {
                image: Mutex::new(Image {
                    live: bytes.clone(),
                    durable: bytes,
                }),
                faults: Arc::clone(&fresh.faults),
            });
            new_tree.live.insert(path.clone(), Arc::clone(&copy));
            new_tree.durable.insert(path.clone(), copy);
        }
        drop(new_tree);
        fresh
    }

    /// Flips one bit of a file's written and synced bytes (disk damage).
    pub fn flip_bit(&self, path: &Path, byte: usize, bit: u8) {
        let tree = self.tree.lock().expect("simfs lock");
        let file = tree.live.get(path).expect("file exists");
        let mut image = file.image.lock().expect("simfs lock");
        image.live[byte] ^= 1 << bit;
        if byte < image.durable.len() {
            image.durable[byte] ^= 1 << bit;
        }
    }

    /// Writes a file as if it had been there, synced, before weir started.
    pub fn put(&self, path: &Path, bytes: &[u8]) {
        let mut tree = self.tree.lock().expect("simfs lock");
        let file = Arc::new(SimFile {
            image: Mutex::new(Image {
                live: bytes.to_vec(),
                durable: bytes.to_vec(),
            }),
            faults: Arc::clone(&self.faults),
        });
        tree.live.insert(path.to_owned(), Arc::clone(&file));
        tree.durable.insert(path.to_owned(), file);
    }

    /// A file's written bytes.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let tree = self.tree.lock().expect("simfs lock");
        let file = tree.live.get(path)?;
        let image = file.image.lock().expect("simfs lock");
        Some(image.live.clone())
    }

    /// Every file path, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.tree
            .lock()
            .expect("simfs lock")
            .live
            .keys()
            .cloned()
            .collect()
    }
}

impl FileSystem for SimulatedFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock().expect("simfs lock");
        for ancestor in path.ancestors() {
            tree.dirs.insert(ancestor.to_owned());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let tree = self.tree.lock().expect("simfs lock");
        if !tree.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let files = tree.live.keys().filter(|p| p.parent() == Some(dir));
        let dirs = tree.dirs.iter().filter(|p| p.parent() == Some(dir));
        Ok(files
            .chain(dirs)
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let tree = self.tree.lock().expect("simfs lock");
        match tree.live.get(path) {
            Some(file) => Ok(Arc::clone(file) as Arc<dyn FileHandle>),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let mut tree = self.tree.lock().expect("simfs lock");
        if !path.parent().is_some_and(|d| tree.dirs.contains(d)) {
            return Err(io::ErrorKind::NotFound.into());
        }
        if let Some(file) = tree.live.get(path) {
            file.image.lock().expect("simfs lock").live.clear();
            return Ok(Arc::clone(file) as Arc<dyn FileHandle>);
        }
        let file = Arc::new(SimFile {
            image: Mutex::default(),
            faults: Arc::clone(&self.faults),
        });
        tree.live.insert(path.to_owned(), Arc::clone(&file));
        Ok(file)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock().expect("simfs lock");
        tree.live
            .remove(path)
            .map(drop)
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock().expect("simfs lock");
        // Removing a folder tree is immediately durable here: weir only does
        // it after a durable marker says the stream is gone.
        tree.live.retain(|p, _| !p.starts_with(path));
        tree.durable.retain(|p, _| !p.starts_with(path));
        tree.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock().expect("simfs lock");
        if tree.dirs.contains(from) {
            // Folder renames are durable at once here (weir only moves a
            // folder aside, never relies on the move for consistency).
            let moved = |p: &Path| to.join(p.strip_prefix(from).expect("under the moved folder"));
            let dirs: Vec<PathBuf> = tree
                .dirs
                .iter()
                .filter(|p| p.starts_with(from))
                .cloned()
                .collect();
            for d in dirs {
                tree.dirs.remove(&d);
                tree.dirs.insert(moved(&d));
            }
            let Tree { live, durable, .. } = &mut *tree;
            for map in [live, durable] {
                let paths: Vec<PathBuf> = map
                    .keys()
                    .filter(|p| p.starts_with(from))
                    .cloned()
                    .collect();
                for p in paths {
                    let file = map.remove(&p).expect("listed above");
                    map.insert(moved(&p), file);
                }
            }
            return Ok(());
        }
        let file = tree
            .live
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        tree.live.insert(to.to_owned(), file);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        let mut tree = self.tree.lock().expect("simfs lock");
        let Tree { live, durable, .. } = &mut *tree;
        durable.retain(|p, _| p.parent() != Some(dir));
        for (p, f) in live.iter().filter(|(p, _)| p.parent() == Some(dir)) {
            durable.insert(p.clone(), Arc::clone(f));
        }
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.tree.lock().expect("simfs lock").dirs.contains(path)
    }
}

impl FileHandle for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let image = self.image.lock().expect("simfs lock");
        let start = usize::try_from(offset)
            .map_err(io::Error::other)?
            .min(image.live.len());
        let n = buf.len().min(image.live.len() - start);
        buf[..n].copy_from_slice(&image.live[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut image = self.image.lock().expect("simfs lock");
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        let end = offset + buf.len();
        let growth = end.saturating_sub(image.live.len()) as u64;
        let space = &self.faults.space_left;
        let left = space.load(Ordering::SeqCst);
        if growth > left {
            return Err(no_space());
        }
        if left != u64::MAX {
            space.fetch_sub(growth, Ordering::SeqCst);
        }
        if image.live.len() < end {
            image.live.resize(end, 0);
        }
        image.live[offset..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        let mut image = self.image.lock().expect("simfs lock");
        image.durable = image.live.clone();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut image = self.image.lock().expect("simfs lock");
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let old = image.live.len();
        if len < old {
            let space = &self.faults.space_left;
            if space.load(Ordering::SeqCst) != u64::MAX {
                space.fetch_add((old - len) as u64, Ordering::SeqCst);
            }
        }
        image.live.resize(len, 0);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.image.lock().expect("simfs lock").live.len() as u64)
    }
}
