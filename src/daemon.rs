//! Wiring and lifecycle: store folder, authentication, store, listener,
//! background retention, readiness (systemd, the Greengrass nucleus),
//! telemetry, ordered shutdown.

use crate::auth::ipc::{kind, IpcClient, Request};
use crate::auth::{AuthError, Authenticator};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::export::manager::{ExportSettings, ExportThread};
use crate::export::pipeline::RetryPolicy;
use crate::server::dispatch::CountingStoreHandler;
use crate::server::{self, ServerContext};
use crate::store::fs::StdFs;
use crate::store::log::StorageError;
use crate::store::{Store, StoreLimits};
use crate::telemetry::{self, Telemetry};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How often TTL is applied to streams nobody touches.
const RETENTION_SWEEP: Duration = Duration::from_secs(5);

pub const UPDATE_STATE: &str = "aws.greengrass#UpdateState";
pub const UPDATE_STATE_REQUEST: &str = "aws.greengrass#UpdateStateRequest";
/// Waits between `UpdateState` attempts: doubling from the first to the
/// last; given up after [`READINESS_GIVE_UP`] (the component's `Startup`
/// timeout has long ended it by then).
const READINESS_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(500), Duration::from_secs(15));
const READINESS_GIVE_UP: Duration = Duration::from_secs(600);

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
    // Under Greengrass v2: one IPC connection to the nucleus for token
    // validation, readiness and telemetry.
    let nucleus = config.nucleus_ipc.clone().map(IpcClient::start);
    let telemetry = Arc::new(Telemetry::default());
    let auth = if !config.authenticate_client {
        tracing::warn!("client authentication is off: any local process may connect");
        Authenticator::Disabled
    } else if let (Some(ipc), Some(client)) = (&config.nucleus_ipc, &nucleus) {
        if config.auth_token_file.is_some() {
            tracing::warn!(
                "WEIR_AUTH_TOKEN_FILE is not used: the Greengrass nucleus validates client tokens"
            );
        }
        tracing::info!(
            socket = %ipc.socket.display(),
            "client tokens are validated by the Greengrass nucleus over its IPC socket"
        );
        Authenticator::nucleus_ipc(client.clone())
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
                    telemetry: Arc::clone(&telemetry),
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
    // Only now, with the listener bound: the nucleus starts dependents
    // once weir reports RUNNING (its `Startup` step waits for it).
    let greengrass: Vec<_> = match &nucleus {
        Some(client) => vec![
            tokio::spawn(report_running(client.clone(), shutdown.clone())),
            tokio::spawn(telemetry::report(
                client.clone(),
                Arc::clone(&telemetry),
                config.telemetry_interval,
                shutdown.clone(),
            )),
        ],
        None => Vec::new(),
    };
    drop(nucleus);

    let sweeper = tokio::spawn(sweep_retention(Arc::clone(&store), shutdown.clone()));
    let syncer = tokio::spawn(sync_periodically(
        Arc::clone(&store),
        config.sync_interval,
        shutdown.clone(),
    ));
    let ctx = Arc::new(ServerContext::with_limits(
        Arc::new(CountingStoreHandler {
            store: Arc::clone(&store),
            telemetry: Arc::clone(&telemetry),
        }),
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
    for task in greengrass {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "a Greengrass nucleus task failed");
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

/// Tells the Greengrass nucleus that weir is RUNNING (`UpdateState`,
/// GREENGRASS.md 1.4): once, with the listener bound. A failure (the
/// nucleus not up yet, an error answer) is logged and tried again after a
/// backoff, for [`READINESS_GIVE_UP`] at most; clients are served
/// meanwhile. The reply is the first on its stream, terminate flag or not
/// (nucleus lite sets none).
async fn report_running(client: IpcClient, shutdown: CancellationToken) {
    let request = Request {
        operation: UPDATE_STATE,
        model: UPDATE_STATE_REQUEST,
        payload: bytes::Bytes::from_static(br#"{"state":"RUNNING"}"#),
    };
    let give_up = tokio::time::Instant::now() + READINESS_GIVE_UP;
    let (mut wait, max_wait) = READINESS_BACKOFF;
    loop {
        let outcome = tokio::select! {
            outcome = client.call(request.clone()) => outcome,
            () = shutdown.cancelled() => return,
        };
        let failure = match outcome {
            Ok(reply) if reply.kind == kind::APPLICATION_MESSAGE => {
                tracing::info!("told the Greengrass nucleus weir is RUNNING");
                return;
            }
            Ok(reply) => {
                let (code, detail) = reply.error().unwrap_or_default();
                format!("the nucleus answered {code}: {detail}")
            }
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() + wait > give_up {
            tracing::error!(
                error = %failure,
                "gave up telling the Greengrass nucleus weir is RUNNING; clients are served all the same"
            );
            return;
        }
        tracing::warn!(error = %failure, retry_after = ?wait, "cannot tell the Greengrass nucleus weir is RUNNING yet");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        wait = (wait * 2).min(max_wait);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ipc::scripted::{settings, CapturedLogs, Flavour, ScriptedNucleus};

    const HANG: Duration = Duration::from_secs(60);

    fn config(root: &std::path::Path, socket: &std::path::Path) -> Config {
        let vars = [
            ("STREAM_MANAGER_SERVER_PORT", "0".to_owned()),
            ("STREAM_MANAGER_STORE_ROOT_DIR", root.display().to_string()),
            // Readiness does not depend on client authentication.
            ("STREAM_MANAGER_AUTHENTICATE_CLIENT", "false".to_owned()),
            ("WEIR_EXPORTS_ENABLED", "false".to_owned()),
        ];
        let mut config = Config::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        config.nucleus_ipc = Some(settings(socket));
        config
    }

    #[tokio::test]
    async fn running_is_reported_once_and_only_once_the_listener_is_bound() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ipc.socket");
        let (nucleus, mut seen) = ScriptedNucleus::start(&socket, Flavour::Classic);
        let shutdown = CancellationToken::new();
        let (ready, mut bound) = tokio::sync::oneshot::channel();
        let daemon = tokio::spawn(run(
            config(&dir.path().join("store"), &socket),
            shutdown.clone(),
            move |addr| ready.send(addr).unwrap(),
        ));
        // Bounds only a hang (no UpdateState at all), never a timing.
        let update = tokio::time::timeout(HANG, seen.recv())
            .await
            .expect("no UpdateState")
            .unwrap();
        assert_eq!(update.operation, "aws.greengrass#UpdateState");
        assert_eq!(update.model, "aws.greengrass#UpdateStateRequest");
        assert_eq!(update.payload, r#"{"state":"RUNNING"}"#);
        // When the nucleus hears RUNNING, the port already takes clients.
        let addr = bound.try_recv().expect("bound before RUNNING was sent");
        tokio::net::TcpStream::connect(addr).await.unwrap();
        shutdown.cancel();
        daemon.await.unwrap().unwrap();
        drop(nucleus);
        // weir has stopped and its IPC connection is closed: every request
        // the nucleus got is in the channel.
        let mut rest = Vec::new();
        while let Some(request) = seen.recv().await {
            rest.push(request);
        }
        assert!(
            rest.iter().all(|r| r.operation != UPDATE_STATE),
            "RUNNING is reported once: {rest:?}"
        );
    }

    #[tokio::test]
    async fn a_nucleus_that_comes_up_late_still_hears_running() {
        let (logs, _guard) = CapturedLogs::capture();
        for flavour in [Flavour::Classic, Flavour::Lite] {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("ipc.socket");
            let failed_before =
                logs.count("cannot tell the Greengrass nucleus weir is RUNNING yet");
            let client = IpcClient::start(settings(&socket));
            let reporting = tokio::spawn(report_running(client, CancellationToken::new()));
            // Nobody listens yet: the first attempt fails (and is logged);
            // the nucleus then comes up and the retry reaches it.
            logs.wait_for(
                "cannot tell the Greengrass nucleus weir is RUNNING yet",
                failed_before + 1,
            )
            .await;
            let (_nucleus, mut seen) = ScriptedNucleus::start(&socket, flavour);
            let update = tokio::time::timeout(HANG, seen.recv())
                .await
                .expect("no retry reached the nucleus")
                .unwrap();
            assert_eq!(update.operation, UPDATE_STATE);
            // Done once the reply came, with or without terminate (lite).
            reporting.await.unwrap();
            assert_eq!(
                logs.count("told the Greengrass nucleus weir is RUNNING"),
                if flavour == Flavour::Classic { 1 } else { 2 }
            );
        }
    }
}
