//! Wiring and lifecycle: store folder, authentication, store, listener,
//! background retention, ordered shutdown.

use crate::auth::{AuthError, Authenticator};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::protocol::MAX_FRAME_LEN;
use crate::server::dispatch::StoreHandler;
use crate::server::{self, ServerContext};
use crate::store::{Store, StoreLimits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How often TTL is applied to streams nobody touches.
const RETENTION_SWEEP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create the store folder {path}: {source}")]
    StoreRoot {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The `serverVersion` weir reports in the handshake.
pub fn server_version() -> String {
    format!("weir-{}", env!("CARGO_PKG_VERSION"))
}

/// Runs weir until `shutdown` is cancelled. `on_ready` gets the bound address
/// once clients can connect.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&config.store_root).map_err(|source| DaemonError::StoreRoot {
        path: config.store_root.display().to_string(),
        source,
    })?;
    let auth = if config.authenticate_client {
        let (path, default) = match &config.auth_token_file {
            Some(path) => (path.clone(), false),
            None => (config.store_root.join("auth_token"), true),
        };
        let auth = Authenticator::from_file(path, default)?;
        if let Some(path) = auth.token_file() {
            tracing::info!(path = %path.display(), "clients must present a token from this file");
        }
        auth
    } else {
        tracing::warn!("client authentication is off: any local process may connect");
        Authenticator::Disabled
    };
    let store = Arc::new(Store::new(
        Arc::new(SystemClock),
        StoreLimits {
            // Room for the response's own keys beside the payloads.
            max_read_bytes: MAX_FRAME_LEN - 64 * 1024,
        },
    ));
    let addr = SocketAddr::new(config.bind_address, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| DaemonError::Bind { addr, source })?;
    tracing::info!("weir listening on {local}");
    on_ready(local);

    let sweeper = tokio::spawn(sweep_retention(Arc::clone(&store), shutdown.clone()));
    let ctx = Arc::new(ServerContext::new(
        Arc::new(StoreHandler(store)),
        auth,
        config.max_frame_len,
        server_version(),
    ));
    server::run(listener, ctx, config.max_connections, shutdown).await;
    if let Err(e) = sweeper.await {
        tracing::error!(error = %e, "retention task failed");
    }
    tracing::info!("weir stopped");
    Ok(())
}

async fn sweep_retention(store: Arc<Store>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RETENTION_SWEEP);
    loop {
        tokio::select! {
            _ = tick.tick() => store.enforce_retention(),
            () = shutdown.cancelled() => return,
        }
    }
}
