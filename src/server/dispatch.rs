//! Requests to the store, and store errors to wire statuses: the one place
//! where a domain error becomes a status code.

use crate::protocol::model::ReadMessagesOptions;
use crate::protocol::{Failure, Reply, ReplyBody, Request, RequestBody, StatusCode};
use crate::store::{Appending, DiskRead, ReadNow, Store, StoreError};
use crate::telemetry::{Counter, Telemetry};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// An answer still to come.
pub type Pending = Pin<Box<dyn Future<Output = Reply> + Send + 'static>>;

/// How a request is answered.
pub enum Handled {
    /// At once.
    Now(Reply),
    /// Once the connection has carried out the requests that arrived with it
    /// (an append, acknowledged after the batch's appends are written
    /// together).
    AtBatchEnd(Box<dyn FnOnce() -> Reply + Send + 'static>),
    /// By a future the connection runs beside its other requests (a
    /// `flushOnWrite` append waiting for its sync); finished at shutdown.
    Later(Pending),
    /// A read waiting for messages, run like [`Handled::Later`]. When the
    /// connection or the server already has as many waiting as it allows,
    /// `give_up` answers it at once instead: what the read gets now, as if
    /// its `readTimeoutMillis` were 0 (an early answer is one clients
    /// handle; a late one is not, PROTOCOL.md 7.3).
    LongPoll {
        wait: Pending,
        give_up: Box<dyn FnOnce() -> GivenUp + Send + 'static>,
    },
    /// Work that may wait on the disk (creating, deleting or updating a
    /// stream, an append whose log needs the disk first), run off the
    /// protocol thread. The connection carries out
    /// nothing else it received until this completes, so its requests still
    /// take effect in arrival order; other connections go on meanwhile.
    InOrder(Pending),
}

/// The answer of a long-poll given up.
pub enum GivenUp {
    Now(Reply),
    /// Its messages start in sealed segments: read on the blocking pool and
    /// answered like [`Handled::Later`].
    FromDisk(Pending),
}

/// The status and message a client sees for a store error.
pub fn failure(error: &StoreError) -> Failure {
    let status = match error {
        StoreError::NotFound(_) => StatusCode::ResourceNotFound,
        StoreError::AlreadyExists(_) | StoreError::Full { .. } => StatusCode::InvalidRequest,
        StoreError::MessageTooLarge { .. } => StatusCode::RequestPayloadTooLarge,
        StoreError::NotEnoughMessages { .. } => StatusCode::NotEnoughMessages,
        StoreError::ResponseTooLarge { .. } => StatusCode::ResponsePayloadTooLarge,
        StoreError::PersistenceChange(_) | StoreError::ShrinkBelowSize { .. } => {
            StatusCode::UpdateNotAllowed
        }
        StoreError::Read(_) => StatusCode::MessageStoreReadError,
        StoreError::Write(_)
        | StoreError::AppendFailed { .. }
        | StoreError::Poisoned(_)
        | StoreError::WritesStopped { .. } => StatusCode::UnknownFailure,
    };
    Failure::new(status, error.to_string())
}

fn answer<T>(result: Result<T, StoreError>) -> Result<T, Failure> {
    result.map_err(|e| failure(&e))
}

/// What a connection hands its requests to. [`StoreHandler`] is the real
/// one; `weir-bench null-server` plugs in one that stores nothing, so
/// benchmarks compare storage with the same networking code.
pub trait RequestHandler: Send + Sync + 'static {
    /// Carries out one request, or says how it will be ([`Handled`]): all
    /// of it takes effect before the connection's next request does, except
    /// a read that has to wait.
    fn handle(&self, request: Request) -> Handled;
}

/// Requests carried out on the [`Store`].
pub struct StoreHandler(pub Arc<Store>);

impl RequestHandler for StoreHandler {
    fn handle(&self, request: Request) -> Handled {
        handle(&self.0, None, request)
    }
}

/// [`StoreHandler`] that also counts, for telemetry, the payload bytes of
/// every append it acknowledges with success (`BytesAppended`,
/// [`crate::telemetry`]); the daemon's handler.
pub struct CountingStoreHandler {
    pub store: Arc<Store>,
    pub telemetry: Arc<Telemetry>,
}

impl RequestHandler for CountingStoreHandler {
    fn handle(&self, request: Request) -> Handled {
        let appended = Some(&self.telemetry.bytes_appended);
        handle(&self.store, appended, request)
    }
}

/// An append's answer, its `bytes` counted in `appended` when it is a
/// success: the one place where an append is acknowledged.
fn acknowledge(
    result: Result<i64, StoreError>,
    bytes: usize,
    appended: Option<Arc<Counter>>,
) -> Result<i64, Failure> {
    if let (Ok(_), Some(counter)) = (&result, appended) {
        counter.add(bytes as u64);
    }
    answer(result)
}

fn handle(store: &Arc<Store>, appended: Option<&Arc<Counter>>, request: Request) -> Handled {
    let request_id = request.request_id;
    let now = |body| {
        Handled::Now(Reply {
            request_id: request_id.clone(),
            body,
        })
    };
    match request.body {
        RequestBody::CreateMessageStream { definition } => {
            let store = Arc::clone(store);
            off_thread(
                request_id,
                move || store.create(definition),
                ReplyBody::CreateMessageStream,
            )
        }
        RequestBody::DeleteMessageStream { name } => {
            let store = Arc::clone(store);
            off_thread(
                request_id,
                move || store.delete(&name),
                ReplyBody::DeleteMessageStream,
            )
        }
        RequestBody::AppendMessage { name, payload } => match (
            payload.len(),
            appended.cloned(),
            store.append_now(&name, payload),
        ) {
            (bytes, counter, Ok(Appending::Done(appended))) if appended.flush => {
                // flushOnWrite: acknowledged once synced; the sync is shared
                // with every append waiting at the same time.
                let store = Arc::clone(store);
                let seq = appended.sequence_number;
                Handled::Later(Box::pin(async move {
                    let durable = async {
                        store.confirm(&name, appended.ticket)?;
                        store.durable(&name, seq).await
                    };
                    Reply {
                        request_id,
                        body: ReplyBody::AppendMessage(acknowledge(
                            durable.await.map(|()| seq),
                            bytes,
                            counter,
                        )),
                    }
                }))
            }
            (bytes, counter, Ok(Appending::Done(appended))) => {
                // Acknowledged once written with the rest of the batch.
                let store = Arc::clone(store);
                Handled::AtBatchEnd(Box::new(move || {
                    let seq = appended.sequence_number;
                    let result = store.confirm(&name, appended.ticket).map(|()| seq);
                    let result = acknowledge(result, bytes, counter);
                    Reply {
                        request_id,
                        body: ReplyBody::AppendMessage(result),
                    }
                }))
            }
            // The log waits on the disk first (the spare of its next
            // segment not ready, a removal not yet durable): on the blocking
            // pool, and in order, so the connection's appends keep their
            // order; other connections go on meanwhile.
            (bytes, counter, Ok(Appending::NeedsDisk(append))) => {
                let store = Arc::clone(store);
                Handled::InOrder(Box::pin(async move {
                    let result = async {
                        let appended = append.run_blocking().await?;
                        let seq = appended.sequence_number;
                        if appended.flush {
                            store.durable(&name, seq).await?;
                        }
                        Ok(seq)
                    };
                    Reply {
                        request_id,
                        body: ReplyBody::AppendMessage(acknowledge(result.await, bytes, counter)),
                    }
                }))
            }
            (_, _, Err(e)) => now(ReplyBody::AppendMessage(Err(failure(&e)))),
        },
        RequestBody::ListStreams => now(ReplyBody::ListStreams(Ok(store.list()))),
        RequestBody::DescribeMessageStream { name } => now(ReplyBody::DescribeMessageStream(
            answer(store.describe(&name).map(Box::new)),
        )),
        RequestBody::UpdateMessageStream { definition } => {
            let store = Arc::clone(store);
            off_thread(
                request_id,
                move || store.update(definition),
                ReplyBody::UpdateMessageStream,
            )
        }
        RequestBody::ReadMessages {
            stream_name,
            options,
        } => match store.read_now(&stream_name, &options) {
            Ok(ReadNow::Wait) => {
                let now_options = ReadMessagesOptions {
                    read_timeout_millis: 0,
                    ..options
                };
                let give_up = {
                    let store = Arc::clone(store);
                    let request_id = request_id.clone();
                    let stream_name = stream_name.clone();
                    // Messages may have come meanwhile, in sealed segments:
                    // read like any other read from disk.
                    move || {
                        let result = match store.read_now(&stream_name, &now_options) {
                            Ok(ReadNow::FromDisk(read)) => {
                                return GivenUp::FromDisk(read_from_disk(
                                    read,
                                    request_id,
                                    stream_name,
                                ));
                            }
                            Ok(ReadNow::Ready(messages)) => Ok(messages),
                            Ok(ReadNow::Wait) => unreachable!("a read with timeout 0 never waits"),
                            Err(e) => Err(failure(&e)),
                        };
                        GivenUp::Now(Reply {
                            request_id,
                            body: ReplyBody::ReadMessages {
                                stream_name,
                                result,
                            },
                        })
                    }
                };
                let store = Arc::clone(store);
                Handled::LongPoll {
                    wait: Box::pin(async move {
                        let result = answer(store.read(&stream_name, options).await);
                        Reply {
                            request_id,
                            body: ReplyBody::ReadMessages {
                                stream_name,
                                result,
                            },
                        }
                    }),
                    give_up: Box::new(give_up),
                }
            }
            Ok(ReadNow::Ready(messages)) => now(ReplyBody::ReadMessages {
                stream_name,
                result: Ok(messages),
            }),
            // Messages in sealed segments are read on the blocking pool,
            // beside the connection's other requests: what the read
            // returns was fixed when it was carried out, so later requests
            // need not wait for it.
            Ok(ReadNow::FromDisk(read)) => {
                Handled::Later(read_from_disk(read, request_id, stream_name))
            }
            Err(e) => now(ReplyBody::ReadMessages {
                stream_name,
                result: Err(failure(&e)),
            }),
        },
    }
}

/// The answer to a read of sealed segments, read on tokio's blocking pool
/// (a read carried out now, or a long-poll given up).
fn read_from_disk(read: DiskRead, request_id: String, stream_name: String) -> Pending {
    Box::pin(async move {
        let result = answer(read.run_blocking().await);
        Reply {
            request_id,
            body: ReplyBody::ReadMessages {
                stream_name,
                result,
            },
        }
    })
}

/// Runs `work` on tokio's blocking pool: folder creation, definition writes
/// and `remove_dir_all` wait on the disk, and the protocol thread serves
/// every connection.
fn off_thread(
    request_id: String,
    work: impl FnOnce() -> Result<(), StoreError> + Send + 'static,
    body: fn(Result<(), Failure>) -> ReplyBody,
) -> Handled {
    Handled::InOrder(Box::pin(async move {
        let result = match tokio::task::spawn_blocking(work).await {
            Ok(result) => answer(result),
            Err(join) => Err(Failure::new(
                StatusCode::UnknownFailure,
                format!("the operation failed inside weir: {join}"),
            )),
        };
        Reply {
            request_id,
            body: body(result),
        }
    }))
}
