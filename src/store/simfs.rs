//! [`SimulatedFs`]: an in-memory file system for crash tests.
//!
//! Files and folders are nodes, as inodes are. Every file keeps two images:
//! what has been written (`live`) and what has been synced (`durable`).
//! Every folder likewise keeps two sets of entries: its live ones, and the
//! ones a power cut would leave, which become the live ones only when the
//! folder itself is synced (`sync_dir`). So a created, renamed or removed
//! file *or folder* (`create_dir_all`, `rename`, `remove_dir_all`) is durable
//! only once its parent folder is synced; a folder moved or removed keeps
//! its durable place until then. [`SimulatedFs::crash`] returns the file
//! system a power cut would leave: the durable entries, recursively, with
//! their durable bytes, plus, if asked, a prefix of what was written after a
//! file's last sync (a torn write).
//!
//! Faults: a byte budget after which writes fail with "no space left",
//! failing syncs, failing cuts (`set_len`), opens, renames, removals and reads of one path that fail with a given OS
//! error, and a power cut after the N-th modifying operation
//! ([`SimulatedFs::cut_power_after`]), after which every operation fails
//! and [`SimulatedFs::power_cut_image`] holds what the disk kept.

use super::fs::{FileHandle, FileSystem};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

#[derive(Default)]
struct Image {
    live: Vec<u8>,
    durable: Vec<u8>,
}

struct SimFile {
    image: Mutex<Image>,
    /// An OS error every read of this file fails with (0: none).
    fail_reads: std::sync::atomic::AtomicI32,
    fs: Weak<Inner>,
}

#[derive(Default)]
struct Folder {
    live: BTreeMap<String, Node>,
    durable: BTreeMap<String, Node>,
}

#[derive(Clone)]
enum Node {
    File(Arc<SimFile>),
    Dir(Arc<Mutex<Folder>>),
}

#[derive(Default)]
struct Faults {
    /// Bytes that may still be added to files; `u64::MAX` is unlimited.
    space_left: AtomicU64,
    fail_sync: AtomicBool,
    /// While set, a file's `sync_data` waits (so a test can hold a sync in
    /// progress on another thread), then goes on as it would have.
    hold_syncs: Mutex<bool>,
    syncs_released: std::sync::Condvar,
    /// `set_len` fails with EIO.
    fail_set_len: AtomicBool,
    /// OS errors that opening, renaming or removing these paths fails with.
    fail_path: Mutex<HashMap<PathBuf, i32>>,
    /// Modifying operations so far.
    operations: AtomicU64,
    /// `sync_data` and `sync_dir` calls so far.
    syncs: AtomicU64,
    /// Background jobs wait here for [`SimulatedFs::run_background`]
    /// instead of running at once.
    defer_background: AtomicBool,
    deferred: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    /// The power is cut once `operations` would pass this.
    cut_after: AtomicU64,
    /// What was left when the power was cut: see [`Cut`].
    cut_image: Mutex<Option<CutImages>>,
}

struct Inner {
    /// The root folder `/`; lock order: the tree before any file image.
    tree: Mutex<Arc<Mutex<Folder>>>,
    faults: Faults,
}

#[derive(Clone)]
struct CutImages {
    clean: SimulatedFs,
    whole: SimulatedFs,
    process: SimulatedFs,
}

/// Which file system a cut of [`SimulatedFs::cut_power_after`] leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// A power cut: unsynced bytes are lost.
    Clean,
    /// A power cut after which every written byte had reached the disk
    /// (folder entries still only as synced).
    WrittenBytesKept,
    /// Not the power but weir died: the OS keeps what was written, synced
    /// or not (a later [`SimulatedFs::crash`] of it still loses the
    /// unsynced part).
    ProcessOnly,
}

#[derive(Clone)]
pub struct SimulatedFs {
    inner: Arc<Inner>,
}

impl Default for SimulatedFs {
    fn default() -> Self {
        let faults = Faults::default();
        faults.space_left.store(u64::MAX, Ordering::SeqCst);
        faults.cut_after.store(u64::MAX, Ordering::SeqCst);
        SimulatedFs {
            inner: Arc::new(Inner {
                tree: Mutex::new(Arc::default()),
                faults,
            }),
        }
    }
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(28) // ENOSPC
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(5) // EIO
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("simfs lock")
}

/// The names of `path`'s components below the root.
fn components(path: &Path) -> io::Result<Vec<String>> {
    path.components()
        .filter_map(|c| match c {
            Component::RootDir | Component::CurDir => None,
            Component::Normal(n) => Some(Ok(n.to_string_lossy().into_owned())),
            _ => Some(Err(io::Error::other("simfs paths are absolute and plain"))),
        })
        .collect()
}

impl Inner {
    /// Counts one modifying operation; fails once the power is cut (and
    /// cuts it, keeping the disk's image, when this is the one after the
    /// N-th).
    fn operate(self: &Arc<Self>) -> io::Result<()> {
        let faults = &self.faults;
        if lock(&faults.cut_image).is_some() {
            return Err(eio());
        }
        let n = faults.operations.fetch_add(1, Ordering::SeqCst) + 1;
        if n > faults.cut_after.load(Ordering::SeqCst) {
            let fs = SimulatedFs {
                inner: Arc::clone(self),
            };
            let image = CutImages {
                clean: fs.crash(|_, _| 0),
                whole: fs.crash(|_, unsynced| unsynced),
                process: fs.fork(),
            };
            let mut cut = lock(&faults.cut_image);
            if cut.is_none() {
                *cut = Some(image);
            }
            return Err(eio());
        }
        Ok(())
    }

    fn path_fault(&self, path: &Path) -> io::Result<()> {
        match lock(&self.faults.fail_path).get(path) {
            Some(errno) => Err(io::Error::from_raw_os_error(*errno)),
            None => Ok(()),
        }
    }

    /// Fails once the power is cut (reads and queries are not counted).
    fn powered(&self) -> io::Result<()> {
        match lock(&self.faults.cut_image).is_some() {
            true => Err(eio()),
            false => Ok(()),
        }
    }

    /// The live folder at `path`.
    fn folder(&self, path: &Path) -> io::Result<Arc<Mutex<Folder>>> {
        let mut at = Arc::clone(&lock(&self.tree));
        for name in components(path)? {
            let next = match lock(&at).live.get(&name) {
                Some(Node::Dir(d)) => Arc::clone(d),
                Some(Node::File(_)) => return Err(io::ErrorKind::NotADirectory.into()),
                None => return Err(io::ErrorKind::NotFound.into()),
            };
            at = next;
        }
        Ok(at)
    }

    /// The live folder holding `path`, and `path`'s name in it.
    fn parent(&self, path: &Path) -> io::Result<(Arc<Mutex<Folder>>, String)> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("a path with a name"))?
            .to_string_lossy()
            .into_owned();
        let parent = path.parent().ok_or_else(|| io::Error::other("a parent"))?;
        Ok((self.folder(parent)?, name))
    }

    fn file(&self, path: &Path) -> io::Result<Arc<SimFile>> {
        let (parent, name) = self.parent(path)?;
        let folder = lock(&parent);
        match folder.live.get(&name) {
            Some(Node::File(f)) => Ok(Arc::clone(f)),
            Some(Node::Dir(_)) => Err(io::ErrorKind::IsADirectory.into()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }
}

impl SimulatedFs {
    pub fn new() -> Self {
        Self::default()
    }

    fn new_file(&self, bytes: Vec<u8>, durable: bool) -> Arc<SimFile> {
        Arc::new(SimFile {
            image: Mutex::new(Image {
                durable: if durable { bytes.clone() } else { Vec::new() },
                live: bytes,
            }),
            fail_reads: Default::default(),
            fs: Arc::downgrade(&self.inner),
        })
    }

    /// Writes that would add more than `bytes` in all fail with ENOSPC;
    /// `None` lifts the limit.
    pub fn set_space_left(&self, bytes: Option<u64>) {
        self.inner
            .faults
            .space_left
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Every `sync_data` and `sync_dir` fails with EIO while set.
    pub fn set_fail_sync(&self, fail: bool) {
        self.inner.faults.fail_sync.store(fail, Ordering::SeqCst);
    }

    /// While `hold` is set, every file `sync_data` waits for it to be
    /// cleared (from another thread), then fails or succeeds as
    /// [`SimulatedFs::set_fail_sync`] says at that moment.
    pub fn hold_syncs(&self, hold: bool) {
        *lock(&self.inner.faults.hold_syncs) = hold;
        self.inner.faults.syncs_released.notify_all();
    }

    /// Every `set_len` (cutting a file back) fails with EIO while set.
    pub fn set_fail_set_len(&self, fail: bool) {
        self.inner.faults.fail_set_len.store(fail, Ordering::SeqCst);
    }

    /// Opening, renaming (from or to) or removing `path` fails with OS
    /// error `errno` (e.g. 13, EACCES; 5, EIO); `None` lifts the fault.
    pub fn set_fail_path(&self, path: &Path, errno: Option<i32>) {
        let mut fail = lock(&self.inner.faults.fail_path);
        match errno {
            Some(errno) => fail.insert(path.to_owned(), errno),
            None => fail.remove(path),
        };
    }

    /// Every read of the file now at `path`, through any handle, fails
    /// with OS error `errno`; `None` lifts the fault.
    pub fn set_fail_reads(&self, path: &Path, errno: Option<i32>) {
        let file = self.inner.file(path).expect("file exists");
        file.fail_reads.store(errno.unwrap_or(0), Ordering::SeqCst);
    }

    /// Cuts the power after `n` more modifying operations (writes, syncs,
    /// creations, renames, removals): the one after them fails, and so does
    /// every operation from then on, while [`SimulatedFs::power_cut_image`]
    /// returns what the disk held (a clean cut: unsynced bytes are lost).
    pub fn cut_power_after(&self, n: u64) {
        let faults = &self.inner.faults;
        let done = faults.operations.load(Ordering::SeqCst);
        faults
            .cut_after
            .store(done.saturating_add(n), Ordering::SeqCst);
    }

    /// Background jobs (`FileSystem::run_blocking`) wait until
    /// [`SimulatedFs::run_background`] while set; they run at once, on the
    /// calling thread, otherwise (the default: runs stay deterministic).
    pub fn set_defer_background(&self, defer: bool) {
        self.inner
            .faults
            .defer_background
            .store(defer, Ordering::SeqCst);
    }

    /// Runs the background jobs waiting, oldest first (and those they
    /// queue); returns how many ran.
    pub fn run_background(&self) -> usize {
        self.run_deferred(false)
    }

    /// Like [`SimulatedFs::run_background`], newest first: as blocking
    /// threads may run them.
    pub fn run_background_newest_first(&self) -> usize {
        self.run_deferred(true)
    }

    /// Runs one background job waiting, the newest or the oldest; false
    /// if none waits.
    pub fn run_one_background(&self, newest: bool) -> bool {
        let job = {
            let mut jobs = lock(&self.inner.faults.deferred);
            match newest {
                true => jobs.pop(),
                false => (!jobs.is_empty()).then(|| jobs.remove(0)),
            }
        };
        job.map(|job| job()).is_some()
    }

    fn run_deferred(&self, newest_first: bool) -> usize {
        let mut ran = 0;
        loop {
            let mut jobs = std::mem::take(&mut *lock(&self.inner.faults.deferred));
            if jobs.is_empty() {
                return ran;
            }
            if newest_first {
                jobs.reverse();
            }
            for job in jobs {
                job();
                ran += 1;
            }
        }
    }

    /// `sync_data` and `sync_dir` calls so far.
    pub fn syncs(&self) -> u64 {
        self.inner.faults.syncs.load(Ordering::SeqCst)
    }

    /// Modifying operations so far (to find how many a run takes).
    pub fn operations(&self) -> u64 {
        self.inner.faults.operations.load(Ordering::SeqCst)
    }

    /// The file system left by the cut of [`SimulatedFs::cut_power_after`],
    /// once it happened.
    pub fn power_cut_image(&self, cut: Cut) -> Option<SimulatedFs> {
        let images = lock(&self.inner.faults.cut_image);
        images.as_ref().map(|i| match cut {
            Cut::Clean => i.clean.clone(),
            Cut::WrittenBytesKept => i.whole.clone(),
            Cut::ProcessOnly => i.process.clone(),
        })
    }

    /// A copy of this file system as it is, written and durable state
    /// apart, with no faults.
    fn fork(&self) -> SimulatedFs {
        let fresh = SimulatedFs::default();
        let mut files = HashMap::new();
        let mut folders = HashMap::new();
        let root = Arc::clone(&lock(&self.inner.tree));
        let copy = fresh.fork_folder(&root, &mut files, &mut folders);
        *lock(&fresh.inner.tree) = copy;
        fresh
    }

    fn fork_folder(
        &self,
        folder: &Arc<Mutex<Folder>>,
        files: &mut HashMap<*const SimFile, Arc<SimFile>>,
        folders: &mut HashMap<*const Mutex<Folder>, Arc<Mutex<Folder>>>,
    ) -> Arc<Mutex<Folder>> {
        if let Some(done) = folders.get(&Arc::as_ptr(folder)) {
            return Arc::clone(done);
        }
        let copy: Arc<Mutex<Folder>> = Arc::default();
        folders.insert(Arc::as_ptr(folder), Arc::clone(&copy));
        let (live, durable) = {
            let f = lock(folder);
            (f.live.clone(), f.durable.clone())
        };
        let mut fork = |entries: BTreeMap<String, Node>| -> BTreeMap<String, Node> {
            entries
                .into_iter()
                .map(|(name, node)| {
                    let node = match node {
                        Node::Dir(d) => Node::Dir(self.fork_folder(&d, files, folders)),
                        Node::File(f) => Node::File(Arc::clone(
                            files.entry(Arc::as_ptr(&f)).or_insert_with(|| {
                                let image = lock(&f.image);
                                Arc::new(SimFile {
                                    image: Mutex::new(Image {
                                        live: image.live.clone(),
                                        durable: image.durable.clone(),
                                    }),
                                    fail_reads: Default::default(),
                                    fs: Arc::downgrade(&self.inner),
                                })
                            }),
                        )),
                    };
                    (name, node)
                })
                .collect()
        };
        let live = fork(live);
        let durable = fork(durable);
        *lock(&copy) = Folder { live, durable };
        copy
    }

    /// The file system after a power cut. `torn(path, unsynced)` says how
    /// many of a file's `unsynced` written-but-not-synced trailing bytes
    /// reach the disk anyway (0 for a clean cut).
    pub fn crash(&self, mut torn: impl FnMut(&Path, usize) -> usize) -> SimulatedFs {
        let fresh = SimulatedFs::default();
        let root = Arc::clone(&lock(&self.inner.tree));
        let copy = fresh.copy_durable(&root, Path::new("/"), &mut torn);
        *lock(&fresh.inner.tree) = copy;
        fresh
    }

    fn copy_durable(
        &self,
        folder: &Mutex<Folder>,
        path: &Path,
        torn: &mut dyn FnMut(&Path, usize) -> usize,
    ) -> Arc<Mutex<Folder>> {
        let entries = lock(folder).durable.clone();
        let mut copy = Folder::default();
        for (name, node) in entries {
            let child = path.join(&name);
            let node = match node {
                Node::Dir(d) => Node::Dir(self.copy_durable(&d, &child, torn)),
                Node::File(f) => {
                    let image = lock(&f.image);
                    let mut bytes = image.durable.clone();
                    if image.live.len() > bytes.len() && image.live.starts_with(&bytes) {
                        let unsynced = image.live.len() - bytes.len();
                        let keep = torn(&child, unsynced).min(unsynced);
                        bytes.extend_from_slice(&image.live[bytes.len()..bytes.len() + keep]);
                    }
                    Node::File(self.new_file(bytes, true))
                }
            };
            copy.live.insert(name.clone(), node.clone());
            copy.durable.insert(name, node);
        }
        Arc::new(Mutex::new(copy))
    }

    /// Flips one bit of a file's written and synced bytes (disk damage).
    pub fn flip_bit(&self, path: &Path, byte: usize, bit: u8) {
        let file = self.inner.file(path).expect("file exists");
        let mut image = lock(&file.image);
        image.live[byte] ^= 1 << bit;
        if byte < image.durable.len() {
            image.durable[byte] ^= 1 << bit;
        }
    }

    /// Writes a file as if it had been there, synced, before weir started
    /// (with durable folders up to it).
    pub fn put(&self, path: &Path, bytes: &[u8]) {
        let mut at = Arc::clone(&lock(&self.inner.tree));
        let names = components(path).expect("a plain path");
        let (file_name, dirs) = names.split_last().expect("a file name");
        for name in dirs {
            let next = {
                let mut folder = lock(&at);
                let node = match folder.live.get(name) {
                    Some(Node::Dir(d)) => Node::Dir(Arc::clone(d)),
                    Some(Node::File(_)) => panic!("{name} is a file"),
                    None => Node::Dir(Arc::default()),
                };
                folder.live.insert(name.clone(), node.clone());
                folder.durable.insert(name.clone(), node.clone());
                match node {
                    Node::Dir(d) => d,
                    Node::File(_) => unreachable!("made a folder above"),
                }
            };
            at = next;
        }
        let node = Node::File(self.new_file(bytes.to_vec(), true));
        let mut folder = lock(&at);
        folder.live.insert(file_name.clone(), node.clone());
        folder.durable.insert(file_name.clone(), node);
    }

    /// A file's written bytes.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let file = self.inner.file(path).ok()?;
        let image = lock(&file.image);
        Some(image.live.clone())
    }

    /// Every file path, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        fn walk(folder: &Mutex<Folder>, path: &Path, out: &mut Vec<PathBuf>) {
            for (name, node) in lock(folder).live.iter() {
                match node {
                    Node::File(_) => out.push(path.join(name)),
                    Node::Dir(d) => walk(d, &path.join(name), out),
                }
            }
        }
        let root = Arc::clone(&lock(&self.inner.tree));
        let mut out = Vec::new();
        walk(&root, Path::new("/"), &mut out);
        out.sort();
        out
    }
}

impl FileSystem for SimulatedFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.operate()?;
        let mut at = Arc::clone(&lock(&self.inner.tree));
        for name in components(path)? {
            let next = {
                let mut folder = lock(&at);
                match folder.live.get(&name) {
                    Some(Node::Dir(d)) => Arc::clone(d),
                    Some(Node::File(_)) => return Err(io::ErrorKind::AlreadyExists.into()),
                    None => {
                        let d: Arc<Mutex<Folder>> = Arc::default();
                        folder.live.insert(name, Node::Dir(Arc::clone(&d)));
                        d
                    }
                }
            };
            at = next;
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.powered()?;
        let folder = self.inner.folder(dir)?;
        let names = lock(&folder).live.keys().cloned().collect();
        Ok(names)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        self.inner.powered()?;
        self.inner.path_fault(path)?;
        Ok(self.inner.file(path)? as Arc<dyn FileHandle>)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        self.inner.operate()?;
        let (parent, name) = self.inner.parent(path)?;
        let mut folder = lock(&parent);
        match folder.live.get(&name) {
            Some(Node::File(f)) => {
                lock(&f.image).live.clear();
                Ok(Arc::clone(f) as Arc<dyn FileHandle>)
            }
            Some(Node::Dir(_)) => Err(io::ErrorKind::IsADirectory.into()),
            None => {
                let file = self.new_file(Vec::new(), false);
                folder.live.insert(name, Node::File(Arc::clone(&file)));
                Ok(file)
            }
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.operate()?;
        self.inner.path_fault(path)?;
        let (parent, name) = self.inner.parent(path)?;
        let mut folder = lock(&parent);
        match folder.live.get(&name) {
            Some(Node::File(_)) => {
                folder.live.remove(&name);
                Ok(())
            }
            Some(Node::Dir(_)) => Err(io::ErrorKind::IsADirectory.into()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.operate()?;
        self.inner.path_fault(path)?;
        let (parent, name) = self.inner.parent(path)?;
        let mut folder = lock(&parent);
        match folder.live.get(&name) {
            // The folder's durable contents stay as they were: until the
            // parent is synced, a power cut brings the whole folder back.
            Some(Node::Dir(_)) => {
                folder.live.remove(&name);
                Ok(())
            }
            Some(Node::File(_)) => Err(io::ErrorKind::NotADirectory.into()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.operate()?;
        self.inner.path_fault(from)?;
        self.inner.path_fault(to)?;
        let (from_dir, from_name) = self.inner.parent(from)?;
        let (to_dir, to_name) = self.inner.parent(to)?;
        let node = lock(&from_dir)
            .live
            .remove(&from_name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        lock(&to_dir).live.insert(to_name, node);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.operate()?;
        self.inner.faults.syncs.fetch_add(1, Ordering::SeqCst);
        if self.inner.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(eio());
        }
        let folder = self.inner.folder(dir)?;
        let mut folder = lock(&folder);
        folder.durable = folder.live.clone();
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.inner.folder(path).is_ok()
    }

    fn run_blocking(&self, job: Box<dyn FnOnce() + Send>) {
        match self.inner.faults.defer_background.load(Ordering::SeqCst) {
            true => lock(&self.inner.faults.deferred).push(job),
            false => job(),
        }
    }
}

impl SimFile {
    fn inner(&self) -> io::Result<Arc<Inner>> {
        self.fs.upgrade().ok_or_else(eio)
    }
}

impl FileHandle for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner()?.powered()?;
        match self.fail_reads.load(Ordering::SeqCst) {
            0 => {}
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
        let image = lock(&self.image);
        let start = usize::try_from(offset)
            .map_err(io::Error::other)?
            .min(image.live.len());
        let n = buf.len().min(image.live.len() - start);
        buf[..n].copy_from_slice(&image.live[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let inner = self.inner()?;
        inner.operate()?;
        let mut image = lock(&self.image);
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        let end = offset + buf.len();
        let growth = end.saturating_sub(image.live.len()) as u64;
        let space = &inner.faults.space_left;
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
        let inner = self.inner()?;
        {
            let faults = &inner.faults;
            let mut held = lock(&faults.hold_syncs);
            while *held {
                held = faults
                    .syncs_released
                    .wait(held)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        inner.operate()?;
        inner.faults.syncs.fetch_add(1, Ordering::SeqCst);
        if inner.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(eio());
        }
        let mut image = lock(&self.image);
        image.durable = image.live.clone();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let inner = self.inner()?;
        inner.operate()?;
        if inner.faults.fail_set_len.load(Ordering::SeqCst) {
            return Err(eio());
        }
        let mut image = lock(&self.image);
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let old = image.live.len();
        if len < old {
            let space = &inner.faults.space_left;
            if space.load(Ordering::SeqCst) != u64::MAX {
                space.fetch_add((old - len) as u64, Ordering::SeqCst);
            }
        }
        image.live.resize(len, 0);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        self.inner()?.powered()?;
        Ok(lock(&self.image).live.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    #[test]
    fn folder_changes_are_durable_only_once_the_parent_is_synced() {
        let fs = SimulatedFs::new();
        fs.create_dir_all(p("/a/b")).unwrap();
        let f = fs.create(p("/a/b/f")).unwrap();
        f.write_all_at(b"data", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(p("/a/b")).unwrap();
        assert!(fs.crash(|_, _| 0).files().is_empty(), "/a is not durable");
        fs.sync_dir(p("/")).unwrap();
        fs.sync_dir(p("/a")).unwrap();
        let after = fs.crash(|_, _| 0);
        assert_eq!(after.contents(p("/a/b/f")).unwrap(), b"data");
        // Moves and removals keep the durable place until the parent is synced.
        fs.rename(p("/a/b"), p("/a/c")).unwrap();
        fs.remove_file(p("/a/c/f")).unwrap();
        assert_eq!(fs.crash(|_, _| 0).files(), [PathBuf::from("/a/b/f")]);
        fs.sync_dir(p("/a")).unwrap();
        assert_eq!(fs.crash(|_, _| 0).files(), [PathBuf::from("/a/c/f")]);
        fs.sync_dir(p("/a/c")).unwrap();
        assert!(fs.crash(|_, _| 0).files().is_empty());
        fs.remove_dir_all(p("/a")).unwrap();
        assert!(!fs.is_dir(p("/a")));
        assert!(fs.crash(|_, _| 0).is_dir(p("/a/c")));
        fs.sync_dir(p("/")).unwrap();
        assert!(!fs.crash(|_, _| 0).is_dir(p("/a")));
    }

    #[test]
    fn the_power_is_cut_after_the_nth_operation() {
        let fs = SimulatedFs::new();
        fs.create_dir_all(p("/d")).unwrap();
        fs.sync_dir(p("/")).unwrap();
        fs.cut_power_after(2);
        let f = fs.create(p("/d/f")).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        assert!(fs.power_cut_image(Cut::Clean).is_none());
        assert!(f.sync_data().is_err(), "the third fails");
        assert!(fs.list(p("/d")).is_err(), "and everything after");
        let image = fs.power_cut_image(Cut::Clean).unwrap();
        assert!(image.is_dir(p("/d")));
        assert!(image.files().is_empty());
        let whole = fs.power_cut_image(Cut::WrittenBytesKept).unwrap();
        assert!(whole.files().is_empty(), "/d/f's entry was never synced");
        // weir died instead: the OS still has the file, and a power cut
        // after that loses it.
        let process = fs.power_cut_image(Cut::ProcessOnly).unwrap();
        assert_eq!(process.contents(p("/d/f")).unwrap(), b"x");
        assert!(process.crash(|_, _| 0).files().is_empty());
    }

    #[test]
    fn opens_and_reads_of_one_path_fail_on_demand() {
        let fs = SimulatedFs::new();
        fs.put(p("/d/f"), b"abc");
        fs.set_fail_path(p("/d/f"), Some(13));
        let e = fs.open(p("/d/f")).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(fs.rename(p("/d/f"), p("/d/g")).is_err());
        fs.set_fail_path(p("/d/f"), None);
        let f = fs.open(p("/d/f")).unwrap();
        fs.set_fail_reads(p("/d/f"), Some(5));
        assert_eq!(
            f.read_at(&mut [0; 3], 0).unwrap_err().raw_os_error(),
            Some(5)
        );
    }
}
