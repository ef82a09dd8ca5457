//! Wiring and lifecycle: store folder, authentication, store, listener,
//! background retention, ordered shutdown.

use crate::auth::{AuthError, Authenticator};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::export::manager::{ExportSettings, ExportThread};
use crate::export::pipeline::RetryPolicy;
use crate::server::dispatch::StoreHandler;
use crate::server::{self, ServerContext};
use crate::store::fs::StdFs;
use crate::store::log::StorageError;
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
    #[error("cannot open the store in {path}: {source}")]
    Store { path: String, source: StorageError },
    #[error(
        "the store folder {path} is in use by another weir (process {holder}); one weir per store"
    )]
    StoreInUse { path: String, holder: String },
    #[error("cannot lock the store folder {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the exporters: {0}")]
    Exports(std::io::Error),
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
    // Before anything reads the store: two weirs writing one folder would
    // each overwrite the other's segments.
    let _lock = StoreLock::acquire(&config.store_root)?;
    let auth = if !config.authenticate_client {
        tracing::warn!("client authentication is off: any local process may connect");
        Authenticator::Disabled
    } else if let Some(ipc) = &config.nucleus_ipc {
        if config.auth_token_file.is_some() {
            tracing::warn!(
                "WEIR_AUTH_TOKEN_FILE is not used: the Greengrass nucleus validates client tokens"
            );
        }
        tracing::info!(
            socket = %ipc.socket.display(),
            "client tokens are validated by the Greengrass nucleus over its IPC socket"
        );
        Authenticator::nucleus_ipc(ipc.clone())
    } else {
        let (path, default) = match &config.auth_token_file {
            Some(path) => (path.clone(), false),
            None => (config.store_root.join("auth_token"), true),
        };
        let auth = Authenticator::from_file(path, default)?;
        if let Some(path) = auth.token_file() {
            tracing::info!(path = %path.display(), "clients must present a token from this file");
        }
        auth
    };
    // A read answer is built in memory: its size is bounded by the
    // configuration, never only by the protocol's 1 GiB frame limit.
    let limits = StoreLimits {
        max_read_bytes: config.max_read_bytes,
    };
    let started = std::time::Instant::now();
    let store = Store::open(
        Arc::new(StdFs),
        &config.store_root,
        Arc::new(SystemClock),
        limits,
    )
    .map_err(|source| DaemonError::Store {
        path: config.store_root.display().to_string(),
        source,
    })?;
    tracing::info!(streams = store.list().len(), elapsed = ?started.elapsed(), "store opened");
    store.set_retention_follows_exports(config.retention_follows_exports);
    let store = Arc::new(store);
    // Exports run on their own thread and runtime: an upload never holds
    // up the protocol thread.
    let exports = if config.exports_enabled {
        Some(
            ExportThread::start(
                Arc::clone(&store),
                ExportSettings {
                    uploads_at_once: config.exporter_thread_pool_size,
                    max_bandwidth_kbps: config.exporter_max_bandwidth_kbps,
                    iot_analytics_to_kinesis: config.iot_analytics_to_kinesis.clone(),
                    retry: RetryPolicy::default(),
                },
                Arc::new(SystemClock),
            )
            .map_err(DaemonError::Exports)?,
        )
    } else {
        tracing::warn!(
            "exports are off (WEIR_EXPORTS_ENABLED=false): nothing is sent to the cloud"
        );
        None
    };
    let addr = SocketAddr::new(config.bind_address, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| DaemonError::Bind { addr, source })?;
    tracing::info!("weir listening on {local}");
    on_ready(local);
    notify_systemd_ready();

    let sweeper = tokio::spawn(sweep_retention(Arc::clone(&store), shutdown.clone()));
    let syncer = tokio::spawn(sync_periodically(
        Arc::clone(&store),
        config.sync_interval,
        shutdown.clone(),
    ));
    let ctx = Arc::new(ServerContext::with_limits(
        Arc::new(StoreHandler(Arc::clone(&store))),
        auth,
        config.max_frame_len,
        server_version(),
        config.limits.clone(),
    ));
    server::run(listener, ctx, config.max_connections, shutdown).await;
    for (task, what) in [(sweeper, "retention"), (syncer, "sync")] {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "{what} task failed");
        }
    }
    // Exports stop at their next step (a batch in flight is sent again
    // after the restart); blocking, so off the protocol thread's runtime.
    let stopped = tokio::task::spawn_blocking(move || exports.map(ExportThread::stop)).await;
    if let Err(e) = stopped {
        tracing::error!(error = %e, "stopping the exports failed");
    }
    // Connections are closed: make everything acknowledged durable.
    store.sync_all().await;
    tracing::info!("weir stopped");
    Ok(())
}

/// Under systemd `Type=notify` (the Debian unit; nucleus lite's `Startup`
/// units): tells the service manager that clients can connect, with one
/// `READY=1` datagram to `$NOTIFY_SOCKET` (sd_notify(3)'s protocol, a
/// path or an `@` abstract name). Nothing when the variable is not set; a
/// failure is logged, never fatal (the service manager times the start out).
fn notify_systemd_ready() {
    use std::os::unix::ffi::OsStrExt;
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| {
        let addr = match target.as_bytes().strip_prefix(b"@") {
            #[cfg(target_os = "linux")]
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)?
            }
            #[cfg(not(target_os = "linux"))]
            Some(_) => return Err(std::io::ErrorKind::Unsupported.into()),
            None => std::os::unix::net::SocketAddr::from_pathname(&target)?,
        };
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.send_to_addr(b"READY=1", &addr)
    })();
    match sent {
        Ok(_) => tracing::debug!(socket = ?target, "told systemd weir is ready"),
        Err(e) => tracing::warn!(socket = ?target, error = %e, "cannot tell systemd weir is ready"),
    }
}

/// The lock file of a store folder, held (an OS file lock) for the life of
/// the process that owns the store; it holds that process's id for the
/// message the next one gets. The OS releases the lock when the process
/// ends, however it ends, so a stale file never blocks a start.
struct StoreLock {
    _file: std::fs::File,
}

impl StoreLock {
    const FILE: &'static str = "weir.lock";

    fn acquire(root: &std::path::Path) -> Result<StoreLock, DaemonError> {
        use std::io::{Read, Seek, Write};
        let path = root.join(Self::FILE);
        let lock_error = |source| DaemonError::Lock {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The holder's id is for the message only: if it cannot
                // be read, the refusal stands without it.
                if file.read_to_string(&mut holder).is_err() || holder.trim().is_empty() {
                    holder = "unknown".into();
                }
                return Err(DaemonError::StoreInUse {
                    path: root.display().to_string(),
                    holder: holder.trim().to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_error(e)),
        }
        file.set_len(0).map_err(lock_error)?;
        file.rewind().map_err(lock_error)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_error)?;
        Ok(StoreLock { _file: file })
    }
}

/// Bounds what a power cut can take from streams without `flushOnWrite`:
/// at most the appends of the last `interval`.
async fn sync_periodically(store: Arc<Store>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => store.sync_all().await,
            () = shutdown.cancelled() => return,
        }
    }
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
