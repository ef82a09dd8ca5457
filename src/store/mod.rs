//! Message streams and where their messages live.
//!
//! [`Store`] is the registry of streams and the domain API the server calls;
//! [`stream::Stream`] holds one stream's state; [`log::SegmentLog`] is the
//! storage seam, filled by [`memory::MemoryLog`]; [`retention`] is the pure
//! policy of what leaves a stream.

pub mod log;
pub mod memory;
pub mod retention;
pub mod stream;

use crate::clock::Clock;
use crate::protocol::model::{
    Message, MessageStreamDefinition, MessageStreamInfo, ReadMessagesOptions,
};
use bytes::Bytes;
use log::StorageError;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use stream::{ReadAttempt, Stream};

/// Domain errors; `server::dispatch` maps each to its wire status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("message stream {0} does not exist")]
    NotFound(String),
    #[error("message stream {0} already exists")]
    AlreadyExists(String),
    #[error("message stream {name} is full (maxSize {max_size} bytes) and its strategy is RejectNewData")]
    Full { name: String, max_size: u64 },
    #[error("a message of {bytes} bytes stored can never fit in message stream {name} (maxSize {max_size} bytes)")]
    MessageTooLarge {
        name: String,
        bytes: u64,
        max_size: u64,
    },
    #[error("{available} messages available from sequence number {start}, fewer than minMessageCount {min}")]
    NotEnoughMessages {
        start: i64,
        available: i64,
        min: i64,
    },
    #[error(
        "{min} messages of message stream {name} do not fit in one response of {max_bytes} bytes"
    )]
    ResponseTooLarge {
        name: String,
        min: i64,
        max_bytes: usize,
    },
    #[error("persistence of message stream {0} cannot be changed")]
    PersistenceChange(String),
    #[error("maxSize {max_size} of message stream {name} is below the {current} bytes it holds")]
    ShrinkBelowSize {
        name: String,
        max_size: i64,
        current: u64,
    },
    #[error("reading message stream failed: {0}")]
    Read(StorageError),
    #[error("writing message stream failed: {0}")]
    Write(StorageError),
    #[error("message stream {0} is unusable after an internal error")]
    Poisoned(String),
}

/// Limits the store enforces on behalf of the server.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Payload bytes one read answer may carry (below the frame limit).
    pub max_read_bytes: usize,
}

pub struct Store {
    streams: RwLock<BTreeMap<String, Arc<Stream>>>,
    clock: Arc<dyn Clock>,
    limits: StoreLimits,
}

impl Store {
    pub fn new(clock: Arc<dyn Clock>, limits: StoreLimits) -> Self {
        Store {
            streams: RwLock::new(BTreeMap::new()),
            clock,
            limits,
        }
    }

    pub fn now_millis(&self) -> i64 {
        self.clock.now_millis()
    }

    fn get(&self, name: &str) -> Result<Arc<Stream>, StoreError> {
        self.streams
            .read()
            .expect("the stream registry lock is never held across a panic")
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))
    }

    pub fn create(&self, definition: MessageStreamDefinition) -> Result<(), StoreError> {
        let mut streams = self.streams.write().expect("registry lock");
        if streams.contains_key(&definition.name) {
            return Err(StoreError::AlreadyExists(definition.name));
        }
        // Both persistences use the memory log until the file log lands.
        let log = Box::new(memory::MemoryLog::new());
        let name = definition.name.clone();
        streams.insert(name, Arc::new(Stream::new(definition, log)));
        Ok(())
    }

    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let stream = self
            .streams
            .write()
            .expect("registry lock")
            .remove(name)
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        stream.delete();
        Ok(())
    }

    pub fn append(&self, name: &str, payload: Bytes) -> Result<i64, StoreError> {
        self.get(name)?.append(payload, self.now_millis())
    }

    pub fn list(&self) -> Vec<String> {
        self.streams
            .read()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect()
    }

    pub fn describe(&self, name: &str) -> Result<MessageStreamInfo, StoreError> {
        self.get(name)?.describe(self.now_millis())
    }

    pub fn update(&self, definition: MessageStreamDefinition) -> Result<(), StoreError> {
        self.get(&definition.name)?
            .update(definition, self.now_millis())
    }

    /// A read that does not wait: `Ok(None)` if it would have to.
    pub fn try_read(
        &self,
        name: &str,
        options: &ReadMessagesOptions,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        match self.attempt(&*self.get(name)?, options)? {
            ReadAttempt::Ready(messages) => Ok(Some(messages)),
            ReadAttempt::Short { start, available } if options.read_timeout_millis == 0 => {
                Err(StoreError::NotEnoughMessages {
                    start,
                    available,
                    min: options.min_message_count,
                })
            }
            ReadAttempt::Short { .. } => Ok(None),
        }
    }

    fn attempt(
        &self,
        stream: &Stream,
        options: &ReadMessagesOptions,
    ) -> Result<ReadAttempt, StoreError> {
        stream.try_read(options, self.now_millis(), self.limits.max_read_bytes)
    }

    /// A read that waits up to `readTimeoutMillis` for `minMessageCount`
    /// messages, and answers `NotEnoughMessages` when the time is up (never
    /// later: a late answer kills the Python client's read loop).
    pub async fn read(
        &self,
        name: &str,
        options: ReadMessagesOptions,
    ) -> Result<Vec<Message>, StoreError> {
        let stream = self.get(name)?;
        let timeout = Duration::from_millis(options.read_timeout_millis.max(0) as u64);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = stream.subscribe();
        loop {
            changed.borrow_and_update();
            let (start, available) = match self.attempt(&stream, &options)? {
                ReadAttempt::Ready(messages) => return Ok(messages),
                ReadAttempt::Short { start, available } => (start, available),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::NotEnoughMessages {
                    start,
                    available,
                    min: options.min_message_count,
                });
            }
            tokio::select! {
                // Err only if the sender is gone, and `stream` owns it: either
                // way the next attempt decides.
                _ = changed.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Applies TTL to every stream (run periodically, so idle streams shrink
    /// too).
    pub fn enforce_retention(&self) {
        let streams: Vec<_> = self
            .streams
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        let now = self.now_millis();
        for stream in streams {
            if let Err(e) = stream.enforce_retention(now) {
                tracing::warn!(stream = stream.name(), error = %e, "retention failed");
            }
        }
    }
}
