//! The reference model of the store: per stream a definition, whole
//! segments of messages, the next sequence number, and how far the stream
//! is known to be durable. Deliberately naive (vectors, linear scans) so
//! that it is obviously right; `tests/model_based.rs` runs it beside the
//! real store and compares every answer.

use bytes::Bytes;
use std::collections::BTreeMap;
use weir::protocol::model::{MessageStreamDefinition, Persistence, StrategyOnFull};
use weir::store::log::{ReadLimits, SegmentInfo, RECORD_OVERHEAD};
use weir::store::retention;

#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    pub seq: i64,
    pub ingest_time: i64,
    pub payload: Bytes,
}

/// Payloads are long: show their length and a checksum.
impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} @{} {}B crc {:08x}",
            self.seq,
            self.ingest_time,
            self.payload.len(),
            crc32c::crc32c(&self.payload)
        )
    }
}

impl Msg {
    pub fn bytes(&self) -> u64 {
        self.payload.len() as u64 + RECORD_OVERHEAD
    }
}

#[derive(Clone, Debug)]
pub struct Seg {
    pub msgs: Vec<Msg>,
    pub sealed: bool,
}

impl Seg {
    pub fn bytes(&self) -> u64 {
        self.msgs.iter().map(Msg::bytes).sum()
    }
    pub fn first(&self) -> i64 {
        self.msgs[0].seq
    }
    pub fn newest_ingest_time(&self) -> i64 {
        self.msgs
            .iter()
            .map(|m| m.ingest_time)
            .max()
            .expect("model segments are never empty")
    }
    /// The segment as retention sees it.
    pub fn info(&self) -> SegmentInfo {
        SegmentInfo {
            first_sequence_number: self.first(),
            next_sequence_number: self.msgs.last().expect("not empty").seq + 1,
            bytes: self.bytes(),
            newest_ingest_time: self.newest_ingest_time(),
            sealed: self.sealed,
        }
    }
}

#[derive(Clone, Debug)]
pub struct MStream {
    pub def: MessageStreamDefinition,
    /// Oldest first; a model segment always holds at least one message.
    pub segments: Vec<Seg>,
    pub next: i64,
    /// Kept in files (a `File` stream of a store opened on a folder).
    pub on_disk: bool,
    /// Every message below this sequence number was promised durable: a
    /// flushOnWrite append whose `durable` returned, or one covered by a
    /// completed `sync_all`.
    pub durable_next: i64,
    /// Every message below this was written to the OS (a confirmed append,
    /// or one covered by a sync): it survives weir stopping.
    pub written_next: i64,
    /// The next sequence number when the store was opened or last synced
    /// this stream (for tolerating `sync-after-restart`).
    pub synced_watermark: i64,
    /// Every message the store accepted, by sequence number (the latest
    /// one for a number given back by a failed write and reused).
    pub history: BTreeMap<i64, Msg>,
    /// A failed fsync stopped the stream's writes: appends answer
    /// `WritesStopped` until weir restarts.
    pub stopped: bool,
    /// A `sync_all` failed while this stream may have had something to
    /// sync (its result is only logged): it may be stopped.
    pub maybe_stopped: bool,
    /// A storage failure hit the stream since the store was opened: the
    /// model took its contents and segments from the store.
    pub adopted: bool,
    /// A delete of the stream failed (for tolerating `delete`).
    pub delete_failed: bool,
}

/// Known defects the model can be told to accept while exploring for
/// others, as a comma-separated `WEIR_MODEL_TOLERATE`; by default the model
/// is strict and the test fails on them:
/// * `resurrect`: segments removed by retention come back after a power
///   cut (the model takes them back);
/// * `sync-after-restart`: `sync_all` does not sync what the store loaded;
/// * `read-sweep`: reads and describes remove expired segments, and fail
///   when that cannot be written (the test makes no segment expire while
///   the file system fails);
/// * `sync-stops`: a failed fsync outside the data sync does not stop the
///   stream's writes;
/// * `delete`: a failed delete is finished at the next start, and cannot
///   be retried before.
/// * `full-start`: a store started on a full disk skips newest segments
///   (the test does not start one on a full disk).
pub fn tolerates(defect: &str) -> bool {
    std::env::var("WEIR_MODEL_TOLERATE").is_ok_and(|v| v.split(',').any(|d| d == defect))
}

/// A model error, by the variant the store must answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MErr {
    NotFound,
    AlreadyExists,
    Full,
    MessageTooLarge {
        bytes: u64,
        max_size: u64,
    },
    NotEnoughMessages {
        start: i64,
        available: i64,
        min: i64,
    },
    ResponseTooLarge,
    PersistenceChange,
    ShrinkBelowSize {
        current: u64,
    },
}

/// What a non-waiting read answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MRead {
    Messages(Vec<Msg>),
    /// `Ok(None)`: fewer than min, and the read would wait.
    WouldWait,
}

/// Storage status as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MStatus {
    pub oldest: i64,
    pub newest: i64,
    pub total_bytes: i64,
}

impl MStream {
    pub fn new(def: MessageStreamDefinition, on_disk: bool) -> Self {
        MStream {
            def,
            segments: Vec::new(),
            next: 0,
            on_disk,
            durable_next: 0,
            written_next: 0,
            synced_watermark: 0,
            history: BTreeMap::new(),
            stopped: false,
            maybe_stopped: false,
            adopted: false,
            delete_failed: false,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(Seg::bytes).sum()
    }

    fn is_expired(&self, seg: &Seg, now: i64) -> bool {
        retention::expired(&seg.info(), self.def.time_to_live_millis, now)
    }

    /// Whether some segment still held has outlived the TTL (the store may
    /// or may not have removed it yet; it must never be read).
    pub fn has_expired(&self, now: i64) -> bool {
        self.segments.iter().any(|s| self.is_expired(s, now))
    }

    /// Removes expired segments, oldest first (what appends and
    /// `enforce_retention` do).
    pub fn expire(&mut self, now: i64) {
        while self
            .segments
            .first()
            .is_some_and(|s| self.is_expired(s, now))
        {
            self.segments.remove(0);
        }
    }

    /// The segments a reader may see: none that has expired.
    fn visible(&self, now: i64) -> &[Seg] {
        let expired = self
            .segments
            .iter()
            .take_while(|s| self.is_expired(s, now))
            .count();
        &self.segments[expired..]
    }

    fn oldest_of(segments: &[Seg], next: i64) -> i64 {
        segments.first().map_or(next, Seg::first)
    }

    /// Storage status with expired segments still counted (`held`) and with
    /// them removed (`swept`); the store may show either until retention
    /// runs, as TTL removal "is not guaranteed to be immediate".
    pub fn statuses(&self, now: i64) -> (MStatus, MStatus) {
        let status = |segments: &[Seg]| MStatus {
            oldest: Self::oldest_of(segments, self.next),
            newest: self.next - 1,
            total_bytes: segments.iter().map(Seg::bytes).sum::<u64>() as i64,
        };
        (status(&self.segments), status(self.visible(now)))
    }

    pub fn append(&mut self, payload: Bytes, now: i64) -> Result<i64, MErr> {
        let record = payload.len() as u64 + RECORD_OVERHEAD;
        let max_size = self.def.max_size as u64;
        self.expire(now);
        loop {
            if record > max_size {
                return Err(MErr::MessageTooLarge {
                    bytes: record,
                    max_size,
                });
            }
            if self.total_bytes() + record <= max_size {
                break;
            }
            match self.def.strategy_on_full {
                StrategyOnFull::RejectNewData => return Err(MErr::Full),
                StrategyOnFull::OverwriteOldestData => {
                    self.segments.remove(0);
                }
            }
        }
        let segment_size = self.def.stream_segment_size as u64;
        if let Some(active) = self.segments.last_mut().filter(|s| !s.sealed) {
            if retention::seal_before_append(&active.info(), record, segment_size) {
                active.sealed = true;
            }
        }
        let seq = self.next;
        let msg = Msg {
            seq,
            ingest_time: now,
            payload,
        };
        self.history.insert(seq, msg.clone());
        match self.segments.last_mut().filter(|s| !s.sealed) {
            Some(active) => active.msgs.push(msg),
            None => self.segments.push(Seg {
                msgs: vec![msg],
                sealed: false,
            }),
        }
        self.next += 1;
        Ok(seq)
    }

    /// `try_read` with its options and the store's response budget.
    pub fn read(
        &self,
        start: i64,
        min: i64,
        max: i64,
        timeout: i64,
        now: i64,
        max_read_bytes: usize,
    ) -> Result<MRead, MErr> {
        let visible = self.visible(now);
        let start = start.max(Self::oldest_of(visible, self.next));
        let available = (self.next - start).max(0);
        if available < min {
            return if timeout == 0 {
                Err(MErr::NotEnoughMessages {
                    start,
                    available,
                    min,
                })
            } else {
                Ok(MRead::WouldWait)
            };
        }
        let max_count = max.min(available) as usize;
        let limits = ReadLimits {
            max_count,
            max_bytes: max_read_bytes,
            name_len: self.def.name.len(),
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for msg in visible
            .iter()
            .flat_map(|s| &s.msgs)
            .filter(|m| m.seq >= start)
        {
            let cost = limits.cost(msg.payload.len());
            if out.len() == max_count || (!out.is_empty() && bytes + cost > max_read_bytes) {
                break;
            }
            bytes += cost;
            out.push(msg.clone());
        }
        if (out.len() as i64) < min {
            return Err(MErr::ResponseTooLarge);
        }
        Ok(MRead::Messages(out))
    }

    /// The segments a reader may see, as (first sequence number, sealed).
    pub fn visible_segments(&self, now: i64) -> Vec<(i64, bool)> {
        self.visible(now)
            .iter()
            .map(|s| (s.first(), s.sealed))
            .collect()
    }

    /// Every message a reader may see, oldest first.
    pub fn visible_messages(&self, now: i64) -> Vec<Msg> {
        self.visible(now)
            .iter()
            .flat_map(|s| s.msgs.iter().cloned())
            .collect()
    }

    /// `update`: persistence is fixed, maxSize may not drop below what is
    /// held; anything else may change.
    pub fn update(&mut self, def: MessageStreamDefinition) -> Result<(), MErr> {
        if def.persistence != self.def.persistence {
            return Err(MErr::PersistenceChange);
        }
        let current = self.total_bytes();
        if (def.max_size as u64) < current {
            return Err(MErr::ShrinkBelowSize { current });
        }
        self.def = def;
        Ok(())
    }

    /// After weir stopped (and maybe the power was cut) the stream holds
    /// messages below `survived_next` only: the rest is gone, and the
    /// segment it was cut in is the active one again.
    pub fn cut_to(&mut self, survived_next: i64, power_cut: bool) {
        for seg in &mut self.segments {
            let before = seg.msgs.len();
            seg.msgs.retain(|m| m.seq < survived_next);
            if seg.msgs.len() < before {
                seg.sealed = false;
            }
        }
        self.segments.retain(|s| !s.msgs.is_empty());
        self.next = survived_next;
        self.written_next = survived_next;
        self.durable_next = if power_cut {
            // What a power cut leaves is on the disk itself.
            survived_next
        } else {
            self.durable_next.min(survived_next)
        };
        self.synced_watermark = survived_next;
    }
}

impl MStream {
    /// Takes the stream's state from the store after a storage failure
    /// left it somewhere the model cannot tell: `disk` are its segments
    /// (first sequence number, sealed), `next` its next sequence number.
    /// Every message must be one the store accepted.
    pub fn adopt(&mut self, disk: &[(i64, bool)], next: i64) {
        let mut segments = Vec::new();
        for (i, &(first, sealed)) in disk.iter().enumerate() {
            let end = disk.get(i + 1).map_or(next, |s| s.0);
            let msgs: Vec<Msg> = (first..end)
                .map(|seq| {
                    self.history.get(&seq).cloned().unwrap_or_else(|| {
                        panic!("{}: message {seq} was never accepted", self.def.name)
                    })
                })
                .collect();
            if !msgs.is_empty() {
                segments.push(Seg { msgs, sealed });
            }
        }
        self.segments = segments;
        self.next = next;
        self.adopted = true;
    }

    /// Takes back, as sealed segments starting at `firsts`, messages older
    /// than the model's oldest that the store shows again.
    pub fn adopt_older(&mut self, older: Vec<Msg>, firsts: &[i64]) {
        let mut segments: Vec<Seg> = Vec::new();
        for msg in older {
            if segments.is_empty() || firsts.contains(&msg.seq) {
                segments.push(Seg {
                    msgs: Vec::new(),
                    sealed: true,
                });
            }
            segments.last_mut().expect("pushed").msgs.push(msg);
        }
        segments.append(&mut self.segments);
        self.segments = segments;
    }
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    pub streams: BTreeMap<String, MStream>,
    /// A store without a folder (`Store::new`): every stream in memory.
    pub in_memory: bool,
}

impl Model {
    pub fn create(&mut self, def: MessageStreamDefinition) -> Result<(), MErr> {
        if self.streams.contains_key(&def.name) {
            return Err(MErr::AlreadyExists);
        }
        let on_disk = !self.in_memory && def.persistence == Persistence::File;
        self.streams
            .insert(def.name.clone(), MStream::new(def, on_disk));
        Ok(())
    }

    pub fn get(&mut self, name: &str) -> Result<&mut MStream, MErr> {
        self.streams.get_mut(name).ok_or(MErr::NotFound)
    }

    pub fn delete(&mut self, name: &str) -> Result<(), MErr> {
        self.streams.remove(name).map(drop).ok_or(MErr::NotFound)
    }

    pub fn list(&self) -> Vec<String> {
        self.streams.keys().cloned().collect()
    }

    pub fn enforce_retention(&mut self, now: i64) {
        for stream in self.streams.values_mut() {
            stream.expire(now);
        }
    }

    /// A completed `sync_all` makes everything appended to a stream on disk
    /// durable.
    pub fn sync_all(&mut self) {
        // A stream whose writes a failed fsync stopped is not synced again:
        // after a failed fsync the page cache cannot be trusted.
        let synced = |s: &&mut MStream| s.on_disk && !s.stopped && !s.maybe_stopped;
        for stream in self.streams.values_mut().filter(synced) {
            if tolerates("sync-after-restart") && stream.synced_watermark >= stream.next {
                // The store believes everything it loaded is synced.
                continue;
            }
            stream.written_next = stream.next;
            stream.durable_next = stream.next;
            stream.synced_watermark = stream.next;
        }
    }

    /// weir restarts: memory streams are gone, file streams keep everything
    /// that was written (confirmed).
    pub fn restart(&mut self) {
        self.streams.retain(|_, s| s.on_disk);
        for stream in self.streams.values_mut() {
            stream.synced_watermark = stream.next;
            stream.stopped = false;
            stream.maybe_stopped = false;
        }
    }
}
