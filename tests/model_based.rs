//! Model-based test of the store: random sequences of create, append
//! (confirmed or not), read, describe, update, delete, list, clock advance
//! and retention, sync, restart, power cut (clean or torn) and storage
//! faults (failing fsync, full disk) run against the file log on
//! `SimulatedFs` and against the simple model of `tests/model/mod.rs`.
//! Every answer must agree: sequence numbers, errors by variant, read
//! results byte for byte, storage status, list, and where File streams'
//! segments start. What may differ is only what the store does not
//! promise: an unconfirmed append may be lost when weir stops, a power cut
//! may lose what was never made durable, an expired segment may still be
//! counted until retention runs. After a storage failure the model takes
//! the stream's state from the store, checking that no written message is
//! gone and nothing appears that the store never accepted.
//!
//! The tests after the property are the smallest sequences found for
//! each defect, all fixed since; each one's doc says what the store did
//! when it was found (the cause named is the code as it was then). While a
//! defect is being fixed, the model can be told to
//! accept it and look for others: `WEIR_MODEL_TOLERATE=` a comma-separated
//! list of `resurrect`, `sync-after-restart`, `read-sweep`, `sync-stops`,
//! `delete`, `full-start` (see `model::tolerates`). By default it accepts
//! none.

mod model;

mod rng;
use bytes::Bytes;
use model::{MErr, MRead, MStatus, Model, Msg};
use proptest::prelude::*;
use rng::Rng;
use std::path::Path;
use std::sync::Arc;
use weir::clock::ManualClock;
use weir::protocol::model::{
    MessageStreamDefinition, Persistence, ReadMessagesOptions, StrategyOnFull,
};
use weir::store::disk::encode_name;
use weir::store::file::format::{
    decode_sealed_index, decode_segment_header, parse_name, SEGMENT_HEADER_LEN, SPARE_FILE,
    UNUSED_SPARE,
};
use weir::store::simfs::SimulatedFs;
use weir::store::{Store, StoreError, StoreLimits};

const ROOT: &str = "/store";
const T0: i64 = 1_700_000_000_000;
/// Small enough that reads are cut by the response budget.
const MAX_READ_BYTES: usize = 1_500;
const NAMES: [&str; 3] = ["alpha", "beta", "g a.log"];

#[derive(Clone, Debug)]
enum Change {
    MaxSize(i64),
    SegmentSize(i64),
    Strategy(StrategyOnFull),
    Ttl(Option<i64>),
    FlushOnWrite(bool),
    /// Refused: persistence is fixed.
    Persistence,
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        stream: usize,
        file: bool,
        flush: bool,
        segment: i64,
        max_size: i64,
        overwrite: bool,
        ttl: Option<i64>,
    },
    /// Appends `lens.len()` messages, then confirms each (one batch of a
    /// connection), then waits for durability on a flushOnWrite stream.
    Append {
        stream: usize,
        lens: Vec<usize>,
        confirm: bool,
    },
    /// `try_read`, or with `wait` the long-polling `read` (on tokio's
    /// paused clock: a short read answers at its timeout, no later).
    Read {
        stream: usize,
        start: i64,
        min: i64,
        extra: i64,
        timeout: i64,
        wait: bool,
    },
    Describe {
        stream: usize,
    },
    Update {
        stream: usize,
        change: Change,
    },
    Delete {
        stream: usize,
    },
    List,
    /// Moves the clock; with `sweep`, runs `enforce_retention` too.
    Advance {
        millis: i64,
        sweep: bool,
    },
    SyncAll,
    /// Drops the store and opens it again on the same files; with `sync`,
    /// after a `sync_all` (a clean stop), else as after weir crashed. With
    /// `full_disk`, no space is left when it starts (and after).
    Restart {
        sync: bool,
        full_disk: bool,
    },
    /// Drops the store, cuts the power and opens the store again. Every
    /// unsynced byte is lost; with `tear`, a random prefix of each file's
    /// unsynced bytes reaches the disk anyway (a torn write).
    PowerCut {
        tear: Option<u64>,
    },
    /// Every fsync fails from now on (or works again).
    FailSync(bool),
    /// Writes that would add more than this many bytes fail ("no space
    /// left"); `None` lifts the limit.
    SpaceLeft(Option<u64>),
}

fn create() -> impl Strategy<Value = Op> {
    let stream = 0..NAMES.len();
    (
        stream.clone(),
        prop::bool::weighted(0.75),
        any::<bool>(),
        // Segments over 4096 bytes get more than one index entry.
        prop::sample::select(vec![1024i64, 1500, 2048, 4096, 16384]),
        prop::sample::select(vec![1024i64, 2048, 4096, 8192, 65536]),
        any::<bool>(),
        prop::sample::select(vec![None, None, Some(60_000i64), Some(120_000)]),
    )
        .prop_map(
            |(stream, file, flush, segment, max_size, overwrite, ttl)| Op::Create {
                stream,
                file,
                flush,
                segment,
                max_size,
                overwrite,
                ttl,
            },
        )
}

/// A case: the streams created (most operations need one), then anything.
fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    (
        prop::collection::vec(create(), 0..=NAMES.len()),
        prop::collection::vec(op_strategy(), 1..80),
    )
        .prop_map(|(mut creates, ops)| {
            for (i, op) in creates.iter_mut().enumerate() {
                if let Op::Create { stream, .. } = op {
                    *stream = i;
                }
            }
            creates.extend(ops);
            creates
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let stream = 0..NAMES.len();
    let change = prop_oneof![
        prop::sample::select(vec![1024i64, 2048, 4096, 8192, 16384, 65536])
            .prop_map(Change::MaxSize),
        prop::sample::select(vec![1024i64, 1500, 2048, 4096, 16384]).prop_map(Change::SegmentSize),
        prop::sample::select(vec![
            StrategyOnFull::RejectNewData,
            StrategyOnFull::OverwriteOldestData
        ])
        .prop_map(Change::Strategy),
        prop::sample::select(vec![None, Some(60_000i64), Some(120_000), Some(600_000)])
            .prop_map(Change::Ttl),
        any::<bool>().prop_map(Change::FlushOnWrite),
        Just(Change::Persistence),
    ];
    let len = prop_oneof![9 => 1usize..600, 1 => 1000usize..2100];
    prop_oneof![
        4 => create(),
        10 => (stream.clone(), prop::collection::vec(len.clone(), 1..4), prop::bool::weighted(0.85))
            .prop_map(|(stream, lens, confirm)| Op::Append { stream, lens, confirm }),
        2 => (stream.clone(), prop::collection::vec(len, 10..40), prop::bool::weighted(0.85))
            .prop_map(|(stream, lens, confirm)| Op::Append { stream, lens, confirm }),
        4 => (
            stream.clone(),
            0i64..200,
            0i64..5,
            0i64..6,
            prop::sample::select(vec![0i64, 10, 5_000]),
            any::<bool>()
        )
            .prop_map(|(stream, start, min, extra, timeout, wait)| Op::Read {
                stream,
                start,
                min,
                extra,
                timeout,
                wait
            }),
        2 => stream.clone().prop_map(|stream| Op::Describe { stream }),
        2 => (stream.clone(), change).prop_map(|(stream, change)| Op::Update { stream, change }),
        1 => stream.clone().prop_map(|stream| Op::Delete { stream }),
        1 => Just(Op::List),
        2 => (prop::sample::select(vec![10_000i64, 30_000, 60_000, 90_000]), any::<bool>())
            .prop_map(|(millis, sweep)| Op::Advance { millis, sweep }),
        1 => Just(Op::SyncAll),
        1 => (any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(sync, full_disk)| Op::Restart { sync, full_disk }),
        1 => prop::option::of(any::<u64>()).prop_map(|tear| Op::PowerCut { tear }),
        1 => any::<bool>().prop_map(Op::FailSync),
        1 => prop::sample::select(vec![Some(0u64), Some(300), Some(2_000), Some(6_000), None])
            .prop_map(Op::SpaceLeft),
    ]
}

/// The real store and the model, side by side.
struct Harness {
    fs: SimulatedFs,
    clock: Arc<ManualClock>,
    store: Option<Store>,
    model: Model,
    /// Makes every payload different.
    payloads: u64,
    /// Faults of the file system now.
    fail_sync: bool,
    space_limited: bool,
    /// Streams whose delete answered a storage failure after its commit
    /// point: gone, but a power cut before the folder sync may bring them
    /// back (as they were when deleted) at the next start.
    ghosts: std::collections::BTreeMap<String, model::MStream>,
}

/// An error a storage failure may cause (instead of the model's answer).
fn is_storage_failure(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Write(_) | StoreError::WritesStopped { .. } | StoreError::AppendFailed { .. }
    )
}

fn open(fs: &SimulatedFs, clock: &Arc<ManualClock>) -> Store {
    Store::open(
        Arc::new(fs.clone()),
        Path::new(ROOT),
        clock.clone(),
        StoreLimits {
            max_read_bytes: MAX_READ_BYTES,
        },
    )
    .expect("the store opens")
}

fn open_store(fs: &SimulatedFs, clock: &Arc<ManualClock>, in_memory: bool) -> Store {
    if in_memory {
        let limits = StoreLimits {
            max_read_bytes: MAX_READ_BYTES,
        };
        Store::new(clock.clone(), limits)
    } else {
        open(fs, clock)
    }
}

/// The model's view of a store error; `None` for errors the model never
/// expects (storage failures), which fail the test with the error shown.
fn as_model_error(e: &StoreError) -> Option<MErr> {
    Some(match e {
        StoreError::NotFound(_) => MErr::NotFound,
        StoreError::AlreadyExists(_) => MErr::AlreadyExists,
        StoreError::Full { .. } => MErr::Full,
        StoreError::MessageTooLarge {
            bytes, max_size, ..
        } => MErr::MessageTooLarge {
            bytes: *bytes,
            max_size: *max_size,
        },
        StoreError::NotEnoughMessages {
            start,
            available,
            min,
        } => MErr::NotEnoughMessages {
            start: *start,
            available: *available,
            min: *min,
        },
        StoreError::ResponseTooLarge { .. } => MErr::ResponseTooLarge,
        StoreError::PersistenceChange(_) => MErr::PersistenceChange,
        StoreError::ShrinkBelowSize { current, .. } => MErr::ShrinkBelowSize { current: *current },
        _ => return None,
    })
}

fn same_error<T: std::fmt::Debug>(what: &str, got: Result<T, StoreError>, expected: &MErr) {
    match got {
        Err(e) => assert_eq!(
            as_model_error(&e).as_ref(),
            Some(expected),
            "{what}: got error {e:?}"
        ),
        Ok(v) => panic!("{what}: expected {expected:?}, got Ok({v:?})"),
    }
}

fn messages(got: Vec<weir::protocol::model::Message>) -> Vec<Msg> {
    got.into_iter()
        .map(|m| Msg {
            seq: m.sequence_number,
            ingest_time: m.ingest_time,
            payload: m.payload,
        })
        .collect()
}

impl Harness {
    /// `in_memory`: a store made by `Store::new`, every stream in memory.
    fn new(in_memory: bool) -> Self {
        let fs = SimulatedFs::new();
        let clock = Arc::new(ManualClock::new(T0));
        let store = open_store(&fs, &clock, in_memory);
        Harness {
            fs,
            clock,
            store: Some(store),
            model: Model {
                in_memory,
                ..Model::default()
            },
            payloads: 0,
            fail_sync: false,
            space_limited: false,
            ghosts: Default::default(),
        }
    }

    /// Whether storage failures may hit stream `name` now: it is on disk
    /// and the file system fails.
    fn faulty(&self, name: &str) -> bool {
        (self.fail_sync || self.space_limited)
            && self.model.streams.get(name).is_some_and(|s| s.on_disk)
    }

    /// Stream `name` answered a storage failure: a failed fsync (the only
    /// failure while only syncs fail) stops its writes.
    fn storage_failed(&mut self, name: &str, e: &StoreError) {
        let (fail_sync, space_limited) = (self.fail_sync, self.space_limited);
        let stream = self.model.get(name).expect("exists");
        let stopped = matches!(e, StoreError::WritesStopped { .. });
        if stopped || (fail_sync && !space_limited && !model::tolerates("sync-stops")) {
            stream.stopped = true;
        } else if fail_sync {
            stream.maybe_stopped = true;
        }
    }

    /// After a storage failure the model takes the stream's state from the
    /// store, checking that no written message is gone and every message
    /// is one the store accepted.
    fn adopt(&mut self, name: &str, what: &str) {
        let info = self
            .store()
            .describe(name)
            .unwrap_or_else(|e| panic!("{what}: describe {name}: {e:?}"));
        assert_eq!(
            info.definition, self.model.streams[name].def,
            "{what}: definition"
        );
        let next = info.storage_status.newest_sequence_number + 1;
        // The segments as the store holds them: after a failed step they
        // may differ from what the files say (a segment sealed in memory
        // whose footer could not be written), and the store goes on from
        // what it holds.
        let disk: Vec<(i64, bool)> = self
            .store()
            .segments(name)
            .unwrap_or_else(|e| panic!("{what}: segments of {name}: {e:?}"))
            .into_iter()
            .filter(|s| s.first_sequence_number < next)
            .map(|s| (s.first_sequence_number, s.sealed))
            .collect();
        let now = self.now();
        let stream = self.model.get(name).expect("exists");
        // The model has done all the operation would have: the store may
        // have removed less (it failed half-way), never more.
        let oldest_allowed = stream.statuses(now).1.oldest;
        let oldest = disk.first().map_or(next, |s| s.0);
        assert!(
            oldest <= oldest_allowed,
            "{what}: {name} lost messages {oldest_allowed}..{oldest} that retention would have kept"
        );
        assert!(
            next >= stream.written_next,
            "{what}: {name} lost written messages: its next sequence number is {next}, {} were written",
            stream.written_next
        );
        stream.adopt(&disk, next);
        let expected = self.model.streams[name].visible_messages(now);
        assert_eq!(
            self.read_everything(name),
            expected,
            "{what}: {name} after a storage failure"
        );
    }

    fn adopt_all(&mut self, what: &str) {
        let names: Vec<String> = self
            .model
            .streams
            .keys()
            .filter(|n| self.faulty(n))
            .cloned()
            .collect();
        for name in &names {
            self.adopt(name, what);
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("open between operations")
    }

    fn now(&self) -> i64 {
        self.store().now_millis()
    }

    fn payload(&mut self, len: usize) -> Bytes {
        self.payloads += 1;
        let n = self.payloads;
        Bytes::from(
            (0..len)
                .map(|i| (n.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
                .collect::<Vec<u8>>(),
        )
    }

    async fn run(&mut self, op: &Op) {
        match op {
            Op::Create {
                stream,
                file,
                flush,
                segment,
                max_size,
                overwrite,
                ttl,
            } => {
                let def = MessageStreamDefinition {
                    max_size: *max_size,
                    stream_segment_size: *segment,
                    time_to_live_millis: *ttl,
                    strategy_on_full: if *overwrite {
                        StrategyOnFull::OverwriteOldestData
                    } else {
                        StrategyOnFull::RejectNewData
                    },
                    persistence: if *file {
                        Persistence::File
                    } else {
                        Persistence::Memory
                    },
                    flush_on_write: *flush,
                    ..MessageStreamDefinition::with_defaults(NAMES[*stream].into())
                };
                let name = def.name.clone();
                let on_disk = def.persistence == Persistence::File;
                let got = self.store().create(def.clone());
                match self.model.create(def) {
                    Ok(()) => match got {
                        Err(e) if on_disk && self.faulty(&name) && is_storage_failure(&e) => {
                            // A create that fails leaves no stream.
                            self.model.delete(&name).expect("just created");
                            assert!(
                                !self.store().list().contains(&name),
                                "a failed create of {name} left it listed"
                            );
                        }
                        got => {
                            got.expect("create");
                            // A File stream of the name finishes a delete
                            // left half done; a Memory one leaves its
                            // folder as it is.
                            if on_disk {
                                self.ghosts.remove(&name);
                            }
                        }
                    },
                    Err(e) => same_error("create", got, &e),
                }
            }
            Op::Append {
                stream,
                lens,
                confirm,
            } => self.append(NAMES[*stream], lens, *confirm).await,
            Op::Read {
                stream,
                start,
                min,
                extra,
                timeout,
                wait,
            } => {
                let name = NAMES[*stream];
                let options = ReadMessagesOptions {
                    desired_start_sequence_number: *start,
                    min_message_count: *min,
                    max_message_count: min + extra,
                    read_timeout_millis: *timeout,
                };
                let now = self.now();
                let started = tokio::time::Instant::now();
                let got = if *wait {
                    self.store().read(name, options).await.map(Some)
                } else {
                    self.store().try_read(name, &options)
                };
                let waited = started.elapsed().as_millis() as i64;
                if self.faulty(name) {
                    // Its flush may have failed and given numbers back.
                    self.adopt(name, "before a read");
                }
                let expected = self.model.get(name).and_then(|s| {
                    // A long poll that comes up short answers as a
                    // read that does not wait.
                    let timeout = if *wait { 0 } else { *timeout };
                    s.read(*start, *min, min + extra, timeout, now, MAX_READ_BYTES)
                });
                let what = format!("read {name} {options:?} (wait: {wait})");
                let short = matches!(expected, Err(MErr::NotEnoughMessages { .. }));
                let expected_wait = if *wait && short { *timeout } else { 0 };
                assert_eq!(waited, expected_wait, "{what}: answered after {waited} ms");
                match expected {
                    Ok(MRead::WouldWait) => {
                        assert!(
                            matches!(got, Ok(None)),
                            "{what}: expected to wait, got {got:?}"
                        )
                    }
                    Ok(MRead::Messages(expected)) => {
                        let got = got.unwrap_or_else(|e| panic!("{what}: {e:?}"));
                        let got = got.unwrap_or_else(|| panic!("{what}: would wait"));
                        assert_eq!(messages(got), expected, "{what}");
                    }
                    Err(e) => same_error(&what, got, &e),
                }
            }
            Op::Describe { stream } => self.describe(NAMES[*stream]),
            Op::Update { stream, change } => self.update(NAMES[*stream], change),
            Op::Delete { stream } => {
                let name = NAMES[*stream];
                let faulty = self.faulty(name)
                    || (model::tolerates("delete")
                        && self
                            .model
                            .streams
                            .get(name)
                            .is_some_and(|s| s.delete_failed));
                let got = self.store().delete(name);
                match got {
                    Err(e) if faulty && is_storage_failure(&e) => {
                        // All or nothing: either the commit (the rename)
                        // failed and the stream is whole, or it is gone.
                        if self.store().list().iter().any(|n| n == name) {
                            self.adopt(name, "after a failed delete");
                            self.model.get(name).expect("exists").delete_failed = true;
                        } else {
                            let ghost = self.model.streams.remove(name).expect("exists");
                            self.ghosts.insert(name.to_owned(), ghost);
                        }
                    }
                    got => match self.model.delete(name) {
                        Ok(()) => got.expect("delete"),
                        Err(e) => same_error("delete", got, &e),
                    },
                }
            }
            Op::List => assert_eq!(self.store().list(), self.model.list(), "list"),
            Op::Advance { .. }
                if (self.fail_sync || self.space_limited) && model::tolerates("read-sweep") => {}
            Op::Advance { millis, sweep } => {
                self.clock.advance(*millis);
                if *sweep {
                    self.enforce_retention();
                }
            }
            Op::SyncAll => {
                self.store().sync_all().await;
                if self.fail_sync {
                    // Its failures are only logged: any stream on disk may
                    // have had something to sync, and be stopped now.
                    for stream in self.model.streams.values_mut().filter(|s| s.on_disk) {
                        stream.maybe_stopped = true;
                    }
                    self.adopt_all("after sync_all");
                } else {
                    // A flush may have failed; the syncs worked.
                    self.adopt_all("after sync_all");
                    self.model.sync_all();
                }
            }
            Op::FailSync(_) | Op::SpaceLeft(_)
                if model::tolerates("read-sweep") && !(self.fail_sync || self.space_limited) =>
            {
                // No expired segment left for a read to remove, nor
                // waiting appends whose failed write could make one.
                for name in self.model.list() {
                    self.store().describe(&name).expect("described");
                }
                self.enforce_retention();
                self.set_fault(op);
            }
            Op::FailSync(_) | Op::SpaceLeft(_) => self.set_fault(op),
            Op::Restart { sync, full_disk } => {
                self.clear_faults();
                if *sync {
                    self.store().sync_all().await;
                    self.model.sync_all();
                }
                if *full_disk && !model::tolerates("full-start") {
                    // Starting needs no space: recovery only reads (or
                    // cuts a torn tail).
                    self.set_fault(&Op::SpaceLeft(Some(0)));
                }
                self.reopen(None);
            }
            Op::PowerCut { tear } => {
                self.clear_faults();
                self.reopen(Some(*tear))
            }
        }
    }

    fn set_fault(&mut self, op: &Op) {
        match op {
            Op::FailSync(fail) => {
                self.fs.set_fail_sync(*fail);
                self.fail_sync = *fail;
            }
            Op::SpaceLeft(bytes) => {
                self.fs.set_space_left(*bytes);
                self.space_limited = bytes.is_some();
            }
            _ => unreachable!("a fault"),
        }
    }

    fn clear_faults(&mut self) {
        self.fs.set_fail_sync(false);
        self.fs.set_space_left(None);
        self.fail_sync = false;
        self.space_limited = false;
    }

    fn enforce_retention(&mut self) {
        let now = self.now();
        let stops = self.fail_sync && !self.space_limited;
        for stream in self.model.streams.values_mut() {
            let removes_active = stream.on_disk
                && stream.segments.first().is_some_and(|s| {
                    !s.sealed
                        && weir::store::retention::expired(
                            &s.info(),
                            stream.def.time_to_live_millis,
                            now,
                        )
                });
            if removes_active && self.fail_sync {
                // Removing the active segment seals (syncs) it first.
                if stops && !model::tolerates("sync-stops") {
                    stream.stopped = true;
                } else {
                    stream.maybe_stopped = true;
                }
            }
        }
        self.store().enforce_retention();
        self.model.enforce_retention(now);
        self.adopt_all("after enforce_retention");
    }

    /// Without `confirm`, the appends are never acknowledged: they may be
    /// lost if weir stops before something else writes them.
    async fn append(&mut self, name: &str, lens: &[usize], confirm: bool) {
        let now = self.now();
        let faulty = self.faulty(name);
        let fail_sync = self.fail_sync;
        let mut tickets = Vec::new();
        for &len in lens {
            let payload = self.payload(len);
            let got = self.store().append(name, payload.clone());
            let what = format!("append of {len} bytes to {name}");
            let Ok(stream) = self.model.get(name) else {
                same_error(&what, got, &MErr::NotFound);
                continue;
            };
            if stream.stopped {
                assert!(
                    matches!(got, Err(StoreError::WritesStopped { .. })),
                    "{what}: a failed fsync stopped the stream's writes, yet the append answered {got:?}"
                );
                continue;
            }
            if stream.maybe_stopped {
                if let Err(StoreError::WritesStopped { .. }) = got {
                    // The append may have made room first (removing old
                    // segments, as its strategy allows) and found the
                    // writes stopped there: the model makes the same room,
                    // then takes the stream's state from the store.
                    stream.append(payload, now).ok();
                    stream.stopped = true;
                    self.adopt(name, &what);
                    continue;
                }
            }
            let expected = stream.append(payload, now);
            match (got, expected) {
                (Ok(appended), Ok(seq)) => {
                    assert_eq!(appended.sequence_number, seq, "{what}: sequence number");
                    assert_eq!(
                        appended.flush,
                        stream.def.flush_on_write && stream.on_disk,
                        "{what}: flush"
                    );
                    // Taken, and yet, while syncs fail, a segment step on
                    // a blocking thread (naming a new segment) may fail an
                    // fsync and stop the writes after this answer.
                    stream.maybe_stopped = fail_sync && stream.on_disk;
                    tickets.push(appended);
                }
                (Err(e), _) if faulty && is_storage_failure(&e) => {
                    self.storage_failed(name, &e);
                    self.adopt(name, &what);
                }
                (got, Ok(seq)) => panic!("{what}: expected sequence number {seq}, got {got:?}"),
                (got, Err(e)) => same_error(&what, got, &e),
            }
        }
        if !confirm || tickets.is_empty() {
            return;
        }
        let mut failed = None;
        for appended in &tickets {
            match self.store().confirm(name, appended.ticket) {
                Ok(()) => {}
                Err(e) if faulty && is_storage_failure(&e) => failed = Some(e),
                Err(e) => panic!("confirm {name} {}: {e:?}", appended.sequence_number),
            }
        }
        if let Some(e) = failed {
            self.storage_failed(name, &e);
            self.adopt(name, &format!("after a failed write to {name}"));
            return;
        }
        // A confirm writes every waiting append of the stream.
        let stream = self.model.get(name).expect("appended to");
        stream.written_next = stream.next;
        for appended in tickets.iter().filter(|a| a.flush) {
            match self.store().durable(name, appended.sequence_number).await {
                Ok(()) => {
                    let stream = self.model.get(name).expect("appended to");
                    stream.durable_next = stream.durable_next.max(appended.sequence_number + 1);
                    stream.synced_watermark = stream.next;
                }
                Err(e) if faulty && is_storage_failure(&e) => {
                    self.storage_failed(name, &e);
                    self.adopt(name, &format!("after a failed sync of {name}"));
                    return;
                }
                Err(e) => panic!("durable {name} {}: {e:?}", appended.sequence_number),
            }
        }
    }

    fn describe(&mut self, name: &str) {
        let now = self.now();
        let got = self.store().describe(name);
        if self.faulty(name) {
            // Its flush may have failed and given numbers back.
            self.adopt(name, "after a describe");
        }
        match self.model.get(name) {
            Ok(stream) => {
                let info = got.unwrap_or_else(|e| panic!("describe {name}: {e:?}"));
                assert_eq!(info.definition, stream.def, "describe {name}: definition");
                assert!(info.export_statuses.is_empty());
                let s = info.storage_status;
                let got = MStatus {
                    oldest: s.oldest_sequence_number,
                    newest: s.newest_sequence_number,
                    total_bytes: s.total_bytes,
                };
                let (held, swept) = stream.statuses(now);
                assert!(
                    got == held || got == swept,
                    "describe {name}: storage status {got:?}, expected {held:?} (or {swept:?} once expired segments are removed)"
                );
            }
            Err(e) => same_error("describe", got, &e),
        }
    }

    fn update(&mut self, name: &str, change: &Change) {
        if (self.fail_sync || self.space_limited)
            && matches!(change, Change::Ttl(_))
            && model::tolerates("read-sweep")
        {
            return;
        }
        let now = self.now();
        let Ok(stream) = self.model.get(name) else {
            let def = MessageStreamDefinition::with_defaults(name.into());
            same_error("update", self.store().update(def), &MErr::NotFound);
            return;
        };
        if stream.has_expired(now) {
            // Whether an update removes expired segments before it checks
            // maxSize is the store's business; sweep first so it does not
            // matter.
            self.enforce_retention();
        }
        let mut def = self.model.get(name).expect("looked up").def.clone();
        match change {
            Change::MaxSize(size) => def.max_size = *size,
            Change::SegmentSize(size) => def.stream_segment_size = *size,
            Change::Strategy(strategy) => def.strategy_on_full = *strategy,
            Change::Ttl(ttl) => def.time_to_live_millis = *ttl,
            Change::FlushOnWrite(flush) => def.flush_on_write = *flush,
            Change::Persistence => {
                def.persistence = match def.persistence {
                    Persistence::File => Persistence::Memory,
                    Persistence::Memory => Persistence::File,
                }
            }
        }
        // Whether a stream whose writes are stopped takes a new definition
        // is left open.
        let faulty = self.faulty(name) || {
            let stream = &self.model.streams[name];
            stream.stopped || stream.maybe_stopped
        };
        let got = self.store().update(def.clone());
        let what = format!("update {name} {change:?}");
        let mut updated = self.model.streams[name].clone();
        match (got, updated.update(def)) {
            (Err(e), _) if faulty && is_storage_failure(&e) => {
                // Nothing changed (the definition is written atomically);
                // whether the failed sync stops the stream's writes is
                // left open.
                if self.fail_sync {
                    self.model.get(name).expect("exists").maybe_stopped = true;
                }
                self.adopt(name, &what);
            }
            (Ok(()), Ok(())) => *self.model.get(name).expect("exists") = updated,
            (got, Ok(())) => panic!("{what}: {got:?}"),
            (got, Err(e)) => same_error(&what, got, &e),
        }
    }

    /// Every visible message of every stream, and the list, match the model.
    fn check_all(&mut self, when: &str) {
        // A failed flush may have given unconfirmed numbers back.
        self.adopt_all(when);
        assert_eq!(self.store().list(), self.model.list(), "list {when}");
        let now = self.now();
        for (name, stream) in &self.model.streams {
            let got = self.read_everything(name);
            assert_eq!(got, stream.visible_messages(now), "{name} {when}");
            let info = self.store().describe(name).expect("described");
            assert_eq!(info.definition, stream.def, "{name} {when}: definition");
            assert_eq!(
                info.storage_status.newest_sequence_number,
                stream.next - 1,
                "{name} {when}: newest"
            );
            self.check_segments(name, when);
        }
    }

    /// A File stream's segments on disk, as (first sequence number, sealed),
    /// without an empty one at the end (which only keeps the next number).
    fn disk_segments(&self, name: &str, next: i64) -> Vec<(i64, bool)> {
        let dir = Path::new(ROOT).join("streams").join(encode_name(name));
        let mut segments: Vec<(i64, bool)> = self
            .fs
            .files()
            .iter()
            .filter(|p| p.parent() == Some(&dir))
            .filter_map(|p| match parse_name(p.file_name()?.to_str()?) {
                Some((first, "seg")) if first < next => {
                    let index = self.fs.contents(&p.with_extension("idx"));
                    let sealed = index.is_some_and(|i| decode_sealed_index(&i).is_some());
                    Some((first, sealed))
                }
                // The segment appends switched to before its name was
                // made durable (a step left to a blocking thread) is still
                // the spare file, its header naming its first number.
                _ if p.file_name()? == SPARE_FILE => {
                    let bytes = self.fs.contents(p)?;
                    let head = bytes.get(..SEGMENT_HEADER_LEN as usize)?.try_into().ok()?;
                    let first = decode_segment_header(head).ok()?;
                    (first != UNUSED_SPARE && first < next).then_some((first, false))
                }
                _ => None,
            })
            .collect();
        segments.sort_unstable();
        segments
    }

    /// The segments of a File stream are where the model says: whole
    /// segments are what retention removes, so their bounds are behaviour.
    fn check_segments(&self, name: &str, when: &str) {
        let stream = &self.model.streams[name];
        if !stream.on_disk {
            return;
        }
        let expected = stream.visible_segments(self.now());
        let oldest = expected.first().map_or(stream.next, |s| s.0);
        // Where segments start, from the files; whether they are sealed,
        // from the store (a seal runs on a blocking thread, and its footer
        // may be pending or, after a failed step, missing).
        let held: Vec<(i64, bool)> = self
            .store()
            .segments(name)
            .expect("segments")
            .into_iter()
            .map(|s| (s.first_sequence_number, s.sealed))
            .collect();
        let got: Vec<(i64, bool)> = self
            .disk_segments(name, stream.next)
            .into_iter()
            .filter(|s| s.0 >= oldest)
            .map(|(first, on_disk)| {
                let sealed = held.iter().find(|h| h.0 == first).map_or(on_disk, |h| h.1);
                (first, sealed)
            })
            .collect();
        assert_eq!(got, expected, "{name} {when}: segments (first, sealed)");
    }

    /// Every message the store returns for `name`, in as many reads as the
    /// response budget needs.
    fn read_everything(&self, name: &str) -> Vec<Msg> {
        let mut out: Vec<Msg> = Vec::new();
        let mut start = 0;
        loop {
            let options = ReadMessagesOptions {
                desired_start_sequence_number: start,
                min_message_count: 1,
                max_message_count: i64::MAX,
                read_timeout_millis: 10,
            };
            match self.store().try_read(name, &options) {
                Ok(None) => return out,
                Ok(Some(got)) => {
                    assert!(!got.is_empty(), "a read of min 1 returns one at least");
                    start = got.last().expect("not empty").sequence_number + 1;
                    out.extend(messages(got));
                }
                Err(e) => panic!("reading all of {name}: {e:?}"),
            }
        }
    }

    /// Drops the store (as weir stopping or crashing: nothing is flushed on
    /// the way out), cuts the power if asked, and opens the store again.
    /// A File stream then holds a prefix of what the model has, with at
    /// least every message written (confirmed), after a power cut every
    /// message promised durable; the model adopts what survived.
    fn reopen(&mut self, cut: Option<Option<u64>>) {
        let power_cut = cut.is_some();
        let when = if power_cut {
            "after a power cut"
        } else {
            "after a restart"
        };
        self.store = None;
        match cut {
            None => {}
            Some(None) => self.fs = self.fs.crash(|_, _| 0),
            Some(Some(seed)) => {
                let mut tear = Rng(seed);
                self.fs = self
                    .fs
                    .crash(|_, unsynced| tear.below(unsynced as u64 + 1) as usize);
            }
        }
        self.store = Some(open_store(&self.fs, &self.clock, self.model.in_memory));
        let ghosts = std::mem::take(&mut self.ghosts);
        let listed = self.store().list();
        let back: Vec<String> = ghosts
            .keys()
            .filter(|name| listed.contains(name))
            .cloned()
            .collect();
        assert!(
            cut.is_some() || back.is_empty(),
            "deleted streams {back:?} came back without a power cut"
        );
        for (name, ghost) in ghosts {
            if back.contains(&name) {
                self.model.streams.insert(name, ghost);
            }
        }
        // A stream brought back is checked below like every other one
        // after a power cut.
        self.model.restart();
        if model::tolerates("delete") {
            let listed = self.store().list();
            self.model
                .streams
                .retain(|name, s| !s.delete_failed || listed.contains(name));
        }
        let now = self.now();
        let names: Vec<String> = self.model.streams.keys().cloned().collect();
        assert_eq!(self.store().list(), names, "list {when}");
        for name in names {
            let got = self.read_everything(&name);
            let stream = self.model.get(&name).expect("listed");
            let survived_next = self
                .store
                .as_ref()
                .expect("open")
                .describe(&name)
                .expect("described")
                .storage_status
                .newest_sequence_number
                + 1;
            let kept = if power_cut {
                stream.durable_next
            } else {
                stream.written_next
            };
            assert!(
                (kept..=stream.next).contains(&survived_next),
                "{name}: {when} the next sequence number is {survived_next}; \
                 {} were promised durable, {} written and {} appended",
                stream.durable_next,
                stream.written_next,
                stream.next
            );
            stream.cut_to(survived_next, power_cut);
            if stream.adopted {
                // Its segments after storage failures are the store's.
                let disk = self.disk_segments(&name, survived_next);
                let stream = self.model.get(&name).expect("listed");
                stream.adopt(&disk, survived_next);
                stream.adopted = false;
            }
            let stream = self.model.get(&name).expect("listed");
            let oldest = stream.statuses(now).1.oldest;
            let older: Vec<Msg> = got.iter().filter(|m| m.seq < oldest).cloned().collect();
            if !older.is_empty() {
                assert!(
                    model::tolerates("resurrect"),
                    "{name}: messages {:?} removed by retention are back {when}",
                    older.iter().map(|m| m.seq).collect::<Vec<_>>()
                );
                let dir = Path::new(ROOT).join("streams").join(encode_name(&name));
                let firsts: Vec<i64> = self
                    .fs
                    .files()
                    .iter()
                    .filter(|p| p.parent() == Some(&dir))
                    .filter_map(|p| parse_name(p.file_name()?.to_str()?).map(|(first, _)| first))
                    .collect();
                stream.adopt_older(older, &firsts);
            }
            assert_eq!(
                got,
                stream.visible_messages(now),
                "{name}: what survived {when} is the model's messages up to {survived_next}"
            );
            self.check_segments(&name, when);
        }
    }
}

fn run_ops(ops: &[Op], in_memory: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut harness = Harness::new(in_memory);
        for op in ops {
            harness.run(op).await;
        }
        harness.check_all("at the end");
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_store_behaves_like_the_model(ops in ops_strategy()) {
        run_ops(&ops, false);
    }

    /// `Store::new`: File streams too are kept in memory, and a restart
    /// starts empty.
    #[test]
    fn the_memory_store_behaves_like_the_model(ops in ops_strategy()) {
        run_ops(&ops, true);
    }
}

// The smallest sequences the model found for each defect, as plain tests.

fn file_stream(name: &str, flush: bool, max_size: i64, segment: i64) -> MessageStreamDefinition {
    MessageStreamDefinition {
        max_size,
        stream_segment_size: segment,
        flush_on_write: flush,
        strategy_on_full: StrategyOnFull::OverwriteOldestData,
        ..MessageStreamDefinition::with_defaults(name.into())
    }
}

/// A store on a fresh `SimulatedFs` with one empty `File` stream "s"
/// (no flushOnWrite, large sizes), as the defect tests start.
fn store_with_one_stream() -> (SimulatedFs, Arc<ManualClock>, Store) {
    let fs = SimulatedFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&fs, &clock);
    store
        .create(file_stream("s", false, 1 << 20, 1 << 16))
        .unwrap();
    (fs, clock, store)
}

/// Appends, confirms and (flushOnWrite) waits until durable.
async fn append_acked(store: &Store, name: &str, len: usize) -> i64 {
    let appended = store.append(name, Bytes::from(vec![7u8; len])).unwrap();
    store.confirm(name, appended.ticket).unwrap();
    if appended.flush {
        store.durable(name, appended.sequence_number).await.unwrap();
    }
    appended.sequence_number
}

/// Retention removes a segment's files without making the removal durable
/// (no fsync of the stream's folder after `remove_file`), so a power cut
/// brings the removed segment back: overwritten messages are readable
/// again and the stream holds more than its maxSize.
#[tokio::test]
async fn a_segment_removed_by_retention_comes_back_after_a_power_cut() {
    let fs = SimulatedFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&fs, &clock);
    store.create(file_stream("s", true, 2048, 1024)).unwrap();
    // 1116 bytes in the first segment; 355 + 515 + 63 in the second: the
    // last append drops the first segment to stay within 2048.
    for len in [1092, 331, 491, 39] {
        append_acked(&store, "s", len).await;
    }
    let before = store.describe("s").unwrap().storage_status;
    assert_eq!(
        (before.oldest_sequence_number, before.total_bytes),
        (1, 933)
    );
    drop(store);
    let fs = fs.crash(|_, _| 0);
    let store = open(&fs, &clock);
    let after = store.describe("s").unwrap().storage_status;
    assert_eq!(
        after, before,
        "every message was durable: the power cut changes nothing (got oldest {} and {} bytes, over maxSize 2048)",
        after.oldest_sequence_number, after.total_bytes
    );
}

/// A store opened on existing files takes everything it loaded as synced
/// (`Stream::new` starts the durability watermark at the next sequence
/// number), but what weir wrote before it crashed may still be only in the
/// page cache: a `sync_all` after the restart syncs nothing, and a power
/// cut then loses messages that sync_all covered.
#[tokio::test]
async fn sync_all_after_a_restart_syncs_what_was_written_before_it() {
    let (fs, clock, store) = store_with_one_stream();
    append_acked(&store, "s", 100).await;
    // weir crashes (no sync); the OS keeps the written bytes.
    drop(store);
    let store = open(&fs, &clock);
    assert_eq!(read_all_seqs(&store, "s"), [0]);
    store.sync_all().await;
    drop(store);
    let fs = fs.crash(|_, _| 0);
    let store = open(&fs, &clock);
    assert_eq!(
        read_all_seqs(&store, "s"),
        [0],
        "message 0 was covered by a completed sync_all"
    );
}

fn read_all_seqs(store: &Store, name: &str) -> Vec<i64> {
    let options = ReadMessagesOptions {
        desired_start_sequence_number: 0,
        min_message_count: 0,
        max_message_count: 1000,
        read_timeout_millis: 0,
    };
    let messages = store.try_read(name, &options).unwrap().unwrap();
    messages.iter().map(|m| m.sequence_number).collect()
}

/// A read removes expired segments itself (`Stream::try_read` calls
/// `expire`), and removing the active segment seals it, which syncs: with
/// a failing fsync the read fails with `Write(Sync)`, though a failed fsync
/// only stops writes ("reads go on"), and the message it would return is
/// expired anyway. Describe fails the same way.
#[tokio::test]
async fn reads_go_on_when_an_expired_segment_cannot_be_synced() {
    let fs = SimulatedFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&fs, &clock);
    let mut def = file_stream("s", false, 1024, 1024);
    def.time_to_live_millis = Some(60_000);
    store.create(def).unwrap();
    append_acked(&store, "s", 1).await;
    fs.set_fail_sync(true);
    clock.advance(60_000);
    let read = store.try_read(
        "s",
        &ReadMessagesOptions {
            desired_start_sequence_number: 0,
            min_message_count: 0,
            max_message_count: 10,
            read_timeout_millis: 0,
        },
    );
    assert!(
        matches!(&read, Ok(Some(messages)) if messages.is_empty()),
        "the only message has expired: {read:?}"
    );
    let described = store.describe("s").map(|info| info.storage_status);
    assert!(described.is_ok(), "{described:?}");
}

/// Opening a new segment syncs its header and its folder entry (on a
/// blocking thread, before the segment's name is made durable); a failed
/// fsync there, wherever it is noticed, stops the stream's writes: once
/// syncs work again, no append is taken on files the page cache may not
/// hold. (Found when `write_atomically`'s fsync came back as a plain I/O
/// error that did not stop writes.)
#[tokio::test]
async fn a_failed_fsync_opening_a_segment_stops_the_streams_writes() {
    let fs = SimulatedFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&fs, &clock);
    store.create(file_stream("s", false, 1024, 1024)).unwrap();
    fs.set_fail_sync(true);
    if let Ok(appended) = store.append("s", Bytes::from_static(b"a")) {
        let durable = match store.confirm("s", appended.ticket) {
            Ok(()) => store.durable("s", appended.sequence_number).await,
            Err(e) => Err(e),
        };
        assert!(durable.is_err(), "synced with every fsync failing");
    }
    fs.set_fail_sync(false);
    let again = store.append("s", Bytes::from_static(b"b"));
    assert!(
        matches!(again, Err(StoreError::WritesStopped { .. })),
        "writes stop after a failed fsync until weir restarts: {again:?}"
    );
}

/// A delete is committed by renaming `stream.cbor` to `stream.deleted`
/// (`disk::StreamFolders::mark_deleted`). When the folder sync after it
/// fails, the answer is an error (the deletion may not survive a power cut),
/// but the stream is gone from then on: it takes no appends that the next
/// start, finishing the delete, would drop.
#[tokio::test]
async fn a_delete_that_fails_after_its_commit_point_takes_no_more_appends() {
    let (fs, clock, store) = store_with_one_stream();
    append_acked(&store, "s", 10).await;
    fs.set_fail_sync(true);
    assert!(store.delete("s").is_err());
    fs.set_fail_sync(false);
    assert!(store.list().is_empty(), "gone from the commit point on");
    assert!(matches!(
        store.append("s", Bytes::from_static(b"late")),
        Err(StoreError::NotFound(_))
    ));
    drop(store);
    let store = open(&fs, &clock);
    assert!(store.list().is_empty(), "and after a restart");
}

/// The same on a full disk: removing an expired active segment seals it
/// (writes its index) and, as it is the last one, opens an empty one to
/// keep the next sequence number; with no space left a describe or a read
/// fails with "No space left on device" instead of answering.
#[tokio::test]
async fn describe_goes_on_when_the_disk_is_full_and_a_segment_has_expired() {
    let fs = SimulatedFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&fs, &clock);
    let mut def = file_stream("s", false, 1024, 1024);
    def.time_to_live_millis = Some(60_000);
    store.create(def).unwrap();
    append_acked(&store, "s", 1).await;
    fs.set_space_left(Some(0));
    clock.advance(60_000);
    let described = store.describe("s").map(|info| info.storage_status);
    assert!(described.is_ok(), "{described:?}");
    assert_eq!(read_all_seqs(&store, "s"), Vec::<i64>::new(), "expired");
}

/// A delete whose commit (the rename) fails changes nothing: the stream is
/// whole, and deleting it again works.
#[tokio::test]
async fn a_delete_that_failed_before_its_commit_point_can_be_retried() {
    let (fs, _clock, store) = store_with_one_stream();
    append_acked(&store, "s", 10).await;
    let definition = Path::new(ROOT).join("streams/s/stream.cbor");
    fs.set_fail_path(&definition, Some(5));
    assert!(store.delete("s").is_err());
    fs.set_fail_path(&definition, None);
    assert_eq!(store.list(), ["s"], "the failed delete changed nothing");
    assert_eq!(read_all_seqs(&store, "s"), [0]);
    let retry = store.delete("s");
    assert!(retry.is_ok(), "{retry:?}");
    assert!(store.list().is_empty());
}

/// Opening the newest segment at start-up rewrites its index hints
/// (`segment::recover`: `fs.create(&index_path)?` then `write_all_at(..)?`);
/// on a full disk that write fails, `FileLog::open` skips the whole
/// segment as unreadable, and the stream comes up without its newest
/// messages and numbering from where the segment began: the next append
/// reuses sequence numbers, and opening its segment overwrites the
/// skipped segment's file.
#[tokio::test]
async fn a_full_disk_at_start_up_loses_no_messages() {
    let (fs, clock, store) = store_with_one_stream();
    append_acked(&store, "s", 10).await;
    store.sync_all().await;
    drop(store);
    fs.set_space_left(Some(0));
    let store = open(&fs, &clock);
    assert_eq!(
        read_all_seqs(&store, "s"),
        [0],
        "message 0 is on disk, synced"
    );
    fs.set_space_left(None);
    let next = store.append("s", Bytes::from_static(b"x")).unwrap();
    assert_eq!(next.sequence_number, 1, "numbering continues");
}

/// A segment change whose seal failed on a full disk (its sealed index
/// could not be written) was kept as failed for good: once the disk had
/// room again every append still failed with the old "No space left".
/// It is run again when next needed.
#[tokio::test]
async fn appends_go_on_once_a_full_disk_that_failed_a_seal_has_room_again() {
    let fs = SimulatedFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&fs, &clock);
    let mut def = file_stream("s", true, 1024, 1024);
    def.strategy_on_full = StrategyOnFull::OverwriteOldestData;
    store.create(def).unwrap();
    append_acked(&store, "s", 363).await;
    append_acked(&store, "s", 136).await;
    fs.set_space_left(Some(0));
    for len in [265, 165, 454, 1] {
        // Some fail (no room to write or to seal), some wait in memory.
        store.append("s", Bytes::from(vec![7u8; len])).ok();
    }
    fs.set_space_left(None);
    let seq = append_acked(&store, "s", 1).await;
    assert_eq!(read_all_seqs(&store, "s").last(), Some(&seq));
}
