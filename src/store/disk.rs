//! Where `File` streams live: one folder per stream under
//! `<store root>/streams/`, holding `stream.cbor` (the definition) and the
//! file log's files (segments, their indexes, the sequence floor; see
//! [`super::file::format`]).
//!
//! Folder names encode stream names reversibly: ASCII letters, digits, `_`
//! and `-` stay, every other byte of the UTF-8 name becomes `%XX` (so
//! spaces, commas, dots and `.log` are safe, and `.`/`..` cannot occur).
//! An encoding longer than 200 bytes is shortened and suffixed with a
//! checksum of the name; `stream.cbor` always holds the full name.
//!
//! `stream.cbor` is written atomically (temp file, fsync, rename, fsync of
//! the folder) and ends with a CRC32C of its CBOR body.
//!
//! Deleting a stream is all or nothing. Its commit point is the rename of
//! `stream.cbor` to `stream.deleted` ([`StreamFolders::mark_deleted`]): if
//! that fails, nothing changed; once it succeeded the stream is gone, from
//! the registry at once and from disk at the latest at the next start
//! ([`StreamFolders::finish_delete`] syncs the folder, making the mark
//! durable, then removes it; a folder with the mark is removed at start-up
//! or when a stream of the same name is created). A folder, created,
//! removed or moved, is made durable by syncing its parent.

use super::file::background::Gate;
use super::file::recovery::{RecoveryMode, Remedy};
use super::file::{FileLog, OpenReport};
use super::fs::{self, FileSystem};
use super::log::{IoContext, StorageError, StorageOp};
use crate::protocol::cbor::{self, MapReader, Writer};
use crate::protocol::model::MessageStreamDefinition;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const DEFINITION_FILE: &str = "stream.cbor";
const DELETED_FILE: &str = "stream.deleted";
const META_VERSION: i64 = 1;

pub struct StreamFolders {
    fs: Arc<dyn FileSystem>,
    root: PathBuf,
    /// Each live stream folder's gate, closed before the folder is removed
    /// so no background step of its log touches it (or a later folder at
    /// the same path) again.
    gates: Mutex<HashMap<PathBuf, Arc<Gate>>>,
}

/// A stream found at start-up.
pub struct LoadedStream {
    pub definition: MessageStreamDefinition,
    pub log: FileLog,
    pub report: OpenReport,
}

/// The folder of stream `name` in the store at `store_root`: the one place
/// that says where stream folders are (the stream's files and, beside them,
/// its exporters' cursors, [`crate::store::export_cursor`]).
pub fn stream_dir(store_root: &Path, name: &str) -> PathBuf {
    streams_root(store_root).join(encode_name(name))
}

fn streams_root(store_root: &Path) -> PathBuf {
    store_root.join("streams")
}

pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > 200 {
        let crc = crc32c::crc32c(name.as_bytes());
        let mut cut = 180;
        while !out.is_char_boundary(cut)
            || out[..cut].ends_with('%')
            || out[..cut.saturating_sub(1)].ends_with('%')
        {
            cut -= 1;
        }
        out = format!("{}~{crc:08x}", &out[..cut]);
    }
    out
}

/// The name a folder stands for, when it is not a shortened one.
pub fn decode_name(folder: &str) -> Option<String> {
    let bytes = folder.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = folder.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'-' {
            out.push(bytes[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

fn encode_definition(def: &MessageStreamDefinition) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(2)
        .kv_int("formatVersion", META_VERSION)
        .text("definition")
        .fields(&def.fields());
    let mut bytes = w.into_vec();
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode_definition(bytes: &[u8]) -> Result<MessageStreamDefinition, String> {
    let (body, crc) = bytes
        .split_at_checked(bytes.len().saturating_sub(4))
        .ok_or("empty")?;
    if crc.len() != 4 || crc32c::crc32c(body).to_le_bytes() != crc {
        return Err("checksum mismatch".into());
    }
    let value = cbor::decode(body)?;
    let map = MapReader::new(&value, "").map_err(|e| e.0)?;
    match map.int("formatVersion").map_err(|e| e.0)? {
        Some(META_VERSION) => {}
        other => return Err(format!("format version {other:?} is not supported")),
    }
    let def = map
        .required("definition", map.map("definition", "definition"))
        .map_err(|e| e.0)?;
    MessageStreamDefinition::decode(&def).map_err(|e| e.0)
}

impl StreamFolders {
    pub fn new(fs: Arc<dyn FileSystem>, store_root: &Path) -> Result<Self, StorageError> {
        let op = StorageOp::OpenStore;
        let root = streams_root(store_root);
        fs.create_dir_all(&root).during(op)?;
        // The folders themselves must survive a power cut too, or a fresh
        // store could lose every stream created in it: make each level's
        // entry durable in its parent (once, at start-up), and the stream
        // folders a crashed process made durable in `streams/`.
        let parent = match store_root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fs.sync_dir(&root).syncing(op)?;
        fs.sync_dir(store_root).syncing(op)?;
        fs.sync_dir(parent).syncing(op)?;
        Ok(StreamFolders {
            fs,
            root,
            gates: Mutex::default(),
        })
    }

    pub fn fs(&self) -> &Arc<dyn FileSystem> {
        &self.fs
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(encode_name(name))
    }

    /// Makes the folder and durable definition of a new stream.
    pub fn create(&self, def: &MessageStreamDefinition) -> Result<FileLog, StorageError> {
        let op = StorageOp::CreateStream;
        let dir = self.dir(&def.name);
        if self.fs.is_dir(&dir) {
            self.clear_leftover(&dir, &def.name)?;
        }
        self.fs.create_dir_all(&dir).during(op)?;
        let made = self.save_definition(def).and_then(|()| {
            let log = FileLog::create(Arc::clone(&self.fs), dir.clone())?;
            self.fs.sync_dir(&self.root).syncing(op)?;
            self.register(&dir, log.gate());
            Ok(log)
        });
        if made.is_err() {
            // No definition, no stream: leave no half-made folder behind (a
            // full disk would otherwise leave one per attempt).
            if let Err(cleanup) = self.fs.remove_dir_all(&dir) {
                tracing::warn!(folder = %dir.display(), error = %cleanup, "could not remove a half-made stream folder");
            }
        }
        made
    }

    /// A folder under a new stream's name was left by a delete not yet
    /// finished, by a stream that could not be loaded, or by a create that
    /// failed: a deleted or empty one is removed, anything else is kept
    /// aside rather than mixed into the new stream.
    fn clear_leftover(&self, dir: &Path, name: &str) -> Result<(), StorageError> {
        let op = StorageOp::CreateStream;
        let names = self.fs.list(dir).during(op)?;
        if names.is_empty() || names.iter().any(|n| n == DELETED_FILE) {
            // Durable with the new folder's entry (the create syncs the root).
            self.fs.remove_dir_all(dir).during(op)?;
            return Ok(());
        }
        let aside = (1..)
            .map(|n| {
                self.root
                    .join(format!("{}.unloadable-{n}", encode_name(name)))
            })
            .find(|aside| !self.fs.is_dir(aside))
            .expect("some suffix is free");
        tracing::warn!(from = %dir.display(), to = %aside.display(), "moving an unloadable stream folder aside");
        self.fs.rename(dir, &aside).during(op)?;
        self.fs.sync_dir(&self.root).syncing(op)
    }

    /// Replaces a stream's stored definition atomically.
    pub fn save_definition(&self, def: &MessageStreamDefinition) -> Result<(), StorageError> {
        let path = self.dir(&def.name).join(DEFINITION_FILE);
        fs::write_atomically(
            &*self.fs,
            &path,
            &encode_definition(def),
            StorageOp::WriteDefinition,
        )
    }

    /// The commit point of a delete: if this fails, the stream is as it
    /// was; once it succeeded, the stream is gone (the caller forgets it
    /// whatever [`StreamFolders::finish_delete`] then says).
    pub fn mark_deleted(&self, name: &str) -> Result<(), StorageError> {
        let dir = self.dir(name);
        self.fs
            .rename(&dir.join(DEFINITION_FILE), &dir.join(DELETED_FILE))
            .during(StorageOp::DeleteStream)
    }

    /// After [`StreamFolders::mark_deleted`], with no more writes to the
    /// stream: makes the mark durable, then removes the folder. `Err` only
    /// if the mark may not survive a power cut (the delete is then not
    /// known durable); a removal that fails is finished at the next start
    /// or by a create of the same name.
    pub fn finish_delete(&self, name: &str) -> Result<(), StorageError> {
        let op = StorageOp::DeleteStream;
        let dir = self.dir(name);
        let gate = self.gates.lock().expect("gates lock").remove(&dir);
        if let Some(gate) = gate {
            gate.close();
        }
        let marked = self.fs.sync_dir(&dir).syncing(op);
        // Not synced: until the root is, a power cut brings the folder back
        // with its mark, and start-up removes it again.
        if let Err(e) = self.fs.remove_dir_all(&dir) {
            tracing::warn!(folder = %dir.display(), error = %e, "a deleted stream's folder is removed at the next start");
        }
        marked
    }

    /// Every stream that can be loaded. A folder that cannot is reported and
    /// skipped (left as it is); weir starts anyway.
    pub fn load_all(&self) -> Vec<LoadedStream> {
        let mut loaded = Vec::new();
        let folders = match self.fs.list(&self.root) {
            Ok(folders) => folders,
            Err(e) => {
                tracing::error!(root = %self.root.display(), error = %e, "cannot list streams");
                return loaded;
            }
        };
        for folder in folders {
            let dir = self.root.join(&folder);
            if !self.fs.is_dir(&dir) || folder.contains(".unloadable-") {
                continue;
            }
            match self.load(&dir) {
                Ok(Some(stream)) => loaded.push(stream),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(folder = %dir.display(), error = %e, "stream skipped: cannot load it")
                }
            }
        }
        loaded
    }

    fn register(&self, dir: &Path, gate: Arc<Gate>) {
        self.gates
            .lock()
            .expect("gates lock")
            .insert(dir.to_owned(), gate);
    }

    fn load(&self, dir: &Path) -> Result<Option<LoadedStream>, String> {
        let names = self.fs.list(dir).map_err(|e| e.to_string())?;
        if names.iter().any(|n| n == DELETED_FILE) {
            tracing::info!(folder = %dir.display(), "finishing an interrupted delete");
            // Durable at the next sync of the root; until then a power cut
            // only brings back the mark, and this runs again.
            self.fs.remove_dir_all(dir).map_err(|e| e.to_string())?;
            return Ok(None);
        }
        let bytes = fs::read_file(&*self.fs, &dir.join(DEFINITION_FILE))
            .map_err(|e| format!("{DEFINITION_FILE}: {e}"))?;
        let definition =
            decode_definition(&bytes).map_err(|e| format!("{DEFINITION_FILE}: {e}"))?;
        if self.dir(&definition.name) != dir {
            return Err(format!(
                "{DEFINITION_FILE} names stream {:?}, which belongs in another folder",
                definition.name
            ));
        }
        let (log, report) = FileLog::open(
            Arc::clone(&self.fs),
            dir.to_owned(),
            RecoveryMode::default(),
        )
        .map_err(|e| e.to_string())?;
        self.register(dir, log.gate());
        for finding in &report.findings {
            let (file, damage, remedy) = (&finding.file, &finding.damage, finding.remedy);
            match remedy {
                // Data that cannot be served.
                Remedy::MarkDamaged | Remedy::Skip | Remedy::Refuse => {
                    tracing::error!(stream = %definition.name, file, ?damage, ?remedy, "recovery found damage")
                }
                // What a crash or another program leaves.
                Remedy::Cut | Remedy::Seal | Remedy::Adopt | Remedy::Remove | Remedy::Leave => {
                    tracing::info!(stream = %definition.name, file, ?damage, ?remedy, "recovery repaired or left a file")
                }
            }
        }
        Ok(Some(LoadedStream {
            definition,
            log,
            report,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_reversibly_and_safely() {
        for name in [
            "SomeStream",
            "with space, comma.log",
            "..",
            "ström_1-2",
            "a%b",
        ] {
            let folder = encode_name(name);
            assert!(
                folder
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"%_-".contains(&b)),
                "{folder}"
            );
            assert_eq!(decode_name(&folder).as_deref(), Some(name));
        }
        let long: String = "ä".repeat(255);
        let folder = encode_name(&long);
        assert!(folder.len() <= 200, "{}", folder.len());
        assert_ne!(encode_name(&"ä".repeat(254)), folder);
    }

    #[test]
    fn failed_fsyncs_of_folder_steps_stop_writes_and_say_which_step() {
        use crate::store::simfs::SimulatedFs;
        #[track_caller]
        fn assert_failed_sync<T>(result: Result<T, StorageError>, expected: StorageOp) {
            match result {
                Err(e @ StorageError::Sync { .. }) => {
                    assert!(e.stops_writes());
                    let StorageError::Sync { op, source } = e else {
                        unreachable!()
                    };
                    assert_eq!((op, source.raw_os_error()), (expected, Some(5)));
                }
                Err(e) => panic!("not a failed sync: {e:?}"),
                Ok(_) => panic!("did not fail"),
            }
        }
        let sim = SimulatedFs::new();
        let fs: Arc<dyn FileSystem> = Arc::new(sim.clone());
        let root = Path::new("/store");
        sim.set_fail_sync(true);
        assert_failed_sync(
            StreamFolders::new(Arc::clone(&fs), root),
            StorageOp::OpenStore,
        );
        sim.set_fail_sync(false);
        let folders = StreamFolders::new(fs, root).unwrap();
        let def = MessageStreamDefinition::with_defaults("s".into());
        sim.set_fail_sync(true);
        assert_failed_sync(folders.create(&def), StorageOp::WriteDefinition);
        sim.set_fail_sync(false);
        folders.create(&def).unwrap();
        sim.set_fail_sync(true);
        assert_failed_sync(folders.save_definition(&def), StorageOp::WriteDefinition);
        folders.mark_deleted("s").unwrap();
        assert_failed_sync(folders.finish_delete("s"), StorageOp::DeleteStream);
    }

    #[test]
    fn definitions_roundtrip_and_damage_is_refused() {
        let def = MessageStreamDefinition::with_defaults("s".into());
        let mut bytes = encode_definition(&def);
        assert_eq!(decode_definition(&bytes), Ok(def));
        bytes[5] ^= 1;
        assert!(decode_definition(&bytes).is_err());
        assert!(decode_definition(&[]).is_err());
    }
}
