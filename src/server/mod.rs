//! The TCP side: accept loop, one task per connection, handshake, framing.
//!
//! [`connection`] owns every byte on a socket; [`dispatch`] turns requests
//! into store calls and store errors into statuses; [`codec`] frames bytes.

pub mod codec;
pub mod connection;
pub mod dispatch;

use crate::auth::Authenticator;
use dispatch::RequestHandler;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every connection shares.
pub struct ServerContext {
    pub handler: Arc<dyn RequestHandler>,
    pub auth: Authenticator,
    pub max_frame_len: usize,
    /// `serverVersion` of the ConnectResponse.
    pub server_version: String,
    next_client: AtomicU64,
}

impl ServerContext {
    pub fn new(
        handler: Arc<dyn RequestHandler>,
        auth: Authenticator,
        max_frame_len: usize,
        server_version: String,
    ) -> Self {
        ServerContext {
            handler,
            auth,
            max_frame_len,
            server_version,
            next_client: AtomicU64::new(1),
        }
    }

    /// `clientIdentifier` of the next connection: `client-1`, `client-2`, ...
    pub fn next_client_identifier(&self) -> String {
        format!(
            "client-{}",
            self.next_client.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Serves `listener` until `shutdown` is cancelled, then waits for every
/// connection to finish (each one stops at its next frame boundary).
pub async fn run(
    listener: TcpListener,
    ctx: Arc<ServerContext>,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    let connections = TaskTracker::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&limit).acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((socket, _peer)) => {
                backoff = Duration::from_millis(10);
                let ctx = Arc::clone(&ctx);
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    connection::serve(socket, ctx, shutdown).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning, and keep serving the connections already open.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    connections.close();
    connections.wait().await;
}
