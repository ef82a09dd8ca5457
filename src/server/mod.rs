//! The TCP side: accept loop, one task per connection, handshake, framing.
//!
//! [`connection`] owns every byte on a socket; [`dispatch`] turns requests
//! into store calls and store errors into statuses; [`codec`] frames bytes.
//!
//! Nothing a client does can make the server hold unbounded memory or every
//! connection slot ([`ServerLimits`]): sockets still in their handshake have
//! their own timeout and cap, a socket past the connection limit is closed at
//! once, request bytes are received against a server-wide budget, answers
//! against a server-wide one (taken before they are built) and a
//! per-connection one, and shutdown has a deadline after which the
//! connections left are closed.

pub mod budget;
pub mod codec;
pub mod connection;
pub mod dispatch;

use crate::auth::Authenticator;
use budget::ByteBudget;
use dispatch::RequestHandler;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections served at once by default (`WEIR_MAX_CONNECTIONS`). A
/// gateway's clients are its local components, a few dozen at most; 256
/// leaves room for reconnect storms. Answers queued for clients that do not
/// read are bounded for all of them together
/// ([`ServerLimits::max_answer_bytes`]), not by this times
/// [`ServerLimits::max_queued_bytes`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// What the server bounds besides the frame size and the connection count.
/// The defaults are chosen for a device with 256 MB of RAM; each says why.
///
/// Answers: every answer holds bytes of [`ServerLimits::max_answer_bytes`]
/// from before it is built until its frame is written to the socket (or the
/// connection ends), on every path (answered at once, at the batch's end,
/// later, after a long-poll, in order). When a request's share is not free,
/// its connection's answers so far go out and the connection waits for the
/// share, its requests unread in the socket. Clients that do not read can
/// thus make the others wait, but only for
/// [`ServerLimits::answer_stall_timeout`]: while anyone waits for the
/// budget, a connection whose client takes none of its answers for that
/// long is closed, and its answers' bytes are given back. A client that
/// reads is served once they are. Each connection logs its first wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Sockets that have not completed their handshake; when one more
    /// arrives the oldest of them is closed, so a local process without a
    /// token cannot keep the slots of real clients, which send their Connect
    /// at once.
    pub max_handshaking: usize,
    /// A socket that has not sent its Connect by then is closed (checking
    /// its token has its own bound: the nucleus IPC's).
    pub handshake_timeout: Duration,
    /// After a shutdown signal, how long requests in progress may take
    /// before the connections left are closed.
    pub shutdown_timeout: Duration,
    /// Bytes of partly received request frames larger than a connection's
    /// own small buffer, all connections together; a connection that cannot
    /// get budget stops being read until others' frames complete.
    pub max_receiving_bytes: usize,
    /// Answer bytes waiting for one client to read them; when they are
    /// reached the connection's requests stop being read. One answer larger
    /// than this still goes out on its own.
    pub max_queued_bytes: usize,
    /// Answer bytes held, all connections together: from before an answer
    /// is built until its frame is written to the socket. A request takes
    /// what its answer can need before it is carried out (a read
    /// [`ServerLimits::max_read_bytes`] and its framing, anything else a
    /// few KiB; what the answer turns out not to need is given back once it
    /// is built), and a connection that cannot get it stops being read until
    /// others' answers are written. A read waiting for messages holds none
    /// while it waits, and takes its share each time it looks for them.
    pub max_answer_bytes: usize,
    /// What a read answer's messages may take (`WEIR_MAX_READ_BYTES`, the
    /// store's limit, which the configuration copies here): a read takes
    /// this much of [`ServerLimits::max_answer_bytes`] before it is carried
    /// out. A read whose one message is larger takes the rest before its
    /// answer is queued.
    pub max_read_bytes: usize,
    /// While some connection waits for [`ServerLimits::max_answer_bytes`],
    /// a connection whose client has not taken the answer being written to
    /// it within this time is closed, and its answers' bytes are given back:
    /// clients that do not read cannot keep every other client waiting.
    pub answer_stall_timeout: Duration,
    /// Requests of one connection being carried out or waiting
    /// (`flushOnWrite` appends, long-polls); past it, its requests stop
    /// being read until some are answered.
    pub max_in_flight: usize,
    /// Reads waiting for messages on one connection; more are answered at
    /// once, as if their `readTimeoutMillis` were 0.
    pub max_long_polls_per_connection: usize,
    /// Reads waiting for messages, all connections together; same answer.
    pub max_long_polls: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            // Real clients send their Connect right after connecting; 64
            // strangers at once is already an attack on a local port.
            max_handshaking: 64,
            // Java waits 10 s and Python 60 s for the answer, but they send
            // the Connect at once: 5 s only ever cuts off sockets that send
            // nothing, and frees their slot soon.
            handshake_timeout: Duration::from_secs(5),
            // Greengrass gives a component a few seconds more than this
            // before it kills it; a sync of every stream follows.
            shutdown_timeout: Duration::from_secs(5),
            // A quarter of 256 MB: four frames of the default 16 MiB limit
            // being received at once.
            max_receiving_bytes: 64 << 20,
            // Two read answers of the default 4 MiB: a client that reads
            // slowly still gets its answers back to back.
            max_queued_bytes: 8 << 20,
            // A quarter of 256 MB, like the receive budget: eight clients
            // that do not read, each at its queue budget, or sixteen reads
            // of the default 4 MiB being built at once.
            max_answer_bytes: 64 << 20,
            max_read_bytes: crate::config::DEFAULT_MAX_READ_BYTES,
            // Far longer than a client that reads takes for one answer of
            // a few MiB over a local socket; short enough that clients that
            // stopped reading free the budget before others give up.
            answer_stall_timeout: Duration::from_secs(5),
            // Far above what one client pipelines (the benchmark's 64
            // appenders on one connection), small enough to bound the
            // per-request state of one that never stops sending.
            max_in_flight: 1024,
            // A client's threads each wait in at most one read, and a
            // completed read holds its answer (up to WEIR_MAX_READ_BYTES)
            // until its client reads it: 16 bound that to 64 MiB for a
            // connection whose client stopped reading.
            max_long_polls_per_connection: 16,
            // The same for all connections together, and the reads one
            // append wakes at once.
            max_long_polls: 256,
        }
    }
}

/// What every connection shares.
pub struct ServerContext {
    pub handler: Arc<dyn RequestHandler>,
    pub auth: Authenticator,
    pub max_frame_len: usize,
    /// `serverVersion` of the ConnectResponse.
    pub server_version: String,
    pub limits: ServerLimits,
    /// Bytes of large request frames being received, all connections.
    receiving: ByteBudget,
    /// Bytes of answers being built or waiting to be written, all
    /// connections.
    answers: ByteBudget,
    /// Long-polls waiting, all connections.
    long_polls: Arc<Semaphore>,
    handshaking: Mutex<Handshaking>,
    next_client: AtomicU64,
}

impl ServerContext {
    /// A context with the default [`ServerLimits`].
    pub fn new(
        handler: Arc<dyn RequestHandler>,
        auth: Authenticator,
        max_frame_len: usize,
        server_version: String,
    ) -> Self {
        Self::with_limits(
            handler,
            auth,
            max_frame_len,
            server_version,
            ServerLimits::default(),
        )
    }

    pub fn with_limits(
        handler: Arc<dyn RequestHandler>,
        auth: Authenticator,
        max_frame_len: usize,
        server_version: String,
        limits: ServerLimits,
    ) -> Self {
        // A frame larger than the whole receive budget could never complete
        // (the configuration refuses it; this covers other callers).
        let receiving = limits.max_receiving_bytes.max(max_frame_len);
        ServerContext {
            handler,
            auth,
            max_frame_len,
            server_version,
            receiving: ByteBudget::new(receiving),
            answers: ByteBudget::new(limits.max_answer_bytes),
            long_polls: Arc::new(Semaphore::new(limits.max_long_polls)),
            handshaking: Mutex::new(Handshaking::default()),
            limits,
            next_client: AtomicU64::new(1),
        }
    }

    /// Bytes of [`ServerLimits::max_answer_bytes`] held now (tests and
    /// benchmarks watch it; 0 once no answer is being built or written).
    pub fn answer_bytes_reserved(&self) -> usize {
        self.answers.reserved()
    }

    /// `clientIdentifier` of the next connection: `client-1`, `client-2`, ...
    pub fn next_client_identifier(&self) -> String {
        format!(
            "client-{}",
            self.next_client.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A place among the sockets in their handshake; when they are already
    /// [`ServerLimits::max_handshaking`], the oldest is told to close.
    fn enter_handshake(self: &Arc<Self>) -> HandshakeSlot {
        let evicted = CancellationToken::new();
        let mut h = self.handshaking.lock().expect("handshake registry lock");
        if h.open.len() >= self.limits.max_handshaking {
            if let Some((_, oldest)) = h.open.pop_first() {
                oldest.cancel();
                if h.evicted == 0 {
                    tracing::warn!(
                        limit = self.limits.max_handshaking,
                        "too many sockets in their handshake: closing the oldest to make room"
                    );
                }
                h.evicted += 1;
            }
        }
        let id = h.next;
        h.next += 1;
        h.open.insert(id, evicted.clone());
        HandshakeSlot {
            ctx: Arc::clone(self),
            id,
            evicted,
        }
    }
}

/// Sockets in their handshake, oldest first.
#[derive(Default)]
struct Handshaking {
    next: u64,
    open: BTreeMap<u64, CancellationToken>,
    /// Closed to make room since the registry was last below its cap (the
    /// run is logged when it starts and when it ends).
    evicted: u64,
}

/// A socket's place among those in their handshake; leaving it (drop) frees
/// the place.
pub struct HandshakeSlot {
    ctx: Arc<ServerContext>,
    id: u64,
    evicted: CancellationToken,
}

impl HandshakeSlot {
    /// Completes when the socket must close to make room for a newer one.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut h = self
            .ctx
            .handshaking
            .lock()
            .expect("handshake registry lock");
        h.open.remove(&self.id);
        if h.evicted > 0 && h.open.len() <= self.ctx.limits.max_handshaking / 2 {
            tracing::info!(
                closed = h.evicted,
                "sockets in their handshake are below the limit again"
            );
            h.evicted = 0;
        }
    }
}

/// Serves `listener` until `shutdown` is cancelled, then lets connections
/// finish what they are doing (each stops reading requests, answers those in
/// progress) for at most [`ServerLimits::shutdown_timeout`], and closes
/// those left: a client that does not read its answers cannot hold the
/// shutdown.
///
/// A socket accepted while `max_connections` clients are connected is
/// closed at once, never left waiting in the backlog.
pub async fn run(
    listener: TcpListener,
    ctx: Arc<ServerContext>,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    let connections = TaskTracker::new();
    // Cancelled at the shutdown deadline: every connection left stops at
    // once.
    let abort = CancellationToken::new();
    let mut refused: u64 = 0;
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((socket, peer)) => {
                backoff = Duration::from_millis(10);
                // Sockets in their handshake do not count here (they have
                // their own cap), so strangers cannot fill the slots; a
                // connection takes its slot once its handshake succeeds.
                if limit.available_permits() == 0 {
                    // Logged once per run of refusals, not once per socket.
                    if refused == 0 {
                        tracing::warn!(
                            %peer,
                            limit = max_connections,
                            "connection limit reached: closing new connections at once"
                        );
                    }
                    refused += 1;
                    drop(socket);
                    continue;
                }
                if refused > 0 {
                    tracing::info!(refused, "accepting connections again");
                    refused = 0;
                }
                let slot = ctx.enter_handshake();
                let ctx = Arc::clone(&ctx);
                let limit = Arc::clone(&limit);
                let shutdown = shutdown.clone();
                let abort = abort.clone();
                connections.spawn(connection::serve(socket, ctx, slot, limit, shutdown, abort));
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
    drop(listener);
    connections.close();
    let deadline = ctx.limits.shutdown_timeout;
    if tokio::time::timeout(deadline, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            ?deadline,
            "shutdown deadline passed: closing the connections left"
        );
        abort.cancel();
        connections.wait().await;
    }
}
