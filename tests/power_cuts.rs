//! Power cuts inside multi-step operations: a run of creates, appends
//! across many segment seals, TTL and overwrite retention, a definition
//! rewrite and a delete is repeated with the power cut after its N-th
//! modifying I/O operation, for every N (`SimulatedFs::cut_power_after`).
//! Every image a cut leaves is opened and checked:
//! * every message acknowledged durable is there byte for byte (or was
//!   removed by its stream's retention: older than the oldest kept);
//! * no sequence number acknowledged is given out again;
//! * no stream comes back after an acknowledged delete, and every stream
//!   whose create was acknowledged is there;
//! * a definition is the old or the new one, never corrupt (the stream
//!   loads), and the new one once its update was acknowledged.
//!
//! Each image is then opened and cut again at once (what the restart
//! served, recovered from unsynced writes, must stay), used (no number
//! given out again), cut again and checked again.

mod sim;
use bytes::Bytes;
use sim::{open_store, read_all, T0};
use std::collections::BTreeMap;
use std::sync::Arc;
use weir::clock::ManualClock;
use weir::protocol::model::{MessageStreamDefinition, StrategyOnFull};
use weir::store::simfs::{Cut, SimulatedFs};
use weir::store::Store;

fn payload(stream: &str, seq: i64) -> Bytes {
    let len = 40 + (seq as usize * 53 + stream.len()) % 200;
    Bytes::from(
        (0..len)
            .map(|i| (i as u64 ^ (seq as u64).wrapping_mul(31) ^ stream.len() as u64) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn open(fs: &SimulatedFs, clock: Arc<ManualClock>) -> Result<Store, String> {
    open_store(fs, clock).map_err(|e| e.to_string())
}

fn definitions() -> Vec<MessageStreamDefinition> {
    let base = |name: &str| MessageStreamDefinition {
        flush_on_write: true,
        stream_segment_size: 1024,
        ..MessageStreamDefinition::with_defaults(name.into())
    };
    vec![
        base("log"),
        MessageStreamDefinition {
            time_to_live_millis: Some(60_000),
            ..base("ttl")
        },
        MessageStreamDefinition {
            max_size: 3000,
            strategy_on_full: StrategyOnFull::OverwriteOldestData,
            ..base("full")
        },
        base("gone"),
        MessageStreamDefinition {
            flush_on_write: false,
            ..base("plain")
        },
    ]
}

fn updated_log() -> MessageStreamDefinition {
    MessageStreamDefinition {
        time_to_live_millis: Some(86_400_000),
        ..definitions()[0].clone()
    }
}

/// What the run had acknowledged when the power went.
#[derive(Default, Debug)]
struct Acked {
    created: Vec<String>,
    /// Sequence numbers acknowledged durable, per stream.
    durable: BTreeMap<String, Vec<i64>>,
    /// Sequence numbers written to the OS (confirmed), per stream: a crash
    /// of weir alone loses none of them.
    written: BTreeMap<String, Vec<i64>>,
    updated: bool,
    /// A delete was asked for: until it is acknowledged, the stream may or
    /// may not be there.
    deleting: bool,
    deleted: bool,
}

async fn append_durably(store: &Store, name: &str, acked: &mut Acked) -> Result<(), String> {
    let next = next_seq(store, name)?;
    let appended = store
        .append(name, payload(name, next))
        .map_err(|e| e.to_string())?;
    store
        .confirm(name, appended.ticket)
        .map_err(|e| e.to_string())?;
    acked
        .written
        .entry(name.into())
        .or_default()
        .push(appended.sequence_number);
    if name == "plain" {
        return Ok(());
    }
    store
        .durable(name, appended.sequence_number)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(appended.sequence_number, next);
    acked
        .durable
        .entry(name.into())
        .or_default()
        .push(appended.sequence_number);
    Ok(())
}

fn next_seq(store: &Store, name: &str) -> Result<i64, String> {
    let info = store.describe(name).map_err(|e| e.to_string())?;
    Ok(info.storage_status.newest_sequence_number + 1)
}

/// The run; stops at the first failure (the power cut). With background
/// steps deferred, they run at the end of each round, in either order
/// (syncs run them earlier when they need them).
async fn run(fs: &SimulatedFs, acked: &mut Acked) -> Result<(), String> {
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(fs, clock.clone())?;
    for def in definitions() {
        let name = def.name.clone();
        store.create(def).map_err(|e| e.to_string())?;
        acked.created.push(name);
    }
    for round in 0..12 {
        for name in ["log", "ttl", "full", "gone", "plain", "plain"] {
            append_durably(&store, name, acked).await?;
        }
        match round % 2 {
            0 => fs.run_background(),
            _ => fs.run_background_newest_first(),
        };
        if round == 5 {
            clock.advance(120_000);
            store.enforce_retention();
            store.update(updated_log()).map_err(|e| e.to_string())?;
            acked.updated = true;
        }
    }
    acked.deleting = true;
    store.delete("gone").map_err(|e| e.to_string())?;
    acked.deleted = true;
    clock.advance(120_000);
    store.enforce_retention();
    for _ in 0..3 {
        append_durably(&store, "ttl", acked).await?;
        append_durably(&store, "full", acked).await?;
    }
    Ok(())
}

/// Checks the invariants on a store opened after a cut (`process_only`:
/// weir died, not the power); returns, per stream, the newest sequence
/// number there.
fn check(store: &Store, acked: &Acked, process_only: bool, at: &str) -> BTreeMap<String, i64> {
    let listed = store.list();
    if acked.deleted {
        assert!(
            !listed.contains(&"gone".to_string()),
            "{at}: a deleted stream came back"
        );
    }
    let mut newest = BTreeMap::new();
    for name in &acked.created {
        if !(name == "gone" && acked.deleting) {
            assert!(listed.contains(name), "{at}: created stream {name} is gone");
        }
    }
    for name in &listed {
        let info = store.describe(name).unwrap();
        let versions: Vec<_> = definitions()
            .into_iter()
            .chain([updated_log()])
            .filter(|d| &d.name == name)
            .collect();
        assert!(
            versions.contains(&info.definition),
            "{at}: {name}'s definition is neither old nor new"
        );
        if name == "log" && acked.updated {
            assert_eq!(info.definition, updated_log(), "{at}: update lost");
        }
        let messages = read_all(store, name);
        for (i, (seq, bytes)) in messages.iter().enumerate() {
            assert_eq!(
                *seq,
                info.storage_status.oldest_sequence_number + i as i64,
                "{at}: {name} has a gap"
            );
            assert_eq!(bytes, &payload(name, *seq), "{at}: {name} {seq} differs");
        }
        let oldest = info.storage_status.oldest_sequence_number;
        let retained = name == "ttl" || name == "full";
        let promised = match process_only {
            true => &acked.written,
            false => &acked.durable,
        };
        for &seq in promised.get(name).into_iter().flatten() {
            if retained && seq < oldest {
                continue;
            }
            assert!(
                messages.iter().any(|(s, _)| *s == seq),
                "{at}: {name} lost acknowledged message {seq} (has {oldest}..={})",
                info.storage_status.newest_sequence_number
            );
        }
        newest.insert(name.clone(), info.storage_status.newest_sequence_number);
    }
    newest
}

async fn check_image(image: &SimulatedFs, acked: &Acked, process_only: bool, at: &str) {
    let clock = Arc::new(ManualClock::new(T0 + 240_000));
    let store = open(image, clock.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    check(&store, acked, process_only, at);
    let served: BTreeMap<String, Vec<(i64, Bytes)>> = store
        .list()
        .into_iter()
        .map(|name| (name.clone(), read_all(&store, &name)))
        .collect();
    drop(store);
    // Cut again right after the restart: what it served, recovered from
    // the previous process's unsynced writes, was made durable by it.
    let image = image.crash(|_, _| 0);
    let at = format!("{at}, cut again after the restart");
    let store = open(&image, clock.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    check(&store, acked, process_only, &at);
    for (name, messages) in &served {
        assert_eq!(&read_all(&store, name), messages, "{at}: {name} changed");
    }
    // Keep using it: no acknowledged number is given out again.
    let mut more = Acked::default();
    for name in store.list() {
        let before = acked
            .durable
            .get(&name)
            .and_then(|s| s.last().copied())
            .unwrap_or(-1);
        append_durably(&store, &name, &mut more)
            .await
            .unwrap_or_else(|e| panic!("{at}: append to {name}: {e}"));
        let seq = more.written[&name][0];
        assert!(seq > before, "{at}: {name} gave out {seq} again");
    }
    drop(store);
    let again = image.crash(|_, _| 0);
    let store = open(&again, clock).unwrap_or_else(|e| panic!("{at}, then used: {e}"));
    let mut all = Acked {
        created: acked.created.clone(),
        durable: acked.durable.clone(),
        written: BTreeMap::new(),
        updated: acked.updated,
        deleting: acked.deleting,
        deleted: acked.deleted,
    };
    for (name, seqs) in more.durable {
        all.durable.entry(name).or_default().extend(seqs);
    }
    // "plain" was not synced before that cut: only the others count.
    check(&store, &all, false, &format!("{at}, then used"));
}

async fn power_cut_after_every_operation(defer_background: bool) {
    let whole = SimulatedFs::new();
    whole.set_defer_background(defer_background);
    let mut acked = Acked::default();
    run(&whole, &mut acked).await.expect("runs without a cut");
    let total = whole.operations();
    assert!(acked.deleted && acked.updated, "{acked:?}");
    for n in 0..total {
        let fs = SimulatedFs::new();
        fs.set_defer_background(defer_background);
        fs.cut_power_after(n);
        let mut acked = Acked::default();
        let result = run(&fs, &mut acked).await;
        assert!(result.is_err(), "cut after {n} of {total}: the run noticed");
        for cut in [Cut::Clean, Cut::WrittenBytesKept, Cut::ProcessOnly] {
            let image = fs.power_cut_image(cut).expect("the power was cut");
            let at = format!(
                "cut ({cut:?}) after {n} of {total}, background deferred: {defer_background}"
            );
            check_image(&image, &acked, cut == Cut::ProcessOnly, &at).await;
        }
    }
}

#[tokio::test]
async fn a_power_cut_after_any_io_operation_keeps_every_promise() {
    power_cut_after_every_operation(false).await;
}

#[tokio::test]
async fn a_power_cut_after_any_io_operation_keeps_every_promise_with_segment_steps_late() {
    power_cut_after_every_operation(true).await;
}
