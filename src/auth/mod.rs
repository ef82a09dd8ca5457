//! Client authentication by token: who may connect.
//!
//! A client presents a token in its Connect (`authToken`, which the SDKs
//! take from `AWS_CONTAINER_AUTHORIZATION_TOKEN`); one check per
//! connection, in its handshake. The mode is chosen at start-up
//! ([`crate::config`], wired in [`crate::daemon`]):
//!
//! * **Off** (`STREAM_MANAGER_AUTHENTICATE_CLIENT=false`): any local
//!   process may connect.
//! * **Nucleus IPC** ([`ipc`]), when `SVCUID` and the nucleus socket
//!   (`AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT`, else
//!   `AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH`) are set, as they are for a
//!   Greengrass v2 component: weir asks the nucleus, as the genuine server
//!   does, with `ValidateAuthorizationToken` over the IPC connection weir
//!   shares with its readiness and telemetry ([`ipc::IpcClient`]).
//!   Valid → admitted; `InvalidTokenError` → `Unauthorized`; any other
//!   answer, a nucleus that cannot be reached, drops the connection or does
//!   not answer within [`ipc::VALIDATION_TIMEOUT`] → the client is refused
//!   (`UnknownFailure`) and the reason logged, never let in. Works with the
//!   classic nucleus and nucleus lite ≥ 2.0.1; the nucleus lets only a
//!   component named `aws.greengrass.StreamManager` ask.
//! * **Token file** otherwise: the `authToken` must equal one of the tokens
//!   in the token file (one per line, blank lines and `#` comments
//!   ignored). If no file is configured, weir creates `<store
//!   root>/auth_token` with a random token (mode 0600) so a local program
//!   can export `AWS_CONTAINER_AUTHORIZATION_TOKEN` from it. The file is
//!   read again when a token does not match, so tokens can be added without
//!   a restart.
//!
//! A check that waits (the IPC) holds up only its own connection's
//! handshake.

pub mod ipc;
mod json;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the token file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {0} holds no token")]
    Empty(PathBuf),
    #[error("no random source: {0}")]
    Random(String),
}

pub enum Authenticator {
    /// Any local process may connect.
    Disabled,
    Tokens {
        path: PathBuf,
        tokens: RwLock<Vec<String>>,
    },
    /// The Greengrass nucleus decides.
    Ipc(ipc::IpcValidator),
}

/// The outcome of one client's check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The token is missing or not valid (status `Unauthorized`).
    Unauthorized,
    /// The token could not be checked (the reason, for the log): the client
    /// is refused all the same.
    Refused(String),
}

impl Authenticator {
    /// Loads the token file, creating it with a fresh token first when it
    /// is the default one and does not exist yet.
    pub fn from_file(path: PathBuf, create_if_missing: bool) -> Result<Self, AuthError> {
        if create_if_missing && !path.exists() {
            create_token_file(&path)?;
            tracing::info!(path = %path.display(), "created an authentication token file");
        }
        let tokens = read_tokens(&path)?;
        Ok(Authenticator::Tokens {
            path,
            tokens: RwLock::new(tokens),
        })
    }

    /// Asks the nucleus over its IPC connection (`client`, shared with
    /// weir's other requests of the nucleus).
    pub fn nucleus_ipc(client: ipc::IpcClient) -> Self {
        Authenticator::Ipc(ipc::IpcValidator::new(client))
    }

    pub fn token_file(&self) -> Option<&Path> {
        match self {
            Authenticator::Tokens { path, .. } => Some(path),
            Authenticator::Disabled | Authenticator::Ipc(_) => None,
        }
    }

    /// Whether a client presenting `token` may connect. Only the IPC mode
    /// waits (bounded by its timeout).
    pub async fn check(&self, token: Option<&str>) -> Admission {
        let token = token.filter(|t| !t.is_empty());
        match (self, token) {
            (Authenticator::Disabled, _) => Admission::Admitted,
            (_, None) => Admission::Unauthorized,
            (Authenticator::Ipc(validator), Some(token)) => validator.validate(token).await,
            (Authenticator::Tokens { .. }, Some(token)) => {
                if self.token_file_admits(token) {
                    Admission::Admitted
                } else {
                    Admission::Unauthorized
                }
            }
        }
    }

    fn token_file_admits(&self, token: &str) -> bool {
        let Authenticator::Tokens { path, tokens } = self else {
            return false;
        };
        let known = |tokens: &[String]| {
            tokens
                .iter()
                .fold(false, |hit, t| hit | constant_time_eq(t, token))
        };
        if known(&tokens.read().expect("token lock")) {
            return true;
        }
        match read_tokens(path) {
            Ok(fresh) => {
                let hit = known(&fresh);
                *tokens.write().expect("token lock") = fresh;
                hit
            }
            Err(e) => {
                tracing::warn!(error = %e, "keeping the tokens read before");
                false
            }
        }
    }
}

/// Compares without an early exit, so a local peer cannot time its way to a
/// token byte by byte.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn read_tokens(path: &Path) -> Result<Vec<String>, AuthError> {
    let text = fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        return Err(AuthError::Empty(path.to_owned()));
    }
    Ok(tokens)
}

fn create_token_file(path: &Path) -> Result<(), AuthError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| AuthError::Random(e.to_string()))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let create = |source| AuthError::Create {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(create)?;
    file.write_all(format!("{token}\n").as_bytes())
        .map_err(create)?;
    file.sync_all().map_err(create)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admits(auth: &Authenticator, token: Option<&str>) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(auth.check(token)) == Admission::Admitted
    }

    #[test]
    fn a_created_token_admits_only_itself_and_new_lines_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth_token");
        let auth = Authenticator::from_file(path.clone(), true).unwrap();
        let token = fs::read_to_string(&path).unwrap().trim().to_owned();
        assert_eq!(token.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(admits(&auth, Some(&token)));
        assert!(!admits(&auth, Some("nope")));
        assert!(!admits(&auth, Some("")));
        assert!(!admits(&auth, None));
        fs::write(&path, format!("{token}\n# second client\nlater-token\n")).unwrap();
        assert!(admits(&auth, Some("later-token")));
        assert!(admits(&Authenticator::Disabled, None));
    }
}
