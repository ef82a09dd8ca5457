//! The file log: a stream's messages in segment files (see [`mod@format`]),
//! recovered at start-up as [`recovery`] says.
//!
//! Invariants:
//! * a segment file exists only once its header is synced and its folder
//!   entry durable, so every segment file found at start-up had a valid
//!   header (anything else is reported and skipped);
//! * no file is ever created over an existing segment file: one recovery
//!   skipped stays as it was;
//! * only the newest segment is ever written; older ones are sealed (synced,
//!   with an index footer) and only removed, oldest first, by retention:
//!   the log forgets the segment at once, its files go in a [`background`]
//!   step (after its seal), and the next append waits for that step, so no
//!   append is written before the removal is durable;
//! * no sequence number is given out twice: every number given out is below
//!   the durable sequence floor ([`format::FLOOR_FILE`]), and after a
//!   skipped newest segment numbering continues at the floor; when
//!   retention removes every message, an empty segment that starts at the
//!   next sequence number is created first;
//! * an append either writes a whole record or cuts the file back;
//! * an append that fills a segment neither syncs nor creates a file: it
//!   switches to a spare prepared in advance, and the full segment's seal
//!   and the new one's name are [`background`] steps, the name made durable
//!   only after the segment before it is synced; a sync of the new segment
//!   runs those steps first;
//! * no append waits on the disk under the stream's lock: what it would wait
//!   for (no spare ready for the next segment, a removal not yet durable,
//!   the sequence floor to raise) the log hands back as
//!   [`SegmentLog::disk_work`], which the stream's caller runs off the lock
//!   (the server on its blocking pool) before trying again.

pub mod background;
pub mod format;
pub mod recovery;
pub mod segment;

use super::fs::{self, FileHandle, FileSystem};
use super::log::{
    DiskWork, IoContext, ReadLimits, SealedRead, SegmentInfo, SegmentLog, StorageError, StorageOp,
    RECORD_OVERHEAD,
};
use crate::protocol::model::Message;
use background::{Gate, Step};
use bytes::Bytes;
use recovery::{Damage, Finding, RecoveryMode};
use segment::{Records, Segment, SegmentReader};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub struct FileLog {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    segments: VecDeque<Segment>,
    /// Sequence ranges whose segment file was unreadable at start-up.
    missing: Vec<(i64, i64)>,
    next_seq: i64,
    /// Every sequence number given out is below this; it is on disk.
    floor: i64,
    /// A floor an append's disk work raised, not yet taken in; locked
    /// while a floor is written, so writes of the floor file never overlap.
    raised_floor: Arc<Mutex<Option<i64>>>,
    total_bytes: u64,
    /// Held by background steps working in the folder.
    gate: Arc<Gate>,
    spare: Arc<SpareSlot>,
    /// Segments retention took out of the log whose files are still being
    /// removed, oldest first.
    removals: Vec<Removal>,
}

/// The spare and the signal of its preparation ending (an append that
/// needs it waits for one in progress, off the protocol thread).
#[derive(Default)]
struct SpareSlot {
    spare: Mutex<Spare>,
    prepared: Condvar,
}

impl SpareSlot {
    fn lock(&self) -> MutexGuard<'_, Spare> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A segment retention removed from the log: its files go (after its
/// steps) in a background step; when it was the last segment, the step
/// first makes the empty segment that keeps the next sequence number on
/// disk, taken in as the log's segment once the step is done.
struct Removal {
    step: Arc<Step>,
    replacement: Arc<Mutex<Option<Segment>>>,
}

/// The spare segment file, once prepared.
///
/// A spare is made only when no segment switched to from a spare still
/// waits for its name (at start, after a segment made inline, or after the
/// newest switch's name step): so at most one switched spare is unnamed at
/// any time, and making the next spare never replaces a file in use.
#[derive(Default)]
struct Spare {
    file: Option<Arc<dyn FileHandle>>,
    preparing: bool,
    /// Switches to a spare so far.
    switches: u64,
}

/// How many of the newest segments may have steps running: a switch needs
/// a spare, and the next spare is prepared only after the switch's steps.
const SETTLING: usize = 3;

/// What start-up found in a stream's folder.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub segments: usize,
    pub truncated_bytes: u64,
    /// What was damaged or left over, and what recovery did about it.
    pub findings: Vec<Finding>,
}

/// A segment file recovery could not use.
struct Skipped {
    first: i64,
    /// How many records it can hold at most, when its size is known.
    max_records: Option<i64>,
}

impl FileLog {
    /// A detached reader of the segments from `from` on, up to `end`: only
    /// the sealed ones if `sealed_only` ([`SegmentLog::sealed_reader`]).
    fn segments_reader(
        &self,
        from: i64,
        end: i64,
        sealed_only: bool,
    ) -> Option<Box<dyn SealedRead>> {
        let first = self
            .segments
            .partition_point(|s| s.info.next_sequence_number <= from);
        let segments: Vec<SegmentReader> = self
            .segments
            .range(first..)
            .take_while(|s| !sealed_only || s.info.sealed)
            .map(Segment::reader)
            .collect();
        let end = segments.last()?.next_sequence_number().min(end);
        Some(Box::new(SealedSegments {
            fs: Arc::clone(&self.fs),
            segments,
            missing: self
                .missing
                .iter()
                .copied()
                .filter(|(_, missing_end)| *missing_end > from)
                .collect(),
            end,
        }))
    }

    /// A log for a new, empty stream folder; its sequence floor is written
    /// before this returns.
    pub fn create(fs: Arc<dyn FileSystem>, dir: PathBuf) -> Result<Self, StorageError> {
        let mut log = FileLog::empty(fs, dir);
        log.raise_floor(0)?;
        log.prepare_spare();
        Ok(log)
    }

    fn empty(fs: Arc<dyn FileSystem>, dir: PathBuf) -> Self {
        FileLog {
            fs,
            dir,
            segments: VecDeque::new(),
            missing: Vec::new(),
            next_seq: 0,
            floor: 0,
            raised_floor: Arc::default(),
            total_bytes: 0,
            gate: Arc::default(),
            spare: Arc::default(),
            removals: Vec::new(),
        }
    }

    /// The gate background steps hold in the folder; closing it (when the
    /// stream is deleted) keeps them out from then on.
    pub fn gate(&self) -> Arc<Gate> {
        Arc::clone(&self.gate)
    }

    /// Takes in what finished background steps did; a failed one's error.
    fn settle(&mut self) -> Result<(), StorageError> {
        // Never waited for: one being written is taken in next time.
        if let Ok(mut raised) = self.raised_floor.try_lock() {
            if let Some(floor) = raised.take() {
                self.floor = self.floor.max(floor);
            }
        }
        self.settle_removals()?;
        for segment in self.segments.iter_mut().rev().take(SETTLING) {
            segment.settle()?;
        }
        Ok(())
    }

    /// Takes in finished removals: an empty segment made by one becomes the
    /// log's; a failed one's error is returned once.
    fn settle_removals(&mut self) -> Result<(), StorageError> {
        let mut failed = Ok(());
        let mut i = 0;
        while i < self.removals.len() {
            let Some(outcome) = self.removals[i].step.outcome() else {
                i += 1;
                continue;
            };
            let removal = self.removals.remove(i);
            let made = removal
                .replacement
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(segment) = made {
                // Appends wait for the removal: nothing came after it.
                debug_assert!(self.segments.is_empty(), "the last segment was removed");
                self.segments.push_back(segment);
            }
            if let (Err(e), Ok(())) = (outcome, &failed) {
                failed = Err(e);
            }
        }
        failed
    }

    /// The steps of the newest segments not known done, in the order they
    /// must run.
    fn pending_steps(&self) -> Vec<Arc<Step>> {
        let start = self.segments.len().saturating_sub(SETTLING);
        self.segments
            .range(start..)
            .flat_map(|s| s.steps().cloned())
            .collect()
    }

    /// Runs every background step and removal not done yet, here and now.
    fn finish_steps(&mut self) -> Result<(), StorageError> {
        for removal in &self.removals {
            removal.step.ensure()?;
        }
        for step in self.pending_steps() {
            step.ensure()?;
        }
        self.settle()
    }

    /// Runs `step` off the append path; then, for the name step of the
    /// switch numbered `switch`, prepares the next spare unless a later
    /// switch happened meanwhile.
    fn run_in_background(&self, step: Arc<Step>, switch: Option<u64>) {
        let spare = switch.map(|switch| self.spare_preparation(switch));
        let dir = self.dir.clone();
        self.fs.run_blocking(Box::new(move || match step.ensure() {
            Ok(()) => {
                if let Some(prepare) = spare {
                    prepare();
                }
            }
            // Kept in the step: the next append or sync returns it.
            Err(e) => tracing::error!(dir = %dir.display(), error = %e, "a segment step failed"),
        }));
    }

    /// Starts preparing a spare segment file if there is none; called only
    /// when no switched spare waits for its name.
    fn prepare_spare(&self) {
        let switches = self.spare.lock().switches;
        let prepare = self.spare_preparation(switches);
        self.fs.run_blocking(Box::new(prepare));
    }

    /// [`FileLog::make_spare`] in the background: a failure is logged (the
    /// append that needs the spare makes one itself).
    fn spare_preparation(&self, after_switch: u64) -> impl FnOnce() + Send + 'static {
        let make = self.make_spare(after_switch, false);
        let path = self.dir.join(format::SPARE_FILE);
        move || {
            if let Err(e) = make() {
                tracing::warn!(path = %path.display(), error = %e, "no spare segment prepared");
            }
        }
    }

    /// Creates the spare (with an unused header, not synced: an unused
    /// spare is removed at start-up) unless one is there or on its way, or
    /// a switch happened since `after_switch` switches (its spare may still
    /// be unnamed, under the spare's name). With `wait`, a preparation
    /// already on its way is waited for (and, if it failed, tried again).
    fn make_spare(
        &self,
        after_switch: u64,
        wait: bool,
    ) -> impl FnOnce() -> Result<(), StorageError> + Send + 'static {
        let (fs, gate, slot) = (
            Arc::clone(&self.fs),
            Arc::clone(&self.gate),
            Arc::clone(&self.spare),
        );
        let path = self.dir.join(format::SPARE_FILE);
        move || {
            {
                let mut spare = slot.lock();
                while wait && spare.preparing {
                    spare = slot.prepared.wait(spare).unwrap_or_else(|p| p.into_inner());
                }
                let later_switch = spare.switches != after_switch;
                if spare.file.is_some() || spare.preparing || later_switch {
                    return Ok(());
                }
                spare.preparing = true;
            }
            let made = match gate.enter() {
                None => Ok(None),
                Some(_folder) => match fs.open(&path) {
                    // Never replace a file there: it may be a spare in use.
                    Ok(_) => Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists)),
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    Err(_) => fs.create(&path).and_then(|file| {
                        let header = format::encode_segment_header(format::UNUSED_SPARE);
                        match file.write_all_at(&header, 0) {
                            Ok(()) => Ok(Some(file)),
                            Err(e) => {
                                // Never a spare: out of the way of the next
                                // try (a full disk leaves an empty file).
                                if let Err(e) = fs.remove_file(&path) {
                                    tracing::warn!(path = %path.display(), error = %e, "a spare not made stays until the next start");
                                }
                                Err(e)
                            }
                        }
                    }),
                },
            };
            let mut spare = slot.lock();
            spare.preparing = false;
            slot.prepared.notify_all();
            spare.file = made.during(StorageOp::CreateSegment)?;
            Ok(())
        }
    }

    /// The active segment after a full one: the spare if one is ready
    /// (switching costs a header write), else a segment made here, after
    /// every step still running (its name must not be durable before the
    /// segment it follows is synced). A stream never gets here without a
    /// spare: its [`SegmentLog::disk_work`] makes one first, off its lock.
    fn open_next_segment(&mut self, now_millis: i64) -> Result<(), StorageError> {
        let first = self.next_seq;
        let (spare, switch) = {
            let mut slot = self.spare.lock();
            let spare = slot.file.take();
            if spare.is_some() {
                slot.switches += 1;
            }
            (spare, slot.switches)
        };
        if let Some(file) = spare {
            let header = format::encode_segment_header(first);
            match file.write_all_at(&header, 0) {
                Ok(()) => {
                    // Every step before: the segments before are synced and
                    // named before this one's name is durable.
                    let after = self.pending_steps();
                    let header_file = Arc::clone(&file);
                    let (fs, gate, dir) = (
                        Arc::clone(&self.fs),
                        Arc::clone(&self.gate),
                        self.dir.clone(),
                    );
                    let path = self.dir.join(format::segment_name(first));
                    let (from, to) = (self.dir.join(format::SPARE_FILE), path.clone());
                    let name_step = Step::new(Box::new(move || {
                        let op = StorageOp::CreateSegment;
                        for previous in &after {
                            previous.ensure()?;
                        }
                        let Some(_folder) = gate.enter() else {
                            return Ok(()); // the stream is deleted
                        };
                        // A segment file exists only with a synced header.
                        header_file.sync_data().syncing(op)?;
                        fs.rename(&from, &to).during(op)?;
                        fs.sync_dir(&dir).syncing(op)
                    }));
                    let info = SegmentInfo {
                        first_sequence_number: first,
                        next_sequence_number: first,
                        bytes: 0,
                        newest_ingest_time: now_millis,
                        sealed: false,
                    };
                    let segment = Segment::from_spare(info, path, file, Arc::clone(&name_step));
                    self.segments.push_back(segment);
                    self.run_in_background(name_step, Some(switch));
                    return Ok(());
                }
                Err(e) => {
                    // It never became a segment: out of the way of the
                    // next spare, which the next append prepares (making a
                    // segment here would wait on the disk under the
                    // stream's lock).
                    let spare = self.dir.join(format::SPARE_FILE);
                    if let Err(e) = self.fs.remove_file(&spare) {
                        tracing::warn!(path = %spare.display(), error = %e, "an unusable spare stays until the next start");
                    }
                    return Err(e).during(StorageOp::CreateSegment);
                }
            }
        }
        // Only for a caller that did not first do the append's `disk_work`
        // (a stream always does).
        self.finish_steps()?;
        let segment = Segment::create(&*self.fs, &self.dir, first, now_millis)?;
        self.segments.push_back(segment);
        self.prepare_spare();
        Ok(())
    }

    /// Opens an existing stream folder, recovering its segments as `mode`
    /// says (see [`recovery`]). Only the index footers of sealed segments
    /// and the tail of the newest are read. Before this returns, the newest
    /// segment and the folder are synced: what a crashed process wrote but
    /// had not synced is durable from now on.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        mode: RecoveryMode,
    ) -> Result<(Self, OpenReport), StorageError> {
        let op = StorageOp::LoadStream;
        let mut report = OpenReport::default();
        let mut firsts = Vec::new();
        let mut spares = Vec::new();
        let names = fs.list(&dir).during(op)?;
        let mut log = FileLog::empty(fs, dir);
        for name in &names {
            let path = log.dir.join(name);
            match format::parse_name(name) {
                Some((first, "seg")) => firsts.push(first),
                Some((first, "idx")) if !names.contains(&format::segment_name(first)) => {
                    // An index whose segment retention already removed.
                    segment::found(mode, &mut report.findings, &path, Damage::OrphanIndex)?;
                    log.fs.remove_file(&path).during(op)?;
                }
                Some((_, "idx")) => {}
                _ if name.ends_with(".tmp") => {
                    segment::found(mode, &mut report.findings, &path, Damage::TempFile)?;
                    log.fs.remove_file(&path).during(op)?;
                }
                _ if name.ends_with(".spare") => spares.push(path),
                _ if name == format::FLOOR_FILE => {
                    match fs::read_file(&*log.fs, &path)
                        .map_err(|e| e.to_string())
                        .and_then(|b| format::decode_floor(&b))
                    {
                        Ok(floor) => log.floor = floor,
                        Err(reason) => {
                            let damage = Damage::UnreadableFloor { reason };
                            segment::found(mode, &mut report.findings, &path, damage)?;
                        }
                    }
                }
                _ if name.starts_with("stream.") => {}
                _ => {
                    segment::found(mode, &mut report.findings, &path, Damage::ForeignFile)?;
                }
            }
        }
        firsts.sort_unstable();
        let count = firsts.len();
        let mut skipped = Vec::new();
        for (i, first) in firsts.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let path = log.dir.join(format::segment_name(first));
            let recovered = segment::recover(
                &*log.fs,
                &log.dir,
                first,
                is_last,
                mode,
                &mut report.findings,
            );
            match recovered {
                Ok(recovered) => {
                    report.truncated_bytes += recovered.truncated;
                    let info = recovered.segment.info;
                    if let Some(prev) = log.segments.back() {
                        if info.first_sequence_number < prev.info.next_sequence_number {
                            let damage = Damage::OverlappingSegment {
                                previous_end: prev.info.next_sequence_number - 1,
                            };
                            segment::found(mode, &mut report.findings, &path, damage)?;
                            skipped.push(Skipped {
                                first,
                                max_records: Some(info.next_sequence_number - first),
                            });
                            continue;
                        }
                    }
                    if log.next_seq < info.first_sequence_number && !log.segments.is_empty() {
                        log.missing.push((log.next_seq, info.first_sequence_number));
                    }
                    log.next_seq = info.next_sequence_number;
                    log.total_bytes += info.bytes;
                    log.segments.push_back(recovered.segment);
                }
                Err(e) if e.stops_writes() => return Err(e),
                // Under a strict mode, `found` refuses the whole stream.
                Err(e) => {
                    segment::found(mode, &mut report.findings, &path, damage_of(&e))?;
                    skipped.push(Skipped {
                        first,
                        max_records: max_records(&*log.fs, &path),
                    });
                }
            }
        }
        log.continue_after(&skipped);
        for path in spares {
            log.adopt_or_remove(&path, mode, &mut report)?;
        }
        // What a crashed process wrote is synced before anything new is
        // promised; the folder's entries (segments, removals) likewise.
        if let Some(newest) = log.segments.back().filter(|s| !s.info.sealed) {
            newest
                .sync_target()
                .sync_data()
                .syncing(StorageOp::RecoverSegment)?;
        }
        log.fs.sync_dir(&log.dir).syncing(op)?;
        report.segments = log.segments.len();
        log.prepare_spare();
        Ok((log, report))
    }

    /// A spare found at start-up: one an append had switched to, starting
    /// exactly where the newest segment ends, holds appends whose segment
    /// name was not yet durable: it becomes the newest segment. Any other
    /// is removed.
    fn adopt_or_remove(
        &mut self,
        path: &Path,
        mode: RecoveryMode,
        report: &mut OpenReport,
    ) -> Result<(), StorageError> {
        let op = StorageOp::RecoverSegment;
        let mut head = [0u8; format::SEGMENT_HEADER_LEN as usize];
        let starts = match self
            .fs
            .open(path)
            .and_then(|f| fs::read_exact_at(&*f, &mut head, 0))
        {
            Ok(true) => format::decode_segment_header(&head).ok(),
            Ok(false) => None,
            Err(e) => return Err(e).during(op),
        };
        let name = path.file_name().and_then(|n| n.to_str()) == Some(format::SPARE_FILE);
        if !(name && starts == Some(self.next_seq) && self.next_seq >= 0) {
            segment::found(mode, &mut report.findings, path, Damage::UnusedSpare)?;
            return self.fs.remove_file(path).during(op);
        }
        segment::found(mode, &mut report.findings, path, Damage::FollowingSpare)?;
        let first = self.next_seq;
        if let Some(newest) = self.segments.back_mut() {
            newest.seal(&*self.fs)?;
        }
        let to = self.dir.join(format::segment_name(first));
        self.fs.rename(path, &to).during(op)?;
        self.fs.sync_dir(&self.dir).syncing(op)?;
        let recovered = segment::recover(
            &*self.fs,
            &self.dir,
            first,
            true,
            mode,
            &mut report.findings,
        )?;
        report.truncated_bytes += recovered.truncated;
        self.next_seq = recovered.segment.info.next_sequence_number;
        self.total_bytes += recovered.segment.info.bytes;
        self.segments.push_back(recovered.segment);
        Ok(())
    }

    /// After segment files that could not be read: if any lies past the
    /// last segment recovered, its numbers may have been given out, so
    /// numbering continues at the floor (or, without a floor that covers
    /// it, past all it could hold), and reads of the range fail.
    fn continue_after(&mut self, skipped: &[Skipped]) {
        let last_first = self.segments.back().map(|s| s.info.first_sequence_number);
        let mut next = self.next_seq;
        for s in skipped {
            if last_first.is_some_and(|last| s.first < last) {
                continue;
            }
            let mut past = s.first + 1;
            if self.floor > s.first {
                past = past.max(self.floor);
            } else {
                // No floor covers it (a store from before the floor, or a
                // floor that could not be read): assume a whole lease.
                past = past.max(s.first.saturating_add(format::FLOOR_LEASE));
            }
            if let Some(records) = s.max_records {
                past = past.max(s.first.saturating_add(records).saturating_add(1));
            }
            next = next.max(past);
        }
        if next > self.next_seq {
            tracing::warn!(dir = %self.dir.display(), from = self.next_seq, to = next, "sequence numbers continue past a segment that could not be read");
            if !self.segments.is_empty() {
                self.missing.push((self.next_seq, next));
            }
            self.next_seq = next;
        }
    }

    /// Makes sure `seq` may be given out: below the durable floor. A
    /// stream's appends find it so already (their `disk_work` raised it).
    fn raise_floor(&mut self, seq: i64) -> Result<(), StorageError> {
        if seq < self.floor {
            return Ok(());
        }
        let _writing = self.raised_floor.lock().unwrap_or_else(|p| p.into_inner());
        let floor = seq.saturating_add(format::FLOOR_LEASE);
        let path = self.dir.join(format::FLOOR_FILE);
        fs::write_atomically(
            &*self.fs,
            &path,
            &format::encode_floor(floor),
            StorageOp::WriteFloor,
        )?;
        self.floor = floor;
        Ok(())
    }

    /// Raises the floor above the next sequence number, off the stream's
    /// lock (a rare atomic write, once a [`format::FLOOR_LEASE`]), unless
    /// another append's work did so meanwhile.
    fn floor_work(&self) -> DiskWork {
        let (fs, gate, raised) = (
            Arc::clone(&self.fs),
            Arc::clone(&self.gate),
            Arc::clone(&self.raised_floor),
        );
        let path = self.dir.join(format::FLOOR_FILE);
        let seq = self.next_seq;
        Box::new(move || {
            let Some(_folder) = gate.enter() else {
                return Ok(()); // the stream is deleted
            };
            let mut raised = raised.lock().unwrap_or_else(|p| p.into_inner());
            if raised.is_some_and(|floor| seq < floor) {
                return Ok(());
            }
            let floor = seq.saturating_add(format::FLOOR_LEASE);
            let bytes = format::encode_floor(floor);
            fs::write_atomically(&*fs, &path, &bytes, StorageOp::WriteFloor)?;
            *raised = Some(floor);
            Ok(())
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn now_hint(&self) -> i64 {
        self.segments
            .back()
            .map_or(0, |s| s.info.newest_ingest_time)
    }
}

/// What a sync must do while segment steps are running: run them first
/// (the segment before is synced, the new one's name durable), then sync
/// the active segment.
struct AfterSteps {
    steps: Vec<Arc<Step>>,
    file: Option<Arc<dyn FileHandle>>,
}

impl AfterSteps {
    fn file(&self) -> std::io::Result<&Arc<dyn FileHandle>> {
        self.file
            .as_ref()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

impl FileHandle for AfterSteps {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.file()?.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file()?.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        for step in &self.steps {
            step.ensure()
                .map_err(|e| match e.io_error().and_then(|io| io.raw_os_error()) {
                    Some(errno) => std::io::Error::from_raw_os_error(errno),
                    None => std::io::Error::other(e.to_string()),
                })?;
        }
        match &self.file {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file()?.set_len(len)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.file()?.size()
    }
}

/// How recovery names a segment it could not use.
fn damage_of(e: &StorageError) -> Damage {
    Damage::UnreadableSegment {
        reason: e.to_string(),
    }
}

/// The most records a segment file can hold, from its size, if that can be
/// learned (its header counts for nothing).
fn max_records(fs: &dyn FileSystem, path: &Path) -> Option<i64> {
    let size = match fs.open(path).and_then(|f| f.size()) {
        Ok(size) => size,
        // Unknown: the floor (or a whole lease) bounds it instead.
        Err(_) => return None,
    };
    i64::try_from(size / RECORD_OVERHEAD).ok()
}

/// Sealed segments of a log, read without it ([`SegmentLog::sealed_reader`]).
struct SealedSegments {
    fs: Arc<dyn FileSystem>,
    segments: Vec<SegmentReader>,
    missing: Vec<(i64, i64)>,
    end: i64,
}

impl SealedRead for SealedSegments {
    fn end(&self) -> i64 {
        self.end
    }

    fn read(&self, from: i64, limits: ReadLimits) -> Result<Vec<Message>, StorageError> {
        let limits = ReadLimits {
            max_count: limits
                .max_count
                .min(usize::try_from(self.end.saturating_sub(from)).unwrap_or(0)),
            ..limits
        };
        let segments = self
            .segments
            .iter()
            .filter(|s| s.next_sequence_number() > from)
            .map(SegmentReader::records);
        read_segments(&*self.fs, segments, &self.missing, from, limits)
    }
}

/// Up to `limits` messages from `from`, over `segments` (from the one that
/// holds `from` on): the one loop of reads under the stream's lock
/// ([`FileLog`]) and without it ([`SealedSegments`]).
fn read_segments<'a>(
    fs: &dyn FileSystem,
    segments: impl Iterator<Item = Records<'a>>,
    missing: &[(i64, i64)],
    from: i64,
    limits: ReadLimits,
) -> Result<Vec<Message>, StorageError> {
    check_missing(missing, from, limits.max_count)?;
    let mut out = Vec::new();
    let mut bytes = 0;
    for segment in segments {
        let start = from.max(segment.first_sequence_number());
        if !segment.read(fs, start, limits, &mut out, &mut bytes)? {
            break;
        }
    }
    Ok(out)
}

/// A read of `max_count` messages from `from` fails if some of them were in
/// a segment file that could not be read at start-up.
fn check_missing(missing: &[(i64, i64)], from: i64, max_count: usize) -> Result<(), StorageError> {
    let wanted_end = from.saturating_add(max_count as i64);
    match missing
        .iter()
        .find(|(start, end)| from < *end && *start < wanted_end)
    {
        Some((start, end)) => Err(StorageError::Corrupt(format!(
            "messages {start} to {} were in a segment file that could not be read at start-up",
            end - 1
        ))),
        None => Ok(()),
    }
}

impl SegmentLog for FileLog {
    fn next_sequence_number(&self) -> i64 {
        self.next_seq
    }

    fn oldest_segment(&self) -> Option<SegmentInfo> {
        self.segments.front().map(|s| s.info)
    }

    fn segment_from(&self, seq: i64) -> Option<SegmentInfo> {
        let index = self
            .segments
            .partition_point(|s| s.info.next_sequence_number <= seq);
        self.segments.get(index).map(|s| s.info)
    }

    fn active_segment(&self) -> Option<SegmentInfo> {
        self.segments.back().map(|s| s.info).filter(|i| !i.sealed)
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn append(&mut self, ingest_time: i64, payload: Bytes) -> Result<i64, StorageError> {
        if !self.removals.is_empty() {
            // Only for a caller that did not first do the append's
            // `disk_work` (a stream always does).
            self.finish_steps()?;
        }
        self.settle()?;
        self.raise_floor(self.next_seq)?;
        if self.active_segment().is_none() {
            self.open_next_segment(ingest_time)?;
        }
        let seq = self.next_seq;
        let segment = self
            .segments
            .back_mut()
            .expect("an active segment was just ensured");
        let before = segment.info.bytes;
        segment.append(seq, ingest_time, &payload);
        self.total_bytes += segment.info.bytes - before;
        self.next_seq = seq + 1;
        Ok(seq)
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        let Some(segment) = self.segments.back_mut() else {
            return Ok(());
        };
        let before = segment.info.bytes;
        let result = segment.flush();
        // A failed write forgets the pending records; follow the segment.
        self.total_bytes -= before - segment.info.bytes;
        self.next_seq = segment.info.next_sequence_number;
        result
    }

    fn has_pending(&self) -> bool {
        self.segments.back().is_some_and(Segment::has_pending)
    }

    fn seal_active(&mut self) -> Result<(), StorageError> {
        self.settle()?;
        let (fs, gate) = (Arc::clone(&self.fs), Arc::clone(&self.gate));
        let Some(segment) = self.segments.back_mut() else {
            return Ok(());
        };
        if let Some(step) = segment.begin_seal(fs, gate)? {
            self.run_in_background(step, None);
        }
        Ok(())
    }

    fn remove_oldest_segment(&mut self) -> Result<(), StorageError> {
        // A step that failed (its seal) keeps the segment.
        self.settle()?;
        let Some(oldest) = self.segments.front() else {
            return Ok(());
        };
        assert!(oldest.info.sealed, "retention removes sealed segments only");
        // Keep a record of the next sequence number on disk: removing the
        // last segment first makes an empty one that starts there (after
        // every step before a new segment).
        let last = self.segments.len() == 1;
        let after: Vec<Arc<Step>> = match last {
            true => self.pending_steps(),
            // Its seal done first.
            false => oldest.steps().cloned().collect(),
        };
        let (next, now) = (self.next_seq, self.now_hint());
        let oldest = self.segments.pop_front().expect("checked above");
        self.total_bytes -= oldest.info.bytes;
        let first = oldest.info.first_sequence_number;
        self.missing.retain(|(_, end)| *end > first);
        let (fs, gate, dir) = (
            Arc::clone(&self.fs),
            Arc::clone(&self.gate),
            self.dir.clone(),
        );
        let replacement: Arc<Mutex<Option<Segment>>> = Arc::default();
        let made = Arc::clone(&replacement);
        let paths = oldest.paths();
        // Tried once: a failure is reported once, and the files stay until
        // the next start (the segment is out of the log already).
        let tried = std::sync::atomic::AtomicBool::new(false);
        let step = Step::new(Box::new(move || {
            if tried.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            for previous in &after {
                previous.ensure()?;
            }
            let Some(_folder) = gate.enter() else {
                return Ok(()); // the stream is deleted
            };
            {
                let mut made = made.lock().unwrap_or_else(|p| p.into_inner());
                if last && made.is_none() {
                    *made = Some(Segment::create(&*fs, &dir, next, now)?);
                }
            }
            segment::remove_files(&*fs, &paths)?;
            // Durable before the space is reused: a power cut brings no
            // removed segment back beside newer ones.
            fs.sync_dir(&dir).syncing(StorageOp::RemoveSegment)
        }));
        self.removals.push(Removal {
            step: Arc::clone(&step),
            replacement,
        });
        // The next append waits for it (`disk_work`); the sweeper does not.
        self.run_in_background(step, None);
        self.settle_removals()
    }

    fn disk_work(&mut self) -> Result<Option<DiskWork>, StorageError> {
        self.settle()?;
        if !self.removals.is_empty() {
            let steps: Vec<Arc<Step>> = self.removals.iter().map(|r| Arc::clone(&r.step)).collect();
            return Ok(Some(Box::new(move || {
                steps.iter().try_for_each(|step| step.ensure())
            })));
        }
        if self.next_seq >= self.floor {
            return Ok(Some(self.floor_work()));
        }
        if self.active_segment().is_some() {
            return Ok(None);
        }
        let after_switch = {
            let slot = self.spare.lock();
            if slot.file.is_some() {
                return Ok(None);
            }
            slot.switches
        };
        // A new segment is needed and no spare is ready: the steps before
        // it (so the last spare switched to has its name, and the spare's
        // name is free), then a spare, made here or waited for.
        let steps = self.pending_steps();
        let make = self.make_spare(after_switch, true);
        Ok(Some(Box::new(move || {
            steps.iter().try_for_each(|step| step.ensure())?;
            make()
        })))
    }

    fn read(&self, from: i64, limits: ReadLimits) -> Result<Vec<Message>, StorageError> {
        let first = self
            .segments
            .partition_point(|s| s.info.next_sequence_number <= from);
        let segments = self.segments.range(first..).map(|s| {
            debug_assert!(!s.has_pending(), "reads follow a flush");
            s.records()
        });
        read_segments(&*self.fs, segments, &self.missing, from, limits)
    }

    fn sealed_reader(&self, from: i64) -> Option<Box<dyn SealedRead>> {
        self.segments_reader(from, i64::MAX, true)
    }

    fn written_reader(&self, from: i64, end: i64) -> Option<Box<dyn SealedRead>> {
        // A segment's reader reads only what is written of it, so the
        // active one's waiting records are never looked at.
        self.segments_reader(from, end, false)
    }

    fn sync_target(&self) -> Option<Arc<dyn FileHandle>> {
        let active = self
            .segments
            .back()
            .filter(|s| !s.info.sealed)
            .map(Segment::sync_target);
        let steps = self.pending_steps();
        if steps.is_empty() {
            return active;
        }
        Some(Arc::new(AfterSteps {
            steps,
            file: active,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::recovery::{Damage, RecoveryMode, Remedy};
    use super::*;
    use crate::store::simfs::SimulatedFs;

    fn dir() -> PathBuf {
        PathBuf::from("/s")
    }

    fn new_log(fs: &SimulatedFs) -> FileLog {
        fs.create_dir_all(&dir()).unwrap();
        FileLog::create(Arc::new(fs.clone()), dir()).unwrap()
    }

    fn reopen(fs: &SimulatedFs, mode: RecoveryMode) -> Result<(FileLog, OpenReport), StorageError> {
        FileLog::open(Arc::new(fs.clone()), dir(), mode)
    }

    fn append(log: &mut FileLog, n: usize) {
        for _ in 0..n {
            log.append(1, Bytes::from_static(b"message")).unwrap();
        }
        log.flush().unwrap();
    }

    /// `result` failed in an fsync of `op`, which stops the stream's writes,
    /// keeping the OS error.
    #[track_caller]
    fn assert_failed_sync<T>(result: Result<T, StorageError>, expected: StorageOp) {
        match result {
            Err(e @ StorageError::Sync { .. }) => {
                assert!(e.stops_writes(), "{e}");
                let StorageError::Sync { op, source } = e else {
                    unreachable!()
                };
                assert_eq!(op, expected);
                assert_eq!(source.raw_os_error(), Some(5), "the EIO is kept");
            }
            Err(e) => panic!("not a failed sync: {e:?}"),
            Ok(_) => panic!("did not fail"),
        }
    }

    #[test]
    fn failed_fsyncs_of_every_log_step_stop_writes_and_say_which_step() {
        // The stream's first floor.
        let fs = SimulatedFs::new();
        fs.create_dir_all(&dir()).unwrap();
        fs.set_fail_sync(true);
        assert_failed_sync(
            FileLog::create(Arc::new(fs.clone()), dir()),
            StorageOp::WriteFloor,
        );
        // A new segment made inline (no spare ready).
        let fs = SimulatedFs::new();
        fs.set_defer_background(true);
        let mut log = new_log(&fs);
        fs.set_fail_sync(true);
        assert_failed_sync(
            log.append(1, Bytes::from_static(b"m")),
            StorageOp::CreateSegment,
        );
        // A new segment switched to from the spare: its naming fails off
        // the append path, and the next append or sync says so.
        for next in ["append", "sync"] {
            let fs = SimulatedFs::new();
            let mut log = new_log(&fs);
            fs.set_fail_sync(true);
            log.append(1, Bytes::from_static(b"m")).unwrap();
            match next {
                "append" => assert_failed_sync(
                    log.append(1, Bytes::from_static(b"m")),
                    StorageOp::CreateSegment,
                ),
                _ => {
                    let e = log.sync_target().unwrap().sync_data().unwrap_err();
                    assert_eq!(e.raw_os_error(), Some(5), "{e}");
                }
            }
        }
        // A floor raised when appends reach it.
        let fs = SimulatedFs::new();
        let mut log = new_log(&fs);
        append(&mut log, 1);
        log.floor = log.next_seq;
        fs.set_fail_sync(true);
        assert_failed_sync(
            log.append(1, Bytes::from_static(b"m")),
            StorageOp::WriteFloor,
        );
        // Sealing, inline (deferred: the next append finds the failure) and
        // when retention waits for it.
        let fs = SimulatedFs::new();
        let mut log = new_log(&fs);
        append(&mut log, 1);
        fs.set_fail_sync(true);
        log.seal_active().unwrap();
        assert_failed_sync(
            log.append(1, Bytes::from_static(b"m")),
            StorageOp::SealSegment,
        );
        assert_failed_sync(log.remove_oldest_segment(), StorageOp::SealSegment);
        // Retention: the empty segment kept for the next number (the
        // removal runs in the background: the next append says how it
        // went), and the folder sync after a removal.
        let fs = SimulatedFs::new();
        fs.set_defer_background(true);
        let mut log = new_log(&fs);
        append(&mut log, 1);
        log.seal_active().unwrap();
        fs.run_background();
        fs.set_fail_sync(true);
        log.remove_oldest_segment().unwrap();
        assert!(log.disk_work().unwrap().is_some(), "appends wait for it");
        fs.run_background();
        assert_failed_sync(
            log.append(1, Bytes::from_static(b"m")),
            StorageOp::CreateSegment,
        );
        let fs = SimulatedFs::new();
        let mut log = new_log(&fs);
        append(&mut log, 1);
        log.seal_active().unwrap();
        append(&mut log, 1);
        fs.set_fail_sync(true);
        assert_failed_sync(log.remove_oldest_segment(), StorageOp::RemoveSegment);
    }

    /// What an append would wait on the disk for is handed back as work to
    /// run off the stream's lock, and once it ran the append waits for
    /// nothing: the spare of a new segment, the sequence floor, a removal.
    #[test]
    fn disk_work_leaves_appends_nothing_to_wait_for() {
        let fs = SimulatedFs::new();
        fs.set_defer_background(true);
        let mut log = new_log(&fs);
        let done = |log: &mut FileLog| {
            let work = log.disk_work().unwrap().expect("an append would wait");
            let syncs = fs.syncs();
            work().unwrap();
            assert!(log.disk_work().unwrap().is_none(), "nothing left");
            fs.syncs() - syncs
        };
        // No spare prepared yet (background work waits).
        done(&mut log);
        append(&mut log, 1);
        // The floor reached: raised, durably, by the work.
        log.floor = log.next_seq;
        assert!(done(&mut log) > 0, "the floor is synced");
        assert!(log.floor > log.next_seq);
        assert_eq!(
            format::decode_floor(&fs.contents(&dir().join(format::FLOOR_FILE)).unwrap()),
            Ok(log.floor)
        );
        // A removal of the last segment: its seal, the empty segment after
        // it, its files gone and the folder synced.
        log.seal_active().unwrap();
        log.remove_oldest_segment().unwrap();
        assert!(log.segments.is_empty());
        done(&mut log);
        assert_eq!(log.segments.len(), 1);
        assert_eq!(log.active_segment().unwrap().first_sequence_number, 1);
        assert!(fs.contents(&dir().join(format::segment_name(0))).is_none());
        append(&mut log, 1);
        assert_eq!(log.read(1, limits(1)).unwrap().len(), 1);
    }

    #[test]
    fn a_late_spare_preparation_never_replaces_a_spare_in_use() {
        // Either preparation may be the late one: the one queued after the
        // first switch's name step, or the one queued after a segment made
        // inline.
        for late_is_the_switchs in [true, false] {
            let fs = SimulatedFs::new();
            fs.set_defer_background(true);
            let mut log = new_log(&fs);
            fs.run_background();
            let record = |seq: i64| Bytes::from(vec![seq as u8; 300]);
            let append_one = |log: &mut FileLog, seq: i64| {
                assert_eq!(log.append(1, record(seq)).unwrap(), seq);
                log.flush().unwrap();
            };
            // A switch to the spare, whose name step (and next spare) wait.
            append_one(&mut log, 0);
            log.seal_active().unwrap();
            // No spare: made inline, after the waiting steps; a spare queued.
            append_one(&mut log, 1);
            // One of the two queued preparations makes the spare.
            assert!(fs.run_one_background(late_is_the_switchs));
            log.seal_active().unwrap();
            // A second switch, to that spare, before the other preparation
            // has run.
            append_one(&mut log, 2);
            fs.run_background();
            let read = log.read(0, limits(3)).unwrap();
            assert_eq!(read.len(), 3);
            for m in read {
                assert_eq!(m.payload, record(m.sequence_number));
            }
            append_one(&mut log, 3);
            drop(log);
            let (log, _) = reopen(&fs, RecoveryMode::default()).unwrap();
            assert_eq!(log.read(0, limits(4)).unwrap().len(), 4);
        }
    }

    #[test]
    fn a_failed_write_that_cannot_be_cut_back_stops_writes() {
        let fs = SimulatedFs::new();
        let mut log = new_log(&fs);
        append(&mut log, 1);
        fs.set_space_left(Some(10));
        log.append(1, Bytes::from_static(b"does not fit")).unwrap();
        let failed = log.flush();
        assert!(
            matches!(&failed, Err(e @ StorageError::Io { op: StorageOp::WriteRecords, .. }) if !e.stops_writes()),
            "a failed write alone is cut back: {failed:?}"
        );
        fs.set_fail_set_len(true);
        log.append(1, Bytes::from_static(b"does not fit")).unwrap();
        match log.flush() {
            Err(e @ StorageError::CutBack { .. }) => {
                assert!(e.stops_writes());
                assert_eq!(
                    e.io_error().unwrap().raw_os_error(),
                    Some(28),
                    "ENOSPC kept"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failed_fsyncs_in_recovery_stop_writes() {
        let fs = SimulatedFs::new();
        let mut log = new_log(&fs);
        append(&mut log, 3);
        // The newest segment's unsynced tail.
        fs.set_fail_sync(true);
        assert_failed_sync(
            reopen(&fs, RecoveryMode::default()),
            StorageOp::RecoverSegment,
        );
        // A torn tail's cut.
        let segment = dir().join(format::segment_name(0));
        let bytes = fs.contents(&segment).unwrap();
        fs.put(&segment, &bytes[..bytes.len() - 2]);
        assert_failed_sync(
            reopen(&fs, RecoveryMode::default()),
            StorageOp::RecoverSegment,
        );
        // An older segment never sealed (its sealed index lost) is sealed
        // at start-up.
        fs.set_fail_sync(false);
        let mut log = reopen(&fs, RecoveryMode::default()).unwrap().0;
        log.seal_active().unwrap();
        let mut next = FileLog::empty(Arc::new(fs.clone()), dir());
        next.floor = i64::MAX;
        next.next_seq = log.next_seq;
        next.append(1, Bytes::from_static(b"m")).unwrap();
        next.flush().unwrap();
        fs.put(&dir().join(format::index_name(0)), b"");
        fs.set_fail_sync(true);
        assert_failed_sync(reopen(&fs, RecoveryMode::default()), StorageOp::SealSegment);
    }

    #[test]
    fn a_strict_recovery_mode_refuses_damage_the_tolerant_one_marks() {
        let fs = SimulatedFs::new();
        let mut log = new_log(&fs);
        append(&mut log, 3);
        log.seal_active().unwrap();
        append(&mut log, 1);
        // The second record of the sealed segment fails its checksum.
        let segment = dir().join(format::segment_name(0));
        let record = format::RECORD_HEADER_LEN + 7;
        fs.flip_bit(&segment, 32 + record + 25, 0);
        fs.put(&dir().join(format::index_name(0)), b"");
        let (log, report) = reopen(&fs, RecoveryMode::TolerateAnyCorruption).unwrap();
        assert!(report
            .findings
            .iter()
            .any(|f| f.damage == Damage::DamagedRecords { from: 1, to: 2 }
                && f.remedy == Remedy::MarkDamaged));
        assert!(log.read(1, limits(1)).is_err());
        assert_eq!(log.read(2, limits(2)).unwrap().len(), 2);
        drop(log);
        assert!(matches!(
            reopen(&fs, RecoveryMode::TolerateTailCorruption),
            Err(StorageError::Corrupt(_))
        ));
    }

    fn limits(max_count: usize) -> ReadLimits {
        ReadLimits {
            max_count,
            max_bytes: 1 << 20,
            name_len: 1,
        }
    }
}
