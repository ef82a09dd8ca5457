//! Requests to the store, and store errors to wire statuses: the one place
//! where a domain error becomes a status code.

use crate::protocol::{Failure, Reply, ReplyBody, Request, RequestBody, StatusCode};
use crate::store::{Store, StoreError};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// How a request is answered: at once; once the connection has carried out
/// the requests that arrived with it (an append, acknowledged after the
/// batch's appends are written together); or by a future the connection runs
/// beside its other requests (a long-polling read, a `flushOnWrite` append).
pub enum Handled {
    Now(Reply),
    AtBatchEnd(Box<dyn FnOnce() -> Reply + Send + 'static>),
    Later(Pin<Box<dyn Future<Output = Reply> + Send + 'static>>),
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
/// one; `weir bench null-server` plugs in one that stores nothing, so
/// benchmarks compare storage with the same networking code.
pub trait RequestHandler: Send + Sync + 'static {
    /// Carries out one request. Everything except a read that has to wait
    /// is done before this returns, so requests on one connection take
    /// effect in the order they arrived.
    fn handle(&self, request: Request) -> Handled;
}

/// Requests carried out on the [`Store`].
pub struct StoreHandler(pub Arc<Store>);

impl RequestHandler for StoreHandler {
    fn handle(&self, request: Request) -> Handled {
        handle(&self.0, request)
    }
}

fn handle(store: &Arc<Store>, request: Request) -> Handled {
    let request_id = request.request_id;
    let now = |body| {
        Handled::Now(Reply {
            request_id: request_id.clone(),
            body,
        })
    };
    match request.body {
        RequestBody::CreateMessageStream { definition } => now(ReplyBody::CreateMessageStream(
            answer(store.create(definition)),
        )),
        RequestBody::DeleteMessageStream { name } => {
            now(ReplyBody::DeleteMessageStream(answer(store.delete(&name))))
        }
        RequestBody::AppendMessage { name, payload } => match store.append(&name, payload) {
            Ok(appended) if appended.flush => {
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
                        body: ReplyBody::AppendMessage(answer(durable.await.map(|()| seq))),
                    }
                }))
            }
            Ok(appended) => {
                // Acknowledged once written with the rest of the batch.
                let store = Arc::clone(store);
                Handled::AtBatchEnd(Box::new(move || {
                    let seq = appended.sequence_number;
                    let result = answer(store.confirm(&name, appended.ticket).map(|()| seq));
                    Reply {
                        request_id,
                        body: ReplyBody::AppendMessage(result),
                    }
                }))
            }
            Err(e) => now(ReplyBody::AppendMessage(Err(failure(&e)))),
        },
        RequestBody::ListStreams => now(ReplyBody::ListStreams(Ok(store.list()))),
        RequestBody::DescribeMessageStream { name } => now(ReplyBody::DescribeMessageStream(
            answer(store.describe(&name).map(Box::new)),
        )),
        RequestBody::UpdateMessageStream { definition } => now(ReplyBody::UpdateMessageStream(
            answer(store.update(definition)),
        )),
        RequestBody::ReadMessages {
            stream_name,
            options,
        } => match store.try_read(&stream_name, &options) {
            Ok(None) => {
                let store = Arc::clone(store);
                Handled::Later(Box::pin(async move {
                    let result = answer(store.read(&stream_name, options).await);
                    Reply {
                        request_id,
                        body: ReplyBody::ReadMessages {
                            stream_name,
                            result,
                        },
                    }
                }))
            }
            Ok(Some(messages)) => now(ReplyBody::ReadMessages {
                stream_name,
                result: Ok(messages),
            }),
            Err(e) => now(ReplyBody::ReadMessages {
                stream_name,
                result: Err(failure(&e)),
            }),
        },
    }
}
