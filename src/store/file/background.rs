//! The steps of a segment change that run off the append path.
//!
//! An append that fills a segment only switches to a spare segment file
//! prepared in advance (writing its header, no sync). What is slow runs as
//! [`Step`]s on a blocking thread (`FileSystem::run_blocking`): the full
//! segment's seal (fsync, sealed index) and then the spare's rename to its
//! segment name and the folder's sync, so a segment's name is durable only
//! after the segment before it is synced. A retention removal is a step
//! too: the segment's seal, then (if it was the last segment) the empty
//! segment that keeps the next sequence number, then its files and the
//! folder's sync. A step runs once, by whoever needs it first: the blocking
//! thread, a group-commit sync (which must not promise a record of the new
//! segment before its name is durable), a removal (which must not remove a
//! segment still being sealed), or an append's disk work
//! (`SegmentLog::disk_work`: an append waits for a removal, and for the
//! steps before the spare it needs).
//!
//! Every step that touches the stream's folder holds the folder's [`Gate`];
//! deleting the stream closes the gate first, so no step of a deleted
//! stream ever touches the folder again (a stream created under the same
//! name gets a new folder at the same path).

use crate::store::log::{StorageError, StorageOp};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Held while a step works in a stream folder; closed when the stream is
/// deleted.
#[derive(Default)]
pub struct Gate {
    closed: Mutex<bool>,
}

impl Gate {
    /// The gate, held, if the folder is still the stream's.
    pub(super) fn enter(&self) -> Option<MutexGuard<'_, bool>> {
        let guard = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        (!*guard).then_some(guard)
    }

    /// Waits for a step at work in the folder, and keeps every later one
    /// out.
    pub fn close(&self) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }
}

type Work = Box<dyn Fn() -> Result<(), StorageError> + Send>;

/// A failure kept for everyone who asks (`StorageError` is not `Clone`).
#[derive(Clone)]
struct Failure {
    op: StorageOp,
    sync: bool,
    kind: io::ErrorKind,
    /// The OS error, kept as such when there is one.
    errno: Option<i32>,
    message: String,
}

impl Failure {
    fn of(e: &StorageError) -> Failure {
        let (op, sync) = match e {
            StorageError::Sync { op, .. } => (*op, true),
            StorageError::Io { op, .. } => (*op, false),
            StorageError::CutBack { op, .. } => (*op, true),
            StorageError::Corrupt(_) => (StorageOp::SealSegment, false),
        };
        let kind = e.io_error().map_or(io::ErrorKind::Other, io::Error::kind);
        Failure {
            op,
            sync,
            kind,
            errno: e.io_error().and_then(io::Error::raw_os_error),
            message: e.to_string(),
        }
    }

    fn error(&self) -> StorageError {
        let source = match self.errno {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::new(self.kind, self.message.clone()),
        };
        match self.sync {
            true => StorageError::Sync {
                op: self.op,
                source,
            },
            false => StorageError::Io {
                op: self.op,
                source,
            },
        }
    }
}

enum State {
    Pending(Work),
    Running,
    Done(Result<(), Failure>),
    /// It failed in a way that does not stop writes (a full disk): the
    /// failure is reported, and the next one who needs the step runs it
    /// again, so a disk that has room again finishes the segment change
    /// instead of failing every later append with the old error.
    Retry(Work, Failure),
}

/// A piece of work done once, by whoever needs it first.
pub struct Step {
    done: AtomicBool,
    state: Mutex<State>,
}

impl Step {
    pub(super) fn new(work: Work) -> Arc<Step> {
        Arc::new(Step {
            done: AtomicBool::new(false),
            state: Mutex::new(State::Pending(work)),
        })
    }

    /// Runs the step unless it ran (waiting while another thread runs it)
    /// and says how it went.
    pub fn ensure(&self) -> Result<(), StorageError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let work = match std::mem::replace(&mut *state, State::Running) {
            State::Pending(work) | State::Retry(work, _) => work,
            State::Done(result) => {
                *state = State::Done(result.clone());
                return result.map_err(|f| f.error());
            }
            // A thread that ran it panicked while holding the lock.
            State::Running => {
                let failure = Failure {
                    op: StorageOp::SealSegment,
                    sync: true,
                    kind: io::ErrorKind::Other,
                    errno: None,
                    message: "a segment step was interrupted".into(),
                };
                *state = State::Done(Err(failure.clone()));
                self.done.store(true, Ordering::Release);
                return Err(failure.error());
            }
        };
        let result = work();
        *state = match &result {
            Err(e) if !e.stops_writes() => State::Retry(work, Failure::of(e)),
            _ => State::Done(result.as_ref().map(|_| ()).map_err(Failure::of)),
        };
        self.done.store(true, Ordering::Release);
        result
    }

    /// How it went, if it ran, without waiting: not even for a run again
    /// after a failure, which holds the state (the protocol thread asks).
    pub fn outcome(&self) -> Option<Result<(), StorageError>> {
        if !self.done.load(Ordering::Acquire) {
            return None;
        }
        let state = match self.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        match &*state {
            State::Done(result) => Some(result.clone().map_err(|f| f.error())),
            State::Retry(_, failure) => Some(Err(failure.error())),
            State::Pending(_) | State::Running => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_runs_once_and_its_failure_is_kept() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let step = Step::new(Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Err(StorageError::Sync {
                op: StorageOp::SealSegment,
                source: io::Error::from(io::ErrorKind::StorageFull),
            })
        }));
        assert!(step.outcome().is_none());
        for _ in 0..2 {
            let e = step.ensure().unwrap_err();
            assert!(e.stops_writes());
            assert_eq!(e.io_error().unwrap().kind(), io::ErrorKind::StorageFull);
        }
        assert!(step.outcome().unwrap().is_err());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_step_that_failed_without_stopping_writes_runs_again() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let step = Step::new(Box::new(move || {
            match counted.fetch_add(1, Ordering::SeqCst) {
                0 => Err(StorageError::Io {
                    op: StorageOp::SealSegment,
                    source: io::Error::from_raw_os_error(28),
                }),
                _ => Ok(()),
            }
        }));
        let e = step.ensure().unwrap_err();
        assert!(!e.stops_writes());
        assert!(step.outcome().unwrap().is_err(), "the failure is reported");
        step.ensure().expect("runs again once the disk has room");
        step.ensure().expect("and is done");
        assert!(step.outcome().unwrap().is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_closed_gate_keeps_steps_out() {
        let gate = Gate::default();
        assert!(gate.enter().is_some());
        gate.close();
        assert!(gate.enter().is_none());
    }
}
