//! # weir
//!
//! A native drop-in replacement for the AWS IoT Greengrass **stream
//! manager** server. Unmodified client SDKs (`greengrasssdk.stream_manager`,
//! `stream_manager`, the Node and Java SDKs) connect to it over TCP and
//! create, append to, read, describe, update and delete message streams.
//!
//! ## Layout
//!
//! Layers depend only downward:
//!
//! ```text
//!   main.rs ── daemon ──┬── server ──────── protocol   (sans-IO wire format)
//!   (thin)     (wiring)  │   (sockets,          ▲
//!                        │    dispatch)         │ model types
//!                        └── store ─────────────┘
//!                            (streams, retention, storage seam: SegmentLog)
//! ```
//!
//! * [`protocol`]: bytes ⇄ typed requests and replies. No I/O, no runtime;
//!   bounded (a frame length is checked before anything is allocated).
//! * [`server`]: the accept loop and one task per connection. The handshake,
//!   then requests carried out in arrival order, long-polling reads beside
//!   them, whole frames written by one writer task. [`server::dispatch`] is
//!   the one exhaustive `match` over operations and the one place a store
//!   error becomes a wire status. Every resource a client can make weir
//!   hold is bounded in bytes or count ([`server::ServerLimits`]): bytes of
//!   requests being received (server-wide), bytes of answers (server-wide:
//!   reserved before an answer is built, held until its frame is written;
//!   a connection that cannot get them waits unread, and while one waits,
//!   connections whose clients take none of their answers for a while are
//!   closed) and of answers queued (per connection), requests in flight,
//!   long-polls, connections and sockets still in their handshake. Work
//!   that waits on the disk runs on tokio's blocking pool, so the one
//!   protocol thread keeps serving every other connection: create, delete,
//!   update; reads of sealed segments (long-polls given up at their limit
//!   too); and an append whose log needs the disk first (no spare ready for
//!   its next segment, a retention removal not yet durable), which its
//!   connection waits for before its next request
//!   ([`store::Appending::NeedsDisk`]). Segment seals and retention's
//!   removals themselves run in the background, never on the append path.
//! * [`store`]: the stream registry and each stream's state under one lock
//!   (its single writer); retention is a pure policy ([`store::retention`])
//!   that the stream carries out; messages live behind the
//!   [`store::log::SegmentLog`] seam: [`store::file::FileLog`] (segment files,
//!   `File` streams, described in [`store::file::format`]) or
//!   [`store::memory::MemoryLog`] (`Memory` streams). Stream folders and
//!   definitions are [`store::disk`]. All file I/O goes through the
//!   [`store::fs::FileSystem`] seam, which tests fill with
//!   `store::simfs::SimulatedFs` (feature `test-util`) to cut the power at
//!   any point (folder entries too are durable only once their folder is
//!   synced). Start-up follows a named recovery policy
//!   ([`store::file::recovery`]); a segment change (seal, naming the next
//!   segment) and a retention removal run as steps on a blocking thread
//!   ([`store::file::background`]), a new segment's name made durable only
//!   after the one before it is synced; a durable sequence floor keeps
//!   numbers from being reissued when a segment cannot be read.
//!   Acknowledgements: an append is answered with success only once its
//!   write to the OS is known to have succeeded, a `flushOnWrite` one only
//!   after a shared `fdatasync` ([`store::group_commit`], whose waiters are
//!   woken on every way out of a sync); a failed fsync anywhere stops the
//!   stream's writes before anything else is acknowledged. The contract is
//!   written once, in the [`store::stream`] module doc. Reads and describes
//!   have no side effects that can fail them: TTL removal is the writer's
//!   and the sweeper's.
//! * [`export`]: the exporters, on a thread and runtime of their own
//!   ([`export::manager::ExportThread`]), so an upload never holds up the
//!   protocol thread. The [`export::manager`] starts, replaces and stops
//!   one [`export::pipeline`] per (stream, export) from the store's
//!   registry events; each pipeline goes cursor → batch → send → retry →
//!   advance, behind the small [`export::destination::Destination`] trait
//!   ([`export::kinesis`], [`export::iot_analytics`], on the AWS SDK for
//!   Rust configured in [`export::aws`], its own retries off so the
//!   backoff is the pipeline's), through one [`export::gate`] (uploads at
//!   once, bandwidth cap, priority order). Pipelines read the store only
//!   through [`store::export_reader`] (no side effects, durable messages
//!   only, gaps reported, registry events), and keep their progress with
//!   the stream ([`store::export_cursor`]: one atomically written,
//!   checksummed file beside its segments, loaded when the store opens, so
//!   describe's `exportStatuses` are right from the first moment).
//! * [`auth`]: client tokens: a token file, or under Greengrass v2 the
//!   nucleus (`ValidateAuthorizationToken`). [`auth::ipc`] is weir's one
//!   client of the nucleus IPC: one shared Unix-socket connection, requests
//!   (operation, model type, JSON payload) multiplexed on stream ids, each
//!   reply mapped by its caller. Besides validations it carries readiness
//!   (`UpdateState` RUNNING, sent by [`daemon`] right after the listener is
//!   bound, whatever the authentication mode, retried with a backoff
//!   without holding up clients) and [`telemetry`] (relaxed atomic byte
//!   counters bumped where an append is acknowledged and where an export
//!   batch advances, sent as `PutComponentMetric` deltas every
//!   `WEIR_TELEMETRY_INTERVAL_MS`; one log line and no more tries from a
//!   nucleus that refuses them, as lite does).
//! * [`config`]: every setting, named after the Java server's environment
//!   variables, from flags, the environment and an optional TOML file (in
//!   that order), listed once in [`config::SETTINGS`]. [`clock`]: wall
//!   time, passed in. [`daemon`]: lifecycle. `packaging/`: the Greengrass
//!   v2 component, the Greengrass v1 wrapper and the Debian package.
//! * [`mod@bench`]: the `weir-bench` binary: a native load generator, export
//!   throughput, and a server that stores nothing, the baseline for
//!   client-side benchmarks.
//! * `fuzzing` (feature `test-util`): the fuzz targets' logic, run by
//!   `fuzz/` (cargo-fuzz) and, over the committed corpus, by
//!   `tests/fuzz_smoke.rs` in CI.
//!
//! Shutdown is a [`tokio_util::sync::CancellationToken`] passed in; every
//! loop selects on it.

pub mod auth;
pub mod bench;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod export;
#[cfg(feature = "test-util")]
pub mod fuzzing;
pub mod protocol;
pub mod server;
pub mod store;
pub mod telemetry;
